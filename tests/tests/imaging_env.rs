//! The imaging environment end to end: real machines (QEMU, SeaBIOS or OVMF) netboot from
//! `kura serve --netboot` in a private network namespace into the initramfs `kura bootenv
//! build` made from the distribution kernel, and the agent in it captures or restores their
//! disks through the engine.
//!
//! ```text
//!   netns: br0 10.77.n.1 ── tapN ── QEMU machines (-boot n: PXE first, then the disk)
//!          kura serve --netboot (proxyDHCP, TFTP, boot HTTP, API), dnsmasq as the site DHCP
//! ```
//!
//! The system disk ([`bootdisk`]) is a bootable GPT Linux system: GRUB for BIOS (boot sector +
//! BIOS boot partition) and for UEFI (its own path on the ESP, no fallback loader), an ext4
//! root with the distribution kernel whose `/sbin/init` prints a marker, and an NTFS data
//! partition. Restored machines must boot it to that marker.
//!
//! Root only. Under TCG each boot takes a minute or more: the disks are small (176 MiB).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kura_tests::bootdisk::{self, BootDisk};
use kura_tests::checkers::assert_fsck_clean;
use kura_tests::content::sha256_file;
use kura_tests::disks::{ext4_replace_file, patterned_file, MIB};
use kura_tests::kura_cli::Store;
use kura_tests::netboot::{bios_machine, with_agent_image, NetbootEngine};
use kura_tests::netns::Netns;
use kura_tests::qemu::{accel, Boot, DiskBus, Firmware, Machine, NicRom};
use kura_tests::readback::assert_files_match;
use kura_tests::site_dhcp::SiteDhcp;

/// Longest a UEFI machine without a job may take from power-on to its disk's OS (issue 17).
const LOCAL_BOOT_LIMIT: Duration = Duration::from_secs(30);

/// Longest a netbooted job may take from power-on to power-off under TCG.
const JOB_TIMEOUT: Duration = Duration::from_secs(420);

/// Numbers after `word` in a log line: "read 123 used bytes in 4 s" → after("read") = 123.
fn number_after(line: &str, word: &str) -> Option<f64> {
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == word {
            return it.next()?.trim_end_matches([',', ':', ')']).parse().ok();
        }
    }
    None
}

fn snapshots_of(engine: &NetbootEngine, host: &str) -> Vec<Value> {
    engine.api_get(&format!("snapshots?host={host}")).as_array().cloned().unwrap_or_default()
}

/// Issue 16's attacker: another "machine" on the boot LAN, a plain HTTP client with its own
/// address (`.200`, added to the namespace's bridge) asking the boot HTTP server for a
/// machine's iPXE script.
struct Intruder<'a> {
    ns: &'a Netns,
    addr: std::net::Ipv4Addr,
}

