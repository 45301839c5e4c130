//! The local content-addressed chunk store: chunks and snapshot manifests in a directory.
//!
//! ```text
//! DIR/kura-store.json            format marker {"kind":"kura-store","format":1}
//! DIR/chunks/<4 hex>/<64 hex>    encoded chunks (docs/chunk.md), named by content digest
//! DIR/snapshots/<16 hex>.kmf     committed manifests (docs/manifest.md), named by their id
//! DIR/tmp/                       files being written; anything here after a crash is garbage
//! ```
//!
//! # Durability contract
//!
//! - **No overwrites.** A chunk file, once in place, is never rewritten: its name is its
//!   content. Putting a chunk that exists is a no-op. A manifest's name is its own hash.
//! - **Nothing half-written is ever visible.** Every file is written under `tmp/` and made
//!   durable before it is moved into place, so a crash leaves either the whole file or none.
//!   Manifests are `fsync`ed and renamed. Chunks are written to `tmp/` without a per-file
//!   `fsync` and *staged*; a batch of staged chunks (at most [`STAGE_BYTES`], and always before
//!   a commit) is made durable by one `syncfs(2)` and then hard-linked into place — a link that
//!   fails if the chunk exists, so of two racing writers exactly one stores it. One filesystem
//!   flush per batch instead of one per chunk is what lets a capture run at compression speed
//!   (measured: per-chunk `fsync` halved capture throughput). Staged chunks count as present
//!   for deduplication; they live only in this process, and a crash leaves them in `tmp/`,
//!   which is emptied on the next exclusive open.
//! - **A snapshot is committed by its manifest, and only after its chunks are durable.**
//!   Directory entries of new chunks are `fsync`ed (their directories, once each) before the
//!   manifest is written; the manifest's rename is followed by an `fsync` of `snapshots/`.
//!   A capture interrupted before the commit leaves no snapshot, only unreferenced chunks.
//! - **Private.** Directories are created 0700 and files 0600 ([`crate::private`]), with
//!   the mode given explicitly (a umask can only narrow it): chunks and manifests keep the
//!   mode of their temp file, which is made with `O_EXCL|O_NOFOLLOW`.
//! - **Every read is checked by the reader**: consumers decode chunks with
//!   [`kura_imaging::chunk::Decoder`], which verifies the digest; [`LocalStore::verify`] re-reads
//!   everything.

use kura_imaging::chunk::{check_quick, ChunkSink, ChunkSource, Digest};
use kura_imaging::flow::SnapshotSink;
use kura_imaging::manifest::Manifest;
use kura_imaging::Error;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

const MARKER: &str = "kura-store.json";
const STORE_FORMAT: u32 = 1;

/// Holds the store's lock (see [`LocalStore::lock`]) until dropped.
pub struct StoreLock {
    _file: Option<File>,
}

impl StoreLock {
    /// A lock held by something else than a file (a remote store's cache lock holds its own).
    pub fn held_elsewhere() -> StoreLock {
        StoreLock { _file: None }
    }
}

/// Staged chunk bytes after which a batch is made durable and linked into place.
pub const STAGE_BYTES: u64 = 256 << 20;
/// Staged chunk count after which a batch is made durable and linked into place.
pub const STAGE_CHUNKS: usize = 1024;

#[derive(Default)]
struct Staged {
    /// Chunk → its temp file, written but not yet durable nor in place.
    files: HashMap<Digest, PathBuf>,
    bytes: u64,
}

pub struct LocalStore {
    root: PathBuf,
    staged: Mutex<Staged>,
    /// Serialises batch flushes.
    flushing: Mutex<()>,
    /// Chunk shard directories that received new entries since the last commit.
    dirty_dirs: Mutex<HashSet<PathBuf>>,
    tmp_counter: AtomicU64,
}

/// A committed snapshot, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: Option<String>,
    pub created: String,
    pub source: String,
    pub host: Option<String>,
    pub disk_size: u64,
    pub used_bytes: u64,
    pub scheme: kura_imaging::layout::Scheme,
    pub partitions: usize,
    pub chunks: usize,
    pub unique_chunks: usize,
}

