//! Power control against real protocol peers: `kura host power ...` and queued jobs drive an
//! IPMI BMC (OpenIPMI's ipmi_sim), a Redfish BMC (sushy-tools' emulator) and Wake-on-LAN (a
//! magic packet caught on the other end of a veth, in network namespaces the test makes);
//! BMC passwords never leave the engine.
//!
//! Needs: openipmi, ipmitool, Python 3 with sushy-tools (see `kura_tests::bmc`), and root with
//! iproute2 for the Wake-on-LAN test.

use std::path::Path;
use std::time::{Duration, Instant};

use kura_tests::bmc::{python, IpmiSim, SushyEmulator};
use kura_tests::engine::{Api, Server};
use kura_tests::kura_cli::kura_bin;
use kura_tests::netboot::kura_in;
use kura_tests::netns::Netns;
use serde_json::{json, Value};

fn add_host(api: &Api, admin: &str, name: &str, mac: &str) {
    let r = api.req("POST", "/hosts").token(admin).json(&json!({"name": name, "macs": [mac]})).send();
    assert_eq!(r.status, 201, "{}", r.text());
}

fn password_file(dir: &Path, name: &str, password: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p
}

/// Queues a capture job for `host` through the API; returns its id.
/// `kura host power set HOST --driver ipmi` against the simulator (cipher suite 3: ipmi_sim
/// does not answer the negotiation).
fn set_ipmi(server: &Server, host: &str, address: &str, password_file: &Path) -> kura_tests::kura_cli::Run {
    server.kura(&[
        &"host",
        &"power",
        &"set",
        &host,
        &"--driver",
        &"ipmi",
        &"--address",
        &address,
        &"--user",
        &"kura",
        &"--password-file",
        &password_file,
        &"--cipher-suite",
        &"3",
    ])
}

