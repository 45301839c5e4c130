//! btrfs, read-only, by Kura's own decoder (no crate reads btrfs): single-device filesystems.
//!
//! The superblock and chunk items are decoded by the capture's allocation-map parser
//! ([`kura_imaging::fs::btrfs`]); from there: logical addresses through the chunk tree (single
//! and DUP: the first stripe), the root tree, and the tree of the default subvolume (the
//! `default` entry of the root tree's directory, else the top-level tree), which is the root
//! `kura files` shows, as a mount without `subvol=` does. Directories list their `DIR_INDEX`
//! items in index order; a name is found through its `DIR_ITEM` hash. A subvolume or snapshot
//! inside a directory is a directory (its tree's top directory); one whose `ROOT_REF` does not
//! name that directory (a subvolume nested in the source of a snapshot) is the empty directory
//! the kernel shows for it. File data: inline, regular and preallocated extents, holes (explicit
//! or, with `no-holes`, gaps) and preallocated ranges read as zeros, zlib and zstd compression;
//! LZO extents give a clear error (no well-kept pure-Rust LZO decoder). Data checksums are not
//! verified; a log tree (changes fsynced after the last commit) is not replayed.
//!
//! Bounds: every tree block read is checked (crc32c, its address, fsid and level, item and key
//! pointers inside the block, keys in order) before use; tree levels are at most
//! [`map::MAX_LEVEL`]; one search visits at most as many blocks as the partition holds;
//! compressed extents inflate to at most the 128 KiB btrfs writes; a symlink target is at most
//! 4 KiB; directories and files are read in batches of items, never whole.

use super::partition::PartitionReader;
use super::{show_path, Entry, FsPath, FsReader, Kind, Mtime};
use anyhow::{anyhow, bail, Context, Result};
use kura_imaging::fs::btrfs::{self as map, Chunk, Geometry};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

const INODE_ITEM: u8 = 1;
const DIR_ITEM: u8 = 84;
const DIR_INDEX: u8 = 96;
const EXTENT_DATA: u8 = 108;
const ROOT_REF: u8 = 156;

const ROOT_TREE: u64 = 1;
const CHUNK_TREE: u64 = 3;
const FS_TREE: u64 = 5;
/// The root tree's directory, holding the `default` subvolume entry.
const ROOT_TREE_DIR: u64 = 6;

/// Bytes of a tree block header, of a leaf item and of a node's key pointer.
const HEADER: usize = 101;
const ITEM: usize = 25;
const KEY_PTR: usize = 33;
/// Most bytes a compressed extent holds or inflates to (btrfs writes at most 128 KiB).
const MAX_COMPRESSED: u64 = 128 << 10;
const MAX_SYMLINK: u64 = 4096;
/// Tree blocks kept in memory (at most 64 KiB each).
const CACHE_BLOCKS: usize = 256;
/// Items read from a tree per batch (directory entries, file extents).
const BATCH: usize = 1024;

type Key = (u64, u8, u64);

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn key_at(b: &[u8], at: usize) -> Key {
    (le64(b, at), b[at + 8], le64(b, at + 9))
}

/// CRC-32C without the final inversion, from `seed`: btrfs hashes names with seed `!1`.
fn crc32c_raw(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    crc
}

/// The `DIR_ITEM` key offset of a name.
fn name_hash(name: &[u8]) -> u64 {
    crc32c_raw(!1, name) as u64
}

/// One B-tree: its id (for messages and `ROOT_REF`s), root block and level.
#[derive(Debug, Clone, Copy)]
struct Tree {
    id: u64,
    bytenr: u64,
    level: u8,
}

/// Where an entry lives.
#[derive(Debug, Clone, Copy)]
enum Loc {
    Inode(Tree, u64),
    /// A subvolume seen in a snapshot of its parent: an empty directory.
    EmptySubvol,
}

/// A directory item: where it points, and its name.
struct DirEntry {
    location: Key,
    name: Vec<u8>,
}

/// The directory items packed in one `DIR_ITEM` / `DIR_INDEX` item.
fn dir_entries(data: &[u8]) -> Result<Vec<DirEntry>> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let h = data.get(at..at + 30).ok_or_else(|| anyhow!("directory item cut short"))?;
        let (data_len, name_len) = (le16(h, 25) as usize, le16(h, 27) as usize);
        let end = at + 30 + name_len + data_len;
        if end > data.len() || name_len == 0 {
            bail!("directory item of {} bytes claims a {name_len} byte name and {data_len} bytes of data", data.len());
        }
        v.push(DirEntry { location: key_at(h, 0), name: data[at + 30..at + 30 + name_len].to_vec() });
        at = end;
    }
    Ok(v)
}

