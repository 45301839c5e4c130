//! A RHEL-style system (root XFS on LVM2, `/boot` XFS, GRUB for BIOS: [`rhel_disk`]) captured
//! by netboot and restored by netboot onto a new machine's blank disk, which then boots from it
//! to the root's marker with the root on the LV (issue 12).
//!
//! ```text
//!   netns: br0 ── tap ── QEMU (SeaBIOS, TCG): fixture boot │ capture (agent) │ restore (agent)
//!          kura serve --netboot, dnsmasq as the site DHCP      → reboot → GRUB → initramfs-tools
//!                                                               (udev + lvm2) → /sbin/init on the LV
//! ```
//!
//! Checked as well: the capture did not change the disk; it stored only used blocks (the
//! snapshot's used bytes are bounded by the files plus the XFS logs and metadata, and no byte
//! of the deleted files or of the free extents' junk is in the store: the imaging library maps
//! the PV through the VG's metadata and each LV's XFS); the restored disk's LVM metadata reads
//! back with `lvm pvck`/`vgs`/`lvs` (activation off, from a loop device over the partition);
//! `/boot` and the root LV (copied out at the extents the metadata gives) pass `xfs_repair -n`
//! and hold every file.
//!
//! Root only. Under TCG each boot takes a minute or more; the times are printed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kura_tests::bootdisk::GRUB_MARKER;
use kura_tests::checkers::extract;
use kura_tests::content::sha256_file;
use kura_tests::disks::MIB;
use kura_tests::lvm::{lvm, tree_digests, Mounted};
use kura_tests::netboot::{bios_machine, with_agent_image};
use kura_tests::netns::Netns;
use kura_tests::qemu::{accel, DiskBus, Firmware, Machine};
use kura_tests::rhel_disk::{self, RhelDisk};
use kura_tests::site_dhcp::SiteDhcp;
use kura_tests::tools::run_unchecked;

/// Longest a netbooted job may take from power-on to power-off (or to the restored system's
/// marker) under TCG on a shared, busy machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the disk may take from power-on to its marker under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// XFS's own metadata besides the log in each filesystem (superblocks, AG headers and B+trees,
/// inodes, directories), with margin.
const XFS_METADATA: u64 = 8 * MIB;

