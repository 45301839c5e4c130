//! Filesystem images and plain file surgery.
//!
//! Each filesystem is made in its own image file by its own tools (`mkfs.ext4 -d`, `mkntfs` +
//! `ntfscp`, `mkfs.vfat` + `mmd`/`mcopy`, `mkswap`) and changed with them (`debugfs -w`); images
//! are placed into disk files with positioned reads and writes that skip all-zero MiBs, so the
//! disk files stay sparse.

use crate::content::pattern_bytes;
use crate::tools::{command, run, run_output, run_unchecked};
use crate::{MIB, SECTOR};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How to make an ext4 image.
#[derive(Clone, Copy, Debug)]
pub struct Ext4<'a> {
    pub label: &'a str,
    /// `-b`; `None` leaves it to mke2fs.
    pub block_size: Option<u32>,
    /// Write inode tables and journal in full now, as on a disk that has been in use
    /// (`lazy_itable_init=0,lazy_journal_init=0`).
    pub eager_init: bool,
}

/// Makes `img` (created, `size` bytes) an ext4 filesystem holding the tree under `src`
/// (`mkfs.ext4 -d`). The file is kept as it is: no hole punching.
pub fn make_ext4(img: &Path, size: u64, opts: Ext4, src: &Path) -> Result<()> {
    create_zeroed(img, size)?;
    format_ext4(img, opts, src)
}

/// Makes the existing file `img` an ext4 filesystem holding the tree under `src`, keeping
/// whatever bytes the filesystem does not write (`-E nodiscard`): junk in its free space.
pub fn format_ext4(img: &Path, opts: Ext4, src: &Path) -> Result<()> {
    let mut cmd = command("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", opts.label]);
    if let Some(bs) = opts.block_size {
        cmd.arg("-b").arg(bs.to_string());
    }
    let ext = if opts.eager_init { "nodiscard,lazy_itable_init=0,lazy_journal_init=0" } else { "nodiscard" };
    cmd.args(["-E", ext, "-d"]).arg(src).arg(img);
    run_output(&mut cmd)?;
    Ok(())
}

/// Makes `img` (created, `size` bytes) an empty NTFS volume for a partition starting at byte
/// `offset` of its disk (`mkntfs`, quick format).
pub fn make_ntfs(img: &Path, size: u64, label: &str, offset: u64) -> Result<()> {
    create_zeroed(img, size)?;
    format_ntfs(img, label, offset)
}

/// Makes the existing file `img` an empty NTFS volume (quick format: the bytes it does not
/// write stay, as junk in its free space).
pub fn format_ntfs(img: &Path, label: &str, offset: u64) -> Result<()> {
    let start = (offset / SECTOR).to_string();
    run(
        "mkntfs",
        [
            "-F".as_ref(),
            "-Q".as_ref(),
            "-q".as_ref(),
            "-s".as_ref(),
            "512".as_ref(),
            "-H".as_ref(),
            "255".as_ref(),
            "-S".as_ref(),
            "63".as_ref(),
            "-L".as_ref(),
            label.as_ref(),
            "-p".as_ref(),
            start.as_ref(),
            img.as_os_str(),
        ],
    )?;
    Ok(())
}

/// Copies the file `src` into the root directory of the NTFS image `img` as `name`.
pub fn ntfs_copy_in(img: &Path, src: &Path, name: &str) -> Result<()> {
    ensure!(!name.contains('/'), "NTFS files are copied into the root directory only: {name}");
    run("ntfscp", [img.as_os_str(), src.as_os_str(), name.as_ref()])?;
    Ok(())
}

