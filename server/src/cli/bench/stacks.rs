//! `kura bench --stacks`: the storage-stack allocation maps (XFS, LVM2, btrfs) against the
//! Clonezilla engine on the same volumes, in one run.
//!
//! The disk ([`kura_diskgen::stacks_disk`]: ESP, `/boot` XFS, an LVM2 PV with XFS root and home
//! LVs and swap, a btrfs volume; free space and free extents full of old junk) is captured
//! whole by Kura, and each volume on its own image by `partclone.<fs> -c | zstd -T0 -3`, as
//! Clonezilla images a RHEL disk LV by LV. Swap has no partclone back end (Clonezilla recreates
//! it with mkswap): partclone's side leaves it out, Kura keeps its header page. Then the
//! restores: Kura onto a new sparse file against
//! `zstd -d | partclone.<fs> -r` per volume. Page cache warm, contenders interleaved, the
//! fastest of `runs` counts, with the neighbour load (CPU the rest of the machine used) beside
//! each step.
//!
//! Checks after the last run: the kind Kura's plan gave every volume (XFS, LVM, btrfs — not
//! raw), and the filesystem checkers on the volumes of Kura's restore (`xfs_repair -n`,
//! `btrfs check --readonly`, `fsck.vfat -n`) and on partclone's.

use super::{
    add, dir_bytes, fastest, kura_capture, kura_restore_into, mib, print_row, run_quiet, say, Row, Timing,
    DEFAULT_CHUNK_SIZE, MIB,
};
use anyhow::{ensure, Context, Result};
use kura_diskgen::stacks_disk::{self, StacksDisk};
use kura_diskgen::tools::find_tool;
use kura_imaging::capture;
use kura_imaging::fs::FsKind;
use kura_imaging::progress::NoProgress;
use serde::Serialize;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

/// Tools this mode needs besides Kura.
pub const TOOLS: [&str; 12] = [
    "mkfs.xfs",
    "xfs_repair",
    "mkfs.btrfs",
    "btrfs",
    "lvm",
    "losetup",
    "mkfs.vfat",
    "fsck.vfat",
    "partclone.xfs",
    "partclone.btrfs",
    "partclone.vfat",
    "zstd",
];

/// The smallest disk of this mode.
pub const MIN_DISK: u64 = stacks_disk::MIN_SIZE;

#[derive(Serialize)]
pub struct StacksReport {
    work_dir: String,
    page_cache: &'static str,
    runs: usize,
    cpus: usize,
    disk_size: u64,
    volumes: Vec<VolumeInfo>,
    capture: Section,
    restore: Section,
    checks: Vec<String>,
}

#[derive(Serialize)]
struct VolumeInfo {
    name: &'static str,
    fs: &'static str,
    start: u64,
    size: u64,
    /// Bytes Kura's maps mark used in this volume.
    used_bytes: u64,
    /// Bytes of `partclone.<fs> -c | zstd -T0 -3` of it.
    partclone_zstd_bytes: u64,
}

#[derive(Serialize)]
struct Section {
    partclone_zstd: Row,
    kura: Row,
    /// partclone seconds / Kura seconds (above 1: Kura faster).
    speed_ratio: f64,
    /// Kura stored bytes / partclone+zstd bytes (capture only).
    stored_ratio: Option<f64>,
    /// CPU cores the rest of the machine kept busy during the fastest runs (Kura's, partclone's).
    neighbour_cores: (f64, f64),
}

