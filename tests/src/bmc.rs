//! Real BMCs for power-control tests: OpenIPMI's `ipmi_sim` (IPMI 2.0 over LAN) and
//! sushy-tools' Redfish emulator, each a child process on a free port, killed on drop.
//!
//! # IPMI: [`IpmiSim`]
//!
//! `ipmi_sim` is configured from files written into a temporary directory: `lan.conf` (a LAN
//! channel on the given address and a free UDP port, user 2 = the given admin user and
//! password) and `sim.emu` (one BMC at IPMB 0x20). The machine behind it is one of:
//!
//! - a **recorded machine** (the default): ipmi_sim's `chassis_control` program is a small
//!   shell script that keeps the power state and boot device in files and appends every call
//!   to `chassis.log` (`set boot pxe`, `set power 0`, `set power 1`...), so a test can see
//!   exactly what the BMC was asked ([`IpmiSim::chassis_calls`]). A power cycle shows as
//!   `set power 0` then `set power 1`.
//! - a **QEMU machine** ([`IpmiSimBuilder::qemu`]): ipmi_sim's `startcmd` starts QEMU at power
//!   on and kills it at power off, and QEMU connects back to ipmi_sim's "VM" serial interface
//!   as its BMC, through the arguments [`qemu_bmc_args`] returns:
//!
//!   ```text
//!   -chardev socket,id=kura-bmc,host=ADDR,port=VM_PORT,reconnect=2
//!   -device ipmi-bmc-extern,id=kura-bmc0,chardev=kura-bmc
//!   -device isa-ipmi-bt,bmc=kura-bmc0
//!   ```
//!
//!   and `lan.conf` has `serial 15 ADDR VM_PORT codec VM` plus `startcmd "<dir>/machine.sh"`
//!   (which execs the QEMU command line given to the builder, with those arguments appended).
//!   `ipmitool chassis power on|off|cycle` then really starts, stops and restarts the machine.
//!   QEMU's firmware does not read IPMI boot flags: such a machine netboots because its boot
//!   order puts the NIC first (Kura's boot script sends a machine without a job to its disk).
//!   Run the simulator inside the test's namespace ([`IpmiSimBuilder::netns`], listening on
//!   the bridge's address) so `kura serve` there can reach it.
//!
//! Queries after the fact go through `ipmitool` itself ([`IpmiSim::ipmitool`],
//! [`IpmiSim::power_is_on`], [`IpmiSim::boot_device`]).
//!
//! # Redfish: [`SushyEmulator`]
//!
//! sushy-tools' `sushy-emulator` with its fake driver (no libvirt): one system, HTTP basic
//! authentication (bcrypt htpasswd file), on 127.0.0.1 and a free TCP port. It is started
//! through a tiny Python wrapper that records every authenticated request (method, path, JSON
//! body) in `requests.jsonl` ([`SushyEmulator::requests`]): the emulator accepts
//! `BootSourceOverrideEnabled` but always reports `Continuous`, so the request is the only
//! place to see `Once`.
//!
//! Needs the packages openipmi (ipmi_sim) and ipmitool, and Python 3 with sushy-tools
//! (`scripts/test` installs it into the venv `/opt/kura-test-venv`; `KURA_TEST_PYTHON` picks
//! another interpreter).

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::netns::{read_lossy, Netns};

/// A free UDP port on `addr` (bound and released; another process could take it meanwhile,
/// which the start-up check would catch).
pub fn free_udp_port(addr: Ipv4Addr) -> u16 {
    UdpSocket::bind((addr, 0)).expect("cannot bind a UDP socket").local_addr().unwrap().port()
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("cannot bind a TCP socket").local_addr().unwrap().port()
}

fn require_program(program: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false);
    assert!(found, "`{program}` is not installed: apt-get install -y {package}");
}

/// The QEMU arguments that make ipmi_sim's VM interface at `addr:vm_port` the machine's BMC
/// (an external BMC behind an ISA BT interface). Append them to the machine's command line.
pub fn qemu_bmc_args(addr: Ipv4Addr, vm_port: u16) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=kura-bmc,host={addr},port={vm_port},reconnect=2"),
        "-device".into(),
        "ipmi-bmc-extern,id=kura-bmc0,chardev=kura-bmc".into(),
        "-device".into(),
        "isa-ipmi-bt,bmc=kura-bmc0".into(),
    ]
}

/// Builds an [`IpmiSim`].
pub struct IpmiSimBuilder<'a> {
    user: String,
    password: String,
    addr: Ipv4Addr,
    powered_on: bool,
    qemu: Option<Vec<String>>,
    netns: Option<&'a Netns>,
}

