//! A read-only TFTP server (RFC 1350) with option negotiation (RFC 2347), `blksize` (RFC 2348),
//! `tsize` and `timeout` (RFC 2349) and `windowsize` (RFC 7440), serving files from one root
//! directory. It hands iPXE to PXE ROMs (everything after that goes over HTTP) and, on the
//! signed path (Secure Boot), the whole chain: shim, GRUB, GRUB's per-machine configuration
//! (generated on request by [`Generated`], never a file) and the kernel and initramfs
//! ([`crate::grub`]). GRUB asks `blksize` 1024 and `tsize`, without `windowsize`: one block per
//! round trip, so each ACK is answered at once from a read-ahead buffer.
//!
//! # Which names are served
//!
//! A name is resolved inside the root or refused, never anything else:
//!
//! - `\` is read as `/` (Windows-style clients); empty and `.` components are skipped.
//! - Leading `/` are stripped: an "absolute" name is read relative to the root, as tftp-hpa's
//!   `--secure` does (many ROMs and pxelinux send `/file`). `/etc/passwd` is therefore
//!   `ROOT/etc/passwd`, which does not exist.
//! - A `..` component is refused (access violation), as are an empty name and names longer
//!   than [`MAX_NAME`] bytes. A NUL ends the name (that is the wire format), so a name with an
//!   "embedded" NUL is a shorter name followed by a mode that is not `octet`/`netascii`.
//! - The joined path is canonicalised (symlinks resolved) and must lie inside the canonical
//!   root *component-wise* (`/srv/tftp-evil` is not inside `/srv/tftp`), and be a regular
//!   file. It is then opened with `O_NOFOLLOW | O_NONBLOCK` and checked again with `fstat`.
//!   Symlinks that stay inside the root are followed.
//! - Write requests are refused (error 2, access violation).
//!
//! `netascii` requests are served byte for byte, like `octet` (these are binary boot files).
//!
//! # Options
//!
//! `blksize` 8..=65464 (larger asks are lowered to [`MAX_BLKSIZE`]; smaller or unparsable
//! values are ignored), `timeout` 1..=[`MAX_TIMEOUT_OPTION`] seconds (else ignored), `tsize` (answered with the
//! file's size), `windowsize` 1..=65535 (lowered to [`MAX_WINDOW`] blocks and
//! [`MAX_WINDOW_BYTES`]). Unknown options are
//! ignored; a repeated option counts once (the first). If any option is accepted the transfer
//! starts with an OACK; a client may answer it with an ERROR to abort (OVMF does this after its
//! `tsize` probe) and the transfer ends quietly.
//!
//! # Transfers
//!
//! Each read request gets its own task and its own ephemeral UDP socket (a new transfer ID),
//! connected to the client. The sender keeps the current window in memory, retransmits it when
//! no ACK arrives within the timeout (up to [`MAX_RETRIES`] times), continues from the block
//! after a partial ACK, and, with a window above 1, resends the window at once when the client
//! acks the block before it (RFC 7440: the client saw a gap) — once per window. Other ACKs that
//! acknowledge nothing new are ignored, so duplicate ACKs cannot cause duplicate windows (no
//! Sorcerer's Apprentice). Block numbers roll over from 65535 to 0.
//!
//! # Bounds (the boot network is not trusted)
//!
//! - At most [`MAX_TRANSFERS`] run at once, [`MAX_TRANSFERS_PER_SOURCE`] from one source
//!   address. A transfer is *unverified* until the client's first ACK (of the OACK or of
//!   DATA 1), which proves the source address receives our packets. A request over a cap
//!   evicts the oldest unverified transfer of its own source, or, at the global cap, of the
//!   source holding the most unverified transfers (fair sharing); only when none is unverified
//!   does it get "server busy". A flood of unanswered requests therefore never locks out a
//!   client that answers.
//! - Bytes sent for one request before its first ACK are at most [`UNVERIFIED_AMPLIFICATION`]
//!   times the request's size: an OACK is retransmitted only while that budget allows, and
//!   error messages are shortened to fit it.
//! - A request without options must get DATA 1 (RFC 1350: no OACK exists to answer with); its
//!   block (up to 516 bytes for a request of a few dozen: that is the protocol's own
//!   amplification, ~x20) is sent once, never retransmitted before an ACK, and only while the
//!   source's budget ([`PLAIN_RRQ_BURST`], refilled at [`PLAIN_RRQ_BYTES_PER_SEC`]) lasts. PXE
//!   ROMs and iPXE always send options (`tsize`, `blksize`), so they take the OACK path.
//! - `timeout` is accepted up to [`MAX_TIMEOUT_OPTION`] s and a transfer ends after
//!   [`MAX_RETRIES`] timeouts without progress, whatever the client asked.
//!
//! Malformed datagrams to port 69 get an ERROR if they look like a request and are ignored
//! (debug log) otherwise; requests longer than [`MAX_REQUEST`] bytes are refused before
//! parsing.

use crate::bootlog::{BootLog, Stage};
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Longest request datagram accepted (RFC 1350 requests are well under 512 bytes).
pub const MAX_REQUEST: usize = 2048;
/// Longest file name accepted.
pub const MAX_NAME: usize = 1024;
pub const DEFAULT_BLKSIZE: usize = 512;
pub const MIN_BLKSIZE: usize = 8;
pub const MAX_BLKSIZE: usize = 65464;
pub const MAX_WINDOW: u16 = 64;
/// Bytes in flight per window at most: the window is lowered so `windowsize * blksize` stays
/// under this (a client's default socket buffer, ~208 KiB on Linux, holds it even counting the
/// kernel's per-datagram overhead; larger windows lose their tail on every round).
pub const MAX_WINDOW_BYTES: usize = 64 << 10;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest `timeout` option accepted (seconds); a larger one is left out of the OACK (RFC 2349
/// lets a server decline an option, not change its value) and the default applies. With
/// [`MAX_RETRIES`] this bounds how long an unanswered transfer lives.
pub const MAX_TIMEOUT_OPTION: u64 = 10;
pub const MAX_RETRIES: u32 = 5;
/// Transfers at once, all sources together.
pub const MAX_TRANSFERS: usize = 512;
/// Transfers at once from one source address.
pub const MAX_TRANSFERS_PER_SOURCE: usize = 16;
/// Bytes sent in answer to one request before the client's first ACK, at most this many
/// times the request's size (OACKs and their retransmissions, errors): the server cannot be
/// used to amplify traffic towards a spoofed source.
pub const UNVERIFIED_AMPLIFICATION: usize = 2;
/// A request without options must be answered by DATA 1 (RFC 1350), up to 516 bytes, before
/// any ACK: those answers draw on a per-source budget of this many bytes, refilled at this
/// rate per second (a request arriving with the budget spent is dropped; the client retries).
pub const PLAIN_RRQ_BURST: u64 = 8 * 516;
pub const PLAIN_RRQ_BYTES_PER_SEC: u64 = 4 * 516;

/// TFTP error codes (RFC 1350, 2347).
pub mod code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const ILLEGAL_OPERATION: u16 = 4;
}