pub fn bench(work: &Path, disk_size: u64, runs: usize, level: i32) -> Result<StacksReport> {
    for tool in TOOLS {
        ensure!(
            find_tool(tool).is_some(),
            "`{tool}` is not installed (kura bench --stacks needs xfsprogs, btrfs-progs, lvm2, dosfstools, partclone, zstd)"
        );
    }
    say(&format!("building a {} MiB RHEL-style disk (+ btrfs) in {}", disk_size / MIB, work.display()));
    let disk = stacks_disk::build(work, disk_size, &say)?;
    say("warming the page cache (every image read once)");
    run_quiet(Command::new("cat").arg(&disk.path))?;
    for v in &disk.volumes {
        run_quiet(Command::new("cat").arg(&v.image))?;
    }

    // Kura's plan: what it considers used, per volume; every volume mapped, none raw.
    let plan = capture::plan(&mut File::open(&disk.path)?, disk.size, &NoProgress).context("planning the disk")?;
    let mut checks = Vec::new();
    let kinds: Vec<String> =
        plan.regions.iter().filter_map(|r| r.partition.map(|n| format!("partition {n}: {:?}", r.map.kind))).collect();
    for (n, want) in [(1, FsKind::Fat), (2, FsKind::Xfs), (3, FsKind::Lvm), (4, FsKind::Btrfs)] {
        let got = plan.regions.iter().find(|r| r.partition == Some(n)).map(|r| r.map.kind);
        ensure!(got == Some(want), "partition {n} planned as {got:?}, not {want:?}: {kinds:?}");
        let warnings: Vec<&String> =
            plan.regions.iter().filter(|r| r.partition == Some(n)).flat_map(|r| &r.map.warnings).collect();
        ensure!(warnings.is_empty(), "partition {n}: {warnings:?}");
    }
    checks.push(format!("Kura's plan: {} (no volume raw, no warning)", kinds.join(", ")));
    let used_in = |start: u64, size: u64| -> u64 {
        plan.regions
            .iter()
            .map(|r| {
                let bs = r.map.block_size as u64;
                r.map
                    .bitmap
                    .runs()
                    .map(|(s, n)| {
                        let (a, b) = (r.start + s * bs, r.start + (s + n) * bs);
                        b.min(start + size).saturating_sub(a.max(start))
                    })
                    .sum::<u64>()
            })
            .sum()
    };
    let volumes_used: u64 = disk.volumes.iter().map(|v| used_in(v.start, v.size)).sum();
    let volumes_size: u64 = disk.volumes.iter().map(|v| v.size).sum();

    say(&format!("capture: partclone+zstd per volume, Kura whole disk ({runs} runs each, interleaved)"));
    let store_dir = work.join("store");
    let (mut pcl, mut kura) = (Vec::new(), Vec::new());
    let mut pcl_bytes = vec![0u64; disk.volumes.len()];
    let mut last = None;
    for _ in 0..runs {
        let mut t = Timing::default();
        let n0 = neighbour_start()?;
        for (i, v) in disk.volumes.iter().enumerate() {
            let out = work.join(format!("{}.pcl.zst", v.name));
            let _ = fs::remove_file(&out);
            add(&mut t, super::partclone_zstd_into(&format!("partclone.{}", v.fs), &v.image, &out, 3)?);
            pcl_bytes[i] = fs::metadata(&out)?.len();
        }
        pcl.push((t, neighbour_end(n0, t)?));
        if store_dir.exists() {
            fs::remove_dir_all(&store_dir)?;
        }
        let n0 = neighbour_start()?;
        let (stats, id, t) = kura_capture(&disk.path, &store_dir, DEFAULT_CHUNK_SIZE, level)?;
        kura.push((t, neighbour_end(n0, t)?));
        last = Some((stats, id));
    }
    let (stats, id) = last.context("no capture run")?;
    let kura_stored = dir_bytes(&store_dir.join("chunks"))?;
    let pcl_total: u64 = pcl_bytes.iter().sum();
    let (pcl_t, pcl_n) = best_of(&pcl);
    let (kura_t, kura_n) = best_of(&kura);
    let capture = Section {
        speed_ratio: pcl_t.seconds / kura_t.seconds,
        stored_ratio: Some(kura_stored as f64 / pcl_total.max(1) as f64),
        partclone_zstd: Row::new("partclone.<fs> -c | zstd -T0 -3, per volume", pcl_t, volumes_used)
            .disk(volumes_size)
            .stored(pcl_total),
        kura: Row::new("Kura capture, whole disk (local store)", kura_t, stats.used_bytes)
            .disk(disk.size)
            .stored(kura_stored),
        neighbour_cores: (kura_n, pcl_n),
    };

    say(&format!("restore: partclone+zstd per volume, Kura whole disk ({runs} runs each, interleaved)"));
    let (mut pcl_r, mut kura_r) = (Vec::new(), Vec::new());
    let target = work.join("kura.restored.img");
    for run in 0..runs {
        let final_run = run + 1 == runs;
        let mut t = Timing::default();
        let n0 = neighbour_start()?;
        for v in &disk.volumes {
            let out = work.join(format!("{}.pcl.restored.img", v.name));
            let src = work.join(format!("{}.pcl.zst", v.name));
            add(&mut t, super::partclone_restore_into(&format!("partclone.{}", v.fs), &src, &out, v.size)?);
            if final_run {
                checks.push(format!("partclone restore of {} ({}): {}", v.name, v.fs, fs_check(v.fs, &out)?));
            }
            fs::remove_file(&out)?;
        }
        pcl_r.push((t, neighbour_end(n0, t)?));
        let n0 = neighbour_start()?;
        let t = kura_restore_into(&store_dir, &id, &target, disk.size)?;
        kura_r.push((t, neighbour_end(n0, t)?));
        if final_run {
            check_kura_restore(&disk, &target, work, &mut checks)?;
        }
        fs::remove_file(&target)?;
    }
    let (pr_t, pr_n) = best_of(&pcl_r);
    let (kr_t, kr_n) = best_of(&kura_r);
    let restore = Section {
        speed_ratio: pr_t.seconds / kr_t.seconds,
        stored_ratio: None,
        partclone_zstd: Row::new("zstd -d | partclone.<fs> -r, per volume", pr_t, volumes_used).disk(volumes_size),
        kura: Row::new("Kura restore, whole disk (new sparse file)", kr_t, stats.used_bytes).disk(disk.size),
        neighbour_cores: (kr_n, pr_n),
    };
    let volumes = disk
        .volumes
        .iter()
        .zip(&pcl_bytes)
        .map(|(v, &b)| VolumeInfo {
            name: v.name,
            fs: v.fs,
            start: v.start,
            size: v.size,
            used_bytes: used_in(v.start, v.size),
            partclone_zstd_bytes: b,
        })
        .collect();
    Ok(StacksReport {
        work_dir: work.display().to_string(),
        page_cache: "warm (every image read once before measuring; nothing dropped)",
        runs,
        cpus: capture::default_threads(),
        disk_size: disk.size,
        volumes,
        capture,
        restore,
        checks,
    })
}

