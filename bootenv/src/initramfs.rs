//! Builds the netboot image: the distribution's kernel (copied as `vmlinuz`) and an initramfs
//! (`initrd.img`) holding
//!
//! ```text
//! /init                               the kura-agent binary (static)
//! /dev/console, /dev/null             device nodes the kernel needs before devtmpfs is mounted
//! /proc /sys /run /tmp                mount points
//! /lib/modules/<release>/...          the driver families' modules ([`crate::families`]) and
//!                                     the [`DRIVER_DIRS`] plus everything they depend on,
//!                                     always as plain .ko (decompressed here), and
//!                                     modules.dep / modules.alias (only those modules) and
//!                                     modules.builtin for the agent
//! /lib/firmware/...                   the firmware those modules name, when installed, packed
//!                                     as the kernel's loader reads it ([`crate::firmware`])
//! ```
//!
//! packed as a `newc` cpio ([`crate::cpio`]) with every time set to 0, compressed with zstd (the
//! kernel must have `CONFIG_RD_ZSTD`; Debian's has). Archive order: directories and device nodes
//! (sorted by path, so parents come first), then the files by category (the agent, the modules
//! of each family, other modules, firmware, module tables), each sorted by path; the zstd stream
//! is flushed after each category, so the [`Report`] can say what each added to the image.
//!
//! Everything streams: module and firmware files are copied through the cpio writer into the
//! zstd encoder; compressed modules are first decompressed into a staging directory on disk.

use crate::cpio;
use crate::families;
use crate::firmware;
use crate::modules::{self, AliasTable, DepTable};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Module directories (relative to the modules directory) carried whole, for the hardware the
/// driver families ([`crate::families`]) do not name.
pub const DRIVER_DIRS: &[&str] =
    &["kernel/drivers/net/ethernet/", "kernel/drivers/ata/", "kernel/drivers/nvme/", "kernel/drivers/virtio/"];

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The kernel image; default: the newest `/boot/vmlinuz-<release>` with its modules.
    pub kernel: Option<PathBuf>,
    /// Its modules directory; default: `/lib/modules/<release>` of the kernel.
    pub modules: Option<PathBuf>,
    /// The firmware directory the modules' firmware is looked up in (`/lib/firmware`).
    pub firmware: PathBuf,
    /// The kernel's `.config`, which says how firmware is packed ([`firmware::Packing`]);
    /// default: `config-<release>` beside the kernel, or `build/.config` of its modules.
    pub kernel_config: Option<PathBuf>,
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
            kernel_config: None,
            agent,
            out,
            drivers: families::default_modules(),
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
    /// Each requested driver: included or not, and its firmware (with its dependencies').
    pub drivers: Vec<DriverStatus>,
    /// Firmware files packed, by the name modules ask for.
    pub firmware: Vec<String>,
    /// Firmware files modules name that are not installed under the firmware directory.
    pub firmware_missing: Vec<MissingFirmware>,
    /// The firmware directory searched.
    pub firmware_dir: PathBuf,
    /// How firmware is packed, and the kernel config that said so (`None`: not found, plain).
    pub firmware_packing: firmware::Packing,
    pub kernel_config: Option<PathBuf>,
    /// The initramfs by category, in archive order: `agent`, `modules/<family>`,
    /// `modules/other` (the [`DRIVER_DIRS`] catch-all), `firmware`, `layout` (directories,
    /// device nodes, module tables).
    pub sizes: Vec<CategorySize>,
    /// What the operator should act on: missing drivers, missing firmware of listed drivers.
    pub warnings: Vec<String>,
}

/// One requested driver in the [`Report`].
#[derive(Debug, Clone, Serialize)]
pub struct DriverStatus {
    pub module: String,
    /// Its family's id ([`crate::families`]), `extra` for one added by name.
    pub family: String,
    /// `included` (shipped as a module), `builtin` (in the kernel) or `missing`.
    pub status: &'static str,
    pub firmware_present: Vec<String>,
    pub firmware_missing: Vec<String>,
}

/// A firmware file some included module names but the firmware directory lacks.
#[derive(Debug, Clone, Serialize)]
pub struct MissingFirmware {
    pub name: String,
    /// The modules that name it.
    pub modules: Vec<String>,
    /// The Debian package that ships it, when known.
    pub package: Option<String>,
}

