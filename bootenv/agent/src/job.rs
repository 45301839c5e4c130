//! Running the job: fetch it, pick the disk, capture or restore through the engine's protocol
//! with the imaging flows ([`flow::capture_flow`], [`flow::restore_flow`]: exactly what
//! `kura image capture/restore --server` runs), report, finish.
//!
//! A machine with several disks: a capture takes every disk (or those the job's `disks` names)
//! as one snapshot set ([`flow::capture_set_flow`]); a restore of a set maps its disks onto this
//! machine's ([`diskmap::map_disks`]: `--map` overrides, WWN/serial, position, size), logs the
//! mapping, and refuses before writing anything if a target is too small or the mapping is
//! ambiguous; disks it does not map are not opened ([`flow::restore_set_flow`]).
//!
//! A capture opens the disk read-only and ends by committing its snapshot (which completes the
//! job on the engine). A restore checks first — the snapshot's manifest matches its id, the disk
//! is large enough, every chunk is on the engine and intact — and only then opens the disk for
//! writing; after the flow, it makes the UEFI boot entry and ends with
//! `POST /jobs/{id}/finish {"ok": true}`.

use crate::cmdline::Finally;
use crate::disks::{self, Disk};
use crate::report::Reporter;
use anyhow::{bail, Context, Result};
use kura_imaging::capture::{CaptureOptions, CaptureStats};
use kura_imaging::diskmap;
use kura_imaging::diskset::{SnapshotFile, SnapshotSet};
use kura_imaging::flow::{self, RestoreObserver, RestoreStep};
use kura_imaging::progress::Progress;
use kura_imaging::target::FileTarget;
use kura_protocol::client::{Client, RemoteSource, RemoteUpload};
use kura_protocol::jobs::{Finish, Job, JobKind};
use kura_protocol::uploads::BeginUpload;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fetches the job and checks it is one the agent can run.
pub fn fetch(client: &Client, id: i64) -> Result<Job> {
    let j = client.job(id).with_context(|| format!("fetching job {id}"))?.job;
    if !j.state.is_active() {
        bail!("job {id} is {}: nothing to do", j.state);
    }
    Ok(j)
}

/// What to do after success: the kernel command line wins, then the default (power off after
/// a capture, reboot into the restored system after a restore).
pub fn after(job: &Job, cmdline: Option<Finally>) -> Finally {
    cmdline.unwrap_or(match job.kind {
        JobKind::Restore => Finally::Reboot,
        JobKind::Capture => Finally::PowerOff,
    })
}

/// The disk the job works on: the one it names, else the only one; a capture with several
/// takes the first by name, a restore refuses to guess.
pub fn choose_disk<'a>(disks: &'a [Disk], job: &Job) -> Result<&'a Disk> {
    let names = || disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(want) = &job.disk {
        let want = want.trim_start_matches("/dev/");
        return disks
            .iter()
            .find(|d| d.name == want)
            .with_context(|| format!("job names disk {want}, but this machine has: {}", names()));
    }
    match disks {
        [] => bail!("no disk found on this machine (no storage driver for its controller?)"),
        [only] => Ok(only),
        [first, ..] if job.kind == JobKind::Capture => Ok(first),
        _ => bail!("this machine has several disks ({}) and the job does not say which to restore onto", names()),
    }
}

/// The SCSI hosts under `class` (`/sys/class/scsi_host`) and their drivers, for a message:
/// `host0 (mptsas), host1 (ahci)`, or `none`.
pub fn scsi_hosts(class: &Path) -> String {
    let mut hosts: Vec<String> = std::fs::read_dir(class)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let driver = std::fs::read_to_string(e.path().join("proc_name")).unwrap_or_default();
                    format!("{name} ({})", driver.trim())
                })
                .collect()
        })
        .unwrap_or_default();
    hosts.sort();
    if hosts.is_empty() {
        "none".into()
    } else {
        hosts.join(", ")
    }
}

