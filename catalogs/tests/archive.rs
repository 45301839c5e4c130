//! The export archive over real stores: the frozen format (golden file
//! `catalogs/testdata/archive-v1.kar`, `UPDATE_TESTDATA=1` rewrites it), export → import and
//! export → stream restore round trips, incrementals, and every truncation point and a sweep of
//! flipped bytes, each with the report it must give.

use kura_catalogs::archive::read::{ArchiveFile, ArchiveSource};
use kura_catalogs::archive::write::{export, ExportOptions, Since};
use kura_catalogs::archive::{import, stream_restore};
use kura_catalogs::LocalStore;
use kura_imaging::capture::{capture, CaptureOptions};
use kura_imaging::chunk::ChunkSource;
use kura_imaging::progress::NoProgress;
use kura_imaging::target::FileTarget;
use std::collections::HashSet;
use std::io::Cursor;
use std::path::Path;

const CHUNK: usize = 64 << 10;

/// A small raw disk: `n` chunks of deterministic text (some repeated, one zero), varied by `seed`.
fn disk(seed: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * CHUNK);
    for i in 0..n {
        if i == 1 {
            out.resize(out.len() + CHUNK, 0);
            continue;
        }
        // Chunk 3 repeats chunk 0; the others depend on the seed for chunks past 3.
        let key = if i == 3 {
            0
        } else if i > 3 {
            seed * 100 + i as u64
        } else {
            i as u64
        };
        let mut x = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        while out.len() < (i + 1) * CHUNK {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(format!("line {} of chunk {key}: {:08x}\n", out.len(), x % 4096).as_bytes());
        }
        out.truncate((i + 1) * CHUNK);
    }
    out
}

fn snapshot(store: &LocalStore, data: &[u8], host: &str, created: &str) -> String {
    let opts = CaptureOptions {
        chunk_size: CHUNK as u32,
        threads: 1,
        host: Some(host.into()),
        name: Some(format!("{host} at {created}")),
        source: "test".into(),
        ..Default::default()
    };
    let (mut m, _) = capture(Cursor::new(data.to_vec()), &opts, store, &NoProgress).unwrap();
    m.created = created.into();
    store.commit_manifest(&m).unwrap()
}

/// Two hosts, two snapshots each; returns the store and (id, disk bytes) oldest first.
fn fixture(dir: &Path) -> (LocalStore, Vec<(String, Vec<u8>)>) {
    let store = LocalStore::open_or_create(&dir.join("src")).unwrap();
    let mut snaps = Vec::new();
    for (k, (host, seed, t)) in [
        ("alpha", 1, "2026-01-01T00:00:00Z"),
        ("beta", 2, "2026-01-02T00:00:00Z"),
        ("alpha", 3, "2026-02-01T00:00:00Z"),
        ("beta", 4, "2026-02-02T00:00:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        let d = disk(seed, 6 + k % 2);
        snaps.push((snapshot(&store, &d, host, t), d));
    }
    (store, snaps)
}

fn opts() -> ExportOptions {
    ExportOptions {
        block_size: 4096,
        archive_id: Some(0x6b75_7261_0000_0001),
        created: Some("2026-03-01T00:00:00Z".into()),
        ..Default::default()
    }
}

fn archive(store: &LocalStore, o: &ExportOptions) -> Vec<u8> {
    export(store, o, Vec::new(), &NoProgress).unwrap().0
}

fn import_bytes(bytes: &[u8], dir: &Path) -> (LocalStore, import::ImportReport) {
    let store = LocalStore::open_or_create(dir).unwrap();
    let r = import::import(&store, bytes, &NoProgress).unwrap();
    (store, r)
}

#[test]
fn golden_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snaps) = fixture(dir.path());
    let bytes = archive(&store, &opts());
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/archive-v1.kar");
    if std::env::var_os("UPDATE_TESTDATA").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &bytes).unwrap();
    }
    let want = std::fs::read(&golden).expect("golden file (UPDATE_TESTDATA=1 writes it)");
    assert!(bytes == want, "the archive format changed: a v1 archive must stay byte for byte the same");
    // The golden file is read by today's reader: every snapshot back, byte for byte.
    let (imported, r) = import_bytes(&want, &dir.path().join("golden"));
    assert!(r.ok, "{r:?}");
    let ids: Vec<&String> = snaps.iter().map(|(id, _)| id).collect();
    assert_eq!(r.imported.iter().collect::<Vec<_>>(), ids);
    assert!(imported.verify(None, 1, &NoProgress).unwrap().ok);
    // Layout facts the format document states.
    assert_eq!(want.len() % 4096, 0);
    assert_eq!(&want[..8], &kura_catalogs::archive::format::MAGIC);
    assert_eq!(&want[want.len() - 8..], &kura_catalogs::archive::format::END_MAGIC);
}