impl<'a> Intruder<'a> {
    fn new(ns: &'a Netns) -> Intruder<'a> {
        let addr = ns.host_addr(200);
        ns.ip(["addr", "add", &format!("{addr}/24"), "dev", "br0"]);
        Intruder { ns, addr }
    }

    /// The script the engine gives this address for `mac` (curl, from this address).
    fn script_for(&self, engine: &NetbootEngine, mac: &str) -> String {
        let url = format!("{}/boot/script?mac={mac}", engine.boot_url);
        let out =
            self.ns.run("curl", ["-sS", "--fail", "--max-time", "20", "--interface", &self.addr.to_string(), &url]);
        assert!(out.status.success(), "curl {url} from {}: {}", self.addr, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asserts the script gives away nothing: no agent token, the local disk.
    fn assert_gets_nothing(&self, engine: &NetbootEngine, mac: &str) {
        let script = self.script_for(engine, mac);
        assert!(!script.contains("kura.token"), "the intruder got a token:\n{script}");
        assert!(script.contains("sanboot"), "{script}");
    }
}

/// A BIOS machine whose disk is the system: captured by netboot (it powers off), captured
/// again after some files changed (only the changed chunks go over the wire), refused on a
/// machine whose disk is too small (nothing written), and restored onto a blank, larger disk
/// of a second machine, which reboots and boots the restored system to its marker.
///
/// Issue 16 on the first capture: another machine on the boot LAN ([`Intruder`]) asks for the
/// victim's script before it boots and again while its agent runs. It gets no token, the job
/// is flagged ("possible impostor"), and the victim's capture still succeeds. The engine runs
/// with `--hold-unusual-captures`: that snapshot is held unconfirmed (a restore refuses it)
/// until `kura snapshot confirm`; the second, normal capture is confirmed at once.
#[test]
fn bios_system_is_captured_and_restored_onto_a_new_machine_that_boots_it() {
    let started = Instant::now();
    let ns = Netns::new();
    let _site_dhcp = SiteDhcp::start(&ns);
    let (engine, initrd_bytes) = with_agent_image(&ns, &["--hold-unusual-captures"], json!({}));
    let dir = ns.dir().to_path_buf();
    let mut system: BootDisk = bootdisk::build(&dir, "srv01.img", "first-capture");

    // The fixture itself boots from its disk (so a later failure is the restore's).
    let mut m =
        Machine::builder(&ns, "fixture").firmware(Firmware::Bios).disk(&system.disk.path, DiskBus::Virtio).start();
    engine.wait_serial(&mut m, &system.marker_line(), Duration::from_secs(240));
    m.wait_for_exit(Duration::from_secs(60));
    drop(m);

    let mac = "52:54:00:4b:05:01";
    engine.api_post("hosts", &json!({ "name": "srv01", "macs": [mac] }));
    let before = sha256_file(&system.disk.path);

    // Capture 1, with an intruder asking for the victim's script before it boots and while
    // its agent runs.
    let id = engine.queue(&["capture", "srv01"]);
    let intruder = Intruder::new(&ns);
    intruder.assert_gets_nothing(&engine, mac);
    let t0 = Instant::now();
    let mut m = bios_machine(&ns, "srv01-a", mac, &system.disk.path);
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let (j, log) = engine.job_and_log(id);
        if j["state"] == "running" {
            break;
        }
        assert!(
            j["state"] == "queued" && Instant::now() < deadline,
            "the agent never ran: {j:#}\n{log:#?}\n{}",
            m.report()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    intruder.assert_gets_nothing(&engine, mac);
    engine.wait_power_off(&mut m, id, JOB_TIMEOUT);
    let capture1_secs = t0.elapsed().as_secs_f64();
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}\n{}", m.report());
    assert!(m.serial().contains("kura-agent: powering off"), "{}", m.report());
    assert_eq!(sha256_file(&system.disk.path), before, "a capture changed the disk");
    let first = j["snapshot"].as_str().unwrap().to_string();
    let read_line = log.iter().find(|l| l.starts_with("read ")).cloned().unwrap_or_default();
    drop(m);
    let from_intruder = format!("requested from {}", intruder.addr);
    let flags: Vec<&String> =
        log.iter().filter(|l| l.starts_with("possible impostor") && l.contains(&from_intruder)).collect();
    assert_eq!(flags.len(), 2, "the job's log does not flag both requests of the intruder: {log:#?}");
    assert!(flags[0].contains("no DHCP exchange"), "{flags:?}");
    // The victim's snapshot is recorded for its host, and held.
    let snaps = snapshots_of(&engine, "srv01");
    let held = snaps.iter().find(|s| s["id"] == first.as_str()).unwrap_or_else(|| panic!("{snaps:#?}"));
    assert_eq!((&held["host"], &held["confirmed"]), (&json!("srv01"), &json!(false)), "{held:#}");
    assert!(log.iter().any(|l| l.contains(&format!("snapshot {first} is held unconfirmed"))), "{log:#?}");
    let listed = engine.kura(&["snapshots", "--host", "srv01"]);
    listed.expect_success();
    assert!(listed.stdout.lines().any(|l| l.starts_with(&first) && l.contains("UNCONFIRMED")), "{}", listed.stdout);
    // No restore picks it: not by default, not by name; until an operator confirms it.
    let refused = engine.kura(&["restore", "srv01"]);
    assert!(!refused.status.success() && refused.stderr.contains("no confirmed snapshot"), "{}", refused.stderr);
    let refused = engine.kura(&["restore", "srv01", "--snapshot", &first]);
    assert!(!refused.status.success() && refused.stderr.contains("unconfirmed"), "{}", refused.stderr);
    engine.kura(&["snapshot", "confirm", &first]).expect_success();
    assert_eq!(snapshots_of(&engine, "srv01")[0]["confirmed"], true);

    // Some files change; the expected new chunks come from a scratch local store that holds
    // the first state.
    let scratch = Store::new(dir.join("scratch-store"));
    scratch.capture(&system.disk.path, None);
    let new_marker = "second-capture";
    ext4_replace_file(&mut system.disk, bootdisk::ROOT, "etc/kura-marker", new_marker.as_bytes(), &dir);
    ext4_replace_file(&mut system.disk, bootdisk::ROOT, "srv/app/data2.txt", b"rewritten by the test\n", &dir);
    system.marker = new_marker.into();
    let expected = scratch.capture(&system.disk.path, None);

    // Capture 2: only the changed chunks are sent.
    let id = engine.queue(&["capture", "srv01"]);
    let mut m = bios_machine(&ns, "srv01-b", mac, &system.disk.path);
    engine.wait_power_off(&mut m, id, JOB_TIMEOUT);
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}\n{}", m.report());
    let second = j["snapshot"].as_str().unwrap().to_string();
    drop(m);
    assert!(!log.iter().any(|l| l.contains("possible impostor")), "a normal boot was flagged: {log:#?}");
    let line = log.iter().find(|l| l.starts_with("read ")).unwrap_or_else(|| panic!("no summary line: {log:#?}"));
    let new_chunks = number_after(line, "chunks,").unwrap() as u64;
    assert_eq!(
        new_chunks, expected.new_chunks,
        "the agent sent {new_chunks} chunks; a local store with the first state says {} are new: {line}",
        expected.new_chunks
    );
    // The second capture has the first as its parent (the agent asks the engine; the scratch
    // store takes its newest snapshot of the same file): the changed chunks go as 16 KiB
    // patches on the first capture's (docs/chunk.md), so a few patches of a few KiB.
    let whole = expected.new_chunks - expected.new_patches;
    assert!(
        expected.pieced_chunks >= 1 && whole + expected.pieced_chunks <= 6 && expected.new_stored_bytes < 256 << 10,
        "two small files changed, yet {new_chunks} chunks ({} bytes) are new: {line}; {expected:?}",
        expected.new_stored_bytes
    );
    let snap2 = snapshots_of(&engine, "srv01").into_iter().find(|s| s["id"] == second.as_str()).unwrap();
    assert_eq!(snap2["confirmed"], true, "a normal capture was held: {snap2:#}");
    eprintln!(
        "second capture: {new_chunks} new chunks of {} ({} bytes stored), engine says new_bytes={} reused_bytes={}",
        expected.chunks, expected.new_stored_bytes, snap2["new_bytes"], snap2["reused_bytes"]
    );

    // A machine with a disk too small for the snapshot: refused before any write.
    let small = dir.join("small.img");
    patterned_file(&small, 128 * MIB);
    let small_before = sha256_file(&small);
    let small_mac = "52:54:00:4b:05:03";
    engine.api_post("hosts", &json!({ "name": "tiny01", "macs": [small_mac] }));
    let id = engine.queue(&["restore", "tiny01", "--snapshot", &second]);
    let mut m = bios_machine(&ns, "tiny01", small_mac, &small);
    engine.wait_power_off(&mut m, id, JOB_TIMEOUT);
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "failed", "{j:#}\n{log:#?}");
    let err = j["error"].as_str().unwrap_or_default();
    assert!(err.contains("too small") && err.contains("nothing was written"), "unclear error: {err}");
    assert!(m.serial().contains("KURA AGENT FAILED"), "{}", m.report());
    assert_eq!(sha256_file(&small), small_before, "the too-small disk was written to");
    drop(m);

    // The replacement machine: a blank, larger disk.
    let target = dir.join("new01.img");
    kura_tests::disks::blank_file(&target, system.disk.size + 64 * MIB);
    let new_mac = "52:54:00:4b:05:02";
    engine.api_post("hosts", &json!({ "name": "new01", "macs": [new_mac] }));
    let t_restore = Instant::now();
    let id = engine.queue(&["restore", "new01", "--snapshot", &second]);
    let mut m = bios_machine(&ns, "new01", new_mac, &target);
    let marker = engine.wait_serial(&mut m, &system.marker_line(), JOB_TIMEOUT);
    let to_marker = t_restore.elapsed();
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}");
    assert!(marker.contains("root=/dev/vda3"), "{marker}");
    let serial = m.serial();
    let agent_end = serial.find("kura-agent: rebooting").expect("the agent did not reboot");
    assert!(serial[agent_end..].contains(bootdisk::GRUB_MARKER), "GRUB did not run after the restore:\n{serial}");
    m.wait_for_exit(Duration::from_secs(60));
    drop(m);
    let restored_line = log.iter().find(|l| l.starts_with("restored ")).cloned().unwrap_or_default();

