//! Garbage collection of the chunk store, and the registry of running writers that keeps it
//! safe beside captures.
//!
//! # Design
//!
//! A chunk may be removed only if no committed snapshot references it **and** no running writer
//! may still reference it. Writers (upload sessions) register in the [`WriterRegistry`]; every
//! chunk a writer is told the store *has* (so it will not upload it) and every chunk it uploads
//! is recorded in its *touched* set, under the registry's lock. The sweep removes a chunk only
//! under that same lock, after checking no writer touched it. So a chunk reported present to a
//! writer cannot disappear before that writer commits or goes away, and a chunk that a writer
//! is about to be told about is either removed first (and then reported missing and uploaded
//! again) or kept.
//!
//! 1. **Mark**: make staged chunks files (see the store's durability contract), then read every
//!    committed manifest and collect the digests they reference. Any error (an unreadable or
//!    damaged manifest, an I/O error) aborts the whole run before anything is deleted: a
//!    snapshot we cannot read may need any chunk. A manifest deleted since it was listed is
//!    skipped.
//! 2. **Sweep**: walk `chunks/`. Keep referenced chunks; keep chunks whose file is younger than
//!    the grace period (this covers writers in other processes, e.g. an offline capture into
//!    the same store, which the registry cannot see); remove the rest through
//!    [`WriterRegistry::remove_if_untouched`].
//!
//! File access times are never consulted (they are unreliable under `noatime`/`relatime`);
//! the modification time used for the grace period is set once when a chunk is written.
//!
//! Snapshots committed while a collection runs are safe although the mark may have missed
//! them: their chunks were touched by their writer, which stays registered until its commit
//! finished, and a writer that ends during a collection leaves its touched set *retained*
//! until that collection is over.
//!
//! Other processes: `kura serve` holds the store's exclusive lock for its lifetime and offline
//! captures take it for their duration, so no writer outside the registry runs beside a
//! collection; the grace period is a second line of defence.
//!
//! The same rules hold for any [`Store`]. On S3 the sweep walks a LIST of `chunks/` (the grace
//! period uses each object's `LastModified`), presence comes from the engine's chunk index,
//! and a removal is recorded durably in that index before its DELETE is sent, so a writer is
//! never told a removed chunk is present.
//!
//! Several engine nodes on one bucket: the registry is per node, so writers on other nodes are
//! seen through the catalog (`crate::db::cluster`): the caller passes the start of the oldest
//! live writer lease on any node ([`GcOptions::writers_since`]); the sweep's cutoff is the
//! earlier of that and its own start, minus the grace period; and a chunk is removed only
//! through [`Store::remove_chunk_untouched_since`], which keeps any chunk a writer on any node
//! was told about or uploaded after the cutoff.
//!
//! In a bucket with S3 Object Lock an unreferenced chunk still under retention is not removed:
//! the sweep counts it as *locked* (with the latest retain-until date) and goes on. The
//! bucket's default retention is judged from the listing alone ([`Store::locked_until`]); a
//! longer retention set on the object itself is found by the store's check before its DELETE
//! ([`Error::Locked`]). A later collection removes the chunk once its retention has ended.

use crate::backend::Store;
use kura_imaging::chunk::Digest;
use kura_imaging::Error;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Identifies one running writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriterId(u64);

impl WriterId {
    pub fn get(self) -> u64 {
        self.0
    }
}

struct Writer {
    touched: HashSet<Digest>,
    last_seen: Instant,
}

#[derive(Default)]
struct Inner {
    next: u64,
    writers: HashMap<WriterId, Writer>,
    /// Number of collections running.
    collecting: u32,
    /// Chunks touched by writers that ended while a collection ran: the collection's mark may
    /// predate their commit, so they stay protected until it finishes.
    retained: HashSet<Digest>,
}

/// Running writers and the chunks they rely on. See the module docs.
#[derive(Default)]
pub struct WriterRegistry {
    inner: Mutex<Inner>,
}

