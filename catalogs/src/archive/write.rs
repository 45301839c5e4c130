//! Writing an archive: the block writer (records packed into fixed-size blocks, each written
//! with one `write`, never a seek) and [`export`], which selects snapshots of a store and
//! writes them with the chunks a previous export does not already hold.

use super::format::{self, CatalogRecord, Header, Kind, Pack, SnapshotEntry};
use crate::store::LocalStore;
use kura_imaging::chunk::{ChunkSource, Decoder, Digest};
use kura_imaging::manifest::Manifest;
use kura_imaging::Error;
use std::collections::HashSet;
use std::io::{self, Write};

/// Packs records into blocks of `block_size` bytes and writes each full block at once.
pub struct BlockWriter<W: Write> {
    out: W,
    archive_id: u64,
    block_size: u32,
    block_no: u64,
    /// The current block, header space included.
    block: Vec<u8>,
    first_record: u32,
    /// Stream offset (data bytes before the current position).
    pos: u64,
}

impl<W: Write> BlockWriter<W> {
    pub fn new(out: W, archive_id: u64, block_size: u32) -> BlockWriter<W> {
        assert!(format::valid_block_size(block_size), "block size {block_size}");
        let mut block = Vec::with_capacity(block_size as usize);
        block.resize(format::BLOCK_HEADER, 0);
        BlockWriter { out, archive_id, block_size, block_no: 0, block, first_record: format::NO_RECORD, pos: 0 }
    }

    fn data_size(&self) -> usize {
        self.block_size as usize - format::BLOCK_HEADER
    }

    /// Writes one record; returns its stream offset.
    pub fn record(&mut self, kind: Kind, payload: &[u8]) -> io::Result<u64> {
        let at = self.pos;
        if self.first_record == format::NO_RECORD {
            self.first_record = (self.block.len() - format::BLOCK_HEADER) as u32;
        }
        self.append(&format::record_header(kind, payload))?;
        self.append(payload)?;
        Ok(at)
    }

    fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = self.block_size as usize - self.block.len();
            let n = room.min(bytes.len());
            self.block.extend_from_slice(&bytes[..n]);
            self.pos += n as u64;
            bytes = &bytes[n..];
            if self.block.len() == self.block_size as usize {
                self.emit()?;
            }
        }
        Ok(())
    }

    fn emit(&mut self) -> io::Result<()> {
        self.block.resize(self.block_size as usize, 0);
        let h = format::block_header(self.archive_id, self.block_no, self.block_size, self.first_record);
        self.block[..format::BLOCK_HEADER].copy_from_slice(&h);
        self.out.write_all(&self.block)?;
        self.block.truncate(format::BLOCK_HEADER);
        self.block_no += 1;
        self.first_record = format::NO_RECORD;
        Ok(())
    }

    /// Pads the last block with zeros, ends it with the trailer (`index_start`, end magic) and
    /// flushes. Returns the writer and the number of blocks written.
    pub fn finish(mut self, index_start: u64) -> io::Result<(W, u64)> {
        let used = self.block.len() - format::BLOCK_HEADER;
        if used + format::TRAILER > self.data_size() {
            self.emit()?;
        }
        self.block.resize(self.block_size as usize - format::TRAILER, 0);
        self.block.extend_from_slice(&index_start.to_le_bytes());
        self.block.extend_from_slice(&format::END_MAGIC);
        self.emit()?;
        self.out.flush()?;
        Ok((self.out, self.block_no))
    }
}