#[test]
fn rhel_style_lvm_xfs_system_is_restored_by_netboot_and_boots_from_its_lv() {
    let started = Instant::now();
    let ns = Netns::new();
    let _site_dhcp = SiteDhcp::start(&ns);
    let (engine, _) = with_agent_image(&ns, &[], json!({}));
    let dir = ns.dir().to_path_buf();
    let t = Instant::now();
    let system: RhelDisk = rhel_disk::build(&dir, "rhel01.img", "rhel-lvm-xfs");
    let build_time = t.elapsed();

    // The disk boots as made (so a later failure is the capture's or the restore's).
    let mut m =
        Machine::builder(&ns, "fixture").firmware(Firmware::Bios).disk(&system.disk.path, DiskBus::Virtio).start();
    let line = engine.wait_serial(&mut m, &system.marker_line(), BOOT_TIMEOUT);
    let fixture_boot = m.uptime();
    assert!(line.contains(&format!("root={}", system.root_device())), "not booted from the LV: {line}");
    m.wait_for_exit(Duration::from_secs(60));
    drop(m);

    // The capture, by netboot.
    let mac = "52:54:00:4b:0c:01";
    engine.api_post("hosts", &json!({ "name": "rhel01", "macs": [mac] }));
    let before = sha256_file(&system.disk.path);
    let id = engine.queue(&["capture", "rhel01"]);
    let t = Instant::now();
    let mut m = bios_machine(&ns, "rhel01", mac, &system.disk.path);
    engine.wait_power_off(&mut m, id, JOB_TIMEOUT);
    let capture_time = t.elapsed();
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}\n{}", m.report());
    assert_eq!(sha256_file(&system.disk.path), before, "the capture changed the disk");
    assert!(!log.iter().any(|l| l.contains("warning")), "the capture warned: {log:#?}");
    let snapshot = j["snapshot"].as_str().unwrap().to_string();
    drop(m);

    // Only used blocks: bounded by the files, the two XFS logs and metadata; no junk stored.
    let snap: Value = engine
        .api_get("snapshots?host=rhel01")
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == snapshot.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("snapshot {snapshot} is not listed"));
    let (used, stored) = (snap["used_bytes"].as_u64().unwrap(), snap["new_bytes"].as_u64().unwrap());
    let file_bytes = |files: &std::collections::BTreeMap<String, String>, root: &std::path::Path| -> u64 {
        files.keys().map(|f| std::fs::metadata(root.join(f)).unwrap().len()).sum()
    };
    let (boot_back, root_back) = (dir.join("boot-back.img"), dir.join("root-back.img"));
    let boot = system.disk.partition(rhel_disk::BOOT).clone();
    extract(&system.disk.path, boot.offset, boot.size, &boot_back);
    system.extract_lv(&system.disk.path, "root", &root_back);
    let (boot_log, root_log) = (xfs_log_bytes(&boot_back), xfs_log_bytes(&root_back));
    let files = file_bytes(&system.boot_files, Mounted::new("xfs", &boot_back, "ro,loop").path())
        + file_bytes(&system.root_files, Mounted::new("xfs", &root_back, "ro,loop").path());
    let bound = files + boot_log + root_log + 2 * XFS_METADATA + 2 * MIB;
    eprintln!(
        "snapshot {snapshot}: disk {} MiB, used {used} bytes (files {files}, XFS logs {boot_log} + {root_log}), \
         stored {stored} bytes",
        system.disk.size / MIB
    );
    assert!(used <= bound, "used {used} bytes: more than the files and XFS metadata ({bound})");
    assert!(stored <= files + 4 * MIB, "stored {stored} bytes: more than the files ({files}) and a little metadata");
    let junk: Vec<&[u8]> = system.junk.iter().map(|j| j.as_slice()).collect();
    let hits = kura_tests::store::find_sectors(&engine.data.join("store"), &junk);
    assert!(hits.is_empty(), "deleted or free-extent junk in the store (chunk, offset): {hits:?}");

    // The restore, by netboot, onto a blank disk of the same size; the machine then boots it.
    let target = dir.join("new01.img");
    kura_tests::disks::blank_file(&target, system.disk.size);
    let new_mac = "52:54:00:4b:0c:02";
    engine.api_post("hosts", &json!({ "name": "new01", "macs": [new_mac] }));
    let t = Instant::now();
    let id = engine.queue(&["restore", "new01", "--snapshot", &snapshot]);
    let mut m = bios_machine(&ns, "new01", new_mac, &target);
    engine.wait_serial(&mut m, "kura-agent: rebooting", JOB_TIMEOUT);
    let to_reboot = t.elapsed();
    let line = engine.wait_serial(&mut m, &system.marker_line(), BOOT_TIMEOUT);
    let to_marker = t.elapsed();
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}");
    assert!(line.contains(&format!("root={}", system.root_device())), "not booted from the LV: {line}");
    let serial = m.serial();
    let agent_end = serial.find("kura-agent: rebooting").expect("the agent did not reboot");
    let after = &serial[agent_end..];
    assert!(after.contains(GRUB_MARKER), "GRUB did not run after the restore:\n{serial}");
    m.wait_for_exit(Duration::from_secs(60));
    drop(m);

    // The restored disk: LVM reads the VG back; /boot and the root LV are clean and whole.
    {
        let lp = system.pv_loop(&target);
        let d = lp.0.as_str();
        lvm(d, "pvck", &[d]);
        let vgs = lvm(d, "vgs", &["--noheadings", "-o", "vg_name,pv_count,lv_count", &system.vg]);
        assert_eq!(vgs.split_whitespace().collect::<Vec<_>>(), [system.vg.as_str(), "1", "2"], "vgs: {vgs}");
        let lvs = lvm(d, "lvs", &["--noheadings", "-o", "lv_name,seg_pe_ranges,lv_size", &system.vg]);
        assert_eq!(lvs.replace(d, "PV"), system.lvs_report, "lvs of the restored PV");
    }
    extract(&target, boot.offset, boot.size, &boot_back);
    system.extract_lv(&target, "root", &root_back);
    std::fs::remove_file(&target).unwrap();
    for (img, files, what) in [(&boot_back, &system.boot_files, "/boot"), (&root_back, &system.root_files, "root LV")] {
        let out = run_unchecked("xfs_repair", ["-n", img.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "xfs_repair -n of the restored {what}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&tree_digests(Mounted::new("xfs", img, "ro,loop").path()), files, "restored {what}");
        std::fs::remove_file(img).unwrap();
    }

    eprintln!(
        "[{:?}] RHEL-style disk ({} MiB, initrd {} bytes) built in {build_time:.1?}; power-on to the marker {fixture_boot:.1?}; \
         capture power-on to power-off {capture_time:.1?}; `kura restore` to the agent's reboot {to_reboot:.1?}, \
         to the restored system's marker {to_marker:.1?} (boot {:.1?}); test {:.1?}",
        accel(),
        system.disk.size / MIB,
        system.initrd_bytes,
        to_marker - to_reboot,
        started.elapsed()
    );
}

/// The size of an XFS image's internal log (`logblocks` × `blocksize`), from `xfs_db`.
fn xfs_log_bytes(image: &std::path::Path) -> u64 {
    let out =
        kura_tests::tools::run("xfs_db", ["-r", "-c", "sb 0", "-c", "p logblocks blocksize", image.to_str().unwrap()]);
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix('=')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("xfs_db printed no {name}: {out}"))
    };
    field("logblocks") * field("blocksize")
}
