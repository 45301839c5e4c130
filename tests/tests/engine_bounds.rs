//! Issue 16, item 2 and the commit route's limits, against a real `kura serve` on loopback:
//!
//! - Bounded memory: the 33 KB decompression bomb (a zstd frame of 1 GiB of zeros in a valid
//!   manifest envelope), a few-KB manifest declaring 2^31 chunks (70 GB decoded), and 8 concurrent oversized commits (a real manifest followed by 1 GiB of
//!   zeros in the same frame, declaring its honest size or the inflated one), sent in rounds
//!   for a few seconds, keep the engine's peak RSS (`VmHWM`) under 300 MB, and
//!   `/api/v1/health` answers during and after.
//! - The commit gate: two commits hold the two turns; a third waits `COMMIT_WAIT` (shortened
//!   here by the engine's test-only `KURA_TEST_COMMIT_WAIT_MS`) and gets 503; a body declaring
//!   more than the route's limit gets 413 at once, without waiting for a turn or sending a byte.
//! - The commit body's pace: a body trickled slower than 1 MiB/s after a 10 s grace is refused
//!   (400) and its turn is given back.
//!
//! The manifest format (`docs/manifest.md`) is rebuilt here by hand: this crate does not link
//! the engine's libraries.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kura_tests::content::random_bytes;
use kura_tests::engine::{raw_disk, Api, Server};
use kura_tests::rawconn::{self, Conn};
use serde_json::json;
use sha2::Digest as _;

/// The manifest file's magic (`imaging/src/manifest.rs`).
const MAGIC: [u8; 8] = [12, 200, 251, 173, 23, 170, 119, 99];
/// Its fixed header and trailer (sha256) sizes.
const HEADER: usize = 32;
const TRAILER: usize = 32;
/// The commit route's body limit (`protocol/src/routes.rs`, `limits::MANIFEST`).
const COMMIT_LIMIT: u64 = 256 << 20;
/// The peak RSS the engine must stay under during the attack.
const RSS_CEILING: u64 = 300 << 20;
const GIB: u64 = 1 << 30;
/// How long the bombs keep coming.
const ATTACK: Duration = Duration::from_secs(3);

/// A zstd frame of `zeros` zero bytes after `prefix`, compressed as a stream.
fn zero_bomb(prefix: &[u8], zeros: u64) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    enc.write_all(prefix).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        enc.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    enc.finish().unwrap()
}

/// A manifest file around an already compressed `body` declaring `plain_len`.
fn envelope(body: &[u8], plain_len: u64) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&plain_len.to_le_bytes());
    out.extend_from_slice(body);
    let sum: [u8; 32] = sha2::Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

/// A manifest whose metadata (from `plain`, a real manifest's decompressed body) declares a
/// 1 TiB disk in 512-byte chunks, all unused: an honest structure of 2^31 chunk entries (some
/// 70 GB decoded) in a body of a few KB, since its tags (zeros) are never reached.
fn envelope_of_huge_structure(plain: &[u8]) -> Vec<u8> {
    let n = u32::from_le_bytes(plain[..4].try_into().unwrap()) as usize;
    let mut meta: serde_json::Value = serde_json::from_slice(&plain[4..4 + n]).unwrap();
    let size: u64 = 1 << 40;
    meta["chunk_size"] = 512.into();
    meta["layout"]["disk_size"] = size.into();
    let mut region = meta["regions"][0].clone();
    for (k, v) in [("start", 0), ("size", size), ("bitmap_bits", 0), ("chunk_count", size / 512), ("data_chunks", 0)] {
        region[k] = v.into();
    }
    meta["regions"] = json!([region]);
    let json = serde_json::to_vec(&meta).unwrap();
    let mut prefix = (json.len() as u32).to_le_bytes().to_vec();
    prefix.extend_from_slice(&json);
    envelope(&zero_bomb(&prefix, 1 << 20), prefix.len() as u64 + size / 512)
}

/// Opens an upload session for `host` (an admin's upload creates the host).
fn begin(api: &Api, admin: &str, host: &str) -> String {
    let r = api.req("POST", "/uploads").token(admin).json(&json!({ "host": host })).send();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["upload"].as_str().unwrap().to_string()
}

