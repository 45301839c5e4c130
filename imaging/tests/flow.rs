//! The capture and restore flows over an in-memory snapshot sink and target: commit or abort,
//! nothing opened before the preflight passed, a created target discarded on failure, and the
//! backup GPT moved only on a larger GPT target.

use kura_imaging::capture::CaptureOptions;
use kura_imaging::chunk::{ChunkSink, ChunkSource, Digest};
use kura_imaging::diskmap::DiskIdentity;
use kura_imaging::diskset::SnapshotSet;
use kura_imaging::flow::{
    capture_flow, capture_set_flow, restore_flow, restore_set_flow, CaptureError, Opened, RestoreError,
    RestoreObserver, RestoreStep, RestoreTarget, SnapshotSink,
};
use kura_imaging::layout::{read_layout, Scheme};
use kura_imaging::manifest::Manifest;
use kura_imaging::progress::{NoProgress, Progress};
use kura_imaging::Error;
use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Default)]
struct MemStore {
    chunks: Mutex<HashMap<Digest, Vec<u8>>>,
    full: bool,
    aborted: AtomicBool,
    committed: Mutex<Option<Manifest>>,
    committed_set: Mutex<Option<SnapshotSet>>,
}

impl ChunkSink for MemStore {
    fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, Error> {
        let c = self.chunks.lock().unwrap();
        Ok(digests.iter().map(|d| !c.contains_key(d)).collect())
    }
    fn put_chunk(&self, d: &Digest, blob: &[u8]) -> Result<bool, Error> {
        if self.full {
            return Err(Error::StoreFull { message: "the store is full".into() });
        }
        Ok(self.chunks.lock().unwrap().insert(*d, blob.to_vec()).is_none())
    }
}

impl ChunkSource for MemStore {
    fn get_chunk(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        self.chunks.lock().unwrap().get(d).cloned().ok_or(Error::ChunkMissing { digest: d.to_hex() })
    }
}

impl SnapshotSink for MemStore {
    type Committed = String;
    fn commit(&self, m: &Manifest) -> Result<String, Error> {
        let bytes = m.encode()?;
        *self.committed.lock().unwrap() = Some(m.clone());
        Ok(Manifest::id_of(&bytes))
    }
    fn commit_set(&self, s: &SnapshotSet) -> Result<String, Error> {
        *self.committed_set.lock().unwrap() = Some(s.clone());
        Ok(Manifest::id_of(&s.encode()?))
    }
    fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
    }
}

/// A disk in memory of `len` bytes that claims to be `size` bytes (a larger claim makes
/// writes past `len` fail).
struct MemTarget {
    size: u64,
    len: usize,
    fill: u8,
    opened: bool,
    discarded: bool,
}

impl MemTarget {
    fn new(size: u64) -> MemTarget {
        MemTarget { size, len: size as usize, fill: 0xAA, opened: false, discarded: false }
    }
}

impl RestoreTarget for MemTarget {
    type Disk = Cursor<Box<[u8]>>;
    fn name(&self) -> String {
        "mem".into()
    }
    fn size(&mut self, _needed: u64) -> Result<u64, Error> {
        Ok(self.size)
    }
    fn open(&mut self) -> Result<Opened<Self::Disk>, Error> {
        self.opened = true;
        Ok(Opened { disk: Cursor::new(vec![self.fill; self.len].into_boxed_slice()), zeroed: false })
    }
    fn sync(&mut self, _disk: &mut Self::Disk) -> Result<(), Error> {
        Ok(())
    }
    fn discard(&mut self) {
        self.discarded = true;
    }
}

