//! Partition tables: reading and validating GPT (primary and backup), the protective MBR, and
//! legacy MBR disks with extended/logical partitions.
//!
//! This module only *describes* the disk. It never writes: the table bytes themselves are kept
//! byte for byte by capturing the regions that hold them (see [`crate::region`]).
//!
//! Everything read here is untrusted: sizes and counts are checked before anything is allocated.

mod gpt;
mod gpt_write;
mod mbr;
mod relocate;
mod shrink;

pub use relocate::relocate_backup_gpt;
pub use shrink::{last_usable_lba, shrink_gpt};

use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

/// How a disk is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Gpt,
    Mbr,
    /// No recognised partition table: the whole disk is one raw region.
    None,
}

/// The partition layout of one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayout {
    /// Size of the whole disk in bytes.
    pub disk_size: u64,
    /// Logical sector size in bytes (512 or 4096).
    pub sector_size: u32,
    pub scheme: Scheme,
    /// GPT header facts, when `scheme` is `Gpt`.
    pub gpt: Option<GptInfo>,
    /// Data partitions (never the extended-partition container), sorted by start offset.
    pub partitions: Vec<Partition>,
    /// Problems that did not stop reading the table (e.g. "primary GPT header damaged, using the
    /// backup at LBA …").
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptInfo {
    /// Disk GUID in its canonical text form (e.g. `"0FC63DAF-8483-4772-8E79-3D69D8477DE4"`).
    pub disk_guid: String,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub primary_header_lba: u64,
    pub backup_header_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    /// Which copy the partitions were read from.
    pub used_copy: GptCopy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GptCopy {
    Primary,
    Backup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Partition number as Linux names it (`sda1` is 1; MBR logical partitions start at 5).
    pub number: u32,
    /// Byte offset of the first byte on the disk.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    pub entry: PartitionEntry,
}

impl Partition {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "table", rename_all = "lowercase")]
pub enum PartitionEntry {
    Gpt {
        /// Type GUID, canonical uppercase text form.
        type_guid: String,
        /// Unique partition GUID, canonical uppercase text form.
        unique_guid: String,
        /// Partition name (UTF-16LE in the entry, decoded; trailing NULs removed).
        name: String,
        /// The 64-bit attribute flags.
        attributes: u64,
    },
    Mbr {
        /// The partition type byte (0x83 Linux, 0x07 NTFS/exFAT, 0x0c FAT32 LBA, 0x82 swap, ...).
        type_byte: u8,
        bootable: bool,
        logical: bool,
    },
}

/// Well-known GPT partition type GUIDs.
pub mod gpt_types {
    pub const EFI_SYSTEM: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
    pub const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    pub const LINUX_SWAP: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";
    pub const MS_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
    pub const MS_RESERVED: &str = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE";
    pub const MS_RECOVERY: &str = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC";
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read the partition table at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("disk is too small ({size} bytes) to hold a partition table")]
    DiskTooSmall { size: u64 },
    #[error("both GPT headers are damaged (primary: {primary}; backup: {backup})")]
    BothGptHeadersDamaged { primary: String, backup: String },
    #[error("partitions {a} and {b} overlap (bytes {a_start}..{a_end} and {b_start}..{b_end})")]
    Overlap { a: u32, b: u32, a_start: u64, a_end: u64, b_start: u64, b_end: u64 },
    #[error("partition {number} (bytes {start}..{end}) lies outside {limit}")]
    OutOfRange { number: u32, start: u64, end: u64, limit: String },
    #[error("MBR: {0}")]
    Mbr(String),
    #[error("GPT: {0}")]
    Gpt(String),
    #[error(
        "{what} needs a disk of at least {needed} bytes but the disk has {disk_size} bytes: is the image truncated?"
    )]
    Truncated { what: String, needed: u64, disk_size: u64 },
}

