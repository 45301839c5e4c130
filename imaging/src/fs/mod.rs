//! Filesystem allocation maps: which blocks of a partition hold data worth capturing.
//!
//! [`probe`] looks at the partition type and the superblock magic and returns an
//! [`AllocationMap`]. A filesystem that is unknown, or that is recognised but fails a sanity
//! check, is captured raw (every block used, all-zero chunks skipped later) with a warning: a
//! partition is never skipped silently.
//!
//! Everything read here is untrusted: sizes and counts are checked before anything is allocated,
//! and any inconsistency makes the filesystem fall back to raw.

pub mod btrfs;
#[cfg(test)]
mod btrfs_tests;
mod ext4;
mod fat;
mod lvm;
pub use lvm::{logical_volumes, LogicalVolume};
#[cfg(test)]
mod lvm_tests;
mod md;
#[cfg(test)]
mod md_tests;
mod ntfs;
mod swap;
#[cfg(test)]
mod test_images;
mod volume;
pub mod xfs;

use crate::bitmap::Bitmap;
use crate::layout::{gpt_types, PartitionEntry};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Ext4,
    Ntfs,
    Fat,
    Swap,
    Xfs,
    /// An LVM2 physical volume: its label and metadata, and the used blocks of the logical
    /// volumes on it.
    Lvm,
    Btrfs,
    /// A Linux software RAID (md) member: its superblock, bitmap and bad-block log, and the
    /// used blocks of the array's content (RAID1).
    Md,
    Raw,
}

/// Which bytes of a partition are in use.
///
/// `bitmap` has one bit per `block_size` bytes, starting at byte 0 of the partition, for
/// `bitmap.len()` blocks. Bytes of the partition past `bitmap.len() * block_size` (a tail the
/// filesystem does not cover, e.g. NTFS's backup boot sector) count as used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationMap {
    pub kind: FsKind,
    /// Bytes per bitmap bit: a power of two, at least 512.
    pub block_size: u32,
    pub bitmap: Bitmap,
    /// Volume label if the filesystem has one.
    pub label: Option<String>,
    /// Why the filesystem was captured raw, or other notes for the operator.
    pub warnings: Vec<String>,
}

impl AllocationMap {
    /// The map of a partition captured raw: every block used.
    pub fn raw(partition_size: u64, warnings: Vec<String>) -> Self {
        let block_size = 4096u32;
        let blocks = partition_size.div_ceil(block_size as u64);
        AllocationMap { kind: FsKind::Raw, block_size, bitmap: Bitmap::full(blocks), label: None, warnings }
    }

    /// Bytes marked used (including any tail not covered by the bitmap).
    pub fn used_bytes(&self, partition_size: u64) -> u64 {
        let covered = (self.bitmap.len() * self.block_size as u64).min(partition_size);
        let mut used = 0u64;
        for (start, len) in self.bitmap.runs() {
            let s = start * self.block_size as u64;
            let e = ((start + len) * self.block_size as u64).min(covered);
            used += e.saturating_sub(s);
        }
        used + (partition_size - covered)
    }
}

/// How many bytes at the start of a partition [`probe`] reads to look for signatures: enough for
/// a swap signature with 64 KiB pages and the btrfs superblock at 64 KiB.
const HEAD_LEN: u64 = btrfs::SUPER_OFFSET + 4096;

/// What the partition table entry says the partition should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// A partition that has no filesystem by design (BIOS boot, Microsoft reserved).
    NoFilesystem,
    Swap,
    Other,
}

impl Hint {
    fn of(entry: Option<&PartitionEntry>) -> Hint {
        match entry {
            Some(PartitionEntry::Gpt { type_guid, .. }) => {
                let t = type_guid.to_ascii_uppercase();
                if t == gpt_types::BIOS_BOOT || t == gpt_types::MS_RESERVED {
                    Hint::NoFilesystem
                } else if t == gpt_types::LINUX_SWAP {
                    Hint::Swap
                } else {
                    Hint::Other
                }
            }
            Some(PartitionEntry::Mbr { type_byte: 0x82, .. }) => Hint::Swap,
            _ => Hint::Other,
        }
    }
}

