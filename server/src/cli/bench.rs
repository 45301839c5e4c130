//! `kura bench`: Kura's imaging pipeline against the reference tools, on the same data, in one
//! run.
//!
//! It builds a GPT test disk in a fresh work directory, without loop devices or mounts
//! ([`kura_diskgen::bench_disk`]: an ext4 partition (~75 %) made with `mkfs.ext4 -d` from real
//! system files and generated data (incompressible pseudo-random and compressible text), and an
//! NTFS partition (~25 %) made with `mkntfs` and filled with a few large files by `ntfscp`; about
//! half the disk ends up used). Then, with a warm page cache (everything is read once before the first measurement, nothing
//! is dropped), it measures:
//!
//! - **capture**: Kura (in-process, into a [`LocalStore`], committed) against
//!   `partclone.<fs> -c | zstd -T0 -3` on each partition, with `cat` as the read limit;
//! - **restore**: Kura onto a new sparse file against `zstd -d | partclone.<fs> -r`, each
//!   checked against the source afterwards (used bytes compared, `e2fsck -fn` on ext4);
//! - **single-stage limits** on the same used bytes, in the chunks Kura reads: read alone,
//!   SHA-256 alone and zstd alone at Kura's level, on one thread and on all;
//! - **chunk size**: Kura with 256 KiB, 1 MiB and 4 MiB chunks, and the bytes a second capture
//!   stores after about 1 % of the ext4 files changed (`debugfs -w`: rm + write).
//!
//! With `--levels 1,2,3`, it runs only the **zstd level** experiment instead ([`levels`]); with
//! `--stacks`, only the **storage-stack** benchmark (XFS, LVM2, btrfs against partclone,
//! [`stacks`]); with `--engine`, only the **engine path** (a real `kura serve` child and the
//! `--server` clients against the offline path, and with `--concurrent N` N hosts at once,
//! [`engine`]; the child processes are [`processes`]); with `--month`, only the **incremental**
//! benchmark: a realistic disk and the same disk a month later, per chunk size, against the
//! changed blocks' compressed size ([`month`]).
//!
//! This module is the benchmark itself: measuring, running the reference tools, printing the
//! table. The disk is built by `kura-diskgen`, shared with the end-to-end tests.
//!
//! Wall time comes from [`Instant`]; CPU time from `/proc/self/stat` (this process's threads plus
//! waited-for children and their descendants), so no unsafe code is needed. Every writer is made
//! durable inside its timing: Kura's store fsyncs each chunk, and the reference outputs and
//! restore targets are fsynced before their clock stops.

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use kura_catalogs::LocalStore;
use kura_diskgen::bench_disk::{self, BenchPart};
use kura_diskgen::disk::Fs;
use kura_diskgen::image::{fsck_ext4, sync_file};
use kura_diskgen::tools::{find_tool, search_path};
use kura_imaging::capture::{self, CaptureOptions, CaptureStats, Plan};
use kura_imaging::chunk::{ChunkSink, Digest, DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL};
use kura_imaging::fs::AllocationMap;
use kura_imaging::progress::NoProgress;
use kura_imaging::restore::{self, RestoreOptions};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod engine;
mod levels;
mod month;
mod processes;
mod stacks;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Chunk sizes compared by the chunk-size experiment.
const CHUNK_SIZES: [u32; 3] = [256 << 10, 1 << 20, 4 << 20];
/// The smallest disk the benchmark disk's layout makes sense for.
const MIN_DISK: u64 = bench_disk::MIN_SIZE;
/// External tools the benchmark needs.
const TOOLS: [&str; 12] = [
    "bash",
    "cat",
    "sgdisk",
    "mkfs.ext4",
    "mkntfs",
    "ntfscp",
    "debugfs",
    "e2fsck",
    "partclone.extfs",
    "partclone.ntfs",
    "zstd",
    "getconf",
];

