//! Reading an archive: records out of blocks, strictly in order (a pipe or a tape), checking
//! every block header and record header and resynchronising after damage at the next block in
//! which a record starts; the index, from the archive's end or rebuilt by scanning; and a
//! [`ChunkSource`] over archive files for a restore with no store.

use super::format::{self, CatalogRecord, Header, Kind, BLOCK_HEADER, NO_RECORD, RECORD_HEADER};
use kura_imaging::chunk::{ChunkSource, Digest};
use kura_imaging::manifest::Manifest;
use kura_imaging::Error;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What the record reader found next.
#[derive(Debug)]
pub enum Event {
    /// A record whose header checked out. `payload_ok` is whether its payload matches the
    /// header's CRC-32 (a chunk's digest is then still to be checked by decoding it).
    Record { kind: Kind, at: u64, payload: Vec<u8>, payload_ok: bool },
    /// Damage: what was lost, where (block number), and why. Reading goes on after it.
    Damage { block: u64, reason: String },
    /// The archive ends before its catalog record.
    Truncated { reason: String },
}

enum Fill {
    Good,
    /// A good block that does not follow the previous one.
    Jump(String),
    Bad(String),
    Eof,
}

enum Step {
    Done,
    Broken(String),
    Eof,
}

/// Reads records in order from blocks read in order.
pub struct RecordReader<R: Read> {
    input: Carry<R>,
    archive_id: u64,
    block_size: u32,
    /// Data of the current block.
    data: Vec<u8>,
    /// Number of the current block, and of the next one expected.
    cur_no: u64,
    next_no: u64,
    cur_good: bool,
    cur_first: u32,
    /// The current block was loaded by the read that broke and none of it is consumed.
    fresh: bool,
    pos: usize,
    /// Whether the current block is the first one loaded (the stream starts at `pos`).
    started: bool,
    ended: bool,
    done: bool,
}

/// The input, with bytes read ahead by the first read served first.
struct Carry<R> {
    input: R,
    pending: Vec<u8>,
    at: usize,
}

impl<R: Read> Read for Carry<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.pending.len() {
            let k = (self.pending.len() - self.at).min(buf.len());
            buf[..k].copy_from_slice(&self.pending[self.at..self.at + k]);
            self.at += k;
            return Ok(k);
        }
        self.input.read(buf)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn io_error(e: io::Error) -> Error {
    Error::Store { message: format!("reading the archive: {e}"), retryable: false }
}

