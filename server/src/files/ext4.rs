//! ext2/3/4 through the `ext4-view` crate. Its own path lookups follow symbolic links, so every
//! path is checked component by component with `symlink_metadata` first: a symlink anywhere
//! but at the end of a path is refused, never followed.

use super::partition::PartitionReader;
use super::{show_path, Entry, FsPath, FsReader, Kind, Mtime};
use anyhow::{bail, Context, Result};
use ext4_view::{Ext4, Metadata};
use std::io::Write;

pub struct Ext4Reader {
    fs: Ext4,
}

impl Ext4Reader {
    pub fn open(r: PartitionReader) -> Result<Ext4Reader> {
        Ok(Ext4Reader { fs: Ext4::load(Box::new(r)).context("reading the superblock")? })
    }

    /// The metadata of `path`, after checking that no component before the last is a symlink.
    fn checked(&self, path: &FsPath) -> Result<Metadata> {
        let mut p = String::from("/");
        let mut meta = self.fs.symlink_metadata(p.as_str()).map_err(|e| ext4_err(e, "/"))?;
        for (i, c) in path.iter().enumerate() {
            if i > 0 {
                p.push('/');
            }
            if !meta.is_dir() {
                bail!("{p}: not a directory (a symbolic link is not followed)");
            }
            p.push_str(c);
            meta = self.fs.symlink_metadata(p.as_str()).map_err(|e| ext4_err(e, &p))?;
        }
        Ok(meta)
    }
}

fn ext4_err(e: ext4_view::Ext4Error, path: &str) -> anyhow::Error {
    match e {
        ext4_view::Ext4Error::NotFound => anyhow::anyhow!("{path}: no such file or directory"),
        e => anyhow::anyhow!("{path}: {e}"),
    }
}

fn entry(name: String, m: &Metadata) -> Entry {
    let ft = m.file_type();
    let kind = if ft.is_regular_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Special
    };
    let t = m.modified();
    Entry {
        name,
        kind,
        size: m.len(),
        mode: m.mode() as u32,
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        mtime: Some(Mtime { secs: t.seconds(), nanos: t.nanoseconds() }),
        streams: Vec::new(),
    }
}

impl FsReader for Ext4Reader {
    fn stat(&mut self, path: &FsPath) -> Result<Entry> {
        let m = self.checked(path)?;
        Ok(entry(path.last().cloned().unwrap_or_default(), &m))
    }

    fn list(&mut self, path: &FsPath, f: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()> {
        let m = self.checked(path)?;
        let shown = show_path(path);
        if !m.is_dir() {
            bail!("{shown}: not a directory");
        }
        for e in self.fs.read_dir(shown.as_str()).map_err(|e| ext4_err(e, &shown))? {
            let e = e.map_err(|e| ext4_err(e, &shown))?;
            let name = String::from_utf8_lossy(e.file_name().as_ref()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let m = e.metadata().map_err(|e| ext4_err(e, &shown))?;
            f(entry(name, &m))?;
        }
        Ok(())
    }

    fn read_link(&mut self, path: &FsPath) -> Result<Vec<u8>> {
        let m = self.checked(path)?;
        let shown = show_path(path);
        if !m.is_symlink() {
            bail!("{shown}: not a symbolic link");
        }
        let t = self.fs.read_link(shown.as_str()).map_err(|e| ext4_err(e, &shown))?;
        Ok(t.as_ref().to_vec())
    }

    fn read_file(&mut self, path: &FsPath, out: &mut dyn Write) -> Result<u64> {
        let shown = show_path(path);
        let m = self.checked(path)?;
        if !m.file_type().is_regular_file() {
            bail!("{shown}: not a regular file");
        }
        let mut file = self.fs.open(shown.as_str()).map_err(|e| ext4_err(e, &shown))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read_bytes(&mut buf).map_err(|e| ext4_err(e, &shown))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            total += n as u64;
        }
        if total != m.len() {
            bail!("{shown}: read {total} bytes of {}", m.len());
        }
        Ok(total)
    }
}
