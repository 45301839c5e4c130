//! A snapshot set (a host's several disks) through the CLI, without a netboot: `kura image
//! capture --server URL --host H DISK1 DISK2` captures two disk images of one host as one set;
//! `kura image show SET` lists each disk (name, size, own snapshot id, layout, regions; `--json`
//! too) and marks the boot disk; `kura mount SET DIR` exposes `disk0`, `disk0-partN`, `disk1`,
//! `disk1-partN`, each disk reading as a restore of its own snapshot writes it; `kura verify
//! --boot SET` boots the set's boot disk (the one with an EFI system partition, here the second)
//! with the other attached, to userspace, and names it; commands that take one disk (`kura nbd`) refuse the set naming its disks, and a local store
//! refuses several disks.
//!
//! ```text
//!   disk0  small.img      48 MiB  GPT: ext4, FAT16                        (data)
//!   disk1  system.img    176 MiB  GPT: BIOS boot, ESP, ext4 root, data  (boot: has the ESP)
//! ```
//!
//! The system disk is `kura_tests::bootdisk`'s (GRUB for BIOS and UEFI, an ext4 root whose init
//! prints a marker); its layout has a BIOS boot partition, so the test machine runs SeaBIOS.
//!
//! Root (FUSE mount); needs fuse3 (`fusermount3`), QEMU and GRUB's packages (`bootdisk`).

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use kura_tests::bootdisk;
use kura_tests::content::sha256_file;
use kura_tests::engine::Server as EngineServer;
use kura_tests::fixtures;
use kura_tests::kura_cli::{kura_bin, Store};

