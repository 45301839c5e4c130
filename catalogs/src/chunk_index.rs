//! The chunk index of a remote store: which digests the store has (and their encoded sizes), so
//! "which of these chunks are missing?" and the commit's presence check cost no request. It is
//! kept in memory and in an append-only file in the engine's cache directory, and rebuilt from
//! a LIST of the store's `chunks/` when the file is lost, damaged or belongs to another store.
//!
//! ```text
//! CACHE/chunk-index      "kura-chunk-index 1 <store>\n" then one line per change:
//!                        "+<64 hex> <size>\n" (stored) or "-<64 hex>\n" (removed)
//! ```
//!
//! Safety: the index may list *fewer* chunks than the store (a `+` line lost in a crash, a
//! chunk another writer stored): that only costs an upload of a chunk already there. It must
//! never list a chunk the store lacks, so a removal's `-` line is written and `fsync`ed
//! *before* the DELETE is sent ([`ChunkIndex::before_remove`]). This holds while one engine
//! writes and collects a store prefix (docs/scale-out.md); a GC run elsewhere on the same
//! prefix would not be seen.
//!
//! A torn last line (a crash while appending) is ignored; any other damage rebuilds the index.
//!
//! An engine keeps this index in its catalog instead ([`SharedChunkIndex`], implemented by the
//! catalog in `db/cluster.rs`), so every engine node on the bucket sees the same index and the
//! collector on one node sees what writers on the others rely on. The file index serves the
//! offline commands.

use kura_imaging::chunk::Digest;
use kura_imaging::Error;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const HEADER: &str = "kura-chunk-index 1";
/// Log lines after which the file is rewritten on open (if most are stale).
const COMPACT_AFTER: usize = 100_000;

/// The chunk index of a store shared by several engines, with the writers' touch times (the
/// catalog's; the rules are in `crate::db::cluster`). Never lists as present a chunk the
/// store lacks.
pub trait SharedChunkIndex: Send + Sync {
    /// Marks `digests` as promised to a writer now (pending for those absent, so their upload
    /// is protected); returns which are present.
    fn touch(&self, digests: &[Digest]) -> Result<Vec<bool>, Error>;
    /// Which of `digests` are present (no touch).
    fn present(&self, digests: &[Digest]) -> Result<Vec<bool>, Error>;
    /// Records a chunk whose PUT returned.
    fn stored(&self, d: &Digest, size: u64) -> Result<(), Error>;
    /// Unless a writer touched `d` at or after `cutoff`: forgets it, then runs `delete` (the
    /// object's DELETE), atomically with respect to [`touch`](Self::touch). Returns whether it
    /// was removed.
    fn remove_if_untouched(
        &self,
        d: &Digest,
        cutoff: std::time::SystemTime,
        delete: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<bool, Error>;
    /// Forgets `d` (moved aside); durable on return.
    fn forget(&self, d: &Digest) -> Result<(), Error>;
    /// Present chunks and their summed encoded size.
    fn usage(&self) -> Result<(u64, u64), Error>;
    /// The store the index was filled from by a listing, if it was.
    fn built_from(&self) -> Result<Option<String>, Error>;
    /// Adds a listing of store `store` and records that the index was built from it.
    fn fill(&self, store: &str, chunks: &[(Digest, u64)]) -> Result<(), Error>;
}

pub struct ChunkIndex {
    path: PathBuf,
    chunks: Mutex<HashMap<Digest, u64>>,
    log: Mutex<File>,
}

fn err(what: String, e: io::Error) -> Error {
    Error::Store { message: format!("chunk index: {what}: {e}"), retryable: false }
}

/// How an index came to be, for the caller's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Read from its file.
    Loaded,
    /// Rebuilt from a listing of the store (the file was missing, damaged or another store's).
    Rebuilt,
}

