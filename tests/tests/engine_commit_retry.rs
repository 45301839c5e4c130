//! A commit whose reply is lost: the engine committed, the client never heard. A proxy on
//! loopback forwards the commit to the engine, reads its answer and closes the client's
//! connection instead of delivering it (once). The client retries the commit; the engine
//! answers the repeat with the first reply (its session remembers the committed manifest), so
//! the client reports success exactly once and the engine holds exactly one snapshot, which
//! restores byte-identical.

use std::process::Command;

use kura_tests::content::{random_bytes, sha256_file};
use kura_tests::disks::MIB;
use kura_tests::engine::{manifest_ids, raw_disk, Server};
use kura_tests::kura_cli::kura_bin;
use kura_tests::proxy::{Hold, Kind, Proxy, Seen};

#[test]
fn a_lost_commit_reply_is_retried_into_the_one_snapshot() {
    let work = tempfile::tempdir().unwrap();
    // Plain HTTP, so the proxy can follow the requests.
    let server = Server::start_http(&work.path().join("engine"));
    let disk = raw_disk(work.path(), "disk.img", random_bytes(7, 8 * MIB as usize));
    let proxy = Proxy::start(&server.url, Hold::DropFirstCommitAnswer);

    let out = Command::new(kura_bin())
        .args(["image", "capture"])
        .arg(&disk.path)
        .args(["--host", "lossy", "--json", "--server", &proxy.url])
        .env("KURA_TOKEN", &server.admin)
        .env("NO_COLOR", "1")
        .output()
        .expect("cannot run kura");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the capture failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.log());

    // The reply really was lost once, and the client sent the commit again.
    let seen = proxy.seen();
    assert_eq!(seen.dropped, 1, "{seen:?}");
    assert_eq!(Seen::n(&seen.sent, Kind::Commit), 2, "the client retried the commit once: {seen:?}");
    assert_eq!(Seen::n(&seen.delivered, Kind::Commit), 1, "{seen:?}");

    // Success reported once, with one snapshot id.
    let ids: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["snapshot"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 1, "one snapshot id printed:\n{stdout}");
    let id = &ids[0];

    // The engine has exactly that one snapshot, in its catalog and its store.
    let listed: Vec<String> = server
        .snapshots()
        .iter()
        .filter(|s| s["host"] == "lossy")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&listed, std::slice::from_ref(id));
    assert_eq!(&manifest_ids(&server.store()), std::slice::from_ref(id));
    server.assert_verify_ok();

    let target = work.path().join("restored.img");
    server.restore(id, &target);
    assert_eq!(sha256_file(&target), sha256_file(&disk.path), "the snapshot does not restore its disk");
}
