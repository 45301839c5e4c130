//! Opening a restore target: an existing block device or image file, or a new image file.
//!
//! Nothing is written here. A mounted device is refused; a new file is only created after the
//! restore's preflight passed (see `cli::image::restore`).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

pub struct Target {
    pub file: File,
    pub size: u64,
    /// A file created for this restore: reads as zeros, removed again if the restore fails.
    pub created: Option<PathBuf>,
}

/// The size of an existing target, or `None` if the path does not exist.
pub fn existing_size(path: &Path) -> Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            refuse_if_mounted(path)?;
            let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Some(f.seek(SeekFrom::End(0)).with_context(|| format!("sizing {}", path.display()))?))
        }
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => bail!("{} is neither a block device nor a regular file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
}

/// Opens an existing target for writing (never truncating it); readable too, so the backup GPT
/// can be moved to the end of a larger disk afterwards.
pub fn open_existing(path: &Path, size: u64) -> Result<Target> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    Ok(Target { file, size, created: None })
}

/// Creates a new, sparse (all-zero) image file of `size` bytes.
pub fn create(path: &Path, size: u64) -> Result<Target> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let created = Some(path.to_path_buf());
    if let Err(e) = file.set_len(size) {
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("sizing {} to {size} bytes", path.display()));
    }
    Ok(Target { file, size, created })
}

/// Refuses a block device that is mounted, or any of whose partitions is.
fn refuse_if_mounted(path: &Path) -> Result<()> {
    let dev = std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
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
            bail!("{} is in use: {} is mounted; refusing to write to it", path.display(), source);
        }
    }
    Ok(())
}

/// After a restore onto a larger target, moves the backup GPT to the target's end (as
/// `sgdisk -e` would); says so on stderr. Nothing to do for MBR disks or same-size targets.
pub fn fit_partition_table(t: &mut Target, manifest: &kura_imaging::manifest::Manifest) -> Result<()> {
    if t.size > manifest.disk_size()
        && manifest.layout.scheme == kura_imaging::layout::Scheme::Gpt
        && kura_imaging::layout::relocate_backup_gpt(&mut t.file, t.size)
            .context("moving the backup GPT to the end of the larger target")?
    {
        t.file.sync_all().context("syncing the target")?;
        eprintln!("the target is larger than the captured disk: moved the backup GPT to its end");
    }
    Ok(())
}
