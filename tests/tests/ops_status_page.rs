//! The status page in a real browser: headless Chromium driven by chromedriver over the
//! WebDriver protocol (plain HTTP with reqwest; no node). An unauthenticated visit lands on
//! the login page with no data; after logging in with an operator token the page shows the
//! hosts, their last snapshot and its age, a failed job and the store's usage as the catalog
//! and the store have them, and replication to a remote that cannot be reached (its queue, lag
//! and last error; the snapshot's copies `1/2`); a screenshot is checked (a PNG of the window's size, not blank)
//! and kept in the test's temp dir and at `target/ops-status.png`.
//!
//! Needs the Debian packages chromium and chromium-driver (scripts/test installs them).

use std::path::Path;

use base64::Engine as _;
use kura_tests::browser::{decode_png, Browser};
use kura_tests::content::random_bytes;
use kura_tests::engine::{chunk_count, raw_disk, Server};
use kura_tests::store::chunk_files;

#[test]
fn status_page_in_a_headless_browser() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let operator = api.operator_token(&server.admin);
    // A remote nobody answers at (port 1): everything for it stays queued, failing.
    let token_file = work.path().join("dr.token");
    std::fs::write(&token_file, "kura_not-a-real-token").unwrap();
    server.kura(&[&"remote", &"add", &"dr", &"http://127.0.0.1:1", &"--token-file", &token_file]).expect_success();
    server.kura(&[&"replicate", &"add", &"--to", &"dr", &"--hosts", &"web01"]).expect_success();
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
    // Replication: the remote's row as `kura replicate list` has it, and the snapshot's copies.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let backlog = loop {
        let v: serde_json::Value = server.kura(&[&"replicate", &"list", &"--json"]).json();
        if !v["remotes"][0]["last_error"].is_null() || std::time::Instant::now() > deadline {
            break v["remotes"][0].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(backlog["last_error"].is_string(), "no failure recorded: {backlog}");
    b.go(&format!("{}/status", server.url));
    b.wait_for_url("/status");
    let row = "#replication tr[data-remote=\"dr\"]";
    assert_eq!(b.attr(row, "data-queued-snapshots"), "1");
    assert_eq!(b.attr(row, "data-queued-chunks"), backlog["chunks"].to_string());
    assert!(backlog["chunks"].as_u64().unwrap() > 0, "{backlog}");
    assert_eq!(b.attr(row, "data-queued-bytes"), backlog["chunk_bytes"].to_string());
    let lag: i64 = b.attr(row, "data-lag-seconds").parse().unwrap();
    assert!((0..600).contains(&lag), "lag {lag}");
    assert!(!b.text(&format!("{row} td.error")).is_empty());
    assert_eq!(b.attr("tr[data-host=\"web01\"] td.copies", "data-copies"), "1");
    assert_eq!(b.attr("tr[data-host=\"web01\"] td.copies", "data-copies-wanted"), "2");
    assert_eq!(b.text("tr[data-host=\"web01\"] td.copies"), "1/2");
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