/// Reads and validates the partition table of a disk of `disk_size` bytes.
///
/// `disk_size` must be the real size of the device or image file (not the size the table
/// claims): a table that reaches past it is reported as a truncated image
/// ([`LayoutError::OutOfRange`] naming the partition and the disk size, or
/// [`LayoutError::Truncated`] for the backup GPT header).
///
/// - A protective MBR (type 0xEE) leads to GPT. The sector size is detected by looking for the
///   GPT header at LBA 1 with 512-byte, then 4096-byte sectors. Both GPT headers are checked
///   (signature, revision, header size, header CRC over its declared size, `MyLBA`, entry size
///   128·2ⁿ, entry count, entry array CRC, usable range between the headers). A damaged primary
///   falls back to the backup with a warning, and a damaged backup is a warning; both damaged is
///   [`LayoutError::BothGptHeadersDamaged`]. Partition arrays that differ between two valid
///   copies are a warning (the primary is used).
/// - Otherwise a valid MBR signature gives a legacy MBR disk (512-byte sectors); extended
///   partitions are followed through their EBR chain (with loop and range checks) into logical
///   partitions numbered from 5. An MBR whose boot flags are not 0x00/0x80 is not a partition
///   table (a whole-disk filesystem's boot sector): [`Scheme::None`] with a warning.
/// - A GPT header at LBA 1 without any MBR signature is read as GPT, with a warning.
/// - No signature at all gives [`Scheme::None`] (whole disk raw).
///
/// Partitions must lie inside the disk (and, on GPT, inside the usable range) and must not
/// overlap; violations are errors. Nothing is allocated from a size read off the disk before
/// that size is checked.
pub fn read_layout<R: Read + Seek>(disk: &mut R, disk_size: u64) -> Result<DiskLayout, LayoutError> {
    if disk_size < 2 * mbr::SECTOR_SIZE {
        return Err(LayoutError::DiskTooSmall { size: disk_size });
    }
    let mut sector0 = [0u8; mbr::SECTOR_LEN];
    read_at(disk, 0, &mut sector0)?;
    let mut warnings = Vec::new();
    let gpt_sector_size = gpt::find_primary_signature(disk, disk_size)?;

    if mbr::is_protective(&sector0) {
        if mbr::is_hybrid(&sector0) {
            warnings.push(
                "hybrid MBR: the MBR lists partitions besides the protective 0xEE entry; \
                 they are ignored and the GPT is used"
                    .to_string(),
            );
        }
        let sector_size = match gpt_sector_size {
            Some(size) => size,
            None => gpt::find_backup_signature(disk, disk_size)?.unwrap_or(gpt::DEFAULT_SECTOR_SIZE),
        };
        return gpt::read(disk, disk_size, sector_size, warnings);
    }

    if mbr::has_signature(&sector0) {
        if let Some(partitions) = mbr::read(disk, disk_size, &sector0, &mut warnings)? {
            if gpt_sector_size.is_some() {
                warnings.push(
                    "a GPT header is present at LBA 1 but the MBR has no protective 0xEE entry; \
                     the MBR is used and the GPT ignored"
                        .to_string(),
                );
            }
            return Ok(DiskLayout {
                disk_size,
                sector_size: mbr::SECTOR_SIZE as u32,
                scheme: Scheme::Mbr,
                gpt: None,
                partitions,
                warnings,
            });
        }
    }

    if let Some(sector_size) = gpt_sector_size {
        warnings.push("no protective MBR in sector 0; reading the GPT found at LBA 1".to_string());
        return gpt::read(disk, disk_size, sector_size, warnings);
    }

    Ok(DiskLayout {
        disk_size,
        sector_size: mbr::SECTOR_SIZE as u32,
        scheme: Scheme::None,
        gpt: None,
        partitions: Vec::new(),
        warnings,
    })
}

/// Reads exactly `buf.len()` bytes at byte `offset` of the disk.
fn read_at<R: Read + Seek>(disk: &mut R, offset: u64, buf: &mut [u8]) -> Result<(), LayoutError> {
    disk.seek(SeekFrom::Start(offset))
        .and_then(|_| disk.read_exact(buf))
        .map_err(|source| LayoutError::Io { offset, source })
}

/// The `N` bytes of `buf` at `at`; zeros if `buf` is too short (callers read fixed fields of
/// buffers whose length they have already checked).
fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = at.checked_add(N).and_then(|end| buf.get(at..end)) {
        out.copy_from_slice(src);
    }
    out
}