/// The fields of an `INODE_ITEM` shown here.
struct Inode {
    size: u64,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Mtime,
}

fn inode_item(d: &[u8]) -> Result<Inode> {
    if d.len() < 160 {
        bail!("inode item of {} bytes is cut short", d.len());
    }
    Ok(Inode {
        size: le64(d, 16),
        uid: le32(d, 44),
        gid: le32(d, 48),
        mode: le32(d, 52),
        mtime: Mtime { secs: le64(d, 136) as i64, nanos: le32(d, 144).min(999_999_999) },
    })
}

fn entry(name: String, loc: &Loc, inode: Option<&Inode>) -> Entry {
    let Some(i) = inode else {
        debug_assert!(matches!(loc, Loc::EmptySubvol));
        return Entry {
            name,
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            uid: Some(0),
            gid: Some(0),
            mtime: None,
            streams: Vec::new(),
        };
    };
    let kind = match i.mode & 0o170000 {
        0o100000 => Kind::File,
        0o040000 => Kind::Dir,
        0o120000 => Kind::Symlink,
        _ => Kind::Special,
    };
    Entry {
        name,
        kind,
        size: i.size,
        mode: i.mode & 0o7777,
        uid: Some(i.uid),
        gid: Some(i.gid),
        mtime: Some(i.mtime),
        streams: Vec::new(),
    }
}

/// One `EXTENT_DATA` item.
enum Extent {
    Inline { compression: u8, ram: u64, data: Vec<u8> },
    Regular { compression: u8, disk: u64, disk_len: u64, offset: u64, len: u64, ram: u64 },
    Prealloc { len: u64 },
}

impl Extent {
    fn parse(d: &[u8]) -> Result<Extent> {
        if d.len() < 21 {
            bail!("file extent item of {} bytes is cut short", d.len());
        }
        let (ram, compression, ty) = (le64(d, 8), d[16], d[20]);
        if d[17] != 0 || le16(d, 18) != 0 {
            bail!("file extent is encrypted or encoded ({}, {}): not readable", d[17], le16(d, 18));
        }
        if ty == 0 {
            return Ok(Extent::Inline { compression, ram, data: d[21..].to_vec() });
        }
        if d.len() < 53 {
            bail!("file extent item of {} bytes is cut short", d.len());
        }
        let (disk, disk_len, offset, len) = (le64(d, 21), le64(d, 29), le64(d, 37), le64(d, 45));
        match ty {
            1 => Ok(Extent::Regular { compression, disk, disk_len, offset, len, ram }),
            2 => Ok(Extent::Prealloc { len }),
            t => bail!("file extent of unknown type {t}"),
        }
    }

    /// Bytes of the file it covers.
    fn len(&self) -> u64 {
        match self {
            Extent::Inline { ram, .. } => *ram,
            Extent::Regular { len, .. } | Extent::Prealloc { len } => *len,
        }
    }
}

/// Inflates a zlib or zstd extent to exactly `ram` bytes (a shorter stream is padded with zeros,
/// as the kernel does; a longer one is cut).
fn decompress(compression: u8, src: &[u8], ram: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
    if ram > MAX_COMPRESSED {
        bail!("{}: compressed extent inflates to {ram} bytes, more than btrfs writes ({MAX_COMPRESSED})", what());
    }
    let mut out = Vec::with_capacity(ram as usize);
    match compression {
        1 => flate2::read::ZlibDecoder::new(src).take(ram).read_to_end(&mut out),
        2 => bail!("LZO-compressed extent at {} is not readable (Kura has no LZO decoder)", what()),
        3 => {
            zstd::stream::read::Decoder::with_buffer(src).and_then(|d| d.single_frame().take(ram).read_to_end(&mut out))
        }
        c => bail!("{}: unknown compression type {c}", what()),
    }
    .with_context(|| format!("{}: decompressing", what()))?;
    out.resize(ram as usize, 0);
    Ok(out)
}

/// Writes `n` zero bytes.
fn zeros(out: &mut dyn Write, mut n: u64) -> Result<()> {
    static Z: [u8; 65536] = [0; 65536];
    while n > 0 {
        let k = n.min(Z.len() as u64) as usize;
        out.write_all(&Z[..k])?;
        n -= k as u64;
    }
    Ok(())
}

