//! Operations end to end, nobody at the machine: a schedule comes due, the engine powers the
//! machine on through its emulated BMC (OpenIPMI's `ipmi_sim`, which starts the QEMU machine
//! at "chassis power on" and is that machine's BMC through QEMU's `ipmi-bmc-extern`), the
//! machine netboots into Kura's agent, is captured and powers itself off; the schedule's run
//! ends with the host captured, and the status page in headless Chromium shows the new
//! snapshot as the host's last one.
//!
//! ```text
//!   netns: br0 10.77.n.1 ── tap0 ── QEMU (started by ipmi_sim; PXE first, then the disk)
//!          kura serve --netboot (scheduler, power control, API, status page)
//!          ipmi_sim (LAN on 10.77.n.1:623, VM interface for QEMU), dnsmasq (site DHCP)
//!   test ── veth 10.77.n.254 ── br0        (the browser reaches the page through it)
//! ```
//!
//! Root only; QEMU under TCG. Real time: the schedule is due at the next minute boundary.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use kura_tests::bmc::IpmiSim;
use kura_tests::bootdisk;
use kura_tests::browser::{decode_png, Browser};
use kura_tests::netboot::{with_agent_image, NetbootEngine, API_PORT};
use kura_tests::netns::Netns;
use kura_tests::qemu::{accel, DiskBus, Firmware, Machine};
use kura_tests::site_dhcp::SiteDhcp;

const MAC: &str = "52:54:00:4b:08:01";

fn jobs_of(engine: &NetbootEngine, host: &str) -> Vec<Value> {
    let all = engine.api_get("jobs");
    all.as_array().into_iter().flatten().filter(|j| j["host"] == host).cloned().collect()
}

/// A cron expression for the next minute boundary at least `margin` away (UTC), and its time.
fn next_minute(margin: Duration) -> (String, u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let due = (now + margin.as_secs()).div_ceil(60) * 60;
    let (mi, h) = ((due / 60) % 60, (due / 3600) % 24);
    let days = due / 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (format!("{mi} {h} {d} {m} *"), due)
}

