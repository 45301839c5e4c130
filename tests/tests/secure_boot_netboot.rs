//! Secure Boot netboot end to end (issue 11): OVMF with Secure Boot enforced (Microsoft's keys
//! enrolled) and its own PXE (no iPXE ROM) boots Debian's signed chain from `kura serve
//! --netboot` — shim → grubnetx64 → the signed distribution kernel → Kura's initramfs, all over
//! TFTP — and the agent captures and restores through it.
//!
//! ```text
//!   netns: br0 10.77.n.1 ── tap0 ── QEMU q35,smm=on, OVMF_CODE.secboot.fd + OVMF_VARS.ms.fd
//!          kura serve --netboot {"secure_boot": "on"}: proxyDHCP, TFTP (shim, GRUB, GRUB's
//!          per-MAC configuration, kernel, initrd), API; dnsmasq as the site DHCP
//! ```
//!
//! The system disk is [`bootdisk::build_signed`]'s: Debian's signed shim and signed GRUB on its
//! ESP where a Debian installation has them (`\EFI\debian\shimx64.efi`, `grubx64.efi`,
//! `grub.cfg`), so the restored disk itself boots under Secure Boot through the boot entry the
//! agent writes (it prefers shim), and through GRUB's local boot, which looks for that path.
//!
//! Root only; TCG. Timings go to stderr (boot-to-agent, the TFTP fetch of kernel + initrd).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kura_tests::bootdisk;
use kura_tests::content::sha256_file;
use kura_tests::netboot::{events, with_agent_image, NetbootEngine};
use kura_tests::netns::Netns;
use kura_tests::qemu::{accel, Boot, DiskBus, Firmware, Machine, NicRom, OVMF_CODE_SECBOOT, OVMF_VARS_MS};
use kura_tests::readback::assert_files_match;
use kura_tests::site_dhcp::SiteDhcp;

/// Longest a netbooted job may take from power-on to its end under TCG (the signed chain
/// loads kernel and initramfs over TFTP at GRUB's 1 KiB blocks).
const JOB_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest a UEFI machine without a job may take from power-on to its disk's OS (issue 17),
/// with margin for Secure Boot's signature checks under TCG.
const LOCAL_BOOT_LIMIT: Duration = Duration::from_secs(60);

const SHIM_SIGNED: &str = "/usr/lib/shim/shimx64.efi.signed";
const GRUB_SIGNED: &str = "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";

fn require_secure_boot_packages() {
    for (f, package) in [
        (SHIM_SIGNED, "shim-signed"),
        (GRUB_SIGNED, "grub-efi-amd64-signed"),
        (OVMF_CODE_SECBOOT, "ovmf"),
        (OVMF_VARS_MS, "ovmf"),
        ("/usr/bin/mcopy", "mtools"),
        ("/usr/sbin/blkid", "util-linux"),
    ] {
        assert!(Path::new(f).is_file(), "{f} is missing: apt-get install -y {package}");
    }
}

/// A Secure Boot machine (OVMF's own PXE, no iPXE ROM) with `disk`.
fn sb_machine(ns: &Netns, name: &str, mac: &str, disk: &Path, boot: Boot, vars: Option<&Path>) -> Machine {
    let mut b = Machine::builder(ns, name)
        .firmware(Firmware::UefiSecureBoot)
        .nic_rom(NicRom::Disabled)
        .memory_mib(768)
        .mac(mac)
        .boot(boot)
        .disk(disk, DiskBus::Virtio)
        .arg("-device")
        .arg("virtio-rng-pci");
    if let Some(v) = vars {
        b = b.uefi_vars(v);
    }
    b.start()
}

fn wait_serial(m: &mut Machine, engine: &NetbootEngine, marker: &str, timeout: Duration) -> String {
    m.poll_serial(marker, timeout)
        .unwrap_or_else(|why| panic!("machine {}: {why} before {marker:?}\n{}\n{}", m.name(), m.report(), engine.log()))
}

