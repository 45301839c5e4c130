//! Kura's engine state.
//!
//! - [`store`]: the local content-addressed chunk store holding chunks and committed snapshot
//!   manifests, with its durability contract.
//!
//! The catalog database (hosts, disks, jobs, users), retention and garbage collection arrive
//! with the engine (issue 3); today the store directory is the whole state.

pub mod db;
pub mod gc;
pub mod retention;
pub mod store;

pub use store::{LocalStore, SnapshotInfo, VerifyReport};
