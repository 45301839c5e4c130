//! QEMU test machines on a [`Netns`]'s bridge.
//!
//! A [`Machine`] is one `qemu-system-x86_64` process started inside the namespace, its NIC on a
//! tap of the bridge, its serial console written to a file that tests poll
//! ([`Machine::wait_for_serial`]), a QMP socket for poking it ([`Machine::qmp`]). It is killed
//! on drop. Power-off shows as the process exiting ([`Machine::wait_for_exit`]).
//!
//! ```no_run
//! # use kura_tests::{netns::Netns, qemu::{Firmware, Machine}};
//! # use std::time::Duration;
//! let ns = Netns::new();
//! let mut m = Machine::builder(&ns, "pxe").firmware(Firmware::Uefi).network_boot().start();
//! m.wait_for_serial("PXE", Duration::from_secs(120));
//! ```
//!
//! Acceleration: KVM only where it really works. [`accel`] picks TCG when there is no
//! `/dev/kvm`, when the KVM module is the nested paravirtual `kvm_pvm` (unmodified guests crawl
//! on it), or when `/dev/kvm` cannot be opened; `KURA_TEST_ACCEL=tcg|kvm` overrides. Under TCG
//! everything is 10–50× slower than on hardware: give boots minutes, not seconds.
//!
//! Needs the packages qemu-system-x86 (with ipxe-qemu, the NIC boot ROMs, and seabios), and
//! ovmf for UEFI machines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::{read_lossy, Netns, NsProcess};

const QEMU: &str = "qemu-system-x86_64";
/// OVMF's code (read-only) and the variable store template copied for each machine.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// The Secure Boot build of OVMF and a variable store with Microsoft's keys enrolled.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE.secboot.fd";
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS.ms.fd";

static NEXT_MAC: AtomicU32 = AtomicU32::new(0);

/// How QEMU runs guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator every machine of this test process uses (detected once, reason printed).
pub fn accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        let (accel, why) = detect_accel();
        eprintln!("qemu: using {} ({why})", accel.arg());
        accel
    })
}

fn detect_accel() -> (Accel, &'static str) {
    match std::env::var("KURA_TEST_ACCEL").as_deref() {
        Ok("tcg") => return (Accel::Tcg, "KURA_TEST_ACCEL=tcg"),
        Ok("kvm") => return (Accel::Kvm, "KURA_TEST_ACCEL=kvm"),
        _ => {}
    }
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

/// The machine's firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default: legacy PXE through the NIC's iPXE option ROM.
    Bios,
    /// OVMF from the ovmf package, with a fresh copy of its variable store per machine.
    Uefi,
    /// OVMF built for Secure Boot, with Microsoft's keys enrolled and Secure Boot enforced
    /// (`OVMF_CODE.secboot.fd` + `OVMF_VARS.ms.fd`; q35 with SMM, the variable store
    /// writable only from SMM).
    UefiSecureBoot,
}

impl Firmware {
    pub fn is_uefi(self) -> bool {
        matches!(self, Firmware::Uefi | Firmware::UefiSecureBoot)
    }

    /// The firmware code and the variable store template.
    pub fn ovmf(self) -> (&'static str, &'static str) {
        match self {
            Firmware::UefiSecureBoot => (OVMF_CODE_SECBOOT, OVMF_VARS_MS),
            _ => (OVMF_CODE, OVMF_VARS),
        }
    }
}

/// The NIC model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nic {
    VirtioNet,
    E1000,
    /// Intel 82574L (Linux: e1000e).
    E1000e,
    /// VMware VMXNET3 (Linux: vmxnet3).
    Vmxnet3,
    /// Realtek RTL8139C+ (Linux: 8139cp, else 8139too).
    Rtl8139,
}

impl Nic {
    /// QEMU's device name.
    pub fn device(self) -> &'static str {
        match self {
            Nic::VirtioNet => "virtio-net-pci",
            Nic::E1000 => "e1000",
            Nic::E1000e => "e1000e",
            Nic::Vmxnet3 => "vmxnet3",
            Nic::Rtl8139 => "rtl8139",
        }
    }
}

