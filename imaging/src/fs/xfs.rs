//! XFS allocation maps: every block of the data section except the free extents recorded in
//! each allocation group's free-space B+tree by block number (the bnobt), as partclone's
//! xfsclone and `xfs_copy` do.
//!
//! Everything outside the bnobt counts as used: the AG headers, the free list (AGFL) blocks, the
//! btree blocks, the inodes, the internal log and the file data. The AGFL entries are read only
//! to check that none of them lies in a free extent.
//!
//! Captured raw (with the reason as a warning) is any filesystem that
//! - has an external log or a realtime section: the partition is not the whole filesystem;
//! - has a dirty log: the bnobt may lag allocations only the log knows. The log is clean when
//!   the last record before its head is a lone unmount record ending exactly at the head (the
//!   kernel's `xlog_check_unmount_rec`, which is also what `xfs_logprint -t` reports as
//!   `<CLEAN>`). The head is where the cycle number in front of every 512-byte log block drops;
//!   2 MiB (the most log I/O that can be in flight) on both sides of it must be of one cycle
//!   each, or the log is treated as dirty. A never-written (all-zero) log is clean. Any log
//!   incompatible feature flag, still set, also counts as dirty;
//! - is marked `inprogress` (an unfinished mkfs) or `needsrepair`, has unknown incompatible
//!   features, a bad checksum (v5 superblock, AGF, AGFL and bnobt blocks carry CRC32c), or
//!   any free-space record outside its AG, out of order, or not summing to the AGF's count.
//!
//! All fields are big-endian except the CRCs. Sizes are checked before anything is allocated:
//! the map has one bit per filesystem block of a data section that fits the partition, one block
//! is read at a time, and the btree walk is bounded by its depth and by the AG's block count.

use super::{label_from_bytes, read_at_or, AllocationMap, FsKind};
use crate::bitmap::Bitmap;
use std::io::{Read, Seek};

const SB_MAGIC: &[u8; 4] = b"XFSB";
const AGF_MAGIC: &[u8; 4] = b"XAGF";
const AGFL_MAGIC: &[u8; 4] = b"XAFL";
const BNOBT_MAGIC_V4: &[u8; 4] = b"ABTB";
const BNOBT_MAGIC_V5: &[u8; 4] = b"AB3B";
const LOG_MAGIC: u32 = 0xFEED_BABE;

/// Offsets of the little-endian CRC32c fields of v5 metadata.
const SB_CRC_OFF: usize = 0xE0;
const AGF_CRC_OFF: usize = 0xD8;
const AGFL_CRC_OFF: usize = 0x20;
const BTREE_CRC_OFF: usize = 52;

const BTREE_HDR_V4: usize = 16;
const BTREE_HDR_V5: usize = 56;
const AGFL_HDR_V5: usize = 36;

/// v5 incompatible features this reader understands: ftype, sparse inodes, meta_uuid, bigtime,
/// needsrepair (refused below), nrext64, exchange-range, parent pointers. None of them changes
/// the AG headers or the bnobt.
const INCOMPAT_META_UUID: u32 = 1 << 2;
const INCOMPAT_NEEDSREPAIR: u32 = 1 << 4;
const INCOMPAT_KNOWN: u32 = 0xFF;

/// `XFS_MIN_AG_BLOCKS`.
const MIN_AG_BLOCKS: u64 = 64;
/// `XFS_BTREE_MAXLEVELS` of older kernels; the alloc btrees never get near it.
const MAX_LEVELS: u32 = 9;

const BBSIZE: u64 = 512;
/// Blocks of log I/O that can be in flight at once (8 log buffers of 256 KiB): the region
/// around the head that must be of one cycle each side.
const LOG_SCAN_BBS: u64 = 8 * 256 * 1024 / BBSIZE;
/// Largest log record: 256 KiB of data behind up to 8 header blocks.
const LOG_MAX_RECORD_BBS: u64 = 256 * 1024 / BBSIZE + 8;
const XLOG_UNMOUNT_TRANS: u8 = 0x20;