/// What the chunks in place take: their count and the sum of their file sizes (encoded:
/// header plus compressed payload), as [`LocalStore::usage`] finds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreUsage {
    pub chunks: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DamagedChunk {
    pub digest: String,
    pub reason: String,
    /// Snapshots that need this chunk.
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DamagedManifest {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub snapshots_checked: usize,
    pub chunks_checked: u64,
    pub damaged: Vec<DamagedChunk>,
    pub damaged_manifests: Vec<DamagedManifest>,
}

fn store_err(message: String, e: &io::Error) -> Error {
    let full = e.raw_os_error() == Some(libc_enospc()) || e.kind() == io::ErrorKind::StorageFull;
    if full {
        return Error::StoreFull { message: format!("the store is full (no space left on device) while {message}") };
    }
    Error::Store { message: format!("{message}: {e}"), retryable: e.kind() == io::ErrorKind::Interrupted }
}

const fn libc_enospc() -> i32 {
    28
}

impl LocalStore {
    /// Opens the store at `root`, creating it if the directory is missing or empty.
    pub fn open_or_create(root: &Path) -> Result<LocalStore, Error> {
        let empty = match fs::read_dir(root) {
            Ok(mut d) => d.next().is_none(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(store_err(format!("reading {}", root.display()), &e)),
        };
        if empty {
            let err = |e: io::Error| store_err(format!("creating {}", root.display()), &e);
            crate::private::create_dir_all(root).map_err(err)?;
            // An empty directory someone made for the store becomes private too.
            fs::set_permissions(root, fs::Permissions::from_mode(crate::private::DIR_MODE)).map_err(err)?;
            for d in ["chunks", "snapshots", "tmp"] {
                crate::private::create_dir_all(&root.join(d)).map_err(err)?;
            }
            let marker = serde_json::json!({"kind": "kura-store", "format": STORE_FORMAT});
            crate::private::write_new(&root.join(MARKER), (marker.to_string() + "\n").as_bytes()).map_err(err)?;
        }
        Self::open(root)
    }

    /// Opens an existing store; refuses a directory that is not one.
    pub fn open(root: &Path) -> Result<LocalStore, Error> {
        let text = fs::read_to_string(root.join(MARKER)).map_err(|e| Error::Store {
            message: format!("{} is not a Kura store ({MARKER}: {e})", root.display()),
            retryable: false,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if v["kind"] != "kura-store" || v["format"] != STORE_FORMAT {
            return Err(Error::Store {
                message: format!("{} has an unsupported store format: {}", root.display(), text.trim()),
                retryable: false,
            });
        }
        for d in ["chunks", "snapshots", "tmp"] {
            crate::private::create_dir_all(&root.join(d))
                .map_err(|e| store_err(format!("opening {}", root.display()), &e))?;
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
            staged: Mutex::new(Staged::default()),
            flushing: Mutex::new(()),
            dirty_dirs: Mutex::new(HashSet::new()),
            tmp_counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunk_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join("chunks").join(&hex[..4]).join(hex)
    }

    fn manifest_path(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.kmf"))
    }

    /// Writes `data` to a new temp file and fsyncs it; returns its path.
    fn write_temp(&self, dest: &Path, data: &[u8], what: &str) -> Result<PathBuf, Error> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let name = dest.file_name().and_then(|s| s.to_str()).unwrap_or("f");
        let tmp = self.root.join("tmp").join(format!("{}.{name}.{n}", std::process::id()));
        let result = (|| -> io::Result<()> {
            let mut f = crate::private::create_new(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(store_err(format!("writing {what}"), &e));
        }
        Ok(tmp)
    }

    /// Writes `data` to a new temp file, fsyncs it and renames it to `dest` (replacing it).
    fn write_atomic(&self, dest: &Path, data: &[u8], what: &str) -> Result<(), Error> {
        let tmp = self.write_temp(dest, data, what)?;
        fs::rename(&tmp, dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            store_err(format!("writing {what}"), &e)
        })
    }

    /// Writes `data` to a new temp file without syncing it; returns its path.
    fn write_temp_unsynced(&self, dest: &Path, data: &[u8], what: &str) -> Result<PathBuf, Error> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let name = dest.file_name().and_then(|s| s.to_str()).unwrap_or("f");
        let tmp = self.root.join("tmp").join(format!("{}.{name}.{n}", std::process::id()));
        let r = crate::private::create_new(&tmp).and_then(|mut f| f.write_all(data));
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(store_err(format!("writing {what}"), &e));
        }
        Ok(tmp)
    }

    /// Makes every staged chunk durable (one `syncfs`) and links it into place. Returns how many
    /// chunks this call placed (racing writers of the same chunk place it once).
    pub fn flush_staged(&self) -> Result<usize, Error> {
        let _one = self.flushing.lock().expect("lock");
        let batch: Vec<(Digest, PathBuf)> =
            self.staged.lock().expect("lock").files.iter().map(|(d, p)| (*d, p.clone())).collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let tmp_dir = File::open(self.root.join("tmp")).map_err(|e| store_err("opening tmp/".into(), &e))?;
        rustix::fs::syncfs(&tmp_dir).map_err(|e| store_err("syncing staged chunks".into(), &e.into()))?;
        let mut placed = 0;
        let mut result = Ok(());
        for (d, tmp) in &batch {
            let dest = self.chunk_path(d);
            let dir = dest.parent().expect("chunk path has a parent");
            let r = (|| -> io::Result<bool> {
                if !dir.exists() {
                    crate::private::create_dir_all(dir)?;
                    self.dirty_dirs.lock().expect("lock").insert(self.root.join("chunks"));
                }
                match fs::hard_link(tmp, &dest) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(e),
                }
            })();
            let _ = fs::remove_file(tmp);
            match r {
                Ok(true) => {
                    placed += 1;
                    self.dirty_dirs.lock().expect("lock").insert(dir.to_path_buf());
                }
                Ok(false) => {}
                Err(e) => {
                    result = Err(store_err(format!("placing chunk {d}"), &e));
                    break;
                }
            }
        }
        let mut staged = self.staged.lock().expect("lock");
        for (d, _) in &batch {
            if staged.files.remove(d).is_some() {
                staged.bytes =
                    staged.bytes.saturating_sub(fs::metadata(self.chunk_path(d)).map(|m| m.len()).unwrap_or(0));
            }
        }
        if staged.files.is_empty() {
            staged.bytes = 0;
        }
        result.map(|_| placed)
    }

    /// Makes the directory entries of chunks written since the last call durable.
    pub fn sync_chunk_dirs(&self) -> Result<(), Error> {
        let dirs: Vec<PathBuf> = self.dirty_dirs.lock().expect("lock").drain().collect();
        for d in dirs {
            File::open(&d).and_then(|f| f.sync_all()).map_err(|e| store_err(format!("syncing {}", d.display()), &e))?;
        }
        Ok(())
    }

    /// Commits a snapshot: makes its chunks durable, then writes its manifest. Returns the id.
    pub fn commit_manifest(&self, manifest: &Manifest) -> Result<String, Error> {
        self.flush_staged()?;
        // Every chunk must be present before the snapshot becomes visible.
        for d in manifest.unique_digests() {
            if !self.has(&d) {
                return Err(Error::ChunkMissing { digest: d.to_hex() });
            }
        }
        self.sync_chunk_dirs()?;
        let bytes = manifest.encode()?;
        let id = Manifest::id_of(&bytes);
        self.write_atomic(&self.manifest_path(&id), &bytes, &format!("manifest {id}"))?;
        let dir = self.root.join("snapshots");
        File::open(&dir).and_then(|f| f.sync_all()).map_err(|e| store_err("syncing snapshots/".into(), &e))?;
        Ok(id)
    }

    /// Counts the chunks in place and adds up their file sizes (one walk of `chunks/`; staged
    /// chunks are not counted until they are in place, which they are after every commit).
    pub fn usage(&self) -> Result<StoreUsage, Error> {
        crate::backend::Store::usage(self)
    }

    /// Calls `f(digest, size, mtime)` for every chunk file; stops at the first error. Files
    /// in `chunks/` that are not named like chunks are skipped.
    pub fn for_each_chunk(&self, mut f: impl FnMut(Digest, u64, SystemTime) -> Result<(), Error>) -> Result<(), Error> {
        let top = self.root.join("chunks");
        let err = |p: &Path, e: io::Error| store_err(format!("listing {}", p.display()), &e);
        let mut shards: Vec<PathBuf> = Vec::new();
        for e in fs::read_dir(&top).map_err(|e| err(&top, e))? {
            let e = e.map_err(|e| err(&top, e))?;
            if e.file_type().map_err(|x| err(&e.path(), x))?.is_dir() {
                shards.push(e.path());
            }
        }
        shards.sort();
        for shard in shards {
            for e in fs::read_dir(&shard).map_err(|e| err(&shard, e))? {
                let e = e.map_err(|e| err(&shard, e))?;
                let Some(d) = e.file_name().to_str().and_then(|n| n.parse::<Digest>().ok()) else { continue };
                let md = e.metadata().map_err(|x| err(&e.path(), x))?;
                let mtime = md.modified().map_err(|x| err(&e.path(), x))?;
                f(d, md.len(), mtime)?;
            }
        }
        Ok(())
    }

    /// Removes a chunk file (garbage collection only; see `gc`). Returns whether it existed.
    pub fn remove_chunk(&self, d: &Digest) -> Result<bool, Error> {
        match fs::remove_file(self.chunk_path(d)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(store_err(format!("removing chunk {d}"), &e)),
        }
    }

    /// Moves a damaged chunk out of the way into `quarantine/` (never deleting it), so that the
    /// next capture holding the same data stores it afresh. Returns the quarantine path.
    pub fn quarantine_chunk(&self, d: &Digest) -> Result<PathBuf, Error> {
        let dir = self.root.join("quarantine");
        crate::private::create_dir_all(&dir).map_err(|e| store_err("creating quarantine/".into(), &e))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let dest = dir.join(format!("{d}.{stamp}"));
        fs::rename(self.chunk_path(d), &dest).map_err(|e| store_err(format!("quarantining chunk {d}"), &e))?;
        Ok(dest)
    }

    /// Removes leftovers of writes interrupted by a crash from `tmp/`. Call only while holding
    /// the exclusive lock (nobody else is writing). Returns how many files were removed.
    pub fn clean_tmp(&self) -> Result<usize, Error> {
        let dir = self.root.join("tmp");
        let mut n = 0;
        for e in fs::read_dir(&dir).map_err(|e| store_err(format!("listing {}", dir.display()), &e))? {
            let e = e.map_err(|e| store_err(format!("listing {}", dir.display()), &e))?;
            if fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Takes the store's lock: exclusive for writers (a capture, `kura serve`), shared for
    /// readers. Held until the returned guard is dropped; fails at once if it is taken.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, Error> {
        let path = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(crate::private::FILE_MODE)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| store_err(format!("opening {}", path.display()), &e))?;
        let r = if exclusive { f.try_lock() } else { f.try_lock_shared() };
        match r {
            Ok(()) => Ok(StoreLock { _file: Some(f) }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::Store {
                message: format!(
                    "the store {} is in use by another Kura process (kura serve, or a capture)",
                    self.root.display()
                ),
                retryable: true,
            }),
            Err(fs::TryLockError::Error(e)) => Err(store_err(format!("locking {}", path.display()), &e)),
        }
    }

    /// Whether the chunk is in place or staged (it will be in place before any commit).
    pub fn has(&self, d: &Digest) -> bool {
        self.staged.lock().expect("lock").files.contains_key(d) || self.has_in_place(d)
    }

    /// Whether the chunk's file is in place (durable).
    pub fn has_in_place(&self, d: &Digest) -> bool {
        fs::metadata(self.chunk_path(d)).map(|m| m.is_file()).unwrap_or(false)
    }

    /// Ids of all committed snapshots, sorted.
    pub fn snapshot_ids(&self) -> Result<Vec<String>, Error> {
        let dir = self.root.join("snapshots");
        let mut ids = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| store_err(format!("listing {}", dir.display()), &e))? {
            let e = e.map_err(|e| store_err(format!("listing {}", dir.display()), &e))?;
            let name = e.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".kmf")) {
                if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    ids.push(id.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Resolves a full snapshot id or a unique prefix of one.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<String, Error> {
        crate::backend::Store::resolve(self, id_or_prefix)
    }

    /// Loads and validates a committed manifest (its hash must match its id).
    pub fn load_manifest(&self, id: &str) -> Result<Manifest, Error> {
        crate::backend::Store::load_manifest(self, id)
    }

    /// The encoded manifest of a committed snapshot, checked against its id.
    pub fn manifest_bytes(&self, id: &str) -> Result<Vec<u8>, Error> {
        let path = self.manifest_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Store { message: format!("no snapshot {id} in the store"), retryable: false })
            }
            Err(e) => return Err(store_err(format!("reading {}", path.display()), &e)),
        };
        if Manifest::id_of(&bytes) != id {
            return Err(Error::Manifest(format!("snapshot {id}: manifest content does not match its id (damaged)")));
        }
        Ok(bytes)
    }

    /// Whether a committed manifest named `id` exists (damaged or not).
    pub fn manifest_exists(&self, id: &str) -> bool {
        self.manifest_path(id).exists()
    }

    /// Removes a snapshot's manifest (its chunks stay until garbage collection). Durable on return.
    pub fn remove_manifest(&self, id: &str) -> Result<(), Error> {
        match fs::remove_file(self.manifest_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(store_err(format!("removing snapshot {id}"), &e)),
        }
        let dir = self.root.join("snapshots");
        File::open(&dir).and_then(|f| f.sync_all()).map_err(|e| store_err("syncing snapshots/".into(), &e))
    }

    pub fn snapshot_info(&self, id: &str) -> Result<SnapshotInfo, Error> {
        crate::backend::Store::snapshot_info(self, id)
    }

    /// Every committed snapshot, oldest first.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, Error> {
        crate::backend::Store::list(self)
    }

    /// Re-reads and fully re-checks every chunk the selected snapshots need; see
    /// [`crate::backend::Store::verify`]. Reads only; repairs nothing.
    pub fn verify(
        &self,
        only: Option<&str>,
        threads: usize,
        progress: &dyn kura_imaging::progress::Progress,
    ) -> Result<VerifyReport, Error> {
        crate::backend::Store::verify(self, only, threads, progress)
    }
}

