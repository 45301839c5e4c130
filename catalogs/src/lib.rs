//! Kura's engine state.
//!
//! - [`archive`]: the offline export archive (`kura export`, `kura import`, restore from it).
//! - [`store`]: the local content-addressed chunk store holding chunks and committed snapshot
//!   manifests, with its durability contract. The store is the source of truth for which
//!   snapshots exist.
//! - [`db`]: the SQLite catalog: hosts, disks, snapshot rows, jobs, users and tokens, audit log.
//! - [`retention`]: which snapshots a keep-last / keep-monthly rule keeps (pure).
//! - [`cron`]: cron expressions (UTC) and their next due time (pure).
//! - [`gc`]: mark-and-sweep garbage collection, safe beside running captures.
//! - [`private`]: private files and directories: explicit modes, no symlink following, checks.
//! - [`secrets`]: secrets at rest (BMC passwords): the engine's key file and AEAD sealing.

pub mod archive;
pub mod cron;
pub mod db;
pub mod gc;
pub mod private;
pub mod retention;
pub mod secrets;
pub mod store;

pub use store::{LocalStore, SnapshotInfo, StoreUsage, VerifyReport};
