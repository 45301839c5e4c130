//! A schedule with `--boot-test` against a real `kura serve` (its clock moved by the test,
//! `--test-clock`), and the verdict on the status page in headless Chromium.
//!
//! The schedule comes due and queues a capture job for the host; the bootable test system disk
//! ([`bootdisk`]) is captured for that job (`kura image capture --job`, as a machine captured
//! outside netboot would be); the scheduler settles the job and the engine boot-tests the new
//! snapshot on its own (one QEMU boot, TCG). The engine is killed (`kill -9`) as soon as that
//! test is queued: started again, it runs the test it had queued (the queue is in the catalog).
//! The test is recorded on the snapshot with its screenshot kept in the data directory
//! (private). The status page, logged in as an operator,
//! shows the host's newest boot test as "passed" with the screenshot's thumbnail loaded in the
//! browser (`naturalWidth > 0`); the PNG is served to a logged-in operator only. The page as
//! the browser shows it is kept at `target/boot-test-status.png`.
//!
//! Needs qemu-system-x86 and the bootable disk's tools (see `bootdisk`), chromium and
//! chromium-driver. Root not needed.

use base64::Engine as _;
use kura_tests::bootdisk;
use kura_tests::browser::{decode_png, Browser};
use kura_tests::engine::Server;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the scheduled boot test may take: one TCG boot takes 10-60 s on 2 busy cores
/// (docs/boot-test.md); the margin covers a loaded machine.
const BOOT_TEST_LIMIT: Duration = Duration::from_secs(600);

fn set_clock(path: &Path, t: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{t}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The pids of QEMU processes whose command line names `dir`.
fn qemus_in(dir: &Path) -> Vec<u32> {
    let dir = dir.to_str().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("qemu-system") && cmdline.contains(dir) {
            found.push(pid);
        }
    }
    found
}

