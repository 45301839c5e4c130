//! `kura bench --engine`: the engine path (a real `kura serve` on loopback HTTPS, and the
//! `kura image capture|restore --server` clients every netboot capture runs) against the
//! offline path (capture into a local store in-process, restore from it), on the same bench
//! disk, in one run.
//!
//! Each run takes turns: offline capture (fresh store), engine capture (a fresh engine on a
//! fresh data directory, so every run stores everything), offline restore, engine restore onto
//! a new sparse file; the last run's restores are checked against the source (used bytes of the
//! whole disk, `e2fsck -fn` on ext4). The fastest run of each counts; every run is printed.
//! For each step: wall, the client's CPU and peak RSS (its own process, by GNU time), the
//! engine's CPU (`/proc/PID/stat` delta) and peak RSS (`VmHWM`, reset before the step), the
//! 1-minute load average before it and the **neighbour load** (CPU the rest of the machine used
//! during the step, as in [`super::levels`]).
//!
//! With `--concurrent N`, only the concurrency experiment runs: N clients capture N hosts'
//! disks at once into one fresh engine. The disks are copies of the bench disk in which the
//! NTFS partition's `random.bin` (incompressible) and `logs.txt` (text) are replaced by each
//! host's own (by `ntfscp`); the ext4 partition and the NTFS `system.pack` are shared by all.

use super::processes::{check_gnu_time, ClientRun, Engine};
use super::{
    chunk_jobs, compare_used, cpu_seconds, dir_bytes, disk_info, kura_capture, kura_restore_into, run_quiet, say,
    DiskInfo, DEFAULT_CHUNK_SIZE, MIB,
};
use anyhow::{ensure, Context, Result};
use kura_diskgen::bench_disk::{self, BenchDisk};
use kura_diskgen::bulk::{write_random, write_text};
use kura_diskgen::content::XorShift;
use kura_diskgen::disk::Fs;
use kura_diskgen::image::{fsck_ext4, ntfs_copy_in, patch_differences};
use kura_imaging::capture;
use kura_imaging::progress::NoProgress;
use serde::Serialize;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const GB: f64 = 1e9;

/// One measured step of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    pub name: String,
    pub seconds: f64,
    /// The client's CPU (user + system): the bench process itself for the offline path.
    pub client_cpu_seconds: f64,
    /// The engine's CPU over the step (engine path only).
    pub engine_cpu_seconds: Option<f64>,
    pub used_bytes: u64,
    /// MiB/s of used bytes.
    pub mib_s: f64,
    /// Chunk bytes in the store after a capture.
    pub stored_bytes: Option<u64>,
    /// Peak RSS of the client process (engine path only: the offline path runs in-process).
    pub client_peak_rss: Option<u64>,
    /// Peak RSS of the engine during the step (`VmHWM`, reset before it).
    pub engine_peak_rss: Option<u64>,
    /// 1-minute load average just before the step.
    pub loadavg: f64,
    /// CPU seconds the rest of the machine used during the step, and that in cores.
    pub neighbour_cpu_seconds: f64,
    pub neighbour_cores: f64,
}

#[derive(Serialize)]
pub struct Pair {
    /// Every run, in order.
    pub offline_runs: Vec<Step>,
    pub engine_runs: Vec<Step>,
    /// The fastest run of each.
    pub offline: Step,
    pub engine: Step,
    /// Engine MiB/s / offline MiB/s: 1 means the engine path is as fast.
    pub engine_offline_ratio: f64,
}

#[derive(Serialize)]
pub struct EngineReport {
    work_dir: String,
    page_cache: &'static str,
    runs: usize,
    cpus: usize,
    /// Whether the engine's peak RSS could be reset before each step (else: since it started).
    engine_peak_reset: bool,
    disk: DiskInfo,
    loadavg_start: f64,
    loadavg_end: f64,
    capture: Pair,
    restore: Pair,
    checks: Vec<String>,
}

/// One client of a concurrent run.
#[derive(Serialize, Clone)]
pub struct ClientRow {
    host: String,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss: u64,
    used_bytes: u64,
    sent_bytes: u64,
}

