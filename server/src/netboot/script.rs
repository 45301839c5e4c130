//! The engine's [`BootPolicy`]: boot files from the netboot configuration, and per-machine
//! iPXE scripts rendered from the catalog.
//!
//! What a machine gets when its iPXE fetches its script:
//!
//! - **A queued or running job** for the host owning the MAC: the Kura boot environment:
//!
//!   ```text
//!   #!ipxe
//!   kernel http://SERVER/boot/vmlinuz?mac=MAC initrd=initrd.img kura.server=API kura.token=TOKEN
//!          kura.job=ID kura.mac=MAC [kura.fingerprint=FP] [kernel_args]
//!   initrd --name initrd.img http://SERVER/boot/initrd.img?mac=MAC
//!   boot
//!   ```
//!
//!   `initrd=initrd.img` is on the command line because an EFI-stub kernel booted by UEFI iPXE
//!   finds its initramfs by that name; `--name` pins the name whatever the URL looks like. The
//!   token is a fresh agent token ([`Catalog::create_agent_token`]) bound to the job and the
//!   MAC, valid while the job is queued or running and at most [`TOKEN_LIFETIME`]; a new one is
//!   issued on every script fetch and the one netboot issued before for the same job and MAC is
//!   revoked ([`Issued`]), so at most one netboot token per job is live. Tokens issued by the
//!   job-creation API are left alone.
//! - **No job**: boot from the local disk. BIOS iPXE runs `sanboot --no-describe --drive 0x80`
//!   (the first hard disk through INT 13h); UEFI iPXE runs `exit`, which hands control back to
//!   the firmware's boot manager, which tries the next boot entry (put the disk after the
//!   network in the boot order). If `sanboot` fails, `exit` lets the BIOS try its next device.
//! - **An unknown MAC**: registered in the catalog as a new host `mac-aabbccddeeff` (rename it
//!   with the API; the MAC stays), then the local-disk script.

use super::policy::{BootPolicy, BootSpec, ClientArch, MacAddr, PolicyError};
use kura_catalogs::db::{Catalog, CatalogError, NewHost};
use std::collections::HashMap;
use std::sync::Arc;

/// The longest an agent token issued by netboot lives (it dies with its job before that).
pub const TOKEN_LIFETIME: i64 = 7 * 24 * 3600;
/// The actor of netboot's catalog changes in the audit log.
pub const ACTOR: &str = "netboot";

/// What the scripts and boot specs are made of (from the netboot configuration).
#[derive(Debug, Clone)]
pub struct ScriptSettings {
    /// `http://ADDRESS:PORT`, where iPXE fetches the script, kernel and initrd.
    pub http_base: String,
    /// The API URL the agent talks to (`kura.server`).
    pub api_url: String,
    /// The API certificate's fingerprint, for an https API (`kura.fingerprint`).
    pub fingerprint: Option<String>,
    /// Appended to the kernel command line (checked: no control characters).
    pub kernel_args: String,
    /// TFTP file names of the iPXE builds.
    pub bios_firmware: Option<String>,
    pub efi_x64_firmware: Option<String>,
    pub efi_arm64_firmware: Option<String>,
}

pub struct CatalogPolicy {
    pub catalog: Arc<Catalog>,
    pub settings: ScriptSettings,
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
        BootSpec::Boot { firmware, script_url: script_url(&s.http_base, mac) }
    }

    fn script(&self, mac: MacAddr) -> Result<String, PolicyError> {
        render(&self.catalog, &self.settings, &self.issued, mac).map_err(|e| PolicyError(e.to_string()))
    }
}

pub fn script_url(http_base: &str, mac: MacAddr) -> String {
    format!("{http_base}/boot/script?mac={mac}")
}

/// The host name given to an unknown MAC address.
pub fn host_name_for(mac: MacAddr) -> String {
    format!("mac-{}", mac.hex())
}

/// Renders the script for `mac` (see the module docs). Blocking; may write to the catalog.
pub fn render(catalog: &Catalog, s: &ScriptSettings, issued: &Issued, mac: MacAddr) -> Result<String, CatalogError> {
    let mac_s = mac.to_string();
    if let Some(job) = catalog.active_job_for_mac(&mac_s)? {
        let token = catalog.create_agent_token(ACTOR, job.id, &mac_s, Some(catalog.now() + TOKEN_LIFETIME))?;
        let previous =
            issued.0.lock().unwrap_or_else(|e| e.into_inner()).insert((job.id, mac_s.clone()), token.info.id);
        if let Some(old) = previous {
            catalog.revoke_token(ACTOR, old)?;
        }
        let mut args = format!(
            "initrd=initrd.img kura.server={} kura.token={} kura.job={} kura.mac={mac_s}",
            s.api_url, token.secret, job.id
        );
        if let Some(fp) = &s.fingerprint {
            args.push_str(&format!(" kura.fingerprint={fp}"));
        }
        if !s.kernel_args.is_empty() {
            args.push(' ');
            args.push_str(&s.kernel_args);
        }
        let base = &s.http_base;
        return Ok(format!(
            "#!ipxe\n\
             echo Kura: {kind} job {id} for host {host} ({mac_s})\n\
             kernel {base}/boot/vmlinuz?mac={mac_s} {args}\n\
             initrd --name initrd.img {base}/boot/initrd.img?mac={mac_s}\n\
             boot\n",
            kind = job.kind,
            id = job.id,
            host = sanitize_echo(&job.host),
        ));
    }
    let note = match catalog.host_by_mac(&mac_s)? {
        Some(h) => format!("host {}: no pending job", sanitize_echo(&h.name)),
        None => {
            register(catalog, mac)?;
            format!("registered as host {}", host_name_for(mac))
        }
    };
    Ok(local_boot_script(&mac_s, &note))
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

/// Keeps catalog text from changing the script: printable ASCII without `$` (iPXE expands
/// `${…}` settings in every command line).
fn sanitize_echo(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() && c != '$' || c == ' ' { c } else { '_' }).collect()
}

pub fn local_boot_script(mac: &str, note: &str) -> String {
    format!(
        "#!ipxe\n\
         echo Kura: {mac}: {note}; booting from the local disk\n\
         iseq ${{platform}} efi && goto kura_efi ||\n\
         sanboot --no-describe --drive 0x80 || goto kura_exit\n\
         :kura_efi\n\
         :kura_exit\n\
         exit\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalogs::db::{JobKind, NewJob, Role};

    fn settings() -> ScriptSettings {
        ScriptSettings {
            http_base: "http://10.9.0.1:8080".into(),
            api_url: "https://10.9.0.1:8443".into(),
            fingerprint: Some("ab12".into()),
            kernel_args: "console=ttyS0".into(),
            bios_firmware: Some("undionly.kpxe".into()),
            efi_x64_firmware: Some("ipxe.efi".into()),
            efi_arm64_firmware: None,
        }
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
}