/// The NIC's option ROM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicRom {
    /// QEMU's default: iPXE from the ipxe-qemu package (a legacy and an EFI driver).
    Default,
    /// None (`romfile=`): OVMF uses its own NIC driver and PXE; SeaBIOS cannot netboot.
    Disabled,
    /// This ROM file.
    File(PathBuf),
}

/// How a disk is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk (`/dev/vdX` in Linux).
    Virtio,
    /// SATA on the q35 AHCI controller (`/dev/sdX`).
    Sata,
    /// A disk on a storage controller of its own (one controller per disk).
    Controller(Hba),
}

/// Storage controllers QEMU emulates, each the stand-in for a family of real server HBAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hba {
    /// LSI MegaRAID SAS 2108 (Linux: megaraid_sas); `/dev/sdX`.
    MegasasGen2,
    /// LSI SAS1068 (Linux: mptsas); `/dev/sdX`.
    Mptsas1068,
    /// LSI 53C895A (Linux: sym53c8xx); `/dev/sdX`.
    Lsi53c895a,
    /// VMware PVSCSI (Linux: vmw_pvscsi); `/dev/sdX`.
    Pvscsi,
    /// NVMe (Linux: nvme); `/dev/nvmeXn1`.
    Nvme,
    /// An Intel ICH9 AHCI controller of its own (Linux: ahci); `/dev/sdX`.
    Ich9Ahci,
}

impl Hba {
    /// QEMU's device name.
    pub fn device(self) -> &'static str {
        match self {
            Hba::MegasasGen2 => "megasas-gen2",
            Hba::Mptsas1068 => "mptsas1068",
            Hba::Lsi53c895a => "lsi53c895a",
            Hba::Pvscsi => "pvscsi",
            Hba::Nvme => "nvme",
            Hba::Ich9Ahci => "ich9-ahci",
        }
    }

    /// The `-device` arguments for drive `d{i}` behind this controller.
    fn devices(self, i: usize) -> Vec<String> {
        match self {
            Hba::Nvme => vec![format!("nvme,drive=d{i},serial=kura-nvme-{i}")],
            Hba::Ich9Ahci => vec![format!("ich9-ahci,id=hba{i}"), format!("ide-hd,drive=d{i},bus=hba{i}.0")],
            // A SAS disk has a SAS address (its WWN), as every real one does. QEMU's scsi-hd
            // defaults to `wwn=0`, and its mptsas reports that as the disk's SASAddress in SAS
            // Device Page 0 (hw/scsi/mptconfig.c `mptsas_config_sas_device_0`); Linux's mptsas
            // forms no port for an attached address of 0 (`mptsas_setup_wide_ports`: `if
            // (!sas_address) continue;`), so no end device and no disk ever appear.
            Hba::Mptsas1068 => vec![
                format!("mptsas1068,id=hba{i}"),
                format!("scsi-hd,drive=d{i},bus=hba{i}.0,wwn=0x5000c50015ea{i:04x}"),
            ],
            scsi => vec![format!("{},id=hba{i}", scsi.device()), format!("scsi-hd,drive=d{i},bus=hba{i}.0")],
        }
    }
}

/// What the firmware boots first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// The NIC first (PXE), then the disks (like `-boot n`, done with `bootindex` so SeaBIOS
    /// and OVMF both honour it).
    Network,
    /// The disks first, then the NIC.
    Disk,
    /// No `bootindex` at all: UEFI keeps the `BootOrder` in its variable store across power-ons
    /// (as server firmware does) instead of OVMF rebuilding it from QEMU's boot indexes at
    /// every boot. With fresh variables OVMF orders the disks before the NIC's entries.
    Firmware,
}

/// A kernel started by QEMU itself, without firmware boot (`-kernel -initrd -append`).
#[derive(Clone, Debug)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