/// Waits until at least one disk is present and the list has not changed for two seconds (or
/// `wait` passed), calling `settle` (another driver pass) in between.
pub fn wait_for_disks(sys_block: &Path, wait: Duration, mut settle: impl FnMut()) -> Vec<Disk> {
    let deadline = Instant::now() + wait;
    let mut last = disks::list(sys_block);
    let mut stable_since = Instant::now();
    loop {
        if !last.is_empty() && stable_since.elapsed() >= Duration::from_secs(2) || Instant::now() > deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
        settle();
        let now = disks::list(sys_block);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
}

fn device(d: &Disk) -> PathBuf {
    PathBuf::from("/dev").join(&d.name)
}

/// The disks a capture takes: those `job.disks` names (comma-separated), else the one
/// `job.disk` names, else every disk.
pub fn capture_disks<'a>(disks: &'a [Disk], job: &Job) -> Result<Vec<&'a Disk>> {
    let names = || disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
    let Some(list) = job.disks.as_deref() else {
        if job.disk.is_some() {
            return Ok(vec![choose_disk(disks, job)?]);
        }
        if disks.is_empty() {
            bail!("no disk found on this machine (no storage driver for its controller?)");
        }
        return Ok(disks.iter().collect());
    };
    let mut out: Vec<&Disk> = Vec::new();
    for want in list.split(',').map(|w| w.trim().trim_start_matches("/dev/")).filter(|w| !w.is_empty()) {
        let d = disks
            .iter()
            .find(|d| d.name == want)
            .with_context(|| format!("job names disk {want}, but this machine has: {}", names()))?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    if out.is_empty() {
        bail!("the job's disk list {list:?} names no disk");
    }
    Ok(out)
}

/// The parent of a capture (`RemoteUpload::parent`): the host's latest snapshot (with `disk`,
/// that disk of its latest set), whose chunks a changed chunk may be stored as patches on. A
/// failure to fetch it is logged in the job and the capture goes on without one: the parent only
/// saves space and upload, the capture without it is complete and correct (changed chunks are
/// stored whole), and a machine left without its backup over an optimisation would be worse.
fn capture_parent(
    upload: &RemoteUpload,
    disk: Option<&str>,
    rep: &Reporter,
) -> Option<Arc<kura_imaging::manifest::Manifest>> {
    match upload.parent(disk) {
        Ok(Some(p)) => {
            rep.log(format!("parent: the host's snapshot of {} (changed chunks go as patches on it)", p.created));
            Some(Arc::new(p))
        }
        Ok(None) => None,
        Err(e) => {
            rep.log(format!("warning: capturing without a parent (changed chunks are stored whole): {e}"));
            None
        }
    }
}

/// Captures every disk of `disks` as one snapshot set (one upload session, one commit).
pub fn capture_set(client: &Client, job: &Job, disks: &[&Disk], rep: &Arc<Reporter>) -> Result<()> {
    // Read-only, every disk opened before the session begins.
    let files = disks
        .iter()
        .map(|d| File::open(device(d)).with_context(|| format!("opening {} for reading", device(d).display())))
        .collect::<Result<Vec<_>>>()?;
    let upload =
        RemoteUpload::begin(client, &BeginUpload { host: job.host.clone(), job: Some(job.id), ..Default::default() })
            .context("starting the upload on the engine")?;
    let mut sources = Vec::new();
    for (i, (d, file)) in disks.iter().zip(files).enumerate() {
        let dev = device(d);
        rep.log(format!("capturing {} as disk {} of a set of {}: {}", dev.display(), i + 1, disks.len(), d.identity()));
        let opts = CaptureOptions {
            host: Some(job.host.clone()),
            source: dev.display().to_string(),
            chunk_size: upload.started.chunk_size,
            parent: capture_parent(&upload, Some(&d.name), rep),
            ..Default::default()
        };
        sources.push((d.identity(), std::io::BufReader::with_capacity(0, file), opts));
    }
    let set = SnapshotSet {
        name: None,
        created: kura_imaging::time::format_rfc3339_nanos(std::time::SystemTime::now()),
        host: Some(job.host.clone()),
        members: Vec::new(),
    };
    let t0 = Instant::now();
    let ticker = rep.ticker();
    let before_commit = |all: &[CaptureStats]| {
        drop(ticker);
        let sum = |f: fn(&CaptureStats) -> u64| all.iter().map(f).sum::<u64>();
        rep.log(format!(
            "read {} used bytes in {:.1} s: {} chunks, {} new ({} bytes sent), {} already on the engine; \
             agent peak memory {}; committing the set of {} disks",
            sum(|s| s.used_bytes),
            t0.elapsed().as_secs_f64(),
            sum(|s| s.chunks),
            sum(|s| s.new_chunks),
            sum(|s| s.new_stored_bytes),
            sum(|s| s.reused_chunks),
            peak_memory(),
            all.len()
        ));
        rep.flush().map_err(|e| kura_imaging::Error::Store {
            message: format!("sending the last progress: {e}"),
            retryable: e.is_retryable(),
        })
    };
    let (committed, _) = flow::capture_set_flow(sources, set, &upload, rep.as_ref(), before_commit)?;
    println!("kura-agent: snapshot set {} committed; job {} done", committed.snapshot, job.id);
    Ok(())
}