    // The restored disk: every file, clean filesystems.
    assert_files_match(&system.disk, &target);
    assert_fsck_clean(&system.disk, &target);

    let mbps = |line: &str, bytes_word: &str| -> String {
        match (number_after(line, bytes_word), number_after(line, "in")) {
            (Some(b), Some(s)) if s > 0.0 => format!("{:.1} MB/s ({b} bytes in {s} s)", b / s / 1e6),
            _ => format!("? ({line})"),
        }
    };
    // The agent's memory is bounded by its pipelines' buffer pools (a few chunk-sized buffers
    // per thread), not by the disk: no image is ever held whole.
    let peak = |line: &str| number_after(line, "memory").unwrap_or_else(|| panic!("no agent peak memory: {line}"));
    let (capture_peak, restore_peak) = (peak(&read_line), peak(&restored_line));
    assert!(
        capture_peak < 128.0 && restore_peak < 128.0,
        "the agent's peak memory is not bounded: capture {capture_peak} MiB, restore {restore_peak} MiB"
    );
    eprintln!(
        "[{:?}] initrd.img {initrd_bytes} bytes; capture 1 {capture1_secs:.0} s power-on to power-off, in the VM {}; \
         restore in the VM {}; `kura restore` to the restored system's marker: {:.1?}; snapshots {first} → {second}; \
         agent peak memory: capture {capture_peak} MiB, restore {restore_peak} MiB; whole test {:.1?}",
        accel(),
        mbps(&read_line, "read"),
        mbps(&restored_line, &format!("{second}:")),
        to_marker,
        started.elapsed()
    );
}

