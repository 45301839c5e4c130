//! Chunks: the unit of storage and deduplication.
//!
//! A chunk is up to `chunk_size` bytes of a region of the disk, addressed by the SHA-256 of its
//! plain content ([`Digest`]). On the wire and in the store a chunk travels *encoded*: a 64-byte
//! header followed by the (normally zstd-compressed) payload. The format is frozen and
//! documented in `docs/chunk.md`; the golden test at the bottom pins it.
//!
//! ```text
//! offset size field
//!      0    8 magic        first 8 bytes of sha256("Kura chunk v1")
//!      8    2 version      u16 LE = 1
//!     10    1 compression  0 = stored, 1 = zstd
//!     11    1 reserved     0
//!     12    4 plain_len    u32 LE, length of the plain content
//!     16    4 payload_len  u32 LE, bytes following the header
//!     20    4 payload_crc  u32 LE, CRC-32 (IEEE) of the payload
//!     24   32 digest       sha256 of the plain content
//!     56    8 reserved     0
//! ```
//!
//! The CRC lets a reader reject a damaged chunk cheaply, before any byte of a restore is
//! written; the digest is the real check and is always recomputed after decompression.
//!
//! [`ChunkSink`] and [`ChunkSource`] are the two sides the pipelines talk to: a local store,
//! a remote engine, or an in-memory map in tests.

use crate::error::{Error, Result};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// Chunk size used for new snapshots: 1 MiB (measured; see `docs/chunk.md`).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Largest chunk size a snapshot may declare; anything larger is refused before allocating.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// zstd level used for new chunks: 3, measured by `kura bench --levels` (see `docs/chunk.md`):
/// 1.4 % more stored than partclone's stream at `zstd -3` for about half of level 5's CPU time.
/// The level is not part of the format; chunks written at any level stay readable.
pub const DEFAULT_LEVEL: i32 = 3;

pub const MAGIC: [u8; 8] = [30, 188, 117, 24, 209, 74, 165, 140];
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 64;

const COMPRESSION_STORED: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;

/// SHA-256 of a chunk's plain content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("not a chunk digest {s:?}: {e}"))?;
        Ok(Digest(out))
    }
}

/// The parsed header of an encoded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHeader {
    pub compressed: bool,
    pub plain_len: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
    pub digest: Digest,
}

impl ChunkHeader {
    pub fn parse(blob: &[u8]) -> std::result::Result<ChunkHeader, String> {
        if blob.len() < HEADER_LEN {
            return Err(format!("{} bytes is shorter than the {HEADER_LEN}-byte header", blob.len()));
        }
        if blob[0..8] != MAGIC {
            return Err("bad magic (not a Kura chunk)".into());
        }
        let version = u16::from_le_bytes([blob[8], blob[9]]);
        if version != VERSION {
            return Err(format!("unsupported chunk format version {version}"));
        }
        let compressed = match blob[10] {
            COMPRESSION_STORED => false,
            COMPRESSION_ZSTD => true,
            other => return Err(format!("unknown compression {other}")),
        };
        let u32_at = |o: usize| u32::from_le_bytes(blob[o..o + 4].try_into().expect("4 bytes"));
        let plain_len = u32_at(12);
        let payload_len = u32_at(16);
        if plain_len > MAX_CHUNK_SIZE {
            return Err(format!("plain length {plain_len} exceeds the maximum chunk size"));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&blob[24..56]);
        Ok(ChunkHeader { compressed, plain_len, payload_len, payload_crc: u32_at(20), digest: Digest(digest) })
    }

    fn write(&self, out: &mut [u8]) {
        out[..HEADER_LEN].fill(0);
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10] = if self.compressed { COMPRESSION_ZSTD } else { COMPRESSION_STORED };
        out[12..16].copy_from_slice(&self.plain_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.payload_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.payload_crc.to_le_bytes());
        out[24..56].copy_from_slice(&self.digest.0);
    }
}

