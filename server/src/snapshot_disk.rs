//! A snapshot's whole disk as random-access bytes, read lazily: a byte range maps to the
//! manifest's chunks; a data chunk is fetched from the [`ChunkSource`] (local store or engine),
//! fully checked and decoded, and kept in a bounded LRU cache of decoded chunks shared by every
//! reader; unused and all-zero chunks, and any byte no region covers, read as zeros (the capture
//! zeroes the unused bytes inside a data chunk), so the disk reads exactly as a restore onto a
//! new file writes it.
//!
//! The cache lock is held only to look up and insert, never while fetching or decoding, so
//! concurrent readers fetch in parallel (two readers missing the same chunk may both fetch it).
//!
//! Shared by `kura nbd` (the disk as an NBD export, `nbd::disk`) and `kura files` (its
//! partitions as `Read + Seek` for the filesystem readers, `files::partition`). It counts what
//! it fetched ([`FetchStats`]), so a caller can show how little of a snapshot it needed.

use anyhow::{bail, Context};
use kura_imaging::chunk::{ChunkSource, Decoder, Digest};
use kura_imaging::manifest::{ChunkRef, Manifest, Pieced};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Decoded chunk bytes the cache may hold by default (at least one chunk): `kura nbd`'s
/// clients read the whole disk in any order.
pub const CACHE_BYTES: u64 = 256 << 20;

pub struct SnapshotDisk {
    id: String,
    manifest: Manifest,
    source: Arc<dyn ChunkSource>,
    cache: Mutex<Lru>,
    decoders: Mutex<Vec<Decoder>>,
    fetched_chunks: AtomicU64,
    fetched_bytes: AtomicU64,
}

/// What a [`SnapshotDisk`] fetched from its source so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct FetchStats {
    /// Chunks fetched (a chunk evicted from the cache and read again counts twice).
    pub chunks: u64,
    /// Their bytes as stored (encoded, compressed): what crossed the network from an engine.
    pub bytes: u64,
}

impl SnapshotDisk {
    /// The disk `manifest` describes, its chunks from `source`, with a cache of `cache_bytes`
    /// decoded bytes (at least one chunk).
    pub fn new(
        id: String,
        manifest: Manifest,
        source: Arc<dyn ChunkSource>,
        cache_bytes: u64,
    ) -> anyhow::Result<SnapshotDisk> {
        // Regions sorted, not overlapping, within the disk: reads rely on it.
        let mut end = 0u64;
        for r in &manifest.regions {
            let r_end = r.start.checked_add(r.size).context("region past 2^64")?;
            if r.start < end || r_end > manifest.disk_size() {
                bail!("snapshot {id}: region at byte {} overlaps another or ends past the disk", r.start);
            }
            if (r.chunks.len() as u64) < r.size.div_ceil(manifest.chunk_size.max(1) as u64) {
                bail!("snapshot {id}: region at byte {} has too few chunks", r.start);
            }
            end = r_end;
        }
        let capacity = (cache_bytes / manifest.chunk_size.max(1) as u64).max(1) as usize;
        Ok(SnapshotDisk {
            id,
            manifest,
            source,
            cache: Mutex::new(Lru::new(capacity)),
            decoders: Mutex::new(Vec::new()),
            fetched_chunks: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        })
    }

