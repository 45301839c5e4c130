//! Partition tables: reading and validating GPT (primary and backup), the protective MBR, and
//! legacy MBR disks with extended/logical partitions.
//!
//! This module only *describes* the disk. It never writes: the table bytes themselves are kept
//! byte for byte by capturing the regions that hold them (see [`crate::region`]).
//!
//! Everything read here is untrusted: sizes and counts are checked before anything is allocated.

mod gpt;
mod mbr;

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
}

/// Reads and validates the partition table of a disk of `disk_size` bytes.
///
/// - A protective MBR (type 0xEE) leads to GPT. Both GPT headers are checked (signature,
///   revision, header size, header CRC over its declared size, `MyLBA`, entry size 128·2ⁿ,
///   entry array CRC, usable range inside the disk). A damaged primary falls back to the backup
///   with a warning, and a damaged backup is a warning; both damaged is
///   [`LayoutError::BothGptHeadersDamaged`].
/// - Otherwise a valid MBR signature gives a legacy MBR disk; extended partitions are followed
///   through their EBR chain (with loop and range checks) into logical partitions.
/// - No signature at all gives [`Scheme::None`] (whole disk raw).
///
/// Partitions must lie inside the disk (and, on GPT, inside the usable range) and must not
/// overlap; violations are errors.
pub fn read_layout<R: std::io::Read + std::io::Seek>(
    disk: &mut R,
    disk_size: u64,
) -> Result<DiskLayout, LayoutError> {
    let _ = (disk, disk_size, gpt::placeholder, mbr::placeholder);
    unimplemented!("layout::read_layout")
}
