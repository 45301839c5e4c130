//! Capture: disk → manifest + chunks.
//!
//! One reader (the calling thread) walks the regions in disk order and reads only the bytes the
//! allocation maps mark used, into chunk-sized buffers whose unused bytes are zero. Worker
//! threads hash each buffer, ask the sink whether it already holds that digest, and only then
//! compress and hand it over — themselves, or, for a sink whose puts wait on the network
//! ([`ChunkSink::puts_in_flight`] > 0), to that many uploader threads, so compression goes on
//! while puts are in flight. Buffers come from fixed pools, so memory stays bounded at roughly
//! `(2·threads + 2 + 2·uploaders) · chunk_size` whatever the disk size.
//!
//! With a parent snapshot ([`CaptureOptions::parent`]), a chunk the sink lacks at a position
//! where the parent held one is compared with that chunk piece by piece, and stored as patches on
//! it when only a few pieces changed ([`crate::pieced`]).
//!
//! The source is only ever read.

use crate::chunk::{is_zero, ChunkSink, Digest, Encoder, DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL, MAX_CHUNK_SIZE};
use crate::error::{Error, IoContext, Result};
use crate::fs::{self, AllocationMap};
use crate::layout::{self, DiskLayout};
use crate::manifest::{ChunkRef, Manifest, Pieced, Region};
use crate::pieced::{self, DEFAULT_PIECE_SIZE};
use crate::progress::Progress;
use crate::region;
use crate::time::format_rfc3339_nanos;
use crate::window::Window;
use serde::Serialize;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub chunk_size: u32,
    /// zstd level.
    pub level: i32,
    /// Worker threads for hashing and compression.
    pub threads: usize,
    pub name: Option<String>,
    pub host: Option<String>,
    /// Description of the source recorded in the manifest (a path).
    pub source: String,
    /// The previous snapshot of the same disk, if any: chunks that changed in a few places
    /// since are stored as patches on its chunks at the same positions (regions of the same
    /// start and size, same chunk size).
    pub parent: Option<std::sync::Arc<Manifest>>,
    /// Piece size of those patches ([`crate::pieced`]); 0 stores every changed chunk whole.
    pub piece_size: u32,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: DEFAULT_LEVEL,
            threads: default_threads(),
            name: None,
            host: None,
            source: String::new(),
            parent: None,
            piece_size: DEFAULT_PIECE_SIZE,
        }
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// What a capture did, for the operator and for tests.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CaptureStats {
    pub disk_size: u64,
    /// Bytes the allocation maps mark used (gaps and raw partitions count whole).
    pub used_bytes: u64,
    /// Bytes actually read from the source.
    pub read_bytes: u64,
    /// Data chunks referenced by the manifest.
    pub chunks: u64,
    /// Chunks that were allocated but all zero (not stored).
    pub zero_chunks: u64,
    /// Chunks the sink did not have before.
    pub new_chunks: u64,
    /// Encoded bytes newly handed to the sink.
    pub new_stored_bytes: u64,
    /// Chunks the sink already had.
    pub reused_chunks: u64,
    /// Changed chunks stored as patches on the parent's chunk ([`crate::pieced`]). Their new
    /// patches count in `new_chunks` and `new_stored_bytes` (what the store grew by) and in
    /// `new_patches`, so `chunks = reused_chunks + pieced_chunks + new_chunks - new_patches`.
    pub pieced_chunks: u64,
    pub new_patches: u64,
    pub warnings: Vec<String>,
}

/// The plan of a capture: the layout and each region's allocation map, read before any chunk.
pub struct Plan {
    pub layout: DiskLayout,
    pub regions: Vec<PlannedRegion>,
}

pub struct PlannedRegion {
    pub start: u64,
    pub size: u64,
    pub partition: Option<u32>,
    pub map: AllocationMap,
}

