//! The local chunk cache of a remote store: encoded chunks in a private directory, bounded in
//! size, evicting the least recently used. It survives restarts (the order is kept in the files'
//! modification times, set on every use) and is never the source of truth: a cached copy is
//! checked (`check_quick`: header and payload CRC) on every read and dropped if it fails, and
//! consumers decode with the digest check as they do for any store.
//!
//! ```text
//! CACHE/chunks/<4 hex>/<64 hex>   cached encoded chunks
//! CACHE/tmp/                      files being written (emptied on open)
//! ```
//!
//! Writes are not `fsync`ed: a crash may lose or truncate a cached chunk, which the check on
//! read catches.

use kura_imaging::chunk::{check_quick, Digest};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Default)]
struct Lru {
    /// Chunk → (encoded size, use stamp).
    entries: HashMap<Digest, (u64, u64)>,
    /// Use stamp → chunk: the oldest first.
    order: BTreeMap<u64, Digest>,
    bytes: u64,
    next: u64,
}

impl Lru {
    fn touch(&mut self, d: &Digest) -> bool {
        let stamp = self.next;
        let Some(e) = self.entries.get_mut(d) else { return false };
        self.order.remove(&e.1);
        e.1 = stamp;
        self.order.insert(stamp, *d);
        self.next += 1;
        true
    }

    fn insert(&mut self, d: Digest, size: u64) {
        self.remove(&d);
        let stamp = self.next;
        self.next += 1;
        self.entries.insert(d, (size, stamp));
        self.order.insert(stamp, d);
        self.bytes += size;
    }

    fn remove(&mut self, d: &Digest) -> bool {
        match self.entries.remove(d) {
            Some((size, stamp)) => {
                self.order.remove(&stamp);
                self.bytes -= size;
                true
            }
            None => false,
        }
    }
}

/// Cache statistics since the cache was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Cached copies that failed their check and were dropped.
    pub dropped_bad: u64,
    pub evicted: u64,
    pub bytes: u64,
    pub chunks: u64,
}

pub struct ChunkCache {
    root: PathBuf,
    max_bytes: u64,
    lru: Mutex<Lru>,
    tmp_counter: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    dropped_bad: AtomicU64,
    evicted: AtomicU64,
}

fn io_err(what: String, e: io::Error) -> kura_imaging::Error {
    kura_imaging::Error::Store { message: format!("chunk cache: {what}: {e}"), retryable: false }
}

