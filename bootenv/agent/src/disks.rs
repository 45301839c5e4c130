//! Finding the machine's disks in sysfs: `/sys/block/*`, skipping the kernel's virtual block
//! devices (ram, loop, zram, device-mapper, md, nbd) and optical drives (sr), and any with size 0
//! (an empty card reader) — and what identifies each: model, serial and WWN from sysfs, and its
//! position (the controller's PCI address plus the ATA port or SCSI channel:target:lun), which
//! restores use to map a snapshot set's disks onto this machine's (`kura_imaging::diskmap`).

use kura_imaging::diskmap::DiskIdentity;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`sda`, `nvme0n1`, `vda`); the device is `/dev/<name>`.
    pub name: String,
    pub size: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    /// See [`position`].
    pub path: Option<String>,
}

impl Disk {
    pub fn identity(&self) -> DiskIdentity {
        DiskIdentity {
            name: self.name.clone(),
            size: self.size,
            model: self.model.clone(),
            serial: self.serial.clone(),
            wwn: self.wwn.clone(),
            path: self.path.clone(),
        }
    }
}

/// The first non-empty trimmed text of these files.
fn first_text(dir: &Path, files: &[&str]) -> Option<String> {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())
}

/// A SCSI/SATA disk's serial from its VPD page 0x80 (4-byte header, then the serial).
fn vpd_serial(dir: &Path) -> Option<String> {
    let b = std::fs::read(dir.join("device/vpd_pg80")).ok()?;
    let len = *b.get(3)? as usize;
    let s = String::from_utf8_lossy(b.get(4..4 + len)?).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Where the disk hangs, from its sysfs path (`/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/
/// target2:0:0/2:0:0:0/block/sda` → `pci-0000:00:1f.2-ata-3`): the last PCI function, then the
/// ATA port, or else the SCSI channel:target:lun without the host number (which counts in probe
/// order), or the NVMe namespace. Like udev's `by-path`, which the netboot image has no udev for.
pub fn position(device_path: &str) -> Option<String> {
    let parts: Vec<&str> = device_path.split('/').collect();
    let is_pci = |p: &str| {
        let b = p.as_bytes();
        p.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
    };
    let pci = parts.iter().rev().find(|p| is_pci(p))?;
    let mut out = format!("pci-{pci}");
    if let Some(ata) = parts.iter().find_map(|p| p.strip_prefix("ata").filter(|n| n.parse::<u32>().is_ok())) {
        out += &format!("-ata-{ata}");
    } else if let Some(hctl) =
        parts.iter().find(|p| p.split(':').count() == 4 && p.split(':').all(|n| n.parse::<u32>().is_ok()))
    {
        let ctl: Vec<&str> = hctl.split(':').skip(1).collect();
        out += &format!("-scsi-{}", ctl.join(":"));
    } else if let Some(name) = parts.last().filter(|n| n.starts_with("nvme")) {
        if let Some(ns) = name.rsplit('n').next().filter(|n| n.parse::<u32>().is_ok()) {
            out += &format!("-nvme-{ns}");
        }
    }
    Some(out)
}

const SKIP: [&str; 8] = ["ram", "loop", "sr", "zram", "dm-", "md", "nbd", "fd"];

/// The disks under `sys_block` (normally `/sys/block`), sorted by name.
pub fn list(sys_block: &Path) -> Vec<Disk> {
    let mut out: Vec<Disk> = std::fs::read_dir(sys_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if SKIP.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let dir = e.path();
            let sectors: u64 = std::fs::read_to_string(dir.join("size")).ok()?.trim().parse().ok()?;
            if sectors == 0 {
                return None;
            }
            let model = first_text(&dir, &["device/model"]);
            let serial = first_text(&dir, &["serial", "device/serial"]).or_else(|| vpd_serial(&dir));
            let wwn = first_text(&dir, &["wwid", "device/wwid"]);
            let path = std::fs::canonicalize(&dir).ok().and_then(|p| position(&p.to_string_lossy()));
            Some(Disk { name, size: sectors * 512, model, serial, wwn, path })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_virtual_devices() {
        let d = tempfile::tempdir().unwrap();
        for (name, size) in [
            ("sda", "2048"),
            ("nvme0n1", "4096"),
            ("vda", "100"),
            ("loop0", "10"),
            ("ram0", "10"),
            ("sr0", "10"),
            ("sdb", "0"),
        ] {
            std::fs::create_dir_all(d.path().join(name).join("device")).unwrap();
            std::fs::write(d.path().join(name).join("size"), format!("{size}\n")).unwrap();
        }
        std::fs::write(d.path().join("sda/device/model"), "QEMU HARDDISK   \n").unwrap();
        let disks = list(d.path());
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "vda"]);
        assert_eq!(disks[1].size, 2048 * 512);
        assert_eq!(disks[1].model.as_deref(), Some("QEMU HARDDISK"));
    }

    #[test]
    fn identity_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let vda = d.path().join("vda");
        std::fs::create_dir_all(vda.join("device")).unwrap();
        std::fs::write(vda.join("size"), "4096\n").unwrap();
        std::fs::write(vda.join("serial"), "KURA-R1-A\n").unwrap();
        let sda = d.path().join("sda");
        std::fs::create_dir_all(sda.join("device")).unwrap();
        std::fs::write(sda.join("size"), "4096\n").unwrap();
        let mut pg80 = vec![0, 0x80, 0, 8];
        pg80.extend_from_slice(b"SER-0042");
        std::fs::write(sda.join("device/vpd_pg80"), pg80).unwrap();
        std::fs::write(sda.join("device/wwid"), "naa.5000c500a1b2c3d4\n").unwrap();
        let disks = list(d.path());
        assert_eq!(disks[0].serial.as_deref(), Some("SER-0042"));
        assert_eq!(disks[0].wwn.as_deref(), Some("naa.5000c500a1b2c3d4"));
        assert_eq!(disks[1].serial.as_deref(), Some("KURA-R1-A"));
        assert_eq!(disks[1].identity().serial.as_deref(), Some("KURA-R1-A"));
    }

    #[test]
    fn positions() {
        let cases = [
            ("/sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda", "pci-0000:00:04.0"),
            ("/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sda", "pci-0000:00:1f.2-ata-3"),
            (
                "/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/host4/target4:0:1/4:0:1:0/block/sdb",
                "pci-0000:01:00.0-scsi-0:1:0",
            ),
            ("/sys/devices/pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1", "pci-0000:00:05.0-nvme-1"),
        ];
        for (path, want) in cases {
            assert_eq!(position(path).as_deref(), Some(want), "{path}");
        }
        assert_eq!(position("/sys/devices/virtual/block/loop0"), None);
    }
}