pub struct BtrfsReader {
    part: PartitionReader,
    g: Geometry,
    /// Sorted, non-overlapping (the system chunks only while the chunk tree is read).
    chunks: Vec<Chunk>,
    root_tree: Tree,
    /// The default subvolume's tree and top directory.
    top: (Tree, u64),
    cache: HashMap<u64, Arc<Vec<u8>>>,
    /// Most blocks one search may visit.
    max_blocks: u64,
}

impl BtrfsReader {
    pub fn open(mut part: PartitionReader) -> Result<BtrfsReader> {
        let part_size = part.seek(SeekFrom::End(0))?;
        let mut sb = vec![0u8; map::SUPER_SIZE];
        part.read_exact_at(map::SUPER_OFFSET, &mut sb).context("reading the superblock")?;
        let devices = le64(&sb, 0x88);
        if devices != 1 {
            bail!("the filesystem spans {devices} devices: only single-device btrfs is readable");
        }
        let (g, mut sys) = map::superblock(&sb, part_size).map_err(|e| anyhow!("superblock: {e}"))?;
        map::check_chunks(&mut sys, part_size).map_err(|e| anyhow!("superblock's system chunks: {e}"))?;
        if g.log_root != 0 {
            eprintln!("warning: btrfs: a log tree holds changes fsynced after the last commit; they are not shown");
        }
        let max_blocks = part_size / g.nodesize + 1;
        let chunk_tree = Tree { id: CHUNK_TREE, bytenr: g.chunk_root, level: g.chunk_root_level };
        let root_tree = Tree { id: ROOT_TREE, bytenr: g.root, level: g.root_level };
        let mut r =
            BtrfsReader { part, g, chunks: sys, root_tree, top: (root_tree, 0), cache: HashMap::new(), max_blocks };

        let mut chunks = Vec::new();
        let max_chunks = part_size / (1 << 20) + 16;
        r.scan(chunk_tree, (0, 0, 0), (u64::MAX, u8::MAX, u64::MAX), &mut |k, d| {
            if k.1 == map::CHUNK_ITEM {
                if chunks.len() as u64 >= max_chunks {
                    bail!("the chunk tree holds more chunks than the device can");
                }
                chunks.push(map::chunk_item(k.2, d).map_err(|e| anyhow!("chunk tree: {e}"))?.0);
            }
            Ok(true)
        })
        .context("reading the chunk tree")?;
        map::check_chunks(&mut chunks, part_size).map_err(|e| anyhow!("chunk tree: {e}"))?;
        for c in &chunks {
            let stripes = if c.flags & map::BG_DUP != 0 { 2 } else { 1 };
            if c.flags & map::BG_MULTI_DEVICE != 0 || c.stripes.len() != stripes {
                bail!(
                    "chunk at {} has profile {:#x} with {} stripes: only single and DUP are readable",
                    c.logical,
                    c.flags,
                    c.stripes.len()
                );
            }
        }
        r.chunks = chunks;
        r.cache.clear();

        // The default subvolume: the `default` entry of the root tree's directory.
        let mut default = FS_TREE;
        let name = b"default";
        let hash = name_hash(name);
        let mut found = Vec::new();
        r.scan(root_tree, (ROOT_TREE_DIR, DIR_ITEM, hash), (ROOT_TREE_DIR, DIR_ITEM, hash), &mut |_, d| {
            found.extend(dir_entries(d)?);
            Ok(true)
        })
        .context("reading the default subvolume entry")?;
        if let Some(e) = found.iter().find(|e| e.name == name) {
            default = e.location.0;
        }
        r.top = r.subvolume(default).with_context(|| format!("opening the default subvolume {default}"))?;
        Ok(r)
    }

