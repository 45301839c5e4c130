//! End-to-end netboot: real firmware (SeaBIOS with QEMU's iPXE NIC ROM, OVMF with its own PXE)
//! booting over a private network namespace from `kura serve --netboot`, down to the kernel and
//! initramfs the engine serves, which print a marker and their command line on the serial
//! console.
//!
//! ```text
//!   netns: br0 10.77.n.1 ── tap0 ── QEMU (-boot n)
//!          kura serve --listen 10.77.n.1:8443 --insecure-http --netboot netboot.json
//!            proxyDHCP 67+4011 (or full DHCP), TFTP 69, boot HTTP 8080
//!          dnsmasq (DHCP only, the "site's" server; not in full-DHCP mode)
//! ```
//!
//! Root only (network namespaces, taps); QEMU runs under TCG where KVM is unusable, so each
//! boot takes a minute or two. A missing package fails the test, naming it. Each test ends by
//! checking that its namespace and every process in it are gone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kura_tests::bootimage::{Initramfs, TestKernel, KERNEL_CMDLINE, MARKER};
use kura_tests::netboot::{events, NetbootEngine};
use kura_tests::netns::Netns;
use kura_tests::qemu::{accel, Firmware, Machine, NicRom};
use kura_tests::site_dhcp::SiteDhcp;

/// Longest a UEFI machine without a job may spend in network boot (issue 17).
const LOCAL_BOOT_LIMIT: Duration = Duration::from_secs(30);

/// Longest any one stage of a boot may take (TCG is slow; a hung boot still ends).
const STAGE_TIMEOUT: Duration = Duration::from_secs(170);

const IPXE_BIOS: &str = "/usr/lib/ipxe/undionly.kpxe";
const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
const SNPONLY_EFI: &str = "/usr/lib/ipxe/snponly.efi";

/// Everything a test ran in its namespace and the namespace itself; checked after the drop.
struct Footprint {
    ns: String,
    pids: Vec<u32>,
}

impl Footprint {
    fn of(ns: &Netns) -> Footprint {
        let pids = ns.pids();
        assert!(!pids.is_empty(), "nothing runs in {}?", ns.name());
        Footprint { ns: ns.name().to_owned(), pids }
    }

    fn assert_gone(&self) {
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(!list.split_whitespace().any(|n| n == self.ns), "namespace {} still exists:\n{list}", self.ns);
        for pid in &self.pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} of {} still runs", self.ns);
        }
    }
}

fn require_ipxe_builds() {
    for f in [IPXE_BIOS, IPXE_EFI] {
        assert!(Path::new(f).is_file(), "{f} is missing: apt-get install -y ipxe");
    }
}

/// The boot image the engine serves in these tests: prints `booted`, then its command line
/// (`KURA-TEST-MARKER cmdline …`), optionally gets an address with udhcpc, and powers off.
fn test_initrd(ns: &Netns, kernel: &TestKernel, name: &str, dhcp: bool) -> PathBuf {
    let modules: &[&str] = if dhcp { &["virtio_pci", "virtio_net"] } else { &[] };
    Initramfs::new(kernel, name)
        .modules(modules)
        .dhcp(dhcp)
        .script_line("say cmdline $(cat /proc/cmdline)")
        .build(ns.dir())
}

