//! Restore targets on this machine: an existing block device or image file, or a new image
//! file — the [`RestoreTarget`] the CLI and the agent both restore onto.
//!
//! Sizing opens nothing for writing. A mounted device (or one with a mounted partition) is
//! refused. A new file is only created by [`RestoreTarget::open`], i.e. after the preflight
//! passed, and removed again if the restore then fails.

use crate::error::{Error, IoContext, Result};
use crate::flow::{Opened, RestoreTarget};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// A block device or image file named by its path.
pub struct FileTarget {
    path: PathBuf,
    /// The path may name no file yet: the restore then creates one of the snapshot's size.
    may_create: bool,
    /// What [`RestoreTarget::size`] found: whether the target exists, and its size (or the
    /// size a created one will have).
    planned: Option<(bool, u64)>,
    /// The file this restore created (removed by [`RestoreTarget::discard`]).
    created: Option<PathBuf>,
}

impl FileTarget {
    /// A target that must exist (a disk): the agent's.
    pub fn existing(path: impl Into<PathBuf>) -> FileTarget {
        FileTarget { path: path.into(), may_create: false, planned: None, created: None }
    }

    /// An existing device or file, or else a new image file: the CLI's.
    pub fn existing_or_new(path: impl Into<PathBuf>) -> FileTarget {
        FileTarget { may_create: true, ..FileTarget::existing(path) }
    }
}

impl RestoreTarget for FileTarget {
    type Disk = File;

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&mut self, needed: u64) -> Result<u64> {
        let (exists, size) = match existing_size(&self.path)? {
            Some(size) => (true, size),
            None if self.may_create => (false, needed),
            None => return Err(Error::Target(format!("{} does not exist", self.path.display()))),
        };
        self.planned = Some((exists, size));
        Ok(size)
    }

    fn open(&mut self) -> Result<Opened<File>> {
        let path = self.path.clone();
        match self.planned {
            None => Err(Error::Target(format!("{} was opened before it was sized", path.display()))),
            // Readable too, so the backup GPT can be moved to the end of a larger disk.
            Some((true, _)) => {
                let disk = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .ctx(|| format!("opening {} for writing", path.display()))?;
                Ok(Opened { disk, zeroed: false })
            }
            // A new, sparse (all-zero) image file.
            Some((false, size)) => {
                let disk = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .ctx(|| format!("creating {}", path.display()))?;
                self.created = Some(path.clone());
                if let Err(e) = disk.set_len(size) {
                    self.discard();
                    return Err(Error::io(format!("sizing {} to {size} bytes", path.display()), e));
                }
                Ok(Opened { disk, zeroed: true })
            }
        }
    }

    fn sync(&mut self, disk: &mut File) -> Result<()> {
        disk.sync_all().ctx(|| format!("syncing {}", self.path.display()))
    }

    fn discard(&mut self) {
        if let Some(p) = self.created.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The size of an existing target, or `None` if the path does not exist.
fn existing_size(path: &Path) -> Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            refuse_if_mounted(path)?;
            let mut f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
            Ok(Some(f.seek(SeekFrom::End(0)).ctx(|| format!("sizing {}", path.display()))?))
        }
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Err(Error::Target(format!("{} is neither a block device nor a regular file", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("inspecting {}", path.display()), e)),
    }
}

/// Refuses a block device that is mounted, or any of whose partitions is.
fn refuse_if_mounted(path: &Path) -> Result<()> {
    let dev = std::fs::canonicalize(path).ctx(|| format!("resolving {}", path.display()))?;
    let dev = dev.to_string_lossy().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let Some(source) = line.split_whitespace().next() else { continue };
        let source = std::fs::canonicalize(source)
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_else(|_| source.to_string());
        let is_partition = source.strip_prefix(&dev).is_some_and(|rest| {
            let rest = rest.strip_prefix('p').unwrap_or(rest);
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
        });
        if source == dev || is_partition {
            return Err(Error::Target(format!(
                "{} is in use: {} is mounted; refusing to write to it",
                path.display(),
                source
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_new_file_is_created_only_on_open_and_removed_on_discard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.img");
        let mut t = FileTarget::existing_or_new(&path);
        assert_eq!(t.size(1 << 20).unwrap(), 1 << 20);
        assert!(!path.exists(), "sizing creates nothing");
        let o = t.open().unwrap();
        assert!(o.zeroed);
        assert_eq!(o.disk.metadata().unwrap().len(), 1 << 20);
        t.discard();
        assert!(!path.exists(), "a created file is removed on failure");
    }

    #[test]
    fn an_existing_file_keeps_its_size_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.img");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let mut t = FileTarget::existing_or_new(&path);
        assert_eq!(t.size(1 << 20).unwrap(), 4096);
        let mut o = t.open().unwrap();
        assert!(!o.zeroed);
        o.disk.write_all(b"x").unwrap();
        t.discard();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), 4096, "not truncated, not removed");
        assert_eq!(&after[..2], b"x\x07");
    }

    #[test]
    fn a_missing_disk_or_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileTarget::existing(dir.path().join("sdz")).size(1).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = FileTarget::existing_or_new(dir.path()).size(1).unwrap_err().to_string();
        assert!(e.contains("neither a block device nor a regular file"), "{e}");
    }
}