    /// Fills `buf` from logical address `logical` (the first stripe of each chunk).
    fn read_logical(&self, logical: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = logical + done as u64;
            let c = map::find_chunk(&self.chunks, at).ok_or_else(|| anyhow!("no chunk maps logical address {at}"))?;
            let n = (c.logical + c.length - at).min((buf.len() - done) as u64) as usize;
            self.part
                .read_exact_at(c.stripes[0] + (at - c.logical), &mut buf[done..done + n])
                .with_context(|| format!("reading logical address {at}"))?;
            done += n;
        }
        Ok(())
    }

    /// The tree block at `bytenr`, checked: checksum, header, items inside the block, keys in
    /// order.
    fn block(&mut self, bytenr: u64, level: u8) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.cache.get(&bytenr) {
            if b[100] != level {
                bail!("tree block at {bytenr} has level {}, its parent says {level}", b[100]);
            }
            return Ok(b.clone());
        }
        let mut b = vec![0u8; self.g.nodesize as usize];
        self.read_logical(bytenr, &mut b).with_context(|| format!("reading the tree block at {bytenr}"))?;
        let (crc, stored) = (map::crc32c(&b[32..]), le32(&b, 0));
        if crc != stored {
            bail!("tree block at {bytenr}: checksum mismatch (computed {crc:#010x}, stored {stored:#010x}): corrupt metadata");
        }
        if le64(&b, 48) != bytenr || b[32..48] != self.g.fsid {
            bail!("tree block at {bytenr}: its header names another address or filesystem");
        }
        if b[100] != level {
            bail!("tree block at {bytenr} has level {}, its parent says {level}", b[100]);
        }
        let n = le32(&b, 96) as usize;
        let mut last: Option<Key> = None;
        if level == 0 {
            if n > (b.len() - HEADER) / ITEM {
                bail!("leaf at {bytenr} claims {n} items");
            }
            for i in 0..n {
                let at = HEADER + ITEM * i;
                let k = key_at(&b, at);
                let (off, size) = (le32(&b, at + 17) as usize, le32(&b, at + 21) as usize);
                if HEADER + off + size > b.len() {
                    bail!("leaf at {bytenr}: item {i} lies outside the block");
                }
                if last.is_some_and(|l| l >= k) {
                    bail!("leaf at {bytenr}: keys out of order");
                }
                last = Some(k);
            }
        } else {
            if n == 0 || n > (b.len() - HEADER) / KEY_PTR {
                bail!("node at {bytenr} claims {n} pointers");
            }
            for i in 0..n {
                let k = key_at(&b, HEADER + KEY_PTR * i);
                if last.is_some_and(|l| l >= k) {
                    bail!("node at {bytenr}: keys out of order");
                }
                last = Some(k);
            }
        }
        if self.cache.len() >= CACHE_BLOCKS {
            self.cache.clear();
        }
        let b = Arc::new(b);
        self.cache.insert(bytenr, b.clone());
        Ok(b)
    }

    /// Calls `f(key, data)` for each item of `tree` with `from <= key <= to`, in key order,
    /// until `f` returns false.
    fn scan(&mut self, tree: Tree, from: Key, to: Key, f: &mut dyn FnMut(Key, &[u8]) -> Result<bool>) -> Result<()> {
        if tree.level > map::MAX_LEVEL {
            bail!("tree {} has level {}, over {}", tree.id, tree.level, map::MAX_LEVEL);
        }
        let mut budget = self.max_blocks;
        self.scan_block(tree.bytenr, tree.level, from, to, f, &mut budget)
            .with_context(|| format!("searching tree {}", tree.id))?;
        Ok(())
    }

    /// [`BtrfsReader::scan`] below one block; false once `f` stopped or `to` was passed.
    fn scan_block(
        &mut self,
        bytenr: u64,
        level: u8,
        from: Key,
        to: Key,
        f: &mut dyn FnMut(Key, &[u8]) -> Result<bool>,
        budget: &mut u64,
    ) -> Result<bool> {
        *budget = budget.checked_sub(1).ok_or_else(|| anyhow!("a search visits more blocks than the device holds"))?;
        let b = self.block(bytenr, level)?;
        let n = le32(&b, 96) as usize;
        if level == 0 {
            for i in 0..n {
                let at = HEADER + ITEM * i;
                let k = key_at(&b, at);
                if k < from {
                    continue;
                }
                if k > to {
                    return Ok(false);
                }
                let (off, size) = (le32(&b, at + 17) as usize, le32(&b, at + 21) as usize);
                if !f(k, &b[HEADER + off..HEADER + off + size])? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        // Child i holds the keys from its pointer's key to the next one's.
        let first = (0..n).take_while(|&i| key_at(&b, HEADER + KEY_PTR * i) <= from).count().saturating_sub(1);
        for i in first..n {
            let at = HEADER + KEY_PTR * i;
            if key_at(&b, at) > to {
                return Ok(false);
            }
            if !self.scan_block(le64(&b, at + 17), level - 1, from, to, f, budget)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The data of item `key` of `tree`, if there is one.
    fn item(&mut self, tree: Tree, key: Key) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.scan(tree, key, key, &mut |_, d| {
            found = Some(d.to_vec());
            Ok(false)
        })?;
        Ok(found)
    }

    /// Subvolume `id`'s tree and top directory, from its `ROOT_ITEM` (a snapshot's key
    /// offset is the generation it was taken at: the last one counts).
    fn subvolume(&mut self, id: u64) -> Result<(Tree, u64)> {
        let mut found = None;
        self.scan(self.root_tree, (id, map::ROOT_ITEM, 0), (id, map::ROOT_ITEM, u64::MAX), &mut |_, d| {
            found = Some(d.to_vec());
            Ok(true)
        })?;
        let d = found.ok_or_else(|| anyhow!("the root tree has no subvolume {id}"))?;
        if d.len() < 239 {
            bail!("the root item of subvolume {id} is cut short");
        }
        let tree = Tree { id, bytenr: le64(&d, 176), level: d[238] };
        if tree.level > map::MAX_LEVEL {
            bail!("subvolume {id}: tree level {} is over {}", tree.level, map::MAX_LEVEL);
        }
        Ok((tree, le64(&d, 168)))
    }

    fn inode(&mut self, tree: Tree, ino: u64) -> Result<Inode> {
        let d = self
            .item(tree, (ino, INODE_ITEM, 0))?
            .ok_or_else(|| anyhow!("inode {ino} of tree {} is missing", tree.id))?;
        inode_item(&d).with_context(|| format!("inode {ino} of tree {}", tree.id))
    }

    /// The entry at `loc`, named `name`.
    fn stat(&mut self, loc: &Loc, name: String) -> Result<Entry> {
        match loc {
            Loc::Inode(tree, ino) => {
                let i = self.inode(*tree, *ino)?;
                Ok(entry(name, loc, Some(&i)))
            }
            Loc::EmptySubvol => Ok(entry(name, loc, None)),
        }
    }

    /// Where directory entry `e` of directory `dir` in `tree` leads.
    fn follow(&mut self, tree: Tree, dir: u64, e: &DirEntry) -> Result<Loc> {
        match e.location.1 {
            INODE_ITEM => Ok(Loc::Inode(tree, e.location.0)),
            map::ROOT_ITEM => {
                let sub = e.location.0;
                // Is the subvolume linked here (else this is a snapshot of its parent)?
                let linked = self.item(self.root_tree, (tree.id, ROOT_REF, sub))?.is_some_and(|r| {
                    r.len() >= 18
                        && le64(&r, 0) == dir
                        && r.get(18..18 + le16(&r, 16) as usize) == Some(e.name.as_slice())
                });
                if !linked {
                    return Ok(Loc::EmptySubvol);
                }
                let (t, top) = self.subvolume(sub)?;
                Ok(Loc::Inode(t, top))
            }
            t => bail!("directory entry {:?} points at an item of type {t}", String::from_utf8_lossy(&e.name)),
        }
    }

    /// Entry `name` of directory `dir`: through its name hash, or for a name that was not
    /// valid UTF-8 (shown with U+FFFD), by comparing the shown names.
    fn lookup(&mut self, tree: Tree, dir: u64, name: &str) -> Result<Option<DirEntry>> {
        let hash = name_hash(name.as_bytes());
        let mut found = None;
        self.scan(tree, (dir, DIR_ITEM, hash), (dir, DIR_ITEM, hash), &mut |_, d| {
            found = dir_entries(d)?.into_iter().find(|e| e.name == name.as_bytes());
            Ok(false)
        })?;
        if found.is_none() && name.contains('\u{fffd}') {
            self.scan(tree, (dir, DIR_INDEX, 0), (dir, DIR_INDEX, u64::MAX), &mut |_, d| {
                found = dir_entries(d)?.into_iter().find(|e| String::from_utf8_lossy(&e.name) == name);
                Ok(found.is_none())
            })?;
        }
        Ok(found)
    }

    /// The location and entry `path` names; a symbolic link inside it is not followed.
    fn resolve(&mut self, path: &FsPath) -> Result<(Loc, Entry)> {
        let (tree, ino) = self.top;
        let mut loc = Loc::Inode(tree, ino);
        // Errors reading the trees name the path asked for.
        let asked = || show_path(path);
        let mut e = self.stat(&loc, String::new()).with_context(asked)?;
        for (i, c) in path.iter().enumerate() {
            if e.kind != Kind::Dir {
                let what = if e.kind == Kind::Symlink { " (a symbolic link is not followed)" } else { "" };
                bail!("{}: not a directory{what}", show_path(&path[..i]));
            }
            let Loc::Inode(tree, dir) = loc else {
                bail!("{}: no such file or directory", show_path(&path[..=i]));
            };
            let d = self.lookup(tree, dir, c).with_context(asked)?;
            let d = d.ok_or_else(|| anyhow!("{}: no such file or directory", show_path(&path[..=i])))?;
            loc = self.follow(tree, dir, &d).with_context(asked)?;
            e = self.stat(&loc, c.clone()).with_context(asked)?;
        }
        Ok((loc, e))
    }

    /// Copies the first `size` bytes of inode `ino`'s data to `out`.
    fn read_data(&mut self, tree: Tree, ino: u64, size: u64, out: &mut dyn Write) -> Result<()> {
        let mut pos = 0u64;
        let mut from = 0u64;
        'batches: loop {
            let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
            self.scan(tree, (ino, EXTENT_DATA, from), (ino, EXTENT_DATA, u64::MAX), &mut |k, d| {
                batch.push((k.2, d.to_vec()));
                Ok(batch.len() < BATCH)
            })?;
            let full = batch.len() == BATCH;
            for (off, item) in batch {
                if off >= size {
                    break 'batches;
                }
                if off < pos {
                    bail!("extents overlap at file offset {off}");
                }
                zeros(out, off - pos)?;
                let ext = Extent::parse(&item).with_context(|| format!("extent at file offset {off}"))?;
                let len = ext.len().min(size - off);
                self.write_extent(&ext, off, len, out)?;
                pos = off + len;
                if off == u64::MAX {
                    break 'batches;
                }
                from = off + 1;
            }
            if !full {
                break;
            }
        }
        zeros(out, size - pos)
    }

    /// Writes the first `len` bytes of extent `ext` (at file offset `off`).
    fn write_extent(&mut self, ext: &Extent, off: u64, len: u64, out: &mut dyn Write) -> Result<()> {
        match ext {
            Extent::Prealloc { .. } => zeros(out, len),
            Extent::Inline { compression: 0, data, .. } => {
                let data = data.get(..len as usize).ok_or_else(|| anyhow!("inline extent is shorter than it says"))?;
                Ok(out.write_all(data)?)
            }
            Extent::Inline { compression, ram, data } => {
                let what = || format!("inline extent at file offset {off}");
                let d = decompress(*compression, data, *ram, &what)?;
                Ok(out.write_all(&d[..len as usize])?)
            }
            Extent::Regular { disk: 0, .. } => zeros(out, len),
            Extent::Regular { compression: 0, disk, disk_len, offset, len: n, .. } => {
                if offset.checked_add(*n).is_none_or(|e| e > *disk_len) || disk.checked_add(*disk_len).is_none() {
                    bail!("extent at file offset {off} reaches past its disk extent");
                }
                let mut buf = vec![0u8; len.min(1 << 20) as usize];
                let mut done = 0u64;
                while done < len {
                    let k = (len - done).min(buf.len() as u64) as usize;
                    // Below disk + disk_len, checked above.
                    self.read_logical(disk + offset + done, &mut buf[..k])?;
                    out.write_all(&buf[..k])?;
                    done += k as u64;
                }
                Ok(())
            }
            Extent::Regular { compression, disk, disk_len, offset, len: n, ram } => {
                let what = || format!("logical {disk} (file offset {off})");
                if *disk_len > MAX_COMPRESSED || offset.checked_add(*n).is_none_or(|e| e > *ram) {
                    bail!("compressed extent at {}: {disk_len} bytes on disk, {n} at {offset} of {ram}", what());
                }
                if *compression == 2 {
                    bail!("LZO-compressed extent at {} is not readable (Kura has no LZO decoder)", what());
                }
                let mut src = vec![0u8; *disk_len as usize];
                self.read_logical(*disk, &mut src)?;
                let d = decompress(*compression, &src, *ram, &what)?;
                Ok(out.write_all(&d[*offset as usize..(*offset + len) as usize])?)
            }
        }
    }
}

impl FsReader for BtrfsReader {
    fn stat(&mut self, path: &FsPath) -> Result<Entry> {
        Ok(self.resolve(path)?.1)
    }

    fn list(&mut self, path: &FsPath, f: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()> {
        let (loc, e) = self.resolve(path)?;
        if e.kind != Kind::Dir {
            bail!("{}: not a directory", show_path(path));
        }
        let Loc::Inode(tree, dir) = loc else { return Ok(()) };
        let mut from = 0u64;
        loop {
            let mut batch: Vec<(u64, DirEntry)> = Vec::new();
            self.scan(tree, (dir, DIR_INDEX, from), (dir, DIR_INDEX, u64::MAX), &mut |k, d| {
                let mut v = dir_entries(d)?;
                if v.len() != 1 {
                    bail!("directory index item {} of inode {dir} holds {} entries", k.2, v.len());
                }
                batch.push((k.2, v.remove(0)));
                Ok(batch.len() < BATCH)
            })
            .with_context(|| format!("listing {}", show_path(path)))?;
            let full = batch.len() == BATCH;
            let next = batch.last().map(|(i, _)| i.checked_add(1));
            for (_, d) in batch {
                let name = String::from_utf8_lossy(&d.name).into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                let loc = self.follow(tree, dir, &d)?;
                let e = self.stat(&loc, name).with_context(|| format!("listing {}", show_path(path)))?;
                f(e)?;
            }
            match next {
                Some(Some(n)) if full => from = n,
                _ => return Ok(()),
            }
        }
    }

    fn read_link(&mut self, path: &FsPath) -> Result<Vec<u8>> {
        let shown = show_path(path);
        let (loc, e) = self.resolve(path)?;
        let Loc::Inode(tree, ino) = loc else { bail!("{shown}: not a symbolic link") };
        if e.kind != Kind::Symlink {
            bail!("{shown}: not a symbolic link");
        }
        if e.size > MAX_SYMLINK {
            bail!("{shown}: symbolic link target of {} bytes is over {MAX_SYMLINK}", e.size);
        }
        let mut v = Vec::new();
        self.read_data(tree, ino, e.size, &mut v).with_context(|| shown.clone())?;
        Ok(v)
    }

    fn read_file(&mut self, path: &FsPath, out: &mut dyn Write) -> Result<u64> {
        let shown = show_path(path);
        let (loc, e) = self.resolve(path)?;
        let Loc::Inode(tree, ino) = loc else { bail!("{shown}: not a regular file") };
        if e.kind != Kind::File {
            bail!("{shown}: not a regular file");
        }
        let mut counted = Counter { out, n: 0 };
        self.read_data(tree, ino, e.size, &mut counted).with_context(|| shown.clone())?;
        if counted.n != e.size {
            bail!("{shown}: read {} bytes of {}", counted.n, e.size);
        }
        Ok(e.size)
    }
}

/// Counts the bytes written through it.
struct Counter<'a> {
    out: &'a mut dyn Write,
    n: u64,
}

impl Write for Counter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_hash_is_crc32c_from_seed_not_one() {
        // The standard CRC-32C is the raw one from !0, inverted.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xe306_9283);
        assert_eq!(!crc32c_raw(!0, b"default"), map::crc32c(b"default"));
    }

    #[test]
    fn corrupt_items_are_errors_not_panics() {
        assert!(dir_entries(&[0u8; 29]).is_err());
        let mut d = vec![0u8; 30];
        d[27] = 200; // name_len past the item
        assert!(dir_entries(&d).is_err());
        assert!(inode_item(&[0u8; 100]).is_err());
        assert!(Extent::parse(&[0u8; 20]).is_err());
        let mut e = vec![0u8; 53];
        e[20] = 1;
        e[16] = 2;
        e[8] = 1; // 1 byte of LZO
        let x = Extent::parse(&e).unwrap();
        assert_eq!(x.len(), 0);
        let err = decompress(2, &[], 10, &|| "logical 5".into()).unwrap_err();
        assert!(format!("{err:#}").contains("LZO-compressed extent at logical 5 is not readable"), "{err:#}");
        let err = decompress(3, &[1, 2, 3], 10, &|| "x".into()).unwrap_err();
        assert!(format!("{err:#}").contains("decompressing"), "{err:#}");
        assert!(decompress(1, &[], MAX_COMPRESSED + 1, &|| "x".into()).is_err());
    }
}
