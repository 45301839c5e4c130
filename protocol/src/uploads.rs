//! Upload sessions on the wire: the capture half of the protocol (begin → missing → chunks →
//! commit), and the chunk check of a restore.
//!
//! Binary bodies: `missing` and `chunks/check` take 1 to [`MISSING_BATCH`] raw 32-byte digests
//! and answer one byte per digest; a chunk is its encoded blob (`docs/chunk.md`); a commit is
//! the encoded manifest (`docs/manifest.md`).

use crate::jobs::SnapshotKind;
use serde::{Deserialize, Serialize};

/// The header of a commit naming the snapshot id the client expects (the id of its manifest).
/// A commit whose manifest has another id is refused: `409` when a snapshot with the named id
/// exists (a snapshot is never overwritten), else `400`.
pub const SNAPSHOT_HEADER: &str = "X-Kura-Snapshot";

/// Most digests asked about in one `missing` or `chunks/check` request.
pub const MISSING_BATCH: usize = 4096;

/// `POST /uploads`. An agent names its job; the engine takes the host and kind from the job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BeginUpload {
    pub host: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: Option<SnapshotKind>,
    #[serde(default)]
    pub job: Option<i64>,
}

/// The answer to `POST /uploads`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadStarted {
    pub upload: String,
    /// The chunk size the engine wants the capture to use.
    pub chunk_size: u32,
}

/// The answer to `POST /uploads/{id}/commit`. A commit is idempotent: the same manifest sent
/// again to the same session (a retry after a lost reply) gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub snapshot: String,
    pub new_bytes: u64,
    pub reused_bytes: u64,
}

/// One answer byte of `POST /uploads/{id}/missing`.
pub mod missing {
    /// The engine has the chunk.
    pub const PRESENT: u8 = 0;
    /// The engine lacks the chunk: send it.
    pub const MISSING: u8 = 1;
}

/// One answer byte of `POST /chunks/check`.
pub mod check {
    pub const OK: u8 = 0;
    pub const MISSING: u8 = 1;
    /// Present but its header or checksum is wrong.
    pub const DAMAGED: u8 = 2;
}

/// The digests of a binary digest-list body, or why it is not one.
pub fn decode_digests(body: &[u8]) -> Result<Vec<kura_imaging::chunk::Digest>, String> {
    if body.is_empty() || !body.len().is_multiple_of(32) || body.len() > MISSING_BATCH * 32 {
        return Err(format!("body must be 1 to {MISSING_BATCH} digests of 32 bytes"));
    }
    Ok(body.chunks_exact(32).map(|c| kura_imaging::chunk::Digest(c.try_into().expect("32 bytes"))).collect())
}

/// The binary body of a digest list.
pub fn encode_digests(digests: &[kura_imaging::chunk::Digest]) -> Vec<u8> {
    digests.iter().flat_map(|d| d.0).collect()
}
