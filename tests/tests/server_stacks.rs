//! Linux server storage stacks captured and restored: a RHEL-style disk (GPT: ESP FAT32, `/boot`
//! XFS, an LVM2 PV holding VG `rhel` with LVs `root` (XFS), `home` (XFS, in two segments) and
//! `swap`; deleted files in the filesystems' free space and old junk in the free extents) and a
//! SUSE-style disk (btrfs root with subvolumes and a read-only snapshot, deleted files, swap).
//!
//! Each is captured into a store and restored onto a blank image. Checked: only used blocks
//! are stored (no junk byte in the store), the restored filesystems pass `xfs_repair -n` /
//! `btrfs check --readonly` / `fsck.vfat -n`, LVM's own `lvs` reads the same volume group from the
//! restored PV, and every file is identical (each filesystem mounted read-only through a loop
//! device). The stored size is printed beside `partclone.{vfat,xfs,btrfs}` + `zstd` of the same
//! filesystems.
//!
//! The LVM volume group is made with LVM's tools with activation off (the sandbox has no
//! device-mapper): the LVs' filesystems are made in their own image files and written into the
//! PV at the extents `lvs` reports. Needs lvm2, xfsprogs, btrfs-progs, dosfstools, partclone,
//! zstd and a kernel with XFS and btrfs (mounts through loop devices).

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kura_diskgen::bulk::{generate_files, SystemFiles};
use kura_diskgen::content::{random_bytes, XorShift};
use kura_tests::disks::{build_gpt, Content, Fs, PartSpec, MIB};
use kura_tests::kura_cli::Store;
use kura_tests::lvm::{self, lvm, move_lv, segments, tree_digests, Loop, Mounted};
use kura_tests::store::find_sectors;
use kura_tests::tools::{run, run_unchecked};

/// Junk written into free space, looked for in the store afterwards.
fn junk(seed: u64) -> Vec<u8> {
    random_bytes(seed, 4 * MIB as usize)
}

/// Fills `dir` with `budget` bytes: real system files (compressible) and generated ones.
fn fill(dir: &Path, budget: u64, seed: u64) {
    let copied = SystemFiles::new().copy_into(&dir.join("usr"), budget / 2).unwrap();
    let mut rng = XorShift::new(seed);
    generate_files(&dir.join("var/log"), (budget - copied) / 2, &[300_000, 2_000_000, 40_000], &mut rng, false)
        .unwrap();
    generate_files(&dir.join("srv"), (budget - copied) / 2, &[8_000_000, 100_000], &mut rng, true).unwrap();
}

/// An XFS image of `size` bytes holding `budget` bytes of files and the deleted `junk` files.
fn xfs_image(path: &Path, size: u64, label: &str, budget: u64, junk_seeds: &[u64]) -> BTreeMap<String, String> {
    lvm::xfs_image(path, size, &["-L", label], |root| {
        for &s in junk_seeds {
            std::fs::write(root.join(format!("junk{s}")), junk(s)).unwrap();
        }
        run("sync", [] as [&str; 0]);
        fill(root, budget, size ^ budget);
        for &s in junk_seeds {
            std::fs::remove_file(root.join(format!("junk{s}"))).unwrap();
        }
    })
}

/// `partclone.TYPE -c` of `image` + `zstd -3`: the compressed size.
fn partclone_zstd(kind: &str, image: &Path, work: &Path) -> u64 {
    let pc = work.join(format!("{}.pc", image.file_name().unwrap().to_str().unwrap()));
    run(&format!("partclone.{kind}"), ["-q", "-c", "-s", image.to_str().unwrap(), "-O", pc.to_str().unwrap()]);
    run("zstd", ["-q", "-f", "-3", "-T0", "--rm", pc.to_str().unwrap()]);
    let zst = PathBuf::from(format!("{}.zst", pc.display()));
    let len = std::fs::metadata(&zst).unwrap().len();
    std::fs::remove_file(zst).unwrap();
    len
}

