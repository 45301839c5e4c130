//! `kura bench --month`: what a month-later incremental costs at each chunk size, on a realistic
//! disk ([`kura_diskgen::month_disk`]: junk in free space, `/usr`, databases with scattered page
//! updates, logs, NTFS, and a scripted month of changes).
//!
//! It owns the incremental measurements:
//!
//! - the **lower bound**: the used blocks of the month-later disk (Kura's own allocation maps)
//!   that differ from the base disk, each 4 KiB block compressed alone and each run of changed
//!   blocks (up to 1 MiB) compressed as one, with zstd at Kura's level;
//! - the **speed reference**: reading exactly those used blocks with a cold page cache (a `cat`
//!   of the used blocks);
//! - per chunk size, into a fresh [`LocalStore`]: the base capture, the month-later capture (its
//!   added bytes, new chunks, manifest size), and the restore of the month-later snapshot,
//!   checked against the source; every capture and restore starts with a cold page cache;
//! - the **two-level scheme, simulated**: 1 MiB chunks of which the changed ones are re-expressed
//!   as 64 KiB (or 128 KiB) sub-chunks. Its added bytes are exact, from the real captures: the
//!   sub-chunks that the sub-chunk-size incremental stored new, inside the 1 MiB chunks the 1 MiB
//!   incremental found changed, each counted once at its real encoded size. Entry counts and the
//!   manifest size are estimates (the per-entry manifest cost measured between the real 1 MiB and
//!   sub-chunk manifests). It predicts the real thing:
//! - the **two-level scheme, measured** (manifest v2, [`kura_imaging::pieced`]): 1 MiB chunks,
//!   the month-later capture given the base snapshot as its parent, with [`PIECE_SIZES`]: base
//!   capture, incremental (added bytes, objects, pieced chunks, manifest), restore checked
//!   against the source, each cold like the rows above.

use super::{
    chunk_jobs, compare_used, kura_capture, kura_capture_with, kura_restore_into, mib, rate, say, used_spans, Timing,
};
use anyhow::{ensure, Context, Result};
use kura_catalogs::LocalStore;
use kura_diskgen::month_disk::{self, MonthChanges};
use kura_imaging::capture::{self, CaptureStats, Plan};
use kura_imaging::chunk::Digest;
use kura_imaging::manifest::{ChunkRef, Manifest};
use kura_imaging::progress::NoProgress;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// The chunk sizes measured unless `--chunk-sizes` says otherwise (from 4 KiB up may be asked).
pub const CHUNK_SIZES: [u32; 6] = [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20];
/// The block the lower bound compares and compresses.
const BLOCK: u64 = 4 * KIB;
/// Sub-chunk sizes of the simulated two-level scheme, under 1 MiB chunks (each simulated when
/// both it and 1 MiB are among the measured chunk sizes; 16 and 32 KiB only when asked for).
const TWO_LEVEL: (u32, [u32; 4]) = (1 << 20, [16 << 10, 32 << 10, 64 << 10, 128 << 10]);
pub const MIN_DISK: u64 = month_disk::MIN_SIZE;
/// Piece sizes of the measured two-level scheme (under 1 MiB chunks, when 1 MiB is measured).
pub const PIECE_SIZES: [u32; 2] = [16 << 10, 64 << 10];

#[derive(Serialize)]
pub struct MonthReport {
    work_dir: String,
    disk_size: u64,
    base_used_bytes: u64,
    month_used_bytes: u64,
    changes: MonthChanges,
    page_cache: String,
    /// `/proc/loadavg` before and after each step (other work on the machine shows here).
    load_average: Vec<String>,
    lower_bound: LowerBound,
    /// Reading the month-later disk's used blocks, cold: the speed reference.
    cold_cat_used: Timing,
    cold_cat_mib_s: f64,
    rows: Vec<SizeRow>,
    two_level: Vec<TwoLevelRow>,
    pieced: Vec<PiecedRow>,
    checks: Vec<String>,
}