/// One run of N concurrent captures into a fresh engine.
#[derive(Serialize, Clone)]
pub struct ConcurrentRun {
    seconds: f64,
    /// Used bytes of all disks (what the clients read).
    used_bytes: u64,
    /// Chunk bytes the clients sent (new to the engine when asked).
    sent_bytes: u64,
    /// Chunk bytes in the engine's store afterwards.
    stored_bytes: u64,
    /// Aggregate MiB/s of used bytes.
    mib_s: f64,
    engine_cpu_seconds: f64,
    clients_cpu_seconds: f64,
    /// CPU seconds per GB (10^9) of used bytes ingested.
    engine_cpu_per_gb: f64,
    clients_cpu_per_gb: f64,
    /// Engine CPU / clients' CPU (issue #18 wants at most 0.3).
    engine_clients_ratio: f64,
    engine_peak_rss: u64,
    client_peak_rss_max: u64,
    slowest_client_seconds: f64,
    loadavg: f64,
    neighbour_cpu_seconds: f64,
    neighbour_cores: f64,
    clients: Vec<ClientRow>,
}

#[derive(Serialize)]
pub struct ConcurrentReport {
    work_dir: String,
    page_cache: &'static str,
    runs: usize,
    cpus: usize,
    clients: usize,
    /// The base disk every host's disk is a copy of.
    disk: DiskInfo,
    /// Bytes of each host's own files (NTFS random.bin and logs.txt); the rest is shared.
    own_file_bytes_per_host: u64,
    data: &'static str,
    loadavg_start: f64,
    loadavg_end: f64,
    /// Every run, in order; then the fastest.
    all_runs: Vec<ConcurrentRun>,
    best: ConcurrentRun,
}

/// Builds the bench disk for the engine modes (without the changed copy, which they do not use)
/// and warms the page cache with it.
fn build_disk(work: &Path, disk_size: u64) -> Result<(BenchDisk, capture::Plan)> {
    check_gnu_time()?;
    say(&format!("building a {} MiB test disk in {}", disk_size / MIB, work.display()));
    let disk = bench_disk::build(work, disk_size, &say)?;
    fs::remove_file(&disk.changed_path)?;
    let plan = {
        let mut f = File::open(&disk.path)?;
        capture::plan(&mut f, disk_size, &NoProgress).context("planning the test disk")?
    };
    Ok((disk, plan))
}

/// The machine's load around a step: load average before, and CPU the rest of the machine used
/// (machine busy time minus this process's and its reaped children's, minus the engine's).
struct Watch {
    loadavg: f64,
    busy0: f64,
    own0: f64,
    engine0: f64,
    t0: Instant,
}

impl Watch {
    fn start(engine: Option<&Engine>) -> Result<Watch> {
        Ok(Watch {
            loadavg: super::levels::loadavg()?,
            busy0: super::levels::machine_busy_seconds()?,
            own0: cpu_seconds()?,
            engine0: engine.map(|e| e.cpu_seconds()).transpose()?.unwrap_or(0.0),
            t0: Instant::now(),
        })
    }

    /// (wall seconds, own CPU incl. reaped children, engine CPU, neighbour CPU seconds).
    fn stop(&self, engine: Option<&Engine>) -> Result<(f64, f64, f64, f64)> {
        let seconds = self.t0.elapsed().as_secs_f64();
        let own = cpu_seconds()? - self.own0;
        let eng = engine.map(|e| e.cpu_seconds()).transpose()?.unwrap_or(0.0) - self.engine0;
        let busy = super::levels::machine_busy_seconds()? - self.busy0;
        Ok((seconds, own, eng, (busy - own - eng).max(0.0)))
    }
}

fn step(name: &str, w: &Watch, measured: (f64, f64, f64, f64), used: u64) -> Step {
    let (seconds, _, _, neighbour) = measured;
    Step {
        name: name.into(),
        seconds,
        client_cpu_seconds: measured.1,
        used_bytes: used,
        mib_s: super::rate(used, seconds),
        loadavg: w.loadavg,
        neighbour_cpu_seconds: neighbour,
        neighbour_cores: if seconds > 0.0 { neighbour / seconds } else { 0.0 },
        ..Default::default()
    }
}

fn fastest(steps: &[Step]) -> Step {
    steps.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds)).cloned().unwrap_or_default()
}

fn pair(offline_runs: Vec<Step>, engine_runs: Vec<Step>) -> Pair {
    let (offline, engine) = (fastest(&offline_runs), fastest(&engine_runs));
    let engine_offline_ratio = if offline.mib_s > 0.0 { engine.mib_s / offline.mib_s } else { 0.0 };
    Pair { offline_runs, engine_runs, offline, engine, engine_offline_ratio }
}

