//! Building disk image files with real tools, without loop devices, mounting or root.
//!
//! Each filesystem is made in its own image file (`mkfs.ext4 -d`, `mkntfs` + `ntfscp`,
//! `mkfs.vfat` + `mmd`/`mcopy`, `mkswap`), the disk file is partitioned with `sgdisk` (GPT) or
//! `sfdisk` (MBR), the partition offsets are read back from the tool, and each filesystem image
//! is copied into place with plain seeks and writes. Boot code, the gap before the first
//! partition and raw partitions get recognisable non-zero bytes so that "kept byte for byte"
//! can be checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::content::{pattern_bytes, sha256_hex, FileSpec};
use crate::tools::run;

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1 << 20;

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
    pub fn partition(&self, number: u32) -> &Partition {
        self.partitions
            .iter()
            .find(|p| p.number == number)
            .unwrap_or_else(|| panic!("{} has no partition {number}", self.path.display()))
    }

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

/// Builds a GPT disk of `size` bytes at `dir/name` with partitions in order, 1 MiB aligned.
pub fn build_gpt(dir: &Path, name: &str, size: u64, parts: Vec<PartSpec>) -> Disk {
    let path = dir.join(name);
    create_zeroed(&path, size);
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
    run("sgdisk", &args);

    let mut partitions = Vec::new();
    for (i, spec) in parts.into_iter().enumerate() {
        let number = i as u32 + 1;
        let (offset, psize) = gpt_extent(&path, number);
        assert_eq!(psize, spec.size, "sgdisk made partition {number} of another size");
        let (fs, files, file_bytes) = fill_partition(dir, &path, number, offset, psize, spec.content);
        partitions.push(Partition { number, offset, size: psize, fs, files, file_bytes });
    }
    write_boot_areas(&path, TableKind::Gpt);
    Disk { path, size, table: TableKind::Gpt, partitions }
}

