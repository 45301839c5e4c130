//! GPT: finding the header (and with it the sector size), validating the primary and backup
//! headers and their partition entry arrays, choosing which copy to trust, and turning the
//! entries into [`Partition`]s.
//!
//! Every size and count in a header is checked before anything is allocated from it; the entry
//! array is read in bounded blocks.

use std::io::{Read, Seek};

use super::{
    bytes_at, check_overlaps, le_u16, le_u32, le_u64, read_at, DiskLayout, GptCopy, GptInfo, LayoutError, Partition,
    PartitionEntry, Scheme, Span,
};

/// Sector sizes tried, in order, when looking for the header at LBA 1.
const SECTOR_SIZES: [u32; 2] = [512, 4096];
/// Sector size assumed when neither header can be found (the error then names both).
pub(super) const DEFAULT_SECTOR_SIZE: u32 = 512;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER_SIZE: u32 = 92;
const MIN_ENTRY_SIZE: u32 = 128;
/// Entry sizes are 128·2ⁿ; anything above this is treated as damage.
const MAX_ENTRY_SIZE: u32 = 4096;
/// The most entries a header may declare (128 times the usual 128).
const MAX_ENTRY_COUNT: u32 = 16384;
/// The entry array is read and checksummed in blocks of this many bytes (a multiple of every
/// valid entry size).
const ENTRY_BLOCK: u64 = 64 * 1024;
/// UTF-16 code units in a partition name.
const NAME_UNITS: usize = 36;

/// The fields of a GPT header that passed the header checks.
#[derive(Debug, Clone)]
struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: [u8; 16],
    entry_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entry_crc: u32,
}

/// One non-empty entry of the partition array.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// 0-based slot in the entry array.
    slot: u32,
    type_guid: [u8; 16],
    unique_guid: [u8; 16],
    first_lba: u64,
    last_lba: u64,
    attributes: u64,
    name: String,
}

/// A header and its entry array, both checked.
#[derive(Debug, Clone)]
struct Table {
    header: Header,
    entries: Vec<Entry>,
}

/// The outcome of reading one copy of the GPT: a checked table, or why that copy is damaged.
/// (I/O errors are not damage: they are returned as [`LayoutError::Io`].)
type Copy = Result<Table, String>;

/// The sector size whose LBA 1 holds the `EFI PART` signature, if any.
pub(super) fn find_primary_signature<R: Read + Seek>(disk: &mut R, disk_size: u64) -> Result<Option<u32>, LayoutError> {
    for sector_size in SECTOR_SIZES {
        let offset = u64::from(sector_size);
        if has_signature_at(disk, disk_size, offset)? {
            return Ok(Some(sector_size));
        }
    }
    Ok(None)
}

/// The sector size whose last LBA holds the `EFI PART` signature, if any.
pub(super) fn find_backup_signature<R: Read + Seek>(disk: &mut R, disk_size: u64) -> Result<Option<u32>, LayoutError> {
    for sector_size in SECTOR_SIZES {
        let sector_size_64 = u64::from(sector_size);
        let sectors = disk_size / sector_size_64;
        if sectors < 2 {
            continue;
        }
        let offset = (sectors - 1) * sector_size_64;
        if has_signature_at(disk, disk_size, offset)? {
            return Ok(Some(sector_size));
        }
    }
    Ok(None)
}

fn has_signature_at<R: Read + Seek>(disk: &mut R, disk_size: u64, offset: u64) -> Result<bool, LayoutError> {
    // A header is at least 92 bytes; only look where one fits on the disk.
    match offset.checked_add(u64::from(MIN_HEADER_SIZE)) {
        Some(end) if end <= disk_size => {}
        _ => return Ok(false),
    }
    let mut signature = [0u8; 8];
    read_at(disk, offset, &mut signature)?;
    Ok(&signature == SIGNATURE)
}

/// Reads both GPT copies of a disk with `sector_size`-byte sectors, picks the one to use and
/// returns the layout. `warnings` holds what the caller already noticed.
pub(super) fn read<R: Read + Seek>(
    disk: &mut R,
    disk_size: u64,
    sector_size: u32,
    mut warnings: Vec<String>,
) -> Result<DiskLayout, LayoutError> {
    let sector_size_64 = u64::from(sector_size);
    let disk_sectors = disk_size / sector_size_64;
    let last_lba = disk_sectors.saturating_sub(1);

    let primary = read_copy(disk, disk_size, sector_size, 1)?;
    let backup_lba = match &primary {
        Ok(table) => table.header.alternate_lba,
        Err(_) => last_lba,
    };
    let backup = read_copy(disk, disk_size, sector_size, backup_lba)?;

    let (table, used) = match (primary, backup) {
        (Ok(primary), Ok(backup)) => {
            compare_copies(&primary, &backup, last_lba, &mut warnings);
            (primary, GptCopy::Primary)
        }
        (Ok(primary), Err(why)) => {
            warnings.push(format!("backup GPT header at LBA {backup_lba} is damaged ({why}); using the primary"));
            (primary, GptCopy::Primary)
        }
        (Err(why), Ok(backup)) => {
            warnings
                .push(format!("primary GPT header at LBA 1 is damaged ({why}); using the backup at LBA {backup_lba}"));
            if backup.header.alternate_lba != 1 {
                warnings.push(format!(
                    "backup GPT header points to a primary at LBA {} instead of LBA 1",
                    backup.header.alternate_lba
                ));
            }
            (backup, GptCopy::Backup)
        }
        (Err(primary), Err(backup)) => {
            return Err(LayoutError::BothGptHeadersDamaged {
                primary: format!("at LBA 1 with {sector_size}-byte sectors: {primary}"),
                backup: format!("at LBA {backup_lba}: {backup}"),
            });
        }
    };

    let partitions = partitions(&table, sector_size_64, disk_size)?;

    // The usable range ends before the later of the two headers (checked with the header), so
    // this also covers a usable range reaching past the disk.
    let header = &table.header;
    let far_header = header.my_lba.max(header.alternate_lba);
    if far_header >= disk_sectors {
        return Err(LayoutError::Truncated {
            what: format!("the GPT (its backup header is at LBA {far_header})"),
            needed: far_header.saturating_add(1).saturating_mul(sector_size_64),
            disk_size,
        });
    }

    let (primary_header_lba, backup_header_lba) = match used {
        GptCopy::Primary => (header.my_lba, header.alternate_lba),
        GptCopy::Backup => (header.alternate_lba, header.my_lba),
    };
    Ok(DiskLayout {
        disk_size,
        sector_size,
        scheme: Scheme::Gpt,
        gpt: Some(GptInfo {
            disk_guid: guid_text(&header.disk_guid),
            first_usable_lba: header.first_usable,
            last_usable_lba: header.last_usable,
            primary_header_lba,
            backup_header_lba,
            entry_count: header.entry_count,
            entry_size: header.entry_size,
            used_copy: used,
        }),
        partitions,
        warnings,
    })
}