impl<'a> IpmiSimBuilder<'a> {
    /// The admin user (IPMI user 2) and its password.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.user = user.into();
        self.password = password.into();
        self
    }

    /// Whether the recorded machine starts powered on (default: off).
    pub fn powered_on(mut self, on: bool) -> Self {
        self.powered_on = on;
        self
    }

    /// Runs ipmi_sim inside `ns`, listening on its bridge address.
    pub fn netns(mut self, ns: &'a Netns) -> Self {
        self.addr = ns.bridge_addr();
        self.netns = Some(ns);
        self
    }

    /// Drives a QEMU machine: `command` is its full command line (program first), started at
    /// power on with [`qemu_bmc_args`] appended, stopped at power off.
    pub fn qemu(mut self, command: Vec<String>) -> Self {
        self.qemu = Some(command);
        self
    }

    pub fn start(self) -> IpmiSim {
        require_program("ipmi_sim", "openipmi");
        require_program("ipmitool", "ipmitool");
        let dir = tempfile::Builder::new().prefix("kura-ipmisim-").tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("state")).unwrap();
        // A namespace is private: the standard port is free there.
        let port = match self.netns {
            Some(_) => 623,
            None => free_udp_port(self.addr),
        };
        let mut conf = format!(
            "name \"kura-test-bmc\"\n\
             set_working_mc 0x20\n\
             \x20 startlan 1\n\
             \x20   addr {addr} {port}\n\
             \x20   priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n\
             \x20   allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n\
             \x20   allowed_auths_admin none md2 md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n\
             \x20 endlan\n",
            addr = self.addr
        );
        let vm_port = match &self.qemu {
            None => {
                let script = d.join("chassis.sh");
                std::fs::write(&script, chassis_script(d)).unwrap();
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
                std::fs::write(d.join("power"), if self.powered_on { "1\n" } else { "0\n" }).unwrap();
                conf.push_str(&format!("  chassis_control \"{} 0x20\"\n", script.display()));
                None
            }
            Some(command) => {
                let vm_port = port + 1;
                let mut args: Vec<String> = command.clone();
                args.extend(qemu_bmc_args(self.addr, vm_port));
                let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', r"'\''"))).collect();
                let script = d.join("machine.sh");
                std::fs::write(&script, format!("#!/bin/sh\nexec {}\n", quoted.join(" "))).unwrap();
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
                conf.push_str(&format!(
                    "  serial 15 {} {vm_port} codec VM\n  startcmd \"{}\"\n  startnow {}\n  poweroff_wait 5\n  kill_wait 5\n",
                    self.addr,
                    script.display(),
                    self.powered_on
                ));
                Some(vm_port)
            }
        };
        conf.push_str("  user 1 true \"\" \"\" user 10 none md2 md5 straight\n");
        conf.push_str(&format!(
            "  user 2 true \"{}\" \"{}\" admin 10 none md2 md5 straight\n",
            self.user, self.password
        ));
        std::fs::write(d.join("lan.conf"), conf).unwrap();
        std::fs::write(
            d.join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n",
        )
        .unwrap();
        let mut cmd = match self.netns {
            Some(ns) => ns.command("ipmi_sim"),
            None => Command::new("ipmi_sim"),
        };
        cmd.arg("-c")
            .arg(d.join("lan.conf"))
            .arg("-f")
            .arg(d.join("sim.emu"))
            .arg("-s")
            .arg(d.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("ipmi_sim.log")).unwrap())
            .stderr(std::fs::File::create(d.join("ipmi_sim.err")).unwrap());
        let child = cmd.spawn().expect("cannot start ipmi_sim");
        let sim = IpmiSim {
            dir,
            addr: self.addr,
            port,
            vm_port,
            user: self.user,
            password: self.password,
            child: Some(child),
            netns: self.netns.map(|n| n.name().to_string()),
        };
        sim.wait_ready();
        sim
    }
}

/// The recorded machine's chassis control program (ipmi_sim calls it as `PROG 0x20 get|set
/// PARAM [VALUE]`; `get` answers `PARAM:VALUE`).
fn chassis_script(dir: &Path) -> String {
    format!(
        r#"#!/bin/sh
D='{}'
shift
echo "$*" >> "$D/chassis.log"
case "$1" in
  get)
    case "$2" in
      power) echo "power:$(cat "$D/power")" ;;
      boot) echo "boot:$(cat "$D/boot" 2>/dev/null || echo default)" ;;
      *) exit 1 ;;
    esac ;;
  set)
    case "$2" in
      power) echo "$3" > "$D/power" ;;
      boot) echo "$3" > "$D/boot" ;;
      reset) : ;;
      *) exit 1 ;;
    esac ;;
  *) exit 1 ;;
