//! The site's own DHCP server, stood in for by dnsmasq in DHCP-only mode inside a [`Netns`].
//!
//! It hands out addresses and nothing about booting (no PXE options, no next-server), the way a
//! site's DHCP server does when Kura's proxyDHCP answers the boot questions beside it. DNS is
//! off (`--port=0`). Its log (`--log-dhcp`) shows every DISCOVER/OFFER/REQUEST/ACK with the
//! client's MAC, which tests read to see what a machine did on the network.
//!
//! Needs the dnsmasq-base package (the binary without a system service).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::netns::{read_lossy, Netns, NsProcess};

/// A running dnsmasq serving DHCP on the namespace's bridge; killed on drop.
pub struct SiteDhcp {
    process: NsProcess,
    log: PathBuf,
    leases: PathBuf,
    range: (Ipv4Addr, Ipv4Addr),
}

/// What to start dnsmasq with.
pub struct SiteDhcpBuilder<'a> {
    ns: &'a Netns,
    range: (Ipv4Addr, Ipv4Addr),
    extra: Vec<String>,
}

impl SiteDhcp {
    /// dnsmasq leasing `10.77.<n>.100`–`.199` on `br0`, nothing else.
    pub fn start(ns: &Netns) -> SiteDhcp {
        SiteDhcp::builder(ns).start()
    }

    pub fn builder(ns: &Netns) -> SiteDhcpBuilder<'_> {
        SiteDhcpBuilder { ns, range: (ns.host_addr(100), ns.host_addr(199)), extra: Vec::new() }
    }

    /// The pool it leases from (inclusive).
    pub fn range(&self) -> (Ipv4Addr, Ipv4Addr) {
        self.range
    }

    /// dnsmasq's log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Waits until a log line contains every one of `words` (case-insensitive) and returns that
    /// line; panics with the whole log after `timeout`.
    pub fn wait_for_log(&self, words: &[&str], timeout: Duration) -> String {
        let words: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| {
                let l = l.to_lowercase();
                words.iter().all(|w| l.contains(w))
            }) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq never logged a line with {words:?} in {timeout:?}; its log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log lines of one DHCP transaction, by its id (see [`transaction_id`]).
    pub fn transaction(&self, xid: &str) -> Vec<String> {
        self.log().lines().filter(|l| transaction_id(l) == Some(xid)).map(str::to_owned).collect()
    }

    /// The current leases: (MAC, address, hostname if the client sent one).
    pub fn leases(&self) -> Vec<Lease> {
        // dnsmasq lease file lines: `expiry mac ip hostname client-id`.
        read_lossy(&self.leases)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(Lease {
                    mac: f.get(1)?.to_lowercase(),
                    addr: f.get(2)?.parse().ok()?,
                    hostname: f.get(3).filter(|h| **h != "*").map(|h| (*h).to_owned()),
                })
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// The transaction id of a `--log-dhcp` line
/// (`Nov 25 18:18:41 dnsmasq-dhcp[20134]: 423813917 DHCPDISCOVER(br0) 52:54:00:…`).
pub fn transaction_id(line: &str) -> Option<&str> {
    let rest = &line[line.find("dnsmasq-dhcp[")?..];
    let rest = rest[rest.find("]: ")? + 3..].trim_start();
    let xid = rest.split_whitespace().next()?;
    xid.bytes().all(|b| b.is_ascii_digit()).then_some(xid)
}

/// One DHCP lease from dnsmasq's lease file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Lower-case, colon-separated.
    pub mac: String,
    pub addr: Ipv4Addr,
    pub hostname: Option<String>,
}

impl SiteDhcpBuilder<'_> {
    /// Leases from `first` to `last` instead of `.100`–`.199`.
    pub fn range(mut self, first: Ipv4Addr, last: Ipv4Addr) -> Self {
        self.range = (first, last);
        self
    }

    /// One more dnsmasq option, e.g. `--dhcp-host=52:54:00:…,10.77.1.50`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// Starts dnsmasq and waits until it is serving; panics with its output if it does not.
    pub fn start(self) -> SiteDhcp {
        let dir = self.ns.dir();
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("dnsmasq-{n}.log"));
        let leases = dir.join(format!("dnsmasq-{n}.leases"));
        std::fs::write(&leases, b"").unwrap();
        let (first, last) = self.range;
        let mut cmd = self.ns.command(program());
        cmd.args([
            "--no-daemon".to_owned(),
            // No /etc/dnsmasq.conf, no DNS, no pid file, no resolv.conf.
            "--conf-file=/dev/null".to_owned(),
            "--port=0".to_owned(),
            "--pid-file".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            // dnsmasq-base creates no `dnsmasq` user: stay root so the log and lease files in the
            // test's tempdir stay writable.
            "--user=root".to_owned(),
            "--group=root".to_owned(),
            "--bind-interfaces".to_owned(),
            "--interface=br0".to_owned(),
            "--except-interface=lo".to_owned(),
            format!("--dhcp-range={first},{last},255.255.255.0,1h"),
            format!("--dhcp-leasefile={}", leases.display()),
            "--dhcp-authoritative".to_owned(),
            "--log-dhcp".to_owned(),
            format!("--log-facility={}", log.display()),
        ]);
        cmd.args(&self.extra);
        let label = format!("dnsmasq-{n}");
        let process = self.ns.spawn(cmd, &label);
        let mut server = SiteDhcp { process, log, leases, range: self.range };
        // dnsmasq logs its DHCP range once its socket is bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.log().contains("DHCP, IP range") {
            if let Some(status) = server.process.try_wait() {
                panic!(
                    "dnsmasq exited at start ({status}):\n{}{}{}",
                    server.process.stdout(),
                    server.process.stderr(),
                    server.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start in 10 s:\n{}{}",
                server.process.stderr(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

fn program() -> &'static str {
    const DNSMASQ: &str = "/usr/sbin/dnsmasq";
    assert!(
        std::path::Path::new(DNSMASQ).exists(),
        "{DNSMASQ} is missing: apt-get install -y dnsmasq-base (the package without a system service)"
    );
    DNSMASQ
}