/// A parsed request (RRQ or WRQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Raw bytes: names need not be UTF-8.
    pub filename: Vec<u8>,
    /// Lowercased.
    pub mode: String,
    /// Names lowercased, in the order sent.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: Vec<u8> },
    Ack(u16),
    Error { code: u16, message: String },
    Oack(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram too short")]
    Short,
    #[error("datagram too long ({0} bytes)")]
    TooLong(usize),
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Splits NUL-terminated strings; the buffer must end with a NUL.
fn split_strings(b: &[u8]) -> Result<Vec<&[u8]>, ParseError> {
    if b.last() != Some(&0) {
        return Err(ParseError::Malformed("strings must end with NUL"));
    }
    Ok(b[..b.len() - 1].split(|&c| c == 0).collect())
}

fn ascii(b: &[u8]) -> Result<String, ParseError> {
    if !b.iter().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        return Err(ParseError::Malformed("option or mode is not printable ASCII"));
    }
    Ok(String::from_utf8_lossy(b).to_ascii_lowercase())
}

fn parse_pairs(strings: &[&[u8]]) -> Result<Vec<(String, String)>, ParseError> {
    if !strings.len().is_multiple_of(2) {
        return Err(ParseError::Malformed("option without a value"));
    }
    strings.chunks(2).map(|p| Ok((ascii(p[0])?, ascii(p[1])?))).collect()
}

/// Parses one datagram. Never panics; checks the size first.
pub fn parse(b: &[u8]) -> Result<Packet, ParseError> {
    if b.len() < 2 {
        return Err(ParseError::Short);
    }
    if b.len() > 4 + MAX_BLKSIZE {
        return Err(ParseError::TooLong(b.len()));
    }
    let op = u16_at(b, 0).ok_or(ParseError::Short)?;
    let rest = &b[2..];
    match op {
        OP_RRQ | OP_WRQ => {
            if b.len() > MAX_REQUEST {
                return Err(ParseError::TooLong(b.len()));
            }
            let strings = split_strings(rest)?;
            if strings.len() < 2 {
                return Err(ParseError::Malformed("a request needs a file name and a mode"));
            }
            if strings[0].is_empty() {
                return Err(ParseError::Malformed("empty file name"));
            }
            let req = Request {
                filename: strings[0].to_vec(),
                mode: ascii(strings[1])?,
                options: parse_pairs(&strings[2..])?,
            };
            Ok(if op == OP_RRQ { Packet::Rrq(req) } else { Packet::Wrq(req) })
        }
        OP_DATA => {
            let block = u16_at(b, 2).ok_or(ParseError::Short)?;
            Ok(Packet::Data { block, data: b[4..].to_vec() })
        }
        OP_ACK => {
            if b.len() != 4 {
                return Err(ParseError::Malformed("an ACK is 4 bytes"));
            }
            Ok(Packet::Ack(u16_at(b, 2).ok_or(ParseError::Short)?))
        }
        OP_ERROR => {
            let code = u16_at(b, 2).ok_or(ParseError::Short)?;
            let msg = &b[4..];
            let msg = msg.split(|&c| c == 0).next().unwrap_or_default();
            Ok(Packet::Error { code, message: String::from_utf8_lossy(msg).into_owned() })
        }
        OP_OACK => {
            if rest.is_empty() {
                return Ok(Packet::Oack(Vec::new()));
            }
            Ok(Packet::Oack(parse_pairs(&split_strings(rest)?)?))
        }
        other => Err(ParseError::Opcode(other)),
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// Encodes a packet (the inverse of [`parse`] for packets it accepts).
pub fn encode(p: &Packet) -> Vec<u8> {
    let mut out = Vec::new();
    match p {
        Packet::Rrq(r) | Packet::Wrq(r) => {
            out.extend_from_slice(&(if matches!(p, Packet::Rrq(_)) { OP_RRQ } else { OP_WRQ }).to_be_bytes());
            put_str(&mut out, &r.filename);
            put_str(&mut out, r.mode.as_bytes());
            for (k, v) in &r.options {
                put_str(&mut out, k.as_bytes());
                put_str(&mut out, v.as_bytes());
            }
        }
        Packet::Data { block, data } => {
            out.extend_from_slice(&OP_DATA.to_be_bytes());
            out.extend_from_slice(&block.to_be_bytes());
            out.extend_from_slice(data);
        }
        Packet::Ack(block) => {
            out.extend_from_slice(&OP_ACK.to_be_bytes());
            out.extend_from_slice(&block.to_be_bytes());
        }
        Packet::Error { code, message } => {
            out.extend_from_slice(&OP_ERROR.to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            let msg: Vec<u8> = message.bytes().filter(|&c| c != 0).collect();
            put_str(&mut out, &msg);
        }
        Packet::Oack(opts) => {
            out.extend_from_slice(&OP_OACK.to_be_bytes());
            for (k, v) in opts {
                put_str(&mut out, k.as_bytes());
                put_str(&mut out, v.as_bytes());
            }
        }
    }
    out
}

pub fn error_packet(code: u16, message: &str) -> Vec<u8> {
    encode(&Packet::Error { code, message: message.to_string() })
}

/// The transfer parameters agreed for one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub timeout: Duration,
    pub windowsize: u16,
    /// The OACK to send (empty: no OACK, start with DATA 1).
    pub oack: Vec<(String, String)>,
}

/// Decides which requested options to accept (see the module docs). Pure.
pub fn negotiate(options: &[(String, String)], file_size: u64) -> Negotiated {
    let mut n = Negotiated { blksize: DEFAULT_BLKSIZE, timeout: DEFAULT_TIMEOUT, windowsize: 1, oack: Vec::new() };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in options {
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        let num: Option<u64> = if value.is_empty() || value.len() > 20 || !value.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            value.parse().ok()
        };
        match (name.as_str(), num) {
            ("blksize", Some(v)) if v >= MIN_BLKSIZE as u64 => {
                n.blksize = v.min(MAX_BLKSIZE as u64) as usize;
                n.oack.push((name.clone(), n.blksize.to_string()));
            }
            ("timeout", Some(v)) if (1..=MAX_TIMEOUT_OPTION).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                n.oack.push((name.clone(), v.to_string()));
            }
            ("tsize", Some(_)) => n.oack.push((name.clone(), file_size.to_string())),
            ("windowsize", Some(v @ 1..=65535)) => {
                n.windowsize = (v as u16).min(MAX_WINDOW);
                n.oack.push((name.clone(), String::new()));
            }
            _ => {}
        }
    }
    // The window's value depends on the block size, wherever the two came in the request.
    let by_bytes = (MAX_WINDOW_BYTES / n.blksize).clamp(1, MAX_WINDOW as usize) as u16;
    n.windowsize = n.windowsize.min(by_bytes);
    for (k, v) in &mut n.oack {
        if k == "windowsize" {
            *v = n.windowsize.to_string();
        }
    }
    n
}

