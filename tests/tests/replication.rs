//! Engine-to-engine replication (issue 13, `docs/dr.md`): two real `kura serve` engines on
//! loopback, the DR engine (HTTPS, pinned certificate) reached through a TCP relay the test can
//! cut and re-point (an engine's port changes when it restarts).
//!
//! - A capture into the primary with a rule to the DR engine: its chunks are on the DR engine
//!   while the capture's commit is still held (so they were sent as they arrived, not after);
//!   the snapshot follows its commit; `kura snapshots` shows `2/2`; the metrics count what was
//!   sent. A second, similar host sends exactly the chunks the DR side lacked. A deletion and a
//!   GC on the primary do not reach the DR engine. With the primary killed and its data
//!   directory deleted, the DR engine restores both byte for byte.
//! - The DR engine is killed (`kill -9`) in the middle and the link cut: the queue waits, and
//!   resumes and completes once the DR engine is back; both stores verify clean. A remote failing
//!   longer than the threshold raises one `replication_failing` notification.
//! - A replica token adds but never deletes, reads or overwrites (403 / 409 / 422).
//! - A rule by host group copies that group's hosts only. A chunk the DR engine's verify
//!   quarantined (a flipped byte in its file) is sent again by the primary on its own; a chunk
//!   the DR store lost without a verify is sent again by `kura replicate resync`.
//! - Pull mode: the DR engine fetches from the primary (`kura replicate pull --from`, a
//!   reader token of the primary), reports each copy (the primary's COPIES counts it: 2/2, and
//!   1/2 for a snapshot not pulled yet), only the rule's hosts, resumes after a `kill -9`, and keeps
//!   what the primary deletes.

use kura_tests::content::random_bytes;
use kura_tests::disks::MIB;
use kura_tests::engine::{encode_stored_chunk, manifest_ids, raw_disk, Server};
use kura_tests::kura_cli::kura_bin;
use kura_tests::proxy::{Hold, Kind, Proxy, Seen};
use kura_tests::store::chunk_files;
use kura_tests::webhook::webhook_receiver;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the DR engine may take to hold what the primary committed. The issue asks for 5 s
/// on an idle machine; the test machine runs six builds at once, so 60 s (a failing worker
/// retries within 30 s, `MAX_BACKOFF`).
const REPLICATED_WITHIN: Duration = Duration::from_secs(60);

