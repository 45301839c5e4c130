//! `kura mount SNAPSHOT DIR`: a snapshot's disk and each of its partitions as read-only files
//! in a FUSE filesystem (the `fuser` crate), so that root can loop-mount a partition with the
//! kernel's own filesystem drivers: `mount -o ro,loop DIR/part2 /mnt`.
//!
//! DIR holds `disk` (the whole disk) and `partN` for each partition of the snapshot's layout
//! (N as Linux numbers them: MBR logical partitions from 5), mode 0400, owned by the user who
//! mounted (root) and checked by the kernel (`default_permissions`). A snapshot set (a host's
//! several disks) is one flat directory too: `diskK` for its K-th disk (from 0, in the set's
//! order, as `kura image show` numbers them) and `diskK-partN` for that disk's partitions.
//! Reads go to [`SnapshotDisk`] (chunks fetched lazily from the store or the engine, through
//! its bounded cache; unused ranges read as zeros), as for `kura nbd` and `kura files`. Nothing
//! can be written. The filesystem stays mounted until `umount DIR` (or `fusermount3 -u DIR`);
//! when the process ends any other way (killed), `fusermount3` unmounts it (`auto_unmount`).

use crate::snapshot_disk::SnapshotDisk;
use anyhow::{Context, Result};
use fuser::{FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROOT: u64 = 1;
/// How long the kernel may cache names and attributes (they never change).
const TTL: Duration = Duration::from_secs(3600);
/// Largest read answered at once (the kernel asks for at most 128 KiB by default).
const MAX_READ: u32 = 1 << 20;

/// One file of the mount: a byte range of one of the disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Which disk (index into the mounted disks).
    pub disk: usize,
    pub start: u64,
    pub size: u64,
}

/// The files for one disk: `disk`, then `partN` per partition (by number).
pub fn entries(disk: &SnapshotDisk) -> Vec<Entry> {
    disk_entries(disk, 0, "disk", "part")
}

/// The files for a snapshot set's disks: `diskK`, then `diskK-partN` per partition, per disk.
pub fn set_entries(disks: &[Arc<SnapshotDisk>]) -> Vec<Entry> {
    disks
        .iter()
        .enumerate()
        .flat_map(|(k, d)| disk_entries(d, k, &format!("disk{k}"), &format!("disk{k}-part")))
        .collect()
}

fn disk_entries(disk: &SnapshotDisk, index: usize, whole: &str, part: &str) -> Vec<Entry> {
    let mut out = vec![Entry { name: whole.into(), disk: index, start: 0, size: disk.size() }];
    let mut parts: Vec<_> = disk.manifest().layout.partitions.iter().collect();
    parts.sort_by_key(|p| p.number);
    for p in parts {
        // A partition past the disk's end (a damaged table) is cut to what the disk has.
        let size = p.size.min(disk.size().saturating_sub(p.start));
        out.push(Entry { name: format!("{part}{}", p.number), disk: index, start: p.start, size });
    }
    out
}

struct SnapshotFs {
    disks: Vec<Arc<SnapshotDisk>>,
    entries: Vec<Entry>,
    created: SystemTime,
    /// Who owns the files: the user who mounted.
    owner: (u32, u32),
}

impl SnapshotFs {
    /// Inode of entry `i`: 2, 3, ...
    fn entry(&self, ino: u64) -> Option<&Entry> {
        ino.checked_sub(2).and_then(|i| self.entries.get(i as usize))
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = if ino == ROOT {
            (FileType::Directory, 0, 0o500, 2)
        } else {
            (FileType::RegularFile, self.entry(ino)?.size, 0o400, 1)
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let found = (parent == ROOT)
            .then(|| self.entries.iter().position(|e| OsStr::new(&e.name) == name))
            .flatten()
            .and_then(|i| self.attr(i as u64 + 2));
        match found {
            Some(a) => reply.entry(&TTL, &a, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(e) = self.entry(ino) else { return reply.error(libc::ENOENT) };
        let Ok(offset) = u64::try_from(offset) else { return reply.error(libc::EINVAL) };
        if offset >= e.size {
            return reply.data(&[]);
        }
        let len = u64::from(size.min(MAX_READ)).min(e.size - offset) as usize;
        let mut buf = vec![0u8; len];
        match self.disks[e.disk].read_at(e.start + offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(err) => {
                tracing::error!("reading {} at {offset}: {err:#}", e.name);
                reply.error(libc::EIO)
            }
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        if ino != ROOT {
            return reply.error(libc::ENOTDIR);
        }
        let mut all = vec![(ROOT, FileType::Directory, ".".to_string()), (ROOT, FileType::Directory, "..".to_string())];
        all.extend(self.entries.iter().enumerate().map(|(i, e)| (i as u64 + 2, FileType::RegularFile, e.name.clone())));
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok()
    }
}

/// Mounts the `entries` of `disks` (snapshot `id`: one disk, or a set's) at `dir` read-only and
/// serves them until the filesystem is unmounted.
pub fn mount(id: &str, disks: Vec<Arc<SnapshotDisk>>, entries: Vec<Entry>, dir: &std::path::Path) -> Result<()> {
    anyhow::ensure!(!disks.is_empty() && entries.iter().all(|e| e.disk < disks.len()), "nothing to mount");
    let created = kura_imaging::time::parse_rfc3339(&disks[0].manifest().created).unwrap_or(0);
    let created = UNIX_EPOCH + Duration::from_secs(created.max(0) as u64);
    // This process's effective user and group (what `/proc/self` is owned by).
    let me = std::fs::metadata("/proc/self").context("reading /proc/self")?;
    let owner = (std::os::unix::fs::MetadataExt::uid(&me), std::os::unix::fs::MetadataExt::gid(&me));
    let fs = SnapshotFs { disks, entries, created, owner };
    let options = [
        MountOption::RO,
        MountOption::FSName(format!("kura:{id}")),
        MountOption::Subtype("kura".into()),
        MountOption::DefaultPermissions,
        MountOption::AutoUnmount,
        MountOption::AllowRoot,
    ];
    fuser::mount2(fs, dir, &options).with_context(|| format!("mounting on {}", dir.display()))
}