/// Whether `head` (the start of a partition) carries the XFS superblock magic.
pub(super) fn detect(head: &[u8]) -> bool {
    head.starts_with(SB_MAGIC)
}

fn be16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

/// Whether the little-endian CRC32c at `off` of `buf` matches the rest of `buf` (computed with
/// the field zeroed, as XFS does). Public for the file reader of `kura files`.
pub fn crc_ok(buf: &[u8], off: usize) -> bool {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let Some(stored) = buf.get(off..off + 4) else { return false };
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let mut d = CRC32C.digest();
    d.update(&buf[..off]);
    d.update(&[0; 4]);
    d.update(&buf[off + 4..]);
    d.finalize() == stored
}

/// The superblock fields the allocation map needs, validated.
#[derive(Debug)]
struct Geometry {
    v5: bool,
    block_size: u64,
    sect_size: u64,
    dblocks: u64,
    agblocks: u64,
    agcount: u64,
    /// The UUID stamped into v5 metadata blocks.
    meta_uuid: [u8; 16],
    /// First linear block of the internal log and its length in blocks.
    log_start: u64,
    log_blocks: u64,
    label: Option<String>,
}

impl Geometry {
    fn parse(sb: &[u8], part_size: u64) -> Result<Geometry, String> {
        if !sb.starts_with(SB_MAGIC) {
            return Err("bad superblock magic".into());
        }
        let version = be16(sb, 0x64) & 0xF;
        let v5 = match version {
            4 => false,
            5 => true,
            v => return Err(format!("superblock version {v} is not 4 or 5")),
        };
        let block_size = be32(sb, 0x04) as u64;
        if !(512..=65536).contains(&block_size) || block_size != 1 << sb[0x78].min(63) {
            return Err(format!("block size {block_size} (log {}) is invalid", sb[0x78]));
        }
        let sect_size = be16(sb, 0x66) as u64;
        if !(512..=32768).contains(&sect_size) || sect_size != 1 << sb[0x79].min(63) || sect_size > block_size {
            return Err(format!("sector size {sect_size} (log {}) is invalid", sb[0x79]));
        }
        if sb.len() < sect_size as usize {
            return Err("superblock buffer shorter than a sector".into());
        }
        if v5 && !crc_ok(&sb[..sect_size as usize], SB_CRC_OFF) {
            return Err("superblock checksum mismatch".into());
        }
        let incompat = if v5 { be32(sb, 0xD8) } else { 0 };
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(format!("unknown incompatible features {:#x}", incompat & !INCOMPAT_KNOWN));
        }
        if incompat & INCOMPAT_NEEDSREPAIR != 0 {
            return Err("the filesystem is marked as needing repair (run xfs_repair)".into());
        }
        if sb[0x7E] != 0 {
            return Err("the superblock is marked in progress (mkfs did not finish)".into());
        }
        if v5 && be32(sb, 0xDC) != 0 {
            return Err(format!(
                "log incompatible features {:#x} are set: the log is dirty (mount and unmount it cleanly)",
                be32(sb, 0xDC)
            ));
        }
        if be64(sb, 0x10) != 0 || be64(sb, 0x18) != 0 {
            return Err("it has a realtime section on another device".into());
        }
        let log_fsb = be64(sb, 0x30);
        if log_fsb == 0 {
            return Err("its log is on an external device".into());
        }

        let dblocks = be64(sb, 0x08);
        let agblocks = be32(sb, 0x54) as u64;
        let agcount = be32(sb, 0x58) as u64;
        let agblklog = sb[0x7C] as u32;
        if agblocks < MIN_AG_BLOCKS || agcount == 0 {
            return Err(format!("{agcount} allocation groups of {agblocks} blocks is invalid"));
        }
        if agblklog > 32 || agblocks > 1 << agblklog || agblocks <= 1 << agblklog >> 1 {
            return Err(format!("AG block log {agblklog} does not match {agblocks} blocks per AG"));
        }
        let fs_bytes = dblocks.checked_mul(block_size).ok_or("data block count overflows")?;
        if fs_bytes > part_size {
            return Err(format!(
                "filesystem of {dblocks} blocks of {block_size} bytes is larger than the partition ({part_size} bytes)"
            ));
        }
        // The last AG may be short, but every AG exists: (agcount - 1) * agblocks < dblocks.
        if (agcount - 1).saturating_mul(agblocks) >= dblocks || agcount.saturating_mul(agblocks) < dblocks {
            return Err(format!("{agcount} AGs of {agblocks} blocks do not make {dblocks} blocks"));
        }

