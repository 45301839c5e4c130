//! The engine's [`BootPolicy`]: what each netbooting machine boots, decided from the catalog
//! (the netboot services in `kura-netboot` ask; they decide nothing themselves).
//!
//! What a machine gets when its iPXE fetches its script:
//!
//! - **A queued or running job** for the host owning the MAC: the Kura boot environment
//!   ([`BootDecision::Agent`]), with `kura.*` arguments ([`AgentArgs`]) naming the job, the API
//!   and a fresh agent token ([`crate::engine::tokens::mint_agent_token`], the one minting
//!   function), bound to the job and the MAC, valid while the job is queued or running and at
//!   most [`TOKEN_LIFETIME`] — if the request passes the two checks below.
//! - **No job**: boot from the local disk ([`BootDecision::LocalDisk`]). UEFI machines are
//!   told so already by DHCP ([`BootSpec::LocalDisk`]: a PXE "local boot" menu, nothing
//!   downloaded), because on UEFI iPXE cannot boot the disk itself: its `exit` hands control
//!   back to the firmware, which then tries its other network entries first or, with
//!   `ipxe.efi`, hangs (issue 17; the measurements are in docs/operations.md). BIOS machines
//!   load iPXE, whose `sanboot` boots the first disk through INT 13h.
//! - **An unknown MAC**: registered in the catalog as a new host `mac-aabbccddeeff` (rename it
//!   with the API; the MAC stays), then the local disk. At most [`REGISTER_BURST`] at once and
//!   [`REGISTER_PER_MINUTE`] a minute after that (a token bucket); beyond that the machine boots
//!   locally unregistered. Both are counted in the boot log ([`COUNT_REGISTERED`],
//!   [`COUNT_NOT_REGISTERED`]).
//!
//! # Secure Boot: the signed chain
//!
//! A UEFI x64 PXE ROM with a job gets Debian's signed chain instead of iPXE when its host's
//! setting (`kura host set NAME --secure-boot`, else the netboot configuration's
//! `"secure_boot"`) is `on` or `auto` ([`BootSpec::Signed`]: shim, then GRUB over TFTP). GRUB's
//! per-MAC configuration is this same [`CatalogPolicy::decide_for`], rendered by
//! `kura_netboot::grub` (agent, or `exit` to the local disk), with the same token rules below.
//! `auto` still gives a client that already runs iPXE its script; `on` offers it nothing.
//! Without a job, UEFI machines boot locally from DHCP whatever the setting.
//!
//! # Releasing a job's token
//!
//! The script route passes the requester's address and what netboot's own DHCP saw of the MAC
//! (`kura_netboot::DhcpWitness`). A token is released only when:
//!
//! 1. **The requester is the machine that booted**: the DHCP exchange for that MAC was seen at
//!    most [`DHCP_WINDOW`] seconds ago, with the requester's IP. What "seen with" means depends
//!    on the DHCP mode (`kura_netboot::seen`): in full mode the address we leased it; in proxy
//!    mode the address its PXE DHCPREQUEST asked the site's server for (option 50) or the
//!    source of its request to us on port 4011. With `"dhcp": "off"` nothing is seen and this
//!    check is skipped (only rule 2 holds; the module docs of `kura_netboot::http` say so).
//! 2. **Once per job boot**: a job's token goes out once. A later request is a *new boot* only
//!    if a DHCP exchange for the MAC was seen after the previous release and the job is still
//!    queued (the agent never reported, say it crashed before reaching the API): then a new
//!    token is released and the previous one revoked, with a warning in the job's log. Any
//!    other repeated request — no new DHCP exchange, or the job already running — is "token
//!    requested twice".
//!
//! A refused request gets a local-boot script with no token, is audited
//! (`netboot.token_refused`), counted ([`COUNT_REFUSED`]), and leaves a `warn` line in the
//! job's log (`GET /api/v1/jobs/{id}`), so an operator sees a possible impostor. Refusals never
//! revoke the released token: an impostor cannot end the real machine's job that way.
//!
//! A refusal, and a second release for a new boot, also flag the job's boot as unusual
//! (`Catalog::flag_job`). With `kura serve --hold-unusual-captures`, the snapshot a flagged
//! capture commits is held unconfirmed until an operator confirms it
//! (`kura snapshot confirm ID`), and restores do not pick it by default.
//!
//! Releases live in memory ([`PolicyState`]): after a restart of the engine, one more release
//! per job is possible (tokens released before it stay valid until their job ends).
//!
//! `kura_netboot::ipxe` writes the scripts. [`prepare`] builds the engine's netboot for
//! `kura serve --netboot CONFIG.json`.

