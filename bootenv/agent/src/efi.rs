//! The firmware boot entry of a restored UEFI system, made as `efibootmgr --create` makes it.
//!
//! A UEFI machine boots an installed OS through a `Boot####` variable naming the OS loader on
//! the EFI system partition (ESP). Those variables live in the machine's NVRAM, not on the
//! disk: a replacement machine (or one whose NVRAM was reset) has none, and unless the ESP
//! also holds the removable-media fallback `\EFI\BOOT\BOOTX64.EFI` the restored disk does not
//! boot. After a restore on a machine that booted through UEFI the agent therefore:
//!
//! 1. finds the ESP in the restored partition table and the OS loader on it (read with the
//!    `fatfs` crate straight from the disk: `\EFI\<vendor>\shimx64.efi`, `grubx64.efi`,
//!    `systemd-bootx64.efi`, or `\EFI\Microsoft\Boot\bootmgfw.efi`); on a machine whose
//!    firmware enforces Secure Boot (`SecureBoot` variable) the restored system's
//!    `shimx64.efi` whenever the ESP has one, since only shim (signed by the CA in the
//!    firmware's key database) can start the distribution's signed GRUB and kernel; the entry
//!    carries a warning when Secure Boot is on and there is no shim;
//! 2. writes a `Boot####` load option (active, the vendor as description) whose device path is
//!    the disk's full path as the firmware sees it — `PciRoot/Pci/…` from sysfs, then
//!    `HD(partition, GPT signature)` and `File(\EFI\…)` — or the `HD()` short form when the
//!    controller is not one this module can describe; an identical existing entry is reused;
//! 3. puts it into `BootOrder` right after the entry the machine booted from (`BootCurrent`,
//!    its network boot: the machine keeps netbooting first, so Kura can still reach it, and
//!    falls through to the disk when Kura has no job for it), or first if that is unknown;
//! 4. sets `BootNext` to it, so the reboot that ends the restore starts the restored system.
//!
//! Variables are written through efivarfs (`/sys/firmware/efi/efivars`, mounted here): one
//! write of the 4-byte attributes followed by the data.

use anyhow::{bail, Context, Result};
use kura_imaging::layout::{gpt_types, DiskLayout, Partition, PartitionEntry};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// EFI_GLOBAL_VARIABLE: the vendor GUID of `Boot####`, `BootOrder`, `BootNext`, `BootCurrent`.
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const ATTRS: u32 = 0x7;
const LOAD_OPTION_ACTIVE: u32 = 0x1;
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// Whether this machine was booted through UEFI.
pub fn booted_uefi() -> bool {
    Path::new("/sys/firmware/efi").is_dir()
}

/// Whether the firmware enforces Secure Boot: its `SecureBoot` variable is 1. Firmware
/// without Secure Boot support has no such variable (off).
pub fn secure_boot_enabled(efivars: &Path) -> Result<bool> {
    Ok(read_var(efivars, "SecureBoot")?.is_some_and(|v| v.first() == Some(&1)))
}

/// What [`recreate_boot_entry`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub number: u16,
    pub description: String,
    pub loader: String,
    pub partition: u32,
    pub reused: bool,
    pub boot_order: Vec<u16>,
    /// The device path is the full one (not the `HD()` short form).
    pub full_path: bool,
    /// The firmware enforces Secure Boot (its `SecureBoot` variable is 1).
    pub secure_boot: bool,
    /// Why the firmware may refuse the loader (Secure Boot on, no shim on the ESP).
    pub warning: Option<String>,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let order: Vec<String> = self.boot_order.iter().map(|n| format!("{n:04X}")).collect();
        write!(
            f,
            "Boot{:04X} \"{}\" → {} on partition {} ({}{}); BootNext={:04X}; BootOrder={}; Secure Boot {}",
            self.number,
            self.description,
            self.loader,
            self.partition,
            if self.full_path { "full device path" } else { "HD() short form" },
            if self.reused { ", existing entry reused" } else { "" },
            self.number,
            order.join(","),
            if self.secure_boot { "on" } else { "off" }
        )?;
        match &self.warning {
            Some(w) => write!(f, "; warning: {w}"),
            None => Ok(()),
        }
    }
}