/// Why a name is not served: the TFTP error to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub message: &'static str,
}

fn refuse(code: u16, message: &'static str) -> Refusal {
    Refusal { code, message }
}

/// Turns a requested name into a relative path of plain components, or refuses it. Pure.
pub fn sanitize(name: &[u8]) -> Result<PathBuf, Refusal> {
    if name.is_empty() {
        return Err(refuse(code::ACCESS_VIOLATION, "empty file name"));
    }
    if name.len() > MAX_NAME {
        return Err(refuse(code::ACCESS_VIOLATION, "file name too long"));
    }
    if name.contains(&0) {
        return Err(refuse(code::ACCESS_VIOLATION, "NUL in file name"));
    }
    let mut rel = PathBuf::new();
    for comp in name.split(|&c| c == b'/' || c == b'\\') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(refuse(code::ACCESS_VIOLATION, "\"..\" is not allowed")),
            c => rel.push(std::ffi::OsStr::from_bytes(c)),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(refuse(code::ACCESS_VIOLATION, "no file name"));
    }
    Ok(rel)
}

/// What a TFTP server serves: files under `root`, plus a few files named explicitly
/// (`named`: TFTP name → path), which need not be under the root. The iPXE builds are served
/// that way: on Debian `/usr/lib/ipxe/ipxe.efi` is a symlink to `/boot/ipxe.efi`, which the
/// root's symlink check would rightly refuse. `generated` files are made on request and asked
/// first (the signed chain's GRUB configurations, [`crate::grub`]).
#[derive(Clone)]
pub struct Files {
    pub root: PathBuf,
    pub named: std::collections::HashMap<PathBuf, PathBuf>,
    pub generated: Option<Arc<dyn Generated>>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("root", &self.root)
            .field("named", &self.named)
            .field("generated", &self.generated.is_some())
            .finish()
    }
}

/// Files whose content is made when a client asks (never written into the TFTP root).
pub trait Generated: Send + Sync {
    /// The content of `name` (a sanitized name, `/`-separated) for a request from `peer`;
    /// `None` when `name` is not one of these files. May block (called off the runtime).
    fn generate(&self, name: &str, peer: IpAddr) -> Option<Result<Vec<u8>, String>>;
}

fn not_found() -> Refusal {
    refuse(code::FILE_NOT_FOUND, "file not found")
}

/// What a transfer reads from: a file, or generated bytes.
type Content = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// Resolves a sanitized relative path: a generated file, a named file, else a file inside the
/// canonical `root`; opens it and says its size.
async fn open_content(files: &Files, rel: &Path, peer: IpAddr) -> Result<(Content, u64), Refusal> {
    if let (Some(g), Some(name)) = (&files.generated, rel.to_str()) {
        let (g, name) = (g.clone(), name.to_string());
        match tokio::task::spawn_blocking(move || g.generate(&name, peer)).await {
            Ok(None) => {}
            Ok(Some(Ok(bytes))) => {
                let len = bytes.len() as u64;
                return Ok((Box::new(std::io::Cursor::new(bytes)), len));
            }
            Ok(Some(Err(e))) => {
                tracing::error!("tftp: generating {} for {peer}: {e}", rel.display());
                return Err(refuse(code::NOT_DEFINED, "server error"));
            }
            Err(e) => {
                tracing::error!("tftp: generating {} failed: {e}", rel.display());
                return Err(refuse(code::NOT_DEFINED, "server error"));
            }
        }
    }
    let (file, size) = open_inside(files, rel).await?;
    Ok((Box::new(tokio::io::BufReader::with_capacity(256 << 10, file)), size))
}

/// Resolves a sanitized relative path (a named file, else inside the canonical `root`) and
/// opens it.
async fn open_inside(files: &Files, rel: &Path) -> Result<(tokio::fs::File, u64), Refusal> {
    let path = match files.named.get(rel) {
        Some(p) => p.clone(),
        None => {
            let path = tokio::fs::canonicalize(files.root.join(rel)).await.map_err(|_| not_found())?;
            if !path.starts_with(&files.root) {
                return Err(refuse(code::ACCESS_VIOLATION, "outside the TFTP root"));
            }
            path
        }
    };
    let file = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path)
    })
    .await
    .map_err(|_| not_found())?
    .map_err(|_| refuse(code::ACCESS_VIOLATION, "cannot open the file"))?;
    let meta = file.metadata().map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(not_found());
    }
    Ok((tokio::fs::File::from_std(file), meta.len()))
}

/// An ERROR packet for an answer to a request of `request_len` bytes, its message shortened so
/// the packet stays within [`UNVERIFIED_AMPLIFICATION`] times the request.
pub fn bounded_error(code: u16, message: &str, request_len: usize) -> Vec<u8> {
    let room = (request_len * UNVERIFIED_AMPLIFICATION).saturating_sub(5);
    let mut end = message.len().min(room);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    error_packet(code, &message[..end])
}

/// The running transfers, by source, for the caps and the eviction rule (module docs).
#[derive(Default)]
struct Registry {
    transfers: std::collections::BTreeMap<u64, Entry>,
    next: u64,
    /// Per source: the plain-RRQ byte budget left and when it was last refilled.
    budgets: std::collections::HashMap<IpAddr, (u64, tokio::time::Instant)>,
}

struct Entry {
    ip: IpAddr,
    verified: bool,
    abort: Option<tokio::task::AbortHandle>,
}

impl Registry {
    /// Makes room for one more transfer from `ip`: `false` if there is none (every transfer
    /// in the way has been acknowledged).
    fn admit(&mut self, ip: IpAddr) -> bool {
        let mine = self.transfers.values().filter(|e| e.ip == ip).count();
        if mine >= MAX_TRANSFERS_PER_SOURCE {
            return self.evict_unverified_of(ip);
        }
        if self.transfers.len() >= MAX_TRANSFERS {
            let mut counts: std::collections::HashMap<IpAddr, usize> = Default::default();
            for e in self.transfers.values().filter(|e| !e.verified) {
                *counts.entry(e.ip).or_default() += 1;
            }
            let Some((&top, _)) = counts.iter().max_by_key(|(_, n)| **n) else { return false };
            return self.evict_unverified_of(top);
        }
        true
    }

    /// Ends the oldest unverified transfer of `ip`, if any.
    fn evict_unverified_of(&mut self, ip: IpAddr) -> bool {
        let Some(id) = self.transfers.iter().find(|(_, e)| e.ip == ip && !e.verified).map(|(id, _)| *id) else {
            return false;
        };
        if let Some(Entry { abort: Some(h), .. }) = self.transfers.remove(&id) {
            h.abort();
        }
        tracing::debug!("tftp: an unacknowledged transfer to {ip} was ended to make room");
        true
    }

