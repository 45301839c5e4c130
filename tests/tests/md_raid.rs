//! Linux software RAID (md) members, made by `mdadm --create` itself in a QEMU machine (the
//! host kernel has no md driver; see `kura_tests::md`), captured by `kura image capture` and
//! checked against `mdadm --examine`.
//!
//! One disk holds members of every metadata version (0.90, 1.0, 1.1, 1.2; with and without a
//! write-intent bitmap), a RAID5 and a RAID1 with a spare. Each RAID1 array gets an ext4
//! filesystem written through the md driver (`dd` onto `/dev/mdN` in the guest), its free
//! blocks full of old junk. Checked:
//!
//! - what a capture keeps of each RAID1 member is exactly: everything outside the array's
//!   content on the member (superblock, bitmap, reserve), and inside it what it keeps of the
//!   same ext4 filesystem on a plain partition — placed at the data offset `mdadm --examine`
//!   reports. "Kept" is read from a restore onto a blank file, 4 KiB block by block: a block
//!   of the source that is not all zero comes back either identical (kept) or all zero (left
//!   out as unused); anything else fails;
//! - RAID5 members and the spare are kept whole, with a warning naming the reason.
//!
//! And a RAID1 holding an LVM PV, round-tripped (see its test).
//!
//! Root only. Needs mdadm, lvm2, xfsprogs, gdisk, e2fsprogs, qemu-system-x86, linux-image-amd64,
//! busybox-static.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kura_diskgen::content::{random_bytes, XorShift};
use kura_tests::checkers;
use kura_tests::disks::MIB;
use kura_tests::kura_cli::Store;
use kura_tests::lvm::{lvm, move_lv, pe_start, segments, tree_digests, unique_name, Loop, Mounted};
use kura_tests::md::{examine, in_guest, number, said};
use kura_tests::space::GIB;
use kura_tests::store::find_sectors;
use kura_tests::tools::run;

const PART: u64 = 40 * MIB;
const PARTS: u64 = 14;
const BLOCK: u64 = 4096;
const FS_SIZE: u64 = 24 * MIB;
/// Partition 15: the same ext4 on a plain partition (the reference).
const PLAIN_START: u64 = MIB + PARTS * PART;

/// The arrays: (device, metadata, level, members (partition numbers), spares, bitmap).
struct Array {
    md: &'static str,
    metadata: &'static str,
    level: u32,
    members: &'static [u64],
    spares: &'static [u64],
    bitmap: bool,
}

const ARRAYS: &[Array] = &[
    Array { md: "md0", metadata: "0.90", level: 1, members: &[1, 2], spares: &[], bitmap: true },
    Array { md: "md1", metadata: "1.0", level: 1, members: &[3, 4], spares: &[], bitmap: true },
    Array { md: "md2", metadata: "1.1", level: 1, members: &[5, 6], spares: &[], bitmap: false },
    Array { md: "md3", metadata: "1.2", level: 1, members: &[7, 8], spares: &[], bitmap: true },
    Array { md: "md4", metadata: "1.2", level: 5, members: &[9, 10, 11], spares: &[], bitmap: false },
    Array { md: "md5", metadata: "1.2", level: 1, members: &[12, 13], spares: &[14], bitmap: false },
];

struct Fixture {
    _dir: tempfile::TempDir,
    /// The whole disk.
    disk: PathBuf,
    /// Member partition images, by partition number.
    members: BTreeMap<u64, PathBuf>,
    /// The ext4 image written into each RAID1 array.
    fs_image: Vec<u8>,
}

