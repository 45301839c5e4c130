//! Boot tests: a snapshot's disk booted in a throwaway QEMU machine, to know before an outage
//! that the image boots.
//!
//! Nothing is restored and nothing is written to the store: the snapshot is exported read-only
//! over NBD on a private Unix socket (the same export as `kura nbd`, chunks fetched lazily
//! through a bounded cache), and the machine's disk is a qcow2 overlay on that export in a
//! scratch directory, deleted afterwards. The machine has no network. Its firmware is SeaBIOS
//! or OVMF as the snapshot's layout says (an ESP without a BIOS boot partition: UEFI; see
//! [`uefi`] for how the loader is found without the server's NVRAM), its disk virtio (SATA for
//! a Windows-looking layout, which has no virtio driver by default).
//!
//! A snapshot set (a host's several disks) boots the same way with every disk attached, each
//! through its own export and overlay: its boot disk ([`boot_disk`]) first, the firmware and
//! disk controller chosen for that disk.
//!
//! The verdict comes from the serial console ([`console`]): passed when userspace is reached
//! (a login prompt, systemd's targets, or a text the operator names); failed at once when the
//! console shows a failure (no bootable device, GRUB's rescue shell, a kernel panic), when
//! the console stays silent for the stall time, when the machine stops, or at the time limit.
//! A screenshot (QMP `screendump`, PNG) is taken at the end either way: the screen at the
//! verdict while the machine runs, else (it stopped, e.g. powered off right after printing
//! its banner) the last of the screens taken every [`SCREEN_EVERY`] during the test.
//!
//! A Windows-looking disk (NTFS with Microsoft's reserved partition: its system prints nothing
//! on a serial console) may also pass by its screen ([`screen`]): the same graphical screen —
//! a logon screen or desktop, not a text, black or stop-error screen — seen
//! [`screen::STABLE_LOOKS`] times in a row, [`SCREEN_EVERY`] apart.

pub mod console;
pub mod engine;
pub mod screen;
pub mod uefi;

use crate::nbd::{self, Listener};
use crate::snapshot_disk::SnapshotDisk;
use anyhow::{bail, Context, Result};
use console::Stage;
use kura_imaging::fs::FsKind;
use kura_imaging::layout::{gpt_types, PartitionEntry, Scheme};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
/// Starts QEMU with a parent-death signal (util-linux, part of every Debian system).
const SETPRIV: &str = "setpriv";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Console bytes read per look (the end of the log): a guest printing in a loop cannot make
/// the reader hold more.
const CONSOLE_WINDOW: u64 = 1 << 20;
/// How often the screen is saved while the test runs (for a machine that stops by itself).
pub const SCREEN_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Auto,
    Bios,
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    Auto,
    Virtio,
    Sata,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub firmware: Firmware,
    pub accel: Accel,
    pub disk_bus: DiskBus,
    /// The whole test's time limit.
    pub timeout: Duration,
    /// Longest the console may stay silent before userspace.
    pub stall: Duration,
    /// Console texts that also mean "userspace reached".
    pub expect: Vec<String>,
    pub memory_mib: u32,
    /// Where to keep the screenshot (PNG); none: not kept.
    pub screenshot: Option<PathBuf>,
    /// Parent of the scratch directory (overlay, console log, sockets).
    pub work_parent: PathBuf,
}

/// The result of one boot test.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub snapshot: String,
    pub passed: bool,
    /// How far the boot got.
    pub stage: Stage,
    /// Why it passed or failed, in one line.
    pub reason: String,
    pub firmware: &'static str,
    pub accel: &'static str,
    pub disk_bus: &'static str,
    /// The ESP loader a UEFI test started through the helper disk, if one was needed.
    pub loader: Option<String>,
    /// Seconds from the machine's start to the verdict.
    pub seconds: f64,
    pub console_tail: Vec<String>,
    pub screenshot: Option<String>,
    /// Chunks and their stored bytes fetched from the store or engine for this test.
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
    pub disk_size: u64,
    /// For a snapshot set: the disk booted (its own snapshot id), and how many were attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_disk: Option<String>,
    pub disks: usize,
}

