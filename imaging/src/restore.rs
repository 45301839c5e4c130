//! Restore: manifest + chunks → disk.
//!
//! Two passes. The *preflight* checks everything that can be checked without writing: the
//! target is large enough, and every chunk the snapshot needs is present and intact (header,
//! length, payload checksum; asked of the source in batches, so a remote engine checks its own
//! store instead of sending every chunk twice). It returns a [`Checked`] token, the only way to
//! the write pass. Only then does the *write pass* start: a producer hands chunks in
//! disk order to worker threads that fetch, decompress and re-verify each one (SHA-256 of the
//! content; [`ChunkSource::gets_in_flight`] more workers than threads for a source whose
//! fetches wait on the network), and the calling thread writes them in order. Buffers come from a fixed pool taken
//! in disk order, so memory stays bounded and the writer never waits on a chunk that cannot get
//! a buffer.
//!
//! A chunk that passes the preflight but fails the full check during the write pass (only
//! possible if the store changed in between, or was forged with a matching checksum) stops the
//! restore with an error naming it; the target is then partially written, and the error says so.

use crate::chunk::{ChunkSource, Decoder, Digest};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{ChunkRef, Manifest, Pieced};
use crate::progress::Progress;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub threads: usize,
    /// The target reads as zeros everywhere (a freshly created file): zero chunks are skipped.
    pub target_is_zeroed: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions { threads: crate::capture::default_threads(), target_is_zeroed: false }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RestoreStats {
    pub disk_size: u64,
    /// Bytes written to the target (data and zeros).
    pub written_bytes: u64,
    pub data_chunks: u64,
    pub zero_chunks: u64,
    /// Chunks with no allocated byte, left as the target had them.
    pub unused_chunks: u64,
}

/// Proof that [`preflight`] passed for a manifest: the only way to reach [`write`].
pub struct Checked<'m> {
    manifest: &'m Manifest,
}

/// Digests asked about in one [`ChunkSource::check_chunks`] call.
const CHECK_BATCH: usize = 1024;

/// Checks, without writing anything, that the snapshot can be restored onto a target of
/// `target_size` bytes: size, and every needed chunk present with an intact header and payload.
pub fn preflight<'m>(
    manifest: &'m Manifest,
    source: &dyn ChunkSource,
    target_size: u64,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Checked<'m>> {
    if target_size < manifest.disk_size() {
        return Err(Error::TargetTooSmall { needed: manifest.disk_size(), actual: target_size });
    }
    let digests = manifest.unique_digests();
    let batches: Vec<&[Digest]> = digests.chunks(CHECK_BATCH).collect();
    progress.set_total(digests.len() as u64);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(batches.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= batches.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let batch = batches[i];
                let r = source.check_chunks(batch).and_then(|answers| {
                    if answers.len() != batch.len() {
                        return Err(Error::Store {
                            message: format!("asked about {} chunks, got {} answers", batch.len(), answers.len()),
                            retryable: true,
                        });
                    }
                    match batch.iter().zip(answers).find_map(|(d, a)| a.map(|reason| (d, reason))) {
                        None => Ok(()),
                        Some((d, reason)) if reason == "missing" => Err(Error::ChunkMissing { digest: d.to_hex() }),
                        Some((d, reason)) => Err(Error::ChunkCorrupt { digest: d.to_hex(), reason }),
                    }
                });
                if let Err(e) = r {
                    failed.store(true, Ordering::Relaxed);
                    first.lock().expect("lock").get_or_insert(e);
                    break;
                }
                progress.advance(batch.len() as u64);
            });
        }
    });
    match first.into_inner().expect("lock") {
        Some(e) => Err(e),
        None => Ok(Checked { manifest }),
    }
}

struct Job<'m> {
    seq: u64,
    offset: u64,
    len: usize,
    what: What<'m>,
    buf: Vec<u8>,
}

/// What a job reads: a stored chunk, or a pieced chunk's base and patches.
#[derive(Clone, Copy)]
enum What<'m> {
    Data(Digest),
    Pieced(&'m Pieced),
}

/// Restores `manifest` onto `target` (of `target_size` bytes): [`preflight`], then [`write`],
/// so nothing is written unless every check passes. The caller flushes/syncs the target.
pub fn restore<W: Write + Seek>(
    manifest: &Manifest,
    source: &dyn ChunkSource,
    target: &mut W,
    target_size: u64,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    let checked = preflight(manifest, source, target_size, opts.threads, &crate::progress::NoProgress)?;
    write(checked, source, target, target_size, opts, progress)
}

