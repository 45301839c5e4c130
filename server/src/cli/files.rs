//! `kura files ls|get|find|diff`: a snapshot's files from a local store or an engine, read in
//! place (see `crate::files`). `--stats` prints on stderr what was fetched: `stats: {"chunks":
//! N,"bytes":M}` (encoded chunk bytes, i.e. what crossed the network from an engine).

use super::nbd::{open_snapshot, OpenedSnapshot};
use super::Location;
use crate::files::{self, diff::Difference, get, glob::Glob, Entry, FsReader, Kind, PartitionInfo};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Decoded chunk bytes cached per snapshot: metadata (superblocks, inode tables, directories)
/// is read again and again, file data once, in order.
const CACHE_BYTES: u64 = 64 << 20;

#[derive(Subcommand)]
pub(super) enum FilesCommand {
    /// List a directory (or show one entry) of a snapshot; without PATH, its partitions and
    /// their filesystems. NTFS alternate data streams are listed as FILE:STREAM.
    Ls {
        /// Snapshot id (or, with --store, a unique prefix).
        snapshot: String,
        /// [PARTITION:]PATH, e.g. 2:/etc or /etc (the first readable filesystem).
        path: Option<String>,
        #[command(flatten)]
        at: Location,
        /// Print what was fetched (chunks, encoded bytes) on stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Copy a file, an NTFS stream (FILE:STREAM) or a directory tree out of a snapshot into
    /// DIR (as DIR/NAME; the root of a filesystem into a new or empty DIR): modes, mtimes,
    /// owners (as root) and symbolic links kept; nothing existing is overwritten.
    Get {
        /// Snapshot id (or, with --store, a unique prefix).
        snapshot: String,
        /// [PARTITION:]PATH
        path: String,
        /// Directory to copy into (created if missing).
        #[arg(long, default_value = ".")]
        to: PathBuf,
        #[command(flatten)]
        at: Location,
        /// Print what was fetched (chunks, encoded bytes) on stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Find entries whose path matches a glob (`*`, `**`, `?`, `[a-z]`; without `/` the name
    /// is matched): in one partition (`2:PATTERN`) or in every readable one.
    Find {
        /// Snapshot id (or, with --store, a unique prefix).
        snapshot: String,
        /// [PARTITION:]PATTERN, e.g. '*.conf' or '3:/etc/**/*.service'.
        pattern: String,
        #[command(flatten)]
        at: Location,
        /// Print what was fetched (chunks, encoded bytes) on stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Files added, removed and changed from SNAPSHOT_A to SNAPSHOT_B (under PATH, or on
    /// every partition readable in both). Changed: kind, size, mtime, mode, owner, symlink
    /// target or NTFS streams differ; --content also compares the data of files whose
    /// metadata is equal (reads them both).
    Diff {
        /// The older snapshot.
        snapshot_a: String,
        /// The newer snapshot.
        snapshot_b: String,
        /// [PARTITION:]PATH
        path: Option<String>,
        /// Also compare the data of files whose metadata is equal (reads both copies).
        #[arg(long)]
        content: bool,
        #[command(flatten)]
        at: Location,
        /// Print what was fetched (chunks, encoded bytes) on stderr.
        #[arg(long)]
        stats: bool,
    },
}

pub(super) fn run(cmd: FilesCommand) -> Result<ExitCode> {
    match cmd {
        FilesCommand::Ls { snapshot, path, at, stats } => {
            let s = open_snapshot(&snapshot, &at, CACHE_BYTES)?;
            let r = ls(&s, path.as_deref(), at.server.json);
            finish(&[&s], stats, r)
        }
        FilesCommand::Get { snapshot, path, to, at, stats } => {
            let s = open_snapshot(&snapshot, &at, CACHE_BYTES)?;
            let r = get_cmd(&s, &path, &to, at.server.json);
            finish(&[&s], stats, r)
        }
        FilesCommand::Find { snapshot, pattern, at, stats } => {
            let s = open_snapshot(&snapshot, &at, CACHE_BYTES)?;
            let r = find(&s, &pattern, at.server.json);
            finish(&[&s], stats, r)
        }
        FilesCommand::Diff { snapshot_a, snapshot_b, path, content, at, stats } => {
            let a = open_snapshot(&snapshot_a, &at, CACHE_BYTES)?;
            let b = open_snapshot(&snapshot_b, &at, CACHE_BYTES)?;
            let r = diff(&a, &b, path.as_deref(), content, at.server.json);
            finish(&[&a, &b], stats, r)
        }
    }
}

fn finish(opened: &[&OpenedSnapshot], stats: bool, r: Result<()>) -> Result<ExitCode> {
    if stats {
        let (mut chunks, mut bytes) = (0, 0);
        for o in opened {
            chunks += o.disk.stats().chunks;
            bytes += o.disk.stats().bytes;
        }
        eprintln!("stats: {{\"chunks\":{chunks},\"bytes\":{bytes}}}");
    }
    r.map(|_| ExitCode::SUCCESS)
}

/// The filesystem a `[PARTITION:]PATH` argument names, and the path in it.
fn open_fs(s: &OpenedSnapshot, arg: &str) -> Result<(PartitionInfo, Box<dyn FsReader>, Vec<String>)> {
    let (which, path) = files::split_partition(arg);
    let part = files::pick_partition(&s.disk, which.as_ref())?;
    let fs = files::open(&s.disk, &part)?;
    Ok((part, fs, files::parse_path(path)?))
}

fn ls(s: &OpenedSnapshot, arg: Option<&str>, json: bool) -> Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let Some(arg) = arg else {
        let parts = files::partitions(&s.disk);
        if json {
            serde_json::to_writer_pretty(&mut out, &parts)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{:>4}  {:>14}  {:>14}  {:<6}  {:<8}  label", "part", "start", "size", "fs", "readable")?;
            let width = parts.iter().map(|p| p.spec().len()).max().unwrap_or(4).max(4);
            for p in &parts {
                let fs = serde_json::to_value(p.fs)?;
                writeln!(
                    out,
                    "{:>width$}  {:>14}  {:>14}  {:<6}  {:<8}  {}",
                    p.spec(),
                    p.start,
                    p.size,
                    fs.as_str().unwrap_or("?"),
                    if p.readable { "yes" } else { "no" },
                    p.label.as_deref().unwrap_or("")
                )?;
            }
        }
        return Ok(out.flush()?);
    };
    let (_, mut fs, path) = open_fs(s, arg)?;
    let top = fs.stat(&path)?;
    let mut printer = Printer::new(out, json);
    if top.kind == Kind::Dir {
        // One directory's entries, sorted by name (at most MAX_DIR_ENTRIES), with symlink targets.
        let mut entries = Vec::new();
        fs.list(&path, &mut |e| {
            if entries.len() >= files::MAX_DIR_ENTRIES {
                bail!("{} has more than {} entries", files::show_path(&path), files::MAX_DIR_ENTRIES);
            }
            entries.push(e);
            Ok(())
        })?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let mut p = path.clone();
            p.push(e.name.clone());
            let target = if e.kind == Kind::Symlink { Some(fs.read_link(&p)?) } else { None };
            printer.entry(&e, target)?;
        }
    } else {
        let target = if top.kind == Kind::Symlink { Some(fs.read_link(&path)?) } else { None };
        printer.entry(&top, target)?;
    }
    printer.end()
}

/// `ls` lines, or one JSON array streamed out.
struct Printer<W: Write> {
    out: W,
    json: bool,
    first: bool,
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

impl<W: Write> Printer<W> {
    fn new(out: W, json: bool) -> Self {
        Printer { out, json, first: true }
    }

