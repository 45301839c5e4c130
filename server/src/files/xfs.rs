//! XFS, read in place by Kura's own decoder of the on-disk format (no crate reads XFS): v5
//! (CRC) filesystems as mkfs.xfs makes them today, and v4 ones with version 2 directories.
//!
//! What is read: the primary superblock; inodes by number (AG, block in the AG and slot from
//! the superblock's log sizes), their core (mode, owner, size, mtime with or without bigtime,
//! large extent counts) and data fork in its three forms: local (in the inode), extent list,
//! and a B+tree of extents (bmbt) of any depth up to [`MAX_BMBT_LEVELS`]. Directories in all
//! four forms: shortform (in the inode); block, leaf and node forms are all read through their
//! data blocks (the fork's logical blocks below the 32 GiB leaf offset), whose entries are
//! every name of the directory, so the hash-ordered leaf and node blocks are not needed; a
//! name is looked up by reading the directory. Regular files: holes and unwritten
//! (preallocated) extents read as zeros. Symbolic links: local, or in blocks (on v5 each
//! carries a header). Extended attributes are not read.
//!
//! Untrusted input: every count is checked against the space that holds it before anything is
//! read or allocated, block addresses against the AG and filesystem sizes, btree levels
//! against the parent's, the number of extents against the inode's count and the blocks
//! visited against the filesystem's; on v5 every inode and metadata block read has its CRC32c,
//! its own address or inode number, and the filesystem UUID checked. An inconsistency is an
//! error naming the inode.

use super::partition::PartitionReader;
use super::{show_path, Entry, FsPath, FsReader, Kind, Mtime};
use anyhow::{bail, Context, Result};
use kura_imaging::fs::xfs::crc_ok;
use std::io::Write;

const SB_MAGIC: &[u8; 4] = b"XFSB";
const INODE_MAGIC: &[u8; 2] = b"IN";
const BMAP_MAGIC_V4: &[u8; 4] = b"BMAP";
const BMAP_MAGIC_V5: &[u8; 4] = b"BMA3";
const SYMLINK_MAGIC: &[u8; 4] = b"XSLM";
const DIR_BLOCK_V4: &[u8; 4] = b"XD2B";
const DIR_DATA_V4: &[u8; 4] = b"XD2D";
const DIR_BLOCK_V5: &[u8; 4] = b"XDB3";
const DIR_DATA_V5: &[u8; 4] = b"XDD3";

/// v5 incompatible features understood: ftype, sparse inodes, meta UUID, bigtime,
/// needsrepair, large extent counts (nrext64), exchange-range, parent pointers (the last two
/// add nothing this reader reads).
const INCOMPAT_KNOWN: u32 = 0xFF;
const INCOMPAT_FTYPE: u32 = 1 << 0;
const INCOMPAT_META_UUID: u32 = 1 << 2;
/// v4 version bits: directories version 2, and `features2` in use.
const VERSION_DIRV2: u16 = 0x2000;
const VERSION_MOREBITS: u16 = 0x8000;
const FEATURES2_FTYPE: u32 = 0x200;

/// Inode core sizes: v3 (v5 filesystems), v1/v2.
const CORE_V3: usize = 176;
const CORE_V2: usize = 100;
const INODE_CRC_OFF: usize = 100;
const DIFLAG_REALTIME: u16 = 1 << 0;
const DIFLAG2_BIGTIME: u64 = 1 << 3;
const DIFLAG2_NREXT64: u64 = 1 << 4;
/// Seconds from the bigtime epoch (the smallest 32-bit time) to the Unix epoch.
const BIGTIME_EPOCH: i64 = 1 << 31;

const FMT_LOCAL: u8 = 1;
const FMT_EXTENTS: u8 = 2;
const FMT_BTREE: u8 = 3;

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const S_IFDIR: u16 = 0o040000;
const S_IFLNK: u16 = 0o120000;

/// Long-format btree block headers (bmbt): v4, and v5 with its CRC at 64.
const LBLOCK_HDR_V4: usize = 24;
const LBLOCK_HDR_V5: usize = 72;
const LBLOCK_CRC_OFF: usize = 64;
/// Most levels of a bmbt walked (the kernel's own limit is lower).
pub const MAX_BMBT_LEVELS: u16 = 12;
/// The longest symbolic link target XFS stores.
const SYMLINK_MAXLEN: u64 = 1024;
const SYMLINK_HDR_V5: usize = 56;
/// A directory's data blocks lie below this byte offset of its fork; leaf and free-index
/// blocks above it.
const DIR_LEAF_OFFSET: u64 = 32 << 30;
/// File data is read this much at a time.
const READ_CHUNK: u64 = 1 << 20;

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

/// The superblock fields the reader needs, validated.
#[derive(Debug, Clone)]
struct Super {
    v5: bool,
    block_size: u64,
    block_log: u32,
    dblocks: u64,
    agblocks: u64,
    agcount: u64,
    agblklog: u32,
    inode_size: u64,
    inopblog: u32,
    /// Filesystem blocks per directory block (a power of two).
    dir_fsbs: u64,
    rootino: u64,
    ftype: bool,
    meta_uuid: [u8; 16],
}

