//! FAT12/16/32 through the `fatfs` crate, strictly read-only: its storage refuses every write
//! (the crate writes only when something changes, and nothing here changes anything). Long
//! file names as stored; lookups compare names case-insensitively as FAT does. FAT keeps
//! local time without a zone: it is read as UTC.

use super::partition::PartitionReader;
use super::{show_path, Entry, FsPath, FsReader, Kind, Mtime};
use anyhow::{anyhow, bail, Result};
use fatfs::{Dir, FileAttributes, FileSystem, FsOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The partition, with writes refused.
pub struct ReadOnly(PartitionReader);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "a snapshot is read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct FatReader {
    fs: FileSystem<ReadOnly>,
}

impl FatReader {
    pub fn open(r: PartitionReader) -> Result<FatReader> {
        Ok(FatReader { fs: FileSystem::new(ReadOnly(r), FsOptions::new().update_accessed_date(false))? })
    }
}

type FatEntry<'a> = fatfs::DirEntry<'a, ReadOnly>;

fn find<'a>(dir: &Dir<'a, ReadOnly>, name: &str) -> Result<Option<FatEntry<'a>>> {
    for e in dir.iter() {
        let e = e?;
        if e.attributes().contains(FileAttributes::VOLUME_ID) {
            continue;
        }
        if e.file_name().eq_ignore_ascii_case(name) || e.short_file_name().eq_ignore_ascii_case(name) {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The entry `path` names, `None` for the root.
fn resolve<'a>(fs: &'a FileSystem<ReadOnly>, path: &FsPath) -> Result<Option<FatEntry<'a>>> {
    let mut dir = fs.root_dir();
    let mut found = None;
    for (i, c) in path.iter().enumerate() {
        if i > 0 {
            let e: &FatEntry = found.as_ref().expect("set for i > 0");
            if !e.is_dir() {
                bail!("{}: not a directory", show_path(&path[..i]));
            }
            dir = e.to_dir();
        }
        found = Some(find(&dir, c)?.ok_or_else(|| anyhow!("{}: no such file or directory", show_path(&path[..=i])))?);
    }
    Ok(found)
}

fn entry_of(e: &FatEntry) -> Entry {
    let dir = e.is_dir();
    let m = e.modified();
    let days = kura_imaging::time::days_from_civil(m.date.year as i64, m.date.month as u32, m.date.day as u32);
    let secs = days * 86_400 + m.time.hour as i64 * 3600 + m.time.min as i64 * 60 + m.time.sec as i64;
    Entry {
        name: e.file_name(),
        kind: if dir { Kind::Dir } else { Kind::File },
        size: if dir { 0 } else { e.len() },
        mode: if dir {
            0o755
        } else if e.attributes().contains(FileAttributes::READ_ONLY) {
            0o444
        } else {
            0o644
        },
        uid: None,
        gid: None,
        mtime: Some(Mtime { secs, nanos: m.time.millis as u32 * 1_000_000 }),
        streams: Vec::new(),
    }
}

fn root_entry() -> Entry {
    Entry {
        name: String::new(),
        kind: Kind::Dir,
        size: 0,
        mode: 0o755,
        uid: None,
        gid: None,
        mtime: None,
        streams: Vec::new(),
    }
}

impl FsReader for FatReader {
    fn stat(&mut self, path: &FsPath) -> Result<Entry> {
        Ok(resolve(&self.fs, path)?.map_or_else(root_entry, |e| entry_of(&e)))
    }

    fn list(&mut self, path: &FsPath, f: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()> {
        let dir = match resolve(&self.fs, path)? {
            None => self.fs.root_dir(),
            Some(e) if e.is_dir() => e.to_dir(),
            Some(_) => bail!("{}: not a directory", show_path(path)),
        };
        for e in dir.iter() {
            let e = e?;
            let name = e.file_name();
            if e.attributes().contains(FileAttributes::VOLUME_ID) || name == "." || name == ".." {
                continue;
            }
            f(entry_of(&e))?;
        }
        Ok(())
    }

    fn read_link(&mut self, path: &FsPath) -> Result<Vec<u8>> {
        bail!("{}: FAT has no symbolic links", show_path(path))
    }

    fn read_file(&mut self, path: &FsPath, out: &mut dyn Write) -> Result<u64> {
        let shown = show_path(path);
        let e = match resolve(&self.fs, path)? {
            Some(e) if !e.is_dir() => e,
            _ => bail!("{shown}: not a regular file"),
        };
        let len = e.len();
        let mut file = e.to_file();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while total < len {
            let want = (len - total).min(buf.len() as u64) as usize;
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                bail!("{shown}: read {total} bytes of {len} (cluster chain too short)");
            }
            out.write_all(&buf[..n])?;
            total += n as u64;
        }
        Ok(total)
    }
}
