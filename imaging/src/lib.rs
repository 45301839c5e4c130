//! Kura's imaging core: a pure library, no network.
//!
//! It turns a disk (anything `Read + Seek`) into a snapshot — a [`manifest::Manifest`] plus
//! content-addressed chunks handed to a [`chunk::ChunkSink`] — and a snapshot back into a disk
//! (anything `Write + Seek`).
//!
//! - [`layout`] reads and validates partition tables (GPT, protective MBR, legacy MBR).
//! - [`fs`] reads each filesystem's allocation map (ext2/3/4, NTFS, FAT, swap; raw otherwise).
//! - [`region`] cuts the disk into regions (partitions and the gaps between them).
//! - [`chunk`] defines the chunk digest and the encoded chunk format.
//! - [`manifest`] is the versioned snapshot manifest format ([`pieced`]: its two-level
//!   chunks, a chunk changed in a few places stored as patches on its earlier self); [`diskset`] a host's several
//!   disks as one snapshot, and [`diskmap`] which source disk goes to which target.
//! - [`capture`] and [`restore`] are the two pipelines; [`flow`] is the one capture flow and
//!   the one restore flow around them (commit or abort; preflight, write, GPT fix-up), and
//!   [`target`] the device or image file a restore writes.
//! - [`fit`] derives a disk image for a smaller disk from a snapshot (`kura image fit`).
//! - [`time`] owns UTC timestamps: RFC 3339 parsing and formatting, calendar arithmetic.
//!
//! Error policy: every fallible function returns [`Error`], a `thiserror` enum whose variants
//! carry the facts needed to name the problem (offsets, digests, sizes). `Error::is_retryable`
//! tells a caller whether trying again may help (I/O on a remote store) or not (a corrupt
//! partition table).

pub mod bitmap;
pub mod capture;
pub mod chunk;
pub mod diskmap;
pub mod diskset;
pub mod error;
pub mod fit;
pub mod flow;
pub mod fs;
pub mod layout;
pub mod manifest;
pub mod pieced;
pub mod progress;
pub mod region;
pub mod restore;
pub mod target;
pub mod time;
pub mod window;

pub use error::{Error, Result};
