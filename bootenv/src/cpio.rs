//! The `newc` cpio format (the "SVR4 portable" format, magic `070701`), which the kernel unpacks
//! into its initial root filesystem (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header (13 fields of 8 hex digits), the NUL-terminated name
//! padded to a multiple of 4 (counting the header), then the data padded to a multiple of 4.
//! The archive ends with an entry named `TRAILER!!!`.
//!
//! [`Writer`] streams: file data is copied from a reader whose length is given up front, so
//! nothing is held in memory. It writes entries in the order given; the initramfs builder sorts
//! them and passes fixed times, so the same input gives the same bytes. [`Reader`] parses an
//! archive back (for tests and `kura bootenv` checks), refusing names longer than [`MAX_NAME`].

use anyhow::{bail, Context, Result};
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 6] = b"070701";
pub const HEADER_LEN: usize = 110;
pub const TRAILER: &str = "TRAILER!!!";
/// Longest name the reader accepts (Linux's `PATH_MAX`).
pub const MAX_NAME: usize = 4096;

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// The metadata of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    /// File type and permission bits (`S_IF*` | `0o755` ...).
    pub mode: u32,
    pub size: u64,
    pub mtime: u32,
    /// Device numbers for character/block device nodes.
    pub rdev: (u32, u32),
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Writes a `newc` archive to `W`.
pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    mtime: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// Every entry gets modification time `mtime` (0 for reproducible images).
    pub fn new(out: W, mtime: u32) -> Self {
        Writer { out, ino: 0, mtime, written: 0 }
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> Result<()> {
        if name.is_empty() || name.len() >= MAX_NAME || name.contains('\0') {
            bail!("cpio: unusable entry name {name:?}");
        }
        let size32 = u32::try_from(size).with_context(|| format!("cpio: {name} is {size} bytes, over newc's 4 GiB"))?;
        self.ino += 1;
        let nlink = if mode & 0o170000 == S_IFDIR { 2 } else { 1 };
        let namesize = name.len() + 1;
        let h = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino, mode, 0, 0, nlink, self.mtime, size32, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        debug_assert_eq!(h.len(), HEADER_LEN);
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0u8; 4][..1 + pad4(HEADER_LEN + namesize)])?;
        Ok(())
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).context("writing the cpio archive")?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn data_padding(&mut self, size: u64) -> Result<()> {
        self.put(&[0u8; 3][..pad4((size % 4) as usize)])
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> Result<()> {
        self.header(name, S_IFDIR | perm, 0, (0, 0))
    }

    /// A regular file of exactly `size` bytes read from `data`.
    pub fn file(&mut self, name: &str, perm: u32, size: u64, data: &mut dyn Read) -> Result<()> {
        self.header(name, S_IFREG | perm, size, (0, 0))?;
        let copied = io::copy(&mut data.take(size), &mut self.out).with_context(|| format!("copying {name}"))?;
        if copied != size {
            bail!("cpio: {name} gave {copied} bytes where {size} were announced");
        }
        self.written += copied;
        self.data_padding(size)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.header(name, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
        self.put(target.as_bytes())?;
        self.data_padding(target.len() as u64)
    }

    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.header(name, S_IFCHR | perm, 0, (major, minor))
    }

    /// The output written to so far (say, to flush a compressor between parts).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Bytes of archive written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes the trailer and returns the output and the archive's length.
    pub fn finish(mut self) -> Result<(W, u64)> {
        self.header(TRAILER, 0, 0, (0, 0))?;
        self.out.flush().context("flushing the cpio archive")?;
        Ok((self.out, self.written))
    }
}

/// Reads a `newc` archive entry by entry.
pub struct Reader<R: Read> {
    inp: R,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(inp: R) -> Self {
        Reader { inp, done: false }
    }

