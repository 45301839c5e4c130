//! Moving the backup GPT to the end of a larger disk, after a restore onto it.
//!
//! A GPT disk restored byte for byte onto a larger disk has its backup header and entry array
//! where the old disk ended. This does what `sgdisk -e` does: the entry array and backup header
//! are written at the new end, the primary header's `AlternateLBA` and `LastUsableLBA` follow
//! them (the partitions do not move or grow), the protective MBR covers the new size, and the
//! stale backup header is zeroed. The new backup is written before the primary points to it, so
//! an interruption leaves a disk whose primary header still describes a valid backup.

use super::gpt_write::{backup_header, cover_disk_in_protective_mbr, header_crc, io, read_at, write_at};
use super::{read_layout, GptCopy, LayoutError, Scheme};
use std::io::{Read, Seek, Write};

/// Moves the backup GPT of the disk in `dev` (of `size` bytes) to its last sector. Returns
/// `false` if there is nothing to do (not GPT, or the backup is already at the end). Refuses
/// (with an error) a disk whose primary GPT is not intact.
pub fn relocate_backup_gpt<D: Read + Write + Seek>(dev: &mut D, size: u64) -> Result<bool, LayoutError> {
    let layout = read_layout(dev, size)?;
    let (Scheme::Gpt, Some(gpt)) = (layout.scheme, layout.gpt) else { return Ok(false) };
    let ss = layout.sector_size as u64;
    let last = size / ss - 1;
    if gpt.backup_header_lba == last {
        return Ok(false);
    }
    if gpt.used_copy != GptCopy::Primary {
        return Err(LayoutError::Gpt("the primary GPT header is damaged; not moving the backup".into()));
    }
    let mut sector = vec![0u8; ss as usize];
    read_at(dev, ss, &mut sector)?;
    let header_size = u32::from_le_bytes(sector[12..16].try_into().expect("4")) as usize;
    let entries_lba = u64::from_le_bytes(sector[72..80].try_into().expect("8"));
    let array_bytes = gpt.entry_count as u64 * gpt.entry_size as u64;
    let array_sectors = array_bytes.div_ceil(ss);
    let mut array = vec![0u8; (array_sectors * ss) as usize];
    read_at(dev, entries_lba * ss, &mut array)?;
    let new_entries_lba = last - array_sectors;
    if new_entries_lba <= gpt.last_usable_lba {
        return Err(LayoutError::Gpt("no room for the backup entry array after the last usable sector".into()));
    }

    let mut primary = sector.clone();
    primary[32..40].copy_from_slice(&last.to_le_bytes());
    primary[48..56].copy_from_slice(&(new_entries_lba - 1).to_le_bytes());
    header_crc(&mut primary[..header_size]);
    let backup = backup_header(&primary, header_size, last, new_entries_lba);

    write_at(dev, new_entries_lba * ss, &array)?;
    write_at(dev, last * ss, &backup)?;
    write_at(dev, ss, &primary)?;
    write_at(dev, gpt.backup_header_lba * ss, &vec![0u8; ss as usize])?;

    cover_disk_in_protective_mbr(dev, last)?;
    dev.flush().map_err(io(0))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn backup_moves_to_the_end_like_sgdisk_e() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
        let ok = Command::new("sgdisk")
            .args(["-n1:2048:+8M", "-t1:ef00", "-c1:EFI", "-n2:0:0", "-t2:8300", "-A2:set:2"])
            .arg(&img)
            .output()
            .expect("sgdisk (apt-get install gdisk)");
        assert!(ok.status.success());
        let before = read_layout(&mut std::fs::File::open(&img).unwrap(), 32 << 20).unwrap();
        // The restored disk is larger.
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        f.set_len(48 << 20).unwrap();
        let mut f = f;
        assert!(relocate_backup_gpt(&mut f, 48 << 20).unwrap());
        assert!(!relocate_backup_gpt(&mut f, 48 << 20).unwrap(), "second run has nothing to do");
        let after = read_layout(&mut f, 48 << 20).unwrap();
        assert!(after.warnings.is_empty(), "{:?}", after.warnings);
        assert_eq!(after.partitions, before.partitions);
        assert_eq!(after.gpt.as_ref().unwrap().backup_header_lba, (48 << 20) / 512 - 1);
        let v = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(text.contains("No problems found"), "sgdisk -v: {text}");
    }
}
