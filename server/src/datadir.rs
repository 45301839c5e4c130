//! The engine's data directory is private: what `kura serve` checks before it trusts one, and
//! `kura admin fix-permissions`, which makes an existing one private.
//!
//! Startup ([`check`]) refuses, with the path and the fix in the message:
//! - a data directory, or a directory in it that the engine writes in (`tls/`, `store/` and
//!   the store's own directories), that another user owns or that group or others may write;
//! - a parent of the data directory that another user owns, or that group or others may write
//!   without the sticky bit (they could swap the directory);
//! - any entry of those directories owned by another user (it was planted: Kura did not make it);
//! - a secret (`admin.token`, `secrets.key`, `tls/key.pem`) that is a symbolic link, or that
//!   group or others may read.
//!
//! What is readable by others but otherwise sound (a data directory made 0755 by an older
//! Kura) is a warning naming `kura admin fix-permissions`. Files are created by
//! [`kura_catalogs::private`]: directories 0700, files 0600, `O_EXCL|O_NOFOLLOW`.

use anyhow::{Context, Result};
use kura_catalogs::private::{self, DIR_MODE, FILE_MODE};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The secrets directly under the data directory (relative paths).
pub const SECRETS: [&str; 3] = ["admin.token", "secrets.key", "tls/key.pem"];

/// The directories under the data directory the engine creates files in (relative paths).
const WRITTEN_DIRS: [&str; 8] =
    ["tls", "store", "store/chunks", "store/snapshots", "store/tmp", "store/quarantine", "cache", "screenshots"];

/// Creates the data directory if missing (0700) and checks it (see the module docs). Returns
/// warnings (readable by others) to print.
pub fn prepare(data: &Path) -> Result<Vec<String>> {
    private::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    check(data)
}

/// Checks an existing data directory; see the module docs.
pub fn check(data: &Path) -> Result<Vec<String>> {
    let refuse = |e: private::Untrusted| anyhow::anyhow!("refusing the data directory {}: {e}", data.display());
    private::check_ancestors(data).map_err(refuse)?;
    let mut readable = Vec::new();
    let mut dirs = vec![data.to_path_buf()];
    dirs.extend(WRITTEN_DIRS.iter().map(|d| data.join(d)).filter(|d| d.symlink_metadata().is_ok()));
    for dir in &dirs {
        if private::check_dir(dir).map_err(refuse)? {
            readable.push(dir.clone());
        }
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let meta = entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?;
            private::check_owner(&entry.path(), &meta).map_err(refuse)?;
        }
    }
    for name in SECRETS {
        let path = data.join(name);
        if path.symlink_metadata().is_ok() {
            private::open_secret(&path, 0o077).map_err(refuse)?;
        }
    }
    Ok(if readable.is_empty() {
        Vec::new()
    } else {
        let list: Vec<String> = readable.iter().map(|p| p.display().to_string()).collect();
        vec![format!(
            "WARNING: group or others may read {} (backups, catalog); make the data directory \
             private with `kura admin fix-permissions --data {}` (with the engine stopped)",
            list.join(", "),
            data.display()
        )]
    })
}

/// What [`fix_permissions`] did.
#[derive(Debug, Default, serde::Serialize)]
pub struct FixReport {
    /// Directories and files looked at.
    pub checked: u64,
    /// Whose mode was changed (to 0700 / 0600).
    pub fixed: u64,
    /// Entries owned by another user: left alone, to be removed by hand.
    pub foreign: Vec<PathBuf>,
    /// Symbolic links: not followed, left alone.
    pub symlinks: Vec<PathBuf>,
}

/// Makes every directory under `data` (and `data` itself) 0700 and every file 0600, without
/// following symbolic links; entries another user owns are listed, not changed.
pub fn fix_permissions(data: &Path) -> Result<FixReport> {
    let mut report = FixReport::default();
    let mut todo = vec![data.to_path_buf()];
    let me = private::euid();
    while let Some(path) = todo.pop() {
        let link = path.symlink_metadata().with_context(|| format!("reading {}", path.display()))?;
        if link.file_type().is_symlink() && path != data {
            report.symlinks.push(path);
            continue;
        }
        report.checked += 1;
        // Opened without following links and changed through the descriptor: what is checked
        // is what is changed.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .or_else(|e| if path == data { std::fs::File::open(&path) } else { Err(e) })
            .with_context(|| format!("opening {}", path.display()))?;
        let meta = f.metadata().with_context(|| format!("reading {}", path.display()))?;
        if meta.uid() != me {
            report.foreign.push(path);
            continue;
        }
        let want = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
        if meta.mode() & 0o7777 != want {
            f.set_permissions(std::fs::Permissions::from_mode(want))
                .with_context(|| format!("changing the mode of {}", path.display()))?;
            report.fixed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))? {
                todo.push(entry.with_context(|| format!("listing {}", path.display()))?.path());
            }
        }
    }
    report.foreign.sort();
    report.symlinks.sort();
    Ok(report)
}
