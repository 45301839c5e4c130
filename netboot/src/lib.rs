//! Netboot: the services that boot a machine into the Kura boot environment over the network.
//!
//! ```text
//! PXE ROM ──DHCP──► proxyDHCP (dhcp)      "boot undionly.kpxe / ipxe.efi from 10.0.0.1"
//!         ──TFTP──► tftp                  the iPXE build (from the TFTP root)
//! iPXE    ──DHCP──► proxyDHCP (dhcp)      "your script is http://10.0.0.1:8080/boot/script?mac=…"
//!         ──HTTP──► http                  the script (BootPolicy::decide → ipxe), kernel, initrd
//! kernel+initramfs (bootenv) ──HTTPS──► the engine's API, with the agent token from the script
//! ```
//!
//! This crate decides nothing: it depends on the wire protocol only and asks one trait what each
//! machine boots (pixiecore's shape). The engine implements it from its catalog.
//!
//! - [`policy`]: [`BootPolicy`], the questions protocol code asks, and its typed answers
//!   ([`BootSpec`] for DHCP, [`BootDecision`] for the script).
//! - [`ipxe`]: a [`BootDecision`] rendered to an iPXE script.
//! - [`dhcp`] (with [`leases`] for full-DHCP mode), [`tftp`], [`http`]: the protocols.
//! - [`bootlog`]: what each machine was offered and fetched, for `kura netboot status`.
//! - [`seen`]: the address each MAC's DHCP exchange showed, handed to the policy with every
//!   script request (so it can release a token only to the machine that booted).
//! - [`ra`]: "no IPv6 router here" advertisements, so iPXE does not wait for IPv6.
//!
//! [`run`] takes its sockets and a shutdown future as arguments; [`bind`] makes the sockets
//! from a [`NetbootConfig`] (tests bind their own on 127.0.0.1 or inside a network namespace).
//!
//! # Configuration (`kura serve --netboot netboot.json`)
//!
//! ```json
//! {
//!   "address": "10.0.0.1",                       // required: our IPv4 on the boot network
//!   "interface": "eth1",                         // optional: bind DHCP to it (SO_BINDTODEVICE);
//!                                                //   default: the interface on address's subnet
//!   "kernel": "/srv/kura/boot/vmlinuz",          // default: DATA/boot/vmlinuz and
//!   "initrd": "/srv/kura/boot/initrd.img",       //   DATA/boot/initrd.img (`kura bootenv build`)
//!   "kernel_args": "console=ttyS0",              // optional
//!   "tftp_root": "/usr/lib/ipxe",                // default
//!   "ipxe_bios": "/usr/lib/ipxe/undionly.kpxe",  // default; served by its file name
//!   "ipxe_efi": "/usr/lib/ipxe/snponly.efi",     // default (or ipxe.efi); by its file name
//!   "ipxe_efi_arm64": null,                      // optional
//!   "api_url": "https://10.0.0.1:8443",          // default: the URL kura serve listens on
//!   "dhcp": "proxy",                             // "proxy" (default), "full" or "off"
//!   "pool": { "start": "10.0.0.100", "end": "10.0.0.200", "netmask": "255.255.255.0",
//!             "router": null, "dns": [], "lease_secs": 3600,
//!             "leases_file": "DATA/netboot-leases.json" },  // full mode only
//!   "dhcp_port": 67, "pxe_port": 4011, "tftp_port": 69, "http_port": 8080  // defaults
//! }
//! ```
//!
//! Ports below 1024 need root or `CAP_NET_BIND_SERVICE`; `interface` needs `CAP_NET_RAW`.
//! In proxy mode the DHCP server of the network must not itself send PXE options, and nothing
//! else on this machine may listen on UDP 67 (dnsmasq).

pub mod bootlog;
pub mod conns;
pub mod dhcp;
pub mod http;
pub mod ipxe;
pub mod leases;
pub mod policy;
pub mod ra;
pub mod seen;
pub mod tftp;

pub use bootlog::BootLog;
pub use policy::{AgentBoot, BootDecision, BootPolicy, BootRequest, BootSpec, ClientArch, DhcpWitness, PolicyError};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, UdpSocket};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    #[default]
    Proxy,
    Full,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub netmask: Ipv4Addr,
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default = "default_lease")]
    pub lease_secs: u32,
    #[serde(default)]
    pub leases_file: Option<PathBuf>,
}

