//! Damage and loss on the engine: a bit flipped in a stored chunk is found by `kura verify`,
//! quarantined, named by the restore that needs it, and repaired by the next capture of the
//! same data; a deleted catalog is rebuilt from the store with every snapshot. On the local
//! store with SQLite and on S3 (SeaweedFS) with PostgreSQL, where the rebuild starts from the
//! bucket alone into an empty database.

use std::collections::BTreeMap;

use kura_tests::content::random_bytes;
use kura_tests::disks::MIB;
use kura_tests::engine::raw_disk;
use kura_tests::fixtures;
use kura_tests::kura_cli;
use kura_tests::s3::Backend;
use kura_tests::tables::assert_restored;

#[test]
fn a_flipped_bit_is_found_quarantined_named_and_repaired_by_the_next_capture_local() {
    a_flipped_bit_is_found_quarantined_named_and_repaired(Backend::local());
}

#[test]
fn a_flipped_bit_is_found_quarantined_named_and_repaired_by_the_next_capture_s3() {
    a_flipped_bit_is_found_quarantined_named_and_repaired(Backend::s3());
}

fn a_flipped_bit_is_found_quarantined_named_and_repaired(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::small_gpt(work.path());
    let server = backend.start(&work.path().join("engine"));
    let cap = server.capture(&disk.path, "small");
    server.assert_verify_ok();

    // The largest chunk: file data, certainly needed by the restore. (On S3 the engine's cache
    // still holds the sound copy: verify must read the bucket.)
    let victim = backend.chunks(&server.data).into_iter().max_by_key(|c| c.len).unwrap();
    let mut bytes = backend.read_chunk(&server.data, &victim.digest);
    bytes[(64 + victim.len / 2 - 32) as usize] ^= 0x01;
    backend.write_chunk(&server.data, &victim.digest, bytes);

    let run = server.verify_run();
    eprintln!("{run}");
    assert!(!run.success(), "verify missed a flipped bit:\n{run}");
    let v: serde_json::Value = run.json();
    assert_eq!(v["ok"], false);
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{v}");
    assert_eq!(damaged[0]["digest"], victim.digest.as_str(), "{v}");
    assert_eq!(damaged[0]["snapshots"][0], cap.snapshot.as_str(), "{v}");
    assert!(!backend.chunks(&server.data).contains(&victim), "the damaged chunk was left in place");
    let quarantined = backend.quarantined(&server.data);
    assert!(quarantined.len() == 1 && quarantined[0].starts_with(&victim.digest), "quarantine/ holds {quarantined:?}");

    // A restore that needs it fails before writing anything, naming the chunk.
    let target = work.path().join("restored.img");
    let run = server.restore_run(&cap.snapshot, &target);
    run.expect_failure_mentioning(&[&victim.digest]);
    assert!(!target.exists(), "a failed restore left a target file behind");

    // The next capture of the same data stores the chunk again.
    let again = server.capture(&disk.path, "small");
    eprintln!("{again:?}");
    assert_eq!(again.new_chunks, 1, "the repair should upload exactly the quarantined chunk: {again:?}");
    assert!(backend.chunks(&server.data).contains(&victim), "the chunk was not stored again");
    server.assert_verify_ok();
    for snap in [&cap.snapshot, &again.snapshot] {
        server.restore(snap, &target);
        assert_restored(&disk, &target);
        std::fs::remove_file(&target).unwrap();
    }
}

#[test]
fn a_deleted_catalog_is_rebuilt_with_every_snapshot_local() {
    a_deleted_catalog_is_rebuilt_with_every_snapshot(Backend::local());
}

#[test]
fn a_deleted_catalog_is_rebuilt_with_every_snapshot_s3() {
    a_deleted_catalog_is_rebuilt_with_every_snapshot(Backend::s3());
}

fn a_deleted_catalog_is_rebuilt_with_every_snapshot(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("engine");
    let mut server = backend.start(&data);
    let disks: Vec<_> =
        (0..3).map(|i| raw_disk(work.path(), &format!("d{i}.img"), random_bytes(40 + i, 4 * MIB as usize))).collect();
    for (i, d) in disks.iter().enumerate() {
        server.capture(&d.path, &format!("host{}", i % 2));
    }
    server.capture(&disks[0].path, "host0");
    let before: BTreeMap<String, String> = server
        .snapshots()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["host"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(before.len(), 4, "{before:?}");

    // Not while the engine runs.
    let busy = kura_cli::run(["admin".as_ref(), "rebuild-catalog".as_ref(), "--data".as_ref(), data.as_os_str()]);
    busy.expect_failure_mentioning(&["stop"]);

    server.stop();
    let removed = backend.delete_catalog(&data);
    assert!(removed >= 1, "no catalog to delete for {} in {}", backend.name(), data.display());
    // S3: from the bucket alone — no record of the store, no chunk index, no cache.
    if matches!(backend, Backend::S3 { .. }) {
        let _ = std::fs::remove_dir_all(data.join("cache"));
        let _ = std::fs::remove_file(data.join("store.spec"));
    }
    let mut args: Vec<std::ffi::OsString> =
        vec!["admin".into(), "rebuild-catalog".into(), "--data".into(), data.clone().into(), "--json".into()];
    args.extend(backend.serve_args());
    let run = kura_cli::run_env(args, &backend.catalog_env());
    let v: serde_json::Value = run.expect_success().json();
    assert_eq!(v["added"], 4, "{run}");
    assert_eq!(v["snapshots"], 4, "{run}");

    server.restart();
    let after: BTreeMap<String, String> = server
        .snapshots()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["host"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(after, before, "snapshots (id → host) after rebuilding the catalog");
    server.assert_verify_ok();
    let target = work.path().join("restored.img");
    let id = before.keys().next().unwrap();
    server.restore(id, &target);
    let restored = kura_tests::content::sha256_file(&target);
    assert!(
        disks.iter().any(|d| kura_tests::content::sha256_file(&d.path) == restored),
        "snapshot {id} restores to none of the captured disks"
    );
}