/// Makes the restored disk `dev` (`sys_block`: its `/sys/block/<name>`) bootable by the
/// firmware: see the module comment. `Ok(None)` when there is nothing to do (no ESP, or only
/// the removable-media fallback loader), with the reason.
pub fn recreate_boot_entry(
    dev: &Path,
    sys_block: &Path,
    layout: &DiskLayout,
    efivars: &Path,
) -> Result<std::result::Result<Entry, String>> {
    let esps: Vec<&Partition> = layout
        .partitions
        .iter()
        .filter(|p| matches!(&p.entry, PartitionEntry::Gpt { type_guid, .. } if type_guid == gpt_types::EFI_SYSTEM))
        .collect();
    let Some(esp) = esps.first() else {
        return Ok(Err("the restored disk has no EFI system partition".into()));
    };
    let PartitionEntry::Gpt { unique_guid, .. } = &esp.entry else { unreachable!("filtered above") };
    let file =
        File::open(dev).with_context(|| format!("opening {} to read its EFI system partition", dev.display()))?;
    let secure_boot = secure_boot_enabled(efivars)?;
    let loaders = esp_loaders(PartReader::new(file, esp.start, esp.size))
        .with_context(|| format!("reading the EFI system partition (partition {})", esp.number))?;
    let loader = match choose(&loaders, secure_boot) {
        Found::Loader(l) => l,
        Found::FallbackOnly => {
            return Ok(Err("the ESP holds only the removable-media loader \\EFI\\BOOT\\BOOTX64.EFI, \
                           which the firmware finds by itself"
                .into()))
        }
        Found::Nothing => return Ok(Err("no OS loader under \\EFI\\ on the EFI system partition".into())),
    };
    let ss = u64::from(layout.sector_size);
    let hd = hd_node(esp.number, esp.start / ss, esp.size / ss, &guid_bytes(unique_guid)?);
    let prefix = device_prefix(sys_block);
    let mut path = prefix.clone().unwrap_or_default();
    path.extend(hd);
    path.extend(file_node(&loader.path));
    path.extend(END_NODE);
    let option = load_option(&loader.description, &path);

    let existing = boot_entries(efivars)?;
    let (number, reused) = match existing.iter().find(|(_, data)| same_option(data, &option)) {
        Some((n, _)) => (*n, true),
        None => {
            let n =
                (0..=0xFFFFu16).find(|n| !existing.iter().any(|(e, _)| e == n)).context("no free Boot#### number")?;
            write_var(efivars, &format!("Boot{n:04X}"), &option)?;
            (n, false)
        }
    };
    let order = read_u16s(efivars, "BootOrder")?.unwrap_or_default();
    let current = read_u16s(efivars, "BootCurrent")?.and_then(|v| v.first().copied());
    let order = new_boot_order(&order, current, number);
    write_var(efivars, "BootOrder", &u16s(&order))?;
    write_var(efivars, "BootNext", &number.to_le_bytes())?;
    Ok(Ok(Entry {
        number,
        warning: secure_boot_warning(&loader, secure_boot),
        description: loader.description,
        loader: loader.path,
        partition: esp.number,
        reused,
        boot_order: order,
        full_path: prefix.is_some(),
        secure_boot,
    }))
}

