//! Looking inside a Kura chunk store from the outside, by its documented layout:
//! chunks are files `DIR/chunks/<first 4 hex of digest>/<64-hex digest>` (the digest being the
//! sha256 of the chunk's plain bytes), each a 64-byte header followed by the payload, zstd
//! compressed or stored as is.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const CHUNK_HEADER_LEN: u64 = 64;

#[derive(Clone, Debug)]
pub struct ChunkFile {
    pub digest: String,
    pub path: PathBuf,
    pub len: u64,
}

/// Every chunk file in the store, checking that each sits where its name says it should.
pub fn chunk_files(store: &Path) -> Vec<ChunkFile> {
    let root = store.join("chunks");
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(&root) else { return out };
    for shard in shards {
        let shard = shard.unwrap();
        if !shard.file_type().unwrap().is_dir() {
            continue;
        }
        let prefix = shard.file_name().to_string_lossy().into_owned();
        for f in fs::read_dir(shard.path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue; // temporary files of an interrupted write, say
            }
            assert_eq!(&name[..4], prefix, "chunk {name} is in shard {prefix}");
            out.push(ChunkFile { digest: name, path: f.path(), len: f.metadata().unwrap().len() });
        }
    }
    out.sort_by(|a, b| a.digest.cmp(&b.digest));
    out
}

/// Total size of the chunk files: what the store holds on disk.
pub fn stored_bytes(store: &Path) -> u64 {
    chunk_files(store).iter().map(|c| c.len).sum()
}

/// The plain bytes a chunk file holds, checked against its header and its name.
///
/// Header (64 bytes, `docs/chunk.md`): magic = first 8 bytes of sha256("Kura chunk v1"),
/// version u16 LE = 1, compression u8 (0 stored, 1 zstd), reserved u8, plain_len u32 LE,
/// payload_len u32 LE, payload CRC-32 u32 LE, sha256 of the plain bytes (32), reserved (8).
pub fn decode_chunk(chunk: &ChunkFile) -> Vec<u8> {
    let raw = fs::read(&chunk.path).unwrap();
    let name = &chunk.digest;
    assert!(raw.len() as u64 >= CHUNK_HEADER_LEN, "chunk {name} is shorter than its header");
    let (h, payload) = raw.split_at(CHUNK_HEADER_LEN as usize);
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
    assert_eq!(h[..8], Sha256::digest(b"Kura chunk v1")[..8], "chunk {name}: bad magic");
    assert_eq!(u16::from_le_bytes([h[8], h[9]]), 1, "chunk {name}: version");
    assert_eq!(u32_at(16) as usize, payload.len(), "chunk {name}: payload_len");
    assert_eq!(u32_at(20), crc32fast::hash(payload), "chunk {name}: payload CRC");
    assert_eq!(hex::encode(&h[24..56]), *name, "chunk {name}: header digest");
    let plain = match h[10] {
        0 => payload.to_vec(),
        1 => zstd::decode_all(payload).unwrap_or_else(|e| panic!("chunk {name}: zstd payload: {e}")),
        c => panic!("chunk {name}: unknown compression {c}"),
    };
    assert_eq!(plain.len(), u32_at(12) as usize, "chunk {name}: plain_len");
    assert_eq!(hex::encode(Sha256::digest(&plain)), *name, "chunk {name}: content does not match its digest");
    plain
}

/// Which 512-byte sectors of `needles` appear (sector-aligned) in any chunk of the store.
/// Returns (chunk digest, offset in chunk) of the first few hits.
pub fn find_sectors(store: &Path, needles: &[&[u8]]) -> Vec<(String, usize)> {
    let key = |s: &[u8]| -> [u8; 32] { s[..32].try_into().unwrap() };
    let mut wanted = HashSet::new();
    for n in needles {
        for s in n.chunks_exact(512) {
            // All-zero or repeated sectors would match legitimately elsewhere.
            if s.iter().any(|&b| b != s[0]) {
                wanted.insert(key(s));
            }
        }
    }
    let mut hits = Vec::new();
    for chunk in chunk_files(store) {
        let data = decode_chunk(&chunk);
        for (i, s) in data.chunks_exact(512).enumerate() {
            if wanted.contains(&key(s)) {
                hits.push((chunk.digest.clone(), i * 512));
                if hits.len() >= 10 {
                    return hits;
                }
            }
        }
    }
    hits
}