/// What to start a [`Machine`] with. Defaults: q35, BIOS, 256 MiB, one virtio-net NIC on
/// `tap0` with the default ROM and a unique `52:54:00:…` MAC, disks first, rebooting allowed.
pub struct MachineBuilder<'a> {
    ns: &'a Netns,
    name: String,
    machine: String,
    firmware: Firmware,
    memory_mib: u32,
    tap: String,
    nic: Nic,
    nic_rom: NicRom,
    mac: String,
    disks: Vec<(PathBuf, DiskBus)>,
    boot: Boot,
    direct: Option<DirectBoot>,
    no_reboot: bool,
    uefi_vars: Option<PathBuf>,
    extra: Vec<String>,
}

impl<'a> MachineBuilder<'a> {
    /// QEMU's machine type: `q35` (default) or `pc`.
    pub fn machine_type(mut self, machine: &str) -> Self {
        self.machine = machine.to_owned();
        self
    }

    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// Guest memory; OVMF wants at least 256 MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The namespace tap its NIC uses (from [`Netns::add_tap`]); `tap0` by default. Each
    /// running machine needs its own.
    pub fn tap(mut self, tap: &str) -> Self {
        self.tap = tap.to_owned();
        self
    }

    pub fn nic(mut self, nic: Nic) -> Self {
        self.nic = nic;
        self
    }

    pub fn nic_rom(mut self, rom: NicRom) -> Self {
        self.nic_rom = rom;
        self
    }

    /// The NIC's MAC, `52:54:00:xx:xx:xx`.
    pub fn mac(mut self, mac: &str) -> Self {
        self.mac = mac.to_lowercase();
        self
    }

    /// A raw disk image file.
    pub fn disk(mut self, image: impl Into<PathBuf>, bus: DiskBus) -> Self {
        self.disks.push((image.into(), bus));
        self
    }

    /// PXE first (`-boot n`).
    pub fn network_boot(mut self) -> Self {
        self.boot = Boot::Network;
        self
    }

    pub fn boot(mut self, boot: Boot) -> Self {
        self.boot = boot;
        self
    }

    /// Boots this kernel directly instead of through the firmware's boot order.
    pub fn direct_boot(mut self, kernel: &Path, initrd: Option<&Path>, append: &str) -> Self {
        self.direct = Some(DirectBoot {
            kernel: kernel.to_owned(),
            initrd: initrd.map(Path::to_owned),
            append: append.to_owned(),
        });
        self
    }

    /// `-no-reboot`: a guest reboot (or a triple fault, or `panic=-1`) ends QEMU instead.
    pub fn no_reboot(mut self, on: bool) -> Self {
        self.no_reboot = on;
        self
    }

    /// Starts UEFI with a copy of this variable store (say another machine's `OVMF_VARS.fd`,
    /// to power the same machine on again with the boot entries it was left with) instead of
    /// the empty template.
    pub fn uefi_vars(mut self, vars: &Path) -> Self {
        self.uefi_vars = Some(vars.to_owned());
        self
    }

