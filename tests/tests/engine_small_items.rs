//! Small hardening items against a real `kura serve`: progress counts that do not fit the
//! catalog, `/verify` of an unknown snapshot, hosts created through uploads, and a server whose
//! stderr reader is gone stopping on SIGTERM.

use kura_tests::engine::Server;
use kura_tests::kura_cli::kura_bin;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bad_progress_and_unknown_snapshots_get_a_4xx() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let admin = server.admin.clone();
    let mac = "aa:bb:cc:dd:ee:01";
    let r = api.req("POST", "/hosts").token(&admin).json(&json!({"name": "h1", "macs": [mac]})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api.req("POST", "/jobs").token(&admin).json(&json!({"kind": "capture", "host": "h1"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let (job, agent) = (r.json()["job"]["id"].as_i64().unwrap(), r.json()["agent_token"].as_str().unwrap().to_string());
    let progress = |body: serde_json::Value| {
        api.req("POST", &format!("/jobs/{job}/progress")).token(&agent).mac(mac).json(&body).send()
    };
    for body in [
        json!({"done": u64::MAX}),
        json!({"done": 1, "total": u64::MAX}),
        json!({"done": (i64::MAX as u64) + 1, "total": 1}),
    ] {
        let r = progress(body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains("too large"), "{}", r.text());
    }
    let r = api.req("GET", &format!("/jobs/{job}")).token(&admin).send();
    assert_eq!(r.json()["job"]["state"], "queued", "a refused report changed the job: {}", r.text());
    assert_eq!(progress(json!({"done": 5, "total": 10})).status, 204);

    let verify = |snapshot: &str| api.req("POST", "/verify").token(&admin).json(&json!({"snapshot": snapshot})).send();
    let r = verify("0123456789abcdef");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(verify("zz").status, 400);
    assert_eq!(verify("").status, 400);
    let r = api.req("POST", "/verify").token(&admin).json(&json!({})).send();
    assert_eq!(r.status, 200, "verifying the whole (empty) store: {}", r.text());
    assert!(!server.log().contains("internal error"), "{}", server.log());
}

/// `POST /hosts` is admin-only, so an operator's upload may not create a host either; an
/// admin's may, and an operator may upload for a host an admin registered.
#[test]
fn only_admins_register_hosts_through_uploads() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let admin = server.admin.clone();
    let operator = api.operator_token(&admin);
    let upload = |token: &str, host: &str| api.req("POST", "/uploads").token(token).json(&json!({"host": host})).send();

    let r = upload(&operator, "stranger");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("only an admin may register hosts"), "{}", r.text());
    assert_eq!(api.req("GET", "/hosts/stranger").token(&admin).send().status, 404, "the operator created a host");
    // The CLI says so too.
    let run = server.kura_as(&operator, &[&"image", &"capture", &"/dev/null", &"--host", &"stranger"]);
    run.expect_failure_mentioning(&["only an admin may register hosts"]);

    assert_eq!(upload(&admin, "known").status, 201);
    assert_eq!(api.req("GET", "/hosts/known").token(&admin).send().status, 200);
    assert_eq!(upload(&operator, "known").status, 201, "an operator's upload for a registered host");
}

/// With its stderr pipe closed, `kura serve` neither panics in its shutdown message nor keeps
/// serving: SIGTERM ends it.
#[test]
fn serve_with_a_closed_stderr_stops_on_sigterm() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("engine");
    let mut child = Command::new(kura_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure-http", "--data"])
        .arg(&data)
        .env("KURA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start kura serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("listening on ") => break l.split("listening on ").nth(1).unwrap().to_string(),
            Some(Ok(_)) => continue,
            _ => {
                let _ = child.kill();
                panic!("kura serve did not start");
            }
        }
    };
    // Keep draining stdout (it is not what this test closes).
    std::thread::spawn(move || lines.for_each(drop));
    drop(child.stderr.take());
    // Requests after the close make log lines (KURA_LOG=info) that cannot be written.
    let api = kura_tests::engine::Api::new(&url);
    for _ in 0..3 {
        assert_eq!(api.req("GET", "/health").send().status, 200);
        assert_eq!(api.req("GET", "/hosts").token("kura_nonsense").send().status, 401);
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kura serve with a closed stderr ignored SIGTERM for 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "kura serve ended with {status}");
}