#[test]
fn a_due_schedule_powers_the_machine_through_its_bmc_and_the_page_shows_the_snapshot() {
    let started = Instant::now();
    let ns = Netns::new();
    let _site_dhcp = SiteDhcp::start(&ns);
    let (engine, _) = with_agent_image(&ns, &["--scheduler-tick-ms", "1000"], json!({}));
    let dir = ns.dir().to_path_buf();
    let system = bootdisk::build(&dir, "rack01.img", "scheduled");

    // The machine, off, behind its BMC.
    let machine_dir = dir.join("machine-rack01");
    std::fs::create_dir_all(&machine_dir).unwrap();
    let mut command = vec!["qemu-system-x86_64".to_string()];
    command.extend(
        Machine::builder(&ns, "rack01")
            .firmware(Firmware::Bios)
            .memory_mib(512)
            .mac(MAC)
            .network_boot()
            .disk(&system.disk.path, DiskBus::Virtio)
            .arg("-device")
            .arg("virtio-rng-pci")
            .args(&machine_dir),
    );
    let bmc = IpmiSim::builder().user("admin", "bmc-secret").netns(&ns).qemu(command).start();
    assert!(!bmc.power_is_on(), "the machine should start powered off\n{}", bmc.report());
    let serial = machine_dir.join("serial.log");

    engine.api_post("hosts", &json!({ "name": "rack01", "macs": [MAC] }));
    let pw = dir.join("bmc.pw");
    std::fs::write(&pw, "bmc-secret\n").unwrap();
    let pw_arg = pw.display().to_string();
    engine
        .kura(&[
            "host",
            "power",
            "set",
            "rack01",
            "--driver",
            "ipmi",
            "--address",
            &bmc.address(),
            "--user",
            "admin",
            "--password-file",
            &pw_arg,
            "--cipher-suite",
            "3",
        ])
        .expect_success();

    // The schedule, due at the next minute boundary.
    let (cron, due) = next_minute(Duration::from_secs(20));
    engine.kura(&["schedule", "add", "--name", "monthly-rack", "--hosts", "rack01", "--cron", &cron]).expect_success();

    // The scheduler releases the job, power control starts the machine, it is captured.
    let deadline = Instant::now() + Duration::from_secs(90 + 420);
    let job = loop {
        let jobs = jobs_of(&engine, "rack01");
        if let Some(j) = jobs.iter().find(|j| j["state"] == "succeeded" || j["state"] == "failed") {
            break j.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no finished job for rack01: {jobs:#?}\n{}\nserial:\n{}\n{}",
            bmc.report(),
            std::fs::read_to_string(&serial).unwrap_or_default(),
            engine.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let id = job["id"].as_i64().unwrap();
    let shown = engine.api_get(&format!("jobs/{id}"));
    let log: Vec<String> =
        shown["log"].as_array().into_iter().flatten().filter_map(|l| l["message"].as_str().map(String::from)).collect();
    assert_eq!(job["state"], "succeeded", "{job:#}\n{log:#?}\n{}", bmc.report());
    let created = job["created"].as_u64().unwrap();
    assert!(created >= due, "the job was created at {created}, before the due time {due}");
    assert!(
        log.iter().any(|l| l.starts_with("power:") && l.contains("network boot set") && l.contains("was off")),
        "no network boot + power-on through the BMC in the job's log: {log:#?}"
    );
    // (QEMU's external BMC does not keep IPMI boot flags for `chassis bootparam get`; the log
    // line is the BMC's acknowledgement. The machine boots PXE first anyway.)
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(console.contains("kura-agent: powering off"), "{console}");
    let snapshot = job["snapshot"].as_str().unwrap().to_string();
    let snaps = engine.api_get("snapshots?host=rack01");
    let snap = snaps.as_array().unwrap().iter().find(|s| s["id"] == snapshot.as_str()).unwrap().clone();
    assert_eq!(snap["kind"], "scheduled", "{snap:#}");

    // The run ended with the host captured.
    let t0 = Instant::now();
    let run = loop {
        let runs: Value = engine.kura(&["schedule", "runs", "monthly-rack", "--json"]).expect_success().json();
        let run = runs.as_array().and_then(|r| r.first()).cloned().unwrap_or(Value::Null);
        if run["state"] == "done" {
            break run;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the run did not end: {runs:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(run["due"].as_u64(), Some(due), "{run:#}");
    let summary = run["summary"].to_string();
    assert!(run["summary"]["succeeded"] == 1 && run["summary"]["failed"] == 0, "{summary}");

    // The status page, in a browser, logged in as an operator.
    let link = ns.host_link();
    let operator = engine.kura(&["token", "create", "--role", "operator", "--json"]).expect_success().json::<Value>();
    let operator = operator["token"].as_str().unwrap().to_string();
    let profile = dir.join("chromium-profile");
    let b = Browser::start(&profile);
    let base = format!("http://{}:{API_PORT}", ns.bridge_addr());
    b.go(&format!("{base}/status"));
    b.wait_for_url("/login");
    b.type_into("#token", &operator);
    b.click("#login-submit");
    b.wait_for_url("/status");
    let row = "#hosts tr[data-host=\"rack01\"]";
    assert_eq!(b.attr(&format!("{row} td.snapshot"), "data-snapshot"), snapshot, "{}", b.source());
    assert_eq!(b.attr(row, "data-stale"), "false");
    let shot = b.call("GET", "/screenshot", None);
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, shot.as_str().unwrap()).unwrap();
    let (w, h, _, _) = decode_png(&png);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ops-full-run.png");
    let _ = std::fs::write(&path, &png);
    drop(b);
    drop(link);
    eprintln!(
        "[{:?}] scheduled capture: due {due}, job {id} created {created}, snapshot {snapshot}; page {w}x{h} at {}; \
         test {:.1?}",
        accel(),
        path.display(),
        started.elapsed()
    );
}
