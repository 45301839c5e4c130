//! Running the job: fetch it, pick the disk, capture or restore through the engine's protocol
//! (`kura::remote`, exactly what `kura image capture/restore --server` does), report, finish.
//!
//! A capture opens the disk read-only and ends by committing its snapshot (which completes the
//! job on the engine). A restore checks first — the snapshot's manifest matches its id, the disk
//! is large enough, every chunk is on the engine and intact ([`restore::preflight`]) — and only
//! then opens the disk for writing; it ends with `POST /jobs/{id}/finish {"ok": true}`.

use crate::cmdline::Finally;
use crate::disks::{self, Disk};
use crate::report::Reporter;
use anyhow::{bail, Context, Result};
use kura_imaging::capture::{self, CaptureOptions};
use kura_imaging::manifest::Manifest;
use kura_imaging::restore::{self, RestoreOptions};
use kura_protocol::client::{Client, RemoteSink, RemoteSource};
use kura_protocol::jobs::{Finish, Job, JobKind};
use kura_protocol::uploads::BeginUpload;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
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

pub fn capture(client: &Client, job: &Job, disk: &Disk, rep: &Arc<Reporter>) -> Result<()> {
    let dev = device(disk);
    // Read-only: a capture never opens the disk for writing.
    let file = File::open(&dev).with_context(|| format!("opening {} for reading", dev.display()))?;
    let started = client
        .begin_upload(&BeginUpload { host: job.host.clone(), job: Some(job.id), ..Default::default() })
        .context("starting the upload on the engine")?;
    rep.log(format!("capturing {} ({} bytes) as upload {}", dev.display(), disk.size, started.upload));
    let opts = CaptureOptions {
        host: Some(job.host.clone()),
        source: dev.display().to_string(),
        chunk_size: started.chunk_size,
        ..Default::default()
    };
    let sink = RemoteSink { client: client.clone(), upload: started.upload.clone() };
    let t0 = Instant::now();
    let ticker = rep.ticker();
    let result = capture::capture(std::io::BufReader::with_capacity(0, file), &opts, &sink, rep.as_ref())
        .map_err(anyhow::Error::from)
        .and_then(|(m, stats)| Ok((m.encode()?, stats)));
    drop(ticker);
    let (bytes, stats) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = client.abort(&started.upload);
            return Err(e).with_context(|| format!("capturing {}", dev.display()));
        }
    };
    rep.log(format!(
        "read {} used bytes in {:.1} s: {} chunks, {} new ({} bytes sent), {} already on the engine; committing",
        stats.used_bytes,
        t0.elapsed().as_secs_f64(),
        stats.chunks,
        stats.new_chunks,
        stats.new_stored_bytes,
        stats.reused_chunks
    ));
    // The commit ends the job; the engine takes no progress after it.
    rep.flush().context("sending the last progress")?;
    let committed = client.commit(&started.upload, &bytes).context("committing the snapshot")?;
    println!("kura-agent: snapshot {} committed; job {} done", committed.snapshot, job.id);
    Ok(())
}

pub fn restore(client: &Client, job: &Job, disk: &Disk, rep: &Arc<Reporter>) -> Result<()> {
    let Some(snapshot) = job.snapshot.as_deref() else { bail!("restore job {} names no snapshot", job.id) };
    let dev = device(disk);
    let bytes = client.manifest(snapshot).with_context(|| format!("fetching the manifest of {snapshot}"))?;
    if Manifest::id_of(&bytes) != snapshot {
        bail!("the engine sent a manifest that does not match snapshot id {snapshot}");
    }
    let manifest = Manifest::decode(&bytes).context("decoding the manifest")?;
    let size = File::open(&dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .with_context(|| format!("sizing {}", dev.display()))?;
    let source = RemoteSource { client: client.clone() };
    let opts = RestoreOptions { threads: 8, target_is_zeroed: false };
    let ticker = rep.ticker();
    rep.log(format!(
        "preflight: snapshot {snapshot} ({} bytes) onto {} ({size} bytes): checking every chunk",
        manifest.disk_size(),
        dev.display()
    ));
    let checked = restore::preflight(&manifest, &source, size, opts.threads, rep.as_ref()).with_context(|| {
        format!("snapshot {snapshot} cannot be restored onto {}; nothing was written", dev.display())
    })?;
    rep.log(format!("preflight passed; writing {}", dev.display()));
    let mut target = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .with_context(|| format!("opening {} for writing", dev.display()))?;
    let t0 = Instant::now();
    let stats = restore::write(checked, &source, &mut target, size, &opts, rep.as_ref())
        .and_then(|st| target.sync_all().map(|_| st).map_err(|e| kura_imaging::Error::io("syncing the disk", e)))
        .with_context(|| format!("restoring {snapshot} onto {}", dev.display()))?;
    if size > manifest.disk_size()
        && kura_imaging::layout::relocate_backup_gpt(&mut target, size)
            .with_context(|| format!("moving the backup GPT to the end of {}", dev.display()))?
    {
        target.sync_all().with_context(|| format!("syncing {}", dev.display()))?;
        rep.log(format!("{} is larger than the captured disk: moved the backup GPT to its end", dev.display()));
    }
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
        "restored {snapshot}: {} bytes written in {:.1} s",
        stats.written_bytes,
        t0.elapsed().as_secs_f64()
    ));
    rep.flush().context("sending the last progress")?;
    client.finish(job.id, &Finish { ok: true, error: None }).context("reporting success to the engine")?;
    println!("kura-agent: job {} done", job.id);
    Ok(())
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
        }
    }

    fn disk(name: &str) -> Disk {
        Disk { name: name.into(), size: 1 << 30, model: None }
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
    fn after_defaults() {
        assert_eq!(after(&job("capture", None), None), Finally::PowerOff);
        assert_eq!(after(&job("restore", None), None), Finally::Reboot);
        assert_eq!(after(&job("restore", None), Some(Finally::Wait)), Finally::Wait);
        assert_eq!(after(&job("restore", None), Some(Finally::PowerOff)), Finally::PowerOff);
    }
}