impl Super {
    fn parse(sb: &[u8], part_size: u64) -> Result<Super> {
        if !sb.starts_with(SB_MAGIC) || sb.len() < 512 {
            bail!("bad superblock magic");
        }
        let versionnum = be16(sb, 0x64);
        let v5 = match versionnum & 0xF {
            4 => false,
            5 => true,
            v => bail!("superblock version {v} is not 4 or 5"),
        };
        let block_size = be32(sb, 0x04) as u64;
        let block_log = sb[0x78] as u32;
        if !(512..=65536).contains(&block_size) || block_log > 16 || block_size != 1 << block_log {
            bail!("block size {block_size} (log {block_log}) is invalid");
        }
        let sect_size = be16(sb, 0x66) as usize;
        if !(512..=32768).contains(&sect_size) || !sect_size.is_power_of_two() || sect_size > sb.len() {
            bail!("sector size {sect_size} is invalid");
        }
        if v5 && !crc_ok(&sb[..sect_size], 0xE0) {
            bail!("superblock checksum mismatch");
        }
        let incompat = if v5 { be32(sb, 0xD8) } else { 0 };
        if incompat & !INCOMPAT_KNOWN != 0 {
            bail!("unknown incompatible features {:#x}", incompat & !INCOMPAT_KNOWN);
        }
        if !v5 && versionnum & VERSION_DIRV2 == 0 {
            bail!("version 1 directories (XFS before 2002) are not readable");
        }
        let dblocks = be64(sb, 0x08);
        if dblocks.checked_mul(block_size).is_none_or(|b| b > part_size) {
            bail!(
                "filesystem of {dblocks} blocks of {block_size} bytes is larger than the partition ({part_size} bytes)"
            );
        }
        let agblocks = be32(sb, 0x54) as u64;
        let agcount = be32(sb, 0x58) as u64;
        let agblklog = sb[0x7C] as u32;
        if agblocks < 64 || agcount == 0 || agblklog > 31 || agblocks > 1 << agblklog || agblocks <= 1 << agblklog >> 1
        {
            bail!("{agcount} allocation groups of {agblocks} blocks (log {agblklog}) is invalid");
        }
        if (agcount - 1).saturating_mul(agblocks) >= dblocks || agcount.saturating_mul(agblocks) < dblocks {
            bail!("{agcount} AGs of {agblocks} blocks do not make {dblocks} blocks");
        }
        let inode_size = be16(sb, 0x68) as u64;
        let inode_log = sb[0x7A] as u32;
        let min_inode = if v5 { 512 } else { 256 };
        if !(min_inode..=2048).contains(&inode_size) || inode_log > 11 || inode_size != 1 << inode_log {
            bail!("inode size {inode_size} (log {inode_log}) is invalid");
        }
        let inopblog = sb[0x7B] as u32;
        if inode_size > block_size || inopblog != block_log - inode_log {
            bail!(
                "{} inodes per block (log {inopblog}) do not fit blocks of {block_size} bytes",
                1u64 << inopblog.min(16)
            );
        }
        let dirblklog = sb[0xC0] as u32;
        if block_log + dirblklog > 16 {
            bail!("directory blocks of {} bytes are invalid", block_size << dirblklog.min(16));
        }
        let ftype = if v5 {
            incompat & INCOMPAT_FTYPE != 0
        } else {
            versionnum & VERSION_MOREBITS != 0 && be32(sb, 0xC8) & FEATURES2_FTYPE != 0
        };
        let mut meta_uuid = [0u8; 16];
        let uuid_off = if incompat & INCOMPAT_META_UUID != 0 { 0xF8 } else { 0x20 };
        meta_uuid.copy_from_slice(&sb[uuid_off..uuid_off + 16]);
        Ok(Super {
            v5,
            block_size,
            block_log,
            dblocks,
            agblocks,
            agcount,
            agblklog,
            inode_size,
            inopblog,
            dir_fsbs: 1 << dirblklog,
            rootino: be64(sb, 0x38),
            ftype,
            meta_uuid,
        })
    }

    /// The linear block (from the start of the filesystem) of filesystem block number `fsb`
    /// (AG number above `agblklog` bits, block in the AG below), checked to lie inside.
    fn linear(&self, fsb: u64) -> Option<u64> {
        let agno = fsb >> self.agblklog;
        let agbno = fsb & ((1 << self.agblklog) - 1);
        let b = (agno < self.agcount && agbno < self.agblocks).then(|| agno * self.agblocks + agbno)?;
        (b < self.dblocks).then_some(b)
    }

    /// The byte offset of inode `ino`.
    fn inode_offset(&self, ino: u64) -> Option<u64> {
        let slot = ino & ((1 << self.inopblog) - 1);
        let block = self.linear(ino >> self.inopblog)?;
        Some(block * self.block_size + slot * self.inode_size)
    }
}

/// One mapping of a fork: `len` logical blocks from `off` at linear block `block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    off: u64,
    block: u64,
    len: u64,
    /// Preallocated, never written: reads as zeros.
    unwritten: bool,
}

/// The 128-bit extent record: flag (1 bit), logical offset (54), filesystem block (52),
/// length (21).
fn decode_rec(r: &[u8]) -> (bool, u64, u64, u64) {
    let (l0, l1) = (be64(r, 0), be64(r, 8));
    let unwritten = l0 >> 63 != 0;
    let off = (l0 & ((1 << 63) - 1)) >> 9;
    let fsb = ((l0 & 0x1FF) << 43) | (l1 >> 21);
    let len = l1 & ((1 << 21) - 1);
    (unwritten, off, fsb, len)
}