#[derive(Args)]
pub struct BenchArgs {
    /// Parent of the work directory (a fresh `kura-bench.*` directory is made inside it and
    /// removed afterwards). Needs about three times the disk size free.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    dir: PathBuf,
    /// Size of the test disk (K, M, G and T are binary units).
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    disk_size: u64,
    /// Keep the work directory (disk images, stores) and print its path.
    #[arg(long)]
    keep: bool,
    /// Print the figures as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Runs of each capture, restore and single-stage measurement (taking turns); the fastest
    /// run of each counts. The chunk-size experiment's second capture runs once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
    /// zstd level for Kura's chunks (default: Kura's own).
    #[arg(long, default_value_t = DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// Run only the zstd level experiment: capture the disk once per level (comma-separated,
    /// e.g. `1,2,3,4,5`) into fresh stores, against `partclone | zstd -T0` at the same levels.
    #[arg(long, value_name = "LEVELS", value_delimiter = ',', value_parser = clap::value_parser!(i32).range(1..=19))]
    levels: Vec<i32>,
    /// Run only the storage-stack benchmark instead: a RHEL-style disk (`/boot` XFS, LVM2 with
    /// XFS root and home, swap) plus a btrfs volume, against `partclone.{xfs,btrfs,vfat} | zstd`
    /// per volume. Needs root (LVM's tools on a loop device).
    #[arg(long, conflicts_with = "levels")]
    stacks: bool,
    /// Run only the engine-path benchmark: a real `kura serve` child on loopback HTTPS and the
    /// `kura image capture|restore --server` clients against the offline path (local store), with
    /// client and engine CPU, peak RSS and the neighbours' load. Needs GNU time (package `time`).
    #[arg(long, conflicts_with_all = ["levels", "stacks"])]
    engine: bool,
    /// With --engine: instead, N clients capture N hosts' disks (copies of the bench disk with
    /// some files of their own) into one fresh engine at once.
    #[arg(long, value_name = "N", requires = "engine", value_parser = clap::value_parser!(u64).range(1..=64))]
    concurrent: Option<u64>,
    /// Run only the incremental benchmark instead: a realistic disk (junk in free space, /usr,
    /// databases, logs, NTFS) and the same disk after a scripted month of changes, captured at
    /// each chunk size (base, then month-later) with a cold page cache, against the compressed
    /// size of the changed blocks; plus a simulated two-level chunk scheme.
    #[arg(long, conflicts_with_all = ["levels", "stacks", "engine"])]
    month: bool,
    /// Chunk sizes for `--month` (comma-separated, e.g. `64K,1M`; default 64K,128K,256K,512K,1M,4M).
    #[arg(long, value_name = "SIZES", value_delimiter = ',', value_parser = parse_size, requires = "month")]
    chunk_sizes: Vec<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], KIB),
        Some('M' | 'm') => (&t[..t.len() - 1], MIB),
        Some('G' | 'g') => (&t[..t.len() - 1], GIB),
        Some('T' | 't') => (&t[..t.len() - 1], GIB << 10),
        _ => (t, 1),
    };
    match num.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok((n * mult as f64) as u64),
        _ => Err(format!("not a size: {s:?} (try 4G or 512M)")),
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// Wall and CPU time of one measured step.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Timing {
    seconds: f64,
    cpu_seconds: f64,
}

/// One measured line of the report.
#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    seconds: f64,
    cpu_seconds: f64,
    /// Bytes the step is measured against (the used bytes it covers).
    used_bytes: u64,
    /// MiB/s of used bytes.
    mib_s: f64,
    /// MiB/s of the whole disk (or partitions) it covers, where that means something.
    disk_mib_s: Option<f64>,
    /// Bytes stored (or produced) by the step, where it stores anything.
    stored_bytes: Option<u64>,
}

impl Row {
    fn new(name: impl Into<String>, t: Timing, used_bytes: u64) -> Row {
        Row {
            name: name.into(),
            seconds: t.seconds,
            cpu_seconds: t.cpu_seconds,
            used_bytes,
            mib_s: rate(used_bytes, t.seconds),
            disk_mib_s: None,
            stored_bytes: None,
        }
    }

    fn disk(mut self, bytes: u64) -> Row {
        self.disk_mib_s = Some(rate(bytes, self.seconds));
        self
    }

    fn stored(mut self, bytes: u64) -> Row {
        self.stored_bytes = Some(bytes);
        self
    }
}

fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / MIB as f64 / seconds
    } else {
        0.0
    }
}

#[derive(Serialize)]
struct Report {
    work_dir: String,
    page_cache: &'static str,
    /// Runs of each capture, restore and limit measurement; the fastest counts.
    runs: usize,
    cpus: usize,
    kura_threads: usize,
    disk: DiskInfo,
    capture: CaptureSection,
    restore: RestoreSection,
    limits: Vec<Row>,
    chunk_sizes: ChunkSection,
    checks: Vec<String>,
}

#[derive(Serialize)]
struct DiskInfo {
    size: u64,
    used_bytes: u64,
    partitions: Vec<PartInfo>,
}

#[derive(Serialize)]
struct PartInfo {
    number: u32,
    fs: &'static str,
    start: u64,
    size: u64,
    used_bytes: u64,
    files: usize,
}

#[derive(Serialize)]
struct CaptureSection {
    cat_partitions: Row,
    cat_disk: Row,
    partclone_zstd: Row,
    kura: Row,
    kura_null_sink: Row,
    /// partclone+zstd seconds / Kura seconds: above 1 means Kura is faster.
    speed_ratio: f64,
    /// Kura stored bytes / partclone+zstd image bytes: at most 1 means Kura stores no more.
    stored_ratio: f64,
}

#[derive(Serialize)]
struct RestoreSection {
    partclone_zstd: Row,
    kura: Row,
    /// partclone restore seconds / Kura restore seconds: above 1 means Kura is faster.
    speed_ratio: f64,
}

#[derive(Serialize)]
struct ChunkSection {
    changed_files: usize,
    changed_file_bytes: u64,
    rows: Vec<ChunkRow>,
}