/// The disk of a set to boot (index into `manifests`, the set's order): the first whose layout
/// has an EFI system partition (GPT type, or MBR type 0xEF), else the first with a BIOS boot
/// partition (GPT) or an MBR partition marked bootable, else the first disk.
pub fn boot_disk(manifests: &[&kura_imaging::manifest::Manifest]) -> usize {
    let esp = |e: &PartitionEntry| match e {
        PartitionEntry::Gpt { type_guid, .. } => type_guid.eq_ignore_ascii_case(gpt_types::EFI_SYSTEM),
        PartitionEntry::Mbr { type_byte, .. } => *type_byte == 0xef,
    };
    let legacy = |e: &PartitionEntry| match e {
        PartitionEntry::Gpt { type_guid, .. } => type_guid.eq_ignore_ascii_case(gpt_types::BIOS_BOOT),
        PartitionEntry::Mbr { bootable, .. } => *bootable,
    };
    let first = |f: &dyn Fn(&PartitionEntry) -> bool| {
        manifests.iter().position(|m| m.layout.partitions.iter().any(|p| f(&p.entry)))
    };
    first(&esp).or_else(|| first(&legacy)).unwrap_or(0)
}

/// The firmware the snapshot's layout asks for: BIOS for MBR or a GPT with a BIOS boot
/// partition, UEFI for a GPT with an ESP and no BIOS boot partition.
pub fn firmware_for(disk: &SnapshotDisk) -> Firmware {
    let layout = &disk.manifest().layout;
    let has = |t: &str| {
        layout
            .partitions
            .iter()
            .any(|p| matches!(&p.entry, PartitionEntry::Gpt { type_guid, .. } if type_guid.eq_ignore_ascii_case(t)))
    };
    if layout.scheme == Scheme::Gpt && has(gpt_types::EFI_SYSTEM) && !has(gpt_types::BIOS_BOOT) {
        Firmware::Uefi
    } else {
        Firmware::Bios
    }
}

/// SATA when the layout looks like Windows (NTFS or a Microsoft reserved partition), else
/// virtio.
fn disk_bus_for(disk: &SnapshotDisk) -> DiskBus {
    let m = disk.manifest();
    let windows = m.regions.iter().any(|r| r.fs == FsKind::Ntfs && r.partition.is_some())
        && m.layout.partitions.iter().any(|p| {
            matches!(&p.entry, PartitionEntry::Gpt { type_guid, .. } if type_guid.eq_ignore_ascii_case(gpt_types::MS_RESERVED))
        });
    if windows {
        DiskBus::Sata
    } else {
        DiskBus::Virtio
    }
}

/// KVM when this machine has usable hardware KVM, else TCG (and why).
pub fn detect_accel() -> (Accel, &'static str) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm");
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return (Accel::Tcg, "/dev/kvm is the nested paravirtual kvm_pvm, too slow for unmodified guests");
    }
    if !Path::new("/sys/module/kvm_intel").exists() && !Path::new("/sys/module/kvm_amd").exists() {
        return (Accel::Tcg, "neither kvm_intel nor kvm_amd is loaded");
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return (Accel::Tcg, "/dev/kvm cannot be opened");
    }
    (Accel::Kvm, "hardware KVM")
}