/// UEFI with empty variables: the ESP holds GRUB only at `\EFI\kura\grubx64.efi`, so the
/// firmware cannot find it by itself; after the restore the agent writes a boot entry right
/// after the network entry the machine booted from (and BootNext) and the machine boots the
/// restored system.
///
/// Then the machine is powered on twice more with the variables it was left with: the network
/// comes first in its boot order and it has no job, so every boot asks Kura first, which tells
/// the firmware's PXE to boot locally (the PXE "local boot" menu, issue 17), and the machine
/// must reach its disk's marker within [`LOCAL_BOOT_LIMIT`] of power-on. The machines use
/// no `bootindex` ([`Boot::Firmware`]), so OVMF keeps the boot order the agent wrote, as
/// server firmware does.
fn uefi_restore_then_local_boots(rom: NicRom, site_dhcp: bool, mac: &str, name: &str) {
    let started = Instant::now();
    let ns = Netns::new();
    let pool = json!({ "start": ns.host_addr(50), "end": ns.host_addr(59), "netmask": "255.255.255.0" });
    let dhcp = if site_dhcp { json!({}) } else { json!({ "dhcp": "full", "pool": pool }) };
    let _site = site_dhcp.then(|| SiteDhcp::start(&ns));
    let (engine, _) = with_agent_image(&ns, &[], dhcp);
    let dir: PathBuf = ns.dir().to_path_buf();
    let system = bootdisk::build(&dir, "uefi-src.img", "uefi-system");
    let esp = kura_tests::readback::fat_files(&system.disk.path, system.disk.partition(bootdisk::ESP).offset).unwrap();
    let names: Vec<String> = esp.keys().map(|k| k.to_lowercase()).collect();
    assert_eq!(names, [bootdisk::EFI_LOADER.to_lowercase()], "the ESP must hold only the own-path loader");

    // The snapshot, captured with the CLI from inside the namespace.
    engine.api_post("hosts", &json!({ "name": "efi01", "macs": ["52:54:00:4b:06:01"] }));
    let path = system.disk.path.display().to_string();
    let run = engine.kura(&["image", "capture", "--json", "--host", "efi01", &path]);
    run.expect_success();
    let snapshot = run.json::<Value>()["snapshot"].as_str().unwrap().to_string();

    engine.api_post("hosts", &json!({ "name": name, "macs": [mac] }));
    let target = dir.join(format!("{name}.img"));
    kura_tests::disks::blank_file(&target, system.disk.size);
    let t0 = Instant::now();
    let id = engine.queue(&["restore", name, "--snapshot", &snapshot]);
    let machine = |vars: Option<&std::path::Path>, power_on: u32| {
        let mut b = Machine::builder(&ns, &format!("{name}-{power_on}"))
            .firmware(Firmware::Uefi)
            .nic_rom(rom.clone())
            .memory_mib(512)
            .mac(mac)
            .boot(Boot::Firmware)
            .disk(&target, DiskBus::Virtio)
            .arg("-device")
            .arg("virtio-rng-pci");
        if let Some(v) = vars {
            b = b.uefi_vars(v);
        }
        b.start()
    };
    let mut m = machine(None, 1);
    let marker = engine.wait_serial(&mut m, &system.marker_line(), JOB_TIMEOUT);
    let to_marker = t0.elapsed();
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}");
    let entry = log
        .iter()
        .find(|l| l.starts_with("UEFI boot entry: Boot"))
        .unwrap_or_else(|| panic!("the agent made no boot entry: {log:#?}"));
    assert!(entry.contains("\\EFI\\kura\\grubx64.efi") && entry.contains("partition 2"), "{entry}");
    assert!(marker.contains("root=/dev/vda3"), "{marker}");
    m.wait_for_exit(Duration::from_secs(60));
    // The entry is in the machine's NVRAM (its variable store file), which started empty.
    let vars = dir.join(format!("{name}-vars.fd"));
    std::fs::copy(m.dir().join("OVMF_VARS.fd"), &vars).unwrap();
    let fresh = std::fs::read(kura_tests::qemu::OVMF_VARS).unwrap();
    let loader: Vec<u8> = "\\EFI\\kura\\grubx64.efi".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let holds = |v: &[u8]| v.windows(loader.len()).any(|w| w == loader.as_slice());
    assert!(holds(&std::fs::read(&vars).unwrap()) && !holds(&fresh), "the loader's path is not in the UEFI variables");
    drop(m);
    assert_files_match(&system.disk, &target);

    // Power-ons 2 and 3: no job; network first; Kura sends the firmware on to the disk.
    let mut times = Vec::new();
    for boot in 2..=3 {
        let (offers_before, scripts_before) = (local_boot_offers(&engine, mac), scripts(&engine, mac));
        let mut m = machine(Some(&vars), boot);
        // Where the time goes: the network entry given up, GRUB started, the OS marker.
        let network_done = if rom == NicRom::Default { "Nothing to boot" } else { "PXE-E21" };
        engine.wait_serial(&mut m, network_done, LOCAL_BOOT_LIMIT * 3);
        let t_network = m.uptime();
        engine.wait_serial(&mut m, "Welcome to GRUB", LOCAL_BOOT_LIMIT * 3);
        let t_grub = m.uptime();
        let line = engine.wait_serial(&mut m, &system.marker_line(), LOCAL_BOOT_LIMIT * 3);
        let t = m.uptime();
        eprintln!("power-on {boot}: network entry over at {t_network:.1?}, GRUB at {t_grub:.1?}, OS marker at {t:.1?}");
        let serial = m.serial();
        assert!(line.contains("root=/dev/vda3"), "{line}");
        // OVMF's PXE got the local-boot menu; the NIC's iPXE ROM got no answer from Kura and
        // found nothing to boot. Neither fetched a script.
        let sent_on = match rom {
            NicRom::Default => serial.contains("Nothing to boot"),
            _ => local_boot_offers(&engine, mac) > offers_before && serial.contains("PXE-E21"),
        };
        assert!(sent_on, "power-on {boot}: Kura did not send the firmware on to its disk:\n{}", m.report());
        assert_eq!(scripts(&engine, mac), scripts_before, "power-on {boot} fetched a boot script");
        assert!(!serial.contains("iPXE initialising") && !serial.contains("Booting from SAN"), "{}", m.report());
        assert!(
            t <= LOCAL_BOOT_LIMIT,
            "power-on {boot}: the OS marker came {t:.1?} after power-on (limit {LOCAL_BOOT_LIMIT:?}):\n{}",
            m.report()
        );
        m.wait_for_exit(Duration::from_secs(60));
        std::fs::copy(m.dir().join("OVMF_VARS.fd"), &vars).unwrap();
        times.push(t);
    }
    eprintln!(
        "[{:?}] UEFI ({rom:?}, {}): {entry}; `kura restore` to the marker {to_marker:.1?}; \
         power-on to the OS marker without a job: 2nd {:.1?}, 3rd {:.1?}; test {:.1?}",
        accel(),
        if site_dhcp { "proxyDHCP" } else { "full DHCP" },
        times[0],
        times[1],
        started.elapsed()
    );
}