fn build() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Old junk everywhere first: what the filesystems do not use must not be captured.
    let disk = d.join("members.img");
    let size = PLAIN_START + FS_SIZE + 4 * MIB;
    {
        let mut junk = random_bytes(7, (4 * MIB) as usize);
        let mut f = std::fs::File::create(&disk).unwrap();
        use std::io::Write;
        for i in 0..size.div_ceil(4 * MIB) {
            junk[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&junk).unwrap();
        }
        f.set_len(size).unwrap();
    }
    let mut args = vec!["-Z".to_string()];
    for i in 1..=PARTS {
        let start = (MIB + (i - 1) * PART) / 512;
        args.push(format!("-n{i}:{start}:{}", start + PART / 512 - 1));
        args.push(format!("-t{i}:FD00"));
    }
    args.push(format!("-n{}:{}:{}", PARTS + 1, PLAIN_START / 512, (PLAIN_START + FS_SIZE) / 512 - 1));
    args.push(disk.to_str().unwrap().into());
    run("sgdisk", &args);

    // An ext4 filesystem with files, made over junk (no discard: the junk stays in its free
    // blocks).
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("etc/app")).unwrap();
    let mut rng = XorShift::new(11);
    for i in 0..40u64 {
        let len = (rng.next_u64() % (200 * 1024)) as usize;
        std::fs::write(tree.join(format!("etc/app/file{i}")), random_bytes(100 + i, len)).unwrap();
    }
    let fs = d.join("fs.img");
    std::fs::write(&fs, random_bytes(9, FS_SIZE as usize)).unwrap();
    run(
        "mke2fs",
        ["-q", "-F", "-t", "ext4", "-b", "4096", "-E", "nodiscard", "-d", tree.to_str().unwrap(), fs.to_str().unwrap()],
    );

    let mut script = Vec::new();
    for a in ARRAYS {
        let devs: Vec<String> = a.members.iter().chain(a.spares).map(|p| format!("/dev/vda{p}")).collect();
        script.push(format!(
            "yes | mdadm --create /dev/{md} --run --assume-clean --metadata={meta} --level={level} \
             --raid-devices={n} --spare-devices={s} --bitmap={bitmap} {devs} > /tmp/{md}.log 2>&1; \
             say create {md} rc=$?; cat /tmp/{md}.log > /dev/console",
            md = a.md,
            meta = a.metadata,
            level = a.level,
            n = a.members.len(),
            s = a.spares.len(),
            bitmap = if a.bitmap { "internal" } else { "none" },
            devs = devs.join(" ")
        ));
        if a.level == 1 {
            script.push(format!("dd if=/dev/vdb of=/dev/{md} bs=1M 2>/dev/null; say dd {md} rc=$?", md = a.md));
        }
        script.push(format!("mdadm --stop /dev/{md}; say stop {md} rc=$?", md = a.md));
    }
    let serial = in_guest("md-create", &[&disk, &fs], &script);
    let lines = said(&serial);
    for a in ARRAYS {
        for step in ["create", "stop"].iter().chain((a.level == 1).then_some(&"dd")) {
            assert!(lines.contains(&format!("{step} {} rc=0", a.md)), "guest step {step} {} failed:\n{serial}", a.md);
        }
    }

    // The reference: the same filesystem on a plain partition.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut d = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        d.seek(SeekFrom::Start(PLAIN_START)).unwrap();
        d.write_all(&std::fs::read(&fs).unwrap()).unwrap();
    }
    let bytes = std::fs::read(&disk).unwrap();
    let mut members = BTreeMap::new();
    for i in 1..=PARTS {
        let start = (MIB + (i - 1) * PART) as usize;
        let p = d.join(format!("p{i}.img"));
        std::fs::write(&p, &bytes[start..start + PART as usize]).unwrap();
        members.insert(i, p);
    }
    Fixture { fs_image: std::fs::read(&fs).unwrap(), disk, members, _dir: dir }
}

/// Block `b` (4 KiB) of a byte slice.
fn block(bytes: &[u8], b: u64) -> &[u8] {
    &bytes[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize]
}

