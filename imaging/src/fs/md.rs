//! Linux software RAID (md) members: which bytes of a member hold data, through its
//! superblock.
//!
//! A member carries one superblock (magic `0xa92b4efc`) at a place its metadata version fixes:
//!
//! | version | superblock at | array data |
//! |---|---|---|
//! | 0.90 | the last 64 KiB-aligned 64 KiB of the device (sum checksum over 4 KiB) | from byte 0, `size` KiB |
//! | 1.0 | 8–12 KiB before the end, 4 KiB aligned | from `data_offset` (0 in practice) |
//! | 1.1 | byte 0 | from `data_offset` |
//! | 1.2 | byte 4096 | from `data_offset` |
//!
//! For 1.x the data area's place and size are read from the superblock (`data_offset`,
//! `data_size`, and `size`, the part of it the array uses), never assumed. The map of a member:
//!
//! - everything outside the array's content on this member (superblock, write-intent bitmap,
//!   bad-block log, any reserve) is used;
//! - a RAID1 member holds the whole array: its content is probed like a partition (an LVM PV or
//!   a filesystem; not another md member) through a view at `data_offset`, and that map is
//!   placed back onto the member;
//! - any other member is used whole, with a warning saying why: other RAID levels (a member
//!   holds stripes or parity, not a volume), a spare or faulty member, a member being rebuilt
//!   (its content past the recovery offset is stale), a reshape in progress, clustered md.
//!
//! Everything is checked before it is used: the checksum, that the superblock's own offset
//! agrees with where it was found, every known feature bit, every area inside the member, and
//! that the superblock, bitmap and bad-block log lie outside the data area. Two superblocks on
//! one member (a stale one from an earlier array) make it raw: which one is live cannot be told.

use super::volume::{place, set_bytes, Piece, VolumeView};
use super::{le16, le32, le64, read_at_or, AllocationMap, DiskContext, FsKind, Inside};
use crate::bitmap::Bitmap;
use std::io::{Read, Seek};

pub(super) const MAGIC: u32 = 0xa92b_4efc;
/// Bytes read at a superblock's place.
const SB_LEN: usize = 4096;
/// Largest `max_dev` of a 1.x superblock: its role table fits the 4 KiB after the 256-byte
/// header.
const MAX_DEV: u32 = (SB_LEN as u32 - 256) / 2;
/// Bytes per bit of a member's map.
const BLOCK: u64 = 4096;
/// "bitm", the write-intent bitmap's magic.
const BITMAP_MAGIC: u32 = 0x6d74_6962;

/// 1.x feature bits (`MD_FEATURE_*`).
const FEATURE_BITMAP: u32 = 1;
const FEATURE_RECOVERY: u32 = 2;
const FEATURE_RESHAPE: u32 = 4;
const FEATURE_CLUSTERED: u32 = 256;
const FEATURE_PPL: u32 = 1024 | 2048;
const FEATURES_KNOWN: u32 = 0xfff;

/// What [`find`] saw.
pub(super) enum Found {
    /// No md superblock anywhere.
    None,
    Member(Superblock),
    /// An md signature that does not hold up: the member is captured raw with this reason.
    Broken(String),
}

/// What a member's superblock says, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Superblock {
    /// "0.90", "1.0", "1.1" or "1.2".
    pub version: &'static str,
    pub sb_offset: u64,
    /// `-1` linear, `0` RAID0, `1` RAID1, `4`/`5`/`6`, `10`.
    pub level: i32,
    pub raid_disks: u32,
    /// The set name (1.x) or, if it has none, the array UUID.
    pub name: String,
    /// Where the array's data starts on this member.
    pub data_offset: u64,
    /// Bytes of the array's content on this member from `data_offset` (RAID1: the array's
    /// size).
    pub content_size: u64,
    /// Superblock, bitmap and bad-block log: (start, end, what).
    pub reserved: Vec<(u64, u64, &'static str)>,
    /// Why the content cannot be probed, if so.
    pub raw_reason: Option<String>,
}

