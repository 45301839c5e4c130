//! The engine's [`BootPolicy`]: what each netbooting machine boots, decided from the catalog
//! (the netboot services in `kura-netboot` ask; they decide nothing themselves).
//!
//! What a machine gets when its iPXE fetches its script:
//!
//! - **A queued or running job** for the host owning the MAC: the Kura boot environment
//!   ([`BootDecision::Agent`]), with `kura.*` arguments ([`AgentArgs`]) naming the job, the API
//!   and a fresh agent token. The token ([`crate::engine::tokens::mint_agent_token`], the one minting function) is bound to the job and
//!   the MAC, valid while the job is queued or running and at most [`TOKEN_LIFETIME`]; a new one
//!   is issued on every script fetch and the one netboot issued before for the same job and MAC
//!   is revoked ([`Issued`]), so at most one netboot token per job is live. Tokens issued by the
//!   job-creation API are left alone.
//! - **No job**: boot from the local disk ([`BootDecision::LocalDisk`]). UEFI machines are
//!   told so already by DHCP ([`BootSpec::LocalDisk`]: a PXE "local boot" menu, nothing
//!   downloaded), because on UEFI iPXE cannot boot the disk itself: its `exit` hands control
//!   back to the firmware, which then tries its other network entries first or, with
//!   `ipxe.efi`, hangs (issue 17; the measurements are in docs/operations.md). BIOS machines
//!   load iPXE, whose `sanboot` boots the first disk through INT 13h.
//! - **An unknown MAC**: registered in the catalog as a new host `mac-aabbccddeeff` (rename it
//!   with the API; the MAC stays), then the local disk.
//!
//! `kura_netboot::ipxe` writes the scripts. [`prepare`] builds the engine's netboot for
//! `kura serve --netboot CONFIG.json`.

use anyhow::{bail, Result};
use kura_catalogs::db::{Catalog, CatalogError, NewHost};
use kura_netboot::http::{initrd_url, kernel_url, script_url};
use kura_netboot::{
    AgentBoot, BootDecision, BootLog, BootPolicy, BootRequest, BootSpec, ClientArch, Netboot, NetbootConfig,
    PolicyError,
};
use kura_protocol::cmdline::AgentArgs;
use kura_protocol::MacAddr;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The longest an agent token issued by netboot lives (it dies with its job before that).
pub const TOKEN_LIFETIME: i64 = 7 * 24 * 3600;
/// The actor of netboot's catalog changes in the audit log.
pub const ACTOR: &str = "netboot";

/// What the decisions and boot specs are made of (from the netboot configuration).
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// `http://ADDRESS:PORT`, where iPXE fetches the script, kernel and initrd.
    pub http_base: String,
    /// The API URL the agent talks to (`kura.server`).
    pub api_url: String,
    /// The API certificate's fingerprint, for an https API (`kura.fingerprint`).
    pub fingerprint: Option<String>,
    /// TFTP file names of the iPXE builds.
    pub bios_firmware: Option<String>,
    pub efi_x64_firmware: Option<String>,
    pub efi_arm64_firmware: Option<String>,
}

pub struct CatalogPolicy {
    pub catalog: Arc<Catalog>,
    pub settings: PolicySettings,
    pub issued: Issued,
}

/// The agent tokens netboot issued, by (job, MAC), so a new fetch revokes the previous one.
/// In memory: after a restart, tokens issued before it stay valid until their job ends.
/// Tokens issued by anyone else (the job-creation API) are left alone.
#[derive(Default)]
pub struct Issued(std::sync::Mutex<HashMap<(i64, String), i64>>);

impl BootPolicy for CatalogPolicy {
    fn boot_spec(&self, mac: MacAddr, arch: ClientArch) -> BootSpec {
        let s = &self.settings;
        let firmware = match arch {
            ClientArch::BiosX86 => s.bios_firmware.clone(),
            ClientArch::EfiX64 => s.efi_x64_firmware.clone(),
            ClientArch::EfiArm64 => s.efi_arm64_firmware.clone(),
            ClientArch::EfiIa32 | ClientArch::Other(_) => return BootSpec::Ignore,
        };
        let script_url = script_url(&s.http_base, mac);
        if arch.is_efi() {
            match efi_has_work(&self.catalog, mac) {
                Ok(true) => {}
                Ok(false) => return BootSpec::LocalDisk { script_url },
                // The catalog failed: boot locally rather than hold a server in iPXE.
                Err(e) => {
                    tracing::error!("netboot: deciding at DHCP time for {mac}: {e}");
                    return BootSpec::LocalDisk { script_url };
                }
            }
        }
        BootSpec::Boot { firmware, script_url }
    }