/// An engine-path client step: the client's own CPU and RSS (GNU time), the engine's CPU and
/// peak RSS over the step.
fn client_step(
    name: &str,
    engine: &Engine,
    args: &[&OsStr],
    used: impl Fn(&ClientRun) -> u64,
) -> Result<(Step, ClientRun)> {
    engine.reset_peak_rss();
    let w = Watch::start(Some(engine))?;
    let run = engine.spawn_client(args)?.finish(engine)?;
    let measured = w.stop(Some(engine))?;
    let mut s = step(name, &w, measured, used(&run));
    // The wall time is the bench's (process start to exit), the client's CPU its own.
    s.client_cpu_seconds = run.cpu_seconds;
    s.client_peak_rss = Some(run.peak_rss);
    s.engine_cpu_seconds = Some(measured.2);
    s.engine_peak_rss = Some(engine.peak_rss()?);
    Ok((s, run))
}

pub fn bench(work: &Path, disk_size: u64, runs: usize, level: i32) -> Result<EngineReport> {
    let (disk, plan) = build_disk(work, disk_size)?;
    // Only the whole disk is measured here: the partition images go, to leave room.
    for p in &disk.parts {
        fs::remove_file(&p.image)?;
    }
    let cpus = capture::default_threads();
    let jobs = chunk_jobs(&plan, DEFAULT_CHUNK_SIZE as u64);
    let (info, _, _) = disk_info(&disk, &plan, disk_size);
    say("warming the page cache (the disk read once)");
    run_quiet(Command::new("cat").arg(&disk.path))?;

    let loadavg_start = super::levels::loadavg()?;
    let store_dir = work.join("store");
    let offline_target = work.join("offline.restored.img");
    let engine_target = work.join("engine.restored.img");
    let (mut cap_off, mut cap_eng, mut res_off, mut res_eng) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut checks = Vec::new();
    let mut peak_reset = true;
    for run in 0..runs {
        let last = run + 1 == runs;
        say(&format!("run {}/{runs}: offline capture, engine capture, offline restore, engine restore", run + 1));
        if store_dir.exists() {
            fs::remove_dir_all(&store_dir)?;
        }
        let w = Watch::start(None)?;
        let (stats, id, _) = kura_capture(&disk.path, &store_dir, DEFAULT_CHUNK_SIZE, level)?;
        let mut s = step("offline capture (in-process, local store)", &w, w.stop(None)?, stats.used_bytes);
        s.stored_bytes = Some(dir_bytes(&store_dir.join("chunks"))?);
        cap_off.push(s);

        // A fresh engine each run, so that its capture stores everything, as the offline one.
        let data = work.join(format!("engine-{run}"));
        let engine = Engine::start(&data, &work.join(format!("engine-{run}.log")))?;
        peak_reset &= engine.reset_peak_rss();
        let host = format!("bench-{run}");
        let args: [&OsStr; 5] =
            ["image".as_ref(), "capture".as_ref(), disk.path.as_os_str(), "--host".as_ref(), host.as_ref()];
        let (mut s, cap) = client_step("engine capture (kura image capture --server)", &engine, &args, |r| {
            r.json["used_bytes"].as_u64().unwrap_or(0)
        })?;
        s.stored_bytes = Some(dir_bytes(&data.join("store").join("chunks"))?);
        cap_eng.push(s);
        let snapshot = cap.json["snapshot"].as_str().context("the capture printed no snapshot id")?.to_string();

        // The idle engine's CPU is not the neighbours'.
        let w = Watch::start(Some(&engine))?;
        kura_restore_into(&store_dir, &id, &offline_target, disk_size)?;
        let measured = w.stop(Some(&engine))?;
        res_off.push(step("offline restore (local store, new sparse file)", &w, measured, stats.used_bytes));
        if last {
            checks.push(check_restore(&disk, &jobs, disk_size, "offline", &offline_target)?);
        }
        // Removed before the engine restore: one restored disk on the file system at a time.
        fs::remove_file(&offline_target)?;

        let _ = fs::remove_file(&engine_target);
        let args: [&OsStr; 4] = ["image".as_ref(), "restore".as_ref(), snapshot.as_ref(), engine_target.as_os_str()];
        let (s, _) = client_step("engine restore (kura image restore --server)", &engine, &args, |_| stats.used_bytes)?;
        res_eng.push(s);
        engine.stop()?;

        if last {
            checks.push(check_restore(&disk, &jobs, disk_size, "engine", &engine_target)?);
        }
        fs::remove_file(&engine_target)?;
        fs::remove_dir_all(&data)?;
    }
    let loadavg_end = super::levels::loadavg()?;
    Ok(EngineReport {
        work_dir: work.display().to_string(),
        page_cache: "warm (the disk read once before measuring; nothing dropped)",
        runs,
        cpus,
        engine_peak_reset: peak_reset,
        disk: info,
        loadavg_start,
        loadavg_end,
        capture: pair(cap_off, cap_eng),
        restore: pair(res_off, res_eng),
        checks,
    })
}