/// What a scan of the whole disk ([`scan_disk`]) found that a partition's own bytes cannot
/// tell: the maps of LVM logical volumes spanning several PVs on this disk, by (VG id, LV
/// name). The default is empty (each partition on its own).
#[derive(Debug, Default)]
pub struct DiskContext {
    spanning: HashMap<(String, String), AllocationMap>,
}

impl DiskContext {
    /// How many volumes spanning partitions were mapped.
    pub fn spanning_volumes(&self) -> usize {
        self.spanning.len()
    }
}

/// Scans the disk's partitions (`parts`: start and size in bytes) for what spans several of
/// them: LVM volume groups with PVs on more than one partition, whose logical volumes are read
/// across their PVs ([`lvm`]'s `spanning`). Never fails: what cannot be read is left to the
/// per-partition probe, which captures it raw with a warning.
pub fn scan_disk<R: Read + Seek>(disk: &mut R, parts: &[(u64, u64)]) -> DiskContext {
    DiskContext { spanning: lvm::spanning(disk, parts) }
}

/// Detects the filesystem in `part` (a window over one partition of `part_size` bytes) and reads
/// its allocation map. Never fails: anything it cannot understand becomes a raw map with a
/// warning naming the reason.
///
/// The filesystem is chosen by its signature; the partition entry is only a hint. A partition
/// carrying the signatures of two filesystems (a stale superblock under a newer filesystem) is
/// captured raw, since trusting the wrong one would lose data.
pub fn probe<R: Read + Seek>(part: &mut R, part_size: u64, entry: Option<&PartitionEntry>) -> AllocationMap {
    probe_on_disk(part, part_size, entry, &DiskContext::default())
}

/// [`probe`] of a partition of a disk scanned by [`scan_disk`].
pub fn probe_on_disk<R: Read + Seek>(
    part: &mut R,
    part_size: u64,
    entry: Option<&PartitionEntry>,
    disk: &DiskContext,
) -> AllocationMap {
    probe_with(part, part_size, Hint::of(entry), Inside::Partition, disk)
}

/// Where a probed volume lies: what containers may be followed inside it. A partition may
/// hold an md member or an LVM PV; an md array may hold a PV; an LV holds neither (stacks
/// deeper than md → LVM → filesystem are captured raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inside {
    Partition,
    Md,
    Lvm,
}

/// [`probe`] of a volume inside a container (an md array, an LVM logical volume): no partition
/// entry.
fn probe_volume<R: Read + Seek>(vol: &mut R, size: u64, inside: Inside, disk: &DiskContext) -> AllocationMap {
    probe_with(vol, size, Hint::Other, inside, disk)
}