esac
"#,
        dir.display()
    )
}

/// A running `ipmi_sim`, killed on drop. See the module docs.
pub struct IpmiSim {
    dir: TempDir,
    addr: Ipv4Addr,
    port: u16,
    vm_port: Option<u16>,
    pub user: String,
    pub password: String,
    child: Option<Child>,
    netns: Option<String>,
}

impl IpmiSim {
    /// A simulator on 127.0.0.1 with admin user `admin` / `password`, its recorded machine off.
    pub fn builder<'a>() -> IpmiSimBuilder<'a> {
        IpmiSimBuilder {
            user: "admin".into(),
            password: "password".into(),
            addr: Ipv4Addr::LOCALHOST,
            powered_on: false,
            qemu: None,
            netns: None,
        }
    }

    /// `ADDR:PORT`, as given to `kura host power set --driver ipmi --address`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    /// The VM interface's port (QEMU machines only).
    pub fn vm_port(&self) -> Option<u16> {
        self.vm_port
    }

    /// The directory with lan.conf, sim.emu, the logs and the recorded machine's state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `ipmitool -I lanplus` against the simulator as the admin user (password through
    /// the environment).
    pub fn ipmitool(&self, args: &[&str]) -> Output {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ipmitool"]);
                c
            }
            None => Command::new("ipmitool"),
        };
        cmd.args(["-I", "lanplus", "-H", &self.addr.to_string(), "-p", &self.port.to_string()])
            // Cipher suite 3: ipmi_sim does not answer "Get Channel Cipher Suites", so
            // negotiating would cost seconds per call.
            .args(["-U", &self.user, "-E", "-N", "2", "-R", "2", "-C", "3"])
            .args(args)
            .env("IPMI_PASSWORD", &self.password)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run ipmitool (apt-get install -y ipmitool)")
    }

    fn ipmitool_ok(&self, args: &[&str]) -> String {
        let out = self.ipmitool(args);
        assert!(
            out.status.success(),
            "ipmitool {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.report()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            let out = self.ipmitool(&["chassis", "power", "status"]);
            if out.status.success() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "ipmi_sim did not answer on {} within 15 s: {}\n{}",
                self.address(),
                String::from_utf8_lossy(&out.stderr),
                self.report()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `chassis power status`, through ipmitool.
    pub fn power_is_on(&self) -> bool {
        self.ipmitool_ok(&["chassis", "power", "status"]).contains("is on")
    }

    /// The boot device selector of `chassis bootparam get 5`, e.g. `Force PXE`.
    pub fn boot_device(&self) -> String {
        let out = self.ipmitool_ok(&["chassis", "bootparam", "get", "5"]);
        out.lines()
            .find_map(|l| l.split_once("Boot Device Selector :").map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no boot device selector in:\n{out}"))
    }

    /// The recorded machine's chassis control calls, in order (`get power`, `set boot pxe`,
    /// `set power 0`...).
    pub fn chassis_calls(&self) -> Vec<String> {
        read_lossy(&self.dir.path().join("chassis.log")).lines().map(str::to_string).collect()
    }

    /// Only the `set ...` calls: what the machine was told to do.
    pub fn chassis_sets(&self) -> Vec<String> {
        self.chassis_calls().into_iter().filter(|c| c.starts_with("set ")).collect()
    }

    /// Waits (up to 20 s) until at least `n` `set ...` calls were made, and returns them all:
    /// ipmi_sim carries out a power cycle's "on" half a few seconds after its "off".
    pub fn wait_chassis_sets(&self, n: usize) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let sets = self.chassis_sets();
            if sets.len() >= n || t0.elapsed() > Duration::from_secs(20) {
                return sets;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Configuration and logs, for failure messages.
    pub fn report(&self) -> String {
        let d = self.dir.path();
        format!(
            "--- lan.conf\n{}--- ipmi_sim stdout\n{}--- ipmi_sim stderr\n{}--- chassis.log\n{}",
            read_lossy(&d.join("lan.conf")),
            read_lossy(&d.join("ipmi_sim.log")),
            read_lossy(&d.join("ipmi_sim.err")),
            read_lossy(&d.join("chassis.log"))
        )
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The Python interpreter with sushy-tools: `$KURA_TEST_PYTHON`, else the venv `scripts/test`
/// makes, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new("/opt/kura-test-venv/bin/python3");
    if venv.is_file() {
        return venv.to_path_buf();
    }
    PathBuf::from("python3")
}

const SUSHY_WRAPPER: &str = r#"
import json, sys
import flask
from sushy_tools.emulator import main as emulator

LOG = sys.argv.pop(1)

@emulator.app.before_request
def record():
    r = flask.request
    with open(LOG, "a") as f:
        f.write(json.dumps({"method": r.method, "path": r.path, "body": r.get_json(silent=True)}) + "\n")

sys.argv[0] = "sushy-emulator"
sys.exit(emulator.main())
"#;

/// sushy-tools' Redfish emulator with one fake system; killed on drop. See the module docs.
pub struct SushyEmulator {
    dir: TempDir,
    pub port: u16,
    pub user: String,
    pub password: String,
    child: Option<Child>,
    http: reqwest::blocking::Client,
}

impl SushyEmulator {
    /// Starts the emulator on 127.0.0.1 with user `user` / `password` and one system, named
    /// `kura-test`, whose power is on or off.
    pub fn start(user: &str, password: &str, powered_on: bool) -> SushyEmulator {
        let py = python();
        let probe = Command::new(&py).args(["-c", "import sushy_tools, bcrypt"]).output();
        assert!(
            matches!(&probe, Ok(o) if o.status.success()),
            "Python {} has no sushy-tools: pip install sushy-tools (scripts/test installs it into \
             /opt/kura-test-venv), or set KURA_TEST_PYTHON: {probe:?}",
            py.display()
        );
        let dir = tempfile::Builder::new().prefix("kura-sushy-").tempdir().unwrap();
        let d = dir.path();
        let hash = Command::new(&py)
            .args(["-c", "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())"])
            .arg(password)
            .output()
            .unwrap();
        assert!(hash.status.success(), "bcrypt: {}", String::from_utf8_lossy(&hash.stderr));
        std::fs::write(d.join("htpasswd"), format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim())).unwrap();
        std::fs::create_dir_all(d.join("state")).unwrap();
        let power = if powered_on { "On" } else { "Off" };
        std::fs::write(
            d.join("emulator.conf"),
            format!(
                "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_AUTH_FILE = '{}'\n\
                 SUSHY_EMULATOR_STATE_DIR = '{}'\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '27946b59-9e44-4fa7-8e91-f3527a1ef094', \
                 'name': 'kura-test', 'power_state': '{power}', 'external_notifier': False, \
                 'nics': [{{'mac': '52:54:00:12:34:56', 'ip': '10.0.0.2'}}]}}]\n",
                d.join("htpasswd").display(),
                d.join("state").display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("wrapper.py"), SUSHY_WRAPPER).unwrap();
        let port = free_tcp_port();
        let child = Command::new(&py)
            .arg(d.join("wrapper.py"))
            .arg(d.join("requests.jsonl"))
            .args(["--fake", "-i", "127.0.0.1", "-p", &port.to_string(), "--config"])
            .arg(d.join("emulator.conf"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("emulator.log")).unwrap())
            .stderr(std::fs::File::create(d.join("emulator.err")).unwrap())
            .spawn()
            .expect("cannot start the Redfish emulator");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let emu = SushyEmulator { dir, port, user: user.into(), password: password.into(), child: Some(child), http };
        let t0 = Instant::now();
        while emu.http.get(format!("{}/redfish/v1/", emu.url())).send().is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "the Redfish emulator did not start:\n{}", emu.report());
            std::thread::sleep(Duration::from_millis(200));
        }
        emu
    }

    /// `http://127.0.0.1:PORT`, as given to `kura host power set --driver redfish --address`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// GET `path` with the emulator's credentials.
    pub fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.url()))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.report()));
        assert!(r.status().is_success(), "GET {path}: {}\n{}", r.status(), self.report());
        r.json().unwrap()
    }

    /// The one system's resource.
    pub fn system(&self) -> Value {
        let list = self.get("/redfish/v1/Systems");
        let path = list["Members"][0]["@odata.id"].as_str().expect("a system").to_string();
        self.get(&path)
    }

    /// Every authenticated request the emulator served: `{"method", "path", "body"}`.
    pub fn requests(&self) -> Vec<Value> {
        read_lossy(&self.dir.path().join("requests.jsonl"))
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// The requests that changed something (not GET).
    pub fn changes(&self) -> Vec<Value> {
        self.requests().into_iter().filter(|r| r["method"] != "GET").collect()
    }

    pub fn report(&self) -> String {
        let d = self.dir.path();
        format!(
            "--- emulator stdout\n{}--- emulator stderr\n{}--- requests\n{}",
            read_lossy(&d.join("emulator.log")),
            read_lossy(&d.join("emulator.err")),
            read_lossy(&d.join("requests.jsonl"))
        )
    }
}

impl Drop for SushyEmulator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