/// Checks a restored disk against the source (outside the timings): used bytes of the whole disk,
/// `e2fsck -fn` on the ext4 partition.
fn check_restore(
    disk: &BenchDisk,
    jobs: &[super::ChunkJob],
    disk_size: u64,
    what: &str,
    target: &Path,
) -> Result<String> {
    let diffs = compare_used(&disk.path, target, 0, jobs, 0, disk_size)?;
    ensure!(diffs.is_empty(), "the {what} restore differs from the source in bytes {diffs:?}");
    for p in disk.parts.iter().filter(|p| p.fs == Fs::Ext4) {
        fsck_ext4(&format!("{}?offset={}", target.display(), p.start))?;
    }
    Ok(format!("{what} restore: used bytes of the whole disk identical; e2fsck -fn clean"))
}

/// Makes host `i`'s disk: a copy of the bench disk whose NTFS `random.bin` and `logs.txt` are
/// replaced by the host's own (same sizes as the bench disk's). Returns its path and the bytes
/// of its own files.
fn host_disk(work: &Path, disk: &BenchDisk, i: usize) -> Result<(std::path::PathBuf, u64)> {
    let ntfs = disk.parts.iter().find(|p| p.fs == Fs::Ntfs).context("the bench disk has no NTFS partition")?;
    let path = work.join(format!("host{i}.img"));
    let part = work.join(format!("host{i}.p{}.img", ntfs.number));
    run_quiet(Command::new("cp").arg("--sparse=always").arg(&disk.path).arg(&path))?;
    run_quiet(Command::new("cp").arg("--sparse=always").arg(&ntfs.image).arg(&part))?;
    // As the bench disk's: 30 % each of 46 % of the partition.
    let each = ntfs.size * 46 / 100 * 3 / 10;
    let mut rng = XorShift::new(0x686f_7374 + i as u64);
    let src = work.join(format!("host{i}-src"));
    fs::create_dir_all(&src)?;
    write_random(&src.join("random.bin"), each, &mut rng)?;
    write_text(&src.join("logs.txt"), each, &mut rng)?;
    let own = fs::metadata(src.join("random.bin"))?.len() + fs::metadata(src.join("logs.txt"))?.len();
    for name in ["random.bin", "logs.txt"] {
        ntfs_copy_in(&part, &src.join(name), name)?;
    }
    let f = OpenOptions::new().write(true).open(&path)?;
    patch_differences(&ntfs.image, &part, &f, ntfs.start)?;
    f.sync_all()?;
    fs::remove_file(&part)?;
    fs::remove_dir_all(&src)?;
    Ok((path, own))
}