/// The inode core fields read, and its data fork.
#[derive(Debug, Clone)]
struct Inode {
    ino: u64,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: Mtime,
    format: u8,
    nextents: u64,
    /// The data fork's bytes (the inode's literal area up to the attribute fork).
    fork: Vec<u8>,
}

impl Inode {
    fn kind(&self) -> Kind {
        match self.mode & S_IFMT {
            S_IFREG => Kind::File,
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }

    fn entry(&self, name: String) -> Entry {
        Entry {
            name,
            kind: self.kind(),
            size: self.size,
            mode: (self.mode & 0o7777) as u32,
            uid: Some(self.uid),
            gid: Some(self.gid),
            mtime: Some(self.mtime),
            streams: Vec::new(),
        }
    }
}

/// Decodes inode `ino` from its `buf` (one inode's bytes).
fn parse_inode(sb: &Super, ino: u64, buf: &[u8]) -> Result<Inode> {
    if !buf.starts_with(INODE_MAGIC) {
        bail!("bad inode magic");
    }
    let version = buf[4];
    let core = match (sb.v5, version) {
        (true, 3) => CORE_V3,
        (false, 1 | 2) => CORE_V2,
        _ => bail!("inode version {version} on a v{} filesystem", if sb.v5 { 5 } else { 4 }),
    };
    if sb.v5 {
        if !crc_ok(buf, INODE_CRC_OFF) {
            bail!("inode checksum mismatch");
        }
        if be64(buf, 152) != ino || buf[160..176] != sb.meta_uuid {
            bail!("inode records number {} or another filesystem's UUID", be64(buf, 152));
        }
    }
    let mode = be16(buf, 2);
    if !matches!(mode & S_IFMT, 0o010000 | 0o020000 | S_IFDIR | 0o060000 | S_IFREG | S_IFLNK | 0o140000) {
        bail!("mode {mode:#o} has no file type");
    }
    let flags2 = if version == 3 { be64(buf, 120) } else { 0 };
    let mtime = if flags2 & DIFLAG2_BIGTIME != 0 {
        let ns = be64(buf, 40);
        Mtime { secs: (ns / 1_000_000_000) as i64 - BIGTIME_EPOCH, nanos: (ns % 1_000_000_000) as u32 }
    } else {
        Mtime { secs: be32(buf, 40) as i32 as i64, nanos: be32(buf, 44) }
    };
    if mtime.nanos >= 1_000_000_000 {
        bail!("mtime nanoseconds {} out of range", mtime.nanos);
    }
    let nextents = if flags2 & DIFLAG2_NREXT64 != 0 { be64(buf, 24) } else { be32(buf, 76) as u64 };
    let forkoff = buf[82] as usize * 8;
    let literal = buf.len() - core;
    if forkoff > literal {
        bail!("attribute fork offset {forkoff} past the inode's {literal} bytes");
    }
    let fork_len = if forkoff == 0 { literal } else { forkoff };
    if be16(buf, 90) & DIFLAG_REALTIME != 0 {
        bail!("its data is on a realtime device, not in the partition");
    }
    let size = be64(buf, 56);
    if size > i64::MAX as u64 {
        bail!("size {size} is invalid");
    }
    Ok(Inode {
        ino,
        mode,
        uid: be32(buf, 8),
        gid: be32(buf, 12),
        size,
        mtime,
        format: buf[5],
        nextents,
        fork: buf[core..core + fork_len].to_vec(),
    })
}

/// Each entry `(name, inode)` of a shortform directory (`fork[..size]`), but `.` and `..`;
/// `f` returns whether to go on.
fn sf_entries(fork: &[u8], size: u64, ftype: bool, f: &mut dyn FnMut(&[u8], u64) -> bool) -> Result<()> {
    let Some(d) = usize::try_from(size).ok().and_then(|s| fork.get(..s)) else {
        bail!("shortform directory of {size} bytes does not fit the fork's {} bytes", fork.len());
    };
    if d.len() < 6 {
        bail!("shortform directory of {} bytes is too short", d.len());
    }
    let count = d[0] as usize;
    let ino_len = if d[1] == 0 { 4 } else { 8 };
    let mut off = 2 + ino_len;
    let extra = ftype as usize;
    for i in 0..count {
        let namelen = *d.get(off).unwrap_or(&0) as usize;
        let end = off + 3 + namelen + extra + ino_len;
        if namelen == 0 || end > d.len() {
            bail!("shortform directory entry {i} at byte {off} runs past its {} bytes", d.len());
        }
        let name = &d[off + 3..off + 3 + namelen];
        let at = off + 3 + namelen + extra;
        let ino = if ino_len == 4 { be32(d, at) as u64 } else { be64(d, at) };
        if !f(name, ino) {
            return Ok(());
        }
        off = end;
    }
    Ok(())
}

/// Each entry of one directory data block (`buf`, a whole directory block), but `.` and `..`;
/// `f` returns whether to go on. `hdr` is the block header's size; a single-block directory
/// (`block`) ends with its leaf entries and tail, which are not entries.
fn data_entries(buf: &[u8], hdr: usize, block: bool, ftype: bool, f: &mut dyn FnMut(&[u8], u64) -> bool) -> Result<()> {
    if buf.len() < hdr + 8 {
        bail!("directory block of {} bytes is too short", buf.len());
    }
    let end = if block {
        let count = be32(buf, buf.len() - 8) as usize;
        match count.checked_mul(8).and_then(|n| buf.len().checked_sub(n + 8)) {
            Some(end) if end >= hdr => end,
            _ => bail!("directory block with {count} leaf entries does not fit its {} bytes", buf.len()),
        }
    } else {
        buf.len()
    };
    let mut off = hdr;
    while off < end {
        if be16(buf, off) == 0xFFFF {
            let len = be16(buf, off + 2) as usize;
            if len < 8 || !len.is_multiple_of(8) || off + len > end {
                bail!("directory free space of {len} bytes at byte {off} is invalid");
            }
            off += len;
            continue;
        }
        let namelen = *buf.get(off + 8).unwrap_or(&0) as usize;
        let len = (8 + 1 + namelen + ftype as usize + 2).next_multiple_of(8);
        if namelen == 0 || off + len > end {
            bail!("directory entry at byte {off} ({namelen} byte name) runs past the block's data");
        }
        let name = &buf[off + 9..off + 9 + namelen];
        if name != b"." && name != b".." && !f(name, be64(buf, off)) {
            return Ok(());
        }
        off += len;
    }
    Ok(())
}

/// `kura files` over an XFS filesystem.
pub struct XfsReader {
    r: PartitionReader,
    sb: Super,
}

impl XfsReader {
    pub fn open(r: PartitionReader) -> Result<XfsReader> {
        let mut head = vec![0u8; 512];
        r.read_exact_at(0, &mut head).context("reading the superblock")?;
        let sect = be16(&head, 0x66) as usize;
        if (512..=32768).contains(&sect) && sect.is_power_of_two() {
            head.resize(sect, 0);
            r.read_exact_at(0, &mut head).context("reading the superblock")?;
        }
        let sb = Super::parse(&head, r_len(&r)?).context("superblock")?;
        Ok(XfsReader { r, sb })
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.r.read_exact_at(offset, buf)?)
    }

