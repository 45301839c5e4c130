//! Looking inside a Kura chunk store from the outside, by its documented layout:
//! chunks are files `DIR/chunks/<first 4 hex of digest>/<64-hex digest>`, each a 64-byte header
//! followed by a zstd frame of the chunk's bytes.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

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

/// The bytes a chunk file holds (its zstd payload, decompressed).
pub fn decode_chunk(chunk: &ChunkFile) -> Vec<u8> {
    let raw = fs::read(&chunk.path).unwrap();
    assert!(raw.len() as u64 >= CHUNK_HEADER_LEN, "chunk {} is shorter than its header", chunk.digest);
    zstd::decode_all(&raw[CHUNK_HEADER_LEN as usize..])
        .unwrap_or_else(|e| panic!("chunk {} payload is not zstd: {e}", chunk.digest))
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
