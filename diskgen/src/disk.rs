//! Partitioned disk image files built from a list of partition specs, and what they should
//! contain.
//!
//! The disk file is partitioned with `sgdisk` (GPT) or `sfdisk` (MBR), the partition offsets
//! are read back from the tool, each partition's filesystem is made in its own image file
//! ([`crate::image`]) and copied into place. Boot code, the gap before the first partition and
//! raw partitions get recognisable non-zero bytes so that "kept byte for byte" can be checked.
//! Deleted files ([`Content::Ext4`], [`Content::Ntfs`]) leave their bytes in free space, and a
//! stale swap its old bytes: junk that a capture need not keep.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::content::{pattern_bytes, sha256_hex, FileSpec};
use crate::image::{self, create_zeroed, debugfs_w, write_at, Ext4};
use crate::tools::{self, run};
use crate::SECTOR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// What a partition holds, as far as checking it back is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Ntfs,
    Fat,
    Swap,
    /// No filesystem (BIOS boot, Microsoft reserved): every byte must come back.
    Raw,
    /// An MBR extended partition: a container for logical partitions and their EBRs.
    Extended,
}

impl Fs {
    /// Whether the partition has an allocation map, i.e. free space need not come back.
    pub fn has_allocation_map(self) -> bool {
        matches!(self, Fs::Ext4 | Fs::Ntfs | Fs::Fat | Fs::Swap)
    }

    /// Its usual short name: `ext4`, `ntfs`, `fat`, `swap`, `raw`, `extended`.
    pub fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Ntfs => "ntfs",
            Fs::Fat => "fat",
            Fs::Swap => "swap",
            Fs::Raw => "raw",
            Fs::Extended => "extended",
        }
    }
}

/// One partition of a built disk.
#[derive(Clone, Debug)]
pub struct Partition {
    /// The number the partitioning tool gives it (GPT entry number, MBR 1-4 and 5+ for logical).
    pub number: u32,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    pub fs: Fs,
    /// Expected regular files: path relative to the filesystem root (`/`-separated) → sha256 hex.
    pub files: BTreeMap<String, String>,
    /// Total size of those files.
    pub file_bytes: u64,
}

impl Partition {
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// A built disk image and what it should contain.
#[derive(Clone, Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub size: u64,
    pub table: TableKind,
    /// Sorted by partition number.
    pub partitions: Vec<Partition>,
}

impl Disk {
    /// Partition `number`; panics if the disk has none (the caller built the disk).
    pub fn partition(&self, number: u32) -> &Partition {
        self.partitions
            .iter()
            .find(|p| p.number == number)
            .unwrap_or_else(|| panic!("{} has no partition {number}", self.path.display()))
    }

    /// Partition `number`; panics if the disk has none (the caller built the disk).
    pub fn partition_mut(&mut self, number: u32) -> &mut Partition {
        let path = self.path.clone();
        self.partitions
            .iter_mut()
            .find(|p| p.number == number)
            .unwrap_or_else(|| panic!("{} has no partition {number}", path.display()))
    }

    /// Start of the first partition: everything before it is partition tables and boot code.
    pub fn first_partition_offset(&self) -> u64 {
        self.partitions.iter().map(|p| p.offset).min().unwrap_or(self.size)
    }
}