/// Warns about differences between two valid copies (the primary is used either way).
fn compare_copies(primary: &Table, backup: &Table, last_lba: u64, warnings: &mut Vec<String>) {
    let (p, b) = (&primary.header, &backup.header);
    if primary.entries != backup.entries || p.entry_count != b.entry_count || p.entry_size != b.entry_size {
        warnings.push(format!(
            "primary and backup GPT partition arrays differ (CRC32 0x{:08X} vs 0x{:08X}); using the primary",
            p.entry_crc, b.entry_crc
        ));
    }
    if p.disk_guid != b.disk_guid || p.first_usable != b.first_usable || p.last_usable != b.last_usable {
        warnings.push(format!(
            "primary and backup GPT headers differ (disk GUID {} vs {}, usable LBA {}..={} vs {}..={}); \
             using the primary",
            guid_text(&p.disk_guid),
            guid_text(&b.disk_guid),
            p.first_usable,
            p.last_usable,
            b.first_usable,
            b.last_usable
        ));
    }
    if b.alternate_lba != p.my_lba {
        warnings.push(format!(
            "backup GPT header points to a primary at LBA {} instead of LBA {}",
            b.alternate_lba, p.my_lba
        ));
    }
    if b.my_lba != last_lba {
        warnings.push(format!("backup GPT header is at LBA {}, not at the last LBA {last_lba} of the disk", b.my_lba));
    }
}

/// The checked partitions of `table`, sorted by start.
fn partitions(table: &Table, sector_size: u64, disk_size: u64) -> Result<Vec<Partition>, LayoutError> {
    let header = &table.header;
    let mut partitions = Vec::with_capacity(table.entries.len());
    for entry in &table.entries {
        let number = entry.slot.saturating_add(1);
        if entry.first_lba > entry.last_lba {
            return Err(LayoutError::Gpt(format!(
                "partition {number}: first LBA {} is after its last LBA {}",
                entry.first_lba, entry.last_lba
            )));
        }
        let start = entry.first_lba.checked_mul(sector_size);
        let end = entry.last_lba.checked_add(1).and_then(|lba| lba.checked_mul(sector_size));
        let out_of_range = |limit: String| LayoutError::OutOfRange {
            number,
            start: start.unwrap_or(u64::MAX),
            end: end.unwrap_or(u64::MAX),
            limit,
        };
        if entry.first_lba < header.first_usable || entry.last_lba > header.last_usable {
            return Err(out_of_range(format!(
                "the GPT usable range (LBA {}..={})",
                header.first_usable, header.last_usable
            )));
        }
        let (start, end) = match (start, end) {
            (Some(start), Some(end)) if end <= disk_size => (start, end),
            _ => return Err(out_of_range(format!("the disk ({disk_size} bytes; is the image truncated?)"))),
        };
        partitions.push(Partition {
            number,
            start,
            size: end - start,
            entry: PartitionEntry::Gpt {
                type_guid: guid_text(&entry.type_guid),
                unique_guid: guid_text(&entry.unique_guid),
                name: entry.name.clone(),
                attributes: entry.attributes,
            },
        });
    }
    let mut spans: Vec<Span> = partitions.iter().map(|p| (p.number, p.start, p.end())).collect();
    check_overlaps(&mut spans)?;
    partitions.sort_by_key(|p| (p.start, p.number));
    Ok(partitions)
}

/// Reads and checks the header at `lba` and its entry array.
fn read_copy<R: Read + Seek>(disk: &mut R, disk_size: u64, sector_size: u32, lba: u64) -> Result<Copy, LayoutError> {
    let sector_size_64 = u64::from(sector_size);
    let disk_sectors = disk_size / sector_size_64;
    if lba >= disk_sectors {
        return Ok(Err(format!(
            "LBA {lba} is past the end of the disk ({disk_sectors} sectors of {sector_size} bytes)"
        )));
    }
    let mut sector = vec![0u8; sector_size as usize];
    read_at(disk, lba * sector_size_64, &mut sector)?;
    let header = match parse_header(&sector, lba, sector_size, disk_sectors) {
        Ok(header) => header,
        Err(why) => return Ok(Err(why)),
    };
    Ok(read_entries(disk, &header, sector_size_64)?.map(|entries| Table { header, entries }))
}