/// Encodes chunks; holds a reusable zstd context (one per worker thread).
pub struct Encoder {
    compressor: zstd::bulk::Compressor<'static>,
}

impl Encoder {
    pub fn new(level: i32) -> Result<Encoder> {
        let compressor = zstd::bulk::Compressor::new(level).map_err(|e| Error::io("creating a zstd compressor", e))?;
        Ok(Encoder { compressor })
    }

    /// Encodes `plain` (whose digest the caller already computed) into `out` (cleared first).
    /// Content that does not shrink is stored uncompressed.
    pub fn encode_into(&mut self, digest: &Digest, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        assert!(plain.len() <= MAX_CHUNK_SIZE as usize, "chunk larger than MAX_CHUNK_SIZE");
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        out.clear();
        out.resize(HEADER_LEN + bound, 0);
        let n = self
            .compressor
            .compress_to_buffer(plain, &mut out[HEADER_LEN..])
            .map_err(|e| Error::io("compressing a chunk", e))?;
        let compressed = n < plain.len();
        if compressed {
            out.truncate(HEADER_LEN + n);
        } else {
            out.truncate(HEADER_LEN);
            out.extend_from_slice(plain);
        }
        let header = ChunkHeader {
            compressed,
            plain_len: plain.len() as u32,
            payload_len: (out.len() - HEADER_LEN) as u32,
            payload_crc: crc32fast::hash(&out[HEADER_LEN..]),
            digest: *digest,
        };
        header.write(out);
        Ok(())
    }
}

/// Checks an encoded chunk without decompressing it: header, length, payload CRC, and that the
/// header names `expected`. Catches damage and truncation cheaply; [`Decoder::decode_into`] is
/// the full check.
pub fn check_quick(blob: &[u8], expected: &Digest) -> Result<ChunkHeader> {
    let corrupt = |reason: String| Error::ChunkCorrupt { digest: expected.to_hex(), reason };
    let header = ChunkHeader::parse(blob).map_err(corrupt)?;
    if header.digest != *expected {
        return Err(corrupt(format!("header names another chunk ({})", header.digest)));
    }
    let payload = &blob[HEADER_LEN..];
    if payload.len() != header.payload_len as usize {
        return Err(corrupt(format!(
            "payload is {} bytes but the header says {} (truncated or extended)",
            payload.len(),
            header.payload_len
        )));
    }
    if crc32fast::hash(payload) != header.payload_crc {
        return Err(corrupt("payload checksum mismatch".into()));
    }
    if !header.compressed && header.plain_len != header.payload_len {
        return Err(corrupt("stored chunk length mismatch".into()));
    }
    Ok(header)
}

/// Decodes chunks; holds a reusable zstd context (one per worker thread).
pub struct Decoder {
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl Decoder {
    pub fn new() -> Result<Decoder> {
        let decompressor = zstd::bulk::Decompressor::new().map_err(|e| Error::io("creating a zstd decompressor", e))?;
        Ok(Decoder { decompressor })
    }

    /// Fully checks and decodes `blob` into `out` (replacing its contents): header, CRC,
    /// decompression to exactly the declared length, and the SHA-256 of the result.
    pub fn decode_into(&mut self, blob: &[u8], expected: &Digest, out: &mut Vec<u8>) -> Result<()> {
        let header = check_quick(blob, expected)?;
        let corrupt = |reason: String| Error::ChunkCorrupt { digest: expected.to_hex(), reason };
        let payload = &blob[HEADER_LEN..];
        out.clear();
        if header.compressed {
            // Into the spare capacity: no zero-filling of a buffer the decompressor overwrites.
            out.reserve(header.plain_len as usize);
            let n = self.decompressor.decompress_to_buffer(payload, out).map_err(|e| corrupt(format!("zstd: {e}")))?;
            if n != header.plain_len as usize {
                return Err(corrupt(format!("decompressed to {n} bytes, header says {}", header.plain_len)));
            }
        } else {
            out.extend_from_slice(payload);
        }
        let actual = Digest::of(out);
        if actual != *expected {
            return Err(corrupt(format!("content hashes to {actual}")));
        }
        Ok(())
    }
}

/// Whether every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    let body = chunks.by_ref().all(|c| {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        }
        acc == 0
    });
    body && chunks.remainder().iter().all(|&b| b == 0)
}