fn default_lease() -> u32 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetbootConfig {
    pub address: Ipv4Addr,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: PathBuf,
    #[serde(default)]
    pub kernel_args: String,
    #[serde(default = "default_tftp_root")]
    pub tftp_root: PathBuf,
    #[serde(default = "default_bios")]
    pub ipxe_bios: Option<PathBuf>,
    #[serde(default = "default_efi")]
    pub ipxe_efi: Option<PathBuf>,
    #[serde(default)]
    pub ipxe_efi_arm64: Option<PathBuf>,
    #[serde(default)]
    pub api_url: Option<String>,
    #[serde(default)]
    pub dhcp: DhcpMode,
    #[serde(default)]
    pub pool: Option<PoolConfig>,
    #[serde(default = "default_dhcp_port")]
    pub dhcp_port: u16,
    #[serde(default = "default_pxe_port")]
    pub pxe_port: u16,
    #[serde(default = "default_tftp_port")]
    pub tftp_port: u16,
    #[serde(default = "default_http_port")]
    pub http_port: u16,
}

fn default_tftp_root() -> PathBuf {
    PathBuf::from("/usr/lib/ipxe")
}
fn default_bios() -> Option<PathBuf> {
    Some(PathBuf::from("/usr/lib/ipxe/undionly.kpxe"))
}
fn default_efi() -> Option<PathBuf> {
    Some(PathBuf::from("/usr/lib/ipxe/snponly.efi"))
}
fn default_dhcp_port() -> u16 {
    dhcp::SERVER_PORT
}
fn default_pxe_port() -> u16 {
    dhcp::PXE_PORT
}
fn default_tftp_port() -> u16 {
    69
}
fn default_http_port() -> u16 {
    8080
}

impl NetbootConfig {
    /// Reads and checks a JSON configuration. `data` is the engine's data directory (the
    /// default place of the lease file).
    pub fn load(path: &Path, data: &Path) -> Result<NetbootConfig> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c: NetbootConfig = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing the netboot configuration {}", path.display()))?;
        // What `kura bootenv build --data DATA` writes.
        if c.kernel.as_os_str().is_empty() {
            c.kernel = data.join("boot/vmlinuz");
        }
        if c.initrd.as_os_str().is_empty() {
            c.initrd = data.join("boot/initrd.img");
        }
        if let Some(pool) = &mut c.pool {
            if pool.leases_file.is_none() {
                pool.leases_file = Some(data.join("netboot-leases.json"));
            }
        }
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        if self.kernel_args.chars().any(char::is_control) {
            bail!("netboot: kernel_args must be one line without control characters");
        }
        if let Some(u) = &self.api_url {
            if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control() || c == '$') {
                bail!("netboot: api_url {u:?} must be a URL without spaces");
            }
        }
        if self.dhcp == DhcpMode::Full && self.pool.is_none() {
            bail!("netboot: \"dhcp\": \"full\" needs a \"pool\"");
        }
        if self.address.is_unspecified() || self.address.is_broadcast() {
            bail!("netboot: address must be this machine's address on the boot network");
        }
        Ok(())
    }

    pub fn http_base(&self) -> String {
        format!("http://{}:{}", self.address, self.http_port)
    }

    /// What TFTP serves (the root, and the iPXE builds by their file names, wherever they
    /// are), and the TFTP names of the BIOS, UEFI x64 and UEFI arm64 iPXE builds. Checks that
    /// the files exist.
    pub fn firmware(&self) -> Result<(tftp::Files, [Option<String>; 3])> {
        let root = std::fs::canonicalize(&self.tftp_root)
            .with_context(|| format!("netboot: the TFTP root {}", self.tftp_root.display()))?;
        let mut named = std::collections::HashMap::new();
        let mut name = |p: &Option<PathBuf>| -> Result<Option<String>> {
            let Some(p) = p else { return Ok(None) };
            let c = std::fs::canonicalize(p)
                .with_context(|| format!("netboot: iPXE file {} (on Debian: apt-get install ipxe)", p.display()))?;
            if !c.is_file() {
                bail!("netboot: {} is not a file", p.display());
            }
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if n.is_empty() || n.len() > 100 || !n.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("netboot: {} needs a plain file name (it is the TFTP name)", p.display());
            }
            if let Some(other) = named.insert(PathBuf::from(&n), c.clone()) {
                if other != c {
                    bail!("netboot: two iPXE files are named {n}");
                }
            }
            Ok(Some(n))
        };
        let names = [name(&self.ipxe_bios)?, name(&self.ipxe_efi)?, name(&self.ipxe_efi_arm64)?];
        Ok((tftp::Files { root, named }, names))
    }
}

