//! Filesystem checkers run on each partition of a disk image: `e2fsck -fn`, `ntfsfix -n`,
//! `fsck.vfat -n`. Each partition is first copied to a file of its own, as the NTFS and FAT
//! checkers cannot read at an offset.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::disks::{Disk, Fs, Partition, MIB};
use crate::tools::run_unchecked;

/// Copies `[offset, offset + size)` of `disk` into a new file `dest` (sparse where zero).
pub fn extract(disk: &Path, offset: u64, size: u64, dest: &Path) {
    let mut src = File::open(disk).unwrap();
    src.seek(SeekFrom::Start(offset)).unwrap();
    let mut dst = File::create(dest).unwrap();
    dst.set_len(size).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    while pos < size {
        let n = ((size - pos) as usize).min(buf.len());
        src.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(pos)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        pos += n as u64;
    }
}

/// Runs the checker for `part` on a copy of it; returns its report if it is not clean.
pub fn check_partition(disk: &Path, part: &Partition, scratch: &Path) -> Result<(), String> {
    let (program, args): (&str, &[&str]) = match part.fs {
        Fs::Ext4 => ("e2fsck", &["-f", "-n"]),
        Fs::Ntfs => ("ntfsfix", &["-n"]),
        Fs::Fat => ("fsck.vfat", &["-n"]),
        Fs::Swap | Fs::Raw | Fs::Extended => return Ok(()),
    };
    let copy: PathBuf = scratch.join(format!("fsck-p{}.img", part.number));
    extract(disk, part.offset, part.size, &copy);
    let mut all_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all_args.push(copy.display().to_string());
    let out = run_unchecked(program, &all_args);
    fs::remove_file(&copy).unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} on partition {} ({:?}) exited {}:\n{}{}",
            args.join(" "),
            part.number,
            part.fs,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Asserts that every filesystem of `image` (laid out as `layout`) checks clean.
pub fn assert_fsck_clean(layout: &Disk, image: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    let problems: Vec<String> =
        layout.partitions.iter().filter_map(|p| check_partition(image, p, scratch.path()).err()).collect();
    assert!(problems.is_empty(), "fsck of {} failed:\n{}", image.display(), problems.join("\n"));
}
