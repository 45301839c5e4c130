//! `kura image ...`: capture, list, show, restore and verify against a local store.

use crate::progress_bar::{Bar, RestoreBar, Unit};
use anyhow::{Context, Result};
use kura_catalogs::LocalStore;
use kura_imaging::capture::{self, CaptureOptions, CaptureStats};
use kura_imaging::flow;
use kura_imaging::restore::RestoreStats;
use kura_imaging::target::FileTarget;
use serde::Serialize;
use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

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
) -> Result<ExitCode> {
    let file = File::open(source).with_context(|| format!("opening {}", source.display()))?;
    let store = LocalStore::open_or_create(store_dir)?;
    let _lock = store.lock(true)?;
    store.clean_tmp()?;
    let mut opts = CaptureOptions { name, host, source: source.display().to_string(), ..Default::default() };
    if let Some(t) = threads {
        opts.threads = t;
    }
    let bar = Bar::new("capture", Unit::Bytes, bars_visible(json));
    let started = Instant::now();
    let result = flow::capture_flow(std::io::BufReader::with_capacity(0, file), &opts, &store, &bar, |_| Ok(()));
    bar.finish();
    let (id, stats) = result?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string(&CaptureOutput { snapshot: &id, seconds, stats: &stats })?);
    } else {
        eprintln!(
            "captured {}: {} used of {}, {} new in {} chunks ({} reused), {:.1} s",
            source.display(),
            human(stats.used_bytes),
            human(stats.disk_size),
            human(stats.new_stored_bytes),
            stats.new_chunks,
            stats.reused_chunks,
            seconds
        );
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list(store_dir: &Path, json: bool) -> Result<ExitCode> {
    let store = LocalStore::open(store_dir)?;
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
    let store = LocalStore::open(store_dir)?;
    let _lock = store.lock(false)?;
    let id = store.resolve(snapshot)?;
    let m = store.load_manifest(&id)?;
    let regions: Vec<serde_json::Value> = m
        .regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "start": r.start, "size": r.size, "partition": r.partition, "fs": r.fs,
                "label": r.label, "block_size": r.block_size, "used_bytes": r.used_bytes,
                "chunks": r.chunks.len(), "warnings": r.warnings,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "id": id, "name": m.name, "created": m.created, "source": m.source, "host": m.host,
        "chunk_size": m.chunk_size, "layout": m.layout, "regions": regions,
    });
    if json {
        println!("{doc}");
    } else {
        println!("snapshot {id}  created {}  source {}", m.created, m.source);
        println!("disk {} ({:?}, {}-byte sectors)", human(m.disk_size()), m.layout.scheme, m.layout.sector_size);
        for r in &m.regions {
            let what = match r.partition {
                Some(n) => format!("partition {n}"),
                None => "gap".to_string(),
            };
            println!(
                "  {:>14} +{:>10}  {:12} {:5?} {:>10} used  {}",
                r.start,
                human(r.size),
                what,
                r.fs,
                human(r.used_bytes),
                r.label.as_deref().unwrap_or("")
            );
            for w in &r.warnings {
                println!("      warning: {w}");
            }
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
    let store = LocalStore::open(store_dir)?;
    let _lock = store.lock(false)?;
    let id = store.resolve(snapshot)?;
    let manifest = store.load_manifest(&id)?;
    let threads = threads.unwrap_or_else(capture::default_threads);
    let started = Instant::now();
    let bar = RestoreBar::new(bars_visible(json));
    let mut target = FileTarget::existing_or_new(target_path);
    let result = flow::restore_flow(&id, &manifest, &store, &mut target, threads, &bar);
    bar.finish();
    let stats = result?;
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

pub fn verify(snapshot: Option<&str>, store_dir: &Path, json: bool, threads: Option<usize>) -> Result<ExitCode> {
    let store = LocalStore::open(store_dir)?;
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