    fn inode(&self, ino: u64) -> Result<Inode> {
        let Some(at) = self.sb.inode_offset(ino) else {
            bail!("inode {ino}: the number lies outside the filesystem");
        };
        let mut buf = vec![0u8; self.sb.inode_size as usize];
        self.read(at, &mut buf).with_context(|| format!("inode {ino}"))?;
        parse_inode(&self.sb, ino, &buf).with_context(|| format!("inode {ino}"))
    }

    /// The data fork's mappings in logical order (extent list or bmbt), checked: inside the
    /// filesystem, in order, not overlapping, as many as the inode says.
    fn extents(&self, ip: &Inode) -> Result<Vec<Extent>> {
        self.extents_inner(ip).with_context(|| format!("inode {}", ip.ino))
    }

    fn extents_inner(&self, ip: &Inode) -> Result<Vec<Extent>> {
        let mut out: Vec<Extent> = Vec::new();
        match ip.format {
            FMT_EXTENTS => {
                let n = ip.nextents;
                if n > (ip.fork.len() / 16) as u64 {
                    bail!("{n} extents do not fit the inode's {} byte fork", ip.fork.len());
                }
                for rec in ip.fork.chunks_exact(16).take(n as usize) {
                    self.push_rec(&mut out, rec, n)?;
                }
            }
            FMT_BTREE => self.walk_bmbt(ip, &mut out)?,
            f => bail!("data fork format {f} has no extents"),
        }
        if out.len() as u64 != ip.nextents {
            bail!("the fork maps {} extents but the inode says {}", out.len(), ip.nextents);
        }
        Ok(out)
    }

    /// Appends record `rec`, checking it against the filesystem and the previous one.
    fn push_rec(&self, out: &mut Vec<Extent>, rec: &[u8], most: u64) -> Result<()> {
        let (unwritten, off, fsb, len) = decode_rec(rec);
        if out.len() as u64 >= most {
            bail!("more extents than the inode's {most}");
        }
        let block = self.sb.linear(fsb);
        let Some(block) = block.filter(|b| len > 0 && b + len <= self.sb.dblocks) else {
            bail!("extent at block {fsb} of {len} blocks lies outside the filesystem");
        };
        if out.last().is_some_and(|p| p.off + p.len > off) {
            bail!("extent at file block {off} overlaps or precedes the one before");
        }
        out.push(Extent { off, block, len, unwritten });
        Ok(())
    }

