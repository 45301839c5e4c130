//! The boot-time HTTP routes, served in plain HTTP on their own listener (iPXE cannot check
//! the engine's self-signed certificate):
//!
//! - `GET /boot/script?mac=MAC`: the machine's iPXE script: [`BootPolicy::decide`], rendered by
//!   [`crate::ipxe`];
//! - `GET /boot/vmlinuz`, `GET /boot/initrd.img`: the boot environment's kernel and initramfs,
//!   with HTTP Range support (tower-http's `ServeFile`). A `mac=` query only labels the boot
//!   log.
//!
//! # Trust model
//!
//! These routes need no token: a machine booting from the network has none. They expose the
//! boot files (not secret) and the script. A script carries an agent token only for a MAC whose
//! host has a queued or running job; for any other MAC it says "boot locally". This module
//! decides none of that: it records what it saw and asks the [`BootPolicy`], handing it the
//! requester's address and what this process's own DHCP saw of the MAC ([`DhcpWitness`], from
//! [`crate::seen`]: the address the DHCP exchange gave or showed, and when).
//!
//! The engine's policy (`server/src/boot_policy.rs`) releases a job's token once per job boot,
//! only to a requester whose address is the one the DHCP exchange for that MAC saw shortly
//! before (MAC *and* IP); a second request for the same boot, or one from another address, gets
//! no token, is audited and flags the job in its log. A token is bound to its job and MAC (an
//! agent token, accepted only with that MAC's `X-Kura-Mac`, only for that one job, only while
//! the job is queued or running), and a capture's snapshot takes its host from the job, never
//! from the uploaded manifest. Unknown MACs are registered as hosts at a bounded rate.
//!
//! What remains: a machine on the same L2 segment that spoofs the victim's MAC *and* its IP
//! (or answers DHCP in its name before it boots) can still be taken for it; the flagged second
//! request then shows the impostor to an operator. With `"dhcp": "off"` nothing is seen, and
//! only the once-per-job rule holds. Keep the boot network a dedicated VLAN (802.1X, DHCP
//! snooping where the switches have it), and the API reachable from it only.
//!
//! The boot log ([`BootLog`]) is read by the engine's `GET /api/v1/netboot/status`.

use crate::bootlog::{BootLog, Stage};
use crate::ipxe;
use crate::policy::{BootPolicy, BootRequest, DhcpWitness, MacAddr};
use crate::seen::Sightings;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct BootHttp {
    pub policy: Arc<dyn BootPolicy>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The site's extra kernel arguments for agent boots (one line).
    pub kernel_args: String,
    pub log: Arc<BootLog>,
    /// What this process's DHCP saw of each MAC; `None` when DHCP is off.
    pub seen: Option<Arc<Sightings>>,
}

/// The URL of `mac`'s boot script on the boot HTTP server at `http_base` (`http://ADDRESS:PORT`).
pub fn script_url(http_base: &str, mac: MacAddr) -> String {
    format!("{http_base}/boot/script?mac={mac}")
}

/// The URL of the boot environment's kernel, labelled with the MAC that boots it.
pub fn kernel_url(http_base: &str, mac: MacAddr) -> String {
    format!("{http_base}/boot/vmlinuz?mac={mac}")
}

/// The URL of the boot environment's initramfs, labelled with the MAC that boots it.
pub fn initrd_url(http_base: &str, mac: MacAddr) -> String {
    format!("{http_base}/boot/initrd.img?mac={mac}")
}

#[derive(Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

pub fn router(state: Arc<BootHttp>) -> Router {
    Router::new()
        .route("/boot/script", get(script))
        .route("/boot/vmlinuz", get(kernel))
        .route("/boot/initrd.img", get(initrd))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

/// How long a connection may take to send a complete request head; an idle keep-alive
/// connection is closed after the same time (hyper's header-read timer runs while it waits).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent connections of the boot HTTP listener, in all and from one source address.
pub const MAX_CONNECTIONS: usize = 1024;
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// How long running downloads may finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the boot routes on `listener` until `shutdown` completes: HTTP/1.1 with
/// [`HEADER_READ_TIMEOUT`] and the connection caps ([`crate::conns`]); a connection over a cap
/// is closed at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<BootHttp>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tower::ServiceExt as _;
    let app = router(state);
    let conns = crate::conns::ConnLimit::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    // Out of file descriptors, most likely: let connections end, then retry.
                    tracing::warn!("netboot http: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = conns.enter(peer.ip()) else {
            tracing::debug!("netboot http: connection from {peer} refused: too many connections");
            continue;
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(Body::new))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!("netboot http: connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!("netboot http: connections still open at shutdown were closed");
    }
    Ok(())
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn script(
    State(st): State<Arc<BootHttp>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<MacQuery>,
) -> Response {
    let Some(mac) = q.mac.as_deref().and_then(|m| m.parse::<MacAddr>().ok()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "#!ipxe\necho Kura: the script URL needs ?mac=aa:bb:cc:dd:ee:ff\nexit\n".into(),
        );
    };
    let policy = st.policy.clone();
    let dhcp = match &st.seen {
        None => DhcpWitness::NotRunning,
        Some(seen) => seen.get(mac).map_or(DhcpWitness::NotSeen, DhcpWitness::Seen),
    };
    let req = BootRequest { client: Some(peer.ip().to_canonical()), dhcp };
    let failed = |detail: &str| {
        st.log.record_mac(mac, Some(peer.ip()), Stage::Script, "script failed (see the server log)");
        tracing::error!("netboot: the script for {mac} failed: {detail}");
        text(StatusCode::INTERNAL_SERVER_ERROR, "#!ipxe\necho Kura: server error\nexit\n".into())
    };
    let decision = match tokio::task::spawn_blocking(move || policy.decide(mac, &req)).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return failed(&e.to_string()),
        Err(e) => {
            tracing::error!("netboot: the script task failed: {e}");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "#!ipxe\nexit\n".into());
        }
    };
    match ipxe::render(mac, &decision, &st.kernel_args) {
        Ok(s) => {
            st.log.record_mac(mac, Some(peer.ip()), Stage::Script, decision.summary());
            text(StatusCode::OK, s)
        }
        Err(e) => failed(&e.to_string()),
    }
}