    /// The snapshot's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.manifest.disk_size()
    }

    /// What was fetched from the source so far.
    pub fn stats(&self) -> FetchStats {
        FetchStats {
            chunks: self.fetched_chunks.load(Ordering::Relaxed),
            bytes: self.fetched_bytes.load(Ordering::Relaxed),
        }
    }

    /// The decoded chunk `digest`, `len` bytes long, from the cache or the source.
    fn chunk(&self, digest: &Digest, len: usize) -> anyhow::Result<Arc<Vec<u8>>> {
        self.cached(digest, len, |dec, out| {
            let blob = self.source.get_chunk(digest)?;
            self.fetched_chunks.fetch_add(1, Ordering::Relaxed);
            self.fetched_bytes.fetch_add(blob.len() as u64, Ordering::Relaxed);
            dec.decode_into(&blob, digest, out)?;
            if out.len() != len {
                bail!("chunk {digest} holds {} bytes where the snapshot needs {len}", out.len());
            }
            Ok(())
        })
    }

    /// The assembled pieced chunk `p` ([`kura_imaging::pieced`]), `len` bytes long, cached under
    /// its content digest.
    fn pieced(&self, p: &Pieced, len: usize) -> anyhow::Result<Arc<Vec<u8>>> {
        self.cached(&p.digest, len, |dec, out| {
            kura_imaging::pieced::assemble(&*self.source, dec, p, len, out, &mut Vec::new())?;
            self.fetched_chunks.fetch_add(1 + p.patches.len() as u64, Ordering::Relaxed);
            Ok(())
        })
    }

    /// The content `digest` from the cache, or made by `fill` (with a pooled decoder) and cached.
    fn cached(
        &self,
        digest: &Digest,
        len: usize,
        fill: impl FnOnce(&mut Decoder, &mut Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<Arc<Vec<u8>>> {
        if let Some(c) = self.cache.lock().expect("lock").get(digest) {
            return Ok(c);
        }
        let mut dec = match self.decoders.lock().expect("lock").pop() {
            Some(d) => d,
            None => Decoder::new()?,
        };
        let mut out = Vec::with_capacity(len);
        let r = fill(&mut dec, &mut out);
        self.decoders.lock().expect("lock").push(dec);
        r?;
        let out = Arc::new(out);
        self.cache.lock().expect("lock").insert(*digest, out.clone());
        Ok(out)
    }

    /// Fills `buf` with the disk's bytes at `offset` (the range must lie within the disk).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let m = &self.manifest;
        let cs = m.chunk_size as u64;
        let end = offset.checked_add(buf.len() as u64).context("read past 2^64")?;
        if end > m.disk_size() {
            bail!("read of bytes {offset}..{end} past the disk's {} bytes", m.disk_size());
        }
        let mut pos = offset;
        while pos < end {
            let out = &mut buf[(pos - offset) as usize..];
            // The last region starting at or before `pos`.
            let idx = m.regions.partition_point(|r| r.start <= pos);
            let region = idx.checked_sub(1).map(|i| &m.regions[i]).filter(|r| pos < r.start + r.size);
            let Some(r) = region else {
                // Not covered by any region: zeros up to the next region or the end.
                let next = m.regions.get(idx).map_or(end, |r| r.start.min(end));
                let n = (next - pos) as usize;
                out[..n].fill(0);
                pos += n as u64;
                continue;
            };
            let i = ((pos - r.start) / cs) as usize;
            let chunk_start = r.start + i as u64 * cs;
            let chunk_len = m.chunk_len(r, i);
            let within = (pos - chunk_start) as usize;
            let n = ((chunk_start + chunk_len).min(end) - pos) as usize;
            match &r.chunks[i] {
                ChunkRef::Unused | ChunkRef::Zero => out[..n].fill(0),
                ChunkRef::Data(d) => {
                    let c = self.chunk(d, chunk_len as usize)?;
                    out[..n].copy_from_slice(&c[within..within + n]);
                }
                ChunkRef::Pieced(p) => {
                    let c = self.pieced(p, chunk_len as usize)?;
                    out[..n].copy_from_slice(&c[within..within + n]);
                }
            }
            pos += n as u64;
        }
        Ok(())
    }
}

/// Least recently used decoded chunks, at most `capacity` of them.
struct Lru {
    capacity: usize,
    tick: u64,
    entries: HashMap<Digest, (Arc<Vec<u8>>, u64)>,
    order: BTreeMap<u64, Digest>,
}

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru { capacity: capacity.max(1), tick: 0, entries: HashMap::new(), order: BTreeMap::new() }
    }

    fn get(&mut self, d: &Digest) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        let (data, used) = self.entries.get_mut(d)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, *d);
        Some(data.clone())
    }

    fn insert(&mut self, d: Digest, data: Arc<Vec<u8>>) {
        self.tick += 1;
        if let Some((_, used)) = self.entries.insert(d, (data, self.tick)) {
            self.order.remove(&used);
        }
        self.order.insert(self.tick, d);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    #[test]
    fn lru_keeps_the_most_recently_used_within_its_capacity() {
        let mut lru = Lru::new(2);
        lru.insert(d(1), Arc::new(vec![1]));
        lru.insert(d(2), Arc::new(vec![2]));
        assert!(lru.get(&d(1)).is_some()); // 2 is now the least recently used
        lru.insert(d(3), Arc::new(vec![3]));
        assert!(lru.get(&d(2)).is_none());
        assert_eq!(lru.get(&d(1)).unwrap()[0], 1);
        assert_eq!(lru.get(&d(3)).unwrap()[0], 3);
        assert_eq!((lru.entries.len(), lru.order.len()), (2, 2));
        // Re-inserting an entry does not grow the order index.
        lru.insert(d(3), Arc::new(vec![3]));
        assert_eq!((lru.entries.len(), lru.order.len()), (2, 2));
    }
}
