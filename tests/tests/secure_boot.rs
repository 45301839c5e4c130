//! Secure Boot, the disk half (issue 11): OVMF with Secure Boot enforced
//! ([`Firmware::UefiSecureBoot`]: `OVMF_CODE.secboot.fd`, a per-run copy of `OVMF_VARS.ms.fd`
//! with Microsoft's keys, q35 with SMM, secure pflash).
//!
//! - The signed test disk ([`bootdisk::build_signed`]: Debian's signed shim, GRUB and kernel on
//!   its ESP) boots to its marker, and the kernel it runs saw Secure Boot on and locked itself
//!   down.
//! - A restore onto a blank disk: the agent writes the boot entry, and the machine powered on
//!   again with Secure Boot enforced boots the restored system through that entry (the
//!   restored system prints the firmware's `BootCurrent`: the agent's entry, naming
//!   `shimx64.efi`). The agent itself still netboots through iPXE, which is unsigned: that
//!   power-on runs on the same Microsoft-keyed variable store with Secure Boot switched off
//!   in it (its `SecureBootEnable` variable, what the firmware's setup menu toggles: OVMF's
//!   plain build enforces Secure Boot too once keys are enrolled), and the store is switched
//!   back on, keeping everything the agent wrote, for the Secure Boot power-on.
//! - Negative control: the unsigned `snponly.efi` offered as the PXE boot file is refused by the
//!   firmware, and not one TCP connection reaches the engine.
//!
//! Root only; QEMU under TCG where KVM is unusable. Needs ovmf, shim-signed,
//! grub-efi-amd64-signed, linux-image-amd64 (signed) besides the netboot tests' packages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kura_tests::bootdisk::{self, BootDisk, SECURE_BOOT_MARKER, SHIM_LOADER};
use kura_tests::bootimage::{Initramfs, TestKernel, KERNEL_CMDLINE};
use kura_tests::netboot::{events, with_agent_image, NetbootEngine, IPXE_BIOS, IPXE_EFI};
use kura_tests::netns::Netns;
use kura_tests::qemu::{accel, Boot, DiskBus, Firmware, Machine, NicRom, OVMF_VARS_MS};
use kura_tests::readback::assert_files_match;
use kura_tests::site_dhcp::SiteDhcp;

/// Longest a boot through shim, GRUB and the kernel to the marker may take under TCG
/// (measured: see the test output; about a minute on a loaded 2-core machine).
const SECURE_BOOT_LIMIT: Duration = Duration::from_secs(300);

/// Longest a netbooted restore may take from power-on to the restored system's marker.
const JOB_TIMEOUT: Duration = Duration::from_secs(420);

/// Switches Secure Boot on or off in an OVMF variable store file, as the firmware's setup menu
/// does: the one-byte `SecureBootEnable` variable (vendor `f0a30bc7-…`) of every valid
/// (`VAR_ADDED`) record. Variable records have no checksum; the keys stay enrolled.
fn secure_boot_enable(vars: &Path, on: bool) {
    let mut d = std::fs::read(vars).unwrap();
    let name: Vec<u8> = "SecureBootEnable\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let guid = [0xc7, 0x0b, 0xa3, 0xf0, 0x08, 0xaf, 0x56, 0x45, 0x99, 0xc4, 0x00, 0x10, 0x09, 0xc9, 0x3a, 0x44];
    let mut patched = 0;
    let mut at = 0;
    while let Some(i) = d[at..].windows(name.len()).position(|w| w == name.as_slice()).map(|i| at + i) {
        at = i + 1;
        // The authenticated variable header (60 bytes) in front of the name: StartId 0x55AA,
        // State, …, NameSize at 36, DataSize at 40, VendorGuid at 44.
        let Some(h) = i.checked_sub(60) else { continue };
        let u32_at = |o: usize| u32::from_le_bytes(d[h + o..h + o + 4].try_into().unwrap());
        if d[h..h + 2] != [0xAA, 0x55] || d[h + 2] != 0x3F || d[h + 44..h + 60] != guid {
            continue;
        }
        assert_eq!((u32_at(36), u32_at(40)), (name.len() as u32, 1), "SecureBootEnable of an unknown shape");
        d[i + name.len()] = u8::from(on);
        patched += 1;
    }
    assert!(patched > 0, "no SecureBootEnable variable in {}", vars.display());
    std::fs::write(vars, d).unwrap();
}

