//! `kura files`: the files of a snapshot, read without restoring, mounting or root.
//!
//! - [`partition`]: one partition (or LVM logical volume, named `PART/VG/LV`) of the lazy
//!   snapshot disk ([`crate::snapshot_disk`]) as `Read + Seek`: only the chunks holding the
//!   metadata and files asked for are fetched.
//! - [`ext4`], [`ntfs`], [`fat`]: one reader per filesystem behind [`FsReader`] (crates
//!   `ext4-view`, `ntfs`, `fatfs`); [`xfs`], [`btrfs`]: Kura's own read-only decoders.
//! - [`glob`]: the patterns of `kura files find`.
//! - [`get`]: copying a file or a tree out (mode, mtime, ownership where allowed, symlinks as
//!   symlinks). [`diff`]: added, removed and changed files between two snapshots.
//!
//! Bounds: a path has at most [`MAX_DEPTH`] components; directory listings are streamed to
//! the caller, and a walk holds at most [`MAX_DIR_ENTRIES`] entries of one directory at once;
//! symbolic links are never followed (neither inside a path asked for nor while walking), so
//! a link loop cannot make a walk endless.

pub mod btrfs;
pub mod diff;
pub mod ext4;
pub mod fat;
pub mod get;
pub mod glob;
pub mod ntfs;
pub mod partition;
pub mod xfs;

use crate::snapshot_disk::SnapshotDisk;
use anyhow::{bail, Context, Result};
use kura_imaging::fs::FsKind;
use partition::PartitionReader;
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;

/// Most components a path may have (deeper entries are refused, not walked).
pub const MAX_DEPTH: usize = 256;
/// Most entries of one directory a walk (`get`, `find`, `diff`) holds at once.
pub const MAX_DIR_ENTRIES: usize = 1_000_000;

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A device, FIFO, socket, or an NTFS reparse point (junction, link): listed, never
    /// followed, not copied.
    Special,
    /// An NTFS alternate data stream, listed as `FILE:STREAM` after its file.
    Stream,
}

/// A modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mtime {
    pub secs: i64,
    pub nanos: u32,
}

/// An NTFS alternate data stream of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamInfo {
    pub name: String,
    pub size: u64,
}

/// One directory entry (or the entry a path names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    /// Bytes of a file's data (of a symlink: its target's length).
    pub size: u64,
    /// Permission bits (0o7777); NTFS and FAT: 0o444 / 0o644 from the read-only flag, 0o755
    /// for directories.
    pub mode: u32,
    /// Owner, where the filesystem has one (ext4, btrfs).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<Mtime>,
    /// NTFS alternate data streams.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamInfo>,
}

/// A path inside a filesystem: its components, the root being empty.
pub type FsPath = [String];

/// One filesystem's files. Paths never follow symbolic links: a symlink in the middle of a
/// path is an error, at its end it is the entry itself.
pub trait FsReader {
    /// The entry `path` names (the root directory for an empty path).
    fn stat(&mut self, path: &FsPath) -> Result<Entry>;
    /// Each entry of directory `path` but `.` and `..`, handed to `f` as it is read.
    fn list(&mut self, path: &FsPath, f: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()>;
    /// A symbolic link's target, as stored.
    fn read_link(&mut self, path: &FsPath) -> Result<Vec<u8>>;
    /// Copies a regular file's data to `out`; returns the bytes. On NTFS, a last component
    /// `FILE:STREAM` names an alternate data stream.
    fn read_file(&mut self, path: &FsPath, out: &mut dyn Write) -> Result<u64>;
}

/// A partition of a snapshot, or a logical volume of an LVM physical volume in one, as `kura
/// files ls SNAPSHOT` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    pub number: u32,
    /// `VG/LV` for a logical volume of the PV in partition `number`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The partition's place on the disk (of a logical volume: its size; `start` is that of
    /// its first piece).
    pub start: u64,
    pub size: u64,
    pub fs: FsKind,
    pub label: Option<String>,
    /// Whether `kura files` can read its files.
    pub readable: bool,
    /// A logical volume's pieces on the disk (`(offset, disk_at, len)`).
    #[serde(skip)]
    pieces: Option<Vec<(u64, u64, u64)>>,
}

