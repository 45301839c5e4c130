//! Loading drivers for the hardware present, as udev and modprobe would, without either: walk
//! `/sys/devices` for `modalias` files, match each against `modules.alias`, and load the
//! matching modules after their dependencies (from `modules.dep`) with `finit_module(2)`.
//!
//! Loading a driver can reveal more devices (virtio_pci creates the virtio devices virtio_net
//! drives; a SCSI host adapter its disks), so [`Drivers::load_pass`] is called until it loads
//! nothing new. The initramfs ships plain `.ko` files only (the builder decompresses).

use crate::sys;
use anyhow::{Context, Result};
use kura_bootenv::modules::{self, AliasTable, DepTable};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

pub struct Drivers {
    dir: PathBuf,
    alias: AliasTable,
    dep: DepTable,
    builtin: BTreeSet<String>,
    /// Modules already tried (loaded or failed), never tried again.
    tried: HashSet<String>,
}

/// Every `modalias` value under `root` (normally `/sys/devices`), without following symlinks.
pub fn modaliases(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(root.to_path_buf(), 0u32)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 40 {
                stack.push((e.path(), depth + 1));
            } else if ft.is_file() && e.file_name() == "modalias" {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    let s = s.trim();
                    if !s.is_empty() {
                        out.insert(s.to_string());
                    }
                }
            }
        }
    }
    out
}

/// The running kernel's modules directory under `root` (`/lib/modules`): the one named after
/// `release`, else the only one there.
pub fn modules_dir(root: &Path, release: &str) -> Result<PathBuf> {
    let d = root.join(release);
    if d.join("modules.dep").is_file() {
        return Ok(d);
    }
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("listing {}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("modules.dep").is_file())
        .collect();
    match dirs.as_slice() {
        [only] => Ok(only.clone()),
        _ => anyhow::bail!(
            "no modules for kernel {release} under {} (the initramfs was built for another kernel?)",
            root.display()
        ),
    }
}

impl Drivers {
    pub fn open(dir: &Path) -> Result<Drivers> {
        let read =
            |n: &str| std::fs::read_to_string(dir.join(n)).with_context(|| format!("reading {}/{n}", dir.display()));
        Ok(Drivers {
            dir: dir.to_path_buf(),
            alias: AliasTable::parse(&read("modules.alias")?),
            dep: DepTable::parse(&read("modules.dep")?)?,
            builtin: modules::parse_builtin(&read("modules.builtin").unwrap_or_default()),
            tried: HashSet::new(),
        })
    }

    /// The modules (not built in, not yet tried) that drive the devices with these modaliases.
    pub fn wanted(&self, aliases: &BTreeSet<String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in aliases {
            for m in self.alias.lookup(a) {
                if !self.builtin.contains(&m) && !self.tried.contains(&m) && !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// Loads module `name` (with its dependencies) unless it is built in or loaded; for
    /// what no device asks for (`efivarfs`). Failures are logged.
    pub fn load_named(&mut self, name: &str, sys_module: &Path, log: &dyn Fn(String)) {
        let name = modules::normalize(name);
        if self.builtin.contains(&name) || sys_module.join(&name).exists() {
            return;
        }
        self.tried.remove(&name);
        self.load_modules(vec![name], sys_module, log);
    }

    /// One pass: loads the drivers (with dependencies) for the devices under `sys_devices`
    /// that are not loaded yet. Returns how many modules it loaded; failures are logged.
    pub fn load_pass(&mut self, sys_devices: &Path, sys_module: &Path, log: &dyn Fn(String)) -> usize {
        let wanted = self.wanted(&modaliases(sys_devices));
        self.load_modules(wanted, sys_module, log)
    }

    fn load_modules(&mut self, wanted: Vec<String>, sys_module: &Path, log: &dyn Fn(String)) -> usize {
        let mut loaded = 0;
        for m in wanted {
            let order = match self.dep.load_order(std::slice::from_ref(&m), |n| self.builtin.contains(n)) {
                Ok(o) => o,
                Err(e) => {
                    log(format!("driver {m}: {e:#}"));
                    self.tried.insert(m);
                    continue;
                }
            };
            for n in order {
                if !self.tried.insert(n.clone()) || sys_module.join(&n).exists() {
                    continue;
                }
                let Some(e) = self.dep.get(&n) else { continue };
                match sys::load_module(&self.dir.join(&e.path)) {
                    Ok(sys::Loaded::Now) => {
                        loaded += 1;
                        log(format!("loaded driver {n}"));
                    }
                    Ok(sys::Loaded::Already) => {}
                    Err(e) => log(format!("driver {n} did not load: {e:#}")),
                }
            }
        }
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_modaliases_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let pci = d.path().join("pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(pci.join("virtio0")).unwrap();
        std::fs::write(pci.join("modalias"), "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n").unwrap();
        std::fs::write(pci.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        std::os::unix::fs::symlink(d.path(), pci.join("virtio0/loop")).unwrap();
        let got = modaliases(d.path());
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "virtio:d00000001v00001AF4"]
        );
    }

    #[test]
    fn wanted_skips_builtin_and_unknown() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("6.1.0-test");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("modules.alias"),
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias virtio:d00000001v* virtio_net\n",
        )
        .unwrap();
        std::fs::write(d.join("modules.dep"), "kernel/drivers/net/virtio_net.ko:\n").unwrap();
        std::fs::write(d.join("modules.builtin"), "kernel/drivers/virtio/virtio_pci.ko\n").unwrap();
        assert_eq!(modules_dir(root.path(), "6.1.0-test").unwrap(), d);
        assert_eq!(modules_dir(root.path(), "6.2.0-other").unwrap(), d, "the only one");
        let drv = Drivers::open(&d).unwrap();
        let aliases: BTreeSet<String> =
            ["pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "virtio:d00000001v00001AF4", "usb:v1D6Bp0002"]
                .map(String::from)
                .into();
        assert_eq!(drv.wanted(&aliases), ["virtio_net"]);
    }
}
