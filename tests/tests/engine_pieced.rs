//! Pieced chunks through the engine (`docs/chunk.md`, "Chunk size and incrementals"): a capture
//! with `kura image capture --server` gets the host's latest snapshot as its parent
//! (`GET /uploads/{id}/parent`) and the piece digests of the parent's chunks
//! (`POST /uploads/{id}/pieces`), so a second capture of a disk changed in a few bytes sends a
//! few 16 KiB patches instead of whole 1 MiB chunks, writes a version 2 manifest, and restores
//! byte for byte. And the `pieces` route answers only about the session's parents' chunks.

use kura_tests::content::{random_bytes, sha256_file};
use kura_tests::disks::MIB;
use kura_tests::engine::{chunk_count, raw_disk, Server};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The version field of an encoded manifest (`docs/manifest.md`: 8 bytes of magic, then the
/// version, u32 little-endian).
fn manifest_version(store: &Path, id: &str) -> u32 {
    let bytes = std::fs::read(store.join("snapshots").join(format!("{id}.kmf"))).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

/// Inverts the byte at each of `offsets` of the file at `path`.
fn flip_bytes(path: &Path, offsets: &[u64]) {
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    for &at in offsets {
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[!b[0]]).unwrap();
    }
    f.sync_all().unwrap();
}

/// The largest chunk file in the store (a 1 MiB chunk of random data, stored nearly as is).
fn largest_chunk(store: &Path) -> String {
    let mut best = (0u64, String::new());
    for shard in std::fs::read_dir(store.join("chunks")).unwrap().flatten() {
        for e in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().unwrap().len();
            if name.len() == 64 && len > best.0 {
                best = (len, name);
            }
        }
    }
    best.1
}

