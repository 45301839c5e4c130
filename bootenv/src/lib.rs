//! The netbooted side of Kura, build half: the initramfs builder and the kernel-module logic it
//! shares with the agent.
//!
//! - [`modules`] reads a kernel's `modules.alias`, `modules.dep` and `modules.builtin`: glob
//!   matching of device modaliases, dependency order, module names. The agent uses it to load
//!   drivers at boot; the builder to pick what goes into the image.
//! - [`cpio`] writes (and reads back) the `newc` cpio format the kernel unpacks as initramfs.
//! - [`families`] lists the storage and network drivers the image carries, by family.
//! - [`firmware`] resolves the firmware those modules name and packs it as the kernel reads it.
//! - [`initramfs`] builds the image: the agent as `/init`, the network and storage drivers
//!   with their dependencies and firmware, compressed with zstd, and the report of what went in.
//! - [`signed`] lays out the distribution's signed shim and network GRUB beside it, for
//!   netbooting under Secure Boot.
//!
//! The agent itself (PID 1 of that image) is the `kura-agent` package in `bootenv/agent/`. It is
//! a separate package because it links the protocol client of the `kura` package, while the
//! `kura` binary links this crate for `kura bootenv build`: one package holding both would be a
//! dependency cycle, which Cargo refuses.
//!
//! Error policy: library functions return `anyhow::Result` with context naming the file and the
//! step; the builder's callers (the CLI, tests) print the chain.

pub mod cpio;
pub mod families;
pub mod firmware;
pub mod initramfs;
pub mod modules;
pub mod signed;