use anyhow::{bail, Result};
use kura_catalogs::db::{Catalog, CatalogError, Job, JobState, NewHost};
use kura_netboot::http::{initrd_url, kernel_url, script_url};
use kura_netboot::{
    AgentBoot, BootDecision, BootLog, BootPolicy, BootRequest, BootSpec, ClientArch, DhcpWitness, Netboot,
    NetbootConfig, PolicyError,
};
use kura_protocol::cmdline::AgentArgs;
use kura_protocol::{MacAddr, SecureBoot};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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
    /// The boot chain of UEFI x64 netboots for hosts without their own setting.
    pub secure_boot: SecureBoot,
    /// The signed chain's DHCP boot file (TFTP name of shim), when it is laid out.
    pub shim: Option<String>,
}

/// How long after a MAC's DHCP exchange its script may release the job's token (seconds).
pub const DHCP_WINDOW: i64 = 120;
/// Unknown MACs registered at once before the rate applies.
pub const REGISTER_BURST: u32 = 10;
/// Unknown MACs registered per minute after the burst.
pub const REGISTER_PER_MINUTE: u32 = 10;
/// Boot-log counters: unknown MACs registered, and turned away beyond the rate.
pub const COUNT_REGISTERED: &str = "unknown_macs_registered";
pub const COUNT_NOT_REGISTERED: &str = "unknown_macs_not_registered";
/// Boot-log counter: script requests for a job refused their token.
pub const COUNT_REFUSED: &str = "token_requests_refused";

pub struct CatalogPolicy {
    pub catalog: Arc<Catalog>,
    pub settings: PolicySettings,
    pub state: PolicyState,
    /// Where the counters go (the boot log `kura netboot status` shows).
    pub log: Arc<BootLog>,
}

/// What the policy remembers between requests (in memory; see the module docs).
#[derive(Default)]
pub struct PolicyState {
    releases: std::sync::Mutex<HashMap<i64, Release>>,
    registrations: std::sync::Mutex<Option<Bucket>>,
}

/// A job's token as released: which token, when, to which address.
#[derive(Debug, Clone)]
struct Release {
    token: i64,
    at: i64,
    client: Option<IpAddr>,
}

/// The token bucket of registrations: `tokens` left at `last`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: i64,
}

impl Bucket {
    fn take(slot: &mut Option<Bucket>, now: i64) -> bool {
        let burst = f64::from(REGISTER_BURST);
        let b = slot.get_or_insert(Bucket { tokens: burst, last: now });
        let elapsed = (now - b.last).max(0) as f64;
        b.tokens = (b.tokens + elapsed * f64::from(REGISTER_PER_MINUTE) / 60.0).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn addr(ip: Option<IpAddr>) -> String {
    ip.map_or("an unknown address".to_string(), |c| c.to_string())
}

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
            match self.efi_has_work(mac) {
                Ok(true) => {}
                Ok(false) => return BootSpec::LocalDisk { script_url },
                // The catalog failed: boot locally rather than hold a server in iPXE.
                Err(e) => {
                    tracing::error!("netboot: deciding at DHCP time for {mac}: {e}");
                    return BootSpec::LocalDisk { script_url };
                }
            }
        }
        if arch == ClientArch::EfiX64 {
            let mode = match self.secure_boot_of(mac) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("netboot: the secure boot setting of {mac}: {e}");
                    s.secure_boot
                }
            };
            match (mode, &s.shim) {
                (SecureBoot::Off, _) => {}
                (SecureBoot::On, Some(shim)) => return BootSpec::Signed { shim: shim.clone(), script_url: None },
                (SecureBoot::Auto, Some(shim)) => {
                    return BootSpec::Signed { shim: shim.clone(), script_url: Some(script_url) }
                }
                (_, None) => tracing::warn!(
                    "netboot: {mac} is set to secure boot {mode}, but the signed chain is not laid out \
                     (kura bootenv build); offering iPXE"
                ),
            }
        }
        BootSpec::Boot { firmware, script_url }
    }

    fn decide(&self, mac: MacAddr, req: &BootRequest) -> Result<BootDecision, PolicyError> {
        self.decide_for(mac, req).map_err(|e| PolicyError(e.to_string()))
    }
}

