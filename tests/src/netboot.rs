//! The engine with its netboot services, run inside a [`Netns`]: `kura serve --data DIR
//! --listen <bridge>:8443 --insecure-http --netboot CONFIG.json`, so its proxyDHCP (or full
//! DHCP) on 67/4011, TFTP on 69 and boot HTTP on 8080 serve the namespace's bridge only.
//!
//! The test process stays outside the namespace, so everything that talks to the engine runs
//! inside it with `ip netns exec`: the `kura` CLI (`KURA_SERVER`/`KURA_TOKEN` in its
//! environment) and, for raw API calls and boot-script fetches, the static busybox's `wget`
//! (package busybox-static, which the test boot image needs anyway). No traffic leaves the
//! namespace.
//!
//! [`engine::Server`](crate::engine::Server) cannot be used here: it runs `kura serve` in the
//! test's own namespace on 127.0.0.1, where the test machines cannot reach it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kura_cli::{kura_bin, Run};
use crate::netns::{Netns, NsProcess};
use crate::qemu::{DiskBus, Firmware, Machine};

/// Port of the API inside the namespace (the namespace is private: any fixed port works).
pub const API_PORT: u16 = 8443;
/// Port of the boot HTTP routes (the netboot configuration's default).
pub const BOOT_HTTP_PORT: u16 = 8080;

const BUSYBOX: &str = "/bin/busybox";

/// A running `kura serve` with netboot inside a namespace; killed on drop (and with the
/// namespace).
pub struct NetbootEngine<'a> {
    ns: &'a Netns,
    process: NsProcess,
    /// The data directory (store, catalog, `admin.token`).
    pub data: PathBuf,
    /// The netboot configuration file it was started with.
    pub config_path: PathBuf,
    /// `http://<bridge>:8443`.
    pub api_url: String,
    /// `http://<bridge>:8080`.
    pub boot_url: String,
    /// The first admin token.
    pub admin: String,
}

impl<'a> NetbootEngine<'a> {
    /// A job (`GET /jobs/{id}`) and its log lines' messages.
    pub fn job_and_log(&self, id: i64) -> (serde_json::Value, Vec<String>) {
        let v = self.api_get(&format!("jobs/{id}"));
        let log =
            v["log"].as_array().into_iter().flatten().filter_map(|l| l["message"].as_str().map(String::from)).collect();
        (v["job"].clone(), log)
    }

    /// Queues a job with the CLI (`kura capture HOST`, `kura restore HOST …`); returns its id.
    pub fn queue(&self, args: &[&str]) -> i64 {
        let run = self.kura(args);
        run.expect_success();
        run.stdout.trim().parse().unwrap_or_else(|_| panic!("kura {args:?} printed no job id: {}", run.stdout))
    }