/// The boot scripts `mac` fetched.
fn scripts(engine: &NetbootEngine, mac: &str) -> usize {
    engine
        .boot_log_of(mac)
        .map(|m| kura_tests::netboot::events(&m).iter().filter(|(s, _)| s == "script").count())
        .unwrap_or(0)
}

/// The boot log's local-boot answers to `mac` (the PXE menu that sends UEFI to its disk).
fn local_boot_offers(engine: &NetbootEngine, mac: &str) -> usize {
    engine
        .boot_log_of(mac)
        .map(|m| kura_tests::netboot::events(&m).iter().filter(|(_, d)| d.contains("local boot (PXE menu)")).count())
        .unwrap_or(0)
}

/// OVMF's own PXE; dnsmasq as the site's DHCP server and Kura in proxy mode.
#[test]
fn uefi_restore_recreates_the_firmware_boot_entry() {
    uefi_restore_then_local_boots(NicRom::Disabled, true, "52:54:00:4b:06:02", "efi02");
}

/// QEMU's iPXE EFI ROM on the NIC (its own boot entry runs first); Kura is the only DHCP
/// server (full mode), and its IPv6 router advertisements end iPXE's IPv6 configuration at
/// once. (In proxy mode, with no IPv6 router on the LAN, an iPXE ROM waits about 16 s for
/// IPv6 before it finds nothing to boot: see docs/operations.md.)
#[test]
fn uefi_restore_and_local_boots_with_the_nics_ipxe_rom() {
    uefi_restore_then_local_boots(NicRom::Default, false, "52:54:00:4b:06:03", "efi03");
}