impl CatalogPolicy {
    pub fn new(catalog: Arc<Catalog>, settings: PolicySettings, log: Arc<BootLog>) -> CatalogPolicy {
        CatalogPolicy { catalog, settings, state: PolicyState::default(), log }
    }

    /// What `mac` boots (see the module docs). Blocking; may write to the catalog.
    pub fn decide_for(&self, mac: MacAddr, req: &BootRequest) -> Result<BootDecision, CatalogError> {
        let catalog = &self.catalog;
        let mac_s = mac.to_string();
        let Some(job) = catalog.active_job_for_mac(&mac_s)? else {
            return self.no_job(mac);
        };
        let now = catalog.now();
        let client = req.client;
        let shown = addr(client);
        // 1. The requester is the machine the DHCP exchange saw.
        let boot_at = match req.dhcp {
            DhcpWitness::NotRunning => None,
            DhcpWitness::NotSeen => {
                let why =
                    format!("the script of {mac} was requested from {shown}, but no DHCP exchange of {mac} was seen");
                return self.refuse(&job, mac, client, "no DHCP exchange", &why);
            }
            DhcpWitness::Seen(seen) if now - seen.at > DHCP_WINDOW => {
                let why = format!(
                    "the script of {mac} was requested from {shown} {} s after its last DHCP exchange (at most {DHCP_WINDOW} s)",
                    now - seen.at
                );
                return self.refuse(&job, mac, client, "no recent DHCP exchange", &why);
            }
            DhcpWitness::Seen(seen) if client != Some(IpAddr::V4(seen.ip)) => {
                let why =
                    format!("the script of {mac} was requested from {shown}, but its DHCP exchange showed {}", seen.ip);
                return self.refuse(&job, mac, client, "address mismatch", &why);
            }
            DhcpWitness::Seen(seen) => Some(seen.at),
        };
        // 2. Once per job boot.
        let mut releases = self.state.releases.lock().unwrap_or_else(|e| e.into_inner());
        releases.retain(|_, r| now - r.at < TOKEN_LIFETIME);
        let previous = releases.get(&job.id).cloned();
        if let Some(prev) = &previous {
            let new_boot = boot_at.is_some_and(|b| b > prev.at);
            if !(new_boot && job.state == JobState::Queued) {
                let since = if new_boot {
                    format!("; job {} is already {}", job.id, job.state)
                } else {
                    "; no DHCP exchange since".to_string()
                };
                let why = format!(
                    "token requested twice: the script of {mac} was requested again from {shown} (released {} s ago to {}{since})",
                    now - prev.at,
                    addr(prev.client)
                );
                drop(releases);
                return self.refuse(&job, mac, client, "token requested twice", &why);
            }
        }
        let token = crate::engine::tokens::mint_agent_token(catalog, ACTOR, job.id, mac, Some(now + TOKEN_LIFETIME))?;
        if let Some(prev) = previous {
            catalog.revoke_token(ACTOR, prev.token)?;
            let line = format!(
                "a new boot of {mac} from {shown}: a new agent token was released (the one released {} s ago to {} is revoked)",
                now - prev.at,
                addr(prev.client)
            );
            // A second token for one job is unusual (the job is flagged, see the module docs).
            catalog.flag_job(job.id, &line)?;
        }
        releases.insert(job.id, Release { token: token.info.id, at: now, client });
        let s = &self.settings;
        Ok(BootDecision::Agent(AgentBoot {
            args: AgentArgs::new(&s.api_url, job.id, &token.secret, mac, s.fingerprint.as_deref()),
            kernel_url: kernel_url(&s.http_base, mac),
            initrd_url: initrd_url(&s.http_base, mac),
            banner: format!("{} job {} for host {}", job.kind, job.id, job.host),
        }))
    }

    /// The secure boot setting of `mac`'s host, else the configuration's default.
    fn secure_boot_of(&self, mac: MacAddr) -> Result<SecureBoot, CatalogError> {
        let host = self.catalog.host_by_mac(&mac.to_string())?;
        Ok(host.and_then(|h| h.secure_boot).unwrap_or(self.settings.secure_boot))
    }

