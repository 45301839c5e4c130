//! Capture and restore through an in-memory chunk store: the pipelines' own contract, without
//! filesystems (a disk with no partition table is one raw region).

use kura_imaging::capture::{capture, CaptureOptions};
use kura_imaging::chunk::{ChunkSink, ChunkSource, Digest};
use kura_imaging::manifest::{ChunkRef, Manifest};
use kura_imaging::progress::NoProgress;
use kura_imaging::restore::{restore, RestoreOptions};
use kura_imaging::Error;
use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;

#[derive(Default)]
struct MemStore {
    chunks: Mutex<HashMap<Digest, Vec<u8>>>,
    /// Refuse puts once this many chunks are held (a full store).
    capacity: Option<usize>,
    /// Puts the capture should keep in flight (a remote sink), each taking a little while.
    in_flight: usize,
    /// Puts running at once, and the most seen.
    running: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    /// A store that decides "new" before its slow write, as a remote store with an index does:
    /// two simultaneous puts of one digest both answer new.
    racy: bool,
}

impl ChunkSink for MemStore {
    fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, Error> {
        let c = self.chunks.lock().unwrap();
        Ok(digests.iter().map(|d| !c.contains_key(d)).collect())
    }
    fn put_chunk(&self, d: &Digest, blob: &[u8]) -> Result<bool, Error> {
        use std::sync::atomic::Ordering::SeqCst;
        let absent_before = !self.chunks.lock().unwrap().contains_key(d);
        if self.in_flight > 0 {
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.running.fetch_sub(1, SeqCst);
        }
        let mut c = self.chunks.lock().unwrap();
        if self.capacity.is_some_and(|cap| c.len() >= cap) {
            return Err(Error::StoreFull { message: "the store is full".into() });
        }
        let absent_now = c.insert(*d, blob.to_vec()).is_none();
        Ok(if self.racy { absent_before } else { absent_now })
    }
    fn puts_in_flight(&self) -> usize {
        self.in_flight
    }
    fn piece_digests(&self, d: &Digest, piece_size: u32) -> Result<Option<Vec<Digest>>, Error> {
        let mut dec = kura_imaging::chunk::Decoder::new()?;
        kura_imaging::pieced::stored_piece_digests(self, &mut dec, d, piece_size).map(Some)
    }
}

