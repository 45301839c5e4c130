//! Two hosts with nearly identical disks, captured into one engine over HTTPS (pinned
//! certificate, token from the environment, as a script would): the second capture uploads
//! exactly the chunks the first did not, and both come back from the engine intact. On the
//! local store with SQLite and on S3 (SeaweedFS) with PostgreSQL: the engine's S3 store holds
//! the same chunks, byte for byte in size, as a local store given the same disks.

use std::collections::BTreeSet;

use kura_tests::content::{random_bytes, text_bytes};
use kura_tests::disks::ext4_replace_file;
use kura_tests::engine::Server;
use kura_tests::fixtures;
use kura_tests::kura_cli::Store;
use kura_tests::s3::Backend;
use kura_tests::store::chunk_files;
use kura_tests::tables::assert_restored;

fn digests(store: &std::path::Path) -> BTreeSet<(String, u64)> {
    chunk_files(store).into_iter().map(|c| (c.digest, c.len)).collect()
}

#[test]
fn second_host_uploads_only_the_chunks_the_first_did_not() {
    second_host_uploads_only_new_chunks(Backend::local());
}

#[test]
fn second_host_uploads_only_the_chunks_the_first_did_not_s3() {
    second_host_uploads_only_new_chunks(Backend::s3());
}

fn second_host_uploads_only_new_chunks(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let a_dir = work.path().join("a");
    let b_dir = work.path().join("b");
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let disk_a = fixtures::gpt_linux(&a_dir);
    // Host b: the same installation with a few files of its own (hostname, a log, a binary).
    let mut disk_b = disk_a.clone();
    disk_b.path = b_dir.join("gpt-linux.img");
    std::fs::copy(&disk_a.path, &disk_b.path).unwrap();
    ext4_replace_file(&mut disk_b, 3, "etc/hostname", b"web02\n", &b_dir);
    ext4_replace_file(&mut disk_b, 3, "var/log/syslog", &text_bytes(31_337, 3 << 20), &b_dir);
    ext4_replace_file(&mut disk_b, 3, "usr/bin/busybox", &random_bytes(31_338, 1_200_000), &b_dir);

    // The exact expectation, from a scratch local store: what b adds to a store holding a.
    let scratch = Store::new(work.path().join("scratch"));
    let local_a = scratch.capture(&disk_a.path, None);
    let before = digests(&scratch.dir);
    let local_b = scratch.capture(&disk_b.path, None);
    let local_new: BTreeSet<_> = digests(&scratch.dir).difference(&before).cloned().collect();
    eprintln!("local: a {local_a:?}\nb {local_b:?}\n{} new chunks", local_new.len());
    assert!(!local_new.is_empty() && local_b.new_chunks < local_b.chunks / 2, "the disks should share most chunks");

    let server = backend.start(&work.path().join("engine"));
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    let stored = |server: &Server| -> BTreeSet<(String, u64)> {
        backend.chunks(&server.data).into_iter().map(|c| (c.digest, c.len)).collect()
    };
    assert!(server.fingerprint.is_some());

    let a = server.capture(&disk_a.path, "web01");
    eprintln!("engine a: {a:?}");
    assert_eq!(a.new_chunks, local_a.new_chunks, "a fresh engine stores what a fresh local store does");
    assert_eq!(a.new_stored_bytes, local_a.new_stored_bytes);
    let after_a = stored(&server);
    assert_eq!(after_a, before, "the engine's store holds exactly the chunks of a");

    let b = server.capture(&disk_b.path, "web02");
    eprintln!("engine b: {b:?}");
    let engine_new: BTreeSet<_> = stored(&server).difference(&after_a).cloned().collect();
    assert_eq!(engine_new, local_new, "the second host's upload is not exactly the chunks the first lacked");
    assert_eq!(b.new_chunks, local_new.len() as u64, "{b:?}");
    assert_eq!(b.new_stored_bytes, local_new.iter().map(|(_, len)| len).sum::<u64>(), "{b:?}");
    assert_eq!(b.reused_chunks + b.new_chunks, b.chunks, "{b:?}");

    // Listed under their hosts.
    let snaps = server.snapshots();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    for (cap, host) in [(&a, "web01"), (&b, "web02")] {
        let s = snaps.iter().find(|s| s["id"] == cap.snapshot.as_str()).expect("snapshot listed");
        assert_eq!(s["host"], host, "{s}");
    }

    // Both come back from the engine: tables, boot areas, every file, fsck.
    for (cap, disk) in [(&a, &disk_a), (&b, &disk_b)] {
        let target = work.path().join(format!("restored-{}.img", cap.snapshot));
        let r = server.restore(&cap.snapshot, &target);
        assert_eq!(r.snapshot, cap.snapshot);
        assert_restored(disk, &target);
        std::fs::remove_file(&target).unwrap();
    }
    server.assert_verify_ok();
}

/// A wrong pinned fingerprint is refused before any token is sent.
#[test]
fn a_wrong_fingerprint_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(&work.path().join("engine"));
    let wrong = "00".repeat(32);
    let run = kura_tests::kura_cli::run_env(
        ["snapshots", "--json", "--server", &server.url],
        &[("KURA_TOKEN", &server.admin), ("KURA_FINGERPRINT", &wrong)],
    );
    assert!(!run.success(), "a wrong fingerprint was accepted:\n{run}");
    assert!(
        run.stderr.to_lowercase().contains("fingerprint"),
        "BUG (server/src/remote/mod.rs:122, Client::send): a pinning failure is reported only as \
         \"error sending request\" (reqwest's Display drops the cause, and it is retried 4 times as \
         transient); the message should include the error's source chain, which names the \
         fingerprint mismatch:\n{run}"
    );
}
