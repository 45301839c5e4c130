//! `kura bench --levels`: which zstd level Kura's chunks should use, by measurement.
//!
//! On the benchmark disk, each run takes every level in turn: Kura captures the disk into a
//! fresh store at that level, then `partclone -c | zstd -T0 -<level>` compresses the same
//! partitions as one stream (level 3 always runs too: `zstd -3` is the reference Kura's stored
//! size is held against). The fastest run of each counts. For each step it records wall and
//! CPU seconds, the stored bytes, the 1-minute load average before the step and the
//! **neighbour load**: CPU time the rest of the machine used during the step (busy time in
//! `/proc/stat` minus the bench's own), in cores. Page cache warm, as in the rest of the bench.

use super::{cpu_seconds, dir_bytes, kura_capture, run_quiet, say, DiskInfo, Row, Timing, DEFAULT_CHUNK_SIZE, MIB};
use anyhow::{Context, Result};
use kura_diskgen::bench_disk;
use kura_imaging::capture::{self, CaptureOptions};
use kura_imaging::progress::NoProgress;
use serde::Serialize;
use std::fs::{self, File};
use std::path::Path;
use std::process::Command;

/// The level the reference stream is compressed at (`partclone | zstd -T0 -3`).
const REFERENCE_LEVEL: i32 = 3;

#[derive(Serialize)]
pub struct LevelReport {
    work_dir: String,
    page_cache: &'static str,
    runs: usize,
    cpus: usize,
    kura_threads: usize,
    disk: DiskInfo,
    /// `partclone -c | zstd -T0 -3`, fastest run.
    reference: Row,
    rows: Vec<LevelRow>,
    /// 1-minute load average when the measurements started and ended.
    loadavg_start: f64,
    loadavg_end: f64,
}

#[derive(Serialize)]
struct LevelRow {
    level: i32,
    /// Kura's capture into a fresh local store at this level (fastest run).
    kura: Row,
    /// Cores the rest of the machine used during Kura's fastest run.
    kura_neighbour_cores: f64,
    /// 1-minute load average just before Kura's fastest run.
    kura_loadavg: f64,
    /// `partclone -c | zstd -T0 -<level>` on the same partitions (fastest run).
    stream: Row,
    stream_neighbour_cores: f64,
    /// Kura stored bytes / the reference's (`zstd -3` stream): at most 1 means no more.
    stored_ratio: f64,
    /// Reference seconds / Kura seconds: above 1 means Kura is faster.
    speed_ratio: f64,
    /// Kura stored bytes / the stream's at the same level: the cost of compressing chunk by chunk.
    stored_ratio_same_level: f64,
}

/// One timed step with what the machine around it did.
#[derive(Clone, Copy, Default)]
struct Step {
    t: Timing,
    stored: u64,
    neighbour_cores: f64,
    loadavg: f64,
}

pub fn bench(work: &Path, disk_size: u64, runs: usize, levels: &[i32]) -> Result<LevelReport> {
    say(&format!("building a {} MiB test disk in {}", disk_size / MIB, work.display()));
    let disk = bench_disk::build(work, disk_size, &say)?;
    let cpus = capture::default_threads();
    say("warming the page cache (every image read once)");
    run_quiet(Command::new("cat").arg(&disk.path))?;
    for p in &disk.parts {
        run_quiet(Command::new("cat").arg(&p.image))?;
    }
    let plan = {
        let mut f = File::open(&disk.path)?;
        capture::plan(&mut f, disk_size, &NoProgress).context("planning the test disk")?
    };
    let (info, parts_used, parts_size) = super::disk_info(&disk, &plan, disk_size);

    let mut stream_levels = levels.to_vec();
    if !stream_levels.contains(&REFERENCE_LEVEL) {
        stream_levels.push(REFERENCE_LEVEL);
    }
    let loadavg_start = loadavg()?;
    let store_dir = work.join("store-level");
    let mut kura: Vec<Vec<Step>> = vec![Vec::new(); levels.len()];
    let mut stream: Vec<Vec<Step>> = vec![Vec::new(); stream_levels.len()];
    for run in 0..runs {
        say(&format!("run {}/{runs}: Kura and partclone | zstd -T0 at levels {stream_levels:?}", run + 1));
        for (i, &level) in stream_levels.iter().enumerate() {
            if let Some(k) = levels.iter().position(|&l| l == level) {
                if store_dir.exists() {
                    fs::remove_dir_all(&store_dir)?;
                }
                let step = observed(|| {
                    let (_, _, t) = kura_capture(&disk.path, &store_dir, DEFAULT_CHUNK_SIZE, level)?;
                    Ok((t, dir_bytes(&store_dir.join("chunks"))?))
                })?;
                kura[k].push(step);
                fs::remove_dir_all(&store_dir)?;
            }
            let step = observed(|| partclone_zstd(work, &disk.parts, level))?;
            stream[i].push(step);
        }
    }
    let loadavg_end = loadavg()?;

    let used = info.used_bytes;
    let stream_row = |i: usize| -> (Row, f64) {
        let s = fastest(&stream[i]);
        let row = Row::new(format!("partclone -c | zstd -T0 -{}", stream_levels[i]), s.t, parts_used)
            .disk(parts_size)
            .stored(s.stored);
        (row, s.neighbour_cores)
    };
    let reference_at = stream_levels.iter().position(|&l| l == REFERENCE_LEVEL).context("no reference level")?;
    let (reference, _) = stream_row(reference_at);
    let ref_bytes = reference.stored_bytes.unwrap_or(0).max(1);
    let mut rows = Vec::new();
    for (k, &level) in levels.iter().enumerate() {
        let s = fastest(&kura[k]);
        let kura_row = Row::new(format!("Kura capture, zstd -{level}"), s.t, used).disk(disk_size).stored(s.stored);
        let i = stream_levels.iter().position(|&l| l == level).context("level not measured")?;
        let (stream_row, stream_neighbour_cores) = stream_row(i);
        rows.push(LevelRow {
            level,
            kura_neighbour_cores: s.neighbour_cores,
            kura_loadavg: s.loadavg,
            stored_ratio: s.stored as f64 / ref_bytes as f64,
            speed_ratio: reference.seconds / kura_row.seconds,
            stored_ratio_same_level: s.stored as f64 / stream_row.stored_bytes.unwrap_or(0).max(1) as f64,
            kura: kura_row,
            stream: stream_row,
            stream_neighbour_cores,
        });
    }
    Ok(LevelReport {
        work_dir: work.display().to_string(),
        page_cache: "warm (every image read once before measuring; nothing dropped)",
        runs,
        cpus,
        kura_threads: CaptureOptions::default().threads,
        disk: info,
        reference,
        rows,
        loadavg_start,
        loadavg_end,
    })
}

