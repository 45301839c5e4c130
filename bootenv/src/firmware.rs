//! Firmware for the modules in the netboot image. Each module names the files it may request in
//! its `.modinfo` (`firmware=` entries, what `modinfo -F firmware` prints); each name is looked
//! up in the build host's firmware directory as `NAME`, `NAME.xz` or `NAME.zst` and packed in the
//! one form the image's kernel reads ([`Packing`], from its `CONFIG_FW_LOADER_COMPRESS*`
//! options: the loader tries `NAME`, then `NAME.xz`/`NAME.zst` when built with that
//! decompressor). A name that is not installed is listed with the Debian package that ships it
//! when known ([`debian_package`]), so a missing file is a warning the operator can act on.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How firmware files go into the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Packing {
    /// Plain files (a kernel without `CONFIG_FW_LOADER_COMPRESS`, or its config is unknown).
    Plain,
    /// `NAME.xz`, xz with a CRC32 check (`CONFIG_FW_LOADER_COMPRESS_XZ`; the kernel's xz decoder
    /// checks CRC32 only).
    Xz,
    /// `NAME.zst` (`CONFIG_FW_LOADER_COMPRESS_ZSTD`, Linux 5.19 and later).
    Zstd,
}

impl Packing {
    /// From the text of a kernel's `.config`: xz when the loader has it, else zstd, else plain.
    /// Before Linux 5.19 `CONFIG_FW_LOADER_COMPRESS=y` alone meant xz.
    pub fn from_kernel_config(config: &str) -> Packing {
        let on = |key: &str| config.lines().any(|l| l.trim() == format!("{key}=y"));
        if !on("CONFIG_FW_LOADER_COMPRESS") {
            return Packing::Plain;
        }
        let (xz, zstd) = (on("CONFIG_FW_LOADER_COMPRESS_XZ"), on("CONFIG_FW_LOADER_COMPRESS_ZSTD"));
        match (xz, zstd) {
            (true, _) => Packing::Xz,
            (false, true) => Packing::Zstd,
            // 5.3-5.18: one option, xz only.
            (false, false) => Packing::Xz,
        }
    }

    /// The suffix the packed file gets (`""`, `".xz"`, `".zst"`).
    pub fn suffix(self) -> &'static str {
        match self {
            Packing::Plain => "",
            Packing::Xz => ".xz",
            Packing::Zstd => ".zst",
        }
    }
}

/// The `.config` of a kernel: `config-RELEASE` beside `vmlinuz-RELEASE` (Debian's `/boot`), else
/// `build/.config` in its modules directory.
pub fn find_kernel_config(kernel: &Path, release: &str, modules_dir: &Path) -> Option<PathBuf> {
    let beside = kernel.parent().map(|d| d.join(format!("config-{release}")));
    beside.into_iter().chain([modules_dir.join("build/.config")]).find(|p| p.is_file())
}

/// A firmware name a module may ask for is one relative path without `..` or globs.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.split('/').any(|c| c == ".." || c == "." || c.is_empty())
        && !name.contains(['*', '?', '[', '\n', '\0'])
}

/// The installed file for firmware `name` under `dir`: `NAME`, `NAME.xz` or `NAME.zst`.
pub fn locate(dir: &Path, name: &str) -> Option<PathBuf> {
    ["", ".xz", ".zst"].iter().map(|s| dir.join(format!("{name}{s}"))).find(|p| p.is_file())
}

/// Writes the installed firmware file `src` (plain, `.xz` or `.zst`, by its name) into `dst` in
/// the form `packing` says. An `.xz` source with a CRC32 check is copied as it is; anything else
/// is decompressed and compressed again.
pub fn pack(src: &Path, packing: Packing, dst: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let compressed = name.ends_with(".xz") || name.ends_with(".zst");
    if packing == Packing::Xz && name.ends_with(".xz") && xz_check(src)? == Some(XZ_CHECK_CRC32) {
        std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
        return Ok(());
    }
    if packing == Packing::Zstd && name.ends_with(".zst") {
        std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
        return Ok(());
    }
    let plain = if compressed {
        let p = PathBuf::from(format!("{}.plain", dst.display()));
        crate::initramfs::decompress_to(src, &p)?;
        p
    } else {
        src.to_path_buf()
    };
    match packing {
        Packing::Plain => {
            if plain != dst {
                std::fs::copy(&plain, dst).with_context(|| format!("copying {}", plain.display()))?;
            }
        }
        Packing::Xz => xz_compress(&plain, dst)?,
        Packing::Zstd => {
            let inp = std::fs::File::open(&plain).with_context(|| format!("opening {}", plain.display()))?;
            let out = std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
            zstd::stream::copy_encode(inp, out, 19).with_context(|| format!("compressing {}", plain.display()))?;
        }
    }
    if compressed && plain != dst {
        let _ = std::fs::remove_file(&plain);
    }
    Ok(())
}

const XZ_MAGIC: &[u8; 6] = b"\xFD7zXZ\0";
const XZ_CHECK_CRC32: u8 = 1;

/// The check type of an `.xz` stream (its header's flags: 0 none, 1 CRC32, 4 CRC64, 10 SHA-256).
fn xz_check(path: &Path) -> Result<Option<u8>> {
    use std::io::Read;
    let mut h = [0u8; 8];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if f.read_exact(&mut h).is_err() || &h[..6] != XZ_MAGIC {
        return Ok(None);
    }
    Ok(Some(h[7] & 0x0F))
}