#[derive(Serialize)]
struct ChunkRow {
    chunk_size: u32,
    capture: Row,
    chunks: u64,
    second_capture: Row,
    /// Encoded bytes newly stored by the second capture (after the change).
    second_new_bytes: u64,
    second_new_chunks: u64,
}

// ---------------------------------------------------------------------------------------------
// Entry point

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    ensure!(args.disk_size >= MIN_DISK, "the test disk must be at least {} MiB", MIN_DISK / MIB);
    for tool in TOOLS {
        ensure!(
            find_tool(tool).is_some(),
            "`{tool}` is not installed (the benchmark needs partclone, zstd, gdisk, e2fsprogs and ntfs-3g)"
        );
    }
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("kura-bench.")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a work directory in {}", args.dir.display()))?;
    // With --keep the directory outlives the run even if it fails.
    let (guard, work) = if args.keep {
        let p = tmp.keep();
        (None, p)
    } else {
        let p = tmp.path().to_path_buf();
        (Some(tmp), p)
    };
    let disk_size = args.disk_size / MIB * MIB;
    if let Some(n) = args.concurrent {
        let report = engine::bench_concurrent(&work, disk_size, args.runs as usize, n as usize)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            engine::print_concurrent(&report);
        }
    } else if args.engine {
        let report = engine::bench(&work, disk_size, args.runs as usize, args.level)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            engine::print_report(&report);
        }
    } else if args.month {
        ensure!(disk_size >= month::MIN_DISK, "the month disk must be at least {} MiB", month::MIN_DISK / MIB);
        let sizes: Vec<u32> = if args.chunk_sizes.is_empty() {
            month::CHUNK_SIZES.to_vec()
        } else {
            args.chunk_sizes
                .iter()
                .map(|&c| u32::try_from(c))
                .collect::<Result<_, _>>()
                .context("chunk size too large")?
        };
        for &c in &sizes {
            ensure!(
                c.is_power_of_two() && (4096..=(16 << 20)).contains(&c),
                "chunk size {c}: a power of two from 4 KiB to 16 MiB"
            );
        }
        let report = month::bench(&work, disk_size, args.runs as usize, args.level, &sizes)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            month::print_report(&report);
        }
    } else if args.stacks {
        ensure!(disk_size >= stacks::MIN_DISK, "the stacks disk must be at least {} MiB", stacks::MIN_DISK / MIB);
        let report = stacks::bench(&work, disk_size, args.runs as usize, args.level)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            stacks::print_report(&report);
        }
    } else if !args.levels.is_empty() {
        let report = levels::bench(&work, disk_size, args.runs as usize, &args.levels)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            levels::print_report(&report);
        }
    } else {
        let report = bench(&work, disk_size, args.runs as usize, args.level)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
    }
    if args.keep {
        eprintln!("bench: work directory kept: {}", work.display());
    }
    drop(guard);
    Ok(ExitCode::SUCCESS)
}

fn say(msg: &str) {
    eprintln!("bench: {msg}");
}

/// The report's description of the test disk (size, used bytes, partitions), from the plan Kura
/// captures it with; also the partitions' used bytes and their total size.
fn disk_info(disk: &bench_disk::BenchDisk, plan: &capture::Plan, disk_size: u64) -> (DiskInfo, u64, u64) {
    let part_used = |n: u32| -> u64 {
        plan.regions.iter().filter(|r| r.partition == Some(n)).map(|r| r.map.used_bytes(r.size)).sum()
    };
    let info = DiskInfo {
        size: disk_size,
        used_bytes: plan.regions.iter().map(|r| r.map.used_bytes(r.size)).sum(),
        partitions: disk
            .parts
            .iter()
            .map(|p| PartInfo {
                number: p.number,
                fs: p.fs.name(),
                start: p.start,
                size: p.size,
                used_bytes: part_used(p.number),
                files: p.files,
            })
            .collect(),
    };
    let parts_used = disk.parts.iter().map(|p| part_used(p.number)).sum();
    (info, parts_used, disk.parts.iter().map(|p| p.size).sum())
}

/// `<partclone> -c | zstd -T0 -<level>` of one volume's image into `out`, timed (synced to
/// disk).
fn partclone_zstd_into(partclone: &str, image: &Path, out: &Path, level: i32) -> Result<Timing> {
    let (_, t) = timed(|| {
        run_quiet(
            Command::new("bash")
                .args([
                    "-c",
                    "set -o pipefail; \"$1\" -c -s \"$2\" -o - -L /dev/null -q | zstd -T0 -\"$4\" -q -f -o \"$3\"",
                    "bash",
                ])
                .arg(partclone)
                .arg(image)
                .arg(out)
                .arg(level.to_string()),
        )?;
        sync_file(out)
    })?;
    Ok(t)
}

