//! The NBD wire protocol, server side, for one read-only export (doc/proto.md of
//! NetworkBlockDevice/nbd): the fixed newstyle handshake (`NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`,
//! `NBD_OPT_INFO`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`; every other option answered
//! `NBD_REP_ERR_UNSUP`), then the transmission phase with simple replies only: `NBD_CMD_READ`,
//! `NBD_CMD_DISC`; writes, trims and write-zeroes are refused with `NBD_EPERM`, anything else
//! with `NBD_EINVAL`.
//!
//! Framing only: what the export holds is the [`Export`]'s. Every length that comes from the
//! client is bounded before anything is allocated or skipped: an option's data to
//! [`MAX_OPTION_LEN`], a request's payload to [`MAX_REQUEST_LEN`] (the spec's default maximum
//! payload, 2^25), a read's range to the export's size (`NBD_EINVAL`, not a panic). A client
//! that breaks framing (bad magic, an oversized option or write payload, an unknown client
//! flag) is disconnected: that is the spec's hard disconnect, and it touches only this
//! connection.

use std::io::{self, Read, Write};

/// What the protocol serves: a read-only disk of a fixed size.
pub trait Export: Send + Sync {
    /// The export's name (the client may also ask for the default export, "").
    fn name(&self) -> &str;
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`; the range lies within [`Export::size`]. An error
    /// becomes `NBD_EIO` for this request only.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()>;
}

/// The connection's byte stream.
pub trait Transport: Read + Write {
    /// The handshake succeeded; transmission starts.
    fn handshake_done(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Largest option data accepted during the handshake (names are at most 4096 bytes).
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Options one client may send before it is disconnected (a client that haggles forever).
pub const MAX_OPTIONS: u32 = 256;
/// Largest read or write payload of one request: 2^25, the spec's default maximum payload.
pub const MAX_REQUEST_LEN: u32 = 32 << 20;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
const FLAG_HAS_FLAGS: u16 = 1 << 0;
const FLAG_READ_ONLY: u16 = 1 << 1;
/// Every connection reads the same immutable snapshot through one shared cache.
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
const TRANSMISSION_FLAGS: u16 = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN;

// Options.
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

// Option replies.
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

// Information types.
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

// Errors.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `NBD_CMD_DISC`, `NBD_OPT_ABORT`, or the client closed between messages.
    Clean,
    /// The client broke the protocol and was hard-disconnected; the text says how.
    Violation(String),
}

/// Serves one connection from the handshake to its end. I/O errors (the client gone
/// mid-message) are returned; protocol violations end as [`End::Violation`].
pub fn serve_connection<S: Transport>(conn: &mut S, export: &dyn Export) -> io::Result<End> {
    match handshake(conn, export)? {
        Handshake::Transmission => {
            conn.handshake_done()?;
            transmission(conn, export)
        }
        Handshake::End(end) => Ok(end),
    }
}

enum Handshake {
    Transmission,
    End(End),
}

fn violation(s: impl Into<String>) -> io::Result<Handshake> {
    Ok(Handshake::End(End::Violation(s.into())))
}

fn handshake<S: Read + Write>(conn: &mut S, export: &dyn Export) -> io::Result<Handshake> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    conn.write_all(&hello)?;
    conn.flush()?;
    let client_flags = read_u32(conn)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return violation(format!("unknown client flags {client_flags:#x}"));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;

    for _ in 0..MAX_OPTIONS {
        let mut head = [0u8; 16];
        conn.read_exact(&mut head)?;
        let magic = u64::from_be_bytes(head[0..8].try_into().expect("8 bytes"));
        let option = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
        if magic != IHAVEOPT {
            return violation(format!("bad option magic {magic:#x}"));
        }
        if len > MAX_OPTION_LEN {
            return violation(format!("option {option} with {len} bytes of data (at most {MAX_OPTION_LEN})"));
        }
        let mut data = vec![0u8; len as usize];
        conn.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                if !accepts(export, &data) {
                    // No error reply exists for this option: the spec says terminate.
                    return violation(format!("unknown export {:?}", String::from_utf8_lossy(&data)));
                }
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&export.size().to_be_bytes());
                reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    reply.resize(reply.len() + 124, 0);
                }
                conn.write_all(&reply)?;
                conn.flush()?;
                return Ok(Handshake::Transmission);
            }
            OPT_ABORT => {
                // The client may already have gone; the session ends either way.
                let _ = option_reply(conn, option, REP_ACK, &[]);
                return Ok(Handshake::End(End::Clean));
            }
            OPT_LIST if !data.is_empty() => option_reply(conn, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?,
            OPT_LIST => {
                let name = export.name().as_bytes();
                let mut server = Vec::with_capacity(4 + name.len());
                server.extend_from_slice(&(name.len() as u32).to_be_bytes());
                server.extend_from_slice(name);
                option_reply(conn, option, REP_SERVER, &server)?;
                option_reply(conn, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                None => option_reply(conn, option, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/NBD_OPT_GO data")?,
                Some((name, _)) if !accepts(export, name) => {
                    option_reply(conn, option, REP_ERR_UNKNOWN, b"no such export")?
                }
                Some((_, requests)) => {
                    let mut info = Vec::with_capacity(12);
                    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    info.extend_from_slice(&export.size().to_be_bytes());
                    info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                    option_reply(conn, option, REP_INFO, &info)?;
                    if requests.contains(&INFO_BLOCK_SIZE) {
                        let mut bs = Vec::with_capacity(14);
                        bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                        bs.extend_from_slice(&1u32.to_be_bytes()); // minimum
                        bs.extend_from_slice(&4096u32.to_be_bytes()); // preferred
                        bs.extend_from_slice(&MAX_REQUEST_LEN.to_be_bytes()); // maximum payload
                        option_reply(conn, option, REP_INFO, &bs)?;
                    }
                    option_reply(conn, option, REP_ACK, &[])?;
                    if option == OPT_GO {
                        return Ok(Handshake::Transmission);
                    }
                }
            },
            _ => option_reply(conn, option, REP_ERR_UNSUP, &[])?,
        }
    }
    violation(format!("more than {MAX_OPTIONS} options"))
}

/// The default export ("") and the export's own name are served.
fn accepts(export: &dyn Export, name: &[u8]) -> bool {
    name.is_empty() || name == export.name().as_bytes()
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: u32 name length, name, u16 count, count × u16 requests.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = rest.get(2..)?;
    if list.len() != count * 2 {
        return None;
    }
    Some((name, list.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()))
}

fn option_reply<S: Write>(conn: &mut S, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut reply = Vec::with_capacity(20 + data.len());
    reply.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&option.to_be_bytes());
    reply.extend_from_slice(&kind.to_be_bytes());
    reply.extend_from_slice(&(data.len() as u32).to_be_bytes());
    reply.extend_from_slice(data);
    conn.write_all(&reply)?;
    conn.flush()
}

fn read_u32<S: Read>(conn: &mut S) -> io::Result<u32> {
    let mut b = [0u8; 4];
    conn.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// One request header (28 bytes).
struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

fn read_request<S: Read>(conn: &mut S) -> io::Result<Option<Result<Request, String>>> {
    let mut h = [0u8; 28];
    // A client that closes between requests ends the session cleanly.
    match conn.read(&mut h[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(e),
    }
    conn.read_exact(&mut h[1..])?;
    let magic = u32::from_be_bytes(h[0..4].try_into().expect("4 bytes"));
    if magic != REQUEST_MAGIC {
        return Ok(Some(Err(format!("bad request magic {magic:#x}"))));
    }
    Ok(Some(Ok(Request {
        flags: u16::from_be_bytes(h[4..6].try_into().expect("2 bytes")),
        kind: u16::from_be_bytes(h[6..8].try_into().expect("2 bytes")),
        cookie: u64::from_be_bytes(h[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(h[16..24].try_into().expect("8 bytes")),
        len: u32::from_be_bytes(h[24..28].try_into().expect("4 bytes")),
    })))
}

fn simple_reply<S: Write>(conn: &mut S, cookie: u64, error: u32, data: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 16];
    head[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    head[4..8].copy_from_slice(&error.to_be_bytes());
    head[8..16].copy_from_slice(&cookie.to_be_bytes());
    conn.write_all(&head)?;
    conn.write_all(data)?;
    conn.flush()
}

fn transmission<S: Read + Write>(conn: &mut S, export: &dyn Export) -> io::Result<End> {
    let size = export.size();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let req = match read_request(conn)? {
            None => return Ok(End::Clean),
            Some(Err(v)) => return Ok(End::Violation(v)),
            Some(Ok(r)) => r,
        };
        match req.kind {
            CMD_DISC => return Ok(End::Clean),
            CMD_WRITE => {
                // The payload follows the header: skip it to stay in step, then refuse.
                if req.len > MAX_REQUEST_LEN {
                    return Ok(End::Violation(format!("write of {} bytes (at most {MAX_REQUEST_LEN})", req.len)));
                }
                io::copy(&mut Read::by_ref(conn).take(req.len as u64), &mut io::sink()).and_then(|n| {
                    if n == req.len as u64 {
                        Ok(())
                    } else {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    }
                })?;
                simple_reply(conn, req.cookie, EPERM, &[])?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => simple_reply(conn, req.cookie, EPERM, &[])?,
            CMD_READ => {
                // No command flag is valid here: FUA and DF were not negotiated.
                let in_range = req.offset.checked_add(req.len as u64).is_some_and(|end| end <= size);
                if req.flags != 0 || req.len > MAX_REQUEST_LEN || !in_range {
                    simple_reply(conn, req.cookie, EINVAL, &[])?;
                    continue;
                }
                buf.clear();
                buf.resize(req.len as usize, 0);
                match export.read_at(req.offset, &mut buf) {
                    Ok(()) => simple_reply(conn, req.cookie, 0, &buf)?,
                    Err(e) => {
                        tracing::warn!("nbd: reading {} bytes at {}: {e:#}", req.len, req.offset);
                        simple_reply(conn, req.cookie, EIO, &[])?;
                    }
                }
                // Do not keep a 32 MiB buffer per idle connection.
                if buf.capacity() > 4 << 20 {
                    buf = Vec::new();
                }
            }
            _ => simple_reply(conn, req.cookie, EINVAL, &[])?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_is_parsed_within_its_bounds() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some((&b"abc"[..], vec![0, 3])));
        // A name length past the data, a count past the data, trailing bytes: refused.
        let mut bad = d.clone();
        bad[3] = 200;
        assert_eq!(parse_info_request(&bad), None);
        let mut bad = d.clone();
        bad[8] = 9;
        assert_eq!(parse_info_request(&bad), None);
        let mut bad = d.clone();
        bad.push(0);
        assert_eq!(parse_info_request(&bad), None);
        let mut huge = d.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_info_request(&huge), None);
        assert_eq!(parse_info_request(&[]), None);
    }
}
