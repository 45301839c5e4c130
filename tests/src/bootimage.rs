//! Tiny Linux boot images for QEMU test machines, built from installed packages only (nothing
//! is downloaded).
//!
//! - [`TestKernel`]: the distribution kernel, `/boot/vmlinuz-<ver>` with `/lib/modules/<ver>`
//!   (package linux-image-amd64). Its NIC and virtio drivers are modules, so the initramfs
//!   carries them.
//! - [`Initramfs`]: a newc cpio (written here, uncompressed — TCG boots it faster than a gzip
//!   one and the kernel takes either) holding the static busybox (package busybox-static), the
//!   requested kernel modules with their dependencies, and an `/init` script that mounts
//!   /proc, /sys and /dev, loads the modules, optionally gets an address with `udhcpc`, runs
//!   extra shell lines, prints markers on the console and powers off.
//!
//! Every line the init prints for the test starts with [`MARKER`]:
//!
//! ```text
//! KURA-TEST-MARKER booted name=<name> kernel=<release>
//! KURA-TEST-MARKER dhcp ip=10.77.1.123 mac=52:54:00:… iface=eth0     (or `dhcp-failed …`)
//! KURA-TEST-MARKER done name=<name>
//! ```
//!
//! Boot it with `console=ttyS0` on the kernel command line ([`KERNEL_CMDLINE`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What every line the test init prints for the test starts with.
pub const MARKER: &str = "KURA-TEST-MARKER";

/// Kernel command line for a test machine: serial console, power off (QEMU exits) on a panic
/// instead of hanging until the test's timeout.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=5";

/// Modules for the NICs the harness gives machines (virtio-net and e1000) and virtio disks.
/// `virtio_pci` is the transport the virtio drivers sit on: no module depends on it, so it must
/// be named.
pub const NET_AND_DISK_MODULES: &[&str] = &["virtio_pci", "virtio_net", "virtio_blk", "e1000", "e1000e"];

const BUSYBOX: &str = "/bin/busybox";

/// The installed distribution kernel and its modules.
#[derive(Clone, Debug)]
pub struct TestKernel {
    /// `/boot/vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
    /// `uname -r` of that kernel.
    pub release: String,
    /// `/lib/modules/<release>`.
    pub modules: PathBuf,
}

impl TestKernel {
    /// The newest `/boot/vmlinuz-*` that has a module directory; panics naming the package if
    /// there is none.
    pub fn installed() -> TestKernel {
        let mut found: Vec<TestKernel> = std::fs::read_dir("/boot")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let release = name.strip_prefix("vmlinuz-")?.to_owned();
                let modules = Path::new("/lib/modules").join(&release);
                modules.join("modules.dep").is_file().then(|| TestKernel { vmlinuz: e.path(), release, modules })
            })
            .collect();
        found.sort_by_key(|k| version_key(&k.release));
        found.pop().expect("no /boot/vmlinuz-* with its /lib/modules directory: apt-get install -y linux-image-amd64")
    }

    /// `names` and every module they depend on, dependencies first, as paths under
    /// [`TestKernel::modules`]. Names built into the kernel (in `modules.builtin`) are skipped;
    /// unknown names panic.
    pub fn modules_with_deps(&self, names: &[&str]) -> Vec<PathBuf> {
        let dep = std::fs::read_to_string(self.modules.join("modules.dep")).expect("cannot read modules.dep");
        let builtin = std::fs::read_to_string(self.modules.join("modules.builtin")).unwrap_or_default();
        // `kernel/drivers/net/virtio_net.ko: kernel/…/net_failover.ko kernel/…/virtio.ko …`
        let deps: Vec<(&str, Vec<&str>)> = dep
            .lines()
            .filter_map(|l| {
                let (module, rest) = l.split_once(':')?;
                Some((module, rest.split_whitespace().collect()))
            })
            .collect();
        let find = |name: &str| -> Option<usize> {
            let wanted = name.replace('-', "_");
            deps.iter().position(|(m, _)| module_name(m) == wanted)
        };
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit<'a>(
            i: usize,
            deps: &[(&'a str, Vec<&'a str>)],
            find: &dyn Fn(&str) -> Option<usize>,
            seen: &mut BTreeSet<usize>,
            order: &mut Vec<&'a str>,
        ) {
            if !seen.insert(i) {
                return;
            }
            for d in &deps[i].1 {
                if let Some(j) = find(&module_name(d)) {
                    visit(j, deps, find, seen, order);
                }
            }
            order.push(deps[i].0);
        }
        for name in names {
            match find(name) {
                Some(i) => visit(i, &deps, &find, &mut seen, &mut order),
                None => assert!(
                    builtin.lines().any(|l| module_name(l) == name.replace('-', "_")),
                    "kernel {} has no module {name}",
                    self.release
                ),
            }
        }
        order.into_iter().map(|m| self.modules.join(m)).collect()
    }
}

