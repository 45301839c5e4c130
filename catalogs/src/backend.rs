//! The store trait: what the engine and the offline commands need of a chunk store, whichever
//! backend holds it — the local directory ([`crate::store::LocalStore`]) or an S3-compatible
//! bucket ([`crate::s3::S3Store`]) — and opening one by its spec (`DIR` or `s3://bucket/prefix`).
//!
//! Both backends keep the same names: `chunks/<4 hex>/<64 hex>` (encoded chunks, named by
//! content digest), `snapshots/<16 hex>.kmf` (manifests, named by their hash) and
//! `quarantine/<64 hex>.<unix time>` (damaged chunks moved aside), under the directory or the
//! bucket's prefix. A store alone is enough to rebuild the catalog (`kura serve` reconciles).
//!
//! # Durability contract (every backend)
//!
//! - **No overwrites.** A chunk's name is its content and a manifest's name is its hash; putting
//!   a chunk that exists is a no-op (S3: at worst the same bytes are written again).
//! - **Nothing half-written is visible.** Local: temp file, then rename/link. S3: a PUT is
//!   atomic; an object exists whole or not at all.
//! - **A chunk is durable** — local: after [`Store::flush_staged`] (one `syncfs` per batch, see
//!   `store.rs`); S3: when its PUT returned success.
//! - **The manifest is written last**: [`Store::commit_manifest`] checks that every chunk the
//!   manifest names is present and durable before it writes the manifest.
//! - **A snapshot is visible only after the catalog records it**: the engine writes the
//!   manifest, then the snapshot row; a manifest without a row (a crash in between) is added by
//!   the reconcile at the next start, never served before.
//! - **Removal is two-phase and only by the GC** (`crate::gc`): mark every committed manifest,
//!   then sweep unreferenced chunks older than the grace period that no running writer touched.
//! - **Locked objects are never deleted** (S3 Object Lock, `crate::s3_lock`): the GC, snapshot
//!   deletion and retention check an object's retention before its DELETE and report it as
//!   [`Error::Locked`] instead.
//! - **Every read is checked by the reader** (the chunk decoder verifies the digest); a local
//!   cache (S3) is never the source of truth: a cached copy that fails its check is dropped and
//!   the object is read again.

use crate::store::{DamagedChunk, DamagedManifest, SnapshotInfo, StoreLock, StoreUsage, VerifyReport};
use kura_imaging::chunk::{ChunkSink, ChunkSource, Decoder, Digest};
use kura_imaging::flow::SnapshotSink;
use kura_imaging::manifest::{ChunkRef, Manifest, Pieced};
use kura_imaging::Error;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A chunk store. See the module docs for the durability contract every implementation keeps.
pub trait Store: SnapshotSink<Committed = String> + ChunkSource {
    /// Where the store is, for messages: a directory or `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Whether the chunk is present (or staged and sure to be durable before any commit).
    /// S3: answered by the local chunk index, not by a request.
    fn has(&self, d: &Digest) -> bool;

    /// Makes every staged chunk durable. Returns how many chunks this call placed.
    fn flush_staged(&self) -> Result<usize, Error>;

    /// Commits a snapshot: checks its chunks are durable, then writes its manifest (last).
    fn commit_manifest(&self, manifest: &Manifest) -> Result<String, Error>;

    /// Ids of all committed snapshots, sorted.
    fn snapshot_ids(&self) -> Result<Vec<String>, Error>;

    /// The encoded manifest of a committed snapshot, checked against its id.
    fn manifest_bytes(&self, id: &str) -> Result<Vec<u8>, Error>;

    /// Whether a committed manifest named `id` exists (damaged or not).
    fn manifest_exists(&self, id: &str) -> bool;

    /// Removes a snapshot's manifest (its chunks stay until garbage collection). Durable on return.
    fn remove_manifest(&self, id: &str) -> Result<(), Error>;

    /// Calls `f(digest, encoded size, time written)` for every chunk in place.
    fn for_each_chunk(&self, f: &mut dyn FnMut(Digest, u64, SystemTime) -> Result<(), Error>) -> Result<(), Error>;