/// Checks the header in `sector` (read from `lba`). Everything but the entry array CRC.
fn parse_header(sector: &[u8], lba: u64, sector_size: u32, disk_sectors: u64) -> Result<Header, String> {
    if sector.get(0..8) != Some(SIGNATURE.as_slice()) {
        return Err(format!("no \"EFI PART\" signature at LBA {lba}"));
    }
    let revision = le_u32(sector, 8);
    if revision >> 16 != 1 {
        return Err(format!("unsupported revision 0x{revision:08X} (expected 1.x)"));
    }
    let header_size = le_u32(sector, 12);
    let declared = match sector.get(..header_size as usize) {
        Some(declared) if header_size >= MIN_HEADER_SIZE => declared,
        _ => return Err(format!("header size {header_size} is outside {MIN_HEADER_SIZE}..={sector_size}")),
    };
    let stored_crc = le_u32(sector, 16);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(declared.get(..16).unwrap_or_default());
    hasher.update(&[0u8; 4]);
    hasher.update(declared.get(20..).unwrap_or_default());
    let computed_crc = hasher.finalize();
    if stored_crc != computed_crc {
        return Err(format!("header CRC32 mismatch (stored 0x{stored_crc:08X}, computed 0x{computed_crc:08X})"));
    }

    let header = Header {
        my_lba: le_u64(sector, 24),
        alternate_lba: le_u64(sector, 32),
        first_usable: le_u64(sector, 40),
        last_usable: le_u64(sector, 48),
        disk_guid: bytes_at(sector, 56),
        entry_lba: le_u64(sector, 72),
        entry_count: le_u32(sector, 80),
        entry_size: le_u32(sector, 84),
        entry_crc: le_u32(sector, 88),
    };
    if header.my_lba != lba {
        return Err(format!("header read at LBA {lba} says it is at LBA {}", header.my_lba));
    }
    if header.alternate_lba == lba || header.alternate_lba == 0 {
        return Err(format!("alternate header LBA {} is invalid", header.alternate_lba));
    }
    if header.first_usable > header.last_usable {
        return Err(format!(
            "first usable LBA {} is after last usable LBA {}",
            header.first_usable, header.last_usable
        ));
    }
    let low = header.my_lba.min(header.alternate_lba);
    let high = header.my_lba.max(header.alternate_lba);
    if header.first_usable <= low || header.last_usable >= high {
        return Err(format!(
            "usable range LBA {}..={} is not between the headers at LBA {low} and {high}",
            header.first_usable, header.last_usable
        ));
    }
    let entry_size = header.entry_size;
    if !(MIN_ENTRY_SIZE..=MAX_ENTRY_SIZE).contains(&entry_size) || !entry_size.is_power_of_two() {
        return Err(format!("partition entry size {entry_size} is not 128·2ⁿ (at most {MAX_ENTRY_SIZE})"));
    }
    if header.entry_count > MAX_ENTRY_COUNT {
        return Err(format!("partition entry count {} exceeds the limit of {MAX_ENTRY_COUNT}", header.entry_count));
    }
    // Both factors are capped above, so this cannot overflow.
    let array_bytes = u64::from(header.entry_count) * u64::from(entry_size);
    let array_sectors = array_bytes.div_ceil(u64::from(sector_size));
    let array_end = header.entry_lba.checked_add(array_sectors);
    match array_end {
        Some(end) if header.entry_lba > 0 && end <= disk_sectors => {
            if (header.entry_lba..end).contains(&lba) {
                return Err(format!("partition entry array (LBA {}..{end}) covers its own header", header.entry_lba));
            }
        }
        _ => {
            return Err(format!(
                "partition entry array ({} entries of {entry_size} bytes at LBA {}) does not fit \
                 on the disk ({disk_sectors} sectors)",
                header.entry_count, header.entry_lba
            ))
        }
    }
    Ok(header)
}

/// Reads the entry array of a checked header in bounded blocks, checking its CRC.
fn read_entries<R: Read + Seek>(
    disk: &mut R,
    header: &Header,
    sector_size: u64,
) -> Result<Result<Vec<Entry>, String>, LayoutError> {
    // `parse_header` capped count and size and checked that the array lies on the disk.
    let total = u64::from(header.entry_count) * u64::from(header.entry_size);
    let base = header.entry_lba * sector_size;
    let entry_size = header.entry_size as usize;
    let mut block = vec![0u8; total.min(ENTRY_BLOCK) as usize];
    let mut hasher = crc32fast::Hasher::new();
    let mut entries = Vec::new();
    let mut slot = 0u32;
    let mut done = 0u64;
    while done < total {
        let len = (total - done).min(ENTRY_BLOCK) as usize;
        let Some(buf) = block.get_mut(..len) else {
            break;
        };
        read_at(disk, base + done, buf)?;
        hasher.update(buf);
        for raw in buf.chunks_exact(entry_size) {
            if let Some(entry) = parse_entry(raw, slot) {
                entries.push(entry);
            }
            slot = slot.saturating_add(1);
        }
        done += len as u64;
    }
    let computed = hasher.finalize();
    if computed != header.entry_crc {
        return Ok(Err(format!(
            "partition entry array CRC32 mismatch (stored 0x{:08X}, computed 0x{computed:08X})",
            header.entry_crc
        )));
    }
    Ok(Ok(entries))
}

/// Decodes one entry; `None` for an empty slot (all-zero type GUID). The name ends at its
/// first NUL code unit (so trailing NUL padding is dropped); unpaired surrogates become U+FFFD.
fn parse_entry(raw: &[u8], slot: u32) -> Option<Entry> {
    let type_guid: [u8; 16] = bytes_at(raw, 0);
    if type_guid == [0u8; 16] {
        return None;
    }
    let units: Vec<u16> = (0..NAME_UNITS).map(|i| le_u16(raw, 56 + 2 * i)).take_while(|&unit| unit != 0).collect();
    Some(Entry {
        slot,
        type_guid,
        unique_guid: bytes_at(raw, 16),
        first_lba: le_u64(raw, 32),
        last_lba: le_u64(raw, 40),
        attributes: le_u64(raw, 48),
        name: String::from_utf16_lossy(&units),
    })
}

