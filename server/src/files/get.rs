//! Copying a file, a stream or a whole tree out of a snapshot into a local directory.
//!
//! Only new paths are written: the top entry must not exist yet, and everything below it is
//! created inside directories this copy made (`create_new`, `create_dir`), so an existing
//! file or a symbolic link at the destination is never written through. Each entry gets its
//! permission bits and mtime; its owner too when the process may (root), else the owner is
//! left as the caller. Symbolic links are made as symbolic links (never followed); devices,
//! FIFOs, sockets and NTFS reparse points are skipped and counted. A directory's mode and mtime
//! are set after its contents are written.

use super::{walk, Entry, FsPath, FsReader, Kind};
use anyhow::{bail, Context, Result};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use serde::Serialize;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Serialize)]
pub struct GetReport {
    /// Where the copy is (the top entry).
    pub target: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Special entries not copied (devices, FIFOs, sockets, reparse points).
    pub skipped: u64,
    /// NTFS alternate data streams of the copied files, not copied (get one by its
    /// `FILE:STREAM` path).
    pub streams_not_copied: u64,
    /// Whether every entry's owner was set (only possible as root).
    pub owners_kept: bool,
}

/// Copies `path` of `fs` into directory `to` (created if missing) as `to/NAME`; the root
/// (empty `path`) is copied as `to`'s contents, `to` being new or empty.
pub fn get(fs: &mut dyn FsReader, path: &FsPath, to: &Path) -> Result<GetReport> {
    let top = fs.stat(path)?;
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut r = GetReport { owners_kept: true, ..GetReport::default() };
    let dest = match path.last() {
        Some(name) => to.join(name),
        None => {
            if fs::read_dir(to)?.next().is_some() {
                bail!("{} is not empty: a whole filesystem is copied only into a new or empty directory", to.display());
            }
            to.to_path_buf()
        }
    };
    r.target = dest.clone();
    if top.kind != Kind::Dir {
        copy_one(fs, path, &top, &dest, &mut r)?;
        return Ok(r);
    }
    if !path.is_empty() {
        fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?;
    }
    r.dirs += 1;
    // Directories get their mode and mtime last, deepest first.
    let mut dirs: Vec<(PathBuf, Entry)> = vec![(dest.clone(), top)];
    let base = path.len();
    walk(fs, path, &mut |fs, p, e| {
        let local = p[base..].iter().fold(dest.clone(), |d, c| d.join(c));
        if e.kind == Kind::Dir {
            fs::create_dir(&local).with_context(|| format!("creating {}", local.display()))?;
            r.dirs += 1;
            dirs.push((local, e.clone()));
            Ok(())
        } else {
            copy_one(fs, p, e, &local, &mut r)
        }
    })?;
    for (local, e) in dirs.iter().rev() {
        set_owner(local, e, &mut r)?;
        fs::set_permissions(local, fs::Permissions::from_mode(e.mode))
            .with_context(|| format!("setting the mode of {}", local.display()))?;
        set_mtime(local, e)?;
    }
    Ok(r)
}

/// Copies one non-directory entry to the new path `local`.
fn copy_one(fs: &mut dyn FsReader, path: &FsPath, e: &Entry, local: &Path, r: &mut GetReport) -> Result<()> {
    match e.kind {
        Kind::File | Kind::Stream => {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(local)
                .with_context(|| format!("creating {}", local.display()))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            r.bytes += fs.read_file(path, &mut w)?;
            w.flush()?;
            drop(w);
            r.files += 1;
            r.streams_not_copied += e.streams.len() as u64;
            set_owner(local, e, r)?;
            fs::set_permissions(local, fs::Permissions::from_mode(e.mode))
                .with_context(|| format!("setting the mode of {}", local.display()))?;
        }
        Kind::Symlink => {
            let target = fs.read_link(path)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), local)
                .with_context(|| format!("creating the symbolic link {}", local.display()))?;
            r.symlinks += 1;
            set_owner(local, e, r)?;
        }
        Kind::Special => {
            r.skipped += 1;
            return Ok(());
        }
        Kind::Dir => unreachable!("directories are made by the walk"),
    }
    set_mtime(local, e)
}

/// The entry's owner, where it has one and the process may set it (root).
fn set_owner(local: &Path, e: &Entry, r: &mut GetReport) -> Result<()> {
    if e.uid.is_none() && e.gid.is_none() {
        return Ok(());
    }
    match std::os::unix::fs::lchown(local, e.uid, e.gid) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            r.owners_kept = false;
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("setting the owner of {}", local.display())),
    }
}

/// The entry's mtime on `local` itself (a symbolic link's own time, not its target's).
fn set_mtime(local: &Path, e: &Entry) -> Result<()> {
    let Some(t) = e.mtime else { return Ok(()) };
    let mtime = TimeSpec::new(t.secs, t.nanos as i64);
    utimensat(nix::fcntl::AT_FDCWD, local, &TimeSpec::UTIME_OMIT, &mtime, UtimensatFlags::NoFollowSymlink)
        .with_context(|| format!("setting the mtime of {}", local.display()))
}
