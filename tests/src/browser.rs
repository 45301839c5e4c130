//! A real browser for tests: headless Chromium (Debian's `chromium`) driven by chromedriver
//! (`chromium-driver`) over the WebDriver protocol, plain HTTP with reqwest (no node). Panics
//! naming the package when either is missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::engine::ChildGuard;

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub fn chromedriver() -> PathBuf {
    assert!(Path::new(CHROMIUM).is_file(), "{CHROMIUM} is missing: install the Debian package `chromium`");
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromedriver"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("chromedriver is missing: install the Debian package `chromium-driver`"))
}

pub struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    _driver: ChildGuard,
}

impl Browser {
    pub fn start(profile: &Path) -> Browser {
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

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
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

    pub fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    pub fn source(&self) -> String {
        self.call("GET", "/source", None).as_str().unwrap().to_string()
    }

    pub fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(json!({ "using": "css selector", "value": css })));
        // A web element reference: an object with one key (the W3C element identifier).
        let id = v.as_object().and_then(|o| o.values().next()).and_then(|e| e.as_str());
        id.unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    pub fn count(&self, css: &str) -> usize {
        self.call("POST", "/elements", Some(json!({ "using": "css selector", "value": css }))).as_array().unwrap().len()
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None).as_str().unwrap().to_string()
    }

    pub fn attr(&self, css: &str, name: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/attribute/{name}"), None).as_str().unwrap_or("").to_string()
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }

    pub fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": js, "args": [] })))
    }

    pub fn wait_for_url(&self, suffix: &str) {
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
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("not a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, info.color_type.samples())
}