/// Builds an MBR disk: the primary partitions in order, then (if any spec is `logical`) an
/// extended partition over the rest of the disk holding the logical ones.
pub fn build_mbr(dir: &Path, name: &str, size: u64, parts: Vec<PartSpec>) -> Disk {
    let path = dir.join(name);
    create_zeroed(&path, size);
    let mut script = String::from("label: dos\nlabel-id: 0x4b555241\nunit: sectors\n\n");
    let mut extended_written = false;
    for (i, p) in parts.iter().enumerate() {
        if p.logical && !extended_written {
            script.push_str("type=5\n");
            extended_written = true;
        }
        assert!(p.logical || !extended_written, "primary partitions must come before logical ones");
        let start = if i == 0 { "start=2048, " } else { "" };
        let boot = if p.bootable { ", bootable" } else { "" };
        script.push_str(&format!("{start}size={}, type={:x}{boot}\n", p.size / SECTOR, p.mbr_type));
    }
    let script_path = dir.join(format!("{name}.sfdisk"));
    fs::write(&script_path, &script).unwrap();
    let input = File::open(&script_path).unwrap();
    let out = std::process::Command::new("sfdisk")
        .arg("--no-reread")
        .arg(&path)
        .stdin(input)
        .output()
        .expect("cannot run sfdisk; install it: apt-get install -y fdisk");
    assert!(
        out.status.success(),
        "sfdisk failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let extents = mbr_extents(&path);
    let mut primary_numbers = extents.iter().filter(|(&n, e)| n <= 4 && e.2 != 0x05).map(|(&n, _)| n);
    let mut logical_numbers = extents.keys().copied().filter(|&n| n >= 5);
    let mut partitions = Vec::new();
    for spec in parts {
        let number = if spec.logical { logical_numbers.next() } else { primary_numbers.next() }
            .expect("sfdisk made fewer partitions than asked");
        let (offset, psize, _) = extents[&number];
        assert_eq!(psize, spec.size, "sfdisk made partition {number} of another size");
        let (fs, files, file_bytes) = fill_partition(dir, &path, number, offset, psize, spec.content);
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
    write_boot_areas(&path, TableKind::Mbr);
    Disk { path, size, table: TableKind::Mbr, partitions }
}

fn create_zeroed(path: &Path, size: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// (offset, size) in bytes of GPT partition `number`, as `sgdisk -i` reports it.
pub fn gpt_extent(disk: &Path, number: u32) -> (u64, u64) {
    let info = run("sgdisk", ["-i".to_string(), number.to_string(), disk.display().to_string()]);
    let field = |prefix: &str| -> u64 {
        let line = info
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in sgdisk -i output:\n{info}"));
        line[prefix.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    (field("First sector:") * SECTOR, field("Partition size:") * SECTOR)
}

/// number → (offset, size, type byte) of every MBR partition, as `sfdisk -J` reports it.
pub fn mbr_extents(disk: &Path) -> BTreeMap<u32, (u64, u64, u8)> {
    let json = run("sfdisk", ["-J".as_ref(), disk.as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let node_prefix = disk.display().to_string();
    let mut out = BTreeMap::new();
    for p in v["partitiontable"]["partitions"].as_array().expect("sfdisk -J: no partitions") {
        let node = p["node"].as_str().unwrap();
        let number: u32 = node.strip_prefix(&node_prefix).unwrap().parse().unwrap();
        let start = p["start"].as_u64().unwrap();
        let size = p["size"].as_u64().unwrap();
        let ty = u8::from_str_radix(p["type"].as_str().unwrap(), 16).unwrap();
        out.insert(number, (start * SECTOR, size * SECTOR, ty));
    }
    out
}

/// Makes the content in its own image file, then copies it into the disk at `offset`.
fn fill_partition(
    dir: &Path,
    disk: &Path,
    number: u32,
    offset: u64,
    size: u64,
    content: Content,
) -> (Fs, BTreeMap<String, String>, u64) {
    let stem = disk.file_name().unwrap().to_string_lossy().into_owned();
    let img = dir.join(format!("{stem}.p{number}.img"));
    let work = dir.join(format!("{stem}.p{number}.src"));
    let mut file_bytes = 0;
    let (fs, files) = match content {
        Content::Ext4 { label, block_size, files, deleted } => {
            create_zeroed(&img, size);
            write_tree(&work, files.iter().chain(&deleted));
            run(
                "mkfs.ext4",
                [
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-L".as_ref(),
                    label.as_ref(),
                    "-b".as_ref(),
                    block_size.to_string().as_ref(),
                    // Keep the file (no hole punching) and write inode tables and journal in
                    // full now, as on a disk that has been in use.
                    "-E".as_ref(),
                    "nodiscard,lazy_itable_init=0,lazy_journal_init=0".as_ref(),
                    "-d".as_ref(),
                    work.as_os_str(),
                    img.as_os_str(),
                ],
            );
            for f in &deleted {
                debugfs_w(&img, &format!("rm /{}", f.path));
            }
            file_bytes = files.iter().map(|f| f.data.len() as u64).sum();
            (Fs::Ext4, expected(&files))
        }
        Content::Ntfs { label, files, deleted } => {
            create_zeroed(&img, size);
            run(
                "mkntfs",
                [
                    "-F".as_ref(),
                    "-Q".as_ref(),
                    "-L".as_ref(),
                    label.as_ref(),
                    "-p".as_ref(),
                    (offset / SECTOR).to_string().as_ref(),
                    "-H".as_ref(),
                    "255".as_ref(),
                    "-S".as_ref(),
                    "63".as_ref(),
                    img.as_os_str(),
                ],
            );
            write_tree(&work, files.iter().chain(&deleted));
            for f in files.iter().chain(&deleted) {
                assert!(!f.path.contains('/'), "NTFS fixtures are flat: {}", f.path);
                run("ntfscp", [img.as_os_str(), work.join(&f.path).as_os_str(), f.path.as_ref()]);
            }
            let mut exp = expected(&files);
            file_bytes = files.iter().map(|f| f.data.len() as u64).sum();
            if !deleted.is_empty() {
                let listing = run("ntfsls", ["-i".as_ref(), img.as_os_str()]);
                for f in &deleted {
                    let inode = listing
                        .lines()
                        .find_map(|l| {
                            let (ino, name) = l.trim().split_once(' ')?;
                            (name.trim() == f.path).then(|| ino.to_string())
                        })
                        .unwrap_or_else(|| panic!("{} not in ntfsls:\n{listing}", f.path));
                    run("ntfstruncate", [img.as_os_str(), inode.as_ref(), "0".as_ref()]);
                    exp.insert(f.path.clone(), sha256_hex(b""));
                }
            }
            (Fs::Ntfs, exp)
        }
        Content::Fat { bits, label, files } => {
            create_zeroed(&img, size);
            run(
                "mkfs.vfat",
                [
                    "-F".as_ref(),
                    bits.to_string().as_ref(),
                    "-n".as_ref(),
                    label.as_ref(),
                    "-h".as_ref(),
                    (offset / SECTOR).to_string().as_ref(),
                    img.as_os_str(),
                ],
            );
            write_tree(&work, files.iter());
            let dirs: BTreeSet<String> = files
                .iter()
                .flat_map(|f| {
                    let parts: Vec<&str> = f.path.split('/').collect();
                    (1..parts.len()).map(move |i| parts[..i].join("/")).collect::<Vec<_>>()
                })
                .collect();
            let fat_img = img.display().to_string();
            for d in &dirs {
                run("mmd", ["-i", &fat_img, &format!("::/{d}")]);
            }
            for f in &files {
                let src = work.join(&f.path).display().to_string();
                run("mcopy", ["-i", &fat_img, &src, &format!("::/{}", f.path)]);
            }
            file_bytes = files.iter().map(|f| f.data.len() as u64).sum();
            (Fs::Fat, expected(&files))
        }
        Content::Swap { label, stale } => {
            create_zeroed(&img, size);
            if let Some(stale) = stale {
                assert_eq!(stale.len() as u64, size, "stale swap bytes must fill the partition");
                fs::write(&img, &stale).unwrap();
            }
            run("mkswap", ["-L".as_ref(), label.as_ref(), img.as_os_str()]);
            (Fs::Swap, BTreeMap::new())
        }
        Content::Raw(bytes) => {
            assert!(bytes.len() as u64 <= size);
            create_zeroed(&img, size);
            write_at(&img, 0, &bytes);
            (Fs::Raw, BTreeMap::new())
        }
        Content::Empty => {
            create_zeroed(&img, size);
            (Fs::Raw, BTreeMap::new())
        }
    };
    place(disk, offset, size, &img);
    fs::remove_file(&img).unwrap();
    if work.exists() {
        fs::remove_dir_all(&work).unwrap();
    }
    (fs, files, file_bytes)
}

fn expected(files: &[FileSpec]) -> BTreeMap<String, String> {
    files.iter().map(|f| (f.path.clone(), sha256_hex(&f.data))).collect()
}

fn write_tree<'a>(root: &Path, files: impl Iterator<Item = &'a FileSpec>) {
    fs::create_dir_all(root).unwrap();
    for f in files {
        let p = root.join(&f.path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &f.data).unwrap();
    }
}

/// Runs one `debugfs -w` request on an ext4 image (or `disk?offset=N`); panics on any error
/// message, since debugfs exits 0 even when a request fails.
pub fn debugfs_w(img: &Path, request: &str) {
    let out = crate::tools::run_unchecked("debugfs", ["-w".as_ref(), "-R".as_ref(), request.as_ref(), img.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()).collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "debugfs -w -R {request:?} {} failed:\n{stderr}",
        img.display()
    );
}

/// Copies the image file `img` (exactly `size` bytes) into `disk` at `offset`. The disk region
/// is known to be zero, so all-zero blocks are skipped and the disk file stays sparse.
fn place(disk: &Path, offset: u64, size: u64, img: &Path) {
    assert_eq!(img.metadata().unwrap().len(), size, "{} has the wrong size", img.display());
    let mut src = File::open(img).unwrap();
    let mut dst = OpenOptions::new().write(true).open(disk).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    while pos < size {
        let n = ((size - pos) as usize).min(buf.len());
        src.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(offset + pos)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        pos += n as u64;
    }
}

/// Writes bytes at an absolute offset of a file.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// Reads `len` bytes at `offset` of a file.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Boot code in LBA 0 (bytes 0..440, leaving the disk signature and table alone) and, in the
/// gap before the first partition (at 1 MiB), sectors such as a boot loader embeds there.
fn write_boot_areas(disk: &Path, table: TableKind) {
    write_at(disk, 0, &pattern_bytes("KURA-MBR-BOOT-CODE", 440));
    let gap_sectors: &[u64] = match table {
        // GPT: after the entry array (LBA 2..33).
        TableKind::Gpt => &[40, 41, 42, 43, 1000, 2047],
        // MBR: LBA 1..62, where GRUB puts its core image.
        TableKind::Mbr => &[1, 2, 3, 30, 62, 2047],
    };
    for &lba in gap_sectors {
        write_at(disk, lba * SECTOR, &pattern_bytes(&format!("KURA-GAP-{lba}-"), SECTOR as usize));
    }
}

/// A blank (all zero) file of `size` bytes, e.g. an existing restore target.
pub fn blank_file(path: &Path, size: u64) {
    create_zeroed(path, size);
}

/// A file of `size` bytes filled with a recognisable pattern, e.g. a restore target whose
/// bytes must survive a failed restore.
pub fn patterned_file(path: &Path, size: u64) {
    let mut f = File::create(path).unwrap();
    let block = pattern_bytes("KURA-TARGET-MUST-SURVIVE-", MIB as usize);
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
}

/// Replaces a file of an ext4 partition of `disk` in place (`debugfs rm` + `write`), as a
/// running system would, and records its new digest. Every other block stays as it is.
pub fn ext4_replace_file(disk: &mut Disk, number: u32, path: &str, data: &[u8], scratch: &Path) {
    let part = disk.partition(number);
    assert_eq!(part.fs, Fs::Ext4);
    assert!(part.files.contains_key(path), "{path} is not on partition {number}");
    let target = PathBuf::from(format!("{}?offset={}", disk.path.display(), part.offset));
    let src = scratch.join("replacement");
    fs::write(&src, data).unwrap();
    debugfs_w(&target, &format!("rm /{path}"));
    debugfs_w(&target, &format!("write {} /{path}", src.display()));
    fs::remove_file(&src).unwrap();
    let part = disk.partition_mut(number);
    part.files.insert(path.to_string(), sha256_hex(data));
}
