//! One partition (or one LVM logical volume) of a snapshot's disk as `Read + Seek` (and
//! [`ext4_view::Ext4Read`]), for the filesystem readers: a byte window over the lazy
//! [`SnapshotDisk`], so only the chunks that hold what a reader asks for are fetched. A
//! logical volume is a list of pieces of the disk, in volume order.

use crate::snapshot_disk::SnapshotDisk;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

/// Reads never hand back more than this at once (the readers ask for blocks and clusters).
const MAX_READ: usize = 4 << 20;

#[derive(Clone)]
pub struct PartitionReader {
    disk: Arc<SnapshotDisk>,
    /// `(offset, disk_at, len)`: `len` bytes from `offset` lie at `disk_at` on the disk; in
    /// order, each piece starting where the previous one ends, the last ending at `len`.
    pieces: Vec<(u64, u64, u64)>,
    len: u64,
    pos: u64,
}

impl PartitionReader {
    /// Bytes `[start, start + len)` of `disk`; the range must lie within the disk.
    pub fn new(disk: Arc<SnapshotDisk>, start: u64, len: u64) -> anyhow::Result<PartitionReader> {
        PartitionReader::pieces(disk, vec![(0, start, len)], len)
    }

    /// A volume of `len` bytes made of `pieces` (`(offset, disk_at, len)`, in order, covering
    /// `[0, len)` without gaps) of `disk`; each must lie within the disk.
    pub fn pieces(disk: Arc<SnapshotDisk>, pieces: Vec<(u64, u64, u64)>, len: u64) -> anyhow::Result<PartitionReader> {
        let mut next = 0u64;
        for &(offset, at, n) in &pieces {
            if offset != next {
                anyhow::bail!("volume piece at offset {offset} does not follow the previous one (ending at {next})");
            }
            if at.checked_add(n).is_none_or(|end| end > disk.size()) {
                anyhow::bail!("volume piece at byte {at} ({n} bytes) ends past the disk's {} bytes", disk.size());
            }
            next = offset.checked_add(n).ok_or_else(|| anyhow::anyhow!("volume piece lengths overflow"))?;
        }
        if next != len {
            anyhow::bail!("the volume's pieces cover {next} bytes, not its {len}");
        }
        Ok(PartitionReader { disk, pieces, len, pos: 0 })
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
        let (mut at, mut buf) = (at, buf);
        while !buf.is_empty() {
            // The piece holding `at` (pieces are in order and cover the volume).
            let i = self.pieces.partition_point(|&(offset, _, _)| offset <= at) - 1;
            let (offset, disk_at, n) = self.pieces[i];
            let take = ((offset + n - at) as usize).min(buf.len());
            let (now, rest) = buf.split_at_mut(take);
            self.disk.read_at(disk_at + (at - offset), now).map_err(|e| io::Error::other(format!("{e:#}")))?;
            at += take as u64;
            buf = rest;
        }
        Ok(())
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