fn addr_of(server: &Server) -> SocketAddr {
    server.url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap()
}

/// A commit of `upload` on a raw connection that declares `declared` body bytes and sends
/// `sent` of them, then holds.
fn slow_commit(addr: SocketAddr, admin: &str, upload: &str, declared: u64, sent: &[u8]) -> (Conn, Instant) {
    let mut c = rawconn::plain(IpAddr::V4(Ipv4Addr::LOCALHOST), addr).unwrap();
    let head = format!(
        "POST /api/v1/uploads/{upload}/commit HTTP/1.1\r\nHost: kura\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(sent).unwrap();
    c.flush().unwrap();
    (c, Instant::now())
}

/// The answer on a held connection: status, body, and when it came (since `since`).
fn answer(mut c: Conn, since: Instant) -> (u16, String, Duration) {
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let bytes = rawconn::read_to_close(&mut c).unwrap();
    let (status, body) = rawconn::parse_answer(&bytes).unwrap();
    (status, body, since.elapsed())
}

#[test]
fn the_commit_gate_refuses_a_third_commit_after_its_wait_and_oversized_or_trickled_bodies() {
    let base = tempfile::tempdir().unwrap();
    let wait = Duration::from_millis(2000);
    let server = Server::start_http_env(
        &base.path().join("engine"),
        &[("KURA_TEST_COMMIT_WAIT_MS", &wait.as_millis().to_string())],
    );
    let api = server.api();
    let addr = addr_of(&server);
    let ups: Vec<String> = (0..4).map(|_| begin(&api, &server.admin, "gate")).collect();

    // Two commits take the two turns, each declaring 1000 bytes and sending 10.
    let a = slow_commit(addr, &server.admin, &ups[0], 1000, &[0; 10]);
    let b = slow_commit(addr, &server.admin, &ups[1], 1000, &[0; 10]);
    std::thread::sleep(Duration::from_millis(300));

    // A body declared over the limit: 413 at once, while both turns are taken and before a
    // byte of the body is sent.
    let (c413, t) = slow_commit(addr, &server.admin, &ups[2], COMMIT_LIMIT + 1, b"");
    let (status, body, took) = answer(c413, t);
    println!("oversized Content-Length: {status} after {took:?}: {body}");
    assert_eq!(status, 413, "{body}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A third commit waits for a turn, then gets 503 (retry later).
    let t = Instant::now();
    let r = api.req("POST", &format!("/uploads/{}/commit", ups[2])).token(&server.admin).bytes(b"x".repeat(64)).send();
    let took = t.elapsed();
    println!("third commit: {} after {took:?}: {}", r.status, r.text());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["kind"], "unavailable", "{}", r.text());
    assert!(took >= wait - Duration::from_millis(100) && took < wait * 3, "{took:?}");

    // The trickled bodies lose their turns after the 10 s grace (10 bytes at 1 MiB/s add
    // nothing to it).
    for (name, (conn, since)) in [("first", a), ("second", b)] {
        let (status, body, took) = answer(conn, since);
        println!("{name} trickled commit: {status} after {took:?}: {body}");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("too slowly"), "{body}");
        assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(14), "{took:?}");
    }
    // ... so the next commit gets a turn at once (and is judged on its manifest).
    let t = Instant::now();
    let r = api.req("POST", &format!("/uploads/{}/commit", ups[3])).token(&server.admin).bytes(b"x".repeat(64)).send();
    println!("commit after the turns came back: {} after {:?}: {}", r.status, t.elapsed(), r.text());
    assert!(r.status != 503 && (400..500).contains(&r.status), "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn decompression_bombs_and_concurrent_oversized_commits_keep_the_engine_small() {
    let base = tempfile::tempdir().unwrap();
    let server = Server::start_http(&base.path().join("engine"));
    let api = server.api();
    // A real manifest, to put a valid structure in front of the bombs.
    let disk = raw_disk(base.path(), "a.img", random_bytes(5, 2 << 20));
    let snap = server.capture(&disk.path, "web").snapshot;
    let r = api.req("GET", &format!("/snapshots/{snap}/manifest")).token(&server.admin).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let plain = zstd::decode_all(&r.body[HEADER..r.body.len() - TRAILER]).unwrap();

    let bomb = envelope(&zero_bomb(b"", GIB), GIB);
    let tail = zero_bomb(&plain, GIB);
    let honest = envelope(&tail, plain.len() as u64);
    let inflated = envelope(&tail, plain.len() as u64 + GIB);
    println!(
        "bomb: {} bytes declaring 1 GiB; oversized: {} bytes (a {}-byte manifest and 1 GiB of zeros)",
        bomb.len(),
        honest.len(),
        plain.len()
    );
    assert!(bomb.len() < 64 << 10 && honest.len() < 64 << 10);
    let huge = envelope_of_huge_structure(&plain);
    let mut bodies = vec![("bomb", bomb), ("structure of 2^31 chunks", huge)];
    bodies.extend((0..4).map(|_| ("honest length, 1 GiB tail", honest.clone())));
    bodies.extend((0..4).map(|_| ("inflated length, 1 GiB tail", inflated.clone())));
    let ups: Vec<String> = bodies.iter().map(|_| begin(&api, &server.admin, "web")).collect();

    let pid = server.pid();
    let (rss0, _) = rawconn::rss_hwm(pid).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some((rss, _)) = rawconn::rss_hwm(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let health: Arc<Mutex<Vec<Result<Duration, String>>>> = Arc::default();
    let prober = {
        let (done, health, base) = (done.clone(), health.clone(), api.base().to_string());
        std::thread::spawn(move || {
            let api = Api::new(&base);
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = match api.req("GET", "/health").try_send() {
                    Ok(r) if r.status == 200 => Ok(t.elapsed()),
                    Ok(r) => Err(format!("{} {}", r.status, r.text())),
                    Err(e) => Err(e),
                };
                health.lock().unwrap().push(r);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Rounds of the ten commits at once, for ATTACK (a refused commit leaves its session open,
    // so each round reuses the sessions).
    let t0 = Instant::now();
    let mut answers: Vec<(String, u16, String)> = Vec::new();
    while t0.elapsed() < ATTACK {
        answers.extend(std::thread::scope(|s| {
            let handles: Vec<_> = bodies
                .iter()
                .zip(&ups)
                .map(|((name, body), up)| {
                    let (api, admin) = (&api, &server.admin);
                    s.spawn(move || {
                        let r =
                            api.req("POST", &format!("/uploads/{up}/commit")).token(admin).bytes(body.clone()).send();
                        (name.to_string(), r.status, r.text())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        }));
    }
    let attack = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    prober.join().unwrap();

    let (rss1, hwm) = rawconn::rss_hwm(pid).unwrap();
    let probes = health.lock().unwrap().clone();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for (name, status, text) in answers.iter().take(bodies.len()) {
        println!("{name}: {status} {text}");
    }
    let slowest = probes.iter().filter_map(|p| p.as_ref().ok()).max().copied().unwrap_or_default();
    println!(
        "{} commits ({} rounds of {}) in {attack:?}; engine RSS before {:.1} MiB, sampled peak {:.1} MiB, after {:.1} MiB, VmHWM {:.1} MiB; \
         {} health probes during the attack, slowest {slowest:?}",
        answers.len(),
        answers.len() / bodies.len(),
        bodies.len(),
        mib(rss0),
        mib(peak.load(Ordering::Relaxed)),
        mib(rss1),
        mib(hwm),
        probes.len()
    );
    for (name, status, text) in &answers {
        assert!((400..500).contains(status) && *status != 413, "{name}: {status} {text}");
    }
    assert!(hwm < RSS_CEILING, "the engine's peak RSS was {:.1} MiB", mib(hwm));
    assert!(!probes.is_empty() && probes.iter().all(|p| p.is_ok()), "health during the attack: {probes:?}");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    let r = api.req("GET", "/health").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(server.snapshot_ids().contains(&snap) && server.snapshot_ids().len() == 1);
}
