//! A private test network: one Linux network namespace per test, holding a bridge with an
//! address and tap devices for QEMU machines.
//!
//! ```text
//!   netns kura-t<pid>-<n>
//!   ┌───────────────────────────────────────────────┐
//!   │ lo (up)                                       │
//!   │ br0 10.77.<n>.1/24 ── tap0 ── QEMU machine    │
//!   │                   └── tap1 ── another machine │
//!   │ dnsmasq, kura serve, … (`Netns::command`)     │
//!   └───────────────────────────────────────────────┘
//! ```
//!
//! Nothing here touches the host's interfaces: every link is created with `ip -n NS` and every
//! process runs under `ip netns exec NS`, so all traffic stays inside the namespace.
//!
//! Dropping a [`Netns`] (also while a test panics) kills every process still in the namespace
//! and deletes it, which removes its bridge and taps. A test process that was killed outright
//! cannot run its drops; the next [`Netns::new`] deletes namespaces left by processes that no
//! longer exist.
//!
//! Needs root and the iproute2 package.

use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Prefix of every namespace the harness creates: `kura-t<pid>-<n>`.
const PREFIX: &str = "kura-t";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with `lo`, a bridge `br0` (address `10.77.<n>.1/24`) and a tap `tap0`
/// on the bridge, all up. Deleted, with every process in it, on drop.
pub struct Netns {
    name: String,
    subnet: u8,
    taps: Vec<String>,
    dir: TempDir,
}

impl Netns {
    /// Creates a fresh namespace. Panics (naming what is missing) if not root or iproute2 is
    /// not installed.
    pub fn new() -> Netns {
        require_root("network namespaces");
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        // Each namespace has its own addresses, so subnets may repeat across processes; within
        // one process they differ, which keeps logs readable.
        let subnet = (n % 250) as u8 + 1;
        ip(["netns", "add", &name]);
        let mut ns = Netns {
            name,
            subnet,
            taps: Vec::new(),
            dir: tempfile::Builder::new().prefix("kura-netns-").tempdir().expect("cannot create a tempdir"),
        };
        let addr = format!("{}/24", ns.bridge_addr());
        ns.ip(["link", "set", "lo", "up"]);
        ns.ip(["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
        ns.ip(["addr", "add", &addr, "dev", "br0"]);
        ns.ip(["link", "set", "br0", "up"]);
        ns.add_tap();
        ns
    }

    /// The namespace's name (`kura-t<pid>-<n>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A directory for this test's files (logs, lease files, machine state); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bridge's address, `10.77.<n>.1`: where services inside the namespace listen.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// Address `host` (2..=254) of the bridge's /24, e.g. for DHCP ranges and fixed leases.
    pub fn host_addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    /// The first tap, `tap0`, made by [`Netns::new`].
    pub fn tap(&self) -> &str {
        &self.taps[0]
    }

    /// Adds another tap (`tap1`, `tap2`, …) on the bridge, up, for one more machine; returns its
    /// name.
    pub fn add_tap(&mut self) -> String {
        let tap = format!("tap{}", self.taps.len());
        self.ip(["tuntap", "add", &tap, "mode", "tap"]);
        self.ip(["link", "set", &tap, "master", "br0"]);
        self.ip(["link", "set", &tap, "up"]);
        self.taps.push(tap.clone());
        tap
    }

    /// A veth from the test's own network namespace to the bridge, with the address `.254` on
    /// the test's side: programs that cannot run inside the namespace (a browser driven over
    /// WebDriver) reach the namespace's services through it. Removed on drop (and with the
    /// namespace). Subnets repeat only across test processes, which cargo runs one at a time.
    pub fn host_link(&self) -> HostLink {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let host = format!("kv{}h{n}", std::process::id() % 100_000);
        let inside = format!("kv{}n{n}", std::process::id() % 100_000);
        ip(["link", "add", &host, "type", "veth", "peer", "name", &inside]);
        ip(["link", "set", &inside, "netns", &self.name]);
        self.ip(["link", "set", &inside, "master", "br0"]);
        self.ip(["link", "set", &inside, "up"]);
        let addr = self.host_addr(254);
        ip(["addr", "add", &format!("{addr}/24"), "dev", &host]);
        ip(["link", "set", &host, "up"]);
        HostLink { name: host, addr }
    }

    /// Takes a tap down (`up == false`: the machine's cable is pulled, nothing reaches the bridge)
    /// or back up.
    pub fn set_link(&self, dev: &str, up: bool) {
        self.ip(["link", "set", dev, if up { "up" } else { "down" }]);
    }

    /// Runs `ip -n NS args…`, panicking on failure.
    pub fn ip<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        ip(all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NS program`). Add
    /// arguments, then [`Netns::spawn`] it or call `.output()`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program).env("LC_ALL", "C").stdin(Stdio::null());
        cmd
    }

    /// Runs `program args…` inside the namespace to completion and returns what happened.
    pub fn run<I, S>(&self, program: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{program}` in {}: {e}", self.name))
    }

    /// Starts `cmd` (from [`Netns::command`]) in the background, its stdout and stderr going to
    /// `<dir>/<label>.stdout` and `.stderr`. The process is killed when the returned handle or
    /// this namespace is dropped.
    pub fn spawn(&self, mut cmd: Command, label: &str) -> NsProcess {
        let stdout = self.dir().join(format!("{label}.stdout"));
        let stderr = self.dir().join(format!("{label}.stderr"));
        cmd.stdout(File::create(&stdout).unwrap()).stderr(File::create(&stderr).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {label} in {}: {e}", self.name));
        NsProcess { label: label.to_owned(), child, stdout, stderr, status: None }
    }

    /// Process ids of every process inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

/// A process running inside a [`Netns`]; killed (SIGKILL) and reaped on drop.
/// The test's end of [`Netns::host_link`].
pub struct HostLink {
    pub name: String,
    /// Its address on the namespace's subnet (`.254`).
    pub addr: Ipv4Addr,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.name]).output();
    }
}

pub struct NsProcess {
    label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl NsProcess {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// Everything it printed on stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("cannot poll a child process");
        }
        self.status
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it (SIGKILL) if still running and reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Panics unless running as root, saying what needs it.
pub fn require_root(what: &str) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:").map(|r| r.split_whitespace().next().map(str::to_owned)))
        })
        .flatten();
    assert_eq!(uid.as_deref(), Some("0"), "{what} need root: run the QEMU tests as root (CI does)");
}

/// `path`'s contents as text, empty if it does not exist (yet).
pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn ip<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new("ip")
        .args(&args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` ({e}); install it: apt-get install -y iproute2"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pids_in(ns: &str) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in `ns`, then deletes it. Never panics (it runs in drops).
fn destroy(ns: &str) {
    for _ in 0..50 {
        let pids = pids_in(ns);
        if pids.is_empty() {
            break;
        }
        let _ = Command::new("kill").arg("-KILL").args(pids.iter().map(u32::to_string)).output();
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("ip").args(["netns", "delete", ns]).output();
    if !matches!(&out, Ok(o) if o.status.success()) {
        eprintln!("warning: could not delete network namespace {ns}: {out:?}");
    }
}

/// Deletes `kura-t<pid>-*` namespaces whose test process no longer exists.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing network namespace {name} left by a test process that is gone");
            destroy(&name);
        }
    }
}