    /// Draws `bytes` from `ip`'s plain-RRQ budget; `false` if it is spent.
    fn draw(&mut self, ip: IpAddr, bytes: u64) -> bool {
        let now = tokio::time::Instant::now();
        if self.budgets.len() > 4 * MAX_TRANSFERS {
            self.budgets.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        }
        let (left, at) = self.budgets.entry(ip).or_insert((PLAIN_RRQ_BURST, now));
        let refill = now.duration_since(*at).as_millis() as u64 * PLAIN_RRQ_BYTES_PER_SEC / 1000;
        if refill > 0 {
            *left = (*left + refill).min(PLAIN_RRQ_BURST);
            *at = now;
        }
        if *left < bytes {
            return false;
        }
        *left -= bytes;
        true
    }
}

/// A transfer's place in the [`Registry`]; given back when the transfer ends (or is aborted).
struct Ticket {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl Ticket {
    /// The client has acknowledged a block: the transfer can no longer be evicted.
    fn verified(&self) {
        if let Some(e) = self.registry.lock().unwrap_or_else(|e| e.into_inner()).transfers.get_mut(&self.id) {
            e.verified = true;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).transfers.remove(&self.id);
    }
}

/// Serves TFTP on `socket` from `files` until `shutdown` completes. Running transfers are
/// aborted at shutdown.
pub async fn serve(
    socket: UdpSocket,
    mut files: Files,
    log: Arc<BootLog>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    files.root = tokio::fs::canonicalize(&files.root).await?;
    for p in files.named.values_mut() {
        *p = tokio::fs::canonicalize(&*p).await?;
    }
    let files = Arc::new(files);
    let local_ip = socket.local_addr()?.ip();
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65536];
    tokio::pin!(shutdown);
    loop {
        let (n, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("tftp: receive failed: {e}");
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let reply = |code: u16, msg: &str| {
            let pkt = bounded_error(code, msg, n);
            let s = &socket;
            async move {
                let _ = s.send_to(&pkt, peer).await;
            }
        };
        match parse(&buf[..n]) {
            Ok(Packet::Rrq(req)) => {
                let admitted = {
                    let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                    // No option accepted: DATA 1 is the answer, drawn from the source's budget.
                    let plain = negotiate(&req.options, 0).oack.is_empty();
                    if plain && !reg.draw(peer.ip(), (4 + DEFAULT_BLKSIZE) as u64) {
                        tracing::debug!(
                            "tftp: request from {peer} dropped: its budget of unacknowledged replies is spent"
                        );
                        continue;
                    }
                    if reg.admit(peer.ip()) {
                        reg.next += 1;
                        let id = reg.next;
                        reg.transfers.insert(id, Entry { ip: peer.ip(), verified: false, abort: None });
                        Some(id)
                    } else {
                        None
                    }
                };
                let Some(id) = admitted else {
                    reply(code::NOT_DEFINED, "server busy, try again").await;
                    continue;
                };
                let (files, log) = (files.clone(), log.clone());
                let ticket = Ticket { registry: registry.clone(), id };
                let handle = tasks.spawn(async move {
                    transfer(local_ip, peer, &files, req, n, &ticket, log).await;
                });
                if let Some(e) = registry.lock().unwrap_or_else(|e| e.into_inner()).transfers.get_mut(&id) {
                    e.abort = Some(handle);
                }
            }
            Ok(Packet::Wrq(_)) => {
                tracing::debug!("tftp: write request from {peer} refused");
                reply(code::ACCESS_VIOLATION, "this server is read-only").await;
            }
            Ok(other) => tracing::debug!("tftp: ignoring a stray {other:?} from {peer} on the request port"),
            Err(e @ (ParseError::Malformed(_) | ParseError::TooLong(_))) if n >= 2 && matches!(buf[1], 1 | 2) => {
                tracing::debug!("tftp: bad request from {peer}: {e}");
                reply(code::ILLEGAL_OPERATION, "malformed request").await;
            }
            Err(e) => tracing::debug!("tftp: ignoring a malformed datagram from {peer}: {e}"),
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// Outcome of a transfer, for the boot log and the debug log.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done { bytes: u64 },
    Refused(Refusal),
    AbortedByClient(String),
    TimedOut,
    Io(String),
}

async fn transfer(
    local_ip: IpAddr,
    peer: SocketAddr,
    files: &Files,
    req: Request,
    request_len: usize,
    ticket: &Ticket,
    log: Arc<BootLog>,
) {
    let name = String::from_utf8_lossy(&req.filename).into_owned();
    let short: String = name.chars().take(120).collect();
    let sock = match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("tftp: cannot bind a transfer socket: {e}");
            return;
        }
    };
    if let Err(e) = sock.connect(peer).await {
        tracing::debug!("tftp: cannot reach {peer}: {e}");
        return;
    }
    let outcome = run_transfer(&sock, files, &req, request_len, ticket).await;
    let detail = match &outcome {
        Outcome::Done { bytes } => format!("{short}: sent {bytes} bytes"),
        Outcome::Refused(r) => format!("{short}: refused: {}", r.message),
        Outcome::AbortedByClient(m) => format!("{short}: client ended the transfer ({m})"),
        Outcome::TimedOut => format!("{short}: client stopped answering"),
        Outcome::Io(e) => format!("{short}: read error: {e}"),
    };
    tracing::debug!("tftp {peer}: {detail}");
    log.record_ip(peer.ip(), Stage::Tftp, detail);
}

async fn run_transfer(sock: &UdpSocket, files: &Files, req: &Request, request_len: usize, ticket: &Ticket) -> Outcome {
    let peer_ip = match sock.peer_addr() {
        Ok(a) => a.ip().to_canonical(),
        Err(e) => return Outcome::Io(e.to_string()),
    };
    let send_err = |r: Refusal| async move {
        let _ = sock.send(&bounded_error(r.code, r.message, request_len)).await;
        Outcome::Refused(r)
    };
    if req.mode != "octet" && req.mode != "netascii" {
        return send_err(refuse(code::ILLEGAL_OPERATION, "unsupported transfer mode")).await;
    }
    let rel = match sanitize(&req.filename) {
        Ok(r) => r,
        Err(r) => return send_err(r).await,
    };
    let (file, size) = match open_content(files, &rel, peer_ip).await {
        Ok(f) => f,
        Err(r) => return send_err(r).await,
    };
    let n = negotiate(&req.options, size);
    let mut sender = Sender::new(file, n.blksize, n.windowsize as usize);
    let mut buf = vec![0u8; 65536];
    let mut retries = 0;
    // Bytes this request may still draw before the client's first ACK (module docs).
    let mut unverified = request_len * UNVERIFIED_AMPLIFICATION;
    if !n.oack.is_empty() {
        let oack = encode(&Packet::Oack(n.oack.clone()));
        if oack.len() > unverified {
            return send_err(refuse(code::NOT_DEFINED, "options too large")).await;
        }
        loop {
            if oack.len() <= unverified {
                unverified -= oack.len();
                if sock.send(&oack).await.is_err() {
                    return Outcome::Io("send failed".into());
                }
            }
            match recv_timeout(sock, &mut buf, n.timeout).await {
                Some(Packet::Ack(0)) => break,
                Some(Packet::Error { code, message }) => return Outcome::AbortedByClient(format!("{code}: {message}")),
                Some(_) => continue,
                None => {
                    retries += 1;
                    if retries > MAX_RETRIES || oack.len() > unverified {
                        return Outcome::TimedOut;
                    }
                }
            }
        }
        ticket.verified();
    }
    let mut acked = !n.oack.is_empty();
    retries = 0;
    let mut resend = true;
    // Whether the window was already resent for an ACK that acknowledged nothing new.
    let mut gap_resent = false;
    loop {
        if resend {
            if let Err(e) = sender.fill().await {
                let _ = sock.send(&error_packet(code::NOT_DEFINED, "read error")).await;
                return Outcome::Io(e.to_string());
            }
            for (idx, data) in &sender.window {
                let mut pkt = Vec::with_capacity(4 + data.len());
                pkt.extend_from_slice(&OP_DATA.to_be_bytes());
                pkt.extend_from_slice(&(*idx as u16).to_be_bytes());
                pkt.extend_from_slice(data);
                if sock.send(&pkt).await.is_err() {
                    return Outcome::Io("send failed".into());
                }
            }
        }
        match recv_timeout(sock, &mut buf, n.timeout).await {
            Some(Packet::Ack(a)) => match sender.ack(a) {
                AckResult::Finished => return Outcome::Done { bytes: sender.sent_bytes },
                AckResult::Progress => {
                    if !acked {
                        acked = true;
                        ticket.verified();
                    }
                    retries = 0;
                    resend = true;
                    gap_resent = false;
                }
                // A windowed client acks its last in-order block when it sees a gap: resend
                // the window at once, but only once per window (no Sorcerer's Apprentice).
                AckResult::Stale if n.windowsize > 1 && !gap_resent && a == (sender.base as u16).wrapping_sub(1) => {
                    resend = true;
                    gap_resent = true;
                }
                AckResult::Stale => resend = false,
            },
            Some(Packet::Error { code, message }) => return Outcome::AbortedByClient(format!("{code}: {message}")),
            Some(_) => resend = false,
            None => {
                retries += 1;
                // DATA 1 of a request without options is never sent twice before an ACK.
                if retries > MAX_RETRIES || !acked {
                    return Outcome::TimedOut;
                }
                resend = true;
                gap_resent = false;
            }
        }
    }
}

/// Waits for one parseable packet; `None` on timeout. Malformed datagrams are skipped.
async fn recv_timeout(sock: &UdpSocket, buf: &mut [u8], timeout: Duration) -> Option<Packet> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            Err(_) => return None,
            Ok(Err(e)) => {
                // ICMP port unreachable surfaces here on a connected socket: the client is gone.
                tracing::debug!("tftp: receive: {e}");
                tokio::time::sleep_until(deadline).await;
                return None;
            }
            Ok(Ok(n)) => match parse(&buf[..n]) {
                Ok(p) => return Some(p),
                Err(e) => tracing::debug!("tftp: ignoring a malformed datagram: {e}"),
            },
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum AckResult {
    Finished,
    Progress,
    /// Acknowledges nothing new.
    Stale,
}

/// The sending side's window: blocks `base..base+window.len()` (1-based, unwrapped indices).
struct Sender {
    file: Content,
    blksize: usize,
    windowsize: usize,
    /// The first unacknowledged block.
    base: u64,
    /// The next block to read from the file.
    next: u64,
    /// The last block (shorter than `blksize`), once read.
    last: Option<u64>,
    window: VecDeque<(u64, Vec<u8>)>,
    sent_bytes: u64,
}

impl Sender {
    fn new(file: Content, blksize: usize, windowsize: usize) -> Sender {
        Sender { file, blksize, windowsize, base: 1, next: 1, last: None, window: VecDeque::new(), sent_bytes: 0 }
    }

