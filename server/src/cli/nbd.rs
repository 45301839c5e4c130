//! `kura nbd SNAPSHOT`: export a snapshot's disk read-only over NBD, from a local store or an
//! engine, until killed.

use super::{engine, Location};
use crate::nbd::{self, disk::SnapshotDisk, Listener};
use anyhow::{bail, Context, Result};
use kura_catalogs::store::StoreLock;
use kura_imaging::chunk::ChunkSource;
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
    let id = opened.disk.id().to_string();
    let size = opened.disk.size();
    let (listener, shown) = bind(listen)?;
    println!("exporting snapshot {id} ({size} bytes) read-only on {shown}");
    std::io::stdout().flush()?;
    nbd::serve(listener, opened.disk.clone()).context("serving NBD")?;
    Ok(ExitCode::SUCCESS)
}

/// `kura mount SNAPSHOT DIR`: the snapshot's disk and partitions as read-only files in DIR
/// (`crate::mount`), served until unmounted.
pub fn mount(snapshot: &str, dir: &std::path::Path, at: &Location) -> Result<ExitCode> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let opened = open_snapshot(snapshot, at, crate::snapshot_disk::CACHE_BYTES)?;
    let names: Vec<String> = crate::mount::entries(&opened.disk).into_iter().map(|e| e.name).collect();
    eprintln!(
        "mounting snapshot {} read-only on {} ({}); unmount with: umount {}",
        opened.disk.id(),
        dir.display(),
        names.join(", "),
        dir.display()
    );
    crate::mount::mount(opened.disk.clone(), dir)?;
    Ok(ExitCode::SUCCESS)
}

/// A snapshot's disk opened from a local store or an engine, with what keeps its chunks.
pub(super) struct OpenedSnapshot {
    pub disk: Arc<SnapshotDisk>,
    /// The local store's shared lock, held while reading so a GC cannot remove the chunks.
    _lock: Option<StoreLock>,
}

/// Opens `snapshot` (with a local store: an id or unique prefix) for lazy reading, with a
/// cache of `cache_bytes` decoded chunk bytes.
pub(super) fn open_snapshot(snapshot: &str, at: &Location, cache_bytes: u64) -> Result<OpenedSnapshot> {
    let mut _lock = None;
    let (id, manifest, source): (String, _, Arc<dyn ChunkSource>) = match &at.store {
        Some(dir) => {
            let store = crate::cli::image::open_store(dir, false)?;
            _lock = Some(store.lock(false)?);
            let id = store.resolve(snapshot)?;
            let manifest = store.load_manifest(&id)?;
            (id, manifest, store as Arc<dyn ChunkSource>)
        }
        None => {
            let client = engine::client(&at.server)?;
            let manifest = client.manifest(snapshot)?;
            (snapshot.to_string(), manifest, Arc::new(RemoteSource { client }))
        }
    };
    Ok(OpenedSnapshot { disk: Arc::new(SnapshotDisk::new(id, manifest, source, cache_bytes)?), _lock })
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