/// `kernel/drivers/net/virtio_net.ko.xz` → `virtio_net`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// `6.1.0-56-amd64` → numbers to compare releases by.
fn version_key(release: &str) -> Vec<u64> {
    release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// A test initramfs, described then [`built`](Initramfs::build).
#[derive(Clone, Debug)]
pub struct Initramfs {
    name: String,
    kernel: TestKernel,
    modules: Vec<String>,
    dhcp: bool,
    script: Vec<String>,
    files: Vec<(String, Vec<u8>, u32)>,
    power_off: bool,
}

impl Initramfs {
    /// An init that prints `booted` and `done` markers (with `name`), loads the NIC and disk
    /// modules, and powers off. No DHCP unless [`Initramfs::dhcp`].
    pub fn new(kernel: &TestKernel, name: &str) -> Initramfs {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "initramfs name {name:?}: use letters, digits, '-', '_', '.'"
        );
        Initramfs {
            name: name.to_owned(),
            kernel: kernel.clone(),
            modules: NET_AND_DISK_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            dhcp: false,
            script: Vec::new(),
            files: Vec::new(),
            power_off: true,
        }
    }

    /// Brings up the first NIC and runs `udhcpc` on it, then prints the `dhcp ip=… mac=…`
    /// marker (or `dhcp-failed`).
    pub fn dhcp(mut self, on: bool) -> Self {
        self.dhcp = on;
        self
    }

    /// Loads these modules (with their dependencies) instead of [`NET_AND_DISK_MODULES`].
    pub fn modules(mut self, names: &[&str]) -> Self {
        self.modules = names.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    /// A shell line for `/init` to run after the network step and before `done`.
    pub fn script_line(mut self, line: &str) -> Self {
        self.script.push(line.to_owned());
        self
    }

    /// A file in the image (`path` absolute, parent directories created).
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        assert!(path.starts_with('/'), "initramfs paths are absolute: {path}");
        self.files.push((path.to_owned(), contents.into(), mode));
        self
    }

    /// Whether `/init` powers the machine off at the end (default) or idles forever (for tests
    /// that kill or reset the machine themselves).
    pub fn power_off(mut self, on: bool) -> Self {
        self.power_off = on;
        self
    }

    /// The `/init` script this image runs.
    pub fn init_script(&self, module_files: &[String]) -> String {
        let mut s = String::from(
            r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bin /sbin /usr/bin /usr/sbin /mnt
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
"#,
        );
        s += &format!("say() {{ echo \"{MARKER} $*\" > /dev/console; }}\n");
        s += &format!("say booted name={} kernel=$(uname -r)\n", self.name);
        for m in module_files {
            s += &format!("insmod /lib/modules/{m} || say insmod-failed {m}\n");
        }
        if self.dhcp {
            s += r#"iface=
# Drivers probe devices asynchronously: give the NIC a few seconds to appear.
for try in $(seq 1 100); do
  for n in /sys/class/net/*; do n=${n##*/}; [ "$n" = lo ] || { iface=$n; break; }; done
  [ -n "$iface" ] && break
  sleep 0.1
done
if [ -z "$iface" ]; then
  say dhcp-failed reason=no-nic
else
  ip link set "$iface" up
  if udhcpc -i "$iface" -n -q -t 15 -T 3 -s /etc/udhcpc.script; then
    say dhcp ip=$(cat /tmp/dhcp-ip) mac=$(cat /sys/class/net/$iface/address) iface=$iface
  else
    say dhcp-failed mac=$(cat /sys/class/net/$iface/address) iface=$iface
  fi
fi
"#;
        }
        for line in &self.script {
            s += line;
            s += "\n";
        }
        s += &format!("say done name={}\n", self.name);
        if self.power_off {
            s += "sync\npoweroff -f\n";
        }
        s += "while true; do sleep 3600; done\n";
        s
    }

    /// Writes the image as `<dir>/<name>.cpio` and returns its path. Takes milliseconds (a
    /// couple of MiB of copying), so each test builds its own.
    pub fn build(&self, dir: &Path) -> PathBuf {
        assert!(Path::new(BUSYBOX).is_file(), "{BUSYBOX} is missing: apt-get install -y busybox-static");
        let mut cpio = Cpio::default();
        for d in ["/bin", "/dev", "/etc", "/lib", "/lib/modules", "/proc", "/sys", "/tmp", "/root"] {
            cpio.dir(d, 0o755);
        }
        cpio.char_dev("/dev/console", 0o600, 5, 1);
        cpio.char_dev("/dev/null", 0o666, 1, 3);
        cpio.file("/bin/busybox", &std::fs::read(BUSYBOX).expect("cannot read busybox"), 0o755);
        cpio.symlink("/bin/sh", "busybox");
        let mut module_files = Vec::new();
        let names: Vec<&str> = self.modules.iter().map(String::as_str).collect();
        for path in self.kernel.modules_with_deps(&names) {
            let name = format!("{}.ko", module_name(&path.to_string_lossy()));
            cpio.file(&format!("/lib/modules/{name}"), &read_module(&path), 0o644);
            module_files.push(name);
        }
        cpio.file("/etc/udhcpc.script", UDHCPC_SCRIPT.as_bytes(), 0o755);
        let mut dirs = BTreeSet::new();
        for (path, contents, mode) in &self.files {
            let mut parent = Path::new(path).parent();
            let mut missing = Vec::new();
            while let Some(p) = parent.filter(|p| *p != Path::new("/")) {
                missing.push(p.to_string_lossy().into_owned());
                parent = p.parent();
            }
            for d in missing.into_iter().rev() {
                if dirs.insert(d.clone()) {
                    cpio.dir(&d, 0o755);
                }
            }
            cpio.file(path, contents, *mode);
        }
        cpio.file("/init", self.init_script(&module_files).as_bytes(), 0o755);
        let out = dir.join(format!("{}.cpio", self.name));
        std::fs::write(&out, cpio.finish()).expect("cannot write the initramfs");
        out
    }
}

