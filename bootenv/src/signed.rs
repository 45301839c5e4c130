//! The signed netboot chain for Secure Boot, laid out beside the image from the distribution's
//! packages (nothing here is signed by Kura):
//!
//! ```text
//! OUT/shimx64.efi   /usr/lib/shim/shimx64.efi.signed (shim-signed, signed by Microsoft's UEFI CA)
//! OUT/grubx64.efi   /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed
//!                   (grub-efi-amd64-signed, signed by Debian; its prefix is /grub, it reads its
//!                   configuration and the kernel over TFTP)
//! OUT/vmlinuz       the distribution kernel the initramfs is built for (Debian signs it)
//! ```
//!
//! Netboot serves them by TFTP (`kura_netboot::grub`). Each file is checked to be a PE image
//! carrying an Authenticode signature ([`is_signed_pe`]); an unsigned kernel is reported (it
//! boots with Secure Boot off only), a missing or unsigned shim or GRUB is an error naming the
//! Debian package.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Debian's Microsoft-signed shim (package shim-signed).
pub const SHIM_SIGNED: &str = "/usr/lib/shim/shimx64.efi.signed";
/// Debian's signed network GRUB (package grub-efi-amd64-signed).
pub const GRUBNET_SIGNED: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
/// The names in the output directory: shim loads `grubx64.efi` from its own directory.
pub const SHIM_NAME: &str = "shimx64.efi";
pub const GRUB_NAME: &str = "grubx64.efi";

/// Where the signed boot loaders come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub shim: PathBuf,
    pub grubnet: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources { shim: PathBuf::from(SHIM_SIGNED), grubnet: PathBuf::from(GRUBNET_SIGNED) }
    }
}

/// What [`lay_out`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Laid {
    pub shim: PathBuf,
    pub grub: PathBuf,
    pub shim_bytes: u64,
    pub grub_bytes: u64,
    /// Whether the kernel carries a signature (Debian's do); an unsigned one does not boot
    /// under Secure Boot.
    pub kernel_signed: bool,
}

/// Copies shim and GRUB from `src` into `out` (as [`SHIM_NAME`], [`GRUB_NAME`]) and checks
/// them and `kernel`.
pub fn lay_out(src: &Sources, out: &Path, kernel: &Path) -> Result<Laid> {
    let check = |p: &Path, package: &str| -> Result<()> {
        if !p.is_file() {
            bail!("{} is missing: apt-get install {package} (or build without the signed chain)", p.display());
        }
        if !is_signed_pe(p).with_context(|| format!("reading {} (package {package})", p.display()))? {
            bail!("{} carries no signature: reinstall {package}", p.display());
        }
        Ok(())
    };
    check(&src.shim, "shim-signed")?;
    check(&src.grubnet, "grub-efi-amd64-signed")?;
    let copy = |from: &Path, name: &str| -> Result<(PathBuf, u64)> {
        let to = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        let n =
            std::fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, &to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
        Ok((to, n))
    };
    let (shim, shim_bytes) = copy(&src.shim, SHIM_NAME)?;
    let (grub, grub_bytes) = copy(&src.grubnet, GRUB_NAME)?;
    let kernel_signed = is_signed_pe(kernel).with_context(|| format!("reading the kernel {}", kernel.display()))?;
    Ok(Laid { shim, grub, shim_bytes, grub_bytes, kernel_signed })
}

/// Whether `path` is a PE image whose certificate table (data directory 4, Authenticode) is
/// not empty. `false` for a PE without one and for anything that is not PE.
pub fn is_signed_pe(path: &Path) -> Result<bool> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut dos = [0u8; 64];
    if len < 64 || f.read_exact(&mut dos).is_err() || &dos[..2] != b"MZ" {
        return Ok(false);
    }
    let pe = u64::from(u32::from_le_bytes(dos[0x3c..0x40].try_into().expect("4")));
    // Signature (4) + COFF header (20) + optional header up to the data directories.
    let mut head = [0u8; 24 + 240];
    if pe + head.len() as u64 > len {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(pe))?;
    f.read_exact(&mut head)?;
    if &head[..4] != b"PE\0\0" {
        return Ok(false);
    }
    let opt = &head[24..];
    let dirs_at = match u16::from_le_bytes([opt[0], opt[1]]) {
        0x20b => 112, // PE32+
        0x10b => 96,  // PE32
        _ => return Ok(false),
    };
    let count = u32::from_le_bytes(opt[dirs_at - 4..dirs_at].try_into().expect("4"));
    if count <= 4 {
        return Ok(false);
    }
    let entry = &opt[dirs_at + 4 * 8..dirs_at + 5 * 8];
    let (offset, size) = (
        u64::from(u32::from_le_bytes(entry[..4].try_into().expect("4"))),
        u64::from(u32::from_le_bytes(entry[4..].try_into().expect("4"))),
    );
    Ok(size > 8 && offset.checked_add(size).is_some_and(|end| end <= len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_chain_is_copied_and_checked_and_missing_packages_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let not_pe = dir.path().join("x.efi");
        std::fs::write(&not_pe, b"MZ not really").unwrap();
        assert!(!is_signed_pe(&not_pe).unwrap());
        let src = Sources { shim: dir.path().join("none.efi"), grubnet: not_pe.clone() };
        let e = lay_out(&src, dir.path(), &not_pe).unwrap_err().to_string();
        assert!(e.contains("apt-get install shim-signed"), "{e}");
        let src = Sources { shim: not_pe.clone(), grubnet: dir.path().join("none.efi") };
        let e = lay_out(&src, dir.path(), &not_pe).unwrap_err().to_string();
        assert!(e.contains("no signature") && e.contains("shim-signed"), "{e}");
        // Debian's own files, where installed (the test host has them: scripts/test).
        let debian = Sources::default();
        for p in [&debian.shim, &debian.grubnet] {
            assert!(p.is_file(), "{} is missing: apt-get install shim-signed grub-efi-amd64-signed", p.display());
        }
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let laid = lay_out(&debian, &out, &not_pe).unwrap();
        assert!(!laid.kernel_signed);
        assert_eq!(std::fs::read(&laid.shim).unwrap(), std::fs::read(SHIM_SIGNED).unwrap());
        assert_eq!(laid.grub, out.join("grubx64.efi"));
        assert!(is_signed_pe(&laid.grub).unwrap());
        let unsigned = Path::new("/usr/lib/shim/shimx64.efi"); // shim-unsigned, where installed
        if unsigned.is_file() {
            assert!(!is_signed_pe(unsigned).unwrap(), "the unsigned build");
        }
    }
}