/// `order` with `entry` right after `current` (when `current` is in it), else first; `entry`
/// appears once.
pub fn new_boot_order(order: &[u16], current: Option<u16>, entry: u16) -> Vec<u16> {
    let mut rest: Vec<u16> = order.iter().copied().filter(|n| *n != entry).collect();
    let at = current.and_then(|c| rest.iter().position(|n| *n == c)).map(|i| i + 1).unwrap_or(0);
    rest.insert(at, entry);
    rest
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Loader {
    /// `\EFI\vendor\file.efi`, with the case found on the disk.
    path: String,
    description: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Found {
    Loader(Loader),
    FallbackOnly,
    Nothing,
}

/// Loader file names in order of preference (shim first: it is what Secure Boot needs).
const LOADERS: &[&str] = &["shimx64.efi", "grubx64.efi", "systemd-bootx64.efi"];
/// Rank of `\EFI\Microsoft\Boot\bootmgfw.efi`: after every loader of [`LOADERS`].
const WINDOWS_RANK: usize = LOADERS.len();
/// Rank of the shim in [`LOADERS`].
const SHIM_RANK: usize = 0;

/// The OS loaders found on an ESP: `(rank, loader)` in the order of their vendor directories
/// (sorted by name), and whether the removable-media fallback is there.
#[derive(Debug, Default)]
struct EspLoaders {
    candidates: Vec<(usize, Loader)>,
    fallback: bool,
}

/// Which loader the boot entry names.
///
/// - Secure Boot on: the first `\EFI\<vendor>\shimx64.efi` when the ESP has one (shim is
///   signed by the CA the firmware trusts and verifies the distribution's GRUB and kernel);
///   else the same choice as with Secure Boot off.
/// - Secure Boot off: the best rank ([`LOADERS`] order, then Windows Boot Manager), ties to
///   the first vendor directory by name.
fn choose(esp: &EspLoaders, secure_boot: bool) -> Found {
    let shim = esp.candidates.iter().find(|(rank, _)| *rank == SHIM_RANK);
    let best = esp.candidates.iter().min_by_key(|(rank, _)| *rank);
    match (if secure_boot { shim.or(best) } else { best }, esp.fallback) {
        (Some((_, l)), _) => Found::Loader(l.clone()),
        (None, true) => Found::FallbackOnly,
        (None, false) => Found::Nothing,
    }
}

/// A warning for an entry that Secure Boot may refuse: neither shim nor Windows Boot Manager
/// (the loaders signed by the CAs of a stock key database).
fn secure_boot_warning(loader: &Loader, secure_boot: bool) -> Option<String> {
    let file = loader.path.rsplit('\\').next().unwrap_or_default();
    let trusted = file.eq_ignore_ascii_case(LOADERS[SHIM_RANK]) || file.eq_ignore_ascii_case("bootmgfw.efi");
    (secure_boot && !trusted).then(|| {
        format!(
            "Secure Boot is on and the ESP has no shimx64.efi: the firmware starts {} only if its \
             signing key is enrolled",
            loader.path
        )
    })
}

fn esp_loaders<S: Read + Write + Seek>(part: S) -> Result<EspLoaders> {
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).context("not a FAT filesystem")?;
    let root = fs.root_dir();
    let mut found = EspLoaders::default();
    let Some(efi) = subdir(&root, "EFI")? else { return Ok(found) };
    let mut vendors: Vec<String> = efi
        .iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.is_dir() && e.file_name() != "." && e.file_name() != "..")
        .map(|e| e.file_name())
        .collect();
    vendors.sort();
    for vendor in vendors {
        let dir = efi.open_dir(&vendor).with_context(|| format!("opening \\EFI\\{vendor}"))?;
        if vendor.eq_ignore_ascii_case("BOOT") {
            found.fallback |= file_in(&dir, "BOOTX64.EFI")?.is_some();
            continue;
        }
        if vendor.eq_ignore_ascii_case("Microsoft") {
            if let Some(boot) = subdir(&dir, "Boot")? {
                if let Some(name) = file_in(&boot, "bootmgfw.efi")? {
                    let path = format!("\\EFI\\{vendor}\\Boot\\{name}");
                    found.candidates.push((WINDOWS_RANK, Loader { path, description: "Windows Boot Manager".into() }));
                }
            }
            continue;
        }
        for (rank, want) in LOADERS.iter().enumerate() {
            if let Some(name) = file_in(&dir, want)? {
                let path = format!("\\EFI\\{vendor}\\{name}");
                found.candidates.push((rank, Loader { path, description: vendor.clone() }));
            }
        }
    }
    Ok(found)
}

type FatDir<'a, S> = fatfs::Dir<'a, S>;

fn subdir<'a, S: Read + Write + Seek>(dir: &FatDir<'a, S>, name: &str) -> Result<Option<FatDir<'a, S>>> {
    for e in dir.iter() {
        let e = e.context("reading a directory")?;
        if e.is_dir() && e.file_name().eq_ignore_ascii_case(name) {
            return Ok(Some(e.to_dir()));
        }
    }
    Ok(None)
}