fn queue_job(api: &Api, admin: &str, host: &str) -> i64 {
    let r = api.req("POST", "/jobs").token(admin).json(&json!({"kind": "capture", "host": host})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["job"]["id"].as_i64().unwrap()
}

/// Waits for the job's `power:` log line; returns (job, that line).
fn power_line(api: &Api, admin: &str, job: i64) -> (Value, Value) {
    let t0 = Instant::now();
    loop {
        let v = api.req("GET", &format!("/jobs/{job}")).token(admin).send().json();
        let line = v["log"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("power:"))).cloned());
        if let Some(line) = line {
            return (v["job"].clone(), line);
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "no power line in job {job}'s log: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ipmi_pxe_reset_by_hand_and_for_queued_jobs() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let admin = server.admin.clone();
    let sim = IpmiSim::builder().user("kura", "ipmi-Secret-41").start();
    assert!(!sim.power_is_on());
    add_host(&api, &admin, "h1", "52:54:00:00:01:01");
    let pw = password_file(work.path(), "pw", "ipmi-Secret-41");
    let address = sim.address();
    server
        .kura(&[&"host", &"power", &"set", &"h1", &"--driver", &"ipmi", &"--address", &address, &"--user", &"kura"])
        .expect_failure_mentioning(&["needs a username and a password"]);
    set_ipmi(&server, "h1", &address, &pw).expect_success();

    // By hand, machine off: boot device PXE, then power on.
    let run = server.kura(&[&"host", &"power", &"h1", &"pxe-reset"]);
    run.expect_success();
    assert!(run.stdout.contains("power on requested"), "{run}");
    assert_eq!(sim.chassis_sets(), ["set boot pxe", "set power 1"], "{}", sim.report());
    assert!(sim.power_is_on());
    assert_eq!(sim.boot_device(), "Force PXE");

    // Machine on: boot device PXE, then a power cycle (off, on).
    let run = server.kura(&[&"host", &"power", &"h1", &"pxe-reset"]);
    assert!(run.expect_success().stdout.contains("restart requested"), "{run}");
    assert_eq!(sim.wait_chassis_sets(5)[2..], ["set boot pxe", "set power 0", "set power 1"], "{}", sim.report());

    // A queued job kicks the machine the same way, and stays queued for its netboot.
    let job = queue_job(&api, &admin, "h1");
    let (j, line) = power_line(&api, &admin, job);
    assert_eq!((j["state"].as_str(), line["level"].as_str()), (Some("queued"), Some("info")), "{line}");
    assert_eq!(sim.wait_chassis_sets(8)[5..], ["set boot pxe", "set power 0", "set power 1"], "{}", sim.report());
    assert_eq!(sim.boot_device(), "Force PXE");

    // Wrong password: a clear error naming the BMC and the step; the job stays queued, with a
    // warn line.
    add_host(&api, &admin, "h2", "52:54:00:00:01:02");
    let wrong = password_file(work.path(), "wrong", "not-the-password");
    set_ipmi(&server, "h2", &address, &wrong).expect_success();
    let before = sim.chassis_sets().len();
    server
        .kura(&[&"host", &"power", &"h2", &"pxe-reset"])
        .expect_failure_mentioning(&[&format!("ipmi BMC {address}"), "setting the boot device to PXE"]);
    let job = queue_job(&api, &admin, "h2");
    let (j, line) = power_line(&api, &admin, job);
    assert_eq!((j["state"].as_str(), line["level"].as_str()), (Some("queued"), Some("warn")), "{line}");
    let msg = line["message"].as_str().unwrap();
    assert!(msg.contains(&format!("ipmi BMC {address}")) && msg.contains("stays queued"), "{msg}");
    assert_eq!(sim.chassis_sets().len(), before, "a refused login changed the machine: {}", sim.report());

    // No password anywhere in the audit log; the actions are there.
    let audit = api.req("GET", "/audit").token(&admin).send().text();
    assert!(!audit.contains("ipmi-Secret-41") && !audit.contains("not-the-password"), "{audit}");
    for action in ["power.set", "power.action", "power.kick"] {
        assert!(audit.contains(action), "no {action} in the audit log: {audit}");
    }
}

#[test]
fn redfish_pxe_reset_by_hand_and_for_queued_jobs() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let admin = server.admin.clone();
    let emu = SushyEmulator::start("kura", "redfish-Secret-42", false);
    add_host(&api, &admin, "r1", "52:54:00:00:02:01");
    let pw = password_file(work.path(), "pw", "redfish-Secret-42");
    let url = emu.url();
    server
        .kura(&[
            &"host",
            &"power",
            &"set",
            &"r1",
            &"--driver",
            &"redfish",
            &"--address",
            &url,
            &"--user",
            &"kura",
            &"--password-file",
            &pw,
        ])
        .expect_success();
    let system = emu.system();
    let system_path = system["@odata.id"].as_str().unwrap().to_string();
    assert_eq!(system["PowerState"], "Off");

    let run = server.kura(&[&"host", &"power", &"r1", &"pxe-reset"]);
    assert!(run.expect_success().stdout.contains("power on requested"), "{run}\n{}", emu.report());
    let changes = emu.changes();
    let boot = json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}});
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert_eq!(
        (changes[0]["method"].as_str(), changes[0]["path"].as_str()),
        (Some("PATCH"), Some(system_path.as_str()))
    );
    assert_eq!(changes[0]["body"], boot);
    assert_eq!(changes[1]["method"], "POST");
    assert_eq!(changes[1]["path"], format!("{system_path}/Actions/ComputerSystem.Reset"));
    assert_eq!(changes[1]["body"], json!({"ResetType": "On"}));
    assert_eq!(emu.system()["Boot"]["BootSourceOverrideTarget"], "Pxe", "{}", emu.report());

    // A queued job: the override again, then a reset (On while the emulator is still powering
    // up, ForceRestart once it is on).
    let job = queue_job(&api, &admin, "r1");
    let (j, line) = power_line(&api, &admin, job);
    assert_eq!((j["state"].as_str(), line["level"].as_str()), (Some("queued"), Some("info")), "{line}");
    let changes = emu.changes();
    assert_eq!(changes.len(), 4, "{changes:#?}");
    assert_eq!(changes[2]["body"], boot);
    let reset = changes[3]["body"]["ResetType"].as_str().unwrap();
    assert!(reset == "On" || reset == "ForceRestart", "{changes:#?}");

    // Wrong password: HTTP 401 from the BMC, named; the job stays queued with a warn line.
    add_host(&api, &admin, "r2", "52:54:00:00:02:02");
    let wrong = password_file(work.path(), "wrong", "nope");
    server
        .kura(&[
            &"host",
            &"power",
            &"set",
            &"r2",
            &"--driver",
            &"redfish",
            &"--address",
            &url,
            &"--user",
            &"kura",
            &"--password-file",
            &wrong,
        ])
        .expect_success();
    server.kura(&[&"host", &"power", &"r2", &"pxe-reset"]).expect_failure_mentioning(&[
        &format!("redfish BMC {url}"),
        "finding the system",
        "401",
    ]);
    let job = queue_job(&api, &admin, "r2");
    let (j, line) = power_line(&api, &admin, job);
    assert_eq!((j["state"].as_str(), line["level"].as_str()), (Some("queued"), Some("warn")), "{line}");
    assert_eq!(emu.changes().len(), 4, "a refused login changed the machine");
}