pub fn bench_concurrent(work: &Path, disk_size: u64, runs: usize, clients: usize) -> Result<ConcurrentReport> {
    ensure!(clients >= 1, "--concurrent needs at least one client");
    let (disk, plan) = build_disk(work, disk_size)?;
    let cpus = capture::default_threads();
    let (info, _, _) = disk_info(&disk, &plan, disk_size);
    say(&format!("making {clients} hosts' disks (own NTFS random.bin and logs.txt each)"));
    let mut hosts = Vec::new();
    let mut own = 0;
    for i in 0..clients {
        let (p, o) = host_disk(work, &disk, i)?;
        own = o;
        hosts.push(p);
    }
    for p in disk.parts.iter().map(|p| &p.image).chain([&disk.path]) {
        fs::remove_file(p)?;
    }
    say("warming the page cache (every host's disk read once)");
    for p in &hosts {
        run_quiet(Command::new("cat").arg(p))?;
    }

    let loadavg_start = super::levels::loadavg()?;
    let mut all_runs = Vec::new();
    for run in 0..runs {
        say(&format!("run {}/{runs}: {clients} concurrent captures into a fresh engine", run + 1));
        let data = work.join(format!("engine-{run}"));
        let engine = Engine::start(&data, &work.join(format!("engine-{run}.log")))?;
        engine.reset_peak_rss();
        let w = Watch::start(Some(&engine))?;
        let names: Vec<String> = (0..clients).map(|i| format!("host{i}")).collect();
        let children = hosts
            .iter()
            .zip(&names)
            .map(|(p, h)| {
                let args: [&OsStr; 5] =
                    ["image".as_ref(), "capture".as_ref(), p.as_os_str(), "--host".as_ref(), h.as_ref()];
                engine.spawn_client(&args)
            })
            .collect::<Result<Vec<_>>>()?;
        let finished = children.into_iter().map(|c| c.finish(&engine)).collect::<Result<Vec<_>>>()?;
        let (seconds, _, engine_cpu, neighbour) = w.stop(Some(&engine))?;
        let rows: Vec<ClientRow> = finished
            .iter()
            .zip(&names)
            .map(|(r, h)| ClientRow {
                host: h.clone(),
                seconds: r.seconds,
                cpu_seconds: r.cpu_seconds,
                peak_rss: r.peak_rss,
                used_bytes: r.json["used_bytes"].as_u64().unwrap_or(0),
                sent_bytes: r.json["new_stored_bytes"].as_u64().unwrap_or(0),
            })
            .collect();
        let used: u64 = rows.iter().map(|r| r.used_bytes).sum();
        let clients_cpu: f64 = rows.iter().map(|r| r.cpu_seconds).sum();
        let gb = used as f64 / GB;
        all_runs.push(ConcurrentRun {
            seconds,
            used_bytes: used,
            sent_bytes: rows.iter().map(|r| r.sent_bytes).sum(),
            stored_bytes: dir_bytes(&data.join("store").join("chunks"))?,
            mib_s: super::rate(used, seconds),
            engine_cpu_seconds: engine_cpu,
            clients_cpu_seconds: clients_cpu,
            engine_cpu_per_gb: engine_cpu / gb,
            clients_cpu_per_gb: clients_cpu / gb,
            engine_clients_ratio: if clients_cpu > 0.0 { engine_cpu / clients_cpu } else { 0.0 },
            engine_peak_rss: engine.peak_rss()?,
            client_peak_rss_max: rows.iter().map(|r| r.peak_rss).max().unwrap_or(0),
            slowest_client_seconds: rows.iter().map(|r| r.seconds).fold(0.0, f64::max),
            loadavg: w.loadavg,
            neighbour_cpu_seconds: neighbour,
            neighbour_cores: if seconds > 0.0 { neighbour / seconds } else { 0.0 },
            clients: rows,
        });
        engine.stop()?;
        fs::remove_dir_all(&data)?;
    }
    let loadavg_end = super::levels::loadavg()?;
    let best = all_runs.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds)).cloned().context("no run")?;
    Ok(ConcurrentReport {
        work_dir: work.display().to_string(),
        page_cache: "warm (every host's disk read once before measuring; nothing dropped)",
        runs,
        cpus,
        clients,
        disk: info,
        own_file_bytes_per_host: own,
        data: "copies of the bench disk; each host's NTFS random.bin (incompressible) and logs.txt (text) are its \
               own, the ext4 partition and NTFS system.pack are shared by all hosts",
        loadavg_start,
        loadavg_end,
        all_runs,
        best,
    })
}

// ---------------------------------------------------------------------------------------------
// Output

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB as f64)
}

fn opt_mib(v: Option<u64>) -> String {
    v.map(mib).unwrap_or_else(|| "-".into())
}

fn print_steps_header() {
    println!(
        "  {:<46} {:>7} {:>9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>5} {:>7}",
        "", "seconds", "MiB/s", "cli CPU", "eng CPU", "stored", "cli RSS", "eng RSS", "load", "others"
    );
}

