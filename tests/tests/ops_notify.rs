//! Notifications end to end: a webhook receiver and an SMTP relay, both real servers on
//! loopback in this test, get the job failure (and `kura notify test`), configured with the
//! `kura notify` CLI; a target that never answers does not hold up the job's end.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use kura_tests::engine::Server;
use kura_tests::webhook::webhook_receiver;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A mail as the relay got it.
#[derive(Debug)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

impl Mail {
    fn header(&self, name: &str) -> Option<&str> {
        let head = self.data.split("\r\n\r\n").next().unwrap();
        head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }

    fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
    }
}

/// A tiny SMTP relay: 220, EHLO/HELO, MAIL, RCPT, DATA, QUIT.
fn smtp_relay() -> (String, Receiver<Mail>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let tx = tx.clone();
            std::thread::spawn(move || serve_smtp(conn, tx));
        }
    });
    (addr, rx)
}

fn serve_smtp(conn: TcpStream, tx: Sender<Mail>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    let mut say = |s: &str| w.write_all(format!("{s}\r\n").as_bytes()).unwrap();
    say("220 relay.test ESMTP ready");
    let mut mail = Mail { from: String::new(), to: Vec::new(), data: String::new() };
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            say("250-relay.test greets you");
            say("250-8BITMIME");
            say("250 SIZE 10000000");
        } else if upper.starts_with("HELO") {
            say("250 relay.test");
        } else if let Some(a) = upper.strip_prefix("MAIL FROM:") {
            mail.from = line[line.len() - a.len()..].trim_matches(['<', '>', ' ']).to_string();
            say("250 ok");
        } else if let Some(a) = upper.strip_prefix("RCPT TO:") {
            mail.to.push(line[line.len() - a.len()..].trim_matches(['<', '>', ' ']).to_string());
            say("250 ok");
        } else if upper == "DATA" {
            say("354 go ahead");
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if l == ".\r\n" {
                    break;
                }
                let l = l.strip_prefix('.').unwrap_or(&l);
                mail.data.push_str(l);
            }
            say("250 queued");
        } else if upper == "QUIT" {
            say("221 bye");
            let _ = tx.send(mail);
            return;
        } else {
            say("502 unknown command");
        }
    }
}

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

#[test]
fn job_failures_reach_the_webhook_and_the_mailbox() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let (hook_url, hooks) = webhook_receiver();
    let (relay, mails) = smtp_relay();
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
        &relay,
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
    assert_eq!(list[2]["smtp"], relay.as_str());
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

    let mail = next(&mails, "mail", &server);
    assert_eq!(mail.from, "kura@backup.test");
    assert_eq!(mail.to, ["ops@example.test", "oncall@example.test"]);
    assert_eq!(
        mail.header("Subject"),
        Some(format!("Kura: capture job {job} of host db01 failed: test: disk on fire").as_str())
    );
    assert_eq!(mail.header("From"), Some("<kura@backup.test>"));
    assert!(mail.header("Date").is_some() && mail.header("Message-ID").is_some(), "{mail:?}");
    let body = mail.body();
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
    let m = next(&mails, "test mail", &server);
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