impl PartitionInfo {
    /// How arguments name it: `3`, or `3/VG/LV` for a logical volume.
    pub fn spec(&self) -> String {
        match &self.volume {
            Some(v) => format!("{}/{v}", self.number),
            None => self.number.to_string(),
        }
    }

    /// The reference [`pick_partition`] finds it by.
    pub fn reference(&self) -> VolumeRef {
        VolumeRef { number: self.number, volume: self.volume.clone() }
    }

    fn reader(&self, disk: &Arc<SnapshotDisk>) -> Result<PartitionReader> {
        match &self.pieces {
            Some(pieces) => PartitionReader::pieces(disk.clone(), pieces.clone(), self.size),
            None => PartitionReader::new(disk.clone(), self.start, self.size),
        }
    }
}

/// A partition (`3`) or a logical volume in one (`3/VG/LV`), as an argument names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRef {
    pub number: u32,
    /// `VG/LV`.
    pub volume: Option<String>,
}

/// Whether `kura files` has a reader for `fs`.
pub fn readable(fs: FsKind) -> bool {
    matches!(fs, FsKind::Ext4 | FsKind::Ntfs | FsKind::Fat | FsKind::Xfs | FsKind::Btrfs)
}

/// The snapshot's partitions, by number, each LVM physical volume followed by its logical
/// volumes (a plain one with the filesystem its signature shows; one that is not plain —
/// thin, snapshot store, RAID part, continuing on another PV — as raw, not readable). A PV
/// whose metadata cannot be read lists no volumes (a warning on stderr).
pub fn partitions(disk: &Arc<SnapshotDisk>) -> Vec<PartitionInfo> {
    let mut v: Vec<PartitionInfo> = disk
        .manifest()
        .regions
        .iter()
        .filter_map(|r| {
            Some(PartitionInfo {
                number: r.partition?,
                volume: None,
                start: r.start,
                size: r.size,
                fs: r.fs,
                label: r.label.clone(),
                readable: readable(r.fs),
                pieces: None,
            })
        })
        .collect();
    v.sort_by_key(|p| p.number);
    let mut out = Vec::with_capacity(v.len());
    for p in v {
        let pv = (p.fs == FsKind::Lvm).then(|| p.clone());
        out.push(p);
        if let Some(pv) = pv {
            match logical_volumes(disk, &pv) {
                Ok(lvs) => out.extend(lvs),
                Err(e) => eprintln!("warning: partition {}: its LVM volumes cannot be listed: {e:#}", pv.number),
            }
        }
    }
    out
}

/// The logical volumes of the LVM physical volume `pv`.
fn logical_volumes(disk: &Arc<SnapshotDisk>, pv: &PartitionInfo) -> Result<Vec<PartitionInfo>> {
    let mut r = pv.reader(disk)?;
    let lvs = kura_imaging::fs::logical_volumes(&mut r, pv.size).map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    for lv in lvs {
        let pieces: Vec<(u64, u64, u64)> = lv.pieces.iter().map(|&(o, at, n)| (o, pv.start + at, n)).collect();
        let mut info = PartitionInfo {
            number: pv.number,
            volume: Some(format!("{}/{}", lv.vg, lv.name)),
            start: pieces.first().map_or(pv.start, |p| p.1),
            size: lv.size,
            fs: FsKind::Raw,
            label: lv.not_plain.clone(),
            readable: false,
            pieces: Some(pieces),
        };
        if lv.not_plain.is_none() {
            if let Ok(mut r) = info.reader(disk) {
                info.fs = kura_imaging::fs::detect_filesystem(&mut r, lv.size);
                info.readable = readable(info.fs);
            }
        }
        out.push(info);
    }
    Ok(out)
}

