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
    let victim = match m.regions[0].chunks[2] {
        ChunkRef::Data(d) => d,
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