/// For each 4 KiB block of `[start, start + len)` of the source: `Some(true)` kept, `Some(false)`
/// left out, `None` all zero in the source (cannot tell). Panics on a block that came back
/// different and not zero.
fn kept(source: &[u8], restored: &[u8], start: u64, len: u64) -> Vec<Option<bool>> {
    (start / BLOCK..(start + len) / BLOCK)
        .map(|b| {
            let (s, r) = (block(source, b), block(restored, b));
            if s.iter().all(|&x| x == 0) {
                assert!(r.iter().all(|&x| x == 0), "block {b}: zero in the source, not in the restore");
                None
            } else if s == r {
                Some(true)
            } else {
                assert!(r.iter().all(|&x| x == 0), "block {b} came back different and not zero");
                Some(false)
            }
        })
        .collect()
}

struct Captured {
    _dir: tempfile::TempDir,
    source: Vec<u8>,
    restored: Vec<u8>,
    warnings: Vec<String>,
}

/// The members disk captured into a store and restored onto a blank file.
fn capture(f: &Fixture) -> Captured {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("store"));
    let report = store.capture(&f.disk, Some("md-members"));
    let target = dir.path().join("restored.img");
    store.restore(&report.snapshot, &target);
    Captured {
        source: std::fs::read(&f.disk).unwrap(),
        restored: std::fs::read(&target).unwrap(),
        warnings: report.warnings,
        _dir: dir,
    }
}

fn part_start(n: u64) -> u64 {
    MIB + (n - 1) * PART
}

/// One disk of members of every kind, captured and restored once (the fixture and its capture
/// are 2 GB of scratch files: built and removed within this one test, not kept in statics,
/// which are never dropped).
#[test]
fn md_members_keep_raid1_content_at_mdadms_data_offset_and_other_kinds_whole() {
    kura_tests::space::require_free(3 * GIB, "the md members disk, its store and its restore");
    let f = build();
    let c = capture(&f);
    raid1_members_of_every_metadata_version_keep_their_content_at_mdadms_data_offset(&f, &c);
    raid5_members_and_spares_are_kept_whole_with_the_reason(&c);
}

fn raid1_members_of_every_metadata_version_keep_their_content_at_mdadms_data_offset(f: &Fixture, c: &Captured) {
    // What the capture keeps of the ext4 filesystem on its plain partition.
    let reference = kept(&c.source, &c.restored, PLAIN_START, FS_SIZE);
    assert!(
        reference.iter().filter(|k| **k == Some(false)).count() as u64 > FS_SIZE / BLOCK / 4,
        "the plain ext4's junk-filled free blocks should be left out"
    );
    for a in ARRAYS.iter().filter(|a| a.level == 1) {
        for &n in a.members {
            let ex = examine(&f.members[&n]);
            assert_eq!(ex.get("Raid Level").map(String::as_str), Some("raid1"), "p{n}: {ex:?}");
            // 0.90 and 1.0 keep the data at the start; mdadm prints no offset for them.
            let data_offset = match a.metadata {
                "0.90" | "1.0" => {
                    assert!(!ex.contains_key("Data Offset") || number(&ex, "Data Offset") == 0, "{ex:?}");
                    0
                }
                _ => number(&ex, "Data Offset") * 512,
            };
            let content = number(&ex, "Array Size") * 1024;
            assert_eq!(data_offset % BLOCK, 0, "p{n}: data offset {data_offset} is not 4 KiB aligned");
            let start = part_start(n);
            assert_eq!(
                &c.source[(start + data_offset) as usize..(start + data_offset + FS_SIZE) as usize],
                &f.fs_image[..],
                "p{n} ({}): the ext4 written through md is not at mdadm's data offset {data_offset}",
                a.metadata
            );
            let got = kept(&c.source, &c.restored, start, PART);
            let mut left_out = 0;
            for (b, k) in got.iter().enumerate() {
                let at = b as u64 * BLOCK;
                let Some(k) = *k else { continue };
                let expected = if at < data_offset || at >= data_offset + FS_SIZE {
                    // Metadata, or content past the filesystem's end: kept.
                    true
                } else {
                    match reference[((at - data_offset) / BLOCK) as usize] {
                        Some(r) => r,
                        None => panic!("p{n}: block {b} is zero in the plain ext4 but not on the member"),
                    }
                };
                assert_eq!(
                    k, expected,
                    "p{n} ({}, data offset {data_offset}, content {content}): block {b} (byte {at}) kept={k}",
                    a.metadata
                );
                left_out += !k as u64;
            }
            assert!(left_out > 0, "p{n}: nothing was left out");
            eprintln!(
                "p{n}: metadata {} data offset {data_offset} array {content}: {} KiB of junk left out",
                a.metadata,
                left_out * BLOCK / 1024
            );
        }
    }
}