#[test]
fn export_import_and_stream_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snaps) = fixture(dir.path());
    let bytes = archive(&store, &ExportOptions { block_size: 8192, ..ExportOptions::default() });
    let (imported, r) = import_bytes(&bytes, &dir.path().join("dst"));
    assert!(r.ok && r.imported.len() == 4, "{r:?}");
    assert_eq!(imported.snapshot_ids().unwrap(), store.snapshot_ids().unwrap());
    // Importing again stores nothing and commits nothing new.
    let r2 = import::import(&imported, &bytes[..], &NoProgress).unwrap();
    assert!(r2.ok && r2.imported.is_empty() && r2.already.len() == 4 && r2.chunks_stored == 0, "{r2:?}");
    // From a pipe, one pass, each snapshot byte for byte; and from the file through its index.
    let file = dir.path().join("a.kar");
    std::fs::write(&file, &bytes).unwrap();
    let source = ArchiveSource::new(vec![ArchiveFile::open(&file).unwrap()]);
    assert!(!source.archives[0].scanned);
    for (i, (id, data)) in snaps.iter().enumerate() {
        let out = dir.path().join(format!("r{i}.img"));
        let (got, _) =
            stream_restore::stream_restore(&bytes[..], &id[..6], &mut FileTarget::existing_or_new(&out), &NoProgress)
                .unwrap();
        assert_eq!(&got, id);
        assert!(std::fs::read(&out).unwrap() == *data, "snapshot {id} restored from a pipe differs");
        let (fid, m) = source.find(id).unwrap();
        let out2 = dir.path().join(format!("f{i}.img"));
        kura_imaging::flow::restore_flow(&fid, m, &source, &mut FileTarget::existing_or_new(&out2), 2, &NoRestoreObs)
            .unwrap();
        assert!(std::fs::read(&out2).unwrap() == *data, "snapshot {id} restored from the file differs");
    }
}

struct NoRestoreObs;
impl kura_imaging::flow::RestoreObserver for NoRestoreObs {
    fn checking(&self) -> &dyn kura_imaging::progress::Progress {
        &NoProgress
    }
    fn writing(&self) -> &dyn kura_imaging::progress::Progress {
        &NoProgress
    }
}