#[test]
fn credentials_are_sealed_and_never_shown() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("engine");
    let mut server = Server::start_http(&data);
    let api = server.api();
    let admin = server.admin.clone();
    add_host(&api, &admin, "c1", "52:54:00:00:03:01");
    let secret = "Unique-Pa55-Marker-93817";
    let pw = password_file(work.path(), "pw", secret);
    let run = server.kura(&[
        &"host",
        &"power",
        &"set",
        &"c1",
        &"--driver",
        &"redfish",
        &"--address",
        &"https://bmc.invalid",
        &"--user",
        &"root",
        &"--password-file",
        &pw,
        &"--insecure",
    ]);
    assert!(!run.expect_success().stdout.contains(secret), "{run}");
    let show = server.kura(&[&"host", &"power", &"show", &"c1"]);
    assert!(show.expect_success().stdout.contains("password   set") && !show.stdout.contains(secret), "{show}");
    let v: Value = server.kura(&[&"host", &"power", &"show", &"c1", &"--json"]).expect_success().json();
    assert_eq!((v["password"].as_str(), v["driver"].as_str()), (Some("set"), Some("redfish")), "{v}");
    let r = api.req("GET", "/hosts/c1/power").token(&admin).send();
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(secret), "{}", r.text());
    assert!(!api.req("GET", "/audit").token(&admin).send().text().contains(secret));

    // Neither the catalog nor its WAL holds the password bytes, before or after a checkpoint.
    let scan = |when: &str| {
        for f in ["catalog.db", "catalog.db-wal"] {
            let bytes = std::fs::read(data.join(f)).unwrap_or_default();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{f} holds the password ({when})");
        }
    };
    scan("running");
    server.stop();
    scan("stopped");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("secrets.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secrets.key mode");
    // The key is what opens it: the settings survive a restart (a Redfish call shows they
    // are usable: it fails at the network, not at the password).
    server.restart();
    let run = server.kura(&[&"host", &"power", &"c1", &"on"]);
    run.expect_failure_mentioning(&["redfish BMC https://bmc.invalid", "finding the system"]);
    server.kura(&[&"host", &"power", &"clear", &"c1"]).expect_success();
    server.kura(&[&"host", &"power", &"show", &"c1"]).expect_failure_mentioning(&["no power control"]);
}

/// Receives every UDP datagram on port 9 and appends `hex-payload source-address` lines.
const LISTENER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9))
open(sys.argv[1] + ".ready", "w").close()
while True:
    data, addr = s.recvfrom(4096)
    with open(sys.argv[1], "a") as f:
        f.write(data.hex() + " " + addr[0] + "\n")
"#;