/// A GUID as GPT stores it (first three fields little-endian) in canonical uppercase text.
fn guid_text(guid: &[u8; 16]) -> String {
    let [a0, a1, a2, a3, b0, b1, c0, c1, d0, d1, d2, d3, d4, d5, d6, d7] = *guid;
    format!(
        "{:08X}-{:04X}-{:04X}-{d0:02X}{d1:02X}-{d2:02X}{d3:02X}{d4:02X}{d5:02X}{d6:02X}{d7:02X}",
        u32::from_le_bytes([a0, a1, a2, a3]),
        u16::from_le_bytes([b0, b1]),
        u16::from_le_bytes([c0, c1]),
    )
}

#[cfg(test)]
pub(super) mod tests {
    //! A small test-only GPT writer, then unit, corruption, `sgdisk` and property tests.

    use super::*;
    use crate::layout::{gpt_types, read_layout};
    use proptest::prelude::*;
    use std::io::Cursor;
    use std::process::Command;

    #[derive(Debug, Clone)]
    pub(in crate::layout) struct TestPart {
        pub slot: u32,
        pub type_guid: [u8; 16],
        pub unique_guid: [u8; 16],
        pub first: u64,
        pub last: u64,
        pub attributes: u64,
        pub name: String,
    }

    /// A GPT to write: protective MBR, primary header and array at LBA 1 and 2, backup array
    /// and header at the end of the disk.
    #[derive(Debug, Clone)]
    pub(in crate::layout) struct TestGpt {
        pub sector_size: u32,
        pub disk_sectors: u64,
        pub entry_count: u32,
        pub entry_size: u32,
        pub disk_guid: [u8; 16],
        pub first_usable: u64,
        pub last_usable: u64,
        pub parts: Vec<TestPart>,
    }

    /// The on-disk bytes of a canonical GUID text (test helper, inverse of `guid_text`).
    pub(in crate::layout) fn guid_bytes(text: &str) -> [u8; 16] {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        let raw: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let mut out = [0u8; 16];
        out.copy_from_slice(&raw);
        out[0..4].reverse();
        out[4..6].reverse();
        out[6..8].reverse();
        out
    }

    impl TestGpt {
        pub fn new(sector_size: u32, disk_sectors: u64) -> Self {
            let mut gpt = TestGpt {
                sector_size,
                disk_sectors,
                entry_count: 128,
                entry_size: 128,
                disk_guid: guid_bytes("12345678-9ABC-DEF0-0123-456789ABCDEF"),
                first_usable: 0,
                last_usable: 0,
                parts: Vec::new(),
            };
            gpt.first_usable = 2 + gpt.array_sectors();
            gpt.last_usable = disk_sectors - 2 - gpt.array_sectors();
            gpt
        }

        pub fn part(mut self, slot: u32, first: u64, last: u64, name: &str) -> Self {
            let mut unique_guid = [0u8; 16];
            unique_guid[0] = slot as u8 + 1;
            unique_guid[15] = 0xAB;
            self.parts.push(TestPart {
                slot,
                type_guid: guid_bytes(gpt_types::LINUX_FS),
                unique_guid,
                first,
                last,
                attributes: 0,
                name: name.to_string(),
            });
            self
        }

        pub fn array_sectors(&self) -> u64 {
            (u64::from(self.entry_count) * u64::from(self.entry_size)).div_ceil(u64::from(self.sector_size))
        }

        pub fn backup_lba(&self) -> u64 {
            self.disk_sectors - 1
        }

        pub fn ss(&self) -> usize {
            self.sector_size as usize
        }

        fn array(&self) -> Vec<u8> {
            let size = self.entry_size as usize;
            let mut array = vec![0u8; self.entry_count as usize * size];
            for part in &self.parts {
                let e = &mut array[part.slot as usize * size..][..size];
                e[0..16].copy_from_slice(&part.type_guid);
                e[16..32].copy_from_slice(&part.unique_guid);
                e[32..40].copy_from_slice(&part.first.to_le_bytes());
                e[40..48].copy_from_slice(&part.last.to_le_bytes());
                e[48..56].copy_from_slice(&part.attributes.to_le_bytes());
                for (i, unit) in part.name.encode_utf16().enumerate() {
                    e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
                }
            }
            array
        }