/// The write pass of a restore whose [`preflight`] passed (for callers that check before they
/// create or open the target).
pub fn write<W: Write + Seek>(
    checked: Checked<'_>,
    source: &dyn ChunkSource,
    target: &mut W,
    target_size: u64,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    let manifest = checked.manifest;
    if target_size < manifest.disk_size() {
        return Err(Error::TargetTooSmall { needed: manifest.disk_size(), actual: target_size });
    }
    // Each worker fetches, decompresses and checks its chunk; a source whose fetches wait on
    // the network gets more workers than threads, so fetches overlap the decompression.
    let threads = opts.threads.max(1) + source.gets_in_flight().min(64);
    let cs = manifest.chunk_size as usize;
    let pool = 2 * threads + 2;
    let mut stats = RestoreStats { disk_size: manifest.disk_size(), ..Default::default() };
    progress.set_total(manifest.disk_size());

    let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(pool);
    for _ in 0..pool {
        free_tx.send(Vec::with_capacity(cs)).expect("pool");
    }
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(pool);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(u64, Result<Job>)>();
    let stop = AtomicBool::new(false);
    let zeros = vec![0u8; cs];

    let result = std::thread::scope(|s| -> Result<()> {
        // Producer: data chunks in disk order, each with a pooled buffer.
        let producer_stop = &stop;
        s.spawn(move || {
            let mut seq = 0u64;
            for r in &manifest.regions {
                for (i, c) in r.chunks.iter().enumerate() {
                    let what = match c {
                        ChunkRef::Data(d) => What::Data(*d),
                        ChunkRef::Pieced(p) => What::Pieced(p),
                        ChunkRef::Unused | ChunkRef::Zero => continue,
                    };
                    {
                        let Ok(buf) = free_rx.recv() else { return };
                        if producer_stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let offset = r.start + (i * cs) as u64;
                        let len = manifest.chunk_len(r, i) as usize;
                        if job_tx.send(Job { seq, offset, len, what, buf }).is_err() {
                            return;
                        }
                        seq += 1;
                    }
                }
            }
        });
        for _ in 0..threads {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            s.spawn(move || {
                let mut dec = match Decoder::new() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = done_tx.send((u64::MAX, Err(e)));
                        return;
                    }
                };
                let mut scratch = Vec::new();
                for mut job in job_rx {
                    let seq = job.seq;
                    let r = match job.what {
                        What::Data(d) => source.get_chunk(&d).and_then(|blob| {
                            dec.decode_into(&blob, &d, &mut job.buf)?;
                            if job.buf.len() != job.len {
                                return Err(Error::ChunkCorrupt {
                                    digest: d.to_hex(),
                                    reason: format!(
                                        "holds {} bytes where the snapshot needs {}",
                                        job.buf.len(),
                                        job.len
                                    ),
                                });
                            }
                            Ok(job)
                        }),
                        What::Pieced(p) => {
                            crate::pieced::assemble(source, &mut dec, p, job.len, &mut job.buf, &mut scratch)
                                .map(|_| job)
                        }
                    };
                    if done_tx.send((seq, r)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(job_rx);
        drop(done_tx);

        // Writer (this thread): walk the disk in order, writing data chunks as they arrive.
        let r = write_in_order(manifest, target, opts, &zeros, &done_rx, &free_tx, &mut stats, progress);
        stop.store(true, Ordering::Relaxed);
        // Unblock the producer and workers.
        drop(done_rx);
        while free_tx.try_send(Vec::new()).is_ok() {}
        r
    });
    result?;
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
fn write_in_order<W: Write + Seek>(
    manifest: &Manifest,
    target: &mut W,
    opts: &RestoreOptions,
    zeros: &[u8],
    done_rx: &crossbeam_channel::Receiver<(u64, Result<Job>)>,
    free_tx: &crossbeam_channel::Sender<Vec<u8>>,
    stats: &mut RestoreStats,
    progress: &dyn Progress,
) -> Result<()> {
    let cs = manifest.chunk_size as usize;
    let mut pending: BTreeMap<u64, Job> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut pos: Option<u64> = None;
    let write_at = |target: &mut W, offset: u64, data: &[u8], pos: &mut Option<u64>| -> Result<()> {
        if *pos != Some(offset) {
            target.seek(SeekFrom::Start(offset)).ctx(|| format!("seeking the target to byte {offset}"))?;
        }
        target.write_all(data).ctx(|| format!("writing {} bytes at byte {offset} of the target", data.len()))?;
        *pos = Some(offset + data.len() as u64);
        Ok(())
    };
    for r in &manifest.regions {
        for (i, c) in r.chunks.iter().enumerate() {
            let offset = r.start + (i * cs) as u64;
            let len = manifest.chunk_len(r, i) as usize;
            match c {
                ChunkRef::Unused => stats.unused_chunks += 1,
                ChunkRef::Zero => {
                    stats.zero_chunks += 1;
                    if !opts.target_is_zeroed {
                        write_at(target, offset, &zeros[..len], &mut pos)?;
                        stats.written_bytes += len as u64;
                    }
                }
                ChunkRef::Data(_) | ChunkRef::Pieced(_) => {
                    let job = loop {
                        if let Some(job) = pending.remove(&next_seq) {
                            break job;
                        }
                        let (seq, res) = done_rx.recv().map_err(|_| Error::Cancelled)?;
                        let job = res.map_err(|e| match e {
                            Error::ChunkCorrupt { digest, reason } => Error::ChunkCorrupt {
                                digest,
                                reason: format!("{reason} (restore stopped; the target is partially written)"),
                            },
                            other => other,
                        })?;
                        pending.insert(seq, job);
                    };
                    next_seq += 1;
                    write_at(target, job.offset, &job.buf, &mut pos)?;
                    stats.written_bytes += job.len as u64;
                    stats.data_chunks += 1;
                    let _ = free_tx.send(job.buf);
                }
            }
            progress.advance(len as u64);
        }
    }
    target.flush().ctx(|| "flushing the target".into())?;
    Ok(())
}
