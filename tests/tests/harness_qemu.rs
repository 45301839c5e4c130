//! Self-tests of the netboot harness: network namespaces, the site's DHCP server, QEMU machines
//! and the test boot image, on real QEMU (TCG on machines without usable KVM, so these take a
//! minute or two each). Root only; CI runs them as root with the packages installed by
//! `scripts/test`. A missing package fails the test, naming it.
//!
//! Each test ends by checking that its namespace, taps and processes are gone.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use kura_tests::bootimage::{Initramfs, TestKernel, KERNEL_CMDLINE, MARKER};
use kura_tests::netns::Netns;
use kura_tests::qemu::{accel, Firmware, Machine, Nic, NicRom};
use kura_tests::site_dhcp::{transaction_id, SiteDhcp};

/// Boots under TCG take minutes; generous, but still ends a hung test.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Everything `ns` ran and the namespace itself; checked after it is dropped.
struct Footprint {
    ns: String,
    pids: Vec<u32>,
}

impl Footprint {
    fn of(ns: &Netns, extra: &[u32]) -> Footprint {
        let mut pids = ns.pids();
        pids.extend_from_slice(extra);
        assert!(!pids.is_empty(), "nothing runs in {}?", ns.name());
        Footprint { ns: ns.name().to_owned(), pids }
    }

    fn assert_gone(&self) {
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(
            !list.split_whitespace().any(|n| n == self.ns),
            "namespace {} still exists after its test:\n{list}",
            self.ns
        );
        for pid in &self.pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} of {} still runs", self.ns);
        }
    }
}

/// The value of `key=` in a marker line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn direct_boot_gets_a_lease_from_the_site_dhcp() {
    direct_boot_gets_a_lease("q35", Nic::VirtioNet);
}

/// The other machine type and NIC model the harness offers.
#[test]
fn direct_boot_with_e1000_on_pc() {
    direct_boot_gets_a_lease("pc", Nic::E1000);
}

/// Boots the test kernel and initramfs directly; the init gets an address from the site's DHCP
/// with udhcpc, runs an extra script line and powers off, which ends QEMU.
fn direct_boot_gets_a_lease(machine: &str, nic: Nic) {
    let footprint = {
        let ns = Netns::new();
        let dhcp = SiteDhcp::start(&ns);
        let kernel = TestKernel::installed();
        let initrd = Initramfs::new(&kernel, "harness-direct")
            .dhcp(true)
            .script_line("say custom-step uptime=$(cut -d' ' -f1 /proc/uptime)")
            .build(ns.dir());
        let mut m = Machine::builder(&ns, "direct")
            .machine_type(machine)
            .nic(nic)
            .direct_boot(&kernel.vmlinuz, Some(&initrd), KERNEL_CMDLINE)
            .no_reboot(true)
            .start();
        let footprint = Footprint::of(&ns, &[m.pid(), dhcp.pid()]);

        let booted = m.wait_for_serial(&format!("{MARKER} booted"), BOOT_TIMEOUT);
        let t_booted = m.uptime();
        assert!(booted.contains("name=harness-direct"), "{booted}");
        let line = m.wait_for_serial(&format!("{MARKER} dhcp"), BOOT_TIMEOUT);
        let t_dhcp = m.uptime();
        assert!(!line.contains("dhcp-failed"), "udhcpc got no lease: {line}\n{}\n{}", m.report(), dhcp.log());
        let ip: std::net::Ipv4Addr = field(&line, "ip").parse().unwrap();
        assert_eq!(field(&line, "mac"), m.mac());
        let (first, last) = dhcp.range();
        assert!(first <= ip && ip <= last, "{ip} is outside dnsmasq's range {first}-{last}");
        let lease = dhcp.leases().into_iter().find(|l| l.mac == m.mac());
        assert_eq!(lease.map(|l| l.addr), Some(ip), "dnsmasq's leases: {:?}", dhcp.leases());

        m.wait_for_serial(&format!("{MARKER} custom-step"), BOOT_TIMEOUT);
        m.wait_for_serial(&format!("{MARKER} done"), BOOT_TIMEOUT);
        let status = m.wait_for_exit(Duration::from_secs(60));
        assert!(status.success(), "QEMU did not exit cleanly on power-off: {status}\n{}", m.report());
        eprintln!(
            "[{:?}] direct boot ({machine}, {nic:?}): booted marker {t_booted:.1?}, DHCP lease {ip} {t_dhcp:.1?}, powered off {:.1?}",
            accel(),
            m.uptime()
        );
        footprint
    };
    footprint.assert_gone();
}

