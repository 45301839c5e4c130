//! A bootable RHEL-style system disk for the QEMU tests: root on LVM2 + XFS, as a RHEL
//! installer lays it out (GRUB for BIOS), built from installed packages into an image file:
//!
//! ```text
//! p1   1 MiB  BIOS boot  GRUB's core.img (i386-pc: biosdisk, part_gpt, xfs, lvm, …);
//!                        GRUB's boot.img in LBA 0 points at it
//! p2 320 MiB  /boot XFS  /vmlinuz (the distribution kernel), /initrd.img (made by
//!                        initramfs-tools' mkinitramfs: udev + lvm2 activate the VG)
//! p3 440 MiB  LVM2 PV    VG <unique name>, 4 MiB extents: LV `root` (320 MiB XFS: the static
//!                        busybox, /sbin/init printing the marker), LV `swap` (32 MiB);
//!                        the free extents hold old junk
//! ```
//!
//! GRUB's embedded configuration finds `/boot` by its UUID and boots `/vmlinuz` with
//! `root=/dev/mapper/<vg>-root`; the initramfs' udev rules run `vgchange -aay` on the PV and its
//! `local` script mounts that LV. `/sbin/init` on the LV prints
//!
//! ```text
//! KURA-ROOT-MARKER marker=<marker> kernel=<release> root=/dev/mapper/<vg>-root
//! ```
//!
//! and powers off: so the marker proves that the boot sector, the BIOS boot partition, `/boot`,
//! the LVM metadata and the root LV's XFS all came back. Both XFS filesystems and the free
//! extents hold deleted or stale junk ([`RhelDisk::junk`]), which a capture must not store.
//!
//! Why 768 MiB and not less: `mkfs.xfs` makes no filesystem under 300 MiB. Only the used
//! blocks are captured and restored, so the size costs little time.
//!
//! How it is made without device-mapper (see [`crate::lvm`]): the VG with LVM's tools with
//! activation off on a loop device of the PV image, each LV's filesystem in its own image file
//! copied in at the extents `lvs` reports, `/boot` and the root populated through loop mounts.
//! Root only. Needs grub-pc-bin, initramfs-tools, lvm2, xfsprogs, busybox-static,
//! linux-image-amd64, util-linux, gdisk.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::bootdisk::{grub_mkimage, install_grub_bios, GRUB_MARKER, GRUB_PC, ROOT_MARKER};
use crate::bootimage::TestKernel;
use crate::content::random_bytes;
use crate::disks::{build_gpt, Content, Disk, Fs, PartSpec, MIB};
use crate::lvm::{lvm, move_lv, pe_start, segments, unique_name, xfs_image, Loop};
use crate::tools::run;

/// Partition numbers.
pub const BIOS_BOOT: u32 = 1;
pub const BOOT: u32 = 2;
pub const PV: u32 = 3;

/// Size of the disk [`build`] makes.
pub const DISK_SIZE: u64 = 768 * MIB;
const BOOT_SIZE: u64 = 320 * MIB;
const PV_SIZE: u64 = 440 * MIB;
/// The LVs: (name, size).
pub const LVS: [(&str, u64); 2] = [("root", 320 * MIB), ("swap", 32 * MIB)];
/// The VG's extent size.
pub const EXTENT: u64 = 4 * MIB;

const BUSYBOX: &str = "/bin/busybox";
const MKINITRAMFS: &str = "/usr/sbin/mkinitramfs";
const LVM2_HOOK: &str = "/usr/share/initramfs-tools/hooks/lvm2";

/// The initramfs' modules (`MODULES=list`: the build host's own hardware says nothing about
/// the test machine's): the virtio disk, XFS, device-mapper. The lvm2 hook adds the rest.
const INITRD_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "xfs", "dm_mod"];

/// The system disk and what it should hold and boot to.
pub struct RhelDisk {
    pub disk: Disk,
    /// The volume group's name (unique per build).
    pub vg: String,
    /// The text `/sbin/init` prints after `marker=`.
    pub marker: String,
    /// `/boot`'s UUID (unique per build).
    pub boot_uuid: String,
    /// Every file of `/boot` and of the root LV: path → sha256.
    pub boot_files: BTreeMap<String, String>,
    pub root_files: BTreeMap<String, String>,
    /// Each LV's segments (start extent in the LV, first PV extent, count), as in [`LVS`].
    pub segments: Vec<Vec<(u64, u64, u64)>>,
    /// Where the PV's extents start, from the PV's start.
    pub pe_start: u64,
    /// `lvs -o lv_name,seg_pe_ranges,lv_size` of the VG, the PV's device name replaced by `PV`.
    pub lvs_report: String,
    /// Deleted files' and free extents' bytes: none of them may be in a store after a capture.
    pub junk: Vec<Vec<u8>>,
    /// Size of `/initrd.img`.
    pub initrd_bytes: u64,
}

impl RhelDisk {
    /// The marker line's start, as the serial console shows it.
    pub fn marker_line(&self) -> String {
        format!("{ROOT_MARKER} marker={}", self.marker)
    }