/// Reads the partition table and every filesystem's allocation map.
pub fn plan<R: Read + Seek>(src: &mut R, disk_size: u64, progress: &dyn Progress) -> Result<Plan> {
    let layout = layout::read_layout(src, disk_size)?;
    for w in &layout.warnings {
        progress.warn(w);
    }
    let spans = region::spans(&layout);
    let parts: Vec<(u64, u64)> = spans.iter().filter(|s| s.partition.is_some()).map(|s| (s.start, s.size)).collect();
    let disk = fs::scan_disk(&mut *src, &parts);
    let mut regions = Vec::new();
    for span in spans {
        let (partition, map) = match span.partition {
            Some(i) => {
                let p = &layout.partitions[i];
                let mut win = Window::new(&mut *src, span.start, span.size);
                let mut map = fs::probe_on_disk(&mut win, span.size, Some(&p.entry), &disk);
                for w in map.warnings.iter_mut() {
                    *w = format!("partition {}: {w}", p.number);
                    progress.warn(w);
                }
                (Some(p.number), map)
            }
            None => (None, AllocationMap::raw(span.size, vec![])),
        };
        regions.push(PlannedRegion { start: span.start, size: span.size, partition, map });
    }
    Ok(Plan { layout, regions })
}

/// One chunk-sized piece read from the source.
struct Piece {
    region: usize,
    index: usize,
    buf: Vec<u8>,
    len: usize,
}

/// Pieces are handed to workers in batches, so that a remote sink answers "which of these do
/// you lack?" once per batch rather than once per chunk.
pub const BATCH: usize = 8;

/// Captures the disk in `src` into `sink`. Returns the manifest (not yet stored anywhere: the
/// caller commits it) and the statistics.
pub fn capture<R: Read + Seek>(
    mut src: R,
    opts: &CaptureOptions,
    sink: &dyn ChunkSink,
    progress: &dyn Progress,
) -> Result<(Manifest, CaptureStats)> {
    if opts.chunk_size == 0 || opts.chunk_size > MAX_CHUNK_SIZE || !opts.chunk_size.is_multiple_of(4096) {
        return Err(Error::Manifest(format!("invalid chunk size {}", opts.chunk_size)));
    }
    let disk_size = src.seek(SeekFrom::End(0)).ctx(|| format!("finding the size of {}", opts.source))?;
    let plan = plan(&mut src, disk_size, progress)?;
    let cs = opts.chunk_size as u64;

    let mut stats = CaptureStats { disk_size, ..Default::default() };
    for r in &plan.regions {
        stats.used_bytes += r.map.used_bytes(r.size);
        stats.warnings.extend(r.map.warnings.iter().cloned());
    }
    stats.warnings.extend(plan.layout.warnings.iter().cloned());
    progress.set_total(stats.used_bytes);

    let results: Mutex<Vec<Vec<ChunkRef>>> =
        Mutex::new(plan.regions.iter().map(|r| vec![ChunkRef::Unused; r.size.div_ceil(cs) as usize]).collect());
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::SeqCst);
        first_error.lock().expect("lock").get_or_insert(e);
    };
    let counters = Counters::default();

    let bases = parent_chunks(&plan, opts);
    let pieces = Pieces { size: opts.piece_size, parent: &bases };

    let threads = opts.threads.max(1);
    // Each worker holds one batch, one more waits in the channel, one is being filled.
    let pool = (threads + 2) * BATCH;
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Vec<Piece>>(1);
    let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(pool);
    for _ in 0..pool {
        free_tx.send(vec![0u8; cs as usize]).expect("pool");
    }

    // Uploaders (a sink that wants puts in flight): encoded chunks go to them through a bounded
    // channel, in blobs from a pool of their own.
    let uploaders = sink.puts_in_flight();
    let blobs = threads + 2 * uploaders;
    let (put_tx, put_rx) = crossbeam_channel::bounded::<(Digest, Vec<u8>, bool)>(uploaders.max(1));
    let (blob_tx, blob_rx) = crossbeam_channel::bounded::<Vec<u8>>(blobs);
    if uploaders > 0 {
        for _ in 0..blobs {
            blob_tx.send(Vec::with_capacity(cs as usize + 64)).expect("pool");
        }
    }

    let mut read_bytes = 0u64;
    std::thread::scope(|s| {
        for _ in 0..uploaders {
            let (put_rx, blob_tx) = (put_rx.clone(), blob_tx.clone());
            let (failed, fail, counters) = (&failed, &fail, &counters);
            s.spawn(move || {
                for (d, blob, patch) in put_rx {
                    if !failed.load(Ordering::Relaxed) {
                        match sink.put_chunk(&d, &blob) {
                            Ok(new) => counters.stored(new, blob.len(), patch),
                            Err(e) => fail(e),
                        }
                        counters.release(&d);
                    }
                    let _ = blob_tx.send(blob);
                }
            });
        }
        drop(put_rx);
        let handover = (uploaders > 0).then(|| Handover { put_tx: put_tx.clone(), blob_rx: blob_rx.clone() });
        drop(put_tx);
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let free_tx = free_tx.clone();
            let (results, failed, fail, counters) = (&results, &failed, &fail, &counters);
            let handover = handover.clone();
            let pieces = &pieces;
            s.spawn(move || {
                let mut enc = match Encoder::new(opts.level) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        fail(e);
                        None
                    }
                };
                let mut blob = match &handover {
                    Some(h) => h.blob_rx.recv().unwrap_or_default(),
                    None => Vec::new(),
                };
                for batch in job_rx {
                    // After a failure, keep draining so the reader never blocks on the pool.
                    if let (false, Some(enc)) = (failed.load(Ordering::Relaxed), enc.as_mut()) {
                        match store_batch(&batch, enc, &mut blob, sink, handover.as_ref(), counters, pieces) {
                            Ok(refs) => {
                                let mut res = results.lock().expect("lock");
                                for (p, r) in batch.iter().zip(refs) {
                                    res[p.region][p.index] = r;
                                }
                            }
                            Err(e) => fail(e),
                        }
                    }
                    for p in batch {
                        let _ = free_tx.send(p.buf);
                    }
                }
            });
        }
        drop(job_rx);
        // The uploaders end when the last worker's handover is gone.
        drop(handover);

        let result = read_regions(&mut src, &plan, cs, opts, &failed, &free_rx, &job_tx, progress);
        match result {
            Ok(n) => read_bytes = n,
            Err(e) => fail(e),
        }
        drop(job_tx);
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }

    let results = results.into_inner().expect("lock");
    let regions: Vec<Region> = plan
        .regions
        .into_iter()
        .zip(results)
        .map(|(r, chunks)| Region {
            used_bytes: r.map.used_bytes(r.size),
            start: r.start,
            size: r.size,
            partition: r.partition,
            fs: r.map.kind,
            label: r.map.label,
            block_size: r.map.block_size,
            warnings: r.map.warnings,
            bitmap: r.map.bitmap,
            chunks,
        })
        .collect();
    stats.read_bytes = read_bytes;
    stats.zero_chunks = counters.zero.into_inner();
    stats.new_chunks = counters.new.into_inner();
    stats.new_stored_bytes = counters.new_bytes.into_inner();
    stats.reused_chunks = counters.reused.into_inner();
    stats.pieced_chunks = counters.pieced.into_inner();
    stats.new_patches = counters.new_patches.into_inner();
    stats.chunks = regions.iter().flat_map(|r| &r.chunks).filter(|c| c.content_digest().is_some()).count() as u64;
    let manifest = Manifest {
        name: opts.name.clone(),
        created: format_rfc3339_nanos(std::time::SystemTime::now()),
        source: opts.source.clone(),
        host: opts.host.clone(),
        chunk_size: opts.chunk_size,
        layout: plan.layout,
        regions,
    };
    Ok((manifest, stats))
}