        let log_ag = log_fsb >> agblklog;
        let log_agbno = log_fsb & ((1u64 << agblklog) - 1);
        let log_blocks = be32(sb, 0x60) as u64;
        let log_start = log_ag * agblocks + log_agbno;
        if log_ag >= agcount || log_blocks == 0 || log_agbno + log_blocks > agblocks || log_start + log_blocks > dblocks
        {
            return Err(format!(
                "internal log at AG {log_ag} block {log_agbno} ({log_blocks} blocks) is outside the data"
            ));
        }

        let mut meta_uuid = [0u8; 16];
        let uuid_off = if incompat & INCOMPAT_META_UUID != 0 { 0xF8 } else { 0x20 };
        meta_uuid.copy_from_slice(&sb[uuid_off..uuid_off + 16]);
        Ok(Geometry {
            v5,
            block_size,
            sect_size,
            dblocks,
            agblocks,
            agcount,
            meta_uuid,
            log_start,
            log_blocks,
            label: label_from_bytes(&sb[0x6C..0x78]),
        })
    }

    /// Blocks of AG `agno` (the last one may be short).
    fn ag_len(&self, agno: u64) -> u64 {
        (self.dblocks - agno * self.agblocks).min(self.agblocks)
    }
}

/// One AG's free space as the bnobt records it, and its free list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgFreeSpace {
    /// `(AG block, length)` of every free extent, in block order.
    pub extents: Vec<(u64, u64)>,
    /// The AG blocks on the free list (AGFL), in list order.
    pub agfl: Vec<u64>,
    /// Levels of the bnobt.
    pub bno_levels: u32,
}

/// Reads the allocation map of the XFS filesystem in `part`.
pub(super) fn read<R: Read + Seek>(part: &mut R, part_size: u64) -> Result<AllocationMap, String> {
    let (g, ags) = read_free_space(part, part_size)?;
    let mut map = Bitmap::new(g.dblocks);
    for (agno, ag) in ags.iter().enumerate() {
        let ag_start = agno as u64 * g.agblocks;
        let mut cursor = 0;
        for &(start, len) in &ag.extents {
            map.set_range(ag_start + cursor, start - cursor);
            cursor = start + len;
        }
        map.set_range(ag_start + cursor, g.ag_len(agno as u64) - cursor);
    }
    // Already used (the log is never in the bnobt); the check guards against a bnobt claiming it.
    if map.runs_in(g.log_start, g.log_blocks).map(|(_, n)| n).sum::<u64>() != g.log_blocks {
        return Err("the free-space btree lists blocks of the internal log".into());
    }
    let block_size = u32::try_from(g.block_size).map_err(|_| "block size too large")?;
    Ok(AllocationMap { kind: FsKind::Xfs, block_size, bitmap: map, label: g.label.clone(), warnings: Vec::new() })
}

/// Validates the superblock and the log, then reads every AG's free space.
fn read_free_space<R: Read + Seek>(part: &mut R, part_size: u64) -> Result<(Geometry, Vec<AgFreeSpace>), String> {
    let mut head = vec![0u8; 512];
    read_at_or(part, 0, &mut head, "the superblock")?;
    let sect = be16(&head, 0x66) as usize;
    if (512..=32768).contains(&sect) && sect.is_power_of_two() {
        head.resize(sect, 0);
        read_at_or(part, 0, &mut head, "the superblock sector")?;
    }
    let g = Geometry::parse(&head, part_size)?;
    check_log_clean(part, &g)?;
    let mut ags = Vec::new();
    for agno in 0..g.agcount {
        ags.push(read_ag(part, &g, agno).map_err(|e| format!("AG {agno}: {e}"))?);
    }
    Ok((g, ags))
}