impl WriterRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self) -> WriterId {
        let mut g = self.inner.lock().expect("lock");
        g.next += 1;
        let id = WriterId(g.next);
        g.writers.insert(id, Writer { touched: HashSet::new(), last_seen: Instant::now() });
        id
    }

    /// Ends a writer (committed or aborted); its chunks lose their protection once no
    /// collection that may have missed its commit is running.
    pub fn unregister(&self, id: WriterId) {
        let mut g = self.inner.lock().expect("lock");
        if let Some(w) = g.writers.remove(&id) {
            if g.collecting > 0 {
                g.retained.extend(w.touched);
            }
        }
    }

    fn begin_collection(&self) {
        self.inner.lock().expect("lock").collecting += 1;
    }

    fn end_collection(&self) {
        let mut g = self.inner.lock().expect("lock");
        g.collecting -= 1;
        if g.collecting == 0 {
            g.retained.clear();
        }
    }

    pub fn is_registered(&self, id: WriterId) -> bool {
        self.inner.lock().expect("lock").writers.contains_key(&id)
    }

    /// Removes writers not seen for `idle`; returns how many.
    pub fn expire_idle(&self, idle: Duration) -> usize {
        let mut g = self.inner.lock().expect("lock");
        let before = g.writers.len();
        g.writers.retain(|_, w| w.last_seen.elapsed() < idle);
        before - g.writers.len()
    }

    /// Answers "which of these does the store lack?" for writer `id` and protects the chunks
    /// it was told are present. `Ok(None)` if the writer is not registered.
    pub fn missing(
        &self,
        id: WriterId,
        store: &(impl Store + ?Sized),
        digests: &[Digest],
    ) -> Result<Option<Vec<bool>>, Error> {
        let mut g = self.inner.lock().expect("lock");
        let Some(w) = g.writers.get_mut(&id) else {
            return Ok(None);
        };
        w.last_seen = Instant::now();
        let missing = store.missing(digests)?;
        for (d, m) in digests.iter().zip(&missing) {
            if !m {
                w.touched.insert(*d);
            }
        }
        Ok(Some(missing))
    }

    /// Records that writer `id` stored (or relies on) chunk `d`. Returns false if the writer is
    /// not registered.
    pub fn touch(&self, id: WriterId, d: &Digest) -> bool {
        let mut g = self.inner.lock().expect("lock");
        match g.writers.get_mut(&id) {
            Some(w) => {
                w.last_seen = Instant::now();
                w.touched.insert(*d);
                true
            }
            None => false,
        }
    }

    /// Runs `f` while no writer can be told about or touch any chunk.
    pub fn exclusive<T>(&self, f: impl FnOnce(&dyn Fn(&Digest) -> bool) -> T) -> T {
        let g = self.inner.lock().expect("lock");
        let touched = |d: &Digest| g.retained.contains(d) || g.writers.values().any(|w| w.touched.contains(d));
        f(&touched)
    }

    /// Removes chunk `d` from `store` unless a running writer touched it (here, or on another
    /// node after `cutoff`); atomic with respect to [`missing`](Self::missing) and
    /// [`touch`](Self::touch). Returns whether it was removed.
    pub fn remove_if_untouched(
        &self,
        store: &(impl Store + ?Sized),
        d: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool, Error> {
        self.exclusive(|touched| if touched(d) { Ok(false) } else { store.remove_chunk_untouched_since(d, cutoff) })
    }
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Chunks written more recently than this are kept even if unreferenced.
    pub grace: Duration,
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
    /// When the oldest writer still running on any engine node started (the catalog's writer
    /// leases), for a store several nodes share; `None`: only this node writes.
    pub writers_since: Option<SystemTime>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { grace: Duration::from_secs(3600), dry_run: false, writers_since: None }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub snapshots: usize,
    pub chunks_seen: u64,
    pub referenced: u64,
    pub kept_recent: u64,
    pub kept_touched: u64,
    pub removed: u64,
    pub removed_bytes: u64,
    /// Unreferenced chunks kept because S3 Object Lock still retains them.
    pub locked: u64,
    /// The latest retain-until date (RFC 3339) among the locked chunks.
    pub locked_until: Option<String>,
}

/// One mark-and-sweep pass. See the module docs for why it is safe beside running writers.
pub fn collect(store: &(impl Store + ?Sized), registry: &WriterRegistry, opts: &GcOptions) -> Result<GcReport, Error> {
    registry.begin_collection();
    let r = collect_inner(store, registry, opts);
    registry.end_collection();
    r
}