    /// Whether a UEFI machine netbooting as `mac` has a queued or running job (an unknown MAC
    /// is registered, at the bounded rate, as [`Self::no_job`] does). Without one it boots
    /// locally from DHCP already: on UEFI, iPXE cannot hand the machine back to its disk
    /// quickly (see the module docs).
    fn efi_has_work(&self, mac: MacAddr) -> Result<bool, CatalogError> {
        if self.catalog.active_job_for_mac(&mac.to_string())?.is_some() {
            return Ok(true);
        }
        self.no_job(mac)?;
        Ok(false)
    }

    /// A MAC without a job: a known host boots locally; an unknown one is registered (at the
    /// bounded rate), then boots locally.
    fn no_job(&self, mac: MacAddr) -> Result<BootDecision, CatalogError> {
        let catalog = &self.catalog;
        if let Some(h) = catalog.host_by_mac(&mac.to_string())? {
            return Ok(BootDecision::LocalDisk { note: format!("host {}: no pending job", h.name) });
        }
        let allowed =
            Bucket::take(&mut self.state.registrations.lock().unwrap_or_else(|e| e.into_inner()), catalog.now());
        if !allowed {
            self.log.count(COUNT_NOT_REGISTERED);
            tracing::warn!("netboot: {mac} not registered: more than {REGISTER_PER_MINUTE} unknown machines a minute");
            return Ok(BootDecision::LocalDisk {
                note: "not registered: too many unknown machines; boot again later".into(),
            });
        }
        register(catalog, mac)?;
        self.log.count(COUNT_REGISTERED);
        Ok(BootDecision::LocalDisk { note: format!("registered as host {}", host_name_for(mac)) })
    }

    /// Refuses `job`'s token to a script request (see the module docs): audited, counted,
    /// flagged in the job's log; the requester boots locally.
    fn refuse(
        &self,
        job: &Job,
        mac: MacAddr,
        client: Option<IpAddr>,
        short: &str,
        why: &str,
    ) -> Result<BootDecision, CatalogError> {
        tracing::warn!("netboot: job {}: {why}; no token given", job.id);
        self.log.count(COUNT_REFUSED);
        let detail = serde_json::json!({
            "job": job.id, "mac": mac.to_string(), "client": client.map(|c| c.to_string()), "reason": why,
        });
        self.catalog.record_audit(ACTOR, "netboot.token_refused", &job.host, detail)?;
        self.catalog.flag_job(job.id, &format!("possible impostor: {why}; no token was given"))?;
        Ok(BootDecision::LocalDisk { note: format!("no token for job {}: {short} (see its log)", job.id) })
    }
}

