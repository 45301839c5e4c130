//! What changed between two snapshots of a filesystem: entries added, removed, and changed.
//!
//! "Changed" is decided from metadata alone by default: kind, size, mtime (to the nanosecond),
//! permission bits, owner, a symlink's target, an NTFS file's stream names and sizes. That reads
//! only inodes and directories, so it fetches little of either snapshot. It misses a rewrite
//! that kept both the size and the mtime (a tool that restores mtimes on purpose); `--content`
//! also compares the SHA-256 of every regular file whose metadata is equal, reading both
//! copies (much more data fetched). A directory is "changed" by its mode or owner only: its
//! size and mtime change whenever an entry is added or removed, which is listed as such.
//! Below an added or removed directory every entry is listed too.

use super::{show_path, sorted_children, walk, Entry, FsPath, FsReader, Kind, MAX_DEPTH};
use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub path: String,
    pub change: Change,
    pub kind: Kind,
    /// For `changed`: what differs (`kind`, `size`, `mtime`, `mode`, `owner`, `target`,
    /// `streams`, `content`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
}

/// An entry of one directory in the older and the newer snapshot (at least one is present).
type Pair = (Option<Entry>, Option<Entry>);

/// Compares `path` of `a` (older) with `path` of `b` (newer), handing each difference to `out`
/// in path order.
pub fn diff(
    a: &mut dyn FsReader,
    b: &mut dyn FsReader,
    path: &FsPath,
    content: bool,
    out: &mut dyn FnMut(Difference) -> Result<()>,
) -> Result<()> {
    let (ea, eb) = (a.stat(path)?, b.stat(path)?);
    if ea.kind != Kind::Dir || eb.kind != Kind::Dir {
        return compare(a, b, path, &ea, &eb, content, out);
    }
    // Pairs of (older, newer) entries of one directory, in reverse name order (popped).
    let mut stack: Vec<(Vec<String>, Vec<Pair>)> = vec![(path.to_vec(), merged(a, b, path)?)];
    while let Some((dir, pairs)) = stack.last_mut() {
        let Some(pair) = pairs.pop() else {
            stack.pop();
            continue;
        };
        let mut p = dir.clone();
        match pair {
            (Some(ea), None) => {
                p.push(ea.name.clone());
                subtree(a, &p, &ea, Change::Removed, out)?;
            }
            (None, Some(eb)) => {
                p.push(eb.name.clone());
                subtree(b, &p, &eb, Change::Added, out)?;
            }
            (Some(ea), Some(eb)) => {
                p.push(ea.name.clone());
                if ea.kind == Kind::Dir && eb.kind == Kind::Dir {
                    compare(a, b, &p, &ea, &eb, content, out)?;
                    if p.len() > MAX_DEPTH {
                        bail!("{} is deeper than {MAX_DEPTH} levels", show_path(&p));
                    }
                    let children = merged(a, b, &p)?;
                    stack.push((p, children));
                } else if ea.kind != eb.kind && (ea.kind == Kind::Dir || eb.kind == Kind::Dir) {
                    // A directory replaced by a file or the reverse: its contents went or came.
                    subtree(a, &p, &ea, Change::Removed, out)?;
                    subtree(b, &p, &eb, Change::Added, out)?;
                } else {
                    compare(a, b, &p, &ea, &eb, content, out)?;
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// The entry and, for a directory, everything below it, all as `change`.
fn subtree(
    fs: &mut dyn FsReader,
    path: &FsPath,
    e: &Entry,
    change: Change,
    out: &mut dyn FnMut(Difference) -> Result<()>,
) -> Result<()> {
    out(Difference { path: show_path(path), change, kind: e.kind, what: Vec::new() })?;
    if e.kind == Kind::Dir {
        walk(fs, path, &mut |_, p, e| out(Difference { path: show_path(p), change, kind: e.kind, what: Vec::new() }))?;
    }
    Ok(())
}

/// Both directories' entries paired by name, in reverse name order.
fn merged(a: &mut dyn FsReader, b: &mut dyn FsReader, path: &FsPath) -> Result<Vec<Pair>> {
    // Both come sorted in reverse: merge from their ends (smallest names first), then reverse.
    let (mut xa, mut xb) = (sorted_children(a, path)?, sorted_children(b, path)?);
    let mut v = Vec::with_capacity(xa.len().max(xb.len()));
    loop {
        let order = match (xa.last(), xb.last()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.name.cmp(&y.name),
        };
        v.push(match order {
            std::cmp::Ordering::Less => (xa.pop(), None),
            std::cmp::Ordering::Greater => (None, xb.pop()),
            std::cmp::Ordering::Equal => (xa.pop(), xb.pop()),
        });
    }
    v.reverse();
    Ok(v)
}

fn compare(
    a: &mut dyn FsReader,
    b: &mut dyn FsReader,
    path: &FsPath,
    ea: &Entry,
    eb: &Entry,
    content: bool,
    out: &mut dyn FnMut(Difference) -> Result<()>,
) -> Result<()> {
    let mut what = Vec::new();
    if ea.kind != eb.kind {
        what.push("kind");
    } else if ea.kind != Kind::Dir {
        if ea.size != eb.size {
            what.push("size");
        }
        if ea.mtime != eb.mtime {
            what.push("mtime");
        }
    }
    if ea.mode != eb.mode {
        what.push("mode");
    }
    if (ea.uid, ea.gid) != (eb.uid, eb.gid) {
        what.push("owner");
    }
    if ea.streams != eb.streams {
        what.push("streams");
    }
    if what.is_empty() && ea.kind == Kind::Symlink && a.read_link(path)? != b.read_link(path)? {
        what.push("target");
    }
    if what.is_empty() && content && ea.kind == Kind::File && digest(a, path)? != digest(b, path)? {
        what.push("content");
    }
    if what.is_empty() {
        return Ok(());
    }
    out(Difference { path: show_path(path), change: Change::Changed, kind: eb.kind, what })
}

fn digest(fs: &mut dyn FsReader, path: &FsPath) -> Result<[u8; 32]> {
    struct Hashing(Sha256);
    impl Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    fs.read_file(path, &mut h)?;
    Ok(h.0.finalize().into())
}