#[test]
fn wake_on_lan_packet_reaches_the_machine_segment() {
    // The engine's namespace (bridge br0) and a machine's namespace, joined by a veth whose
    // engine end is on the bridge: the machine listens on UDP port 9 like a NIC's WoL filter.
    let ns = Netns::new();
    let machine = Netns::new();
    ns.ip(["link", "add", "wol0", "type", "veth", "peer", "name", "eth0", "netns", machine.name()]);
    ns.ip(["link", "set", "wol0", "master", "br0"]);
    ns.ip(["link", "set", "wol0", "up"]);
    machine.ip(["addr", "add", &format!("{}/24", ns.host_addr(50)), "dev", "eth0"]);
    machine.ip(["link", "set", "eth0", "up"]);
    let caught = machine.dir().join("caught");
    let mut listen = machine.command(python());
    listen.args(["-c", LISTENER]).arg(&caught);
    let _listener = machine.spawn(listen, "wol-listener");

    let data = ns.dir().join("engine");
    let url = format!("http://{}:8443", ns.bridge_addr());
    let mut cmd = ns.command(kura_bin());
    cmd.arg("serve").arg("--data").arg(&data).args(["--listen", &format!("{}:8443", ns.bridge_addr())]);
    cmd.arg("--insecure-http").env("NO_COLOR", "1");
    let mut serve = ns.spawn(cmd, "kura-serve");
    let t0 = Instant::now();
    while !serve.stdout().contains("listening on") {
        assert!(serve.try_wait().is_none(), "kura serve exited:\n{}", serve.stderr());
        assert!(t0.elapsed() < Duration::from_secs(30), "kura serve did not start:\n{}", serve.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let t0 = Instant::now();
    while !Path::new(&format!("{}.ready", caught.display())).exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the UDP listener did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let kura = |args: &[&str]| kura_in(&ns, &url, &admin, args);

    let mac = "52:54:00:c0:ff:ee";
    kura(&["host", "power", "set", "w1", "--driver", "wol"]).expect_failure_mentioning(&["host", "w1", "not found"]);
    // Hosts are created through the API (here: from inside the namespace, with busybox wget
    // unavailable, the CLI has no host create): POST with python's urllib.
    let create = format!(
        "import json, urllib.request as u; r = u.Request('{url}/api/v1/hosts', data=json.dumps({{'name': 'w1', \
         'macs': ['{mac}']}}).encode(), headers={{'Authorization': 'Bearer {admin}', 'Content-Type': \
         'application/json'}}); print(u.urlopen(r).status)"
    );
    let out = ns.command(python()).args(["-c", &create]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "201", "{}", String::from_utf8_lossy(&out.stderr));
    let broadcast = ns.host_addr(255).to_string();
    kura(&["host", "power", "set", "w1", "--driver", "wol", "--broadcast", &broadcast, "--interface", "br0"])
        .expect_success();
    kura(&["host", "power", "w1", "off"]).expect_failure_mentioning(&["cannot power a machine off"]);
    let run = kura(&["host", "power", "w1", "pxe-reset"]);
    assert!(run.expect_success().stdout.contains("magic packet sent"), "{run}");

    let expected = format!("{}{}", "ff".repeat(6), mac.replace(':', "").repeat(16));
    let wait_packets = |n: usize| -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let lines: Vec<String> =
                std::fs::read_to_string(&caught).unwrap_or_default().lines().map(str::to_string).collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{n} packet(s) expected, got {lines:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let packets = wait_packets(1);
    let (payload, from) = packets[0].split_once(' ').unwrap();
    assert_eq!(payload, expected, "not 6×FF + 16×MAC");
    assert_eq!(payload.len(), 2 * 102);
    assert_eq!(from, ns.bridge_addr().to_string(), "the packet did not leave through br0");

    // A queued job wakes the machine too.
    let run = kura(&["capture", "w1"]);
    let job = run.expect_success().stdout.trim().to_string();
    let packets = wait_packets(2);
    assert_eq!(packets[1].split_once(' ').unwrap().0, expected);
    let v: Value = kura(&["jobs", "--json"]).expect_success().json();
    let job: i64 = job.parse().expect("kura capture prints the job id");
    let j = v.as_array().unwrap().iter().find(|j| j["id"] == job).cloned().unwrap();
    assert_eq!(j["state"], "queued", "{j}");
    serve.kill();
}