pub fn capture(client: &Client, job: &Job, disk: &Disk, rep: &Arc<Reporter>) -> Result<()> {
    let dev = device(disk);
    // Read-only: a capture never opens the disk for writing.
    let file = File::open(&dev).with_context(|| format!("opening {} for reading", dev.display()))?;
    let upload =
        RemoteUpload::begin(client, &BeginUpload { host: job.host.clone(), job: Some(job.id), ..Default::default() })
            .context("starting the upload on the engine")?;
    rep.log(format!("capturing {} ({} bytes) as upload {}", dev.display(), disk.size, upload.id()));
    let opts = CaptureOptions {
        host: Some(job.host.clone()),
        source: dev.display().to_string(),
        chunk_size: upload.started.chunk_size,
        parent: capture_parent(&upload, None, rep),
        ..Default::default()
    };
    let t0 = Instant::now();
    let ticker = rep.ticker();
    let before_commit = |stats: &CaptureStats| {
        drop(ticker);
        rep.log(format!(
            "read {} used bytes in {:.1} s: {} chunks, {} new ({} bytes sent), {} already on the engine; \
             agent peak memory {}; committing",
            stats.used_bytes,
            t0.elapsed().as_secs_f64(),
            stats.chunks,
            stats.new_chunks,
            stats.new_stored_bytes,
            stats.reused_chunks,
            peak_memory()
        ));
        // The commit ends the job; the engine takes no progress after it.
        rep.flush().map_err(|e| kura_imaging::Error::Store {
            message: format!("sending the last progress: {e}"),
            retryable: e.is_retryable(),
        })
    };
    let (committed, _) =
        flow::capture_flow(std::io::BufReader::with_capacity(0, file), &opts, &upload, rep.as_ref(), before_commit)?;
    println!("kura-agent: snapshot {} committed; job {} done", committed.snapshot, job.id);
    Ok(())
}

/// The agent's restore on the console and the engine: both passes' progress, each step a line.
impl RestoreObserver for Reporter {
    fn checking(&self) -> &dyn Progress {
        self
    }

    fn writing(&self) -> &dyn Progress {
        self
    }

    fn step(&self, step: &RestoreStep<'_>) {
        self.log(step.to_string());
    }
}

/// Restores the job's snapshot: a one-disk snapshot onto the disk [`choose_disk`] picks, a set
/// onto the disks [`diskmap::map_disks`] maps it to.
pub fn restore(client: &Client, job: &Job, disks: &[Disk], rep: &Arc<Reporter>) -> Result<()> {
    let Some(snapshot) = job.snapshot.as_deref() else { bail!("restore job {} names no snapshot", job.id) };
    match client.snapshot_file(snapshot).with_context(|| format!("fetching snapshot {snapshot}"))? {
        SnapshotFile::Disk(manifest) => restore_disk(client, job, snapshot, &manifest, choose_disk(disks, job)?, rep),
        SnapshotFile::Set(set) => restore_set(client, job, snapshot, &set, disks, rep),
    }
}