    /// Whether a snapshot's manifest may be deleted now: `Err(Error::Locked)` while S3 Object
    /// Lock retains it (`crate::s3_lock`), checked before the catalog marks it for deletion.
    fn check_manifest_removable(&self, _id: &str) -> Result<(), Error> {
        Ok(())
    }

    /// Until when (unix seconds) a chunk written at `written` is retained by the store's default
    /// S3 Object Lock retention, if that has not ended: the GC skips it without a request.
    fn locked_until(&self, _written: SystemTime) -> Option<i64> {
        None
    }

    /// Removes a chunk (garbage collection only; see `gc`). Returns whether it existed.
    /// `Err(Error::Locked)` if S3 Object Lock retains it (nothing deleted).
    fn remove_chunk(&self, d: &Digest) -> Result<bool, Error>;

    /// Removes a chunk unless a writer on any engine node was told about it or uploaded it at
    /// or after `cutoff` (a store whose index is shared by several nodes: `crate::db::cluster`);
    /// for a store only this engine writes, the same as [`remove_chunk`](Self::remove_chunk)
    /// (the collector's [`crate::gc::WriterRegistry`] has checked). Returns whether it was removed.
    fn remove_chunk_untouched_since(&self, d: &Digest, _cutoff: SystemTime) -> Result<bool, Error> {
        self.remove_chunk(d)
    }

    /// Moves a damaged chunk aside into `quarantine/` (never deleting it), so that the next
    /// capture holding the same data stores it afresh. Returns where it went.
    fn quarantine_chunk(&self, d: &Digest) -> Result<String, Error>;

    /// Removes leftovers of interrupted writes (local `tmp/`); the caller holds the exclusive
    /// lock. Returns how many were removed.
    fn clean_tmp(&self) -> Result<usize, Error>;

    /// Takes the store's lock: exclusive for writers, shared for readers (local: `flock`; S3:
    /// the lock of this process's cache directory — several engine nodes share a bucket
    /// through the catalog instead, see `crate::db::cluster` and docs/scale-out.md).
    fn lock(&self, exclusive: bool) -> Result<StoreLock, Error>;

    /// Requests sent to a remote store since it was opened, by operation (`put`, `get`, …);
    /// empty for the local store.
    fn requests(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Hits and misses of a remote store's local chunk cache since it was opened.
    fn cache_hits_misses(&self) -> Option<(u64, u64)> {
        None
    }

    /// Reads a chunk from the store itself, past any cache (verification).
    fn read_uncached(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        self.get_chunk(d)
    }

    /// What the chunks in place take.
    fn usage(&self) -> Result<StoreUsage, Error> {
        let mut u = StoreUsage::default();
        self.for_each_chunk(&mut |_, len, _| {
            u.chunks += 1;
            u.bytes += len;
            Ok(())
        })?;
        Ok(u)
    }

    /// Resolves a full snapshot id or a unique prefix of one.
    fn resolve(&self, id_or_prefix: &str) -> Result<String, Error> {
        let ids = self.snapshot_ids()?;
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(id_or_prefix)).collect();
        match matches.as_slice() {
            [one] if !id_or_prefix.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(Error::Store {
                message: format!("no snapshot {id_or_prefix:?} in {}", self.describe()),
                retryable: false,
            }),
            _ => Err(Error::Store {
                message: format!("snapshot id {id_or_prefix:?} is ambiguous ({} matches)", matches.len()),
                retryable: false,
            }),
        }
    }

    /// Loads and validates a committed manifest (its hash must match its id).
    fn load_manifest(&self, id: &str) -> Result<Manifest, Error> {
        let bytes = self.manifest_bytes(id)?;
        Manifest::decode(&bytes).map_err(|e| Error::Manifest(format!("snapshot {id}: {e}")))
    }

    fn snapshot_info(&self, id: &str) -> Result<SnapshotInfo, Error> {
        let m = self.load_manifest(id)?;
        Ok(SnapshotInfo {
            id: id.to_string(),
            name: m.name.clone(),
            created: m.created.clone(),
            source: m.source.clone(),
            host: m.host.clone(),
            disk_size: m.disk_size(),
            used_bytes: m.used_bytes(),
            scheme: m.layout.scheme,
            partitions: m.layout.partitions.len(),
            chunks: m.data_digests().count(),
            unique_chunks: m.unique_digests().len(),
        })
    }

