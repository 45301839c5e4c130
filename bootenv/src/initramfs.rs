//! Builds the netboot image: the distribution's kernel (copied as `vmlinuz`) and an initramfs
//! (`initrd.img`) holding
//!
//! ```text
//! /init                               the kura-agent binary (static)
//! /dev/console, /dev/null             device nodes the kernel needs before devtmpfs is mounted
//! /proc /sys /run /tmp                mount points
//! /lib/modules/<release>/...          network and storage drivers plus everything they depend
//!                                     on, always as plain .ko (decompressed here), and
//!                                     modules.dep / modules.alias (only those modules) and
//!                                     modules.builtin for the agent
//! /lib/firmware/...                   the firmware those modules name, when installed
//! ```
//!
//! packed as a `newc` cpio ([`crate::cpio`]) with entries sorted by path and every time set to
//! 0, compressed with zstd (the kernel must have `CONFIG_RD_ZSTD`; Debian's has).
//!
//! Everything streams: module and firmware files are copied through the cpio writer into the
//! zstd encoder; compressed modules are first decompressed into a staging directory on disk.

use crate::cpio;
use crate::modules::{self, AliasTable, DepTable};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Drivers the image always carries (when the kernel has them as modules): common server and
/// virtual NICs, and disk controllers. `sd_mod` gives SATA/SAS/SCSI disks their block devices.
/// `virtio_rng` feeds the kernel's random number generator in VMs (`-device virtio-rng-pci`).
pub const DRIVERS: &[&str] = &[
    "virtio_net",
    "virtio_pci",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "bnx2",
    "bnx2x",
    "tg3",
    "mlx4_core",
    "mlx4_en",
    "mlx5_core",
    "ahci",
    "nvme",
    "virtio_blk",
    "virtio_scsi",
    "megaraid_sas",
    "mpt3sas",
    "hpsa",
    "smartpqi",
    "sd_mod",
    // The hypervisor's entropy source: TLS and the kernel's RNG need entropy early.
    "virtio_rng",
    // UEFI variables: the agent writes the restored system's boot entry through efivarfs.
    "efivarfs",
];

/// Module directories (relative to the modules directory) carried whole, for the hardware the
/// list above does not name.
pub const DRIVER_DIRS: &[&str] =
    &["kernel/drivers/net/ethernet/", "kernel/drivers/ata/", "kernel/drivers/nvme/", "kernel/drivers/virtio/"];

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The kernel image; default: the newest `/boot/vmlinuz-<release>` with its modules.
    pub kernel: Option<PathBuf>,
    /// Its modules directory; default: `/lib/modules/<release>` of the kernel.
    pub modules: Option<PathBuf>,
    pub firmware: PathBuf,
    /// The `kura-agent` binary (installed as `/init`).
    pub agent: PathBuf,
    /// Output directory: `vmlinuz` and `initrd.img` are written there.
    pub out: PathBuf,
    pub drivers: Vec<String>,
    pub driver_dirs: Vec<String>,
    /// zstd level.
    pub level: i32,
    /// Strip the agent's debug info (with `strip`, when installed).
    pub strip: bool,
}

impl BuildOptions {
    pub fn new(agent: PathBuf, out: PathBuf) -> Self {
        BuildOptions {
            kernel: None,
            modules: None,
            firmware: PathBuf::from("/lib/firmware"),
            agent,
            out,
            drivers: DRIVERS.iter().map(|s| s.to_string()).collect(),
            driver_dirs: DRIVER_DIRS.iter().map(|s| s.to_string()).collect(),
            level: 19,
            strip: true,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub release: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_bytes: u64,
    /// Size of the compressed initramfs.
    pub initrd_bytes: u64,
    /// Size of the cpio archive before compression.
    pub cpio_bytes: u64,
    pub agent_stripped: bool,
    /// Modules in the image (names), sorted.
    pub modules: Vec<String>,
    /// Requested drivers the kernel has built in (nothing to ship).
    pub builtin: Vec<String>,
    /// Requested drivers this kernel has neither as a module nor built in.
    pub missing: Vec<String>,
    pub firmware: Vec<String>,
    /// Firmware files modules name that are not installed under the firmware directory.
    pub firmware_missing: Vec<String>,
}

/// How to build the agent binary the image needs (static, for the host's gnu target).
pub const AGENT_BUILD: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p kura-agent \
     --target x86_64-unknown-linux-gnu";

/// Whether the ELF executable at `path` is statically linked (has no `PT_INTERP` program
/// header, so it needs no dynamic loader).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh).with_context(|| format!("reading the ELF header of {}", path.display()))?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        bail!("{} is not a 64-bit little-endian ELF executable", path.display());
    }
    let phoff = u64::from_le_bytes(eh[0x20..0x28].try_into().expect("8"));
    let phentsize = u16::from_le_bytes([eh[0x36], eh[0x37]]) as usize;
    let phnum = u16::from_le_bytes([eh[0x38], eh[0x39]]) as usize;
    if phentsize < 56 || phnum > 4096 {
        bail!("{}: implausible program header table", path.display());
    }
    let mut ph = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))?;
    f.read_exact(&mut ph).with_context(|| format!("reading the program headers of {}", path.display()))?;
    const PT_INTERP: u32 = 3;
    Ok(!ph.chunks(phentsize).any(|h| u32::from_le_bytes(h[..4].try_into().expect("4")) == PT_INTERP))
}