/// Reads AG `agno`'s AGF, walks its bnobt and checks its AGFL.
fn read_ag<R: Read + Seek>(part: &mut R, g: &Geometry, agno: u64) -> Result<AgFreeSpace, String> {
    let ag_start = agno * g.agblocks;
    let ag_len = g.ag_len(agno);
    let ag_byte = ag_start * g.block_size;
    let mut agf = vec![0u8; g.sect_size as usize];
    read_at_or(part, ag_byte + g.sect_size, &mut agf, "the AGF")?;
    if !agf.starts_with(AGF_MAGIC) || be32(&agf, 0x04) != 1 {
        return Err("bad AGF magic or version".into());
    }
    if g.v5 && (!crc_ok(&agf, AGF_CRC_OFF) || agf[0x40..0x50] != g.meta_uuid) {
        return Err("AGF checksum or UUID mismatch".into());
    }
    if be32(&agf, 0x08) as u64 != agno || be32(&agf, 0x0C) as u64 != ag_len {
        return Err(format!("AGF says AG {} of {} blocks", be32(&agf, 0x08), be32(&agf, 0x0C)));
    }
    let root = be32(&agf, 0x10) as u64;
    let levels = be32(&agf, 0x1C);
    if root == 0 || root >= ag_len || levels == 0 || levels > MAX_LEVELS {
        return Err(format!("bnobt root {root} at {levels} levels is invalid"));
    }
    let freeblks = be32(&agf, 0x34) as u64;
    let extents = walk_bnobt(part, g, agno, root, levels)?;
    let sum: u64 = extents.iter().map(|e| e.1).sum();
    if sum != freeblks {
        return Err(format!("the bnobt holds {sum} free blocks but the AGF says {freeblks}"));
    }
    let agfl = read_agfl(part, g, agno, &agf)?;
    for &b in &agfl {
        let i = extents.partition_point(|e| e.0 + e.1 <= b);
        if extents.get(i).is_some_and(|e| e.0 <= b) {
            return Err(format!("free list block {b} is also in a free extent"));
        }
    }
    Ok(AgFreeSpace { extents, agfl, bno_levels: levels })
}

/// The AGFL entries from `flfirst` for `flcount` entries (wrapping).
fn read_agfl<R: Read + Seek>(part: &mut R, g: &Geometry, agno: u64, agf: &[u8]) -> Result<Vec<u64>, String> {
    let ag_len = g.ag_len(agno);
    let mut buf = vec![0u8; g.sect_size as usize];
    read_at_or(part, agno * g.agblocks * g.block_size + 3 * g.sect_size, &mut buf, "the AGFL")?;
    let hdr = if g.v5 {
        if !buf.starts_with(AGFL_MAGIC) || be32(&buf, 4) as u64 != agno || buf[8..24] != g.meta_uuid {
            return Err("bad AGFL magic, AG number or UUID".into());
        }
        if !crc_ok(&buf, AGFL_CRC_OFF) {
            return Err("AGFL checksum mismatch".into());
        }
        AGFL_HDR_V5
    } else {
        0
    };
    let size = (buf.len() - hdr) as u64 / 4;
    let (first, last, count) = (be32(agf, 0x28) as u64, be32(agf, 0x2C) as u64, be32(agf, 0x30) as u64);
    if count > size || (count > 0 && (first >= size || last >= size)) {
        return Err(format!("free list first {first}, last {last}, count {count} do not fit {size} slots"));
    }
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let slot = ((first + i) % size) as usize;
        let b = be32(&buf, hdr + 4 * slot) as u64;
        if b >= ag_len {
            return Err(format!("free list block {b} is outside the AG"));
        }
        out.push(b);
    }
    Ok(out)
}