    fn entry(&mut self, e: &Entry, target: Option<Vec<u8>>) -> Result<()> {
        let target = target.map(|t| String::from_utf8_lossy(&t).into_owned());
        self.one(e, target)?;
        for st in &e.streams {
            let s = Entry {
                name: format!("{}:{}", e.name, st.name),
                kind: Kind::Stream,
                size: st.size,
                streams: Vec::new(),
                ..e.clone()
            };
            self.one(&s, None)?;
        }
        Ok(())
    }

    fn one(&mut self, e: &Entry, target: Option<String>) -> Result<()> {
        if self.json {
            self.out.write_all(if self.first { b"[\n" } else { b",\n" })?;
            serde_json::to_writer(&mut self.out, &JsonEntry { entry: e, target })?;
        } else {
            let owner = match (e.uid, e.gid) {
                (Some(u), Some(g)) => format!("{u:>5} {g:>5}"),
                _ => format!("{:>5} {:>5}", "-", "-"),
            };
            let mtime = e.mtime.map_or("-".to_string(), |t| kura_imaging::time::format_rfc3339(t.secs));
            let arrow = target.map(|t| format!(" -> {t}")).unwrap_or_default();
            writeln!(self.out, "{} {owner} {:>12} {mtime} {}{arrow}", mode_string(e), e.size, e.name)?;
        }
        self.first = false;
        Ok(())
    }