    /// The next entry's header and a reader of exactly its data, or `None` after the trailer.
    /// The data must be consumed (or dropped via [`Reader::skip`]) before the next call.
    pub fn next_entry(&mut self) -> Result<Option<Header>> {
        if self.done {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        self.inp.read_exact(&mut h).context("reading a cpio header")?;
        if &h[..6] != MAGIC {
            bail!("cpio: bad magic {:?}", String::from_utf8_lossy(&h[..6]));
        }
        let field = |i: usize| -> Result<u32> {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).context("cpio: non-ASCII header")?;
            u32::from_str_radix(s, 16).with_context(|| format!("cpio: bad header field {s:?}"))
        };
        let (mode, mtime, size, rmaj, rmin, namesize) =
            (field(1)?, field(5)?, field(6)?, field(9)?, field(10)?, field(11)?);
        let namesize = namesize as usize;
        if namesize == 0 || namesize > MAX_NAME {
            bail!("cpio: name length {namesize} out of range");
        }
        let mut name = vec![0u8; namesize + pad4(HEADER_LEN + namesize)];
        self.inp.read_exact(&mut name).context("reading a cpio name")?;
        if name[namesize - 1] != 0 {
            bail!("cpio: name not NUL-terminated");
        }
        let name = String::from_utf8(name[..namesize - 1].to_vec()).context("cpio: name is not UTF-8")?;
        if name == TRAILER {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(Header { name, mode, size: size as u64, mtime, rdev: (rmaj, rmin) }))
    }

    /// Reads the data of the entry `h` just returned into `out`, and its padding.
    pub fn read_data(&mut self, h: &Header, out: &mut dyn Write) -> Result<()> {
        let n = io::copy(&mut (&mut self.inp).take(h.size), out).context("reading cpio data")?;
        if n != h.size {
            bail!("cpio: {} is truncated ({n} of {} bytes)", h.name, h.size);
        }
        let mut pad = [0u8; 3];
        self.inp.read_exact(&mut pad[..pad4((h.size % 4) as usize)]).context("reading cpio padding")?;
        Ok(())
    }

    pub fn skip(&mut self, h: &Header) -> Result<()> {
        self.read_data(h, &mut io::sink())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), 0);
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, 5, &mut &b"hello"[..]).unwrap();
        w.file("empty", 0o644, 0, &mut &b""[..]).unwrap();
        w.symlink("sbin", "bin").unwrap();
        let (out, len) = w.finish().unwrap();
        assert_eq!(out.len() as u64, len);
        out
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        let mut r = Reader::new(&bytes[..]);
        let mut got = Vec::new();
        while let Some(h) = r.next_entry().unwrap() {
            let mut data = Vec::new();
            r.read_data(&h, &mut data).unwrap();
            got.push((h.name, h.mode, h.rdev, data));
        }
        assert_eq!(
            got,
            vec![
                ("dev".to_string(), S_IFDIR | 0o755, (0, 0), vec![]),
                ("dev/console".to_string(), S_IFCHR | 0o600, (5, 1), vec![]),
                ("init".to_string(), S_IFREG | 0o755, (0, 0), b"hello".to_vec()),
                ("empty".to_string(), S_IFREG | 0o644, (0, 0), vec![]),
                ("sbin".to_string(), S_IFLNK | 0o777, (0, 0), b"bin".to_vec()),
            ]
        );
        assert!(r.next_entry().unwrap().is_none());
        // Deterministic: the same entries give the same bytes.
        assert_eq!(bytes, sample());
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = Writer::new(Vec::new(), 0);
        assert!(w.file("x", 0o644, 10, &mut &b"abc"[..]).is_err());
    }

    #[test]
    fn corrupt_archives_are_refused() {
        let mut bytes = sample();
        bytes[0] = b'1';
        assert!(Reader::new(&bytes[..]).next_entry().is_err());
        let mut bytes = sample();
        // namesize field of the first entry: huge.
        bytes[94..102].copy_from_slice(b"FFFFFFFF");
        assert!(Reader::new(&bytes[..]).next_entry().is_err());
    }

    /// The system's cpio (or bsdtar) lists what we wrote.
    #[test]
    fn system_cpio_lists_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, sample()).unwrap();
        for (tool, args) in [("cpio", vec!["-it", "--quiet"]), ("bsdtar", vec!["-tf"])] {
            let mut cmd = std::process::Command::new(tool);
            cmd.args(&args);
            let out = if tool == "cpio" {
                cmd.stdin(std::fs::File::open(&path).unwrap()).output()
            } else {
                cmd.arg(&path).output()
            };
            let Ok(out) = out else {
                eprintln!("{tool} not installed: skipped");
                continue;
            };
            assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
            let list = String::from_utf8_lossy(&out.stdout);
            let names: Vec<&str> = list.lines().collect();
            assert_eq!(names, ["dev", "dev/console", "init", "empty", "sbin"], "{tool}");
        }
    }
}