/// SeaBIOS runs the NIC's iPXE ROM (QEMU's default), which asks for an address as a BIOS PXE
/// client (`PXEClient:Arch:00000`) and takes the plain offer.
#[test]
fn bios_ipxe_rom_does_dhcp() {
    pxe_does_dhcp(Firmware::Bios, NicRom::Default, "iPXE", "PXEClient:Arch:00000", true);
}

/// OVMF without a NIC ROM uses its own virtio-net driver and PXE, an x64 UEFI PXE client
/// (`PXEClient:Arch:00007`). It ignores offers without boot information (no proxyDHCP here),
/// so it never requests the address: the offer is as far as it goes.
#[test]
fn uefi_native_pxe_does_dhcp() {
    pxe_does_dhcp(Firmware::Uefi, NicRom::Disabled, "Start PXE over IPv4", "PXEClient:Arch:00007", false);
}

/// Boots `firmware` from the network: its console shows `console` (the PXE client starting),
/// dnsmasq offers an address to a `vendor_class` client, and if it `takes_plain_offer` (an
/// offer without boot options), acknowledges its request too.
fn pxe_does_dhcp(firmware: Firmware, rom: NicRom, console: &str, vendor_class: &str, takes_plain_offer: bool) {
    let footprint = {
        let ns = Netns::new();
        let dhcp = SiteDhcp::start(&ns);
        let mut m = Machine::builder(&ns, "pxe").firmware(firmware).nic_rom(rom).network_boot().start();
        let footprint = Footprint::of(&ns, &[m.pid(), dhcp.pid()]);
        let started = Instant::now();

        m.wait_for_serial(console, BOOT_TIMEOUT);
        let offer = dhcp.wait_for_log(&["DHCPOFFER(br0)", m.mac()], BOOT_TIMEOUT);
        let t_offer = started.elapsed();
        let xid = transaction_id(&offer).expect("no transaction id");
        let transaction = dhcp.transaction(xid).join("\n");
        assert!(
            transaction.contains(&format!("DHCPDISCOVER(br0) {}", m.mac())),
            "no DISCOVER before the offer:\n{transaction}"
        );
        assert!(
            transaction.contains(&format!("vendor class: {vendor_class}")),
            "the client is not a {vendor_class}:\n{transaction}"
        );
        let mut summary = format!("DHCPOFFER at {t_offer:.1?}");
        if takes_plain_offer {
            dhcp.wait_for_log(&["DHCPACK(br0)", m.mac()], BOOT_TIMEOUT);
            summary += &format!(", DHCPACK at {:.1?}", started.elapsed());
        }
        let status = m.qmp("query-status", json!({}));
        assert_eq!(status["status"], "running", "machine stopped: {status}\n{}", m.report());
        eprintln!("[{:?}] {firmware:?} PXE: {summary}", accel());
        footprint
    };
    footprint.assert_gone();
}

/// The namespace goes away with every process in it even when a test panics, and a tap can be
/// taken down and up.
#[test]
fn netns_is_cleaned_up_after_a_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let ns = Netns::new();
        assert!(ns.ip(["-br", "link", "show", "tap0"]).contains("tap0"));
        ns.set_link("tap0", false);
        assert!(ns.ip(["link", "show", "tap0"]).contains("state DOWN"));
        ns.set_link("tap0", true);
        let mut sleeper = ns.command("sleep");
        sleeper.arg("600");
        let sleeper = ns.spawn(sleeper, "sleeper");
        // A process the harness does not hold a handle to: the namespace's drop must find it.
        let mut orphan = ns.command("sh");
        orphan.args(["-c", "sleep 600 >/dev/null 2>&1 & echo $!"]);
        let out = orphan.output().unwrap();
        let orphan: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let _dhcp = SiteDhcp::start(&ns);
        tx.send(Footprint::of(&ns, &[sleeper.pid(), orphan])).unwrap();
        std::mem::forget(sleeper);
        // Unwinds like a failed assertion, without the panic hook's message and backtrace.
        std::panic::resume_unwind(Box::new("a test failing with its namespace up"));
    })
    .join();
    assert!(result.is_err());
    let footprint = rx.recv().unwrap();
    // The forgotten child is a zombie until reaped; the orphan was reparented and killed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while footprint.pids.iter().any(|p| is_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&footprint.ns));
    for pid in &footprint.pids {
        assert!(!is_alive(*pid), "process {pid} survived its namespace");
    }
}

/// Running and not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}
