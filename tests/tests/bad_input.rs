//! Bad input is refused with an error that names the problem, and a failed restore leaves its
//! target exactly as it was (or, for a new path, does not leave it behind).

use std::fs;
use std::path::Path;

use kura_tests::content::{random_bytes, sha256_file};
use kura_tests::damage;
use kura_tests::disks::{patterned_file, write_at, Disk, MIB};
use kura_tests::fixtures;
use kura_tests::kura_cli::{Store, VerifyReport};
use kura_tests::readback::assert_files_match;
use kura_tests::store::chunk_files;
use kura_tests::tables::{assert_tables_equal, first_difference};

/// A small GPT disk, copied so the test can damage the copy.
fn small_disk(work: &Path) -> (Disk, std::path::PathBuf) {
    let disk = fixtures::small_gpt(work);
    let copy = work.join("damaged.img");
    fs::copy(&disk.path, &copy).unwrap();
    (disk, copy)
}

/// Capturing `source` fails naming `words`, and leaves no snapshot behind.
fn assert_capture_refused(store: &Store, source: &Path, words: &[&str]) {
    store.capture_run(source, None).expect_failure_mentioning(words);
    let list = store.list();
    assert!(list.is_empty(), "a failed capture left snapshots: {list:?}");
    assert_nothing_left(store);
}

/// Every file under `dir` (none if it does not exist).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A refused capture wrote nothing into the store: no chunk, nothing staged in `tmp/`.
fn assert_nothing_left(store: &Store) {
    for sub in ["chunks", "tmp"] {
        let left = files_under(&store.dir.join(sub));
        assert!(left.is_empty(), "a refused capture left files in the store's {sub}/: {left:?}");
    }
}

#[test]
fn truncated_image_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (disk, copy) = small_disk(work.path());
    // Cut into the last partition (and lose the backup GPT).
    damage::truncate(&copy, disk.partition(2).offset + 4 * MIB);
    let store = Store::new(work.path().join("store"));
    assert_capture_refused(&store, &copy, &["truncated"]);
    // The check looks where chunks go: the intact disk's capture puts them there.
    store.capture(&disk.path, None);
    assert!(!files_under(&store.dir.join("chunks")).is_empty(), "no chunk files under {}", store.dir.display());
}

#[test]
fn disk_with_both_gpt_headers_corrupted_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (_disk, copy) = small_disk(work.path());
    damage::corrupt_gpt_headers(&copy);
    let store = Store::new(work.path().join("store"));
    assert_capture_refused(&store, &copy, &["GPT"]);
}

#[test]
fn overlapping_partitions_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let (_disk, copy) = small_disk(work.path());
    // Partition 2 now starts 1 MiB before partition 1 ends; both arrays and CRCs are valid.
    let (_, last1) = damage::gpt_entry_lbas(&copy, 1);
    damage::set_gpt_first_lba(&copy, 2, last1 - 2047);
    let store = Store::new(work.path().join("store"));
    assert_capture_refused(&store, &copy, &["overlap"]);
}

#[test]
fn restore_onto_too_small_target_fails_and_leaves_it_untouched() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::small_gpt(work.path());
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, None);

    let target = work.path().join("small-target.img");
    patterned_file(&target, disk.size - MIB);
    let before = sha256_file(&target);
    store.restore_run(&cap.snapshot, &target).expect_failure_mentioning(&["too small"]);
    assert_eq!(target.metadata().unwrap().len(), disk.size - MIB, "target was resized");
    assert_eq!(sha256_file(&target), before, "a failed restore changed its target");
}

#[test]
fn restore_of_unknown_snapshot_fails_and_creates_nothing() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::small_gpt(work.path());
    let store = Store::new(work.path().join("store"));
    store.capture(&disk.path, None);
    let target = work.path().join("never.img");
    let run = store.restore_run("no-such-snapshot", &target);
    run.expect_failure_mentioning(&["no-such-snapshot"]);
    assert!(!target.exists(), "a failed restore left {} behind", target.display());
}