    /// The root device the kernel is given and the marker line must name.
    pub fn root_device(&self) -> String {
        format!("/dev/mapper/{}-root", self.vg)
    }

    /// A read-only loop device over the PV partition of `image` (this disk or a restore of it).
    pub fn pv_loop(&self, image: &Path) -> Loop {
        let p = self.disk.partition(PV);
        Loop::attach(&["-r", "-o", &p.offset.to_string(), "--sizelimit", &p.size.to_string(), image.to_str().unwrap()])
    }

    /// Copies LV `name` out of `image` (this disk or a restore of it) into the file `out`, at
    /// the extents the source's metadata gave it.
    pub fn extract_lv(&self, image: &Path, name: &str, out: &Path) {
        let i = LVS.iter().position(|(n, _)| *n == name).unwrap_or_else(|| panic!("no LV {name}"));
        let segs = &self.segments[i];
        std::fs::File::create(out).unwrap().set_len(segs.iter().map(|s| s.2).sum::<u64>() * EXTENT).unwrap();
        // The disk image as the "PV", its extents counted from the partition's start.
        move_lv(image, out, segs, self.disk.partition(PV).offset + self.pe_start, EXTENT, false);
    }
}

/// Builds the disk as `dir/name` ([`DISK_SIZE`] bytes). Panics naming the missing package.
pub fn build(dir: &Path, name: &str, marker: &str) -> RhelDisk {
    for (path, package) in
        [(GRUB_PC, "grub-pc-bin"), (BUSYBOX, "busybox-static"), (MKINITRAMFS, "initramfs-tools"), (LVM2_HOOK, "lvm2")]
    {
        assert!(Path::new(path).exists(), "{path} is missing: apt-get install -y {package}");
    }
    let kernel = TestKernel::installed();
    let vg = unique_name("rhel");
    // Unique per build: two XFS with one UUID cannot be mounted at once (parallel tests).
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let boot_uuid = format!("4b555241-{:04x}-4000-8000-{:012x}", std::process::id() & 0xffff, nanos & 0xffff_ffff_ffff);
    let work = tempfile::Builder::new().prefix(&format!("{name}.build")).tempdir_in(dir).unwrap();
    let w = work.path();
    let mut junk = Vec::new();

    // /boot: the kernel and an initramfs made by initramfs-tools.
    let initrd = w.join("initrd.img");
    mkinitramfs(&kernel, w, &initrd);
    let initrd_bytes = std::fs::metadata(&initrd).unwrap().len();
    let boot_junk = random_bytes(0x7268_0001, 4 * MIB as usize);
    let boot_img = w.join("boot.img");
    let boot_files = xfs_image(&boot_img, BOOT_SIZE, &["-L", "boot", "-m", &format!("uuid={boot_uuid}")], |root| {
        with_deleted_file(root, &boot_junk, || {
            std::fs::copy(&kernel.vmlinuz, root.join("vmlinuz")).expect("cannot read the kernel (run as root)");
            std::fs::copy(&initrd, root.join("initrd.img")).unwrap();
        });
    });
    junk.push(boot_junk);

    // The PV: stale junk first (what free extents hold), then the VG and its LVs.
    let pv = w.join("pv.img");
    let free_junk = random_bytes(0x7268_0002, 4 * MIB as usize);
    {
        let mut f = std::fs::File::create(&pv).unwrap();
        f.set_len(PV_SIZE).unwrap();
        for i in 0..PV_SIZE / (16 * MIB) {
            f.seek(SeekFrom::Start(i * 16 * MIB + 8 * MIB)).unwrap();
            f.write_all(&free_junk).unwrap();
        }
    }
    let (segs, pe, lvs_report) = {
        let lp = Loop::attach(&[pv.to_str().unwrap()]);
        let d = lp.0.as_str();
        lvm(d, "pvcreate", &["-y", d]);
        lvm(d, "vgcreate", &["-s", &format!("{}m", EXTENT / MIB), &vg, d]);
        for (lv, size) in LVS {
            lvm(d, "lvcreate", &["-an", "-Zn", "-y", "-L", &format!("{}m", size / MIB), "-n", lv, &vg]);
        }
        let segs: Vec<_> = LVS.iter().map(|(lv, _)| segments(d, &vg, lv)).collect();
        let report = lvm(d, "lvs", &["--noheadings", "-o", "lv_name,seg_pe_ranges,lv_size", &vg]).replace(d, "PV");
        (segs, pe_start(d), report)
    };
    let used_extents: u64 = segs.iter().flatten().map(|s| s.2).sum();
    let extents = (PV_SIZE - pe) / EXTENT;
    assert!(used_extents + 8 <= extents, "{used_extents} of {extents} extents used: too few free extents for junk");
    junk.push(free_junk);

    // The root LV: the static busybox and the init printing the marker; a deleted file.
    let root_junk = random_bytes(0x7268_0003, 4 * MIB as usize);
    let root_img = w.join("lv-root.img");
    let init = format!(
        "#!/bin/busybox sh\n\
         b=/bin/busybox\n\
         $b mount -t proc proc /proc 2>/dev/null\n\
         echo \"{ROOT_MARKER} marker=$($b cat /etc/kura-marker) kernel=$($b uname -r) \
         root=$($b awk '$2 == \"/\" {{print $1}}' /proc/mounts | $b tail -n 1)\" > /dev/console\n\
         $b poweroff -f\n\
         while true; do $b sleep 3600; done\n"
    );
    let root_files = xfs_image(&root_img, LVS[0].1, &["-L", "root"], |root| {
        with_deleted_file(root, &root_junk, || populate_root(root, &init, marker, &vg))
    });
    junk.push(root_junk);
    let swap_img = w.join("lv-swap.img");
    std::fs::File::create(&swap_img).unwrap().set_len(LVS[1].1).unwrap();
    run("mkswap", ["-q", "-L", "swap", swap_img.to_str().unwrap()]);
    for (img, s) in [&root_img, &swap_img].into_iter().zip(&segs) {
        move_lv(&pv, img, s, pe, EXTENT, true);
        std::fs::remove_file(img).unwrap();
    }

    let parts = vec![
        PartSpec::gpt(MIB, "EF02", "bios", Content::Empty),
        PartSpec::gpt(BOOT_SIZE, "8300", "boot", Content::Image { fs: Fs::Raw, path: boot_img.clone() }),
        PartSpec::gpt(PV_SIZE, "8E00", "lvm", Content::Image { fs: Fs::Raw, path: pv.clone() }),
    ];
    let disk = build_gpt(dir, name, DISK_SIZE, parts);

    // GRUB for BIOS: /boot by its UUID, the kernel with the root LV.
    let cfg = w.join("grub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
             echo {GRUB_MARKER} bios: loading the kernel\n\
             search --no-floppy --fs-uuid --set=root {boot_uuid}\n\
             linux /vmlinuz root=/dev/mapper/{vg}-root ro console=ttyS0 panic=-1 loglevel=5\n\
             initrd /initrd.img\n\
             boot\n"
        ),
    )
    .unwrap();
    let core = w.join("core.img");
    grub_mkimage(
        "i386-pc",
        GRUB_PC,
        &core,
        &cfg,
        &["biosdisk", "part_gpt", "xfs", "lvm", "search", "search_fs_uuid", "linux", "serial", "terminal", "echo"],
    );
    install_grub_bios(&disk.path, disk.partition(BIOS_BOOT), std::fs::read(&core).unwrap());

    RhelDisk {
        disk,
        vg,
        marker: marker.to_owned(),
        boot_uuid,
        boot_files,
        root_files,
        segments: segs,
        pe_start: pe,
        lvs_report,
        junk,
        initrd_bytes,
    }
}