/// The sockets netboot serves on. `dhcp`/`pxe` are `None` when DHCP is off.
pub struct Sockets {
    pub dhcp: Option<UdpSocket>,
    pub pxe: Option<UdpSocket>,
    pub tftp: UdpSocket,
    pub http: TcpListener,
    /// The router-advertisement socket and its interface index ([`ra`]), when DHCP is on.
    pub ra: Option<(socket2::Socket, u32)>,
}

fn udp(addr: SocketAddr, interface: Option<&str>, broadcast: bool) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if broadcast {
        s.set_broadcast(true)?;
    }
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes())).with_context(|| format!("binding to interface {i} (needs CAP_NET_RAW)"))?;
    }
    s.bind(&addr.into()).with_context(|| format!("binding UDP {addr}"))?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// Binds the sockets a configuration asks for: DHCP and PXE on `0.0.0.0` (broadcasts reach
/// only a wildcard socket), TFTP and HTTP on `address`.
///
/// The DHCP and PXE sockets are bound to a device: `interface`, else the interface whose
/// directly connected subnet holds `address` ([`interface_of`]). Without that, replies to
/// 255.255.255.255 follow the default route: out of the wrong interface on an engine with a
/// management and a backup network, and nowhere at all (`ENETUNREACH`) on an isolated backup
/// LAN without a default route. If the derived interface cannot be bound (no `CAP_NET_RAW`),
/// the sockets stay unbound, with a warning.
pub async fn bind(c: &NetbootConfig) -> Result<Sockets> {
    let any = Ipv4Addr::UNSPECIFIED;
    let pair = |iface: Option<&str>| -> Result<(Option<UdpSocket>, Option<UdpSocket>)> {
        Ok((
            Some(udp(SocketAddr::from((any, c.dhcp_port)), iface, true)?),
            Some(udp(SocketAddr::from((any, c.pxe_port)), iface, true)?),
        ))
    };
    let derived = || interface_of(c.address, &std::fs::read_to_string("/proc/net/route").unwrap_or_default());
    let ra = match c.dhcp {
        DhcpMode::Off => None,
        _ => match c.interface.clone().or_else(derived) {
            Some(i) => match ra::socket(&i) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("netboot: no IPv6 router advertisements on {i} ({e}); iPXE will wait for IPv6");
                    None
                }
            },
            None => None,
        },
    };
    let (dhcp, pxe) = match (c.dhcp, &c.interface) {
        (DhcpMode::Off, _) => (None, None),
        (_, Some(i)) => pair(Some(i))?,
        (_, None) => match derived() {
            None => pair(None)?,
            Some(i) => pair(Some(&i)).or_else(|e| {
                tracing::warn!(
                    "netboot: DHCP not bound to {i}, the interface of {} ({e:#}); set \"interface\"",
                    c.address
                );
                pair(None)
            })?,
        },
    };
    let tftp = udp(SocketAddr::from((c.address, c.tftp_port)), None, false)?;
    let http_addr = SocketAddr::from((c.address, c.http_port));
    let http = TcpListener::bind(http_addr).await.with_context(|| format!("binding TCP {http_addr}"))?;
    Ok(Sockets { dhcp, pxe, tftp, http, ra })
}

/// The interface whose directly connected IPv4 route (no gateway) is the most specific one
/// holding `addr`, from the text of `/proc/net/route` (addresses in native byte order).
pub fn interface_of(addr: Ipv4Addr, proc_net_route: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let ip = |s: &str| hex(s).map(|v| u32::from_be_bytes(v.to_ne_bytes()));
    let a = u32::from(addr);
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (iface, dest, flags, mask) = (f.first()?, ip(f.get(1)?)?, hex(f.get(3)?)?, ip(f.get(7)?)?);
            let connected = flags & RTF_UP != 0 && flags & RTF_GATEWAY == 0 && mask != 0;
            (connected && a & mask == dest & mask).then(|| (mask.count_ones(), (*iface).to_string()))
        })
        .max_by_key(|(bits, _)| *bits)
        .map(|(_, i)| i)
}