    /// Every record of the bmbt rooted in the inode, depth first in key order.
    fn walk_bmbt(&self, ip: &Inode, out: &mut Vec<Extent>) -> Result<()> {
        let root = &ip.fork;
        let level = be16(root, 0);
        let numrecs = be16(root, 2) as usize;
        let root_max = root.len().saturating_sub(4) / 16;
        if level == 0 || level > MAX_BMBT_LEVELS || numrecs == 0 || numrecs > root_max {
            bail!("bmbt root of level {level} with {numrecs} records (at most {root_max}) is invalid");
        }
        let (magic, hdr) = if self.sb.v5 { (BMAP_MAGIC_V5, LBLOCK_HDR_V5) } else { (BMAP_MAGIC_V4, LBLOCK_HDR_V4) };
        let bs = self.sb.block_size as usize;
        let block_max = (bs - hdr) / 16;
        // (block, level) still to visit, the next one last.
        let mut stack: Vec<(u64, u16)> = Vec::new();
        let ptrs = 4 + 8 * root_max;
        for i in (0..numrecs).rev() {
            stack.push((be64(root, ptrs + 8 * i), level - 1));
        }
        let mut buf = vec![0u8; bs];
        let mut visited = 0u64;
        while let Some((fsb, level)) = stack.pop() {
            visited += 1;
            if visited > self.sb.dblocks {
                bail!("the bmbt has more blocks than the filesystem");
            }
            let Some(block) = self.sb.linear(fsb) else {
                bail!("bmbt block {fsb} lies outside the filesystem");
            };
            self.read(block * self.sb.block_size, &mut buf)?;
            if !buf.starts_with(magic) || be16(&buf, 4) != level {
                bail!("bmbt block {fsb}: bad magic or level (expected {level})");
            }
            if self.sb.v5 {
                let daddr = block * (self.sb.block_size / 512);
                if be64(&buf, 24) != daddr || buf[40..56] != self.sb.meta_uuid || be64(&buf, 56) != ip.ino {
                    bail!("bmbt block {fsb}: address, UUID or owner mismatch");
                }
                if !crc_ok(&buf, LBLOCK_CRC_OFF) {
                    bail!("bmbt block {fsb}: checksum mismatch");
                }
            }
            let n = be16(&buf, 6) as usize;
            if n == 0 || n > block_max {
                bail!("bmbt block {fsb}: {n} records (at most {block_max})");
            }
            if level == 0 {
                for rec in buf[hdr..hdr + 16 * n].chunks_exact(16) {
                    self.push_rec(out, rec, ip.nextents)?;
                }
            } else {
                let ptrs = hdr + 8 * block_max;
                for i in (0..n).rev() {
                    stack.push((be64(&buf, ptrs + 8 * i), level - 1));
                }
            }
        }
        Ok(())
    }

    /// Fills `buf` with the fork's logical blocks from `lblock`: every block must be mapped
    /// (and written).
    fn read_mapped(&self, ext: &[Extent], lblock: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.sb.block_size;
        for (i, part) in buf.chunks_mut(bs as usize).enumerate() {
            let l = lblock + i as u64;
            let at = ext.partition_point(|e| e.off + e.len <= l);
            match ext.get(at) {
                Some(e) if e.off <= l && !e.unwritten => self.read((e.block + l - e.off) * bs, part)?,
                _ => bail!("file block {l} is not mapped"),
            }
        }
        Ok(())
    }

    /// The 512-byte sector address of the fork's logical block `l` (what v5 blocks record).
    fn daddr(&self, ext: &[Extent], l: u64) -> Option<u64> {
        let e = ext.get(ext.partition_point(|e| e.off + e.len <= l)).filter(|e| e.off <= l)?;
        Some((e.block + l - e.off) * (self.sb.block_size / 512))
    }

    /// Each entry `(name, inode)` of directory `dir` but `.` and `..`; `f` returns whether to
    /// go on.
    fn dir_entries(&self, dir: &Inode, f: &mut dyn FnMut(&[u8], u64) -> bool) -> Result<()> {
        let ino = dir.ino;
        if dir.format == FMT_LOCAL {
            return sf_entries(&dir.fork, dir.size, self.sb.ftype, f).with_context(|| format!("directory inode {ino}"));
        }
        let ext = self.extents(dir)?;
        let dfsbs = self.sb.dir_fsbs;
        let dblk = (self.sb.block_size * dfsbs) as usize;
        // The data space: below the leaf offset, and within the directory's size.
        let data_end = dir.size.min(DIR_LEAF_OFFSET) >> self.sb.block_log;
        let (hdr, block_magic, data_magic) =
            if self.sb.v5 { (64, DIR_BLOCK_V5, DIR_DATA_V5) } else { (16, DIR_BLOCK_V4, DIR_DATA_V4) };
        let mut buf = vec![0u8; dblk];
        let mut next = 0u64;
        for e in ext.iter().take_while(|e| e.off < data_end) {
            let mut db = (e.off / dfsbs * dfsbs).max(next);
            while db < (e.off + e.len).min(data_end) {
                self.read_mapped(&ext, db, &mut buf)
                    .with_context(|| format!("directory inode {ino}: data block at file block {db}"))?;
                let block = buf.starts_with(block_magic);
                if !block && !buf.starts_with(data_magic) {
                    bail!("directory inode {ino}: bad magic in the data block at file block {db}");
                }
                if self.sb.v5 {
                    if Some(be64(&buf, 8)) != self.daddr(&ext, db) {
                        bail!("directory inode {ino}: data block at file block {db} records another address");
                    }
                    if be64(&buf, 40) != ino || buf[24..40] != self.sb.meta_uuid {
                        bail!("directory inode {ino}: data block at file block {db} has another owner or UUID");
                    }
                    if !crc_ok(&buf, 4) {
                        bail!("directory inode {ino}: data block at file block {db}: checksum mismatch");
                    }
                }
                let mut stopped = false;
                data_entries(&buf, hdr, block, self.sb.ftype, &mut |n, i| {
                    let go = f(n, i);
                    stopped = !go;
                    go
                })
                .with_context(|| format!("directory inode {ino}: data block at file block {db}"))?;
                if stopped {
                    return Ok(());
                }
                db += dfsbs;
                next = db;
            }
        }
        Ok(())
    }

