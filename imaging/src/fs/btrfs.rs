//! btrfs allocation maps (one device): the extents the extent tree records, placed on the device
//! through the chunk tree.
//!
//! Used on the device:
//! - the first MiB (never allocated by btrfs; boot loaders live there) and every superblock copy
//!   (64 KiB, 64 MiB, 256 GiB) inside the device;
//! - every system chunk, whole (the chunk tree lives there: small, and what bootstraps the rest);
//! - every extent of the extent tree (`EXTENT_ITEM`: data and, without skinny metadata, tree
//!   blocks; `METADATA_ITEM`: tree blocks), at each of its chunk's stripes (both copies of `DUP`);
//! - with a log tree present (a crash after an `fsync`: its blocks are not in the extent tree),
//!   every metadata chunk whole, with a warning.
//!
//! Everything else — unallocated device space and free space inside chunks — is unused.
//!
//! Captured raw (with the reason as a warning): several devices; a chunk profile other than
//! single or DUP; unknown incompatible features, zoned or extent-tree-v2 filesystems; a checksum
//! type other than crc32c; any checksum or consistency failure (superblock, tree blocks, keys out
//! of order, tree depth over 8, an address no chunk maps).
//!
//! Bounds: the chunk map holds at most one chunk per 1 MiB of device, each tree walk at most
//! as many blocks as fit the device, one tree block in memory per level.

use super::{label_from_bytes, le16, le32, le64, read_at_or, AllocationMap, FsKind};
use crate::bitmap::Bitmap;
use std::io::{Read, Seek};

pub const SUPER_OFFSET: u64 = 0x10000;
pub const SUPER_SIZE: usize = 4096;
const MAGIC: &[u8; 8] = b"_BHRfS_M";
const MIRRORS: [u64; 3] = [0x10000, 64 << 20, 256 << 30];
const RESERVED: u64 = 1 << 20;
const HEADER: usize = 101;
pub const MAX_LEVEL: u8 = 8;

pub const CHUNK_ITEM: u8 = 228;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
pub const ROOT_ITEM: u8 = 132;
const EXTENT_TREE_OBJECTID: u64 = 2;

const BG_SYSTEM: u64 = 2;
const BG_METADATA: u64 = 4;
/// RAID0, RAID1, RAID10, RAID5, RAID6, RAID1C3, RAID1C4: profiles this reader does not place.
pub const BG_MULTI_DEVICE: u64 = 8 | 16 | 64 | 128 | 256 | 512 | 1024;
pub const BG_DUP: u64 = 32;

/// Incompatible features understood here: mixed backref, default subvol, mixed groups, lzo,
/// zstd, big metadata, extended iref, raid56 (refused per chunk), skinny metadata, no holes,
/// metadata uuid, raid1c34 (refused per chunk). Zoned (0x1000) and extent tree v2 (0x2000) are
/// not.
const INCOMPAT_KNOWN: u64 = 0x0fff;

/// Whether `head` carries the btrfs superblock magic (`head` must reach past 64 KiB + 72 bytes).
pub(super) fn detect(head: &[u8]) -> bool {
    head.get(SUPER_OFFSET as usize + 0x40..SUPER_OFFSET as usize + 0x48) == Some(MAGIC)
}

/// The CRC-32C (Castagnoli) btrfs checksums superblocks and tree blocks with.
pub fn crc32c(b: &[u8]) -> u32 {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    CRC32C.checksum(b)
}

/// One chunk: `length` logical bytes from `logical`, at `stripes` (device offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub logical: u64,
    pub length: u64,
    pub flags: u64,
    pub stripes: Vec<u64>,
}

/// What the superblock says about where things are.
pub struct Geometry {
    pub sectorsize: u64,
    pub nodesize: u64,
    pub fsid: [u8; 16],
    pub root: u64,
    pub root_level: u8,
    pub chunk_root: u64,
    pub chunk_root_level: u8,
    pub log_root: u64,
    pub label: Option<String>,
}

