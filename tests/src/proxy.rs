//! A TCP proxy on loopback between a `kura` client and an engine serving plain HTTP. It follows
//! the HTTP/1.1 messages (framed by Content-Length) of each connection, counts them by kind
//! (chunk upload, commit, other), and can hold a request or an answer until the test has killed
//! something, or drop a commit's answer on the floor (a lost reply).

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Which request an HTTP/1.1 message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Chunk,
    Commit,
    Other,
}

pub fn kind_of(start_line: &str) -> Kind {
    let mut it = start_line.split_whitespace();
    match (it.next(), it.next()) {
        (Some("PUT"), Some(p)) if p.contains("/chunks/") => Kind::Chunk,
        (Some("POST"), Some(p)) if p.ends_with("/commit") => Kind::Commit,
        _ => Kind::Other,
    }
}

/// Where the proxy stops a capture so that a kill lands there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Chunk uploads: the client sent one, the engine has not seen it.
    FirstChunkRequest,
    /// The answer to a chunk upload once `n` chunk answers reached the client: chunks are
    /// flowing, the commit is not sent.
    ChunkAnswer(usize),
    /// The commit request: the client sent it, the engine has not seen it.
    CommitRequest,
    /// The commit's answer: the engine committed and answered, the client does not know.
    CommitAnswer,
    /// The first commit's answer is read from the engine and never delivered: the client's
    /// connection is closed instead (a lost reply). Later commits pass.
    DropFirstCommitAnswer,
    /// Nothing: the test watches the counters only.
    Nothing,
}

/// What passed through the proxy, per kind of request.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Requests read in full from the client.
    pub arrived: BTreeMap<Kind, usize>,
    /// Requests forwarded in full to the engine.
    pub sent: BTreeMap<Kind, usize>,
    /// Answers read in full from the engine.
    pub answered: BTreeMap<Kind, usize>,
    /// Answers forwarded in full to the client.
    pub delivered: BTreeMap<Kind, usize>,
    /// Messages the proxy holds now.
    pub held: usize,
    /// Answers read from the engine and dropped on purpose.
    pub dropped: usize,
    /// A message the proxy could not frame (no Content-Length); the test then knows nothing.
    pub unframed: Option<String>,
}

impl Seen {
    pub fn n(map: &BTreeMap<Kind, usize>, k: Kind) -> usize {
        map.get(&k).copied().unwrap_or(0)
    }
}

struct ProxyState {
    seen: Seen,
    hold: Hold,
    /// Set by the test: what held messages do now (true: go on, false: the connection drops).
    release: Option<bool>,
}

/// A TCP proxy between `kura image capture` and an engine serving plain HTTP, which follows
/// the HTTP/1.1 messages (framed by Content-Length) of each connection, counts them, and can
/// hold a request or an answer until the test has killed something.
pub struct Proxy {
    pub url: String,
    state: Arc<(Mutex<ProxyState>, Condvar)>,
}

/// Reads one HTTP/1.1 message (head and Content-Length body) from `r`; `None` at a clean end.
fn read_message(r: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<(String, Vec<u8>, bool)>> {
    let mut tmp = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = r.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let start = head.lines().next().unwrap_or("").to_string();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let framed = header("transfer-encoding").is_none();
    while buf.len() < head_end + len {
        let n = r.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let msg: Vec<u8> = buf.drain(..head_end + len).collect();
    Ok(Some((start, msg, framed)))
}

impl Proxy {
    pub fn start(upstream: &str, hold: Hold) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new((Mutex::new(ProxyState { seen: Seen::default(), hold, release: None }), Condvar::new()));
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(engine) = TcpStream::connect(&upstream) else { continue };
                let queue = Arc::new(Mutex::new(VecDeque::new()));
                let (c, e, q, s) =
                    (client.try_clone().unwrap(), engine.try_clone().unwrap(), queue.clone(), st.clone());
                std::thread::spawn(move || Self::pump(c, e, q, s, true));
                let s2 = st.clone();
                std::thread::spawn(move || Self::pump(engine, client, queue, s2, false));
            }
        });
        Proxy { url, state }
    }

    /// Forwards messages from `from` to `to`: requests (client to engine) if `requests`, else
    /// answers, which belong to the requests queued on the connection, in order.
    fn pump(
        mut from: TcpStream,
        mut to: TcpStream,
        queue: Arc<Mutex<VecDeque<Kind>>>,
        state: Arc<(Mutex<ProxyState>, Condvar)>,
        requests: bool,
    ) {
        let mut buf = Vec::new();
        let (lock, cv) = &*state;
        while let Ok(Some((start, msg, framed))) = read_message(&mut from, &mut buf) {
            let kind =
                if requests { kind_of(&start) } else { queue.lock().unwrap().pop_front().unwrap_or(Kind::Other) };
            let mut s = lock.lock().unwrap();
            if !framed {
                s.seen.unframed = Some(start.clone());
            }
            let counts = if requests { &mut s.seen.arrived } else { &mut s.seen.answered };
            *counts.entry(kind).or_default() += 1;
            let hold = match (s.hold, requests, kind) {
                (Hold::FirstChunkRequest, true, Kind::Chunk) | (Hold::CommitRequest, true, Kind::Commit) => true,
                (Hold::CommitAnswer, false, Kind::Commit) => true,
                (Hold::ChunkAnswer(n), false, Kind::Chunk) => Seen::n(&s.seen.delivered, Kind::Chunk) >= n,
                _ => false,
            };
            if (s.hold, requests, kind) == (Hold::DropFirstCommitAnswer, false, Kind::Commit)
                && Seen::n(&s.seen.answered, Kind::Commit) == 1
            {
                s.seen.dropped += 1;
                cv.notify_all();
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            if hold {
                s.seen.held += 1;
                cv.notify_all();
                while s.release.is_none() {
                    s = cv.wait(s).unwrap();
                }
                s.seen.held -= 1;
                if s.release == Some(false) {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            drop(s);
            if requests {
                queue.lock().unwrap().push_back(kind);
            }
            if to.write_all(&msg).is_err() {
                break;
            }
            let mut s = lock.lock().unwrap();
            let counts = if requests { &mut s.seen.sent } else { &mut s.seen.delivered };
            *counts.entry(kind).or_default() += 1;
            cv.notify_all();
        }
        // A client that went away leaves the engine's side open: the answer to what it sent
        // last (a commit, say) is still read and counted by the other direction.
        if !requests {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }

    /// Waits (at most 60 s) until `f` holds for what the proxy saw; returns that.
    pub fn wait(&self, what: &str, f: impl Fn(&Seen) -> bool) -> Seen {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        let t0 = Instant::now();
        while !f(&s.seen) {
            assert!(t0.elapsed() < Duration::from_secs(60), "the proxy never saw {what}: {:?}", s.seen);
            s = cv.wait_timeout(s, Duration::from_millis(50)).unwrap().0;
        }
        s.seen.clone()
    }

    pub fn seen(&self) -> Seen {
        self.state.0.lock().unwrap().seen.clone()
    }

    /// Lets held messages go on (`true`) or drops their connections (`false`).
    pub fn release(&self, go_on: bool) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().release = Some(go_on);
        cv.notify_all();
    }
}