/// The mapping of `set`'s disks onto `disks`, logged one line per source disk; refused (with
/// the candidates) before anything is opened.
pub fn map_set(set: &SnapshotSet, disks: &[Disk], overrides: Option<&str>) -> Result<diskmap::Mapping> {
    let sources: Vec<_> = set.members.iter().map(|m| m.disk.clone()).collect();
    let targets: Vec<_> = disks.iter().map(Disk::identity).collect();
    let overrides = overrides.map(diskmap::parse_overrides).transpose()?.unwrap_or_default();
    Ok(diskmap::map_disks(&sources, &targets, &overrides)?)
}

fn restore_set(
    client: &Client,
    job: &Job,
    snapshot: &str,
    set: &SnapshotSet,
    disks: &[Disk],
    rep: &Arc<Reporter>,
) -> Result<()> {
    let sources: Vec<_> = set.members.iter().map(|m| m.disk.clone()).collect();
    let targets: Vec<_> = disks.iter().map(Disk::identity).collect();
    rep.log(format!("snapshot {snapshot} is a set of {} disks", set.members.len()));
    let mapping = map_set(set, disks, job.disks.as_deref())
        .with_context(|| format!("mapping the disks of snapshot set {snapshot} onto this machine"))?;
    for line in mapping.describe(&sources, &targets) {
        rep.log(format!("disk map: {line}"));
    }
    let mut pairs: Vec<(usize, FileTarget)> =
        mapping.pairs.iter().map(|p| (p.source, FileTarget::existing(device(&disks[p.target])))).collect();
    let source = RemoteSource { client: client.clone() };
    let ticker = rep.ticker();
    let t0 = Instant::now();
    let stats = flow::restore_set_flow(
        snapshot,
        set,
        &mut pairs,
        &source,
        kura_imaging::capture::default_threads(),
        rep.as_ref(),
    )?;
    if crate::efi::booted_uefi() {
        let mut why_not = Vec::new();
        for p in &mapping.pairs {
            let (disk, layout) = (&disks[p.target], &set.members[p.source].manifest.layout);
            let dev = device(disk);
            let sys_block = Path::new("/sys/block").join(&disk.name);
            let made = crate::efi::recreate_boot_entry(&dev, &sys_block, layout, Path::new(crate::efi::EFIVARS))
                .with_context(|| {
                    format!("{snapshot} is restored onto {}, but its UEFI boot entry could not be made", dev.display())
                })?;
            match made {
                Ok(entry) => {
                    rep.log(format!("UEFI boot entry: {entry}"));
                    why_not.clear();
                    break;
                }
                Err(why) => why_not.push(format!("{}: {why}", disk.name)),
            }
        }
        if !why_not.is_empty() {
            rep.log(format!("UEFI boot entry: none made: {}", why_not.join("; ")));
        }
    }
    drop(ticker);
    rep.log(format!(
        "restored {snapshot}: {} bytes written onto {} disks in {:.1} s; agent peak memory {}",
        stats.iter().map(|s| s.written_bytes).sum::<u64>(),
        stats.len(),
        t0.elapsed().as_secs_f64(),
        peak_memory()
    ));
    rep.flush().context("sending the last progress")?;
    client.finish(job.id, &Finish { ok: true, error: None }).context("reporting success to the engine")?;
    println!("kura-agent: job {} done", job.id);
    Ok(())
}

