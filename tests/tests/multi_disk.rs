//! Hosts with several disks, end to end (issue 11): a machine with three disks — two members of
//! a software RAID1 (mdraid 1.2, distinct serials) and a data disk — netboots, and its agent
//! captures all three as one snapshot set; a replacement whose disks are enumerated in another
//! order is restored from it, each disk mapped by its serial, every disk byte-identical, the
//! RAID members consistent by `mdadm --examine`, and the array assembling (by mdadm, in a machine
//! with the md driver: `kura_tests::md`) with its filesystem intact. Two machines are refused before anything is
//! written: one whose data disk is too small, and one whose disks (new serials, another
//! controller, all large enough) could take any source disk — an ambiguous mapping.
//!
//! ```text
//!   srv01 (capture)        new01 (restore)           tiny01 (too small)      amb01 (ambiguous)
//!   vda  R1-A 24 MiB       vda  DATA 40 MiB          vda R1-A                sda N1 48 MiB (SATA)
//!   vdb  R1-B 24 MiB       vdb  R1-B                 vdb R1-B                sdb N2 48 MiB
//!   vdc  DATA 40 MiB       vdc  R1-A                 vdc DATA 32 MiB         sdc N3 48 MiB
//! ```
//!
//! The RAID1 is made by `mdadm --create` itself (metadata 1.2) in such a machine, an ext4
//! filesystem written through the md driver.
//!
//! Root only (network namespace, QEMU); TCG. Needs mdadm besides the netboot packages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kura_tests::content::{sha256_file, text_bytes, FileSpec};
use kura_tests::disks::{blank_file, build_gpt, patterned_file, Content, PartSpec, MIB};
use kura_tests::md::{assert_raid1_pair, in_guest, said};
use kura_tests::netboot::{with_agent_image, NetbootEngine, AGENT_ARGS};
use kura_tests::netns::Netns;
use kura_tests::qemu::{accel, Firmware, Machine};
use kura_tests::site_dhcp::SiteDhcp;
use kura_tests::tools::run;

/// Longest one netbooted job may take from power-on to its end under TCG (measured on a loaded
/// 2-core machine: 20 s for the capture of the three disks, 21 s for the restore; the whole test
/// 138 s with its four netboots and two md machines, scratch peak 350 MiB): 20 times that.
const JOB_TIMEOUT: Duration = Duration::from_secs(420);

/// How a disk is attached.
#[derive(Clone, Copy)]
enum Bus {
    Virtio,
    /// SATA on q35's AHCI controller, port `n`.
    Sata(u8),
}

/// A machine that netboots first, with these disks (file, serial, bus) in this order.
fn machine(ns: &Netns, name: &str, mac: &str, disks: &[(&Path, &str, Bus)]) -> Machine {
    let mut b = Machine::builder(ns, name).firmware(Firmware::Bios).memory_mib(512).mac(mac).network_boot();
    for (i, (file, serial, bus)) in disks.iter().enumerate() {
        b = b.arg("-drive").arg(format!("file={},format=raw,if=none,id=md{i},cache=unsafe", file.display()));
        let dev = match bus {
            Bus::Virtio => format!("virtio-blk-pci,drive=md{i},serial={serial}"),
            Bus::Sata(port) => format!("ide-hd,drive=md{i},bus=ide.{port},serial={serial}"),
        };
        b = b.arg("-device").arg(dev);
    }
    b.arg("-device").arg("virtio-rng-pci").start()
}

fn job(engine: &NetbootEngine, id: i64) -> (Value, Vec<String>) {
    let v = engine.api_get(&format!("jobs/{id}"));
    let log =
        v["log"].as_array().into_iter().flatten().filter_map(|l| l["message"].as_str().map(String::from)).collect();
    (v["job"].clone(), log)
}

fn queue(engine: &NetbootEngine, args: &[&str]) -> i64 {
    let run = engine.kura(args);
    run.expect_success();
    run.stdout.trim().parse().unwrap_or_else(|_| panic!("kura {args:?} printed no job id: {}", run.stdout))
}