fn raid5_members_and_spares_are_kept_whole_with_the_reason(c: &Captured) {
    for (parts, reason) in [(&[9u64, 10, 11][..], "RAID5 member"), (&[14][..], "spare member")] {
        for &n in parts {
            let got = kept(&c.source, &c.restored, part_start(n), PART);
            assert!(got.iter().all(|k| *k != Some(false)), "p{n}: some block was left out");
            assert!(
                c.warnings.iter().any(|w| w.contains(&format!("partition {n}")) && w.contains(reason)),
                "no warning naming partition {n} as a {reason}: {:?}",
                c.warnings
            );
        }
    }
}

/// Writes the metadata of one member per version (the 64 KiB holding its superblock, bitmap
/// and bad-block log) into `$KURA_MD_GOLDEN_DIR`: the real mdadm metadata that
/// `kura-imaging`'s md unit tests mutate (`imaging/testdata/md/`). Run by hand:
/// `KURA_MD_GOLDEN_DIR=imaging/testdata/md cargo test -p kura-tests --test md_raid -- --ignored`.
#[test]
#[ignore = "regenerates imaging/testdata/md by hand"]
fn write_golden_metadata_for_the_imaging_unit_tests() {
    let dir = PathBuf::from(std::env::var("KURA_MD_GOLDEN_DIR").expect("set KURA_MD_GOLDEN_DIR"));
    let f = build();
    const HEAD: usize = 64 * 1024;
    for (name, part, at_end) in
        [("v0.90-tail", 1, true), ("v1.0-tail", 3, true), ("v1.1-head", 5, false), ("v1.2-head", 7, false)]
    {
        let bytes = std::fs::read(&f.members[&part]).unwrap();
        let piece = if at_end { &bytes[bytes.len() - HEAD..] } else { &bytes[..HEAD] };
        std::fs::write(dir.join(format!("{name}.bin")), piece).unwrap();
        let ex = examine(&f.members[&part]);
        std::fs::write(dir.join(format!("{name}.examine.txt")), format!("{ex:#?}\n")).unwrap();
    }
}