/// The network cut mid-capture (the machine's tap goes down): the engine fails the job once
/// the agent has been silent for `--agent-timeout`, aborts its upload, commits nothing; the
/// agent gives up too and powers off; a retry after the link is back succeeds.
///
/// Kura is the only DHCP server, with 8-second leases: the agent of the retry renews its lease
/// while it captures (a long job must not lose its address).
#[test]
fn network_cut_mid_capture_fails_the_job_and_a_retry_succeeds() {
    let started = Instant::now();
    let ns = Netns::new();
    let pool =
        json!({ "start": ns.host_addr(50), "end": ns.host_addr(59), "netmask": "255.255.255.0", "lease_secs": 8 });
    let (engine, _) = with_agent_image(&ns, &["--agent-timeout", "15"], json!({ "dhcp": "full", "pool": pool }));
    let dir: PathBuf = ns.dir().to_path_buf();
    // 240 MiB that do not compress: the capture takes many seconds under TCG.
    let system = bootdisk::build_with(&dir, "cut01.img", "cut", 240 * MIB);
    let mac = "52:54:00:4b:07:01";
    engine.api_post("hosts", &json!({ "name": "cut01", "macs": [mac] }));
    let machine = |name: &str| bios_machine(&ns, name, mac, &system.disk.path);

    let id = engine.queue(&["capture", "cut01"]);
    let mut m = machine("cut01");
    // Wait until chunks are flowing, then pull the cable.
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let (j, log) = engine.job_and_log(id);
        assert_ne!(j["state"], "succeeded", "the capture ended before the cut: {log:#?}");
        assert!(Instant::now() < deadline, "the capture never started: {j:#}\n{log:#?}\n{}", m.report());
        let (done, total) = (j["done_bytes"].as_u64().unwrap_or(0), j["total_bytes"].as_u64().unwrap_or(0));
        if j["state"] == "running" && done > 0 {
            assert!(done < total, "the capture was over before the cut could fall in it: {j:#}");
            eprintln!("cutting the network at {done} of {total} bytes");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ns.set_link(ns.tap(), false);
    let cut = Instant::now();
    let failed = loop {
        let (j, log) = engine.job_and_log(id);
        if j["state"] == "failed" {
            break (j, log);
        }
        assert!(cut.elapsed() < Duration::from_secs(90), "the job did not fail after the cut: {j:#}\n{log:#?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let failed_after = cut.elapsed();
    let err = failed.0["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("lost contact with the agent") && err.contains("nothing was committed"), "{err}");
    assert!(
        snapshots_of(&engine, "cut01").is_empty(),
        "a snapshot was committed: {:#?}",
        snapshots_of(&engine, "cut01")
    );
    ns.set_link(ns.tap(), true);
    // The agent gives up on its own (its requests time out), says so, and powers off.
    engine.wait_power_off(&mut m, id, JOB_TIMEOUT);
    let serial = m.serial();
    assert!(serial.contains("KURA AGENT FAILED"), "{}", m.report());
    assert!(snapshots_of(&engine, "cut01").is_empty(), "a snapshot appeared after the cut");
    drop(m);

    // The retry.
    let id = engine.queue(&["capture", "cut01"]);
    let mut m = machine("cut01-retry");
    engine.wait_power_off(&mut m, id, JOB_TIMEOUT);
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}\n{}", m.report());
    assert!(
        log.iter().any(|l| l.starts_with("DHCP: ") && l.contains("renewed for 8 s")),
        "the agent did not renew its 8 s lease during the capture: {log:#?}"
    );
    let snaps = snapshots_of(&engine, "cut01");
    assert_eq!(snaps.len(), 1, "{snaps:#?}");
    assert_eq!(snaps[0]["id"], j["snapshot"]);
    // The retry's snapshot is whole: restored from the engine into a new image file, every file
    // on every filesystem matches the source disk, and the filesystems are clean.
    let restored = dir.join("cut01-restored.img");
    let snap = snaps[0]["id"].as_str().expect("a snapshot id").to_string();
    engine.kura(&["image", "restore", &snap, restored.to_str().unwrap(), "--json"]).expect_success();
    assert_files_match(&system.disk, &restored);
    assert_fsck_clean(&system.disk, &restored);
    let read = log.iter().find(|l| l.starts_with("read ")).cloned().unwrap_or_default();
    eprintln!(
        "[{:?}] network cut: job failed {failed_after:.1?} after the cut ({err}); retry captured {}: {read}; test {:.1?}",
        accel(),
        snaps[0]["id"],
        started.elapsed()
    );
}