fn probe_with<R: Read + Seek>(
    part: &mut R,
    part_size: u64,
    hint: Hint,
    inside: Inside,
    disk: &DiskContext,
) -> AllocationMap {
    if hint == Hint::NoFilesystem {
        return AllocationMap::raw(part_size, Vec::new());
    }
    let mut head = vec![0u8; HEAD_LEN.min(part_size) as usize];
    if let Err(e) = read_at(part, 0, &mut head) {
        return AllocationMap::raw(
            part_size,
            vec![format!("could not read the start of the partition ({e}); captured raw")],
        );
    }
    // An md member first: with metadata 0.90 and 1.0 the array's content starts at byte 0, so
    // the filesystem inside shows its own signature at the start as well.
    match (md::find(part, part_size, &head), inside) {
        (md::Found::None, _) => {}
        (_, Inside::Md | Inside::Lvm) => {
            return AllocationMap::raw(
                part_size,
                vec!["an md RAID member inside an array or a logical volume is not followed; captured raw".into()],
            )
        }
        (md::Found::Member(sb), Inside::Partition) => {
            return md::read(part, part_size, &sb, disk).and_then(|map| check_shape(map, part_size)).unwrap_or_else(
                |reason| {
                    AllocationMap::raw(part_size, vec![format!("md RAID member rejected: {reason}; captured raw")])
                },
            );
        }
        (md::Found::Broken(reason), Inside::Partition) => {
            return AllocationMap::raw(part_size, vec![format!("md RAID member rejected: {reason}; captured raw")])
        }
    }
    let found = signatures(&head);
    if found.contains(&FsKind::Lvm) && inside == Inside::Lvm {
        return AllocationMap::raw(
            part_size,
            vec!["an LVM physical volume inside a logical volume is not followed; captured raw".into()],
        );
    }
    let kind = match found.as_slice() {
        [] if hint == Hint::Swap => {
            return AllocationMap::raw(
                part_size,
                vec!["partition type says swap but no swap signature; captured raw".into()],
            )
        }
        [] => {
            return AllocationMap::raw(part_size, vec!["partition holds no recognised filesystem; captured raw".into()])
        }
        [kind] => *kind,
        many => {
            let names: Vec<&str> = many.iter().map(|k| fs_name(*k)).collect();
            return AllocationMap::raw(
                part_size,
                vec![format!(
                    "partition carries signatures of several filesystems ({}); captured raw",
                    names.join(", ")
                )],
            );
        }
    };
    let read = match kind {
        FsKind::Ext4 => ext4::read(part, part_size),
        FsKind::Ntfs => ntfs::read(part, part_size),
        FsKind::Fat => fat::read(part, part_size, &head),
        FsKind::Swap => swap::read(part_size, &head),
        FsKind::Xfs => xfs::read(part, part_size),
        FsKind::Lvm => lvm::read(part, part_size, &head, disk),
        FsKind::Btrfs => btrfs::read(part, part_size),
        FsKind::Md | FsKind::Raw => Err("no reader".into()),
    };
    let map = read.and_then(|map| check_shape(map, part_size));
    match map {
        Ok(map) => map,
        Err(reason) => AllocationMap::raw(
            part_size,
            vec![format!("{} filesystem rejected: {reason}; captured raw", fs_name(kind))],
        ),
    }
}

/// The filesystems (and containers) whose signatures the first [`HEAD_LEN`] bytes of a
/// volume carry.
fn signatures(head: &[u8]) -> Vec<FsKind> {
    let mut found = Vec::new();
    if ext4::detect(head) {
        found.push(FsKind::Ext4);
    }
    if ntfs::detect(head) {
        found.push(FsKind::Ntfs);
    }
    if fat::detect(head) {
        found.push(FsKind::Fat);
    }
    if swap::detect(head) {
        found.push(FsKind::Swap);
    }
    if xfs::detect(head) {
        found.push(FsKind::Xfs);
    }
    if btrfs::detect(head) {
        found.push(FsKind::Btrfs);
    }
    if lvm::detect(head) {
        found.push(FsKind::Lvm);
    }
    found
}

/// What a volume of `size` bytes holds by its signatures alone (no map is read): the one
/// filesystem found, or `Raw` for none, several, or an unreadable start.
pub fn detect_filesystem<R: Read + Seek>(vol: &mut R, size: u64) -> FsKind {
    let mut head = vec![0u8; HEAD_LEN.min(size) as usize];
    if read_at(vol, 0, &mut head).is_err() {
        return FsKind::Raw;
    }
    match signatures(&head).as_slice() {
        [kind] => *kind,
        _ => FsKind::Raw,
    }
}

/// The name used in warnings.
fn fs_name(kind: FsKind) -> &'static str {
    match kind {
        FsKind::Ext4 => "ext2/3/4",
        FsKind::Ntfs => "NTFS",
        FsKind::Fat => "FAT",
        FsKind::Swap => "swap",
        FsKind::Xfs => "XFS",
        FsKind::Lvm => "LVM2 physical volume",
        FsKind::Btrfs => "btrfs",
        FsKind::Md => "md RAID member",
        FsKind::Raw => "raw",
    }
}