/// A TCP relay on 127.0.0.1 to a target that can be changed or removed (a cut link): every
/// open connection is closed when it changes.
struct Relay {
    addr: String,
    target: Arc<Mutex<Option<String>>>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let target = Arc::new(Mutex::new(Some(target.to_string())));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (t, o) = (target.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Some(to) = t.lock().unwrap().clone() else { continue };
                let Ok(upstream) = TcpStream::connect(&to) else { continue };
                o.lock().unwrap().extend([client.try_clone().unwrap(), upstream.try_clone().unwrap()]);
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, target, open }
    }

    /// Points the relay at `target` (`None`: the link is down), closing open connections.
    fn set(&self, target: Option<&str>) {
        *self.target.lock().unwrap() = target.map(str::to_string);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn host_port(url: &str) -> &str {
    url.split("://").nth(1).unwrap()
}

fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn digests(store: &Path) -> BTreeSet<String> {
    chunk_files(store).into_iter().map(|c| c.digest).collect()
}

/// The chunks a store has received: in place, or staged in `tmp/` (`PID.DIGEST.N`) until a
/// batch or a commit makes them durable.
fn received(store: &Path) -> BTreeSet<String> {
    let mut all = digests(store);
    for e in std::fs::read_dir(store.join("tmp")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(d) = name.split('.').find(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
            all.insert(d.to_string());
        }
    }
    all
}

/// Waits up to `limit` for `f`, polling; panics with `what` and `log` otherwise.
fn wait_for(what: &str, limit: Duration, log: impl Fn() -> String, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

/// A DR engine (HTTPS) behind a relay, and a primary (plain HTTP, so a proxy can hold its
/// captures' commits and the test can read its metrics) with the DR engine as remote `dr` and
/// a rule sending every host there.
struct Pair {
    primary: Server,
    dr: Server,
    relay: Relay,
}

fn pair(work: &Path) -> Pair {
    pair_with(work, &[], &[])
}

/// [`pair`] with the rule's extra arguments (`--group web`) and more environment for the
/// primary.
fn pair_with(work: &Path, rule: &[&str], env: &[(&str, &dyn AsRef<std::ffi::OsStr>)]) -> Pair {
    let dr = Server::start(&work.join("dr"));
    let fingerprint = dr.fingerprint.clone().expect("an https engine has a fingerprint");
    let made = dr.kura(&[&"token", &"create", &"--role", &"replica", &"--note", &"primary site", &"--json"]);
    assert!(made.success(), "{made}");
    let token: Value = made.json();
    let token_file = work.join("dr.token");
    std::fs::write(&token_file, format!("{}\n", token["token"].as_str().unwrap())).unwrap();
    let relay = Relay::start(host_port(&dr.url));
    // A remote failing for 2 s (not an hour) raises the notification.
    let mut primary_env: Vec<(&str, &dyn AsRef<std::ffi::OsStr>)> = vec![("KURA_TEST_REPLICATION_ALERT_SECS", &"2")];
    primary_env.extend_from_slice(env);
    let primary = Server::start_http_env(&work.join("primary"), &primary_env);
    let url = format!("https://{}", relay.addr);
    primary
        .kura(&[&"remote", &"add", &"dr", &url, &"--fingerprint", &fingerprint, &"--token-file", &token_file])
        .expect_success();
    std::fs::remove_file(&token_file).unwrap();
    let mut add: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"replicate", &"add", &"--to", &"dr"];
    add.extend(rule.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    primary.kura(&add).expect_success();
    let remotes: Vec<Value> = primary.kura(&[&"remote", &"list", &"--json"]).json();
    assert_eq!(remotes.len(), 1, "{remotes:?}");
    assert!(remotes[0].get("token").is_none() && !remotes[0].to_string().contains("kura_"), "{remotes:?}");
    Pair { primary, dr, relay }
}

/// `kura image capture DISK --host HOST --server URL` as `server`'s admin, started now.
fn spawn_capture(server: &Server, url: &str, disk: &Path, host: &str) -> Child {
    Command::new(kura_bin())
        .args(["image", "capture"])
        .arg(disk)
        .args(["--host", host, "--json", "--server", url])
        .env("KURA_TOKEN", &server.admin)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run kura")
}

/// The snapshot id a finished capture printed.
fn captured(child: Child, server: &Server) -> String {
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the capture failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.log());
    let v: Value = serde_json::from_str(stdout.lines().rfind(|l| l.starts_with('{')).unwrap()).unwrap();
    v["snapshot"].as_str().unwrap().to_string()
}

/// `name{remote="dr"} VALUE` of the primary's metrics.
fn metric(primary: &Server, name: &str) -> u64 {
    let r = primary.api().raw("GET", "/metrics").token(&primary.admin).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let prefix = format!("{name}{{remote=\"dr\"}} ");
    let text = r.text();
    let line = text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {prefix}in\n{text}"));
    line.trim().parse().unwrap()
}

fn backlog(primary: &Server) -> Value {
    let v: Value = primary.kura(&[&"replicate", &"list", &"--json"]).json();
    v["remotes"][0].clone()
}

fn has_snapshot(server: &Server, id: &str) -> bool {
    manifest_ids(&server.store()).iter().any(|m| m == id)
}

#[test]
fn a_capture_is_copied_while_it_runs_and_the_dr_engine_restores_it_alone() {
    let work = tempfile::tempdir().unwrap();
    let Pair { mut primary, dr, relay: _relay } = pair(work.path());
    let data_a = random_bytes(13, 24 * MIB as usize);
    let disk_a = raw_disk(work.path(), "a.img", data_a.clone());

    // The capture's commit is held: every chunk is on the primary, no snapshot yet.
    let proxy = Proxy::start(&primary.url, Hold::CommitRequest);
    let capture = spawn_capture(&primary, &proxy.url, &disk_a.path, "web01");
    proxy.wait("the commit", |s| s.held >= 1 && Seen::n(&s.arrived, Kind::Commit) >= 1);
    let on_primary = received(&primary.store());
    assert!(on_primary.len() >= 24, "{} chunks", on_primary.len());
    // ... and already on the DR engine, before the commit was even sent to the primary.
    let took = wait_for(
        "the chunks on the DR engine while the commit is held",
        REPLICATED_WITHIN,
        || format!("primary log:\n{}\nDR log:\n{}", primary.log(), dr.log()),
        || on_primary.is_subset(&received(&dr.store())),
    );
    eprintln!("chunks on the DR engine {took:?} after the commit was held");
    assert!(manifest_ids(&primary.store()).is_empty() && manifest_ids(&dr.store()).is_empty());

    proxy.release(true);
    let a = captured(capture, &primary);
    let committed = Instant::now();
    let lag = wait_for(
        "snapshot a on the DR engine",
        REPLICATED_WITHIN,
        || format!("{:?}\nprimary log:\n{}", backlog(&primary), primary.log()),
        || has_snapshot(&dr, &a),
    );
    eprintln!("snapshot {a} on the DR engine {:?} after the capture returned", lag.max(committed.elapsed()));
    wait_for("the copy recorded", REPLICATED_WITHIN, String::new, || {
        primary.snapshots().iter().any(|s| s["id"] == a.as_str() && s["copies"] == 2)
    });
    let listed = primary.snapshots();
    assert_eq!((listed[0]["copies"].as_u64(), listed[0]["copies_wanted"].as_u64()), (Some(2), Some(2)));
    assert_eq!(listed[0]["copied_to"], serde_json::json!(["dr"]));
    let text = primary.kura(&[&"snapshots"]);
    assert!(text.stdout.contains("COPIES") && text.stdout.contains("2/2"), "{text}");
    // The DR engine lists it under its host, registered by the replica.
    let on_dr = dr.snapshots();
    assert_eq!((on_dr.len(), on_dr[0]["host"].as_str()), (1, Some("web01")), "{on_dr:?}");
    let sent_a = metric(&primary, "kura_replication_sent_chunks_total");
    assert_eq!(sent_a as usize, on_primary.len(), "each chunk of a sent once");
    assert_eq!(metric(&primary, "kura_replication_queued_chunks"), 0);
    assert_eq!(metric(&primary, "kura_replication_lag_seconds"), 0);

    // A second host, mostly the same: only the chunks the DR engine lacks go.
    let mut data_b = data_a.clone();
    data_b[..3 * MIB as usize].copy_from_slice(&random_bytes(14, 3 * MIB as usize));
    let disk_b = raw_disk(work.path(), "b.img", data_b.clone());
    let dr_before = digests(&dr.store());
    let b = primary.capture(&disk_b.path, "web02");
    wait_for("snapshot b on the DR engine", REPLICATED_WITHIN, || primary.log(), || has_snapshot(&dr, &b.snapshot));
    let dr_new = digests(&dr.store()).len() - dr_before.len();
    eprintln!("host b: {} chunks new on the primary, {dr_new} on the DR engine", b.new_chunks);
    assert_eq!(dr_new as u64, b.new_chunks, "{b:?}");
    assert!(b.new_chunks > 0 && b.new_chunks < b.chunks, "{b:?}");
    let sent_b = metric(&primary, "kura_replication_sent_chunks_total") - sent_a;
    assert_eq!(sent_b, b.new_chunks, "chunks the DR engine had were sent again");
    assert_eq!(digests(&dr.store()), digests(&primary.store()));

    // web02 again with one byte changed in each of two chunks: its parent is b, so those chunks
    // are pieced (manifest v2), and their patches and the manifest reach the DR engine like
    // any other chunk and manifest.
    let mut data_c = data_b;
    for at in [5 * MIB as usize + 100, 9 * MIB as usize + 70_000] {
        data_c[at] ^= 0xff;
    }
    let disk_c = raw_disk(work.path(), "c.img", data_c);
    let c = primary.capture(&disk_c.path, "web02");
    assert!(c.pieced_chunks >= 2 && c.new_chunks == c.new_patches && c.new_stored_bytes < 256 << 10, "{c:?}");
    wait_for("snapshot c on the DR engine", REPLICATED_WITHIN, || primary.log(), || has_snapshot(&dr, &c.snapshot));
    assert_eq!(digests(&dr.store()), digests(&primary.store()));

    // Deleting on the primary (retention, by hand) and collecting never reaches the DR engine.
    let api = primary.api();
    let r = api.req("DELETE", &format!("/snapshots/{a}")).token(&primary.admin).send();
    assert_eq!(r.status, 204, "{}", r.text());
    let r = api.req("POST", "/gc").token(&primary.admin).json(&serde_json::json!({"grace": 0})).send();
    assert!(r.status < 300, "{} {}", r.status, r.text());
    std::thread::sleep(Duration::from_secs(2));
    assert!(has_snapshot(&dr, &a) && !has_snapshot(&primary, &a));
    let left = backlog(&primary);
    assert_eq!((left["chunks"].as_u64(), left["snapshots"].as_u64()), (Some(0), Some(0)), "{left}");

    // The primary site burns: the DR engine restores both alone.
    primary.kill9();
    std::fs::remove_dir_all(&primary.data).unwrap();
    for (id, source) in [(&a, &disk_a.path), (&b.snapshot, &disk_b.path), (&c.snapshot, &disk_c.path)] {
        let target = work.path().join(format!("restored-{id}.img"));
        dr.restore(id, &target);
        assert_eq!(sha256_file(&target), sha256_file(source), "snapshot {id} does not restore its source");
        std::fs::remove_file(&target).unwrap();
    }
    dr.assert_verify_ok();

    // The replacement machine netboots as web01 itself: replication registered the host
    // without MACs, an admin adds the new machine's (and a MAC another host has is refused).
    let set = dr.kura(&[&"host", &"set", &"web01", &"--add-mac", &"52-54-00-AA-00-01", &"--json"]);
    assert_eq!(set.expect_success().json::<Value>()["macs"], serde_json::json!(["52:54:00:aa:00:01"]), "{set}");
    dr.kura(&[&"host", &"set", &"web02", &"--add-mac", &"52:54:00:aa:00:01"])
        .expect_failure_mentioning(&["52:54:00:aa:00:01", "belongs to host \"web01\""]);
    dr.kura(&[&"host", &"set", &"web02", &"--remove-mac", &"52:54:00:aa:00:01"])
        .expect_failure_mentioning(&["not found"]);
    dr.kura(&[&"host", &"set", &"web01", &"--remove-mac", &"52:54:00:aa:00:01"]).expect_success();
    let host: Value = dr.kura(&[&"host", &"set", &"web01", &"--add-mac", &"52:54:00:aa:00:02", &"--json"]).json();
    assert_eq!(host["macs"], serde_json::json!(["52:54:00:aa:00:02"]));
}

#[test]
fn replication_resumes_after_the_link_is_cut_and_the_dr_engine_is_killed() {
    let work = tempfile::tempdir().unwrap();
    let Pair { primary, mut dr, relay } = pair(work.path());
    let disk = raw_disk(work.path(), "a.img", random_bytes(21, 32 * MIB as usize));
    let (hook, events) = webhook_receiver();
    primary.kura(&[&"notify", &"add", &"webhook", &hook]).expect_success();

    let proxy = Proxy::start(&primary.url, Hold::CommitRequest);
    let capture = spawn_capture(&primary, &proxy.url, &disk.path, "db01");
    proxy.wait("the commit", |s| s.held >= 1);
    wait_for("a first chunk on the DR engine", REPLICATED_WITHIN, || dr.log(), || !received(&dr.store()).is_empty());
    // Mid-replication: the link goes down and the DR engine dies.
    relay.set(None);
    dr.kill9();
    proxy.release(true);
    let id = captured(capture, &primary);
    wait_for("a failure recorded", REPLICATED_WITHIN, || primary.log(), || !backlog(&primary)["last_error"].is_null());
    let waiting = backlog(&primary);
    eprintln!("while the DR engine is down: {waiting}");
    assert_eq!(waiting["snapshots"], 1, "{waiting}");
    assert!(!has_snapshot(&dr, &id));
    // Failing for longer than the threshold: the notification targets are told, once.
    let failing = |limit: Duration| {
        let t0 = Instant::now();
        while let Some(left) = limit.checked_sub(t0.elapsed()) {
            match events.recv_timeout(left) {
                Ok((_, v)) if v["event"] == "replication_failing" => return Some(v),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    let event = failing(REPLICATED_WITHIN).unwrap_or_else(|| panic!("no replication_failing event\n{}", primary.log()));
    assert_eq!(event["remote"], "dr", "{event}");
    assert!(event["text"].as_str().unwrap().contains("has been failing since"), "{event}");
    assert!(failing(Duration::from_secs(4)).is_none(), "a second replication_failing event");

    // Back, on another port: the relay follows it (the remote's address stays the same).
    dr.restart();
    relay.set(Some(host_port(&dr.url)));
    let took = wait_for(
        "the snapshot on the restarted DR engine",
        REPLICATED_WITHIN * 2,
        || format!("{}\nprimary log:\n{}\nDR log:\n{}", backlog(&primary), primary.log(), dr.log()),
        || has_snapshot(&dr, &id),
    );
    eprintln!("resumed and completed {took:?} after the DR engine came back");
    // The chunks queued before the cut drain too (their retry was put off by the backoff; the
    // DR engine has them by now, so none is sent again).
    wait_for(
        "the queue drained",
        REPLICATED_WITHIN,
        || backlog(&primary).to_string(),
        || {
            let b = backlog(&primary);
            (b["chunks"].as_u64(), b["snapshots"].as_u64()) == (Some(0), Some(0))
        },
    );
    // Nothing lost, nothing twice: the same chunks on both sides, one snapshot, both clean.
    assert_eq!(digests(&dr.store()), digests(&primary.store()));
    assert_eq!(dr.snapshot_ids(), std::slice::from_ref(&id));
    dr.assert_verify_ok();
    primary.assert_verify_ok();
    let target = work.path().join("restored.img");
    dr.restore(&id, &target);
    assert_eq!(sha256_file(&target), sha256_file(&disk.path));
}

#[test]
fn a_replica_token_adds_but_never_deletes_reads_or_overwrites() {
    let work = tempfile::tempdir().unwrap();
    let dr = Server::start_http(&work.path().join("dr"));
    let api = dr.api();
    let r =
        api.req("POST", "/tokens").token(&dr.admin).json(&serde_json::json!({"role": "replica", "label": "p"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let replica = r.json()["token"].as_str().unwrap().to_string();
    let listed = api.req("GET", "/tokens").token(&dr.admin).send().json();
    let row = listed.as_array().unwrap().iter().find(|t| t["role"] == "replica").cloned().unwrap();
    assert!(row["user"].is_null(), "a replica token belongs to no user: {row}");

    // Two snapshots pushed with the replica token, as a primary would: hosts registered as needed.
    let capture = |seed: u64, host: &str| -> String {
        let disk = raw_disk(work.path(), &format!("{host}.img"), random_bytes(seed, 4 * MIB as usize));
        let mut args: Vec<std::ffi::OsString> = vec!["image".into(), "capture".into(), disk.path.clone().into()];
        args.extend(["--host", host, "--json", "--server", &dr.url].map(Into::into));
        let run = kura_tests::kura_cli::run_env(args, &[("KURA_TOKEN", &replica)]);
        assert!(run.success(), "{run}\n{}", dr.log());
        run.json::<Value>()["snapshot"].as_str().unwrap().to_string()
    };
    let a = capture(31, "pushed-a");
    let b = capture(32, "pushed-b");
    let manifest = |id: &str| api.req("GET", &format!("/snapshots/{id}/manifest")).token(&dr.admin).send().body;
    let (ma, mb) = (manifest(&a), manifest(&b));

    // Deleting, collecting, retention, token admin, reading: 403.
    let digest = chunk_files(&dr.store())[0].digest.clone();
    let refused: [(&str, String, Value); 11] = [
        ("DELETE", format!("/snapshots/{a}"), Value::Null),
        ("POST", "/gc".into(), serde_json::json!({})),
        ("POST", "/retention/apply".into(), serde_json::json!({"host": "pushed-a", "keep_last": 1, "keep_monthly": 0})),
        ("GET", "/tokens".into(), Value::Null),
        ("POST", "/tokens".into(), serde_json::json!({"role": "admin", "label": "x"})),
        ("GET", "/snapshots".into(), Value::Null),
        ("GET", format!("/snapshots/{a}/manifest"), Value::Null),
        ("GET", format!("/chunks/{digest}"), Value::Null),
        ("POST", "/verify".into(), serde_json::json!({})),
        ("DELETE", "/remotes/x".into(), Value::Null),
        ("GET", "/hosts".into(), Value::Null),
    ];
    for (method, path, body) in &refused {
        let mut req = api.req(method, path).token(&replica);
        if !body.is_null() {
            req = req.json(body);
        }
        let r = req.send();
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
    }
    let r = api.raw("GET", "/metrics").token(&replica).send();
    assert_eq!(r.status, 403);
    let r = api
        .raw("POST", "/login")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .bytes(format!("token={replica}").into_bytes());
    assert_eq!(r.send().status, 403, "a replica token opened a status page session");

    let begin = |host: &str| -> String {
        let r = api.req("POST", "/uploads").token(&replica).json(&serde_json::json!({"host": host})).send();
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["upload"].as_str().unwrap().to_string()
    };
    let commit = |upload: &str, body: &[u8], claimed: Option<&str>| {
        let mut req = api.req("POST", &format!("/uploads/{upload}/commit")).token(&replica).bytes(body.to_vec());
        if let Some(id) = claimed {
            req = req.header("X-Kura-Snapshot", id);
        }
        req.send()
    };
    // Overwriting snapshot a with b's manifest: 409, and a stays as it was.
    let s = begin("pushed-a");
    let r = commit(&s, &mb, Some(&a));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("never overwritten"), "{}", r.text());
    assert_eq!(manifest(&a), ma);
    // The same manifest again, in a new session (a primary resending after a restart): 200.
    let r = commit(&s, &ma, Some(&a));
    assert_eq!((r.status, r.json()["snapshot"].as_str()), (200, Some(a.as_str())), "{}", r.text());
    let r = commit(&begin("pushed-a"), &ma, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(manifest(&a), ma);
    // A chunk "overwritten" under an existing digest with other content: 422, the file unchanged.
    let file = chunk_files(&dr.store()).into_iter().find(|c| c.digest == digest).unwrap();
    let before = std::fs::read(&file.path).unwrap();
    let (_, other) = encode_stored_chunk(b"not the chunk you are looking for");
    let s = begin("pushed-a");
    let r = api.req("PUT", &format!("/uploads/{s}/chunks/{digest}")).token(&replica).bytes(other).send();
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(std::fs::read(&file.path).unwrap(), before);
    // Its own session it may abort (that deletes nothing); both snapshots are still there.
    let r = api.req("DELETE", &format!("/uploads/{s}")).token(&replica).send();
    assert_eq!(r.status, 204, "{}", r.text());
    let mut ids = vec![a, b];
    ids.sort();
    assert_eq!(dr.snapshot_ids(), ids);
    assert_eq!(manifest_ids(&dr.store()), ids);
}

/// The worker's queue runs dry between captures (here after each one): its connection to the
/// remote, and the chunk session it holds there, must outlive that. A worker that reconnected
/// at every dry queue left one open session on the DR engine each time, until the replica token
/// hit the engine's limit of open sessions per token (16) and every send failed with 429 (seen
/// in a netboot capture under TCG, where chunks trickle in: tests/tests/dr_takeover.rs).
#[test]
fn twenty_captures_with_a_dry_queue_between_them_all_reach_the_dr_engine() {
    let work = tempfile::tempdir().unwrap();
    let Pair { primary, dr, relay: _relay } = pair(work.path());
    for i in 0..20u64 {
        let disk = raw_disk(work.path(), &format!("d{i}.img"), random_bytes(500 + i, MIB as usize));
        let id = primary.capture(&disk.path, "web01").snapshot;
        wait_for(
            &format!("capture {i} ({id}) on the DR engine"),
            REPLICATED_WITHIN,
            || format!("{:?}\nprimary log:\n{}", backlog(&primary), primary.log()),
            || has_snapshot(&dr, &id),
        );
        std::fs::remove_file(&disk.path).unwrap();
    }
    assert_eq!(manifest_ids(&dr.store()).len(), 20);
}

/// Flips one byte in the middle of `path`.
fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_group_rule_and_chunks_the_dr_engine_lost_are_sent_again() {
    let work = tempfile::tempdir().unwrap();
    // The primary reads the DR engine's quarantine mark every second (not every minute).
    let Pair { primary, dr, relay: _relay } =
        pair_with(work.path(), &["--group", "web"], &[("KURA_TEST_REPLICATION_PROBE_SECS", &"1")]);
    let rules = primary.kura(&[&"replicate", &"list"]);
    assert!(rules.stdout.contains("group web → dr"), "{rules}");
    let api = primary.api();
    for (name, group) in [("web01", Some("web")), ("db01", None)] {
        let r = api
            .req("POST", "/hosts")
            .token(&primary.admin)
            .json(&serde_json::json!({"name": name, "group": group}))
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let web_disk = raw_disk(work.path(), "web.img", random_bytes(41, 8 * MIB as usize));
    let db_disk = raw_disk(work.path(), "db.img", random_bytes(42, 4 * MIB as usize));
    let web = primary.capture(&web_disk.path, "web01").snapshot;
    let db = primary.capture(&db_disk.path, "db01").snapshot;
    wait_for("web01 on the DR engine", REPLICATED_WITHIN, || primary.log(), || has_snapshot(&dr, &web));
    // db01 is in no group: never queued, one copy of one wanted.
    let listed = primary.snapshots();
    let of = |id: &str| listed.iter().find(|s| s["id"] == id).cloned().unwrap();
    assert_eq!((of(&db)["copies"].as_u64(), of(&db)["copies_wanted"].as_u64()), (Some(1), Some(1)));
    assert_eq!(of(&web)["copies_wanted"].as_u64(), Some(2));
    assert!(!has_snapshot(&dr, &db));
    assert_eq!(dr.snapshot_ids(), std::slice::from_ref(&web));

    // A byte flipped in a chunk file on the DR engine; its verify quarantines the chunk.
    let victim = chunk_files(&dr.store()).into_iter().next().unwrap();
    let intact = std::fs::read(&victim.path).unwrap();
    flip_byte(&victim.path);
    let run = dr.verify_run();
    let report: Value = run.json();
    assert_eq!(report["ok"], false, "{run}");
    assert_eq!(report["quarantined"].as_array().map(Vec::len), Some(1), "{run}");
    assert!(!victim.path.exists());
    // The primary notices (the DR engine's quarantine mark grew) and sends the chunk again.
    let took = wait_for(
        "the quarantined chunk sent again",
        REPLICATED_WITHIN,
        || format!("{}\nprimary log:\n{}", backlog(&primary), primary.log()),
        || victim.path.exists(),
    );
    eprintln!("quarantined chunk back on the DR engine {took:?} after its verify");
    assert_eq!(std::fs::read(&victim.path).unwrap(), intact);
    dr.assert_verify_ok();

    // A chunk the DR store lost with no verify to notice: `kura replicate resync` sends it.
    let lost = chunk_files(&dr.store()).into_iter().nth(1).unwrap();
    let lost_bytes = std::fs::read(&lost.path).unwrap();
    std::fs::remove_file(&lost.path).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!lost.path.exists(), "sent again with no resync asked for");
    let run = primary.kura(&[&"replicate", &"resync", &"--to", &"dr", &web, &"--json"]);
    assert_eq!(run.json::<Value>()["queued"], 1, "{run}");
    wait_for("the lost chunk sent again", REPLICATED_WITHIN, || primary.log(), || lost.path.exists());
    assert_eq!(std::fs::read(&lost.path).unwrap(), lost_bytes);
    // Every snapshot copied there, by name: nothing is missing now, nothing is sent.
    let sent = metric(&primary, "kura_replication_sent_chunks_total");
    let run = primary.kura(&[&"replicate", &"resync", &"--to", &"dr", &"--json"]);
    assert_eq!(run.json::<Value>()["queued"], 1, "{run}");
    wait_for(
        "the resync done",
        REPLICATED_WITHIN,
        || backlog(&primary).to_string(),
        || backlog(&primary)["snapshots"] == 0,
    );
    assert_eq!(metric(&primary, "kura_replication_sent_chunks_total"), sent);
    assert!(!primary.kura(&[&"replicate", &"resync", &"--to", &"nowhere"]).success());
    dr.assert_verify_ok();
    assert_eq!(dr.snapshot_ids(), std::slice::from_ref(&web));
    let target = work.path().join("restored.img");
    dr.restore(&web, &target);
    assert_eq!(sha256_file(&target), sha256_file(&web_disk.path));
}

#[test]
fn pull_mode_fetches_from_the_primary_resumes_after_a_kill_and_never_deletes() {
    let work = tempfile::tempdir().unwrap();
    let primary = Server::start_http(&work.path().join("primary"));
    let made: Value =
        primary.kura(&[&"token", &"create", &"--role", &"reader", &"--note", &"dr-site", &"--json"]).json();
    let reader = made["token"].as_str().unwrap().to_string();
    // The DR engine polls every second (not every 30 s).
    let mut dr = Server::start_http_env(
        &work.path().join("dr"),
        &[("KURA_TEST_REPLICATION_PULL_SECS", &"1"), ("KURA_LOG", &"info")],
    );
    let token_file = work.path().join("primary.token");
    std::fs::write(&token_file, &reader).unwrap();
    dr.kura(&[&"remote", &"add", &"primary", &primary.url, &"--token-file", &token_file]).expect_success();
    dr.kura(&[&"replicate", &"pull", &"--from", &"primary", &"--hosts", &"web01"]).expect_success();
    let listed = dr.kura(&[&"replicate", &"list"]);
    assert!(listed.stdout.contains("web01 ← primary (pulled"), "{listed}");

    let data = random_bytes(51, 8 * MIB as usize);
    let web_disk = raw_disk(work.path(), "web.img", data.clone());
    let db_disk = raw_disk(work.path(), "db.img", random_bytes(52, 4 * MIB as usize));
    let a = primary.capture(&web_disk.path, "web01").snapshot;
    let db = primary.capture(&db_disk.path, "db01").snapshot;
    let took = wait_for("web01 pulled", REPLICATED_WITHIN, || dr.log(), || has_snapshot(&dr, &a));
    eprintln!("snapshot {a} on the DR engine {took:?} after the capture");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dr.snapshot_ids(), std::slice::from_ref(&a), "db01 is not in the rule");
    let on_dr = dr.snapshots();
    assert_eq!(on_dr[0]["host"], "web01");
    let created = primary.snapshots().iter().find(|s| s["id"] == a.as_str()).unwrap()["created"].as_i64().unwrap();
    let rules: Value = dr.kura(&[&"replicate", &"list", &"--json"]).json();
    assert_eq!(rules["rules"][0]["pulled_up_to"].as_i64(), Some(created), "{rules}");
    // The primary counts the pulled copy; db01's snapshot has no copy and none is expected.
    let copies = |id: &str| {
        let s = primary.snapshots().into_iter().find(|s| s["id"] == id).unwrap();
        (s["copies"].as_u64().unwrap(), s["copies_wanted"].as_u64().unwrap(), s["copied_to"].clone())
    };
    assert_eq!(copies(&a), (2, 2, serde_json::json!(["dr-site (pulled)"])));
    assert_eq!(copies(&db), (1, 1, serde_json::json!([])));

    // The DR engine dies; a second, similar snapshot is taken meanwhile; it resumes.
    dr.kill9();
    let mut data_c = data;
    data_c[..MIB as usize].copy_from_slice(&random_bytes(53, MIB as usize));
    let c_disk = raw_disk(work.path(), "c.img", data_c);
    let c = primary.capture(&c_disk.path, "web01");
    // The DR engine that pulls web01 is expected to hold it too: 1 of 2 copies until it does.
    assert_eq!(copies(&c.snapshot), (1, 2, serde_json::json!([])));
    let listed = primary.kura(&[&"snapshots"]);
    assert!(listed.stdout.lines().any(|l| l.contains(&c.snapshot) && l.contains("1/2")), "{listed}");
    dr.restart();
    wait_for(
        "the second snapshot pulled after the restart",
        REPLICATED_WITHIN,
        || dr.log(),
        || has_snapshot(&dr, &c.snapshot),
    );
    let mut want = vec![a.clone(), c.snapshot.clone()];
    want.sort();
    assert_eq!(dr.snapshot_ids(), want);
    wait_for("the second copy reported", Duration::from_secs(10), || dr.log(), || copies(&c.snapshot).0 == 2);
    // Only what the DR engine lacked was fetched: its chunks are the web01 snapshots' own.
    assert!(dr.log().contains(&format!("({} chunks fetched)", c.new_chunks)), "{}", dr.log());

    // Deleting on the primary never reaches the DR engine.
    let r = primary.api().req("DELETE", &format!("/snapshots/{a}")).token(&primary.admin).send();
    assert_eq!(r.status, 204, "{}", r.text());
    std::thread::sleep(Duration::from_secs(3));
    assert!(has_snapshot(&dr, &a) && !has_snapshot(&primary, &a));
    assert!(!has_snapshot(&dr, &db));
    dr.assert_verify_ok();
    for (id, source) in [(&a, &web_disk.path), (&c.snapshot, &c_disk.path)] {
        let target = work.path().join(format!("restored-{id}.img"));
        dr.restore(id, &target);
        assert_eq!(sha256_file(&target), sha256_file(source), "snapshot {id}");
        std::fs::remove_file(&target).unwrap();
    }
}
