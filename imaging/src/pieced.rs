//! The two-level scheme: a chunk that changed in a few places, stored as patches on the chunk
//! it was before.
//!
//! A capture with a parent snapshot ([`crate::capture::CaptureOptions::parent`]) meets a chunk
//! the store lacks at a position where the parent held a chunk of the same length. It hashes the
//! new chunk's pieces ([`piece_digests`]), asks the sink for the pieces of the parent's base
//! chunk ([`crate::chunk::ChunkSink::piece_digests`]), and if at most half of them differ
//! ([`changed_pieces`]) stores only those pieces, each as a chunk of its own, recording a
//! [`Pieced`] entry instead of storing the whole chunk again. A restore reads such an entry back
//! with [`assemble`]. Why and with which piece size: `docs/chunk.md`, "Chunk size and
//! incrementals"; the encoding: `docs/manifest.md`, version 2.
//!
//! Bases are always plain chunks: a chunk that changes again is compared with the same base, and
//! its patches are the pieces that differ from that base now. Entries never chain.

use crate::chunk::{ChunkSource, Decoder, Digest};
use crate::error::{Error, Result};
use crate::manifest::Pieced;

/// Piece size of the captures' pieced chunks: 16 KiB, chosen in `docs/chunk.md` (the only size
/// measured that stores a month of changes within 1.3× of the changed blocks compressed).
pub const DEFAULT_PIECE_SIZE: u32 = 16 << 10;

/// The SHA-256 of each consecutive `piece_size`-byte piece of `data` (the last may be shorter).
pub fn piece_digests(data: &[u8], piece_size: u32) -> Vec<Digest> {
    data.chunks(piece_size.max(1) as usize).map(Digest::of).collect()
}

/// Reads stored chunk `digest` from `source`, fully checked, and returns its piece digests.
pub fn stored_piece_digests(
    source: &dyn ChunkSource,
    dec: &mut Decoder,
    digest: &Digest,
    piece_size: u32,
) -> Result<Vec<Digest>> {
    let blob = source.get_chunk(digest)?;
    let mut plain = Vec::new();
    dec.decode_into(&blob, digest, &mut plain)?;
    Ok(piece_digests(&plain, piece_size))
}

/// The pieces to store as patches: those of `new` that differ from `base`, when the two are the
/// same length and at most half differ (more, and the chunk is cheaper stored whole — it then
/// becomes the base for later captures). `None` when the chunk should be stored whole.
pub fn changed_pieces(new: &[Digest], base: &[Digest]) -> Option<Vec<u32>> {
    if new.len() != base.len() || new.is_empty() {
        return None;
    }
    let changed: Vec<u32> =
        new.iter().zip(base).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i as u32).collect();
    (!changed.is_empty() && changed.len() * 2 <= new.len()).then_some(changed)
}

/// Assembles the content of pieced chunk `p` (`len` bytes) into `out`: its base, then each
/// patch over its piece, each fully checked as it is decoded, and the whole checked against
/// `p.digest`. `scratch` holds a patch while it is decoded.
pub fn assemble(
    source: &dyn ChunkSource,
    dec: &mut Decoder,
    p: &Pieced,
    len: usize,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let corrupt = |reason: String| Error::ChunkCorrupt { digest: p.digest.to_hex(), reason };
    let blob = source.get_chunk(&p.base)?;
    dec.decode_into(&blob, &p.base, out)?;
    if out.len() != len {
        return Err(corrupt(format!("its base {} holds {} bytes where the chunk has {len}", p.base, out.len())));
    }
    let ps = p.piece_size as usize;
    for (index, d) in &p.patches {
        let at = *index as usize * ps;
        if at >= len {
            return Err(corrupt(format!("patch {index} lies past the chunk's end")));
        }
        let want = ps.min(len - at);
        let blob = source.get_chunk(d)?;
        dec.decode_into(&blob, d, scratch)?;
        if scratch.len() != want {
            return Err(corrupt(format!(
                "patch {index} ({d}) holds {} bytes where the piece has {want}",
                scratch.len()
            )));
        }
        out[at..at + want].copy_from_slice(scratch);
    }
    let actual = Digest::of(out);
    if actual != p.digest {
        return Err(corrupt(format!(
            "assembled from base {} and {} patches, the content hashes to {actual}",
            p.base,
            p.patches.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_pieces_stores_at_most_half() {
        let d = |b: u8| Digest([b; 32]);
        let base = vec![d(1), d(2), d(3), d(4)];
        assert_eq!(changed_pieces(&[d(1), d(9), d(3), d(4)], &base), Some(vec![1]));
        assert_eq!(changed_pieces(&[d(9), d(2), d(3), d(8)], &base), Some(vec![0, 3]));
        // Three of four changed: whole.
        assert_eq!(changed_pieces(&[d(9), d(8), d(3), d(7)], &base), None);
        // Nothing changed, or a different length: whole (the caller never asks for the first).
        assert_eq!(changed_pieces(&base, &base), None);
        assert_eq!(changed_pieces(&base[..3], &base), None);
    }

    #[test]
    fn piece_digests_cover_a_short_tail() {
        let data = vec![7u8; 2 * 512 + 100];
        let p = piece_digests(&data, 512);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], Digest::of(&[7u8; 100]));
    }
}