    /// Every committed snapshot, oldest first.
    fn list(&self) -> Result<Vec<SnapshotInfo>, Error> {
        let mut out = Vec::new();
        for id in self.snapshot_ids()? {
            out.push(self.snapshot_info(&id)?);
        }
        out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(out)
    }

    /// The snapshot a new capture of this disk is an increment of (`CaptureOptions::parent`):
    /// the newest one of the same host (or, with no host, of the same source path) and the same
    /// disk size. Damaged manifests are passed over.
    fn parent_for(
        &self,
        host: Option<&str>,
        source: &str,
        disk_size: u64,
    ) -> Result<Option<(String, Manifest)>, Error> {
        let same = |m: &Manifest| {
            m.disk_size() == disk_size
                && match host {
                    Some(h) => m.host.as_deref() == Some(h),
                    None => m.host.is_none() && m.source == source,
                }
        };
        // One decode per manifest; the newest by (created, id), as `list` orders them.
        let mut newest: Option<(String, Manifest)> = None;
        for id in self.snapshot_ids()? {
            let Ok(m) = self.load_manifest(&id) else { continue };
            if same(&m) && newest.as_ref().is_none_or(|(nid, n)| (&m.created, &id) > (&n.created, nid)) {
                newest = Some((id, m));
            }
        }
        Ok(newest)
    }

    /// Re-reads from the store (past any cache) and fully re-checks (decompress + SHA-256)
    /// every chunk the selected snapshots need (all if `only` is `None`), and reports each
    /// damaged or missing chunk with the snapshots that need it; then assembles each pieced
    /// chunk ([`kura_imaging::pieced`]) and checks it against its content digest. Reads only;
    /// repairs nothing.
    fn verify(
        &self,
        only: Option<&str>,
        threads: usize,
        progress: &dyn kura_imaging::progress::Progress,
    ) -> Result<VerifyReport, Error> {
        let ids = match only {
            Some(id) => vec![self.resolve(id)?],
            None => self.snapshot_ids()?,
        };
        let mut users: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        // Pieced chunks by content digest: the entry, its length, the snapshots using it.
        let mut pieced: BTreeMap<Digest, (Pieced, usize, Vec<String>)> = BTreeMap::new();
        let mut damaged_manifests = Vec::new();
        for id in &ids {
            match self.load_manifest(id) {
                Ok(m) => {
                    for d in m.unique_digests() {
                        users.entry(d).or_default().push(id.clone());
                    }
                    for r in &m.regions {
                        for (i, c) in r.chunks.iter().enumerate() {
                            if let ChunkRef::Pieced(p) = c {
                                let e = pieced
                                    .entry(p.digest)
                                    .or_insert_with(|| ((**p).clone(), m.chunk_len(r, i) as usize, Vec::new()));
                                if e.2.last() != Some(id) {
                                    e.2.push(id.clone());
                                }
                            }
                        }
                    }
                }
                Err(e) => damaged_manifests.push(DamagedManifest { id: id.clone(), reason: e.to_string() }),
            }
        }
        let digests: Vec<(&Digest, &Vec<String>)> = users.iter().collect();
        progress.set_total(digests.len() as u64);
        let next = AtomicUsize::new(0);
        let damaged = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| {
                    let Ok(mut dec) = Decoder::new() else { return };
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((d, snaps)) = digests.get(i) else { break };
                        let r = self.read_uncached(d).and_then(|blob| dec.decode_into(&blob, d, &mut out));
                        if let Err(e) = r {
                            let reason = match e {
                                Error::ChunkCorrupt { reason, .. } => reason,
                                Error::ChunkMissing { .. } => "missing".to_string(),
                                other => other.to_string(),
                            };
                            damaged.lock().expect("lock").push(DamagedChunk {
                                digest: d.to_hex(),
                                reason,
                                snapshots: (*snaps).clone(),
                            });
                        }
                        progress.advance(1);
                    }
                });
            }
        });
        let mut damaged = damaged.into_inner().expect("lock");
        // Pieced chunks whose parts are all intact: does their assembly give their content?
        let bad: std::collections::HashSet<String> = damaged.iter().map(|d| d.digest.clone()).collect();
        let (mut dec, mut out, mut scratch) = (Decoder::new()?, Vec::new(), Vec::new());
        for (d, (p, len, snaps)) in &pieced {
            if p.stored().any(|s| bad.contains(&s.to_hex())) {
                continue;
            }
            if let Err(e) = kura_imaging::pieced::assemble(&Uncached(self), &mut dec, p, *len, &mut out, &mut scratch) {
                let reason = match e {
                    Error::ChunkCorrupt { reason, .. } => reason,
                    other => other.to_string(),
                };
                damaged.push(DamagedChunk {
                    digest: d.to_hex(),
                    reason: format!("pieced chunk: {reason}"),
                    snapshots: snaps.clone(),
                });
            }
        }
        damaged.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(VerifyReport {
            ok: damaged.is_empty() && damaged_manifests.is_empty(),
            snapshots_checked: ids.len(),
            chunks_checked: digests.len() as u64,
            damaged,
            damaged_manifests,
        })
    }
}