/// Decodes and checks the superblock `sb` (4096 bytes from [`SUPER_OFFSET`]) of a partition of
/// `part_size` bytes: one device, crc32c, known features; its geometry and the system chunks.
pub fn superblock(sb: &[u8], part_size: u64) -> Result<(Geometry, Vec<Chunk>), String> {
    if &sb[0x40..0x48] != MAGIC {
        return Err("no btrfs magic".into());
    }
    if le16(sb, 0xc4) != 0 {
        return Err(format!("checksum type {} is not crc32c", le16(sb, 0xc4)));
    }
    let crc = crc32c(&sb[0x20..]);
    if crc != le32(sb, 0) {
        return Err(format!("superblock checksum {crc:#010x} does not match the stored {:#010x}", le32(sb, 0)));
    }
    if le64(sb, 0x30) != SUPER_OFFSET {
        return Err(format!("superblock says it is at {}", le64(sb, 0x30)));
    }
    if le64(sb, 0x88) != 1 {
        return Err(format!("filesystem spans {} devices", le64(sb, 0x88)));
    }
    let incompat = le64(sb, 0xbc);
    if incompat & !INCOMPAT_KNOWN != 0 {
        return Err(format!("unknown or unsupported incompatible features {:#x}", incompat & !INCOMPAT_KNOWN));
    }
    let sectorsize = le32(sb, 0x90) as u64;
    let nodesize = le32(sb, 0x94) as u64;
    if !(4096..=65536).contains(&sectorsize) || !sectorsize.is_power_of_two() {
        return Err(format!("sector size {sectorsize} is not a power of two in 4–64 KiB"));
    }
    if !(sectorsize..=65536).contains(&nodesize) || !nodesize.is_power_of_two() {
        return Err(format!("node size {nodesize} is not a power of two in sector size–64 KiB"));
    }
    let total = le64(sb, 0xd1); // dev_item.total_bytes
    if total > part_size {
        return Err(format!("device size {total} is larger than the partition ({part_size} bytes)"));
    }
    let mut fsid = [0u8; 16];
    // With the metadata_uuid feature, tree blocks carry metadata_uuid instead of fsid.
    let fsid_at = if incompat & 0x400 != 0 { 0x23b } else { 0x20 };
    fsid.copy_from_slice(&sb[fsid_at..fsid_at + 16]);
    let g = Geometry {
        sectorsize,
        nodesize,
        fsid,
        root: le64(sb, 0x50),
        root_level: sb[0xc6],
        chunk_root: le64(sb, 0x58),
        chunk_root_level: sb[0xc7],
        log_root: le64(sb, 0x60),
        label: label_from_bytes(&sb[0x12b..0x22b]),
    };
    let array_size = le32(sb, 0xa0) as usize;
    let array = sb.get(0x32b..0x32b + array_size).ok_or("system chunk array is larger than its 2048 bytes")?;
    if array_size > 2048 {
        return Err("system chunk array is larger than its 2048 bytes".into());
    }
    let mut chunks = Vec::new();
    let mut pos = 0;
    while pos < array.len() {
        let key = array.get(pos..pos + 17).ok_or("system chunk array cut short")?;
        if key[8] != CHUNK_ITEM {
            return Err(format!("system chunk array holds an item of type {}", key[8]));
        }
        let (chunk, len) = chunk_item(le64(key, 9), &array[pos + 17..])?;
        chunks.push(chunk);
        pos += 17 + len;
    }
    Ok((g, chunks))
}

/// Decodes a chunk item at the start of `b`: the chunk and the item's length.
pub fn chunk_item(logical: u64, b: &[u8]) -> Result<(Chunk, usize), String> {
    if b.len() < 48 {
        return Err("chunk item cut short".into());
    }
    let n = le16(b, 44) as usize;
    let len = 48 + 32 * n;
    if n == 0 || b.len() < len {
        return Err(format!("chunk at {logical} has {n} stripes in {} bytes", b.len()));
    }
    let stripes = (0..n)
        .map(|i| {
            let s = &b[48 + 32 * i..];
            if le64(s, 0) != 1 {
                Err(format!("chunk at {logical} has a stripe on device {}", le64(s, 0)))
            } else {
                Ok(le64(s, 8))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Chunk { logical, length: le64(b, 0), flags: le64(b, 24), stripes }, len))
}

/// Called with (objectid, type, offset, item data) for each leaf item of a tree walk.
type ItemFn<'f> = dyn FnMut(u64, u8, u64, &[u8]) -> Result<(), String> + 'f;

struct Reader<'a, R> {
    part: &'a mut R,
    g: &'a Geometry,
    chunks: &'a [Chunk],
    part_size: u64,
    /// Tree blocks read so far, against [`Reader::max_blocks`].
    blocks: u64,
    max_blocks: u64,
}