fn bench(work: &Path, disk_size: u64, runs: usize, level: i32) -> Result<Report> {
    say(&format!("building a {} MiB test disk in {}", disk_size / MIB, work.display()));
    let disk = bench_disk::build(work, disk_size, &say)?;
    let cpus = capture::default_threads();

    say("warming the page cache (every image read once)");
    let mut images: Vec<&Path> = vec![&disk.path, &disk.changed_path];
    images.extend(disk.parts.iter().map(|p| p.image.as_path()));
    for img in &images {
        run_quiet(Command::new("cat").arg(img))?;
    }

    // The same allocation maps Kura captures with, and the chunks it reads.
    let plan = {
        let mut f = File::open(&disk.path)?;
        capture::plan(&mut f, disk_size, &NoProgress).context("planning the test disk")?
    };
    let jobs = chunk_jobs(&plan, DEFAULT_CHUNK_SIZE as u64);
    let used: u64 = plan.regions.iter().map(|r| r.map.used_bytes(r.size)).sum();
    let (info, parts_used, parts_size) = disk_info(&disk, &plan, disk_size);

    // Single-stage limits.
    say("single-stage limits (read, sha256, zstd)");
    let mut limits = Vec::new();
    let t = best(runs, || read_alone(&disk.path, &jobs).map(|t| ((), t)))?.1;
    limits.push(Row::new("read used chunks (1 thread)", t, used));
    for threads in dedup_threads(cpus) {
        let (_, t) = best(runs, || compute_alone(&disk.path, &jobs, threads, Stage::Sha256))?;
        limits.push(Row::new(format!("sha256 ({threads} thread{})", plural(threads)), t, used));
    }
    for threads in dedup_threads(cpus) {
        let (out, t) = best(runs, || compute_alone(&disk.path, &jobs, threads, Stage::Zstd(level)))?;
        let name = format!("zstd -{level} ({threads} thread{})", plural(threads));
        limits.push(Row::new(name, t, used).stored(out));
    }

    // Capture: the contenders take turns, each run; the best run of each counts.
    say(&format!("capture: cat, partclone+zstd, Kura ({runs} runs each, interleaved)"));
    let store_dir = work.join("store");
    let mut cat_parts = Vec::new();
    let mut cat_disk = Vec::new();
    let mut pcl = Vec::new();
    let mut kura = Vec::new();
    let mut kura_null = Vec::new();
    let mut pcl_bytes = 0;
    let mut kura_run = None;
    for _ in 0..runs {
        let mut t_parts = Timing::default();
        for p in &disk.parts {
            add(&mut t_parts, timed(|| run_quiet(Command::new("cat").arg(&p.image)))?.1);
        }
        cat_parts.push(t_parts);
        cat_disk.push(timed(|| run_quiet(Command::new("cat").arg(&disk.path)))?.1);

        let mut t_pcl = Timing::default();
        pcl_bytes = 0;
        for p in &disk.parts {
            let out = work.join(format!("p{}.pcl.zst", p.number));
            let _ = fs::remove_file(&out);
            let t = partclone_zstd_into(partclone(p.fs), &p.image, &out, 3)?;
            add(&mut t_pcl, t);
            pcl_bytes += fs::metadata(&out)?.len();
        }
        pcl.push(t_pcl);

        // A fresh store each run, so every run stores everything.
        if store_dir.exists() {
            fs::remove_dir_all(&store_dir)?;
        }
        let (stats, id, t) = kura_capture(&disk.path, &store_dir, DEFAULT_CHUNK_SIZE, level)?;
        kura.push(t);
        kura_run = Some((stats, id));

        let (_, t) = timed(|| {
            let opts = CaptureOptions { source: disk.path.display().to_string(), level, ..Default::default() };
            capture::capture(File::open(&disk.path)?, &opts, &NullSink, &NoProgress).map_err(anyhow::Error::from)
        })?;
        kura_null.push(t);
    }
    let (stats, id) = kura_run.context("no capture run")?;
    let kura_stored = dir_bytes(&store_dir.join("chunks"))?;
    let cat_parts = Row::new("cat partition images (read limit)", fastest(&cat_parts), parts_used).disk(parts_size);
    let cat_disk = Row::new("cat whole disk image", fastest(&cat_disk), used).disk(disk_size);
    let pcl_capture =
        Row::new("partclone -c | zstd -T0 -3", fastest(&pcl), parts_used).disk(parts_size).stored(pcl_bytes);
    let kura_capture_row = Row::new("Kura capture (local store, 1 MiB chunks)", fastest(&kura), stats.used_bytes)
        .disk(disk_size)
        .stored(kura_stored);
    let kura_null =
        Row::new("Kura capture, no store (diagnostic)", fastest(&kura_null), stats.used_bytes).disk(disk_size);

    // Restore, likewise interleaved; the results of the last run are checked.
    say(&format!("restore: partclone+zstd, Kura ({runs} runs each, interleaved)"));
    let mut checks = Vec::new();
    let mut pcl_restore = Vec::new();
    let mut kura_restore = Vec::new();
    let target = work.join("kura.restored.img");
    for run in 0..runs {
        let last = run + 1 == runs;
        let mut t_pcl = Timing::default();
        for p in &disk.parts {
            let src = work.join(format!("p{}.pcl.zst", p.number));
            let out = work.join(format!("p{}.restored.img", p.number));
            let t = partclone_restore_into(partclone(p.fs), &src, &out, p.size)?;
            add(&mut t_pcl, t);
            if last {
                checks.push(check_partclone_restore(&disk.path, &out, p, &jobs)?);
            }
            fs::remove_file(&out)?;
        }
        pcl_restore.push(t_pcl);

        kura_restore.push(kura_restore_into(&store_dir, &id, &target, disk_size)?);
        if last {
            let diffs = compare_used(&disk.path, &target, 0, &jobs, 0, disk_size)?;
            ensure!(diffs.is_empty(), "Kura's restore differs from the source in bytes {diffs:?}");
            for p in disk.parts.iter().filter(|p| p.fs == Fs::Ext4) {
                fsck_ext4(&format!("{}?offset={}", target.display(), p.start))?;
            }
            checks.push("Kura restore: used bytes of the whole disk identical; e2fsck -fn clean".into());
        }
        fs::remove_file(&target)?;
    }
    let pcl_restore = Row::new("zstd -d | partclone -r", fastest(&pcl_restore), parts_used).disk(parts_size);
    let kura_restore =
        Row::new("Kura restore (new sparse file)", fastest(&kura_restore), stats.used_bytes).disk(disk_size);

    // Chunk sizes.
    say("chunk sizes: capture, then capture again after ~1% of the ext4 files changed");
    let mut rows = Vec::new();
    for cs in CHUNK_SIZES {
        let dir = work.join(format!("store-{}k", cs / 1024));
        // The first capture into a fresh store, fastest of the runs; the second once.
        let ((first, _), t1) = best(runs, || {
            if dir.exists() {
                fs::remove_dir_all(&dir)?;
            }
            kura_capture(&disk.path, &dir, cs, level).map(|(s, id, t)| ((s, id), t))
        })?;
        let stored = dir_bytes(&dir.join("chunks"))?;
        let (second, _, t2) = kura_capture(&disk.changed_path, &dir, cs, level)?;
        rows.push(ChunkRow {
            chunk_size: cs,
            capture: Row::new(format!("{} KiB", cs / 1024), t1, first.used_bytes).disk(disk_size).stored(stored),
            chunks: first.chunks,
            second_capture: Row::new(format!("{} KiB, after the change", cs / 1024), t2, second.used_bytes)
                .stored(second.new_stored_bytes),
            second_new_bytes: second.new_stored_bytes,
            second_new_chunks: second.new_chunks,
        });
        fs::remove_dir_all(&dir)?;
    }

    Ok(Report {
        work_dir: work.display().to_string(),
        page_cache: "warm (every image read once before measuring; nothing dropped)",
        runs,
        cpus,
        kura_threads: CaptureOptions::default().threads,
        disk: info,
        capture: CaptureSection {
            speed_ratio: pcl_capture.seconds / kura_capture_row.seconds,
            stored_ratio: kura_stored as f64 / pcl_bytes.max(1) as f64,
            cat_partitions: cat_parts,
            cat_disk,
            partclone_zstd: pcl_capture,
            kura: kura_capture_row,
            kura_null_sink: kura_null,
        },
        restore: RestoreSection {
            speed_ratio: pcl_restore.seconds / kura_restore.seconds,
            partclone_zstd: pcl_restore,
            kura: kura_restore,
        },
        limits,
        chunk_sizes: ChunkSection { changed_files: disk.changed_files, changed_file_bytes: disk.changed_bytes, rows },
        checks,
    })
}

