//! Finding the machine's disks in sysfs: `/sys/block/*`, skipping the kernel's virtual block
//! devices (ram, loop, zram, device-mapper, md, nbd) and optical drives (sr), and any with size 0
//! (an empty card reader).

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`sda`, `nvme0n1`, `vda`); the device is `/dev/<name>`.
    pub name: String,
    pub size: u64,
    pub model: Option<String>,
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
            let model = std::fs::read_to_string(dir.join("device/model"))
                .ok()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty());
            Some(Disk { name, size: sectors * 512, model })
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
}
