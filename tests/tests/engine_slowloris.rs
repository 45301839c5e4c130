//! Issue 16, item 5: slowloris against both HTTP listeners of a real `kura serve --netboot` on
//! loopback (`"dhcp": "off"`): the API over TLS and the plain boot HTTP server.
//!
//! On each listener, 900 connections from 30 source addresses (30 each) send a partial request
//! line and hold, and 100 more from one address try the same. The per-source cap admits 64 of
//! those 100 and closes the rest at once; a legitimate client (from 127.0.0.1) is served within
//! its normal time while all of them are held; the server closes every held connection after
//! its 10 s header-read timeout (each sees EOF within 15 s of its partial request). On the API,
//! 20 more connections that stop in the middle of the TLS handshake are closed by the handshake
//! timeout the same way. The figures are printed.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kura_tests::engine::Server;
use kura_tests::rawconn::{self, Conn};
use serde_json::json;

/// The engine's per-source connection caps (`server/src/api/listen.rs`,
/// `netboot/src/http.rs`): this crate does not link the engine.
const PER_SOURCE_CAP: usize = 64;
/// The header-read (and TLS handshake) timeout of both listeners.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// By when a held connection must have been closed, after its partial request.
const CLOSED_BY: Duration = Duration::from_secs(15);
/// How long a legitimate request may take during the attack.
const SERVED_WITHIN: Duration = Duration::from_secs(2);
const SPREAD_SOURCES: u8 = 30;
const PER_SPREAD_SOURCE: usize = 30;
const ONE_SOURCE: usize = 100;

fn src(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

/// One listener under attack.
struct Target<'a> {
    name: &'static str,
    /// A connection from a source address (for TLS, its handshake done).
    dial: &'a (dyn Fn(IpAddr) -> std::io::Result<Conn> + Sync),
    /// The partial request line the attackers send.
    partial: &'a str,
    /// A whole legitimate request: path and headers; it must answer 200.
    path: &'a str,
    headers: &'a [&'a str],
}

impl Target<'_> {
    /// One legitimate request from 127.0.0.1, connection included; its time.
    fn legit(&self) -> Duration {
        let t = Instant::now();
        let conn =
            (self.dial)(src(0, 1)).unwrap_or_else(|e| panic!("{}: a legitimate client cannot connect: {e}", self.name));
        let (status, body, _) = rawconn::get(conn, self.path, self.headers)
            .unwrap_or_else(|e| panic!("{}: a legitimate request failed: {e}", self.name));
        assert_eq!(status, 200, "{}: {body}", self.name);
        t.elapsed()
    }

    /// The slowest of `n` legitimate requests.
    fn legit_max(&self, n: usize) -> Duration {
        (0..n).map(|_| self.legit()).max().unwrap()
    }
}