/// Checks partclone's restore of partition `p` (in `out`) against the source disk.
fn check_partclone_restore(disk: &Path, out: &Path, p: &BenchPart, jobs: &[ChunkJob]) -> Result<String> {
    let diffs = compare_used(disk, out, p.start, jobs, p.start, p.start + p.size)?;
    let end = p.start + p.size;
    let msg = if diffs.is_empty() {
        format!("partclone restore of partition {} ({}): used bytes identical", p.number, p.fs.name())
    } else if p.fs == Fs::Ntfs && diffs == [(end - 512, end)] {
        // partclone.ntfs copies the volume's clusters only, not the backup boot sector in the
        // partition's last sector.
        format!(
            "partclone restore of partition {} (ntfs): used bytes identical except the last sector \
             (the NTFS backup boot sector, which partclone.ntfs does not restore)",
            p.number
        )
    } else {
        bail!("partclone's restore of partition {} differs from the source in bytes {diffs:?}", p.number);
    };
    if p.fs == Fs::Ext4 {
        fsck_ext4(&out.display().to_string())?;
    }
    Ok(msg)
}

/// `zstd -d | <partclone> -r` of the image `src` onto a new file `out` of `size` bytes (removed
/// first if it exists), timed (synced to disk).
fn partclone_restore_into(partclone: &str, src: &Path, out: &Path, size: u64) -> Result<Timing> {
    let _ = fs::remove_file(out);
    File::create(out)?.set_len(size)?;
    let (_, t) = timed(|| {
        run_quiet(
            Command::new("bash")
                .args([
                    "-c",
                    "set -o pipefail; zstd -d -c -q \"$1\" | \"$2\" -r -s - -O \"$3\" -L /dev/null -q",
                    "bash",
                ])
                .arg(src)
                .arg(partclone)
                .arg(out),
        )?;
        sync_file(out)
    })?;
    Ok(t)
}