    /// The inode `name` names in directory `dir`, if any.
    fn lookup(&self, dir: &Inode, name: &str) -> Result<Option<u64>> {
        let mut found = None;
        self.dir_entries(dir, &mut |n, ino| {
            if n == name.as_bytes() {
                found = Some(ino);
            }
            found.is_none()
        })?;
        Ok(found)
    }

    /// The inode `path` names; no component before the last may be anything but a directory.
    fn resolve(&self, path: &FsPath) -> Result<Inode> {
        let mut ip = self.inode(self.sb.rootino).context("the root directory")?;
        for (i, c) in path.iter().enumerate() {
            if ip.kind() != Kind::Dir {
                bail!("{}: not a directory (a symbolic link is not followed)", show_path(&path[..i]));
            }
            match self.lookup(&ip, c)? {
                Some(ino) => ip = self.inode(ino).with_context(|| show_path(&path[..=i]))?,
                None => bail!("{}: no such file or directory", show_path(&path[..=i])),
            }
        }
        Ok(ip)
    }

    fn link_target(&self, ip: &Inode) -> Result<Vec<u8>> {
        let ino = ip.ino;
        let size = ip.size;
        if size == 0 || size > SYMLINK_MAXLEN {
            bail!("symbolic link inode {ino}: target of {size} bytes is invalid");
        }
        if ip.format == FMT_LOCAL {
            return match ip.fork.get(..size as usize) {
                Some(t) => Ok(t.to_vec()),
                None => bail!("symbolic link inode {ino}: {size} bytes do not fit the fork"),
            };
        }
        // Each mapping is one buffer: on v5 a header (offset, bytes, owner, address, CRC32c of
        // the whole buffer) and then its part of the target.
        let ext = self.extents(ip)?;
        let bs = self.sb.block_size;
        let hdr = if self.sb.v5 { SYMLINK_HDR_V5 } else { 0 };
        let most_blocks = (SYMLINK_MAXLEN + 3 * SYMLINK_HDR_V5 as u64).div_ceil(bs) + 1;
        let mut out = Vec::with_capacity(size as usize);
        let mut next = 0u64;
        for e in &ext {
            if out.len() as u64 >= size {
                break;
            }
            if e.off != next || e.unwritten || next + e.len > most_blocks {
                bail!("symbolic link inode {ino}: its blocks are not {most_blocks} or fewer mapped from the start");
            }
            next += e.len;
            let mut buf = vec![0u8; (e.len * bs) as usize];
            self.read(e.block * bs, &mut buf).with_context(|| format!("symbolic link inode {ino}"))?;
            let want = (size as usize - out.len()).min(buf.len().saturating_sub(hdr));
            if self.sb.v5 {
                if !buf.starts_with(SYMLINK_MAGIC)
                    || be32(&buf, 4) as usize != out.len()
                    || be32(&buf, 8) as usize != want
                    || buf[16..32] != self.sb.meta_uuid
                    || be64(&buf, 32) != ino
                    || be64(&buf, 40) != e.block * (bs / 512)
                {
                    bail!("symbolic link inode {ino}: the block at file block {} has a bad header", e.off);
                }
                if !crc_ok(&buf, 12) {
                    bail!("symbolic link inode {ino}: the block at file block {}: checksum mismatch", e.off);
                }
            }
            out.extend_from_slice(&buf[hdr..hdr + want]);
        }
        if out.len() as u64 != size {
            bail!("symbolic link inode {ino}: its blocks hold {} of its {size} bytes", out.len());
        }
        Ok(out)
    }

    /// Writes `ip`'s data to `out`: holes and unwritten extents as zeros.
    fn copy_data(&self, ip: &Inode, out: &mut dyn Write) -> Result<u64> {
        let ext = self.extents(ip)?;
        let bs = self.sb.block_size;
        let size = ip.size;
        let zeros = vec![0u8; READ_CHUNK as usize];
        let mut buf = vec![0u8; READ_CHUNK as usize];
        let mut pos = 0u64;
        let zero_to = |pos: &mut u64, to: u64, out: &mut dyn Write| -> Result<()> {
            while *pos < to {
                let n = (to - *pos).min(READ_CHUNK);
                out.write_all(&zeros[..n as usize])?;
                *pos += n;
            }
            Ok(())
        };
        for e in &ext {
            let start = e.off.saturating_mul(bs);
            if start >= size {
                break;
            }
            zero_to(&mut pos, start, out)?;
            let end = (e.off + e.len).saturating_mul(bs).min(size);
            if e.unwritten {
                zero_to(&mut pos, end, out)?;
                continue;
            }
            while pos < end {
                let n = (end - pos).min(READ_CHUNK) as usize;
                let at = e.block * bs + (pos - start);
                self.read(at, &mut buf[..n]).with_context(|| format!("inode {}: data at byte {pos}", ip.ino))?;
                out.write_all(&buf[..n])?;
                pos += n as u64;
            }
        }
        zero_to(&mut pos, size, out)?;
        Ok(pos)
    }
}