/// The host name given to an unknown MAC address.
pub fn host_name_for(mac: MacAddr) -> String {
    format!("mac-{}", mac.hex())
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
    let shim = config.signed_chain()?.map(|_| kura_netboot::grub::SHIM.to_string());
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
        secure_boot: config.secure_boot,
        shim,
    };
    let log = BootLog::new();
    Ok(Netboot { config, policy: Arc::new(CatalogPolicy::new(catalog, settings, log.clone())), log })
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
    use kura_catalogs::db::{JobKind, LogLevel, NewJob, Role};
    use kura_netboot::ipxe;

    fn settings() -> PolicySettings {
        PolicySettings {
            http_base: "http://10.9.0.1:8080".into(),
            api_url: "https://10.9.0.1:8443".into(),
            fingerprint: Some("ab12".into()),
            bios_firmware: Some("undionly.kpxe".into()),
            efi_x64_firmware: Some("ipxe.efi".into()),
            efi_arm64_firmware: None,
            secure_boot: SecureBoot::Off,
            shim: Some(kura_netboot::grub::SHIM.into()),
        }
    }

    /// A catalog whose clock the test moves, and the engine's policy on it.
    fn policy() -> (CatalogPolicy, Arc<std::sync::atomic::AtomicI64>) {
        let clock = Arc::new(std::sync::atomic::AtomicI64::new(1_000_000));
        let c = clock.clone();
        let cat = Catalog::open_in_memory().unwrap().with_clock(move || c.load(std::sync::atomic::Ordering::SeqCst));
        (CatalogPolicy::new(Arc::new(cat), settings(), BootLog::new()), clock)
    }

    fn advance(clock: &std::sync::atomic::AtomicI64, secs: i64) {
        clock.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }

    const MACHINE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 9, 0, 57);

    /// A script request from `from` after DHCP saw the MAC at [`MACHINE`] at `at`.
    fn request(from: std::net::Ipv4Addr, at: i64) -> BootRequest {
        use kura_netboot::seen::{SeenHow, Sighting};
        BootRequest {
            client: Some(from.into()),
            dhcp: DhcpWitness::Seen(Sighting { ip: MACHINE, at, how: SeenHow::SiteRequest }),
        }
    }

    /// The script iPXE gets: the decision, rendered with the site's kernel arguments.
    fn render(p: &CatalogPolicy, mac: MacAddr, req: &BootRequest) -> String {
        let d = p.decide_for(mac, req).unwrap();
        ipxe::render(mac, &d, "console=ttyS0").expect("a script")
    }

    fn token_in(script: &str) -> Option<String> {
        script.split([' ', '\n']).find_map(|a| a.strip_prefix("kura.token=")).map(str::to_string)
    }

    fn capture_job(cat: &Catalog, host: &str) -> kura_catalogs::db::Job {
        cat.create_job(
            "t",
            &NewJob { kind: JobKind::Capture, host: host.into(), disk: None, snapshot: None, disks: None },
        )
        .unwrap()
    }

    fn warnings(cat: &Catalog, job: i64) -> Vec<String> {
        cat.job_log(job, None, 100)
            .unwrap()
            .into_iter()
            .filter(|l| l.level == LogLevel::Warn)
            .map(|l| l.message)
            .collect()
    }

    #[test]
    fn netboot_script_registers_unknown_macs_and_boots_locally() {
        let (p, _) = policy();
        let mac: MacAddr = "52:54:00:aa:bb:cc".parse().unwrap();
        let s = render(&p, mac, &BootRequest::default());
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("sanboot --no-describe --drive 0x80"));
        assert!(s.contains("iseq ${platform} efi"));
        assert!(!s.contains("kura.token"));
        let host = p.catalog.host_by_mac("52:54:00:aa:bb:cc").unwrap().unwrap();
        assert_eq!(host.name, "mac-525400aabbcc");
        // Again: no second host.
        render(&p, mac, &BootRequest::default());
        assert_eq!(p.catalog.list_hosts().unwrap().len(), 1);
        assert_eq!(p.log.counters().get(COUNT_REGISTERED), Some(&1));
    }

    /// 200 script requests for random MACs register the burst, no more; the rest boot locally
    /// unregistered and are counted; the bucket refills at its rate.
    #[test]
    fn netboot_unknown_mac_flood_registers_at_most_the_bound() {
        let (p, clock) = policy();
        for i in 0..200u8 {
            let s = render(&p, MacAddr([2, 0, 0, 0, 7, i]), &BootRequest::default());
            assert!(!s.contains("kura.token") && s.contains("sanboot"), "{s}");
        }
        let burst = REGISTER_BURST as usize;
        assert_eq!(p.catalog.list_hosts().unwrap().len(), burst);
        let counters = p.log.counters();
        assert_eq!(counters.get(COUNT_REGISTERED), Some(&(burst as u64)));
        assert_eq!(counters.get(COUNT_NOT_REGISTERED), Some(&(200 - burst as u64)));
        // A minute later, REGISTER_PER_MINUTE more.
        advance(&clock, 60);
        for i in 0..50u8 {
            render(&p, MacAddr([2, 0, 0, 0, 8, i]), &BootRequest::default());
        }
        assert_eq!(p.catalog.list_hosts().unwrap().len(), burst + REGISTER_PER_MINUTE as usize);
    }

    #[test]
    fn netboot_script_for_a_pending_job_has_kernel_initrd_and_a_working_token() {
        let (p, _) = policy();
        let cat = &p.catalog;
        let mac: MacAddr = "52:54:00:aa:bb:cc".parse().unwrap();
        render(&p, mac, &BootRequest::default());
        let job = capture_job(cat, "mac-525400aabbcc");
        let s = render(&p, mac, &request(MACHINE, cat.now()));
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(kernel.starts_with("kernel http://10.9.0.1:8080/boot/vmlinuz?mac=52:54:00:aa:bb:cc initrd=initrd.img "));
        assert!(kernel.contains(&format!(" kura.job={} ", job.id)));
        assert!(kernel.contains(" kura.server=https://10.9.0.1:8443 "));
        assert!(kernel.contains(" kura.mac=52:54:00:aa:bb:cc"));
        assert!(kernel.contains(" kura.fingerprint=ab12 console=ttyS0"));
        assert!(
            s.contains("\ninitrd --name initrd.img http://10.9.0.1:8080/boot/initrd.img?mac=52:54:00:aa:bb:cc\nboot\n")
        );
        let token = token_in(&s).unwrap();
        let pr = cat.authenticate(&token, cat.now()).unwrap().expect("a valid token");
        assert_eq!((pr.role, pr.job_id, pr.mac.as_deref()), (Role::Agent, Some(job.id), Some("52:54:00:aa:bb:cc")));
        assert!(warnings(cat, job.id).is_empty(), "a normal boot flags nothing");
        assert_eq!(cat.job_unusual(job.id).unwrap(), None);
        // Once the job is over, the machine boots locally.
        cat.cancel_job("t", job.id).unwrap();
        assert!(render(&p, mac, &request(MACHINE, cat.now())).contains("sanboot"));
    }

    /// The attack of issue 16: anyone on the boot LAN asking for a job's script. The token goes
    /// only to the address the MAC's DHCP exchange showed, recently, once per boot; every other
    /// request gets no token, is audited and flags the job, and never revokes the real one.
    #[test]
    fn netboot_token_is_released_once_per_boot_to_the_machine_dhcp_saw() {
        let (p, clock) = policy();
        let cat = p.catalog.clone();
        let mac: MacAddr = "52:54:00:aa:bb:01".parse().unwrap();
        cat.create_host("t", &NewHost { name: "victim".into(), group: None, notes: String::new() }).unwrap();
        cat.add_mac("t", "victim", &mac.to_string()).unwrap();
        let job = capture_job(&cat, "victim");
        let attacker = std::net::Ipv4Addr::new(10, 9, 0, 66);
        let refused = |req: &BootRequest, words: &str| {
            let before = warnings(&cat, job.id).len();
            let s = render(&p, mac, req);
            assert!(token_in(&s).is_none() && s.contains("sanboot"), "{s}");
            let w = warnings(&cat, job.id);
            assert_eq!(w.len(), before + 1, "{w:?}");
            assert!(w[before].contains(words) && w[before].contains("possible impostor"), "{w:?}");
        };
        // Before any DHCP exchange, from an address DHCP did not show, or too long after it.
        refused(&BootRequest { client: Some(attacker.into()), dhcp: DhcpWitness::NotSeen }, "no DHCP exchange");
        refused(&request(attacker, cat.now()), "its DHCP exchange showed 10.9.0.57");
        refused(&request(MACHINE, cat.now() - DHCP_WINDOW - 1), "after its last DHCP exchange");
        // The job is flagged (its capture would be held with --hold-unusual-captures), with the
        // first reason.
        let flag = cat.job_unusual(job.id).unwrap().expect("the job is flagged");
        assert!(flag.starts_with("possible impostor") && flag.contains("no DHCP exchange"), "{flag}");
        // The machine itself, just after its DHCP exchange.
        let booted = cat.now();
        let t1 = token_in(&render(&p, mac, &request(MACHINE, booted))).expect("the machine gets its token");
        // Asked again for the same boot: from the attacker (address mismatch), or with the
        // machine's address (spoofed, or a second fetch): refused, and the token stays valid.
        advance(&clock, 5);
        refused(&request(attacker, booted), "showed 10.9.0.57");
        refused(&request(MACHINE, booted), "token requested twice");
        assert!(cat.authenticate(&t1, cat.now()).unwrap().is_some(), "a refusal revoked the real token");
        let audit = cat.list_audit(100).unwrap();
        assert_eq!(audit.iter().filter(|a| a.action == "netboot.token_refused").count(), 5, "{audit:?}");
        assert_eq!(p.log.counters().get(COUNT_REFUSED), Some(&5));
        // A new boot (a DHCP exchange after the release) of a job still queued: one more
        // release, the first token revoked, the job's log says so.
        advance(&clock, 30);
        let t2 = token_in(&render(&p, mac, &request(MACHINE, cat.now()))).expect("a new boot gets a token");
        assert!(cat.authenticate(&t1, cat.now()).unwrap().is_none());
        assert!(warnings(&cat, job.id).last().unwrap().contains("a new boot of"), "{:?}", warnings(&cat, job.id));
        // Once the agent runs, no new boot releases another token.
        cat.start_job("agent", job.id).unwrap();
        advance(&clock, 30);
        refused(&request(MACHINE, cat.now()), "token requested twice");
        assert!(cat.authenticate(&t2, cat.now()).unwrap().is_some());
    }

    /// Secure boot per host: UEFI x64 PXE ROMs of hosts set to `on`/`auto` (or following that
    /// default) get shim; GRUB's configuration is the same decision as the iPXE script, with
    /// the same once-per-boot token rule, and "boot locally" is GRUB's `exit`.
    #[test]
    fn netboot_secure_boot_offers_shim_and_grub_gets_the_same_decision() {
        use kura_netboot::grub;
        let (mut p, _) = policy();
        let cat = p.catalog.clone();
        let mac: MacAddr = "52:54:00:aa:bb:0b".parse().unwrap();
        cat.create_host("t", &NewHost { name: "sb".into(), group: None, notes: String::new() }).unwrap();
        cat.add_mac("t", "sb", &mac.to_string()).unwrap();
        assert!(matches!(p.boot_spec(mac, ClientArch::EfiX64), BootSpec::LocalDisk { .. }), "no job: local boot");
        let job = capture_job(&cat, "sb");
        let url = script_url("http://10.9.0.1:8080", mac);
        assert_eq!(
            p.boot_spec(mac, ClientArch::EfiX64),
            BootSpec::Boot { firmware: Some("ipxe.efi".into()), script_url: url.clone() },
            "the default is off"
        );
        cat.set_secure_boot("t", "sb", Some(SecureBoot::On)).unwrap();
        let shim = grub::SHIM.to_string();
        assert_eq!(p.boot_spec(mac, ClientArch::EfiX64), BootSpec::Signed { shim: shim.clone(), script_url: None });
        assert!(matches!(p.boot_spec(mac, ClientArch::BiosX86), BootSpec::Boot { .. }), "BIOS has no secure boot");
        cat.set_secure_boot("t", "sb", Some(SecureBoot::Auto)).unwrap();
        assert_eq!(
            p.boot_spec(mac, ClientArch::EfiX64),
            BootSpec::Signed { shim: shim.clone(), script_url: Some(url.clone()) }
        );
        // Following the configuration's default.
        cat.set_secure_boot("t", "sb", None).unwrap();
        p.settings.secure_boot = SecureBoot::Auto;
        assert!(matches!(p.boot_spec(mac, ClientArch::EfiX64), BootSpec::Signed { .. }));
        // Without the chain laid out: iPXE.
        p.settings.shim = None;
        assert!(matches!(p.boot_spec(mac, ClientArch::EfiX64), BootSpec::Boot { .. }));

        let cfg = |p: &CatalogPolicy| {
            grub::render(mac, &p.decide_for(mac, &request(MACHINE, cat.now())).unwrap(), "console=ttyS0").unwrap()
        };
        let first = cfg(&p);
        assert!(first.contains("linux /kura/vmlinuz ") && first.contains(&format!("'kura.job={}'", job.id)), "{first}");
        let token = first.split(['\'', ' ']).find_map(|w| w.strip_prefix("kura.token=")).expect("a token");
        assert!(cat.authenticate(token, cat.now()).unwrap().is_some());
        let again = cfg(&p);
        assert!(again.ends_with("exit\n") && !again.contains("kura.token"), "{again}");
        assert!(warnings(&cat, job.id)[0].contains("token requested twice"));
    }

    /// With DHCP off, no address can be checked: the token still goes out once.
    #[test]
    fn netboot_without_dhcp_releases_a_token_once() {
        let (p, _) = policy();
        let mac: MacAddr = "52:54:00:aa:bb:02".parse().unwrap();
        render(&p, mac, &BootRequest::default());
        let job = capture_job(&p.catalog, "mac-525400aabb02");
        assert!(token_in(&render(&p, mac, &BootRequest::default())).is_some());
        assert!(token_in(&render(&p, mac, &BootRequest::default())).is_none());
        assert!(warnings(&p.catalog, job.id)[0].contains("token requested twice"));
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
                &NewJob {
                    kind: JobKind::Capture,
                    host: "mac-525400abcdef".into(),
                    disk: None,
                    snapshot: None,
                    disks: None,
                },
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
