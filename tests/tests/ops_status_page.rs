//! The status page in a real browser: headless Chromium driven by chromedriver over the
//! WebDriver protocol (plain HTTP with reqwest; no node). An unauthenticated visit lands on
//! the login page with no data; after logging in with an operator token the page shows the
//! hosts, their last snapshot and its age, a failed job and the store's usage as the catalog
//! and the store have them; a screenshot is checked (a PNG of the window's size, not blank)
//! and kept in the test's temp dir and at `target/ops-status.png`.
//!
//! Needs the Debian packages chromium and chromium-driver (scripts/test installs them).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kura_tests::content::random_bytes;
use kura_tests::engine::{chunk_count, raw_disk, ChildGuard, Server};
use kura_tests::store::chunk_files;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromedriver() -> PathBuf {
    assert!(Path::new(CHROMIUM).is_file(), "{CHROMIUM} is missing: install the Debian package `chromium`");
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromedriver"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("chromedriver is missing: install the Debian package `chromium-driver`"))
}

struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    _driver: ChildGuard,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start chromedriver");
        let driver = ChildGuard(Some(driver));
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while http.get(format!("{base}/status")).send().map(|r| !r.status().is_success()).unwrap_or(true) {
            assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v: Value = http.post(format!("{base}/session")).json(&caps).send().unwrap().json().unwrap();
        let id = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}"));
        Browser { base: format!("{base}/session/{id}"), http, _driver: driver }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let rb = self.http.request(method.parse().unwrap(), &url);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        let v: Value = rb.send().unwrap_or_else(|e| panic!("{method} {path}: {e}")).json().unwrap();
        if v["value"].get("error").is_some() {
            panic!("{method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    fn source(&self) -> String {
        self.call("GET", "/source", None).as_str().unwrap().to_string()
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(json!({ "using": "css selector", "value": css })));
        // A web element reference: an object with one key (the W3C element identifier).
        let id = v.as_object().and_then(|o| o.values().next()).and_then(|e| e.as_str());
        id.unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    fn count(&self, css: &str) -> usize {
        self.call("POST", "/elements", Some(json!({ "using": "css selector", "value": css }))).as_array().unwrap().len()
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None).as_str().unwrap().to_string()
    }

    fn attr(&self, css: &str, name: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/attribute/{name}"), None).as_str().unwrap_or("").to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }

    fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": js, "args": [] })))
    }

    fn wait_for_url(&self, suffix: &str) {
        let t0 = Instant::now();
        while !self.url().ends_with(suffix) {
            assert!(t0.elapsed() < Duration::from_secs(20), "still at {} (want …{suffix})", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
    }
}

/// Decodes a PNG: (width, height, RGB(A) pixels, channels).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("not a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, info.color_type.samples())
}

#[test]
fn status_page_in_a_headless_browser() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let operator = api.operator_token(&server.admin);
    let disk = raw_disk(work.path(), "web.img", random_bytes(21, 4 << 20));
    let snap = server.capture(&disk.path, "web01").snapshot;
    let failed = api.failed_job(&server.admin, "db01", "aa:bb:cc:00:00:09", "test: <b>disk</b> on fire");

    let profile = work.path().join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let b = Browser::start(&profile);

    // Not logged in: the login page, and nothing from the catalog.
    b.go(&format!("{}/status", server.url));
    b.wait_for_url("/login");
    let login = b.source();
    assert!(login.contains("id=\"login\""), "{login}");
    for secret in ["web01", "db01", snap.as_str(), "disk on fire"] {
        assert!(!login.contains(secret), "the login page shows {secret}");
    }
    assert_eq!(b.count("#hosts"), 0);

    b.type_into("#token", &operator);
    b.click("#login-submit");
    b.wait_for_url("/status");
    assert_eq!(b.attr("#whoami", "data-role"), "operator");

    // Hosts, last snapshot and its age.
    assert_eq!(b.attr("tr[data-host=\"web01\"] td.snapshot", "data-snapshot"), snap);
    assert!(b.text("tr[data-host=\"web01\"] td.snapshot").contains(&snap));
    let age: i64 = b.attr("tr[data-host=\"web01\"] td.age", "data-age-seconds").parse().unwrap();
    assert!((0..600).contains(&age), "age {age}");
    assert_eq!(b.attr("tr[data-host=\"web01\"]", "data-stale"), "false");
    assert_eq!(b.attr("tr[data-host=\"db01\"]", "data-stale"), "true", "no snapshot at all is stale");
    // The failed job, its error shown as text (escaped, not markup).
    let row = format!("#failures tr[data-job=\"{failed}\"]");
    assert_eq!(b.text(&format!("{row} td.host")), "db01");
    assert_eq!(b.text(&format!("{row} td.error")), "test: <b>disk</b> on fire");
    assert_eq!(b.count("#failures b"), 0, "catalog text became markup");
    // Store usage as the store and `kura snapshots` have it.
    let stored: u64 = chunk_files(&server.store()).iter().map(|f| f.len).sum();
    assert_eq!(b.attr("#store-bytes", "data-bytes"), stored.to_string());
    assert_eq!(b.attr("#store-chunks", "data-chunks"), chunk_count(&server.store()).to_string());
    let snapshots = server.snapshots();
    assert_eq!(b.attr("#snapshot-count", "data-count"), snapshots.len().to_string());
    let logical: u64 = snapshots.iter().map(|s| s["used_bytes"].as_u64().unwrap()).sum();
    assert_eq!(b.attr("#logical-bytes", "data-bytes"), logical.to_string());
    let ratio: f64 = b.attr("#dedup-ratio", "data-ratio").parse().unwrap();
    assert!((ratio - logical as f64 / stored as f64).abs() < 1e-3, "{ratio}");
    // The cookie is not readable by scripts.
    assert_eq!(b.script("return document.cookie"), "");

    // A screenshot: a PNG of the viewport's size, not blank.
    let shot = b.call("GET", "/screenshot", None);
    let bytes = base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap()).unwrap();
    let path = work.path().join("ops-status.png");
    std::fs::write(&path, &bytes).unwrap();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target");
    if std::fs::create_dir_all(&target).is_ok() {
        let _ = std::fs::copy(&path, target.join("ops-status.png"));
    }
    let (w, h, pixels, channels) = decode_png(&bytes);
    let view = b.script("return [window.innerWidth, window.innerHeight, window.devicePixelRatio]");
    let dpr = view[2].as_f64().unwrap();
    let (vw, vh) = ((view[0].as_f64().unwrap() * dpr).round() as u32, (view[1].as_f64().unwrap() * dpr).round() as u32);
    assert_eq!((w, h), (vw, vh), "screenshot size vs the window's viewport");
    assert!(w >= 800 && h >= 600, "{w}x{h}");
    let luma: Vec<f64> = pixels.chunks(channels).map(|p| (p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0).collect();
    let mean = luma.iter().sum::<f64>() / luma.len() as f64;
    let var = luma.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / luma.len() as f64;
    let dark = luma.iter().filter(|l| **l < 128.0).count();
    eprintln!("screenshot {w}x{h}, mean {mean:.1}, variance {var:.1}, {dark} dark pixels: {}", path.display());
    assert!(var > 50.0 && dark > 1000, "the screenshot looks blank (variance {var}, {dark} dark pixels)");

    // Logging out ends the session.
    b.click("#logout button");
    b.wait_for_url("/login");
    b.go(&format!("{}/", server.url));
    b.wait_for_url("/login");
    assert!(!b.source().contains("web01"));
}
