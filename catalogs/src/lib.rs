//! Kura's engine state.
//!
//! - [`archive`]: the offline export archive (`kura export`, `kura import`, restore from it).
//! - [`backend`]: the [`Store`] trait every chunk store implements, with the durability
//!   contract, and opening a store by its spec (`DIR` or `s3://bucket/prefix`). The store is the
//!   source of truth for which snapshots exist.
//! - [`store`]: the local content-addressed chunk store (a directory).
//! - [`s3`]: the S3 chunk store (`object_store`), with its local [`chunk_cache`] and
//!   [`chunk_index`].
//! - [`db`]: the SQLite catalog: hosts, disks, snapshot rows, jobs, users and tokens, audit log.
//! - [`retention`]: which snapshots a keep-last / keep-monthly rule keeps (pure).
//! - [`cron`]: cron expressions (UTC) and their next due time (pure).
//! - [`gc`]: mark-and-sweep garbage collection, safe beside running captures.
//! - [`private`]: private files and directories: explicit modes, no symlink following, checks.
//! - [`secrets`]: secrets at rest (BMC passwords): the engine's key file and AEAD sealing.

pub mod archive;
pub mod backend;
pub mod chunk_cache;
pub mod chunk_index;
pub mod cron;
pub mod db;
pub mod gc;
pub mod private;
pub mod retention;
pub mod s3;
pub mod s3_lock;
pub mod secrets;
pub mod store;

pub use backend::Store;
pub use store::{LocalStore, SnapshotInfo, StoreUsage, VerifyReport};