fn wait_for<T>(what: &str, server: &Server, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "timed out waiting for {what}\nserver log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_scheduled_capture_is_boot_tested_and_the_status_page_shows_the_verdict_with_its_screen() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let system = bootdisk::build(w, "system.img", "scheduled-boot");
    let marker = system.marker_line();
    let clock = w.join("clock");
    set_clock(&clock, "2026-01-01T01:59:00Z");
    let data = w.join("engine");
    // The engine's scratch (boot test machines' overlays): QEMU's command line names it.
    let scratch = w.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // Info logging: the scheduled test's figures (time, bytes fetched) are in the log.
    let mut server = Server::start_http_with_env(
        &data,
        &[&"--test-clock", &clock, &"--scheduler-tick-ms", &"200"],
        &[("KURA_LOG", &"info"), ("TMPDIR", &scratch)],
    );
    let api = server.api();
    let admin = server.admin.clone();
    let operator = api.operator_token(&admin);
    let r =
        api.req("POST", "/hosts").token(&admin).json(&json!({"name": "web01", "macs": ["aa:bb:cc:00:15:01"]})).send();
    assert_eq!(r.status, 201, "{}", r.text());

    // The schedule, with its boot test.
    let r = server.kura(&[
        &"schedule",
        &"add",
        &"--hosts",
        &"web01",
        &"--cron",
        &"0 2 * * *",
        &"--boot-test",
        &"--boot-test-expect",
        &marker,
    ]);
    assert!(r.success(), "{r}");
    let r = server.kura(&[&"schedule", &"list"]);
    assert!(r.success(), "{r}");
    assert!(r.stdout.lines().next().unwrap().contains("ENABLED   BOOT TEST"), "{r}");
    let row: Vec<&str> = r.stdout.lines().find(|l| l.contains("web01")).unwrap().split_whitespace().collect();
    // ... ENABLED, BOOT TEST, RETENTION.
    assert_eq!(row[row.len() - 3..], ["true", "yes", "-"], "{r}");
    let r = server.kura(&[&"schedule", &"list", &"--json"]);
    let list: Vec<Value> = r.json();
    assert_eq!((list[0]["boot_test"].as_bool(), list[0]["boot_test_expect"].as_str()), (Some(true), Some(&*marker)));

    // Due: the scheduler queues the capture job; the disk is captured for it.
    set_clock(&clock, "2026-01-01T02:00:30Z");
    let job = wait_for("the scheduled capture job", &server, Duration::from_secs(30), || {
        let jobs = api.req("GET", "/jobs").token(&admin).send().json();
        let jobs = jobs.as_array().cloned().unwrap_or_default();
        jobs.iter().find(|j| j["host"] == "web01" && j["kind"] == "capture").and_then(|j| j["id"].as_i64())
    });
    let t0 = Instant::now();
    let r = server.kura(&[&"image", &"capture", &system.disk.path, &"--job", &job.to_string(), &"--json"]);
    assert!(r.success(), "{r}\nserver log:\n{}", server.log());
    let snapshot = r.json::<Value>()["snapshot"].as_str().unwrap().to_string();
    let job_state = api.req("GET", &format!("/jobs/{job}")).token(&admin).send().json()["job"]["state"].clone();
    assert_eq!(job_state, "succeeded");

    // The engine queues the boot test; killed then, it runs the test after its restart.
    let queued = format!("boot test of snapshot {snapshot} queued");
    wait_for("the boot test queued", &server, Duration::from_secs(30), || server.log().contains(&queued).then_some(()));
    wait_for("the boot test's QEMU", &server, Duration::from_secs(60), || {
        (!qemus_in(&scratch).is_empty()).then_some(())
    });
    server.kill9();
    // The killed engine's test machine goes with it (QEMU gets a parent-death signal).
    wait_for("the killed engine's QEMU gone", &server, Duration::from_secs(10), || {
        qemus_in(&scratch).is_empty().then_some(())
    });
    server.restart();
    let again = "scheduled boot tests queued before the last stop are queued again";
    wait_for("the queue read again", &server, Duration::from_secs(30), || server.log().contains(again).then_some(()));
    let api = server.api();

    // The engine boot-tests the new snapshot by itself and records it.
    let tests_dir = data.join("screenshots");
    let verdict = wait_for("the scheduled boot test", &server, BOOT_TEST_LIMIT, || {
        let snaps = server.snapshots();
        let s = snaps.iter().find(|s| s["id"] == snapshot.as_str())?;
        s["boot_test_passed"].as_bool()
    });
    let seconds = t0.elapsed().as_secs_f64();
    assert!(verdict, "the scheduled boot test failed\nserver log:\n{}", server.log());
    let log = server.log();
    let line = log.lines().find(|l| l.contains("scheduled boot test of snapshot")).unwrap_or_else(|| panic!("{log}"));
    eprintln!("scheduled boot test: from the capture's start to the recorded verdict {seconds:.1} s; {line}");
    assert!(line.contains("passed") && line.contains("bytes fetched"), "{line}");

    // The screenshot is kept privately in the data directory.
    let shots: Vec<_> = std::fs::read_dir(&tests_dir).unwrap().flatten().collect();
    assert_eq!(shots.len(), 1, "{shots:?}");
    let name = shots[0].file_name().to_string_lossy().into_owned();
    assert!(name.starts_with(&snapshot) && name.ends_with(".png"), "{name}");
    assert_eq!(std::fs::metadata(&tests_dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(shots[0].metadata().unwrap().permissions().mode() & 0o777, 0o600);

    // The PNG: to a logged-in operator only.
    let url = format!("/boot-tests/screenshots/{name}");
    let r = api.raw("GET", &url).send();
    assert_eq!(r.status, 303, "no login, no screenshot: {}", r.status);
    let r = api.raw("GET", &url).token(&operator).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), ["image/png"]);
    let (sw, sh, _, _) = decode_png(&r.body);
    assert!(sw >= 320 && sh >= 200, "{sw}x{sh}");
    let r = api.raw("GET", "/boot-tests/screenshots/..%2Fadmin.token").token(&operator).send();
    assert_eq!(r.status, 404, "{}", r.text());

    // The status page in a real browser.
    let profile = w.join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let b = Browser::start(&profile);
    b.go(&format!("{}/status", server.url));
    b.wait_for_url("/login");
    b.type_into("#token", &operator);
    b.click("#login-submit");
    b.wait_for_url("/status");
    let cell = "tr[data-host=\"web01\"] td.boot-verdict";
    assert_eq!(b.attr(cell, "data-passed"), "true");
    assert_eq!(b.attr(cell, "data-snapshot"), snapshot);
    assert_eq!(b.text(&format!("{cell} .verdict")), "passed");
    let href = b.attr(&format!("{cell} a.boot-shot"), "href");
    assert!(href.ends_with(&url), "{href}");
    // The thumbnail is loaded (not a broken image).
    let t0 = Instant::now();
    let size = loop {
        let v = b.script(
            "const i = document.querySelector('tr[data-host=\"web01\"] img.boot-shot'); \
             return [i.complete, i.naturalWidth, i.naturalHeight];",
        );
        if v[0] == true || t0.elapsed() > Duration::from_secs(20) {
            break (v[1].as_u64().unwrap_or(0), v[2].as_u64().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(size, (sw as u64, sh as u64), "the thumbnail did not load in the browser");
    // The page as the browser shows it, kept for people at `target/boot-test-status.png`.
    let shot = b.call("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap()).unwrap();
    decode_png(&png);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target");
    if std::fs::create_dir_all(&target).is_ok() {
        let _ = std::fs::write(target.join("boot-test-status.png"), &png);
    }
}