/// Where chunks go during a capture: a local store, a remote engine, a map in tests.
///
/// Implementations must be idempotent: putting a chunk that is already present is not an error.
pub trait ChunkSink: Send + Sync {
    /// For each digest, whether the sink lacks that chunk (so it must be compressed and sent).
    /// Called once per batch of chunks; the answer has one entry per digest, in order.
    fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>>;
    /// Stores an encoded chunk. Returns `true` if it was newly stored, `false` if it was already
    /// present. The sink may verify the blob against `digest` and must refuse a mismatch.
    fn put_chunk(&self, digest: &Digest, blob: &[u8]) -> Result<bool>;
    /// How many [`put_chunk`](Self::put_chunk) calls the capture keeps in flight on threads of
    /// their own, so that the workers go on hashing and compressing while a put waits on the
    /// network (a remote engine, an S3 bucket). 0 (the default): each worker puts its own
    /// chunks, for a sink whose puts cost no round trip (a local store).
    fn puts_in_flight(&self) -> usize {
        0
    }
    /// The digests of the `piece_size`-byte pieces of stored chunk `digest` (see
    /// [`crate::pieced`]), so that a capture can store a chunk changed in a few places as
    /// patches on it. `Ok(None)` (the default): this sink does not offer them, and changed
    /// chunks are stored whole. A sink that is also a [`ChunkSource`] answers with
    /// [`crate::pieced::stored_piece_digests`]; a remote one asks its server, which sends 32
    /// bytes per piece instead of the chunk.
    fn piece_digests(&self, digest: &Digest, piece_size: u32) -> Result<Option<Vec<Digest>>> {
        let _ = (digest, piece_size);
        Ok(None)
    }
}

/// Where chunks come from during a restore or verify.
pub trait ChunkSource: Send + Sync {
    /// Returns the encoded chunk as stored, unverified ([`Error::ChunkMissing`] if absent).
    fn get_chunk(&self, digest: &Digest) -> Result<Vec<u8>>;