impl crate::backend::Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn has(&self, d: &Digest) -> bool {
        LocalStore::has(self, d)
    }

    fn flush_staged(&self) -> Result<usize, Error> {
        LocalStore::flush_staged(self)
    }

    fn commit_manifest(&self, manifest: &Manifest) -> Result<String, Error> {
        LocalStore::commit_manifest(self, manifest)
    }

    fn snapshot_ids(&self) -> Result<Vec<String>, Error> {
        LocalStore::snapshot_ids(self)
    }

    fn manifest_bytes(&self, id: &str) -> Result<Vec<u8>, Error> {
        LocalStore::manifest_bytes(self, id)
    }

    fn manifest_exists(&self, id: &str) -> bool {
        LocalStore::manifest_exists(self, id)
    }

    fn remove_manifest(&self, id: &str) -> Result<(), Error> {
        LocalStore::remove_manifest(self, id)
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(Digest, u64, SystemTime) -> Result<(), Error>) -> Result<(), Error> {
        LocalStore::for_each_chunk(self, f)
    }

    fn remove_chunk(&self, d: &Digest) -> Result<bool, Error> {
        LocalStore::remove_chunk(self, d)
    }

    fn quarantine_chunk(&self, d: &Digest) -> Result<String, Error> {
        LocalStore::quarantine_chunk(self, d).map(|p| p.display().to_string())
    }

    fn clean_tmp(&self) -> Result<usize, Error> {
        LocalStore::clean_tmp(self)
    }

    fn lock(&self, exclusive: bool) -> Result<StoreLock, Error> {
        LocalStore::lock(self, exclusive)
    }
}

