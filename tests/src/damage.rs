//! Damaging disks and stores on purpose: truncation, broken GPT headers, overlapping partitions
//! (which no partitioning tool will make), a garbage superblock, a tampered chunk.

use std::fs::OpenOptions;
use std::path::Path;

use crate::disks::{read_at, write_at, SECTOR};

/// Cuts `path` to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

/// Inverts one byte of a file.
pub fn flip_byte(path: &Path, offset: u64) {
    let b = read_at(path, offset, 1)[0];
    write_at(path, offset, &[!b]);
}

/// The fields of a GPT header this module needs.
#[derive(Clone, Copy, Debug)]
pub struct GptHeader {
    pub lba: u64,
    pub header_size: u32,
    pub backup_lba: u64,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
}

pub fn read_gpt_header(disk: &Path, lba: u64) -> GptHeader {
    let h = read_at(disk, lba * SECTOR, SECTOR as usize);
    assert_eq!(&h[..8], b"EFI PART", "no GPT header at LBA {lba} of {}", disk.display());
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    GptHeader {
        lba,
        header_size: u32_at(12),
        backup_lba: u64_at(32),
        entries_lba: u64_at(72),
        entry_count: u32_at(80),
        entry_size: u32_at(84),
    }
}

/// Both GPT headers: (primary, backup).
pub fn gpt_headers(disk: &Path) -> (GptHeader, GptHeader) {
    let primary = read_gpt_header(disk, 1);
    let backup = read_gpt_header(disk, primary.backup_lba);
    (primary, backup)
}

/// Flips a byte of the disk GUID in both GPT headers, so both fail their CRC check.
pub fn corrupt_gpt_headers(disk: &Path) {
    let (primary, backup) = gpt_headers(disk);
    flip_byte(disk, primary.lba * SECTOR + 60);
    flip_byte(disk, backup.lba * SECTOR + 60);
}

/// Moves the first LBA of GPT partition `moved` (1-based) to `new_first_lba`, in the primary
/// and the backup entry arrays, and recomputes the entry-array and header CRCs, so the table is
/// valid except for what the new value means (e.g. an overlap).
pub fn set_gpt_first_lba(disk: &Path, moved: u32, new_first_lba: u64) {
    let (primary, backup) = gpt_headers(disk);
    for h in [primary, backup] {
        let entry = h.entries_lba * SECTOR + (moved as u64 - 1) * h.entry_size as u64;
        write_at(disk, entry + 32, &new_first_lba.to_le_bytes());
        let array = read_at(disk, h.entries_lba * SECTOR, (h.entry_count * h.entry_size) as usize);
        write_at(disk, h.lba * SECTOR + 88, &crc32fast::hash(&array).to_le_bytes());
        write_at(disk, h.lba * SECTOR + 16, &[0; 4]);
        let header = read_at(disk, h.lba * SECTOR, h.header_size as usize);
        write_at(disk, h.lba * SECTOR + 16, &crc32fast::hash(&header).to_le_bytes());
    }
}

/// (first LBA, last LBA) of GPT partition `number` (1-based), from the primary array.
pub fn gpt_entry_lbas(disk: &Path, number: u32) -> (u64, u64) {
    let h = read_gpt_header(disk, 1);
    let e = read_at(disk, h.entries_lba * SECTOR + (number as u64 - 1) * h.entry_size as u64, 48);
    (u64::from_le_bytes(e[32..40].try_into().unwrap()), u64::from_le_bytes(e[40..48].try_into().unwrap()))
}