    fn end(mut self) -> Result<()> {
        if self.json {
            self.out.write_all(if self.first { b"[]\n" } else { b"\n]\n" })?;
        }
        Ok(self.out.flush()?)
    }
}

/// `drwxr-xr-x` as `ls -l` shows it (`s` for an NTFS stream, `?` for a special entry).
fn mode_string(e: &Entry) -> String {
    let mut s = String::with_capacity(10);
    s.push(match e.kind {
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::File => '-',
        Kind::Stream => 's',
        Kind::Special => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (e.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn get_cmd(s: &OpenedSnapshot, arg: &str, to: &std::path::Path, json: bool) -> Result<()> {
    let (_, mut fs, path) = open_fs(s, arg)?;
    let r = get::get(fs.as_mut(), &path, to)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "copied {} files ({} bytes), {} directories, {} symbolic links to {}",
            r.files,
            r.bytes,
            r.dirs,
            r.symlinks,
            r.target.display()
        );
        if r.skipped > 0 {
            println!("skipped {} devices, FIFOs, sockets or reparse points", r.skipped);
        }
        if r.streams_not_copied > 0 {
            println!("{} NTFS alternate data streams not copied (get one as FILE:STREAM)", r.streams_not_copied);
        }
        if !r.owners_kept {
            println!("owners not kept (only root may set them)");
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Found<'a> {
    partition: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume: Option<String>,
    path: String,
    #[serde(flatten)]
    entry: &'a Entry,
}

fn find(s: &OpenedSnapshot, arg: &str, json: bool) -> Result<()> {
    let (which, pattern) = files::split_partition(arg);
    let glob = Glob::new(pattern).map_err(anyhow::Error::msg)?;
    let parts: Vec<PartitionInfo> = match which {
        Some(w) => vec![files::pick_partition(&s.disk, Some(&w))?],
        None => files::partitions(&s.disk).into_iter().filter(|p| p.readable).collect(),
    };
    if parts.is_empty() {
        bail!("snapshot {} has no partition with a readable filesystem (ext4, NTFS, FAT, XFS, btrfs)", s.disk.id());
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    for part in parts {
        let mut fs = files::open(&s.disk, &part)?;
        files::walk(fs.as_mut(), &[], &mut |_, p, e| {
            if !glob.matches(p) {
                return Ok(());
            }
            let path = files::show_path(p);
            if json {
                out.write_all(if first { b"[\n" } else { b",\n" })?;
                let found = Found { partition: part.number, volume: part.volume.clone(), path, entry: e };
                serde_json::to_writer(&mut out, &found)?;
            } else {
                writeln!(out, "{}:{path}", part.spec())?;
            }
            first = false;
            Ok(())
        })
        .with_context(|| format!("partition {}", part.spec()))?;
    }
    if json {
        out.write_all(if first { b"[]\n" } else { b"\n]\n" })?;
    }
    Ok(out.flush()?)
}

#[derive(Serialize)]
struct JsonDifference {
    partition: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume: Option<String>,
    #[serde(flatten)]
    d: Difference,
}

fn diff(a: &OpenedSnapshot, b: &OpenedSnapshot, arg: Option<&str>, content: bool, json: bool) -> Result<()> {
    // (partition of A, partition of B, path)
    let mut jobs = Vec::new();
    match arg {
        Some(arg) => {
            let (which, path) = files::split_partition(arg);
            let pa = files::pick_partition(&a.disk, which.as_ref())?;
            let pb = files::pick_partition(&b.disk, Some(&pa.reference()))?;
            jobs.push((pa, pb, files::parse_path(path)?));
        }
        None => {
            let pbs = files::partitions(&b.disk);
            for pa in files::partitions(&a.disk).into_iter().filter(|p| p.readable) {
                match pbs.iter().find(|pb| pb.reference() == pa.reference() && pb.fs == pa.fs) {
                    Some(pb) => jobs.push((pa, pb.clone(), Vec::new())),
                    None => eprintln!(
                        "partition {}: not in {} with the same filesystem; not compared",
                        pa.spec(),
                        b.disk.id()
                    ),
                }
            }
        }
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    for (pa, pb, path) in jobs {
        let mut fa = files::open(&a.disk, &pa)?;
        let mut fb = files::open(&b.disk, &pb)?;
        files::diff::diff(fa.as_mut(), fb.as_mut(), &path, content, &mut |d| {
            if json {
                out.write_all(if first { b"[\n" } else { b",\n" })?;
                serde_json::to_writer(
                    &mut out,
                    &JsonDifference { partition: pa.number, volume: pa.volume.clone(), d },
                )?;
            } else {
                let sign = match d.change {
                    files::diff::Change::Added => "+",
                    files::diff::Change::Removed => "-",
                    files::diff::Change::Changed => "M",
                };
                let what = if d.what.is_empty() { String::new() } else { format!(" ({})", d.what.join(", ")) };
                writeln!(out, "{sign} {}:{}{what}", pa.spec(), d.path)?;
            }
            first = false;
            Ok(())
        })
        .with_context(|| format!("partition {}", pa.spec()))?;
    }
    if json {
        out.write_all(if first { b"[]\n" } else { b"\n]\n" })?;
    }
    Ok(out.flush()?)
}
