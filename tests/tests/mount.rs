//! `kura mount SNAPSHOT DIR`: a snapshot's disk and partitions as read-only files through FUSE,
//! loop-mounted with the kernel's own ext4 driver.
//!
//! The imaging suite's GPT Linux disk is captured into a store; `kura mount` shows `disk` and
//! `part1`..`part5` with the sizes of the disk and its partitions; the ext4 root partition's
//! file (`part3`) loop-mounted read-only holds exactly the tree of the source disk's partition
//! mounted the same way; nothing can be written; `umount DIR` ends the `kura mount` process.
//!
//! Root (loop and FUSE mounts); needs fuse3 (`fusermount3`).

use kura_tests::fixtures;
use kura_tests::kura_cli::{kura_bin, Store};
use kura_tests::lvm::{tree_digests, Mounted};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_snapshots_partition_loop_mounts_through_kura_mount_with_the_source_tree() {
    assert_eq!(std::fs::metadata("/proc/self").unwrap().uid(), 0, "kura mount and loop mounts need root");
    assert!(
        std::path::Path::new("/usr/bin/fusermount3").exists(),
        "fusermount3 is missing: install the Debian package fuse3"
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let disk = fixtures::gpt_linux(w);
    let store = Store::new(w.join("store"));
    let snapshot = store.capture(&disk.path, Some("mount")).snapshot;
    let dir = w.join("mnt");
    std::fs::create_dir(&dir).unwrap();

    let log = std::fs::File::create(w.join("mount.log")).unwrap();
    let mut child = Command::new(kura_bin())
        .args(["mount", &snapshot, dir.to_str().unwrap(), "--store", store.dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dir.join("disk").exists() {
        let log = std::fs::read_to_string(w.join("mount.log")).unwrap_or_default();
        assert!(child.try_wait().unwrap().is_none(), "kura mount ended:\n{log}");
        assert!(t0.elapsed() < Duration::from_secs(30), "not mounted after 30 s:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Unmounted at the end even when an assertion fails.
    struct Unmount<'a>(&'a std::path::Path, std::process::Child);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).stderr(Stdio::null()).status();
            let _ = self.1.kill();
            let _ = self.1.wait();
        }
    }
    let mut guard = Unmount(&dir, child);

    // The files and their sizes.
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["disk", "part1", "part2", "part3", "part4", "part5"]);
    assert_eq!(std::fs::metadata(dir.join("disk")).unwrap().len(), disk.size);
    for p in &disk.partitions {
        let meta = std::fs::metadata(dir.join(format!("part{}", p.number))).unwrap();
        assert_eq!((meta.len(), meta.mode() & 0o777), (p.size, 0o400), "part{}", p.number);
    }
    // Read-only.
    assert!(std::fs::OpenOptions::new().write(true).open(dir.join("part3")).is_err());

    // The ext4 root, loop-mounted from the FUSE file and from the source disk.
    let root = disk.partition(3);
    let source =
        Mounted::new("ext4", &disk.path, &format!("ro,loop,noload,offset={},sizelimit={}", root.offset, root.size));
    let want = tree_digests(source.path());
    let t0 = Instant::now();
    let got = {
        let from_snapshot = Mounted::new("ext4", &dir.join("part3"), "ro,loop,noload");
        tree_digests(from_snapshot.path())
    };
    eprintln!("{} files of part3 read through kura mount in {:.1} s", got.len(), t0.elapsed().as_secs_f64());
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(got, want, "the tree through kura mount differs from the source partition's");
    drop(source);

    // `umount DIR` ends kura mount.
    let st = Command::new("umount").arg(&dir).status().unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    loop {
        if let Some(st) = guard.1.try_wait().unwrap() {
            assert!(st.success(), "kura mount: {st}\n{}", std::fs::read_to_string(w.join("mount.log")).unwrap());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "kura mount still runs after umount");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.join("disk").exists());
}