/// `junk` written to `root/deleted.bin` and synced, `populate` run, then the file removed: its
/// blocks are free but still hold it.
fn with_deleted_file(root: &Path, junk: &[u8], populate: impl FnOnce()) {
    let f = root.join("deleted.bin");
    std::fs::write(&f, junk).unwrap();
    run("sync", [f.to_str().unwrap()]);
    populate();
    std::fs::remove_file(&f).unwrap();
}

/// The root LV's files: the static busybox, `/sbin/init` (`init`), the marker.
fn populate_root(root: &Path, init: &str, marker: &str, vg: &str) {
    for d in ["bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("sbin/init"), init).unwrap();
    for exe in ["bin/busybox", "sbin/init"] {
        std::fs::set_permissions(root.join(exe), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(root.join("etc/kura-marker"), marker).unwrap();
    std::fs::write(root.join("etc/hostname"), "rhel01\n").unwrap();
    std::fs::write(root.join("etc/fstab"), format!("/dev/mapper/{vg}-root / xfs defaults 0 0\n")).unwrap();
}

/// `mkinitramfs` with a configuration of its own in `work` (not the host's): `MODULES=list`
/// with [`INITRD_MODULES`], root XFS, no resume device; the hooks (udev, lvm2, xfs, busybox)
/// are the installed ones.
fn mkinitramfs(kernel: &TestKernel, work: &Path, out: &Path) {
    let conf = work.join("initramfs-tools");
    for d in ["conf.d", "hooks", "scripts"] {
        std::fs::create_dir_all(conf.join(d)).unwrap();
    }
    std::fs::write(
        conf.join("initramfs.conf"),
        "MODULES=list\nBUSYBOX=auto\nKEYMAP=n\nCOMPRESS=zstd\nDEVICE=\nNFSROOT=auto\nRUNSIZE=10%\nFSTYPE=xfs\nRESUME=none\n",
    )
    .unwrap();
    std::fs::write(conf.join("modules"), INITRD_MODULES.join("\n") + "\n").unwrap();
    run(MKINITRAMFS, ["-d", conf.to_str().unwrap(), "-o", out.to_str().unwrap(), &kernel.release]);
}