#[test]
fn incrementals_carry_only_new_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snaps) = fixture(dir.path());
    // A full export of the January snapshots, then February by --since (date, then snapshot)
    // and by --base.
    let mut full_opts = opts();
    full_opts.since = None;
    let jan: Vec<&String> = snaps[..2].iter().map(|(id, _)| id).collect();
    // Build "January only" by exporting from a store holding only them.
    let jan_store = LocalStore::open_or_create(&dir.path().join("jan")).unwrap();
    for id in &jan {
        let m = store.load_manifest(id).unwrap();
        for d in m.unique_digests() {
            use kura_imaging::chunk::ChunkSink;
            jan_store.put_chunk(&d, &store.get_chunk(&d).unwrap()).unwrap();
        }
        jan_store.commit_manifest(&m).unwrap();
    }
    let full = archive(&jan_store, &full_opts);
    let full_file = dir.path().join("full.kar");
    std::fs::write(&full_file, &full).unwrap();
    let base = ArchiveFile::open(&full_file).unwrap();
    let base_digests: HashSet<_> = base.digests().collect();
    let by_base =
        archive(&store, &ExportOptions { base: base.catalog.clone(), base_digests: base_digests.clone(), ..opts() });
    let by_date =
        archive(&store, &ExportOptions { since: Some((Since::Time(1_767_312_000), "2026-01-02".into())), ..opts() });
    let by_snap =
        archive(&store, &ExportOptions { since: Some((Since::Snapshot(snaps[1].0.clone()), "x".into())), ..opts() });
    assert_eq!(by_date.len(), by_snap.len());
    for incr in [&by_base, &by_snap] {
        let f = dir.path().join("incr.kar");
        std::fs::write(&f, incr).unwrap();
        let a = ArchiveFile::open(&f).unwrap();
        let c = a.catalog.clone().unwrap();
        assert_eq!(c.snapshots.iter().map(|s| &s.id).collect::<Vec<_>>(), vec![&snaps[2].0, &snaps[3].0]);
        assert!(a.digests().all(|d| !base_digests.contains(&d)), "an incremental repeats a chunk");
        // Everything February needs is in the full export or in this one.
        for (id, _) in &snaps[2..] {
            for d in store.load_manifest(id).unwrap().unique_digests() {
                assert!(a.has(&d) || base_digests.contains(&d));
            }
        }
        // Restore from the pair (no store); import of the increment alone names what it lacks.
        let src = ArchiveSource::new(vec![ArchiveFile::open(&full_file).unwrap(), ArchiveFile::open(&f).unwrap()]);
        let (id, m) = src.find(&snaps[3].0).unwrap();
        let out = dir.path().join("pair.img");
        let _ = std::fs::remove_file(&out);
        kura_imaging::flow::restore_flow(&id, m, &src, &mut FileTarget::existing_or_new(&out), 2, &NoRestoreObs)
            .unwrap();
        assert!(std::fs::read(&out).unwrap() == snaps[3].1);
        let (_, r) = import_bytes(incr, &dir.path().join(format!("alone{}", incr.len())));
        assert!(!r.ok && r.incomplete.len() == 2 && r.imported.is_empty(), "{r:?}");
        std::fs::remove_dir_all(dir.path().join(format!("alone{}", incr.len()))).unwrap();
    }
    // Full then increment into one store: all four.
    let (dst, r) = import_bytes(&full, &dir.path().join("both"));
    assert!(r.ok);
    let r = import::import(&dst, &by_base[..], &NoProgress).unwrap();
    assert!(r.ok && r.imported.len() == 2, "{r:?}");
    assert!(dst.verify(None, 1, &NoProgress).unwrap().ok);
}

/// Which snapshots a prefix of the archive completes: the manifests come first, the packs
/// oldest first; a snapshot is complete once every chunk it needs has passed.
fn complete_within(bytes: &[u8], cut: usize, dir: &Path) -> (Vec<String>, import::ImportReport) {
    let (store, r) = import_bytes(&bytes[..cut], dir);
    assert!(store.verify(None, 1, &NoProgress).unwrap().ok, "cut at {cut}: an imported snapshot is damaged");
    (r.imported.clone(), r)
}

#[test]
fn a_truncated_archive_imports_what_is_complete_and_names_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snaps) = fixture(dir.path());
    let bytes = archive(&store, &opts());
    let mut previous = 0;
    let mut seen_partial = false;
    for (k, cut) in (4096..bytes.len()).step_by(4096 / 2).chain([bytes.len() - 1]).enumerate() {
        let sub = dir.path().join(format!("cut{k}"));
        let (imported, r) = complete_within(&bytes, cut, &sub);
        assert!(r.truncated && !r.ok, "cut at {cut}: {r:?}");
        // Complete snapshots only grow with the cut, oldest first.
        assert!(imported.len() >= previous, "cut at {cut}");
        previous = imported.len();
        assert_eq!(imported, snaps[..imported.len()].iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
        // Every snapshot is accounted for: imported or named incomplete.
        let named: HashSet<&String> = r.incomplete.iter().map(|s| &s.id).collect();
        for (id, _) in &snaps[imported.len()..] {
            assert!(named.contains(id), "cut at {cut}: {id} neither imported nor named: {r:?}");
        }
        seen_partial |= !imported.is_empty() && imported.len() < 4;
        std::fs::remove_dir_all(&sub).unwrap();
    }
    assert!(seen_partial, "some cut completes part of the snapshots");
    // From the truncated file, the index is rebuilt by scanning and complete snapshots restore.
    let cut = dir.path().join("cut.kar");
    std::fs::write(&cut, &bytes[..bytes.len() - 3 * 4096]).unwrap();
    let src = ArchiveSource::new(vec![ArchiveFile::open(&cut).unwrap()]);
    assert!(src.archives[0].scanned && src.archives[0].catalog.is_none());
    let (id, m) = src.find(&snaps[0].0).unwrap();
    let out = dir.path().join("t.img");
    kura_imaging::flow::restore_flow(&id, m, &src, &mut FileTarget::existing_or_new(&out), 1, &NoRestoreObs).unwrap();
    assert!(std::fs::read(&out).unwrap() == snaps[0].1);
}

