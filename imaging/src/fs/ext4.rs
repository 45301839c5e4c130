//! ext2/3/4 allocation maps: the superblock, the group descriptors and the per-group block
//! bitmaps, plus the metadata of groups whose bitmap was never initialised (`BLOCK_UNINIT`).
//!
//! The map has one bit per block (per cluster with `bigalloc`). Every group's superblock backup,
//! descriptor blocks, reserved GDT blocks, bitmaps and inode table are marked used whatever the
//! bitmaps say: they are always allocated, and marking them unconditionally covers `flex_bg`
//! layouts where one group's metadata lives inside another, uninitialised, group.
//!
//! A filesystem whose journal needs recovery, that was not cleanly unmounted or that has recorded
//! errors is captured raw: its bitmaps may lag allocations that only the journal (or fsck) knows.
//! So is one where a group's bitmap shows more free blocks than its descriptor counts.

use super::{label_from_bytes, le16, le32, read_at_or, AllocationMap, FsKind};
use crate::bitmap::Bitmap;
use std::io::{Read, Seek};

/// Byte offset of the primary superblock.
const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;
const MAGIC: u16 = 0xEF53;

const COMPAT_SPARSE_SUPER2: u32 = 0x200;

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// Every incompatible feature e2fsprogs knows; anything else may change the on-disk layout.
const INCOMPAT_KNOWN: u32 = 0x1 // compression
    | 0x2 // filetype
    | INCOMPAT_RECOVER
    | INCOMPAT_JOURNAL_DEV
    | INCOMPAT_META_BG
    | 0x40 // extents
    | INCOMPAT_64BIT
    | 0x100 // mmp
    | 0x200 // flex_bg
    | 0x400 // ea_inode
    | 0x1000 // dirdata
    | 0x2000 // csum_seed
    | 0x4000 // largedir
    | 0x8000 // inline_data
    | 0x10000 // encrypt
    | 0x20000; // casefold

const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;

const BG_BLOCK_UNINIT: u16 = 0x2;

const MIN_BLOCKS_PER_GROUP: u64 = 256;

/// Whether `head` (the start of a partition) carries the ext2/3/4 superblock magic.
pub(super) fn detect(head: &[u8]) -> bool {
    le16(head, SB_OFFSET as usize + 0x38) == MAGIC
}

/// The superblock fields the allocation map needs, validated.
#[derive(Debug)]
struct Geometry {
    block_size: u64,
    /// log2(blocks per cluster); 0 without bigalloc.
    cluster_bits: u32,
    blocks_count: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    groups: u64,
    desc_size: u64,
    desc_per_block: u64,
    /// Blocks of one group's inode table.
    inode_table_blocks: u64,
    reserved_gdt: u64,
    meta_bg: bool,
    first_meta_bg: u64,
    sparse_super: bool,
    sparse_super2: Option<[u64; 2]>,
    is_64bit: bool,
    /// Whether group descriptors carry checksums, which makes `BLOCK_UNINIT` meaningful.
    has_csum: bool,
    label: Option<String>,
}

