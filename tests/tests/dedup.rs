//! Captures of the same disk share chunks: an unchanged disk stores nothing new, and a disk
//! with a few files rewritten stores only the chunks around them.

use kura_tests::content::{random_bytes, text_bytes};
use kura_tests::disks::ext4_replace_file;
use kura_tests::fixtures;
use kura_tests::kura_cli::Store;
use kura_tests::store::{chunk_files, stored_bytes};
use kura_tests::tables::assert_restored;

#[test]
fn unchanged_and_slightly_changed_disks_deduplicate() {
    let work = tempfile::tempdir().unwrap();
    let mut disk = fixtures::gpt_linux(work.path());
    let original = disk.clone();
    let store = Store::new(work.path().join("store"));

    let first = store.capture(&disk.path, Some("first"));
    eprintln!("first: {first:?}");
    let after_first = stored_bytes(&store.dir);
    let files_after_first = chunk_files(&store.dir).len();

    // The same disk again: nothing new at all.
    let second = store.capture(&disk.path, Some("second"));
    eprintln!("second: {second:?}");
    assert_ne!(second.snapshot, first.snapshot);
    assert_eq!(second.chunks, first.chunks, "{second:?}");
    assert_eq!(second.new_chunks, 0, "{second:?}");
    assert_eq!(second.new_stored_bytes, 0, "{second:?}");
    assert_eq!(second.reused_chunks, second.chunks, "{second:?}");
    assert_eq!(stored_bytes(&store.dir), after_first);
    assert_eq!(chunk_files(&store.dir).len(), files_after_first);

    // Rewrite 3 of the 50 files, about 310 KB of the 30 MB of files (~1%), in place on the
    // root filesystem, as a running system would.
    let scratch = work.path();
    let changed = [
        ("usr/share/doc/kura/changelog", text_bytes(77_001, 305_000)),
        ("etc/fstab", text_bytes(77_002, 950)),
        ("usr/share/misc/deep/dir0/file0.dat", random_bytes(77_003, 3_100)),
    ];
    for (path, data) in &changed {
        ext4_replace_file(&mut disk, 3, path, data, scratch);
    }
    let third = store.capture(&disk.path, Some("third"));
    eprintln!("third: {third:?}");
    assert!(third.chunks.abs_diff(first.chunks) <= 3, "{third:?} vs {first:?}");
    // What may change, in 1 MiB chunks: the rewritten files' new blocks (~310 KB, at most 3
    // chunks even if they straddle boundaries) and the metadata blocks they touch: block and
    // inode bitmaps, inode table, directory blocks, superblock and group descriptors (with
    // flex_bg all near the start of the filesystem: at most 5 chunks). So at most 8 changed
    // chunks. The capture takes the second snapshot as its parent (same source, same store), so
    // a chunk changed in a few places is stored as 16 KiB patches on the parent's chunk
    // (docs/chunk.md): before that scheme this capture stored 4 whole chunks, 1.5 MiB; with it
    // 4 pieced chunks, 26 patches, 94 KiB (the changelog alone is 305 KB of text).
    let whole = third.new_chunks - third.new_patches;
    assert!(third.pieced_chunks >= 1 && whole + third.pieced_chunks <= 8, "{third:?}");
    assert!(third.new_patches >= third.pieced_chunks, "{third:?}");
    assert!(
        third.new_stored_bytes <= 256 << 10,
        "third capture stored {} of {} used",
        third.new_stored_bytes,
        third.used_bytes
    );
    assert!(third.new_stored_bytes * 4 <= first.new_stored_bytes, "{third:?} vs {first:?}");
    assert_eq!(third.reused_chunks + third.pieced_chunks + whole, third.chunks, "{third:?}");
    let on_disk = stored_bytes(&store.dir);
    assert!(
        on_disk - after_first <= third.new_stored_bytes + 64 * third.new_chunks,
        "store grew by {}",
        on_disk - after_first
    );

    assert_eq!(store.list().len(), 3);

    // Both the changed disk and the original come back from the shared chunks.
    let restored = work.path().join("third.img");
    store.restore(&third.snapshot, &restored);
    assert_restored(&disk, &restored);
    std::fs::remove_file(&restored).unwrap();

    let restored = work.path().join("first.img");
    store.restore(&first.snapshot, &restored);
    // The source file now holds the changed disk; compare against the original's contents
    // (the bytes outside filesystems did not change).
    kura_tests::readback::assert_files_match(&original, &restored);
    kura_tests::checkers::assert_fsck_clean(&original, &restored);
    kura_tests::tables::assert_tables_equal(&original, &restored);

    // `verify` checks every stored chunk and assembles the pieced ones.
    let verified = store.verify_run(None).expect_success().stdout.clone();
    assert!(verified.contains("\"ok\":true"), "{verified}");

    // --full: no parent; the chunks the third capture pieced are stored whole now.
    let full: kura_tests::kura_cli::CaptureReport =
        store.capture_run_with(&disk.path, Some("full"), &["--full"]).expect_success().json();
    assert_eq!((full.pieced_chunks, full.new_patches), (0, 0), "{full:?}");
    assert_eq!(full.new_chunks, third.pieced_chunks, "{full:?} vs {third:?}");
}