/// Kura's restore of snapshot `id` from the local store onto a new sparse file `target`
/// (removed first if it exists), timed (synced to disk).
fn kura_restore_into(store_dir: &Path, id: &str, target: &Path, disk_size: u64) -> Result<Timing> {
    let _ = fs::remove_file(target);
    let (_, t) = timed(|| {
        let store = LocalStore::open(store_dir)?;
        let manifest = store.load_manifest(id)?;
        let mut f = OpenOptions::new().write(true).create_new(true).open(target)?;
        f.set_len(manifest.disk_size())?;
        let opts = RestoreOptions { target_is_zeroed: true, ..Default::default() };
        restore::restore(&manifest, &store, &mut f, disk_size, &opts, &NoProgress)?;
        f.sync_all()?;
        Ok(())
    })?;
    Ok(t)
}

/// Runs `f` `runs` times and keeps the fastest run.
fn best<T>(runs: usize, mut f: impl FnMut() -> Result<(T, Timing)>) -> Result<(T, Timing)> {
    let mut best: Option<(T, Timing)> = None;
    for _ in 0..runs.max(1) {
        let (v, t) = f()?;
        if best.as_ref().is_none_or(|(_, b)| t.seconds < b.seconds) {
            best = Some((v, t));
        }
    }
    best.context("no run")
}

/// The fastest of several timings.
fn fastest(ts: &[Timing]) -> Timing {
    ts.iter().copied().min_by(|a, b| a.seconds.total_cmp(&b.seconds)).unwrap_or_default()
}

/// Captures `disk` into the store at `store_dir` (created if needed) and commits the snapshot.
fn kura_capture(disk: &Path, store_dir: &Path, chunk_size: u32, level: i32) -> Result<(CaptureStats, String, Timing)> {
    kura_capture_with(disk, store_dir, chunk_size, level, None, 0)
}

/// [`kura_capture`] as an increment of `parent`, changed chunks as patches of `piece_size`.
fn kura_capture_with(
    disk: &Path,
    store_dir: &Path,
    chunk_size: u32,
    level: i32,
    parent: Option<std::sync::Arc<kura_imaging::manifest::Manifest>>,
    piece_size: u32,
) -> Result<(CaptureStats, String, Timing)> {
    let ((stats, id), t) = timed(|| {
        let store = LocalStore::open_or_create(store_dir)?;
        let opts = CaptureOptions {
            chunk_size,
            level,
            source: disk.display().to_string(),
            parent: parent.clone(),
            piece_size,
            ..Default::default()
        };
        let (manifest, stats) = capture::capture(File::open(disk)?, &opts, &store, &NoProgress)?;
        let id = store.commit_manifest(&manifest)?;
        Ok((stats, id))
    })
    .with_context(|| format!("capturing {} with {} KiB chunks", disk.display(), chunk_size / 1024))?;
    Ok((stats, id, t))
}

/// A sink that stores nothing: isolates the read, hash and compress stages from the store.
struct NullSink;

impl ChunkSink for NullSink {
    fn missing(&self, digests: &[Digest]) -> kura_imaging::Result<Vec<bool>> {
        Ok(vec![true; digests.len()])
    }
    fn put_chunk(&self, _: &Digest, _: &[u8]) -> kura_imaging::Result<bool> {
        Ok(true)
    }
}