/// A netboot configuration serving `kernel` and `initrd` (the engine sets `address`).
fn config(kernel: &TestKernel, initrd: &Path, extra: Value) -> Value {
    let mut c = json!({
        "kernel": kernel.vmlinuz,
        "initrd": initrd,
        "kernel_args": KERNEL_CMDLINE,
        "ipxe_bios": IPXE_BIOS,
        "ipxe_efi": IPXE_EFI,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

/// The value of `key=` among the words of `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Checks the command line the booted kernel printed: the job's parameters from the script,
/// `initrd=`, and the configured kernel arguments. Returns the agent token.
fn check_cmdline(engine: &NetbootEngine, line: &str, mac: &str, job: i64) -> String {
    let get = |k: &str| field(line, k).unwrap_or_else(|| panic!("no {k}= on the booted kernel's command line: {line}"));
    assert_eq!(get("initrd"), "initrd.img", "{line}");
    assert_eq!(get("kura.job"), job.to_string(), "{line}");
    assert_eq!(get("kura.mac"), mac, "{line}");
    assert_eq!(get("kura.server"), engine.api_url, "{line}");
    assert_eq!(get("console"), "ttyS0", "the configured kernel_args are missing: {line}");
    assert!(field(line, "kura.fingerprint").is_none(), "a fingerprint for a plain-HTTP API: {line}");
    let token = get("kura.token").to_owned();
    assert!(token.starts_with("kura_"), "{line}");
    token
}

/// The token on the command line works for its job and MAC: the agent can read its job.
fn check_agent_token(engine: &NetbootEngine, token: &str, mac: &str, job: i64) {
    let url = format!("{}/api/v1/jobs/{job}", engine.api_url);
    let auth = format!("Authorization: Bearer {token}");
    let body = engine.get(&url, &[&auth, &format!("X-Kura-Mac: {mac}")]);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["job"]["id"], job, "{v}");
    assert_eq!(v["job"]["kind"], "capture", "{v}");
    assert!(
        engine.try_get(&url, &[&auth, "X-Kura-Mac: 52:54:00:00:00:99"]).is_none(),
        "token accepted for another MAC"
    );
}

/// `kura netboot status --json` for `mac`: its events, after checking every stage in `stages`
/// appears (in that order).
fn boot_log(engine: &NetbootEngine, mac: &str, stages: &[&str]) -> Vec<(String, String)> {
    let status = engine.netboot_status();
    assert_eq!(status["enabled"], true, "{status}");
    let me = engine.boot_log_of(mac).unwrap_or_else(|| panic!("{mac} is not in kura netboot status:\n{status:#}"));
    let ev = events(&me);
    let mut at = 0;
    for s in stages {
        match ev[at..].iter().position(|(stage, _)| stage == s) {
            Some(i) => at += i + 1,
            None => panic!("no {s} event (in order {stages:?}) for {mac} in kura netboot status: {ev:#?}"),
        }
    }
    ev
}

/// Waits for `marker` on the console; on failure panics with the console, the engine's output
/// and its boot log.
fn wait(m: &mut Machine, engine: &NetbootEngine, marker: &str, timeout: Duration) -> String {
    m.poll_serial(marker, timeout).unwrap_or_else(|why| {
        let status = engine.kura(&["netboot", "status", "--json"]);
        panic!(
            "machine {}: {why} before {marker:?} appeared on its console\n{}\n{}\n--- kura netboot status\n{}",
            m.name(),
            m.report(),
            engine.log(),
            status.stdout
        )
    })
}

/// Waits for the init's markers; returns the `cmdline` line and the times they appeared.
fn wait_for_marker(m: &mut Machine, engine: &NetbootEngine) -> (String, Duration) {
    wait(m, engine, &format!("{MARKER} booted"), STAGE_TIMEOUT);
    let t = m.uptime();
    let line = wait(m, engine, &format!("{MARKER} cmdline"), Duration::from_secs(30));
    (line, t)
}

/// BIOS: SeaBIOS runs the NIC's iPXE ROM, which asks for an address (the site's dnsmasq
/// offers one) and gets its script URL from Kura's proxyDHCP offer; the script boots the
/// configured kernel and initrd with the job's agent token on the command line.
#[test]
fn bios_netboots_a_capture_job_through_proxy_dhcp_and_ipxe() {
    require_ipxe_builds();
    let started = Instant::now();
    let footprint = {
        let ns = Netns::new();
        let kernel = TestKernel::installed();
        let initrd = test_initrd(&ns, &kernel, "netboot-bios", false);
        let site = SiteDhcp::start(&ns);
        let engine = NetbootEngine::start(&ns, config(&kernel, &initrd, json!({})));
        let mac = "52:54:00:4b:01:01";
        let job = engine.host_with_capture_job("bios01", mac);

        let mut m = Machine::builder(&ns, "bios").firmware(Firmware::Bios).mac(mac).network_boot().start();
        let footprint = Footprint::of(&ns);
        let script_url = format!("{}/boot/script?mac={mac}", engine.boot_url);
        wait(&mut m, &engine, &script_url, STAGE_TIMEOUT);
        let t_script = m.uptime();
        let (cmdline, t_booted) = wait_for_marker(&mut m, &engine);
        let status = m.wait_for_exit(Duration::from_secs(60));
        assert!(status.success(), "QEMU did not exit cleanly on power-off: {status}\n{}", m.report());

        let token = check_cmdline(&engine, &cmdline, mac, job);
        check_agent_token(&engine, &token, mac, job);
        // Issue 16: a second "machine" on the boot LAN (the namespace's bridge address, not the
        // address the victim's DHCP exchange showed) asks for the victim's script: no token,
        // and the job's log flags a possible impostor; the victim's token still works.
        let stolen = engine.script_for(mac);
        assert!(!stolen.contains("kura.token"), "the script gave another machine the token:\n{stolen}");
        assert!(stolen.contains("sanboot"), "{stolen}");
        let detail = engine.api_get(&format!("jobs/{job}"));
        let flagged =
            detail["log"].as_array().into_iter().flatten().any(|l| {
                l["level"] == "warn" && l["message"].as_str().is_some_and(|m| m.contains("possible impostor"))
            });
        assert!(flagged, "the job is not flagged: {detail:#}");
        check_agent_token(&engine, &token, mac, job);
        // The address came from the site's server, the boot information from Kura.
        assert!(site.leases().iter().any(|l| l.mac == mac), "dnsmasq leased nothing to {mac}:\n{}", site.log());
        let ev = boot_log(&engine, mac, &["dhcp", "script", "kernel", "initrd"]);
        assert!(
            ev.iter().any(|(s, d)| s == "dhcp" && d.contains("proxy offer (bios, iPXE)") && d.contains(&script_url)),
            "{ev:#?}"
        );
        assert!(ev.iter().any(|(s, d)| s == "script" && d == "job script"), "{ev:#?}");
        assert!(ev.iter().any(|(s, d)| s == "kernel" && d.contains("200")), "{ev:#?}");
        eprintln!(
            "[{:?}] BIOS proxyDHCP: script URL on the console at {t_script:.1?}, kernel marker at {t_booted:.1?}, \
             powered off at {:.1?}",
            accel(),
            m.uptime()
        );
        footprint
    };
    footprint.assert_gone();
    eprintln!("bios_netboots_a_capture_job_through_proxy_dhcp_and_ipxe: {:.1?}", started.elapsed());
}

/// UEFI: OVMF's own PXE (no NIC ROM) gets an address from dnsmasq and `ipxe.efi` from Kura's
/// proxyDHCP (offer on 67, then the boot-server request on 4011), loads it over TFTP; that iPXE
/// asks again and chains the HTTP script, kernel and initrd.
#[test]
fn uefi_pxe_netboots_through_proxy_dhcp_tftp_and_ipxe() {
    uefi_pxe_netboot(IPXE_EFI, "52:54:00:4b:02:01");
}

/// The same with `snponly.efi` (iPXE on the firmware's own network driver), the other UEFI
/// build Kura can serve: both are timed on every run (docs/operations.md).
#[test]
fn uefi_pxe_netboots_with_snponly_efi() {
    uefi_pxe_netboot(SNPONLY_EFI, "52:54:00:4b:02:02");
}

fn uefi_pxe_netboot(loader: &str, mac: &str) {
    require_ipxe_builds();
    assert!(Path::new(loader).is_file(), "{loader} is missing: apt-get install -y ipxe");
    let loader_name = Path::new(loader).file_name().unwrap().to_str().unwrap();
    let started = Instant::now();
    let footprint = {
        let ns = Netns::new();
        let kernel = TestKernel::installed();
        let initrd = test_initrd(&ns, &kernel, "netboot-uefi", false);
        let site = SiteDhcp::start(&ns);
        let engine = NetbootEngine::start(&ns, config(&kernel, &initrd, json!({ "ipxe_efi": loader })));
        let job = engine.host_with_capture_job("uefi01", mac);

        let mut m = Machine::builder(&ns, "uefi")
            .firmware(Firmware::Uefi)
            .nic_rom(NicRom::Disabled)
            .memory_mib(512)
            .mac(mac)
            .network_boot()
            .start();
        let footprint = Footprint::of(&ns);
        wait(&mut m, &engine, "Start PXE over IPv4", STAGE_TIMEOUT);
        let t_pxe = m.uptime();
        // iPXE's banner: the firmware's PXE loaded the iPXE build over TFTP.
        wait(&mut m, &engine, "iPXE initialising devices", STAGE_TIMEOUT);
        let t_ipxe = m.uptime();
        let script_url = format!("{}/boot/script?mac={mac}", engine.boot_url);
        wait(&mut m, &engine, &script_url, STAGE_TIMEOUT);
        let t_script = m.uptime();
        let (cmdline, t_booted) = wait_for_marker(&mut m, &engine);
        let status = m.wait_for_exit(Duration::from_secs(60));
        assert!(status.success(), "QEMU did not exit cleanly on power-off: {status}\n{}", m.report());

        let token = check_cmdline(&engine, &cmdline, mac, job);
        check_agent_token(&engine, &token, mac, job);
        assert!(site.leases().iter().any(|l| l.mac == mac), "dnsmasq leased nothing to {mac}:\n{}", site.log());
        let ev = boot_log(&engine, mac, &["dhcp", "tftp", "dhcp", "script", "kernel", "initrd"]);
        let has =
            |stage: &str, words: &[&str]| ev.iter().any(|(s, d)| s == stage && words.iter().all(|w| d.contains(w)));
        assert!(has("dhcp", &["proxy offer (efi-x64)", loader_name]), "no proxy offer of {loader_name} on 67: {ev:#?}");
        assert!(has("dhcp", &["PXE ack on 4011 (efi-x64)", loader_name]), "no answer on 4011: {ev:#?}");
        assert!(has("tftp", &[loader_name]), "{ev:#?}");
        assert!(has("dhcp", &["iPXE", &script_url]), "{ev:#?}");
        assert!(has("script", &["job script"]), "{ev:#?}");
        eprintln!(
            "[{:?}] UEFI proxyDHCP, {loader_name}: PXE at {t_pxe:.1?}, iPXE at {t_ipxe:.1?}, script at {t_script:.1?}, \
             kernel marker at {t_booted:.1?}, powered off at {:.1?}",
            accel(),
            m.uptime()
        );
        footprint
    };
    footprint.assert_gone();
    eprintln!("uefi_pxe_netboot({loader_name}): {:.1?}", started.elapsed());
}

/// Full-DHCP mode, no other DHCP server: Kura leases the BIOS iPXE ROM an address from its
/// pool with the script URL in the same offer, and the booted initramfs gets an address from
/// it too (udhcpc, not a PXE client).
#[test]
fn bios_netboots_with_kura_as_the_only_dhcp_server() {
    require_ipxe_builds();
    let started = Instant::now();
    let footprint = {
        let ns = Netns::new();
        let kernel = TestKernel::installed();
        let initrd = test_initrd(&ns, &kernel, "netboot-full", true);
        let (first, last) = (ns.host_addr(50), ns.host_addr(59));
        let pool = json!({ "start": first, "end": last, "netmask": "255.255.255.0" });
        let engine = NetbootEngine::start(&ns, config(&kernel, &initrd, json!({ "dhcp": "full", "pool": pool })));
        let mac = "52:54:00:4b:03:01";
        let job = engine.host_with_capture_job("full01", mac);

        let mut m = Machine::builder(&ns, "full").firmware(Firmware::Bios).mac(mac).network_boot().start();
        let footprint = Footprint::of(&ns);
        let script_url = format!("{}/boot/script?mac={mac}", engine.boot_url);
        wait(&mut m, &engine, &script_url, STAGE_TIMEOUT);
        let t_script = m.uptime();
        wait(&mut m, &engine, &format!("{MARKER} booted"), STAGE_TIMEOUT);
        let t_booted = m.uptime();
        let dhcp = wait(&mut m, &engine, &format!("{MARKER} dhcp"), Duration::from_secs(90));
        let cmdline = wait(&mut m, &engine, &format!("{MARKER} cmdline"), Duration::from_secs(30));
        let status = m.wait_for_exit(Duration::from_secs(60));
        assert!(status.success(), "QEMU did not exit cleanly on power-off: {status}\n{}", m.report());

        check_cmdline(&engine, &cmdline, mac, job);
        assert!(!dhcp.contains("dhcp-failed"), "the booted system got no lease from Kura: {dhcp}\n{}", engine.log());
        let ip: std::net::Ipv4Addr = field(&dhcp, "ip").unwrap().parse().unwrap();
        assert!(first <= ip && ip <= last, "{ip} is outside Kura's pool {first}-{last}");
        let leases = std::fs::read_to_string(engine.data.join("netboot-leases.json")).unwrap_or_default();
        assert!(leases.contains(mac) && leases.contains(&ip.to_string()), "lease file: {leases}");
        let ev = boot_log(&engine, mac, &["dhcp", "script", "kernel", "initrd"]);
        assert!(
            ev.iter()
                .any(|(s, d)| s == "dhcp" && d.starts_with("offer ") && d.contains("iPXE") && d.contains(&script_url)),
            "no full-mode offer with the script URL: {ev:#?}"
        );
        assert!(ev.iter().any(|(s, d)| s == "lease" && d.starts_with("ack ")), "no lease granted: {ev:#?}");
        // No IPv6 router on this LAN: Kura's router advertisement ends iPXE's IPv6
        // configuration, so the script follows the first offer at once (issue 17).
        let log = engine.boot_log_of(mac).unwrap();
        let time_of = |stage: &str, prefix: &str| {
            log["events"].as_array().into_iter().flatten().find_map(|e| {
                (e["stage"] == stage && e["detail"].as_str().is_some_and(|d| d.starts_with(prefix)))
                    .then(|| e["time"].as_i64().unwrap())
            })
        };
        let (offer, script) = (time_of("dhcp", "offer ").unwrap(), time_of("script", "").unwrap());
        assert!(
            script - offer <= 5,
            "the script came {} s after the first offer (IPv6 stall?): {log:#}",
            script - offer
        );
        eprintln!(
            "[{:?}] BIOS full DHCP: script URL at {t_script:.1?} ({} s after the first offer), kernel marker at \
             {t_booted:.1?}, lease {ip}, powered off at {:.1?}",
            accel(),
            script - offer,
            m.uptime()
        );
        footprint
    };
    footprint.assert_gone();
    eprintln!("bios_netboots_with_kura_as_the_only_dhcp_server: {:.1?}", started.elapsed());
}

/// No pending job: a known host's script boots locally (no kernel), and a machine the catalog
/// has never seen netboots, is registered as `mac-…` (shown by `kura hosts`), and is told by
/// its script on the iPXE console to boot from its disk.
#[test]
fn machines_without_a_job_boot_locally_and_unknown_macs_are_registered() {
    require_ipxe_builds();
    let started = Instant::now();
    let footprint = {
        let ns = Netns::new();
        let kernel = TestKernel::installed();
        let initrd = test_initrd(&ns, &kernel, "netboot-idle", false);
        let _site = SiteDhcp::start(&ns);
        let engine = NetbootEngine::start(&ns, config(&kernel, &initrd, json!({})));

        // A known host without a job.
        let idle = "52:54:00:4b:04:01";
        engine.api_post("hosts", &json!({ "name": "idle01", "macs": [idle] }));
        let script = engine.script_for(idle);
        assert_local_boot(&script);
        assert!(script.contains("host idle01: no pending job"), "{script}");

        // An unknown machine netboots.
        let stranger = "52:54:00:4b:04:02";
        let mut m = Machine::builder(&ns, "stranger").firmware(Firmware::Bios).mac(stranger).network_boot().start();
        let footprint = Footprint::of(&ns);
        let name = format!("mac-{}", stranger.replace(':', ""));
        // The script's `echo` (iPXE wraps it at 80 columns), then its `sanboot`, which finds no
        // disk, and its `exit` back to SeaBIOS, which has nothing else to boot.
        wait(&mut m, &engine, &format!("registered as host {name}"), STAGE_TIMEOUT);
        let t_script = m.uptime();
        wait(&mut m, &engine, "Booting from SAN device 0x80", Duration::from_secs(30));
        wait(&mut m, &engine, "No bootable device", Duration::from_secs(60));
        assert!(!m.serial().contains(MARKER), "a machine without a job booted the boot image:\n{}", m.report());

        let hosts: Value = engine.kura(&["hosts", "--json"]).expect_success().json();
        let host = hosts
            .as_array()
            .and_then(|h| h.iter().find(|h| h["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not in kura hosts --json: {hosts:#}"));
        assert_eq!(host["macs"], json!([stranger]), "{host}");
        let ev = boot_log(&engine, stranger, &["dhcp", "script"]);
        assert!(ev.iter().any(|(s, d)| s == "script" && d == "local-boot script"), "{ev:#?}");
        assert!(!ev.iter().any(|(s, _)| s == "kernel" || s == "initrd"), "{ev:#?}");
        // Its script now says it is known, still without a kernel.
        let script = engine.script_for(stranger);
        assert_local_boot(&script);
        assert!(script.contains(&format!("host {name}: no pending job")), "{script}");
        eprintln!(
            "[{:?}] unknown MAC: local-boot script on the console at {t_script:.1?}, back in SeaBIOS at {:.1?}",
            accel(),
            m.uptime()
        );
        footprint
    };
    footprint.assert_gone();
    eprintln!("machines_without_a_job_boot_locally_and_unknown_macs_are_registered: {:.1?}", started.elapsed());
}

/// UEFI machines without a job never load iPXE (issue 17): DHCP already answers their PXE with
/// the PXE "local boot" menu, and the firmware goes on to its next boot entry. Shown for an
/// unknown machine without a disk, with OVMF's own PXE (Secure Boot off and enforced) and with
/// QEMU's iPXE EFI ROM: within
/// [`LOCAL_BOOT_LIMIT`] of power-on its PXEv4 entry has ended and the firmware has moved on,
/// nothing was downloaded, no iPXE shell was reached, and the MAC is registered as a host.
#[test]
fn uefi_machines_without_a_job_go_on_to_their_next_boot_entry() {
    require_ipxe_builds();
    let started = Instant::now();
    let footprint = {
        let ns = Netns::new();
        let kernel = TestKernel::installed();
        let initrd = test_initrd(&ns, &kernel, "netboot-uefi-idle", false);
        let _site = SiteDhcp::start(&ns);
        let engine = NetbootEngine::start(&ns, config(&kernel, &initrd, json!({})));
        let mut footprint = None;
        let mut times = Vec::new();
        let variants = [
            (Firmware::Uefi, NicRom::Disabled),
            (Firmware::Uefi, NicRom::Default),
            (Firmware::UefiSecureBoot, NicRom::Disabled),
        ];
        for (i, (firmware, rom)) in variants.into_iter().enumerate() {
            let mac = format!("52:54:00:4b:07:0{}", i + 1);
            let mut m = Machine::builder(&ns, &format!("idle-uefi-{i}"))
                .firmware(firmware)
                .nic_rom(rom.clone())
                .memory_mib(512)
                .mac(&mac)
                .network_boot()
                .start();
            footprint.get_or_insert_with(|| Footprint::of(&ns));
            // EDK2's PXE ends with "PXE-E21: Remote boot cancelled" and BdsDxe moves on.
            wait(&mut m, &engine, "PXE-E21", STAGE_TIMEOUT);
            let t = m.uptime();
            let serial = m.serial();
            assert!(
                t <= LOCAL_BOOT_LIMIT,
                "{firmware:?} {rom:?}: the PXEv4 entry ended {t:.1?} after power-on:\n{}",
                m.report()
            );
            assert!(!serial.contains("iPXE>"), "an iPXE shell:\n{}", m.report());
            let ev = boot_log(&engine, &mac, &["dhcp"]);
            assert!(ev.iter().any(|(s, d)| s == "dhcp" && d.contains("local boot (PXE menu)")), "{ev:#?}");
            assert!(!ev.iter().any(|(s, _)| s == "tftp" || s == "script" || s == "kernel"), "{ev:#?}");
            let name = format!("mac-{}", mac.replace(':', ""));
            let hosts: Value = engine.kura(&["hosts", "--json"]).expect_success().json();
            assert!(
                hosts.as_array().is_some_and(|h| h.iter().any(|h| h["name"] == name.as_str())),
                "{name} was not registered: {hosts:#}"
            );
            m.kill();
            times.push((firmware, rom, t));
        }
        eprintln!("[{:?}] UEFI without a job, PXEv4 over and the next boot entry started at: {times:?}", accel());
        footprint.unwrap()
    };
    footprint.assert_gone();
    eprintln!("uefi_machines_without_a_job_go_on_to_their_next_boot_entry: {:.1?}", started.elapsed());
}

/// An iPXE script that boots the local disk: `sanboot` (BIOS), `exit` (UEFI, or after sanboot
/// fails), and nothing of the boot environment.
fn assert_local_boot(script: &str) {
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(script.lines().any(|l| l.starts_with("sanboot ")), "no sanboot: {script}");
    assert!(script.lines().any(|l| l.trim() == "exit"), "no exit: {script}");
    assert!(
        !script.lines().any(|l| l.starts_with("kernel ") || l.starts_with("initrd ") || l.trim() == "boot"),
        "a local-boot script that boots a kernel: {script}"
    );
    assert!(!script.contains("kura.token"), "{script}");
}