impl<R: Read> RecordReader<R> {
    /// Starts at the beginning of an archive: the first block tells the block size and the
    /// archive id. An input that does not start with a Kura archive block is refused.
    ///
    /// The first read asks for the largest block size: a tape drive in variable-block mode
    /// returns one whole block per read and refuses a read smaller than its block; a pipe
    /// returns what it has. Bytes read past the first block are kept for the next reads.
    pub fn new(input: R) -> Result<RecordReader<R>, Error> {
        let mut input = Carry { input, pending: Vec::new(), at: 0 };
        let mut first = vec![0u8; format::MAX_BLOCK_SIZE as usize];
        let not = |why: String| Error::Store { message: format!("not a Kura archive: {why}"), retryable: false };
        let mut n = 0;
        let mut want = BLOCK_HEADER;
        let mut header = None;
        while n < want {
            let k = loop {
                match input.input.read(&mut first[n..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r.map_err(io_error)?,
                }
            };
            if k == 0 {
                break;
            }
            n += k;
            if header.is_none() && n >= BLOCK_HEADER {
                let b = format::parse_block_header(&first[..BLOCK_HEADER]).map_err(not)?;
                if b.block_no != 0 {
                    return Err(not(format!("it starts at block {} (an archive starts at block 0)", b.block_no)));
                }
                want = b.block_size as usize;
                header = Some(b);
            }
        }
        let Some(b) = header else { return Err(not(format!("only {n} bytes"))) };
        let end = n.min(b.block_size as usize);
        input.pending = first[end..n].to_vec();
        let data = first[BLOCK_HEADER..end].to_vec();
        Ok(RecordReader {
            input,
            archive_id: b.archive_id,
            block_size: b.block_size,
            data,
            cur_no: 0,
            next_no: 1,
            cur_good: true,
            cur_first: b.first_record,
            fresh: false,
            pos: 0,
            started: true,
            ended: false,
            done: false,
        })
    }

    /// Starts at stream offset `at` of an archive whose blocks are `block_size` bytes, with
    /// `input` positioned at the start of the block holding it.
    pub fn at(input: R, archive_id: u64, block_size: u32, at: u64) -> RecordReader<R> {
        let data_size = (block_size as usize - BLOCK_HEADER) as u64;
        let block = at / data_size;
        RecordReader {
            input: Carry { input, pending: Vec::new(), at: 0 },
            archive_id,
            block_size,
            data: Vec::new(),
            cur_no: block,
            next_no: block,
            cur_good: false,
            cur_first: NO_RECORD,
            fresh: false,
            pos: (at % data_size) as usize,
            started: false,
            ended: false,
            done: false,
        }
    }

    pub fn archive_id(&self) -> u64 {
        self.archive_id
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    fn data_size(&self) -> usize {
        self.block_size as usize - BLOCK_HEADER
    }

    fn load(&mut self) -> Result<Fill, Error> {
        let mut block = vec![0u8; self.block_size as usize];
        let n = read_full(&mut self.input, &mut block).map_err(io_error)?;
        if n < block.len() {
            return Ok(Fill::Eof);
        }
        let expected = self.next_no;
        self.cur_no = expected;
        self.next_no += 1;
        self.fresh = true;
        self.pos = 0;
        self.data.clear();
        self.data.extend_from_slice(&block[BLOCK_HEADER..]);
        self.cur_first = NO_RECORD;
        self.cur_good = false;
        let h = match format::parse_block_header(&block) {
            Ok(h) => h,
            Err(why) => return Ok(Fill::Bad(why)),
        };
        if h.archive_id != self.archive_id || h.block_size != self.block_size {
            return Ok(Fill::Bad(format!("block of another archive ({})", format::archive_id_hex(h.archive_id))));
        }
        self.cur_good = true;
        self.cur_first = h.first_record;
        self.cur_no = h.block_no;
        self.next_no = h.block_no + 1;
        if h.block_no != expected {
            return Ok(Fill::Jump(format!("block {expected} expected, block {} found", h.block_no)));
        }
        Ok(Fill::Good)
    }

    fn read_stream(&mut self, out: &mut [u8]) -> Result<Step, Error> {
        let mut n = 0;
        while n < out.len() {
            if !self.started {
                // Positioned by `at`: load the first block and keep the offset.
                let pos = self.pos;
                self.started = true;
                match self.load()? {
                    Fill::Good => self.pos = pos,
                    Fill::Jump(why) | Fill::Bad(why) => return Ok(Step::Broken(why)),
                    Fill::Eof => return Ok(Step::Eof),
                }
                if self.pos > self.data.len() {
                    return Ok(Step::Broken("offset outside the block".into()));
                }
            }
            if self.pos == self.data.len() {
                match self.load()? {
                    Fill::Good => {}
                    Fill::Jump(why) | Fill::Bad(why) => return Ok(Step::Broken(why)),
                    Fill::Eof => return Ok(Step::Eof),
                }
            }
            let k = (self.data.len() - self.pos).min(out.len() - n);
            out[n..n + k].copy_from_slice(&self.data[self.pos..self.pos + k]);
            self.pos += k;
            self.fresh = false;
            n += k;
        }
        Ok(Step::Done)
    }

    /// Moves to the next record start in a good block after the damage. Returns false at EOF.
    fn resync(&mut self) -> Result<bool, Error> {
        if self.fresh && self.cur_good && self.cur_first != NO_RECORD {
            self.pos = self.cur_first as usize;
            self.fresh = false;
            return Ok(true);
        }
        loop {
            match self.load()? {
                Fill::Good | Fill::Jump(_) if self.cur_first != NO_RECORD => {
                    self.pos = self.cur_first as usize;
                    self.fresh = false;
                    return Ok(true);
                }
                Fill::Eof => return Ok(false),
                _ => {}
            }
        }
    }

    fn stream_offset(&self) -> u64 {
        self.cur_no * self.data_size() as u64 + self.pos as u64
    }

    fn truncated(&mut self) -> Option<Event> {
        self.done = true;
        Some(Event::Truncated {
            reason: format!("the archive ends after block {} before its catalog record", self.cur_no),
        })
    }

    /// The next record or report; `None` after the catalog record (or after [`Event::Truncated`]).
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        if self.done || self.ended {
            return Ok(None);
        }
        let at = self.stream_offset();
        let mut h = [0u8; RECORD_HEADER];
        match self.read_stream(&mut h)? {
            Step::Done => {}
            Step::Eof => return Ok(self.truncated()),
            Step::Broken(why) => return self.damaged(why),
        }
        let (kind, len, crc) = match format::parse_record_header(&h) {
            Ok(x) => x,
            Err(why) => {
                let block = self.cur_no;
                let reason = format!("record at stream offset {at}: {why}");
                if !self.resync()? {
                    self.done = true;
                }
                return Ok(Some(Event::Damage { block, reason }));
            }
        };
        let mut payload = vec![0u8; len as usize];
        match self.read_stream(&mut payload)? {
            Step::Done => {}
            Step::Eof => return Ok(self.truncated()),
            Step::Broken(why) => {
                return self.damaged(format!("{kind:?} record at stream offset {at} is cut: {why}"));
            }
        }
        let payload_ok = crc32fast::hash(&payload) == crc;
        if kind == Kind::End && payload_ok {
            self.ended = true;
        }
        Ok(Some(Event::Record { kind, at, payload, payload_ok }))
    }

    fn damaged(&mut self, why: String) -> Result<Option<Event>, Error> {
        let block = self.cur_no;
        if !self.resync()? {
            self.done = true;
        }
        Ok(Some(Event::Damage { block, reason: why }))
    }
}

/// Where a chunk is: which archive, at which stream offset.
#[derive(Debug, Clone, Copy)]
struct Located {
    archive: usize,
    at: u64,
}

/// The records at the front of an archive file, its index and its catalog record.
pub struct ArchiveFile {
    pub path: PathBuf,
    pub header: Option<Header>,
    /// Manifests, in archive order: (id, manifest).
    pub manifests: Vec<(String, Manifest)>,
    pub catalog: Option<CatalogRecord>,
    /// Damage and truncation met while reading the front and the index (or the scan).
    pub problems: Vec<String>,
    /// Whether the index had to be rebuilt by scanning every record.
    pub scanned: bool,
    chunks: HashMap<Digest, u64>,
    file: File,
    archive_id: u64,
    block_size: u32,
}

struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn record_manifest(payload: &[u8], manifests: &mut Vec<(String, Manifest)>, problems: &mut Vec<String>) {
    let id = Manifest::id_of(payload);
    match Manifest::decode(payload) {
        Ok(m) => manifests.push((id, m)),
        Err(e) => problems.push(format!("a manifest record is damaged: {e}")),
    }
}

impl ArchiveFile {
    /// Opens an archive file: reads its header and manifests, then its index from its end; an
    /// archive whose end is missing or damaged is scanned record by record instead.
    pub fn open(path: &Path) -> Result<ArchiveFile, Error> {
        let file = File::open(path)
            .map_err(|e| Error::Store { message: format!("opening {}: {e}", path.display()), retryable: false })?;
        let mut r = RecordReader::new(At { file: &file, pos: 0 })?;
        let (archive_id, block_size) = (r.archive_id(), r.block_size());
        let mut a = ArchiveFile {
            path: path.to_path_buf(),
            header: None,
            manifests: Vec::new(),
            catalog: None,
            problems: Vec::new(),
            scanned: false,
            chunks: HashMap::new(),
            file: file.try_clone().map_err(io_error)?,
            archive_id,
            block_size,
        };
        // The front: header and manifests, up to the first pack.
        while let Some(ev) = r.next_event()? {
            match ev {
                Event::Record { kind: Kind::Header, payload, payload_ok: true, .. } => {
                    a.header = serde_json::from_slice(&payload).ok();
                }
                Event::Record { kind: Kind::Manifest, payload, .. } => {
                    record_manifest(&payload, &mut a.manifests, &mut a.problems)
                }
                Event::Record { kind: Kind::Header, .. } => a.problems.push("the header record is damaged".into()),
                Event::Record { .. } => break,
                Event::Damage { block, reason } => a.problems.push(format!("block {block}: {reason}")),
                Event::Truncated { reason } => {
                    a.problems.push(reason);
                    break;
                }
            }
        }
        drop(r);
        if !a.read_tail()? {
            a.scan()?;
        }
        Ok(a)
    }