impl<R: Read + Seek> Reader<'_, R> {
    /// The device offset of logical address `logical` (first stripe) with `len` bytes there.
    fn physical(&self, logical: u64, len: u64) -> Result<u64, String> {
        let c = find_chunk(self.chunks, logical).ok_or_else(|| format!("no chunk maps logical address {logical}"))?;
        if logical + len > c.logical + c.length {
            return Err(format!("{len} bytes at {logical} cross the end of their chunk"));
        }
        let p = c.stripes[0] + (logical - c.logical);
        if p + len > self.part_size {
            return Err(format!("logical {logical} maps past the end of the partition"));
        }
        Ok(p)
    }

    /// Reads and checks the tree block at `logical`.
    fn node(&mut self, logical: u64, level: u8) -> Result<Vec<u8>, String> {
        self.blocks += 1;
        if self.blocks > self.max_blocks {
            return Err("tree walk visits more blocks than the device holds".into());
        }
        let p = self.physical(logical, self.g.nodesize)?;
        let mut b = vec![0u8; self.g.nodesize as usize];
        read_at_or(self.part, p, &mut b, "a tree block")?;
        let crc = crc32c(&b[32..]);
        if crc != le32(&b, 0) {
            return Err(format!("tree block at {logical}: checksum {crc:#010x} does not match {:#010x}", le32(&b, 0)));
        }
        if le64(&b, 48) != logical || b[32..48] != self.g.fsid || b[100] != level {
            return Err(format!("tree block at {logical}: header does not match where it was found"));
        }
        Ok(b)
    }

    /// Calls `f(objectid, type, offset, data)` for every leaf item of the tree at `root`, in key
    /// order.
    fn walk(&mut self, root: u64, level: u8, f: &mut ItemFn<'_>) -> Result<(), String> {
        if level > MAX_LEVEL {
            return Err(format!("tree level {level} is over {MAX_LEVEL}"));
        }
        let b = self.node(root, level)?;
        let n = le32(&b, 96) as usize;
        let mut last: Option<(u64, u8, u64)> = None;
        let mut check_order = |k: (u64, u8, u64)| {
            if last.is_some_and(|l| l >= k) {
                return Err(format!("tree block at {root}: keys out of order"));
            }
            last = Some(k);
            Ok(())
        };
        if level == 0 {
            if HEADER + n * 25 > b.len() {
                return Err(format!("leaf at {root} claims {n} items"));
            }
            for i in 0..n {
                let it = &b[HEADER + 25 * i..];
                let key = (le64(it, 0), it[8], le64(it, 9));
                check_order(key)?;
                let (off, size) = (le32(it, 17) as usize, le32(it, 21) as usize);
                let data = b
                    .get(HEADER + off..HEADER + off + size)
                    .ok_or_else(|| format!("leaf at {root}: item {i} lies outside the block"))?;
                f(key.0, key.1, key.2, data)?;
            }
        } else {
            if HEADER + n * 33 > b.len() || n == 0 {
                return Err(format!("node at {root} claims {n} pointers"));
            }
            for i in 0..n {
                let kp = &b[HEADER + 33 * i..];
                check_order((le64(kp, 0), kp[8], le64(kp, 9)))?;
                self.walk(le64(kp, 17), level - 1, f)?;
            }
        }
        Ok(())
    }
}

/// The chunk of the sorted `chunks` that maps `logical`.
pub fn find_chunk(chunks: &[Chunk], logical: u64) -> Option<&Chunk> {
    let i = chunks.partition_point(|c| c.logical <= logical);
    chunks[..i].last().filter(|c| logical < c.logical + c.length)
}

/// Sorts the chunks and checks they do not overlap, logically or on the device.
pub fn check_chunks(chunks: &mut [Chunk], part_size: u64) -> Result<(), String> {
    chunks.sort_by_key(|c| c.logical);
    for w in chunks.windows(2) {
        if w[0].logical + w[0].length > w[1].logical {
            return Err(format!("chunks at {} and {} overlap", w[0].logical, w[1].logical));
        }
    }
    let mut phys: Vec<(u64, u64)> = Vec::new();
    for c in chunks.iter() {
        if c.length == 0 || c.logical.checked_add(c.length).is_none() {
            return Err(format!("chunk at {} has length {}", c.logical, c.length));
        }
        // A DUP chunk's stripes hold copies; single has one stripe.
        let stripe_len = c.length;
        for &s in &c.stripes {
            if s.checked_add(stripe_len).is_none_or(|e| e > part_size) {
                return Err(format!("chunk at {} lies past the end of the partition", c.logical));
            }
            phys.push((s, s + stripe_len));
        }
    }
    phys.sort();
    for w in phys.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(format!("chunk stripes at device offsets {} and {} overlap", w[0].0, w[1].0));
        }
    }
    Ok(())
}