impl ChunkSink for LocalStore {
    fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, Error> {
        Ok(digests.iter().map(|d| !self.has(d)).collect())
    }

    fn put_chunk(&self, digest: &Digest, blob: &[u8]) -> Result<bool, Error> {
        check_quick(blob, digest)?;
        if self.has(digest) {
            return Ok(false);
        }
        let path = self.chunk_path(digest);
        let tmp = self.write_temp_unsynced(&path, blob, &format!("chunk {digest}"))?;
        let full = {
            let mut staged = self.staged.lock().expect("lock");
            if staged.files.contains_key(digest) {
                // Another writer staged it meanwhile.
                drop(staged);
                let _ = fs::remove_file(&tmp);
                return Ok(false);
            }
            staged.files.insert(*digest, tmp);
            staged.bytes += blob.len() as u64;
            staged.bytes >= STAGE_BYTES || staged.files.len() >= STAGE_CHUNKS
        };
        if full {
            self.flush_staged()?;
        }
        Ok(true)
    }

    /// The base chunk read from the store, decoded and hashed here.
    fn piece_digests(&self, digest: &Digest, piece_size: u32) -> Result<Option<Vec<Digest>>, Error> {
        let mut dec = kura_imaging::chunk::Decoder::new()?;
        kura_imaging::pieced::stored_piece_digests(self, &mut dec, digest, piece_size).map(Some)
    }
}