#[test]
fn a_second_capture_through_the_engine_sends_changed_chunks_as_patches() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let disk = raw_disk(work.path(), "disk.img", random_bytes(23, 8 * MIB as usize));
    let original = work.path().join("original.img");
    std::fs::copy(&disk.path, &original).unwrap();

    let run = server.capture_run(&disk.path, "pieced");
    assert!(run.success(), "first capture failed:\n{run}\nserver log:\n{}", server.log());
    let first: Value = run.json();
    let first_id = first["snapshot"].as_str().unwrap().to_string();
    assert_eq!(first["pieced_chunks"], 0, "a first capture has no parent: {first}");
    assert!(first["new_chunks"].as_u64().unwrap() >= 8, "{first}");
    assert_eq!(manifest_version(&server.store(), &first_id), 1, "no pieced chunk: written as version 1");

    // Three bytes changed in two 1 MiB chunks of the partition (chunks are cut from the start
    // of their region): pieces 0 and 18 of its second chunk, piece 0 of its fourth.
    let part = disk.partition(1).offset;
    flip_bytes(&disk.path, &[part + MIB + 100, part + MIB + 300_000, part + 3 * MIB + 5_000]);
    let chunks_before = chunk_count(&server.store());

    let run = server.capture_run(&disk.path, "pieced");
    assert!(run.success(), "second capture failed:\n{run}\nserver log:\n{}", server.log());
    let second: Value = run.json();
    let second_id = second["snapshot"].as_str().unwrap().to_string();
    assert_eq!(second["pieced_chunks"], 2, "the two changed chunks go as patches: {second}");
    // Three 16 KiB patches of random data (incompressible), not two 1 MiB chunks.
    assert_eq!(second["new_chunks"], 3, "{second}");
    let sent = second["new_stored_bytes"].as_u64().unwrap();
    let patch = 16 << 10;
    assert!((3 * patch..3 * patch + 4096).contains(&sent), "sent {sent} bytes: {second}");
    assert_eq!(chunk_count(&server.store()), chunks_before + 3);
    assert_eq!(manifest_version(&server.store(), &second_id), 2, "pieced chunks: written as version 2");

    // The engine shows, verifies and restores it (bases and patches assembled), and the first
    // snapshot, whose chunks are now bases, still restores the original disk.
    let show = server.kura(&[&"image", &"show", &second_id, &"--json"]);
    assert!(show.success(), "{show}");
    assert_eq!(show.json::<Value>()["id"], second_id.as_str());
    server.assert_verify_ok();
    let restored = work.path().join("restored.img");
    server.restore(&second_id, &restored);
    assert_eq!(std::fs::read(&restored).unwrap(), std::fs::read(&disk.path).unwrap(), "second snapshot");
    let restored_first = work.path().join("restored-first.img");
    server.restore(&first_id, &restored_first);
    assert_eq!(sha256_file(&restored_first), sha256_file(&original), "first snapshot");

    // Nothing changed since: the pieced chunks are referenced again as they are (the engine
    // protected their bases and patches when it handed out the parent), nothing is sent.
    let run = server.capture_run(&disk.path, "pieced");
    assert!(run.success(), "third capture failed:\n{run}\nserver log:\n{}", server.log());
    let third: Value = run.json();
    assert_eq!(third["new_chunks"], 0, "{third}");
    let third_id = third["snapshot"].as_str().unwrap().to_string();
    assert_eq!(manifest_version(&server.store(), &third_id), 2, "the pieced chunks again");
    let restored_third = work.path().join("restored-third.img");
    server.restore(&third_id, &restored_third);
    assert_eq!(sha256_file(&restored_third), sha256_file(&disk.path), "third snapshot");

    // The routes by hand: a session's `pieces` answers only about its parents' chunks.
    let api = server.api();
    let r = api.req("POST", "/uploads").token(&server.admin).json(&serde_json::json!({"host": "pieced"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let upload = r.json()["upload"].as_str().unwrap().to_string();
    let base = hex::decode(largest_chunk(&server.store())).unwrap();
    let pieces = |size: &str, body: Vec<u8>| {
        api.req("POST", &format!("/uploads/{upload}/pieces?size={size}")).token(&server.admin).bytes(body).send()
    };
    // Before the session was given a parent, no chunk is its parent's.
    let r = pieces("16384", base.clone());
    assert_eq!(r.status, 403, "{}", r.text());

    let r = api.req("GET", &format!("/uploads/{upload}/parent?disk=sda")).token(&server.admin).send();
    assert_eq!(r.status, 404, "the latest snapshot is of one disk, not a set: {}", r.text());
    let r = api.req("GET", &format!("/uploads/{upload}/parent")).token(&server.admin).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = std::fs::read(server.store().join("snapshots").join(format!("{third_id}.kmf"))).unwrap();
    assert!(
        r.body == stored,
        "the parent is the host's latest snapshot, as stored: {} bytes, {} stored, {:?}",
        r.body.len(),
        stored.len(),
        String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
    );

    let r = pieces("16384", base.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(u32::from_le_bytes(r.body[..4].try_into().unwrap()), 64, "a 1 MiB chunk has 64 pieces of 16 KiB");
    assert_eq!(r.body.len(), 4 + 64 * 32);
    // A chunk the parent does not reference (another host's, or none) is refused, even beside
    // one it does.
    let r = pieces("16384", [base.clone(), vec![7u8; 32]].concat());
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["kind"], "forbidden", "{}", r.text());
    assert!(r.text().contains("parent"), "{}", r.text());
    // Piece sizes: a power of two from 512 bytes, less than the chunk size.
    for bad in ["1000", "256", "1048576"] {
        let r = pieces(bad, base.clone());
        assert_eq!(r.status, 400, "size {bad}: {}", r.text());
    }
    let r = api.req("DELETE", &format!("/uploads/{upload}")).token(&server.admin).send();
    assert_eq!(r.status, 204, "{}", r.text());

    // `--full`: no parent, so each changed chunk is stored whole (the two pieced ones of the
    // second snapshot, whose content the store holds only as patches, and one changed now).
    flip_bytes(&disk.path, &[part + 5 * MIB + 7]);
    let run = server.kura(&[&"image", &"capture", &disk.path, &"--host", &"pieced", &"--json", &"--full"]);
    assert!(run.success(), "--full capture failed:\n{run}\nserver log:\n{}", server.log());
    let full: Value = run.json();
    assert_eq!(full["pieced_chunks"], 0, "{full}");
    assert_eq!(full["new_chunks"], 3, "{full}");
    assert!(full["new_stored_bytes"].as_u64().unwrap() > 3 * MIB, "{full}");
    let full_id = full["snapshot"].as_str().unwrap().to_string();
    assert_eq!(manifest_version(&server.store(), &full_id), 1);
    let restored_full = work.path().join("restored-full.img");
    server.restore(&full_id, &restored_full);
    assert_eq!(sha256_file(&restored_full), sha256_file(&disk.path), "the --full snapshot");
}

/// A snapshot set (`kura image capture --server` of several image files): each disk's parent is
/// its member of the host's latest set (`parent?disk=NAME`, the file name), so a change in one
/// disk goes as patches on that disk's chunks, and the member restores byte for byte.
#[test]
fn a_snapshot_set_takes_each_disk_of_the_latest_set_as_its_parent() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let a = raw_disk(work.path(), "a.img", random_bytes(31, 4 * MIB as usize));
    let b = raw_disk(work.path(), "b.img", random_bytes(32, 4 * MIB as usize));
    let capture = || {
        let run = server.kura(&[&"image", &"capture", &a.path, &b.path, &"--host", &"settled", &"--json"]);
        assert!(run.success(), "set capture failed:\n{run}\nserver log:\n{}", server.log());
        run.json::<Value>()
    };
    let first = capture();
    assert_eq!(first["disks"][1]["pieced_chunks"], 0, "{first}");

    let part = b.partition(1).offset;
    flip_bytes(&b.path, &[part + MIB + 10]);
    let second = capture();
    let disks = &second["disks"];
    assert_eq!(disks[0]["new_chunks"], 0, "disk a did not change: {second}");
    assert_eq!(disks[0]["pieced_chunks"], 0, "{second}");
    assert_eq!(disks[1]["pieced_chunks"], 1, "disk b's changed chunk goes as a patch on its own: {second}");
    assert_eq!(disks[1]["new_chunks"], 1, "{second}");

    let set = second["snapshot"].as_str().unwrap().to_string();
    let show = server.kura(&[&"image", &"show", &set, &"--json"]);
    assert!(show.success(), "{show}");
    let shown: Value = show.json();
    let member = shown["disks"][1]["snapshot"].as_str().unwrap().to_string();
    assert_eq!(shown["disks"][1]["name"], "b.img", "{shown}");
    assert_eq!(manifest_version(&server.store(), &member), 2);
    server.assert_verify_ok();
    let restored = work.path().join("restored-b.img");
    server.restore(&member, &restored);
    assert_eq!(sha256_file(&restored), sha256_file(&b.path), "disk b of the second set");
}
