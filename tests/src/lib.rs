//! Test support for Kura's end-to-end tests.
//!
//! The tests build real disk images with real tools (sgdisk, sfdisk, mkfs.ext4, mkntfs,
//! mkfs.vfat, mkswap — no root, no loop devices), run the real `kura` binary on them, and check
//! the results with readers that share no code with Kura.
//!
//! - [`content`]: deterministic file contents (text-like, incompressible, patterns).
//! - [`tools`]: running the system tools.
//! - [`disks`]: building partitioned disk image files; [`fixtures`]: the disks of the issue.
//! - [`readback`]: reading files back from ext4, NTFS and FAT partitions of an image.
//! - [`checkers`]: fsck of every filesystem of an image.
//! - [`tables`]: partition tables and bytes outside filesystems, source against restored.
//! - [`damage`]: breaking disks on purpose (truncation, GPT headers, overlaps).
//! - [`store`]: looking inside a chunk store by its documented layout.
//! - [`kura_cli`]: running the `kura` binary and decoding its `--json` output.
//!
//! Needs the packages gdisk, fdisk, e2fsprogs, ntfs-3g, dosfstools, mtools and util-linux.

pub mod checkers;
pub mod content;
pub mod damage;
pub mod disks;
pub mod fixtures;
pub mod kura_cli;
pub mod readback;
pub mod store;
pub mod tables;
pub mod tools;