/// The allocation map of the btrfs filesystem in `part`. Errors are reasons for a raw capture.
pub(super) fn read<R: Read + Seek>(part: &mut R, part_size: u64) -> Result<AllocationMap, String> {
    let mut sb = vec![0u8; SUPER_SIZE];
    read_at_or(part, SUPER_OFFSET, &mut sb, "the superblock")?;
    let (g, mut sys_chunks) = superblock(&sb, part_size)?;
    check_chunks(&mut sys_chunks, part_size)?;
    let max_chunks = part_size / RESERVED + 16;
    let max_blocks = part_size / g.nodesize + 1;

    // The chunk tree, read through the system chunks.
    let mut chunks = Vec::new();
    {
        let mut r = Reader { part: &mut *part, g: &g, chunks: &sys_chunks, part_size, blocks: 0, max_blocks };
        r.walk(g.chunk_root, g.chunk_root_level, &mut |_, ty, offset, data| {
            if ty == CHUNK_ITEM {
                if chunks.len() as u64 >= max_chunks {
                    return Err("more chunks than the device can hold".into());
                }
                chunks.push(chunk_item(offset, data)?.0);
            }
            Ok(())
        })?;
    }
    check_chunks(&mut chunks, part_size)?;
    for c in &sys_chunks {
        if !chunks.contains(c) {
            return Err(format!("system chunk at {} is not in the chunk tree", c.logical));
        }
    }
    let mut warnings = Vec::new();
    for c in &chunks {
        let ok_stripes = if c.flags & BG_DUP != 0 { 2 } else { 1 };
        if c.flags & BG_MULTI_DEVICE != 0 || c.stripes.len() != ok_stripes {
            return Err(format!("chunk at {} has profile {:#x} with {} stripes", c.logical, c.flags, c.stripes.len()));
        }
    }

    // One bit per sector of the filesystem's device size; any partition tail past it is used.
    let sector = g.sectorsize;
    let total = le64(&sb, 0xd1);
    let mut bitmap = Bitmap::new(total / sector);
    let mut mark = |bm: &mut Bitmap, start: u64, len: u64| {
        let (first, end) = (start / sector, (start + len).div_ceil(sector).min(bm.len()));
        if first < end {
            bm.set_range(first, end - first);
        }
    };
    mark(&mut bitmap, 0, RESERVED.min(part_size));
    for m in MIRRORS {
        if m + SUPER_SIZE as u64 <= total {
            mark(&mut bitmap, m, SUPER_SIZE as u64);
        }
    }
    let whole = |c: &Chunk, bm: &mut Bitmap, mark: &mut dyn FnMut(&mut Bitmap, u64, u64)| {
        for &s in &c.stripes {
            mark(bm, s, c.length);
        }
    };
    for c in chunks.iter().filter(|c| c.flags & BG_SYSTEM != 0) {
        whole(c, &mut bitmap, &mut mark);
    }
    if g.log_root != 0 {
        warnings.push("the log tree holds changes not yet in the extent tree (not cleanly unmounted after an fsync): metadata chunks captured whole".into());
        for c in chunks.iter().filter(|c| c.flags & BG_METADATA != 0) {
            whole(c, &mut bitmap, &mut mark);
        }
    }

    // The extent tree's root, from the root tree.
    let mut extent_root = None;
    let mut r = Reader { part: &mut *part, g: &g, chunks: &chunks, part_size, blocks: 0, max_blocks };
    r.walk(g.root, g.root_level, &mut |objectid, ty, _, data| {
        if ty == ROOT_ITEM && objectid == EXTENT_TREE_OBJECTID {
            if data.len() < 239 {
                return Err("extent tree's root item is cut short".into());
            }
            extent_root = Some((le64(data, 176), data[238]));
        }
        Ok(())
    })?;
    let (extent_root, extent_level) = extent_root.ok_or("root tree has no extent tree")?;
    let nodesize = g.nodesize;
    let mut extents: Vec<(u64, u64)> = Vec::new();
    r.blocks = 0;
    r.walk(extent_root, extent_level, &mut |objectid, ty, offset, _| {
        let len = match ty {
            EXTENT_ITEM => offset,
            METADATA_ITEM => nodesize,
            _ => return Ok(()),
        };
        if len == 0 || len > 1 << 30 || extents.len() as u64 > part_size / sector {
            return Err(format!("extent at {objectid} of {len} bytes is not plausible"));
        }
        extents.push((objectid, len));
        Ok(())
    })?;
    for (logical, len) in extents {
        let c = find_chunk(&chunks, logical).ok_or_else(|| format!("no chunk maps extent at {logical}"))?;
        if logical + len > c.logical + c.length {
            return Err(format!("extent at {logical} of {len} bytes crosses the end of its chunk"));
        }
        for &s in &c.stripes {
            mark(&mut bitmap, s + (logical - c.logical), len);
        }
    }
    Ok(AllocationMap { kind: FsKind::Btrfs, block_size: sector as u32, bitmap, label: g.label, warnings })
}
