//! Archive format v1: blocks, records, and the JSON records' fields (`docs/archive.md`).
//!
//! ```text
//! archive := block*                         every block exactly block_size bytes
//! block   := magic[8] archive_id:u64 block_no:u64 block_size:u32 first_record:u32
//!            reserved:u32 header_crc:u32 data[block_size - 40]
//! stream  := data of block 0 ‖ data of block 1 ‖ …      (records may span blocks)
//! record  := kind:u8 reserved[3] len:u32 payload_crc:u32 header_crc:u32 payload[len]
//! records := Header Manifest* (Pack Chunk*)* Index* End   then zeros; the last block's data
//!            ends with index_start:u64 end_magic[8]
//! ```

use serde::{Deserialize, Serialize};

/// First 8 bytes of `sha256("Kura archive v1")`, at the start of every block.
pub const MAGIC: [u8; 8] = [0xf8, 0x58, 0x43, 0xee, 0x57, 0xcf, 0x76, 0x8b];
/// First 8 bytes of `sha256("Kura archive end v1")`, the last 8 bytes of the last block.
pub const END_MAGIC: [u8; 8] = [0x88, 0x34, 0x9d, 0xf6, 0x0d, 0x23, 0x47, 0xe9];
pub const FORMAT: u32 = 1;

pub const BLOCK_HEADER: usize = 40;
pub const RECORD_HEADER: usize = 16;
/// The trailer at the end of the last block's data: `index_start:u64 END_MAGIC`.
pub const TRAILER: usize = 16;
/// `first_record` of a block in which no record starts.
pub const NO_RECORD: u32 = u32::MAX;

/// Default block size: 1 MiB, a block size tape drives and pipes both take in one write.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;
/// Largest record payload (a chunk is at most 64 + 16 MiB + zstd's worst-case overhead).
pub const MAX_RECORD: u32 = 24 << 20;
/// Index entries per index record (`digest[32] stream_offset:u64`).
pub const INDEX_PER_RECORD: usize = 65536;
pub const INDEX_ENTRY: usize = 40;

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Header = 1,
    Manifest = 2,
    Pack = 3,
    Chunk = 4,
    Index = 5,
    End = 6,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Header,
            2 => Kind::Manifest,
            3 => Kind::Pack,
            4 => Kind::Chunk,
            5 => Kind::Index,
            6 => Kind::End,
            _ => return None,
        })
    }
}

/// Whether `b` is a valid block size: a power of two from 4 KiB to 16 MiB.
pub fn valid_block_size(b: u32) -> bool {
    b.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&b)
}

/// One snapshot of the archive, as the header and the catalog record list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub id: String,
    pub host: Option<String>,
    pub name: Option<String>,
    pub created: String,
    pub disk_size: u64,
    /// Distinct data chunks the snapshot needs.
    pub chunks: u64,
    /// Of those, how many this archive carries in the snapshot's pack (the others are in an
    /// earlier pack of this archive, or in the previous export this one is incremental to).
    pub new_chunks: u64,
}

/// The first record: what the archive holds and how it was selected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// `"kura-archive"`.
    pub kind: String,
    pub format: u32,
    /// 16 hex digits, the `archive_id` of every block.
    pub archive_id: String,
    pub created: String,
    pub block_size: u32,
    /// `--hosts` (null: every host).
    pub hosts: Option<Vec<String>>,
    /// `--since` as given (null: none).
    pub since: Option<String>,
    /// The archive this one is incremental to (`--base`), by id.
    pub base: Option<String>,
    /// Oldest first: the order of the manifests and of the packs.
    pub snapshots: Vec<SnapshotEntry>,
}

/// Starts the chunks one snapshot brings to the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    pub snapshot: String,
    pub chunks: u64,
}

/// The catalog record, last: the header's list with the totals, and what a next incremental
/// export may leave out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRecord {
    pub archive_id: String,
    pub created: String,
    pub base: Option<String>,
    pub snapshots: Vec<SnapshotEntry>,
    /// Snapshot ids this archive and its bases together hold (an export `--base` this archive
    /// skips them and their chunks).
    pub covered: Vec<String>,
    pub chunks: u64,
    /// Encoded bytes of the chunks.
    pub chunk_bytes: u64,
    /// Stream offset of the first index record.
    pub index_start: u64,
}

