//! Large file trees written straight to disk, for filesystems of hundreds of MiB or more:
//! generated files of cycling sizes (incompressible or log text, streamed from one
//! [`XorShift`]) and real files of this system, taken in a fixed order.

use crate::content::{log_text, XorShift};
use crate::MIB;
use anyhow::Result;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Files of cycling `sizes` in `dir` up to `budget` bytes: pseudo-random (incompressible,
/// `NNNNN.bin`) or log text (`NNNNN.log`).
pub fn generate_files(dir: &Path, budget: u64, sizes: &[u64], rng: &mut XorShift, random: bool) -> Result<()> {
    fs::create_dir_all(dir)?;
    let mut done = 0;
    let mut i = 0;
    while done < budget {
        let len = sizes[i % sizes.len()].min(budget - done);
        let path = dir.join(format!("{i:05}.{}", if random { "bin" } else { "log" }));
        if random {
            write_random(&path, len, rng)?;
        } else {
            write_text(&path, len, rng)?;
        }
        done += len;
        i += 1;
    }
    Ok(())
}

/// A file of `len` incompressible bytes.
pub fn write_random(path: &Path, len: u64, rng: &mut XorShift) -> Result<()> {
    let mut f = File::create(path)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// A file of `len` bytes of log text ([`log_text`]).
pub fn write_text(path: &Path, len: u64, rng: &mut XorShift) -> Result<()> {
    let mut f = File::create(path)?;
    let mut left = len;
    while left > 0 {
        let n = left.min(4 * MIB);
        f.write_all(log_text(n, rng).as_bytes())?;
        left -= n;
    }
    Ok(())
}

/// Regular files under `root`, relative to it, sorted.
pub fn regular_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path().strip_prefix(root)?.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Real files of this system, each taken once (by inode), in a fixed order.
pub struct SystemFiles {
    stack: Vec<PathBuf>,
    seen: HashSet<(u64, u64)>,
}

impl Default for SystemFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemFiles {
    pub fn new() -> SystemFiles {
        let roots = ["/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/bin", "/usr/lib", "/usr/libexec", "/usr/sbin"];
        SystemFiles { stack: roots.iter().rev().map(PathBuf::from).collect(), seen: HashSet::new() }
    }

    /// The next readable regular file not yet taken, with its size.
    fn next_file(&mut self) -> Option<(PathBuf, u64)> {
        while let Some(p) = self.stack.pop() {
            let Ok(m) = fs::symlink_metadata(&p) else { continue };
            if !self.seen.insert((m.dev(), m.ino())) {
                continue;
            }
            if m.is_dir() {
                let Ok(rd) = fs::read_dir(&p) else { continue };
                let mut children: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                children.sort();
                self.stack.extend(children.into_iter().rev());
            } else if m.is_file() && m.len() > 0 {
                return Some((p, m.len()));
            }
        }
        None
    }

    /// Copies files into `dest` (keeping their paths) until `budget` bytes; returns the bytes.
    pub fn copy_into(&mut self, dest: &Path, budget: u64) -> Result<u64> {
        let mut copied = 0;
        while copied < budget {
            let Some((p, len)) = self.next_file() else { break };
            if len > budget - copied {
                continue;
            }
            let to = dest.join(p.strip_prefix("/").unwrap_or(&p));
            fs::create_dir_all(to.parent().unwrap_or(dest))?;
            if fs::copy(&p, &to).is_ok() {
                copied += len;
            } else {
                let _ = fs::remove_file(&to);
            }
        }
        Ok(copied)
    }

    /// Concatenates files into one pack file of about `budget` bytes (topped up with log text if
    /// the system runs out).
    pub fn pack_into(&mut self, dest: &Path, budget: u64) -> Result<()> {
        let mut out = std::io::BufWriter::new(File::create(dest)?);
        let mut written = 0;
        while written < budget {
            let Some((p, len)) = self.next_file() else { break };
            if len > budget - written {
                continue;
            }
            if let Ok(data) = fs::read(&p) {
                out.write_all(&data)?;
                written += data.len() as u64;
            }
        }
        out.flush()?;
        drop(out);
        if written < budget {
            let mut rng = XorShift::new(written);
            let mut f = OpenOptions::new().append(true).open(dest)?;
            f.write_all(log_text(budget - written, &mut rng).as_bytes())?;
        }
        Ok(())
    }
}
