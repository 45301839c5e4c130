//! CLI commands that talk to an engine (`--server URL`), and `kura admin` on its data directory.

use super::ServerArgs;
use crate::progress_bar::{Bar, RestoreBar, Unit};
use anyhow::{bail, Context, Result};
use kura_imaging::capture::CaptureOptions;
use kura_imaging::target::FileTarget;
use kura_imaging::{fit, flow};
use kura_protocol::client::{Client, Endpoint, RemoteSource, RemoteUpload};
use kura_protocol::routes;
use kura_protocol::uploads::BeginUpload;
use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

pub fn client(s: &ServerArgs) -> Result<Client> {
    let Some(url) = &s.server else { bail!("no engine given: use --server URL (or KURA_SERVER), or --store DIR") };
    let Some(token) = &s.token else { bail!("no API token: use --token (or KURA_TOKEN)") };
    Ok(Client::new(&Endpoint {
        url: url.clone(),
        token: token.clone(),
        fingerprint: s.fingerprint.clone(),
        mac: None,
        timeout: None,
    })?)
}

/// The parent of a capture through the engine (`RemoteUpload::parent`): the host's latest
/// snapshot (with `disk`, that disk of its latest set), whose chunks a changed chunk may be
/// stored as patches on. A failure to fetch it is a warning, not a failed capture: the parent
/// only saves space and upload, and without it the capture is complete and correct (changed
/// chunks are stored whole), whereas a backup refused over an optimisation would be worse.
fn capture_parent(upload: &RemoteUpload, disk: Option<&str>) -> Option<Arc<kura_imaging::manifest::Manifest>> {
    match upload.parent(disk) {
        Ok(p) => p.map(Arc::new),
        Err(e) => {
            tracing::warn!("capturing without a parent (changed chunks are stored whole): {e}");
            None
        }
    }
}

