//! Fitting a snapshot to a smaller disk (`kura image fit`): a new disk image, whose partitions
//! end before the smaller size, made from a snapshot with the filesystem's own shrink tool.
//!
//! **The rule.** Only GPT disks. The last partition (the one starting last) shrinks so that it
//! ends on the last 1 MiB boundary before the new disk's backup GPT; every other partition keeps
//! its place and size, so the new size must leave them whole. The last partition's filesystem
//! must be one that can be shrunk offline by its own tool: ext2/3/4 (`e2fsck -f -y`, then
//! `resize2fs`) or NTFS (`ntfsresize`). XFS cannot shrink at all; FAT, swap and raw partitions
//! are refused too (no sound offline shrink tool is used for them).
//!
//! **Nothing is written before the data is known to fit.** [`plan`] checks, from the manifest
//! alone, the table, the filesystem and that the partition's used bytes fit its new size;
//! [`fit`] then restores the snapshot into a sparse scratch file, copies the partition out of it
//! and asks the filesystem's tool for its real minimum (`resize2fs -P`, `ntfsresize --info`) —
//! a size below it is refused before the filesystem is touched. Only then is the scratch copy
//! shrunk, a new disk image of the new size assembled (the bytes before the partition, the
//! shrunk partition) and its GPT rewritten by [`crate::layout::shrink_gpt`]. The caller captures
//! that image as a new snapshot; the source snapshot is only read.
//!
//! Memory stays bounded: every copy streams through one 1 MiB buffer, and zero blocks are
//! skipped so the scratch files stay sparse (their size on disk is about the used bytes).

use crate::chunk::ChunkSource;
use crate::flow::{self, RestoreError, RestoreObserver};
use crate::fs::FsKind;
use crate::layout::{self, LayoutError, Scheme};
use crate::manifest::Manifest;
use crate::target::FileTarget;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// What a fit will do: the partition that shrinks and its new size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitPlan {
    /// The new disk size in bytes.
    pub size: u64,
    pub sector_size: u32,
    /// The partition that shrinks (its number) and its filesystem.
    pub partition: u32,
    pub fs: FsKind,
    /// Its start in bytes (unchanged).
    pub start: u64,
    pub old_size: u64,
    pub new_size: u64,
    /// Bytes its filesystem uses, from the manifest.
    pub used_bytes: u64,
}