/// The value of `key=` among the words of `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Waits for the restored system's Secure Boot line, then its marker; returns the first and
/// the time from power-on to the marker.
fn wait_for_system(
    m: &mut Machine,
    system: &BootDisk,
    timeout: Duration,
    log: &dyn Fn() -> String,
) -> (String, Duration) {
    let mut wait = |marker: &str| {
        m.poll_serial(marker, timeout)
            .unwrap_or_else(|why| panic!("machine {}: {why} before {marker:?}\n{}\n{}", m.name(), m.report(), log()))
    };
    let sb = wait(SECURE_BOOT_MARKER);
    wait(&system.marker_line());
    (sb, m.uptime())
}

/// Asserts the kernel ran with Secure Boot enforced and locked down.
fn assert_enforced(line: &str, m: &Machine) {
    assert_eq!(field(line, "secureboot"), Some("1"), "Secure Boot is not on: {line}\n{}", m.report());
    assert_eq!(field(line, "lockdown"), Some("integrity"), "the kernel is not locked down: {line}\n{}", m.report());
}

/// The signed disk with the removable-media fallback boots on a machine with Secure Boot
/// enforced and empty variables: shim → Debian's GRUB → Debian's kernel → the root's marker.
#[test]
fn signed_disk_boots_under_secure_boot() {
    let started = Instant::now();
    let ns = Netns::new();
    let system = bootdisk::build_signed(ns.dir(), "sb-fixture.img", "signed-fixture", true);
    let mut m = Machine::builder(&ns, "sb-fixture")
        .firmware(Firmware::UefiSecureBoot)
        .nic_rom(NicRom::Disabled)
        .memory_mib(512)
        .boot(Boot::Disk)
        .disk(&system.disk.path, DiskBus::Virtio)
        .start();
    let (line, t) = wait_for_system(&mut m, &system, SECURE_BOOT_LIMIT, &String::new);
    assert_enforced(&line, &m);
    let serial = m.serial();
    assert!(serial.contains("KURA-GRUB efi-signed"), "Debian's GRUB did not read the ESP's grub.cfg:\n{serial}");
    m.wait_for_exit(Duration::from_secs(60));
    eprintln!(
        "[{:?}] signed disk under Secure Boot: power-on to the marker {t:.1?} ({line}); test {:.1?}",
        accel(),
        started.elapsed()
    );
}