#[test]
fn flipped_bytes_are_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snaps) = fixture(dir.path());
    let bytes = archive(&store, &opts());
    // Where the chunk records are: flip one byte in the middle of each and check it is named.
    let file = dir.path().join("a.kar");
    std::fs::write(&file, &bytes).unwrap();
    let a = ArchiveFile::open(&file).unwrap();
    let users = |d: &kura_imaging::chunk::Digest| -> Vec<String> {
        snaps
            .iter()
            .filter(|(id, _)| store.load_manifest(id).unwrap().unique_digests().contains(d))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let mut k = 0;
    for d in a.digests().collect::<Vec<_>>() {
        let blob = store.get_chunk(&d).unwrap();
        // Find the record's payload in the archive bytes by the chunk's header (unique: it holds the digest).
        let hdr = &blob[..64];
        let pos = bytes.windows(64).position(|w| w == hdr).expect("chunk header in the archive");
        let flip = pos + 64 + (blob.len() - 64) / 2;
        if (flip % 4096) < 40 {
            continue; // landed on a block header: covered by the sweep below
        }
        let mut bad = bytes.clone();
        bad[flip] ^= 0x04;
        let sub = dir.path().join(format!("flip{k}"));
        k += 1;
        let (dst, r) = import_bytes(&bad, &sub);
        assert!(!r.ok);
        let named = r.damaged_chunks.iter().find(|c| c.digest == d.to_hex()).unwrap_or_else(|| panic!("{r:?}"));
        assert_eq!(named.snapshots, users(&d));
        for id in &named.snapshots {
            assert!(r.incomplete.iter().any(|s| &s.id == id), "{id} not named incomplete");
            assert!(!dst.manifest_exists(id));
        }
        assert!(dst.verify(None, 1, &NoProgress).unwrap().ok);
        // A pipe restore of a snapshot that needs it fails naming it; the others restore.
        let out = dir.path().join("flip.img");
        let _ = std::fs::remove_file(&out);
        let e = stream_restore::stream_restore(
            &bad[..],
            &named.snapshots[0],
            &mut FileTarget::existing_or_new(&out),
            &NoProgress,
        )
        .unwrap_err();
        assert!(e.to_string().contains(&d.to_hex()), "{e}");
        std::fs::remove_dir_all(&sub).unwrap();
    }
    assert!(k > 5);
    // A sweep over every 1499th byte: the import never panics, never imports a damaged snapshot,
    // and reports the damage unless the byte was padding.
    for (k, pos) in (0..bytes.len()).step_by(1499).enumerate() {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x80;
        let sub = dir.path().join(format!("sweep{k}"));
        let Ok(store2) = LocalStore::open_or_create(&sub) else { panic!() };
        match import::import(&store2, &bad[..], &NoProgress) {
            Ok(r) => {
                assert!(store2.verify(None, 1, &NoProgress).unwrap().ok, "flip at {pos}");
                for id in &r.imported {
                    assert!(snaps.iter().any(|(s, _)| s == id));
                }
            }
            Err(e) => assert!(pos < 4096, "flip at {pos} stopped the import: {e}"),
        }
        std::fs::remove_dir_all(&sub).unwrap();
    }
}
