//! The DR takeover story in the QEMU harness (issue 13, `docs/dr.md` "Taking over"): a machine
//! is captured by netboot through the primary engine with replication to a DR engine on; the
//! primary is killed (`SIGKILL`) and its data directory deleted, and its whole site goes away;
//! the DR engine, restarted with netboot on its own site's boot LAN, restores the snapshot it
//! received onto the blank disk of a replacement machine with the same MAC, which boots it.
//!
//! ```text
//!   netns "site": br0 10.77.a.1 ── tap0 ── QEMU srv01 (PXE first, then its system disk)
//!                 kura serve --netboot (the primary), dnsmasq (site DHCP)
//!                 to-dr 192.168.251.1/30 ─┐  route 10.77.b.0/24 via .2
//!                                          │ veth (the WAN link)
//!   netns "dr":   to-site 192.168.251.2/30┘  route 10.77.a.0/24 via .1
//!                 br0 10.77.b.1 ── tap0 ── QEMU srv01-dr (blank disk, same MAC)
//!                 kura serve (the DR engine; with --netboot after the takeover), dnsmasq
//! ```
//!
//! Two namespaces, not one: the DR site is another boot LAN (its own DHCP, proxyDHCP, TFTP and
//! boot HTTP on the same ports the primary's use, which one namespace could not hold twice),
//! reached from the primary over a routed link as a real DR site would be; and deleting the
//! primary's namespace with everything in it shows the DR side needs nothing from the primary.
//!
//! Root only; QEMU under TCG (a netboot takes a minute or two).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kura_tests::bootdisk;
use kura_tests::checkers::assert_fsck_clean;
use kura_tests::kura_cli::kura_bin;
use kura_tests::netboot::{bios_machine, kura_in, with_agent_image, API_PORT};
use kura_tests::netns::{Netns, NsProcess};
use kura_tests::qemu::accel;
use kura_tests::readback::assert_files_match;
use kura_tests::site_dhcp::SiteDhcp;

/// Longest a netbooted job may take from power-on to power-off (or to the restored system's
/// marker) under TCG with six builds on two cores; a capture or restore here takes 1–3 min.
const JOB_TIMEOUT: Duration = Duration::from_secs(420);

/// How long the DR engine may take to hold the snapshot after the primary committed it. The
/// issue asks for 5 s on an idle machine; this one is shared with six builds, and a failed send
/// is retried within 30 s (`MAX_BACKOFF`), so 60 s.
const REPLICATED_WITHIN: Duration = Duration::from_secs(60);

const HOST: &str = "srv01";
const MAC: &str = "52:54:00:4b:0d:01";
/// The replacement machine's host record on the DR engine (docs/dr.md, taking over, step 2).
const REPLACEMENT: &str = "srv01-dr";

/// The /24 of a namespace's bridge.
fn lan(ns: &Netns) -> String {
    let [a, b, c, _] = ns.bridge_addr().octets();
    format!("{}/24", Ipv4Addr::new(a, b, c, 0))
}

/// A routed veth between the two sites: each reaches the other's bridge address through it.
fn link_sites(site: &Netns, dr: &Netns) {
    site.ip(["link", "add", "to-dr", "type", "veth", "peer", "name", "to-site", "netns", dr.name()]);
    site.ip(["addr", "add", "192.168.251.1/30", "dev", "to-dr"]);
    site.ip(["link", "set", "to-dr", "up"]);
    dr.ip(["addr", "add", "192.168.251.2/30", "dev", "to-site"]);
    dr.ip(["link", "set", "to-site", "up"]);
    site.ip(["route", "add", &lan(dr), "via", "192.168.251.2"]);
    dr.ip(["route", "add", &lan(site), "via", "192.168.251.1"]);
}

