//! What a machine should boot: the one question protocol code asks ([`BootPolicy`]).
//!
//! DHCP, TFTP and HTTP handlers decide nothing themselves. DHCP asks
//! [`BootPolicy::boot_spec`] what to offer a PXE or iPXE client; the HTTP script route asks
//! [`BootPolicy::decide`] what a MAC address boots, a typed [`BootDecision`] that
//! [`crate::ipxe`] turns into script text (and [`crate::grub`] into a GRUB configuration, which
//! TFTP serves on the signed path). The engine implements the trait from its catalog
//! (`server/src/boot_policy.rs`); tests use `StaticPolicy`. (pixiecore's `Booter`.)

use crate::seen::Sighting;
use kura_protocol::cmdline::AgentArgs;
use serde::Serialize;
use std::fmt;
use std::net::IpAddr;

pub use kura_protocol::MacAddr;

/// The client's firmware, from DHCP option 93 (RFC 4578, IANA "Processor Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientArch {
    /// 0: x86 BIOS (legacy PXE ROM).
    BiosX86,
    /// 6: 32-bit x86 UEFI.
    EfiIa32,
    /// 7 ("EFI BC", used by every x86-64 UEFI in practice) and 9 ("EFI x86-64").
    EfiX64,
    /// 11: 64-bit ARM UEFI.
    EfiArm64,
    /// Anything else (HTTP-boot types included): not netbooted.
    Other(u16),
}

impl ClientArch {
    pub fn from_option93(code: u16) -> ClientArch {
        match code {
            0 => ClientArch::BiosX86,
            6 => ClientArch::EfiIa32,
            7 | 9 => ClientArch::EfiX64,
            11 => ClientArch::EfiArm64,
            n => ClientArch::Other(n),
        }
    }

    pub fn is_efi(self) -> bool {
        matches!(self, ClientArch::EfiIa32 | ClientArch::EfiX64 | ClientArch::EfiArm64)
    }
}

impl fmt::Display for ClientArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientArch::BiosX86 => f.write_str("bios"),
            ClientArch::EfiIa32 => f.write_str("efi-ia32"),
            ClientArch::EfiX64 => f.write_str("efi-x64"),
            ClientArch::EfiArm64 => f.write_str("efi-arm64"),
            ClientArch::Other(n) => write!(f, "arch-{n}"),
        }
    }
}

/// What to offer one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSpec {
    /// Do not answer: the machine boots as if no netboot server existed.
    Ignore,
    Boot {
        /// For a PXE ROM: the iPXE build to chain, as a file name inside the TFTP root
        /// (`undionly.kpxe` for BIOS, `ipxe.efi` or `snponly.efi` for UEFI). `None` when there
        /// is none for this architecture: the PXE ROM is not answered.
        firmware: Option<String>,
        /// For iPXE (user class "iPXE"): the HTTP URL of the machine's boot script.
        script_url: String,
    },
    /// Boot from the local disk, decided already at DHCP time (UEFI machines without a job).
    /// A PXE ROM gets a PXE boot menu whose only item is "local boot" (PXE 2.1 boot server
    /// type 0, prompt timeout 0): the firmware ends its network boot attempt right after DHCP,
    /// downloading nothing, and goes on to its next boot entry. iPXE (which may be the NIC's
    /// own ROM) is not answered (in full mode: an address only), so it finds nothing to boot
    /// and returns to the firmware at once. `script_url` is for logs.
    LocalDisk { script_url: String },
    /// The distribution's signed chain (Secure Boot): a UEFI PXE ROM gets `shim` (a TFTP
    /// name); shim fetches `grubx64.efi` from the same TFTP directory, GRUB its configuration
    /// ([`crate::grub`]) and the kernel and initramfs, all over TFTP. A client already running
    /// iPXE gets `script_url` when there is one (`None`: it is not answered).
    Signed { shim: String, script_url: Option<String> },
}

impl BootSpec {
    /// A few words for the boot log.
    pub fn summary(&self) -> &'static str {
        match self {
            BootSpec::Ignore => "ignore",
            BootSpec::Boot { .. } => "network boot",
            BootSpec::LocalDisk { .. } => "local boot",
            BootSpec::Signed { .. } => "signed network boot",
        }
    }
}