/// `--since`: a time (unix seconds) or a snapshot (its creation time is the cutoff).
#[derive(Debug, Clone)]
pub enum Since {
    Time(i64),
    Snapshot(String),
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Only these hosts' snapshots (None: all).
    pub hosts: Option<Vec<String>>,
    /// Only snapshots created after this; the chunks of the (selected hosts') snapshots created
    /// up to it are taken to be in a previous export and left out.
    pub since: Option<(Since, String)>,
    /// The catalog record of the previous export: its covered snapshots and their chunks are
    /// left out.
    pub base: Option<CatalogRecord>,
    /// Digests the base archive itself carries (its index), also left out.
    pub base_digests: HashSet<Digest>,
    pub block_size: u32,
    /// Fixed archive id and creation time (golden tests); random and now otherwise.
    pub archive_id: Option<u64>,
    pub created: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            hosts: None,
            since: None,
            base: None,
            base_digests: HashSet::new(),
            block_size: format::DEFAULT_BLOCK_SIZE,
            archive_id: None,
            created: None,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub archive_id: String,
    pub snapshots: Vec<SnapshotEntry>,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub blocks: u64,
    pub bytes: u64,
}

fn io_err(what: &str, e: io::Error) -> Error {
    Error::Store { message: format!("writing the archive ({what}): {e}"), retryable: false }
}