    /// Starts the engine in `ns` with the netboot configuration `config` (a JSON object; its
    /// `address` is set to the bridge's address) and waits until both the API and netboot say
    /// they are up. Panics with the server's output if it does not start.
    pub fn start(ns: &'a Netns, config: Value) -> NetbootEngine<'a> {
        NetbootEngine::start_with(ns, config, &[])
    }

    /// Like [`NetbootEngine::start`], with more `kura serve` arguments.
    pub fn start_with(ns: &'a Netns, mut config: Value, serve_args: &[&str]) -> NetbootEngine<'a> {
        assert!(std::path::Path::new(BUSYBOX).is_file(), "{BUSYBOX} is missing: apt-get install -y busybox-static");
        let addr = ns.bridge_addr();
        config["address"] = json!(addr.to_string());
        let data = ns.dir().join("kura-data");
        std::fs::create_dir_all(&data).unwrap();
        let config_path = ns.dir().join("netboot.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut cmd = ns.command(kura_bin());
        cmd.arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg(format!("{addr}:{API_PORT}"))
            .arg("--insecure-http")
            .arg("--netboot")
            .arg(&config_path)
            .args(serve_args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info");
        let mut process = ns.spawn(cmd, "kura-serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !process.stdout().contains("kura serve: netboot on") {
            if let Some(status) = process.try_wait() {
                panic!(
                    "kura serve --netboot exited at start ({status}):\n{}{}\nconfig:\n{config:#}",
                    process.stdout(),
                    process.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "kura serve --netboot did not start in 30 s:\n{}{}",
                process.stdout(),
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let admin = std::fs::read_to_string(data.join("admin.token"))
            .expect("kura serve wrote no admin.token")
            .trim()
            .to_owned();
        NetbootEngine {
            ns,
            process,
            data,
            config_path,
            api_url: format!("http://{addr}:{API_PORT}"),
            boot_url: format!("http://{addr}:{BOOT_HTTP_PORT}"),
            admin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// What the server printed so far (stdout, then stderr), for failure messages.
    pub fn log(&self) -> String {
        format!("--- kura serve stdout\n{}--- kura serve stderr\n{}", self.process.stdout(), self.process.stderr())
    }

    /// Runs `kura args…` inside the namespace against this engine (`KURA_SERVER`, `KURA_TOKEN`
    /// set to the admin token).
    pub fn kura(&self, args: &[&str]) -> Run {
        kura_in(self.ns, &self.api_url, &self.admin, args)
    }

    /// `kura netboot status --json`.
    pub fn netboot_status(&self) -> Value {
        self.kura(&["netboot", "status", "--json"]).expect_success().json()
    }

    /// The boot-log entry of `mac` in `kura netboot status --json`, if any.
    pub fn boot_log_of(&self, mac: &str) -> Option<Value> {
        let status = self.netboot_status();
        status["machines"].as_array()?.iter().find(|m| m["mac"].as_str() == Some(mac)).cloned()
    }

    /// `POST /api/v1/<path>` with the admin token and a JSON body; the decoded answer.
    pub fn api_post(&self, path: &str, body: &Value) -> Value {
        let url = format!("{}/api/v1/{path}", self.api_url);
        let auth = format!("Authorization: Bearer {}", self.admin);
        let text = self.wget(&url, &[&auth, "Content-Type: application/json"], Some(&body.to_string()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: not JSON ({e}): {text}"))
    }

    /// `GET /api/v1/<path>` with the admin token; the decoded answer.
    pub fn api_get(&self, path: &str) -> Value {
        let url = format!("{}/api/v1/{path}", self.api_url);
        let text = self.wget(&url, &[&format!("Authorization: Bearer {}", self.admin)], None);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
    }

    /// `GET url` from inside the namespace with extra `Name: value` headers; the body.
    /// Panics (with the reason) on a failure or an HTTP error status.
    pub fn get(&self, url: &str, headers: &[&str]) -> String {
        self.wget(url, headers, None)
    }

    /// Like [`NetbootEngine::get`], but `None` on an HTTP error or a failed connection.
    pub fn try_get(&self, url: &str, headers: &[&str]) -> Option<String> {
        let out = self.wget_output(url, headers, None);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The iPXE script the engine gives `mac`, fetched like iPXE does.
    pub fn script_for(&self, mac: &str) -> String {
        self.get(&format!("{}/boot/script?mac={mac}", self.boot_url), &[])
    }

    /// Waits for machine `m` running job `job_id` to exit (its agent powered it off); panics
    /// with the job, its log, the machine's report and the server's output after `timeout`.
    pub fn wait_power_off(&self, m: &mut Machine, job_id: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while m.exited().is_none() {
            if Instant::now() > deadline {
                let (j, log) = self.job_and_log(job_id);
                panic!(
                    "machine {} still runs after {timeout:?}; job {j:#}\nlog: {log:#?}\n{}\n{}",
                    m.name(),
                    m.report(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The serial console line of `m` holding `marker`, waited for up to `timeout`; panics with
    /// the machine's report and the server's output.
    pub fn wait_serial(&self, m: &mut Machine, marker: &str, timeout: Duration) -> String {
        m.poll_serial(marker, timeout).unwrap_or_else(|why| {
            panic!("machine {}: {why} before {marker:?}\n{}\n{}", m.name(), m.report(), self.log())
        })
    }

    /// Registers host `name` with `mac` and queues a capture job for it; returns the job id.
    pub fn host_with_capture_job(&self, name: &str, mac: &str) -> i64 {
        let host = self.api_post("hosts", &json!({ "name": name, "macs": [mac] }));
        assert_eq!(host["macs"], json!([mac]), "POST /api/v1/hosts answered {host}");
        let job = self.api_post("jobs", &json!({ "kind": "capture", "host": name }));
        job["job"]["id"].as_i64().unwrap_or_else(|| panic!("POST /api/v1/jobs answered {job}"))
    }

    fn wget(&self, url: &str, headers: &[&str], post: Option<&str>) -> String {
        let out = self.wget_output(url, headers, post);
        assert!(
            out.status.success(),
            "wget {url} in {} failed ({}): {}\n{}",
            self.ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wget_output(&self, url: &str, headers: &[&str], post: Option<&str>) -> std::process::Output {
        // coreutils' timeout, not wget's -T: the static busybox 1.35's wget crashes on -T.
        let mut cmd = self.ns.command("timeout");
        cmd.args(["30", BUSYBOX, "wget", "-q", "-O", "-"]);
        for h in headers {
            cmd.arg("--header").arg(h);
        }
        if let Some(body) = post {
            cmd.arg("--post-data").arg(body);
        }
        cmd.arg(url);
        cmd.output().expect("cannot run busybox wget in the namespace")
    }
}

/// Runs `kura ARGS` inside `ns` against the engine at `url` as `token` (`KURA_SERVER`,
/// `KURA_TOKEN` in its environment).
pub fn kura_in(ns: &Netns, url: &str, token: &str, args: &[&str]) -> Run {
    let out = ns
        .command(kura_bin())
        .args(args)
        .env("KURA_SERVER", url)
        .env("KURA_TOKEN", token)
        .env("NO_COLOR", "1")
        .output()
        .expect("cannot run kura in the namespace");
    Run {
        args: args.iter().map(Into::into).collect(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A BIOS machine (SeaBIOS, 512 MiB) that boots from the network first, then from `disk`
/// (virtio), with an entropy source for the agent.
pub fn bios_machine(ns: &Netns, name: &str, mac: &str, disk: &std::path::Path) -> Machine {
    Machine::builder(ns, name)
        .firmware(Firmware::Bios)
        .memory_mib(512)
        .mac(mac)
        .network_boot()
        .disk(disk, DiskBus::Virtio)
        .arg("-device")
        .arg("virtio-rng-pci")
        .start()
}

/// iPXE builds from the ipxe package, as the netboot configuration names them.
pub const IPXE_BIOS: &str = "/usr/lib/ipxe/undionly.kpxe";
/// The UEFI iPXE build Kura serves by default (iPXE on the firmware's own network driver).
pub const IPXE_EFI: &str = "/usr/lib/ipxe/snponly.efi";

/// The agent's kernel arguments in tests: serial console, no console delay after an error,
/// 10-second request timeouts.
pub const AGENT_ARGS: &str = "console=ttyS0 panic=-1 loglevel=4 kura.error_delay=0 kura.timeout=10";

/// The product's own boot image: `kura bootenv build` into the engine's data directory (the
/// one [`NetbootEngine::start_with`] uses), then the engine serving it ([`NetbootEngine::start_with`] with `serve_args`; `extra` is merged
/// into the netboot configuration). Returns the engine and the initrd's size in bytes.
pub fn with_agent_image<'a>(ns: &'a Netns, serve_args: &[&str], extra: Value) -> (NetbootEngine<'a>, u64) {
    for f in [IPXE_BIOS, IPXE_EFI] {
        assert!(std::path::Path::new(f).is_file(), "{f} is missing: apt-get install -y ipxe");
    }
    let data = ns.dir().join("kura-data");
    let out = std::process::Command::new(kura_bin())
        .args(["bootenv", "build", "--json", "--data"])
        .arg(&data)
        .arg("--agent")
        .arg(crate::kura_cli::agent_bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "kura bootenv build: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // No kernel/initrd: the engine takes what `kura bootenv build` wrote into its data
    // directory (the configuration's default).
    let mut config = json!({
        "kernel_args": AGENT_ARGS,
        "ipxe_bios": IPXE_BIOS,
        "ipxe_efi": IPXE_EFI,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        config[k] = v.clone();
    }
    (NetbootEngine::start_with(ns, config, serve_args), report["initrd_bytes"].as_u64().unwrap())
}

/// The stages (`dhcp`, `tftp`, `script`, `kernel`, `initrd`, `lease`) of a boot-log entry, in
/// order, with their details.
pub fn events(machine: &Value) -> Vec<(String, String)> {
    machine["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["stage"].as_str().unwrap_or("").to_owned(), e["detail"].as_str().unwrap_or("").to_owned()))
        .collect()
}