    /// Checks that chunks are present and intact (header, length, payload checksum: see
    /// [`check_quick`]) without handing them over. One answer per digest, in order: `None` if
    /// the chunk is fine, `Some(reason)` if it is missing or damaged. The default reads each
    /// chunk; a remote source asks its server instead of downloading everything twice.
    fn check_chunks(&self, digests: &[Digest]) -> Result<Vec<Option<String>>> {
        digests
            .iter()
            .map(|d| match self.get_chunk(d).and_then(|blob| check_quick(&blob, d)) {
                Ok(_) => Ok(None),
                Err(Error::ChunkMissing { .. }) => Ok(Some("missing".to_string())),
                Err(Error::ChunkCorrupt { reason, .. }) => Ok(Some(reason)),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// How many more [`get_chunk`](Self::get_chunk) calls a restore keeps in flight than it
    /// has decompressing threads, so that the decompression goes on while fetches wait on the
    /// network (a remote engine, an S3 bucket). 0 (the default): a source whose gets cost no
    /// round trip (a local store, an archive).
    fn gets_in_flight(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn magic_is_derived_from_its_name() {
        let h = Sha256::digest(b"Kura chunk v1");
        assert_eq!(MAGIC, h[..8]);
    }

    /// Golden test: the encoding of a fixed input is frozen. If this fails, the chunk format
    /// changed: bump VERSION and document it instead.
    #[test]
    fn golden_encoding() {
        let plain = b"Kura golden chunk".repeat(100);
        let d = Digest::of(&plain);
        let mut out = Vec::new();
        Encoder::new(3).unwrap().encode_into(&d, &plain, &mut out).unwrap();
        assert_eq!(hex::encode(&out[..24]), "1ebc7518d14aa58c01000100a406000023000000cae5d41f");
        assert_eq!(d.to_hex(), "76bdd382909fc8cf1cb25f6d475bbd96c7db839bd5f6b8666c1927cf56e7b479");
        assert_eq!(&out[24..56], &d.0);
        assert_eq!(&out[56..64], &[0u8; 8]);
    }

    /// The zstd level is not part of the format: chunks written at any level (old snapshots at
    /// level 3 or 5, new ones at whatever the default becomes) carry the same header fields and
    /// one decoder reads them all.
    #[test]
    fn the_level_is_not_recorded_and_any_level_decodes() {
        // Text-like content: words picked pseudo-randomly, so higher levels find more to save.
        let words = ["disk", "chunk", "kura", "level", "restore", "capture", "zstd", "the", "of", "a"];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let plain: Vec<u8> = (0..20_000)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{} ", words[(x % words.len() as u64) as usize]).into_bytes()
            })
            .collect();
        let d = Digest::of(&plain);
        let mut dec = Decoder::new().unwrap();
        let mut prefix = MAGIC.to_vec();
        prefix.extend(VERSION.to_le_bytes());
        prefix.extend([COMPRESSION_ZSTD, 0]);
        prefix.extend((plain.len() as u32).to_le_bytes());
        let mut payloads = Vec::new();
        for level in [1, 2, 3, 4, 5, 9, 19] {
            let mut blob = Vec::new();
            Encoder::new(level).unwrap().encode_into(&d, &plain, &mut blob).unwrap();
            let h = ChunkHeader::parse(&blob).unwrap();
            assert!(h.compressed, "level {level}");
            // Magic, version, compression, reserved, plain_len, digest, reserved: no level.
            assert_eq!(blob[..16], prefix, "level {level}");
            assert_eq!(&blob[24..56], &d.0);
            assert_eq!(&blob[56..64], &[0u8; 8]);
            let mut back = Vec::new();
            dec.decode_into(&blob, &d, &mut back).unwrap();
            assert_eq!(back, plain, "level {level}");
            payloads.push(blob[HEADER_LEN..].to_vec());
        }
        payloads.dedup();
        assert!(payloads.len() > 1, "every level produced the same payload: the test proves nothing");
    }

    #[test]
    fn incompressible_is_stored() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let plain: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let d = Digest::of(&plain);
        let mut out = Vec::new();
        Encoder::new(3).unwrap().encode_into(&d, &plain, &mut out).unwrap();
        let h = ChunkHeader::parse(&out).unwrap();
        assert!(!h.compressed);
        let mut back = Vec::new();
        Decoder::new().unwrap().decode_into(&out, &d, &mut back).unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let plain = b"some chunk content, quite compressible ".repeat(50);
        let d = Digest::of(&plain);
        let mut blob = Vec::new();
        Encoder::new(3).unwrap().encode_into(&d, &plain, &mut blob).unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        for i in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[i / 8] ^= 1 << (i % 8);
            // Reserved bytes are not checked; every other bit must be.
            if (11..12).contains(&(i / 8)) || (56..64).contains(&(i / 8)) {
                continue;
            }
            assert!(dec.decode_into(&bad, &d, &mut out).is_err(), "flip of bit {i} went unnoticed");
        }
        assert!(dec.decode_into(&blob[..blob.len() - 1], &d, &mut out).is_err());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 1000]));
        for i in [0, 63, 64, 999] {
            let mut b = vec![0u8; 1000];
            b[i] = 1;
            assert!(!is_zero(&b));
        }
    }

    /// One change to a valid encoded chunk, made before its checksums are fixed up. Positions
    /// are indexes into the blob as it is when the change is made.
    #[derive(Debug, Clone)]
    enum Mutation {
        Flip {
            at: prop::sample::Index,
            mask: u8,
        },
        Insert {
            at: prop::sample::Index,
            bytes: Vec<u8>,
        },
        Remove {
            at: prop::sample::Index,
            len: usize,
        },
        Truncate {
            keep: prop::sample::Index,
        },
        /// Overwrites a header field: the compression byte (10), plain_len (12) or
        /// payload_len (16), with a value near the real one or anything.
        Field {
            offset: usize,
            value: u32,
            relative: Option<i32>,
        },
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let index = any::<prop::sample::Index>;
        prop_oneof![
            (index(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
            (index(), proptest::collection::vec(any::<u8>(), 1..16))
                .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
            (index(), 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
            index().prop_map(|keep| Mutation::Truncate { keep }),
            (
                prop::sample::select(vec![10usize, 12, 16]),
                any::<u32>(),
                prop::option::of(prop_oneof![-64i32..64, Just(1 << 20), Just(-(1 << 20))])
            )
                .prop_map(|(offset, value, relative)| Mutation::Field { offset, value, relative }),
        ]
    }

    fn apply(blob: &mut Vec<u8>, m: &Mutation) {
        match m {
            Mutation::Flip { at, mask } if !blob.is_empty() => {
                let i = at.index(blob.len());
                blob[i] ^= mask;
            }
            Mutation::Insert { at, bytes } => {
                let i = at.index(blob.len() + 1);
                blob.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove { at, len } if !blob.is_empty() => {
                let i = at.index(blob.len());
                blob.drain(i..(i + len).min(blob.len()));
            }
            Mutation::Truncate { keep } => blob.truncate(keep.index(blob.len() + 1)),
            Mutation::Field { offset: 10, value, .. } if blob.len() > 10 => blob[10] = (*value % 4) as u8,
            Mutation::Field { offset, value, relative } if blob.len() >= offset + 4 => {
                let old = u32::from_le_bytes(blob[*offset..offset + 4].try_into().unwrap());
                let new = match relative {
                    Some(d) => old.wrapping_add_signed(*d),
                    None => *value,
                };
                blob[*offset..offset + 4].copy_from_slice(&new.to_le_bytes());
            }
            _ => {}
        }
    }

    /// Makes a mutated blob pass the cheap checks it can pass: payload_len (unless the
    /// mutation is meant to leave it wrong) and the payload CRC, so the change reaches the
    /// decompressor and the digest check.
    fn fix_up(blob: &mut [u8], fix_payload_len: bool) {
        if blob.len() < HEADER_LEN {
            return;
        }
        if fix_payload_len {
            let n = (blob.len() - HEADER_LEN) as u32;
            blob[16..20].copy_from_slice(&n.to_le_bytes());
        }
        let crc = crc32fast::hash(&blob[HEADER_LEN..]);
        blob[20..24].copy_from_slice(&crc.to_le_bytes());
    }

    /// A valid encoding of `plain`, mutated by `muts`, with its checksums fixed up.
    fn mutated(plain: &[u8], muts: &[Mutation], fix_payload_len: bool) -> Vec<u8> {
        let mut blob = Vec::new();
        Encoder::new(3).unwrap().encode_into(&Digest::of(plain), plain, &mut blob).unwrap();
        for m in muts {
            apply(&mut blob, m);
        }
        fix_up(&mut blob, fix_payload_len);
        blob
    }

    /// Decodes a mutated chunk against the digest its header names, and checks what came out:
    /// an error, or exactly the original content (the digest allows nothing else), which
    /// re-encodes and decodes to itself. The output buffer never grows past the declared
    /// `plain_len` (nor past [`MAX_CHUNK_SIZE`]). Returns the error's reason, if any.
    fn decode_mutated(plain: &[u8], blob: &[u8]) -> std::result::Result<Option<String>, TestCaseError> {
        let expected = Digest(blob.get(24..56).map(|d| d.try_into().unwrap()).unwrap_or([0; 32]));
        let declared = blob.get(12..16).map(|b| u32::from_le_bytes(b.try_into().unwrap())).unwrap_or(0) as usize;
        let mut out = Vec::new();
        let r = Decoder::new().unwrap().decode_into(blob, &expected, &mut out);
        prop_assert!(
            out.capacity() <= declared.min(MAX_CHUNK_SIZE as usize).max(8),
            "the decoder allocated {} bytes; the header declares {declared}",
            out.capacity()
        );
        match r {
            Ok(()) => {
                prop_assert_eq!(out.len(), declared);
                prop_assert_eq!(Digest::of(&out), expected);
                prop_assert_eq!(&out[..], plain, "a mutated chunk decoded to other content");
                let mut again = Vec::new();
                Encoder::new(3).unwrap().encode_into(&expected, &out, &mut again).unwrap();
                let mut back = Vec::new();
                Decoder::new().unwrap().decode_into(&again, &expected, &mut back).unwrap();
                prop_assert_eq!(back, out);
                Ok(None)
            }
            Err(Error::ChunkCorrupt { reason, .. }) => Ok(Some(reason)),
            Err(e) => Err(TestCaseError::fail(format!("not a ChunkCorrupt error: {e}"))),
        }
    }

    fn mutated_case() -> impl Strategy<Value = (Vec<u8>, Vec<Mutation>, bool)> {
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            1usize..5,
            proptest::collection::vec(mutation(), 1..4),
            prop::bool::weighted(0.9),
        )
            .prop_map(|(plain, rep, muts, fix_len)| (plain.repeat(rep), muts, fix_len))
    }

    /// The mutations get past the header and checksum checks into the decompressor and the
    /// digest check often enough for the property test below to mean something.
    #[test]
    fn mutations_reach_the_payload_decoder() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        let cases = 3000;
        for _ in 0..cases {
            let (plain, muts, fix_len) = mutated_case().new_tree(&mut runner).unwrap().current();
            let blob = mutated(&plain, &muts, fix_len);
            let reason = decode_mutated(&plain, &blob).unwrap_or_else(|e| panic!("{e}: {muts:?}"));
            const KNOWN: &[&str] = &[
                "zstd",
                "decompressed to",
                "content hashes to",
                "stored chunk length mismatch",
                "payload checksum mismatch",
                "payload is",
                "header names another chunk",
                "unknown compression",
                "plain length",
                "bad magic",
                "unsupported chunk format version",
            ];
            let class = match &reason {
                None => "decoded",
                Some(r) if r.ends_with("-byte header") => "shorter than the header",
                Some(r) => KNOWN.iter().find(|k| r.starts_with(**k)).unwrap_or_else(|| panic!("unknown reason {r}")),
            };
            *reasons.entry(class.to_string()).or_default() += 1;
        }
        eprintln!("{reasons:#?}");
        let count = |k: &str| reasons.get(k).copied().unwrap_or(0);
        for deep in ["zstd", "decompressed to", "content hashes to", "stored chunk length mismatch"] {
            assert!(count(deep) >= 10, "only {} of {cases} mutations reached {deep:?}: {reasons:#?}", count(deep));
        }
        assert!(count("payload checksum mismatch") == 0, "the CRC fix-up does not work: {reasons:#?}");
    }

    proptest! {
        #[test]
        fn mutated_valid_chunks_decode_to_an_error_or_their_content((plain, muts, fix_len) in mutated_case()) {
            let blob = mutated(&plain, &muts, fix_len);
            decode_mutated(&plain, &blob)?;
        }

        #[test]
        fn roundtrip(plain in proptest::collection::vec(any::<u8>(), 0..5000), rep in 1usize..4) {
            let plain = plain.repeat(rep);
            let d = Digest::of(&plain);
            let mut blob = Vec::new();
            Encoder::new(3).unwrap().encode_into(&d, &plain, &mut blob).unwrap();
            let mut back = Vec::new();
            Decoder::new().unwrap().decode_into(&blob, &d, &mut back).unwrap();
            prop_assert_eq!(back, plain);
        }

        #[test]
        fn garbage_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            let _ = Decoder::new().unwrap().decode_into(&blob, &Digest([0; 32]), &mut out);
        }
    }
}