/// Writes an archive of the selected snapshots of `store` to `out`: header, manifests, one pack
/// per snapshot (the chunks it is the first to need, each read and fully verified), index,
/// catalog record. Reads the store only (its files are never rewritten, so a running engine
/// may keep capturing; a snapshot committed meanwhile is not part of this export).
pub fn export<W: Write>(
    store: &LocalStore,
    opts: &ExportOptions,
    out: W,
    progress: &dyn kura_imaging::progress::Progress,
) -> Result<(W, ExportReport), Error> {
    let all = store.list()?;
    let host_ok = |h: &Option<String>| match &opts.hosts {
        None => true,
        Some(hosts) => h.as_ref().is_some_and(|h| hosts.contains(h)),
    };
    // (unix seconds, the snapshot's own time stamp): snapshots of the same second are ordered
    // by their full time stamps (RFC 3339 with nanoseconds, as the store writes them).
    let cutoff: Option<(i64, Option<String>)> = match &opts.since {
        None => None,
        Some((Since::Time(t), _)) => Some((*t, None)),
        Some((Since::Snapshot(s), _)) => {
            let m = store.load_manifest(&store.resolve(s)?)?;
            Some((m.created_unix()?, Some(m.created.clone())))
        }
    };
    let covered: HashSet<&str> =
        opts.base.as_ref().map(|b| b.covered.iter().map(String::as_str).collect()).unwrap_or_default();
    let mut skip: HashSet<Digest> = opts.base_digests.clone();
    let mut selected: Vec<(String, Vec<u8>, Manifest)> = Vec::new();
    for info in &all {
        if !host_ok(&info.host) {
            continue;
        }
        let bytes = store.manifest_bytes(&info.id)?;
        let m = Manifest::decode(&bytes).map_err(|e| Error::Manifest(format!("snapshot {}: {e}", info.id)))?;
        let before_cutoff = match &cutoff {
            Some((c, stamp)) => {
                let t = m.created_unix()?;
                t < *c || (t == *c && stamp.as_ref().is_none_or(|s| m.created.as_str() <= s.as_str()))
            }
            None => false,
        };
        if before_cutoff || covered.contains(info.id.as_str()) {
            skip.extend(m.unique_digests());
        } else {
            selected.push((info.id.clone(), bytes, m));
        }
    }
    // Oldest first (store.list's order): a truncated archive loses the newest snapshots first.
    let mut seen = skip;
    let mut entries = Vec::new();
    let mut packs: Vec<Vec<Digest>> = Vec::new();
    for (id, _, m) in &selected {
        let unique = m.unique_digests();
        let new: Vec<Digest> = unique.iter().filter(|d| seen.insert(**d)).copied().collect();
        entries.push(SnapshotEntry {
            id: id.clone(),
            host: m.host.clone(),
            name: m.name.clone(),
            created: m.created.clone(),
            disk_size: m.disk_size(),
            chunks: unique.len() as u64,
            new_chunks: new.len() as u64,
        });
        packs.push(new);
    }
    let archive_id = opts.archive_id.unwrap_or_else(random_id);
    let created =
        opts.created.clone().unwrap_or_else(|| kura_imaging::time::format_rfc3339_nanos(std::time::SystemTime::now()));
    let header = Header {
        kind: "kura-archive".into(),
        format: format::FORMAT,
        archive_id: format::archive_id_hex(archive_id),
        created: created.clone(),
        block_size: opts.block_size,
        hosts: opts.hosts.clone(),
        since: opts.since.as_ref().map(|(_, s)| s.clone()),
        base: opts.base.as_ref().map(|b| b.archive_id.clone()),
        snapshots: entries.clone(),
    };
    let mut w = BlockWriter::new(out, archive_id, opts.block_size);
    w.record(Kind::Header, &json(&header)).map_err(|e| io_err("header", e))?;
    for (_, bytes, _) in &selected {
        w.record(Kind::Manifest, bytes).map_err(|e| io_err("manifest", e))?;
    }
    progress.set_total(packs.iter().map(|p| p.len() as u64).sum());
    let mut index: Vec<(Digest, u64)> = Vec::new();
    let mut chunk_bytes = 0u64;
    let mut dec = Decoder::new()?;
    let mut plain = Vec::new();
    for ((id, _, _), pack) in selected.iter().zip(&packs) {
        let p = Pack { snapshot: id.clone(), chunks: pack.len() as u64 };
        w.record(Kind::Pack, &json(&p)).map_err(|e| io_err("pack", e))?;
        for d in pack {
            let blob = store.get_chunk(d).map_err(|e| named(e, d, id))?;
            dec.decode_into(&blob, d, &mut plain).map_err(|e| named(e, d, id))?;
            let at = w.record(Kind::Chunk, &blob).map_err(|e| io_err("chunk", e))?;
            index.push((*d, at));
            chunk_bytes += blob.len() as u64;
            progress.advance(1);
        }
    }
    let mut index_start = None;
    for part in index.chunks(format::INDEX_PER_RECORD) {
        let mut buf = Vec::with_capacity(part.len() * format::INDEX_ENTRY);
        for (d, at) in part {
            buf.extend_from_slice(&d.0);
            buf.extend_from_slice(&at.to_le_bytes());
        }
        let at = w.record(Kind::Index, &buf).map_err(|e| io_err("index", e))?;
        index_start.get_or_insert(at);
    }
    let mut all_covered: Vec<String> = opts.base.as_ref().map(|b| b.covered.clone()).unwrap_or_default();
    all_covered.extend(entries.iter().map(|e| e.id.clone()));
    all_covered.sort();
    all_covered.dedup();
    let index_start = index_start.unwrap_or(w.pos);
    let catalog = CatalogRecord {
        archive_id: header.archive_id.clone(),
        created,
        base: header.base.clone(),
        snapshots: entries.clone(),
        covered: all_covered,
        chunks: index.len() as u64,
        chunk_bytes,
        index_start,
    };
    w.record(Kind::End, &json(&catalog)).map_err(|e| io_err("catalog record", e))?;
    let block_size = opts.block_size as u64;
    let (out, blocks) = w.finish(index_start).map_err(|e| io_err("last block", e))?;
    let report = ExportReport {
        archive_id: header.archive_id,
        snapshots: entries,
        chunks: index.len() as u64,
        chunk_bytes,
        blocks,
        bytes: blocks * block_size,
    };
    Ok((out, report))
}

/// A store read error during an export, naming the chunk and a snapshot that needs it.
fn named(e: Error, d: &Digest, snapshot: &str) -> Error {
    let why = match e {
        Error::ChunkCorrupt { reason, .. } => reason,
        Error::ChunkMissing { .. } => "missing from the store".into(),
        other => other.to_string(),
    };
    Error::Store {
        message: format!(
            "chunk {d} of snapshot {snapshot} cannot be exported: {why} (run `kura verify`; nothing was left out silently)"
        ),
        retryable: false,
    }
}

fn random_id() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the system's random source");
    u64::from_le_bytes(b)
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}