fn collect_inner(
    store: &(impl Store + ?Sized),
    registry: &WriterRegistry,
    opts: &GcOptions,
) -> Result<GcReport, Error> {
    let started = SystemTime::now();
    let mut report = GcReport::default();

    // Mark. Any failure aborts before the sweep.
    let mut referenced: HashSet<Digest> = HashSet::new();
    // Staged chunks become files first, so those of abandoned writers can be collected too.
    store.flush_staged()?;
    for id in store.snapshot_ids()? {
        let m = match store.load_manifest(&id) {
            Ok(m) => m,
            // Deleted since it was listed: it references nothing any more.
            Err(_) if !store.manifest_exists(&id) => continue,
            Err(e) => {
                return Err(Error::Store {
                    message: format!("garbage collection aborted, nothing deleted: cannot read snapshot {id}: {e}"),
                    retryable: false,
                })
            }
        };
        referenced.extend(m.data_digests().copied());
        report.snapshots += 1;
    }
    report.referenced = referenced.len() as u64;

    // Sweep.
    let since = opts.writers_since.map_or(started, |w| w.min(started));
    let cutoff = since.checked_sub(opts.grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut latest_lock: Option<i64> = None;
    store.for_each_chunk(&mut |d, size, mtime| {
        report.chunks_seen += 1;
        if referenced.contains(&d) {
            return Ok(());
        }
        if mtime > cutoff {
            report.kept_recent += 1;
            return Ok(());
        }
        let mut locked = |until: Option<i64>| {
            report.locked += 1;
            latest_lock = latest_lock.max(until);
        };
        if let Some(until) = store.locked_until(mtime) {
            locked(Some(until));
            return Ok(());
        }
        let removed = if opts.dry_run {
            !registry.exclusive(|touched| touched(&d))
        } else {
            match registry.remove_if_untouched(store, &d, cutoff) {
                Err(Error::Locked { until, .. }) => {
                    locked(until);
                    return Ok(());
                }
                r => r?,
            }
        };
        if removed {
            report.removed += 1;
            report.removed_bytes += size;
        } else {
            report.kept_touched += 1;
        }
        Ok(())
    })?;
    report.locked_until = latest_lock.map(kura_imaging::time::format_rfc3339);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;
    use kura_imaging::chunk::{ChunkSink, Encoder};
    use kura_imaging::layout::{DiskLayout, Scheme};
    use kura_imaging::manifest::{ChunkRef, Manifest, Region};

    fn put(store: &LocalStore, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let mut blob = Vec::new();
        Encoder::new(1).unwrap().encode_into(&d, data, &mut blob).unwrap();
        store.put_chunk(&d, &blob).unwrap();
        store.flush_staged().unwrap();
        d
    }

    fn manifest(digests: &[Digest]) -> Manifest {
        let cs = 4096u32;
        let size = cs as u64 * digests.len() as u64;
        Manifest {
            name: None,
            created: "2026-11-25T00:00:00Z".into(),
            source: "test".into(),
            host: Some("h".into()),
            chunk_size: cs,
            layout: DiskLayout {
                disk_size: size,
                sector_size: 512,
                scheme: Scheme::None,
                gpt: None,
                partitions: vec![],
                warnings: vec![],
            },
            regions: vec![Region {
                start: 0,
                size,
                partition: None,
                fs: kura_imaging::fs::FsKind::Raw,
                label: None,
                block_size: 4096,
                used_bytes: size,
                warnings: vec![],
                bitmap: kura_imaging::bitmap::Bitmap::full(digests.len() as u64),
                chunks: digests.iter().map(|d| ChunkRef::Data(*d)).collect(),
            }],
        }
    }

    fn no_grace() -> GcOptions {
        GcOptions { grace: Duration::ZERO, dry_run: false, writers_since: None }
    }

    #[test]
    fn removes_only_unreferenced_untouched_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path()).unwrap();
        let reg = WriterRegistry::new();
        let (a, b, c, w) = (put(&store, b"a"), put(&store, b"b"), put(&store, b"c"), put(&store, b"w"));
        store.commit_manifest(&manifest(&[a, b])).unwrap();
        // A running writer was told `w` is present: it must survive.
        let writer = reg.register();
        assert_eq!(reg.missing(writer, &store, &[w]).unwrap().unwrap(), vec![false]);

        let dry = collect(&store, &reg, &GcOptions { dry_run: true, ..no_grace() }).unwrap();
        assert_eq!((dry.removed, store.has(&c)), (1, true), "a dry run removes nothing");

        let r = collect(&store, &reg, &no_grace()).unwrap();
        assert_eq!((r.snapshots, r.referenced, r.removed, r.kept_touched), (1, 2, 1, 1));
        assert!(store.has(&a) && store.has(&b) && store.has(&w) && !store.has(&c));

        // The writer ends: `w` is garbage now.
        reg.unregister(writer);
        assert_eq!(collect(&store, &reg, &no_grace()).unwrap().removed, 1);
        assert!(!store.has(&w));
    }

    #[test]
    fn grace_period_keeps_young_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path()).unwrap();
        let young = put(&store, b"young");
        let r = collect(&store, &WriterRegistry::new(), &GcOptions::default()).unwrap();
        assert_eq!((r.removed, r.kept_recent), (0, 1));
        assert!(store.has(&young));
    }

    #[test]
    fn a_writer_ending_during_a_collection_stays_protected_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path()).unwrap();
        let reg = WriterRegistry::new();
        let d = put(&store, b"shared");
        let writer = reg.register();
        reg.touch(writer, &d);
        reg.begin_collection();
        reg.unregister(writer); // committed after the mark began
        assert!(!reg.remove_if_untouched(&store, &d, SystemTime::now()).unwrap());
        reg.end_collection();
        assert!(reg.remove_if_untouched(&store, &d, SystemTime::now()).unwrap());
    }

    #[test]
    fn an_unreadable_snapshot_aborts_before_deleting_anything() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path()).unwrap();
        let orphan = put(&store, b"orphan");
        let id = store.commit_manifest(&manifest(&[put(&store, b"x")])).unwrap();
        let path = dir.path().join("snapshots").join(format!("{id}.kmf"));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = collect(&store, &WriterRegistry::new(), &no_grace()).unwrap_err();
        assert!(e.to_string().contains("nothing deleted"), "{e}");
        assert!(store.has(&orphan));
    }
}