/// Makes `img` (created, `size` bytes) a FAT`bits` filesystem for a partition starting at byte
/// `offset`, holding the files (`/`-separated paths) under `src`, directories made first.
pub fn make_fat(img: &Path, size: u64, bits: u8, label: &str, offset: u64, src: &Path, files: &[&str]) -> Result<()> {
    create_zeroed(img, size)?;
    run(
        "mkfs.vfat",
        [
            "-F".as_ref(),
            bits.to_string().as_ref(),
            "-n".as_ref(),
            label.as_ref(),
            "-h".as_ref(),
            (offset / SECTOR).to_string().as_ref(),
            img.as_os_str(),
        ],
    )?;
    let dirs: BTreeSet<String> = files
        .iter()
        .flat_map(|f| {
            let parts: Vec<&str> = f.split('/').collect();
            (1..parts.len()).map(move |i| parts[..i].join("/")).collect::<Vec<_>>()
        })
        .collect();
    let fat_img = img.display().to_string();
    for d in &dirs {
        run("mmd", ["-i", &fat_img, &format!("::/{d}")])?;
    }
    for f in files {
        let from = src.join(f).display().to_string();
        run("mcopy", ["-i", &fat_img, &from, &format!("::/{f}")])?;
    }
    Ok(())
}

/// Makes `img` (created, `size` bytes) a swap area; `stale` (exactly `size` bytes) is written
/// over it first, as what an old swap holds.
pub fn make_swap(img: &Path, size: u64, label: &str, stale: Option<&[u8]>) -> Result<()> {
    create_zeroed(img, size)?;
    if let Some(stale) = stale {
        ensure!(stale.len() as u64 == size, "stale swap bytes must fill the partition");
        std::fs::write(img, stale)?;
    }
    run("mkswap", ["-L".as_ref(), label.as_ref(), img.as_os_str()])?;
    Ok(())
}

/// Runs one `debugfs -w` request on an ext4 image (or `disk?offset=N`); fails on any error
/// message, since debugfs exits 0 even when a request fails.
pub fn debugfs_w(img: &Path, request: &str) -> Result<()> {
    let out = run_unchecked("debugfs", ["-w".as_ref(), "-R".as_ref(), request.as_ref(), img.as_os_str()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()).collect();
    ensure!(
        out.status.success() && problems.is_empty(),
        "debugfs -w -R {request:?} {} failed:\n{stderr}",
        img.display()
    );
    Ok(())
}

/// `e2fsck -fn` on an ext4 image (or `disk?offset=N`): fails unless it is clean.
pub fn fsck_ext4(spec: &str) -> Result<()> {
    run("e2fsck", ["-fn", spec]).map(|_| ()).with_context(|| format!("e2fsck -fn {spec}"))
}

/// Creates (or truncates) `path` as a sparse all-zero file of `size` bytes.
pub fn create_zeroed(path: &Path, size: u64) -> Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size).with_context(|| format!("sizing {}", path.display()))?;
    Ok(())
}

/// Copies the file `img` into `dst` at `offset`, skipping all-zero MiBs: the target region is
/// known to be zero, so `dst` stays sparse. Returns the bytes of `img`.
pub fn place(img: &Path, dst: &File, offset: u64) -> Result<u64> {
    let f = File::open(img).with_context(|| format!("opening {}", img.display()))?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(MIB) as usize;
        f.read_exact_at(&mut buf[..n], pos)?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], offset + pos)?;
        }
        pos += n as u64;
    }
    Ok(len)
}

/// Writes into `dst` at `offset` every MiB where `new` differs from `old`.
pub fn patch_differences(old: &Path, new: &Path, dst: &File, offset: u64) -> Result<()> {
    let (fo, fnew) = (File::open(old)?, File::open(new)?);
    let len = fnew.metadata()?.len();
    let (mut a, mut b) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(MIB) as usize;
        fo.read_exact_at(&mut a[..n], pos)?;
        fnew.read_exact_at(&mut b[..n], pos)?;
        if a[..n] != b[..n] {
            dst.write_all_at(&b[..n], offset + pos)?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// Makes a file's data durable.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))
}

/// Writes bytes at an absolute offset of a file.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all_at(bytes, offset).with_context(|| format!("writing {} at {offset}", path.display()))
}

/// Reads `len` bytes at `offset` of a file.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).with_context(|| format!("reading {} at {offset}", path.display()))?;
    Ok(buf)
}

/// A file of `size` bytes filled with a recognisable pattern, e.g. a restore target whose
/// bytes must survive a failed restore.
pub fn patterned_file(path: &Path, size: u64) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let block = pattern_bytes("KURA-TARGET-MUST-SURVIVE-", MIB as usize);
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}