impl ChunkCache {
    /// Opens (creating) the cache in `root`, holding at most `max_bytes` of chunks. Reads the
    /// existing entries in their last-use order and evicts down to the bound.
    pub fn open(root: &Path, max_bytes: u64) -> Result<ChunkCache, kura_imaging::Error> {
        for d in ["chunks", "tmp"] {
            crate::private::create_dir_all(&root.join(d))
                .map_err(|e| io_err(format!("creating {}", root.display()), e))?;
        }
        for e in fs::read_dir(root.join("tmp")).map_err(|e| io_err("listing tmp/".into(), e))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut found: Vec<(SystemTime, Digest, u64)> = Vec::new();
        let top = root.join("chunks");
        for shard in fs::read_dir(&top).map_err(|e| io_err(format!("listing {}", top.display()), e))?.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else { continue };
            for f in files.flatten() {
                let Some(d) = f.file_name().to_str().and_then(|n| n.parse::<Digest>().ok()) else { continue };
                let Ok(md) = f.metadata() else { continue };
                found.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), d, md.len()));
            }
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, d, size) in found {
            lru.insert(d, size);
        }
        let cache = ChunkCache {
            root: root.to_path_buf(),
            max_bytes,
            lru: Mutex::new(lru),
            tmp_counter: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            dropped_bad: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        };
        cache.evict();
        Ok(cache)
    }

    fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join("chunks").join(&hex[..4]).join(hex)
    }

    /// The cached chunk, if present and sound (a copy that fails its check is dropped).
    pub fn get(&self, d: &Digest) -> Option<Vec<u8>> {
        if !self.lru.lock().expect("lock").touch(d) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let path = self.path(d);
        match fs::read(&path) {
            Ok(blob) if check_quick(&blob, d).is_ok() => {
                // The last use survives a restart: the order is rebuilt from these times.
                if let Ok(f) = fs::File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(blob)
            }
            Ok(_) => {
                self.dropped_bad.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.remove(d);
                None
            }
            Err(_) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.lru.lock().expect("lock").remove(d);
                None
            }
        }
    }

    /// Keeps a copy of a chunk (best effort: a cache that cannot write only costs latency).
    pub fn put(&self, d: &Digest, blob: &[u8]) {
        if blob.len() as u64 > self.max_bytes || self.lru.lock().expect("lock").entries.contains_key(d) {
            return;
        }
        let dest = self.path(d);
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}.{}.{n}", std::process::id(), d.to_hex()));
        let r = (|| -> io::Result<()> {
            let mut f = crate::private::create_new(&tmp)?;
            f.write_all(blob)?;
            if let Some(dir) = dest.parent() {
                crate::private::create_dir_all(dir)?;
            }
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            tracing::warn!("chunk cache: cannot keep chunk {d}: {e}");
            return;
        }
        self.lru.lock().expect("lock").insert(*d, blob.len() as u64);
        self.evict();
    }

    /// Drops a cached chunk (removed or quarantined in the store, or found bad).
    pub fn remove(&self, d: &Digest) {
        if self.lru.lock().expect("lock").remove(d) {
            let _ = fs::remove_file(self.path(d));
        }
    }

    /// Evicts the least recently used chunks until the cache is within its bound.
    fn evict(&self) {
        loop {
            let victim = {
                let mut lru = self.lru.lock().expect("lock");
                if lru.bytes <= self.max_bytes {
                    return;
                }
                let Some(d) = lru.order.values().next().copied() else { return };
                lru.remove(&d);
                d
            };
            let _ = fs::remove_file(self.path(&victim));
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let lru = self.lru.lock().expect("lock");
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            dropped_bad: self.dropped_bad.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            bytes: lru.bytes,
            chunks: lru.entries.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_imaging::chunk::Encoder;

    fn blob(data: &[u8]) -> (Digest, Vec<u8>) {
        let d = Digest::of(data);
        let mut out = Vec::new();
        Encoder::new(3).unwrap().encode_into(&d, data, &mut out).unwrap();
        (d, out)
    }

    #[test]
    fn lru_bounded_survives_reopen_and_drops_bad_copies() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<(Digest, Vec<u8>)> = (0..4u8).map(|i| blob(&[i; 1000])).collect();
        let size = chunks[0].1.len() as u64;
        assert!(chunks.iter().all(|(_, b)| b.len() as u64 == size));
        let cache = ChunkCache::open(dir.path(), 3 * size).unwrap();
        for (d, b) in &chunks[..3] {
            cache.put(d, b);
        }
        // Use 0, so 1 is the least recently used when 3 arrives.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(cache.get(&chunks[0].0).as_deref(), Some(&chunks[0].1[..]));
        cache.put(&chunks[3].0, &chunks[3].1);
        assert!(cache.get(&chunks[1].0).is_none(), "the least recently used was not evicted");
        let s = cache.stats();
        assert_eq!((s.chunks, s.bytes, s.evicted), (3, 3 * size, 1));
        drop(cache);

        // Reopened smaller: the order of use survived (0 and 3 were used last; 2 goes).
        let cache = ChunkCache::open(dir.path(), 2 * size).unwrap();
        assert!(cache.get(&chunks[2].0).is_none());
        assert!(cache.get(&chunks[0].0).is_some() && cache.get(&chunks[3].0).is_some());

        // A damaged copy is never served.
        let hex = chunks[0].0.to_hex();
        let path = dir.path().join("chunks").join(&hex[..4]).join(&hex);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(cache.get(&chunks[0].0).is_none());
        assert_eq!(cache.stats().dropped_bad, 1);
        assert!(!path.exists());
    }
}