/// The partition's length, as the superblock check needs it.
fn r_len(r: &PartitionReader) -> Result<u64> {
    let mut r = r.clone();
    Ok(std::io::Seek::seek(&mut r, std::io::SeekFrom::End(0))?)
}

impl FsReader for XfsReader {
    fn stat(&mut self, path: &FsPath) -> Result<Entry> {
        Ok(self.resolve(path)?.entry(path.last().cloned().unwrap_or_default()))
    }

    fn list(&mut self, path: &FsPath, f: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()> {
        let dir = self.resolve(path)?;
        if dir.kind() != Kind::Dir {
            bail!("{}: not a directory", show_path(path));
        }
        // Names first (the directory's blocks), then each entry's inode.
        let mut names: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut err = None;
        self.dir_entries(&dir, &mut |n, ino| {
            if names.len() >= super::MAX_DIR_ENTRIES {
                err = Some(format!("{} has more than {} entries", show_path(path), super::MAX_DIR_ENTRIES));
                return false;
            }
            names.push((n.to_vec(), ino));
            true
        })?;
        if let Some(e) = err {
            bail!(e);
        }
        for (name, ino) in names {
            let name = String::from_utf8_lossy(&name).into_owned();
            let ip = self.inode(ino).with_context(|| format!("{}/{name}", show_path(path).trim_end_matches('/')))?;
            f(ip.entry(name))?;
        }
        Ok(())
    }

    fn read_link(&mut self, path: &FsPath) -> Result<Vec<u8>> {
        let ip = self.resolve(path)?;
        if ip.kind() != Kind::Symlink {
            bail!("{}: not a symbolic link", show_path(path));
        }
        self.link_target(&ip).with_context(|| show_path(path))
    }

    fn read_file(&mut self, path: &FsPath, out: &mut dyn Write) -> Result<u64> {
        let ip = self.resolve(path)?;
        if ip.kind() != Kind::File {
            bail!("{}: not a regular file", show_path(path));
        }
        self.copy_data(&ip, out).with_context(|| show_path(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v4 superblock (no CRC) of 4 AGs of 1024 blocks of 4 KiB, 512-byte inodes, ftype.
    fn v4_super() -> Vec<u8> {
        let mut sb = vec![0u8; 512];
        sb[..4].copy_from_slice(SB_MAGIC);
        sb[0x04..0x08].copy_from_slice(&4096u32.to_be_bytes());
        sb[0x08..0x10].copy_from_slice(&4096u64.to_be_bytes());
        sb[0x38..0x40].copy_from_slice(&128u64.to_be_bytes());
        sb[0x54..0x58].copy_from_slice(&1024u32.to_be_bytes());
        sb[0x58..0x5C].copy_from_slice(&4u32.to_be_bytes());
        sb[0x64..0x66].copy_from_slice(&(4 | VERSION_DIRV2 | VERSION_MOREBITS).to_be_bytes());
        sb[0x66..0x68].copy_from_slice(&512u16.to_be_bytes());
        sb[0x68..0x6A].copy_from_slice(&512u16.to_be_bytes());
        sb[0x6A..0x6C].copy_from_slice(&8u16.to_be_bytes());
        (sb[0x78], sb[0x79], sb[0x7A], sb[0x7B], sb[0x7C]) = (12, 9, 9, 3, 10);
        sb[0xC8..0xCC].copy_from_slice(&FEATURES2_FTYPE.to_be_bytes());
        sb
    }

    #[test]
    fn superblock_geometry_is_checked() {
        let sb = Super::parse(&v4_super(), 16 << 20).unwrap();
        assert_eq!(
            (sb.v5, sb.block_size, sb.agcount, sb.inopblog, sb.rootino, sb.ftype),
            (false, 4096, 4, 3, 128, true)
        );
        // Inode 128: AG 0, block 16, slot 0; an inode of AG 4 (there are 4) is outside.
        assert_eq!(sb.inode_offset(128), Some(16 * 4096));
        assert_eq!(sb.inode_offset(4 << 13), None);
        assert_eq!(sb.linear((1 << 10) | 5), Some(1024 + 5));
        assert_eq!(sb.linear(1 << 10 | 1023), Some(2047));
        assert!(Super::parse(&v4_super(), 8 << 20).unwrap_err().to_string().contains("larger than the partition"));
        let mut bad = v4_super();
        bad[0x58..0x5C].copy_from_slice(&9u32.to_be_bytes());
        assert!(Super::parse(&bad, 16 << 20).unwrap_err().to_string().contains("do not make"));
        let mut bad = v4_super();
        bad[0x7B] = 4;
        assert!(Super::parse(&bad, 16 << 20).is_err());
        let mut bad = v4_super();
        bad[0x64..0x66].copy_from_slice(&5u16.to_be_bytes());
        assert!(Super::parse(&bad, 16 << 20).unwrap_err().to_string().contains("checksum"));
    }

    fn rec(unwritten: bool, off: u64, fsb: u64, len: u64) -> [u8; 16] {
        let l0 = (unwritten as u64) << 63 | off << 9 | fsb >> 43;
        let l1 = (fsb & ((1 << 43) - 1)) << 21 | len;
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&l0.to_be_bytes());
        r[8..].copy_from_slice(&l1.to_be_bytes());
        r
    }

    #[test]
    fn extent_records_decode() {
        assert_eq!(
            decode_rec(&rec(true, (1 << 54) - 1, (1 << 52) - 1, 1 << 20)),
            (true, (1 << 54) - 1, (1 << 52) - 1, 1 << 20)
        );
        assert_eq!(decode_rec(&rec(false, 7, 1 << 44 | 3, 2)), (false, 7, 1 << 44 | 3, 2));
    }

    fn v4_inode(mode: u16, format: u8, forkoff: u8) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..2].copy_from_slice(INODE_MAGIC);
        b[2..4].copy_from_slice(&mode.to_be_bytes());
        (b[4], b[5], b[82]) = (2, format, forkoff);
        b[40..44].copy_from_slice(&(-5i32).to_be_bytes());
        b
    }

    #[test]
    fn inode_core_is_checked() {
        let sb = Super::parse(&v4_super(), 16 << 20).unwrap();
        let ip = parse_inode(&sb, 128, &v4_inode(0o100644, FMT_EXTENTS, 0)).unwrap();
        assert_eq!((ip.kind(), ip.fork.len(), ip.mtime.secs), (Kind::File, 412, -5));
        let ip = parse_inode(&sb, 128, &v4_inode(0o40755, FMT_LOCAL, 10)).unwrap();
        assert_eq!(ip.fork.len(), 80);
        assert!(parse_inode(&sb, 128, &v4_inode(0o644, FMT_EXTENTS, 0)).is_err());
        assert!(parse_inode(&sb, 128, &v4_inode(0o100644, FMT_EXTENTS, 52)).is_err());
        let mut v3 = v4_inode(0o100644, FMT_EXTENTS, 0);
        v3[4] = 3;
        assert!(parse_inode(&sb, 128, &v3).is_err());
    }

    fn collect(r: impl FnOnce(&mut dyn FnMut(&[u8], u64) -> bool) -> Result<()>) -> Result<Vec<(String, u64)>> {
        let mut v = Vec::new();
        r(&mut |n, i| {
            v.push((String::from_utf8_lossy(n).into_owned(), i));
            true
        })?;
        Ok(v)
    }

    #[test]
    fn shortform_directories_are_bounded() {
        // Two entries, 4-byte inode numbers, ftype: "a" → 130, "bc" → 131.
        let mut d = vec![2u8, 0, 0, 0, 0, 128];
        d.extend_from_slice(&[1, 0, 0x60, b'a', 1, 0, 0, 0, 130]);
        d.extend_from_slice(&[2, 0, 0x70, b'b', b'c', 2, 0, 0, 0, 131]);
        let size = d.len() as u64;
        let got = collect(|f| sf_entries(&d, size, true, f)).unwrap();
        assert_eq!(got, [("a".to_string(), 130), ("bc".to_string(), 131)]);
        // A count larger than the bytes, a size past the fork, a zero-length name.
        let mut more = d.clone();
        more[0] = 3;
        assert!(collect(|f| sf_entries(&more, size, true, f)).is_err());
        assert!(collect(|f| sf_entries(&d, size + 1, true, f)).is_err());
        let mut empty = d.clone();
        empty[6] = 0;
        assert!(collect(|f| sf_entries(&empty, size, true, f)).is_err());
    }

    /// A 512-byte v4 data block holding `names` (inode 200 + i), then free space.
    fn data_block(names: &[&str]) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(DIR_DATA_V4);
        let mut off = 16;
        for (i, n) in names.iter().enumerate() {
            b[off..off + 8].copy_from_slice(&(200 + i as u64).to_be_bytes());
            b[off + 8] = n.len() as u8;
            b[off + 9..off + 9 + n.len()].copy_from_slice(n.as_bytes());
            off += (12 + n.len()).next_multiple_of(8);
        }
        b[off..off + 2].copy_from_slice(&0xFFFFu16.to_be_bytes());
        b[off + 2..off + 4].copy_from_slice(&((512 - off) as u16).to_be_bytes());
        b
    }

    #[test]
    fn data_blocks_are_bounded() {
        let b = data_block(&[".", "..", "file", "a-longer-name"]);
        let got = collect(|f| data_entries(&b, 16, false, true, f)).unwrap();
        assert_eq!(got, [("file".to_string(), 202), ("a-longer-name".to_string(), 203)]);
        // Free space of length 0 (would never advance) or past the block.
        let mut bad = b.clone();
        bad[98..100].copy_from_slice(&0u16.to_be_bytes());
        assert!(collect(|f| data_entries(&bad, 16, false, true, f)).is_err());
        // A name running past the block.
        let mut bad = data_block(&["x"]);
        bad[16 + 8] = 255;
        assert!(collect(|f| data_entries(&bad, 16, false, true, f)).is_err());
        // A single-block directory whose leaf count does not fit.
        let mut bad = data_block(&["x"]);
        bad[504..508].copy_from_slice(&1000u32.to_be_bytes());
        assert!(collect(|f| data_entries(&bad, 16, true, true, f)).is_err());
    }
}
