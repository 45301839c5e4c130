//! FAT12/16/32 allocation maps, from the BIOS parameter block and the file allocation tables.
//!
//! The map is per block of whole sectors, as large as the data area's alignment and the cluster
//! size allow (one sector at worst): the reserved area, every FAT copy, the FAT12/16 root directory and
//! each data cluster with a non-zero entry in any FAT copy are used (bad-cluster markers count as
//! used; the union of the copies only ever marks more). The few sectors past the last whole
//! cluster are used too (marked, or left past the map as the tail).

use super::{label_from_bytes, le16, le32, read_at_or, AllocationMap, FsKind};
use crate::bitmap::Bitmap;
use std::io::{Read, Seek};

/// FAT12 below this many clusters, FAT16 below [`FAT16_MAX`], FAT32 above (Microsoft's rule).
const FAT12_MAX: u64 = 4085;
const FAT16_MAX: u64 = 65525;
/// Largest cluster count whose numbers stay below FAT32's reserved values.
const FAT32_MAX: u64 = 0x0FFF_FFF5;

/// Largest map block: coarser blocks keep the map of a big FAT32 volume small.
const MAX_BLOCK: u64 = 64 * 1024;

/// Bytes of FAT32 entries read at a time.
const CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// The validated layout of a FAT volume, in sectors.
#[derive(Debug)]
struct Layout {
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    reserved: u64,
    fats: u64,
    fat_sectors: u64,
    total_sectors: u64,
    first_data_sector: u64,
    clusters: u64,
    fat_type: FatType,
    label: Option<String>,
}

/// Whether `head` looks like a FAT boot sector: a jump instruction and plausible BPB fields.
pub(super) fn detect(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    let oem = &head[3..11];
    if oem == b"NTFS    " || oem == b"EXFAT   " {
        return false;
    }
    let bps = le16(head, 0x0B);
    let spc = head[0x0D];
    let total = if le16(head, 0x13) != 0 { le16(head, 0x13) as u32 } else { le32(head, 0x20) };
    let fat_size = if le16(head, 0x16) != 0 { le16(head, 0x16) as u32 } else { le32(head, 0x24) };
    matches!(head[0], 0xEB | 0xE9)
        && matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && le16(head, 0x0E) >= 1
        && (1..=4).contains(&head[0x10])
        && (head[0x15] == 0xF0 || head[0x15] >= 0xF8)
        && total != 0
        && fat_size != 0
}