/// Bytes of one category of the initramfs: its files before compression, and what they added to
/// the compressed image (the zstd stream is flushed between categories to measure it).
#[derive(Debug, Clone, Serialize)]
pub struct CategorySize {
    pub category: String,
    pub files: usize,
    pub bytes: u64,
    pub compressed_bytes: u64,
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
    let mut all = wanted.clone();
    all.extend(by_dir.into_iter().cloned());
    let closure = dep.load_order(&all, |n| builtin.contains(n))?;
    let included: BTreeSet<String> = closure.iter().cloned().collect();
    // Each module's category: the family of the first requested driver that needs it.
    let mut category_of: BTreeMap<String, String> = BTreeMap::new();
    for d in &wanted {
        let cat = format!("modules/{}", families::family_of(d).map_or("extra", |f| f.id));
        for m in dep.load_order(std::slice::from_ref(d), |n| builtin.contains(n))? {
            category_of.entry(m).or_insert_with(|| cat.clone());
        }
    }

    let staging = tempfile::tempdir().context("creating a staging directory")?;
    let mut entries: BTreeMap<String, Source> = BTreeMap::new();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
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
    files.insert("init".into(), "agent".into());

    // Modules, always as plain .ko, and the firmware they name.
    let mod_root = format!("lib/modules/{release}");
    let mut firmware_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
        let fw = modinfo_firmware(&plain).with_context(|| format!("reading the modinfo of {}", src.display()))?;
        firmware_of.insert(name.clone(), fw);
        let path = format!("{mod_root}/{}", modules::plain_path(&e.path));
        add_with_parents(&mut entries, &path, Source::File(plain, 0o644));
        files.insert(path, category_of.get(name).cloned().unwrap_or_else(|| "modules/other".into()));
    }
    let keep = |n: &str| included.contains(n);
    for (name, text) in [
        ("modules.dep", dep.to_text(keep, modules::plain_path)),
        ("modules.alias", alias.to_text(keep)),
        ("modules.builtin", builtin_text),
    ] {
        let path = format!("{mod_root}/{name}");
        entries.insert(path.clone(), Source::Bytes(text.into_bytes(), 0o644));
        files.insert(path, "layout".into());
    }
    entries.insert(mod_root.clone(), Source::Dir);

    // Firmware, packed as the kernel's loader reads it.
    let kernel_config =
        opts.kernel_config.clone().or_else(|| firmware::find_kernel_config(&kernel, &release, &modules_dir));
    let packing = match &kernel_config {
        Some(p) => firmware::Packing::from_kernel_config(
            &std::fs::read_to_string(p).with_context(|| format!("reading the kernel config {}", p.display()))?,
        ),
        None => firmware::Packing::Plain,
    };
    let mut named_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (m, fws) in &firmware_of {
        for fw in fws {
            named_by.entry(fw.clone()).or_default().push(m.clone());
        }
    }
    let (mut firmware, mut firmware_missing) = (Vec::new(), Vec::new());
    for (i, (fw, mods)) in named_by.iter().enumerate() {
        let found = if firmware::valid_name(fw) { firmware::locate(&opts.firmware, fw) } else { None };
        match found {
            Some(src) => {
                let p = staging.path().join(format!("fw{i}"));
                firmware::pack(&src, packing, &p).with_context(|| format!("packing firmware {}", src.display()))?;
                let path = format!("lib/firmware/{fw}{}", packing.suffix());
                add_with_parents(&mut entries, &path, Source::File(p, 0o644));
                files.insert(path, "firmware".into());
                firmware.push(fw.clone());
            }
            None => firmware_missing.push(MissingFirmware {
                name: fw.clone(),
                modules: mods.clone(),
                package: firmware::debian_package(fw).map(String::from),
            }),
        }
    }

    // Per requested driver: its status and the firmware of it and its dependencies.
    let missing_fw: BTreeSet<&str> = firmware_missing.iter().map(|m| m.name.as_str()).collect();
    let mut drivers = Vec::new();
    let mut warnings = Vec::new();
    for d in &opts.drivers {
        let n = modules::normalize(d);
        let family = families::family_of(&n).map_or("extra", |f| f.id).to_string();
        let (status, fws) = if dep.get(&n).is_some() {
            let order = dep.load_order(std::slice::from_ref(&n), |x| builtin.contains(x))?;
            let fws: BTreeSet<String> = order.iter().flat_map(|m| firmware_of[m].iter().cloned()).collect();
            ("included", fws)
        } else if builtin.contains(&n) {
            ("builtin", BTreeSet::new())
        } else {
            warnings.push(format!("driver {n} ({family}) is not in kernel {release}: its hardware will not work"));
            ("missing", BTreeSet::new())
        };
        let (absent, present): (Vec<String>, Vec<String>) =
            fws.into_iter().partition(|f| missing_fw.contains(f.as_str()));
        for f in &absent {
            let pkg = firmware::debian_package(f).map_or(String::new(), |p| format!(" (Debian package {p})"));
            warnings.push(format!("driver {n}: firmware {f} is not in {}{pkg}", opts.firmware.display()));
        }
        drivers.push(DriverStatus { module: n, family, status, firmware_present: present, firmware_missing: absent });
    }

    // Write: cpio → zstd → initrd.img.tmp, then rename; the kernel beside it. Directories and
    // device nodes first (sorted, so parents come before children), then the files by category
    // (each sorted), the zstd stream flushed after each category to measure its share.
    let mut order: Vec<String> = vec!["agent".into()];
    order.extend(families::FAMILIES.iter().map(|f| format!("modules/{}", f.id)));
    order.extend(["modules/extra", "modules/other", "firmware", "layout"].map(String::from));
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let initrd = opts.out.join("initrd.img");
    let tmp = opts.out.join(".initrd.img.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let counted = Counting { inner: BufWriter::new(file), count: 0 };
    let enc = zstd::stream::Encoder::new(counted, opts.level).context("starting zstd")?;
    let mut w = cpio::Writer::new(enc, 0);
    let write = |w: &mut cpio::Writer<_>, name: &str, src: &Source| -> Result<()> {
        match src {
            Source::Dir => w.dir(name, 0o755),
            Source::CharDevice(maj, min) => w.char_device(name, 0o600, *maj, *min),
            Source::Bytes(b, perm) => w.file(name, *perm, b.len() as u64, &mut &b[..]),
            Source::File(p, perm) => {
                let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                let len = f.metadata().with_context(|| format!("sizing {}", p.display()))?.len();
                w.file(name, *perm, len, &mut BufReader::new(f))
            }
        }
    };
    let measure =
        |w: &mut cpio::Writer<zstd::stream::Encoder<'static, Counting<BufWriter<File>>>>| -> Result<(u64, u64)> {
            w.get_mut().flush().context("flushing zstd")?;
            Ok((w.written(), w.get_mut().get_ref().count))
        };
    for (name, src) in entries.iter().filter(|(n, _)| !files.contains_key(*n)) {
        write(&mut w, name, src)?;
    }
    let mut last = measure(&mut w)?;
    let layout_start = last;
    let mut sizes = Vec::new();
    for cat in &order {
        let names: Vec<&String> = files.iter().filter(|(_, c)| *c == cat).map(|(n, _)| n).collect();
        if names.is_empty() {
            continue;
        }
        for n in &names {
            write(&mut w, n, &entries[*n])?;
        }
        let now = measure(&mut w)?;
        let (mut bytes, mut compressed) = (now.0 - last.0, now.1 - last.1);
        if cat == "layout" {
            // The directories and device nodes written first count as layout too.
            bytes += layout_start.0;
            compressed += layout_start.1;
        }
        sizes.push(CategorySize { category: cat.clone(), files: names.len(), bytes, compressed_bytes: compressed });
        last = now;
    }
    let (enc, cpio_bytes) = w.finish()?;
    let file = enc
        .finish()
        .context("finishing zstd")?
        .inner
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
    let initrd_bytes = std::fs::metadata(&initrd)?.len();
    // The trailer and the end of the zstd frame: layout.
    if let Some(l) = sizes.iter_mut().find(|s| s.category == "layout") {
        l.bytes += cpio_bytes - last.0;
        l.compressed_bytes += initrd_bytes - last.1;
    }
    let other_missing =
        firmware_missing.iter().filter(|m| !drivers.iter().any(|d| d.firmware_missing.contains(&m.name))).count();
    if other_missing > 0 {
        warnings.push(format!(
            "{other_missing} firmware files named by other modules (the {} directories) are not installed: see --json",
            opts.driver_dirs.len()
        ));
    }

    Ok(Report {
        release,
        kernel_bytes: std::fs::metadata(&vmlinuz)?.len(),
        initrd_bytes,
        kernel: vmlinuz,
        initrd,
        cpio_bytes,
        agent_stripped,
        modules: included.into_iter().collect(),
        builtin: report_builtin,
        missing,
        drivers,
        firmware,
        firmware_missing,
        firmware_dir: opts.firmware.clone(),
        firmware_packing: packing,
        kernel_config,
        sizes,
        warnings,
    })
}

/// Counts the bytes written through it (the compressed image's size so far).
struct Counting<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
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