impl Geometry {
    fn parse(sb: &[u8], part_size: u64) -> Result<Geometry, String> {
        if le16(sb, 0x38) != MAGIC {
            return Err("bad superblock magic".into());
        }
        let state = le16(sb, 0x3A);
        let rev = le32(sb, 0x4C);
        let (compat, incompat, ro_compat) =
            if rev == 0 { (0, 0, 0) } else { (le32(sb, 0x5C), le32(sb, 0x60), le32(sb, 0x64)) };
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(format!("unknown incompatible features {:#x}", incompat & !INCOMPAT_KNOWN));
        }
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err("this is an external journal device, not a filesystem".into());
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err("the journal needs recovery (not cleanly unmounted; run fsck or mount it once)".into());
        }
        if state & STATE_VALID == 0 {
            return Err("not cleanly unmounted (run fsck)".into());
        }
        if state & STATE_ERROR != 0 {
            return Err("the filesystem has recorded errors (run fsck)".into());
        }

        let log_block = le32(sb, 0x18);
        if log_block > 6 {
            return Err(format!("block size 1024 << {log_block} is over 64 KiB"));
        }
        let block_size = 1024u64 << log_block;
        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        let cluster_bits = if bigalloc {
            let log_cluster = le32(sb, 0x1C);
            if log_cluster < log_block || log_cluster - log_block > 16 || log_cluster > 20 {
                return Err(format!(
                    "bigalloc cluster size 1024 << {log_cluster} does not fit block size {block_size}"
                ));
            }
            log_cluster - log_block
        } else {
            0
        };
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = le32(sb, 0x04) as u64;
        if is_64bit {
            blocks_count |= (le32(sb, 0x150) as u64) << 32;
        }
        let fs_bytes =
            blocks_count.checked_mul(block_size).ok_or_else(|| format!("block count {blocks_count} overflows"))?;
        if fs_bytes > part_size {
            return Err(format!(
                "filesystem of {blocks_count} blocks of {block_size} bytes is larger than the partition ({part_size} bytes)"
            ));
        }
        let first_data_block = le32(sb, 0x14) as u64;
        if first_data_block > 1 || (block_size > 1024 && first_data_block != 0) || (bigalloc && first_data_block != 0) {
            return Err(format!("first data block {first_data_block} is impossible for block size {block_size}"));
        }
        if blocks_count <= first_data_block + 1 {
            return Err(format!("block count {blocks_count} is too small"));
        }
        let blocks_per_group = le32(sb, 0x20) as u64;
        let clusters_per_group = if bigalloc { le32(sb, 0x24) as u64 } else { blocks_per_group };
        if clusters_per_group & 7 != 0 || clusters_per_group > 8 * block_size {
            return Err(format!(
                "{clusters_per_group} blocks/clusters per group is not a multiple of 8 fitting one bitmap block"
            ));
        }
        // mke2fs's lower bound; it also bounds the descriptor count (and memory) by the size.
        if blocks_per_group < MIN_BLOCKS_PER_GROUP {
            return Err(format!("{blocks_per_group} blocks per group is below {MIN_BLOCKS_PER_GROUP}"));
        }
        if blocks_per_group != clusters_per_group << cluster_bits {
            return Err(format!(
                "blocks per group {blocks_per_group} != clusters per group {clusters_per_group} << {cluster_bits}"
            ));
        }
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);

        let desc_size = if is_64bit {
            let d = le16(sb, 0xFE) as u64;
            if !(64..=1024).contains(&d) || !d.is_power_of_two() || d > block_size {
                return Err(format!("64bit descriptor size {d} is invalid"));
            }
            d
        } else {
            32
        };
        let desc_per_block = block_size / desc_size;

        let inodes_per_group = le32(sb, 0x28) as u64;
        if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
            return Err(format!("{inodes_per_group} inodes per group do not fit one bitmap block"));
        }
        let inode_size = if rev == 0 { 128 } else { le16(sb, 0x58) as u64 };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size > block_size {
            return Err(format!("inode size {inode_size} is invalid"));
        }
        let inode_table_blocks = (inodes_per_group * inode_size).div_ceil(block_size);

        let reserved_gdt = le16(sb, 0xCE) as u64;
        if reserved_gdt > block_size / 4 {
            return Err(format!("{reserved_gdt} reserved GDT blocks is more than one indirect block can map"));
        }
        let meta_bg = incompat & INCOMPAT_META_BG != 0;
        let first_meta_bg = if meta_bg { le32(sb, 0x104) as u64 } else { 0 };
        if first_meta_bg > groups.div_ceil(desc_per_block) {
            return Err(format!("first meta_bg {first_meta_bg} is past the descriptor table"));
        }
        let sparse_super2 =
            (compat & COMPAT_SPARSE_SUPER2 != 0).then(|| [le32(sb, 0x24C) as u64, le32(sb, 0x250) as u64]);

        Ok(Geometry {
            block_size,
            cluster_bits,
            blocks_count,
            first_data_block,
            blocks_per_group,
            groups,
            desc_size,
            desc_per_block,
            inode_table_blocks,
            reserved_gdt,
            meta_bg,
            first_meta_bg,
            sparse_super: ro_compat & RO_COMPAT_SPARSE_SUPER != 0,
            sparse_super2,
            is_64bit,
            has_csum: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
            label: label_from_bytes(&sb[0x78..0x88]),
        })
    }

    fn group_first_block(&self, group: u64) -> u64 {
        self.first_data_block + group * self.blocks_per_group
    }

    /// Whether `group` holds a superblock backup (the kernel's `ext4_bg_has_super`).
    fn has_super(&self, group: u64) -> bool {
        if group == 0 {
            return true;
        }
        if let Some(backups) = self.sparse_super2 {
            return backups.contains(&group);
        }
        if group <= 1 || !self.sparse_super {
            return true;
        }
        group % 2 == 1 && [3u64, 5, 7].iter().any(|&r| is_power_of(group, r))
    }

    /// Blocks of the classic (non-meta_bg) group descriptor table.
    fn gdt_blocks(&self) -> u64 {
        self.groups.div_ceil(self.desc_per_block)
    }

    /// Block holding descriptor block `nr` (the kernel's `descriptor_loc`).
    fn descriptor_block(&self, nr: u64) -> u64 {
        let sb_block = SB_OFFSET / self.block_size;
        if !self.meta_bg || nr < self.first_meta_bg {
            return sb_block + 1 + nr;
        }
        let group = nr * self.desc_per_block;
        let mut has_super = self.has_super(group) as u64;
        if self.block_size == 1024 && nr == 0 && self.first_data_block == 0 {
            has_super += 1;
        }
        self.group_first_block(group) + has_super
    }

    /// The base metadata at the start of `group` as `(first block, count)`: superblock backup,
    /// descriptor blocks and reserved GDT blocks (the kernel's `ext4_num_base_meta_clusters`).
    fn base_metadata(&self, group: u64) -> (u64, u64) {
        let has_super = self.has_super(group);
        let mut n = has_super as u64;
        let metagroup = group / self.desc_per_block;
        if !self.meta_bg || metagroup < self.first_meta_bg {
            if has_super {
                n += if self.meta_bg { self.first_meta_bg } else { self.gdt_blocks() };
                n += self.reserved_gdt;
            }
        } else {
            let first = metagroup * self.desc_per_block;
            if group == first || group == first + 1 || group == first + self.desc_per_block - 1 {
                n += 1;
            }
        }
        (self.group_first_block(group), n)
    }

    /// Marks blocks `[first, first + count)` used (whole clusters with bigalloc).
    fn mark_blocks(&self, map: &mut Bitmap, first: u64, count: u64) {
        if count > 0 {
            let start = first >> self.cluster_bits;
            let last = first.saturating_add(count - 1) >> self.cluster_bits;
            map.set_range(start, last - start + 1);
        }
    }

    /// Number of map bits (clusters): the block count rounded up to whole clusters.
    fn units(&self) -> u64 {
        self.blocks_count.div_ceil(1 << self.cluster_bits)
    }
}