/// The signed disk (no fallback loader: only a boot entry can start it) is captured, then
/// restored by the netbooted agent onto a blank disk; the machine, powered on again with
/// Secure Boot enforced and the variables the agent left, boots the restored system through
/// the agent's entry, which names `\EFI\debian\shimx64.efi`.
#[test]
fn restored_signed_disk_boots_under_secure_boot_through_the_agents_entry() {
    let started = Instant::now();
    let ns = Netns::new();
    let _site = SiteDhcp::start(&ns);
    let (engine, _) = with_agent_image(&ns, &[], json!({}));
    let dir: PathBuf = ns.dir().to_path_buf();
    let system = bootdisk::build_signed(&dir, "sb-src.img", "signed-system", false);
    let esp = kura_tests::readback::fat_files(&system.disk.path, system.disk.partition(bootdisk::ESP).offset).unwrap();
    assert!(
        esp.keys().all(|k| !k.to_lowercase().starts_with("efi/boot/")),
        "the ESP must have no fallback loader: {esp:?}"
    );

    engine.api_post("hosts", &json!({ "name": "sbsrc", "macs": ["52:54:00:4b:0b:01"] }));
    let path = system.disk.path.display().to_string();
    let run = engine.kura(&["image", "capture", "--json", "--host", "sbsrc", &path]);
    run.expect_success();
    let snapshot = run.json::<Value>()["snapshot"].as_str().unwrap().to_string();

    let mac = "52:54:00:4b:0b:02";
    engine.api_post("hosts", &json!({ "name": "sb01", "macs": [mac] }));
    let target = dir.join("sb01.img");
    kura_tests::disks::blank_file(&target, system.disk.size);
    let run = engine.kura(&["restore", "sb01", "--snapshot", &snapshot]);
    run.expect_success();
    let id: i64 = run.stdout.trim().parse().unwrap_or_else(|_| panic!("no job id: {}", run.stdout));
    let machine = |name: &str, firmware: Firmware, vars: &Path| {
        Machine::builder(&ns, name)
            .firmware(firmware)
            .uefi_vars(vars)
            .nic_rom(NicRom::Disabled)
            .memory_mib(512)
            .mac(mac)
            .boot(Boot::Firmware)
            .disk(&target, DiskBus::Virtio)
            .arg("-device")
            .arg("virtio-rng-pci")
            .start()
    };

    // Power-on 1: the Microsoft-keyed store with Secure Boot switched off; PXE → iPXE →
    // agent → restore → boot entry → reboot (BootNext) into the restored system, which powers
    // off.
    let vars = dir.join("sb01-vars.fd");
    std::fs::copy(OVMF_VARS_MS, &vars).unwrap();
    secure_boot_enable(&vars, false);
    let t0 = Instant::now();
    let mut m = machine("sb01-restore", Firmware::Uefi, &vars);
    let (line, _) = wait_for_system(&mut m, &system, JOB_TIMEOUT, &|| engine.log());
    let to_marker = t0.elapsed();
    assert_eq!(field(&line, "secureboot"), Some("0"), "the restore did not run with Secure Boot off: {line}");
    let (j, log) = engine.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}");
    let entry = log
        .iter()
        .find(|l| l.starts_with("UEFI boot entry: Boot"))
        .unwrap_or_else(|| panic!("the agent made no boot entry: {log:#?}"))
        .clone();
    assert!(entry.contains("\\EFI\\debian\\shimx64.efi") && entry.contains("partition 2"), "{entry}");
    let number = entry["UEFI boot entry: Boot".len()..][..4].to_string();
    m.wait_for_exit(Duration::from_secs(60));
    std::fs::copy(m.dir().join("OVMF_VARS.fd"), &vars).unwrap();
    drop(m);
    let shim: Vec<u8> =
        format!("\\{}", SHIM_LOADER.replace('/', "\\")).encode_utf16().flat_map(u16::to_le_bytes).collect();
    let holds = |v: &[u8]| v.windows(shim.len()).any(|w| w == shim.as_slice());
    assert!(holds(&std::fs::read(&vars).unwrap()), "the shim's path is not in the machine's UEFI variables");
    assert!(!holds(&std::fs::read(OVMF_VARS_MS).unwrap()));
    assert_files_match(&system.disk, &target);
    secure_boot_enable(&vars, true);

    // Power-on 2, Secure Boot enforced: no job, so Kura sends the network entry on and the
    // firmware takes the agent's entry: shim → GRUB → kernel, all verified.
    let mut m = machine("sb01-secure", Firmware::UefiSecureBoot, &vars);
    let (line, t) = wait_for_system(&mut m, &system, SECURE_BOOT_LIMIT, &|| engine.log());
    assert_enforced(&line, &m);
    assert_eq!(
        field(&line, "bootcurrent").map(str::to_uppercase).as_deref(),
        Some(number.as_str()),
        "the restored system did not start from the agent's entry ({entry}): {line}\n{}",
        m.report()
    );
    assert!(m.serial().contains("KURA-GRUB efi-signed"), "{}", m.report());
    m.wait_for_exit(Duration::from_secs(60));
    eprintln!(
        "[{:?}] {entry}; `kura restore` to the marker (Secure Boot off) {to_marker:.1?}; power-on with Secure Boot \
         enforced to the marker {t:.1?} ({line}); test {:.1?}",
        accel(),
        started.elapsed()
    );
}