fn dedup_threads(cpus: usize) -> Vec<usize> {
    if cpus > 1 {
        vec![1, cpus]
    } else {
        vec![1]
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn add(total: &mut Timing, t: Timing) {
    total.seconds += t.seconds;
    total.cpu_seconds += t.cpu_seconds;
}

// ---------------------------------------------------------------------------------------------
// Timing

/// CPU seconds used so far by this process (all threads) and by its waited-for children.
fn cpu_seconds() -> Result<f64> {
    let tick = clock_ticks();
    let stat = fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14..=17.
    let ticks: f64 = f.get(11..15).unwrap_or_default().iter().filter_map(|v| v.parse::<f64>().ok()).sum();
    Ok(ticks / tick)
}

/// Clock ticks per second of the CPU times in `/proc`.
fn clock_ticks() -> f64 {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Timing)> {
    let c0 = cpu_seconds()?;
    let t0 = Instant::now();
    let v = f()?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds()? - c0;
    Ok((v, Timing { seconds, cpu_seconds }))
}

// ---------------------------------------------------------------------------------------------
// External tools

/// The partclone tool for a filesystem of the benchmark disk.
fn partclone(fs: Fs) -> &'static str {
    match fs {
        Fs::Ntfs => "partclone.ntfs",
        _ => "partclone.extfs",
    }
}

/// Runs a command with its output discarded (stderr kept for the error message).
fn run_quiet(cmd: &mut Command) -> Result<()> {
    cmd.env("PATH", search_path()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Sum of the sizes of the files under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { dir_bytes(&e.path())? } else { m.len() };
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// The chunks Kura reads, and the single-stage limits over them

/// One chunk-sized piece of a region with at least one used byte; `ranges` are the used byte
/// ranges inside it (disk offsets), read from the first to the last and zeroed in between,
/// exactly as the capture reader does.
struct ChunkJob {
    off: u64,
    len: usize,
    ranges: Vec<(u64, u64)>,
}

/// Used byte ranges of a region, relative to it (bytes past the bitmap count as used).
fn used_spans(map: &AllocationMap, size: u64) -> Vec<(u64, u64)> {
    let bs = map.block_size as u64;
    let covered = (map.bitmap.len() * bs).min(size);
    let mut v: Vec<(u64, u64)> = Vec::new();
    for (s, n) in map.bitmap.runs() {
        let (a, b) = (s * bs, ((s + n) * bs).min(covered));
        if a < b {
            v.push((a, b));
        }
    }
    if covered < size {
        match v.last_mut() {
            Some(last) if last.1 == covered => last.1 = size,
            _ => v.push((covered, size)),
        }
    }
    v
}

fn chunk_jobs(plan: &Plan, cs: u64) -> Vec<ChunkJob> {
    let mut jobs = Vec::new();
    for r in &plan.regions {
        let spans = used_spans(&r.map, r.size);
        let mut k = 0;
        for ci in 0..r.size.div_ceil(cs) {
            let (off, end) = (ci * cs, ((ci + 1) * cs).min(r.size));
            while k < spans.len() && spans[k].1 <= off {
                k += 1;
            }
            let ranges: Vec<(u64, u64)> = spans[k..]
                .iter()
                .take_while(|s| s.0 < end)
                .map(|s| (s.0.max(off) + r.start, s.1.min(end) + r.start))
                .collect();
            if !ranges.is_empty() {
                jobs.push(ChunkJob { off: r.start + off, len: (end - off) as usize, ranges });
            }
        }
    }
    jobs
}

/// Reads a job's chunk into `buf` the way the capture reader does.
fn fill(file: &File, job: &ChunkJob, buf: &mut Vec<u8>) -> Result<()> {
    buf.resize(job.len, 0);
    let (first, last) = (job.ranges[0].0, job.ranges[job.ranges.len() - 1].1);
    let rel = |x: u64| (x - job.off) as usize;
    file.read_exact_at(&mut buf[rel(first)..rel(last)], first)?;
    buf[..rel(first)].fill(0);
    buf[rel(last)..].fill(0);
    for w in job.ranges.windows(2) {
        buf[rel(w[0].1)..rel(w[1].0)].fill(0);
    }
    Ok(())
}

fn read_alone(disk: &Path, jobs: &[ChunkJob]) -> Result<Timing> {
    let file = File::open(disk)?;
    let mut buf = Vec::new();
    let (_, t) = timed(|| {
        for job in jobs {
            fill(&file, job, &mut buf)?;
        }
        Ok(())
    })?;
    Ok(t)
}

#[derive(Clone, Copy)]
enum Stage {
    Sha256,
    Zstd(i32),
}

/// Runs one stage over every job on `threads` threads. Each thread reads its chunk untimed, then
/// times the stage alone; the result's seconds are the busiest thread's stage time (what the
/// stage would take if it were all the threads did). Also returns the bytes the stage produced.
fn compute_alone(disk: &Path, jobs: &[ChunkJob], threads: usize, stage: Stage) -> Result<(u64, Timing)> {
    let file = File::open(disk)?;
    let next = AtomicUsize::new(0);
    let c0 = cpu_seconds()?;
    let per_thread: Vec<Result<(Duration, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(Duration, u64)> {
                    let mut buf = Vec::new();
                    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(MIB as usize * 4)];
                    let mut comp = match stage {
                        Stage::Zstd(level) => Some(zstd::bulk::Compressor::new(level)?),
                        Stage::Sha256 => None,
                    };
                    let (mut busy, mut produced) = (Duration::ZERO, 0u64);
                    while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        fill(&file, job, &mut buf)?;
                        let t = Instant::now();
                        match comp.as_mut() {
                            Some(c) => produced += c.compress_to_buffer(&buf, &mut out[..])? as u64,
                            None => {
                                std::hint::black_box(Digest::of(&buf));
                                produced += 32;
                            }
                        }
                        busy += t.elapsed();
                    }
                    Ok((busy, produced))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("stage thread panicked"))))
            .collect()
    });
    let cpu = cpu_seconds()? - c0;
    let mut busiest = Duration::ZERO;
    let mut produced = 0;
    for r in per_thread {
        let (busy, p) = r?;
        busiest = busiest.max(busy);
        produced += p;
    }
    Ok((produced, Timing { seconds: busiest.as_secs_f64(), cpu_seconds: cpu }))
}