/// Every record of the bnobt rooted at `root`, depth first, checking every block's header and
/// that the records are in order, inside the AG and non-overlapping.
fn walk_bnobt<R: Read + Seek>(
    part: &mut R,
    g: &Geometry,
    agno: u64,
    root: u64,
    levels: u32,
) -> Result<Vec<(u64, u64)>, String> {
    let ag_start = agno * g.agblocks;
    let ag_len = g.ag_len(agno);
    let bs = g.block_size as usize;
    let (magic, hdr) = if g.v5 { (BNOBT_MAGIC_V5, BTREE_HDR_V5) } else { (BNOBT_MAGIC_V4, BTREE_HDR_V4) };
    let leaf_max = (bs - hdr) / 8;
    let node_max = (bs - hdr) / 12;
    let mut buf = vec![0u8; bs];
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut visited = 0u64;
    // (block, level) still to visit, the next one last.
    let mut stack = vec![(root, levels - 1)];
    while let Some((agbno, level)) = stack.pop() {
        visited += 1;
        if visited > ag_len {
            return Err("the bnobt has more blocks than the AG".into());
        }
        read_at_or(part, (ag_start + agbno) * g.block_size, &mut buf, "a bnobt block")?;
        if !buf.starts_with(magic) || be16(&buf, 4) as u32 != level {
            return Err(format!("bnobt block {agbno}: bad magic or level (expected {level})"));
        }
        if g.v5 {
            let daddr = (ag_start + agbno) * (g.block_size / BBSIZE);
            if be64(&buf, 16) != daddr || buf[32..48] != g.meta_uuid || be32(&buf, 48) as u64 != agno {
                return Err(format!("bnobt block {agbno}: address, UUID or owner mismatch"));
            }
            if !crc_ok(&buf, BTREE_CRC_OFF) {
                return Err(format!("bnobt block {agbno}: checksum mismatch"));
            }
        }
        let numrecs = be16(&buf, 6) as usize;
        let is_root = agbno == root && level == levels - 1;
        if numrecs > if level == 0 { leaf_max } else { node_max } || (numrecs == 0 && !(is_root && level == 0)) {
            return Err(format!("bnobt block {agbno}: {numrecs} records"));
        }
        if level == 0 {
            for i in 0..numrecs {
                let start = be32(&buf, hdr + 8 * i) as u64;
                let len = be32(&buf, hdr + 8 * i + 4) as u64;
                let prev_end = out.last().map_or(0, |e| e.0 + e.1);
                if len == 0 || start < prev_end || start + len > ag_len {
                    return Err(format!(
                        "bnobt block {agbno}: free extent {start}+{len} out of order or outside the AG"
                    ));
                }
                out.push((start, len));
            }
        } else {
            let ptrs = hdr + 8 * node_max;
            for i in (0..numrecs).rev() {
                let child = be32(&buf, ptrs + 4 * i) as u64;
                if child == 0 || child >= ag_len {
                    return Err(format!("bnobt block {agbno}: child {child} outside the AG"));
                }
                stack.push((child, level - 1));
            }
        }
    }
    Ok(out)
}

