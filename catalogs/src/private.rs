//! Private files and directories: how Kura creates what it writes (explicit modes, never
//! following a planted symbolic link) and how it checks what it finds before trusting it.
//!
//! - Directories are created [`DIR_MODE`] (0700) and files [`FILE_MODE`] (0600), given as the
//!   explicit mode of `mkdir(2)` / `open(2)`: the process umask can only narrow them.
//! - New files are opened `O_CREAT|O_EXCL|O_NOFOLLOW` ([`create_new`]): a name that exists,
//!   including a symbolic link planted by someone else, is an error and its target is never
//!   written. Files that are rewritten (a token, `serve.json`) are replaced by a new file and a
//!   `rename(2)` ([`replace`]), which replaces a link itself, never its target.
//! - Secrets are read through [`open_secret`]: not a symbolic link, a regular file, owned by
//!   the engine's user and not readable by group or others (checked on the open descriptor).
//! - [`check_dir`] refuses a directory that another user owns or that group or others may
//!   write; [`check_ancestors`] refuses a path whose parents let another user rename it away.
//!
//! The data directory's layout (which names are secrets) lives with its owner, `kura serve`.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The mode of every directory Kura creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file Kura creates.
pub const FILE_MODE: u32 = 0o600;

/// A file or directory Kura refuses to trust, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct Untrusted {
    pub path: PathBuf,
    pub message: String,
}

fn untrusted(path: &Path, message: impl Into<String>) -> Untrusted {
    Untrusted { path: path.to_path_buf(), message: message.into() }
}

/// The effective user id of this process: the owner every private file must have.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn nofollow() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32
}

/// Creates `path` and its missing parents with mode [`DIR_MODE`]; existing ones are left alone.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// Creates a new file with mode [`FILE_MODE`] (`O_EXCL|O_NOFOLLOW`): fails if anything,
/// a symbolic link included, already has the name.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).custom_flags(nofollow()).open(path)
}

/// Creates a new private file holding `bytes`, synced ([`create_new`]).
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = create_new(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `path` with a new private file holding `bytes`: written beside it under a fresh
/// name ([`create_new`]), synced, renamed over it (a symbolic link at `path` is replaced, its
/// target untouched), and the directory synced.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let r = write_new(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r?;
    File::open(dir).and_then(|d| d.sync_all())
}

/// Opens `path` for reading as a secret: refuses a symbolic link, anything but a regular
/// file, a file owned by another user, and a file whose mode has any of `forbidden` (0o077:
/// group or others may read or write it). The checks are made on the open descriptor.
pub fn open_secret(path: &Path, forbidden: u32) -> Result<File, Untrusted> {
    let f = OpenOptions::new().read(true).custom_flags(nofollow()).open(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            untrusted(path, "is a symbolic link; Kura never follows one for a secret: remove it")
        } else {
            untrusted(path, format!("cannot open it: {e}"))
        }
    })?;
    let meta = f.metadata().map_err(|e| untrusted(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(untrusted(path, "is not a regular file"));
    }
    check_owner(path, &meta)?;
    if meta.mode() & forbidden != 0 {
        return Err(untrusted(
            path,
            format!(
                "mode {:o} lets others read or change it; `chmod 600 {}` (or replace it)",
                meta.mode() & 0o777,
                path.display()
            ),
        ));
    }
    Ok(f)
}

/// Reads a secret through [`open_secret`].
pub fn read_secret(path: &Path, forbidden: u32) -> Result<Vec<u8>, Untrusted> {
    let mut f = open_secret(path, forbidden)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(|e| untrusted(path, format!("cannot read it: {e}")))?;
    Ok(out)
}

fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == uid.to_string()).then(|| format!("uid {uid} ({name})"))
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Refuses `meta` (of `path`) unless this process's user owns it.
pub fn check_owner(path: &Path, meta: &Metadata) -> Result<(), Untrusted> {
    let me = euid();
    if meta.uid() != me {
        return Err(untrusted(
            path,
            format!(
                "is owned by {}, not by the engine's user ({}): Kura did not make it; remove it, \
                 and check who could write to its directory",
                user_name(meta.uid()),
                user_name(me)
            ),
        ));
    }
    Ok(())
}

/// Checks a directory Kura writes in: it (and, if it is a symbolic link, the link) must be
/// owned by this process's user and not writable by group or others. Returns whether group
/// or others may read or enter it (allowed, but they can then read what is inside).
pub fn check_dir(path: &Path) -> Result<bool, Untrusted> {
    let link = std::fs::symlink_metadata(path).map_err(|e| untrusted(path, e.to_string()))?;
    check_owner(path, &link)?;
    let meta = if link.file_type().is_symlink() {
        std::fs::metadata(path).map_err(|e| untrusted(path, e.to_string()))?
    } else {
        link
    };
    if !meta.is_dir() {
        return Err(untrusted(path, "is not a directory"));
    }
    check_owner(path, &meta)?;
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(
            path,
            format!(
                "mode {:o} lets group or others create and replace files in it; `chmod 700 {}`, \
                 then check what is inside (`kura admin fix-permissions`)",
                meta.mode() & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(meta.mode() & 0o077 != 0)
}

/// Checks every parent of `path` (resolved): each must be owned by root or this process's
/// user, and not writable by group or others unless sticky (like `/tmp`), so that no other
/// user can rename `path` away and put their own directory in its place.
pub fn check_ancestors(path: &Path) -> Result<(), Untrusted> {
    let real = std::fs::canonicalize(path).map_err(|e| untrusted(path, e.to_string()))?;
    let me = euid();
    for dir in real.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| untrusted(dir, e.to_string()))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(untrusted(
                dir,
                format!(
                    "a parent of {} is owned by {}, who could replace it; move the data elsewhere",
                    path.display(),
                    user_name(meta.uid())
                ),
            ));
        }
        if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(untrusted(
                dir,
                format!(
                    "a parent of {} has mode {:o}: group or others could replace it; \
                     `chmod go-w {}` or move the data elsewhere",
                    path.display(),
                    meta.mode() & 0o7777,
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn created_dirs_and_files_are_private_whatever_the_umask_allows() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        create_dir_all(&d).unwrap();
        assert_eq!((mode(&dir.path().join("a")), mode(&d)), (0o700, 0o700));
        write_new(&d.join("f"), b"x").unwrap();
        assert_eq!(mode(&d.join("f")), 0o600);
        replace(&d.join("f"), b"y").unwrap();
        assert_eq!((mode(&d.join("f")), std::fs::read(d.join("f")).unwrap()), (0o600, b"y".to_vec()));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join("token");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write_new(&link, b"secret").is_err());
        let e = read_secret(&link, 0o077).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        replace(&link, b"secret").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }

    #[test]
    fn readable_secrets_and_writable_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        write_new(&f, b"k").unwrap();
        assert_eq!(read_secret(&f, 0o077).unwrap(), b"k");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&f, 0o077).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert_eq!(read_secret(&f, 0o002).unwrap(), b"k", "only the forbidden bits count");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!check_dir(dir.path()).unwrap());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_dir(dir.path()).unwrap());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
        // The world-writable parent now makes its children untrusted; /tmp (sticky) does not.
        let e = check_ancestors(&f).unwrap_err();
        assert!(e.to_string().contains("go-w"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_ancestors(&f).unwrap();
    }
}
