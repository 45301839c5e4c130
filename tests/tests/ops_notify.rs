//! Notifications end to end: a webhook receiver and an SMTP relay (aiosmtpd), real servers on
//! loopback, get the job failure (and `kura notify test`), configured with the `kura notify`
//! CLI; a target that never answers does not hold up the job's end. A relay that requires
//! STARTTLS, with a certificate from the test's own CA (trusted through `KURA_NOTIFY_CA`), gets
//! the mail over TLS, and refuses a target configured without `--starttls`.

use std::net::TcpListener;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use kura_tests::engine::Server;
use kura_tests::smtp::{Mail, SmtpRelay, TestCa};
use kura_tests::webhook::webhook_receiver;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Accepts connections and never answers.
fn black_hole() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/never", listener.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(8) {
            held.push(conn);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    (url, h)
}

fn next<T>(rx: &Receiver<T>, what: &str, server: &Server) -> T {
    rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no {what} within {WAIT:?}; server log:\n{}", server.log()))
}

fn next_mail(relay: &mut SmtpRelay, what: &str, server: &Server) -> Mail {
    relay.next_mail(WAIT).unwrap_or_else(|| {
        panic!("no {what} within {WAIT:?}; server log:\n{}\nrelay log:\n{}", server.log(), relay.log())
    })
}

