//! `kura nbd`: a snapshot's disk exported read-only over NBD, without restoring it.
//!
//! - [`proto`]: the NBD wire protocol (handshake, requests, replies) over any byte stream, for
//!   one [`proto::Export`].
//! - [`disk`]: the snapshot as an export: chunks fetched lazily from a local store or an
//!   engine, a bounded cache of decoded chunks, unused ranges as zeros.
//! - [`serve`] (here): the listener loop, one thread per connection (reads of different
//!   connections run concurrently; a connection's own requests are answered in order), at most
//!   [`MAX_CONNECTIONS`] at once. A connection that fails or disconnects mid-request ends
//!   alone.

pub mod disk;
pub mod proto;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; more are closed at once (NBD has no "busy" reply).
pub const MAX_CONNECTIONS: usize = 128;
/// Longest the handshake may take: a client that connects and says nothing frees its slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `kura nbd` listens.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// A stream whose read timeout guards only the handshake: it is dropped once transmission
/// starts (a client idle between requests is legitimate).
struct HandshakeTimeout {
    inner: Stream,
    armed: bool,
}

impl Read for HandshakeTimeout {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for HandshakeTimeout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl proto::Transport for HandshakeTimeout {
    fn handshake_done(&mut self) -> std::io::Result<()> {
        if self.armed {
            self.armed = false;
            self.inner.set_read_timeout(None)?;
        }
        Ok(())
    }
}

/// Serves `export` on `listener` until accepting fails.
pub fn serve(listener: Listener, export: Arc<dyn proto::Export>) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = match &listener {
            Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), "unix socket".to_string())),
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), a.to_string())),
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            // A connection that went away before it was accepted, or no file descriptor left
            // for a moment: not a reason to stop serving the others.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE)) => {
                tracing::warn!("nbd: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(e),
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("nbd: {MAX_CONNECTIONS} connections already open: closing the one from {peer}");
            continue;
        }
        let (slots, export) = (active.clone(), export.clone());
        let spawned = std::thread::Builder::new().name("nbd-conn".into()).spawn(move || {
            let r = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).and_then(|_| {
                let mut conn = HandshakeTimeout { inner: stream, armed: true };
                proto::serve_connection(&mut conn, export.as_ref())
            });
            match r {
                Ok(proto::End::Clean) => tracing::debug!("nbd: {peer} disconnected"),
                Ok(proto::End::Violation(v)) => tracing::warn!("nbd: {peer} disconnected: {v}"),
                Err(e) => tracing::info!("nbd: {peer}: connection ended: {e}"),
            }
            slots.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("nbd: starting a connection thread: {e}");
        }
    }
}
