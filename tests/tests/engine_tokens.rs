//! The token lifecycle against a real `kura serve` whose clock the test moves (`--test-clock`):
//! `kura token create --expires`, `list` (never a secret), `revoke`, `rotate-admin`; a revoked
//! or expired token fails at once on the API and in the status page's open browser sessions.

use kura_tests::engine::{Api, Server};
use kura_tests::kura_cli;
use serde_json::{json, Value};
use std::path::Path;

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600;

fn set_clock(path: &Path, unix: i64) {
    let tmp = path.with_extension("tmp");
    let days = unix.div_euclid(86_400) - T0.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    assert!((0..28).contains(&days), "the test clock only moves within January 2026");
    let text = format!("2026-01-{:02}T{:02}:{:02}:{:02}Z", 1 + days, secs / 3600, secs % 3600 / 60, secs % 60);
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A status-page session cookie for `token`.
fn login(api: &Api, token: &str) -> String {
    let r = api
        .raw("POST", "/login")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .bytes(format!("token={token}").into_bytes())
        .send();
    assert_eq!(r.status, 303, "{}", r.text());
    r.header("set-cookie").pop().expect("a session cookie").split(';').next().unwrap().to_string()
}

fn page(api: &Api, cookie: &str) -> u16 {
    api.raw("GET", "/status").header("Cookie", cookie).send().status
}

fn listed(server: &Server) -> (Vec<Value>, kura_cli::Run) {
    let run = server.kura(&[&"token", &"list", &"--json"]);
    run.expect_success();
    (run.json(), run)
}

fn find(list: &[Value], id: i64) -> Value {
    list.iter().find(|t| t["id"] == id).unwrap_or_else(|| panic!("token {id} is not listed: {list:?}")).clone()
}

#[test]
fn tokens_are_listed_revoked_and_expire_with_their_sessions() {
    let work = tempfile::tempdir().unwrap();
    let clock = work.path().join("clock");
    set_clock(&clock, T0);
    let server = Server::start_http_with(&work.path().join("engine"), &[&"--test-clock", &clock]);
    let api = server.api();

    // One operator token for good, one that expires in an hour (the CLI's --expires).
    let r =
        api.req("POST", "/tokens").token(&server.admin).json(&json!({"role": "operator", "label": "laptop"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let (op, op_id) = (r.json()["token"].as_str().unwrap().to_string(), r.json()["id"].as_i64().unwrap());
    let run = server.kura(&[&"token", &"create", &"--role", &"operator", &"--note", &"ci runner", &"--expires", &"1h"]);
    run.expect_success();
    let brief = run.stdout.trim().to_string();
    assert!(brief.starts_with("kura_") && run.stderr.contains("valid until 2026-01-01T01:00:00Z"), "{run}");
    // An expiry already past is refused.
    server
        .kura(&[&"token", &"create", &"--role", &"operator", &"--expires", &"2025-12-31T23:00:00Z"])
        .expect_failure_mentioning(&["past"]);

    // Using a token records it (the engine's clock).
    set_clock(&clock, T0 + 120);
    assert_eq!(api.req("GET", "/hosts").token(&op).send().status, 200);
    let op_cookie = login(&api, &op);
    let brief_cookie = login(&api, &brief);
    assert_eq!((page(&api, &op_cookie), page(&api, &brief_cookie)), (200, 200));

    let (list, run) = listed(&server);
    for secret in [&server.admin, &op, &brief] {
        assert!(!run.stdout.contains(secret.as_str()), "a secret is listed:\n{run}");
        assert!(!run.stdout.contains(&secret[5..]), "a secret is listed:\n{run}");
    }
    let o = find(&list, op_id);
    assert_eq!((o["role"].as_str(), o["label"].as_str()), (Some("operator"), Some("laptop")), "{o}");
    assert_eq!(
        (o["last_used"].as_i64(), o["expires"].as_i64(), o["revoked"].as_bool()),
        (Some(T0 + 120), None, Some(false))
    );
    let b = list.iter().find(|t| t["label"] == "ci runner").expect("the --expires token is listed").clone();
    let brief_id = b["id"].as_i64().unwrap();
    assert_eq!((b["expires"].as_i64(), b["created"].as_i64()), (Some(T0 + 3600), Some(T0)), "{b}");
    assert!(
        list.iter().all(|t| t["role"] != "agent" && t.get("hash").is_none() && t.get("token").is_none()),
        "{list:?}"
    );

    // Operators may neither list nor revoke tokens.
    assert_eq!(api.req("GET", "/tokens").token(&op).send().status, 403);
    assert_eq!(api.req("DELETE", &format!("/tokens/{brief_id}")).token(&op).send().status, 403);
    assert_eq!(api.req("DELETE", "/tokens/99999").token(&server.admin).send().status, 404);

    // Revoked: fails at once, on the API and in its open session.
    let run = server.kura(&[&"token", &"revoke", &op_id.to_string()]);
    run.expect_success();
    assert_eq!(api.req("GET", "/hosts").token(&op).send().status, 401, "a revoked token still works");
    assert_eq!(page(&api, &op_cookie), 303, "a session of a revoked token still works");
    assert_eq!(page(&api, &brief_cookie), 200, "revoking one token ended another's session");

    // Expired: the clock passes the hour.
    assert_eq!(api.req("GET", "/hosts").token(&brief).send().status, 200);
    set_clock(&clock, T0 + 3600);
    assert_eq!(api.req("GET", "/hosts").token(&brief).send().status, 401, "an expired token still works");
    assert_eq!(page(&api, &brief_cookie), 303, "a session of an expired token still works");

    let run = server.kura(&[&"token", &"list"]);
    run.expect_success();
    let line = |id: i64| {
        run.stdout.lines().find(|l| l.split_whitespace().next() == Some(&id.to_string())).unwrap_or("").to_string()
    };
    assert!(line(op_id).ends_with("revoked") && line(op_id).contains("laptop"), "{run}");
    assert!(line(brief_id).ends_with("expired") && line(brief_id).contains("2026-01-01T01:00:00Z"), "{run}");
    assert!(run.stdout.starts_with("   ID  ROLE") && run.stdout.contains("LAST USED"), "{run}");
}

#[test]
fn rotate_admin_replaces_the_bootstrap_token_while_the_engine_runs() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("engine");
    let server = Server::start_http(&data);
    let api = server.api();
    let old = server.admin.clone();
    let other = api.operator_token(&old);
    let old_cookie = login(&api, &old);
    assert_eq!(page(&api, &old_cookie), 200);

    let run = kura_cli::run([&"token" as &dyn AsRef<std::ffi::OsStr>, &"rotate-admin", &"--data", &data, &"--json"]);
    run.expect_success();
    let v: Value = run.json();
    let new = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    assert!(new.starts_with("kura_") && new != old, "{new}");
    assert!(!run.stdout.contains(&new) && !run.stderr.contains(&new), "the secret was printed:\n{run}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("admin.token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    assert_eq!(api.req("GET", "/tokens").token(&old).send().status, 401, "the old admin token still works");
    assert_eq!(page(&api, &old_cookie), 303, "a session of the old admin token still works");
    let r = api.req("GET", "/tokens").token(&new).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(api.req("GET", "/hosts").token(&other).send().status, 200, "another token was revoked");
    let list: Vec<Value> = r.json().as_array().unwrap().clone();
    let bootstrap: Vec<(i64, bool)> = list
        .iter()
        .filter(|t| t["label"] == "bootstrap")
        .map(|t| (t["id"].as_i64().unwrap(), t["revoked"].as_bool().unwrap()))
        .collect();
    assert_eq!(bootstrap.len(), 2, "{list:?}");
    assert_eq!((bootstrap[0].1, bootstrap[1]), (true, (v["id"].as_i64().unwrap(), false)), "{list:?}");
    let audit = api.req("GET", "/audit").token(&new).send().text();
    assert!(audit.contains("token.rotate"), "{audit}");
    // Without a data directory it says so.
    kura_cli::run(["token", "rotate-admin", "--data", work.path().join("nothing").to_str().unwrap()])
        .expect_failure_mentioning(&["catalog.db"]);
}
