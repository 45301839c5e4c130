//! Admission of connections to the API listener: caps on the connections held at once, in all
//! ([`MAX_CONNECTIONS`]) and from one source address ([`MAX_CONNECTIONS_PER_SOURCE`]), so one
//! client (or a slowloris holding connections open until the header-read timeout) cannot take
//! every slot or every file descriptor. A connection over a cap is closed at once, before its TLS
//! handshake. The caps are the boot HTTP listener's ([`kura_netboot::conns::ConnLimit`]), with
//! the API's own values.

use axum_server::accept::Accept;
use kura_netboot::conns::{ConnLimit, Slot};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Connections the API listener holds at once (agents, CLIs, browsers together).
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections the API listener holds at once from one source address (an agent uses a few,
/// an operator's browser six or so).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;

/// An acceptor that admits a TCP connection only within the caps; the connection keeps its
/// [`Slot`] until it is closed.
#[derive(Clone)]
pub struct Capped(Arc<ConnLimit>);

impl Capped {
    pub fn new() -> Capped {
        Capped(ConnLimit::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE))
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for Capped {
    type Stream = Admitted;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Admitted, S)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream.peer_addr().and_then(|peer| match self.0.enter(peer.ip()) {
            Some(slot) => Ok(Admitted { stream, _slot: slot }),
            None => {
                tracing::debug!("api: connection from {peer} refused: too many connections");
                Err(io::Error::other("too many connections"))
            }
        });
        Box::pin(std::future::ready(admitted.map(|a| (a, service))))
    }
}

/// An admitted connection: the stream, holding its place under the caps until dropped.
pub struct Admitted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