    /// One more raw QEMU argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// The full QEMU argument list for a machine whose files live in `dir`.
    pub fn args(&self, dir: &Path) -> Vec<String> {
        let serial = dir.join("serial.log");
        let qmp = dir.join("qmp.sock");
        let mut a: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-machine".into(),
            self.machine.clone(),
            "-accel".into(),
            accel().arg().into(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            "1".into(),
            // No window, no monitor on stdio: the serial console goes to a file (which makes
            // SeaBIOS and iPXE print there too).
            "-nographic".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", serial.display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
        ];
        if self.firmware == Firmware::UefiSecureBoot {
            a[3] = format!("{},smm=on", self.machine);
            a.extend(["-global".into(), "driver=cfi.pflash01,property=secure,value=on".into()]);
            a.extend(["-global".into(), "ICH9-LPC.disable_s3=1".into()]);
        }
        if self.firmware.is_uefi() {
            let (code, _) = self.firmware.ovmf();
            a.push("-drive".into());
            a.push(format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"));
            a.push("-drive".into());
            a.push(format!("if=pflash,format=raw,unit=1,file={}", dir.join("OVMF_VARS.fd").display()));
        }
        let (nic_index, disk_index) = match self.boot {
            Boot::Network => (1, 2),
            Boot::Disk | Boot::Firmware => (1 + self.disks.len(), 1),
        };
        let bootindex = self.direct.is_none() && self.boot != Boot::Firmware;
        a.push("-netdev".into());
        a.push(format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap));
        let mut nic = format!("{},netdev=n0,mac={}", self.nic.device(), self.mac);
        match &self.nic_rom {
            NicRom::Default => {}
            NicRom::Disabled => nic += ",romfile=",
            NicRom::File(p) => nic += &format!(",romfile={}", p.display()),
        }
        if bootindex {
            nic += &format!(",bootindex={nic_index}");
        }
        a.push("-device".into());
        a.push(nic);
        for (i, (image, bus)) in self.disks.iter().enumerate() {
            a.push("-drive".into());
            a.push(format!("file={},format=raw,if=none,id=d{i},cache=unsafe", image.display()));
            let mut devs = match bus {
                DiskBus::Virtio => vec![format!("virtio-blk-pci,drive=d{i}")],
                DiskBus::Sata => vec![format!("ide-hd,drive=d{i}")],
                DiskBus::Controller(hba) => hba.devices(i),
            };
            if bootindex {
                *devs.last_mut().expect("a disk device") += &format!(",bootindex={}", disk_index + i);
            }
            for dev in devs {
                a.push("-device".into());
                a.push(dev);
            }
        }
        if let Some(d) = &self.direct {
            a.extend(["-kernel".into(), d.kernel.display().to_string()]);
            if let Some(initrd) = &d.initrd {
                a.extend(["-initrd".into(), initrd.display().to_string()]);
            }
            a.extend(["-append".into(), d.append.clone()]);
        }
        if self.no_reboot {
            a.push("-no-reboot".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts QEMU inside the namespace. Panics (naming the package) if QEMU or OVMF is missing,
    /// or if QEMU exits at once.
    pub fn start(self) -> Machine {
        let dir = self.ns.dir().join(format!("machine-{}", self.name));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("machine {:?} twice in one namespace? {}: {e}", self.name, dir.display()));
        require_program(QEMU, "qemu-system-x86");
        if self.firmware.is_uefi() {
            let (code, template) = self.firmware.ovmf();
            assert!(Path::new(code).is_file(), "{code} is missing: apt-get install -y ovmf");
            let vars = self.uefi_vars.clone().unwrap_or_else(|| PathBuf::from(template));
            std::fs::copy(&vars, dir.join("OVMF_VARS.fd"))
                .unwrap_or_else(|e| panic!("cannot copy {} ({e}): apt-get install -y ovmf", vars.display()));
        }
        let args = self.args(&dir);
        std::fs::write(dir.join("command"), format!("{QEMU} {}\n", args.join(" "))).unwrap();
        let mut cmd = self.ns.command(QEMU);
        cmd.args(&args);
        let process = self.ns.spawn(cmd, &format!("qemu-{}", self.name));
        let mut m = Machine {
            name: self.name,
            mac: self.mac,
            serial: dir.join("serial.log"),
            qmp: dir.join("qmp.sock"),
            dir,
            process,
            started: Instant::now(),
        };
        // QEMU fails fast on bad arguments or a busy tap; catch that here with its message.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !m.qmp.exists() && Instant::now() < deadline {
            if let Some(status) = m.process.try_wait() {
                panic!("QEMU exited at start ({status}):\n{}", m.process.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }
}

/// A running QEMU machine; killed on drop.
pub struct Machine {
    name: String,
    mac: String,
    dir: PathBuf,
    serial: PathBuf,
    qmp: PathBuf,
    process: NsProcess,
    started: Instant,
}

impl Machine {
    /// A builder for a machine called `name` (unique within the namespace; letters, digits, `-`).
    pub fn builder<'a>(ns: &'a Netns, name: &str) -> MachineBuilder<'a> {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "machine name {name:?}: use letters, digits and '-'"
        );
        let n = NEXT_MAC.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        MachineBuilder {
            ns,
            name: name.to_owned(),
            machine: "q35".into(),
            firmware: Firmware::Bios,
            memory_mib: 256,
            tap: ns.tap().to_owned(),
            nic: Nic::VirtioNet,
            nic_rom: NicRom::Default,
            mac: format!("52:54:00:{:02x}:{:02x}:{:02x}", (pid >> 8) & 0xff, pid & 0xff, n & 0xff),
            disks: Vec::new(),
            boot: Boot::Disk,
            direct: None,
            no_reboot: false,
            uefi_vars: None,
            extra: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NIC's MAC, lower-case `52:54:00:xx:xx:xx`.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// The directory with its serial log, QMP socket, command line and UEFI variables.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything on the serial console so far.
    pub fn serial(&self) -> String {
        read_lossy(&self.serial)
    }

    /// Waits until the serial console shows a line containing `marker` and returns that line.
    /// Panics with the console's tail and QEMU's stderr if the machine stops first or `timeout`
    /// passes.
    pub fn wait_for_serial(&mut self, marker: &str, timeout: Duration) -> String {
        match self.poll_serial(marker, timeout) {
            Ok(line) => line,
            Err(why) => {
                panic!("machine {}: {why} before {marker:?} appeared on its console\n{}", self.name, self.report())
            }
        }
    }

    /// Like [`Machine::wait_for_serial`], but an error says why the marker did not come.
    pub fn poll_serial(&mut self, marker: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut offset = 0;
        loop {
            let text = self.serial();
            // Lines may arrive in pieces: only search from the last line already checked.
            let start = text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
            if let Some(i) = text[start..].find(marker) {
                let at = start + i;
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                return Ok(text[line_start..line_end].trim_end_matches('\r').to_owned());
            }
            offset = text.len();
            if let Some(status) = self.process.try_wait() {
                // It may have printed the marker just before exiting.
                if self.serial()[start..].contains(marker) {
                    continue;
                }
                return Err(format!("QEMU exited ({status}) after {:.1?}", self.uptime()));
            }
            if Instant::now() >= deadline {
                return Err(format!("{timeout:?} passed"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit on its own (guest power-off, or a reboot with `-no-reboot`).
    /// Panics after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.process.wait_timeout(timeout) {
            Some(status) => status,
            None => panic!("machine {} still running after {timeout:?}\n{}", self.name, self.report()),
        }
    }

    /// Its exit status if QEMU has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.try_wait()
    }

    /// Kills QEMU now (pulling the power cord).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Runs one QMP command (e.g. `system_reset`, `set_link` with `{"name": "n0", "up": false}`,
    /// `query-status`) and returns its `return` value; panics on a QMP error.
    pub fn qmp(&self, command: &str, arguments: Value) -> Value {
        let stream = UnixStream::connect(&self.qmp)
            .unwrap_or_else(|e| panic!("cannot connect to {}'s QMP socket: {e}", self.name));
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut next = || -> Value {
            loop {
                let mut line = String::new();
                let n = reader.read_line(&mut line).expect("QMP read failed");
                assert!(n > 0, "QMP connection closed");
                let v: Value = serde_json::from_str(&line).expect("QMP sent invalid JSON");
                // Skip asynchronous events.
                if v.get("event").is_none() {
                    return v;
                }
            }
        };
        let greeting = next();
        assert!(greeting.get("QMP").is_some(), "not a QMP greeting: {greeting}");
        for (cmd, args) in [("qmp_capabilities", json!({})), (command, arguments)] {
            writeln!(writer, "{}", json!({"execute": cmd, "arguments": args})).unwrap();
            let reply = next();
            if let Some(ret) = reply.get("return") {
                if cmd == command {
                    return ret.clone();
                }
            } else {
                panic!("QMP {cmd} failed: {reply}");
            }
        }
        unreachable!()
    }

    /// Its command line, console tail and QEMU's stderr, for failure messages.
    pub fn report(&self) -> String {
        let serial = self.serial();
        let tail: Vec<&str> = serial.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- command\n{}--- last console lines\n{}\n--- QEMU stderr\n{}",
            read_lossy(&self.dir.join("command")),
            tail.join("\n"),
            self.process.stderr()
        )
    }
}

fn require_program(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false);
    assert!(found, "{program} is not installed: apt-get install -y {package}");
}