/// `xz --check=crc32` (xz-utils): the kernel's decoder knows no CRC64. A 1 MiB dictionary keeps
/// the kernel's decoding memory small (firmware files are rarely larger).
fn xz_compress(src: &Path, dst: &Path) -> Result<()> {
    let out = std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let inp = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let status = Command::new("xz")
        .args(["--compress", "--stdout", "--check=crc32", "--lzma2=preset=9,dict=1MiB", "--threads=1"])
        .stdin(inp)
        .stdout(out)
        .stderr(Stdio::inherit())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("xz failed ({s}) on {}", src.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("xz is not installed (the kernel wants firmware as .xz): apt-get install xz-utils")
        }
        Err(e) => Err(e).context("running xz"),
    }
}

/// Debian's package (component non-free-firmware) that installs firmware `name` under
/// `/lib/firmware`, for the families the image carries; `None` when not known here.
pub fn debian_package(name: &str) -> Option<&'static str> {
    const BY_PREFIX: &[(&str, &str)] = &[
        ("bnx2x/", "firmware-bnx2x"),
        ("bnx2/", "firmware-bnx2"),
        ("tigon/", "firmware-misc-nonfree"),
        ("intel/ice/", "firmware-misc-nonfree"),
        ("e100/", "firmware-misc-nonfree"),
        ("cxgb3/", "firmware-misc-nonfree"),
        ("cxgb4/", "firmware-misc-nonfree"),
        ("qed/", "firmware-qlogic"),
        ("qlogic/", "firmware-qlogic"),
        ("ql2", "firmware-qlogic"),
        ("phanfw.bin", "firmware-netxen"),
        ("rtl_nic/", "firmware-realtek"),
        ("myri10ge_", "firmware-myricom"),
        ("netronome/", "firmware-netronome"),
        ("liquidio/", "firmware-cavium"),
    ];
    BY_PREFIX.iter().find(|(p, _)| name.starts_with(p)).map(|(_, pkg)| *pkg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_follows_the_kernel_config() {
        let debian_6_1 = "CONFIG_FW_LOADER=y\nCONFIG_FW_LOADER_COMPRESS=y\nCONFIG_FW_LOADER_COMPRESS_XZ=y\n\
                          # CONFIG_FW_LOADER_COMPRESS_ZSTD is not set\n";
        assert_eq!(Packing::from_kernel_config(debian_6_1), Packing::Xz);
        let zstd_only = "CONFIG_FW_LOADER_COMPRESS=y\n# CONFIG_FW_LOADER_COMPRESS_XZ is not set\n\
                         CONFIG_FW_LOADER_COMPRESS_ZSTD=y\n";
        assert_eq!(Packing::from_kernel_config(zstd_only), Packing::Zstd);
        assert_eq!(Packing::from_kernel_config("CONFIG_FW_LOADER_COMPRESS=y\n"), Packing::Xz);
        assert_eq!(Packing::from_kernel_config("# CONFIG_FW_LOADER_COMPRESS is not set\n"), Packing::Plain);
        assert_eq!(Packing::from_kernel_config(""), Packing::Plain);
    }

    #[test]
    fn names_are_relative_paths() {
        assert!(valid_name("bnx2x/bnx2x-e2-7.13.21.0.fw"));
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a//b", "iwlwifi-*.ucode", "a/./b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn packages_of_known_firmware() {
        assert_eq!(debian_package("bnx2x/bnx2x-e2-7.13.21.0.fw"), Some("firmware-bnx2x"));
        assert_eq!(debian_package("tigon/tg3_tso5.bin"), Some("firmware-misc-nonfree"));
        assert_eq!(debian_package("qed/qed_init_values_zipped-8.59.1.0.bin"), Some("firmware-qlogic"));
        assert_eq!(debian_package("ql2500_fw.bin"), Some("firmware-qlogic"));
        assert_eq!(debian_package("rtl_nic/rtl8168h-2.fw"), Some("firmware-realtek"));
        assert_eq!(debian_package("vendor/unknown.bin"), None);
    }

    /// Every source form ends up in the packed form, and the content survives.
    #[test]
    fn packs_each_source_form() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 ^ (i / 977) as u8).collect();
        let plain = d.path().join("fw.bin");
        std::fs::write(&plain, &data).unwrap();
        let zst = d.path().join("fw2.bin.zst");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let xz64 = d.path().join("fw3.bin.xz");
        let st = Command::new("xz")
            .args(["-k", "--check=crc64", "-c"])
            .arg(&plain)
            .stdout(std::fs::File::create(&xz64).unwrap())
            .status()
            .expect("xz: apt-get install xz-utils");
        assert!(st.success());
        assert_eq!(xz_check(&xz64).unwrap(), Some(4));
        for src in [&plain, &zst, &xz64] {
            for packing in [Packing::Plain, Packing::Xz, Packing::Zstd] {
                let out = d.path().join(format!("out{}", packing.suffix()));
                pack(src, packing, &out).unwrap();
                let back = d.path().join("back");
                match packing {
                    Packing::Plain => std::fs::copy(&out, &back).map(|_| ()).unwrap(),
                    _ => crate::initramfs::decompress_to(&out, &back).unwrap(),
                }
                assert_eq!(std::fs::read(&back).unwrap(), data, "{} as {packing:?}", src.display());
                if packing == Packing::Xz {
                    assert_eq!(xz_check(&out).unwrap(), Some(XZ_CHECK_CRC32), "the kernel checks CRC32 only");
                }
                assert!(!d.path().join(format!("out{}.plain", packing.suffix())).exists(), "scratch left behind");
            }
        }
    }

    #[test]
    fn locates_compressed_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("tigon")).unwrap();
        std::fs::write(d.path().join("tigon/tg3.bin.xz"), b"x").unwrap();
        assert_eq!(locate(d.path(), "tigon/tg3.bin"), Some(d.path().join("tigon/tg3.bin.xz")));
        assert_eq!(locate(d.path(), "tigon/tg3_tso.bin"), None);
    }
}
