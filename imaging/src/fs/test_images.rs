//! Test support for the filesystem readers: sparse image files in temporary directories, and
//! running the real mkfs/inspection tools against them.

use super::{probe, AllocationMap};
use crate::layout::PartitionEntry;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A sparse image file inside its own temporary directory (removed on drop).
pub(crate) struct Image {
    pub dir: tempfile::TempDir,
    path: PathBuf,
}

impl Image {
    /// A zero-filled (sparse) image of `mib` MiB.
    pub fn new(mib: u64) -> Image {
        Image::with_size(mib << 20)
    }

    pub fn with_size(bytes: u64) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(bytes).unwrap();
        Image { dir, path }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    pub fn size(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    /// Probes the whole image as one partition.
    pub fn probe(&self, entry: Option<&PartitionEntry>) -> AllocationMap {
        let mut f = std::fs::File::open(&self.path).unwrap();
        probe(&mut f, self.size(), entry)
    }
}

/// The Debian package that provides `tool`, for every tool these tests run.
fn debian_package(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "mke2fs" | "mkfs.ext4" | "dumpe2fs" | "debugfs" | "e2fsck" | "tune2fs" => "e2fsprogs",
        "mkntfs" | "mkfs.ntfs" | "ntfscp" | "ntfsinfo" | "ntfsfix" | "ntfsclone" => "ntfs-3g",
        "mkfs.vfat" | "mkfs.fat" | "fsck.fat" | "fsck.vfat" | "fatlabel" => "dosfstools",
        "mcopy" | "mdel" | "mdir" | "mmd" | "mshowfat" => "mtools",
        "mkswap" | "blkid" | "losetup" | "fallocate" => "util-linux",
        "mount" | "umount" => "mount",
        "sync" => "coreutils",
        "mkfs.xfs" | "xfs_db" | "xfs_logprint" | "xfs_io" | "xfs_repair" => "xfsprogs",
        "sfdisk" | "fdisk" => "fdisk",
        "sgdisk" | "gdisk" => "gdisk",
        "lvm" => "lvm2",
        "mkfs.btrfs" | "btrfs" => "btrfs-progs",
        _ => return None,
    })
}

/// The path of `tool` (searched on `PATH` and in the sbin directories). A test that needs a
/// tool calls this first: a missing tool fails the test, naming the Debian package to install,
/// instead of letting it pass without checking anything.
pub(crate) fn require(tool: &str) -> PathBuf {
    let Some(package) = debian_package(tool) else {
        panic!("test tool {tool} has no Debian package listed in fs::test_images::debian_package: add it")
    };
    which(tool).unwrap_or_else(|| {
        panic!("{tool} is not installed: this test needs it (apt-get install {package}; scripts/test installs it)")
    })
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file());
    found
}

/// Runs `tool args...` and returns its stdout; panics with stderr if it fails.
pub(crate) fn run_out(tool: &str, args: &[&str]) -> String {
    let exe = require(tool);
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn run(tool: &str, args: &[&str]) {
    run_out(tool, args);
}

/// `len` bytes of non-zero, non-repeating-looking content (so nothing is mistaken for a hole).
pub(crate) fn file_of(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as u8) | 1
        })
        .collect()
}