#[test]
fn tampered_chunk_is_named_by_restore_and_verify() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::small_gpt(work.path());
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, None);
    let clean: VerifyReport = store.verify_run(None).expect_success().json();
    assert!(clean.ok && clean.damaged.is_empty(), "{clean:?}");

    // Flip a byte in the middle of the payload of the largest chunk (file data, surely).
    let chunk = chunk_files(&store.dir).into_iter().max_by_key(|c| c.len).expect("no chunks in the store");
    damage::flip_byte(&chunk.path, 64 + (chunk.len - 64) / 2);

    // Onto an existing target: fails naming the chunk, and the target keeps its bytes.
    let target = work.path().join("target.img");
    patterned_file(&target, disk.size);
    let before = sha256_file(&target);
    store.restore_run(&cap.snapshot, &target).expect_failure_mentioning(&[&chunk.digest]);
    assert_eq!(sha256_file(&target), before, "a failed restore changed its target");

    // Onto a new path: fails the same way, and leaves no file behind.
    let fresh = work.path().join("fresh.img");
    store.restore_run(&cap.snapshot, &fresh).expect_failure_mentioning(&[&chunk.digest]);
    assert!(!fresh.exists(), "a failed restore left {} behind", fresh.display());

    // Verify finds it, says which snapshot needs it, and exits non-zero.
    for snapshot in [None, Some(cap.snapshot.as_str())] {
        let run = store.verify_run(snapshot);
        assert!(!run.success(), "verify passed a tampered store:\n{run}");
        let report: VerifyReport = run.json();
        assert!(!report.ok, "{run}");
        assert!(report.chunks_checked >= 1, "{run}");
        let damaged: Vec<_> = report.damaged.iter().filter(|d| d.digest == chunk.digest).collect();
        assert_eq!(damaged.len(), 1, "verify did not name {}:\n{run}", chunk.digest);
        assert_eq!(damaged[0].snapshots, vec![cap.snapshot.clone()], "{run}");
        assert!(!damaged[0].reason.is_empty(), "{run}");
        assert_eq!(report.damaged.len(), 1, "only one chunk was tampered with:\n{run}");
    }
}

#[test]
fn garbage_superblock_is_captured_raw_with_a_warning() {
    let work = tempfile::tempdir().unwrap();
    let (disk, copy) = small_disk(work.path());
    let root = disk.partition(1).clone();
    write_at(&copy, root.offset + 1024, &random_bytes(66, 1024));
    let store = Store::new(work.path().join("store"));

    let cap = store.capture(&copy, None);
    assert!(
        cap.warnings.iter().any(|w| w.to_lowercase().contains("raw")),
        "no warning about capturing partition 1 raw: {:?}",
        cap.warnings
    );
    // The whole partition is now "used".
    assert!(cap.used_bytes >= root.size, "{cap:?}");

    let restored = work.path().join("restored.img");
    store.restore(&cap.snapshot, &restored);
    assert_eq!(restored.metadata().unwrap().len(), disk.size);
    let mut a = fs::File::open(&copy).unwrap();
    let mut b = fs::File::open(&restored).unwrap();
    let diff = first_difference(&mut a, &mut b, root.offset, root.end());
    assert_eq!(diff, None, "the raw partition did not come back byte for byte");
    // The rest of the disk is intact: table, and the FAT partition's files.
    let damaged_layout = Disk { path: copy.clone(), ..disk.clone() };
    assert_tables_equal(&damaged_layout, &restored);
    let fat_only = Disk { partitions: vec![disk.partition(2).clone()], ..damaged_layout };
    assert_files_match(&fat_only, &restored);
}

/// An error names its problem once: a message that repeats itself (say, an error and the same
/// error again as its cause) reads as two problems.
#[test]
fn capture_errors_are_not_repeated() {
    let work = tempfile::tempdir().unwrap();
    let (disk, copy) = small_disk(work.path());
    let store = Store::new(work.path().join("store"));
    type Breaker<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: [(&str, Breaker); 3] = [
        ("truncated", Box::new(|p: &Path| damage::truncate(p, disk.partition(2).offset + 4 * MIB))),
        ("both GPT headers corrupted", Box::new(damage::corrupt_gpt_headers)),
        (
            "overlapping partitions",
            Box::new(|p: &Path| {
                let (_, last1) = damage::gpt_entry_lbas(p, 1);
                damage::set_gpt_first_lba(p, 2, last1 - 2047);
            }),
        ),
    ];
    let mut repeated = Vec::new();
    for (what, break_it) in &cases {
        fs::copy(&disk.path, &copy).unwrap();
        break_it(&copy);
        let run = store.capture_run(&copy, None);
        assert!(!run.success(), "{what}: capture succeeded:\n{run}");
        assert_nothing_left(&store);
        let message = run.stderr.trim();
        // Any clause of 20+ characters that appears twice.
        let clauses: Vec<&str> = message.split(": ").filter(|c| c.len() >= 20).collect();
        if let Some(c) = clauses.iter().find(|c| message.matches(**c).count() > 1) {
            repeated.push(format!("{what}: {c:?} appears more than once in:\n{message}"));
        }
    }
    assert!(repeated.is_empty(), "{}", repeated.join("\n\n"));
}