/// QEMU, killed when dropped.
struct Machine(Child);

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `disk` and returns the verdict. Errors are for a test that could not run (QEMU or
/// OVMF missing, no scratch space), not for a disk that does not boot.
pub fn run(disk: Arc<SnapshotDisk>, opts: &Options) -> Result<Verdict> {
    let id = disk.id().to_string();
    run_disks(&id, vec![disk], opts, false)
}

/// Boots snapshot set `id` (its disks in the set's order): the [`boot_disk`] first, the others
/// attached after it.
pub fn run_set(id: &str, disks: Vec<Arc<SnapshotDisk>>, opts: &Options) -> Result<Verdict> {
    run_disks(id, disks, opts, true)
}

fn run_disks(id: &str, mut disks: Vec<Arc<SnapshotDisk>>, opts: &Options, is_set: bool) -> Result<Verdict> {
    anyhow::ensure!(!disks.is_empty(), "snapshot {id} has no disk to boot");
    let manifests: Vec<&kura_imaging::manifest::Manifest> = disks.iter().map(|d| d.manifest()).collect();
    let boot = boot_disk(&manifests);
    let first = disks.remove(boot);
    disks.insert(0, first);
    let disk = disks[0].clone();
    if Command::new(QEMU).arg("--version").output().is_err() {
        bail!("cannot run {QEMU}: apt-get install -y qemu-system-x86");
    }
    let work = tempfile::Builder::new()
        .prefix("kura-boot-test.")
        .tempdir_in(&opts.work_parent)
        .with_context(|| format!("creating a scratch directory in {}", opts.work_parent.display()))?;
    let w = work.path();
    let firmware = match opts.firmware {
        Firmware::Auto => firmware_for(&disk),
        f => f,
    };
    let bus = match opts.disk_bus {
        DiskBus::Auto => disk_bus_for(&disk),
        b => b,
    };
    let accel = match opts.accel {
        Accel::Auto => detect_accel().0,
        a => a,
    };

    // Each disk's export and overlay: the machine writes only into the overlays.
    let mut overlays = Vec::new();
    for (k, d) in disks.iter().enumerate() {
        let sock = w.join(format!("nbd{k}.sock"));
        let listener = UnixListener::bind(&sock).with_context(|| format!("listening on {}", sock.display()))?;
        let export = d.clone();
        std::thread::spawn(move || nbd::serve(Listener::Unix(listener), export));
        let overlay = w.join(format!("overlay{k}.qcow2"));
        uefi::tool(
            "qemu-img",
            "qemu-utils",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                &format!("nbd+unix:///?socket={}", sock.display()),
                overlay.to_str().context("scratch path is not UTF-8")?,
                &d.size().to_string(),
            ],
        )?;
        overlays.push(overlay);
    }

    let mut loader = None;
    let mut helper = None;
    if firmware == Firmware::Uefi {
        for f in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(f).is_file() {
                bail!("{f} is missing: apt-get install -y ovmf");
            }
        }
        std::fs::copy(OVMF_VARS, w.join("vars.fd"))?;
        match uefi::find_loader(&disk)? {
            Some(l) if l == uefi::REMOVABLE => loader = Some(l),
            Some(l) => {
                helper = Some(uefi::helper_disk(w, &l)?);
                loader = Some(l);
            }
            None => {}
        }
    }

    let serial = w.join("console.log");
    let qmp = w.join("qmp.sock");
    let mut args: Vec<String> = vec![
        "-machine".into(),
        "q35".into(),
        "-accel".into(),
        (if accel == Accel::Kvm { "kvm" } else { "tcg" }).into(),
        "-m".into(),
        opts.memory_mib.to_string(),
        "-smp".into(),
        "2".into(),
        // No window; the serial console to a file (SeaBIOS prints there too with -nographic);
        // the VGA device stays for the screenshot.
        "-nographic".into(),
        "-vga".into(),
        "std".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
        "-nic".into(),
        "none".into(),
        "-no-reboot".into(),
    ];
    if firmware == Firmware::Uefi {
        args.push("-drive".into());
        args.push(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"));
        args.push("-drive".into());
        args.push(format!("if=pflash,format=raw,unit=1,file={}", w.join("vars.fd").display()));
    }
    let device = |i: usize| match bus {
        DiskBus::Sata => format!("ide-hd,drive=d{i}"),
        _ => format!("virtio-blk-pci,drive=d{i}"),
    };
    let mut drives = Vec::new();
    if let Some(h) = &helper {
        drives.push((h.clone(), "raw"));
    }
    drives.extend(overlays.iter().map(|o| (o.clone(), "qcow2")));
    for (i, (path, format)) in drives.iter().enumerate() {
        args.push("-drive".into());
        args.push(format!("file={},format={format},if=none,id=d{i}", path.display()));
        args.push("-device".into());
        args.push(format!("{},bootindex={}", device(i), i + 1));
    }
    std::fs::write(w.join("command"), format!("{QEMU} {}\n", args.join(" ")))?;
    let started = Instant::now();
    // An engine killed mid-test (`kill -9`, a crash) takes its test machine with it: QEMU is
    // started through util-linux's `setpriv --pdeathsig KILL`, so the kernel kills it when the
    // thread that started it ends. That thread runs this function until `machine` is dropped,
    // so it never ends first otherwise.
    let mut qemu = Command::new(SETPRIV);
    qemu.args(["--pdeathsig", "KILL", "--", QEMU])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(w.join("qemu.stderr"))?);
    let mut machine = Machine(qemu.spawn().with_context(|| format!("starting {QEMU} through {SETPRIV} (util-linux)"))?);

    // Watch the console.
    let mut last_len = 0u64;
    let mut last_change = Instant::now();
    let png = w.join("screen.png");
    let mut last_screen = Instant::now();
    // A Windows-looking disk may pass by its screen (module docs): alike graphical looks in a row.
    let watch_screen = bus == DiskBus::Sata;
    let (mut alike, mut last_look) = (0u32, None);
    let (passed, reason, stage) = loop {
        std::thread::sleep(Duration::from_millis(250));
        if (opts.screenshot.is_some() || watch_screen) && last_screen.elapsed() >= SCREEN_EVERY {
            // Written aside, then renamed: a machine stopping mid-dump leaves the last good one.
            last_screen = Instant::now();
            let next = w.join("screen.next.png");
            if qmp_command(&qmp, "screendump", serde_json::json!({ "filename": next, "format": "png" })).is_ok()
                && std::fs::rename(&next, &png).is_ok()
                && watch_screen
            {
                match screen::look_at(&png) {
                    Ok(l) if l.graphical() => {
                        alike = if last_look == Some(l.hash) { alike + 1 } else { 1 };
                        last_look = Some(l.hash);
                    }
                    Ok(_) => (alike, last_look) = (0, None),
                    Err(e) => tracing::warn!("boot test: reading the screen: {e:#}"),
                }
            }
        }
        let text = read_console(&serial)?;
        let reading = console::read(&text, &opts.expect);
        let len = std::fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
        if len != last_len {
            last_len = len;
            last_change = Instant::now();
        }
        if reading.stage == Stage::Userspace {
            break (true, "userspace reached".to_string(), reading.stage);
        }
        if let Some(line) = reading.failure {
            break (false, format!("the console says: {line}"), reading.stage);
        }
        if alike >= screen::STABLE_LOOKS {
            let held = SCREEN_EVERY * (screen::STABLE_LOOKS - 1);
            break (true, format!("a graphical logon screen or desktop, unchanged for {held:?}"), Stage::Userspace);
        }
        if let Some(status) = machine.0.try_wait()? {
            let err = std::fs::read_to_string(w.join("qemu.stderr")).unwrap_or_default();
            break (
                false,
                format!("the machine stopped ({status}) after the {} stage {}", reading.stage.name(), err.trim())
                    .trim()
                    .to_string(),
                reading.stage,
            );
        }
        if last_change.elapsed() >= opts.stall {
            let what = match reading.stage {
                Stage::Nothing | Stage::Firmware => "no boot loader ran",
                Stage::BootLoader => "the boot loader did not start a kernel",
                _ => "the system did not reach userspace",
            };
            break (
                false,
                format!(
                    "{what}: the console stayed silent for {:?} after the {} stage",
                    opts.stall,
                    reading.stage.name()
                ),
                reading.stage,
            );
        }
        if started.elapsed() >= opts.timeout {
            break (
                false,
                format!("time limit {:?} reached at the {} stage", opts.timeout, reading.stage.name()),
                reading.stage,
            );
        }
    };
    let seconds = started.elapsed().as_secs_f64();

    // The screen as it is now if the machine still runs, else the last one saved.
    let mut screenshot = None;
    let running = machine.0.try_wait()?.is_none();
    let now_shot = running && {
        let next = w.join("screen.next.png");
        let ok = qmp_command(&qmp, "screendump", serde_json::json!({ "filename": next, "format": "png" })).is_ok();
        ok && std::fs::rename(&next, &png).is_ok()
    };
    if let (Some(keep), true) = (&opts.screenshot, now_shot || png.exists()) {
        std::fs::copy(&png, keep).with_context(|| format!("keeping the screenshot as {}", keep.display()))?;
        screenshot = Some(keep.display().to_string());
    }
    if running {
        let _ = qmp_command(&qmp, "quit", serde_json::json!({}));
    }
    drop(machine);
    let text = read_console(&serial)?;
    let (fetched_chunks, fetched_bytes) =
        disks.iter().map(|d| d.stats()).fold((0, 0), |(c, b), s| (c + s.chunks, b + s.bytes));
    Ok(Verdict {
        snapshot: id.to_string(),
        passed,
        stage,
        reason,
        firmware: if firmware == Firmware::Uefi { "uefi" } else { "bios" },
        accel: if accel == Accel::Kvm { "kvm" } else { "tcg" },
        disk_bus: if bus == DiskBus::Sata { "sata" } else { "virtio" },
        loader,
        seconds,
        console_tail: console::tail(&text, 20),
        screenshot,
        fetched_chunks,
        fetched_bytes,
        disk_size: disk.size(),
        boot_disk: is_set.then(|| disk.id().to_string()),
        disks: disks.len(),
    })
}