/// Why a snapshot cannot be fitted. Every refusal is made before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("only GPT disks can be fitted; this snapshot's disk has a {0:?} partition table")]
    NotGpt(Scheme),
    #[error("the new size {0} is not a multiple of the {1}-byte sector")]
    Unaligned(u64, u32),
    #[error("the snapshot's disk ({disk} bytes) already fits in {size} bytes: restore it as it is")]
    AlreadyFits { disk: u64, size: u64 },
    #[error("the disk has no partition to shrink")]
    NoPartition,
    #[error("{size} bytes is too small: partition {partition} ends at byte {end}, and only the last partition (starting last) shrinks")]
    OtherPartition { size: u64, partition: u32, end: u64 },
    #[error("partition {partition} holds {fs}, which cannot be shrunk: {reason}")]
    CannotShrink { partition: u32, fs: String, reason: &'static str },
    #[error("the data does not fit in {size} bytes: partition {partition} needs at least {used} bytes (its used data, or its filesystem tool's minimum), but would have {available}; the smallest size that fits is about {smallest} bytes")]
    DataDoesNotFit { size: u64, partition: u32, used: u64, available: u64, smallest: u64 },
    #[error("{program} is not installed (apt-get install {package})")]
    ToolMissing { program: &'static str, package: &'static str },
    #[error("{program} {args} failed ({status}):\n{output}")]
    Tool { program: &'static str, args: String, status: String, output: String },
    #[error("restoring the snapshot into the scratch file")]
    Restore(#[from] RestoreError),
    #[error("the fitted disk's partition table")]
    Layout(#[from] LayoutError),
    #[error("scratch space: {0}")]
    Io(String, #[source] std::io::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FitError {
    let what = what.into();
    move |e| FitError::Io(what, e)
}

/// Checks, from the manifest alone, whether the snapshot can be fitted to `size` bytes, and
/// what the fit will do (see the module docs for the rule).
pub fn plan(manifest: &Manifest, size: u64) -> Result<FitPlan, FitError> {
    let layout = &manifest.layout;
    if layout.scheme != Scheme::Gpt || layout.gpt.is_none() {
        return Err(FitError::NotGpt(layout.scheme));
    }
    let gpt = layout.gpt.as_ref().expect("checked");
    let ss = layout.sector_size;
    if !size.is_multiple_of(ss as u64) {
        return Err(FitError::Unaligned(size, ss));
    }
    if size >= manifest.disk_size() {
        return Err(FitError::AlreadyFits { disk: manifest.disk_size(), size });
    }
    let last = layout.partitions.iter().max_by_key(|p| p.start).ok_or(FitError::NoPartition)?;
    let array_bytes = gpt.entry_count as u64 * gpt.entry_size as u64;
    let usable_end = if size / ss as u64 > array_bytes.div_ceil(ss as u64) + 2 {
        (layout::last_usable_lba(size, ss as u64, array_bytes) + 1) * ss as u64
    } else {
        0
    };
    let new_end = (usable_end / MIB * MIB).min(last.end());
    if let Some(p) =
        layout.partitions.iter().filter(|p| p.number != last.number).find(|p| p.end() > new_end.min(last.start))
    {
        return Err(FitError::OtherPartition { size, partition: p.number, end: p.end() });
    }
    let region = manifest.regions.iter().find(|r| r.partition == Some(last.number)).ok_or(FitError::NoPartition)?;
    let refuse = |fs: &str, reason| Err(FitError::CannotShrink { partition: last.number, fs: fs.into(), reason });
    match region.fs {
        FsKind::Ext4 | FsKind::Ntfs => {}
        FsKind::Xfs => return refuse("XFS", "XFS filesystems can grow but never shrink (xfs_growfs has no shrink)"),
        FsKind::Lvm => {
            return refuse(
                "an LVM2 physical volume",
                "shrinking a PV needs its LVs moved and shrunk first (pvresize, lvreduce)",
            )
        }
        FsKind::Btrfs => {
            return refuse(
                "btrfs",
                "btrfs shrinks only while mounted (btrfs filesystem resize), which Kura does not do",
            )
        }
        FsKind::Md => {
            return refuse(
                "an md RAID member",
                "shrinking a member needs the array shrunk first (mdadm --grow --size) and its content before that",
            )
        }
        FsKind::Fat => return refuse("FAT", "no sound offline FAT shrink tool is used by Kura"),
        FsKind::Swap => return refuse("swap", "swap is not shrunk; recreate it smaller with mkswap instead"),
        FsKind::Raw => {
            return refuse("an unrecognised filesystem (captured raw)", "Kura cannot tell which bytes are used")
        }
    }
    let new_size = new_end.saturating_sub(last.start);
    let plan = FitPlan {
        size,
        sector_size: ss,
        partition: last.number,
        fs: region.fs,
        start: last.start,
        old_size: last.size,
        new_size,
        used_bytes: region.used_bytes,
    };
    if region.used_bytes > new_size {
        return Err(plan.does_not_fit(region.used_bytes));
    }
    Ok(plan)
}

impl FitPlan {
    fn does_not_fit(&self, used: u64) -> FitError {
        // The disk needs the partition's start, its used bytes rounded up to MiB, and the
        // backup GPT (33 sectors, rounded up to the next MiB as the rule aligns the end).
        let smallest = (self.start + used).div_ceil(MIB) * MIB + MIB;
        FitError::DataDoesNotFit {
            size: self.size,
            partition: self.partition,
            used,
            available: self.new_size,
            smallest,
        }
    }
}

/// Fits snapshot `snapshot` (its `manifest`, chunks from `source`) as `plan` says: returns the
/// path of the fitted disk image, made in `scratch` (which the caller removes).
pub fn fit(
    snapshot: &str,
    manifest: &Manifest,
    source: &dyn ChunkSource,
    plan: &FitPlan,
    scratch: &Path,
    threads: usize,
    observer: &dyn RestoreObserver,
) -> Result<PathBuf, FitError> {
    let whole = scratch.join("source.img");
    flow::restore_flow(snapshot, manifest, source, &mut FileTarget::existing_or_new(&whole), threads, observer)?;
    let part = scratch.join("partition.img");
    {
        let mut src = File::open(&whole).map_err(io_err("opening the scratch disk"))?;
        let mut dst = new_file(&part, plan.old_size)?;
        copy_range(&mut src, plan.start, &mut dst, 0, plan.old_size)?;
    }
    match plan.fs {
        FsKind::Ext4 => shrink_ext(plan, &part)?,
        FsKind::Ntfs => shrink_ntfs(plan, &part)?,
        other => unreachable!("plan() refuses {other:?}"),
    }
    let out = scratch.join("fitted.img");
    let mut dst = new_file(&out, plan.size)?;
    {
        let mut src = File::open(&whole).map_err(io_err("opening the scratch disk"))?;
        copy_range(&mut src, 0, &mut dst, 0, plan.start)?;
        let mut p = File::open(&part).map_err(io_err("opening the scratch partition"))?;
        copy_range(&mut p, 0, &mut dst, plan.start, plan.new_size)?;
    }
    std::fs::remove_file(&whole).map_err(io_err("removing the scratch disk"))?;
    std::fs::remove_file(&part).map_err(io_err("removing the scratch partition"))?;
    let ss = plan.sector_size as u64;
    layout::shrink_gpt(&mut dst, plan.size, plan.sector_size, plan.start / ss, (plan.start + plan.new_size) / ss - 1)?;
    dst.sync_all().map_err(io_err("syncing the fitted disk"))?;
    Ok(out)
}

fn new_file(path: &Path, len: u64) -> Result<File, FitError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    f.set_len(len).map_err(io_err(format!("sizing {}", path.display())))?;
    Ok(f)
}

/// Copies `len` bytes at `from` of `src` to `to` of `dst` (a new, all-zero file), skipping
/// zero blocks so `dst` stays sparse.
fn copy_range(src: &mut File, from: u64, dst: &mut File, to: u64, len: u64) -> Result<(), FitError> {
    let mut buf = vec![0u8; MIB as usize];
    src.seek(SeekFrom::Start(from)).map_err(io_err("seeking the scratch copy"))?;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        src.read_exact(&mut buf[..n]).map_err(io_err("reading the scratch copy"))?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(to + done)).map_err(io_err("seeking the scratch copy"))?;
            dst.write_all(&buf[..n]).map_err(io_err("writing the scratch copy"))?;
        }
        done += n as u64;
    }
    Ok(())
}

