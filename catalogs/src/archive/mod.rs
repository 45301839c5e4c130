//! The offline export archive (format v1, frozen: `docs/archive.md`): a sequential-only stream
//! of fixed-size blocks holding a header, the manifests, packs of chunks, an index and a
//! catalog record, written by `kura export` and read by `kura import` and
//! `kura image restore --archive`.
//!
//! - [`format`]: the block and record layouts, their magic numbers and limits, and the JSON
//!   records (header, pack, catalog record).
//! - [`write`]: the block writer and [`write::export`] over a [`crate::LocalStore`].
//! - [`read`]: the block and record readers (resynchronising after damage), the index (from the
//!   archive's end or rebuilt by scanning) and a [`kura_imaging::chunk::ChunkSource`] over a file.
//! - [`import`]: an archive into a store, every chunk verified, each snapshot committed only when
//!   all its chunks are in.
//! - [`stream_restore`]: one snapshot from a pipe onto a target, in one sequential pass.
//!
//! Every chunk read from an archive is decoded and its SHA-256 checked before it is stored or
//! written; damage is reported by chunk digest and by the snapshots that need it.

pub mod format;
pub mod import;
pub mod read;
pub mod stream_restore;
pub mod write;

pub use format::{CatalogRecord, Header, SnapshotEntry};