/// Records the steps.
#[derive(Default)]
struct Steps(Mutex<Vec<String>>);
impl RestoreObserver for Steps {
    fn checking(&self) -> &dyn Progress {
        &NoProgress
    }
    fn writing(&self) -> &dyn Progress {
        &NoProgress
    }
    fn step(&self, step: &RestoreStep<'_>) {
        self.0.lock().unwrap().push(step.to_string());
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

fn opts() -> CaptureOptions {
    CaptureOptions { threads: 2, source: "mem".into(), ..Default::default() }
}

fn captured(disk: &[u8]) -> (MemStore, Manifest, String) {
    let store = MemStore::default();
    let (id, stats) = capture_flow(Cursor::new(disk), &opts(), &store, &NoProgress, |_| Ok(())).unwrap();
    assert_eq!(stats.disk_size, disk.len() as u64);
    assert!(!store.aborted.load(Ordering::SeqCst));
    let m = store.committed.lock().unwrap().take().expect("committed");
    (store, m, id)
}

#[test]
fn a_failed_capture_aborts_and_never_commits() {
    let store = MemStore { full: true, ..Default::default() };
    let mut hook_ran = false;
    let e = capture_flow(Cursor::new(noise(1 << 20, 3)), &opts(), &store, &NoProgress, |_| {
        hook_ran = true;
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(e, CaptureError::Capture { .. }), "{e:?}");
    assert_eq!(e.to_string(), "capturing mem");
    assert!(store.aborted.load(Ordering::SeqCst), "the session is aborted");
    assert!(!hook_ran, "nothing is committed");

    // A failure right before the commit aborts too.
    let store = MemStore::default();
    let e = capture_flow(Cursor::new(noise(1 << 20, 3)), &opts(), &store, &NoProgress, |_| Err(Error::Cancelled))
        .unwrap_err();
    assert!(matches!(e, CaptureError::Commit(Error::Cancelled)), "{e:?}");
    assert!(store.aborted.load(Ordering::SeqCst));
}

#[test]
fn a_small_target_or_a_missing_chunk_is_refused_before_opening_it() {
    let disk = noise(3 << 20, 5);
    let (store, m, id) = captured(&disk);

    let mut small = MemTarget::new(2 << 20);
    let e = restore_flow(&id, &m, &store, &mut small, 2, &Steps::default()).unwrap_err();
    assert!(matches!(e, RestoreError::Refused { .. }), "{e:?}");
    let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(text.contains("cannot be restored") && text.contains("nothing was written"), "{text}");
    assert!(text.contains("too small"), "{text}");
    assert!(!small.opened && !small.discarded);

    let victim = *store.chunks.lock().unwrap().keys().next().unwrap();
    store.chunks.lock().unwrap().remove(&victim);
    let mut t = MemTarget::new(3 << 20);
    let e = restore_flow(&id, &m, &store, &mut t, 2, &Steps::default()).unwrap_err();
    assert!(
        matches!(&e, RestoreError::Refused { source: Error::ChunkMissing { digest }, .. } if *digest == victim.to_hex())
    );
    assert!(!t.opened, "the target is never opened");
}

#[test]
fn a_write_failure_discards_the_target() {
    let disk = noise(2 << 20, 7);
    let (store, m, id) = captured(&disk);
    // Claims 2 MiB but holds 1: the write pass fails half way.
    let mut t = MemTarget { len: 1 << 20, ..MemTarget::new(2 << 20) };
    let e = restore_flow(&id, &m, &store, &mut t, 2, &Steps::default()).unwrap_err();
    assert!(matches!(e, RestoreError::Failed { .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("restoring snapshot {id} onto mem"));
    assert!(t.opened && t.discarded);
}

#[test]
fn an_unpartitioned_disk_onto_a_larger_target_moves_nothing() {
    let disk = noise(2 << 20, 9);
    let (store, m, id) = captured(&disk);
    assert_eq!(m.layout.scheme, Scheme::None);
    let steps = Steps::default();
    let mut t = MemTarget::new(3 << 20);
    let stats = restore_flow(&id, &m, &store, &mut t, 2, &steps).unwrap();
    assert_eq!(stats.written_bytes, 2 << 20);
    let steps = steps.0.into_inner().unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(steps[0].starts_with(&format!("preflight: snapshot {id} (2097152 bytes) onto mem (3145728 bytes)")));
    assert_eq!(steps[1], "preflight passed; writing mem");
}

/// A GPT disk restored onto a larger target ends with its backup GPT at the new end.
#[test]
fn a_gpt_disk_onto_a_larger_target_gets_its_backup_gpt_moved() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    let out = std::process::Command::new("sgdisk")
        .args(["-n1:2048:+2M", "-t1:8300", "-n2:0:0", "-t2:8300"])
        .arg(&img)
        .output()
        .expect("sgdisk (apt-get install gdisk)");
    assert!(out.status.success(), "{out:?}");
    let disk = std::fs::read(&img).unwrap();
    let (store, m, id) = captured(&disk);
    assert_eq!(m.layout.scheme, Scheme::Gpt);

    struct Keep(MemTarget, Option<Box<[u8]>>);
    impl RestoreTarget for Keep {
        type Disk = Cursor<Box<[u8]>>;
        fn name(&self) -> String {
            self.0.name()
        }
        fn size(&mut self, needed: u64) -> Result<u64, Error> {
            self.0.size(needed)
        }
        fn open(&mut self) -> Result<Opened<Self::Disk>, Error> {
            self.0.open()
        }
        fn sync(&mut self, disk: &mut Self::Disk) -> Result<(), Error> {
            self.1 = Some(disk.get_ref().clone());
            Ok(())
        }
    }
    let steps = Steps::default();
    let mut t = Keep(MemTarget { fill: 0, ..MemTarget::new(12 << 20) }, None);
    restore_flow(&id, &m, &store, &mut t, 2, &steps).unwrap();
    let steps = steps.0.into_inner().unwrap();
    assert_eq!(steps.last().unwrap(), "mem is larger than the captured disk: moved the backup GPT to its end");
    let written = t.1.unwrap();
    let after = read_layout(&mut Cursor::new(&written[..]), 12 << 20).unwrap();
    assert!(after.warnings.is_empty(), "{:?}", after.warnings);
    assert_eq!(after.gpt.unwrap().backup_header_lba, (12 << 20) / 512 - 1);
    assert_eq!(after.partitions, m.layout.partitions);
}

/// Issue 11: two disks captured as one set (one commit, shared chunks once); restoring it
/// sizes and checks every target before opening any: a too-small second target leaves the
/// first unopened too.
#[test]
fn a_set_is_committed_once_and_restored_only_when_every_target_passes() {
    let (a, b) = (noise(2 << 20, 11), noise(3 << 20, 12));
    let store = MemStore::default();
    let disk = |name: &str, len: usize| DiskIdentity { name: name.into(), size: len as u64, ..Default::default() };
    let set = SnapshotSet { name: None, created: "2026-12-07T03:00:00Z".into(), host: None, members: vec![] };
    let sources = vec![
        (disk("vda", a.len()), Cursor::new(a.clone()), opts()),
        (disk("vdb", b.len()), Cursor::new(b.clone()), opts()),
    ];
    let (id, stats) = capture_set_flow(sources, set, &store, &NoProgress, |s| {
        assert_eq!(s.len(), 2);
        Ok(())
    })
    .unwrap();
    assert_eq!(stats.len(), 2);
    assert!(store.committed.lock().unwrap().is_none(), "no member is committed on its own");
    let set = store.committed_set.lock().unwrap().take().expect("the set is committed");
    assert_eq!(id, Manifest::id_of(&set.encode().unwrap()));
    assert_eq!(set.members.iter().map(|m| m.disk.name.as_str()).collect::<Vec<_>>(), ["vda", "vdb"]);

    let mut pairs = vec![(0, MemTarget::new(2 << 20)), (1, MemTarget::new(2 << 20))];
    let e = restore_set_flow(&id, &set, &mut pairs, &store, 2, &Steps::default()).unwrap_err();
    assert!(matches!(e, RestoreError::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains("disk vdb") && e.to_string().contains("nothing was written"), "{e}");
    assert!(pairs.iter().all(|(_, t)| !t.opened), "a target was opened before every preflight passed");

    let mut pairs = vec![(1, MemTarget::new(3 << 20)), (0, MemTarget::new(4 << 20))];
    let stats = restore_set_flow(&id, &set, &mut pairs, &store, 2, &Steps::default()).unwrap();
    assert_eq!(stats.iter().map(|s| s.written_bytes).collect::<Vec<_>>(), [3 << 20, 2 << 20]);
    assert!(pairs.iter().all(|(_, t)| t.opened && !t.discarded));

    // A failing member aborts the set's session; nothing is committed.
    let store = MemStore { full: true, ..Default::default() };
    let sources = vec![(disk("vda", a.len()), Cursor::new(a), opts())];
    let set = SnapshotSet { name: None, created: "2026-12-07T03:00:00Z".into(), host: None, members: vec![] };
    assert!(capture_set_flow(sources, set, &store, &NoProgress, |_| Ok(())).is_err());
    assert!(store.aborted.load(Ordering::SeqCst) && store.committed_set.lock().unwrap().is_none());
}