/// Waits until job `id` is over; returns it and its log.
fn wait_job_end(m: &mut Machine, engine: &NetbootEngine, id: i64) -> (Value, Vec<String>) {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let (j, log) = engine.job_and_log(id);
        if j["state"] == "succeeded" || j["state"] == "failed" {
            return (j, log);
        }
        assert!(Instant::now() < deadline, "job {id} not over after {JOB_TIMEOUT:?}: {j:#}\n{log:#?}\n{}", m.report());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Where the time of one signed netboot went, from the serial console and the boot log.
struct BootTimes {
    /// Power-on to GRUB's configuration line (`Kura: … job …`), to the agent's first line
    /// (`kura-agent VERSION starting`: kernel and initramfs loaded), and to its Secure Boot line.
    grub: Duration,
    kernel: Duration,
    agent: Duration,
}

/// Follows one signed netboot of `m` to the agent; checks the TFTP chain in the boot log.
fn follow_signed_boot(m: &mut Machine, engine: &NetbootEngine, mac: &str) -> BootTimes {
    wait_serial(m, engine, &format!("({mac})"), JOB_TIMEOUT);
    let grub = m.uptime();
    let agent_line = format!("kura-agent {} starting", env!("CARGO_PKG_VERSION"));
    wait_serial(m, engine, &agent_line, JOB_TIMEOUT);
    let kernel = m.uptime();
    wait_serial(m, engine, "kura-agent: secure boot:", JOB_TIMEOUT);
    let agent = m.uptime();
    let log = engine.boot_log_of(mac).expect("the machine is in the boot log");
    let ev = events(&log);
    for want in ["kura/shimx64.efi: sent", "kura/grubx64.efi: sent", "kura/vmlinuz: sent", "kura/initrd.img: sent"] {
        // GRUB asks for its files with a leading slash (`/kura/vmlinuz`), shim without.
        let sent = |(s, d): &(String, String)| s == "tftp" && d.trim_start_matches('/').starts_with(want);
        assert!(ev.iter().any(sent), "no {want:?} in the boot log: {ev:#?}");
    }
    assert!(ev.iter().any(|(s, d)| s == "script" && d == "GRUB job script"), "{ev:#?}");
    assert!(!ev.iter().any(|(_, d)| d.contains("ipxe") || d.contains("snponly")), "iPXE was offered: {ev:#?}");
    BootTimes { grub, kernel, agent }
}

/// The agent's line about Secure Boot: the firmware enforces it and the kernel is locked down.
fn assert_locked_down(m: &Machine, log: &[String]) {
    let line = log.iter().find(|l| l.starts_with("secure boot:")).unwrap_or_else(|| panic!("{log:#?}"));
    assert_eq!(line, "secure boot: on (firmware SecureBoot=1); kernel lockdown: integrity", "{}", m.report());
}

/// A capture and a restore through the signed chain on Secure Boot machines, then the
/// restored system booting under Secure Boot through the agent's boot entry, and a power-on
/// without a job going on to that disk.
#[test]
fn secure_boot_capture_and_restore_through_shim_and_grub() {
    require_secure_boot_packages();
    let started = Instant::now();
    let ns = Netns::new();
    let _site_dhcp = SiteDhcp::start(&ns);
    let (engine, initrd_bytes) = with_agent_image(&ns, &[], json!({ "secure_boot": "on" }));
    let dir: PathBuf = ns.dir().to_path_buf();
    // Debian's own layout (\EFI\debian\shimx64.efi, …): what GRUB's local boot looks for.
    let system = bootdisk::build_signed(&dir, "sb-src.img", "sb-system", false);

    // Capture on a Secure Boot machine, booted through shim → GRUB → signed kernel.
    let mac = "52:54:00:4b:0b:01";
    engine.api_post("hosts", &json!({ "name": "sb01", "macs": [mac] }));
    let before = sha256_file(&system.disk.path);
    let id = engine.queue(&["capture", "sb01"]);
    let mut m = sb_machine(&ns, "sb01", mac, &system.disk.path, Boot::Network, None);
    let times = follow_signed_boot(&mut m, &engine, mac);
    let (j, log) = wait_job_end(&mut m, &engine, id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}\n{}", m.report());
    assert_locked_down(&m, &log);
    assert_eq!(sha256_file(&system.disk.path), before, "a capture changed the disk");
    let snapshot = j["snapshot"].as_str().unwrap().to_string();
    m.wait_for_exit(Duration::from_secs(120));
    drop(m);

    // Restore onto a blank disk of another Secure Boot machine, which then boots the restored
    // system (signed shim and GRUB on its ESP) through the entry the agent wrote.
    let mac2 = "52:54:00:4b:0b:02";
    engine.api_post("hosts", &json!({ "name": "sb02", "macs": [mac2] }));
    let target = dir.join("sb02.img");
    kura_tests::disks::blank_file(&target, system.disk.size);
    let t0 = Instant::now();
    let id = engine.queue(&["restore", "sb02", "--snapshot", &snapshot]);
    let mut m = sb_machine(&ns, "sb02-1", mac2, &target, Boot::Firmware, None);
    let times2 = follow_signed_boot(&mut m, &engine, mac2);
    let (j, log) = wait_job_end(&mut m, &engine, id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}\n{}", m.report());
    assert_locked_down(&m, &log);
    let entry = log.iter().find(|l| l.starts_with("UEFI boot entry: Boot")).cloned().unwrap_or_default();
    let marker = wait_serial(&mut m, &engine, &system.marker_line(), JOB_TIMEOUT);
    let to_marker = t0.elapsed();
    assert!(marker.contains("root=/dev/vda3"), "{marker}");
    m.wait_for_exit(Duration::from_secs(120));
    let vars = dir.join("sb02-vars.fd");
    std::fs::copy(m.dir().join("OVMF_VARS.fd"), &vars).unwrap();
    drop(m);
    assert_files_match(&system.disk, &target);

    // Power-on without a job: network first, Kura sends the firmware on to the disk, which
    // boots under Secure Boot.
    let mut m = sb_machine(&ns, "sb02-2", mac2, &target, Boot::Firmware, Some(&vars));
    wait_serial(&mut m, &engine, &system.marker_line(), LOCAL_BOOT_LIMIT * 3);
    let local = m.uptime();
    assert!(local <= LOCAL_BOOT_LIMIT, "the OS marker came {local:.1?} after power-on:\n{}", m.report());
    assert!(m.serial().contains("PXE-E21"), "Kura did not send the firmware on to its disk:\n{}", m.report());
    m.wait_for_exit(Duration::from_secs(60));
    drop(m);

    // GRUB's local boot: a job whose agent already has its token (the job runs) and whose
    // machine then restarts (say the agent crashed) is booted through shim and GRUB again, but
    // its configuration gets no second token ("token requested twice"): GRUB chainloads the
    // disk's shim, which boots the restored system under Secure Boot.
    let id = engine.queue(&["capture", "sb02"]);
    let mut m = sb_machine(&ns, "sb02-3", mac2, &target, Boot::Firmware, Some(&vars));
    follow_signed_boot(&mut m, &engine, mac2);
    let deadline = Instant::now() + JOB_TIMEOUT;
    while engine.job_and_log(id).0["state"] != "running" {
        assert!(Instant::now() < deadline, "the agent never ran: {}", m.report());
        std::thread::sleep(Duration::from_millis(300));
    }
    m.qmp("system_reset", json!({}));
    let reset_at = m.uptime();
    let before = m.serial().len();
    let serial_after = |m: &Machine| m.serial()[before..].to_string();
    let deadline = Instant::now() + LOCAL_BOOT_LIMIT * 3;
    while !serial_after(&m).contains(&system.marker_line()) {
        assert!(Instant::now() < deadline, "after GRUB's local boot the disk did not boot:\n{}", serial_after(&m));
        std::thread::sleep(Duration::from_millis(300));
    }
    let exit_to_os = m.uptime() - reset_at;
    let after = serial_after(&m);
    assert!(after.contains("token requested twice") || after.contains("booting from the local disk"), "{after}");
    assert!(after.contains("Kura: chainloading") && after.contains("/EFI/debian/shimx64.efi"), "{after}");
    let ev = events(&engine.boot_log_of(mac2).unwrap());
    assert!(ev.iter().any(|(s, d)| s == "script" && d == "GRUB local-boot script"), "{ev:#?}");
    let (_, log) = engine.job_and_log(id);
    assert!(log.iter().any(|l| l.contains("token requested twice")), "{log:#?}");
    drop(m);

    eprintln!(
        "[{:?}] secure boot netboot (initrd {:.1} MiB): capture: GRUB configuration at {:.1?}, kernel at {:.1?}, \
         agent at {:.1?} after power-on; restore: agent at {:.1?}; restore to the restored system's marker \
         {to_marker:.1?} ({entry}); power-on without a job to the OS {local:.1?}; reset of a running job \
         through GRUB's exit to the OS {exit_to_os:.1?}; test {:.1?}",
        accel(),
        initrd_bytes as f64 / (1 << 20) as f64,
        times.grub,
        times.kernel,
        times.agent,
        times2.agent,
        started.elapsed()
    );
}