/// The two-level scheme as Kura stores it: 1 MiB chunks, the incremental with a parent.
#[derive(Serialize)]
struct PiecedRow {
    chunk_size: u32,
    piece_size: u32,
    first_seconds: f64,
    second_seconds: f64,
    second_vs_cold_cat: f64,
    /// Encoded bytes the incremental stored new (whole chunks and patches).
    added_bytes: u64,
    added_vs_lower_bound: f64,
    added_vs_block_bound: f64,
    /// Chunks stored as patches, and the new objects (whole chunks + patches: S3 PUTs).
    pieced_chunks: u64,
    new_objects: u64,
    second_puts_per_gib: f64,
    /// Chunk entries + patch entries of the month-later manifest, and its size.
    manifest_entries: u64,
    second_manifest_bytes: u64,
    catalog_rows: u64,
    restore_seconds: f64,
    restore_mib_s: f64,
}

#[derive(Serialize)]
struct LowerBound {
    /// Used 4 KiB blocks of the month-later disk that differ from the base disk.
    changed_blocks: u64,
    changed_bytes: u64,
    /// Runs of adjacent changed blocks.
    extents: u64,
    /// Each changed block compressed alone.
    zstd_per_block: u64,
    /// Each run of changed blocks (split at 1 MiB) compressed as one: the lower bound.
    zstd_per_extent: u64,
}

#[derive(Serialize)]
struct SizeRow {
    chunk_size: u32,
    first_seconds: f64,
    first_mib_s: f64,
    first_stored_bytes: u64,
    first_new_chunks: u64,
    first_manifest_bytes: u64,
    /// S3 PUTs of the first capture per GiB of used data (one per new chunk).
    first_puts_per_gib: f64,
    second_seconds: f64,
    /// Second capture time / cold read of the used blocks.
    second_vs_cold_cat: f64,
    /// Encoded bytes the month-later capture stored new (chunk files).
    added_bytes: u64,
    /// added_bytes / lower bound (per extent).
    added_vs_lower_bound: f64,
    /// added_bytes / the changed blocks compressed one by one.
    added_vs_block_bound: f64,
    second_new_chunks: u64,
    /// S3 PUTs of the month-later capture per GiB of used data.
    second_puts_per_gib: f64,
    /// Chunk entries of the month-later manifest (every piece, used or not).
    manifest_entries: u64,
    second_manifest_bytes: u64,
    /// Distinct chunks in the store after both captures: the catalog's chunk rows.
    catalog_rows: u64,
    restore_seconds: f64,
    restore_mib_s: f64,
}

#[derive(Serialize)]
struct TwoLevelRow {
    chunk_size: u32,
    sub_chunk_size: u32,
    /// 1 MiB chunks of the month-later disk not in the base store.
    changed_chunks: u64,
    /// Exact: encoded bytes of the new sub-chunks inside the changed chunks.
    added_bytes: u64,
    added_vs_lower_bound: f64,
    added_vs_block_bound: f64,
    /// New objects (sub-chunks) the incremental stores: its S3 PUTs.
    new_objects: u64,
    second_puts_per_gib: f64,
    /// Estimated: entries of the month-later manifest (unchanged chunks + sub-chunks of the
    /// changed ones) and its size at the measured per-entry cost.
    manifest_entries: u64,
    manifest_bytes_estimate: u64,
    /// New sub-chunks outside any changed 1 MiB chunk (moved data; not counted above).
    stray_new_sub_chunks: u64,
}

