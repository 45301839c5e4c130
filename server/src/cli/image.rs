//! `kura image ...`: capture, list, show, restore, fit and verify against a store given by
//! `--store`: a local directory or `s3://bucket/prefix` (`kura_catalogs::backend`).

use crate::progress_bar::{Bar, RestoreBar, Unit};
use anyhow::{Context, Result};
use kura_catalogs::backend::{self, CacheOptions, Sink};
use kura_catalogs::Store;
use kura_imaging::capture::{self, CaptureOptions, CaptureStats};
use kura_imaging::diskset::SnapshotFile;
use kura_imaging::fit;
use kura_imaging::flow::{self, RestoreError};
use kura_imaging::manifest::Manifest;
use kura_imaging::restore::RestoreStats;
use kura_imaging::target::FileTarget;
use serde::Serialize;
use std::fs::File;
use std::io::{IsTerminal, Seek, SeekFrom};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Opens the store named by `--store`: a directory, or `s3://…` (settings and credentials as in
/// `kura_catalogs::s3`; an offline command's cache is a temporary directory).
pub fn open_store(spec: &Path, create: bool) -> Result<Arc<dyn Store>> {
    let spec = spec.to_str().with_context(|| format!("{} is not UTF-8", spec.display()))?;
    let cache = CacheOptions::default();
    Ok(if create { backend::open_or_create(spec, &cache)? } else { backend::open(spec, &cache)? })
}

fn bars_visible(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

#[derive(Serialize)]
struct CaptureOutput<'a> {
    snapshot: &'a str,
    seconds: f64,
    #[serde(flatten)]
    stats: &'a CaptureStats,
}

pub fn capture(
    source: &Path,
    store_dir: &Path,
    json: bool,
    name: Option<String>,
    host: Option<String>,
    threads: Option<usize>,
    full: bool,
) -> Result<ExitCode> {
    let mut file = File::open(source).with_context(|| format!("opening {}", source.display()))?;
    let disk_size = file.seek(SeekFrom::End(0)).with_context(|| format!("finding the size of {}", source.display()))?;
    let store = open_store(store_dir, true)?;
    let _lock = store.lock(true)?;
    store.clean_tmp()?;
    let mut opts = CaptureOptions { name, host, source: source.display().to_string(), ..Default::default() };
    if full {
        opts.piece_size = 0;
    } else if let Some((id, parent)) = store.parent_for(opts.host.as_deref(), &opts.source, disk_size)? {
        tracing::info!("capturing {} as an increment of snapshot {id}", opts.source);
        opts.parent = Some(std::sync::Arc::new(parent));
    }
    if let Some(t) = threads {
        opts.threads = t;
    }
    let bar = Bar::new("capture", Unit::Bytes, bars_visible(json));
    let started = Instant::now();
    let result =
        flow::capture_flow(std::io::BufReader::with_capacity(0, file), &opts, &Sink(&*store), &bar, |_| Ok(()));
    bar.finish();
    let (id, stats) = result?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string(&CaptureOutput { snapshot: &id, seconds, stats: &stats })?);
    } else {
        eprintln!(
            "captured {}: {} used of {}, {} new in {} chunks ({} reused, {} changed chunks stored as patches), {:.1} s",
            source.display(),
            human(stats.used_bytes),
            human(stats.disk_size),
            human(stats.new_stored_bytes),
            stats.new_chunks,
            stats.reused_chunks,
            stats.pieced_chunks,
            seconds
        );
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list(store_dir: &Path, json: bool) -> Result<ExitCode> {
    let store = open_store(store_dir, false)?;
    let _lock = store.lock(false)?;
    let snaps = store.list()?;
    if json {
        println!("{}", serde_json::to_string(&snaps)?);
    } else {
        println!("{:16}  {:30}  {:>10}  {:>10}  {:4}  NAME", "ID", "CREATED", "DISK", "USED", "PART");
        for s in snaps {
            println!(
                "{:16}  {:30}  {:>10}  {:>10}  {:4}  {}",
                s.id,
                s.created,
                human(s.disk_size),
                human(s.used_bytes),
                s.partitions,
                s.name.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(snapshot: &str, store_dir: &Path, json: bool) -> Result<ExitCode> {
    let store = open_store(store_dir, false)?;
    let _lock = store.lock(false)?;
    let id = store.resolve(snapshot)?;
    let m = store.load_manifest(&id)?;
    show_file(&id, &SnapshotFile::Disk(m), json)
}

/// `kura image show SNAPSHOT --server URL`: one disk's snapshot, or a snapshot set (which only
/// an engine's catalog holds) disk by disk.
pub fn show_remote(snapshot: &str, server: &super::ServerArgs) -> Result<ExitCode> {
    let client = super::engine::client(server)?;
    let file = client.snapshot_file(snapshot)?;
    show_file(snapshot, &file, server.json)
}

fn regions_json(m: &Manifest) -> Vec<serde_json::Value> {
    m.regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "start": r.start, "size": r.size, "partition": r.partition, "fs": r.fs,
                "label": r.label, "block_size": r.block_size, "used_bytes": r.used_bytes,
                "chunks": r.chunks.len(), "warnings": r.warnings,
            })
        })
        .collect()
}

fn print_regions(m: &Manifest, indent: &str) {
    for r in &m.regions {
        let what = match r.partition {
            Some(n) => format!("partition {n}"),
            None => "gap".to_string(),
        };
        println!(
            "{indent}  {:>14} +{:>10}  {:12} {:5?} {:>10} used  {}",
            r.start,
            human(r.size),
            what,
            r.fs,
            human(r.used_bytes),
            r.label.as_deref().unwrap_or("")
        );
        for w in &r.warnings {
            println!("{indent}      warning: {w}");
        }
    }
}

/// Prints snapshot `id`: a disk's layout and regions; for a set, the set and then each disk
/// (its number as `kura mount` names it, identity, own snapshot id, layout, regions).
fn show_file(id: &str, file: &SnapshotFile, json: bool) -> Result<ExitCode> {
    let set = match file {
        SnapshotFile::Disk(m) => {
            if json {
                let doc = serde_json::json!({
                    "id": id, "name": m.name, "created": m.created, "source": m.source, "host": m.host,
                    "chunk_size": m.chunk_size, "layout": m.layout, "regions": regions_json(m),
                });
                println!("{doc}");
            } else {
                println!("snapshot {id}  created {}  source {}", m.created, m.source);
                println!(
                    "disk {} ({:?}, {}-byte sectors)",
                    human(m.disk_size()),
                    m.layout.scheme,
                    m.layout.sector_size
                );
                print_regions(m, "");
            }
            return Ok(ExitCode::SUCCESS);
        }
        SnapshotFile::Set(set) => set,
    };
    let manifests: Vec<&Manifest> = set.members.iter().map(|m| &m.manifest).collect();
    let boot = crate::boot_test::boot_disk(&manifests);
    let entries = set.entries()?;
    if json {
        let disks: Vec<serde_json::Value> = set
            .members
            .iter()
            .zip(&entries)
            .enumerate()
            .map(|(k, (m, e))| {
                serde_json::json!({
                    "index": k, "name": m.disk.name, "size": m.disk.size, "model": m.disk.model,
                    "serial": m.disk.serial, "wwn": m.disk.wwn, "path": m.disk.path,
                    "snapshot": e.manifest, "used_bytes": e.used_bytes, "boot": k == boot,
                    "source": m.manifest.source, "chunk_size": m.manifest.chunk_size,
                    "layout": m.manifest.layout, "regions": regions_json(&m.manifest),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "id": id, "set": true, "name": set.name, "created": set.created, "host": set.host,
            "disk_size": set.disk_size(), "used_bytes": set.used_bytes(), "disks": disks,
        });
        println!("{doc}");
    } else {
        println!(
            "snapshot set {id}  created {}  host {}  {} disks, {} used of {}",
            set.created,
            set.host.as_deref().unwrap_or("-"),
            set.members.len(),
            human(set.used_bytes()),
            human(set.disk_size())
        );
        for (k, (m, e)) in set.members.iter().zip(&entries).enumerate() {
            let d = &m.disk;
            let known =
                |label: &str, v: &Option<String>| v.as_deref().map(|v| format!("  {label} {v}")).unwrap_or_default();
            println!(
                "disk{k}  {}  {}{}{}{}{}  snapshot {}{}",
                d.name,
                human(d.size),
                known("model", &d.model),
                known("serial", &d.serial),
                known("wwn", &d.wwn),
                known("path", &d.path),
                e.manifest,
                if k == boot { "  (boot disk)" } else { "" }
            );
            println!(
                "  {:?}, {}-byte sectors, {} used",
                m.manifest.layout.scheme,
                m.manifest.layout.sector_size,
                human(e.used_bytes)
            );
            print_regions(&m.manifest, "");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct RestoreOutput<'a> {
    snapshot: &'a str,
    target: String,
    seconds: f64,
    #[serde(flatten)]
    stats: &'a RestoreStats,
}

pub fn restore(
    snapshot: &str,
    target_path: &Path,
    store_dir: &Path,
    json: bool,
    threads: Option<usize>,
) -> Result<ExitCode> {
    let store = open_store(store_dir, false)?;
    let _lock = store.lock(false)?;
    let id = store.resolve(snapshot)?;
    let manifest = store.load_manifest(&id)?;
    let threads = threads.unwrap_or_else(capture::default_threads);
    let started = Instant::now();
    let bar = RestoreBar::new(bars_visible(json));
    let mut target = FileTarget::existing_or_new(target_path);
    let result = flow::restore_flow(&id, &manifest, &*store, &mut target, threads, &bar);
    bar.finish();
    let stats = match result {
        Err(e @ RestoreError::Refused { source: kura_imaging::Error::TargetTooSmall { actual, .. }, .. }) => {
            let hint = format!(
                "the target is smaller than the snapshot's disk; if the data fits, make a snapshot that fits it with: kura image fit {id} --size {actual} --store {}",
                store_dir.display()
            );
            return Err(anyhow::Error::new(e).context(hint));
        }
        other => other?,
    };
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let out = RestoreOutput { snapshot: &id, target: target_path.display().to_string(), seconds, stats: &stats };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        eprintln!(
            "restored {id} onto {}: {} written in {:.1} s",
            target_path.display(),
            human(stats.written_bytes),
            seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct FitOutput<'a> {
    snapshot: &'a str,
    source_snapshot: &'a str,
    size: u64,
    partition: u32,
    old_partition_size: u64,
    new_partition_size: u64,
    seconds: f64,
}

/// `kura image fit`: a new snapshot of `snapshot` for a disk of `size` bytes (see
/// [`kura_imaging::fit`] for the rule); the source snapshot is only read.
pub fn fit(
    snapshot: &str,
    size: u64,
    store_dir: &Path,
    json: bool,
    name: Option<String>,
    scratch: Option<&Path>,
    threads: Option<usize>,
) -> Result<ExitCode> {
    let store = open_store(store_dir, false)?;
    let _lock = store.lock(true)?;
    store.clean_tmp()?;
    let id = store.resolve(snapshot)?;
    let manifest = store.load_manifest(&id)?;
    let refused = || format!("snapshot {id} cannot be fitted to {size} bytes; nothing was written");
    let plan = fit::plan(&manifest, size).with_context(refused)?;
    if !json {
        eprintln!(
            "fitting {id} to {}: partition {} ({:?}) shrinks from {} to {}",
            human(size),
            plan.partition,
            plan.fs,
            human(plan.old_size),
            human(plan.new_size)
        );
    }
    let started = Instant::now();
    let scratch_root = scratch.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("kura-fit-")
        .tempdir_in(&scratch_root)
        .with_context(|| format!("creating a scratch directory in {}", scratch_root.display()))?;
    let threads = threads.unwrap_or_else(capture::default_threads);
    let bar = RestoreBar::new(bars_visible(json));
    let fitted = fit::fit(&id, &manifest, &*store, &plan, dir.path(), threads, &bar);
    bar.finish();
    let image = fitted.with_context(refused)?;
    let file = File::open(&image).with_context(|| format!("opening {}", image.display()))?;
    let opts = CaptureOptions {
        name: Some(
            name.unwrap_or_else(|| format!("{} fit to {}", manifest.name.as_deref().unwrap_or(&id), human(size))),
        ),
        host: manifest.host.clone(),
        source: format!("kura image fit {id} --size {size}"),
        threads,
        ..Default::default()
    };
    let bar = Bar::new("capture", Unit::Bytes, bars_visible(json));
    let result =
        flow::capture_flow(std::io::BufReader::with_capacity(0, file), &opts, &Sink(&*store), &bar, |_| Ok(()));
    bar.finish();
    let (new_id, _) = result?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let out = FitOutput {
            snapshot: &new_id,
            source_snapshot: &id,
            size,
            partition: plan.partition,
            old_partition_size: plan.old_size,
            new_partition_size: plan.new_size,
            seconds,
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        eprintln!("fitted {id} to {} in {seconds:.1} s", human(size));
        println!("{new_id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(snapshot: Option<&str>, store_dir: &Path, json: bool, threads: Option<usize>) -> Result<ExitCode> {
    let store = open_store(store_dir, false)?;
    let _lock = store.lock(false)?;
    let bar = Bar::new("verify", Unit::Chunks, bars_visible(json));
    let report = store.verify(snapshot, threads.unwrap_or_else(capture::default_threads), &bar)?;
    bar.finish();
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for m in &report.damaged_manifests {
            println!("DAMAGED manifest {}: {}", m.id, m.reason);
        }
        for d in &report.damaged {
            println!("DAMAGED chunk {}: {} (needed by {})", d.digest, d.reason, d.snapshots.join(", "));
        }
        println!(
            "{}: {} snapshots, {} chunks checked, {} damaged",
            if report.ok { "ok" } else { "FAILED" },
            report.snapshots_checked,
            report.chunks_checked,
            report.damaged.len() + report.damaged_manifests.len()
        );
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