impl Layout {
    fn parse(bs: &[u8], part_size: u64) -> Result<Layout, String> {
        let bytes_per_sector = le16(bs, 0x0B) as u64;
        if !(512..=4096).contains(&bytes_per_sector) || !bytes_per_sector.is_power_of_two() {
            return Err(format!("{bytes_per_sector} bytes per sector"));
        }
        let sectors_per_cluster = bs[0x0D] as u64;
        if !sectors_per_cluster.is_power_of_two() {
            return Err(format!("{sectors_per_cluster} sectors per cluster"));
        }
        let reserved = le16(bs, 0x0E) as u64;
        let fats = bs[0x10] as u64;
        let root_entries = le16(bs, 0x11) as u64;
        let total16 = le16(bs, 0x13) as u64;
        let fat16_size = le16(bs, 0x16) as u64;
        let total_sectors = if total16 != 0 { total16 } else { le32(bs, 0x20) as u64 };
        let fat_sectors = if fat16_size != 0 { fat16_size } else { le32(bs, 0x24) as u64 };
        if reserved == 0 || fats == 0 || total_sectors == 0 || fat_sectors == 0 {
            return Err("reserved sectors, FAT count, total sectors or FAT size is zero".into());
        }
        if total_sectors * bytes_per_sector > part_size {
            return Err(format!(
                "volume of {total_sectors} sectors of {bytes_per_sector} bytes is larger than the partition ({part_size} bytes)"
            ));
        }
        let root_dir_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let first_data_sector = reserved + fats * fat_sectors + root_dir_sectors;
        if first_data_sector >= total_sectors {
            return Err(format!("data area starts at sector {first_data_sector}, past the volume end {total_sectors}"));
        }
        let clusters = (total_sectors - first_data_sector) / sectors_per_cluster;
        let fat_type = match clusters {
            c if c < FAT12_MAX => FatType::Fat12,
            c if c < FAT16_MAX => FatType::Fat16,
            _ => FatType::Fat32,
        };
        match fat_type {
            FatType::Fat32 if root_entries != 0 || fat16_size != 0 => {
                return Err(format!("{clusters} clusters make it FAT32 but the BPB has FAT12/16 fields set"))
            }
            FatType::Fat32 if clusters > FAT32_MAX => return Err(format!("{clusters} clusters is too many for FAT32")),
            FatType::Fat12 | FatType::Fat16 if root_entries == 0 => {
                return Err(format!("{clusters} clusters make it FAT12/16 but there is no root directory"))
            }
            _ => {}
        }
        let entries = clusters + 2;
        let fat_bytes = match fat_type {
            FatType::Fat12 => (entries * 3).div_ceil(2),
            FatType::Fat16 => entries * 2,
            FatType::Fat32 => entries * 4,
        };
        if fat_bytes > fat_sectors * bytes_per_sector {
            return Err(format!("a FAT of {fat_sectors} sectors cannot hold {entries} entries"));
        }
        let label_off = if fat_type == FatType::Fat32 { 0x42 } else { 0x26 };
        let label = if bs[label_off] == 0x29 {
            label_from_bytes(&bs[label_off + 5..label_off + 16]).filter(|l| l != "NO NAME")
        } else {
            None
        };
        Ok(Layout {
            bytes_per_sector,
            sectors_per_cluster,
            reserved,
            fats,
            fat_sectors,
            total_sectors,
            first_data_sector,
            clusters,
            fat_type,
            label,
        })
    }

    /// Sectors per map bit: the largest power of two (up to a cluster, at most 64 KiB) that
    /// divides both the data area's start and the cluster size, so every region is whole bits.
    fn sectors_per_block(&self) -> u64 {
        let max = (MAX_BLOCK / self.bytes_per_sector).min(self.sectors_per_cluster);
        // Both are powers of two, so the answer is the smaller of them and the data start's
        // largest power-of-two divisor.
        let align = 1u64 << self.first_data_sector.trailing_zeros().min(16);
        max.min(align)
    }

    /// Byte length of the FAT entries for clusters 0..clusters+2.
    fn fat_bytes(&self) -> u64 {
        let entries = self.clusters + 2;
        match self.fat_type {
            FatType::Fat12 => (entries * 3).div_ceil(2),
            FatType::Fat16 => entries * 2,
            FatType::Fat32 => entries * 4,
        }
    }
}

/// Reads the allocation map of the FAT volume in `part`; `head` holds its first sectors.
pub(super) fn read<R: Read + Seek>(part: &mut R, part_size: u64, head: &[u8]) -> Result<AllocationMap, String> {
    let l = Layout::parse(head, part_size)?;
    let used = used_clusters(part, &l)?;
    let unit = l.sectors_per_block();
    // Whole blocks only: the sectors past the last whole block (all past the last cluster) are
    // the tail the map contract counts as used.
    let mut bitmap = Bitmap::new(l.total_sectors / unit);
    let first_data = l.first_data_sector / unit;
    let per_cluster = l.sectors_per_cluster / unit;
    bitmap.set_range(0, first_data);
    for (start, count) in used.runs() {
        bitmap.set_range(first_data + start * per_cluster, count * per_cluster);
    }
    let data_end = first_data + l.clusters * per_cluster;
    bitmap.set_range(data_end, bitmap.len() - data_end);
    Ok(AllocationMap {
        kind: FsKind::Fat,
        block_size: (l.bytes_per_sector * unit) as u32,
        bitmap,
        label: l.label.clone(),
        warnings: Vec::new(),
    })
}

