//! Upload sessions on the wire: the capture half of the protocol (begin → missing → chunks →
//! commit), and the chunk check of a restore.
//!
//! Binary bodies: `missing` and `chunks/check` take 1 to [`MISSING_BATCH`] raw 32-byte digests
//! and answer one byte per digest; a chunk is its encoded blob (`docs/chunk.md`); a commit is
//! the encoded manifest (`docs/manifest.md`), and so is the answer of `parent`; `pieces` takes 1
//! to [`PIECES_BATCH`] digests and answers each chunk's piece digests ([`decode_pieces`]).

use crate::jobs::SnapshotKind;
use serde::{Deserialize, Serialize};

/// The header of a commit naming the snapshot id the client expects (the id of its manifest).
/// A commit whose manifest has another id is refused: `409` when a snapshot with the named id
/// exists (a snapshot is never overwritten), else `400`.
pub const SNAPSHOT_HEADER: &str = "X-Kura-Snapshot";

/// Most digests asked about in one `missing` or `chunks/check` request.
pub const MISSING_BATCH: usize = 4096;

/// Most chunks asked about in one `pieces` request (each is read and decoded by the engine).
pub const PIECES_BATCH: usize = 64;

/// The query of `GET /uploads/{id}/parent`: for a capture of one disk of a set, the disk's name
/// (its member of the host's latest set is the parent).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ParentQuery {
    #[serde(default)]
    pub disk: Option<String>,
}

/// The query of `POST /uploads/{id}/pieces`: the piece size, bytes (a power of two, at least
/// `kura_imaging::manifest::MIN_PIECE_SIZE`, less than the session's chunk size).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PiecesQuery {
    pub size: u32,
}

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
    decode_digests_within(body, MISSING_BATCH)
}

/// The digests of a binary body of 1 to `most` digests, or why it is not one.
pub fn decode_digests_within(body: &[u8], most: usize) -> Result<Vec<kura_imaging::chunk::Digest>, String> {
    if body.is_empty() || !body.len().is_multiple_of(32) || body.len() > most * 32 {
        return Err(format!("body must be 1 to {most} digests of 32 bytes"));
    }
    Ok(body.chunks_exact(32).map(|c| kura_imaging::chunk::Digest(c.try_into().expect("32 bytes"))).collect())
}

/// The answer of `pieces`: for each digest asked about, in order, `count: u32` (little-endian)
/// then `count` piece digests of 32 bytes. A count of 0: the engine no longer holds that chunk
/// intact (removed since the parent was read, or damaged), and it must not be a base.
pub fn encode_pieces(answers: &[Vec<kura_imaging::chunk::Digest>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(answers.iter().map(|a| 4 + a.len() * 32).sum());
    for a in answers {
        out.extend_from_slice(&(a.len() as u32).to_le_bytes());
        out.extend(a.iter().flat_map(|d| d.0));
    }
    out
}

/// Reads a `pieces` answer for `asked` chunks of `chunk_size` bytes at most, cut in
/// `piece_size`-byte pieces: no count may exceed the pieces such a chunk has, and the body must
/// end with the last answer.
pub fn decode_pieces(
    body: &[u8],
    asked: usize,
    chunk_size: u32,
    piece_size: u32,
) -> Result<Vec<Vec<kura_imaging::chunk::Digest>>, String> {
    let most = chunk_size.div_ceil(piece_size.max(1)) as usize;
    let mut rest = body;
    let mut out = Vec::with_capacity(asked);
    for i in 0..asked {
        let Some((count, tail)) = rest.split_first_chunk::<4>() else {
            return Err(format!("the answer ends before chunk {i}'s count"));
        };
        let count = u32::from_le_bytes(*count) as usize;
        if count > most {
            return Err(format!("chunk {i} has {count} pieces, more than a chunk of {chunk_size} bytes can"));
        }
        if tail.len() < count * 32 {
            return Err(format!("the answer ends within chunk {i}'s {count} piece digests"));
        }
        let (digests, tail) = tail.split_at(count * 32);
        out.push(digests.chunks_exact(32).map(|c| kura_imaging::chunk::Digest(c.try_into().expect("32"))).collect());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last answer", rest.len()));
    }
    Ok(out)
}

/// The binary body of a digest list.
pub fn encode_digests(digests: &[kura_imaging::chunk::Digest]) -> Vec<u8> {
    digests.iter().flat_map(|d| d.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_imaging::chunk::Digest;

    #[test]
    fn pieces_answers_round_trip_and_are_bounded() {
        let answers = vec![vec![Digest([1; 32]), Digest([2; 32])], vec![], vec![Digest([3; 32])]];
        let body = encode_pieces(&answers);
        assert_eq!(decode_pieces(&body, 3, 2048, 1024).unwrap(), answers);
        // Truncated, trailing bytes, fewer answers than asked, more pieces than a chunk has.
        assert!(decode_pieces(&body[..body.len() - 1], 3, 2048, 1024).is_err());
        assert!(decode_pieces(&[body.clone(), vec![0]].concat(), 3, 2048, 1024).is_err());
        assert!(decode_pieces(&body, 4, 2048, 1024).is_err());
        assert!(decode_pieces(&body, 3, 1024, 1024).is_err());
    }
}
