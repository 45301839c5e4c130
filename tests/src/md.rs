//! Linux software RAID made by `mdadm` itself. The development and CI kernels have no md
//! driver, so arrays are created (and later assembled and checked) inside a QEMU machine that
//! boots the distribution kernel with its md modules and the host's `mdadm` binary: the
//! superblocks, bitmaps and data placement on the member disks are the real ones.
//!
//! [`in_guest`] boots such a machine on the given raw disk images (`/dev/vda`, `/dev/vdb`, …,
//! partitions as the kernel finds them), runs shell lines and returns the serial console.
//! [`examine`] reads `mdadm --examine` of a member on the host (mdadm reads superblocks from a
//! plain file without the md driver).
//!
//! Root only (network namespace for the machine). Needs mdadm, qemu-system-x86,
//! linux-image-amd64, busybox-static.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::bootimage::{Initramfs, TestKernel, KERNEL_CMDLINE, MARKER};
use crate::netns::Netns;
use crate::qemu::{DiskBus, Machine};
use crate::tools::run;

const MDADM: &str = "/sbin/mdadm";
/// Modules the guest loads: virtio disks and every md personality mdadm may be asked for
/// (raid456 needs the crc32c algorithm, which no module dependency names).
const MODULES: &[&str] =
    &["virtio_pci", "virtio_blk", "crc32c_generic", "md_mod", "raid0", "raid1", "raid456", "raid10"];
/// Longest a guest may take (TCG, a loaded machine, a resync or check of a few hundred MiB).
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Boots a machine with `disks` (virtio, in order) and runs `script` (shell lines; `say TEXT`
/// prints `KURA-TEST-MARKER TEXT` on the console). Returns the serial console once the script
/// is done and the machine powered off. Panics with the console if it does not finish.
pub fn in_guest(name: &str, disks: &[&Path], script: &[String]) -> String {
    assert!(Path::new(MDADM).is_file(), "{MDADM} is missing: apt-get install -y mdadm");
    let ns = Netns::new();
    let kernel = TestKernel::installed();
    let mut initrd = Initramfs::new(&kernel, name).modules(MODULES);
    for file in std::iter::once(MDADM.to_string()).chain(shared_libraries(MDADM)) {
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
        initrd = initrd.file(&file, bytes, 0o755);
    }
    // mdadm creates its device nodes itself when udev is not running; it keeps state in /run.
    initrd = initrd.script_line("mkdir -p /run/mdadm /etc/mdadm; export MDADM_NO_UDEV=1");
    initrd = initrd.script_line("for i in $(seq 1 50); do [ -e /dev/vda ] && break; sleep 0.1; done");
    for line in script {
        initrd = initrd.script_line(line);
    }
    let initrd = initrd.build(ns.dir());
    let mut builder = Machine::builder(&ns, name)
        .memory_mib(512)
        .direct_boot(&kernel.vmlinuz, Some(&initrd), KERNEL_CMDLINE)
        .no_reboot(true);
    for d in disks {
        builder = builder.disk(*d, DiskBus::Virtio);
    }
    let mut m = builder.start();
    m.wait_for_serial(&format!("{MARKER} done name={name}"), GUEST_TIMEOUT);
    m.wait_for_exit(Duration::from_secs(60));
    m.serial()
}

/// The shared libraries `binary` loads (from `ldd`), so a guest can run the host's binary.
fn shared_libraries(binary: &str) -> Vec<String> {
    run("ldd", [binary])
        .lines()
        .filter_map(|l| {
            // "libudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x…)" or "/lib64/ld-linux… (0x…)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// The lines the guest printed with `say`, without the marker.
pub fn said(serial: &str) -> Vec<String> {
    serial
        .lines()
        .filter_map(|l| l.split_once(&format!("{MARKER} ")).map(|(_, rest)| rest.trim().to_string()))
        .collect()
}

/// `mdadm --examine` of a member image file: its `Key : value` lines.
pub fn examine(member: &Path) -> BTreeMap<String, String> {
    run("mdadm", ["--examine", member.to_str().expect("utf-8 path")])
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The leading number of an `--examine` value ("2048 sectors", "38912 KiB (38.00 MiB …)").
pub fn number(examined: &BTreeMap<String, String>, key: &str) -> u64 {
    let v = examined.get(key).unwrap_or_else(|| panic!("mdadm --examine has no {key:?}: {examined:?}"));
    v.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{key}: {v:?} is not a number"))
}

/// Checks, by `mdadm --examine` on the host, that `a` and `b` are the two active members of
/// one clean RAID1 array with metadata 1.2: each checksum correct, roles 0 and 1, and the same
/// array UUID, event count, name and size on both.
pub fn assert_raid1_pair(a: &Path, b: &Path) {
    let (ea, eb) = (examine(a), examine(b));
    for (e, path, role) in [(&ea, a, "Active device 0"), (&eb, b, "Active device 1")] {
        let show = || format!("{}: {e:#?}", path.display());
        assert_eq!(e.get("Version").map(String::as_str), Some("1.2"), "{}", show());
        assert_eq!(e.get("Raid Level").map(String::as_str), Some("raid1"), "{}", show());
        assert_eq!(e.get("Raid Devices").map(String::as_str), Some("2"), "{}", show());
        assert!(e.get("Checksum").is_some_and(|c| c.ends_with("- correct")), "{}", show());
        assert_eq!(e.get("State").map(String::as_str), Some("clean"), "{}", show());
        assert_eq!(e.get("Device Role").map(String::as_str), Some(role), "{}", show());
        assert!(e.get("Array State").is_some_and(|s| s.starts_with("AA")), "{}", show());
    }
    for key in ["Array UUID", "Events", "Name", "Array Size", "Creation Time"] {
        assert_eq!(ea.get(key), eb.get(key), "{key} differs between {} and {}", a.display(), b.display());
    }
}