/// Runs a tool; `ok` says which exit codes are success. Returns its stdout.
fn tool(program: &'static str, package: &'static str, args: &[&str], ok: &[i32]) -> Result<String, FitError> {
    let out =
        Command::new(program).args(args).stdin(std::process::Stdio::null()).output().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FitError::ToolMissing { program, package },
            _ => FitError::Io(format!("running {program}"), e),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.code().is_some_and(|c| ok.contains(&c)) {
        Ok(stdout)
    } else {
        Err(FitError::Tool {
            program,
            args: args.join(" "),
            status: out.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// The number after `prefix` on the first line holding it.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn shrink_ext(plan: &FitPlan, part: &Path) -> Result<(), FitError> {
    let p =
        part.to_str().ok_or_else(|| FitError::Io("scratch path".into(), std::io::ErrorKind::InvalidInput.into()))?;
    // resize2fs requires a freshly checked filesystem; 0 = clean, 1 = errors corrected.
    tool("e2fsck", "e2fsprogs", &["-f", "-y", p], &[0, 1])?;
    let header = tool("dumpe2fs", "e2fsprogs", &["-h", p], &[0])?;
    let block = number_after(&header, "Block size:").filter(|b| b.is_power_of_two()).ok_or_else(|| FitError::Tool {
        program: "dumpe2fs",
        args: format!("-h {p}"),
        status: "no block size".into(),
        output: header.clone(),
    })?;
    let min = tool("resize2fs", "e2fsprogs", &["-P", p], &[0])?;
    let blocks = number_after(&min, "Estimated minimum size of the filesystem:").ok_or_else(|| FitError::Tool {
        program: "resize2fs",
        args: format!("-P {p}"),
        status: "no minimum size".into(),
        output: min.clone(),
    })?;
    if blocks * block > plan.new_size {
        return Err(plan.does_not_fit(blocks * block));
    }
    tool("resize2fs", "e2fsprogs", &[p, &format!("{}K", plan.new_size / 1024)], &[0])?;
    tool("e2fsck", "e2fsprogs", &["-f", "-n", p], &[0])?;
    Ok(())
}

fn shrink_ntfs(plan: &FitPlan, part: &Path) -> Result<(), FitError> {
    let p =
        part.to_str().ok_or_else(|| FitError::Io("scratch path".into(), std::io::ErrorKind::InvalidInput.into()))?;
    let info = tool("ntfsresize", "ntfs-3g", &["--info", "--force", p], &[0])?;
    let min = number_after(&info, "You might resize at").ok_or_else(|| FitError::Tool {
        program: "ntfsresize",
        args: format!("--info --force {p}"),
        status: "no minimum size".into(),
        output: info.clone(),
    })?;
    // ntfsresize keeps the filesystem at least one sector smaller than the size it is given.
    if min + plan.sector_size as u64 > plan.new_size {
        return Err(plan.does_not_fit(min));
    }
    tool("ntfsresize", "ntfs-3g", &["--force", "--size", &plan.new_size.to_string(), p], &[0])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_numbers_are_read_from_their_lines() {
        let r = "resize2fs 1.47.0 (5-Feb-2023)\nEstimated minimum size of the filesystem: 27063\n";
        assert_eq!(number_after(r, "Estimated minimum size of the filesystem:"), Some(27063));
        let n = "Space in use       : 55 MB (17.3%)\nYou might resize at 54521856 bytes or 55 MB (freeing 260 MB).\n";
        assert_eq!(number_after(n, "You might resize at"), Some(54521856));
        assert_eq!(number_after("Block size:               4096\n", "Block size:"), Some(4096));
        assert_eq!(number_after("nothing here", "You might resize at"), None);
    }
}
