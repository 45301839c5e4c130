//! Chunks forwarded from memory while a capture runs (`docs/dr.md`): the uploads service hands
//! each chunk it stored for a replicated host, already checked against its digest, to the
//! replication worker (`crate::replication`) here, so the worker sends it to the remote without
//! reading it back from the store, checking it again or writing a queue row for it.
//!
//! # Bounds and durability
//!
//! Each remote's buffer holds at most [`FORWARD_BYTES`] of chunk bodies (shared with the
//! request that brought them: a body is reference-counted, not copied). A chunk that does not
//! fit, or whose send failed, goes to the durable queue in the catalog instead (read back from
//! the store later, with back-off on failures).
//!
//! The buffer is not durable, and does not need to be: the durable unit of replication is the
//! snapshot, queued in the catalog at its commit, and sending a snapshot asks the remote about
//! every chunk it references and sends the ones it lacks. A chunk lost from the buffer (the
//! engine stopped, the remote was removed) costs only its head start: it goes with its snapshot.
//! An engine that stops before the commit has lost the upload session anyway.

use bytes::Bytes;
use kura_imaging::chunk::Digest;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The most chunk bytes held for one remote.
pub const FORWARD_BYTES: usize = 64 << 20;

/// One chunk waiting to be forwarded.
pub struct Forwarded {
    pub digest: Digest,
    pub blob: Bytes,
    /// The host whose capture stored it (the remote's session is begun for it).
    pub host: String,
}

#[derive(Default)]
struct Pending {
    items: VecDeque<Forwarded>,
    bytes: usize,
}

/// Per remote (by id), the chunks waiting to be forwarded, oldest first.
#[derive(Default)]
pub struct ForwardBuffer(Mutex<HashMap<i64, Pending>>);

impl ForwardBuffer {
    /// Holds `blob` for `remote` unless that would pass [`FORWARD_BYTES`]; `false` if it did
    /// not fit (the caller queues it durably).
    pub fn offer(&self, remote: i64, digest: Digest, blob: &Bytes, host: &str) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pending = all.entry(remote).or_default();
        if pending.bytes + blob.len() > FORWARD_BYTES {
            return false;
        }
        pending.bytes += blob.len();
        pending.items.push_back(Forwarded { digest, blob: blob.clone(), host: host.to_string() });
        true
    }

    /// Takes up to `n` of `remote`'s chunks, oldest first.
    pub fn take(&self, remote: i64, n: usize) -> Vec<Forwarded> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = all.get_mut(&remote) else { return Vec::new() };
        let n = n.min(pending.items.len());
        let out: Vec<Forwarded> = pending.items.drain(..n).collect();
        pending.bytes -= out.iter().map(|f| f.blob.len()).sum::<usize>();
        if pending.items.is_empty() {
            all.remove(&remote);
        }
        out
    }

    /// The remotes with chunks waiting.
    pub fn remotes(&self) -> Vec<i64> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut r: Vec<i64> = all.keys().copied().collect();
        r.sort_unstable();
        r
    }

    /// Drops what is held for `remote` (it was removed).
    pub fn forget(&self, remote: i64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&remote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u8) -> Digest {
        Digest::of(&[i])
    }

    #[test]
    fn a_remote_holds_at_most_its_bound_and_gives_chunks_back_oldest_first() {
        let buf = ForwardBuffer::default();
        let big = Bytes::from(vec![7u8; FORWARD_BYTES / 2]);
        assert!(buf.offer(1, digest(1), &big, "a"));
        assert!(buf.offer(1, digest(2), &big, "a"));
        assert!(!buf.offer(1, digest(3), &Bytes::from_static(b"x"), "a"), "the bound is reached");
        assert!(buf.offer(2, digest(3), &Bytes::from_static(b"x"), "b"), "another remote has its own");
        assert_eq!(buf.remotes(), vec![1, 2]);
        let first = buf.take(1, 1);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].digest, digest(1));
        assert!(buf.offer(1, digest(4), &Bytes::from_static(b"y"), "a"), "room again after a take");
        let rest: Vec<Digest> = buf.take(1, 10).into_iter().map(|f| f.digest).collect();
        assert_eq!(rest, vec![digest(2), digest(4)]);
        assert_eq!(buf.remotes(), vec![2]);
        buf.forget(2);
        assert!(buf.remotes().is_empty());
    }
}