/// Partition or logical volume `which`, or without one the first readable filesystem.
pub fn pick_partition(disk: &Arc<SnapshotDisk>, which: Option<&VolumeRef>) -> Result<PartitionInfo> {
    let parts = partitions(disk);
    match which {
        Some(r) => parts.into_iter().find(|p| p.number == r.number && p.volume == r.volume).with_context(|| {
            let what = match &r.volume {
                Some(v) => format!("logical volume {v} in partition {}", r.number),
                None => format!("partition {}", r.number),
            };
            format!("snapshot {} has no {what} (`kura files ls {}` lists them)", disk.id(), disk.id())
        }),
        None => parts.into_iter().find(|p| p.readable).with_context(|| {
            format!("snapshot {} has no partition with a readable filesystem (ext4, NTFS, FAT, XFS, btrfs)", disk.id())
        }),
    }
}

/// The reader for a partition's filesystem; a clear error for one Kura cannot read.
pub fn open(disk: &Arc<SnapshotDisk>, part: &PartitionInfo) -> Result<Box<dyn FsReader>> {
    let r = part.reader(disk)?;
    let n = part.spec();
    Ok(match part.fs {
        FsKind::Ext4 => Box::new(ext4::Ext4Reader::open(r).with_context(|| format!("partition {n}: ext4"))?),
        FsKind::Ntfs => Box::new(ntfs::NtfsReader::open(r).with_context(|| format!("partition {n}: NTFS"))?),
        FsKind::Fat => Box::new(fat::FatReader::open(r).with_context(|| format!("partition {n}: FAT"))?),
        FsKind::Xfs => Box::new(xfs::XfsReader::open(r).with_context(|| format!("partition {n}: XFS"))?),
        FsKind::Btrfs => Box::new(btrfs::BtrfsReader::open(r).with_context(|| format!("partition {n}: btrfs"))?),
        FsKind::Lvm => bail!(
            "files: partition {n} is an LVM physical volume: name one of its logical volumes, {n}/VG/LV \
             (`kura files ls SNAPSHOT` lists them)"
        ),
        FsKind::Md => bail!("files: md RAID members are not readable yet (partition {n})"),
        FsKind::Swap => bail!("files: partition {n} is swap, it holds no files"),
        FsKind::Raw => match &part.label {
            Some(why) if part.volume.is_some() => bail!("files: logical volume {n} is not readable: {why}"),
            _ => bail!("files: partition {n} holds no filesystem Kura recognised (captured raw)"),
        },
    })
}

/// `[PARTITION[/VG/LV]:]PATH` split: `2:/etc/passwd` → (partition 2, "/etc/passwd"),
/// `3/rhel/root:/etc` → (logical volume rhel/root of partition 3, "/etc"). A leading number,
/// optionally followed by `/VG/LV` (LVM's name characters), then `:` names the volume;
/// anything else is all path.
pub fn split_partition(arg: &str) -> (Option<VolumeRef>, &str) {
    if let Some((head, rest)) = arg.split_once(':') {
        let (n, volume) = match head.split_once('/') {
            Some((n, v)) => (n, Some(v)),
            None => (head, None),
        };
        let lvm_name = |s: &str| {
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
        };
        let volume_ok = volume.is_none_or(|v| v.split_once('/').is_some_and(|(vg, lv)| lvm_name(vg) && lvm_name(lv)));
        if !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()) && volume_ok {
            if let Ok(number) = n.parse() {
                return (Some(VolumeRef { number, volume: volume.map(str::to_string) }), rest);
            }
        }
    }
    (None, arg)
}

/// A path's components (`/a//b/` → `[a, b]`); `.` is dropped, `..` and too deep paths are
/// refused.
pub fn parse_path(path: &str) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!("{path:?}: `..` is not allowed in a snapshot path"),
            c => v.push(c.to_string()),
        }
    }
    if v.len() > MAX_DEPTH {
        bail!("{path:?} has more than {MAX_DEPTH} components");
    }
    Ok(v)
}