        fn header(&self, my: u64, alternate: u64, entry_lba: u64, array_crc: u32) -> Vec<u8> {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(SIGNATURE);
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alternate.to_le_bytes());
            h[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
            h[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
            h[56..72].copy_from_slice(&self.disk_guid);
            h[72..80].copy_from_slice(&entry_lba.to_le_bytes());
            h[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
            h[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        }

        pub fn write(&self) -> Vec<u8> {
            let ss = self.ss();
            let mut img = vec![0u8; ss * self.disk_sectors as usize];
            // Protective MBR.
            img[446 + 4] = 0xEE;
            img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
            let size = u32::try_from(self.disk_sectors - 1).unwrap_or(u32::MAX);
            img[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
            img[510] = 0x55;
            img[511] = 0xAA;

            let array = self.array();
            let crc = crc32fast::hash(&array);
            let backup = self.backup_lba();
            let backup_array = backup - self.array_sectors();
            img[2 * ss..][..array.len()].copy_from_slice(&array);
            img[backup_array as usize * ss..][..array.len()].copy_from_slice(&array);
            img[ss..][..92].copy_from_slice(&self.header(1, backup, 2, crc));
            img[backup as usize * ss..][..92].copy_from_slice(&self.header(backup, 1, backup_array, crc));
            img
        }

        /// The partitions `read_layout` should report, sorted by start.
        pub fn expected(&self) -> Vec<Partition> {
            let ss = u64::from(self.sector_size);
            let mut parts: Vec<Partition> = self
                .parts
                .iter()
                .map(|p| Partition {
                    number: p.slot + 1,
                    start: p.first * ss,
                    size: (p.last - p.first + 1) * ss,
                    entry: PartitionEntry::Gpt {
                        type_guid: guid_text(&p.type_guid),
                        unique_guid: guid_text(&p.unique_guid),
                        name: p.name.clone(),
                        attributes: p.attributes,
                    },
                })
                .collect();
            parts.sort_by_key(|p| p.start);
            parts
        }
    }

    /// Recomputes the CRC of the header at byte `offset` (over its declared size, clamped).
    /// Never panics, whatever the bytes.
    pub(in crate::layout) fn fix_header_crc(img: &mut [u8], offset: usize, sector_size: usize) {
        let Some(sector) = img.get_mut(offset..offset + sector_size) else {
            return;
        };
        let size = (le_u32(sector, 12) as usize).clamp(92, sector_size);
        sector[16..20].fill(0);
        let crc = crc32fast::hash(&sector[..size]);
        sector[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    /// Recomputes the array CRC named by the header at `offset` (if the array is in the image),
    /// then the header CRC. Never panics, whatever the bytes.
    pub(in crate::layout) fn fix_crcs(img: &mut [u8], offset: usize, sector_size: usize) {
        let Some(sector) = img.get(offset..offset + sector_size) else {
            return;
        };
        let entry_lba = le_u64(sector, 72);
        let bytes = u64::from(le_u32(sector, 80)).checked_mul(u64::from(le_u32(sector, 84)));
        let start = entry_lba.checked_mul(sector_size as u64);
        if let (Some(start), Some(bytes)) = (start, bytes) {
            if let Some(end) = start.checked_add(bytes) {
                if let Some(array) = img.get(start as usize..end as usize) {
                    let crc = crc32fast::hash(array);
                    img[offset + 88..offset + 92].copy_from_slice(&crc.to_le_bytes());
                }
            }
        }
        fix_header_crc(img, offset, sector_size);
    }

    /// Sets a 32-bit header field of the header at LBA `lba` and fixes its CRC.
    fn patch_u32(img: &mut [u8], gpt: &TestGpt, lba: u64, field: usize, value: u32) {
        let offset = lba as usize * gpt.ss();
        img[offset + field..offset + field + 4].copy_from_slice(&value.to_le_bytes());
        fix_header_crc(img, offset, gpt.ss());
    }

    fn read(img: &[u8]) -> Result<DiskLayout, LayoutError> {
        read_layout(&mut Cursor::new(img), img.len() as u64)
    }

    fn three_parts(sector_size: u32) -> TestGpt {
        TestGpt::new(sector_size, 200).part(2, 150, 159, "third").part(0, 40, 99, "first").part(5, 100, 149, "second")
    }

    #[test]
    fn guid_text_is_mixed_endian() {
        let on_disk = [0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4];
        assert_eq!(guid_text(&on_disk), gpt_types::LINUX_FS);
        assert_eq!(guid_bytes(gpt_types::LINUX_FS), on_disk);
    }

    #[test]
    fn reads_in_memory_table_512_and_4096() {
        for sector_size in [512, 4096] {
            let gpt = three_parts(sector_size);
            let layout = read(&gpt.write()).unwrap();
            assert_eq!(layout.scheme, Scheme::Gpt);
            assert_eq!(layout.sector_size, sector_size);
            assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);
            assert_eq!(layout.partitions, gpt.expected());
            let numbers: Vec<u32> = layout.partitions.iter().map(|p| p.number).collect();
            assert_eq!(numbers, [1, 6, 3], "numbered by slot, sorted by start");
            let info = layout.gpt.unwrap();
            assert_eq!(info.disk_guid, "12345678-9ABC-DEF0-0123-456789ABCDEF");
            assert_eq!((info.primary_header_lba, info.backup_header_lba), (1, 199));
            assert_eq!((info.first_usable_lba, info.last_usable_lba), (gpt.first_usable, gpt.last_usable));
            assert_eq!((info.entry_count, info.entry_size), (128, 128));
            assert_eq!(info.used_copy, GptCopy::Primary);
        }
    }

    #[test]
    fn names_are_utf16_with_trailing_nuls_removed() {
        let full: String = "abcdefghijklmnopqrstuvwxyz0123456789".into();
        let gpt = TestGpt::new(512, 200).part(0, 40, 49, "Données 🦀").part(1, 50, 59, &full).part(2, 60, 69, "");
        let layout = read(&gpt.write()).unwrap();
        let names: Vec<&str> = layout
            .partitions
            .iter()
            .map(|p| match &p.entry {
                PartitionEntry::Gpt { name, .. } => name.as_str(),
                PartitionEntry::Mbr { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(names, ["Données 🦀", full.as_str(), ""]);
    }

    #[test]
    fn larger_entry_sizes_are_read() {
        for entry_size in [256, 512, 4096] {
            let mut gpt = TestGpt::new(512, 1000);
            gpt.entry_size = entry_size;
            gpt.entry_count = 16;
            gpt.first_usable = 2 + gpt.array_sectors();
            gpt.last_usable = gpt.disk_sectors - 2 - gpt.array_sectors();
            let gpt = gpt.part(3, 300, 309, "x").part(15, 200, 209, "y");
            let layout = read(&gpt.write()).unwrap();
            assert_eq!(layout.partitions, gpt.expected(), "entry size {entry_size}");
        }
    }

    #[test]
    fn damaged_primary_crc_uses_backup_with_warning() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        img[512 + 16] ^= 0xFF;
        let layout = read(&img).unwrap();
        assert_eq!(layout.partitions, gpt.expected());
        let info = layout.gpt.unwrap();
        assert_eq!(info.used_copy, GptCopy::Backup);
        assert_eq!((info.primary_header_lba, info.backup_header_lba), (1, 199));
        assert_eq!(layout.warnings.len(), 1, "{:?}", layout.warnings);
        assert!(layout.warnings[0].contains("primary GPT header at LBA 1 is damaged"), "{:?}", layout.warnings);
        assert!(layout.warnings[0].contains("CRC32 mismatch"), "{:?}", layout.warnings);
        assert!(layout.warnings[0].contains("backup at LBA 199"), "{:?}", layout.warnings);
    }

    #[test]
    fn damaged_primary_array_uses_backup_with_warning() {
        let gpt = three_parts(4096);
        let mut img = gpt.write();
        img[2 * 4096 + 60] ^= 1; // a name byte of slot 0
        let layout = read(&img).unwrap();
        assert_eq!(layout.gpt.unwrap().used_copy, GptCopy::Backup);
        assert!(layout.warnings[0].contains("entry array CRC32 mismatch"), "{:?}", layout.warnings);
        assert_eq!(layout.partitions, gpt.expected());
    }

    #[test]
    fn damaged_backup_is_a_warning() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        img[199 * 512] = b'X';
        let layout = read(&img).unwrap();
        assert_eq!(layout.gpt.unwrap().used_copy, GptCopy::Primary);
        assert_eq!(layout.partitions, gpt.expected());
        assert_eq!(layout.warnings.len(), 1);
        assert!(layout.warnings[0].contains("backup GPT header at LBA 199 is damaged"), "{:?}", layout.warnings);
        assert!(layout.warnings[0].contains("signature"), "{:?}", layout.warnings);
    }

    #[test]
    fn both_headers_damaged_is_an_error() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        img[512 + 20] ^= 1;
        img[199 * 512 + 20] ^= 1;
        match read(&img) {
            Err(LayoutError::BothGptHeadersDamaged { primary, backup }) => {
                assert!(primary.contains("CRC32 mismatch"), "{primary}");
                assert!(backup.contains("LBA 199") && backup.contains("CRC32 mismatch"), "{backup}");
            }
            other => panic!("expected BothGptHeadersDamaged, got {other:?}"),
        }
    }

    #[test]
    fn protective_mbr_without_any_gpt_header_names_both() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        img[512..1024].fill(0);
        img[199 * 512..].fill(0);
        match read(&img) {
            Err(LayoutError::BothGptHeadersDamaged { primary, backup }) => {
                assert!(primary.contains("signature"), "{primary}");
                assert!(backup.contains("signature"), "{backup}");
            }
            other => panic!("expected BothGptHeadersDamaged, got {other:?}"),
        }
    }

    #[test]
    fn differing_arrays_warn_and_use_primary() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        let backup = three_parts(512).part(7, 170, 179, "extra");
        let other = backup.write();
        // Take the backup array and header from a table with one more partition.
        let array_start = (199 - gpt.array_sectors() as usize) * 512;
        img[array_start..].copy_from_slice(&other[array_start..]);
        let layout = read(&img).unwrap();
        assert_eq!(layout.partitions, gpt.expected());
        assert_eq!(layout.gpt.unwrap().used_copy, GptCopy::Primary);
        assert!(layout.warnings.iter().any(|w| w.contains("arrays differ")), "{:?}", layout.warnings);
    }

    #[test]
    fn overlapping_partitions_are_rejected() {
        let gpt = TestGpt::new(512, 200).part(0, 40, 99, "a").part(1, 99, 120, "b");
        match read(&gpt.write()) {
            Err(LayoutError::Overlap { a: 1, b: 2, a_start, a_end, b_start, b_end }) => {
                assert_eq!((a_start, a_end, b_start, b_end), (40 * 512, 100 * 512, 99 * 512, 121 * 512));
            }
            other => panic!("expected Overlap, got {other:?}"),
        }
    }

    #[test]
    fn partition_outside_usable_range_is_rejected() {
        let gpt = TestGpt::new(512, 200).part(3, 10, 50, "early");
        match read(&gpt.write()) {
            Err(LayoutError::OutOfRange { number: 4, start, end, limit }) => {
                assert_eq!((start, end), (10 * 512, 51 * 512));
                assert!(limit.contains("usable range"), "{limit}");
            }
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn first_after_last_is_rejected() {
        let gpt = TestGpt::new(512, 200).part(0, 60, 50, "backwards");
        let err = read(&gpt.write()).unwrap_err();
        assert!(matches!(&err, LayoutError::Gpt(m) if m.contains("partition 1") && m.contains("after")), "{err}");
    }

    #[test]
    fn entry_size_129_is_rejected() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        patch_u32(&mut img, &gpt, 1, 84, 129);
        let layout = read(&img).unwrap();
        assert_eq!(layout.gpt.as_ref().unwrap().used_copy, GptCopy::Backup);
        assert!(layout.warnings[0].contains("entry size 129"), "{:?}", layout.warnings);

        patch_u32(&mut img, &gpt, 199, 84, 129);
        match read(&img) {
            Err(LayoutError::BothGptHeadersDamaged { primary, backup }) => {
                assert!(primary.contains("entry size 129"), "{primary}");
                assert!(backup.contains("entry size 129"), "{backup}");
            }
            other => panic!("expected BothGptHeadersDamaged, got {other:?}"),
        }
    }

    #[test]
    fn huge_entry_count_is_rejected_before_allocating() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        // 4 Gi entries of 4 KiB: reading this would need 16 TiB.
        patch_u32(&mut img, &gpt, 1, 84, 4096);
        patch_u32(&mut img, &gpt, 1, 80, u32::MAX);
        patch_u32(&mut img, &gpt, 199, 84, 4096);
        patch_u32(&mut img, &gpt, 199, 80, u32::MAX);
        match read(&img) {
            Err(LayoutError::BothGptHeadersDamaged { primary, backup }) => {
                assert!(primary.contains("entry count 4294967295 exceeds"), "{primary}");
                assert!(backup.contains("entry count 4294967295 exceeds"), "{backup}");
            }
            other => panic!("expected BothGptHeadersDamaged, got {other:?}"),
        }
        // Within the cap but larger than the disk.
        patch_u32(&mut img, &gpt, 1, 80, 16384);
        patch_u32(&mut img, &gpt, 199, 80, 16384);
        match read(&img) {
            Err(LayoutError::BothGptHeadersDamaged { primary, .. }) => {
                assert!(primary.contains("does not fit on the disk"), "{primary}");
            }
            other => panic!("expected BothGptHeadersDamaged, got {other:?}"),
        }
    }

    #[test]
    fn header_fields_are_checked() {
        let cases: [(usize, u32, &str); 4] = [
            (12, 91, "header size 91"),
            (12, 513, "header size 513"),
            (8, 0x0002_0000, "revision"),
            (24, 5, "says it is at LBA 5"),
        ];
        for (field, value, reason) in cases {
            let gpt = three_parts(512);
            let mut img = gpt.write();
            patch_u32(&mut img, &gpt, 1, field, value);
            let layout = read(&img).unwrap();
            assert!(layout.warnings[0].contains(reason), "{reason}: {:?}", layout.warnings);
            assert_eq!(layout.partitions, gpt.expected());
        }
    }

    #[test]
    fn header_crc_covers_the_declared_size() {
        // A 512-byte header whose bytes past 92 are covered by the CRC.
        let gpt = three_parts(512);
        let mut img = gpt.write();
        img[512 + 300] = 7;
        patch_u32(&mut img, &gpt, 1, 12, 512);
        assert!(read(&img).unwrap().warnings.is_empty());
        img[512 + 300] = 8;
        assert!(read(&img).unwrap().warnings[0].contains("CRC32 mismatch"));
    }

    #[test]
    fn truncated_image_names_partition_and_disk_size() {
        let gpt = three_parts(512);
        let img = gpt.write();
        let short = &img[..155 * 512];
        match read(short) {
            Err(LayoutError::OutOfRange { number: 3, start, end, limit }) => {
                assert_eq!((start, end), (150 * 512, 160 * 512));
                assert!(limit.contains(&format!("{} bytes", 155 * 512)), "{limit}");
                assert!(limit.contains("truncated"), "{limit}");
            }
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn truncated_image_without_backup_header_is_an_error() {
        let gpt = three_parts(512);
        let img = gpt.write();
        let short = &img[..170 * 512];
        match read(short) {
            Err(LayoutError::Truncated { what, needed, disk_size }) => {
                assert!(what.contains("LBA 199"), "{what}");
                assert_eq!((needed, disk_size), (200 * 512, 170 * 512));
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn grown_disk_warns_about_the_backup_position() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        img.resize(300 * 512, 0);
        let layout = read(&img).unwrap();
        assert_eq!(layout.partitions, gpt.expected());
        assert_eq!(layout.gpt.unwrap().backup_header_lba, 199);
        assert!(layout.warnings.iter().any(|w| w.contains("not at the last LBA 299")), "{:?}", layout.warnings);
    }

    #[test]
    fn gpt_without_protective_mbr_is_read_with_warning() {
        let gpt = three_parts(512);
        let mut img = gpt.write();
        img[..512].fill(0);
        let layout = read(&img).unwrap();
        assert_eq!(layout.scheme, Scheme::Gpt);
        assert_eq!(layout.partitions, gpt.expected());
        assert!(layout.warnings[0].contains("no protective MBR"), "{:?}", layout.warnings);
    }

    #[test]
    fn damaged_primary_on_4096_disk_is_found_through_the_backup() {
        let gpt = three_parts(4096);
        let mut img = gpt.write();
        img[4096..4104].fill(0); // the primary's signature
        let layout = read(&img).unwrap();
        assert_eq!(layout.sector_size, 4096);
        assert_eq!(layout.gpt.unwrap().used_copy, GptCopy::Backup);
        assert_eq!(layout.partitions, gpt.expected());
    }

    /// A value from `sgdisk -i` / `sgdisk -p` output: the text after `key: `.
    fn sgdisk_field(output: &str, key: &str) -> String {
        let line = output.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {output}"));
        line[key.len()..].trim_start_matches(':').trim().to_string()
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn reads_table_made_by_sgdisk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpt.img");
        std::fs::File::create(&path).unwrap().set_len(16 << 20).unwrap();
        run(Command::new("sgdisk")
            .args(["-o", "-n", "1:2048:+1M", "-t", "1:EF00", "-c", "1:EFI system"])
            .args(["-n", "2:0:+4M", "-t", "2:8300", "-c", "2:root", "-A", "2:set:2", "-A", "2:set:60"])
            .args(["-n", "3:0:+2M", "-t", "3:8200", "-c", "3:swap", "-A", "3:set:0"])
            .args(["-n", "5:0:0", "-t", "5:0700", "-c", "5:Données"])
            .arg(&path));
        let mut file = std::fs::File::open(&path).unwrap();
        let layout = read_layout(&mut file, 16 << 20).unwrap();
        assert_eq!(layout.scheme, Scheme::Gpt);
        assert_eq!(layout.sector_size, 512);
        assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);

        let printed = run(Command::new("sgdisk").arg("-p").arg(&path));
        let info = layout.gpt.as_ref().unwrap();
        assert_eq!(info.disk_guid, sgdisk_field(&printed, "Disk identifier (GUID)"));
        assert_eq!((info.primary_header_lba, info.backup_header_lba), (1, (16 << 20) / 512 - 1));

        let numbers: Vec<u32> = layout.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3, 5]);
        for part in &layout.partitions {
            let out = run(Command::new("sgdisk").arg("-i").arg(part.number.to_string()).arg(&path));
            let first: u64 = sgdisk_field(&out, "First sector").split(' ').next().unwrap().parse().unwrap();
            let last: u64 = sgdisk_field(&out, "Last sector").split(' ').next().unwrap().parse().unwrap();
            assert_eq!(part.start, first * 512, "partition {}", part.number);
            assert_eq!(part.end(), (last + 1) * 512, "partition {}", part.number);
            let PartitionEntry::Gpt { type_guid, unique_guid, name, attributes } = &part.entry else {
                panic!("not a GPT entry")
            };
            let code = sgdisk_field(&out, "Partition GUID code");
            assert_eq!(type_guid, code.split(' ').next().unwrap());
            assert_eq!(unique_guid, &sgdisk_field(&out, "Partition unique GUID"));
            assert_eq!(format!("'{name}'"), sgdisk_field(&out, "Partition name"));
            let flags = u64::from_str_radix(&sgdisk_field(&out, "Attribute flags"), 16).unwrap();
            assert_eq!(*attributes, flags);
        }
        let attrs: Vec<u64> = layout
            .partitions
            .iter()
            .map(|p| match p.entry {
                PartitionEntry::Gpt { attributes, .. } => attributes,
                PartitionEntry::Mbr { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(attrs, [0, (1 << 60) | (1 << 2), 1, 0]);
        let PartitionEntry::Gpt { type_guid, .. } = &layout.partitions[0].entry else { unreachable!() };
        assert_eq!(type_guid, gpt_types::EFI_SYSTEM);
    }

    /// Random valid tables: sector size, entry geometry, partitions laid out in order with gaps,
    /// placed in random slots.
    fn arb_gpt() -> impl Strategy<Value = TestGpt> {
        let part = (
            0u64..4,
            1u64..8,
            any::<[u8; 16]>().prop_filter("non-empty type", |g| *g != [0u8; 16]),
            any::<[u8; 16]>(),
            any::<u64>(),
            "[a-zA-Z0-9 _é中🦀-]{0,18}",
        );
        (
            prop_oneof![Just(512u32), Just(4096u32)],
            prop_oneof![Just(4u32), Just(16), Just(128)],
            prop_oneof![Just(128u32), Just(256), Just(512)],
            any::<[u8; 16]>(),
            prop::collection::vec(part, 0..6),
            0u64..4,
        )
            .prop_flat_map(|(ss, count, size, guid, specs, tail)| {
                let n = specs.len().min(count as usize);
                let slots = prop::sample::subsequence((0..count).collect::<Vec<u32>>(), n).prop_shuffle();
                (Just((ss, count, size, guid, specs, tail)), slots)
            })
            .prop_map(|((sector_size, entry_count, entry_size, disk_guid, specs, tail), slots)| {
                let mut gpt = TestGpt {
                    sector_size,
                    disk_sectors: 0,
                    entry_count,
                    entry_size,
                    disk_guid,
                    first_usable: 0,
                    last_usable: 0,
                    parts: Vec::new(),
                };
                gpt.first_usable = 2 + gpt.array_sectors();
                let mut next = gpt.first_usable;
                for (slot, (gap, len, type_guid, unique_guid, attributes, name)) in slots.into_iter().zip(specs) {
                    let first = next + gap;
                    let last = first + len - 1;
                    next = last + 1;
                    gpt.parts.push(TestPart { slot, type_guid, unique_guid, first, last, attributes, name });
                }
                gpt.last_usable = next + tail;
                gpt.disk_sectors = gpt.last_usable + 1 + gpt.array_sectors() + 1;
                gpt
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip_random_tables(gpt in arb_gpt()) {
            let layout = read(&gpt.write()).unwrap();
            prop_assert_eq!(layout.scheme, Scheme::Gpt);
            prop_assert_eq!(layout.sector_size, gpt.sector_size);
            prop_assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);
            prop_assert_eq!(layout.partitions, gpt.expected());
            let info = layout.gpt.unwrap();
            prop_assert_eq!(info.disk_guid, guid_text(&gpt.disk_guid));
            prop_assert_eq!(info.backup_header_lba, gpt.disk_sectors - 1);
        }

        #[test]
        fn mutated_tables_never_panic(
            gpt in arb_gpt(),
            mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            fix in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut img = gpt.write();
            // Mutate mostly the table sectors, where the reader looks.
            let ss = gpt.ss();
            let hot: Vec<usize> = (0..3 * ss).chain(img.len() - 2 * ss..img.len()).collect();
            for (at, byte) in mutations {
                img[*at.get(&hot)] = byte;
            }
            if fix {
                fix_crcs(&mut img, ss, ss);
                let backup = img.len() - ss;
                fix_crcs(&mut img, backup, ss);
            }
            let _ = read(&img);
            let len = cut.index(img.len() + 1);
            let _ = read(&img[..len]);
        }
    }
}
