//! The system calls PID 1 needs, through `nix`'s safe wrappers (so this crate has no `unsafe`):
//! mounting the kernel filesystems, loading a module from a file (`finit_module(2)`), and
//! rebooting or powering off (`reboot(2)`).

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use std::fs::File;
use std::path::Path;

/// Mounts `/proc`, `/sys`, `/dev` (devtmpfs: the kernel creates the device nodes, no udev),
/// `/run` and `/tmp`. An already mounted one (EBUSY) is fine.
pub fn mount_basics() -> Result<()> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (fs, target, flags) in [
        ("proc", "/proc", nosuid),
        ("sysfs", "/sys", nosuid),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID),
        ("tmpfs", "/run", MsFlags::MS_NOSUID | MsFlags::MS_NODEV),
        ("tmpfs", "/tmp", MsFlags::MS_NOSUID | MsFlags::MS_NODEV),
    ] {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(fs), target, Some(fs), flags, None::<&str>) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(e).with_context(|| format!("mounting {fs} on {target}")),
        }
    }
    Ok(())
}

/// Mounts efivarfs on [`crate::efi::EFIVARS`] (already mounted is fine).
pub fn mount_efivarfs() -> Result<()> {
    let target = crate::efi::EFIVARS;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some("efivarfs"), target, Some("efivarfs"), flags, None::<&str>) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mounting efivarfs on {target}")),
    }
}

/// Outcome of loading one module.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Now,
    Already,
}

/// Loads the plain `.ko` at `path` into the kernel.
pub fn load_module(path: &Path) -> Result<Loaded> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    match finit_module(&f, c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(Loaded::Now),
        Err(Errno::EEXIST) => Ok(Loaded::Already),
        Err(e) => Err(e).with_context(|| format!("loading {}", path.display())),
    }
}

/// Flushes filesystem buffers, then powers off or reboots. Only returns on failure.
pub fn power(reboot_instead: bool) -> anyhow::Error {
    nix::unistd::sync();
    let mode = if reboot_instead { RebootMode::RB_AUTOBOOT } else { RebootMode::RB_POWER_OFF };
    match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => anyhow::Error::new(e).context(format!("reboot({mode:?})")),
    }
}