#[test]
fn job_failures_reach_the_webhook_and_the_mailbox() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let (hook_url, hooks) = webhook_receiver();
    let mut relay = SmtpRelay::plain();
    let (never_url, _hole) = black_hole();

    let add = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let run = server.kura(args);
        assert!(run.success(), "{run}");
        run.json::<Value>()["id"].as_i64().unwrap()
    };
    let hook = add(&[&"notify", &"add", &"webhook", &hook_url, &"--json"]);
    let never = add(&[&"notify", &"add", &"webhook", &never_url, &"--json"]);
    let email = add(&[
        &"notify",
        &"add",
        &"email",
        &"--smtp",
        &relay.addr,
        &"--from",
        &"kura@backup.test",
        &"--to",
        &"ops@example.test",
        &"--to",
        &"oncall@example.test",
        &"--json",
    ]);
    let run = server.kura(&[&"notify", &"list", &"--json"]);
    assert!(run.success(), "{run}");
    let list: Vec<Value> = run.json();
    assert_eq!(list.iter().map(|t| t["id"].as_i64().unwrap()).collect::<Vec<_>>(), [hook, never, email]);
    assert_eq!(list[2]["smtp"], relay.addr.as_str());
    // Operators may not see or change targets.
    let operator = api.operator_token(&server.admin);
    assert_eq!(api.req("GET", "/notify").token(&operator).send().status, 403);

    let t0 = Instant::now();
    let job = api.failed_job(&server.admin, "db01", "aa:bb:cc:00:00:07", "test: disk on fire");
    assert!(t0.elapsed() < Duration::from_secs(5), "failing a job waited for notifications: {:?}", t0.elapsed());

    let (path, v) = next(&hooks, "webhook", &server);
    assert_eq!(path, "/hooks/kura");
    assert_eq!(v["event"], "job_failed", "{v}");
    assert_eq!(v["job"]["id"], job, "{v}");
    assert_eq!((v["job"]["host"].as_str(), v["job"]["kind"].as_str()), (Some("db01"), Some("capture")), "{v}");
    assert_eq!(v["job"]["state"], "failed", "{v}");
    assert_eq!(v["error"], "test: disk on fire", "{v}");
    let time = v["time"].as_i64().unwrap();
    assert!((time - v["job"]["finished"].as_i64().unwrap()).abs() <= 2, "{v}");
    assert!(v["time_rfc3339"].as_str().unwrap().ends_with('Z'), "{v}");
    assert_eq!(v["text"], format!("Kura: capture job {job} of host db01 failed: test: disk on fire"));

    let mail = next_mail(&mut relay, "mail", &server);
    assert!(!mail.tls, "{mail:?}");
    assert_eq!(mail.from, "kura@backup.test");
    assert_eq!(mail.to, ["ops@example.test", "oncall@example.test"]);
    assert_eq!(
        mail.header("Subject"),
        Some(format!("Kura: capture job {job} of host db01 failed: test: disk on fire").as_str())
    );
    assert_eq!(mail.header("From"), Some("kura@backup.test"));
    assert_eq!(mail.header("To"), Some("ops@example.test, oncall@example.test"));
    assert_eq!(mail.header("Auto-Submitted"), Some("auto-generated"));
    assert!(mail.header("Date").is_some() && mail.header("Message-ID").is_some(), "{mail:?}");
    let body = &mail.body;
    assert!(body.starts_with(&format!("Kura: capture job {job} of host db01 failed")), "{body}");
    assert!(body.contains("error: test: disk on fire"), "{body}");
    assert!(body.contains(&format!("\"id\": {job}")) && body.contains("\"host\": \"db01\""), "{body}");

    // `kura notify test` waits for each target and says how it went.
    let run = server.kura(&[&"notify", &"remove", &never.to_string()]);
    assert!(run.success(), "{run}");
    let run = server.kura(&[&"notify", &"test", &"--json"]);
    assert!(run.success(), "{run}");
    let v: Value = run.json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["targets"].as_array().unwrap().len(), 2, "{v}");
    let (_, t) = next(&hooks, "test webhook", &server);
    assert_eq!(t["event"], "test");
    let m = next_mail(&mut relay, "test mail", &server);
    assert_eq!(m.header("Subject"), Some("Kura: test notification"));

    // A broken relay makes `kura notify test` fail, naming the target.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    add(&[&"notify", &"add", &"email", &"--smtp", &dead_addr, &"--from", &"a@b.test", &"--to", &"c@d.test", &"--json"]);
    let run = server.kura(&[&"notify", &"test"]);
    assert!(!run.success(), "{run}");
    assert!(run.stdout.contains("FAILED"), "{run}");
    assert!(server.log().is_empty() || !server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn mail_goes_through_starttls_to_a_relay_that_requires_it() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let mut relay = SmtpRelay::starttls(&ca);
    let server = Server::start_http_env(&work.path().join("engine"), &[("KURA_NOTIFY_CA", &ca.cert_path())]);
    let api = server.api();
    let addr = relay.addr.clone();
    let add = |server: &Server, starttls: bool| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"notify",
            &"add",
            &"email",
            &"--smtp",
            &addr,
            &"--from",
            &"kura@backup.test",
            &"--to",
            &"ops@example.test",
            &"--json",
        ];
        if starttls {
            args.push(&"--starttls");
        }
        let run = server.kura(&args);
        assert!(run.success(), "{run}");
        run.json::<Value>()["id"].as_i64().unwrap()
    };
    let tls_target = add(&server, true);
    // The relay refuses mail before STARTTLS: a plain target to it fails (530), and sends nothing.
    let plain_target = add(&server, false);

    // Non-ASCII in the error: the subject goes out as an RFC 2047 encoded word.
    let error = "test: disque en feu 🔥 蔵";
    let job = api.failed_job(&server.admin, "db02", "aa:bb:cc:00:00:08", error);
    let text = format!("Kura: capture job {job} of host db02 failed: {error}");
    let mail = next_mail(&mut relay, "mail over STARTTLS", &server);
    assert!(mail.tls, "the mail was not sent over TLS: {mail:?}");
    assert_eq!((mail.from.as_str(), mail.to.as_slice()), ("kura@backup.test", &["ops@example.test".to_string()][..]));
    assert_eq!(mail.header("Subject"), Some(text.as_str()), "{mail:?}");
    assert!(mail.header("Content-Type").is_some_and(|c| c.starts_with("text/plain")), "{mail:?}");
    assert!(mail.body.starts_with(&text), "{mail:?}");
    assert!(mail.body.contains(&format!("error: {error}")), "{mail:?}");
    assert!(mail.body.contains(&format!("\"id\": {job}")) && mail.body.contains("\"host\": \"db02\""), "{mail:?}");

    // `kura notify test`: the STARTTLS target works, the plain one is refused.
    let run = server.kura(&[&"notify", &"test", &"--json"]);
    assert!(!run.success(), "{run}");
    let v: Value = run.json();
    let outcome = |id: i64| v["targets"].as_array().unwrap().iter().find(|t| t["target"] == id).unwrap().clone();
    assert_eq!(outcome(tls_target)["ok"], true, "{v}");
    let plain = outcome(plain_target);
    assert_eq!(plain["ok"], false, "{v}");
    assert!(plain["error"].as_str().unwrap().contains("530"), "{v}");
    let m = next_mail(&mut relay, "test mail over STARTTLS", &server);
    assert!(m.tls, "{m:?}");
    assert_eq!(m.header("Subject"), Some("Kura: test notification"));
    drop(server);

    // Without the test CA the relay's certificate is not trusted, and nothing is sent.
    let untrusting = Server::start_http(&work.path().join("engine2"));
    let target = add(&untrusting, true);
    let run = untrusting.kura(&[&"notify", &"test", &"--json"]);
    assert!(!run.success(), "{run}");
    let v: Value = run.json();
    assert_eq!(v["targets"][0]["target"], target, "{v}");
    assert_eq!(v["targets"][0]["ok"], false, "{v}");
    assert!(v["targets"][0]["error"].as_str().unwrap().to_lowercase().contains("certificate"), "{v}");
    assert!(relay.next_mail(Duration::from_secs(1)).is_none(), "a mail got through: {}", relay.log());
}