/// udhcpc calls this with `deconfig`, `bound`, `renew`, … and the lease in the environment.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "$ip" > /tmp/dhcp-ip
    [ -n "$siaddr" ] && echo "$siaddr" > /tmp/dhcp-siaddr
    [ -n "$boot_file" ] && echo "$boot_file" > /tmp/dhcp-bootfile
    ;;
esac
exit 0
"#;

/// A module file's contents, decompressed if the distribution compresses modules.
fn read_module(path: &Path) -> Vec<u8> {
    let p = path.to_string_lossy();
    let tool = if p.ends_with(".ko.xz") {
        Some(("xz", "xz-utils"))
    } else if p.ends_with(".ko.zst") {
        Some(("zstd", "zstd"))
    } else if p.ends_with(".ko.gz") {
        Some(("gzip", "gzip"))
    } else {
        None
    };
    let Some((tool, package)) = tool else {
        return std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    };
    let out = Command::new(tool)
        .args(["-dc"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): apt-get install -y {package}"));
    assert!(out.status.success(), "{tool} -dc {} failed", path.display());
    out.stdout
}

/// A newc ("070701") cpio archive writer: what the kernel unpacks as an initramfs.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, 0o040000 | perm, 0, 0, &[]);
    }

    pub fn file(&mut self, path: &str, data: &[u8], perm: u32) {
        self.entry(path, 0o100000 | perm, 0, 0, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120777, 0, 0, target.as_bytes());
    }

    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, 0o020000 | perm, major, minor, &[]);
    }

    /// The archive with its `TRAILER!!!`.
    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.raw("TRAILER!!!", 0, 0, 0, &[]);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, rdev_major: u32, rdev_minor: u32, data: &[u8]) {
        self.ino += 1;
        self.raw(path.trim_start_matches('/'), mode, rdev_major, rdev_minor, data);
    }

    fn raw(&mut self, name: &str, mode: u32, rdev_major: u32, rdev_minor: u32, data: &[u8]) {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so images are reproducible
            u32::try_from(data.len()).expect("cpio member over 4 GiB"),
            0, // dev major
            0, // dev minor
            rdev_major,
            rdev_minor,
            u32::try_from(name.len() + 1).unwrap(),
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_members_are_aligned_and_trailed() {
        let mut c = Cpio::default();
        c.dir("/etc", 0o755);
        c.file("/etc/x", b"hello", 0o644);
        let out = c.finish();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("etc/x\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/drivers/net/virtio_net.ko.xz"), "virtio_net");
        assert_eq!(module_name("kernel/net/core/failover.ko"), "failover");
        assert!(version_key("6.12.1-1-amd64") > version_key("6.1.0-56-amd64"));
    }
}