    /// The index and the catalog record from the end; false if the end is not there or not sound.
    fn read_tail(&mut self) -> Result<bool, Error> {
        let len = self.file.metadata().map_err(io_error)?.len();
        let bs = self.block_size as u64;
        if len < bs || !len.is_multiple_of(bs) {
            return Ok(false);
        }
        let mut last = vec![0u8; bs as usize];
        self.file.read_exact_at(&mut last, len - bs).map_err(io_error)?;
        match format::parse_block_header(&last) {
            Ok(h) if h.archive_id == self.archive_id && h.block_no == len / bs - 1 => {}
            _ => return Ok(false),
        }
        if last[last.len() - 8..] != format::END_MAGIC {
            return Ok(false);
        }
        let index_start = u64::from_le_bytes(last[last.len() - 16..last.len() - 8].try_into().expect("8 bytes"));
        let data_size = bs - BLOCK_HEADER as u64;
        let block = index_start / data_size;
        if block * bs >= len {
            return Ok(false);
        }
        let mut r =
            RecordReader::at(At { file: &self.file, pos: block * bs }, self.archive_id, self.block_size, index_start);
        let mut chunks = HashMap::new();
        while let Some(ev) = r.next_event()? {
            match ev {
                Event::Record { kind: Kind::Index, payload, payload_ok: true, .. }
                    if payload.len().is_multiple_of(format::INDEX_ENTRY) =>
                {
                    for e in payload.chunks_exact(format::INDEX_ENTRY) {
                        let d = Digest(e[..32].try_into().expect("32 bytes"));
                        chunks.insert(d, u64::from_le_bytes(e[32..].try_into().expect("8 bytes")));
                    }
                }
                Event::Record { kind: Kind::End, payload, payload_ok: true, .. } => {
                    match serde_json::from_slice::<CatalogRecord>(&payload) {
                        Ok(c) if c.chunks == chunks.len() as u64 => {
                            self.catalog = Some(c);
                            self.chunks = chunks;
                            return Ok(true);
                        }
                        _ => return Ok(false),
                    }
                }
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Rebuilds the index by reading every record from the start.
    fn scan(&mut self) -> Result<(), Error> {
        self.scanned = true;
        let mut r = RecordReader::new(At { file: &self.file, pos: 0 })?;
        let mut problems = Vec::new();
        while let Some(ev) = r.next_event()? {
            match ev {
                Event::Record { kind: Kind::Chunk, at, payload, .. } => {
                    // The claim is checked when the chunk is read (header digest, CRC, SHA-256).
                    if let Some(d) = format::claimed_digest(&payload) {
                        self.chunks.entry(d).or_insert(at);
                    }
                }
                Event::Record { kind: Kind::End, payload, payload_ok: true, .. } => {
                    self.catalog = serde_json::from_slice(&payload).ok();
                }
                Event::Record { .. } => {}
                Event::Damage { block, reason } => problems.push(format!("block {block}: {reason}")),
                Event::Truncated { reason } => problems.push(reason),
            }
        }
        // The front's problems were already listed; keep the ones past it.
        for p in problems {
            if !self.problems.contains(&p) {
                self.problems.push(p);
            }
        }
        Ok(())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.chunks.contains_key(d)
    }

    /// The digests of the chunks this archive carries (its index).
    pub fn digests(&self) -> impl Iterator<Item = Digest> + '_ {
        self.chunks.keys().copied()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The chunk record's payload at `at`, checked against its CRC-32 and claimed digest.
    fn read_chunk(&self, d: &Digest, at: u64) -> Result<Vec<u8>, Error> {
        let bs = self.block_size as u64;
        let block = at / (bs - BLOCK_HEADER as u64);
        let mut r = RecordReader::at(At { file: &self.file, pos: block * bs }, self.archive_id, self.block_size, at);
        let corrupt = |reason: String| Error::ChunkCorrupt {
            digest: d.to_hex(),
            reason: format!("{reason} (in {})", self.path.display()),
        };
        match r.next_event()? {
            Some(Event::Record { kind: Kind::Chunk, payload, payload_ok, .. }) => {
                if !payload_ok {
                    return Err(corrupt("archive record checksum mismatch".into()));
                }
                if format::claimed_digest(&payload).as_ref() != Some(d) {
                    return Err(corrupt("the archive's record holds another chunk".into()));
                }
                Ok(payload)
            }
            Some(Event::Damage { reason, .. }) | Some(Event::Truncated { reason }) => Err(corrupt(reason)),
            _ => Err(corrupt("no chunk record where the index points".into())),
        }
    }
}

/// Chunks from one or more archive files (a full export and its incrementals).
pub struct ArchiveSource {
    pub archives: Vec<ArchiveFile>,
    located: HashMap<Digest, Located>,
}

impl ArchiveSource {
    pub fn new(archives: Vec<ArchiveFile>) -> ArchiveSource {
        let mut located = HashMap::new();
        for (i, a) in archives.iter().enumerate() {
            for (d, at) in &a.chunks {
                located.entry(*d).or_insert(Located { archive: i, at: *at });
            }
        }
        ArchiveSource { archives, located }
    }

    /// A snapshot's manifest by id or unique prefix, from any of the archives.
    pub fn find(&self, id_or_prefix: &str) -> Result<(String, &Manifest), Error> {
        let mut found: Vec<(&String, &Manifest)> = Vec::new();
        for a in &self.archives {
            for (id, m) in &a.manifests {
                if id.starts_with(id_or_prefix) && !found.iter().any(|(f, _)| *f == id) {
                    found.push((id, m));
                }
            }
        }
        match found.as_slice() {
            [(id, m)] if !id_or_prefix.is_empty() => Ok(((*id).clone(), m)),
            [] | [_] => {
                let listed = self
                    .archives
                    .iter()
                    .filter_map(|a| a.header.as_ref())
                    .any(|h| h.snapshots.iter().any(|s| s.id.starts_with(id_or_prefix)));
                let why = if listed { " (the archive lists it, but its manifest is damaged)" } else { "" };
                Err(Error::Store {
                    message: format!("no snapshot {id_or_prefix:?} in the archive{why}"),
                    retryable: false,
                })
            }
            _ => Err(Error::Store {
                message: format!("snapshot id {id_or_prefix:?} is ambiguous ({} matches)", found.len()),
                retryable: false,
            }),
        }
    }
}

impl ChunkSource for ArchiveSource {
    fn get_chunk(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        match self.located.get(digest) {
            Some(l) => self.archives[l.archive].read_chunk(digest, l.at),
            None => Err(Error::ChunkMissing { digest: digest.to_hex() }),
        }
    }
}