    fn decide(&self, mac: MacAddr, _req: &BootRequest) -> Result<BootDecision, PolicyError> {
        decide(&self.catalog, &self.settings, &self.issued, mac).map_err(|e| PolicyError(e.to_string()))
    }
}

/// Whether a UEFI machine netbooting as `mac` has a queued or running job (registering an
/// unknown MAC, as [`decide`] does). Without one it boots locally from DHCP already: on UEFI,
/// iPXE cannot hand the machine back to its disk quickly (see the module docs).
fn efi_has_work(catalog: &Catalog, mac: MacAddr) -> Result<bool, CatalogError> {
    let mac_s = mac.to_string();
    if catalog.active_job_for_mac(&mac_s)?.is_some() {
        return Ok(true);
    }
    if catalog.host_by_mac(&mac_s)?.is_none() {
        register(catalog, mac)?;
    }
    Ok(false)
}

/// The host name given to an unknown MAC address.
pub fn host_name_for(mac: MacAddr) -> String {
    format!("mac-{}", mac.hex())
}

/// What `mac` boots (see the module docs). Blocking; may write to the catalog.
pub fn decide(
    catalog: &Catalog,
    s: &PolicySettings,
    issued: &Issued,
    mac: MacAddr,
) -> Result<BootDecision, CatalogError> {
    let mac_s = mac.to_string();
    if let Some(job) = catalog.active_job_for_mac(&mac_s)? {
        let token =
            crate::engine::tokens::mint_agent_token(catalog, ACTOR, job.id, mac, Some(catalog.now() + TOKEN_LIFETIME))?;
        let previous =
            issued.0.lock().unwrap_or_else(|e| e.into_inner()).insert((job.id, mac_s.clone()), token.info.id);
        if let Some(old) = previous {
            catalog.revoke_token(ACTOR, old)?;
        }
        return Ok(BootDecision::Agent(AgentBoot {
            args: AgentArgs::new(&s.api_url, job.id, &token.secret, mac, s.fingerprint.as_deref()),
            kernel_url: kernel_url(&s.http_base, mac),
            initrd_url: initrd_url(&s.http_base, mac),
            banner: format!("{} job {} for host {}", job.kind, job.id, job.host),
        }));
    }
    let note = match catalog.host_by_mac(&mac_s)? {
        Some(h) => format!("host {}: no pending job", h.name),
        None => {
            register(catalog, mac)?;
            format!("registered as host {}", host_name_for(mac))
        }
    };
    Ok(BootDecision::LocalDisk { note })
}