/// What the HTTP layer knows about a script request besides the MAC address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootRequest {
    /// The address the request came from.
    pub client: Option<IpAddr>,
    /// What this process's DHCP saw of the MAC (the policy compares it with `client`).
    pub dhcp: DhcpWitness,
}

/// What netboot's own DHCP service can say about the MAC of a script request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DhcpWitness {
    /// DHCP is off (`"dhcp": "off"`): the site's DHCP boots the machines; nothing was seen.
    #[default]
    NotRunning,
    /// DHCP runs but never saw the MAC (or forgot it).
    NotSeen,
    /// Its latest sighting ([`crate::seen`]).
    Seen(Sighting),
}

/// What one machine boots when its iPXE fetches its script, or its GRUB its configuration:
/// the policy's answer, rendered by [`crate::ipxe`] or [`crate::grub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// The Kura agent: this kernel and initramfs, with these `kura.*` arguments.
    Agent(AgentBoot),
    /// The local disk. `note` says why (shown on the console).
    LocalDisk { note: String },
}

/// The agent boot of a [`BootDecision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBoot {
    /// The agent's `kura.*` kernel arguments (its job, token, MAC and the engine's address).
    pub args: AgentArgs,
    /// Where iPXE fetches the kernel and the initramfs ([`crate::http::kernel_url`],
    /// [`crate::http::initrd_url`] for the ones this crate serves). GRUB fetches the same
    /// files by TFTP ([`crate::grub::KERNEL`], [`crate::grub::INITRD`]).
    pub kernel_url: String,
    pub initrd_url: String,
    /// One line shown on the console before the kernel loads (say, the job and the host).
    pub banner: String,
}

impl BootDecision {
    /// A few words for the boot log.
    pub fn summary(&self) -> &'static str {
        match self {
            BootDecision::Agent(_) => "job script",
            BootDecision::LocalDisk { .. } => "local-boot script",
        }
    }
}

/// A failure to decide. The HTTP layer answers 500 and logs the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// The questions protocol code asks. Implementations must be cheap in
/// [`BootPolicy::boot_spec`] (it is called on the DHCP receive loop); [`BootPolicy::decide`]
/// may block (the HTTP layer calls it from `spawn_blocking`) and may change state (register a
/// host, issue a token).
pub trait BootPolicy: Send + Sync {
    /// What DHCP offers `mac`: nothing, the iPXE build to chain and the script URL, or "boot
    /// locally". May register an unknown MAC (one indexed catalog write).
    fn boot_spec(&self, mac: MacAddr, arch: ClientArch) -> BootSpec;
    /// What `mac` boots, asked when its iPXE fetches its script or its GRUB its configuration.
    fn decide(&self, mac: MacAddr, req: &BootRequest) -> Result<BootDecision, PolicyError>;
}

/// A fixed answer for every machine (tests).
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct StaticPolicy {
    pub bios_firmware: Option<String>,
    pub efi_firmware: Option<String>,
    /// `{mac}` is replaced by the client's MAC address.
    pub script_url: String,
    pub decision: BootDecision,
}

#[cfg(test)]
impl BootPolicy for StaticPolicy {
    fn boot_spec(&self, mac: MacAddr, arch: ClientArch) -> BootSpec {
        let firmware = match arch {
            ClientArch::BiosX86 => self.bios_firmware.clone(),
            ClientArch::EfiX64 => self.efi_firmware.clone(),
            _ => return BootSpec::Ignore,
        };
        BootSpec::Boot { firmware, script_url: self.script_url.replace("{mac}", &mac.to_string()) }
    }

    fn decide(&self, _mac: MacAddr, _req: &BootRequest) -> Result<BootDecision, PolicyError> {
        Ok(self.decision.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netboot_mac_parses_and_prints_like_the_catalog() {
        let m: MacAddr = "AA-BB-CC-00-11-22".parse().unwrap();
        assert_eq!(m.to_string(), "aa:bb:cc:00:11:22");
        assert_eq!(m.hex(), "aabbcc001122");
        assert!("aa:bb".parse::<MacAddr>().is_err());
        assert_eq!(ClientArch::from_option93(7), ClientArch::EfiX64);
        assert_eq!(ClientArch::from_option93(9), ClientArch::EfiX64);
        assert_eq!(ClientArch::from_option93(0), ClientArch::BiosX86);
        assert_eq!(ClientArch::from_option93(16), ClientArch::Other(16));
    }
}