pub fn block_header(archive_id: u64, block_no: u64, block_size: u32, first_record: u32) -> [u8; BLOCK_HEADER] {
    let mut h = [0u8; BLOCK_HEADER];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&archive_id.to_le_bytes());
    h[16..24].copy_from_slice(&block_no.to_le_bytes());
    h[24..28].copy_from_slice(&block_size.to_le_bytes());
    h[28..32].copy_from_slice(&first_record.to_le_bytes());
    let crc = crc32fast::hash(&h[..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A block header that checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub archive_id: u64,
    pub block_no: u64,
    pub block_size: u32,
    pub first_record: u32,
}

pub fn parse_block_header(h: &[u8]) -> Result<BlockHeader, String> {
    if h.len() < BLOCK_HEADER {
        return Err("short block header".into());
    }
    if h[0..8] != MAGIC {
        return Err("not a Kura archive block (bad magic)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    if crc32fast::hash(&h[..36]) != u32_at(36) {
        return Err("block header checksum mismatch".into());
    }
    let b =
        BlockHeader { archive_id: u64_at(8), block_no: u64_at(16), block_size: u32_at(24), first_record: u32_at(28) };
    if !valid_block_size(b.block_size) {
        return Err(format!("bad block size {}", b.block_size));
    }
    if b.first_record != NO_RECORD && b.first_record as usize >= b.block_size as usize - BLOCK_HEADER {
        return Err(format!("first record offset {} outside the block", b.first_record));
    }
    Ok(b)
}

pub fn record_header(kind: Kind, payload: &[u8]) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[0] = kind as u8;
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..12].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A record header that checked out: kind, payload length, payload CRC-32.
pub fn parse_record_header(h: &[u8; RECORD_HEADER]) -> Result<(Kind, u32, u32), String> {
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&h[..12]) != u32_at(12) {
        return Err("record header checksum mismatch".into());
    }
    let kind = Kind::from_u8(h[0]).ok_or_else(|| format!("unknown record kind {}", h[0]))?;
    if h[1..4] != [0, 0, 0] {
        return Err("record header reserved bytes are not zero".into());
    }
    let len = u32_at(4);
    if len > MAX_RECORD {
        return Err(format!("record of {len} bytes is over the {MAX_RECORD}-byte limit"));
    }
    Ok((kind, len, u32_at(8)))
}

/// The digest a chunk record's payload claims (bytes 24..56 of the encoded chunk), unchecked.
pub fn claimed_digest(payload: &[u8]) -> Option<kura_imaging::chunk::Digest> {
    let b: [u8; 32] = payload.get(24..56)?.try_into().ok()?;
    Some(kura_imaging::chunk::Digest(b))
}

pub fn archive_id_hex(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn magics_are_derived_from_their_names() {
        assert_eq!(MAGIC, Sha256::digest(b"Kura archive v1")[..8]);
        assert_eq!(END_MAGIC, Sha256::digest(b"Kura archive end v1")[..8]);
    }

    #[test]
    fn headers_round_trip_and_damage_is_refused() {
        let h = block_header(7, 9, 4096, 12);
        let p = parse_block_header(&h).unwrap();
        assert_eq!(p, BlockHeader { archive_id: 7, block_no: 9, block_size: 4096, first_record: 12 });
        for i in 0..BLOCK_HEADER {
            let mut d = h;
            d[i] ^= 1;
            assert!(parse_block_header(&d).is_err(), "flip at {i}");
        }
        let r = record_header(Kind::Chunk, b"payload");
        assert_eq!(parse_record_header(&r).unwrap(), (Kind::Chunk, 7, crc32fast::hash(b"payload")));
        for i in 0..RECORD_HEADER {
            let mut d = r;
            d[i] ^= 0x10;
            assert!(parse_record_header(&d).is_err(), "flip at {i}");
        }
    }
}