/// The end of the console log (at most [`CONSOLE_WINDOW`] bytes), as text.
fn read_console(path: &Path) -> Result<String> {
    let Ok(mut f) = std::fs::File::open(path) else { return Ok(String::new()) };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_WINDOW)))?;
    let mut buf = Vec::new();
    f.take(CONSOLE_WINDOW).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// One QMP command on a fresh connection (greeting, capabilities, the command); its reply.
fn qmp_command(sock: &Path, command: &str, arguments: serde_json::Value) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(sock).with_context(|| format!("connecting to QMP at {}", sock.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    for msg in [
        serde_json::json!({ "execute": "qmp_capabilities" }),
        serde_json::json!({ "execute": command, "arguments": arguments }),
    ] {
        writeln!(writer, "{msg}")?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("QMP closed the connection");
            }
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if let Some(e) = v.get("error") {
                bail!("QMP {command}: {e}");
            }
            if v.get("return").is_some() {
                if msg["execute"] == command {
                    return Ok(v["return"].clone());
                }
                break;
            }
        }
    }
    bail!("QMP gave no reply")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_imaging::layout::{DiskLayout, Partition};
    use kura_imaging::manifest::Manifest;

    fn disk(scheme: Scheme, entries: Vec<PartitionEntry>) -> Manifest {
        let partitions = entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| Partition { number: i as u32 + 1, start: (i as u64 + 1) << 20, size: 1 << 20, entry })
            .collect();
        Manifest {
            name: None,
            created: "2026-12-07T03:00:00Z".into(),
            source: "/dev/sdx".into(),
            host: None,
            chunk_size: 1 << 20,
            layout: DiskLayout {
                disk_size: 64 << 20,
                sector_size: 512,
                scheme,
                gpt: None,
                partitions,
                warnings: vec![],
            },
            regions: vec![],
        }
    }

    fn gpt(type_guid: &str) -> PartitionEntry {
        PartitionEntry::Gpt {
            type_guid: type_guid.into(),
            unique_guid: String::new(),
            name: String::new(),
            attributes: 0,
        }
    }

    fn mbr(type_byte: u8, bootable: bool) -> PartitionEntry {
        PartitionEntry::Mbr { type_byte, bootable, logical: false }
    }

    #[test]
    fn the_boot_disk_of_a_set_is_the_first_with_an_esp_then_a_legacy_boot_mark() {
        let data = disk(Scheme::Gpt, vec![gpt(gpt_types::LINUX_FS)]);
        let esp = disk(Scheme::Gpt, vec![gpt(gpt_types::EFI_SYSTEM), gpt(gpt_types::LINUX_FS)]);
        let bios_boot = disk(Scheme::Gpt, vec![gpt(gpt_types::BIOS_BOOT), gpt(gpt_types::LINUX_FS)]);
        let mbr_active = disk(Scheme::Mbr, vec![mbr(0x83, true)]);
        let mbr_esp = disk(Scheme::Mbr, vec![mbr(0x83, false), mbr(0xef, false)]);
        let mbr_plain = disk(Scheme::Mbr, vec![mbr(0x83, false)]);
        assert_eq!(boot_disk(&[&data, &esp]), 1);
        assert_eq!(boot_disk(&[&bios_boot, &data, &esp]), 2, "an ESP wins over a BIOS boot partition");
        assert_eq!(boot_disk(&[&data, &bios_boot]), 1);
        assert_eq!(boot_disk(&[&mbr_plain, &mbr_active]), 1);
        assert_eq!(boot_disk(&[&mbr_active, &mbr_esp]), 1, "MBR type 0xEF is an ESP");
        assert_eq!(boot_disk(&[&data, &mbr_plain]), 0, "nothing marked: the first disk");
        assert_eq!(boot_disk(&[&esp, &esp]), 0, "the first of equals");
    }
}
