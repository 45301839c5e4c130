//! LVM2 volume groups and XFS filesystems in image files, without device-mapper (root only:
//! loop devices and loop mounts).
//!
//! The sandbox has no device-mapper, so an LVM volume group is made with LVM's own tools with
//! activation off ([`lvm`]); each LV's filesystem is made in an image file of its own
//! ([`xfs_image`]) and copied into the PV image at the extents `lvs` reports ([`segments`],
//! [`move_lv`]). Reading back goes the same way: the LV's extents copied out of a restored PV,
//! then checked with the filesystem's tools or mounted read-only through a loop device
//! ([`Mounted`], [`tree_digests`]).
//!
//! Needs lvm2, xfsprogs, util-linux (losetup, mount) and a kernel with XFS.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::disks::MIB;
use crate::tools::{run, run_unchecked};

/// A loop device; detached on drop.
pub struct Loop(pub String);

impl Loop {
    /// `losetup -f --show ARGS…`.
    pub fn attach(args: &[&str]) -> Loop {
        let mut all = vec!["-f", "--show"];
        all.extend_from_slice(args);
        Loop(run("losetup", all).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run_unchecked("losetup", ["-d", &self.0]);
    }
}

/// A filesystem mounted through a loop device on a temporary directory; unmounted on drop.
pub struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    /// `mount -t FS -o OPTIONS IMAGE DIR` (`options` with `loop` for an image file).
    pub fn new(fs: &str, image: &Path, options: &str) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        run("mount", ["-t", fs, "-o", options, image.to_str().unwrap(), dir.path().to_str().unwrap()]);
        Mounted { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = run_unchecked("umount", [self.dir.path()]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("umount failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// `lvm CMD ARGS` seeing only `dev`, with activation, backups and the devices file off.
pub fn lvm(dev: &str, cmd: &str, args: &[&str]) -> String {
    let config = format!(
        "global {{ activation = 0 }} backup {{ backup = 0 archive = 0 }} \
         devices {{ use_devicesfile = 0 obtain_device_list_from_udev = 0 filter = [ \"a|^{dev}$|\", \"r|.*|\" ] }}"
    );
    let mut all = vec![cmd, "--config", &config];
    all.extend_from_slice(args);
    std::env::set_var("LVM_SUPPRESS_FD_WARNINGS", "1");
    run("lvm", all)
}

/// A volume group name unique to this process and call (`<prefix><pid>x<n>`: no `-`, so
/// device-mapper's name is `<vg>-<lv>`).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// (start extent in the LV, first PV extent, count) of each segment of `vg/lv`.
pub fn segments(dev: &str, vg: &str, lv: &str) -> Vec<(u64, u64, u64)> {
    let out = lvm(
        dev,
        "lvs",
        &["--noheadings", "--separator", ";", "-o", "seg_start_pe,seg_pe_ranges", &format!("{vg}/{lv}")],
    );
    let mut segs: Vec<(u64, u64, u64)> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (start, ranges) = l.trim().split_once(';').unwrap();
            let (a, b) = ranges.rsplit(':').next().unwrap().split_once('-').unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            (start.trim().parse().unwrap(), a, b - a + 1)
        })
        .collect();
    segs.sort();
    segs
}

/// Where the PV on `dev` starts its extents, in bytes (`pvs -o pe_start`).
pub fn pe_start(dev: &str) -> u64 {
    let out = lvm(dev, "pvs", &["--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", dev]);
    out.trim().parse().unwrap_or_else(|_| panic!("pvs printed no pe_start for {dev}: {out:?}"))
}

/// Copies between an LV image and the PV image at its segments (`to_pv`: LV → PV); `ext` is
/// the extent size (whole MiB).
pub fn move_lv(pv: &Path, lv: &Path, segs: &[(u64, u64, u64)], pe_start: u64, ext: u64, to_pv: bool) {
    assert_eq!(ext % MIB, 0, "extent size {ext} is not whole MiB");
    let mut p = std::fs::OpenOptions::new().read(true).write(true).open(pv).unwrap();
    let mut l = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(lv).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for &(lv_start, first, count) in segs {
        p.seek(SeekFrom::Start(pe_start + first * ext)).unwrap();
        l.seek(SeekFrom::Start(lv_start * ext)).unwrap();
        for _ in 0..count * ext / MIB {
            if to_pv {
                l.read_exact(&mut buf).unwrap();
                p.write_all(&buf).unwrap();
            } else {
                p.read_exact(&mut buf).unwrap();
                l.write_all(&buf).unwrap();
            }
        }
    }
}

/// Every regular file under `root`: relative path → sha256 (symlinks by their target).
pub fn tree_digests(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                out.insert(rel, kura_diskgen::content::sha256_file(&e.path()).unwrap());
            } else if t.is_symlink() {
                out.insert(rel, format!("-> {}", std::fs::read_link(e.path()).unwrap().display()));
            }
        }
    }
    out
}

/// An XFS image file of `size` bytes made by `mkfs.xfs -q -f MKFS_ARGS…`, mounted while
/// `populate` writes into its root, then unmounted; returns [`tree_digests`] of what it holds.
pub fn xfs_image(path: &Path, size: u64, mkfs_args: &[&str], populate: impl FnOnce(&Path)) -> BTreeMap<String, String> {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    let mut args = vec!["-q", "-f"];
    args.extend_from_slice(mkfs_args);
    args.push(path.to_str().unwrap());
    run("mkfs.xfs", args);
    let m = Mounted::new("xfs", path, "loop");
    populate(m.path());
    let digests = tree_digests(m.path());
    drop(m);
    digests
}