#[test]
fn a_snapshot_set_is_shown_mounted_and_boot_tested_disk_by_disk() {
    assert_eq!(std::fs::metadata("/proc/self").unwrap().uid(), 0, "kura mount needs root");
    assert!(
        std::path::Path::new("/usr/bin/fusermount3").exists(),
        "fusermount3 is missing: install the Debian package fuse3"
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let data = fixtures::small_gpt(w);
    let system = bootdisk::build(w, "system.img", "set-boot");
    let boot = &system.disk;
    let server = EngineServer::start(&w.join("engine"));

    // A local store takes one disk only.
    let store = Store::new(w.join("store"));
    let r = Command::new(kura_bin())
        .args(["image", "capture"])
        .args([&data.path, &boot.path])
        .arg("--store")
        .arg(&store.dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("snapshot set") && err.contains("--server"), "{err}");

    // Capture: data disk first, the boot disk second.
    let r = server.kura(&[&"image", &"capture", &data.path, &boot.path, &"--host", &"srv01", &"--json"]);
    assert!(r.success(), "{r}\n{}", server.log());
    let cap: Value = r.json();
    let set = cap["snapshot"].as_str().expect("the set's id").to_string();
    assert_eq!(cap["disks"].as_array().map(Vec::len), Some(2), "{cap:#}");

    // Show, JSON.
    let r = server.kura(&[&"image", &"show", &set, &"--json"]);
    assert!(r.success(), "{r}");
    let shown: Value = r.json();
    assert_eq!(shown["id"], set.as_str());
    assert_eq!(shown["set"], true);
    assert_eq!(shown["host"], "srv01");
    let disks = shown["disks"].as_array().expect("disks");
    assert_eq!(disks.len(), 2, "{shown:#}");
    let mut members = Vec::new();
    for (k, (d, src)) in disks.iter().zip([&data, boot]).enumerate() {
        assert_eq!(d["index"], k);
        assert_eq!(d["name"], src.path.file_name().unwrap().to_str().unwrap());
        assert_eq!(d["size"], src.size, "disk{k}");
        assert_eq!(d["layout"]["scheme"], "gpt", "disk{k}: {d:#}");
        assert_eq!(d["layout"]["partitions"].as_array().map(Vec::len), Some(src.partitions.len()), "disk{k}");
        let parts = d["regions"].as_array().unwrap().iter().filter(|r| r["partition"].is_number()).count();
        assert_eq!(parts, src.partitions.len(), "disk{k}: a region per partition");
        let id = d["snapshot"].as_str().expect("the disk's own snapshot id").to_string();
        assert_ne!(id, set);
        members.push(id);
    }
    assert_ne!(members[0], members[1]);
    assert_eq!((disks[0]["boot"].as_bool(), disks[1]["boot"].as_bool()), (Some(false), Some(true)), "ESP rule");

    // Show, text; and a member by its own id is an ordinary one-disk snapshot.
    let r = server.kura(&[&"image", &"show", &set]);
    assert!(r.success(), "{r}");
    for want in ["snapshot set", "disk0  small.img", "disk1  system.img", "(boot disk)", &members[0], &members[1]] {
        assert!(r.stdout.contains(want), "{want:?} missing:\n{}", r.stdout);
    }
    let r = server.kura(&[&"image", &"show", &members[1], &"--json"]);
    assert!(r.success(), "{r}");
    let one: Value = r.json();
    assert_eq!(one["id"], members[1].as_str());
    assert!(one.get("set").is_none(), "{one:#}");

    // A command that takes one disk refuses the set and says how to name one.
    let r = server.kura(&[&"nbd", &set, &"--listen", &format!("unix:{}", w.join("nbd.sock").display())]);
    assert!(!r.success() && r.stderr.contains("set of 2 disks") && r.stderr.contains("kura image show"), "{r}");

    // Mount: every disk and partition, each disk's bytes.
    let dir = w.join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let log = w.join("mount.log");
    let mut child = server.spawn_kura(&[&"mount", &set, &dir], &log);
    let t0 = Instant::now();
    while !dir.join("disk1").exists() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(child.try_wait().is_none(), "kura mount ended:\n{text}");
        assert!(t0.elapsed() < Duration::from_secs(30), "not mounted after 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).stderr(Stdio::null()).status();
        }
    }
    let guard = Unmount(&dir);
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut want: Vec<String> = Vec::new();
    for (k, src) in [&data, boot].into_iter().enumerate() {
        want.push(format!("disk{k}"));
        want.extend(src.partitions.iter().map(|p| format!("disk{k}-part{}", p.number)));
    }
    want.sort();
    assert_eq!(names, want);
    for (k, src) in [&data, boot].into_iter().enumerate() {
        for p in &src.partitions {
            let meta = std::fs::metadata(dir.join(format!("disk{k}-part{}", p.number))).unwrap();
            assert_eq!((meta.len(), meta.mode() & 0o777), (p.size, 0o400), "disk{k}-part{}", p.number);
        }
    }
    // disk0 reads as a restore of its own snapshot writes it; disk1 is as large as its source.
    let restored = w.join("disk0-restored.img");
    server.restore(&members[0], &restored);
    assert_eq!(sha256_file(&dir.join("disk0")), sha256_file(&restored), "disk0 through the mount");
    std::fs::remove_file(&restored).unwrap();
    assert_eq!(std::fs::metadata(dir.join("disk1")).unwrap().len(), boot.size);
    drop(guard);
    let t0 = Instant::now();
    while child.try_wait().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(20), "kura mount still runs after umount");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The boot test boots disk1 (the ESP) with disk0 attached, to the system's marker.
    let marker = system.marker_line();
    let t0 = Instant::now();
    let r = server.kura(&[&"verify", &"--boot", &set, &"--expect", &marker, &"--stall", &"120", &"--json"]);
    let took = t0.elapsed();
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert_eq!(v["snapshot"], set.as_str(), "{v:#}");
    assert_eq!(v["boot_disk"], members[1].as_str(), "{v:#}");
    assert_eq!(v["disks"], 2, "{v:#}");
    assert_eq!(v["firmware"], "bios", "{v:#}");
    assert!(r.success() && v["passed"] == true, "{v:#}");
    eprintln!("boot test of the set: {:.1?}, {}", took, v["reason"]);
}
