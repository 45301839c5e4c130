//! `kura nbd SNAPSHOT`: export a snapshot's disk read-only over NBD, from a local store or an
//! engine, until killed; and the opening of a snapshot (one disk, or a set's disks) that
//! `kura nbd`, `kura mount` and `kura image verify --boot` share.

use super::{engine, Location};
use crate::nbd::{self, disk::SnapshotDisk, Listener};
use anyhow::{bail, Context, Result};
use kura_catalogs::store::StoreLock;
use kura_imaging::chunk::ChunkSource;
use kura_imaging::diskmap::DiskIdentity;
use kura_imaging::diskset::SnapshotFile;
use kura_imaging::manifest::Manifest;
use kura_protocol::client::RemoteSource;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// The NBD port (IANA).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// `unix:PATH` or `ADDRESS:PORT` on a loopback address: the export has no authentication, so
/// it is offered only to this machine.
pub fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path (unix:/run/kura-nbd.sock)".into());
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    let addr: SocketAddr = s.parse().map_err(|e| format!("{s:?} is neither unix:PATH nor ADDRESS:PORT: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the NBD export has no authentication; listen on 127.0.0.1 or a unix socket"
        ));
    }
    Ok(ListenAddr::Tcp(addr))
}

pub fn run(snapshot: &str, at: &Location, listen: &ListenAddr) -> Result<ExitCode> {
    let opened = open_snapshot(snapshot, at, crate::snapshot_disk::CACHE_BYTES)?;
    let disk = opened.disk.clone();
    let id = disk.id().to_string();
    let size = disk.size();
    let (listener, shown) = bind(listen)?;
    println!("exporting snapshot {id} ({size} bytes) read-only on {shown}");
    std::io::stdout().flush()?;
    nbd::serve(listener, disk).context("serving NBD")?;
    Ok(ExitCode::SUCCESS)
}

/// `kura mount SNAPSHOT DIR`: the snapshot's disk and partitions as read-only files in DIR
/// (`crate::mount`; a set's disks as `diskN` and `diskN-partM`), served until unmounted.
pub fn mount(snapshot: &str, dir: &std::path::Path, at: &Location) -> Result<ExitCode> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let opened = open_disks(snapshot, at, crate::snapshot_disk::CACHE_BYTES)?;
    let disks: Vec<Arc<SnapshotDisk>> = opened.disks.iter().map(|(_, d)| d.clone()).collect();
    let entries = if opened.is_set { crate::mount::set_entries(&disks) } else { crate::mount::entries(&disks[0]) };
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    eprintln!(
        "mounting snapshot {} read-only on {} ({}); unmount with: umount {}",
        opened.id,
        dir.display(),
        names.join(", "),
        dir.display()
    );
    crate::mount::mount(&opened.id, disks, entries, dir)?;
    Ok(ExitCode::SUCCESS)
}

/// A snapshot's disk opened from a local store or an engine, with what keeps its chunks.
pub(super) struct OpenedSnapshot {
    pub disk: Arc<SnapshotDisk>,
    /// The local store's shared lock, held while reading so a GC cannot remove the chunks.
    _lock: Option<StoreLock>,
}

/// Opens one disk's `snapshot` (with a local store: an id or unique prefix) for lazy reading,
/// with a cache of `cache_bytes` decoded chunk bytes; a snapshot set is refused, naming the
/// command that was given one (see [`open_disks`] for what takes a set).
pub(super) fn open_snapshot(snapshot: &str, at: &Location, cache_bytes: u64) -> Result<OpenedSnapshot> {
    let mut opened = open_disks(snapshot, at, cache_bytes)?;
    if opened.is_set {
        bail!(
            "snapshot {} is a set of {} disks; this command takes one disk: give one disk's snapshot id \
             (`kura image show {}` lists them)",
            opened.id,
            opened.disks.len(),
            opened.id
        );
    }
    let (_, disk) = opened.disks.remove(0);
    Ok(OpenedSnapshot { disk, _lock: opened._lock })
}

/// A snapshot opened from a local store or an engine: its one disk, or each disk of a snapshot
/// set in the set's order; with what keeps their chunks.
pub(super) struct OpenedDisks {
    /// The snapshot's (or the set's) id.
    pub id: String,
    /// Each disk with its identity (a single-disk snapshot's is named by its source); a set's
    /// disks carry their own (member) snapshot ids.
    pub disks: Vec<(DiskIdentity, Arc<SnapshotDisk>)>,
    pub is_set: bool,
    /// The local store's shared lock, held while reading so a GC cannot remove the chunks.
    _lock: Option<StoreLock>,
}

/// Opens `snapshot`, one disk's or a set's, for lazy reading, each disk with a cache of
/// `cache_bytes` decoded chunk bytes. A snapshot set lives in an engine's catalog (a local
/// store holds single-disk snapshots only), so only an engine opens one.
pub(super) fn open_disks(snapshot: &str, at: &Location, cache_bytes: u64) -> Result<OpenedDisks> {
    let mut _lock = None;
    let (id, file, source): (String, SnapshotFile, Arc<dyn ChunkSource>) = match &at.store {
        Some(dir) => {
            let store = crate::cli::image::open_store(dir, false)?;
            _lock = Some(store.lock(false)?);
            let id = store.resolve(snapshot)?;
            let manifest = store.load_manifest(&id)?;
            (id, SnapshotFile::Disk(manifest), store as Arc<dyn ChunkSource>)
        }
        None => {
            let client = engine::client(&at.server)?;
            let file = client.snapshot_file(snapshot)?;
            (snapshot.to_string(), file, Arc::new(RemoteSource { client }))
        }
    };
    let is_set = matches!(file, SnapshotFile::Set(_));
    let mut disks = Vec::new();
    for (identity, manifest) in file.disks() {
        let disk_id = if is_set { Manifest::id_of(&manifest.encode()?) } else { id.clone() };
        let disk = SnapshotDisk::new(disk_id, manifest.clone(), source.clone(), cache_bytes)?;
        disks.push((identity, Arc::new(disk)));
    }
    Ok(OpenedDisks { id, disks, is_set, _lock })
}

fn bind(listen: &ListenAddr) -> Result<(Listener, String)> {
    match listen {
        ListenAddr::Unix(path) => {
            // A socket left by a previous run that nobody answers on is replaced; anything else
            // at the path is left alone.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    bail!("{} exists and is not a socket", path.display());
                }
                if UnixStream::connect(path).is_ok() {
                    bail!("{} is in use by another server", path.display());
                }
                std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
            }
            let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
            Ok((Listener::Unix(l), format!("nbd+unix:///?socket={}", path.display())))
        }
        ListenAddr::Tcp(addr) => {
            let l = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
            let local = l.local_addr()?;
            Ok((Listener::Tcp(l), format!("nbd://{local}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_unix_sockets_or_loopback() {
        assert_eq!(parse_listen("unix:/tmp/x.sock"), Ok(ListenAddr::Unix("/tmp/x.sock".into())));
        assert_eq!(parse_listen("127.0.0.1:0"), Ok(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())));
        assert_eq!(parse_listen("[::1]:10809"), Ok(ListenAddr::Tcp("[::1]:10809".parse().unwrap())));
        assert!(parse_listen("0.0.0.0:10809").unwrap_err().contains("loopback"));
        assert!(parse_listen("unix:").is_err());
        assert!(parse_listen("localhost").is_err());
    }
}