/// The name (as stored) of file `name` in `dir`, compared without case as FAT does.
fn file_in<S: Read + Write + Seek>(dir: &FatDir<'_, S>, name: &str) -> Result<Option<String>> {
    for e in dir.iter() {
        let e = e.context("reading a directory")?;
        if e.is_file() && e.file_name().eq_ignore_ascii_case(name) {
            return Ok(Some(e.file_name()));
        }
    }
    Ok(None)
}

/// A partition of a disk as a stream; writes are refused (reading the ESP must not change it).
struct PartReader {
    file: File,
    start: u64,
    size: u64,
    pos: u64,
}

impl PartReader {
    fn new(file: File, start: u64, size: u64) -> PartReader {
        PartReader { file, start, size, pos: 0 }
    }
}

impl Read for PartReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for PartReader {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "the ESP is read only here"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for PartReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

// --- Device paths (UEFI 2.10, chapter 10) ---

const END_NODE: [u8; 4] = [0x7F, 0xFF, 0x04, 0x00];

fn node(kind: u8, sub: u8, body: &[u8]) -> Vec<u8> {
    let len = (4 + body.len()) as u16;
    let mut v = vec![kind, sub];
    v.extend(len.to_le_bytes());
    v.extend(body);
    v
}

/// Media / Hard Drive: a GPT partition by number, extent (LBAs) and unique GUID.
fn hd_node(number: u32, start_lba: u64, size_lba: u64, guid: &[u8; 16]) -> Vec<u8> {
    let mut b = Vec::with_capacity(38);
    b.extend(number.to_le_bytes());
    b.extend(start_lba.to_le_bytes());
    b.extend(size_lba.to_le_bytes());
    b.extend(guid);
    b.push(0x02); // partition format: GPT
    b.push(0x02); // signature type: GUID
    node(0x04, 0x01, &b)
}

/// Media / File Path: a NUL-terminated UCS-2 path.
fn file_node(path: &str) -> Vec<u8> {
    node(0x04, 0x04, &ucs2z(path))
}

fn ucs2z(s: &str) -> Vec<u8> {
    s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

/// EFI_LOAD_OPTION: attributes, path length, description, device path (no optional data).
fn load_option(description: &str, path: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(LOAD_OPTION_ACTIVE.to_le_bytes());
    v.extend((path.len() as u16).to_le_bytes());
    v.extend(ucs2z(description));
    v.extend(path);
    v
}

/// Two load options name the same thing (the active flag aside).
fn same_option(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.len() >= 4 && a[4..] == b[4..]
}

/// The on-disk (mixed-endian) bytes of a canonical GUID text.
fn guid_bytes(text: &str) -> Result<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        bail!("{text:?} is not a GUID");
    }
    let mut raw = [0u8; 16];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).with_context(|| format!("{text:?} is not a GUID"))?;
    }
    let mut out = raw;
    out[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    out[4..6].copy_from_slice(&[raw[5], raw[4]]);
    out[6..8].copy_from_slice(&[raw[7], raw[6]]);
    Ok(out)
}

