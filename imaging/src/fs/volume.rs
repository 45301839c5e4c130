//! Volumes inside containers (an LVM logical volume on its PV, an md RAID1 array on its
//! member): a view that reads the volume's bytes through the container's, and the placing of
//! the volume's allocation map back onto the container's bitmap.
//!
//! A volume is a list of [`Piece`]s: `len` bytes of the volume from `vol_offset` lie at
//! `at` in the container. The view is over `dyn ReadSeek` so that probing a volume inside a
//! volume does not build an endless chain of generic types.

use super::AllocationMap;
use crate::bitmap::Bitmap;
use std::io::{self, Read, Seek, SeekFrom};

/// Read + Seek as one object type.
pub(super) trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// One piece of a volume: `len` bytes of the volume from `vol_offset` are at `at` in the
/// container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece {
    pub vol_offset: u64,
    pub at: u64,
    pub len: u64,
}

/// A volume's bytes, read through its container. Reading a volume offset no piece maps is an
/// error (`InvalidData`), never bytes of somewhere else.
pub(super) struct VolumeView<'a> {
    container: &'a mut dyn ReadSeek,
    pieces: &'a [Piece],
    size: u64,
    pos: u64,
}

impl<'a> VolumeView<'a> {
    pub fn new(container: &'a mut dyn ReadSeek, pieces: &'a [Piece], size: u64) -> VolumeView<'a> {
        VolumeView { container, pieces, size, pos: 0 }
    }
}

impl Read for VolumeView<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let p = self
            .pieces
            .iter()
            .find(|p| p.vol_offset <= self.pos && self.pos < p.vol_offset + p.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "volume offset not mapped"))?;
        let within = self.pos - p.vol_offset;
        let n = (buf.len() as u64).min(p.len - within).min(self.size - self.pos) as usize;
        self.container.seek(SeekFrom::Start(p.at + within))?;
        let got = self.container.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for VolumeView<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the volume's start"))?;
        Ok(self.pos)
    }
}

/// Marks used, in the container's `bitmap` of `block`-byte bits, every container byte that
/// holds a used byte of the volume (`map`, for a volume of `size` bytes laid out as `pieces`).
/// Bytes of the volume past its map's bitmap count as used, as [`AllocationMap`] says.
pub(super) fn place(bitmap: &mut Bitmap, block: u64, map: &AllocationMap, pieces: &[Piece], size: u64) {
    let bs = map.block_size as u64;
    let covered = (map.bitmap.len() * bs).min(size);
    let used = map
        .bitmap
        .runs()
        .map(|(s, n)| (s * bs, ((s + n) * bs).min(covered)))
        .chain((covered < size).then_some((covered, size)));
    for (s, e) in used {
        for p in pieces {
            let (a, b) = (s.max(p.vol_offset), e.min(p.vol_offset + p.len));
            if a < b {
                set_bytes(bitmap, block, p.at + (a - p.vol_offset), p.at + (b - p.vol_offset));
            }
        }
    }
}

/// Marks every `block`-byte bit touching bytes `[start, end)` used.
pub(super) fn set_bytes(bitmap: &mut Bitmap, block: u64, start: u64, end: u64) {
    let (first, last) = (start / block, end.div_ceil(block).min(bitmap.len()));
    if first < last {
        bitmap.set_range(first, last - first);
    }
}