/// TCP connections accepted in the namespace so far (`PassiveOpens` of its `/proc/net/snmp`).
fn passive_opens(ns: &Netns) -> u64 {
    let out = ns.run("cat", ["/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().expect("no Tcp: header"), tcp.next().expect("no Tcp: values"));
    let i = names.split_whitespace().position(|n| n == "PassiveOpens").expect("no PassiveOpens");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Negative control: OVMF with Secure Boot enforced gets the unsigned `snponly.efi` as its PXE
/// boot file (a capture job is queued for it), downloads it over TFTP and refuses to start it:
/// no iPXE, no TCP connection to the engine at all.
#[test]
fn unsigned_pxe_boot_file_is_refused_under_secure_boot() {
    let started = Instant::now();
    let ns = Netns::new();
    let kernel = TestKernel::installed();
    let initrd = Initramfs::new(&kernel, "sb-never").modules(&[]).build(ns.dir());
    let _site = SiteDhcp::start(&ns);
    let engine = NetbootEngine::start(
        &ns,
        json!({
            "kernel": kernel.vmlinuz,
            "initrd": initrd,
            "kernel_args": KERNEL_CMDLINE,
            "ipxe_bios": IPXE_BIOS,
            "ipxe_efi": IPXE_EFI,
        }),
    );
    assert!(IPXE_EFI.ends_with("snponly.efi"));
    let mac = "52:54:00:4b:0b:03";
    let job_id = engine.host_with_capture_job("sbneg", mac);

    let opens = passive_opens(&ns);
    let mut m = Machine::builder(&ns, "sb-neg")
        .firmware(Firmware::UefiSecureBoot)
        .nic_rom(NicRom::Disabled)
        .memory_mib(512)
        .mac(mac)
        .network_boot()
        .start();
    let wait = |m: &mut Machine, marker: &str| {
        m.poll_serial(marker, SECURE_BOOT_LIMIT)
            .unwrap_or_else(|why| panic!("{why} before {marker:?}\n{}\n{}", m.report(), engine.log()))
    };
    wait(&mut m, "Start PXE over IPv4");
    let refusal = wait(&mut m, "failed to load Boot");
    let t = m.uptime();
    // Give a started image time to show itself before looking.
    std::thread::sleep(Duration::from_secs(5));
    m.kill();
    let serial = m.serial();
    assert!(refusal.contains("PXEv4") && refusal.contains("Access Denied"), "not the firmware's refusal: {refusal}");
    assert!(!serial.contains("iPXE"), "iPXE ran under Secure Boot:\n{serial}");
    assert_eq!(passive_opens(&ns), opens, "a TCP connection reached the namespace while the machine ran");
    let ev = events(&engine.boot_log_of(mac).unwrap_or_else(|| panic!("no boot log for {mac}")));
    assert!(ev.iter().any(|(s, d)| s == "tftp" && d.contains("snponly.efi")), "snponly.efi was not fetched: {ev:#?}");
    assert!(
        !ev.iter().any(|(s, _)| ["script", "kernel", "initrd"].contains(&s.as_str())),
        "an HTTP request reached the engine: {ev:#?}"
    );
    let (j, _) = engine.job_and_log(job_id);
    assert_eq!(j["state"], "queued", "{j:#}");
    eprintln!(
        "[{:?}] unsigned snponly.efi under Secure Boot: refused at {t:.1?} ({refusal}); test {:.1?}",
        accel(),
        started.elapsed()
    );
}
