//! One partition of a snapshot's disk as `Read + Seek` (and [`ext4_view::Ext4Read`]), for the
//! filesystem readers: a byte window over the lazy [`SnapshotDisk`], so only the chunks that
//! hold what a reader asks for are fetched.

use crate::snapshot_disk::SnapshotDisk;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

/// Reads never hand back more than this at once (the readers ask for blocks and clusters).
const MAX_READ: usize = 4 << 20;

#[derive(Clone)]
pub struct PartitionReader {
    disk: Arc<SnapshotDisk>,
    start: u64,
    len: u64,
    pos: u64,
}

impl PartitionReader {
    /// Bytes `[start, start + len)` of `disk`; the range must lie within the disk.
    pub fn new(disk: Arc<SnapshotDisk>, start: u64, len: u64) -> anyhow::Result<PartitionReader> {
        match start.checked_add(len) {
            Some(end) if end <= disk.size() => Ok(PartitionReader { disk, start, len, pos: 0 }),
            _ => anyhow::bail!("partition at byte {start} ({len} bytes) ends past the disk's {} bytes", disk.size()),
        }
    }

    /// Fills `buf` from partition offset `at`; an error if that runs past the partition.
    pub fn read_exact_at(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        match at.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("read of {} bytes at {at} past the partition's {} bytes", buf.len(), self.len),
                ))
            }
        }
        self.disk.read_at(self.start + at, buf).map_err(|e| io::Error::other(format!("{e:#}")))
    }
}

impl Read for PartitionReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let n = (buf.len().min(MAX_READ) as u64).min(self.len - self.pos) as usize;
        self.read_exact_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PartitionReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the partition"))?;
        Ok(self.pos)
    }
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.read_exact_at(start_byte, dst)?)
    }
}
