//! Raw connections for the resource-limit tests: TCP from a chosen loopback source address
//! (all of 127.0.0.0/8 is this machine, so one test can be many "clients"), optionally TLS with
//! the engine's pinned certificate; connections that send part of a request and hold it, whole
//! requests timed to their answer, and the wait for the server to close a connection. Also the
//! process's file-descriptor limit, which a thousand held connections need.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// A connection to the engine, plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Sets how long a read waits (`None`: for ever).
    pub fn set_read_timeout(&self, wait: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(wait)
    }

    /// Whether the server has closed the connection, looking for at most `wait`: `Some(true)`
    /// closed (EOF or reset), `Some(false)` still open, `None` the server sent data.
    pub fn closed_within(&mut self, wait: Duration) -> Option<bool> {
        self.tcp().set_read_timeout(Some(wait.max(Duration::from_millis(1)))).unwrap();
        let mut b = [0u8; 512];
        match self.read(&mut b) {
            Ok(0) => Some(true),
            Ok(_) => None,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Some(false),
            Err(_) => Some(true),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// A TCP connection to `dst` from the loopback address `src`.
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// A plain connection from `src`.
pub fn plain(src: IpAddr, dst: SocketAddr) -> io::Result<Conn> {
    connect_from(src, dst).map(Conn::Plain)
}

/// A TLS connection from `src`, its handshake completed, trusting only the certificate whose
/// SHA-256 fingerprint is `config`'s (see [`pinned`]).
pub fn tls(src: IpAddr, dst: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<Conn> {
    let mut sock = connect_from(src, dst)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(Conn::Tls(Box::new(StreamOwned::new(conn, sock))))
}

/// A client configuration trusting only the certificate with `fingerprint` (hex, colons
/// optional): the CLI's own pinning (`kura_protocol::client::tls`).
pub fn pinned(fingerprint: &str) -> Arc<ClientConfig> {
    Arc::new(kura_protocol::client::tls::pinned_client_config(fingerprint).expect("a fingerprint"))
}

/// Sends `GET path` (with `Connection: close` and any `headers`) on `conn` and reads the whole
/// answer: its status code, its body, and the time it took.
pub fn get(mut conn: Conn, path: &str, headers: &[&str]) -> io::Result<(u16, String, Duration)> {
    let t0 = Instant::now();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: kura\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())?;
    conn.flush()?;
    conn.tcp().set_read_timeout(Some(Duration::from_secs(30)))?;
    let answer = read_to_close(&mut conn)?;
    let (status, body) = parse_answer(&answer)?;
    Ok((status, body, t0.elapsed()))
}

/// Everything the server sends until it closes the connection (a TLS connection closed
/// without close_notify counts as closed).
pub fn read_to_close(conn: &mut Conn) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = [0u8; 8192];
    loop {
        match conn.read(&mut b) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !out.is_empty() => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// The status code and body of an HTTP/1.1 answer (`Content-Length` or chunked bodies are
/// returned as sent; the tests look for words in them).
pub fn parse_answer(answer: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let bad = || io::Error::other(format!("not an HTTP answer: {text:?}"));
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Raises this process's soft limit on open files to at least `n` (children such as `kura
/// serve` inherit it); panics if the hard limit is lower.
pub fn raise_nofile(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft >= n {
        return;
    }
    assert!(hard >= n, "the hard limit on open files is {hard}, this test needs {n}: raise it (ulimit -Hn)");
    setrlimit(Resource::RLIMIT_NOFILE, n, hard).unwrap();
}

/// `VmRSS` and `VmHWM` of process `pid`, bytes (from `/proc/PID/status`).
pub fn rss_hwm(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|k| k * 1024)
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}