fn restore_disk(
    client: &Client,
    job: &Job,
    snapshot: &str,
    manifest: &kura_imaging::manifest::Manifest,
    disk: &Disk,
    rep: &Arc<Reporter>,
) -> Result<()> {
    let dev = device(disk);
    let source = RemoteSource { client: client.clone() };
    let ticker = rep.ticker();
    let t0 = Instant::now();
    let threads = kura_imaging::capture::default_threads();
    let stats =
        flow::restore_flow(snapshot, manifest, &source, &mut FileTarget::existing(&dev), threads, rep.as_ref())?;
    if crate::efi::booted_uefi() {
        let sys_block = Path::new("/sys/block").join(&disk.name);
        let made = crate::efi::recreate_boot_entry(&dev, &sys_block, &manifest.layout, Path::new(crate::efi::EFIVARS))
            .with_context(|| {
                format!("{snapshot} is restored onto {}, but its UEFI boot entry could not be made", dev.display())
            })?;
        match made {
            Ok(entry) => rep.log(format!("UEFI boot entry: {entry}")),
            Err(why) => rep.log(format!("UEFI boot entry: none made: {why}")),
        }
    }
    drop(ticker);
    rep.log(format!(
        "restored {snapshot}: {} bytes written in {:.1} s; agent peak memory {}",
        stats.written_bytes,
        t0.elapsed().as_secs_f64(),
        peak_memory()
    ));
    rep.flush().context("sending the last progress")?;
    client.finish(job.id, &Finish { ok: true, error: None }).context("reporting success to the engine")?;
    println!("kura-agent: job {} done", job.id);
    Ok(())
}

/// The agent's peak resident memory (`VmHWM`), for the job log: bounded by the imaging
/// pipelines' buffer pools whatever the disk size.
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} MiB", kib as f64 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: &str, disk: Option<&str>) -> Job {
        Job {
            id: 1,
            kind: kind.parse().unwrap(),
            host: "web01".into(),
            disk: disk.map(String::from),
            snapshot: None,
            state: kura_protocol::jobs::JobState::Queued,
            done_bytes: 0,
            total_bytes: None,
            created: 0,
            started: None,
            finished: None,
            error: None,
            disks: None,
        }
    }

    fn disk(name: &str) -> Disk {
        Disk { name: name.into(), size: 1 << 30, ..Default::default() }
    }

    #[test]
    fn disk_choice() {
        let two = [disk("nvme0n1"), disk("sda")];
        assert_eq!(choose_disk(&two, &job("capture", None)).unwrap().name, "nvme0n1");
        assert!(choose_disk(&two, &job("restore", None)).unwrap_err().to_string().contains("several disks"));
        assert_eq!(choose_disk(&two, &job("restore", Some("/dev/sda"))).unwrap().name, "sda");
        assert!(choose_disk(&two, &job("restore", Some("sdb"))).is_err());
        assert_eq!(choose_disk(&two[..1], &job("restore", None)).unwrap().name, "nvme0n1");
        assert!(choose_disk(&[], &job("capture", None)).is_err());
    }

    #[test]
    fn a_capture_takes_every_disk_unless_narrowed() {
        let three = [disk("sda"), disk("sdb"), disk("vda")];
        let names = |v: Vec<&Disk>| v.into_iter().map(|d| d.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(capture_disks(&three, &job("capture", None)).unwrap()), ["sda", "sdb", "vda"]);
        assert_eq!(names(capture_disks(&three, &job("capture", Some("sdb"))).unwrap()), ["sdb"]);
        let narrowed = Job { disks: Some("vda, /dev/sda,vda".into()), ..job("capture", None) };
        assert_eq!(names(capture_disks(&three, &narrowed).unwrap()), ["vda", "sda"]);
        let wrong = Job { disks: Some("sdz".into()), ..job("capture", None) };
        assert!(capture_disks(&three, &wrong).unwrap_err().to_string().contains("sda, sdb, vda"));
        assert!(capture_disks(&[], &job("capture", None)).is_err());
    }

    #[test]
    fn after_defaults() {
        assert_eq!(after(&job("capture", None), None), Finally::PowerOff);
        assert_eq!(after(&job("restore", None), None), Finally::Reboot);
        assert_eq!(after(&job("restore", None), Some(Finally::Wait)), Finally::Wait);
        assert_eq!(after(&job("restore", None), Some(Finally::PowerOff)), Finally::PowerOff);
    }
}