impl ChunkIndex {
    /// Opens the index file at `path` for the store named `store`; if it is missing, damaged
    /// or another store's, rebuilds it from `list()` (every chunk in the store with its size).
    pub fn open(
        path: &Path,
        store: &str,
        list: impl FnOnce() -> Result<Vec<(Digest, u64)>, Error>,
    ) -> Result<(ChunkIndex, IndexOrigin), Error> {
        let header = format!("{HEADER} {store}");
        let (chunks, lines, origin) = match Self::read(path, &header) {
            Some((chunks, lines)) => (chunks, lines, IndexOrigin::Loaded),
            None => {
                let listed: HashMap<Digest, u64> = list()?.into_iter().collect();
                let n = listed.len();
                (listed, n, IndexOrigin::Rebuilt)
            }
        };
        if origin == IndexOrigin::Rebuilt || (lines > COMPACT_AFTER && lines > 2 * chunks.len()) {
            Self::rewrite(path, &header, &chunks)?;
        }
        let log = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| err(format!("opening {}", path.display()), e))?;
        Ok((ChunkIndex { path: path.to_path_buf(), chunks: Mutex::new(chunks), log: Mutex::new(log) }, origin))
    }

    /// The file's chunks and line count, or `None` if it must be rebuilt.
    fn read(path: &Path, header: &str) -> Option<(HashMap<Digest, u64>, usize)> {
        let whole = fs::read_to_string(path).ok()?;
        let mut lines: Vec<&str> = whole.split('\n').collect();
        // The last piece is "" after a final newline, or a line torn by a crash: ignored.
        lines.pop();
        let (first, rest) = lines.split_first()?;
        if *first != header {
            return None;
        }
        let mut chunks = HashMap::new();
        for line in rest {
            if let Some(entry) = line.strip_prefix('+') {
                let (hex, size) = entry.split_once(' ')?;
                chunks.insert(hex.parse::<Digest>().ok()?, size.parse::<u64>().ok()?);
            } else {
                chunks.remove(&line.strip_prefix('-')?.parse::<Digest>().ok()?);
            }
        }
        Some((chunks, rest.len()))
    }

    fn rewrite(path: &Path, header: &str, chunks: &HashMap<Digest, u64>) -> Result<(), Error> {
        let mut text = String::with_capacity(80 * chunks.len() + 80);
        text.push_str(header);
        text.push('\n');
        for (d, size) in chunks {
            text.push_str(&format!("+{d} {size}\n"));
        }
        crate::private::replace(path, text.as_bytes()).map_err(|e| err(format!("writing {}", path.display()), e))
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.chunks.lock().expect("lock").contains_key(d)
    }

    /// Records a chunk whose PUT returned (not synced: a lost line costs one re-upload).
    pub fn added(&self, d: &Digest, size: u64) -> Result<(), Error> {
        let mut log = self.log.lock().expect("lock");
        if self.chunks.lock().expect("lock").insert(*d, size).is_none() {
            log.write_all(format!("+{d} {size}\n").as_bytes())
                .map_err(|e| err(format!("appending to {}", self.path.display()), e))?;
        }
        Ok(())
    }

    /// Records, durably, that a chunk is about to be removed from the store: from now on it is
    /// reported missing. Call before the DELETE.
    pub fn before_remove(&self, d: &Digest) -> Result<(), Error> {
        let mut log = self.log.lock().expect("lock");
        self.chunks.lock().expect("lock").remove(d);
        log.write_all(format!("-{d}\n").as_bytes())
            .and_then(|_| log.sync_data())
            .map_err(|e| err(format!("appending to {}", self.path.display()), e))
    }

    /// Chunks and their summed encoded size, as the index knows them.
    pub fn usage(&self) -> (u64, u64) {
        let g = self.chunks.lock().expect("lock");
        (g.len() as u64, g.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> Digest {
        Digest::of(&[i])
    }

    #[test]
    fn rebuilt_when_lost_or_foreign_replayed_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk-index");
        let (idx, origin) = ChunkIndex::open(&path, "s3://b/p", || Ok(vec![(d(1), 10), (d(2), 20)])).unwrap();
        assert_eq!(origin, IndexOrigin::Rebuilt);
        idx.added(&d(3), 30).unwrap();
        idx.before_remove(&d(1)).unwrap();
        assert!(!idx.contains(&d(1)) && idx.contains(&d(3)));
        drop(idx);

        let never = || -> Result<Vec<(Digest, u64)>, Error> { panic!("listed although the index was intact") };
        let (idx, origin) = ChunkIndex::open(&path, "s3://b/p", never).unwrap();
        assert_eq!(origin, IndexOrigin::Loaded);
        assert_eq!(idx.usage(), (2, 50));
        assert!(!idx.contains(&d(1)) && idx.contains(&d(2)) && idx.contains(&d(3)));
        drop(idx);

        // A torn last line is ignored.
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(format!("+{}", d(4)).as_bytes()).unwrap();
        drop(f);
        let (idx, origin) = ChunkIndex::open(&path, "s3://b/p", never).unwrap();
        assert_eq!((origin, idx.contains(&d(4))), (IndexOrigin::Loaded, false));
        drop(idx);

        // Another store's index, or damage in the middle: rebuilt from the listing.
        let (idx, origin) = ChunkIndex::open(&path, "s3://other/p", || Ok(vec![(d(9), 1)])).unwrap();
        assert_eq!((origin, idx.usage()), (IndexOrigin::Rebuilt, (1, 1)));
        drop(idx);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace('+', "?")).unwrap();
        let (_, origin) = ChunkIndex::open(&path, "s3://other/p", || Ok(vec![])).unwrap();
        assert_eq!(origin, IndexOrigin::Rebuilt);
        fs::remove_file(&path).unwrap();
        let (_, origin) = ChunkIndex::open(&path, "s3://other/p", || Ok(vec![])).unwrap();
        assert_eq!(origin, IndexOrigin::Rebuilt);
    }
}