    /// Reads blocks until the window is full or the last block is in it.
    async fn fill(&mut self) -> std::io::Result<()> {
        while self.window.len() < self.windowsize && self.last.is_none() {
            let mut data = vec![0u8; self.blksize];
            let mut got = 0;
            while got < self.blksize {
                let k = self.file.read(&mut data[got..]).await?;
                if k == 0 {
                    break;
                }
                got += k;
            }
            data.truncate(got);
            if got < self.blksize {
                self.last = Some(self.next);
            }
            self.window.push_back((self.next, data));
            self.next += 1;
        }
        Ok(())
    }

    /// Handles an ACK of wire block number `a`.
    fn ack(&mut self, a: u16) -> AckResult {
        let Some(pos) = self.window.iter().position(|(idx, _)| *idx as u16 == a) else {
            return AckResult::Stale;
        };
        let (idx, _) = self.window[pos];
        for _ in 0..=pos {
            if let Some((_, d)) = self.window.pop_front() {
                self.sent_bytes += d.len() as u64;
            }
        }
        self.base = idx + 1;
        if self.last == Some(idx) {
            AckResult::Finished
        } else {
            AckResult::Progress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    fn rrq(name: &[u8], opts: &[(&str, &str)]) -> Vec<u8> {
        encode(&Packet::Rrq(Request {
            filename: name.to_vec(),
            mode: "octet".into(),
            options: opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }))
    }

    #[test]
    fn netboot_tftp_parses_requests_and_rejects_malformed_ones() {
        let p = parse(b"\0\x01undionly.kpxe\0OCTET\0BLKSIZE\x001468\0tsize\x000\0").unwrap();
        let Packet::Rrq(r) = p else { panic!("not an RRQ") };
        assert_eq!(r.filename, b"undionly.kpxe");
        assert_eq!(r.mode, "octet");
        assert_eq!(r.options, vec![("blksize".into(), "1468".into()), ("tsize".into(), "0".into())]);
        for bad in [
            &b""[..],
            b"\0",
            b"\0\x01",
            b"\0\x01file",
            b"\0\x01file\0",
            b"\0\x01\0octet\0",
            b"\0\x01file\0octet\0blksize\0",
            b"\0\x01file\0oc\x01tet\0",
            b"\0\x04\0",
            b"\0\x04\0\x01\0",
            b"\0\x09\0\x01",
            b"\0\x06x\0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(parse(&vec![0u8; 70000]), Err(ParseError::TooLong(_))));
        let mut long = b"\0\x01".to_vec();
        long.extend(std::iter::repeat_n(b'a', 3000));
        long.extend_from_slice(b"\0octet\0");
        assert!(matches!(parse(&long), Err(ParseError::TooLong(_))));
        assert_eq!(parse(b"\0\x05\0\x08probe\0").unwrap(), Packet::Error { code: 8, message: "probe".into() });
        assert_eq!(parse(b"\0\x04\xff\xff").unwrap(), Packet::Ack(65535));
    }

    #[test]
    fn netboot_tftp_negotiates_options_per_rfc() {
        let o = |v: &[(&str, &str)]| v.iter().map(|(k, x)| (k.to_string(), x.to_string())).collect::<Vec<_>>();
        let n = negotiate(&o(&[("blksize", "1468"), ("tsize", "0"), ("windowsize", "4")]), 1234);
        assert_eq!((n.blksize, n.windowsize), (1468, 4));
        assert_eq!(n.oack, o(&[("blksize", "1468"), ("tsize", "1234"), ("windowsize", "4")]));
        // Out of range, nonsense and unknown values are ignored; too large is lowered.
        let n = negotiate(
            &o(&[
                ("blksize", "7"),
                ("timeout", "0"),
                ("windowsize", "0"),
                ("tsize", "-1"),
                ("foo", "bar"),
                ("blksize", "9999"),
            ]),
            1,
        );
        assert_eq!(n, negotiate(&[], 1));
        assert!(n.oack.is_empty());
        let n = negotiate(&o(&[("blksize", "99999999999999999999999"), ("timeout", "256")]), 1);
        assert!(n.oack.is_empty());
        let n = negotiate(&o(&[("blksize", "512"), ("windowsize", "65535"), ("timeout", "10")]), 1);
        assert_eq!((n.blksize, n.windowsize, n.timeout.as_secs()), (512, MAX_WINDOW, 10));
        // A timeout over MAX_TIMEOUT_OPTION is declined (left out of the OACK), not lowered.
        let n = negotiate(&o(&[("timeout", "255"), ("tsize", "0")]), 1);
        assert_eq!(n.timeout, DEFAULT_TIMEOUT);
        assert_eq!(n.oack, o(&[("tsize", "1")]));
        let n = negotiate(&o(&[("windowsize", "16"), ("blksize", "65535")]), 1);
        assert_eq!((n.blksize, n.windowsize), (MAX_BLKSIZE, 1));
        assert_eq!(n.oack, o(&[("windowsize", "1"), ("blksize", "65464")]));
        let n = negotiate(&o(&[("blksize", "8192"), ("windowsize", "16")]), 1);
        assert_eq!(n.windowsize, 8);
    }

    #[test]
    fn netboot_tftp_sanitizes_names() {
        assert_eq!(sanitize(b"undionly.kpxe").unwrap(), PathBuf::from("undionly.kpxe"));
        assert_eq!(sanitize(b"/boot//x/./y").unwrap(), PathBuf::from("boot/x/y"));
        assert_eq!(sanitize(b"\\efi\\ipxe.efi").unwrap(), PathBuf::from("efi/ipxe.efi"));
        for bad in [&b""[..], b"..", b"../x", b"a/../../x", b"..\\x", b"a\\..\\b", b"/", b".", b"a\0b"] {
            assert!(sanitize(bad).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        assert!(sanitize(&vec![b'a'; MAX_NAME + 1]).is_err());
    }

    proptest! {
        #[test]
        fn netboot_tftp_parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse(&b);
        }

        #[test]
        fn netboot_tftp_parse_never_panics_on_requests(
            op in 1u16..=6, body in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..300)
        ) {
            let mut b = op.to_be_bytes().to_vec();
            b.extend(body);
            if let Ok(Packet::Rrq(r)) = parse(&b) {
                let _ = sanitize(&r.filename);
                let _ = negotiate(&r.options, 1);
            }
        }

        #[test]
        fn netboot_tftp_round_trips(
            name in "[a-zA-Z0-9./_-]{1,100}",
            opts in proptest::collection::vec(("[a-z]{1,10}", "[0-9]{1,6}"), 0..5),
            block in any::<u16>(),
            data in proptest::collection::vec(any::<u8>(), 0..600),
            code in 0u16..9,
            msg in "[ -~]{0,50}",
        ) {
            let pkts = [
                Packet::Rrq(Request { filename: name.clone().into_bytes(), mode: "octet".into(), options: opts.clone() }),
                Packet::Wrq(Request { filename: name.into_bytes(), mode: "netascii".into(), options: opts.clone() }),
                Packet::Data { block, data },
                Packet::Ack(block),
                Packet::Error { code, message: msg },
                Packet::Oack(opts),
            ];
            for p in pkts {
                prop_assert_eq!(parse(&encode(&p)).unwrap(), p);
            }
        }
    }

    // ---- a test client -------------------------------------------------------------------

    #[derive(Debug)]
    enum Fetch {
        Ok(Vec<u8>),
        Error(u16, String),
    }

    /// Fetches `name` with options; answers OACKs, ACKs each window's last in-order block.
    async fn fetch(server: SocketAddr, name: &[u8], opts: &[(&str, &str)]) -> Fetch {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&rrq(name, opts), server).await.unwrap();
        fetch_on(sock, opts).await
    }

    async fn fetch_on(sock: UdpSocket, opts: &[(&str, &str)]) -> Fetch {
        let mut blksize = 512;
        let mut window = 1u16;
        let mut out = Vec::new();
        let mut expect: u16 = 1;
        let mut since_ack = 0u16;
        let mut buf = vec![0u8; 70000];
        let mut tid: Option<SocketAddr> = None;
        let mut idle = Duration::ZERO;
        let _ = opts;
        loop {
            // Like a real windowed client: when blocks stop coming (the tail of a window was
            // lost), ack the last in-order block so the server resends from there.
            let tick = Duration::from_millis(100);
            let (n, from) = match tokio::time::timeout(tick, sock.recv_from(&mut buf)).await {
                Ok(r) => {
                    idle = Duration::ZERO;
                    r.unwrap()
                }
                Err(_) => {
                    idle += tick;
                    assert!(idle < Duration::from_secs(10), "timeout");
                    if let (Some(t), true) = (tid, expect > 1) {
                        sock.send_to(&encode(&Packet::Ack(expect.wrapping_sub(1))), t).await.unwrap();
                        since_ack = 0;
                    }
                    continue;
                }
            };
            if *tid.get_or_insert(from) != from {
                continue;
            }
            match parse(&buf[..n]).unwrap() {
                Packet::Oack(o) => {
                    for (k, v) in o {
                        match k.as_str() {
                            "blksize" => blksize = v.parse().unwrap(),
                            "windowsize" => window = v.parse().unwrap(),
                            _ => {}
                        }
                    }
                    sock.send_to(&encode(&Packet::Ack(0)), from).await.unwrap();
                }
                Packet::Data { block, data } => {
                    if block == expect {
                        out.extend_from_slice(&data);
                        since_ack += 1;
                        let last = data.len() < blksize;
                        if last || since_ack == window {
                            sock.send_to(&encode(&Packet::Ack(block)), from).await.unwrap();
                            since_ack = 0;
                        }
                        expect = expect.wrapping_add(1);
                        if last {
                            return Fetch::Ok(out);
                        }
                    } else {
                        sock.send_to(&encode(&Packet::Ack(expect.wrapping_sub(1))), from).await.unwrap();
                        since_ack = 0;
                    }
                }
                Packet::Error { code, message } => return Fetch::Error(code, message),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        addr: SocketAddr,
        data: Vec<u8>,
        _stop: tokio::sync::oneshot::Sender<()>,
        log: Arc<BootLog>,
    }

    /// root/ with file.bin (1 MiB), small.txt, sub/inner.txt, a symlink inside (ok) and ones
    /// leading out; tftp-evil/ beside it with secret.txt; /secret-outside.txt beside both.
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tftp");
        let evil = dir.path().join("tftp-evil");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&evil).unwrap();
        let data: Vec<u8> = (0..(1u32 << 20) + 123).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(root.join("file.bin"), &data).unwrap();
        std::fs::write(root.join("small.txt"), b"hello").unwrap();
        std::fs::write(root.join("exact.bin"), vec![7u8; 1024]).unwrap();
        std::fs::write(root.join("sub/inner.txt"), b"inner").unwrap();
        std::fs::write(evil.join("secret.txt"), b"SECRET-SIBLING").unwrap();
        std::fs::write(dir.path().join("secret-outside.txt"), b"SECRET-OUTSIDE").unwrap();
        std::os::unix::fs::symlink("small.txt", root.join("ok-link")).unwrap();
        std::os::unix::fs::symlink("../tftp-evil/secret.txt", root.join("evil-link")).unwrap();
        std::os::unix::fs::symlink(&evil, root.join("evil-dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd-link")).unwrap();
        // A file configured by name, outside the root behind a symlink (like Debian's ipxe.efi).
        std::fs::write(dir.path().join("real-ipxe.efi"), b"NAMED").unwrap();
        let outside_named = dir.path().join("link-ipxe.efi");
        std::os::unix::fs::symlink(dir.path().join("real-ipxe.efi"), &outside_named).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let log = BootLog::new();
        let l = log.clone();
        tokio::spawn(async move {
            let mut named = std::collections::HashMap::new();
            named.insert(PathBuf::from("named.efi"), outside_named);
            serve(sock, Files { root, named, generated: None }, l, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Fixture { _dir: dir, addr, data, _stop: tx, log }
    }

    #[tokio::test]
    async fn netboot_tftp_serves_files_with_and_without_options() {
        let f = fixture().await;
        let Fetch::Ok(b) = fetch(f.addr, b"small.txt", &[]).await else { panic!() };
        assert_eq!(b, b"hello");
        let Fetch::Ok(b) = fetch(f.addr, b"/sub/inner.txt", &[("blksize", "8")]).await else { panic!() };
        assert_eq!(b, b"inner");
        let Fetch::Ok(b) = fetch(f.addr, b"ok-link", &[]).await else { panic!() };
        assert_eq!(b, b"hello");
        let Fetch::Ok(b) = fetch(f.addr, b"/named.efi", &[]).await else { panic!() };
        assert_eq!(b, b"NAMED");
        // A file that is a multiple of the block size ends with an empty block.
        let Fetch::Ok(b) = fetch(f.addr, b"exact.bin", &[("blksize", "512")]).await else { panic!() };
        assert_eq!(b.len(), 1024);
        let Fetch::Ok(b) = fetch(f.addr, b"file.bin", &[("blksize", "1468"), ("windowsize", "8")]).await else {
            panic!()
        };
        assert_eq!(b, f.data);
        // Tiny blocks: 2^20/8 > 65535 blocks, so the block number rolls over.
        let Fetch::Ok(b) = fetch(f.addr, b"file.bin", &[("blksize", "8"), ("windowsize", "64")]).await else {
            panic!()
        };
        assert_eq!(b, f.data);
        assert!(!f.log.machines().is_empty());
    }

    #[tokio::test]
    async fn netboot_tftp_tsize_probe_then_real_request_like_ovmf() {
        let f = fixture().await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&rrq(b"file.bin", &[("tsize", "0")]), f.addr).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).await.unwrap();
        assert_eq!(parse(&buf[..n]).unwrap(), Packet::Oack(vec![("tsize".into(), f.data.len().to_string())]));
        sock.send_to(&error_packet(8, "tsize probe done"), from).await.unwrap();
        let Fetch::Ok(b) =
            fetch(f.addr, b"file.bin", &[("blksize", "1468"), ("windowsize", "4"), ("tsize", "0")]).await
        else {
            panic!()
        };
        assert_eq!(b, f.data);
    }

    #[tokio::test]
    async fn netboot_tftp_hostile_requests_get_an_error_and_nothing_from_outside() {
        let f = fixture().await;
        let mut huge = vec![b'a'; 65000];
        huge.extend_from_slice(b"/small.txt");
        let names: Vec<Vec<u8>> = vec![
            b"../tftp-evil/secret.txt".to_vec(),
            b"..\\tftp-evil\\secret.txt".to_vec(),
            b"sub/../../secret-outside.txt".to_vec(),
            b"../secret-outside.txt".to_vec(),
            b"/../secret-outside.txt".to_vec(),
            b"evil-link".to_vec(),
            b"evil-dir/secret.txt".to_vec(),
            b"passwd-link".to_vec(),
            b"real-ipxe.efi".to_vec(),
            b"../real-ipxe.efi".to_vec(),
            b"/etc/passwd".to_vec(),
            b"sub".to_vec(),
            b"does-not-exist".to_vec(),
            b"C:\\..\\..\\secret-outside.txt".to_vec(),
            huge,
        ];
        for name in &names {
            match fetch(f.addr, name, &[("blksize", "1468")]).await {
                Fetch::Error(code, msg) => {
                    assert!(!msg.contains("SECRET"), "{msg}");
                    assert!(code <= 8, "{code}");
                }
                Fetch::Ok(b) => {
                    panic!("{:?} was served: {:?}", String::from_utf8_lossy(&name[..name.len().min(80)]), b)
                }
            }
        }
        // Raw hostile datagrams: embedded NUL, empty name, a write request, nonsense options,
        // a bare opcode, an unknown opcode.
        let raw: Vec<&[u8]> = vec![
            b"\0\x01../tftp-evil/secret.txt\0octet\0",
            b"\0\x01small\0.txt\0octet\0",
            b"\0\x01\0octet\0",
            b"\0\x02small.txt\0octet\0",
            b"\0\x02new.txt\0octet\0",
            b"\0\x01small.txt\0mail\0",
            b"\0\x01small.txt\0octet\0blksize\0",
            b"\0\x01small.txt",
        ];
        for pkt in raw {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            sock.send_to(pkt, f.addr).await.unwrap();
            let mut buf = vec![0u8; 70000];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await.unwrap().unwrap();
            match parse(&buf[..n]).unwrap() {
                Packet::Error { .. } => {}
                other => panic!("{pkt:?} got {other:?}"),
            }
        }
        // Nonsense option values are ignored: the file comes with default settings.
        let Fetch::Ok(b) =
            fetch(f.addr, b"small.txt", &[("blksize", "1"), ("windowsize", "0"), ("timeout", "999"), ("tsize", "x")])
                .await
        else {
            panic!()
        };
        assert_eq!(b, b"hello");
        assert!(!f._dir.path().join("tftp/new.txt").exists());
        // Stray packets on the request port are ignored; the server still works after all this.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for junk in [&b"\0\x04\0\x01"[..], b"\0\x03\0\x01abc", b"\xff\xff", b"x"] {
            sock.send_to(junk, f.addr).await.unwrap();
        }
        let Fetch::Ok(b) = fetch(f.addr, b"small.txt", &[]).await else { panic!() };
        assert_eq!(b, b"hello");
    }

    #[tokio::test]
    async fn netboot_tftp_retransmits_when_acks_are_lost() {
        let f = fixture().await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&rrq(b"file.bin", &[]), f.addr).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).await.unwrap();
        assert_eq!(parse(&buf[..n]).unwrap(), Packet::Data { block: 1, data: f.data[..512].to_vec() });
        sock.send_to(&encode(&Packet::Ack(1)), from).await.unwrap();
        let (n, _) = sock.recv_from(&mut buf).await.unwrap();
        let block2 = Packet::Data { block: 2, data: f.data[512..1024].to_vec() };
        assert_eq!(parse(&buf[..n]).unwrap(), block2);
        // Do not ACK: the block comes again after the timeout.
        let t0 = Instant::now();
        let (n, from2) = sock.recv_from(&mut buf).await.unwrap();
        assert_eq!((from2, parse(&buf[..n]).unwrap()), (from, block2));
        assert!(t0.elapsed() >= Duration::from_millis(500));
        sock.send_to(&encode(&Packet::Error { code: 0, message: "done".into() }), from).await.unwrap();
        // Before the first ACK, DATA 1 is not sent again (the client retransmits its request).
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&rrq(b"small.txt", &[]), f.addr).await.unwrap();
        sock.recv_from(&mut buf).await.unwrap();
        let again = tokio::time::timeout(Duration::from_millis(2500), sock.recv_from(&mut buf)).await;
        assert!(again.is_err(), "DATA 1 was retransmitted to a source that never acknowledged");
    }

