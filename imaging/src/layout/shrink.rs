//! Rewriting a GPT for a smaller disk, after its last partition was shrunk (`kura image fit`).
//!
//! The disk in `dev` already has its new size and holds, below the last partition, the original
//! disk's bytes (protective MBR, primary header and entry array included). One partition entry
//! gets a new last LBA; both headers are rewritten for the new size (`AlternateLBA`,
//! `LastUsableLBA`, the entry array's CRC32, each header's CRC32), the backup entry array and
//! header are written at the new end, and the protective MBR covers the new size. The result is
//! read back with [`read_layout`] and must verify without a warning.

use super::gpt_write::{backup_header, cover_disk_in_protective_mbr, header_crc, io, read_at, write_at};
use super::{read_layout, DiskLayout, GptCopy, LayoutError, Scheme};
use std::io::{Read, Seek, Write};

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The last usable LBA of a GPT disk of `size` bytes with an entry array of `array_bytes`.
pub fn last_usable_lba(size: u64, sector_size: u64, array_bytes: u64) -> u64 {
    (size / sector_size - 1) - array_bytes.div_ceil(sector_size) - 1
}

/// Sets the last LBA of the partition starting at `first_lba` to `new_last_lba` and rewrites
/// the GPT of the `size`-byte disk in `dev` for that size. Returns the layout read back.
pub fn shrink_gpt<D: Read + Write + Seek>(
    dev: &mut D,
    size: u64,
    sector_size: u32,
    first_lba: u64,
    new_last_lba: u64,
) -> Result<DiskLayout, LayoutError> {
    let ss = sector_size as u64;
    let mut primary = vec![0u8; ss as usize];
    read_at(dev, ss, &mut primary)?;
    if &primary[..8] != b"EFI PART" {
        return Err(LayoutError::Gpt("no primary GPT header at LBA 1".into()));
    }
    let header_size = u32::from_le_bytes(primary[12..16].try_into().expect("4")) as usize;
    if !(92..=ss as usize).contains(&header_size) {
        return Err(LayoutError::Gpt(format!("GPT header size {header_size} is out of range")));
    }
    let entries_lba = u64_at(&primary, 72);
    let count = u32::from_le_bytes(primary[80..84].try_into().expect("4")) as u64;
    let entry_size = u32::from_le_bytes(primary[84..88].try_into().expect("4")) as u64;
    if !(128..=4096).contains(&entry_size) || count > 16384 {
        return Err(LayoutError::Gpt(format!("GPT entry array of {count} × {entry_size} bytes is out of range")));
    }
    let array_sectors = (count * entry_size).div_ceil(ss);
    let last = size / ss - 1;
    let last_usable = last - array_sectors - 1;
    if new_last_lba > last_usable || new_last_lba < first_lba {
        return Err(LayoutError::Gpt(format!(
            "new last LBA {new_last_lba} is outside the partition start {first_lba} .. last usable LBA {last_usable}"
        )));
    }
    let mut array = vec![0u8; (array_sectors * ss) as usize];
    read_at(dev, entries_lba * ss, &mut array)?;
    let mut found = false;
    for i in 0..count as usize {
        let e = &mut array[i * entry_size as usize..(i + 1) * entry_size as usize];
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, end) = (u64_at(e, 32), u64_at(e, 40));
        if first == first_lba {
            e[40..48].copy_from_slice(&new_last_lba.to_le_bytes());
            found = true;
        } else if end > last_usable {
            return Err(LayoutError::Gpt(format!(
                "partition entry {} ends at LBA {end}, past the new last usable LBA {last_usable}",
                i + 1
            )));
        }
    }
    if !found {
        return Err(LayoutError::Gpt(format!("no partition entry starts at LBA {first_lba}")));
    }
    let array_crc = crc32fast::hash(&array[..(count * entry_size) as usize]);
    primary[32..40].copy_from_slice(&last.to_le_bytes());
    primary[48..56].copy_from_slice(&last_usable.to_le_bytes());
    primary[88..92].copy_from_slice(&array_crc.to_le_bytes());
    header_crc(&mut primary[..header_size]);
    let backup = backup_header(&primary, header_size, last, last - array_sectors);

    write_at(dev, entries_lba * ss, &array)?;
    write_at(dev, (last - array_sectors) * ss, &array)?;
    write_at(dev, last * ss, &backup)?;
    write_at(dev, ss, &primary)?;

    cover_disk_in_protective_mbr(dev, last)?;
    dev.flush().map_err(io(0))?;

    let layout = read_layout(dev, size)?;
    let clean = layout.scheme == Scheme::Gpt
        && layout.warnings.is_empty()
        && layout.gpt.as_ref().is_some_and(|g| g.used_copy == GptCopy::Primary && g.backup_header_lba == last);
    if !clean {
        return Err(LayoutError::Gpt(format!("the rewritten GPT does not verify: {:?}", layout.warnings)));
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_last_partition_shrinks_and_sgdisk_finds_no_problem() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let ok = Command::new("sgdisk")
            .args(["-n1:2048:+8M", "-t1:ef00", "-c1:EFI", "-n2:0:0", "-t2:8300", "-c2:root", "-A2:set:2"])
            .arg(&img)
            .output()
            .expect("sgdisk (apt-get install gdisk)");
        assert!(ok.status.success());
        let before = read_layout(&mut std::fs::File::open(&img).unwrap(), 64 << 20).unwrap();
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        f.set_len(32 << 20).unwrap();
        let start = before.partitions[1].start / 512;
        let new_last = (31 << 20) / 512 - 1;
        let after = shrink_gpt(&mut f, 32 << 20, 512, start, new_last).unwrap();
        assert_eq!(after.partitions[0], before.partitions[0]);
        assert_eq!(after.partitions[1].entry, before.partitions[1].entry, "type, GUID, name, attributes kept");
        assert_eq!((after.partitions[1].start, after.partitions[1].end()), (start * 512, 31 << 20));
        assert_eq!(after.gpt.as_ref().unwrap().last_usable_lba, last_usable_lba(32 << 20, 512, 128 * 128));
        let v = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(text.contains("No problems found"), "sgdisk -v: {text}");
    }

    #[test]
    fn a_partition_that_would_not_fit_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let ok = Command::new("sgdisk").args(["-n1:2048:+40M", "-n2:0:0"]).arg(&img).output().unwrap();
        assert!(ok.status.success());
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        f.set_len(32 << 20).unwrap();
        let head = std::fs::read(&img).unwrap();
        let e = shrink_gpt(&mut f, 32 << 20, 512, 83968, (31 << 20) / 512 - 1).unwrap_err().to_string();
        assert!(e.contains("outside the partition start"), "{e}");
        let e = shrink_gpt(&mut f, 32 << 20, 512, 2048, (20 << 20) / 512 - 1).unwrap_err().to_string();
        assert!(e.contains("past the new last usable LBA"), "{e}");
        assert_eq!(std::fs::read(&img).unwrap(), head);
    }
}