/// Where each version's superblock lies on a member of `size` bytes (None: too small).
fn places(size: u64) -> [(&'static str, Option<u64>); 4] {
    let sectors = size / 512;
    [
        ("1.1", Some(0)),
        ("1.2", Some(4096)),
        ("1.0", sectors.checked_sub(16).map(|s| (s & !7) * 512)),
        ("0.90", (sectors & !127).checked_sub(128).map(|s| s * 512)),
    ]
}

/// Looks for an md superblock at each version's place. `head` is the member's first bytes.
pub(super) fn find<R: Read + Seek>(part: &mut R, part_size: u64, head: &[u8]) -> Found {
    let mut found = Vec::new();
    for (version, at) in places(part_size) {
        let Some(at) = at.filter(|&at| at + SB_LEN as u64 <= part_size) else { continue };
        let mut buf = vec![0u8; SB_LEN];
        match head.get(at as usize..at as usize + SB_LEN) {
            Some(b) => buf.copy_from_slice(b),
            None => {
                if let Err(e) = read_at_or(part, at, &mut buf, "an md superblock") {
                    return Found::Broken(e);
                }
            }
        }
        let magic = le32(&buf, 0);
        let result = if magic == MAGIC.swap_bytes() && version == "0.90" {
            Err("a big-endian 0.90 superblock (written on a big-endian machine)".to_string())
        } else if magic != MAGIC {
            continue;
        } else if version == "0.90" {
            if le32(&buf, 4) != 0 {
                continue;
            }
            parse_v090(&buf, at, part_size)
        } else {
            if le32(&buf, 4) != 1 {
                continue;
            }
            parse_v1(part, &buf, version, at, part_size)
        };
        found.push((version, result));
    }
    match found.len() {
        0 => Found::None,
        1 => match found.pop().expect("one") {
            (_, Ok(sb)) => Found::Member(sb),
            (version, Err(reason)) => Found::Broken(format!("{version} superblock: {reason}")),
        },
        _ => {
            let versions: Vec<&str> = found.iter().map(|(v, _)| *v).collect();
            Found::Broken(format!("several md superblocks ({}): which one is live cannot be told", versions.join(", ")))
        }
    }
}

/// mdadm's checksum: the sum of little-endian 32-bit words (a 16-bit tail word added as is)
/// with the checksum field zeroed, folded to 32 bits.
pub(super) fn checksum(sb: &[u8], csum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut words = sb.chunks_exact(4);
    for (i, w) in words.by_ref().enumerate() {
        if i * 4 != csum_at {
            sum += u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64;
        }
    }
    if let [a, b] = words.remainder() {
        sum += u16::from_le_bytes([*a, *b]) as u64;
    }
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}

/// The 0.90 superblock: 1024 words, array data from byte 0.
fn parse_v090(b: &[u8], at: u64, part_size: u64) -> Result<Superblock, String> {
    let w = |i: usize| le32(b, i * 4);
    if w(2) != 90 {
        return Err(format!("minor version {} (0.91 means a reshape in progress; only 0.90 is read)", w(2)));
    }
    let csum = checksum(&b[..SB_LEN], 38 * 4);
    if csum != w(38) {
        return Err(format!("checksum {:#010x} does not match the stored {:#010x}", csum, w(38)));
    }
    let content_size = w(8) as u64 * 1024;
    if content_size > at {
        return Err(format!("array size {content_size} runs into the superblock at {at}"));
    }
    let uuid: Vec<u8> = [w(5), w(13), w(14), w(15)].iter().flat_map(|x| x.to_be_bytes()).collect();
    let (level, raid_disks) = (w(7) as i32, w(10));
    // This member's own descriptor (`this_disk`, word 992): state bits faulty 0, active 1,
    // sync 2.
    let state = w(992 + 4);
    let raw_reason = level_reason(level).or_else(|| {
        (state & 0b111 != 0b110).then(|| {
            format!("it is not an active in-sync member (descriptor state {state:#x}: spare, faulty or rebuilding)")
        })
    });
    Ok(Superblock {
        version: "0.90",
        sb_offset: at,
        level,
        raid_disks,
        name: hex(&uuid),
        data_offset: 0,
        content_size,
        // The 64 KiB reserved at the end holds the superblock and the bitmap.
        reserved: vec![(at, part_size, "superblock and bitmap")],
        raw_reason,
    })
}

/// A 1.x superblock found at `at`.
fn parse_v1<R: Read + Seek>(
    part: &mut R,
    b: &[u8],
    version: &'static str,
    at: u64,
    part_size: u64,
) -> Result<Superblock, String> {
    let max_dev = le32(b, 220);
    if max_dev > MAX_DEV {
        return Err(format!("max_dev {max_dev} is more than a superblock holds ({MAX_DEV})"));
    }
    let len = 256 + 2 * max_dev as usize;
    let csum = checksum(&b[..len], 216);
    if csum != le32(b, 216) {
        return Err(format!("checksum {:#010x} does not match the stored {:#010x}", csum, le32(b, 216)));
    }
    let sectors = |off: usize, what: &str| -> Result<u64, String> {
        le64(b, off).checked_mul(512).ok_or_else(|| format!("{what} past 2^64 bytes"))
    };
    if sectors(144, "super_offset")? != at {
        return Err(format!("it says it lies at byte {} but was found at {at}", le64(b, 144).saturating_mul(512)));
    }
    let features = le32(b, 8);
    if features & !FEATURES_KNOWN != 0 {
        return Err(format!("unknown feature bits {:#x}", features & !FEATURES_KNOWN));
    }
    let level = le32(b, 72) as i32;
    let raid_disks = le32(b, 92);
    let data_offset = sectors(128, "data_offset")?;
    let data_size = sectors(136, "data_size")?;
    let used = sectors(80, "size")?;
    let data_end = data_offset.checked_add(data_size).filter(|&e| e <= part_size).ok_or_else(|| {
        format!("data area ({data_size} bytes at {data_offset}) ends past the member ({part_size} bytes)")
    })?;
    if level == 1 && used > data_size {
        return Err(format!("array size {used} is larger than the data area ({data_size})"));
    }
    let content_size = if level == 1 { used } else { data_size };
    let signed_at = |off_sectors: i64, what: &str| -> Result<u64, String> {
        (at as i64)
            .checked_add(off_sectors.checked_mul(512).ok_or_else(|| format!("{what} offset overflows"))?)
            .filter(|&x| x >= 0)
            .map(|x| x as u64)
            .ok_or_else(|| format!("{what} lies before the member's start"))
    };
    let mut reserved = vec![(at, (at + SB_LEN as u64).min(part_size), "superblock")];
    if features & FEATURE_BITMAP != 0 && features & FEATURE_PPL == 0 {
        let start = signed_at(le32(b, 96) as i32 as i64, "bitmap")?;
        let len = bitmap_len(part, start, part_size)?;
        reserved.push((start, start + len, "write-intent bitmap"));
    }
    let bblog_sectors = le16(b, 186) as u64;
    if bblog_sectors > 0 {
        let start = signed_at(le32(b, 188) as i32 as i64, "bad-block log")?;
        reserved.push((start, start + bblog_sectors * 512, "bad-block log"));
    }
    for &(s, e, what) in &reserved {
        if e > part_size {
            return Err(format!("the {what} ({s}..{e}) ends past the member ({part_size} bytes)"));
        }
        if s < data_end && data_offset < e {
            return Err(format!("the {what} ({s}..{e}) overlaps the data area ({data_offset}..{data_end})"));
        }
    }
    let dev_number = le32(b, 160);
    if dev_number >= max_dev {
        return Err(format!("device number {dev_number} is outside its role table ({max_dev} entries)"));
    }
    let role = le16(b, 256 + 2 * dev_number as usize);
    let raw_reason = level_reason(level)
        .or_else(|| (role >= 0xfffd).then(|| format!("it is a {} member, not an active one", role_name(role))))
        .or_else(|| (features & FEATURE_RESHAPE != 0).then(|| "a reshape is in progress".to_string()))
        .or_else(|| {
            (features & FEATURE_RECOVERY != 0).then(|| {
                format!(
                    "it is being rebuilt (recovered up to byte {}; the rest is stale)",
                    le64(b, 152).saturating_mul(512)
                )
            })
        })
        .or_else(|| (features & FEATURE_CLUSTERED != 0).then(|| "it is a clustered array".to_string()));
    let name = super::label_from_bytes(&b[32..64]).unwrap_or_else(|| hex(&b[16..32]));
    Ok(Superblock { version, sb_offset: at, level, raid_disks, name, data_offset, content_size, reserved, raw_reason })
}

/// Bytes of the write-intent bitmap at `start`: its 256-byte header and one bit per chunk of
/// the synced size, rounded up to a sector.
fn bitmap_len<R: Read + Seek>(part: &mut R, start: u64, part_size: u64) -> Result<u64, String> {
    if start + 256 > part_size {
        return Err(format!("the bitmap at {start} lies past the member"));
    }
    let mut h = [0u8; 256];
    read_at_or(part, start, &mut h, "the md bitmap header")?;
    if le32(&h, 0) != BITMAP_MAGIC {
        return Err(format!("no bitmap magic at {start}"));
    }
    let version = le32(&h, 4);
    if !(3..=5).contains(&version) {
        return Err(format!("bitmap version {version} is not 3–5"));
    }
    let chunk = le32(&h, 52) as u64;
    if chunk < 512 || !chunk.is_power_of_two() {
        return Err(format!("bitmap chunk size {chunk} is not a power of two >= 512"));
    }
    let synced = le64(&h, 40).checked_mul(512).ok_or("bitmap sync size past 2^64")?;
    let bits = synced.div_ceil(chunk);
    Ok((256 + bits.div_ceil(8)).div_ceil(512) * 512)
}

/// Why members of this level are not probed (None for RAID1).
fn level_reason(level: i32) -> Option<String> {
    let name = match level {
        1 => return None,
        -1 => "linear".to_string(),
        -4 => "multipath".to_string(),
        l => format!("RAID{l}"),
    };
    Some(format!("it is a {name} member (only RAID1 members hold the whole array)"))
}

fn role_name(role: u16) -> &'static str {
    match role {
        0xffff => "spare",
        0xfffe => "faulty",
        _ => "journal",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The allocation map of the member whose superblock is `sb`. Errors are reasons for a raw
/// capture.
pub(super) fn read<R: Read + Seek>(
    part: &mut R,
    part_size: u64,
    sb: &Superblock,
    disk: &DiskContext,
) -> Result<AllocationMap, String> {
    let blocks = part_size.div_ceil(BLOCK);
    if let Some(reason) = &sb.raw_reason {
        return Ok(AllocationMap {
            kind: FsKind::Md,
            block_size: BLOCK as u32,
            bitmap: Bitmap::full(blocks),
            label: Some(sb.name.clone()),
            warnings: vec![format!("md array {} ({} superblock) captured raw: {reason}", sb.name, sb.version)],
        });
    }
    let content_end = sb.data_offset + sb.content_size;
    let mut bitmap = Bitmap::new(blocks);
    set_bytes(&mut bitmap, BLOCK, 0, sb.data_offset);
    set_bytes(&mut bitmap, BLOCK, content_end, part_size);
    for &(s, e, _) in &sb.reserved {
        set_bytes(&mut bitmap, BLOCK, s, e);
    }
    let pieces = [Piece { vol_offset: 0, at: sb.data_offset, len: sb.content_size }];
    let mut view = VolumeView::new(part, &pieces, sb.content_size);
    let map = super::probe_volume(&mut view, sb.content_size, Inside::Md, disk);
    let warnings = map.warnings.iter().map(|w| format!("md array {}: {w}", sb.name)).collect();
    place(&mut bitmap, BLOCK, &map, &pieces, sb.content_size);
    tracing::debug!(array = %sb.name, version = sb.version, content = ?map.kind, "md RAID1 member mapped");
    Ok(AllocationMap { kind: FsKind::Md, block_size: BLOCK as u32, bitmap, label: Some(sb.name.clone()), warnings })
}