/// Waits until job `id` has ended (succeeded, failed) and returns it with its log.
fn wait_job(m: &mut Machine, engine: &NetbootEngine, id: i64) -> (Value, Vec<String>) {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let (j, log) = job(engine, id);
        if !matches!(j["state"].as_str(), Some("queued" | "running")) {
            return (j, log);
        }
        assert!(
            Instant::now() < deadline,
            "job {id} still {} after {JOB_TIMEOUT:?}: {log:#?}\n{}\n{}",
            j["state"],
            m.report(),
            engine.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Size of the ext4 filesystem in the array (the members are 24 MiB; mdadm's data offset on
/// them is at most a few MiB).
const FS_BYTES: u64 = 16 * MIB;

/// Two 24 MiB RAID1 members made by `mdadm --create` (metadata 1.2) in a machine with the md
/// driver, an ext4 filesystem with files written onto the array through it (`dd` onto
/// `/dev/md0`). Returns the members and the SHA-256 of the filesystem image.
fn build_raid1(dir: &Path) -> (PathBuf, PathBuf, String) {
    let tree = dir.join("raid-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("notes.txt"), text_bytes(1, 300_000)).unwrap();
    std::fs::write(tree.join("table.csv"), text_bytes(2, 900_000)).unwrap();
    let fs = dir.join("raid-fs.img");
    blank_file(&fs, FS_BYTES);
    run(
        "mke2fs",
        ["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "raiddata", "-d", tree.to_str().unwrap(), fs.to_str().unwrap()],
    );
    std::fs::remove_dir_all(&tree).unwrap();
    let (a, b) = (dir.join("r1a.img"), dir.join("r1b.img"));
    blank_file(&a, 24 * MIB);
    blank_file(&b, 24 * MIB);
    let script = [
        "yes | mdadm --create /dev/md0 --run --assume-clean --metadata=1.2 --level=1 --raid-devices=2 \
         --bitmap=none --name=kura:md0 /dev/vda /dev/vdb > /tmp/create.log 2>&1; say create rc=$?; \
         cat /tmp/create.log > /dev/console"
            .to_string(),
        "dd if=/dev/vdc of=/dev/md0 bs=1M 2>/dev/null; say dd rc=$?".to_string(),
        "mdadm --stop /dev/md0; say stop rc=$?".to_string(),
    ];
    let serial = in_guest("md-create", &[&a, &b, &fs], &script);
    let lines = said(&serial);
    for step in ["create", "dd", "stop"] {
        assert!(lines.contains(&format!("{step} rc=0")), "guest step {step} failed:\n{serial}");
    }
    let sum = sha256_file(&fs);
    std::fs::remove_file(&fs).unwrap();
    (a, b, sum)
}

/// The restored members assemble into the array (mdadm, in a machine with the md driver),
/// which holds the filesystem written at the start, byte for byte.
fn assert_assembles(a: &Path, b: &Path, fs_sum: &str) {
    let script = [
        "mdadm --assemble /dev/md0 /dev/vda /dev/vdb > /tmp/asm.log 2>&1; say assemble rc=$?; \
         cat /tmp/asm.log /proc/mdstat > /dev/console"
            .to_string(),
        format!("say sum $(dd if=/dev/md0 bs=1M count={} 2>/dev/null | sha256sum)", FS_BYTES / MIB),
        "mdadm --stop /dev/md0; say stop rc=$?".to_string(),
    ];
    // The guest works on copies: assembling updates the superblocks' event counts.
    let dir = a.parent().unwrap();
    let (ca, cb) = (dir.join("asm-a.img"), dir.join("asm-b.img"));
    std::fs::copy(a, &ca).unwrap();
    std::fs::copy(b, &cb).unwrap();
    let serial = in_guest("md-assemble", &[&ca, &cb], &script);
    let _ = std::fs::remove_file(&ca);
    let _ = std::fs::remove_file(&cb);
    let lines = said(&serial);
    assert!(lines.contains(&"assemble rc=0".to_string()), "the restored members do not assemble:\n{serial}");
    assert!(serial.contains("md0 : active raid1"), "md0 is not an active RAID1:\n{serial}");
    assert!(
        lines.iter().any(|l| l.starts_with("sum ") && l.contains(fs_sum)),
        "the assembled array does not hold the filesystem written at the start:\n{serial}"
    );
}

fn hashes(files: &[&Path]) -> Vec<String> {
    files.iter().map(|f| sha256_file(f)).collect()
}

#[test]
fn three_disks_captured_as_one_set_and_restored_in_another_order_by_serial() {
    let started = Instant::now();
    let ns = Netns::new();
    let _site = SiteDhcp::start(&ns);
    // The agents power off when done (a restore's default reboot would netboot again).
    let args = format!("{AGENT_ARGS} kura.after=poweroff");
    let (engine, _) = with_agent_image(&ns, &[], json!({ "kernel_args": args }));
    let dir: PathBuf = ns.dir().to_path_buf();

    // The source machine's disks: the RAID1 pair and a GPT data disk with an ext4 filesystem.
    let (r1a, r1b, fs_sum) = build_raid1(&dir);
    assert_raid1_pair(&r1a, &r1b);
    let ext4 = Content::Ext4 {
        label: "data",
        block_size: 4096,
        files: vec![FileSpec::new("srv/data.bin", text_bytes(3, 2_000_000))],
        deleted: vec![],
    };
    let data = build_gpt(&dir, "data.img", 40 * MIB, vec![PartSpec::gpt(36 * MIB, "8300", "data", ext4)]).path;
    let sources = [r1a.as_path(), r1b.as_path(), data.as_path()];
    let before = hashes(&sources);

    // Capture: every disk, one snapshot set.
    let mac = "52:54:00:4b:11:01";
    engine.api_post("hosts", &json!({ "name": "srv01", "macs": [mac] }));
    let id = queue(&engine, &["capture", "srv01"]);
    let t0 = Instant::now();
    let mut m = machine(
        &ns,
        "srv01",
        mac,
        &[
            (r1a.as_path(), "KURA-R1-A", Bus::Virtio),
            (r1b.as_path(), "KURA-R1-B", Bus::Virtio),
            (data.as_path(), "KURA-DATA", Bus::Virtio),
        ],
    );
    let (j, log) = wait_job(&mut m, &engine, id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}\n{}", m.report());
    let capture_secs = t0.elapsed().as_secs_f64();
    m.wait_for_exit(Duration::from_secs(120));
    drop(m);
    assert_eq!(hashes(&sources), before, "a capture changed a disk");
    let set = j["snapshot"].as_str().unwrap().to_string();
    let snaps = engine.api_get("snapshots?host=srv01");
    let snap = snaps.as_array().unwrap().iter().find(|s| s["id"] == set.as_str()).unwrap().clone();
    let disks = snap["set"]["disks"].as_array().unwrap_or_else(|| panic!("not a set: {snap:#}"));
    let listed: Vec<(&str, &str)> =
        disks.iter().map(|d| (d["name"].as_str().unwrap(), d["serial"].as_str().unwrap_or("-"))).collect();
    assert_eq!(listed, [("vda", "KURA-R1-A"), ("vdb", "KURA-R1-B"), ("vdc", "KURA-DATA")], "{snap:#}");
    assert_eq!(snap["disk_size"], json!(88 * MIB), "{snap:#}");
    let shown = engine.kura(&["snapshots", "--host", "srv01"]);
    shown.expect_success();
    for serial in ["KURA-R1-A", "KURA-R1-B", "KURA-DATA"] {
        assert!(
            shown.stdout.lines().any(|l| l.trim_start().starts_with("disk ") && l.contains(serial)),
            "{}",
            shown.stdout
        );
    }

    // The replacement: the same disks (serials), enumerated the other way round, blank.
    let t = |n: &str, size: u64| {
        let p = dir.join(n);
        blank_file(&p, size);
        p
    };
    let (n_data, n_r1b, n_r1a) = (t("new-data.img", 40 * MIB), t("new-r1b.img", 24 * MIB), t("new-r1a.img", 24 * MIB));
    let new_mac = "52:54:00:4b:11:02";
    engine.api_post("hosts", &json!({ "name": "new01", "macs": [new_mac] }));
    let queued = engine.kura(&["restore", "new01", "--snapshot", &set]);
    queued.expect_success();
    assert!(
        queued.stderr.contains("is a set of 3 disks") && queued.stderr.contains("serial KURA-R1-A"),
        "{}",
        queued.stderr
    );
    let id: i64 = queued.stdout.trim().parse().unwrap();
    let t1 = Instant::now();
    let mut m = machine(
        &ns,
        "new01",
        new_mac,
        &[
            (n_data.as_path(), "KURA-DATA", Bus::Virtio),
            (n_r1b.as_path(), "KURA-R1-B", Bus::Virtio),
            (n_r1a.as_path(), "KURA-R1-A", Bus::Virtio),
        ],
    );
    let (j, log) = wait_job(&mut m, &engine, id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}\n{}", m.report());
    let restore_secs = t1.elapsed().as_secs_f64();
    m.wait_for_exit(Duration::from_secs(120));
    drop(m);
    let map: Vec<&String> = log.iter().filter(|l| l.starts_with("disk map: ")).collect();
    assert_eq!(map.len(), 3, "{log:#?}");
    assert!(map[0].starts_with("disk map: vda (") && map[0].ends_with("→ vdc (same serial)"), "{map:#?}");
    assert!(map[1].starts_with("disk map: vdb (") && map[1].ends_with("→ vdb (same serial)"), "{map:#?}");
    assert!(map[2].starts_with("disk map: vdc (") && map[2].ends_with("→ vda (same serial)"), "{map:#?}");
    // The mapping is in the log before anything was written.
    let first_write = log.iter().position(|l| l.contains("checking every chunk")).unwrap_or(usize::MAX);
    assert!(log.iter().position(|l| l.starts_with("disk map: ")).unwrap() < first_write, "{log:#?}");
    assert_eq!(
        hashes(&[n_r1a.as_path(), n_r1b.as_path(), n_data.as_path()]),
        before,
        "a restored disk differs from its source"
    );
    assert_raid1_pair(&n_r1a, &n_r1b);
    assert_assembles(&n_r1a, &n_r1b, &fs_sum);

    // Refused before writing: the data disk is too small (its serial matches).
    let tiny = [t("tiny-r1a.img", 24 * MIB), t("tiny-r1b.img", 24 * MIB), dir.join("tiny-data.img")];
    patterned_file(&tiny[2], 32 * MIB);
    for f in &tiny[..2] {
        patterned_file(f, 24 * MIB);
    }
    let refused = |name: &str, mac: &str, disks: &[(&Path, &str, Bus)], want: &[&str]| {
        let files: Vec<&Path> = disks.iter().map(|d| d.0).collect();
        let before = hashes(&files);
        engine.api_post("hosts", &json!({ "name": name, "macs": [mac] }));
        let id = queue(&engine, &["restore", name, "--snapshot", &set]);
        let mut m = machine(&ns, name, mac, disks);
        let (j, log) = wait_job(&mut m, &engine, id);
        assert_eq!(j["state"], "failed", "{j:#}\n{log:#?}");
        let err = j["error"].as_str().unwrap_or_default().to_string();
        for w in want.iter().chain(&["nothing was written"]) {
            assert!(err.contains(w), "{name}: the error does not say {w:?}: {err}");
        }
        assert!(!log.iter().any(|l| l.contains("checking every chunk")), "{name}: a preflight ran: {log:#?}");
        m.wait_for_exit(Duration::from_secs(120));
        drop(m);
        assert_eq!(hashes(&files), before, "{name}: a target disk was written to");
        err
    };
    let tiny_err = refused(
        "tiny01",
        "52:54:00:4b:11:03",
        &[
            (tiny[0].as_path(), "KURA-R1-A", Bus::Virtio),
            (tiny[1].as_path(), "KURA-R1-B", Bus::Virtio),
            (tiny[2].as_path(), "KURA-DATA", Bus::Virtio),
        ],
        &["too small", "vdc (41943040 bytes", "33554432 bytes"],
    );

    // Refused before writing: new serials, SATA instead of virtio, every disk large enough for
    // any source: the candidates are named.
    let amb: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("amb{i}.img"))).collect();
    for f in &amb {
        patterned_file(f, 48 * MIB);
    }
    let amb_err = refused(
        "amb01",
        "52:54:00:4b:11:04",
        &[
            (amb[0].as_path(), "NEW-1", Bus::Sata(0)),
            (amb[1].as_path(), "NEW-2", Bus::Sata(1)),
            (amb[2].as_path(), "NEW-3", Bus::Sata(2)),
        ],
        &["ambiguous", "candidates", "sda (", "sdb (", "sdc (", "--map vda=DISK"],
    );
    for f in tiny.iter().chain(&amb).chain([&n_data, &n_r1a, &n_r1b]) {
        let _ = std::fs::remove_file(f);
    }
    eprintln!(
        "[{:?}] set {set}: capture of 3 disks {capture_secs:.0} s power-on to end, restore by serial \
         {restore_secs:.0} s; refused: {tiny_err:?}; {amb_err:?}; test {:.0?}",
        accel(),
        started.elapsed()
    );
}
