//! [`SecureBoot`]: which boot chain netboot offers a UEFI machine, set per host
//! (`kura host set NAME --secure-boot on|off|auto`, `PUT /api/v1/hosts/{name}/secure-boot`)
//! with a default in the netboot configuration (`"secure_boot"`). What each value offers is
//! the engine's decision (`server/src/boot_policy.rs`); this is only the word on the wire.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The boot chain for a host's UEFI PXE boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SecureBoot {
    /// iPXE, then HTTP (fast; refused by firmware that enforces Secure Boot).
    #[default]
    Off,
    /// The distribution's signed chain only: shim → GRUB → signed kernel, all over TFTP.
    /// A client already running iPXE is not answered.
    On,
    /// The signed chain for a UEFI PXE ROM (it also works with Secure Boot off); a client
    /// already running iPXE (so not enforcing Secure Boot) gets its script over HTTP.
    Auto,
}

impl SecureBoot {
    pub fn as_str(self) -> &'static str {
        match self {
            SecureBoot::Off => "off",
            SecureBoot::On => "on",
            SecureBoot::Auto => "auto",
        }
    }
}

impl fmt::Display for SecureBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecureBoot {
    type Err = String;
    fn from_str(s: &str) -> Result<SecureBoot, String> {
        match s {
            "off" => Ok(SecureBoot::Off),
            "on" => Ok(SecureBoot::On),
            "auto" => Ok(SecureBoot::Auto),
            other => Err(format!("secure boot must be on, off or auto, not {other:?}")),
        }
    }
}

/// `PUT /api/v1/hosts/{name}/secure-boot`: the host's setting; `null` follows the netboot
/// configuration's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSecureBoot {
    pub secure_boot: Option<SecureBoot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_boot_words_round_trip_and_bad_ones_are_refused() {
        for s in [SecureBoot::Off, SecureBoot::On, SecureBoot::Auto] {
            assert_eq!(s.as_str().parse::<SecureBoot>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("ON".parse::<SecureBoot>().is_err());
        assert!(serde_json::from_str::<SetSecureBoot>(r#"{"secure_boot":"yes"}"#).is_err());
        let unset: SetSecureBoot = serde_json::from_str(r#"{"secure_boot":null}"#).unwrap();
        assert_eq!(unset.secure_boot, None);
    }
}
