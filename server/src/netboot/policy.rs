//! What a machine should boot: the one question protocol code asks ([`BootPolicy`]).
//!
//! DHCP, TFTP and HTTP handlers never look at the catalog themselves. DHCP asks
//! [`BootPolicy::boot_spec`] what to offer a PXE or iPXE client; the HTTP script route asks
//! [`BootPolicy::script`] for the iPXE script of a MAC address. The engine's implementation is
//! [`super::script::CatalogPolicy`]; tests use `StaticPolicy`. (pixiecore's `Booter`.)

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address, shown as the catalog stores it: `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `aabbccddeeff`: for names and file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;
    /// Accepts what [`kura_catalogs::db::normalize_mac`] accepts (`:` or `-` pairs, Cisco
    /// dotted, 12 bare hex digits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = kura_catalogs::db::normalize_mac(s).map_err(|e| e.to_string())?;
        let bytes = hex::decode(norm.replace(':', "")).map_err(|e| e.to_string())?;
        let arr: [u8; 6] = bytes.try_into().map_err(|_| format!("{s:?} is not a MAC address"))?;
        Ok(MacAddr(arr))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

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
}

/// A failure to produce a script. The HTTP layer answers 500 and logs the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// The decision protocol code asks. Implementations must be cheap in [`BootPolicy::boot_spec`]
/// (it is called on the DHCP receive loop); [`BootPolicy::script`] may block (the HTTP layer
/// calls it from `spawn_blocking`) and may change state (register a host, issue a token).
pub trait BootPolicy: Send + Sync {
    fn boot_spec(&self, mac: MacAddr, arch: ClientArch) -> BootSpec;
    /// The iPXE script for `mac` (a text starting with `#!ipxe`).
    fn script(&self, mac: MacAddr) -> Result<String, PolicyError>;
}

/// A fixed answer for every machine (tests).
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct StaticPolicy {
    pub bios_firmware: Option<String>,
    pub efi_firmware: Option<String>,
    /// `{mac}` is replaced by the client's MAC address.
    pub script_url: String,
    pub script: String,
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

    fn script(&self, _mac: MacAddr) -> Result<String, PolicyError> {
        Ok(self.script.clone())
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