/// Unix seconds now (boot log times, lease expiry).
pub(crate) fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Everything [`run`] needs besides sockets.
pub struct Netboot {
    pub config: NetbootConfig,
    pub policy: Arc<dyn BootPolicy>,
    pub log: Arc<BootLog>,
}

/// Netboot running in the background (see [`start`]).
pub struct Handle {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// Binds the configured sockets and runs netboot in a task until [`Handle::stop`].
pub async fn start(nb: Netboot) -> Result<Handle> {
    let sockets = bind(&nb.config).await?;
    let c = &nb.config;
    println!(
        "kura serve: netboot on {} (DHCP {:?}, TFTP :{}, boot HTTP {})",
        c.address,
        c.dhcp,
        c.tftp_port,
        c.http_base()
    );
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run(nb, sockets, async {
        let _ = rx.await;
    }));
    Ok(Handle { stop, task })
}

impl Handle {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("netboot stopped with an error: {e:#}"),
            Err(e) => tracing::error!("netboot task failed: {e}"),
        }
    }
}

/// Runs the DHCP, TFTP and HTTP boot services on `sockets` until `shutdown` completes.
pub async fn run(nb: Netboot, sockets: Sockets, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let Netboot { config, policy, log } = nb;
    // DHCP's sightings for the script route; `None` when DHCP is off (nothing is seen).
    let sightings = Arc::new(seen::Sightings::default());
    let dhcp_seen = sockets.dhcp.is_some().then(|| sightings.clone());
    let ra_audience = match config.dhcp {
        DhcpMode::Full => ra::Audience::Everyone,
        _ => ra::Audience::Netbooting(sightings.clone()),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut set = tokio::task::JoinSet::new();

    if let Some(sock) = sockets.dhcp {
        let now = unix_now();
        let full = match (config.dhcp, &config.pool) {
            (DhcpMode::Full, Some(p)) => {
                let table = leases::LeaseTable::new(p.start, p.end, vec![config.address], p.leases_file.clone())
                    .map_err(anyhow::Error::msg)?
                    .load(now)
                    .context("loading the DHCP leases")?;
                let s = dhcp::FullSettings {
                    netmask: p.netmask,
                    router: p.router,
                    dns: p.dns.clone(),
                    lease_secs: p.lease_secs,
                };
                Some((s, table))
            }
            _ => None,
        };
        let d = dhcp::Dhcp { server_ip: config.address, policy: policy.clone(), full, seen: sightings };
        let (l, stop) = (log.clone(), stopped());
        set.spawn(async move { dhcp::serve(d, sock, sockets.pxe, l, stop).await.context("DHCP") });
    }
    if let Some((sock, index)) = sockets.ra {
        let stop = stopped();
        set.spawn(async move { ra::serve(sock, index, ra_audience, stop).await.context("IPv6 router advertisements") });
    }
    let (files, _) = config.firmware()?;
    let (l, stop) = (log.clone(), stopped());
    set.spawn(async move { tftp::serve(sockets.tftp, files, l, stop).await.context("TFTP") });
    let st = Arc::new(http::BootHttp {
        policy,
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        kernel_args: config.kernel_args.clone(),
        log: log.clone(),
        seen: dhcp_seen,
    });
    let stop = stopped();
    set.spawn(async move { http::serve(sockets.http, st, stop).await.context("boot HTTP") });

    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut result = Ok(());
    while let Some(r) = set.join_next().await {
        let r = r.context("a netboot task failed").and_then(|r| r);
        if let Err(e) = r {
            tracing::error!("netboot: {e:#}");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netboot_config_defaults_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nb.json");
        std::fs::write(&p, r#"{"address":"10.0.0.1","kernel":"/k","initrd":"/i"}"#).unwrap();
        let c = NetbootConfig::load(&p, dir.path()).unwrap();
        assert_eq!(c.dhcp, DhcpMode::Proxy);
        assert_eq!(c.tftp_root, PathBuf::from("/usr/lib/ipxe"));
        assert_eq!(c.ipxe_efi, Some(PathBuf::from("/usr/lib/ipxe/snponly.efi")));
        assert_eq!((c.dhcp_port, c.pxe_port, c.tftp_port, c.http_port), (67, 4011, 69, 8080));
        assert_eq!(c.http_base(), "http://10.0.0.1:8080");
        std::fs::write(
            &p,
            r#"{"address":"10.0.0.1","kernel":"/k","initrd":"/i","dhcp":"full",
                "pool":{"start":"10.0.0.100","end":"10.0.0.110","netmask":"255.255.255.0"}}"#,
        )
        .unwrap();
        let c = NetbootConfig::load(&p, dir.path()).unwrap();
        assert_eq!(c.pool.unwrap().leases_file, Some(dir.path().join("netboot-leases.json")));
        // Without kernel/initrd: what `kura bootenv build --data DATA` writes.
        std::fs::write(&p, r#"{"address":"10.0.0.1"}"#).unwrap();
        let c = NetbootConfig::load(&p, dir.path()).unwrap();
        assert_eq!((c.kernel, c.initrd), (dir.path().join("boot/vmlinuz"), dir.path().join("boot/initrd.img")));
        for bad in [
            r#"{"address":"10.0.0.1","kernel":"/k","initrd":"/i","dhcp":"full"}"#,
            r#"{"address":"10.0.0.1","kernel":"/k","initrd":"/i","kernel_args":"a\nchain http://evil"}"#,
            r#"{"address":"0.0.0.0","kernel":"/k","initrd":"/i"}"#,
            r#"{"address":"10.0.0.1","kernel":"/k","initrd":"/i","typo":1}"#,
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(NetbootConfig::load(&p, dir.path()).is_err(), "{bad}");
        }
    }

    #[test]
    fn netboot_dhcp_interface_is_the_one_on_the_address_subnet() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     br0\t00004D0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     br1\t00C84D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let of = |a: [u8; 4]| interface_of(Ipv4Addr::from(a), route);
        if cfg!(target_endian = "little") {
            assert_eq!(of([192, 0, 2, 5]).as_deref(), Some("eth0"));
            assert_eq!(of([10, 77, 200, 1]).as_deref(), Some("br1"), "the most specific route");
            assert_eq!(of([10, 77, 1, 1]).as_deref(), Some("br0"));
        }
        assert_eq!(of([198, 51, 100, 1]), None, "only the default route holds it");
        assert_eq!(interface_of(Ipv4Addr::new(10, 0, 0, 1), ""), None);
    }

    #[test]
    fn netboot_firmware_is_served_by_its_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tftp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(dir.path().join("other")).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"x").unwrap();
        std::fs::write(dir.path().join("ipxe.efi"), b"x").unwrap();
        std::fs::write(dir.path().join("other/ipxe.efi"), b"y").unwrap();
        let mut c: NetbootConfig =
            serde_json::from_str(r#"{"address":"10.0.0.1","kernel":"/k","initrd":"/i"}"#).unwrap();
        c.tftp_root = root.clone();
        c.ipxe_bios = Some(root.join("undionly.kpxe"));
        c.ipxe_efi = Some(dir.path().join("ipxe.efi"));
        let (files, names) = c.firmware().unwrap();
        assert_eq!(names, [Some("undionly.kpxe".into()), Some("ipxe.efi".into()), None]);
        assert_eq!(files.named[Path::new("ipxe.efi")], std::fs::canonicalize(dir.path().join("ipxe.efi")).unwrap());
        c.ipxe_efi_arm64 = Some(dir.path().join("other/ipxe.efi"));
        assert!(c.firmware().is_err(), "two different files with one name");
        c.ipxe_efi_arm64 = Some(dir.path().join("missing.efi"));
        assert!(c.firmware().is_err());
    }

    /// The whole chain on loopback with high ports: PXE DISCOVER → offer, TFTP of the iPXE
    /// build, iPXE DISCOVER → script URL, script, kernel; then the boot log.
    #[tokio::test]
    async fn netboot_run_serves_the_whole_chain_on_loopback() {
        use dhcproto::v4::{Architecture, DhcpOption, Encodable, Message, MessageType};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tftp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("undionly.kpxe"), vec![1u8; 70_000]).unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"KERNEL").unwrap();
        std::fs::write(dir.path().join("initrd.img"), b"INITRD").unwrap();
        let lo = Ipv4Addr::LOCALHOST;
        let sockets = Sockets {
            dhcp: Some(UdpSocket::bind((lo, 0)).await.unwrap()),
            pxe: Some(UdpSocket::bind((lo, 0)).await.unwrap()),
            tftp: UdpSocket::bind((lo, 0)).await.unwrap(),
            http: TcpListener::bind((lo, 0)).await.unwrap(),
            ra: None,
        };
        let dhcp_addr = sockets.dhcp.as_ref().unwrap().local_addr().unwrap();
        let pxe_addr = sockets.pxe.as_ref().unwrap().local_addr().unwrap();
        let tftp_addr = sockets.tftp.local_addr().unwrap();
        let http_addr = sockets.http.local_addr().unwrap();
        let config: NetbootConfig = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1",
            "kernel": dir.path().join("vmlinuz"),
            "initrd": dir.path().join("initrd.img"),
            "tftp_root": root,
            "ipxe_bios": root.join("undionly.kpxe"),
            "ipxe_efi": null,
            "http_port": http_addr.port(),
        }))
        .unwrap();
        let policy = policy::StaticPolicy {
            bios_firmware: Some("undionly.kpxe".into()),
            efi_firmware: None,
            script_url: format!("{}/boot/script?mac={{mac}}", config.http_base()),
            decision: BootDecision::LocalDisk { note: "no job".into() },
        };
        let log = BootLog::new();
        let nb = Netboot { config, policy: Arc::new(policy), log: log.clone() };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(nb, sockets, async {
            let _ = rx.await;
        }));

        // A PXE DISCOVER (sent unicast here: broadcast replies go to 255.255.255.255:68,
        // which a test cannot receive, so check the 4011 path end to end instead).
        let client = UdpSocket::bind((lo, 0)).await.unwrap();
        let mac = [0x52, 0x54, 0, 0xab, 0xcd, 0xef];
        let mut m = Message::default();
        m.set_chaddr(&mac).set_ciaddr(lo);
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
        m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture(0)));
        client.send_to(&m.to_vec().unwrap(), pxe_addr).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (n, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        let reply = <Message as dhcproto::v4::Decodable>::from_bytes(&buf[..n]).unwrap();
        assert_eq!(reply.fname_str().unwrap().unwrap().trim_end_matches('\0'), "undionly.kpxe");
        let _ = dhcp_addr;

        // TFTP of the named file.
        let t = UdpSocket::bind((lo, 0)).await.unwrap();
        let rrq = tftp::encode(&tftp::Packet::Rrq(tftp::Request {
            filename: b"undionly.kpxe".to_vec(),
            mode: "octet".into(),
            options: vec![("blksize".into(), "1468".into()), ("windowsize".into(), "8".into())],
        }));
        t.send_to(&rrq, tftp_addr).await.unwrap();
        let mut got = 0usize;
        loop {
            let (n, from) =
                tokio::time::timeout(std::time::Duration::from_secs(5), t.recv_from(&mut buf)).await.unwrap().unwrap();
            match tftp::parse(&buf[..n]).unwrap() {
                tftp::Packet::Oack(_) => {
                    t.send_to(&tftp::encode(&tftp::Packet::Ack(0)), from).await.map(|_| ()).unwrap()
                }
                tftp::Packet::Data { block, data } => {
                    got += data.len();
                    if block % 8 == 0 || data.len() < 1468 {
                        t.send_to(&tftp::encode(&tftp::Packet::Ack(block)), from).await.unwrap();
                    }
                    if data.len() < 1468 {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, 70_000);

        // The script: what the policy decided, rendered.
        let body = http_get(http_addr, "/boot/script?mac=52:54:00:ab:cd:ef").await;
        assert_eq!(body, ipxe::local_boot_script("52:54:00:ab:cd:ef", "no job"));
        assert_eq!(http_get(http_addr, "/boot/vmlinuz").await, "KERNEL");

        let machines = log.machines();
        let me = machines.iter().find(|m| m.mac.map(|m| m.0) == Some(mac)).expect("the machine is in the boot log");
        let stages: Vec<_> = me.events.iter().map(|e| e.stage).collect();
        for s in [bootlog::Stage::Dhcp, bootlog::Stage::Tftp, bootlog::Stage::Script, bootlog::Stage::Kernel] {
            assert!(stages.contains(&s), "{stages:?}");
        }
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut b = Vec::new();
        s.read_to_end(&mut b).await.unwrap();
        let text = String::from_utf8_lossy(&b).into_owned();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }
}