/// For each planned region, the parent's chunks at the same positions: a parent region of the
/// same start and size, captured with the same chunk size.
fn parent_chunks<'p>(plan: &Plan, opts: &'p CaptureOptions) -> Vec<Option<&'p [ChunkRef]>> {
    let parent = match &opts.parent {
        Some(p) if opts.piece_size > 0 && p.chunk_size == opts.chunk_size => p,
        _ => return vec![None; plan.regions.len()],
    };
    plan.regions
        .iter()
        .map(|r| parent.regions.iter().find(|pr| pr.start == r.start && pr.size == r.size).map(|pr| &pr.chunks[..]))
        .collect()
}

/// What the workers need to store changed chunks as patches.
struct Pieces<'a> {
    size: u32,
    parent: &'a [Option<&'a [ChunkRef]>],
}

impl Pieces<'_> {
    fn parent_of(&self, p: &Piece) -> Option<&ChunkRef> {
        self.parent.get(p.region).copied().flatten().and_then(|c| c.get(p.index))
    }
}

#[derive(Default)]
struct Counters {
    pieced: AtomicU64,
    new_patches: AtomicU64,
    zero: AtomicU64,
    new: AtomicU64,
    new_bytes: AtomicU64,
    reused: AtomicU64,
    /// Digests being encoded or put right now. A disk holding the same chunk twice gets
    /// "missing" for both copies when they are asked about before either is stored; the
    /// second copy then waits for nothing and is counted reused instead of being put
    /// concurrently (a store that cannot tell two simultaneous puts apart would count both
    /// new). Bounded by the chunks in flight, not by the disk.
    in_flight: std::sync::Mutex<std::collections::HashSet<Digest>>,
}

