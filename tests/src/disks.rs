//! Building disk image files with real tools, without loop devices, mounting or root: the
//! builders of [`kura_diskgen::disk`] and [`kura_diskgen::image`], which panic here on failure
//! as a test should.

use std::path::Path;

pub use kura_diskgen::disk::{Content, Disk, Fs, PartSpec, Partition, TableKind};
pub use kura_diskgen::{MIB, SECTOR};

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Builds a GPT disk of `size` bytes at `dir/name` with partitions in order, 1 MiB aligned.
pub fn build_gpt(dir: &Path, name: &str, size: u64, parts: Vec<PartSpec>) -> Disk {
    ok(kura_diskgen::disk::build_gpt(dir, name, size, parts))
}

/// Builds an MBR disk: the primary partitions in order, then (if any spec is `logical`) an
/// extended partition over the rest of the disk holding the logical ones.
pub fn build_mbr(dir: &Path, name: &str, size: u64, parts: Vec<PartSpec>) -> Disk {
    ok(kura_diskgen::disk::build_mbr(dir, name, size, parts))
}

/// Runs one `debugfs -w` request on an ext4 image (or `disk?offset=N`).
pub fn debugfs_w(img: &Path, request: &str) {
    ok(kura_diskgen::image::debugfs_w(img, request))
}

/// Writes bytes at an absolute offset of a file.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    ok(kura_diskgen::image::write_at(path, offset, bytes))
}

/// Reads `len` bytes at `offset` of a file.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    ok(kura_diskgen::image::read_at(path, offset, len))
}

/// A blank (all zero) file of `size` bytes, e.g. an existing restore target.
pub fn blank_file(path: &Path, size: u64) {
    ok(kura_diskgen::image::create_zeroed(path, size))
}

/// A file of `size` bytes filled with a recognisable pattern, e.g. a restore target whose
/// bytes must survive a failed restore.
pub fn patterned_file(path: &Path, size: u64) {
    ok(kura_diskgen::image::patterned_file(path, size))
}

/// Replaces a file of an ext4 partition of `disk` in place (`debugfs rm` + `write`), as a
/// running system would, and records its new digest. Every other block stays as it is.
pub fn ext4_replace_file(disk: &mut Disk, number: u32, path: &str, data: &[u8], scratch: &Path) {
    ok(kura_diskgen::disk::ext4_replace_file(disk, number, path, data, scratch))
}