/// A disk that repeats itself (a 32 MiB raw partition holding 16 distinct 1 MiB blocks, each
/// twice in a row) stores each distinct chunk once, and says so: the counts must match the
/// store even when two workers meet the same chunk at the same time (4 workers here, so that
/// they do).
#[test]
fn repeated_chunks_within_one_disk_are_stored_and_counted_once() {
    use kura_tests::content::sha256_file;
    use kura_tests::disks::{build_gpt, Content, PartSpec, MIB};

    let work = tempfile::tempdir().unwrap();
    let mut pairs = Vec::with_capacity(32 * MIB as usize);
    for i in 0..16 {
        let block = random_bytes(88_000 + i, MIB as usize);
        pairs.extend_from_slice(&block);
        pairs.extend_from_slice(&block);
    }
    let disk = build_gpt(
        work.path(),
        "repeated.img",
        40 * MIB,
        vec![PartSpec::gpt(32 * MIB, "ef02", "BIOS boot partition", Content::Raw(pairs))],
    );
    // A race shows only sometimes: capture into 8 fresh stores, and every count must be right.
    let mut miscounts = Vec::new();
    let mut last = None;
    for round in 0..8 {
        let store = Store::new(work.path().join(format!("store{round}")));
        let run = store.capture_run_with(&disk.path, None, &["--threads", "4"]);
        let cap: kura_tests::kura_cli::CaptureReport = run.expect_success().json();
        eprintln!("{cap:?}");
        let files = chunk_files(&store.dir);
        // Distinct chunks: the 16 blocks, plus the boot area and the backup GPT (one or two
        // chunks each, depending on where the tables fall).
        assert!(files.len() <= 16 + 4, "{} chunk files for 18-20 distinct chunks", files.len());
        assert!(cap.chunks >= 34, "{cap:?}");
        assert_eq!(cap.reused_chunks, cap.chunks - cap.new_chunks, "{cap:?}");
        let on_disk = stored_bytes(&store.dir);
        if cap.new_chunks != files.len() as u64 || cap.new_stored_bytes != on_disk {
            miscounts.push(format!(
                "round {round}: new_chunks {} for {} chunk files, new_stored_bytes {} for {on_disk} bytes",
                cap.new_chunks,
                files.len(),
                cap.new_stored_bytes
            ));
        }
        last = Some((store, cap));
    }
    assert!(miscounts.is_empty(), "capture miscounts what it stored:\n{}", miscounts.join("\n"));

    let (store, cap) = last.unwrap();
    let restored = work.path().join("restored.img");
    store.restore(&cap.snapshot, &restored);
    assert_eq!(sha256_file(&restored), sha256_file(&disk.path), "restored disk differs");
}