impl Counters {
    /// Takes `d` for this worker; false when another copy of it is being stored.
    fn claim(&self, d: &Digest) -> bool {
        self.in_flight.lock().expect("lock").insert(*d)
    }

    /// `d` has been stored (or failed: the capture fails then).
    fn release(&self, d: &Digest) {
        self.in_flight.lock().expect("lock").remove(d);
    }

    /// A put's answer: newly stored (`len` encoded bytes), or already there. A patch already
    /// there counts nowhere: its chunk counts as pieced.
    fn stored(&self, new: bool, len: usize, patch: bool) {
        if new {
            self.new.fetch_add(1, Ordering::Relaxed);
            self.new_bytes.fetch_add(len as u64, Ordering::Relaxed);
            if patch {
                self.new_patches.fetch_add(1, Ordering::Relaxed);
            }
        } else if !patch {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where a worker hands its encoded chunks when uploaders put them: the uploaders' channel, and
/// the pool it takes a fresh blob from in exchange.
#[derive(Clone)]
struct Handover {
    put_tx: crossbeam_channel::Sender<(Digest, Vec<u8>, bool)>,
    blob_rx: crossbeam_channel::Receiver<Vec<u8>>,
}

/// Hashes a batch, asks the sink once which digests it lacks, and encodes and hands over only
/// those (to the sink, or to the uploaders through `handover`); a missing chunk the parent held
/// in an earlier form may go as patches instead ([`store_pieced`]).
#[allow(clippy::too_many_arguments)]
fn store_batch(
    batch: &[Piece],
    enc: &mut Encoder,
    blob: &mut Vec<u8>,
    sink: &dyn ChunkSink,
    handover: Option<&Handover>,
    counters: &Counters,
    pieces: &Pieces<'_>,
) -> Result<Vec<ChunkRef>> {
    let mut refs = Vec::with_capacity(batch.len());
    // One question for the whole batch: each data chunk's digest, and every part (base and
    // patches) of each pieced chunk the parent had unchanged; `spans[i]` is where ref `i`'s
    // answers are.
    let mut ask = Vec::with_capacity(batch.len());
    let mut spans = Vec::with_capacity(batch.len());
    for p in batch {
        let data = &p.buf[..p.len];
        if is_zero(data) {
            counters.zero.fetch_add(1, Ordering::Relaxed);
            refs.push(ChunkRef::Zero);
            spans.push(0..0);
            continue;
        }
        let d = Digest::of(data);
        let start = ask.len();
        match pieces.parent_of(p) {
            // Unchanged since the parent stored it as patches: the same entry again, if all its
            // parts are still stored.
            Some(ChunkRef::Pieced(pp)) if pp.digest == d => {
                ask.extend(pp.stored().copied());
                refs.push(ChunkRef::Pieced(pp.clone()));
            }
            _ => {
                ask.push(d);
                refs.push(ChunkRef::Data(d));
            }
        }
        spans.push(start..ask.len());
    }
    if ask.is_empty() {
        return Ok(refs);
    }
    let missing = ask_missing(sink, &ask)?;
    for ((p, r), span) in batch.iter().zip(refs.iter_mut()).zip(spans) {
        let lacking = missing[span.clone()].iter().any(|&m| m);
        let (d, parts_gone) = match r {
            _ if span.is_empty() => continue,
            ChunkRef::Data(_) | ChunkRef::Pieced(_) if !lacking => {
                counters.reused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            ChunkRef::Data(d) => (*d, false),
            // A part of the parent's pieced chunk is gone (removed since, or never committed):
            // the chunk is stored whole.
            ChunkRef::Pieced(pp) => (pp.digest, true),
            ChunkRef::Zero | ChunkRef::Unused => continue,
        };
        *r = ChunkRef::Data(d);
        let data = &p.buf[..p.len];
        if parts_gone {
            // fall through to the whole chunk
        } else if let Some(pieced) = store_pieced(&d, data, pieces, p, enc, blob, sink, handover, counters)? {
            counters.pieced.fetch_add(1, Ordering::Relaxed);
            *r = ChunkRef::Pieced(Box::new(pieced));
            continue;
        }
        // Only whole chunks are claimed, so a copy that found its digest claimed can count on
        // the claimant storing it whole.
        if !counters.claim(&d) {
            counters.reused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        put(&d, data, enc, blob, sink, handover, counters, false)?;
    }
    Ok(refs)
}

/// One [`ChunkSink::missing`] call, its answer checked for length.
fn ask_missing(sink: &dyn ChunkSink, digests: &[Digest]) -> Result<Vec<bool>> {
    let missing = sink.missing(digests)?;
    if missing.len() != digests.len() {
        return Err(Error::Store {
            message: format!("asked about {} chunks, the store answered for {}", digests.len(), missing.len()),
            retryable: true,
        });
    }
    Ok(missing)
}

#[allow(clippy::too_many_arguments)]
/// Encodes `data` (claimed as `d` by this worker; a patch or a whole chunk) and hands it over: to the uploaders, which
/// release the claim once it is put, or straight to the sink.
fn put(
    d: &Digest,
    data: &[u8],
    enc: &mut Encoder,
    blob: &mut Vec<u8>,
    sink: &dyn ChunkSink,
    handover: Option<&Handover>,
    counters: &Counters,
    patch: bool,
) -> Result<()> {
    enc.encode_into(d, data, blob)?;
    match handover {
        Some(h) => {
            let fresh = h.blob_rx.recv().map_err(|_| uploaders_gone())?;
            h.put_tx.send((*d, std::mem::replace(blob, fresh), patch)).map_err(|_| uploaders_gone())?;
        }
        None => {
            let put = sink.put_chunk(d, blob);
            counters.release(d);
            counters.stored(put?, blob.len(), patch);
        }
    }
    Ok(())
}

/// Stores chunk `d` (content `data`, missing from the sink) as patches on the parent's chunk at
/// its position, if the parent had one of the same length, the sink can tell its pieces, and at
/// most half of them changed; `None` otherwise (the caller stores it whole).
#[allow(clippy::too_many_arguments)]
fn store_pieced(
    d: &Digest,
    data: &[u8],
    pieces: &Pieces<'_>,
    p: &Piece,
    enc: &mut Encoder,
    blob: &mut Vec<u8>,
    sink: &dyn ChunkSink,
    handover: Option<&Handover>,
    counters: &Counters,
) -> Result<Option<Pieced>> {
    let base = match pieces.parent_of(p) {
        Some(ChunkRef::Data(b)) => *b,
        Some(ChunkRef::Pieced(pp)) => pp.base,
        _ => return Ok(None),
    };
    let base_pieces = match sink.piece_digests(&base, pieces.size) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        // The base is gone or damaged (removed since the parent was taken, or rotten in the
        // store): the chunk is stored whole and becomes a base itself.
        Err(Error::ChunkMissing { .. } | Error::ChunkCorrupt { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let new_pieces = pieced::piece_digests(data, pieces.size);
    let Some(changed) = pieced::changed_pieces(&new_pieces, &base_pieces) else { return Ok(None) };
    let patches: Vec<(u32, Digest)> = changed.iter().map(|&i| (i, new_pieces[i as usize])).collect();
    let digests: Vec<Digest> = patches.iter().map(|(_, d)| *d).collect();
    let missing = ask_missing(sink, &digests)?;
    let ps = pieces.size as usize;
    for (&(i, pd), missing) in patches.iter().zip(missing) {
        if !missing || !counters.claim(&pd) {
            continue; // stored already, or being stored by another worker
        }
        let at = i as usize * ps;
        put(&pd, &data[at..(at + ps).min(data.len())], enc, blob, sink, handover, counters, true)?;
    }
    Ok(Some(Pieced { digest: *d, base, piece_size: pieces.size, patches }))
}

fn uploaders_gone() -> Error {
    Error::Store { message: "the capture's uploader threads ended early".into(), retryable: false }
}

/// The used byte ranges of `[off, off + len)` of a region, relative to the region.
fn used_ranges(map: &AllocationMap, off: u64, len: u64, out: &mut Vec<(u64, u64)>) {
    out.clear();
    let bs = map.block_size as u64;
    let covered = map.bitmap.len() * bs;
    let end = off + len;
    if off < covered {
        let (b0, b1) = (off / bs, end.min(covered).div_ceil(bs));
        for (s, n) in map.bitmap.runs_in(b0, b1 - b0) {
            let (rs, re) = ((s * bs).max(off), ((s + n) * bs).min(end));
            if rs < re {
                out.push((rs, re));
            }
        }
    }
    if end > covered {
        let rs = off.max(covered);
        match out.last_mut() {
            Some(last) if last.1 == rs => last.1 = end,
            _ => out.push((rs, end)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn read_regions<R: Read + Seek>(
    src: &mut R,
    plan: &Plan,
    cs: u64,
    opts: &CaptureOptions,
    failed: &AtomicBool,
    free_rx: &crossbeam_channel::Receiver<Vec<u8>>,
    job_tx: &crossbeam_channel::Sender<Vec<Piece>>,
    progress: &dyn Progress,
) -> Result<u64> {
    let mut read_bytes = 0u64;
    let mut ranges = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    for (ri, r) in plan.regions.iter().enumerate() {
        let chunks = r.size.div_ceil(cs);
        for ci in 0..chunks {
            if failed.load(Ordering::Relaxed) {
                return Ok(read_bytes);
            }
            let off = ci * cs;
            let len = (r.size - off).min(cs);
            used_ranges(&r.map, off, len, &mut ranges);
            let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
                continue; // stays ChunkRef::Unused
            };
            let mut buf = free_rx.recv().map_err(|_| Error::Cancelled)?;
            // One read from the first used byte to the last, then zero the holes: fewer
            // syscalls and seeks than one read per run.
            let (rs, re) = (first.0, last.1);
            let dst = &mut buf[..len as usize];
            src.seek(SeekFrom::Start(r.start + rs))
                .and_then(|_| src.read_exact(&mut dst[(rs - off) as usize..(re - off) as usize]))
                .map_err(|e| read_error(e, &opts.source, r.start + rs, r.start + re, plan.layout.disk_size))?;
            dst[..(rs - off) as usize].fill(0);
            dst[(re - off) as usize..].fill(0);
            for w in ranges.windows(2) {
                dst[(w[0].1 - off) as usize..(w[1].0 - off) as usize].fill(0);
            }
            let used: u64 = ranges.iter().map(|(s, e)| e - s).sum();
            read_bytes += re - rs;
            progress.advance(used);
            batch.push(Piece { region: ri, index: ci as usize, buf, len: len as usize });
            if batch.len() == BATCH {
                job_tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).map_err(|_| Error::Cancelled)?;
            }
        }
    }
    if !batch.is_empty() {
        job_tx.send(batch).map_err(|_| Error::Cancelled)?;
    }
    Ok(read_bytes)
}

fn read_error(e: std::io::Error, source: &str, start: u64, end: u64, disk_size: u64) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Truncated { what: format!("reading bytes {start}..{end} of {source}"), needed: end, actual: disk_size }
    } else {
        Error::io(format!("reading bytes {start}..{end} of {source}"), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap::Bitmap;
    use crate::fs::FsKind;

    fn map(bits: &[u64], len: u64, bs: u32) -> AllocationMap {
        let mut b = Bitmap::new(len);
        for &i in bits {
            b.set(i);
        }
        AllocationMap { kind: FsKind::Ext4, block_size: bs, bitmap: b, label: None, warnings: vec![] }
    }

    #[test]
    fn used_ranges_clip_and_cover_the_tail() {
        let m = map(&[0, 1, 5, 9], 10, 512);
        let mut out = Vec::new();
        used_ranges(&m, 0, 2048, &mut out);
        assert_eq!(out, vec![(0, 1024)]);
        used_ranges(&m, 2048, 2048, &mut out);
        assert_eq!(out, vec![(2560, 3072)]);
        // Bitmap covers 5120 bytes; the region goes on to 6000: the tail is used.
        used_ranges(&m, 4096, 1904, &mut out);
        assert_eq!(out, vec![(4608, 6000)]);
        used_ranges(&m, 3072, 1024, &mut out);
        assert!(out.is_empty());
    }
}