/// `partclone -c | zstd -T0 -<level>` on every partition; returns the time and the image bytes.
fn partclone_zstd(work: &Path, parts: &[bench_disk::BenchPart], level: i32) -> Result<(Timing, u64)> {
    let mut total = Timing::default();
    let mut bytes = 0;
    for p in parts {
        let out = work.join(format!("p{}.level.pcl.zst", p.number));
        let _ = fs::remove_file(&out);
        let t = super::partclone_zstd_into(super::partclone(p.fs), &p.image, &out, level)?;
        super::add(&mut total, t);
        bytes += fs::metadata(&out)?.len();
        fs::remove_file(&out)?;
    }
    Ok((total, bytes))
}

/// Runs a timed step and records the machine's load around it.
fn observed(f: impl FnOnce() -> Result<(Timing, u64)>) -> Result<Step> {
    let loadavg = loadavg()?;
    let busy0 = machine_busy_seconds()?;
    let own0 = cpu_seconds()?;
    let (t, stored) = f()?;
    let others = (machine_busy_seconds()? - busy0) - (cpu_seconds()? - own0);
    let neighbour_cores = if t.seconds > 0.0 { (others / t.seconds).max(0.0) } else { 0.0 };
    Ok(Step { t, stored, neighbour_cores, loadavg })
}

fn fastest(steps: &[Step]) -> Step {
    steps.iter().copied().min_by(|a, b| a.t.seconds.total_cmp(&b.t.seconds)).unwrap_or_default()
}

/// The 1-minute load average.
pub(super) fn loadavg() -> Result<f64> {
    let s = fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    s.split_whitespace().next().and_then(|v| v.parse().ok()).context("/proc/loadavg is not a load average")
}

/// Busy CPU seconds of the whole machine since boot (all but idle and iowait, from `/proc/stat`).
pub(super) fn machine_busy_seconds() -> Result<f64> {
    let s = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = s.lines().next().filter(|l| l.starts_with("cpu ")).context("/proc/stat has no cpu line")?;
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: f64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    Ok(busy / super::clock_ticks())
}

pub fn print_report(r: &LevelReport) {
    let d = &r.disk;
    println!(
        "Kura bench, zstd levels: {} MiB GPT test disk, {:.1} MiB used; {} CPUs, Kura uses {} worker threads",
        d.size / MIB,
        d.used_bytes as f64 / MIB as f64,
        r.cpus,
        r.kura_threads
    );
    println!("Page cache: {}. Fastest of {} runs, levels taking turns.", r.page_cache, r.runs);
    println!(
        "Load average (1 min): {:.2} at the start, {:.2} at the end. 'others' = cores the rest of the machine used during the step.",
        r.loadavg_start, r.loadavg_end
    );
    println!(
        "Reference: {} {:.2} s, {:.1} MiB/s used, {:.1} MiB stored",
        r.reference.name,
        r.reference.seconds,
        r.reference.mib_s,
        r.reference.stored_bytes.unwrap_or(0) as f64 / MIB as f64
    );
    println!();
    println!(
        "  {:>5} {:>8} {:>10} {:>7} {:>11} {:>8} {:>8} {:>6} {:>6} | {:>8} {:>11} {:>6} {:>9}",
        "level",
        "Kura s",
        "MiB/s used",
        "CPU s",
        "stored MiB",
        "vs zstd3",
        "speed",
        "others",
        "load",
        "stream s",
        "stream MiB",
        "others",
        "Kura/strm"
    );
    for row in &r.rows {
        println!(
            "  {:>5} {:>8.2} {:>10.1} {:>7.2} {:>11.1} {:>8.3} {:>7.2}x {:>6.2} {:>6.2} | {:>8.2} {:>11.1} {:>6.2} {:>9.3}",
            row.level,
            row.kura.seconds,
            row.kura.mib_s,
            row.kura.cpu_seconds,
            row.kura.stored_bytes.unwrap_or(0) as f64 / MIB as f64,
            row.stored_ratio,
            row.speed_ratio,
            row.kura_neighbour_cores,
            row.kura_loadavg,
            row.stream.seconds,
            row.stream.stored_bytes.unwrap_or(0) as f64 / MIB as f64,
            row.stream_neighbour_cores,
            row.stored_ratio_same_level,
        );
    }
}