/// Fails unless the internal log is clean (see the module comment for the rule).
fn check_log_clean<R: Read + Seek>(part: &mut R, g: &Geometry) -> Result<(), String> {
    let log = Log { base: g.log_start * g.block_size, bbs: g.log_blocks * (g.block_size / BBSIZE) };
    let dirty =
        |why: &str| Err(format!("the log is dirty ({why}): not cleanly unmounted (mount it once or run xfs_repair)"));
    let first = log.cycle(part, 0)?;
    let last = log.cycle(part, log.bbs - 1)?;
    let head = if last == 0 {
        if first == 0 {
            return Ok(()); // Never written: nothing to replay.
        }
        // Partly written since mkfs: the head is the first zero-cycle block.
        log.first_with_cycle(part, 0, first)?
    } else if first == last {
        log.bbs // Exactly wrapped: the head is at the end (block 0 of the next cycle).
    } else if last.wrapping_add(1) == first {
        log.first_with_cycle(part, last, first)?
    } else {
        return dirty(&format!("cycles {first} and {last} at its ends"));
    };
    // One cycle on each side of the head, as far as in-flight writes could reach.
    let before = head.saturating_sub(LOG_SCAN_BBS);
    let after = (head + LOG_SCAN_BBS).min(log.bbs);
    let expect_after = if last == 0 { 0 } else { last };
    if !log.all_cycle(part, before, head, first)? || !log.all_cycle(part, head, after, expect_after)? {
        return dirty("holes around its head");
    }
    // The last record before the head must be a lone unmount record ending at the head.
    let head = head % log.bbs;
    let mut found = None;
    for back in 1..=LOG_MAX_RECORD_BBS.min(log.bbs) {
        let b = (head + log.bbs - back) % log.bbs;
        let blk = log.block(part, b)?;
        if be32(&blk, 0) == LOG_MAGIC {
            found = Some((b, blk));
            break;
        }
    }
    let Some((rec, hdr)) = found else { return dirty("no record header near its head") };
    let version = be32(&hdr, 8);
    let len = be32(&hdr, 0x0C) as u64;
    let h_size = be32(&hdr, 0x140) as u64;
    let hblks = if version & 2 != 0 && h_size > 32768 { h_size.div_ceil(32768) } else { 1 };
    if version == 0 || version > 3 || hblks > 8 || len == 0 || len > 256 * 1024 {
        return dirty("its last record header is invalid");
    }
    if be32(&hdr, 0x28) != 1 || (rec + hblks + len.div_ceil(BBSIZE)) % log.bbs != head {
        return dirty("its last record is not an unmount record");
    }
    let op = log.block(part, (rec + hblks) % log.bbs)?;
    if op[9] & XLOG_UNMOUNT_TRANS == 0 {
        return dirty("its last record is not an unmount record");
    }
    Ok(())
}

/// The internal log: `bbs` blocks of 512 bytes from byte `base` of the partition.
struct Log {
    base: u64,
    bbs: u64,
}

impl Log {
    fn block<R: Read + Seek>(&self, part: &mut R, bb: u64) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; BBSIZE as usize];
        read_at_or(part, self.base + bb * BBSIZE, &mut b, "a log block")?;
        Ok(b)
    }

    /// The cycle number of a block: in the header of a record, first in every other block.
    fn cycle<R: Read + Seek>(&self, part: &mut R, bb: u64) -> Result<u32, String> {
        let b = self.block(part, bb)?;
        Ok(if be32(&b, 0) == LOG_MAGIC { be32(&b, 4) } else { be32(&b, 0) })
    }

    /// Binary search for the first block of cycle `low` after the blocks of cycle `high` that
    /// start the log (block 0 has `high`, the last block `low`).
    fn first_with_cycle<R: Read + Seek>(&self, part: &mut R, low: u32, high: u32) -> Result<u64, String> {
        let (mut lo, mut hi) = (0u64, self.bbs - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let c = self.cycle(part, mid)?;
            if c == high {
                lo = mid;
            } else if c == low {
                hi = mid;
            } else {
                return Err(format!("the log is dirty (block {mid} has cycle {c}, neither {high} nor {low})"));
            }
        }
        Ok(hi)
    }

    /// Whether every block in `[from, to)` has cycle `cycle`, read 64 KiB at a time.
    fn all_cycle<R: Read + Seek>(&self, part: &mut R, from: u64, to: u64, cycle: u32) -> Result<bool, String> {
        let mut buf = vec![0u8; 128 * BBSIZE as usize];
        let mut bb = from;
        while bb < to {
            let n = (to - bb).min(128);
            let chunk = &mut buf[..(n * BBSIZE) as usize];
            read_at_or(part, self.base + bb * BBSIZE, chunk, "the log")?;
            for blk in chunk.chunks(BBSIZE as usize) {
                let c = if be32(blk, 0) == LOG_MAGIC { be32(blk, 4) } else { be32(blk, 0) };
                if c != cycle {
                    return Ok(false);
                }
            }
            bb += n;
        }
        Ok(true)
    }
}

#[cfg(test)]
#[path = "xfs_tests.rs"]
mod tests;