/// Runs the attack on `target`; `held` are connections the caller already holds (with when
/// they stopped), which must be closed by [`CLOSED_BY`] too.
fn slowloris(target: &Target, mut held: Vec<(Conn, Instant)>) {
    let name = target.name;
    target.legit();
    let normal = target.legit_max(5);

    // Each source address dials from its own thread (TLS handshakes take a while).
    let t_open = Instant::now();
    let partial = |c: &mut Conn| -> bool { c.write_all(target.partial.as_bytes()).and_then(|_| c.flush()).is_ok() };
    let (spread, one_source) = std::thread::scope(|scope| {
        let spread: Vec<_> = (1..=SPREAD_SOURCES)
            .map(|s| {
                scope.spawn(move || {
                    (0..PER_SPREAD_SOURCE)
                        .map(|_| {
                            let mut c = (target.dial)(src(1, s))
                                .unwrap_or_else(|e| panic!("{name}: attacker from 127.0.1.{s}: {e}"));
                            assert!(partial(&mut c), "{name}: a connection within the caps was closed");
                            (c, Instant::now())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Over the cap, a TLS handshake fails, a plain connection is closed after accept.
        let one_source = scope.spawn(move || {
            (0..ONE_SOURCE)
                .filter_map(|_| {
                    let mut c = (target.dial)(src(2, 1)).ok()?;
                    partial(&mut c).then(|| (c, Instant::now()))
                })
                .collect::<Vec<_>>()
        });
        let spread: Vec<_> = spread.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (spread, one_source.join().unwrap())
    });
    held.extend(spread);
    let opened = t_open.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let mut admitted = 0;
    for (mut c, t) in one_source {
        if c.closed_within(Duration::from_millis(5)) == Some(false) {
            admitted += 1;
            held.push((c, t));
        }
    }
    for (i, (c, t)) in held.iter_mut().enumerate() {
        if t.elapsed() > HEADER_READ_TIMEOUT - Duration::from_secs(1) {
            continue;
        }
        assert_eq!(
            c.closed_within(Duration::from_millis(1)),
            Some(false),
            "{name}: held connection {i} was closed after {:?}",
            t.elapsed()
        );
    }
    let during = target.legit_max(5);
    println!(
        "{name}: {} connections held (opened in {opened:?}); {admitted} of {ONE_SOURCE} from one source admitted; \
         legitimate request {normal:?} before, at most {during:?} during the attack ({:.1}x)",
        held.len(),
        during.as_secs_f64() / normal.as_secs_f64()
    );
    assert_eq!(admitted, PER_SOURCE_CAP, "{name}: the per-source cap");
    assert!(during <= SERVED_WITHIN, "{name}: a legitimate request took {during:?} during the attack");

    // Every held connection is closed by the server, oldest first (a connection looked at
    // later counts from its own partial request, so the figure is an upper bound).
    held.sort_by_key(|(_, t)| *t);
    let (mut first, mut last) = (None, Duration::ZERO);
    for (i, (mut c, t)) in held.into_iter().enumerate() {
        let left = (t + CLOSED_BY).saturating_duration_since(Instant::now());
        let closed = c.closed_within(left);
        let after = t.elapsed();
        assert_eq!(closed, Some(true), "{name}: held connection {i} still open (or answered) after {after:?}");
        first.get_or_insert(after);
        last = last.max(after);
    }
    let first = first.unwrap();
    println!("{name}: held connections closed by the server: the first after {first:?}, all within {last:?}");
    assert!(first >= HEADER_READ_TIMEOUT - Duration::from_secs(1), "{name}: closed early, after {first:?}");
    assert!(last <= CLOSED_BY);
    let after = target.legit_max(3);
    println!("{name}: legitimate request after the attack: {after:?}");
    assert!(after <= SERVED_WITHIN);
}

/// A free port on 127.0.0.1 (TCP or UDP).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

#[test]
fn slow_clients_on_both_http_listeners_are_capped_and_timed_out_while_others_are_served() {
    // Both sides hold about 1100 connections at once.
    rawconn::raise_nofile(4096);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path();
    for f in ["vmlinuz", "initrd.img", "undionly.kpxe"] {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    let http_port = free_port(false);
    let config = json!({
        "address": "127.0.0.1", "dhcp": "off",
        "kernel": dir.join("vmlinuz"), "initrd": dir.join("initrd.img"),
        "tftp_root": dir, "ipxe_bios": dir.join("undionly.kpxe"), "ipxe_efi": null,
        "tftp_port": free_port(true), "http_port": http_port,
    });
    let config_path = dir.join("netboot.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let server = Server::start_https_with(&dir.join("engine"), &[&"--netboot", &config_path], &[]);
    let api: SocketAddr = server.url.trim_start_matches("https://").trim_end_matches('/').parse().unwrap();
    let boot = SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
    let t = Instant::now();
    while std::net::TcpStream::connect(boot).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "the boot HTTP server is not up:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    let tls = rawconn::pinned(server.fingerprint.as_deref().unwrap());
    let dial_tls = |s: IpAddr| rawconn::tls(s, api, &tls);
    // Connections that stop in the middle of their TLS handshake (a ClientHello's first bytes).
    let handshakes: Vec<(Conn, Instant)> = (0..20)
        .map(|_| {
            let mut c = rawconn::plain(src(3, 1), api).unwrap();
            c.write_all(&[0x16, 0x03, 0x01, 0x02]).unwrap();
            (c, Instant::now())
        })
        .collect();
    slowloris(
        &Target {
            name: "API (TLS)",
            dial: &dial_tls,
            partial: "GET /api/v1/health HTT",
            path: "/api/v1/health",
            headers: &[],
        },
        handshakes,
    );

    let dial_plain = |s: IpAddr| rawconn::plain(s, boot);
    slowloris(
        &Target {
            name: "boot HTTP",
            dial: &dial_plain,
            partial: "GET /boot/script?mac=52:54:00:12:34:56 HT",
            path: "/boot/script?mac=52:54:00:12:34:56",
            headers: &[],
        },
        Vec::new(),
    );
}
