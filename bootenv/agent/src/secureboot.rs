//! What the kernel says about Secure Boot and lockdown, for the agent's log: the firmware's
//! `SecureBoot` variable (through efivarfs) and the kernel's lockdown mode
//! (`/sys/kernel/security/lockdown`, securityfs, mounted here when it is not).
//!
//! Under Secure Boot a Debian kernel locks itself down ("integrity"): only modules signed by
//! its own build load (the image carries the kernel's own, signed modules), `/dev/mem` and
//! kexec of unsigned kernels are closed. Nothing the agent does needs those: block devices,
//! efivarfs writes, sockets and TLS all work. This module only reports; it decides nothing.

use nix::mount::{mount, MsFlags};
use std::path::Path;

/// `SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c` (EFI global variable GUID).
const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
const SECURITYFS: &str = "/sys/kernel/security";

/// The state as one log line, e.g. `secure boot: on (firmware SecureBoot=1); kernel lockdown:
/// integrity`.
pub fn describe(efivars: &Path) -> String {
    if !Path::new(SECURITYFS).join("lockdown").exists() {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let _ = mount(Some("securityfs"), SECURITYFS, Some("securityfs"), flags, None::<&str>);
    }
    let lockdown = std::fs::read_to_string(Path::new(SECURITYFS).join("lockdown")).ok();
    line(std::fs::read(efivars.join(SECURE_BOOT_VAR)).ok().as_deref(), lockdown.as_deref())
}

/// The log line from the variable's bytes (4 attribute bytes, then the value) and the text
/// of the lockdown file (`none [integrity] confidentiality`: the bracketed word is the mode).
pub fn line(secure_boot_var: Option<&[u8]>, lockdown: Option<&str>) -> String {
    let sb = match secure_boot_var {
        Some([_, _, _, _, 1, ..]) => "on (firmware SecureBoot=1)".to_string(),
        Some([_, _, _, _, v, ..]) => format!("off (firmware SecureBoot={v})"),
        Some(_) => "unknown (short SecureBoot variable)".to_string(),
        None => "off (no SecureBoot variable: BIOS, or efivarfs not mounted)".to_string(),
    };
    let mode = lockdown
        .and_then(|t| t.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']')))
        .unwrap_or("unknown (no /sys/kernel/security/lockdown)");
    format!("secure boot: {sb}; kernel lockdown: {mode}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_boot_and_lockdown_read_as_one_line() {
        assert_eq!(
            line(Some(&[6, 0, 0, 0, 1]), Some("none [integrity] confidentiality\n")),
            "secure boot: on (firmware SecureBoot=1); kernel lockdown: integrity"
        );
        assert_eq!(
            line(Some(&[6, 0, 0, 0, 0]), Some("[none] integrity confidentiality\n")),
            "secure boot: off (firmware SecureBoot=0); kernel lockdown: none"
        );
        assert!(line(None, None).contains("no SecureBoot variable") && line(None, None).contains("unknown"));
        assert!(line(Some(&[6, 0]), None).contains("short"));
    }
}