/// Last line of defence: a reader's map must describe at most the partition, in power-of-two
/// blocks of at least 512 bytes.
fn check_shape(map: AllocationMap, part_size: u64) -> Result<AllocationMap, String> {
    let bs = map.block_size as u64;
    if bs < 512 || !bs.is_power_of_two() {
        return Err(format!("block size {bs} is not a power of two >= 512"));
    }
    if map.bitmap.len() > part_size.div_ceil(bs) {
        return Err(format!(
            "map of {} blocks of {bs} bytes is larger than the partition ({part_size} bytes)",
            map.bitmap.len()
        ));
    }
    Ok(map)
}

/// Reads exactly `buf.len()` bytes at byte `offset` of `r`.
fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(buf)
}

/// `read_at` with the error turned into a reason for a raw fallback.
fn read_at_or<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8], what: &str) -> Result<(), String> {
    read_at(r, offset, buf).map_err(|e| format!("cannot read {what} ({} bytes at offset {offset}): {e}", buf.len()))
}

/// Little-endian field readers over a buffer already known to be long enough; out-of-range
/// reads give 0 rather than panicking.
fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// A label stored as a fixed-size byte field: trailing NULs and spaces removed, `None` if empty.
fn label_from_bytes(b: &[u8]) -> Option<String> {
    let b = b.split(|&c| c == 0).next().unwrap_or(&[]);
    let s = String::from_utf8_lossy(b);
    let s = s.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::test_images::{require, run, Image};
    use super::*;
    use crate::window::Window;
    use std::io::Cursor;

    #[test]
    fn probe_through_a_window_at_an_offset() {
        require("mke2fs");
        let img = Image::new(32);
        run("mke2fs", &["-q", "-F", "-t", "ext4", img.path_str()]);
        let fs = img.bytes();
        let direct = probe(&mut Cursor::new(&fs), fs.len() as u64, None);
        let offset = 1 << 20;
        let mut disk = vec![0xA5u8; offset];
        disk.extend_from_slice(&fs);
        disk.extend_from_slice(&[0x5A; 4096]);
        let mut window = Window::new(Cursor::new(disk), offset as u64, fs.len() as u64);
        let through = probe(&mut window, fs.len() as u64, None);
        assert_eq!(through.kind, FsKind::Ext4);
        assert_eq!(through, direct);
    }

    #[test]
    fn several_signatures_are_raw() {
        require("mke2fs");
        let img = Image::new(32);
        run("mke2fs", &["-q", "-F", "-t", "ext4", "-b", "4096", img.path_str()]);
        let mut bytes = img.bytes();
        bytes[4086..4096].copy_from_slice(b"SWAPSPACE2");
        let len = bytes.len() as u64;
        let map = probe(&mut Cursor::new(bytes), len, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert_eq!(
            map.warnings,
            vec!["partition carries signatures of several filesystems (ext2/3/4, swap); captured raw"]
        );
    }

    #[test]
    fn mbr_swap_type_without_signature_is_raw() {
        let entry = PartitionEntry::Mbr { type_byte: 0x82, bootable: false, logical: false };
        let map = probe(&mut Cursor::new(vec![0u8; 1 << 20]), 1 << 20, Some(&entry));
        assert_eq!(map.kind, FsKind::Raw);
        assert!(map.warnings[0].contains("swap"), "{:?}", map.warnings);
    }

    #[test]
    fn labels_are_trimmed() {
        assert_eq!(label_from_bytes(b"DATA       "), Some("DATA".into()));
        assert_eq!(label_from_bytes(b"root\0\0\0garbage"), Some("root".into()));
        assert_eq!(label_from_bytes(b"\0abc"), None);
        assert_eq!(label_from_bytes(b"   "), None);
    }
}