/// The DR engine before the takeover: a plain `kura serve` (no netboot: the DR site only
/// receives copies) on its bridge, with the data directory [`with_agent_image`] uses later.
fn start_dr_engine(dr: &Netns) -> (NsProcess, String) {
    let data = dr.dir().join("kura-data");
    std::fs::create_dir_all(&data).unwrap();
    let mut cmd = dr.command(kura_bin());
    cmd.arg("serve")
        .arg("--data")
        .arg(&data)
        .arg("--listen")
        .arg(format!("{}:{API_PORT}", dr.bridge_addr()))
        .arg("--insecure-http")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    let mut process = dr.spawn(cmd, "kura-serve-dr");
    let t0 = Instant::now();
    while !process.stdout().contains("listening on") {
        if let Some(status) = process.try_wait() {
            panic!("the DR engine exited at start ({status}):\n{}{}", process.stdout(), process.stderr());
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the DR engine did not start:\n{}", process.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin = std::fs::read_to_string(data.join("admin.token")).expect("no admin.token").trim().to_owned();
    (process, admin)
}

/// `kura snapshots --json` of the engine at `url`, run inside `ns`.
fn snapshots(ns: &Netns, url: &str, token: &str) -> Vec<Value> {
    kura_in(ns, url, token, &["snapshots", "--json"]).expect_success().json()
}

fn signal(pid: u32, sig: &str) {
    let out = Command::new("kill").args(["-s", sig, &pid.to_string()]).output().unwrap();
    assert!(out.status.success(), "kill -s {sig} {pid}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_dr_engine_takes_over_and_restores_a_machine_captured_through_the_dead_primary() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let system = bootdisk::build(work.path(), "srv01.img", "taken-over");

    let dr_ns = Netns::new();
    let (mut dr_process, dr_admin) = start_dr_engine(&dr_ns);
    let dr_url = format!("http://{}:{API_PORT}", dr_ns.bridge_addr());

    let (snapshot, t_capture, lag) = {
        let site = Netns::new();
        link_sites(&site, &dr_ns);
        let _site_dhcp = SiteDhcp::start(&site);
        let (primary, _) = with_agent_image(&site, &[], json!({}));

        // 1. The DR engine's replica token, given to the primary as remote `dr` (over the
        // link: the primary's CLI runs at the primary site), and a rule for every host.
        let token: Value = kura_in(&dr_ns, &dr_url, &dr_admin, &["token", "create", "--role", "replica", "--json"])
            .expect_success()
            .json();
        let token_file = site.dir().join("dr.token");
        std::fs::write(&token_file, format!("{}\n", token["token"].as_str().unwrap())).unwrap();
        primary.kura(&["remote", "add", "dr", &dr_url, "--token-file", token_file.to_str().unwrap()]).expect_success();
        std::fs::remove_file(&token_file).unwrap();
        primary.kura(&["replicate", "add", "--to", "dr"]).expect_success();

        // 2. The machine is captured by netboot through the primary.
        primary.api_post("hosts", &json!({ "name": HOST, "macs": [MAC] }));
        let id = primary.queue(&["capture", HOST]);
        let t0 = Instant::now();
        let mut m = bios_machine(&site, "srv01", MAC, &system.disk.path);
        let snapshot = loop {
            let (j, log) = primary.job_and_log(id);
            match j["state"].as_str() {
                Some("succeeded") => break j["snapshot"].as_str().unwrap().to_string(),
                Some("queued" | "running") if t0.elapsed() < JOB_TIMEOUT => {}
                _ => panic!("capture job: {j:#}\n{log:#?}\n{}\n{}", m.report(), primary.log()),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let t_capture = t0.elapsed();

        // 3. The DR engine holds the snapshot, and the primary counts the copy.
        let committed = Instant::now();
        while !snapshots(&dr_ns, &dr_url, &dr_admin).iter().any(|s| s["id"] == snapshot.as_str()) {
            assert!(
                committed.elapsed() < REPLICATED_WITHIN,
                "snapshot {snapshot} is not on the DR engine {REPLICATED_WITHIN:?} after its commit:\n{}\n{}\n{}",
                primary.kura(&["replicate", "list"]).stdout,
                primary.log(),
                dr_process.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let lag = committed.elapsed();
        let listed: Vec<Value> = primary.kura(&["snapshots", "--json"]).expect_success().json();
        let ours = listed.iter().find(|s| s["id"] == snapshot.as_str()).unwrap_or_else(|| panic!("{listed:#?}"));
        assert_eq!((ours["copies"].as_u64(), ours["copies_wanted"].as_u64()), (Some(2), Some(2)), "{ours:#}");
        assert_eq!(ours["copied_to"], json!(["dr"]), "{ours:#}");
        primary.wait_power_off(&mut m, id, Duration::from_secs(120));
        drop(m);

        // 4. The primary dies: SIGKILL, its data directory deleted, then its whole site (the
        // namespace, its link to the DR site and everything running in it).
        signal(primary.pid(), "KILL");
        std::fs::remove_dir_all(&primary.data).unwrap();
        assert!(!primary.data.exists());
        (snapshot, t_capture, lag)
    };

    // 5. The DR engine takes over: restarted with netboot on its own site's boot LAN (which
    // has its own DHCP server), its catalog as replication left it.
    signal(dr_process.pid(), "TERM");
    if dr_process.wait_timeout(Duration::from_secs(30)).is_none() {
        panic!("the DR engine did not stop on SIGTERM:\n{}", dr_process.stderr());
    }
    drop(dr_process);
    let _dr_dhcp = SiteDhcp::start(&dr_ns);
    let (dr, _) = with_agent_image(&dr_ns, &[], json!({}));
    assert_eq!(dr.admin, dr_admin);
    let held = snapshots(&dr_ns, &dr.api_url, &dr.admin);
    let copy = held.iter().find(|s| s["id"] == snapshot.as_str()).unwrap_or_else(|| panic!("{held:#?}"));
    assert_eq!(copy["host"], HOST, "{copy:#}");
    // Replication registered the host without its MAC; the operator registers the replacement
    // machine with it (docs/dr.md, taking over, step 2).
    let host = dr.api_get(&format!("hosts/{HOST}"));
    assert_eq!(host["macs"], json!([]), "{host:#}");
    dr.api_post("hosts", &json!({ "name": REPLACEMENT, "macs": [MAC] }));

    // 6. The restore on the DR engine, onto a blank disk of a new machine with the same MAC.
    let target = work.path().join("srv01-dr.img");
    kura_tests::disks::blank_file(&target, system.disk.size);
    let t0 = Instant::now();
    let id = dr.queue(&["restore", REPLACEMENT, "--snapshot", &snapshot]);
    let mut m = bios_machine(&dr_ns, "srv01-dr", MAC, &target);
    dr.wait_serial(&mut m, "kura-agent: rebooting", JOB_TIMEOUT);
    let t_restore = t0.elapsed();
    let marker = dr.wait_serial(&mut m, &system.marker_line(), JOB_TIMEOUT);
    let t_boot = t0.elapsed() - t_restore;
    let (j, log) = dr.job_and_log(id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{log:#?}");
    assert!(marker.contains("root=/dev/vda3"), "{marker}");
    let serial = m.serial();
    let agent_end = serial.find("kura-agent: rebooting").unwrap();
    assert!(serial[agent_end..].contains(bootdisk::GRUB_MARKER), "GRUB did not run after the restore:\n{serial}");
    m.wait_for_exit(Duration::from_secs(60));
    drop(m);
    drop(dr);

    assert_files_match(&system.disk, &target);
    assert_fsck_clean(&system.disk, &target);
    eprintln!(
        "[{:?}] DR takeover: capture through the primary {t_capture:.1?} (power-on to commit); snapshot {snapshot} \
         on the DR engine {lag:.1?} after the commit was seen; restore on the DR engine {t_restore:.1?} (job queued \
         to the agent's reboot); boot of the restored disk {t_boot:.1?} (reboot to its marker); whole test {:.1?}",
        accel(),
        started.elapsed()
    );
}