/// A store read past its cache, as a chunk source (what `verify` assembles pieced chunks from).
struct Uncached<'a, S: ?Sized>(&'a S);

impl<S: Store + ?Sized> ChunkSource for Uncached<'_, S> {
    fn get_chunk(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        self.0.read_uncached(digest)
    }
}

/// Where the local cache of a remote store lives and how large it may grow.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The cache directory (made private); `None`: a temporary one, gone with the process.
    pub dir: Option<std::path::PathBuf>,
    /// Bytes of cached chunks after which the least recently used are evicted.
    pub max_bytes: u64,
}

/// Default size bound of the local chunk cache of an S3 store.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { dir: None, max_bytes: DEFAULT_CACHE_BYTES }
    }
}

/// Whether `spec` names a remote (S3) store rather than a directory.
pub fn is_remote(spec: &str) -> bool {
    spec.starts_with("s3://")
}

/// Opens an existing store: a directory, or `s3://bucket/prefix?…` (see [`crate::s3`]).
pub fn open(spec: &str, cache: &CacheOptions) -> Result<Arc<dyn Store>, Error> {
    if is_remote(spec) {
        Ok(Arc::new(crate::s3::S3Store::open(spec, cache, false)?))
    } else {
        Ok(Arc::new(crate::store::LocalStore::open(Path::new(spec))?))
    }
}

/// Opens a store, creating it if it is missing (an empty directory or prefix).
pub fn open_or_create(spec: &str, cache: &CacheOptions) -> Result<Arc<dyn Store>, Error> {
    if is_remote(spec) {
        Ok(Arc::new(crate::s3::S3Store::open(spec, cache, true)?))
    } else {
        Ok(Arc::new(crate::store::LocalStore::open_or_create(Path::new(spec))?))
    }
}

/// A `&dyn Store` as the sized sink the imaging flows take (`capture_flow`, `fit`).
pub struct Sink<'a>(pub &'a dyn Store);

impl ChunkSink for Sink<'_> {
    fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, Error> {
        self.0.missing(digests)
    }

    fn put_chunk(&self, digest: &Digest, blob: &[u8]) -> Result<bool, Error> {
        self.0.put_chunk(digest, blob)
    }

    fn puts_in_flight(&self) -> usize {
        self.0.puts_in_flight()
    }

    fn piece_digests(&self, digest: &Digest, piece_size: u32) -> Result<Option<Vec<Digest>>, Error> {
        self.0.piece_digests(digest, piece_size)
    }
}

impl SnapshotSink for Sink<'_> {
    type Committed = String;

    fn commit(&self, manifest: &Manifest) -> Result<String, Error> {
        self.0.commit(manifest)
    }

    fn abort(&self) {
        self.0.abort()
    }
}

impl ChunkSource for Sink<'_> {
    fn get_chunk(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        self.0.get_chunk(digest)
    }

    fn gets_in_flight(&self) -> usize {
        self.0.gets_in_flight()
    }
}
