//! End to end through the netbooted agent: `kura bootenv build` makes vmlinuz + initrd.img from
//! the installed Debian kernel, QEMU (TCG) boots them directly (`-kernel/-initrd`) with `kura.*`
//! arguments, and the agent — loading virtio drivers, DHCP from QEMU's user-mode network,
//! HTTP to a real `kura serve --insecure-http` on 127.0.0.1 (QEMU's 10.0.2.2) — captures a GPT
//! disk, powers off; then a second boot restores that snapshot onto a blank disk, which must
//! come out byte-identical. All traffic stays on this machine (QEMU's user network NATs to the
//! loopback address).
//!
//! Needs: root (the kernel image is mode 0600), qemu-system-x86, linux-image-amd64, sgdisk,
//! mkfs.ext4, and the static agent (`RUSTFLAGS="-C target-feature=+crt-static" cargo build
//! --release -p kura-agent --target x86_64-unknown-linux-gnu`). Fails naming what is missing otherwise.

use kura_tests::kura_cli::kura_bin;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const MAC: &str = "52:54:00:4b:55:52";

struct Serve(Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent() -> Option<PathBuf> {
    Some(kura_tests::kura_cli::agent_bin())
}

fn missing_prerequisite() -> Option<String> {
    if !Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    if agent().is_none() {
        return Some("the static kura-agent is not built".into());
    }
    let kernel =
        std::fs::read_dir("/boot").ok()?.flatten().find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"));
    match kernel {
        None => Some("no /boot/vmlinuz-* (apt-get install linux-image-amd64)".into()),
        Some(k) if std::fs::File::open(k.path()).is_err() => {
            Some(format!("{} is not readable (run as root)", k.path().display()))
        }
        Some(_) => None,
    }
}

fn api(method: &str, url: &str, token: &str, body: Option<Value>) -> Value {
    let c = reqwest::blocking::Client::new();
    let rb = match method {
        "POST" => c.post(url).json(&body.unwrap_or(Value::Null)),
        _ => c.get(url),
    };
    let resp = rb.bearer_auth(token).send().unwrap();
    let status = resp.status();
    let text = resp.text().unwrap();
    assert!(status.is_success(), "{method} {url}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn boot(dir: &Path, boot: &Path, server: &str, job: i64, token: &str, disk: &Path, readonly: bool) -> String {
    let serial = dir.join(format!("serial-{job}.log"));
    let append = format!(
        "console=ttyS0 quiet panic=-1 kura.server={server} kura.job={job} kura.token={token} kura.mac={MAC} \
         kura.error_delay=0"
    );
    let drive = format!("file={},format=raw,if=virtio{}", disk.display(), if readonly { ",readonly=on" } else { "" });
    let mut child = Command::new("timeout")
        .args(["600", "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "2", "-display", "none"])
        .args(["-no-reboot", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(boot.join("vmlinuz"))
        .arg("-initrd")
        .arg(boot.join("initrd.img"))
        .args(["-append", &append, "-netdev", "user,id=n0", "-device"])
        .arg(format!("virtio-net-pci,netdev=n0,mac={MAC}"))
        .args(["-device", "virtio-rng-pci", "-drive", &drive])
        .stdin(Stdio::null())
        .spawn()
        .expect("starting qemu");
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(status.success(), "qemu ended with {status} (600 s timeout?); serial console:\n{log}");
    log
}

#[test]
fn netbooted_agent_captures_and_restores() {
    if let Some(why) = missing_prerequisite() {
        panic!("prerequisite missing (scripts/test provides it): {why}");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // The image, with the CLI, into DATA/boot.
    let out = Command::new(kura_bin())
        .args(["bootenv", "build", "--level", "3", "--json", "--data"])
        .arg(&data)
        .arg("--agent")
        .arg(agent().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "kura bootenv build: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("initrd.img: {} bytes", report["initrd_bytes"]);
    let boot_dir = data.join("boot");

    // The engine.
    let mut child = Command::new(kura_bin())
        .args(["serve", "--insecure-http", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let serve = Serve(child);
    let mut url = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(u) = line.split("listening on ").nth(1) {
            url = u.trim().to_string();
            break;
        }
    }
    assert!(!url.is_empty(), "kura serve did not start");
    let port = url.rsplit(':').next().unwrap().to_string();
    let guest_url = format!("http://10.0.2.2:{port}");
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let api_url = |p: &str| format!("{url}/api/v1{p}");
    api("POST", &api_url("/hosts"), &admin, Some(json!({"name": "vm1", "macs": [MAC]})));

    // A small GPT disk with an ext4 partition.
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("sgdisk").args(["-n1:2048:+40M", "-t1:8300"]).arg(&disk))
        || !ok(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "offset=1048576"]).arg(&disk).arg("40M"))
    {
        panic!("sgdisk or mkfs.ext4 failed (apt-get install gdisk e2fsprogs)");
    }

    // Capture.
    let created = api("POST", &api_url("/jobs"), &admin, Some(json!({"kind": "capture", "host": "vm1"})));
    let job = created["job"]["id"].as_i64().unwrap();
    let serial = boot(dir.path(), &boot_dir, &guest_url, job, created["agent_token"].as_str().unwrap(), &disk, true);
    assert!(serial.contains("kura-agent: job"), "{serial}");
    let shown = api("GET", &api_url(&format!("/jobs/{job}")), &admin, None);
    assert_eq!(shown["job"]["state"], "succeeded", "{shown:#}\n{serial}");
    let snapshot = shown["job"]["snapshot"].as_str().unwrap().to_string();
    let log: Vec<&str> = shown["log"].as_array().unwrap().iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(log.iter().any(|l| l.contains("loaded driver virtio_net")), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("eth0: 10.0.2.")), "{log:?}");

    // Restore onto a blank disk.
    let target = dir.path().join("target.img");
    std::fs::File::create(&target).unwrap().set_len(64 << 20).unwrap();
    let created =
        api("POST", &api_url("/jobs"), &admin, Some(json!({"kind": "restore", "host": "vm1", "snapshot": snapshot})));
    let job = created["job"]["id"].as_i64().unwrap();
    let serial = boot(dir.path(), &boot_dir, &guest_url, job, created["agent_token"].as_str().unwrap(), &target, false);
    let shown = api("GET", &api_url(&format!("/jobs/{job}")), &admin, None);
    assert_eq!(shown["job"]["state"], "succeeded", "{shown:#}\n{serial}");
    assert!(std::fs::read(&disk).unwrap() == std::fs::read(&target).unwrap(), "restored disk differs");

    // A failing job: a token for another job is refused; the agent reports and powers off.
    let created = api("POST", &api_url("/jobs"), &admin, Some(json!({"kind": "capture", "host": "vm1"})));
    let job = created["job"]["id"].as_i64().unwrap();
    let serial = boot(dir.path(), &boot_dir, &guest_url, job, "kura_wrong", &disk, true);
    assert!(serial.contains("KURA AGENT FAILED"), "{serial}");
    std::thread::sleep(Duration::from_millis(100));
    drop(serve);
}