/// One bit per data cluster (bit 0 is cluster 2): set if any FAT copy has a non-zero entry.
fn used_clusters<R: Read + Seek>(part: &mut R, l: &Layout) -> Result<Bitmap, String> {
    let mut used = Bitmap::new(l.clusters);
    let fat_bytes = l.fat_bytes();
    for copy in 0..l.fats {
        let fat_start = (l.reserved + copy * l.fat_sectors) * l.bytes_per_sector;
        if l.fat_type == FatType::Fat12 {
            let mut fat = vec![0u8; fat_bytes as usize];
            read_at_or(part, fat_start, &mut fat, &format!("FAT #{}", copy + 1))?;
            for c in 2..l.clusters + 2 {
                let off = (c + c / 2) as usize;
                let pair = le16(&fat, off);
                let entry = if c % 2 == 0 { pair & 0x0FFF } else { pair >> 4 };
                if entry != 0 {
                    used.set(c - 2);
                }
            }
            continue;
        }
        let entry_size = if l.fat_type == FatType::Fat16 { 2 } else { 4 };
        let mut buf = Vec::new();
        let mut pos = 0u64;
        while pos < fat_bytes {
            let n = CHUNK.min(fat_bytes - pos);
            buf.resize(n as usize, 0);
            read_at_or(part, fat_start + pos, &mut buf, &format!("FAT #{}", copy + 1))?;
            for (i, e) in buf.chunks_exact(entry_size).enumerate() {
                let c = pos / entry_size as u64 + i as u64;
                if c >= 2 && e.iter().any(|&b| b != 0) {
                    used.set(c - 2);
                }
            }
            pos += n;
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::probe;
    use crate::fs::test_images::{file_of, require, run, run_out, Image};
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Builds a FAT image with `mkfs.vfat -F <bits>` and copies a few files onto it.
    fn build(mib: u64, bits: &str, sectors_per_cluster: Option<&str>, big: usize) -> Image {
        let img = Image::new(mib);
        let mut args = vec!["-F", bits, "-n", "KURAFAT"];
        if let Some(spc) = sectors_per_cluster {
            args.extend(["-s", spc]);
        }
        args.push(img.path_str());
        run("mkfs.vfat", &args);
        let dir = img.dir.path();
        std::fs::write(dir.join("small.txt"), b"hello kura\n").unwrap();
        std::fs::write(dir.join("big.bin"), file_of(big, 3)).unwrap();
        for f in ["small.txt", "big.bin"] {
            let src = dir.join(f);
            run("mcopy", &["-i", img.path_str(), src.to_str().unwrap(), &format!("::{f}")]);
        }
        img
    }

    /// `(used, total)` data clusters from `fsck.fat -n -v`.
    fn fsck_clusters(img: &Image) -> (u64, u64) {
        let out = run_out("fsck.fat", &["-n", "-v", img.path_str()]);
        let last = out.lines().rev().find(|l| l.contains(" clusters")).unwrap();
        let frac = last.split(", ").nth(1).unwrap().split_whitespace().next().unwrap();
        let (u, t) = frac.split_once('/').unwrap();
        (u.parse().unwrap(), t.parse().unwrap())
    }

    /// Cluster numbers of a file, from `mshowfat` ("::/f <3-5><9>").
    fn file_clusters(img: &Image, file: &str) -> Vec<u64> {
        let out = run_out("mshowfat", &["-i", img.path_str(), &format!("::{file}")]);
        let mut v = Vec::new();
        for run in out.split('<').skip(1) {
            let run = run.split('>').next().unwrap();
            let (a, b) = run.split_once('-').unwrap_or((run, run));
            v.extend(a.trim().parse::<u64>().unwrap()..=b.trim().parse::<u64>().unwrap());
        }
        v
    }

    /// Builds a FAT image, checks its map against `fsck.fat` and `mshowfat`; returns the map's
    /// block size.
    fn check_variant(mib: u64, bits: &str, cluster: Option<&str>, expect: FatType) -> u32 {
        require("mkfs.vfat");
        require("mcopy");
        require("fsck.fat");
        require("mshowfat");
        let img = build(mib, bits, cluster, 1_500_000);
        let map = img.probe(None);
        assert_eq!(map.kind, FsKind::Fat, "{:?}", map.warnings);
        assert_eq!(map.label.as_deref(), Some("KURAFAT"));
        let bytes = img.bytes();
        let l = Layout::parse(&bytes[..512], bytes.len() as u64).unwrap();
        assert_eq!(l.fat_type, expect);
        let unit = l.sectors_per_block();
        assert_eq!(map.block_size as u64, unit * l.bytes_per_sector);
        assert_eq!(map.bitmap.len(), l.total_sectors / unit);
        let used = used_clusters(&mut Cursor::new(&bytes), &l).unwrap();
        let (fsck_used, fsck_total) = fsck_clusters(&img);
        assert_eq!(l.clusters, fsck_total);
        assert_eq!(used.count_ones(), fsck_used, "used clusters vs fsck.fat");
        let data_end = l.first_data_sector + l.clusters * l.sectors_per_cluster;
        let used_sectors = l.first_data_sector + fsck_used * l.sectors_per_cluster + (l.total_sectors - data_end);
        let past_volume = img.size() - l.total_sectors * l.bytes_per_sector;
        assert_eq!(map.used_bytes(img.size()), used_sectors * l.bytes_per_sector + past_volume);
        for c in file_clusters(&img, "big.bin") {
            let s = l.first_data_sector + (c - 2) * l.sectors_per_cluster;
            for i in 0..l.sectors_per_cluster {
                assert!(map.bitmap.get((s + i) / unit), "cluster {c} of big.bin not used");
            }
        }
        map.block_size
    }

    #[test]
    fn fat32_counts_match_fsck() {
        check_variant(64, "32", None, FatType::Fat32);
    }

    #[test]
    fn fat16_counts_match_fsck() {
        check_variant(32, "16", None, FatType::Fat16);
    }

    #[test]
    fn fat12_counts_match_fsck() {
        check_variant(4, "12", None, FatType::Fat12);
    }

    #[test]
    fn fat32_big_clusters_use_big_blocks() {
        let bs = check_variant(300, "32", Some("8"), FatType::Fat32);
        assert!(bs == 0 || bs == 4096, "4 KiB clusters aligned by mkfs.fat give 4 KiB blocks, got {bs}");
    }

    #[test]
    fn fat16_big_clusters() {
        check_variant(200, "16", Some("64"), FatType::Fat16);
    }

    #[test]
    fn fat_deleted_file_frees_clusters() {
        require("mkfs.vfat");
        require("mdel");
        let img = build(64, "32", None, 3_000_000);
        let before = img.probe(None).bitmap.count_ones();
        run("mdel", &["-i", img.path_str(), "::big.bin"]);
        let after = img.probe(None);
        assert_eq!(after.kind, FsKind::Fat);
        assert!(
            (before - after.bitmap.count_ones()) * after.block_size as u64 >= 3_000_000,
            "{before} -> {}",
            after.bitmap.count_ones()
        );
    }

    #[test]
    fn garbage_bpb_is_raw() {
        require("mkfs.vfat");
        let img = build(32, "16", None, 10_000);
        let mut bytes = img.bytes();
        // Keep the jump and a plausible sector size so detection still fires, then break the rest.
        for (i, b) in bytes[0x0D..0x40].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(97).wrapping_add(13);
        }
        bytes[0x0D] = 8;
        bytes[0x0E] = 1;
        bytes[0x10] = 2;
        bytes[0x15] = 0xF8;
        let len = bytes.len() as u64;
        let map = probe(&mut Cursor::new(bytes), len, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert!(!map.warnings.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_bpb_never_panics(bpb in proptest::collection::vec(any::<u8>(), 90), size_kib in 1u64..50_000) {
            let mut img = vec![0u8; 512];
            img[0] = 0xEB;
            img[0x0B..0x0B + 90].copy_from_slice(&bpb);
            img.resize(256 * 1024, 0xF0);
            let size = size_kib * 1024;
            let map = probe(&mut Cursor::new(img), size, None);
            prop_assert!(map.bitmap.len() * map.block_size as u64 <= size.next_multiple_of(map.block_size as u64));
        }
    }
}