/// A RAID1 of two partitions holding an LVM PV (VG with a root and swap), as a RHEL server
/// installed on software RAID has it (root ext4 here, to stay small: XFS wants 300 MiB):
/// captured, restored onto a blank disk, and the restored disk checked on the host
/// (`mdadm --examine` equal to the source's, `pvck` clean and LVM reads the same VG, the root
/// passes `e2fsck -fn`, every file identical, no junk in the store) and in a machine
/// with the md driver (the array assembles clean, and a full `check` finds no mismatch between
/// the members).
#[test]
fn a_raid1_holding_an_lvm_pv_round_trips_and_assembles() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let member = 256 * MIB;
    let disk = w.join("raid.img");
    let size = 2 * member + 4 * MIB;
    let mut junk_samples: Vec<Vec<u8>> = Vec::new();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&disk).unwrap();
        for i in 0..size.div_ceil(4 * MIB) {
            let j = random_bytes(1000 + i, (4 * MIB) as usize);
            if i % 16 == 5 {
                junk_samples.push(j[..64 * 1024].to_vec());
            }
            f.write_all(&j).unwrap();
        }
    }
    run(
        "sgdisk",
        [
            "-Z",
            &format!("-n1:2048:{}", 2048 + member / 512 - 1),
            "-t1:FD00",
            &format!("-n2:{}:{}", 2048 + member / 512, 2048 + 2 * member / 512 - 1),
            "-t2:FD00",
            disk.to_str().unwrap(),
        ],
    );

    // The PV, made over junk: free extents and the XFS's free space keep old data.
    // The array, made by mdadm. Its size is known from here on: the PV fills it, as pvcreate on
    // /dev/md0 would.
    let serial = in_guest(
        "md-lvm-create",
        &[&disk],
        &[
            "yes | mdadm --create /dev/md0 --run --assume-clean --metadata=1.2 --level=1 --raid-devices=2 \
             --bitmap=internal /dev/vda1 /dev/vda2; say create rc=$?"
                .into(),
            "mdadm --stop /dev/md0; say stop rc=$?".into(),
        ],
    );
    for step in ["create rc=0", "stop rc=0"] {
        assert!(said(&serial).iter().any(|l| l == step), "guest: no {step:?}:\n{serial}");
    }
    let first = examine(&extract(&disk, MIB, member, w, "examine0"));
    let data_offset = number(&first, "Data Offset") * 512;
    let pv_size = number(&first, "Array Size") * 1024;

    let vg = unique_name("mdvg");
    let pv = w.join("pv.img");
    std::fs::write(&pv, random_bytes(77, pv_size as usize)).unwrap();
    junk_samples.push(std::fs::read(&pv).unwrap()[(190 * MIB) as usize..(190 * MIB + 64 * 1024) as usize].to_vec());
    let ext = 4 * MIB;
    let (segs, swap_segs, pe, source_lvs) = {
        let lp = Loop::attach(&[pv.to_str().unwrap()]);
        let d = lp.0.as_str();
        lvm(d, "pvcreate", &["-y", d]);
        lvm(d, "vgcreate", &["-s", "4m", &vg, d]);
        lvm(d, "lvcreate", &["-an", "-Zn", "-y", "-L", "120m", "-n", "root", &vg]);
        lvm(d, "lvcreate", &["-an", "-Zn", "-y", "-L", "32m", "-n", "swap", &vg]);
        let lvs = lvm(d, "lvs", &["--noheadings", "-o", "lv_name,seg_pe_ranges,lv_size", &vg]);
        (segments(d, &vg, "root"), segments(d, &vg, "swap"), pe_start(d), lvs)
    };
    // The root LV: ext4 over junk (XFS needs 300 MiB at least; LVM + XFS is server_stacks.rs's).
    let root = w.join("root.img");
    let tree = w.join("tree");
    std::fs::create_dir_all(tree.join("etc/app")).unwrap();
    for i in 0..60u64 {
        std::fs::write(tree.join(format!("etc/app/f{i}")), random_bytes(500 + i, 300 * 1024 + i as usize * 911))
            .unwrap();
    }
    let deleted = random_bytes(4242, (120 * MIB) as usize);
    junk_samples.push(deleted[(100 * MIB) as usize..(100 * MIB + 64 * 1024) as usize].to_vec());
    std::fs::write(&root, &deleted).unwrap();
    run(
        "mke2fs",
        [
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-E",
            "nodiscard",
            "-L",
            "root",
            "-d",
            tree.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
    let files = tree_digests(&tree);
    let swap = w.join("swap.img");
    std::fs::File::create(&swap).unwrap().set_len(32 * MIB).unwrap();
    run("mkswap", ["-q", "-L", "swap", swap.to_str().unwrap()]);
    move_lv(&pv, &root, &segs, pe, ext, true);
    move_lv(&pv, &swap, &swap_segs, pe, ext, true);
    // The PV onto both members' data areas: a RAID1's members hold the same bytes (mdadm wrote
    // the arrays of the test above through the md driver; this one is assembled and checked
    // in a machine below).
    {
        use std::io::{Seek, SeekFrom, Write};
        let bytes = std::fs::read(&pv).unwrap();
        let mut d = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        for i in 0..2 {
            d.seek(SeekFrom::Start(MIB + i * member + data_offset)).unwrap();
            d.write_all(&bytes).unwrap();
        }
    }

    let source_members: Vec<PathBuf> =
        (0..2).map(|i| extract(&disk, MIB + i * member, member, w, &format!("src{i}"))).collect();
    let source_examine: Vec<_> = source_members.iter().map(|m| examine(m)).collect();

    // Capture and restore.
    let store = Store::new(w.join("store"));
    let report = store.capture(&disk, Some("md-lvm"));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let hits = find_sectors(&store.dir, &junk_samples.iter().map(Vec::as_slice).collect::<Vec<_>>());
    assert!(hits.is_empty(), "old junk was captured: {hits:?}");
    eprintln!(
        "RAID1+LVM disk of {} MiB: {} MiB used, {} MiB stored",
        size / MIB,
        report.used_bytes / MIB,
        report.new_stored_bytes / MIB
    );
    assert!(report.used_bytes < 2 * (60 * MIB), "used {} bytes", report.used_bytes);
    let restored = w.join("restored.img");
    store.restore(&report.snapshot, &restored);

    // On the host: md superblocks, LVM, ext4, files.
    for i in 0..2u64 {
        let m = extract(&restored, MIB + i * member, member, w, &format!("dst{i}"));
        assert_eq!(examine(&m), source_examine[i as usize], "member {i}: mdadm --examine differs");
        if i == 0 {
            let pv_back = extract(&m, data_offset, pv_size, w, "pv-back");
            let lp = Loop::attach(&[pv_back.to_str().unwrap()]);
            let d = lp.0.as_str();
            lvm(d, "pvck", &[d]);
            let lvs = lvm(d, "lvs", &["--noheadings", "-o", "lv_name,seg_pe_ranges,lv_size", &vg]);
            assert_eq!(lvs, source_lvs);
            let root_back = w.join("root-back.img");
            move_lv(&pv_back, &root_back, &segs, pe, ext, false);
            run("e2fsck", ["-fn", root_back.to_str().unwrap()]);
            let mounted = Mounted::new("ext4", &root_back, "loop,ro");
            assert_eq!(tree_digests(mounted.path()), files);
        }
    }

    // In a machine: the restored array assembles and its members agree block for block.
    let serial = in_guest(
        "md-lvm-check",
        &[&restored],
        &[
            "mdadm --assemble /dev/md0 /dev/vda1 /dev/vda2 --run; say assemble rc=$?".into(),
            "say state $(cat /sys/block/md0/md/array_state) disks $(cat /sys/block/md0/md/raid_disks) \
             degraded $(cat /sys/block/md0/md/degraded)"
                .into(),
            "echo check > /sys/block/md0/md/sync_action".into(),
            "sleep 1; for i in $(seq 1 1200); do [ \"$(cat /sys/block/md0/md/sync_action)\" = idle ] && break; sleep 0.5; done".into(),
            "say checked action=$(cat /sys/block/md0/md/sync_action) last=$(cat /sys/block/md0/md/last_sync_action) \
             mismatch=$(cat /sys/block/md0/md/mismatch_cnt)"
                .into(),
            "mdadm --stop /dev/md0".into(),
        ],
    );
    let lines = said(&serial);
    assert!(lines.iter().any(|l| l == "assemble rc=0"), "{serial}");
    assert!(lines.iter().any(|l| l.starts_with("state clean disks 2 degraded 0")), "{serial}");
    assert!(lines.iter().any(|l| l == "checked action=idle last=check mismatch=0"), "{serial}");
}

/// `len` bytes of `image` from `offset`, as `dir/NAME.img`.
fn extract(image: &Path, offset: u64, len: u64, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.img"));
    checkers::extract(image, offset, len, &out);
    out
}
