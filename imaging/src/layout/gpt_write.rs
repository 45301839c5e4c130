//! The small pieces every GPT rewrite shares ([`super::relocate`] for a larger disk,
//! [`super::shrink`] for a smaller one): positioned reads and writes with the offset in the
//! error, the header CRC32, the backup header derived from the primary, and the protective
//! MBR's 0xEE entry.

use super::LayoutError;
use std::io::{Read, Seek, SeekFrom, Write};

pub(super) fn io(offset: u64) -> impl FnOnce(std::io::Error) -> LayoutError {
    move |source| LayoutError::Io { offset, source }
}

pub(super) fn read_at<D: Read + Seek>(dev: &mut D, offset: u64, buf: &mut [u8]) -> Result<(), LayoutError> {
    dev.seek(SeekFrom::Start(offset)).and_then(|_| dev.read_exact(buf)).map_err(io(offset))
}

pub(super) fn write_at<D: Write + Seek>(dev: &mut D, offset: u64, data: &[u8]) -> Result<(), LayoutError> {
    dev.seek(SeekFrom::Start(offset)).and_then(|_| dev.write_all(data)).map_err(io(offset))
}

/// Recomputes the CRC32 of a GPT header (`header` is exactly its `HeaderSize` bytes).
pub(super) fn header_crc(header: &mut [u8]) {
    header[16..20].fill(0);
    let crc = crc32fast::hash(header);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// The backup header of `primary` (whose CRC is already right): `MyLBA` = `last`,
/// `AlternateLBA` = 1, the entry array at `entries_lba`, its own CRC.
pub(super) fn backup_header(primary: &[u8], header_size: usize, last: u64, entries_lba: u64) -> Vec<u8> {
    let mut backup = primary.to_vec();
    backup[24..32].copy_from_slice(&last.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    header_crc(&mut backup[..header_size]);
    backup
}

/// Makes the protective MBR's 0xEE entry (starting at LBA 1) cover a disk whose last sector
/// is `last` (capped at 2^32 - 1 sectors, as the UEFI specification says).
pub(super) fn cover_disk_in_protective_mbr<D: Read + Write + Seek>(dev: &mut D, last: u64) -> Result<(), LayoutError> {
    let mut mbr = vec![0u8; 512];
    read_at(dev, 0, &mut mbr)?;
    for i in 0..4 {
        let e = 446 + 16 * i;
        let start = u32::from_le_bytes(mbr[e + 8..e + 12].try_into().expect("4 bytes"));
        if mbr[e + 4] == 0xEE && start == 1 {
            let sectors = u32::try_from(last).unwrap_or(u32::MAX);
            mbr[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
            write_at(dev, 0, &mbr)?;
        }
    }
    Ok(())
}