/// What one chunk size's captures leave for the two-level simulation.
struct Captured {
    chunk_size: u32,
    base: HashSet<Digest>,
    new: HashMap<Digest, u64>,
    month: Manifest,
    month_manifest_bytes: u64,
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Drops the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`); says why not if it cannot.
fn drop_caches() -> Result<(), String> {
    let _ = std::process::Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3\n").map_err(|e| format!("/proc/sys/vm/drop_caches: {e}"))
}

pub fn bench(work: &Path, disk_size: u64, runs: usize, level: i32, sizes: &[u32]) -> Result<MonthReport> {
    let mut load = vec![format!("start: {}", loadavg())];
    say(&format!("building a {} MiB month-of-changes disk in {}", disk_size / MIB, work.display()));
    let t0 = Instant::now();
    let disk = month_disk::build(work, disk_size, &say)?;
    say(&format!("  built in {:.0} s", t0.elapsed().as_secs_f64()));
    load.push(format!("disk built: {}", loadavg()));
    let cold = drop_caches();
    let page_cache = match &cold {
        Ok(()) => {
            "cold: dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every cat, capture and restore".to_string()
        }
        Err(e) => format!("warm: the page cache could not be dropped ({e})"),
    };
    let cool = || {
        let _ = drop_caches();
    };

    let plan_of = |p: &Path| -> Result<Plan> {
        let mut f = File::open(p)?;
        capture::plan(&mut f, disk_size, &NoProgress).with_context(|| format!("planning {}", p.display()))
    };
    let base_plan = plan_of(&disk.path)?;
    let month_plan = plan_of(&disk.month_path)?;
    let used_of = |p: &Plan| -> u64 { p.regions.iter().map(|r| r.map.used_bytes(r.size)).sum() };
    let (base_used, month_used) = (used_of(&base_plan), used_of(&month_plan));

    say("lower bound: changed used blocks, zstd per block and per extent");
    let lower = lower_bound(&disk.path, &disk.month_path, &month_plan, level)?;
    ensure!(lower.zstd_per_extent > 0, "the month changed no used block");

    say(&format!("cold read of the used blocks ({runs} runs)"));
    let mut cat = Vec::new();
    for _ in 0..runs {
        cool();
        cat.push(read_used(&disk.month_path, &month_plan)?);
    }
    let cold_cat = super::fastest(&cat);
    load.push(format!("cold cat: {}", loadavg()));

    let jobs = chunk_jobs(&month_plan, MIB);
    let mut rows = Vec::new();
    let mut kept: Vec<Captured> = Vec::new();
    let mut checks = Vec::new();
    let target = work.join("restored.img");
    for &cs in sizes {
        say(&format!("{} KiB chunks: base capture, month-later capture, restore", cs / 1024));
        let dir = work.join(format!("store-{}k", cs / 1024));
        let what = format!("{} KiB", cs / 1024);
        let Pair {
            first,
            t1,
            first_manifest_bytes,
            second,
            t2,
            second_manifest_bytes,
            base,
            after,
            new,
            month,
            restore: tr,
        } = capture_pair(&disk, &dir, cs, 0, level, &target, &jobs, disk_size, &what)?;
        let added: u64 = new.values().sum();
        checks.push(format!("{what}: restore of the month-later snapshot: used bytes identical"));
        load.push(format!("{what} done: {}", loadavg()));

        let first_stored: u64 = base.values().sum();
        rows.push(SizeRow {
            chunk_size: cs,
            first_seconds: t1.seconds,
            first_mib_s: rate(first.used_bytes, t1.seconds),
            first_stored_bytes: first_stored,
            first_new_chunks: first.new_chunks,
            first_manifest_bytes,
            first_puts_per_gib: first.new_chunks as f64 / (base_used as f64 / GIB),
            second_seconds: t2.seconds,
            second_vs_cold_cat: t2.seconds / cold_cat.seconds,
            added_bytes: added,
            added_vs_lower_bound: added as f64 / lower.zstd_per_extent as f64,
            added_vs_block_bound: added as f64 / lower.zstd_per_block as f64,
            second_new_chunks: second.new_chunks,
            second_puts_per_gib: second.new_chunks as f64 / (month_used as f64 / GIB),
            manifest_entries: month.regions.iter().map(|r| r.chunks.len() as u64).sum(),
            second_manifest_bytes,
            catalog_rows: after.len() as u64,
            restore_seconds: tr.seconds,
            restore_mib_s: rate(second.used_bytes, tr.seconds),
        });
        if cs == TWO_LEVEL.0 || TWO_LEVEL.1.contains(&cs) {
            kept.push(Captured {
                chunk_size: cs,
                base: base.into_keys().collect(),
                new,
                month,
                month_manifest_bytes: second_manifest_bytes,
            });
        }
        fs::remove_dir_all(&dir)?;
    }

    let mut pieced = Vec::new();
    if sizes.contains(&TWO_LEVEL.0) {
        for ps in PIECE_SIZES {
            let cs = TWO_LEVEL.0;
            say(&format!(
                "{} chunks with {} pieces: base capture, month-later capture with the base as parent, restore",
                kib(cs),
                kib(ps)
            ));
            let dir = work.join(format!("store-pieced-{}k", ps / 1024));
            let what = format!("pieces of {}", kib(ps));
            let Pair { t1, second, t2, second_manifest_bytes, after, new, month, restore: tr, .. } =
                capture_pair(&disk, &dir, cs, ps, level, &target, &jobs, disk_size, &what)?;
            let added: u64 = new.values().sum();
            let objects = new.len() as u64;
            let manifest_entries = month
                .regions
                .iter()
                .flat_map(|r| &r.chunks)
                .map(|c| match c {
                    ChunkRef::Pieced(p) => 1 + p.patches.len() as u64,
                    _ => 1,
                })
                .sum();
            checks.push(format!(
                "1 MiB chunks, {} pieces: restore of the month-later snapshot ({} pieced chunks): used bytes identical",
                kib(ps),
                second.pieced_chunks
            ));
            load.push(format!("pieces of {} done: {}", kib(ps), loadavg()));
            pieced.push(PiecedRow {
                chunk_size: cs,
                piece_size: ps,
                first_seconds: t1.seconds,
                second_seconds: t2.seconds,
                second_vs_cold_cat: t2.seconds / cold_cat.seconds,
                added_bytes: added,
                added_vs_lower_bound: added as f64 / lower.zstd_per_extent as f64,
                added_vs_block_bound: added as f64 / lower.zstd_per_block as f64,
                pieced_chunks: second.pieced_chunks,
                new_objects: objects,
                second_puts_per_gib: objects as f64 / (month_used as f64 / GIB),
                manifest_entries,
                second_manifest_bytes,
                catalog_rows: after.len() as u64,
                restore_seconds: tr.seconds,
                restore_mib_s: rate(second.used_bytes, tr.seconds),
            });
            fs::remove_dir_all(&dir)?;
        }
    }

    let mut two_level = Vec::new();
    if let Some(large) = kept.iter().find(|c| c.chunk_size == TWO_LEVEL.0) {
        for sub in kept.iter().filter(|c| TWO_LEVEL.1.contains(&c.chunk_size)) {
            two_level.push(simulate_two_level(large, sub, &lower, month_used)?);
        }
    }
    load.push(format!("end: {}", loadavg()));
    // For profiling by hand: `KURA_BENCH_KEEP=DIR` keeps both disk images (hard links in DIR).
    if let Some(keep) = std::env::var_os("KURA_BENCH_KEEP") {
        for p in [&disk.path, &disk.month_path] {
            let name = p.file_name().context("disk image name")?;
            fs::hard_link(p, Path::new(&keep).join(name)).with_context(|| format!("keeping {}", p.display()))?;
        }
    }
    Ok(MonthReport {
        work_dir: work.display().to_string(),
        disk_size,
        base_used_bytes: base_used,
        month_used_bytes: month_used,
        changes: disk.changes,
        page_cache,
        load_average: load,
        lower_bound: lower,
        cold_cat_mib_s: rate(month_used, cold_cat.seconds),
        cold_cat_used: cold_cat,
        rows,
        two_level,
        pieced,
        checks,
    })
}

/// What [`capture_pair`] leaves: both captures, the store's chunks before and after the second,
/// the month-later manifest and the restore's timing.
struct Pair {
    first: CaptureStats,
    t1: Timing,
    first_manifest_bytes: u64,
    second: CaptureStats,
    t2: Timing,
    second_manifest_bytes: u64,
    base: HashMap<Digest, u64>,
    after: HashMap<Digest, u64>,
    /// The chunks (objects) the month-later capture added, with their sizes.
    new: HashMap<Digest, u64>,
    month: Manifest,
    restore: Timing,
}

/// Into a fresh store `dir`, each step from a cold page cache: the base capture, the
/// month-later capture (with the base as parent and `piece_size` pieces, or plain when 0), its
/// added objects checked against what the capture says, and its restore checked against the
/// month-later disk's used bytes. `what` names the run in errors.
#[allow(clippy::too_many_arguments)]
fn capture_pair(
    disk: &month_disk::MonthDisk,
    dir: &Path,
    cs: u32,
    piece_size: u32,
    level: i32,
    target: &Path,
    jobs: &[super::ChunkJob],
    disk_size: u64,
    what: &str,
) -> Result<Pair> {
    let cool = || {
        let _ = drop_caches();
    };
    cool();
    let (first, first_id, t1) = kura_capture(&disk.path, dir, cs, level)?;
    let store = LocalStore::open(dir)?;
    let base = chunk_sizes(&store)?;
    let first_manifest_bytes = store.manifest_bytes(&first_id)?.len() as u64;
    let parent = match piece_size {
        0 => None,
        _ => Some(std::sync::Arc::new(store.load_manifest(&first_id)?)),
    };
    cool();
    let (second, id, t2) = kura_capture_with(&disk.month_path, dir, cs, level, parent, piece_size)?;
    let after = chunk_sizes(&store)?;
    let new: HashMap<Digest, u64> =
        after.iter().filter(|(d, _)| !base.contains_key(d)).map(|(d, s)| (*d, *s)).collect();
    let added: u64 = new.values().sum();
    ensure!(
        added == second.new_stored_bytes && new.len() as u64 == second.new_chunks,
        "{what}: the store grew by {} objects / {added} bytes, the capture says {} / {}",
        new.len(),
        second.new_chunks,
        second.new_stored_bytes
    );
    let month = store.load_manifest(&id)?;
    let second_manifest_bytes = store.manifest_bytes(&id)?.len() as u64;
    cool();
    let restore = kura_restore_into(dir, &id, target, disk_size)?;
    let diffs = compare_used(&disk.month_path, target, 0, jobs, 0, disk_size)?;
    ensure!(diffs.is_empty(), "{what}: the restore differs from the month-later disk in {diffs:?}");
    fs::remove_file(target)?;
    Ok(Pair { first, t1, first_manifest_bytes, second, t2, second_manifest_bytes, base, after, new, month, restore })
}

/// Every chunk in the store with its encoded size.
fn chunk_sizes(store: &LocalStore) -> Result<HashMap<Digest, u64>> {
    let mut m = HashMap::new();
    store.for_each_chunk(|d, len, _| {
        m.insert(d, len);
        Ok(())
    })?;
    Ok(m)
}

/// The used byte ranges of a plan, as disk offsets.
fn used_ranges(plan: &Plan) -> Vec<(u64, u64)> {
    plan.regions
        .iter()
        .flat_map(|r| used_spans(&r.map, r.size).into_iter().map(move |(a, b)| (a + r.start, b + r.start)))
        .collect()
}

/// Reads the used ranges of `disk` in order, in reads of up to 1 MiB: a `cat` of the used
/// blocks.
fn read_used(disk: &Path, plan: &Plan) -> Result<Timing> {
    let f = File::open(disk)?;
    let mut buf = vec![0u8; MIB as usize];
    let (_, t) = super::timed(|| {
        for (a, b) in used_ranges(plan) {
            let mut pos = a;
            while pos < b {
                let n = (b - pos).min(MIB) as usize;
                f.read_exact_at(&mut buf[..n], pos)?;
                pos += n as u64;
            }
        }
        Ok(())
    })?;
    Ok(t)
}

/// The used 4 KiB blocks of `month` (per its plan) that differ from `base`, compressed.
fn lower_bound(base: &Path, month: &Path, plan: &Plan, level: i32) -> Result<LowerBound> {
    let (fa, fb) = (File::open(base)?, File::open(month)?);
    let mut comp = zstd::bulk::Compressor::new(level)?;
    let (mut a, mut b) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut lb = LowerBound { changed_blocks: 0, changed_bytes: 0, extents: 0, zstd_per_block: 0, zstd_per_extent: 0 };
    let mut run: Vec<u8> = Vec::with_capacity(MIB as usize);
    let flush = |run: &mut Vec<u8>, lb: &mut LowerBound, comp: &mut zstd::bulk::Compressor| -> Result<()> {
        if !run.is_empty() {
            lb.zstd_per_extent += comp.compress(run)?.len() as u64;
            lb.extents += 1;
            run.clear();
        }
        Ok(())
    };
    for (s, e) in used_ranges(plan) {
        let mut pos = s;
        while pos < e {
            let n = (e - pos).min(MIB) as usize;
            fa.read_exact_at(&mut a[..n], pos)?;
            fb.read_exact_at(&mut b[..n], pos)?;
            for (x, y) in a[..n].chunks(BLOCK as usize).zip(b[..n].chunks(BLOCK as usize)) {
                if x == y {
                    flush(&mut run, &mut lb, &mut comp)?;
                    continue;
                }
                lb.changed_blocks += 1;
                lb.changed_bytes += y.len() as u64;
                lb.zstd_per_block += comp.compress(y)?.len() as u64;
                if run.len() + y.len() > MIB as usize {
                    flush(&mut run, &mut lb, &mut comp)?;
                }
                run.extend_from_slice(y);
            }
            pos += n as u64;
        }
        flush(&mut run, &mut lb, &mut comp)?;
    }
    Ok(lb)
}

/// The two-level scheme on `large` chunks with `sub` sub-chunks, from the real captures.
fn simulate_two_level(large: &Captured, sub: &Captured, lower: &LowerBound, used: u64) -> Result<TwoLevelRow> {
    let k = (large.chunk_size / sub.chunk_size) as usize;
    ensure!(large.month.regions.len() == sub.month.regions.len(), "the two captures planned different regions");
    let (mut changed, mut added, mut objects) = (0u64, 0u64, 0u64);
    let mut seen = HashSet::new();
    for (rl, rs) in large.month.regions.iter().zip(&sub.month.regions) {
        ensure!((rl.start, rl.size) == (rs.start, rs.size), "regions differ between the captures");
        for (i, c) in rl.chunks.iter().enumerate() {
            let ChunkRef::Data(d) = c else { continue };
            if large.base.contains(d) {
                continue;
            }
            changed += 1;
            for sc in rs.chunks.iter().skip(i * k).take(k) {
                if let ChunkRef::Data(sd) = sc {
                    if let Some(&size) = sub.new.get(sd) {
                        if seen.insert(*sd) {
                            added += size;
                            objects += 1;
                        }
                    }
                }
            }
        }
    }
    let entries = |m: &Manifest| -> u64 { m.regions.iter().map(|r| r.chunks.len() as u64).sum() };
    let (el, es) = (entries(&large.month), entries(&sub.month));
    let per_entry = sub.month_manifest_bytes.saturating_sub(large.month_manifest_bytes) as f64
        / es.saturating_sub(el).max(1) as f64;
    let extra = changed * (k as u64 - 1);
    Ok(TwoLevelRow {
        chunk_size: large.chunk_size,
        sub_chunk_size: sub.chunk_size,
        changed_chunks: changed,
        added_bytes: added,
        added_vs_lower_bound: added as f64 / lower.zstd_per_extent as f64,
        added_vs_block_bound: added as f64 / lower.zstd_per_block as f64,
        new_objects: objects,
        second_puts_per_gib: objects as f64 / (used as f64 / GIB),
        manifest_entries: el + extra,
        manifest_bytes_estimate: large.month_manifest_bytes + (extra as f64 * per_entry) as u64,
        stray_new_sub_chunks: sub.new.keys().filter(|d| !seen.contains(*d)).count() as u64,
    })
}

fn kib(cs: u32) -> String {
    if cs >= 1 << 20 {
        format!("{} MiB", cs >> 20)
    } else {
        format!("{} KiB", cs >> 10)
    }
}

pub fn print_report(r: &MonthReport) {
    let c = &r.changes;
    println!(
        "Kura bench --month: {} MiB GPT disk (ext4 root + NTFS, junk in free space); used: base {}, month-later {}",
        r.disk_size / MIB,
        mib(r.base_used_bytes),
        mib(r.month_used_bytes)
    );
    println!(
        "The month: {} of {} database pages (8 KiB) rewritten in {} files ({}); {} appended to {} journals; \
         {} files replaced ({}), {} added ({}), {} deleted; NTFS: {} edited in place, {} new",
        c.db_pages_rewritten,
        c.db_bytes / month_disk::PAGE,
        c.db_files,
        mib(c.db_bytes),
        mib(c.log_bytes_appended),
        c.journal_files,
        c.files_replaced,
        mib(c.replaced_bytes),
        c.files_added,
        mib(c.added_bytes),
        c.files_deleted,
        mib(c.ntfs_edited_bytes),
        mib(c.ntfs_new_bytes)
    );
    println!("Page cache: {}.", r.page_cache);
    println!("Load average: {}", r.load_average.join("; "));
    let l = &r.lower_bound;
    println!(
        "Lower bound: {} used 4 KiB blocks changed ({}, {} runs); zstd per block {}, per run {} (the bound)",
        l.changed_blocks,
        mib(l.changed_bytes),
        l.extents,
        mib(l.zstd_per_block),
        mib(l.zstd_per_extent)
    );
    println!(
        "Cold read of the month-later used blocks: {:.2} s ({:.0} MiB/s)",
        r.cold_cat_used.seconds, r.cold_cat_mib_s
    );
    println!();
    println!(
        "  {:>8} {:>8} {:>9} {:>10} {:>9} {:>9} | {:>8} {:>6} {:>10} {:>6} {:>6} {:>8} {:>8} {:>9} {:>8} | {:>8}",
        "chunk",
        "1st s",
        "1st MiB/s",
        "1st stored",
        "PUT/GiB",
        "manifest",
        "2nd s",
        "/cat",
        "added",
        "/bound",
        "/block",
        "new",
        "PUT/GiB",
        "manifest",
        "rows",
        "rest. s"
    );
    for row in &r.rows {
        println!(
            "  {:>8} {:>8.2} {:>9.1} {:>10} {:>9.0} {:>9} | {:>8.2} {:>6.2} {:>10} {:>6.2} {:>6.2} {:>8} {:>8.1} {:>9} {:>8} | {:>8.2}",
            kib(row.chunk_size),
            row.first_seconds,
            row.first_mib_s,
            mib(row.first_stored_bytes),
            row.first_puts_per_gib,
            format!("{:.0} KiB", row.first_manifest_bytes as f64 / 1024.0),
            row.second_seconds,
            row.second_vs_cold_cat,
            mib(row.added_bytes),
            row.added_vs_lower_bound,
            row.added_vs_block_bound,
            row.second_new_chunks,
            row.second_puts_per_gib,
            format!("{:.0} KiB", row.second_manifest_bytes as f64 / 1024.0),
            row.catalog_rows,
            row.restore_seconds
        );
    }
    if !r.two_level.is_empty() {
        println!();
        println!(
            "Two-level scheme, simulated from the plain captures (added bytes exact; entries and manifest estimated):"
        );
        for t in &r.two_level {
            println!(
                "  {} chunks, changed ones as {} sub-chunks: {} changed chunks, added {} ({:.2}x the bound, {:.2}x per block), {} new objects ({:.1} PUT/GiB), ~{} manifest entries, ~{:.0} KiB manifest, {} stray new sub-chunks",
                kib(t.chunk_size),
                kib(t.sub_chunk_size),
                t.changed_chunks,
                mib(t.added_bytes),
                t.added_vs_lower_bound,
                t.added_vs_block_bound,
                t.new_objects,
                t.second_puts_per_gib,
                t.manifest_entries,
                t.manifest_bytes_estimate as f64 / 1024.0,
                t.stray_new_sub_chunks
            );
        }
    }
    println!();
    println!("Checks:");
    for c in &r.checks {
        println!("  {c}");
    }
    if !r.pieced.is_empty() {
        println!();
        println!("Two-level scheme, measured (manifest v2: the month-later capture with the base snapshot as parent):");
        println!(
            "  {:>8} {:>8} {:>8} | {:>8} {:>6} {:>10} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} | {:>8}",
            "chunk",
            "pieces",
            "1st s",
            "2nd s",
            "/cat",
            "added",
            "/bound",
            "/block",
            "pieced",
            "new obj",
            "PUT/GiB",
            "entries",
            "manifest",
            "rows",
            "rest. s"
        );
        for p in &r.pieced {
            println!(
                "  {:>8} {:>8} {:>8.2} | {:>8.2} {:>6.2} {:>10} {:>6.2} {:>6.2} {:>7} {:>8} {:>8.1} {:>8} {:>9} {:>8} | {:>8.2}",
                kib(p.chunk_size),
                kib(p.piece_size),
                p.first_seconds,
                p.second_seconds,
                p.second_vs_cold_cat,
                mib(p.added_bytes),
                p.added_vs_lower_bound,
                p.added_vs_block_bound,
                p.pieced_chunks,
                p.new_objects,
                p.second_puts_per_gib,
                p.manifest_entries,
                format!("{:.0} KiB", p.second_manifest_bytes as f64 / 1024.0),
                p.catalog_rows,
                p.restore_seconds
            );
        }
    }
}