/// The device-path nodes from the PCI root to the disk `sys_block` (`/sys/block/<name>`), as
/// the firmware names them; `None` for a controller this does not know (the caller then uses
/// the `HD()` short form, which firmware must also accept).
fn device_prefix(sys_block: &Path) -> Option<Vec<u8>> {
    let real = std::fs::canonicalize(sys_block).ok()?;
    let parts: Vec<String> = real.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let start = parts.iter().position(|p| p == "devices")? + 1;
    let mut out = Vec::new();
    let mut so_far = PathBuf::from("/");
    for p in &parts[..start] {
        so_far.push(p);
    }
    let mut i = start;
    while i < parts.len() {
        let p = &parts[i];
        so_far.push(p);
        if let Some(rest) = p.strip_prefix("pci") {
            // Root bridge `pciDDDD:BB`: ACPI(PNP0A03, UID).
            let bus = u32::from_str_radix(rest.split(':').nth(1)?, 16).ok()?;
            let uid = std::fs::read_to_string(so_far.join("firmware_node/uid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(bus);
            let mut b = 0x0A03_41D0u32.to_le_bytes().to_vec();
            b.extend(u32::to_le_bytes(uid));
            out.extend(node(0x02, 0x01, &b));
        } else if let Some((dev, func)) = pci_function(p) {
            out.extend(node(0x01, 0x01, &[func, dev]));
        } else if p.starts_with("virtio") {
            // virtio-blk: the disk is the PCI function itself.
        } else if p == "block" {
            return Some(out);
        } else if p == "nvme" {
            // .../nvme/nvme0/nvme0n1: NVMe namespace node.
            let ns = parts.last()?;
            let nsid: u32 = std::fs::read_to_string(sys_block.join("nsid")).ok()?.trim().parse().ok()?;
            let mut eui = [0u8; 8];
            if let Ok(t) = std::fs::read_to_string(sys_block.join("eui")) {
                for (k, h) in t.split_whitespace().take(8).enumerate() {
                    eui[k] = u8::from_str_radix(h, 16).ok()?;
                }
            }
            let _ = ns;
            let mut b = nsid.to_le_bytes().to_vec();
            b.extend(eui);
            out.extend(node(0x03, 0x17, &b));
            return Some(out);
        } else if let Some(n) = p.strip_prefix("ata").and_then(|n| n.parse::<u16>().ok()) {
            // AHCI: the port number (0-based) of ataN.
            let port: u16 = std::fs::read_to_string(so_far.join(format!("ata_port/ata{n}/port_no")))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(n);
            let mut b = port.saturating_sub(1).to_le_bytes().to_vec();
            b.extend(0xFFFFu16.to_le_bytes());
            b.extend(0u16.to_le_bytes());
            out.extend(node(0x03, 0x12, &b));
            // Skip host/target/lun directories down to `block`.
            while i < parts.len() && parts[i] != "block" {
                i += 1;
            }
            return (i < parts.len()).then_some(out);
        } else {
            return None;
        }
        i += 1;
    }
    None
}

/// `DDDD:BB:DD.F` → (device, function).
fn pci_function(p: &str) -> Option<(u8, u8)> {
    let mut it = p.split(':');
    let (domain, bus, devfn) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || domain.len() != 4 || bus.len() != 2 {
        return None;
    }
    let (dev, func) = devfn.split_once('.')?;
    Some((u8::from_str_radix(dev, 16).ok()?, u8::from_str_radix(func, 16).ok()?))
}

// --- efivarfs ---

fn var_path(efivars: &Path, name: &str) -> PathBuf {
    efivars.join(format!("{name}-{GLOBAL}"))
}

/// The data of a variable (without its attributes), `None` if it does not exist.
fn read_var(efivars: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    match std::fs::read(var_path(efivars, name)) {
        Ok(v) if v.len() >= 4 => Ok(Some(v[4..].to_vec())),
        Ok(_) => Ok(Some(Vec::new())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading EFI variable {name}")),
    }
}

fn read_u16s(efivars: &Path, name: &str) -> Result<Option<Vec<u16>>> {
    Ok(read_var(efivars, name)?.map(|d| d.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()))
}

fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// Writes a variable in one `write(2)`, as efivarfs requires.
fn write_var(efivars: &Path, name: &str, data: &[u8]) -> Result<()> {
    let mut buf = ATTRS.to_le_bytes().to_vec();
    buf.extend(data);
    let path = var_path(efivars, name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening EFI variable {name} for writing"))?;
    let n = f.write(&buf).with_context(|| format!("writing EFI variable {name}"))?;
    if n != buf.len() {
        bail!("writing EFI variable {name}: short write ({n} of {} bytes)", buf.len());
    }
    Ok(())
}

/// Every `Boot####` variable: number and data.
fn boot_entries(efivars: &Path) -> Result<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(efivars).with_context(|| format!("listing {}", efivars.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(var) = name.strip_suffix(&format!("-{GLOBAL}")) else { continue };
        let Some(hex) = var.strip_prefix("Boot").filter(|h| h.len() == 4) else { continue };
        let Ok(n) = u16::from_str_radix(hex, 16) else { continue };
        if let Some(data) = read_var(efivars, var)? {
            out.push((n, data));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_order_puts_the_entry_after_the_current_one() {
        assert_eq!(new_boot_order(&[1, 2, 3], Some(1), 7), [1, 7, 2, 3]);
        assert_eq!(new_boot_order(&[1, 2, 3], Some(3), 7), [1, 2, 3, 7]);
        assert_eq!(new_boot_order(&[1, 2, 3], None, 7), [7, 1, 2, 3]);
        assert_eq!(new_boot_order(&[1, 2, 3], Some(9), 7), [7, 1, 2, 3]);
        assert_eq!(new_boot_order(&[7, 1, 2], Some(1), 7), [1, 7, 2], "no duplicate");
        assert_eq!(new_boot_order(&[], None, 0), [0]);
    }

    #[test]
    fn load_option_bytes() {
        // HD(2,GPT,<guid>,0x800,0x1000)/File(\EFI\d\a.efi), as the UEFI spec lays it out.
        let guid = guid_bytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        assert_eq!(&guid[..8], &[0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11]);
        assert_eq!(&guid[8..], &[0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);
        let hd = hd_node(2, 0x800, 0x1000, &guid);
        assert_eq!(hd.len(), 42);
        assert_eq!(&hd[..4], &[4, 1, 42, 0]);
        assert_eq!(&hd[4..8], &2u32.to_le_bytes());
        assert_eq!(&hd[8..16], &0x800u64.to_le_bytes());
        assert_eq!(&hd[40..], &[2, 2]);
        let f = file_node("\\EFI\\d\\a.efi");
        assert_eq!(f.len(), 4 + 2 * 13);
        assert_eq!(&f[..4], &[4, 4, 30, 0]);
        assert_eq!(&f[4..6], &[b'\\', 0]);
        let mut path = hd.clone();
        path.extend(&f);
        path.extend(END_NODE);
        let opt = load_option("d", &path);
        assert_eq!(&opt[..4], &[1, 0, 0, 0]);
        assert_eq!(u16::from_le_bytes([opt[4], opt[5]]) as usize, path.len());
        assert_eq!(&opt[6..10], &[b'd', 0, 0, 0]);
        assert_eq!(&opt[10..], &path[..]);
        let mut inactive = opt.clone();
        inactive[0] = 0;
        assert!(same_option(&opt, &inactive));
        assert!(!same_option(&opt, &load_option("e", &path)));
    }

    /// A FAT image holding these files (`/`-separated paths), as an in-memory stream.
    fn esp_with(files: &[&str]) -> std::io::Cursor<Vec<u8>> {
        let mut img = std::io::Cursor::new(vec![0u8; 4 << 20]);
        fatfs::format_volume(&mut img, fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new()).unwrap();
            let root = fs.root_dir();
            for f in files {
                let (dir, name) = f.rsplit_once('/').unwrap();
                let mut d = root.clone();
                for part in dir.split('/') {
                    d = match d.open_dir(part) {
                        Ok(d) => d,
                        Err(_) => d.create_dir(part).unwrap(),
                    };
                }
                d.create_file(name).unwrap().write_all(b"MZ").unwrap();
            }
        }
        img.set_position(0);
        img
    }

    /// The loader path the entry names, with Secure Boot off and on.
    fn picks(files: &[&str]) -> (Found, Found) {
        let esp = esp_loaders(esp_with(files)).unwrap();
        (choose(&esp, false), choose(&esp, true))
    }

    fn loader(path: &str, description: &str) -> Found {
        Found::Loader(Loader { path: path.into(), description: description.into() })
    }

    #[test]
    fn secure_boot_picks_the_shim_of_the_restored_system() {
        // Debian's layout: shim, GRUB, MokManager, fallback in its directory; shim also as
        // the removable-media loader.
        let debian = [
            "EFI/debian/shimx64.efi",
            "EFI/debian/grubx64.efi",
            "EFI/debian/mmx64.efi",
            "EFI/debian/fbx64.efi",
            "EFI/BOOT/BOOTX64.EFI",
            "EFI/BOOT/grubx64.efi",
        ];
        let shim = loader("\\EFI\\debian\\shimx64.efi", "debian");
        assert_eq!(picks(&debian), (shim, loader("\\EFI\\debian\\shimx64.efi", "debian")));
        // A shim in a later vendor directory than a plain GRUB, and beside Windows.
        let mixed = [
            "EFI/alpha/grubx64.efi",
            "EFI/Microsoft/Boot/bootmgfw.efi",
            "EFI/ubuntu/SHIMX64.EFI",
            "EFI/ubuntu/grubx64.efi",
        ];
        let (off, on) = picks(&mixed);
        assert_eq!(on, loader("\\EFI\\ubuntu\\SHIMX64.EFI", "ubuntu"), "the case found on the disk is kept");
        assert_eq!(off, on, "shim ranks first with Secure Boot off too");
    }

    #[test]
    fn without_a_shim_the_entry_is_the_loader_of_today() {
        let (off, on) = picks(&["EFI/kura/grubx64.efi"]);
        assert_eq!(off, loader("\\EFI\\kura\\grubx64.efi", "kura"));
        assert_eq!(on, off);
        let (off, on) = picks(&["EFI/systemd/systemd-bootx64.efi", "EFI/Microsoft/Boot/bootmgfw.efi"]);
        assert_eq!(off, loader("\\EFI\\systemd\\systemd-bootx64.efi", "systemd"));
        assert_eq!(on, off);
        let (off, on) = picks(&["EFI/Microsoft/Boot/bootmgfw.efi"]);
        assert_eq!(off, loader("\\EFI\\Microsoft\\Boot\\bootmgfw.efi", "Windows Boot Manager"));
        assert_eq!(on, off);
        // Only the removable-media loader (a shim there does not count: the firmware finds it).
        assert_eq!(
            picks(&["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi"]),
            (Found::FallbackOnly, Found::FallbackOnly)
        );
        assert_eq!(picks(&["EFI/empty/readme.txt"]), (Found::Nothing, Found::Nothing));
        assert_eq!(picks(&["boot/x.txt"]), (Found::Nothing, Found::Nothing));
    }

    #[test]
    fn secure_boot_warns_when_the_loader_is_not_shim_or_windows() {
        let l = |p: &str| Loader { path: p.into(), description: "x".into() };
        let grub = l("\\EFI\\kura\\grubx64.efi");
        let w = secure_boot_warning(&grub, true).expect("a warning");
        assert!(w.contains("no shimx64.efi") && w.contains("\\EFI\\kura\\grubx64.efi"), "{w}");
        assert_eq!(secure_boot_warning(&grub, false), None);
        assert_eq!(secure_boot_warning(&l("\\EFI\\debian\\ShimX64.efi"), true), None);
        assert_eq!(secure_boot_warning(&l("\\EFI\\Microsoft\\Boot\\bootmgfw.efi"), true), None);
    }

    #[test]
    fn secure_boot_state_comes_from_the_firmware_variable() {
        let d = tempfile::tempdir().unwrap();
        assert!(!secure_boot_enabled(d.path()).unwrap(), "no variable: firmware without Secure Boot");
        // SecureBoot is volatile and read only (BOOTSERVICE | RUNTIME = 6): as efivarfs shows it.
        let write = |v: u8| std::fs::write(var_path(d.path(), "SecureBoot"), [6, 0, 0, 0, v]).unwrap();
        write(0);
        assert!(!secure_boot_enabled(d.path()).unwrap());
        write(1);
        assert!(secure_boot_enabled(d.path()).unwrap());
    }

    #[test]
    fn pci_names() {
        assert_eq!(pci_function("0000:00:1f.2"), Some((0x1f, 2)));
        assert_eq!(pci_function("0000:03:00.0"), Some((0, 0)));
        assert_eq!(pci_function("virtio2"), None);
        assert_eq!(pci_function("pci0000:00"), None);
    }

    #[test]
    fn variables_round_trip_through_a_directory() {
        let d = tempfile::tempdir().unwrap();
        write_var(d.path(), "BootOrder", &u16s(&[3, 1])).unwrap();
        write_var(d.path(), "Boot0003", &load_option("x", &END_NODE)).unwrap();
        assert_eq!(read_u16s(d.path(), "BootOrder").unwrap(), Some(vec![3, 1]));
        assert_eq!(read_u16s(d.path(), "BootNext").unwrap(), None);
        let raw = std::fs::read(var_path(d.path(), "BootOrder")).unwrap();
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        let entries = boot_entries(d.path()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, 3);
    }
}
