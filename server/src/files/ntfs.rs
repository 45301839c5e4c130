//! NTFS through the `ntfs` crate: directories through their `$I30` index (DOS 8.3 duplicate
//! names left out), a file's unnamed `$DATA` as its data, named `$DATA` attributes as
//! alternate data streams (`FILE:STREAM`). Reparse points (junctions, symbolic links) are
//! listed as special entries and never followed. The volume's own metadata files (`$MFT`,
//! `$Bitmap`, …: the reserved records 0-23) are not listed.

use super::partition::PartitionReader;
use super::{show_path, Entry, FsPath, FsReader, Kind, Mtime, StreamInfo};
use anyhow::{anyhow, bail, Context, Result};
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeType, NtfsFile};
use std::io::{Read, Write};

/// Records below this are the volume's metadata files (and reserved ones).
const FIRST_USER_RECORD: u64 = 24;
/// 100 ns intervals between 1601-01-01 and 1970-01-01.
const NT_EPOCH_OFFSET: u64 = 116_444_736_000_000_000;

pub struct NtfsReader {
    fs: PartitionReader,
    ntfs: Ntfs,
}

impl NtfsReader {
    pub fn open(mut fs: PartitionReader) -> Result<NtfsReader> {
        let mut ntfs = Ntfs::new(&mut fs).context("reading the boot sector")?;
        ntfs.read_upcase_table(&mut fs).context("reading $UpCase")?;
        Ok(NtfsReader { fs, ntfs })
    }
}

/// `name:stream` → (name, Some(stream)).
fn split_stream(c: &str) -> (&str, Option<&str>) {
    match c.split_once(':') {
        Some((n, s)) => (n, Some(s)),
        None => (c, None),
    }
}

fn is_reparse(file: &NtfsFile) -> Result<bool> {
    Ok(file.info()?.file_attributes().contains(NtfsFileAttributeFlags::REPARSE_POINT))
}

/// The file `path` names (its last component without any `:stream`), checking that every
/// component before it is a plain directory.
fn resolve<'n>(ntfs: &'n Ntfs, fs: &mut PartitionReader, path: &FsPath) -> Result<NtfsFile<'n>> {
    let mut file = ntfs.root_directory(fs)?;
    for (i, c) in path.iter().enumerate() {
        let name = if i + 1 == path.len() { split_stream(c).0 } else { c.as_str() };
        let here = show_path(&path[..i]);
        if !file.is_directory() || is_reparse(&file)? {
            bail!("{here}: not a directory (reparse points are not followed)");
        }
        let index = file.directory_index(fs)?;
        let mut finder = index.finder();
        let entry = NtfsFileNameIndex::find(&mut finder, ntfs, fs, name)
            .ok_or_else(|| anyhow!("{}: no such file or directory", show_path(&path[..=i])))??;
        if entry.file_reference().file_record_number() < FIRST_USER_RECORD {
            bail!("{}: an NTFS metadata file, not listed or read", show_path(&path[..=i]));
        }
        file = entry.to_file(ntfs, fs)?;
    }
    Ok(file)
}

fn entry_of(name: String, file: &NtfsFile, fs: &mut PartitionReader) -> Result<Entry> {
    let info = file.info()?;
    let flags = info.file_attributes();
    let (mut size, mut streams) = (0, Vec::new());
    let mut attrs = file.attributes();
    while let Some(item) = attrs.next(fs) {
        let item = item?;
        let a = item.to_attribute()?;
        if a.ty()? != NtfsAttributeType::Data {
            continue;
        }
        let n = a.name()?;
        if n.is_empty() {
            size = a.value_length();
        } else {
            streams.push(StreamInfo { name: n.to_string_lossy(), size: a.value_length() });
        }
    }
    let kind = if flags.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
        Kind::Special
    } else if file.is_directory() {
        Kind::Dir
    } else {
        Kind::File
    };
    let mode = match kind {
        Kind::Dir => 0o755,
        _ if flags.contains(NtfsFileAttributeFlags::READ_ONLY) => 0o444,
        _ => 0o644,
    };
    let t = info.modification_time().nt_timestamp();
    let rel = t as i128 - NT_EPOCH_OFFSET as i128;
    let mtime = Mtime { secs: rel.div_euclid(10_000_000) as i64, nanos: (rel.rem_euclid(10_000_000) * 100) as u32 };
    Ok(Entry {
        name,
        kind,
        size: if kind == Kind::Dir { 0 } else { size },
        mode,
        uid: None,
        gid: None,
        mtime: Some(mtime),
        streams,
    })
}

impl FsReader for NtfsReader {
    fn stat(&mut self, path: &FsPath) -> Result<Entry> {
        let file = resolve(&self.ntfs, &mut self.fs, path)?;
        let name = path.last().cloned().unwrap_or_default();
        let e = entry_of(split_stream(&name).0.to_string(), &file, &mut self.fs)?;
        match split_stream(&name).1 {
            None => Ok(e),
            Some(s) => {
                let st = e.streams.iter().find(|x| x.name.eq_ignore_ascii_case(s));
                let st = st.with_context(|| format!("{}: no such stream", show_path(path)))?;
                Ok(Entry { name, kind: Kind::Stream, size: st.size, streams: Vec::new(), ..e })
            }
        }
    }

    fn list(&mut self, path: &FsPath, f: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()> {
        let ntfs = &self.ntfs;
        let fs = &mut self.fs;
        let dir = resolve(ntfs, fs, path)?;
        if !dir.is_directory() || is_reparse(&dir)? {
            bail!("{}: not a directory", show_path(path));
        }
        let index = dir.directory_index(fs)?;
        let mut entries = index.entries();
        while let Some(e) = entries.next(fs) {
            let e = e?;
            let Some(key) = e.key() else { continue };
            let key = key?;
            if key.namespace() == NtfsFileNamespace::Dos || e.file_reference().file_record_number() < FIRST_USER_RECORD
            {
                continue;
            }
            let name = key.name().to_string_lossy();
            let file = e.to_file(ntfs, fs)?;
            f(entry_of(name, &file, fs)?)?;
        }
        Ok(())
    }

    fn read_link(&mut self, path: &FsPath) -> Result<Vec<u8>> {
        bail!("{}: NTFS reparse points are not read", show_path(path))
    }

    fn read_file(&mut self, path: &FsPath, out: &mut dyn Write) -> Result<u64> {
        let shown = show_path(path);
        let file = resolve(&self.ntfs, &mut self.fs, path)?;
        let stream = path.last().and_then(|c| split_stream(c).1).unwrap_or("");
        if file.is_directory() || is_reparse(&file)? {
            bail!("{shown}: not a regular file");
        }
        let Some(item) = file.data(&mut self.fs, stream) else {
            if stream.is_empty() {
                return Ok(0);
            }
            bail!("{shown}: no such stream");
        };
        let item = item?;
        let a = item.to_attribute()?;
        let value = a.value(&mut self.fs)?;
        let len = value.len();
        let mut r = value.attach(&mut self.fs);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).with_context(|| format!("reading {shown}"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            total += n as u64;
        }
        if total != len {
            bail!("{shown}: read {total} bytes of {len}");
        }
        Ok(total)
    }
}