/// A capture into the store: committed by [`LocalStore::commit_manifest`] (the snapshot id).
impl SnapshotSink for LocalStore {
    type Committed = String;

    fn commit(&self, manifest: &Manifest) -> Result<String, Error> {
        self.commit_manifest(manifest)
    }

    /// Nothing to undo: the chunks already stored are unreferenced until a snapshot names them
    /// (the GC's to sweep), and staged ones are emptied from `tmp/` on the next exclusive open.
    fn abort(&self) {}
}

impl ChunkSource for LocalStore {
    fn get_chunk(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let staged = self.staged.lock().expect("lock").files.get(digest).cloned();
        if let Some(tmp) = staged {
            if let Ok(b) = fs::read(&tmp) {
                return Ok(b);
            }
        }
        let path = self.chunk_path(digest);
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::ChunkMissing { digest: digest.to_hex() }),
            Err(e) => Err(store_err(format!("reading chunk {digest}"), &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_imaging::chunk::Encoder;

    fn blob(data: &[u8]) -> (Digest, Vec<u8>) {
        let d = Digest::of(data);
        let mut out = Vec::new();
        Encoder::new(3).unwrap().encode_into(&d, data, &mut out).unwrap();
        (d, out)
    }

    #[test]
    fn put_get_is_idempotent_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(&dir.path().join("s")).unwrap();
        let (d, b) = blob(&b"hello chunk".repeat(1000));
        assert!(store.put_chunk(&d, &b).unwrap());
        assert!(!store.put_chunk(&d, &b).unwrap());
        assert_eq!(store.get_chunk(&d).unwrap(), b);
        // A blob that does not match its digest is refused and not stored.
        let (d2, _) = blob(b"other");
        assert!(store.put_chunk(&d2, &b).is_err());
        assert!(!store.has(&d2));
        assert!(matches!(store.get_chunk(&d2), Err(Error::ChunkMissing { .. })));
        // Staged chunks are readable and present before they are in place.
        assert!(store.has(&d) && !store.has_in_place(&d));
        assert_eq!(store.usage().unwrap(), StoreUsage::default());
        assert_eq!(store.flush_staged().unwrap(), 1);
        assert!(store.has_in_place(&d));
        assert_eq!(store.usage().unwrap(), StoreUsage { chunks: 1, bytes: b.len() as u64 });
        // Nothing left in tmp/.
        assert_eq!(fs::read_dir(dir.path().join("s/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn every_directory_and_file_of_the_store_is_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let store = LocalStore::open_or_create(&root).unwrap();
        let _lock = store.lock(true).unwrap();
        let (d, b) = blob(&b"private chunk".repeat(1000));
        store.put_chunk(&d, &b).unwrap();
        store.flush_staged().unwrap();
        let (d2, b2) = blob(b"quarantined");
        store.put_chunk(&d2, &b2).unwrap();
        store.flush_staged().unwrap();
        store.quarantine_chunk(&d2).unwrap();
        let mut seen = 0;
        let mut todo = vec![root.clone()];
        while let Some(p) = todo.pop() {
            let meta = fs::symlink_metadata(&p).unwrap();
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(meta.mode() & 0o7777, want, "{}", p.display());
            seen += 1;
            if meta.is_dir() {
                todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
        }
        // root, chunks, 1 or 2 shards, chunk, snapshots, tmp, quarantine, its chunk, marker, lock.
        assert!(seen >= 10, "{seen}");
    }

    #[test]
    fn refuses_a_directory_that_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), b"x").unwrap();
        let e = LocalStore::open_or_create(dir.path()).err().unwrap();
        assert!(e.to_string().contains("is not a Kura store"), "{e}");
    }
}