/// Whether `n` is a power of `base` (base >= 2).
fn is_power_of(n: u64, base: u64) -> bool {
    let mut p = 1u64;
    while p < n {
        match p.checked_mul(base) {
            Some(next) => p = next,
            None => return false,
        }
    }
    p == n
}

/// One group descriptor's fields.
struct Descriptor {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free_clusters: u64,
    flags: u16,
}

/// Reads the allocation map of the ext2/3/4 filesystem in `part`.
pub(super) fn read<R: Read + Seek>(part: &mut R, part_size: u64) -> Result<AllocationMap, String> {
    let mut sb = vec![0u8; SB_LEN];
    read_at_or(part, SB_OFFSET, &mut sb, "the superblock")?;
    let g = Geometry::parse(&sb, part_size)?;
    let descs = read_descriptors(part, &g)?;

    let block_size = g.block_size << g.cluster_bits;
    let block_size = u32::try_from(block_size).map_err(|_| format!("cluster size {block_size} is too large"))?;
    let mut map = Bitmap::new(g.units());
    // Everything before the first group (the 1 KiB boot block) and block 0 itself.
    g.mark_blocks(&mut map, 0, g.first_data_block + 1);
    for (group, d) in descs.iter().enumerate() {
        let (start, n) = g.base_metadata(group as u64);
        g.mark_blocks(&mut map, start, n);
        g.mark_blocks(&mut map, d.block_bitmap, 1);
        g.mark_blocks(&mut map, d.inode_bitmap, 1);
        g.mark_blocks(&mut map, d.inode_table, g.inode_table_blocks);
    }

    let mut buf = vec![0u8; g.block_size as usize];
    let clusters_per_group = g.blocks_per_group >> g.cluster_bits;
    for (group, d) in descs.iter().enumerate() {
        let group = group as u64;
        if d.flags & BG_BLOCK_UNINIT != 0 && g.has_csum {
            continue; // No bitmap on disk: only the metadata marked above is in use.
        }
        let first_unit = g.group_first_block(group) >> g.cluster_bits;
        let count = clusters_per_group.min(g.units() - first_unit);
        read_at_or(part, d.block_bitmap * g.block_size, &mut buf, &format!("the block bitmap of group {group}"))?;
        // `count` <= 8 * block size was checked, so the buffer always holds the group's bits.
        let group_bits = Bitmap::from_bytes(buf.clone(), count).ok_or("block bitmap shorter than its group")?;
        let mut set = 0u64;
        for (start, len) in group_bits.runs() {
            map.set_range(first_unit + start, len);
            set += len;
        }
        let free = count - set;
        if free > d.free_clusters {
            return Err(format!(
                "group {group}: the block bitmap shows {free} free blocks but the descriptor says {}",
                d.free_clusters
            ));
        }
    }

    Ok(AllocationMap { kind: FsKind::Ext4, block_size, bitmap: map, label: g.label.clone(), warnings: Vec::new() })
}

