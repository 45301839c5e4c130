//! Garbage collection with no grace period, run back to back beside captures of changing disks
//! while old snapshots are deleted: no committed snapshot may ever lose a chunk. On the local
//! store with SQLite and on S3 (SeaweedFS) with PostgreSQL.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kura_tests::content::{random_bytes, sha256_file, XorShift};
use kura_tests::disks::{write_at, MIB};
use kura_tests::engine::{raw_disk, Api};
use kura_tests::s3::Backend;
use serde_json::json;

#[test]
fn gc_in_a_loop_beside_captures_never_loses_a_committed_chunk_local() {
    gc_in_a_loop_beside_captures(Backend::local());
}

#[test]
fn gc_in_a_loop_beside_captures_never_loses_a_committed_chunk_s3() {
    gc_in_a_loop_beside_captures(Backend::s3());
}

fn gc_in_a_loop_beside_captures(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let server = backend.start_http(&work.path().join("engine"));
    let size = 24u64;
    let disks = [
        raw_disk(work.path(), "a.img", random_bytes(1, (size * MIB) as usize)),
        raw_disk(work.path(), "b.img", random_bytes(2, (size * MIB) as usize)),
    ];

    // Collections back to back, grace 0, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let removed = Arc::new(AtomicU64::new(0));
    let gc_thread = {
        let (stop, runs, removed) = (stop.clone(), runs.clone(), removed.clone());
        let (url, admin) = (server.url.clone(), server.admin.clone());
        // Returns the failed collections (status and answer); a transport error ends it.
        std::thread::spawn(move || -> Result<Vec<String>, String> {
            let api = Api::new(&url);
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = api.req("POST", "/gc").token(&admin).json(&json!({"grace": 0})).try_send()?;
                if r.status != 200 {
                    failed.push(format!("gc answered {}: {}", r.status, r.text()));
                    continue;
                }
                runs.fetch_add(1, Ordering::Relaxed);
                removed.fetch_add(r.json()["removed"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
            Ok(failed)
        })
    };

    let api = server.api();
    let mut rng = XorShift::new(3);
    let mut live: Vec<(String, usize)> = Vec::new();
    let mut problems = Vec::new();
    let rounds = 20;
    for round in 0..rounds {
        let which = round % 2;
        let disk = &disks[which];
        // Rewrite 3 MiB: most chunks are shared with the previous snapshot of this disk...
        for i in 0..3 {
            let at = disk.partitions[0].offset + rng.below(size) * MIB;
            write_at(&disk.path, at, &random_bytes(10_000 + round as u64 * 10 + i, MIB as usize));
        }
        // ...which is deleted now, so its chunks are garbage for the collector while this
        // capture is told the engine has them.
        if let Some(pos) = live.iter().position(|(_, w)| *w == which) {
            let (old, _) = live.remove(pos);
            let r = api.req("DELETE", &format!("/snapshots/{old}")).token(&server.admin).send();
            assert_eq!(r.status, 204, "deleting {old}: {}", r.text());
        }
        let run = server.capture_run(&disk.path, if which == 0 { "a" } else { "b" });
        if !run.success() {
            problems.push(format!("round {round}: capture failed:\n{run}"));
            continue;
        }
        let cap: kura_tests::kura_cli::CaptureReport = run.json();
        live.push((cap.snapshot.clone(), which));

        // After each round: every committed snapshot has every chunk, and the engine lists
        // exactly the live ones.
        let v = api.req("POST", "/verify").token(&server.admin).json(&json!({"quarantine": false})).send();
        assert_eq!(v.status, 200, "{}", v.text());
        if v.json()["ok"] != true {
            problems.push(format!("round {round}: verify: {}", v.text()));
        }
        let mut want: Vec<String> = live.iter().map(|(s, _)| s.clone()).collect();
        want.sort();
        assert_eq!(backend.manifests(&server.data), want, "round {round}");
        // The snapshot just taken restores its disk exactly (read back while GC runs).
        let target = work.path().join("restored.img");
        let r = server.restore_run(&cap.snapshot, &target);
        if !r.success() {
            problems.push(format!("round {round}: restore failed:\n{r}"));
        } else if sha256_file(&target) != sha256_file(&disk.path) {
            problems.push(format!("round {round}: restored {} differs from its disk", cap.snapshot));
        }
        let _ = std::fs::remove_file(&target);
    }
    stop.store(true, Ordering::Relaxed);
    let gc_failures = gc_thread.join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let (runs, removed) = (runs.load(Ordering::Relaxed), removed.load(Ordering::Relaxed));
    eprintln!("{runs} collections removed {removed} chunks during {rounds} rounds");
    assert!(
        problems.is_empty(),
        "{} of {rounds} rounds went wrong (a capture that fails with 409 naming a missing chunk means the \
         collector removed a chunk a running upload relied on):\n{}\nserver log:\n{}",
        problems.len(),
        problems.join("\n"),
        server.log()
    );
    assert!(runs >= rounds as u64, "only {runs} collections ran beside the captures");
    assert!(removed > 0, "the collector never removed anything: the test did not exercise it");
    server.assert_verify_ok();
    // Deleting a snapshot while a collection marks makes that collection fail (500) instead of
    // skipping the manifest that is gone.
    assert!(
        gc_failures.is_empty(),
        "BUG (catalogs/src/gc.rs:209-213, collect_inner's mark): a snapshot deleted between \
         snapshot_ids() and load_manifest() aborts the whole collection with a 500 \"cannot read \
         snapshot …: no snapshot … in the store\"; a manifest that is gone needs no chunks and \
         should be skipped (only unreadable/damaged ones must abort). {} of {} collections failed, \
         first: {}\nserver log:\n{}",
        gc_failures.len(),
        gc_failures.len() as u64 + runs,
        gc_failures[0],
        server.log()
    );
}