fn check_ok(tool: &str, args: &[&str]) {
    let out = run_unchecked(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_rhel_style_disk_with_lvm_and_xfs_round_trips_storing_only_used_blocks() {
    kura_tests::space::require_free(
        4 * kura_tests::space::GIB,
        "the RHEL-style disk, its LV images, store and restore",
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let vg = lvm::unique_name("rhel");
    let ext = 4 * MIB;
    let pe_start = MIB;

    // ESP and /boot.
    let esp = w.join("esp.img");
    std::fs::File::create(&esp).unwrap().set_len(100 * MIB).unwrap();
    run("mkfs.vfat", ["-F", "32", "-n", "ESP", esp.to_str().unwrap()]);
    let esp_src = w.join("esp-src");
    std::fs::create_dir_all(esp_src.join("EFI/redhat")).unwrap();
    std::fs::write(esp_src.join("EFI/redhat/grubx64.efi"), random_bytes(1, 2 * MIB as usize)).unwrap();
    std::fs::write(esp_src.join("EFI/redhat/grub.cfg"), b"set default=0\n").unwrap();
    run("mcopy", ["-s", "-i", esp.to_str().unwrap(), esp_src.join("EFI").to_str().unwrap(), "::/"]);
    let boot = w.join("boot.img");
    let boot_files = xfs_image(&boot, 320 * MIB, "boot", 60 * MIB, &[11]);

    // The PV: LVs made by LVM's tools, home in two segments (swap between its parts).
    let pv_size = 3672 * MIB;
    let pv = w.join("pv.img");
    std::fs::File::create(&pv).unwrap().set_len(pv_size).unwrap();
    // Old junk all over the PV first: what is in free extents must not be captured.
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&pv).unwrap();
        for i in 0..pv_size / (64 * MIB) {
            f.seek(SeekFrom::Start(i * 64 * MIB + 8 * MIB)).unwrap();
            f.write_all(&junk(100 + i)).unwrap();
        }
    }
    let lvs = ["root", "home", "swap"];
    let segs: Vec<Vec<(u64, u64, u64)>>;
    let source_lvs: String;
    {
        let lp = Loop::attach(&[pv.to_str().unwrap()]);
        let d = lp.0.as_str();
        lvm(d, "pvcreate", &["-y", d]);
        lvm(d, "vgcreate", &["-s", "4m", &vg, d]);
        lvm(d, "lvcreate", &["-an", "-Zn", "-y", "-L", "1200m", "-n", "root", &vg]);
        lvm(d, "lvcreate", &["-an", "-Zn", "-y", "-L", "400m", "-n", "home", &vg]);
        lvm(d, "lvcreate", &["-an", "-Zn", "-y", "-L", "128m", "-n", "swap", &vg]);
        lvm(d, "lvextend", &["-L", "+200m", &format!("{vg}/home")]);
        segs = lvs.iter().map(|n| segments(d, &vg, n)).collect();
        // The loop device's name in it replaced: the restored PV's may differ.
        source_lvs = lvm(d, "lvs", &["--noheadings", "-o", "lv_name,seg_pe_ranges,lv_size", &vg]).replace(d, "PV");
    }
    assert_eq!(segs[1].len(), 2, "home is in two segments: {:?}", segs[1]);
    let lv_img = |n: &str| w.join(format!("lv-{n}.img"));
    let root_files = xfs_image(&lv_img("root"), 1200 * MIB, "root", 520 * MIB, &[21, 22]);
    let home_files = xfs_image(&lv_img("home"), 600 * MIB, "home", 300 * MIB, &[31]);
    std::fs::File::create(lv_img("swap")).unwrap().set_len(128 * MIB).unwrap();
    run("mkswap", ["-L", "swap", lv_img("swap").to_str().unwrap()]);
    for (n, s) in lvs.iter().zip(&segs) {
        move_lv(&pv, &lv_img(n), s, pe_start, ext, true);
    }

    let disk = build_gpt(
        w,
        "rhel.img",
        4096 * MIB,
        vec![
            PartSpec::gpt(100 * MIB, "ef00", "EFI System Partition", Content::Image { fs: Fs::Raw, path: esp.clone() }),
            PartSpec::gpt(320 * MIB, "8300", "boot", Content::Image { fs: Fs::Raw, path: boot.clone() }),
            PartSpec::gpt(pv_size, "8e00", "lvm", Content::Image { fs: Fs::Raw, path: pv.clone() }),
        ],
    );
    std::fs::remove_file(&pv).unwrap();
    let part = |n: u32| disk.partition(n).clone();

    let store = Store::new(w.join("store"));
    let cap = store.capture(&disk.path, None);
    eprintln!("{cap:?}");
    assert!(cap.warnings.is_empty(), "unexpected warnings: {:?}", cap.warnings);
    let show = kura_tests::kura_cli::run(["image", "show", &cap.snapshot, "--store", store.dir.to_str().unwrap()]);
    eprintln!("{}", show.stdout);
    // Used: the files plus filesystem metadata and the PV header; never the junk.
    assert!(cap.used_bytes < 1200 * MIB, "used {} bytes", cap.used_bytes);
    let junks: Vec<Vec<u8>> =
        [11u64, 21, 22, 31].into_iter().chain((0..pv_size / (64 * MIB)).map(|i| 100 + i)).map(junk).collect();
    let junk_refs: Vec<&[u8]> = junks.iter().map(|j| j.as_slice()).collect();
    let hits = find_sectors(&store.dir, &junk_refs);
    assert!(
        hits.is_empty(),
        "deleted or free-extent junk found in the store (chunk, offset): {:?}",
        &hits[..hits.len().min(5)]
    );

    // `kura files` reads the logical volumes in place: listed after their PV, the swap LV not
    // readable; `home` (two segments, so its reads cross from one to the other) and `/boot`
    // give exactly their source trees.
    let files = |args: &[&str]| {
        let mut v: Vec<&str> = vec!["files"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--store", store.dir.to_str().unwrap()]);
        kura_tests::kura_cli::run(v)
    };
    let listed: serde_json::Value = files(&["ls", &cap.snapshot, "--json"]).expect_success().json();
    let volume = |name: &str| {
        let v = listed.as_array().unwrap().iter().find(|p| p["volume"] == format!("{vg}/{name}").as_str());
        v.unwrap_or_else(|| panic!("no volume {name}: {listed}")).clone()
    };
    for (name, fs, readable) in [("root", "xfs", true), ("home", "xfs", true), ("swap", "swap", false)] {
        let v = volume(name);
        assert_eq!(
            (v["number"].as_u64(), v["fs"].as_str(), v["readable"].as_bool()),
            (Some(3), Some(fs), Some(readable)),
            "{v}"
        );
    }
    files(&["ls", &cap.snapshot, "3:/"]).expect_failure_mentioning(&["LVM physical volume", "3/VG/LV"]);
    for (spec, want) in [(format!("3/{vg}/home:/"), &home_files), ("2:/".to_string(), &boot_files)] {
        let to = w.join(format!("files-{}", want.len()));
        files(&["get", &cap.snapshot, &spec, "--to", to.to_str().unwrap()]).expect_success();
        assert_eq!(&tree_digests(&to), want, "kura files get {spec}");
        std::fs::remove_dir_all(&to).unwrap();
    }
    let found = files(&["find", &cap.snapshot, &format!("3/{vg}/root:/**")]);
    let prefix = format!("3/{vg}/root:/");
    let n = found.expect_success().stdout.lines().filter(|l| l.starts_with(&prefix)).count();
    assert!(n >= root_files.len(), "{n} entries found in root, {} files in its source", root_files.len());

    // The peers on the same filesystems.
    let peer = partclone_zstd("vfat", &esp, w)
        + partclone_zstd("xfs", &boot, w)
        + partclone_zstd("xfs", &lv_img("root"), w)
        + partclone_zstd("xfs", &lv_img("home"), w);
    eprintln!(
        "RHEL-style disk of {} MiB, {} MiB used: kura stores {} bytes, partclone.{{vfat,xfs}} + zstd -3 {} bytes ({:.3}×)",
        disk.size / MIB,
        cap.used_bytes / MIB,
        cap.new_stored_bytes,
        peer,
        cap.new_stored_bytes as f64 / peer as f64
    );
    assert!(cap.new_stored_bytes < peer + peer / 10, "kura stores {} against partclone's {peer}", cap.new_stored_bytes);

    let restored = w.join("restored.img");
    store.restore(&cap.snapshot, &restored);
    std::fs::remove_file(&disk.path).unwrap();

    // ESP and /boot.
    let esp_back = w.join("esp-back.img");
    kura_tests::checkers::extract(&restored, part(1).offset, part(1).size, &esp_back);
    check_ok("fsck.vfat", &["-n", esp_back.to_str().unwrap()]);
    let boot_back = w.join("boot-back.img");
    kura_tests::checkers::extract(&restored, part(2).offset, part(2).size, &boot_back);
    check_ok("xfs_repair", &["-n", boot_back.to_str().unwrap()]);
    assert_eq!(tree_digests(Mounted::new("xfs", &boot_back, "ro,loop").path()), boot_files, "/boot");

    // LVM reads the same VG from the restored PV; each LV's filesystem comes back whole.
    let pv_back = w.join("pv-back.img");
    kura_tests::checkers::extract(&restored, part(3).offset, part(3).size, &pv_back);
    std::fs::remove_file(&restored).unwrap();
    {
        let lp = Loop::attach(&[pv_back.to_str().unwrap()]);
        let d = lp.0.as_str();
        lvm(d, "pvck", &[d]);
        let back = lvm(d, "lvs", &["--noheadings", "-o", "lv_name,seg_pe_ranges,lv_size", &vg]);
        assert_eq!(back.replace(d, "PV"), source_lvs, "lvs of the restored PV");
    }
    for ((n, s), files) in lvs.iter().zip(&segs).zip([Some(&root_files), Some(&home_files), None]) {
        let back = w.join(format!("back-{n}.img"));
        std::fs::File::create(&back).unwrap().set_len(s.iter().map(|x| x.2).sum::<u64>() * ext).unwrap();
        move_lv(&pv_back, &back, s, pe_start, ext, false);
        match files {
            Some(files) => {
                check_ok("xfs_repair", &["-n", back.to_str().unwrap()]);
                assert_eq!(&tree_digests(Mounted::new("xfs", &back, "ro,loop").path()), files, "LV {n}");
            }
            None => {
                let id = run("blkid", ["-o", "value", "-s", "TYPE", back.to_str().unwrap()]);
                assert_eq!(id.trim(), "swap");
            }
        }
        std::fs::remove_file(back).unwrap();
    }
}

#[test]
fn a_suse_style_btrfs_root_with_subvolumes_and_snapshots_round_trips() {
    kura_tests::space::require_free(2 * kura_tests::space::GIB, "the btrfs disk, its store and restore");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let root = w.join("root.img");
    let size = 900 * MIB;
    std::fs::File::create(&root).unwrap().set_len(size).unwrap();
    run("mkfs.btrfs", ["-q", "-f", "-L", "suse", root.to_str().unwrap()]);
    let files = {
        let m = Mounted::new("btrfs", &root, "loop");
        let p = m.path();
        for sv in ["@", "@/home", "@/var", "@/.snapshots"] {
            run("btrfs", ["subvolume", "create", p.join(sv).to_str().unwrap()]);
        }
        fill(&p.join("@"), 200 * MIB, 1);
        fill(&p.join("@/home"), 80 * MIB, 2);
        std::fs::write(p.join("@/old.log"), junk(41)).unwrap();
        std::fs::write(p.join("@/home/old"), junk(42)).unwrap();
        std::os::unix::fs::symlink("usr/lib", p.join("@/lib")).unwrap();
        run("sync", [] as [&str; 0]);
        run(
            "btrfs",
            ["subvolume", "snapshot", "-r", p.join("@").to_str().unwrap(), p.join("@/.snapshots/1").to_str().unwrap()],
        );
        // Changed after the snapshot: the snapshot keeps the old file, the deleted junk goes.
        std::fs::remove_file(p.join("@/old.log")).unwrap();
        std::fs::remove_file(p.join("@/home/old")).unwrap();
        std::fs::write(p.join("@/etc-hostname"), b"suse01\n").unwrap();
        run("sync", [] as [&str; 0]);
        tree_digests(p)
    };
    assert!(files.keys().any(|k| k.starts_with("@/.snapshots/1/usr")), "the snapshot is walked");
    let disk = build_gpt(
        w,
        "suse.img",
        size + 300 * MIB,
        vec![
            PartSpec::gpt(2 * MIB, "ef02", "bios", Content::Raw(random_bytes(5, 4096))),
            PartSpec::gpt(size, "8300", "root", Content::Image { fs: Fs::Raw, path: root.clone() }),
            PartSpec::gpt(
                256 * MIB,
                "8200",
                "swap",
                Content::Swap { label: "swap", stale: Some(random_bytes(43, 256 * MIB as usize)) },
            ),
        ],
    );
    let p2 = disk.partition(2).clone();

    let store = Store::new(w.join("store"));
    let cap = store.capture(&disk.path, None);
    eprintln!("{cap:?}");
    assert!(cap.warnings.is_empty(), "unexpected warnings: {:?}", cap.warnings);
    let hits = find_sectors(&store.dir, &[&random_bytes(43, 256 * MIB as usize)[64 * MIB as usize..68 * MIB as usize]]);
    assert!(hits.is_empty(), "stale swap found in the store: {hits:?}");
    // The home junk was deleted everywhere (a snapshot of @ does not hold the nested @/home);
    // old.log is deleted from @ but still in its snapshot, so it is kept.
    let hits = find_sectors(&store.dir, &[&junk(42)]);
    assert!(hits.is_empty(), "deleted data found in the store: {hits:?}");
    assert!(!find_sectors(&store.dir, &[&junk(41)]).is_empty(), "the snapshot's file is stored");
    let peer = partclone_zstd("btrfs", &root, w);
    eprintln!(
        "SUSE-style btrfs of {} MiB, {} MiB used: kura stores {} bytes, partclone.btrfs + zstd -3 {} bytes ({:.3}×)",
        size / MIB,
        cap.used_bytes / MIB,
        cap.new_stored_bytes,
        peer,
        cap.new_stored_bytes as f64 / peer as f64
    );
    assert!(cap.new_stored_bytes < peer + peer / 10, "kura stores {} against partclone's {peer}", cap.new_stored_bytes);

    let restored = w.join("restored.img");
    store.restore(&cap.snapshot, &restored);
    let back = w.join("root-back.img");
    kura_tests::checkers::extract(&restored, p2.offset, p2.size, &back);
    check_ok("btrfs", &["check", "--readonly", back.to_str().unwrap()]);
    let m = Mounted::new("btrfs", &back, "ro,loop");
    assert_eq!(tree_digests(m.path()), files, "restored files differ");
}