async fn kernel(State(st): State<Arc<BootHttp>>, ci: ConnectInfo<SocketAddr>, req: Request) -> Response {
    let path = st.kernel.clone();
    file(st, ci, req, path, Stage::Kernel).await
}

async fn initrd(State(st): State<Arc<BootHttp>>, ci: ConnectInfo<SocketAddr>, req: Request) -> Response {
    let path = st.initrd.clone();
    file(st, ci, req, path, Stage::Initrd).await
}

async fn file(
    st: Arc<BootHttp>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    path: PathBuf,
    stage: Stage,
) -> Response {
    let mac = req.uri().query().and_then(serde_urlencoded_mac).and_then(|m| m.parse::<MacAddr>().ok());
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let resp = tower_http::services::ServeFile::new(&path).try_call(req).await;
    let resp = match resp {
        Ok(r) => r.map(Body::new),
        Err(e) => {
            tracing::error!("netboot: serving {}: {e}", path.display());
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n".into());
        }
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let detail = match range {
        Some(r) => format!("{name} {r}: {}", resp.status()),
        None => format!("{name}: {}", resp.status()),
    };
    match mac {
        Some(m) => st.log.record_mac(m, Some(peer.ip()), stage, detail),
        None => st.log.record_ip(peer.ip(), stage, detail),
    }
    resp
}

/// The `mac` parameter of a query string (no percent-decoding needed for a MAC).
fn serde_urlencoded_mac(q: &str) -> Option<String> {
    q.split('&').find_map(|kv| kv.strip_prefix("mac=")).map(|v| v.replace("%3A", ":").replace("%3a", ":"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BootDecision, StaticPolicy};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_raw(addr: SocketAddr, path: &str, extra: &str) -> (String, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (String::from_utf8_lossy(&buf[..split]).into_owned(), buf[split + 4..].to_vec())
    }

    /// The boot HTTP server serving `st` on a loopback port, until [`Running::stop`].
    struct Running {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Running {
        async fn start(st: Arc<BootHttp>) -> (SocketAddr, Running) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, st, async {
                let _ = rx.await;
            }));
            (addr, Running { stop, task })
        }

        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn netboot_http_serves_script_and_files_with_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        std::fs::write(&kernel, &data).unwrap();
        std::fs::write(dir.path().join("initrd.img"), b"INITRD").unwrap();
        let log = BootLog::new();
        let st = Arc::new(BootHttp {
            policy: Arc::new(StaticPolicy {
                bios_firmware: None,
                efi_firmware: None,
                script_url: String::new(),
                decision: BootDecision::LocalDisk { note: "no job".into() },
            }),
            kernel,
            initrd: dir.path().join("initrd.img"),
            kernel_args: String::new(),
            log: log.clone(),
            seen: None,
        });
        let (addr, server) = Running::start(st).await;

        let (h, b) = get_raw(addr, "/boot/script?mac=52:54:00:00:00:01", "").await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(String::from_utf8(b).unwrap(), ipxe::local_boot_script("52:54:00:00:00:01", "no job"));
        let (h, _) = get_raw(addr, "/boot/script?mac=nonsense", "").await;
        assert!(h.starts_with("HTTP/1.1 400"), "{h}");
        let (h, _) = get_raw(addr, "/boot/script", "").await;
        assert!(h.starts_with("HTTP/1.1 400"), "{h}");
        let (h, b) = get_raw(addr, "/boot/vmlinuz?mac=52:54:00:00:00:01", "").await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(b, data);
        let (h, b) = get_raw(addr, "/boot/vmlinuz", "Range: bytes=1000-1999\r\n").await;
        assert!(h.starts_with("HTTP/1.1 206"), "{h}");
        assert!(h.to_ascii_lowercase().contains("content-range: bytes 1000-1999/100000"), "{h}");
        assert_eq!(b, &data[1000..2000]);
        let (h, _) = get_raw(addr, "/boot/vmlinuz", "Range: bytes=200000-\r\n").await;
        assert!(h.starts_with("HTTP/1.1 416"), "{h}");
        let (h, b) = get_raw(addr, "/boot/initrd.img", "").await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(b, b"INITRD");
        let (h, _) = get_raw(addr, "/boot/../../etc/passwd", "").await;
        assert!(h.starts_with("HTTP/1.1 404"), "{h}");
        let m = log.machines();
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let me = m.iter().find(|m| m.mac == Some(mac)).unwrap();
        assert!(me.events.iter().any(|e| e.stage == Stage::Script));
        assert!(me.events.iter().any(|e| e.stage == Stage::Kernel));
        // Later fetches from the same IP without ?mac are filed under the MAC too.
        assert!(me.events.iter().any(|e| e.stage == Stage::Initrd));
        server.stop().await;
    }

    /// A decision that cannot be written safely is a server error, not a script.
    #[tokio::test]
    async fn netboot_http_refuses_a_decision_it_cannot_render() {
        let mac: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        let args = kura_protocol::cmdline::AgentArgs::new("http://10.0.0.1:8443", 3, "kura_t", mac, None);
        let decision = BootDecision::Agent(crate::policy::AgentBoot {
            args,
            kernel_url: "http://10.0.0.1:8080/boot/vmlinuz\nshell".into(),
            initrd_url: "http://10.0.0.1:8080/boot/initrd.img".into(),
            banner: "capture job 3".into(),
        });
        let log = BootLog::new();
        let st = Arc::new(BootHttp {
            policy: Arc::new(StaticPolicy {
                bios_firmware: None,
                efi_firmware: None,
                script_url: String::new(),
                decision,
            }),
            kernel: PathBuf::from("/nonexistent"),
            initrd: PathBuf::from("/nonexistent"),
            kernel_args: String::new(),
            log: log.clone(),
            seen: None,
        });
        let (addr, server) = Running::start(st).await;
        let (h, b) = get_raw(addr, "/boot/script?mac=52:54:00:00:00:02", "").await;
        assert!(h.starts_with("HTTP/1.1 500"), "{h}");
        assert_eq!(b, b"#!ipxe\necho Kura: server error\nexit\n");
        let m = log.machines();
        assert_eq!(m[0].events[0].detail, "script failed (see the server log)");
        server.stop().await;
    }

    /// The policy is told who asked and what DHCP saw of the MAC (the facts it decides on).
    #[tokio::test]
    async fn netboot_http_hands_the_policy_the_requester_and_the_dhcp_sighting() {
        use crate::seen::{SeenHow, Sighting};
        use std::net::IpAddr;
        struct Recorder(std::sync::Mutex<Vec<(MacAddr, BootRequest)>>);
        impl BootPolicy for Recorder {
            fn boot_spec(&self, _: MacAddr, _: crate::policy::ClientArch) -> crate::policy::BootSpec {
                crate::policy::BootSpec::Ignore
            }
            fn decide(&self, mac: MacAddr, req: &BootRequest) -> Result<BootDecision, crate::policy::PolicyError> {
                self.0.lock().unwrap().push((mac, req.clone()));
                Ok(BootDecision::LocalDisk { note: "x".into() })
            }
        }
        let recorder = Arc::new(Recorder(Default::default()));
        let seen = Arc::new(Sightings::default());
        let known: MacAddr = "52:54:00:00:00:03".parse().unwrap();
        seen.record(known, std::net::Ipv4Addr::LOCALHOST, 42, SeenHow::ProxyRequest);
        let st = Arc::new(BootHttp {
            policy: recorder.clone(),
            kernel: PathBuf::from("/nonexistent"),
            initrd: PathBuf::from("/nonexistent"),
            kernel_args: String::new(),
            log: BootLog::new(),
            seen: Some(seen),
        });
        let (addr, server) = Running::start(st).await;
        get_raw(addr, "/boot/script?mac=52:54:00:00:00:03", "").await;
        get_raw(addr, "/boot/script?mac=52:54:00:00:00:04", "").await;
        let got = recorder.0.lock().unwrap().clone();
        let lo = Some(IpAddr::from(std::net::Ipv4Addr::LOCALHOST));
        let sighting = Sighting { ip: std::net::Ipv4Addr::LOCALHOST, at: 42, how: SeenHow::ProxyRequest };
        assert_eq!(got[0], (known, BootRequest { client: lo, dhcp: DhcpWitness::Seen(sighting) }));
        assert_eq!(got[1].1, BootRequest { client: lo, dhcp: DhcpWitness::NotSeen });
        server.stop().await;
    }
}