/// Where an entry's content comes from.
enum Source {
    Dir,
    File(PathBuf, u32),
    Bytes(Vec<u8>, u32),
    CharDevice(u32, u32),
}

/// The newest installed kernel with its modules: (`/boot/vmlinuz-R`, `/lib/modules/R`).
pub fn find_installed_kernel() -> Option<(PathBuf, PathBuf)> {
    let mut found: Vec<(PathBuf, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let release = name.strip_prefix("vmlinuz-")?;
            let mods = Path::new("/lib/modules").join(release);
            mods.join("modules.dep").is_file().then(|| (e.path(), mods))
        })
        .collect();
    found.sort_by_key(|a| version_key(&a.1));
    found.pop()
}

/// The modules directory of [`find_installed_kernel`], or any with a `modules.dep`.
pub fn find_installed_modules() -> Option<PathBuf> {
    if let Some((_, m)) = find_installed_kernel() {
        return Some(m);
    }
    std::fs::read_dir("/lib/modules").ok()?.flatten().map(|e| e.path()).find(|p| p.join("modules.dep").is_file())
}

/// Sort key comparing the numbers in a release name numerically (`6.10` after `6.9`).
fn version_key(p: &Path) -> Vec<u64> {
    let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// Builds `vmlinuz` and `initrd.img` in `opts.out` and reports what went in.
pub fn build(opts: &BuildOptions) -> Result<Report> {
    let (kernel, modules_dir) = match (&opts.kernel, &opts.modules) {
        (Some(k), Some(m)) => (k.clone(), m.clone()),
        (Some(k), None) => {
            let name = k.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let Some(release) = name.strip_prefix("vmlinuz-") else {
                bail!("cannot tell the release of kernel {}: give --modules /lib/modules/RELEASE", k.display());
            };
            (k.clone(), Path::new("/lib/modules").join(release))
        }
        (None, m) => {
            let Some((k, found_m)) = find_installed_kernel() else {
                bail!("no kernel found under /boot with modules under /lib/modules: install linux-image-amd64, or give --kernel and --modules");
            };
            (k, m.clone().unwrap_or(found_m))
        }
    };
    let release = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .with_context(|| format!("modules directory {} has no name", modules_dir.display()))?;
    let read = |name: &str| -> Result<String> {
        let p = modules_dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let dep = DepTable::parse(&read("modules.dep")?)?;
    let alias = AliasTable::parse(&read("modules.alias")?);
    let builtin_text = read("modules.builtin").unwrap_or_default();
    let builtin = modules::parse_builtin(&builtin_text);

    // Which modules: the named drivers and the driver directories, with their dependencies.
    let mut wanted: Vec<String> = Vec::new();
    let (mut report_builtin, mut missing) = (Vec::new(), Vec::new());
    for d in &opts.drivers {
        let n = modules::normalize(d);
        if dep.get(&n).is_some() {
            wanted.push(n);
        } else if builtin.contains(&n) {
            report_builtin.push(n);
        } else {
            missing.push(n);
        }
    }
    let mut by_dir: Vec<&String> = dep
        .modules
        .iter()
        .filter(|(_, e)| opts.driver_dirs.iter().any(|d| e.path.starts_with(d.as_str())))
        .map(|(n, _)| n)
        .collect();
    by_dir.sort();
    wanted.extend(by_dir.into_iter().cloned());
    let closure = dep.load_order(&wanted, |n| builtin.contains(n))?;
    let included: BTreeSet<String> = closure.iter().cloned().collect();

    let staging = tempfile::tempdir().context("creating a staging directory")?;
    let mut entries: BTreeMap<String, Source> = BTreeMap::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "lib", "lib/modules", "lib/firmware"] {
        entries.insert(d.into(), Source::Dir);
    }
    entries.insert("dev/console".into(), Source::CharDevice(5, 1));
    entries.insert("dev/null".into(), Source::CharDevice(1, 3));

    // The agent.
    let agent_stripped = opts.strip && strip_into(&opts.agent, &staging.path().join("init"));
    let agent_src = if agent_stripped { staging.path().join("init") } else { opts.agent.clone() };
    if !agent_src.is_file() {
        bail!("agent binary {} not found: build it with {AGENT_BUILD}", agent_src.display());
    }
    if !is_static_elf(&agent_src)? {
        bail!(
            "agent binary {} is dynamically linked: the initramfs has no libraries, build it with {AGENT_BUILD}",
            agent_src.display()
        );
    }
    entries.insert("init".into(), Source::File(agent_src, 0o755));

    // Modules, always as plain .ko, and the firmware they name.
    let mod_root = format!("lib/modules/{release}");
    let mut firmware_names: BTreeSet<String> = BTreeSet::new();
    for (i, name) in closure.iter().enumerate() {
        let e = dep.get(name).expect("in closure");
        let src = modules_dir.join(&e.path);
        let plain = if modules::plain_path(&e.path) == e.path {
            src.clone()
        } else {
            let p = staging.path().join(format!("m{i}.ko"));
            decompress_to(&src, &p)?;
            p
        };
        firmware_names
            .extend(modinfo_firmware(&plain).with_context(|| format!("reading the modinfo of {}", src.display()))?);
        add_with_parents(
            &mut entries,
            &format!("{mod_root}/{}", modules::plain_path(&e.path)),
            Source::File(plain, 0o644),
        );
    }
    let keep = |n: &str| included.contains(n);
    entries.insert(
        format!("{mod_root}/modules.dep"),
        Source::Bytes(dep.to_text(keep, modules::plain_path).into_bytes(), 0o644),
    );
    entries.insert(format!("{mod_root}/modules.alias"), Source::Bytes(alias.to_text(keep).into_bytes(), 0o644));
    entries.insert(format!("{mod_root}/modules.builtin"), Source::Bytes(builtin_text.into_bytes(), 0o644));
    entries.insert(mod_root.clone(), Source::Dir);

    let (mut firmware, mut firmware_missing) = (Vec::new(), Vec::new());
    for (i, fw) in firmware_names.iter().enumerate() {
        if fw.contains("..") || fw.starts_with('/') || fw.contains(['*', '?']) {
            continue;
        }
        let base = opts.firmware.join(fw);
        let found = if base.is_file() {
            Some(base)
        } else {
            let mut f = None;
            for ext in ["xz", "zst"] {
                let c = PathBuf::from(format!("{}.{ext}", base.display()));
                if c.is_file() {
                    let p = staging.path().join(format!("fw{i}"));
                    decompress_to(&c, &p)?;
                    f = Some(p);
                    break;
                }
            }
            f
        };
        match found {
            Some(p) => {
                add_with_parents(&mut entries, &format!("lib/firmware/{fw}"), Source::File(p, 0o644));
                firmware.push(fw.clone());
            }
            None => firmware_missing.push(fw.clone()),
        }
    }

    // Write: cpio → zstd → initrd.img.tmp, then rename; the kernel beside it.
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let initrd = opts.out.join("initrd.img");
    let tmp = opts.out.join(".initrd.img.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let enc = zstd::stream::Encoder::new(BufWriter::new(file), opts.level).context("starting zstd")?;
    let mut w = cpio::Writer::new(enc, 0);
    for (name, src) in &entries {
        match src {
            Source::Dir => w.dir(name, 0o755)?,
            Source::CharDevice(maj, min) => w.char_device(name, 0o600, *maj, *min)?,
            Source::Bytes(b, perm) => w.file(name, *perm, b.len() as u64, &mut &b[..])?,
            Source::File(p, perm) => {
                let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                let len = f.metadata().with_context(|| format!("sizing {}", p.display()))?.len();
                w.file(name, *perm, len, &mut BufReader::new(f))?;
            }
        }
    }
    let (enc, cpio_bytes) = w.finish()?;
    let file = enc
        .finish()
        .context("finishing zstd")?
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the initramfs")?;
    file.sync_all().context("syncing the initramfs")?;
    drop(file);
    std::fs::rename(&tmp, &initrd).with_context(|| format!("renaming {} to {}", tmp.display(), initrd.display()))?;

    let vmlinuz = opts.out.join("vmlinuz");
    let ktmp = opts.out.join(".vmlinuz.tmp");
    std::fs::copy(&kernel, &ktmp).with_context(|| format!("copying the kernel {}", kernel.display()))?;
    std::fs::rename(&ktmp, &vmlinuz).with_context(|| format!("renaming {}", ktmp.display()))?;
    if let Ok(d) = File::open(&opts.out) {
        let _ = d.sync_all();
    }

    Ok(Report {
        release,
        kernel_bytes: std::fs::metadata(&vmlinuz)?.len(),
        initrd_bytes: std::fs::metadata(&initrd)?.len(),
        kernel: vmlinuz,
        initrd,
        cpio_bytes,
        agent_stripped,
        modules: included.into_iter().collect(),
        builtin: report_builtin,
        missing,
        firmware,
        firmware_missing,
    })
}

/// Inserts `path` and any missing parent directories.
fn add_with_parents(entries: &mut BTreeMap<String, Source>, path: &str, src: Source) {
    let mut p = path;
    while let Some((parent, _)) = p.rsplit_once('/') {
        entries.entry(parent.to_string()).or_insert(Source::Dir);
        p = parent;
    }
    entries.insert(path.to_string(), src);
}

/// `strip --strip-debug` `src` into `dst`; false if `strip` is missing or fails.
fn strip_into(src: &Path, dst: &Path) -> bool {
    std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(dst)
        .arg(src)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Decompresses a `.xz`, `.zst` or `.gz` file (by its name) into `dst`.
pub fn decompress_to(src: &Path, dst: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let inp = BufReader::new(File::open(src).with_context(|| format!("opening {}", src.display()))?);
    let mut out = BufWriter::new(File::create(dst).with_context(|| format!("creating {}", dst.display()))?);
    if name.ends_with(".zst") {
        zstd::stream::copy_decode(inp, &mut out).with_context(|| format!("decompressing {}", src.display()))?;
    } else if name.ends_with(".xz") {
        let mut inp = inp;
        lzma_rs::xz_decompress(&mut inp, &mut out)
            .map_err(|e| anyhow::anyhow!("decompressing {}: {e:?}", src.display()))?;
    } else if name.ends_with(".gz") {
        std::io::copy(&mut flate2::read::GzDecoder::new(inp), &mut out)
            .with_context(|| format!("decompressing {}", src.display()))?;
    } else {
        bail!("{} is not .xz, .zst or .gz", src.display());
    }
    out.flush().with_context(|| format!("writing {}", dst.display()))?;
    Ok(())
}

/// Largest `.modinfo` section read (real ones are a few KiB).
const MAX_MODINFO: u64 = 1 << 20;

/// The `firmware=` entries of a plain `.ko`'s `.modinfo` section (what `modinfo -F firmware`
/// prints). Reads only the ELF section headers and that section.
pub fn modinfo_firmware(path: &Path) -> Result<Vec<String>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(modinfo(&mut f)?.into_iter().filter_map(|kv| kv.strip_prefix("firmware=").map(str::to_string)).collect())
}

/// The `key=value` strings of an ELF64 little-endian object's `.modinfo` section.
pub fn modinfo<R: Read + Seek>(f: &mut R) -> Result<Vec<String>> {
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh).context("reading the ELF header")?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        bail!("not a 64-bit little-endian ELF object");
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(&eh, 0x28), u16_at(&eh, 0x3A) as usize, u16_at(&eh, 0x3C) as usize, u16_at(&eh, 0x3E) as usize);
    if shentsize < 64 || shnum == 0 || shnum > 65_000 || shstrndx >= shnum {
        bail!("implausible ELF section table ({shnum} entries of {shentsize} bytes)");
    }
    let mut sh = vec![0u8; shentsize * shnum];
    f.seek(SeekFrom::Start(shoff)).context("seeking to the section table")?;
    f.read_exact(&mut sh).context("reading the section table")?;
    let section = |i: usize| {
        let s = &sh[i * shentsize..];
        (u32_at(s, 0) as u64, u64_at(s, 0x18), u64_at(s, 0x20))
    };
    let mut read_section = |off: u64, size: u64| -> Result<Vec<u8>> {
        if size > MAX_MODINFO * 4 {
            bail!("ELF section of {size} bytes is too large");
        }
        let mut b = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut b).context("reading an ELF section")?;
        Ok(b)
    };
    let (_, stroff, strsize) = section(shstrndx);
    let strtab = read_section(stroff, strsize)?;
    for i in 0..shnum {
        let (name, off, size) = section(i);
        let name = strtab.get(name as usize..).unwrap_or(&[]);
        if name.starts_with(b".modinfo\0") {
            if size > MAX_MODINFO {
                bail!(".modinfo section of {size} bytes is too large");
            }
            let data = read_section(off, size)?;
            return Ok(data
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_recognised() {
        // The test binary itself is dynamically linked (tests are not built with crt-static).
        let me = std::env::current_exe().unwrap();
        let dynamic = !is_static_elf(&me).unwrap();
        let ldd = std::process::Command::new("ldd").arg(&me).output();
        if let Ok(out) = ldd {
            let says_static = String::from_utf8_lossy(&out.stdout).contains("not a dynamic executable")
                || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable");
            assert_eq!(dynamic, !says_static);
        }
        let text = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(text.path(), "#!/bin/sh\necho this is no ELF file, but long enough for a header\n").unwrap();
        assert!(is_static_elf(text.path()).is_err());
    }

    #[test]
    fn version_order_is_numeric() {
        let mut v = [PathBuf::from("/lib/modules/6.10.1-amd64"), PathBuf::from("/lib/modules/6.9.3-amd64")];
        v.sort_by_key(|p| version_key(p));
        assert_eq!(v[1], PathBuf::from("/lib/modules/6.10.1-amd64"));
    }

    #[test]
    fn parents_are_added() {
        let mut m = BTreeMap::new();
        add_with_parents(&mut m, "lib/modules/x/kernel/a.ko", Source::Bytes(vec![], 0o644));
        let keys: Vec<&String> = m.keys().collect();
        assert_eq!(keys, ["lib", "lib/modules", "lib/modules/x", "lib/modules/x/kernel", "lib/modules/x/kernel/a.ko"]);
    }

    #[test]
    fn decompresses_each_format() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"module bytes ".repeat(100);
        let zst = dir.path().join("a.ko.zst");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let gz = dir.path().join("a.ko.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        std::fs::write(&gz, e.finish().unwrap()).unwrap();
        let xz = dir.path().join("a.ko.xz");
        let mut x = Vec::new();
        lzma_rs::xz_compress(&mut &data[..], &mut x).unwrap();
        std::fs::write(&xz, x).unwrap();
        for src in [zst, gz, xz] {
            let out = dir.path().join("out");
            decompress_to(&src, &out).unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), data, "{}", src.display());
        }
    }

    /// `modinfo -F firmware` agrees with our ELF reader on a real module, when one is installed.
    #[test]
    fn firmware_names_from_real_modules() {
        let Some(dir) = find_installed_modules() else {
            eprintln!("skipped: no installed kernel modules");
            return;
        };
        let dep = DepTable::parse(&std::fs::read_to_string(dir.join("modules.dep")).unwrap()).unwrap();
        let Some(e) = ["bnx2", "tg3", "e1000e"].iter().find_map(|m| dep.get(m)) else {
            eprintln!("skipped: none of bnx2, tg3, e1000e is a module here");
            return;
        };
        let src = dir.join(&e.path);
        let plain = if modules::plain_path(&e.path) == e.path {
            src.clone()
        } else {
            let t = tempfile::NamedTempFile::new().unwrap();
            decompress_to(&src, t.path()).unwrap();
            t.into_temp_path().keep().unwrap()
        };
        let ours = modinfo_firmware(&plain).unwrap();
        let info = modinfo(&mut File::open(&plain).unwrap()).unwrap();
        assert!(info.iter().any(|kv| kv.starts_with("license=")), "{info:?}");
        if let Ok(out) = std::process::Command::new("modinfo").args(["-F", "firmware"]).arg(&src).output() {
            if out.status.success() {
                let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
                assert_eq!(ours, theirs);
            }
        }
    }
}