/// The fastest run and the neighbour load during it.
fn best_of(runs: &[(Timing, f64)]) -> (Timing, f64) {
    let t = fastest(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
    let n = runs.iter().find(|r| r.0.seconds == t.seconds).map_or(0.0, |r| r.1);
    (t, n)
}

/// Busy CPU seconds of the whole machine so far (`/proc/stat`: user + nice + system + irq +
/// softirq + steal).
fn machine_busy() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    ensure!(f.len() >= 8, "unexpected /proc/stat line {cpu:?}");
    Ok((f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / super::clock_ticks())
}

fn neighbour_start() -> Result<f64> {
    machine_busy()
}

/// Cores the rest of the machine kept busy during a step that took `t` and started at
/// `start` (machine busy time then).
fn neighbour_end(start: f64, t: Timing) -> Result<f64> {
    let busy = machine_busy()? - start;
    Ok(((busy - t.cpu_seconds) / t.seconds.max(1e-9)).max(0.0))
}

/// The filesystem's own checker on an image: `xfs_repair -n`, `btrfs check --readonly`,
/// `fsck.vfat -n`.
fn fs_check(fs: &str, image: &Path) -> Result<String> {
    let mut cmd = match fs {
        "xfs" => {
            let mut c = Command::new("xfs_repair");
            c.arg("-n");
            c
        }
        "btrfs" => {
            let mut c = Command::new("btrfs");
            c.args(["check", "--readonly"]);
            c
        }
        _ => {
            let mut c = Command::new("fsck.vfat");
            c.arg("-n");
            c
        }
    };
    run_quiet(cmd.arg(image)).map(|_| "checker clean".to_string())
}

/// Kura's restored disk: each volume cut out and checked by its filesystem's checker, and its
/// used bytes compared with the source's.
fn check_kura_restore(disk: &StacksDisk, target: &Path, work: &Path, checks: &mut Vec<String>) -> Result<()> {
    let mut src = File::open(&disk.path)?;
    let mut dst = File::open(target)?;
    for v in &disk.volumes {
        let out = work.join(format!("{}.kura.restored.img", v.name));
        {
            let mut o = File::create(&out)?;
            dst.seek(SeekFrom::Start(v.start))?;
            std::io::copy(&mut (&mut dst).take(v.size), &mut o)?;
            o.flush()?;
        }
        let result = fs_check(v.fs, &out)?;
        fs::remove_file(&out)?;
        checks.push(format!("Kura restore, {} ({}): {result}", v.name, v.fs));
    }
    // The swap LV's header page came back (the rest of swap is unused).
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    src.seek(SeekFrom::Start(disk.swap.0))?;
    src.read_exact(&mut a)?;
    dst.seek(SeekFrom::Start(disk.swap.0))?;
    dst.read_exact(&mut b)?;
    ensure!(a == b, "the swap LV's header did not come back");
    checks.push("Kura restore, swap LV: header identical".into());
    Ok(())
}

pub fn print_report(r: &StacksReport) {
    println!(
        "Kura bench --stacks: {} MiB GPT disk (ESP, /boot XFS, LVM2 PV with XFS root + home and swap, btrfs); {} CPUs",
        r.disk_size / MIB,
        r.cpus
    );
    for v in &r.volumes {
        println!(
            "  {:<6} {:<6} {:>12} at {:>11}: {} used; partclone+zstd {}",
            v.name,
            v.fs,
            mib(v.size),
            v.start,
            mib(v.used_bytes),
            mib(v.partclone_zstd_bytes)
        );
    }
    println!("Page cache: {}. Fastest of {} runs, contenders taking turns.", r.page_cache, r.runs);
    for (title, s) in [("CAPTURE", &r.capture), ("RESTORE", &r.restore)] {
        super::header(title, if s.stored_ratio.is_some() { "stored" } else { "" });
        print_row(&s.partclone_zstd);
        print_row(&s.kura);
        print!("  Kura / partclone+zstd: speed {}", super::faster(s.speed_ratio));
        if let Some(x) = s.stored_ratio {
            print!(", stored size {x:.3}x");
        }
        println!(
            "; neighbour load {:.2} / {:.2} cores (Kura / partclone runs)",
            s.neighbour_cores.0, s.neighbour_cores.1
        );
    }
    println!();
    println!("Checks:");
    for c in &r.checks {
        println!("  {c}");
    }
}