/// `/a/b` for display.
pub fn show_path(path: &FsPath) -> String {
    if path.is_empty() {
        "/".to_string()
    } else {
        path.iter().fold(String::new(), |mut s, c| {
            s.push('/');
            s.push_str(c);
            s
        })
    }
}

/// Whether a name read from a filesystem can be a path component here (and a file name on
/// this machine): not empty, `.` or `..`, no `/` or NUL. Entries with other names are skipped
/// with a warning by walks.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Walks the tree under `path` depth-first, children in name order, calling `f(path, entry)`
/// for every entry below it (not for `path` itself), `f` getting the reader back to read the
/// entry. Symbolic links are not followed; entries with unusable names are skipped with a
/// warning on stderr.
pub fn walk(fs: &mut dyn FsReader, path: &FsPath, f: &mut WalkFn) -> Result<()> {
    let mut stack: Vec<(Vec<String>, Vec<Entry>)> = vec![(path.to_vec(), sorted_children(fs, path)?)];
    while let Some((dir, entries)) = stack.last_mut() {
        let Some(e) = entries.pop() else {
            stack.pop();
            continue;
        };
        let mut p = dir.clone();
        p.push(e.name.clone());
        f(fs, &p, &e)?;
        if e.kind == Kind::Dir {
            if p.len() > MAX_DEPTH {
                bail!("{} is deeper than {MAX_DEPTH} levels", show_path(&p));
            }
            let children = sorted_children(fs, &p)?;
            stack.push((p, children));
        }
    }
    Ok(())
}

/// What [`walk`] calls for each entry.
pub type WalkFn<'a> = dyn FnMut(&mut dyn FsReader, &FsPath, &Entry) -> Result<()> + 'a;

/// A directory's entries, sorted by name in reverse (walks pop from the end), at most
/// [`MAX_DIR_ENTRIES`]; unusable names are skipped with a warning.
pub fn sorted_children(fs: &mut dyn FsReader, path: &FsPath) -> Result<Vec<Entry>> {
    let mut v = Vec::new();
    fs.list(path, &mut |e| {
        if !safe_name(&e.name) {
            eprintln!("warning: {}: skipped an entry named {:?}", show_path(path), e.name);
            return Ok(());
        }
        if v.len() >= MAX_DIR_ENTRIES {
            bail!("{} has more than {MAX_DIR_ENTRIES} entries", show_path(path));
        }
        v.push(e);
        Ok(())
    })?;
    v.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_prefixes_and_paths() {
        let part = |number: u32, volume: Option<&str>| Some(VolumeRef { number, volume: volume.map(str::to_string) });
        assert_eq!(split_partition("2:/etc/passwd"), (part(2, None), "/etc/passwd"));
        assert_eq!(split_partition("/etc/passwd"), (None, "/etc/passwd"));
        assert_eq!(split_partition("/file.txt:stream"), (None, "/file.txt:stream"));
        assert_eq!(split_partition("5:"), (part(5, None), ""));
        assert_eq!(split_partition("a:/x"), (None, "a:/x"));
        assert_eq!(split_partition("3/rhel/root:/etc"), (part(3, Some("rhel/root")), "/etc"));
        assert_eq!(split_partition("3/vg-0/lv_home.x+:"), (part(3, Some("vg-0/lv_home.x+")), ""));
        for not_a_volume in ["3/rhel:/etc", "3/rhel/root/x:/etc", "3//root:/", "3/r hel/root:/", "x/rhel/root:/"] {
            assert_eq!(split_partition(not_a_volume), (None, not_a_volume));
        }
        assert_eq!(parse_path("/a//b/./c/").unwrap(), ["a", "b", "c"]);
        assert!(parse_path("/").unwrap().is_empty());
        assert!(parse_path("/a/../b").is_err());
        assert!(parse_path(&"/a".repeat(MAX_DEPTH + 1)).is_err());
        assert_eq!(show_path(&parse_path("/a/b").unwrap()), "/a/b");
        assert!(!safe_name("a/b") && !safe_name("..") && !safe_name("") && safe_name("x y"));
    }
}