/// Adds an unknown MAC to the catalog as host `mac-…` (a race with another fetch, or an
/// existing host of that name without the MAC, is fine).
fn register(catalog: &Catalog, mac: MacAddr) -> Result<(), CatalogError> {
    let name = host_name_for(mac);
    let notes = "registered by netboot on its first network boot; rename it".to_string();
    match catalog.create_host(ACTOR, &NewHost { name: name.clone(), group: None, notes }) {
        Ok(_) | Err(CatalogError::Conflict { .. }) => {}
        Err(e) => return Err(e),
    }
    match catalog.add_mac(ACTOR, &name, &mac.to_string()) {
        Ok(_) | Err(CatalogError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The engine's netboot: boot files from `config`, decisions from `catalog`. `api_url` and
/// `fingerprint` are where and how the booted agent reaches the API.
pub fn netboot(
    config: NetbootConfig,
    catalog: Arc<Catalog>,
    api_url: &str,
    fingerprint: Option<String>,
) -> Result<Netboot> {
    let (_, [bios, efi, arm]) = config.firmware()?;
    for f in [&config.kernel, &config.initrd] {
        if !f.is_file() {
            bail!(
                "netboot: {} is not a file (build the boot environment first: kura bootenv build --data DATA)",
                f.display()
            );
        }
    }
    let settings = PolicySettings {
        http_base: config.http_base(),
        api_url: config.api_url.clone().unwrap_or_else(|| api_url.to_string()),
        fingerprint,
        bios_firmware: bios,
        efi_x64_firmware: efi,
        efi_arm64_firmware: arm,
    };
    Ok(Netboot {
        config,
        policy: Arc::new(CatalogPolicy { catalog, settings, issued: Default::default() }),
        log: BootLog::new(),
    })
}

/// Loads the configuration at `path` and builds the engine's netboot (for `kura serve`).
/// `api_scheme` and `api_addr` are where the API listens; the agent is told to use
/// `api_url` from the configuration, else that address (with the netboot address in place of
/// a wildcard one).
pub fn prepare(
    path: &Path,
    data: &Path,
    catalog: Arc<Catalog>,
    api_scheme: &str,
    api_addr: SocketAddr,
    fingerprint: Option<String>,
) -> Result<Netboot> {
    let config = NetbootConfig::load(path, data)?;
    let host = if api_addr.ip().is_unspecified() { std::net::IpAddr::V4(config.address) } else { api_addr.ip() };
    let api_url = format!("{api_scheme}://{}", SocketAddr::new(host, api_addr.port()));
    netboot(config, catalog, &api_url, fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalogs::db::{JobKind, NewJob, Role};
    use kura_netboot::ipxe;

    fn settings() -> PolicySettings {
        PolicySettings {
            http_base: "http://10.9.0.1:8080".into(),
            api_url: "https://10.9.0.1:8443".into(),
            fingerprint: Some("ab12".into()),
            bios_firmware: Some("undionly.kpxe".into()),
            efi_x64_firmware: Some("ipxe.efi".into()),
            efi_arm64_firmware: None,
        }
    }

    /// The script iPXE gets: the decision, rendered with the site's kernel arguments.
    fn render(cat: &Catalog, s: &PolicySettings, issued: &Issued, mac: MacAddr) -> Result<String, CatalogError> {
        let d = decide(cat, s, issued, mac)?;
        Ok(ipxe::render(mac, &d, "console=ttyS0").expect("a script"))
    }

    #[test]
    fn netboot_script_registers_unknown_macs_and_boots_locally() {
        let cat = Catalog::open_in_memory().unwrap();
        let issued = Issued::default();
        let mac: MacAddr = "52:54:00:aa:bb:cc".parse().unwrap();
        let s = render(&cat, &settings(), &issued, mac).unwrap();
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("sanboot --no-describe --drive 0x80"));
        assert!(s.contains("iseq ${platform} efi"));
        assert!(!s.contains("kura.token"));
        let host = cat.host_by_mac("52:54:00:aa:bb:cc").unwrap().unwrap();
        assert_eq!(host.name, "mac-525400aabbcc");
        // Again: no second host.
        render(&cat, &settings(), &issued, mac).unwrap();
        assert_eq!(cat.list_hosts().unwrap().len(), 1);
    }

    #[test]
    fn netboot_script_for_a_pending_job_has_kernel_initrd_and_a_working_token() {
        let cat = Catalog::open_in_memory().unwrap();
        let issued = Issued::default();
        let mac: MacAddr = "52:54:00:aa:bb:cc".parse().unwrap();
        render(&cat, &settings(), &issued, mac).unwrap();
        let job = cat
            .create_job(
                "t",
                &NewJob { kind: JobKind::Capture, host: "mac-525400aabbcc".into(), disk: None, snapshot: None },
            )
            .unwrap();
        let s = render(&cat, &settings(), &issued, mac).unwrap();
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(kernel.starts_with("kernel http://10.9.0.1:8080/boot/vmlinuz?mac=52:54:00:aa:bb:cc initrd=initrd.img "));
        assert!(kernel.contains(&format!(" kura.job={} ", job.id)));
        assert!(kernel.contains(" kura.server=https://10.9.0.1:8443 "));
        assert!(kernel.contains(" kura.mac=52:54:00:aa:bb:cc"));
        assert!(kernel.contains(" kura.fingerprint=ab12 console=ttyS0"));
        assert!(
            s.contains("\ninitrd --name initrd.img http://10.9.0.1:8080/boot/initrd.img?mac=52:54:00:aa:bb:cc\nboot\n")
        );
        let token = kernel.split(' ').find_map(|a| a.strip_prefix("kura.token=")).unwrap().to_string();
        let p = cat.authenticate(&token, cat.now()).unwrap().expect("a valid token");
        assert_eq!((p.role, p.job_id, p.mac.as_deref()), (Role::Agent, Some(job.id), Some("52:54:00:aa:bb:cc")));
        // A second fetch issues a new token and revokes the first.
        let s2 = render(&cat, &settings(), &issued, mac).unwrap();
        let token2 = s2.split(' ').find_map(|a| a.strip_prefix("kura.token=")).unwrap();
        assert_ne!(token, token2);
        assert!(cat.authenticate(&token, cat.now()).unwrap().is_none());
        assert!(cat.authenticate(token2, cat.now()).unwrap().is_some());
        // Once the job is over, the machine boots locally.
        cat.cancel_job("t", job.id).unwrap();
        assert!(render(&cat, &settings(), &issued, mac).unwrap().contains("sanboot"));
    }

    /// The engine's netboot as `kura serve` runs it, on loopback: the boot HTTP server asks the
    /// catalog policy, renders its decision, and files it in the boot log.
    #[tokio::test]
    async fn engine_netboot_serves_catalog_decisions_over_http() {
        use tokio::net::{TcpListener, UdpSocket};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tftp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"x").unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"KERNEL").unwrap();
        std::fs::write(dir.path().join("initrd.img"), b"INITRD").unwrap();
        let cat = Arc::new(Catalog::open_in_memory().unwrap());
        let lo = std::net::Ipv4Addr::LOCALHOST;
        let sockets = kura_netboot::Sockets {
            dhcp: None,
            pxe: None,
            tftp: UdpSocket::bind((lo, 0)).await.unwrap(),
            http: TcpListener::bind((lo, 0)).await.unwrap(),
            ra: None,
        };
        let http = sockets.http.local_addr().unwrap();
        let config: NetbootConfig = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1", "dhcp": "off", "kernel_args": "console=ttyS0",
            "kernel": dir.path().join("vmlinuz"), "initrd": dir.path().join("initrd.img"),
            "tftp_root": root, "ipxe_bios": root.join("undionly.kpxe"), "ipxe_efi": null,
            "http_port": http.port(),
        }))
        .unwrap();
        let missing = NetbootConfig { kernel: dir.path().join("nope"), ..config.clone() };
        let e = netboot(missing, cat.clone(), "http://127.0.0.1:8443", None).err().unwrap();
        assert!(e.to_string().contains("kura bootenv build"), "{e}");
        let nb = netboot(config, cat.clone(), "http://127.0.0.1:8443", None).unwrap();
        let log = nb.log.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(kura_netboot::run(nb, sockets, async {
            let _ = rx.await;
        }));

        let mac: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
        let body = http_get(http, "/boot/script?mac=52:54:00:ab:cd:ef").await;
        assert_eq!(
            body,
            ipxe::local_boot_script("52:54:00:ab:cd:ef", "registered as host mac-525400abcdef"),
            "an unknown MAC is registered and boots locally"
        );
        assert!(cat.host_by_mac("52:54:00:ab:cd:ef").unwrap().is_some());
        let job = cat
            .create_job(
                "t",
                &NewJob { kind: JobKind::Capture, host: "mac-525400abcdef".into(), disk: None, snapshot: None },
            )
            .unwrap();
        let body = http_get(http, "/boot/script?mac=52:54:00:ab:cd:ef").await;
        let kernel = body.lines().find_map(|l| l.strip_prefix("kernel ")).expect("a kernel line");
        let (url, cmdline) = kernel.split_once(' ').unwrap();
        assert_eq!(url, format!("http://{http}/boot/vmlinuz?mac=52:54:00:ab:cd:ef"));
        assert!(cmdline.ends_with(" console=ttyS0"), "{cmdline}");
        let args = AgentArgs::parse(cmdline).unwrap();
        assert_eq!((args.job, args.mac, args.server.as_str()), (job.id, mac, "http://127.0.0.1:8443"));
        assert!(cat.authenticate(&args.token, cat.now()).unwrap().is_some());

        let machines = log.machines();
        let me = machines.iter().find(|m| m.mac == Some(mac)).expect("the machine is in the boot log");
        let details: Vec<&str> = me.events.iter().map(|e| e.detail.as_str()).collect();
        assert_eq!(details, ["local-boot script", "job script"]);
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
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }
}