/// Reads and validates every group descriptor.
fn read_descriptors<R: Read + Seek>(part: &mut R, g: &Geometry) -> Result<Vec<Descriptor>, String> {
    let desc_blocks = g.gdt_blocks();
    let mut descs = Vec::with_capacity(g.groups as usize);
    let mut buf = vec![0u8; g.block_size as usize];
    let in_fs = |b: u64, n: u64| b > 0 && b.checked_add(n).is_some_and(|end| end <= g.blocks_count);
    for nr in 0..desc_blocks {
        let loc = g.descriptor_block(nr);
        if !in_fs(loc, 1) {
            return Err(format!("group descriptor block {nr} would be at block {loc}, outside the filesystem"));
        }
        read_at_or(part, loc * g.block_size, &mut buf, &format!("group descriptor block {nr}"))?;
        for raw in buf.chunks_exact(g.desc_size as usize) {
            if descs.len() as u64 == g.groups {
                break;
            }
            let hi = |off: usize| if g.is_64bit { le32(raw, off) as u64 } else { 0 };
            let d = Descriptor {
                block_bitmap: le32(raw, 0x00) as u64 | hi(0x20) << 32,
                inode_bitmap: le32(raw, 0x04) as u64 | hi(0x24) << 32,
                inode_table: le32(raw, 0x08) as u64 | hi(0x28) << 32,
                free_clusters: le16(raw, 0x0C) as u64 | if g.is_64bit { (le16(raw, 0x2C) as u64) << 16 } else { 0 },
                flags: le16(raw, 0x12),
            };
            let group = descs.len();
            if !in_fs(d.block_bitmap, 1) || !in_fs(d.inode_bitmap, 1) || !in_fs(d.inode_table, g.inode_table_blocks) {
                return Err(format!(
                    "group {group}: block bitmap {}, inode bitmap {} or inode table {} lies outside the filesystem",
                    d.block_bitmap, d.inode_bitmap, d.inode_table
                ));
            }
            descs.push(d);
        }
    }
    Ok(descs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::test_images::{file_of, require, run, run_out, Image};
    use crate::fs::{probe, FsKind};
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Builds an ext image of `mib` MiB from a directory with a few files, using `mkfs_args`.
    fn build(mib: u64, mkfs_args: &[&str]) -> Image {
        let img = Image::new(mib);
        let dir = img.dir.path().join("content");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("small.txt"), b"hello kura\n").unwrap();
        std::fs::write(dir.join("sub/big.bin"), file_of(3 << 20, 7)).unwrap();
        std::fs::write(dir.join("medium.bin"), file_of(300_000, 9)).unwrap();
        let mut args = vec!["-q", "-F", "-L", "kuratest", "-d", dir.to_str().unwrap()];
        args.extend_from_slice(mkfs_args);
        args.push(img.path_str());
        run("mke2fs", &args);
        img
    }

    /// `(block count, free blocks)` from `dumpe2fs -h`.
    fn dumpe2fs_counts(img: &Image) -> (u64, u64) {
        let out = run_out("dumpe2fs", &["-h", img.path_str()]);
        let field = |name: &str| -> u64 {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or_else(|| panic!("{name} missing from dumpe2fs output"))
        };
        (field("Block count:"), field("Free blocks:"))
    }

    /// Block numbers of a file, from `debugfs -R "blocks ..."`.
    fn file_blocks(img: &Image, path: &str) -> Vec<u64> {
        let out = run_out("debugfs", &["-R", &format!("blocks {path}"), img.path_str()]);
        out.split_whitespace().map(|b| b.parse().unwrap()).collect()
    }

    /// Builds an image of `mib` MiB with `mkfs_args` and checks its map against `dumpe2fs` and
    /// `debugfs`.
    fn check_variant(mib: u64, mkfs_args: &[&str]) {
        require("mke2fs");
        require("dumpe2fs");
        require("debugfs");
        let img = build(mib, mkfs_args);
        let map = img.probe(None);
        assert_eq!(map.kind, FsKind::Ext4, "{mkfs_args:?}: {:?}", map.warnings);
        assert!(map.warnings.is_empty(), "{:?}", map.warnings);
        assert_eq!(map.label.as_deref(), Some("kuratest"));
        let (blocks, free) = dumpe2fs_counts(&img);
        let ratio = blocks / map.bitmap.len();
        assert_eq!(map.bitmap.len() * ratio, blocks);
        assert_eq!(map.bitmap.count_ones() * ratio, blocks - free, "{mkfs_args:?}: used blocks vs dumpe2fs");
        for path in ["/small.txt", "/medium.bin", "/sub/big.bin"] {
            let bl = file_blocks(&img, path);
            assert!(!bl.is_empty(), "{path} has blocks");
            for b in bl {
                assert!(map.bitmap.get(b / ratio), "{mkfs_args:?}: block {b} of {path} not marked used");
            }
        }
        let fs_block = map.block_size as u64 / ratio;
        assert_eq!(fs_block * blocks, map.bitmap.len() * map.block_size as u64);
        assert!(map.bitmap.len() * map.block_size as u64 <= img.size());
    }

    /// Many small groups with 4 KiB blocks, the last one partial, most of them `BLOCK_UNINIT`.
    const SMALL_GROUPS_4K: [&str; 4] = ["-b", "4096", "-g", "4096"];

    #[test]
    fn ext4_default() {
        check_variant(64, &["-t", "ext4"]);
    }

    #[test]
    fn ext4_4k_default_geometry() {
        check_variant(600, &["-t", "ext4", "-b", "4096"]);
    }

    #[test]
    fn ext4_4k_small_groups() {
        check_variant(250, &[&["-t", "ext4"][..], &SMALL_GROUPS_4K].concat());
    }

    #[test]
    fn ext4_no_flex_bg() {
        check_variant(250, &[&["-t", "ext4", "-O", "^flex_bg"][..], &SMALL_GROUPS_4K].concat());
    }

    #[test]
    fn ext4_64bit() {
        check_variant(250, &[&["-t", "ext4", "-O", "64bit"][..], &SMALL_GROUPS_4K].concat());
    }

    #[test]
    fn ext2_plain() {
        check_variant(250, &[&["-t", "ext2"][..], &SMALL_GROUPS_4K].concat());
    }

    #[test]
    fn ext3_plain() {
        check_variant(64, &["-t", "ext3"]);
    }

    #[test]
    fn ext4_1k_blocks() {
        check_variant(64, &["-t", "ext4", "-b", "1024"]);
    }

    #[test]
    fn ext4_meta_bg() {
        check_variant(250, &[&["-t", "ext4", "-O", "meta_bg,^resize_inode"][..], &SMALL_GROUPS_4K].concat());
    }

    #[test]
    fn ext4_meta_bg_1k_64bit() {
        check_variant(64, &["-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode,64bit"]);
    }

    #[test]
    fn ext4_sparse_super2() {
        check_variant(250, &[&["-t", "ext4", "-O", "sparse_super2"][..], &SMALL_GROUPS_4K].concat());
    }

    #[test]
    fn ext4_no_sparse_super_uninit_bg() {
        check_variant(
            250,
            &[&["-t", "ext4", "-O", "^sparse_super,^resize_inode,^metadata_csum,uninit_bg"][..], &SMALL_GROUPS_4K]
                .concat(),
        );
    }

    #[test]
    fn ext4_bigalloc() {
        check_variant(256, &["-t", "ext4", "-b", "4096", "-O", "bigalloc", "-C", "65536"]);
    }

    #[test]
    fn ext4_deleted_file_frees_blocks() {
        require("mke2fs");
        require("debugfs");
        require("dumpe2fs");
        let img = build(64, &["-t", "ext4"]);
        let before = img.probe(None).bitmap.count_ones();
        let big = file_blocks(&img, "/sub/big.bin");
        run("debugfs", &["-w", "-R", "rm /sub/big.bin", img.path_str()]);
        let after_map = img.probe(None);
        assert_eq!(after_map.kind, FsKind::Ext4, "{:?}", after_map.warnings);
        let after = after_map.bitmap.count_ones();
        assert!(before - after >= 768, "used dropped from {before} to {after}");
        assert!(big.iter().any(|&b| !after_map.bitmap.get(b)), "the deleted file's blocks are free");
        let (blocks, free) = dumpe2fs_counts(&img);
        assert_eq!(after, blocks - free);
    }

    #[test]
    fn garbage_superblock_is_raw() {
        require("mke2fs");
        let img = build(32, &["-t", "ext4"]);
        let mut bytes = img.bytes();
        let mut x = 0x1234_5678u32;
        for b in &mut bytes[1024..2048] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        // Keep the magic so the ext reader, not the probe, has to reject it.
        bytes[1024 + 0x38] = 0x53;
        bytes[1024 + 0x39] = 0xEF;
        let len = bytes.len() as u64;
        let map = probe(&mut Cursor::new(bytes), len, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert!(map.warnings[0].contains("ext2/3/4"), "{:?}", map.warnings);
    }

    #[test]
    fn needs_recovery_is_raw() {
        require("mke2fs");
        let img = build(32, &["-t", "ext4"]);
        let mut bytes = img.bytes();
        bytes[1024 + 0x60] |= INCOMPAT_RECOVER as u8;
        let len = bytes.len() as u64;
        let map = probe(&mut Cursor::new(bytes), len, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert!(map.warnings[0].contains("journal needs recovery"), "{:?}", map.warnings);
    }

    #[test]
    fn filesystem_larger_than_partition_is_raw() {
        require("mke2fs");
        let img = build(32, &["-t", "ext4"]);
        let bytes = img.bytes();
        let len = bytes.len() as u64 - 4096;
        let map = probe(&mut Cursor::new(bytes), len, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert!(map.warnings[0].contains("larger than the partition"), "{:?}", map.warnings);
    }

    /// A superblock region that parses far enough to exercise the descriptor code.
    fn plausible_superblock() -> Vec<u8> {
        let mut sb = vec![0u8; 2048];
        let s = &mut sb[1024..];
        s[0x04..0x08].copy_from_slice(&8192u32.to_le_bytes());
        s[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        s[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        s[0x24..0x28].copy_from_slice(&8192u32.to_le_bytes());
        s[0x28..0x2C].copy_from_slice(&2048u32.to_le_bytes());
        s[0x38..0x3A].copy_from_slice(&MAGIC.to_le_bytes());
        s[0x3A..0x3C].copy_from_slice(&1u16.to_le_bytes());
        s[0x4C..0x50].copy_from_slice(&1u32.to_le_bytes());
        s[0x58..0x5A].copy_from_slice(&128u16.to_le_bytes());
        sb
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_superblock_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 1024..=1024),
            keep in any::<bool>(),
            size_kib in 2u64..20_000,
        ) {
            let mut img = if keep { plausible_superblock() } else { vec![0u8; 2048] };
            if keep {
                // Mutate a sparse subset so most fields stay plausible.
                for (i, b) in bytes.iter().enumerate().step_by(37) {
                    img[1024 + i] ^= *b;
                }
            } else {
                img[1024..].copy_from_slice(&bytes);
                img[1024 + 0x38] = 0x53;
                img[1024 + 0x39] = 0xEF;
            }
            img.resize(64 * 1024, 0);
            let size = size_kib * 1024;
            let map = probe(&mut Cursor::new(img), size, None);
            prop_assert!(map.bitmap.len() * map.block_size as u64 <= size.next_multiple_of(map.block_size as u64));
        }
    }

    #[test]
    fn mutated_real_superblock_never_panics() {
        require("mke2fs");
        let img = build(16, &["-t", "ext4", "-b", "1024"]);
        let pristine = img.bytes();
        let len = pristine.len() as u64;
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
        runner
            .run(&proptest::collection::vec((0usize..4096, any::<u8>()), 1..8), |muts| {
                let mut bytes = pristine.clone();
                // Superblock (1024..2048) and the descriptor table right after it.
                for (off, v) in muts {
                    bytes[1024 + off] = v;
                }
                let map = probe(&mut Cursor::new(bytes), len, None);
                prop_assert!(map.bitmap.len() * map.block_size as u64 <= len);
                Ok(())
            })
            .unwrap();
    }
}