/// What to put into a partition.
pub enum Content {
    /// `mkfs.ext4 -d`: `files` stay, `deleted` are written then removed with `debugfs rm`, so
    /// their blocks are free but still hold their bytes.
    Ext4 { label: &'static str, block_size: u32, files: Vec<FileSpec>, deleted: Vec<FileSpec> },
    /// `mkntfs` + `ntfscp` (root directory only): `deleted` files are written, then truncated to
    /// zero length with `ntfstruncate`, freeing their clusters (they stay as empty files).
    Ntfs { label: &'static str, files: Vec<FileSpec>, deleted: Vec<FileSpec> },
    /// `mkfs.vfat -F bits` + `mmd`/`mcopy`.
    Fat { bits: u8, label: &'static str, files: Vec<FileSpec> },
    /// `mkswap`; `stale` is written over the whole partition first (what an old swap holds).
    Swap { label: &'static str, stale: Option<Vec<u8>> },
    /// These bytes at the start of the partition, zeros after.
    Raw(Vec<u8>),
    /// Left as zeros (Microsoft reserved).
    Empty,
    /// A filesystem image made beforehand (exactly the partition's size), copied in and kept.
    /// No expected files are recorded.
    Image { fs: Fs, path: PathBuf },
}

/// One partition to create.
pub struct PartSpec {
    pub size: u64,
    /// `sgdisk` type code (GPT), e.g. `"8300"`.
    pub gpt_type: &'static str,
    /// GPT partition name.
    pub name: &'static str,
    /// GPT attribute bits to set.
    pub attrs: &'static [u8],
    /// MBR type byte.
    pub mbr_type: u8,
    /// MBR boot flag.
    pub bootable: bool,
    /// MBR: a logical partition inside the extended partition.
    pub logical: bool,
    pub content: Content,
}

impl PartSpec {
    pub fn gpt(size: u64, gpt_type: &'static str, name: &'static str, content: Content) -> Self {
        PartSpec { size, gpt_type, name, attrs: &[], mbr_type: 0, bootable: false, logical: false, content }
    }

    pub fn mbr(size: u64, mbr_type: u8, content: Content) -> Self {
        PartSpec { size, gpt_type: "", name: "", attrs: &[], mbr_type, bootable: false, logical: false, content }
    }

    pub fn attrs(mut self, attrs: &'static [u8]) -> Self {
        self.attrs = attrs;
        self
    }

    pub fn bootable(mut self) -> Self {
        self.bootable = true;
        self
    }

    pub fn logical(mut self) -> Self {
        self.logical = true;
        self
    }
}

/// Builds a GPT disk of `size` bytes at `dir/name` with partitions in order, 1 MiB aligned,
/// with boot code in LBA 0 and boot-loader-like sectors in the gap before the first partition.
pub fn build_gpt(dir: &Path, name: &str, size: u64, parts: Vec<PartSpec>) -> Result<Disk> {
    let disk = build_gpt_zero_gaps(dir, name, size, parts)?;
    write_boot_areas(&disk.path, TableKind::Gpt)?;
    Ok(disk)
}

/// [`build_gpt`] without the boot code and gap bytes: outside the partitions the disk holds
/// only what `sgdisk` writes.
pub fn build_gpt_zero_gaps(dir: &Path, name: &str, size: u64, parts: Vec<PartSpec>) -> Result<Disk> {
    let path = dir.join(name);
    create_zeroed(&path, size)?;
    let mut args: Vec<String> = vec!["-o".into(), "-a".into(), "2048".into()];
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        args.extend(["-n".into(), format!("{n}:0:+{}K", p.size / 1024)]);
        args.extend(["-t".into(), format!("{n}:{}", p.gpt_type)]);
        args.extend(["-c".into(), format!("{n}:{}", p.name)]);
        for bit in p.attrs {
            args.extend(["-A".into(), format!("{n}:set:{bit}")]);
        }
    }
    args.push(path.display().to_string());
    run("sgdisk", &args)?;

    let mut partitions = Vec::new();
    for (i, spec) in parts.into_iter().enumerate() {
        let number = i as u32 + 1;
        let (offset, psize) = gpt_extent(&path, number)?;
        ensure!(psize == spec.size, "sgdisk made partition {number} of {psize} bytes, not {}", spec.size);
        let (fs, files, file_bytes) = fill_partition(dir, &path, number, offset, psize, spec.content)?;
        partitions.push(Partition { number, offset, size: psize, fs, files, file_bytes });
    }
    Ok(Disk { path, size, table: TableKind::Gpt, partitions })
}

/// Builds an MBR disk: the primary partitions in order, then (if any spec is `logical`) an
/// extended partition over the rest of the disk holding the logical ones.
pub fn build_mbr(dir: &Path, name: &str, size: u64, parts: Vec<PartSpec>) -> Result<Disk> {
    let path = dir.join(name);
    create_zeroed(&path, size)?;
    let mut script = String::from("label: dos\nlabel-id: 0x4b555241\nunit: sectors\n\n");
    let mut extended_written = false;
    for (i, p) in parts.iter().enumerate() {
        if p.logical && !extended_written {
            script.push_str("type=5\n");
            extended_written = true;
        }
        ensure!(p.logical || !extended_written, "primary partitions must come before logical ones");
        let start = if i == 0 { "start=2048, " } else { "" };
        let boot = if p.bootable { ", bootable" } else { "" };
        script.push_str(&format!("{start}size={}, type={:x}{boot}\n", p.size / SECTOR, p.mbr_type));
    }
    let script_path = dir.join(format!("{name}.sfdisk"));
    fs::write(&script_path, &script)?;
    let input = File::open(&script_path)?;
    tools::run_output(tools::command("sfdisk").arg("--no-reread").arg(&path).stdin(input))?;

    let extents = mbr_extents(&path)?;
    let mut primary_numbers = extents.iter().filter(|(&n, e)| n <= 4 && e.2 != 0x05).map(|(&n, _)| n);
    let mut logical_numbers = extents.keys().copied().filter(|&n| n >= 5);
    let mut partitions = Vec::new();
    for spec in parts {
        let number = if spec.logical { logical_numbers.next() } else { primary_numbers.next() }
            .context("sfdisk made fewer partitions than asked")?;
        let (offset, psize, _) = extents[&number];
        ensure!(psize == spec.size, "sfdisk made partition {number} of {psize} bytes, not {}", spec.size);
        let (fs, files, file_bytes) = fill_partition(dir, &path, number, offset, psize, spec.content)?;
        partitions.push(Partition { number, offset, size: psize, fs, files, file_bytes });
    }
    for (&number, &(offset, psize, ty)) in &extents {
        if ty == 0x05 {
            let files = BTreeMap::new();
            let fs = Fs::Extended;
            partitions.push(Partition { number, offset, size: psize, fs, files, file_bytes: 0 });
        }
    }
    partitions.sort_by_key(|p| p.number);
    write_boot_areas(&path, TableKind::Mbr)?;
    Ok(Disk { path, size, table: TableKind::Mbr, partitions })
}

/// (offset, size) in bytes of GPT partition `number`, as `sgdisk -i` reports it.
pub fn gpt_extent(disk: &Path, number: u32) -> Result<(u64, u64)> {
    let info = run("sgdisk", ["-i".to_string(), number.to_string(), disk.display().to_string()])?;
    let field = |prefix: &str| -> Result<u64> {
        let line = info
            .lines()
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("no `{prefix}` in sgdisk -i output:\n{info}"))?;
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no number in sgdisk -i output line {line:?}"))
    };
    Ok((field("First sector:")? * SECTOR, field("Partition size:")? * SECTOR))
}

/// number → (offset, size, type byte) of every MBR partition, as `sfdisk -J` reports it.
pub fn mbr_extents(disk: &Path) -> Result<BTreeMap<u32, (u64, u64, u8)>> {
    let json = run("sfdisk", ["-J".as_ref(), disk.as_os_str()])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("sfdisk -J output")?;
    let node_prefix = disk.display().to_string();
    let mut out = BTreeMap::new();
    let bad = || format!("unexpected sfdisk -J output:\n{json}");
    for p in v["partitiontable"]["partitions"].as_array().with_context(bad)? {
        let number: u32 = p["node"]
            .as_str()
            .and_then(|node| node.strip_prefix(&node_prefix))
            .and_then(|n| n.parse().ok())
            .with_context(bad)?;
        let start = p["start"].as_u64().with_context(bad)?;
        let size = p["size"].as_u64().with_context(bad)?;
        let ty = p["type"].as_str().and_then(|t| u8::from_str_radix(t, 16).ok()).with_context(bad)?;
        out.insert(number, (start * SECTOR, size * SECTOR, ty));
    }
    Ok(out)
}

/// Makes the content in its own image file, then copies it into the disk at `offset`.
fn fill_partition(
    dir: &Path,
    disk: &Path,
    number: u32,
    offset: u64,
    size: u64,
    content: Content,
) -> Result<(Fs, BTreeMap<String, String>, u64)> {
    let stem = disk.file_name().context("a disk file has a name")?.to_string_lossy().into_owned();
    let mut img = dir.join(format!("{stem}.p{number}.img"));
    let work = dir.join(format!("{stem}.p{number}.src"));
    let mut keep_img = false;
    let mut file_bytes = 0;
    let (fs, files) = match content {
        Content::Ext4 { label, block_size, files, deleted } => {
            write_tree(&work, files.iter().chain(&deleted))?;
            let opts = Ext4 { label, block_size: Some(block_size), eager_init: true };
            image::make_ext4(&img, size, opts, &work)?;
            for f in &deleted {
                debugfs_w(&img, &format!("rm /{}", f.path))?;
            }
            file_bytes = files.iter().map(|f| f.data.len() as u64).sum();
            (Fs::Ext4, expected(&files))
        }
        Content::Ntfs { label, files, deleted } => {
            image::make_ntfs(&img, size, label, offset)?;
            write_tree(&work, files.iter().chain(&deleted))?;
            for f in files.iter().chain(&deleted) {
                image::ntfs_copy_in(&img, &work.join(&f.path), &f.path)?;
            }
            let mut exp = expected(&files);
            file_bytes = files.iter().map(|f| f.data.len() as u64).sum();
            if !deleted.is_empty() {
                let listing = run("ntfsls", ["-i".as_ref(), img.as_os_str()])?;
                for f in &deleted {
                    let inode = listing
                        .lines()
                        .find_map(|l| {
                            let (ino, name) = l.trim().split_once(' ')?;
                            (name.trim() == f.path).then(|| ino.to_string())
                        })
                        .with_context(|| format!("{} not in ntfsls:\n{listing}", f.path))?;
                    run("ntfstruncate", [img.as_os_str(), inode.as_ref(), "0".as_ref()])?;
                    exp.insert(f.path.clone(), sha256_hex(b""));
                }
            }
            (Fs::Ntfs, exp)
        }
        Content::Fat { bits, label, files } => {
            write_tree(&work, files.iter())?;
            let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            image::make_fat(&img, size, bits, label, offset, &work, &paths)?;
            file_bytes = files.iter().map(|f| f.data.len() as u64).sum();
            (Fs::Fat, expected(&files))
        }
        Content::Swap { label, stale } => {
            image::make_swap(&img, size, label, stale.as_deref())?;
            (Fs::Swap, BTreeMap::new())
        }
        Content::Raw(bytes) => {
            ensure!(bytes.len() as u64 <= size, "{} raw bytes do not fit partition {number}", bytes.len());
            create_zeroed(&img, size)?;
            write_at(&img, 0, &bytes)?;
            (Fs::Raw, BTreeMap::new())
        }
        Content::Empty => {
            create_zeroed(&img, size)?;
            (Fs::Raw, BTreeMap::new())
        }
        Content::Image { fs, path } => {
            img = path;
            keep_img = true;
            (fs, BTreeMap::new())
        }
    };
    let len = fs::metadata(&img).with_context(|| format!("reading {}", img.display()))?.len();
    if len != size {
        bail!("{} has {len} bytes, partition {number} {size}", img.display());
    }
    let dst = OpenOptions::new().write(true).open(disk).with_context(|| format!("opening {}", disk.display()))?;
    image::place(&img, &dst, offset)?;
    if !keep_img {
        fs::remove_file(&img)?;
    }
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    Ok((fs, files, file_bytes))
}

fn expected(files: &[FileSpec]) -> BTreeMap<String, String> {
    files.iter().map(|f| (f.path.clone(), sha256_hex(&f.data))).collect()
}

fn write_tree<'a>(root: &Path, files: impl Iterator<Item = &'a FileSpec>) -> Result<()> {
    fs::create_dir_all(root)?;
    for f in files {
        let p = root.join(&f.path);
        fs::create_dir_all(p.parent().unwrap_or(root))?;
        fs::write(&p, &f.data).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Boot code in LBA 0 (bytes 0..440, leaving the disk signature and table alone) and, in the
/// gap before the first partition (at 1 MiB), sectors such as a boot loader embeds there.
fn write_boot_areas(disk: &Path, table: TableKind) -> Result<()> {
    write_at(disk, 0, &pattern_bytes("KURA-MBR-BOOT-CODE", 440))?;
    let gap_sectors: &[u64] = match table {
        // GPT: after the entry array (LBA 2..33).
        TableKind::Gpt => &[40, 41, 42, 43, 1000, 2047],
        // MBR: LBA 1..62, where GRUB puts its core image.
        TableKind::Mbr => &[1, 2, 3, 30, 62, 2047],
    };
    for &lba in gap_sectors {
        write_at(disk, lba * SECTOR, &pattern_bytes(&format!("KURA-GAP-{lba}-"), SECTOR as usize))?;
    }
    Ok(())
}

/// Replaces a file of an ext4 partition of `disk` in place (`debugfs rm` + `write`), as a
/// running system would, and records its new digest. Every other block stays as it is.
pub fn ext4_replace_file(disk: &mut Disk, number: u32, path: &str, data: &[u8], scratch: &Path) -> Result<()> {
    let part = disk.partition(number);
    ensure!(part.fs == Fs::Ext4, "partition {number} is not ext4");
    ensure!(part.files.contains_key(path), "{path} is not on partition {number}");
    let target = PathBuf::from(format!("{}?offset={}", disk.path.display(), part.offset));
    let src = scratch.join("replacement");
    fs::write(&src, data)?;
    debugfs_w(&target, &format!("rm /{path}"))?;
    debugfs_w(&target, &format!("write {} /{path}", src.display()))?;
    fs::remove_file(&src)?;
    let part = disk.partition_mut(number);
    part.files.insert(path.to_string(), sha256_hex(data));
    Ok(())
}