impl ChunkSource for MemStore {
    fn get_chunk(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        self.chunks.lock().unwrap().get(d).cloned().ok_or(Error::ChunkMissing { digest: d.to_hex() })
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// 5 MiB + 3 KiB: random data, a zero MiB, repeated content, and an odd-sized tail.
fn disk() -> Vec<u8> {
    let mut d = noise(1 << 20, 1);
    d.extend(vec![0u8; 1 << 20]);
    d.extend(noise(1 << 20, 5));
    d.extend(noise(1 << 20, 1)); // same as the first MiB: deduplicated
    d.extend(noise((1 << 20) + 3072, 9));
    d
}

fn opts() -> CaptureOptions {
    CaptureOptions { threads: 3, source: "mem".into(), ..Default::default() }
}

#[test]
fn raw_disk_roundtrip_onto_garbage_target() {
    let src = disk();
    let store = MemStore::default();
    let (m, stats) = capture(Cursor::new(&src), &opts(), &store, &NoProgress).unwrap();
    assert_eq!(stats.disk_size, src.len() as u64);
    assert_eq!(stats.zero_chunks, 1);
    assert_eq!(stats.chunks, 5);
    assert_eq!(stats.new_chunks, 4, "the repeated MiB is stored once");
    let m = Manifest::decode(&m.encode().unwrap()).unwrap();

    // The target holds garbage everywhere: zero chunks must be written as zeros.
    let mut target = Cursor::new(vec![0xAAu8; src.len()]);
    let rs = restore(&m, &store, &mut target, src.len() as u64, &RestoreOptions::default(), &NoProgress).unwrap();
    assert_eq!(rs.written_bytes, src.len() as u64);
    assert!(target.into_inner() == src);
}

#[test]
fn second_capture_stores_nothing_new() {
    let src = disk();
    let store = MemStore::default();
    capture(Cursor::new(&src), &opts(), &store, &NoProgress).unwrap();
    let (_, s2) = capture(Cursor::new(&src), &opts(), &store, &NoProgress).unwrap();
    assert_eq!((s2.new_chunks, s2.new_stored_bytes), (0, 0));
    assert_eq!(s2.reused_chunks, 5);
}

#[test]
fn tampered_chunk_stops_restore_before_any_write() {
    let src = disk();
    let store = MemStore::default();
    let (m, _) = capture(Cursor::new(&src), &opts(), &store, &NoProgress).unwrap();
    let victim = match &m.regions[0].chunks[2] {
        ChunkRef::Data(d) => *d,
        other => panic!("expected data, got {other:?}"),
    };
    store.chunks.lock().unwrap().get_mut(&victim).unwrap()[100] ^= 1;
    let mut target = Cursor::new(vec![0x55u8; src.len()]);
    let err = restore(&m, &store, &mut target, src.len() as u64, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(err.to_string().contains(&victim.to_hex()), "{err}");
    assert!(target.into_inner().iter().all(|&b| b == 0x55), "target was written");
}

#[test]
fn missing_chunk_and_small_target_are_refused_before_any_write() {
    let src = disk();
    let store = MemStore::default();
    let (m, _) = capture(Cursor::new(&src), &opts(), &store, &NoProgress).unwrap();
    let mut small = Cursor::new(vec![0x55u8; src.len() - 512]);
    let err =
        restore(&m, &store, &mut small, src.len() as u64 - 512, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(err, Error::TargetTooSmall { .. }), "{err}");
    assert!(small.into_inner().iter().all(|&b| b == 0x55));

    let gone = *store.chunks.lock().unwrap().keys().next().unwrap();
    store.chunks.lock().unwrap().remove(&gone);
    let mut target = Cursor::new(vec![0x55u8; src.len()]);
    let err = restore(&m, &store, &mut target, src.len() as u64, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(err, Error::ChunkMissing { .. }) && err.to_string().contains(&gone.to_hex()), "{err}");
    assert!(target.into_inner().iter().all(|&b| b == 0x55));
}

#[test]
fn full_store_fails_the_capture_with_a_clear_error() {
    let src = disk();
    let store = MemStore { capacity: Some(2), ..Default::default() };
    let err = capture(Cursor::new(&src), &opts(), &store, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
}

#[test]
fn chunk_sizes_other_than_default_roundtrip() {
    let src = disk();
    for cs in [256 << 10, 4 << 20] {
        let store = MemStore::default();
        let o = CaptureOptions { chunk_size: cs, ..opts() };
        let (m, _) = capture(Cursor::new(&src), &o, &store, &NoProgress).unwrap();
        let mut target = Cursor::new(Vec::new());
        restore(&m, &store, &mut target, u64::MAX, &RestoreOptions::default(), &NoProgress).unwrap();
        assert!(target.into_inner() == src, "chunk size {cs}");
    }
}

#[test]
fn a_sink_with_puts_in_flight_gets_them_from_uploader_threads_with_the_same_result() {
    let src = disk();
    let inline = MemStore::default();
    let (m1, s1) = capture(Cursor::new(&src), &opts(), &inline, &NoProgress).unwrap();
    let remote = MemStore { in_flight: 4, ..Default::default() };
    // One worker: only uploader threads can have several puts running at once.
    let one = CaptureOptions { threads: 1, ..opts() };
    let (m2, s2) = capture(Cursor::new(&src), &one, &remote, &NoProgress).unwrap();
    assert_eq!(m1.regions, m2.regions, "the same chunks in the same places");
    assert_eq!(
        (s1.new_chunks, s1.new_stored_bytes, s1.reused_chunks),
        (s2.new_chunks, s2.new_stored_bytes, s2.reused_chunks)
    );
    let most = remote.most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most > 1, "puts ran one at a time ({most}) although the sink wants 4 in flight");
    // And a full remote store still fails the capture with its own error.
    let full = MemStore { in_flight: 4, capacity: Some(1), ..Default::default() };
    let e = capture(Cursor::new(&src), &one, &full, &NoProgress).unwrap_err();
    assert!(matches!(e, Error::StoreFull { .. }), "{e}");
}

#[test]
fn a_chunk_twice_on_the_disk_is_put_once_even_with_puts_in_flight() {
    // The first and fourth MiB are the same: both are "missing" when their batch is asked
    // about; the second copy must not be put beside the first (a racy store would count both).
    let src = disk();
    let racy = MemStore { in_flight: 4, racy: true, ..Default::default() };
    let one = CaptureOptions { threads: 1, ..opts() };
    let (_, s) = capture(Cursor::new(&src), &one, &racy, &NoProgress).unwrap();
    assert_eq!((s.new_chunks, s.reused_chunks), (4, 1), "{s:?}");
    assert_eq!(racy.chunks.lock().unwrap().len(), 4);
}

/// The two-level scheme: a month of changes against a parent snapshot. Chunks changed in a few
/// places are stored as patches on the parent's chunk, chunks changed mostly are stored whole,
/// a pieced chunk unchanged in the next capture is the same entry again, a changed one is
/// compared with the same base; every snapshot restores byte for byte, through a v2 manifest.
#[test]
fn changed_chunks_are_stored_as_patches_on_the_parent() {
    use kura_imaging::pieced::DEFAULT_PIECE_SIZE as PS;
    let ps = PS as usize;
    let mib = 1usize << 20;
    let first = disk();
    let store = MemStore::default();
    let (m1, _) = capture(Cursor::new(&first), &opts(), &store, &NoProgress).unwrap();
    let m1 = std::sync::Arc::new(Manifest::decode(&m1.encode().unwrap()).unwrap());

    // A month later: an 8 KiB write in chunk 2 (one piece), three scattered pieces in chunk 4,
    // and most of chunk 0 rewritten (its twin, chunk 3, unchanged).
    let mut second = first.clone();
    second[2 * mib + 5 * ps..2 * mib + 5 * ps + 8192].copy_from_slice(&noise(8192, 77));
    for piece in [0, 31, 63] {
        second[4 * mib + piece * ps + 100] ^= 0xff;
    }
    second[..mib * 3 / 4].copy_from_slice(&noise(mib * 3 / 4, 99));
    let parent = CaptureOptions { parent: Some(m1.clone()), ..opts() };
    let (m2, s2) = capture(Cursor::new(&second), &parent, &store, &NoProgress).unwrap();
    assert_eq!(s2.pieced_chunks, 2, "{s2:?}");
    assert_eq!((s2.new_chunks, s2.new_patches), (1 + 1 + 3, 4), "chunk 0 whole, 1 + 3 patches: {s2:?}");
    assert_eq!(s2.chunks, s2.reused_chunks + s2.pieced_chunks + s2.new_chunks - s2.new_patches, "{s2:?}");
    let c = &m2.regions[0].chunks;
    let ChunkRef::Pieced(p2) = &c[2] else { panic!("chunk 2: {:?}", c[2]) };
    assert_eq!((p2.base, p2.piece_size), (*m1.regions[0].chunks[2].content_digest().unwrap(), PS));
    assert_eq!(p2.patches.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![5]);
    assert_eq!(p2.digest, Digest::of(&second[2 * mib..3 * mib]));
    let ChunkRef::Pieced(p4) = &c[4] else { panic!("chunk 4: {:?}", c[4]) };
    assert_eq!(p4.patches.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 31, 63]);
    assert!(matches!(c[0], ChunkRef::Data(_)) && c[3] == m1.regions[0].chunks[3]);
    assert!(s2.new_stored_bytes < (1 << 20) + 4 * (16 << 10) + 1024, "chunk 0 whole, four pieces: {s2:?}");
    let enc = m2.encode().unwrap();
    assert_eq!(u32::from_le_bytes(enc[8..12].try_into().unwrap()), 2, "written as version 2");
    let m2 = std::sync::Arc::new(Manifest::decode(&enc).unwrap());
    assert!(m2.unique_digests().contains(&p4.base) && m2.unique_digests().contains(&p4.patches[1].1));

    // Another month: chunk 2 changes again elsewhere, chunk 4 does not.
    let mut third = second.clone();
    third[2 * mib + 40 * ps] ^= 0x01;
    let (m3, s3) =
        capture(Cursor::new(&third), &CaptureOptions { parent: Some(m2.clone()), ..opts() }, &store, &NoProgress)
            .unwrap();
    let c3 = &m3.regions[0].chunks;
    assert_eq!(c3[4], m2.regions[0].chunks[4], "unchanged pieced chunk: the same entry");
    let ChunkRef::Pieced(p3) = &c3[2] else { panic!("chunk 2: {:?}", c3[2]) };
    assert_eq!(p3.base, p2.base, "compared with the same base, not chained");
    assert_eq!(p3.patches.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![5, 40]);
    assert_eq!(p3.patches[0], p2.patches[0], "the earlier patch is reused");
    assert_eq!((s3.new_chunks, s3.new_patches, s3.pieced_chunks), (1, 1, 1), "{s3:?}");
    assert_eq!(s3.chunks, s3.reused_chunks + s3.pieced_chunks + s3.new_chunks - s3.new_patches, "{s3:?}");

    for (m, src) in [(&*m2, &second), (&m3, &third)] {
        let mut target = Cursor::new(vec![0x5Au8; src.len()]);
        restore(m, &store, &mut target, src.len() as u64, &RestoreOptions::default(), &NoProgress).unwrap();
        assert!(target.into_inner() == *src, "restored bytes differ");
    }

    // A patch that does not belong: the assembled content is refused, naming the chunk.
    let mut forged = (*m2).clone();
    let ChunkRef::Pieced(p) = &mut forged.regions[0].chunks[2] else { unreachable!() };
    p.patches[0].0 = 6;
    let mut target = Cursor::new(vec![0u8; second.len()]);
    let err = restore(&forged, &store, &mut target, second.len() as u64, &RestoreOptions::default(), &NoProgress)
        .unwrap_err();
    assert!(err.to_string().contains(&p2.digest.to_hex()), "{err}");
}

/// A parent whose base chunks are gone (removed from the store since) still captures: a pieced
/// entry whose parts are missing, and a changed chunk whose base is missing, are stored whole.
#[test]
fn a_parent_with_missing_parts_captures_whole() {
    let mib = 1usize << 20;
    let first = disk();
    let store = MemStore::default();
    let (m1, _) = capture(Cursor::new(&first), &opts(), &store, &NoProgress).unwrap();
    let mut second = first.clone();
    second[2 * mib + 100] ^= 1;
    second[4 * mib + 100] ^= 1;
    let (m2, s2) =
        capture(Cursor::new(&second), &CaptureOptions { parent: Some(m1.into()), ..opts() }, &store, &NoProgress)
            .unwrap();
    assert_eq!(s2.pieced_chunks, 2, "{s2:?}");
    // Both bases vanish from the store.
    for i in [2, 4] {
        let ChunkRef::Pieced(p) = &m2.regions[0].chunks[i] else { panic!("{i}") };
        store.chunks.lock().unwrap().remove(&p.base).unwrap();
    }
    // Chunk 2 unchanged (its pieced entry's base is gone), chunk 4 changed again (its base is
    // gone): both stored whole.
    let mut third = second.clone();
    third[4 * mib + 200] ^= 1;
    let (m3, s3) =
        capture(Cursor::new(&third), &CaptureOptions { parent: Some(m2.into()), ..opts() }, &store, &NoProgress)
            .unwrap();
    assert_eq!((s3.pieced_chunks, s3.new_chunks, s3.new_patches), (0, 2, 0), "{s3:?}");
    assert!(
        matches!(m3.regions[0].chunks[2], ChunkRef::Data(_)) && matches!(m3.regions[0].chunks[4], ChunkRef::Data(_))
    );
    let mut target = Cursor::new(vec![0u8; third.len()]);
    restore(&m3, &store, &mut target, third.len() as u64, &RestoreOptions::default(), &NoProgress).unwrap();
    assert!(target.into_inner() == third);
}

/// Without a parent, or with piece size 0, nothing is pieced.
#[test]
fn pieces_need_a_parent_and_a_piece_size() {
    let first = disk();
    let store = MemStore::default();
    let (m1, _) = capture(Cursor::new(&first), &opts(), &store, &NoProgress).unwrap();
    let mut second = first.clone();
    second[(2 << 20) + 10] ^= 1;
    let (_, s) = capture(Cursor::new(&second), &opts(), &store, &NoProgress).unwrap();
    assert_eq!((s.pieced_chunks, s.new_chunks), (0, 1));
    second[(2 << 20) + 11] ^= 1;
    let off = CaptureOptions { parent: Some(std::sync::Arc::new(m1)), piece_size: 0, ..opts() };
    let (_, s) = capture(Cursor::new(&second), &off, &store, &NoProgress).unwrap();
    assert_eq!((s.pieced_chunks, s.new_chunks), (0, 1));
}