/// Compares the used ranges of `jobs` within `[lo, hi)` of `a` with `b`, where `b` holds disk
/// byte `x` at `x - shift`. Returns the differing 512-byte sectors as disk byte ranges.
fn compare_used(a: &Path, b: &Path, shift: u64, jobs: &[ChunkJob], lo: u64, hi: u64) -> Result<Vec<(u64, u64)>> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut diffs: Vec<(u64, u64)> = Vec::new();
    for job in jobs.iter().filter(|j| j.off >= lo && j.off < hi) {
        for &(s, e) in &job.ranges {
            let mut pos = s;
            while pos < e {
                let n = (e - pos).min(MIB) as usize;
                fa.read_exact_at(&mut ba[..n], pos)?;
                fb.read_exact_at(&mut bb[..n], pos - shift)?;
                if ba[..n] != bb[..n] {
                    for (i, (x, y)) in ba[..n].chunks(512).zip(bb[..n].chunks(512)).enumerate() {
                        if x != y {
                            let at = pos + i as u64 * 512;
                            match diffs.last_mut() {
                                Some(last) if last.1 == at => last.1 = at + x.len() as u64,
                                _ => diffs.push((at, at + x.len() as u64)),
                            }
                        }
                    }
                }
                pos += n as u64;
            }
        }
    }
    Ok(diffs)
}

// ---------------------------------------------------------------------------------------------
// Output

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

fn print_row(r: &Row) {
    println!(
        "  {:<44} {:>8.2} {:>8.2} {:>10.1} {:>10} {:>13}",
        r.name,
        r.seconds,
        r.cpu_seconds,
        r.mib_s,
        r.disk_mib_s.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
        r.stored_bytes.map(mib).unwrap_or_else(|| "-".into()),
    );
}

fn header(title: &str, stored: &str) {
    println!();
    println!("{title}");
    println!("  {:<44} {:>8} {:>8} {:>10} {:>10} {:>13}", "", "seconds", "CPU s", "MiB/s used", "MiB/s disk", stored);
}

fn faster(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("{ratio:.2}x (Kura faster)")
    } else {
        format!("{ratio:.2}x (Kura slower)")
    }
}

fn print_report(r: &Report) {
    let d = &r.disk;
    println!(
        "Kura bench: {} MiB GPT test disk, {} used; {} CPUs, Kura uses {} worker threads",
        d.size / MIB,
        mib(d.used_bytes),
        r.cpus,
        r.kura_threads
    );
    for p in &d.partitions {
        println!(
            "  partition {}: {:4} {:>12} at {:>10}, {} used, {} files",
            p.number,
            p.fs,
            mib(p.size),
            p.start,
            mib(p.used_bytes),
            p.files
        );
    }
    println!(
        "Page cache: {}. MiB = 2^20 bytes; 'MiB/s used' counts the used bytes (Kura's allocation maps).",
        r.page_cache
    );
    println!("Every writer is fsynced inside its timing. CPU s = user + system of all threads and child processes.");
    println!("Fastest of {} runs (capture and restore contenders take turns); the second capture of the chunk-size test runs once.", r.runs);

    let c = &r.capture;
    header("CAPTURE", "stored");
    for row in [&c.cat_partitions, &c.cat_disk, &c.partclone_zstd, &c.kura, &c.kura_null_sink] {
        print_row(row);
    }
    println!("  Kura / partclone+zstd: speed {}, stored size {:.3}x", faster(c.speed_ratio), c.stored_ratio);

    let s = &r.restore;
    header("RESTORE", "");
    print_row(&s.partclone_zstd);
    print_row(&s.kura);
    println!("  Kura / partclone+zstd: speed {}", faster(s.speed_ratio));

    header("SINGLE-STAGE LIMITS (same used bytes, Kura's 1 MiB chunks; stage time only)", "output");
    for row in &r.limits {
        print_row(row);
    }

    let k = &r.chunk_sizes;
    println!();
    println!(
        "CHUNK SIZE (second capture after {} ext4 files, {} in all, were rewritten)",
        k.changed_files,
        mib(k.changed_file_bytes)
    );
    println!(
        "  {:>10} {:>8} {:>10} {:>13} {:>9} {:>10} {:>13} {:>10}",
        "chunk", "seconds", "MiB/s used", "stored", "chunks", "2nd s", "2nd new", "2nd chunks"
    );
    for row in &k.rows {
        println!(
            "  {:>10} {:>8.2} {:>10.1} {:>13} {:>9} {:>10.2} {:>13} {:>10}",
            row.capture.name,
            row.capture.seconds,
            row.capture.mib_s,
            row.capture.stored_bytes.map(mib).unwrap_or_default(),
            row.chunks,
            row.second_capture.seconds,
            mib(row.second_new_bytes),
            row.second_new_chunks
        );
    }
    println!();
    println!("Checks:");
    for c in &r.checks {
        println!("  {c}");
    }
}
