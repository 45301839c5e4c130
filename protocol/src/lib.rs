//! Kura's wire protocol (`docs/protocol.md`), defined once and used by every side: the engine
//! (`server/`), the `kura` CLI, the netboot services and the netbooted agent.
//!
//! - [`routes`]: every API path, built by functions (nobody `format!`s a URL by hand), and the
//!   request body limits the engine enforces;
//! - [`jobs`], [`uploads`]: typed requests and replies, with the one [`jobs::JobState`] and
//!   [`jobs::JobKind`];
//! - [`replication`]: remotes and replication rules (engine-to-engine copies);
//! - [`mac`]: [`MacAddr`], the one MAC address parser;
//! - [`cmdline`]: the agent's kernel command line, one writer and one parser;
//! - [`secure_boot`]: [`SecureBoot`], the boot chain a host's UEFI netboots get;
//! - [`error`]: [`ProtocolError`], the error kinds and their HTTP status codes — clients decide
//!   on the kind, never on message text;
//! - [`client`] (feature `client`): the blocking HTTP client with a pinned certificate, and the
//!   chunk sink/source that let the imaging pipelines talk to an engine.
//!
//! This crate depends on `kura-imaging` only (for digests and the chunk traits); it decides no
//! policy.

pub mod cmdline;
pub mod error;
pub mod jobs;
pub mod mac;
pub mod replication;
pub mod routes;
pub mod secure_boot;
pub mod uploads;

#[cfg(feature = "client")]
pub mod client;

pub use error::{ErrorKind, ProtocolError};
pub use mac::MacAddr;
pub use secure_boot::SecureBoot;

/// The API's version, the `v1` in every path.
pub const API_VERSION: u32 = 1;
