//! `kura export`, `kura import` and `kura image restore --archive`: the offline export archive
//! (`docs/archive.md`, `docs/dr.md`) written from and loaded into a store or an engine's data
//! directory, and restored from with no engine and no catalog.

use crate::progress_bar::{Bar, RestoreBar, Unit};
use anyhow::{bail, Context, Result};
use clap::Args;
use kura_catalogs::archive::read::{ArchiveFile, ArchiveSource};
use kura_catalogs::archive::write::{self, ExportOptions, Since};
use kura_catalogs::archive::{format, import, stream_restore};
use kura_catalogs::LocalStore;
use kura_imaging::flow;
use kura_imaging::target::FileTarget;
use std::collections::HashSet;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The store to export from or import into: a local store, or an engine's data directory.
#[derive(Args)]
pub struct StoreAt {
    /// A local store directory (as `kura image … --store`).
    #[arg(long, value_name = "DIR", conflicts_with = "data", required_unless_present = "data")]
    store: Option<PathBuf>,
    /// An engine's data directory (its store is DIR/store; `kura import` also lists the imported
    /// snapshots in its catalog: stop `kura serve` first).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    at: StoreAt,
    /// Only these hosts' snapshots (comma-separated).
    #[arg(long, value_delimiter = ',')]
    hosts: Option<Vec<String>>,
    /// Only snapshots created after SNAPSHOT (id or prefix) or DATE (YYYY-MM-DD or RFC 3339,
    /// UTC); the chunks of the snapshots up to it are left out (they are in the previous export).
    #[arg(long, value_name = "SNAPSHOT|DATE", conflicts_with = "base")]
    since: Option<String>,
    /// Incremental to this previous export: the snapshots it (and its bases) holds, and their
    /// chunks, are left out. Read from its catalog record (or by scanning it).
    #[arg(long, value_name = "ARCHIVE")]
    base: Option<PathBuf>,
    /// Where to write: a file (created; not overwritten), a tape device, or `-` for stdout.
    #[arg(long, value_name = "PATH|-")]
    to: PathBuf,
    /// Block size in bytes (a power of two, 4 KiB to 16 MiB); every write is one block.
    #[arg(long, default_value_t = format::DEFAULT_BLOCK_SIZE)]
    block_size: u32,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The archive: a file, a tape device, or `-` for stdin.
    archive: PathBuf,
    #[command(flatten)]
    at: StoreAt,
}

