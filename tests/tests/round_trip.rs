//! Capture then restore each disk of the issue with the real `kura` binary, onto a new target
//! and onto an existing blank one: partition tables (GUIDs, names, attribute flags), boot
//! areas, every file, and fsck must all come back.

use std::path::Path;

use kura_tests::disks::{blank_file, Disk};
use kura_tests::fixtures;
use kura_tests::kura_cli::Store;
use kura_tests::store::{chunk_files, stored_bytes};
use kura_tests::tables::assert_restored;

fn round_trip(build: fn(&Path) -> Disk) {
    let work = tempfile::tempdir().unwrap();
    let disk = build(work.path());
    let store = Store::new(work.path().join("store"));

    let cap = store.capture(&disk.path, Some("round-trip"));
    eprintln!("{cap:?}");
    assert_eq!(cap.disk_size, disk.size, "{cap:?}");
    assert!(cap.warnings.is_empty(), "unexpected warnings: {:?}", cap.warnings);
    // What is used holds at least every file, and (the filesystems being mostly free) much
    // less than the disk; what is read covers what is used, and never more than the disk.
    let file_bytes: u64 = disk.partitions.iter().map(|p| p.file_bytes).sum();
    assert!(cap.used_bytes >= file_bytes, "used {} < file bytes {file_bytes}", cap.used_bytes);
    assert!(cap.used_bytes < disk.size / 2, "used {} of a {} disk", cap.used_bytes, disk.size);
    assert!(cap.read_bytes >= cap.used_bytes && cap.read_bytes <= disk.size, "{cap:?}");
    let list = store.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, cap.snapshot);
    assert_eq!(list[0].name.as_deref(), Some("round-trip"));
    assert_eq!(list[0].disk_size, disk.size);

    // Onto a path that does not exist yet.
    let fresh = work.path().join("restored-new.img");
    let r = store.restore(&cap.snapshot, &fresh);
    assert_eq!(r.snapshot, cap.snapshot);
    assert!(r.written_bytes <= disk.size, "{r:?}");
    assert_restored(&disk, &fresh);
    std::fs::remove_file(&fresh).unwrap();

    // Onto an existing blank file of the same size.
    let blank = work.path().join("restored-blank.img");
    blank_file(&blank, disk.size);
    let r = store.restore(&cap.snapshot, &blank);
    assert_eq!(r.snapshot, cap.snapshot);
    assert_restored(&disk, &blank);

    let verify = store.verify_run(None);
    let report: kura_tests::kura_cli::VerifyReport = verify.expect_success().json();
    assert!(report.ok && report.damaged.is_empty(), "{verify}");

    // A fresh store: the capture wrote every chunk file in it, and no more bytes than it
    // reported. (The exact counts, which a race between workers can break, have their own
    // test: dedup.rs, repeated_chunks_within_one_disk_are_stored_and_counted_once.)
    let chunks = chunk_files(&store.dir);
    assert_eq!(report.chunks_checked, chunks.len() as u64, "{verify}");
    assert!(cap.new_chunks >= 1 && cap.new_chunks <= cap.chunks, "{cap:?}");
    assert_eq!(cap.new_chunks + cap.reused_chunks, cap.chunks, "{cap:?}");
    assert!(chunks.len() as u64 <= cap.new_chunks, "{} chunk files, {cap:?}", chunks.len());
    let on_disk = stored_bytes(&store.dir);
    assert!(on_disk <= cap.new_stored_bytes, "store holds {on_disk} bytes, capture reported {cap:?}");
}

#[test]
fn gpt_linux_disk_round_trips() {
    round_trip(fixtures::gpt_linux);
}

#[test]
fn mbr_disk_with_logical_partitions_round_trips() {
    round_trip(fixtures::mbr_legacy);
}

#[test]
fn gpt_windows_disk_round_trips() {
    round_trip(fixtures::gpt_windows);
}