    /// Issue 16 item 6: a flood of unacknowledged requests (`timeout=255`, from many source
    /// ports of another address) does not lock out a client that answers, and every reply to
    /// an unacknowledged request is measured: with options, at most twice the request (all its
    /// datagrams together); without options (DATA 1 is the protocol's answer), within the
    /// source's budget.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn netboot_tftp_flood_neither_locks_out_nor_amplifies() {
        let f = fixture().await;
        // The legitimate client's normal time, without a flood.
        let t0 = Instant::now();
        let Fetch::Ok(b) = fetch(f.addr, b"file.bin", &[("blksize", "1468"), ("tsize", "0")]).await else { panic!() };
        assert_eq!(b, f.data);
        let normal = t0.elapsed();
        // The flood: 520 sockets on 127.0.0.2, each one request, never an ACK.
        let flooders = 520;
        let mut socks = Vec::new();
        for i in 0..flooders {
            let s = UdpSocket::bind("127.0.0.2:0").await.unwrap();
            let opts: &[(&str, &str)] =
                if i % 4 == 0 { &[] } else { &[("timeout", "255"), ("tsize", "0"), ("blksize", "1468")] };
            let req = rrq(if i % 2 == 0 { b"file.bin" } else { b"small.txt" }, opts);
            s.send_to(&req, f.addr).await.unwrap();
            socks.push((s, req.len(), opts.is_empty()));
        }
        // While it runs, the legitimate client is served in its normal time.
        let t0 = Instant::now();
        let Fetch::Ok(b) = fetch(f.addr, b"file.bin", &[("blksize", "1468"), ("tsize", "0")]).await else { panic!() };
        assert_eq!(b, f.data);
        let during = t0.elapsed();
        println!("tftp legitimate 1 MiB fetch: {normal:?} alone, {during:?} during the flood");
        assert!(during < normal * 4 + Duration::from_secs(1), "{during:?} against {normal:?}");
        // Collect every datagram each flooder got within 5 s (longer than two timeouts).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (mut worst_opts, mut plain_bytes, mut busy) = (0f64, 0usize, 0usize);
        let mut buf = vec![0u8; 70000];
        for (s, req_len, plain) in &socks {
            let mut got = 0usize;
            while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, s.recv_from(&mut buf)).await {
                got += n;
                if matches!(parse(&buf[..n]), Ok(Packet::Error { .. })) {
                    busy += 1;
                }
                assert!(n <= 2 * req_len || *plain, "a {n}-byte datagram for a {req_len}-byte request");
            }
            let factor = got as f64 / *req_len as f64;
            if *plain {
                plain_bytes += got;
            } else {
                worst_opts = worst_opts.max(factor);
            }
        }
        println!(
            "tftp amplification before the first ACK: requests with options at most x{worst_opts:.2} \
             (all datagrams together); requests without options: {plain_bytes} bytes to the source in all \
             (budget {PLAIN_RRQ_BURST} + {PLAIN_RRQ_BYTES_PER_SEC}/s); {busy} error replies"
        );
        assert!(worst_opts <= UNVERIFIED_AMPLIFICATION as f64, "x{worst_opts}");
        assert!(plain_bytes as u64 <= PLAIN_RRQ_BURST + 7 * PLAIN_RRQ_BYTES_PER_SEC, "{plain_bytes}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn netboot_tftp_eight_concurrent_clients_with_and_without_windowsize() {
        let f = fixture().await;
        for (label, opts) in [
            ("blksize 512, no window", vec![]),
            ("blksize 1468, no window", vec![("blksize", "1468")]),
            ("blksize 1468, windowsize 16", vec![("blksize", "1468"), ("windowsize", "16")]),
            ("blksize 1468, windowsize 4", vec![("blksize", "1468"), ("windowsize", "4")]),
            ("blksize 8192, windowsize 4", vec![("blksize", "8192"), ("windowsize", "4")]),
            ("blksize 8192, windowsize 16", vec![("blksize", "8192"), ("windowsize", "16")]),
        ] {
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let opts: Vec<(&'static str, &'static str)> = opts.clone();
                let addr = f.addr;
                set.spawn(async move { fetch(addr, b"file.bin", &opts).await });
            }
            let mut total = 0usize;
            while let Some(r) = set.join_next().await {
                match r.unwrap() {
                    Fetch::Ok(b) => {
                        assert_eq!(b, f.data);
                        total += b.len();
                    }
                    Fetch::Error(c, m) => panic!("{c}: {m}"),
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "tftp 8 clients x {} bytes, {label}: {:.3} s, {:.1} MiB/s total",
                f.data.len(),
                secs,
                total as f64 / secs / (1 << 20) as f64
            );
        }
    }
}