fn bars_visible(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

fn store_dir(at: &StoreAt) -> PathBuf {
    match (&at.store, &at.data) {
        (Some(s), _) => s.clone(),
        (None, Some(d)) => d.join("store"),
        (None, None) => unreachable!("clap requires --store or --data"),
    }
}

fn parse_since(s: &str, store: &LocalStore) -> Result<Since> {
    if let Ok(t) = kura_imaging::time::parse_rfc3339(s) {
        return Ok(Since::Time(t));
    }
    if let Ok(t) = kura_imaging::time::parse_rfc3339(&format!("{s}T00:00:00Z")) {
        return Ok(Since::Time(t));
    }
    match store.resolve(s) {
        Ok(id) => Ok(Since::Snapshot(id)),
        Err(e) => bail!("--since {s:?} is neither a date (YYYY-MM-DD, RFC 3339) nor a snapshot: {e}"),
    }
}

pub fn export(args: ExportArgs) -> Result<ExitCode> {
    if !format::valid_block_size(args.block_size) {
        bail!("--block-size {} is not a power of two from 4096 to 16 MiB", args.block_size);
    }
    let dir = store_dir(&args.at);
    let store = LocalStore::open(&dir)?;
    let mut opts = ExportOptions { hosts: args.hosts.clone(), block_size: args.block_size, ..Default::default() };
    if let Some(s) = &args.since {
        opts.since = Some((parse_since(s, &store)?, s.clone()));
    }
    if let Some(base) = &args.base {
        let a = ArchiveFile::open(base).with_context(|| format!("reading the base archive {}", base.display()))?;
        let Some(catalog) = a.catalog.clone() else {
            bail!(
                "the base archive {} has no readable catalog record ({}); use --since instead",
                base.display(),
                a.problems.join("; ")
            );
        };
        opts.base_digests = a.digests().collect::<HashSet<_>>();
        opts.base = Some(catalog);
    }
    let bar = Bar::new("export", Unit::Chunks, bars_visible(args.at.json));
    let started = Instant::now();
    let to_stdout = args.to.as_os_str() == "-";
    let result = if to_stdout {
        // The raw descriptor: every block one write (stdout's line buffering would split them).
        let out = raw_stdio(&std::io::stdout())?;
        write::export(&store, &opts, out, &bar).map(|(_, r)| r)
    } else {
        let file = open_output(&args.to)?;
        write::export(&store, &opts, file, &bar).and_then(|(f, r)| {
            f.sync_all().map_err(|e| kura_imaging::Error::io(format!("syncing {}", args.to.display()), e))?;
            Ok(r)
        })
    };
    bar.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if !to_stdout && is_regular(&args.to) {
                let _ = std::fs::remove_file(&args.to);
            }
            return Err(anyhow::Error::new(e).context("the export failed; no archive was written"));
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if args.at.json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = seconds.into();
        eprintln_or_print(&v.to_string(), to_stdout);
    } else {
        eprintln!(
            "exported {} snapshots, {} chunks ({} bytes of chunks) in {} blocks of {} bytes, archive {}, {:.1} s",
            report.snapshots.len(),
            report.chunks,
            report.chunk_bytes,
            report.blocks,
            args.block_size,
            report.archive_id,
            seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON report goes to stdout, unless stdout carries the archive: then to stderr.
fn eprintln_or_print(line: &str, stdout_taken: bool) {
    if stdout_taken {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// A standard stream's descriptor as an unbuffered file (a tape wants whole blocks per call).
fn raw_stdio(s: &impl std::os::fd::AsFd) -> Result<File> {
    Ok(File::from(s.as_fd().try_clone_to_owned().context("duplicating a standard stream")?))
}

fn is_regular(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
}

/// A new file (never an existing one overwritten), or an existing device (a tape).
fn open_output(path: &Path) -> Result<File> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::metadata(path) {
        let t = m.file_type();
        if t.is_char_device() || t.is_block_device() || t.is_fifo() {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()));
        }
        bail!("{} exists; an export never overwrites a file", path.display());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

pub fn import(args: ImportArgs) -> Result<ExitCode> {
    let dir = store_dir(&args.at);
    // Into an engine's data directory (its local store): its catalog learns the new snapshots.
    let catalog = match &args.at.data {
        Some(data) if args.at.store.is_none() => {
            if data.join("store.spec").exists() {
                bail!("{} keeps its chunks in an S3 store: kura import writes only local stores (yet)", data.display());
            }
            for warning in crate::datadir::prepare(data)? {
                eprintln!("{warning}");
            }
            Some(crate::serve::open_catalog(data, None)?)
        }
        _ => None,
    };
    let store = LocalStore::open_or_create(&dir)?;
    let _lock = store.lock(true).context("stop `kura serve` (or the capture) using this store before importing")?;
    store.clean_tmp()?;
    let bar = Bar::new("import", Unit::Chunks, bars_visible(args.at.json));
    let started = Instant::now();
    let result = if args.archive.as_os_str() == "-" {
        import::import(&store, raw_stdio(&std::io::stdin())?, &bar)
    } else {
        let f = File::open(&args.archive).with_context(|| format!("opening {}", args.archive.display()))?;
        import::import(&store, std::io::BufReader::with_capacity(0, f), &bar)
    };
    bar.finish();
    let report = result?;
    if let Some(catalog) = &catalog {
        crate::serve::reconcile(&store, catalog, "kura-import")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.at.json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = seconds.into();
        println!("{v}");
    } else {
        for p in &report.problems {
            println!("DAMAGED archive: {p}");
        }
        for d in &report.damaged_chunks {
            println!("DAMAGED chunk {}: {} (needed by {})", d.digest, d.reason, d.snapshots.join(", "));
        }
        for s in &report.incomplete {
            println!("INCOMPLETE snapshot {} (host {}): {}", s.id, s.host.as_deref().unwrap_or("-"), s.reason);
        }
        for id in &report.imported {
            println!("imported {id}");
        }
        println!(
            "{}: {} snapshots imported, {} already there, {} incomplete; {} chunks read, {} stored, {:.1} s",
            if report.ok { "ok" } else { "FAILED" },
            report.imported.len(),
            report.already.len(),
            report.incomplete.len(),
            report.chunks_read,
            report.chunks_stored,
            seconds
        );
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `kura image restore SNAPSHOT TARGET --archive PATH…`: from archive files (indexed first,
/// then restored like from a store, preflight included) or from `-` (stdin, one pass).
pub fn restore(
    snapshot: &str,
    target_path: &Path,
    archives: &[PathBuf],
    json: bool,
    threads: Option<usize>,
) -> Result<ExitCode> {
    let started = Instant::now();
    let mut target = FileTarget::existing_or_new(target_path);
    let (id, stats) = if archives.iter().any(|a| a.as_os_str() == "-") {
        if archives.len() != 1 {
            bail!("--archive - (stdin) restores from that one archive only; give the other archives as files");
        }
        let bar = Bar::new("restore", Unit::Chunks, bars_visible(json));
        let r = stream_restore::stream_restore(raw_stdio(&std::io::stdin())?, snapshot, &mut target, &bar);
        bar.finish();
        r?
    } else {
        let mut files = Vec::new();
        for a in archives {
            let f = ArchiveFile::open(a).with_context(|| format!("reading {}", a.display()))?;
            for p in &f.problems {
                eprintln!("warning: {}: {p}", a.display());
            }
            files.push(f);
        }
        let source = ArchiveSource::new(files);
        let (id, manifest) = source.find(snapshot)?;
        let threads = threads.unwrap_or_else(kura_imaging::capture::default_threads);
        let bar = RestoreBar::new(bars_visible(json));
        let r = flow::restore_flow(&id, manifest, &source, &mut target, threads, &bar);
        bar.finish();
        (id, r?)
    };
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let mut v = serde_json::to_value(&stats)?;
        v["snapshot"] = id.clone().into();
        v["target"] = target_path.display().to_string().into();
        v["seconds"] = seconds.into();
        println!("{v}");
    } else {
        eprintln!(
            "restored {id} onto {} from the archive: {} bytes written in {seconds:.1} s",
            target_path.display(),
            stats.written_bytes
        );
    }
    std::io::stdout().flush()?;
    Ok(ExitCode::SUCCESS)
}