fn print_step(s: &Step) {
    println!(
        "  {:<46} {:>7.2} {:>9.1} {:>7.2} {:>7} {:>9} {:>9} {:>9} {:>5.2} {:>7.2}",
        s.name,
        s.seconds,
        s.mib_s,
        s.client_cpu_seconds,
        s.engine_cpu_seconds.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
        opt_mib(s.stored_bytes),
        opt_mib(s.client_peak_rss),
        opt_mib(s.engine_peak_rss),
        s.loadavg,
        s.neighbour_cores,
    );
}

fn print_pair(title: &str, p: &Pair) {
    println!();
    println!("{title}");
    print_steps_header();
    for (i, (o, e)) in p.offline_runs.iter().zip(&p.engine_runs).enumerate() {
        println!("  run {}", i + 1);
        print_step(o);
        print_step(e);
    }
    println!("  fastest");
    print_step(&p.offline);
    print_step(&p.engine);
    println!("  engine / offline throughput: {:.2}x", p.engine_offline_ratio);
}

pub fn print_report(r: &EngineReport) {
    let d = &r.disk;
    println!(
        "Kura bench, engine path: {} MiB GPT test disk, {} MiB used; {} CPUs",
        d.size / MIB,
        mib(d.used_bytes),
        r.cpus
    );
    println!("Page cache: {}. Fastest of {} runs, steps taking turns; every run shown.", r.page_cache, r.runs);
    println!(
        "Load average (1 min): {:.2} at the start, {:.2} at the end. MiB/s = used MiB per wall second. \
         cli CPU = the client's user+system s (offline: the bench process); eng CPU = kura serve's over the step.",
        r.loadavg_start, r.loadavg_end
    );
    println!(
        "stored/RSS in MiB: peak RSS of the client (GNU time) and of the engine (VmHWM{}). \
         load = 1-min load average before the step; others = cores the rest of the machine used during it.",
        if r.engine_peak_reset { ", reset before each step" } else { " since it started" }
    );
    print_pair("CAPTURE", &r.capture);
    print_pair("RESTORE", &r.restore);
    println!();
    println!("Checks:");
    for c in &r.checks {
        println!("  {c}");
    }
}

fn print_concurrent_run(name: &str, r: &ConcurrentRun) {
    println!(
        "  {:<8} {:>7.2} {:>9.3} {:>9.3} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>8} {:>8} {:>5.2} {:>6.2}",
        name,
        r.seconds,
        r.used_bytes as f64 / GB,
        r.sent_bytes as f64 / GB,
        r.mib_s,
        r.engine_cpu_seconds,
        r.clients_cpu_seconds,
        r.engine_cpu_per_gb,
        r.clients_cpu_per_gb,
        r.engine_clients_ratio,
        mib(r.engine_peak_rss),
        mib(r.client_peak_rss_max),
        r.loadavg,
        r.neighbour_cores,
    );
}

pub fn print_concurrent(r: &ConcurrentReport) {
    let d = &r.disk;
    println!(
        "Kura bench, {} concurrent captures into one engine: {} disks of {} MiB, {} MiB used each; {} CPUs",
        r.clients,
        r.clients,
        d.size / MIB,
        mib(d.used_bytes),
        r.cpus
    );
    println!("Disks: {}; {} MiB of own files per host.", r.data, mib(r.own_file_bytes_per_host));
    println!("Page cache: {}. A fresh engine each run; fastest of {} runs.", r.page_cache, r.runs);
    println!("Load average (1 min): {:.2} at the start, {:.2} at the end.", r.loadavg_start, r.loadavg_end);
    println!("GB = 10^9 bytes of used data read by the clients; RSS in MiB (engine VmHWM, clients' max by GNU time).");
    println!();
    println!(
        "  {:<8} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>5} {:>6}",
        "run",
        "wall s",
        "used GB",
        "sent GB",
        "agg MiB/s",
        "eng CPU",
        "cli CPU",
        "eng s/GB",
        "cli s/GB",
        "eng/cli",
        "eng RSS",
        "cli RSS",
        "load",
        "others"
    );
    for (i, run) in r.all_runs.iter().enumerate() {
        print_concurrent_run(&format!("{}", i + 1), run);
    }
    print_concurrent_run("fastest", &r.best);
    println!(
        "  engine CPU / clients' CPU {:.2} (issue #18 wants at most 0.3); slowest client {:.2} s; stored {} MiB",
        r.best.engine_clients_ratio,
        r.best.slowest_client_seconds,
        mib(r.best.stored_bytes)
    );
}
