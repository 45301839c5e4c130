//! Reading the files of a disk image back, with readers independent of Kura: `ext4-view` for
//! ext4, the `ntfs` crate for NTFS, mtools for FAT. Each reader lists every regular file, so
//! extra or missing files are caught as well as changed ones.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::NtfsFileNamespace;
use ntfs::Ntfs;

use crate::content::sha256_hex;
use crate::disks::{Disk, Fs, Partition};

/// A `Read + Seek` view of `[start, start + len)` of a file: one partition of a disk image.
pub struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    pub fn open(path: &Path, start: u64, len: u64) -> io::Result<Self> {
        Ok(Window { file: File::open(path)?, start, len, pos: 0 })
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.len - self.pos) as usize;
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

impl ext4_view::Ext4Read for Window {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        if start_byte.checked_add(dst.len() as u64).is_none_or(|end| end > self.len) {
            return Err(format!("read past the end of the partition at {start_byte}").into());
        }
        self.seek(SeekFrom::Start(start_byte))?;
        self.read_exact(dst)?;
        Ok(())
    }
}

/// path → sha256 of every regular file on the partition, or a description of why it could not
/// be read.
pub fn partition_files(disk: &Path, part: &Partition) -> Result<BTreeMap<String, String>, String> {
    match part.fs {
        Fs::Ext4 => ext4_files(disk, part.offset, part.size),
        Fs::Ntfs => ntfs_files(disk, part.offset, part.size),
        Fs::Fat => fat_files(disk, part.offset),
        Fs::Swap | Fs::Raw | Fs::Extended => Ok(BTreeMap::new()),
    }
}

/// Every regular file of an ext4 filesystem, by walking it from the root.
pub fn ext4_files(disk: &Path, offset: u64, size: u64) -> Result<BTreeMap<String, String>, String> {
    let window = Window::open(disk, offset, size).map_err(|e| e.to_string())?;
    let fs = ext4_view::Ext4::load(Box::new(window)).map_err(|e| format!("ext4: {e}"))?;
    let mut out = BTreeMap::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let entries = fs.read_dir(format!("/{dir}").as_str()).map_err(|e| format!("read_dir /{dir}: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("read_dir /{dir}: {e}"))?;
            let name = entry.file_name().as_str().map_err(|e| e.to_string())?.to_string();
            if name == "." || name == ".." || (dir.is_empty() && name == "lost+found") {
                continue;
            }
            let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
            let ty = entry.file_type().map_err(|e| e.to_string())?;
            if ty.is_dir() {
                dirs.push(path);
            } else if ty.is_regular_file() {
                let data = fs.read(format!("/{path}").as_str()).map_err(|e| format!("read /{path}: {e}"))?;
                out.insert(path, sha256_hex(&data));
            }
        }
    }
    Ok(out)
}

/// Every regular file in the root directory of an NTFS volume (system files `$…` left out).
pub fn ntfs_files(disk: &Path, offset: u64, size: u64) -> Result<BTreeMap<String, String>, String> {
    let mut fs = Window::open(disk, offset, size).map_err(|e| e.to_string())?;
    let mut ntfs = Ntfs::new(&mut fs).map_err(|e| format!("ntfs: {e}"))?;
    ntfs.read_upcase_table(&mut fs).map_err(|e| format!("ntfs upcase: {e}"))?;
    let root = ntfs.root_directory(&mut fs).map_err(|e| format!("ntfs root: {e}"))?;
    let index = root.directory_index(&mut fs).map_err(|e| format!("ntfs root index: {e}"))?;
    let mut entries = index.entries();
    let mut out = BTreeMap::new();
    while let Some(entry) = entries.next(&mut fs) {
        let entry = entry.map_err(|e| format!("ntfs index entry: {e}"))?;
        let Some(key) = entry.key() else { continue };
        let key = key.map_err(|e| format!("ntfs file name: {e}"))?;
        if key.namespace() == NtfsFileNamespace::Dos {
            continue;
        }
        let name = key.name().to_string_lossy();
        if name.starts_with('$') || name == "." {
            continue;
        }
        let file = entry.to_file(&ntfs, &mut fs).map_err(|e| format!("ntfs {name}: {e}"))?;
        if file.is_directory() {
            return Err(format!("unexpected NTFS directory {name}"));
        }
        let data = match file.data(&mut fs, "") {
            None => Vec::new(),
            Some(item) => {
                let item = item.map_err(|e| format!("ntfs {name} $DATA: {e}"))?;
                let attr = item.to_attribute().map_err(|e| format!("ntfs {name} $DATA: {e}"))?;
                let value = attr.value(&mut fs).map_err(|e| format!("ntfs {name} $DATA: {e}"))?;
                let mut data = Vec::new();
                value.attach(&mut fs).read_to_end(&mut data).map_err(|e| format!("ntfs {name} read: {e}"))?;
                data
            }
        };
        out.insert(name, sha256_hex(&data));
    }
    // Looking each name up through the index as well exercises the B-tree, not just its walk.
    let names: Vec<String> = out.keys().cloned().collect();
    for name in names {
        let mut finder = index.finder();
        match NtfsFileNameIndex::find(&mut finder, &ntfs, &mut fs, &name) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("ntfs lookup {name}: {e}")),
            None => return Err(format!("ntfs lookup {name}: not found")),
        }
    }
    Ok(out)
}

/// Every regular file of a FAT filesystem, listed with `mdir -/ -b` and read with `mtype`.
/// Paths are lower-cased: FAT names are case-insensitive.
pub fn fat_files(disk: &Path, offset: u64) -> Result<BTreeMap<String, String>, String> {
    let image = format!("{}@@{offset}", disk.display());
    let out = crate::tools::run_unchecked("mdir", ["-/", "-b", "-i", &image, "::/"]);
    if !out.status.success() {
        return Err(format!("mdir: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let Some(path) = line.trim().strip_prefix("::/") else { continue };
        if path.is_empty() || path.ends_with('/') {
            continue;
        }
        let data = crate::tools::run_unchecked("mtype", ["-i", &image, &format!("::/{path}")]);
        if !data.status.success() {
            return Err(format!("mtype {path}: {}", String::from_utf8_lossy(&data.stderr)));
        }
        files.insert(path.to_lowercase(), sha256_hex(&data.stdout));
    }
    Ok(files)
}

/// Asserts that every filesystem on `restored` (laid out as `source`) holds exactly the files
/// `source` was built with, byte for byte.
pub fn assert_files_match(source: &Disk, restored: &Path) {
    let mut problems = Vec::new();
    for part in &source.partitions {
        let expected: BTreeMap<String, String> = if part.fs == Fs::Fat {
            part.files.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect()
        } else {
            part.files.clone()
        };
        match partition_files(restored, part) {
            Err(e) => problems.push(format!("partition {} ({:?}): cannot read: {e}", part.number, part.fs)),
            Ok(actual) => {
                for (path, digest) in &expected {
                    match actual.get(path) {
                        None => problems.push(format!("partition {}: {path} is missing", part.number)),
                        Some(d) if d != digest => problems.push(format!("partition {}: {path} differs", part.number)),
                        Some(_) => {}
                    }
                }
                for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
                    problems.push(format!("partition {}: unexpected file {path}", part.number));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "files on {} do not match {}:\n{}",
        restored.display(),
        source.path.display(),
        problems.join("\n")
    );
}