fn le_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes_at(buf, at))
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes_at(buf, at))
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes_at(buf, at))
}

/// A partition-like byte range used for overlap checks: `(number, start, end)`.
type Span = (u32, u64, u64);

/// Fails with [`LayoutError::Overlap`] if any two spans overlap. Sorts `spans` by start; then an
/// overlap, if any, shows between two neighbours.
fn check_overlaps(spans: &mut [Span]) -> Result<(), LayoutError> {
    spans.sort_by_key(|&(number, start, _)| (start, number));
    for pair in spans.windows(2) {
        if let [(a, a_start, a_end), (b, b_start, b_end)] = *pair {
            if b_start < a_end {
                return Err(LayoutError::Overlap { a, b, a_start, a_end, b_start, b_end });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::gpt::tests::TestGpt;
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn read(img: &[u8]) -> Result<DiskLayout, LayoutError> {
        read_layout(&mut Cursor::new(img), img.len() as u64)
    }

    #[test]
    fn hybrid_mbr_uses_gpt_with_warning() {
        let gpt = TestGpt::new(512, 200).part(0, 40, 49, "a");
        let mut img = gpt.write();
        // A second MBR entry besides the 0xEE one.
        img[446 + 16 + 4] = 0x83;
        img[446 + 16 + 8] = 40;
        img[446 + 16 + 12] = 10;
        let layout = read(&img).unwrap();
        assert_eq!(layout.scheme, Scheme::Gpt);
        assert_eq!(layout.partitions, gpt.expected());
        assert!(layout.warnings[0].contains("hybrid MBR"), "{:?}", layout.warnings);
    }

    #[test]
    fn mbr_without_protective_entry_ignores_a_stale_gpt() {
        let gpt = TestGpt::new(512, 200).part(0, 40, 49, "a");
        let mut img = gpt.write();
        img[446..510].fill(0);
        img[446 + 4] = 0x83;
        img[446 + 8] = 40;
        img[446 + 12] = 20;
        let layout = read(&img).unwrap();
        assert_eq!(layout.scheme, Scheme::Mbr);
        assert_eq!(layout.partitions.len(), 1);
        assert_eq!((layout.partitions[0].start, layout.partitions[0].size), (40 * 512, 20 * 512));
        assert!(layout.warnings[0].contains("GPT ignored"), "{:?}", layout.warnings);
    }

    #[test]
    fn disk_shorter_than_its_stated_size_is_an_io_error() {
        let img = TestGpt::new(512, 200).part(0, 40, 49, "a").write();
        let err = read_layout(&mut Cursor::new(&img[..150 * 512]), 200 * 512).unwrap_err();
        assert!(matches!(err, LayoutError::Io { .. }), "{err}");
    }

    #[test]
    fn layout_serialises_as_json() {
        let layout = read(&TestGpt::new(512, 200).part(0, 40, 49, "a").write()).unwrap();
        let json = serde_json::to_string(&layout).unwrap();
        assert!(json.contains(r#""scheme":"gpt""#) && json.contains(r#""table":"gpt""#), "{json}");
        let back: DiskLayout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, layout);
    }

    /// Random bytes, with the signatures the reader looks for sometimes planted so that the MBR
    /// and GPT paths are reached.
    fn arb_disk() -> impl Strategy<Value = Vec<u8>> {
        (prop::collection::vec(any::<u8>(), 0..12_288), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(mut bytes, mbr_sig, protective, gpt_sig)| {
                if bytes.len() >= 512 && mbr_sig {
                    bytes[510] = 0x55;
                    bytes[511] = 0xAA;
                    if protective {
                        bytes[446 + 4] = 0xEE;
                    }
                }
                if bytes.len() >= 1024 && gpt_sig {
                    bytes[512..520].copy_from_slice(b"EFI PART");
                }
                bytes
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(
            disk in arb_disk(),
            extra in prop_oneof![0u64..4096, Just(u64::MAX)],
        ) {
            let _ = read(&disk);
            // A stated size larger than the data: reads fail with I/O errors, never a panic.
            let _ = read_layout(&mut Cursor::new(&disk), (disk.len() as u64).saturating_add(extra));
        }
    }
}