fn bars(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// The start of `kura image capture --server`: the host (given, or the job's), the job started
/// (a progress report starts a queued job; its commit needs it running, and its log names
/// `sources`), and the upload session begun.
fn begin_capture(
    client: &Client,
    host: Option<String>,
    job: Option<i64>,
    name: &Option<String>,
    sources: &str,
) -> Result<(String, RemoteUpload)> {
    let host = match (host, job) {
        (Some(h), _) => h,
        (None, Some(j)) => client.job(j).with_context(|| format!("reading job {j}"))?.job.host,
        (None, None) => bail!("capturing to an engine needs --host NAME"),
    };
    if let Some(j) = job {
        let log = vec![format!("captured by `kura image capture` from {sources}")];
        client
            .progress(j, &kura_protocol::jobs::Progress { done: 0, total: None, log })
            .with_context(|| format!("starting job {j}"))?;
    }
    let upload =
        RemoteUpload::begin(client, &BeginUpload { host: host.clone(), name: name.clone(), job, ..Default::default() })
            .context("starting the upload")?;
    Ok((host, upload))
}

pub fn capture(
    source: &Path,
    s: &ServerArgs,
    name: Option<String>,
    host: Option<String>,
    threads: Option<usize>,
    job: Option<i64>,
    full: bool,
) -> Result<ExitCode> {
    let file = File::open(source).with_context(|| format!("opening {}", source.display()))?;
    let client = client(s)?;
    let (host, upload) = begin_capture(&client, host, job, &name, &source.display().to_string())?;
    let mut opts = CaptureOptions {
        name,
        host: Some(host.clone()),
        source: source.display().to_string(),
        chunk_size: upload.started.chunk_size,
        parent: if full { None } else { capture_parent(&upload, None) },
        ..Default::default()
    };
    if let Some(t) = threads {
        opts.threads = t;
    }
    let bar = Bar::new("capture", Unit::Bytes, bars(s.json));
    let t0 = Instant::now();
    let result = flow::capture_flow(std::io::BufReader::with_capacity(0, file), &opts, &upload, &bar, |_| Ok(()));
    bar.finish();
    let (committed, stats) = result?;
    let seconds = t0.elapsed().as_secs_f64();
    if s.json {
        let mut v = serde_json::to_value(&stats)?;
        v["snapshot"] = committed.snapshot.clone().into();
        v["seconds"] = seconds.into();
        v["host"] = host.into();
        print_json(&v)?;
    } else {
        eprintln!(
            "captured {} for host {host}: {} used, {} chunks sent ({} bytes), {:.1} s",
            source.display(),
            indicatif::BinaryBytes(stats.used_bytes),
            stats.new_chunks,
            stats.new_stored_bytes,
            seconds
        );
        println!("{}", committed.snapshot);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura image capture --server URL --host H SRC1 SRC2 ...`: several disks of one host (block
/// devices or image files, each only read) captured as one snapshot set, committed whole (as
/// the agent captures a machine's disks). Each disk's identity is its file name and size (an
/// image file has no model, serial or WWN; a restore maps it by position and size).
pub fn capture_set(
    sources: &[std::path::PathBuf],
    s: &ServerArgs,
    name: Option<String>,
    host: Option<String>,
    threads: Option<usize>,
    job: Option<i64>,
    full: bool,
) -> Result<ExitCode> {
    let files = sources
        .iter()
        .map(|p| File::open(p).with_context(|| format!("opening {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let client = client(s)?;
    let shown: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    let (host, upload) = begin_capture(&client, host, job, &name, &shown.join(", "))?;
    let mut disks = Vec::new();
    for (path, file) in sources.iter().zip(files) {
        // A block device's size, too, is where its end seeks to.
        let size = (|| {
            use std::io::{Seek, SeekFrom};
            let mut f = &file;
            let end = f.seek(SeekFrom::End(0))?;
            f.seek(SeekFrom::Start(0))?;
            std::io::Result::Ok(end)
        })()
        .with_context(|| format!("reading the size of {}", path.display()))?;
        let identity = kura_imaging::diskmap::DiskIdentity {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            size,
            ..Default::default()
        };
        let mut opts = CaptureOptions {
            host: Some(host.clone()),
            source: path.display().to_string(),
            chunk_size: upload.started.chunk_size,
            parent: if full { None } else { capture_parent(&upload, Some(&identity.name)) },
            ..Default::default()
        };
        if let Some(t) = threads {
            opts.threads = t;
        }
        disks.push((identity, std::io::BufReader::with_capacity(0, file), opts));
    }
    let set = kura_imaging::diskset::SnapshotSet {
        name,
        created: kura_imaging::time::format_rfc3339_nanos(std::time::SystemTime::now()),
        host: Some(host.clone()),
        members: Vec::new(),
    };
    let bar = Bar::new("capture", Unit::Bytes, bars(s.json));
    let t0 = Instant::now();
    let result = flow::capture_set_flow(disks, set, &upload, &bar, |_| Ok(()));
    bar.finish();
    let (committed, stats) = result?;
    let seconds = t0.elapsed().as_secs_f64();
    if s.json {
        let v = serde_json::json!({
            "snapshot": committed.snapshot, "seconds": seconds, "host": host, "disks": stats,
        });
        print_json(&v)?;
    } else {
        eprintln!(
            "captured {} disks for host {host} as one snapshot set: {} used, {} chunks sent, {:.1} s",
            sources.len(),
            indicatif::BinaryBytes(stats.iter().map(|s| s.used_bytes).sum()),
            stats.iter().map(|s| s.new_chunks).sum::<u64>(),
            seconds
        );
        println!("{}", committed.snapshot);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore(snapshot: &str, target_path: &Path, s: &ServerArgs, threads: Option<usize>) -> Result<ExitCode> {
    let client = client(s)?;
    let manifest = client.manifest(snapshot)?;
    let source = RemoteSource { client };
    let t0 = Instant::now();
    let bar = RestoreBar::new(bars(s.json));
    let mut target = FileTarget::existing_or_new(target_path);
    let result = flow::restore_flow(
        snapshot,
        &manifest,
        &source,
        &mut target,
        threads.unwrap_or_else(kura_imaging::capture::default_threads),
        &bar,
    );
    bar.finish();
    let stats = match result {
        Err(e @ flow::RestoreError::Refused { source: kura_imaging::Error::TargetTooSmall { actual, .. }, .. }) => {
            let hint = format!(
                "the target is smaller than the snapshot's disk; if the data fits, make a snapshot that fits it with: kura image fit {snapshot} --size {actual}"
            );
            return Err(anyhow::Error::new(e).context(hint));
        }
        other => other?,
    };
    if s.json {
        let mut v = serde_json::to_value(&stats)?;
        v["snapshot"] = snapshot.into();
        v["seconds"] = t0.elapsed().as_secs_f64().into();
        print_json(&v)?;
    } else {
        eprintln!(
            "restored {snapshot} onto {}: {} written",
            target_path.display(),
            indicatif::BinaryBytes(stats.written_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura image fit` against an engine: the snapshot is restored from the engine into a scratch
/// file, fitted there ([`kura_imaging::fit`]), and uploaded as a new snapshot of the same host.
/// Every refusal comes before the upload begins.
pub fn fit(
    snapshot: &str,
    size: u64,
    s: &ServerArgs,
    name: Option<String>,
    scratch: Option<&Path>,
    threads: Option<usize>,
) -> Result<ExitCode> {
    let client = client(s)?;
    let manifest = client.manifest(snapshot)?;
    let refused = || format!("snapshot {snapshot} cannot be fitted to {size} bytes; nothing was written");
    let plan = fit::plan(&manifest, size).with_context(refused)?;
    let Some(host) = manifest.host.clone() else { bail!("snapshot {snapshot} names no host to upload its fit for") };
    let scratch_root = scratch.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("kura-fit-")
        .tempdir_in(&scratch_root)
        .with_context(|| format!("creating a scratch directory in {}", scratch_root.display()))?;
    let t0 = Instant::now();
    let bar = RestoreBar::new(bars(s.json));
    let source = RemoteSource { client: client.clone() };
    let fitted = fit::fit(
        snapshot,
        &manifest,
        &source,
        &plan,
        dir.path(),
        threads.unwrap_or_else(kura_imaging::capture::default_threads),
        &bar,
    );
    bar.finish();
    let image = fitted.with_context(refused)?;
    let file = File::open(&image).with_context(|| format!("opening {}", image.display()))?;
    let name = name.unwrap_or_else(|| {
        format!("{} fit to {}", manifest.name.as_deref().unwrap_or(snapshot), indicatif::BinaryBytes(size))
    });
    let upload = RemoteUpload::begin(
        &client,
        &BeginUpload { host: host.clone(), name: Some(name.clone()), ..Default::default() },
    )
    .context("starting the upload")?;
    let mut opts = CaptureOptions {
        name: Some(name),
        host: Some(host),
        source: format!("kura image fit {snapshot} --size {size}"),
        chunk_size: upload.started.chunk_size,
        // The host's latest snapshot: the regions a fit leaves in place (same start and size)
        // are compared with it; the others find no parent region.
        parent: capture_parent(&upload, None),
        ..Default::default()
    };
    if let Some(t) = threads {
        opts.threads = t;
    }
    let bar = Bar::new("capture", Unit::Bytes, bars(s.json));
    let result = flow::capture_flow(std::io::BufReader::with_capacity(0, file), &opts, &upload, &bar, |_| Ok(()));
    bar.finish();
    let (committed, _) = result?;
    if s.json {
        print_json(&serde_json::json!({
            "snapshot": committed.snapshot, "source_snapshot": snapshot, "size": size,
            "partition": plan.partition, "old_partition_size": plan.old_size,
            "new_partition_size": plan.new_size, "seconds": t0.elapsed().as_secs_f64(),
        }))?;
    } else {
        println!("{}", committed.snapshot);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn snapshots(host: Option<&str>, s: &ServerArgs) -> Result<ExitCode> {
    let c = client(s)?;
    let path = routes::snapshots(host);
    let list: Vec<serde_json::Value> = c.get_json(&path)?;
    if s.json {
        print_json(&list)?;
    } else {
        println!(
            "{:16}  {:16}  {:10}  {:11}  {:9}  {:6}  {:>12}  {:>12}  NAME",
            "ID", "HOST", "KIND", "CONFIRMED", "BOOT TEST", "COPIES", "USED", "NEW"
        );
        for v in list {
            println!(
                "{:16}  {:16}  {:10}  {:11}  {:9}  {:6}  {:>12}  {:>12}  {}",
                v["id"].as_str().unwrap_or(""),
                v["host"].as_str().unwrap_or(""),
                v["kind"].as_str().unwrap_or(""),
                if v["confirmed"] == false { "UNCONFIRMED" } else { "yes" },
                match v["boot_test_passed"].as_bool() {
                    Some(true) => "passed",
                    Some(false) => "FAILED",
                    None => "-",
                },
                format!("{}/{}", v["copies"].as_u64().unwrap_or(1), v["copies_wanted"].as_u64().unwrap_or(1)),
                indicatif::BinaryBytes(v["used_bytes"].as_u64().unwrap_or(0)).to_string(),
                indicatif::BinaryBytes(v["new_bytes"].as_u64().unwrap_or(0)).to_string(),
                v["name"].as_str().unwrap_or("-")
            );
            // A snapshot set: one line per disk under it.
            for d in v["set"]["disks"].as_array().into_iter().flatten() {
                println!(
                    "  disk {:10}  {:>12}  used {:>12}{}{}{}  manifest {}",
                    d["name"].as_str().unwrap_or("?"),
                    indicatif::BinaryBytes(d["size"].as_u64().unwrap_or(0)).to_string(),
                    indicatif::BinaryBytes(d["used_bytes"].as_u64().unwrap_or(0)).to_string(),
                    d["serial"].as_str().map(|x| format!("  serial {x}")).unwrap_or_default(),
                    d["wwn"].as_str().map(|x| format!("  wwn {x}")).unwrap_or_default(),
                    d["path"].as_str().map(|x| format!("  at {x}")).unwrap_or_default(),
                    d["manifest"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn hosts(s: &ServerArgs) -> Result<ExitCode> {
    let list: Vec<serde_json::Value> = client(s)?.get_json(routes::HOSTS.path)?;
    if s.json {
        print_json(&list)?;
    } else {
        println!("{:20}  {:12}  MACS", "HOST", "GROUP");
        for v in list {
            let macs: Vec<&str> =
                v["macs"].as_array().map(|a| a.iter().filter_map(|m| m.as_str()).collect()).unwrap_or_default();
            println!(
                "{:20}  {:12}  {}",
                v["name"].as_str().unwrap_or(""),
                v["group"].as_str().unwrap_or("-"),
                macs.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura host set HOST --secure-boot on|off|auto|default`.
/// `kura host set HOST`: its Secure Boot netboot setting, then the MAC addresses to add and
/// remove, each change on its own (the first refusal stops, naming what was done).
pub fn set_host(
    host: &str,
    secure_boot: Option<&str>,
    add_mac: &[String],
    remove_mac: &[String],
    s: &ServerArgs,
) -> Result<ExitCode> {
    let client = client(s)?;
    let mut v = serde_json::Value::Null;
    if let Some(value) = secure_boot {
        let secure_boot = match value {
            "default" => None,
            v => Some(v.parse::<kura_protocol::SecureBoot>().map_err(anyhow::Error::msg)?),
        };
        let body = kura_protocol::secure_boot::SetSecureBoot { secure_boot };
        v = client
            .put_json(&routes::HOST_SECURE_BOOT.url(&[host]), &body)
            .with_context(|| format!("setting secure boot of {host}"))?;
        if !s.json {
            let shown = v["secure_boot"].as_str().unwrap_or("the netboot default");
            eprintln!("host {host}: UEFI netboots use secure boot {shown}");
        }
    }
    for mac in add_mac {
        v = client
            .post_json(&routes::HOST_MAC_ADD.url(&[host]), &serde_json::json!({ "mac": mac }))
            .with_context(|| format!("adding MAC address {mac} to host {host}"))?;
        if !s.json {
            eprintln!("host {host}: netboots from {mac} too");
        }
    }
    for mac in remove_mac {
        v = client
            .delete_json(&routes::HOST_MAC_REMOVE.url(&[host, mac]))
            .with_context(|| format!("removing MAC address {mac} from host {host}"))?;
        if !s.json {
            eprintln!("host {host}: no longer netboots from {mac}");
        }
    }
    if s.json {
        print_json(&v)?;
    } else if let Some(macs) = v["macs"].as_array() {
        let macs: Vec<&str> = macs.iter().filter_map(|m| m.as_str()).collect();
        eprintln!("host {host}: MAC addresses {}", if macs.is_empty() { "none".to_string() } else { macs.join(", ") });
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura snapshot confirm ID`: accepts a snapshot held after an unusual boot.
pub fn confirm_snapshot(id: &str, s: &ServerArgs) -> Result<ExitCode> {
    let v: serde_json::Value = client(s)?.post_json(&routes::snapshot_confirm(id), &serde_json::json!({}))?;
    if s.json {
        print_json(&v)?;
    } else {
        eprintln!("snapshot {id} of host {} is confirmed: restores may pick it", v["host"].as_str().unwrap_or("?"));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(snapshot: Option<&str>, s: &ServerArgs) -> Result<ExitCode> {
    let v: serde_json::Value =
        client(s)?.post_json(routes::VERIFY.path, &serde_json::json!({ "snapshot": snapshot }))?;
    let ok = v["ok"].as_bool().unwrap_or(false);
    if s.json {
        print_json(&v)?;
    } else {
        for d in v["damaged"].as_array().into_iter().flatten() {
            println!(
                "DAMAGED chunk {}: {} (needed by {})",
                d["digest"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or(""),
                d["snapshots"]
            );
        }
        println!("{}: {} chunks checked", if ok { "ok" } else { "FAILED" }, v["chunks_checked"]);
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `kura verify --boot SNAPSHOT`: the engine boots the snapshot and records the verdict. The
/// request lasts as long as the test, so this client waits the test's time limit and more.
pub fn verify_boot(
    snapshot: &str,
    expect: &[String],
    firmware: Option<crate::boot_test::Firmware>,
    timeout: u64,
    stall: u64,
    s: &ServerArgs,
) -> Result<ExitCode> {
    let Some(url) = &s.server else { bail!("no engine given: use --server URL (or KURA_SERVER)") };
    let Some(token) = &s.token else { bail!("no API token: use --token (or KURA_TOKEN)") };
    let client = Client::new(&Endpoint {
        url: url.clone(),
        token: token.clone(),
        fingerprint: s.fingerprint.clone(),
        mac: None,
        timeout: Some(std::time::Duration::from_secs(timeout.saturating_add(300))),
    })?;
    let v: serde_json::Value = client.post_json(
        &routes::snapshot_boot_test(snapshot),
        &serde_json::json!({ "expect": expect, "firmware": firmware, "timeout": timeout, "stall": stall }),
    )?;
    let passed = v["passed"].as_bool().unwrap_or(false);
    if s.json {
        print_json(&v)?;
    } else {
        println!(
            "boot test of {} (host {}): {} ({}) after {:.1} s; {} firmware; fetched {} chunks, {:.1} MiB",
            snapshot,
            v["host"].as_str().unwrap_or("?"),
            if passed { "PASSED" } else { "FAILED" },
            v["reason"].as_str().unwrap_or(""),
            v["seconds"].as_f64().unwrap_or(0.0),
            v["firmware"].as_str().unwrap_or("?"),
            v["fetched_chunks"],
            v["fetched_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64
        );
        if let Some(d) = v["boot_disk"].as_str() {
            println!("snapshot set of {} disks: booted disk {d}, the others attached", v["disks"]);
        }
        for l in v["console_tail"].as_array().into_iter().flatten() {
            println!("  {}", l.as_str().unwrap_or(""));
        }
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn gc(grace: u64, dry_run: bool, s: &ServerArgs) -> Result<ExitCode> {
    let v: serde_json::Value =
        client(s)?.post_json(routes::GC.path, &serde_json::json!({ "grace": grace, "dry_run": dry_run }))?;
    if s.json {
        print_json(&v)?;
    } else {
        println!(
            "removed {} chunks ({} bytes) of {} seen; {} referenced",
            v["removed"], v["removed_bytes"], v["chunks_seen"], v["referenced"]
        );
        if v["locked"].as_u64().unwrap_or(0) > 0 {
            println!(
                "{} chunks locked until {} (S3 Object Lock): kept, collected once their retention ends",
                v["locked"],
                v["locked_until"].as_str().unwrap_or("their legal hold is removed")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn retention(
    host: Option<String>,
    group: Option<String>,
    keep_last: Option<u32>,
    keep_monthly: Option<u32>,
    dry_run: bool,
    s: &ServerArgs,
) -> Result<ExitCode> {
    let rule = (keep_last.is_some() || keep_monthly.is_some())
        .then(|| serde_json::json!({ "keep_last": keep_last.unwrap_or(0), "keep_monthly": keep_monthly.unwrap_or(0) }));
    let body = serde_json::json!({ "host": host, "group": group, "rule": rule, "dry_run": dry_run });
    let v: serde_json::Value = client(s)?.post_json(routes::RETENTION_APPLY.path, &body)?;
    if s.json {
        print_json(&v)?;
    } else {
        let deleted = v["deleted"].as_array().cloned().unwrap_or_default();
        for d in &deleted {
            println!(
                "{} {} (host {})",
                if dry_run { "would delete" } else { "deleted" },
                d["snapshot"].as_str().unwrap_or(""),
                d["host"].as_str().unwrap_or("")
            );
        }
        println!("{} snapshots {}", deleted.len(), if dry_run { "would be deleted" } else { "deleted" });
        let locked = v["locked"].as_array().cloned().unwrap_or_default();
        for l in &locked {
            println!(
                "locked {} (host {}) until {} (S3 Object Lock, {}): kept",
                l["snapshot"].as_str().unwrap_or(""),
                l["host"].as_str().unwrap_or(""),
                l["until"].as_str().unwrap_or("its legal hold is removed"),
                l["mode"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura snapshot delete ID`: removes a snapshot (its manifest, then its catalog row; its
/// chunks go at the next GC). Refused, naming the date, while S3 Object Lock retains it.
pub fn delete_snapshot(id: &str, s: &ServerArgs) -> Result<ExitCode> {
    client(s)?.delete(&routes::SNAPSHOT_DELETE.url(&[id]))?;
    if s.json {
        print_json(&serde_json::json!({ "deleted": id }))?;
    } else {
        println!("deleted snapshot {id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura admin fix-permissions`: makes the data directory private (with the store locked, so
/// the engine is stopped), then runs the engine's startup check on it.
pub fn fix_permissions(data: &Path, json: bool) -> Result<ExitCode> {
    let store = kura_catalogs::LocalStore::open(&data.join("store"))?;
    let _lock = store.lock(true).context("stop `kura serve` before fixing its data directory")?;
    let report = crate::datadir::fix_permissions(data)?;
    let check = crate::datadir::check(data);
    if json {
        print_json(&serde_json::json!({
            "checked": report.checked,
            "fixed": report.fixed,
            "foreign": report.foreign,
            "symlinks": report.symlinks,
            "check": check.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| format!("{e:#}")),
        }))?;
    } else {
        println!("{} of {} entries made private (directories 0700, files 0600)", report.fixed, report.checked);
        for p in &report.symlinks {
            println!("symbolic link left alone (not followed): {}", p.display());
        }
        for p in &report.foreign {
            println!("owned by another user, left alone (remove it): {}", p.display());
        }
    }
    match check {
        Ok(_) if report.foreign.is_empty() => Ok(ExitCode::SUCCESS),
        Ok(_) => {
            eprintln!("error: {} entries are owned by another user; remove them", report.foreign.len());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.context("the data directory is still refused")),
    }
}

pub fn rebuild_catalog(data: &Path, store: Option<&str>, catalog: Option<&str>, json: bool) -> Result<ExitCode> {
    let (store, catalog, _) =
        crate::serve::open_state(data, store, catalog, kura_catalogs::backend::DEFAULT_CACHE_BYTES, None)?;
    let _lock = store.lock(true).context("stop `kura serve` before rebuilding its catalog")?;
    let (added, removed) = crate::serve::reconcile(&*store, &catalog, "kura-admin")?;
    let total = catalog.list_snapshots(None)?.len();
    if json {
        print_json(&serde_json::json!({ "added": added, "removed": removed, "snapshots": total }))?;
    } else {
        println!("catalog rebuilt from the store: {added} snapshots added, {removed} removed, {total} listed");
    }
    Ok(ExitCode::SUCCESS)
}
