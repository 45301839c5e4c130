//! A bootable GPT Linux system disk for the imaging-environment tests, built from installed
//! packages into an image file (no root, no loop devices):
//!
//! ```text
//! p1  1 MiB  BIOS boot   GRUB's core.img (i386-pc); GRUB's boot.img in LBA 0 points at it
//! p2 32 MiB  ESP, FAT16  GRUB for UEFI at \EFI\kura\grubx64.efi only: no \EFI\BOOT fallback,
//!                        so firmware with empty variables cannot find it by itself
//! p3 96 MiB  ext4 root   /boot/vmlinuz (the distribution kernel), /boot/initrd.img (loads
//!                        virtio_blk + ext4, mounts the root by UUID, switch_root), /bin/busybox,
//!                        /sbin/init printing the marker, /etc/kura-marker, some files
//! p4 32 MiB  NTFS data   a few files
//! ```
//!
//! Both GRUB images carry an embedded configuration that finds the root by its filesystem
//! UUID and boots the kernel from it with `root=UUID=…`: so the marker proves that the boot
//! loader (boot sector and BIOS boot partition, or the ESP), the kernel and the root
//! filesystem all came back. `/sbin/init` prints
//!
//! ```text
//! KURA-ROOT-MARKER marker=<marker> kernel=<release> root=<device>
//! ```
//!
//! and powers off. Needs grub-pc-bin, grub-efi-amd64-bin, busybox-static, linux-image-amd64,
//! e2fsprogs, dosfstools + mtools, ntfs-3g, gdisk.
//!
//! [`build_signed`] makes the Secure Boot variant: the same disk, but the ESP holds Debian's
//! signed chain instead of a GRUB made here, as a Debian system installed with Secure Boot has
//! it:
//!
//! ```text
//! \EFI\debian\shimx64.efi   shim-signed's shimx64.efi.signed (Microsoft-signed)
//! \EFI\debian\grubx64.efi   grub-efi-amd64-signed's grubx64.efi.signed (Debian-signed;
//!                           reads grub.cfg from its prefix, /EFI/debian)
//! \EFI\debian\mmx64.efi     MokManager (mmx64.efi.signed), as Debian installs it
//! \EFI\debian\grub.cfg      finds the root by UUID, boots /boot/vmlinuz (the signed kernel)
//! \EFI\BOOT\BOOTX64.EFI     only with `fallback`: shim again, with grubx64.efi beside it, so
//!                           firmware with empty variables boots the disk; no fbx64.efi (shim
//!                           would run it, and it writes its own boot entry and resets)
//! ```
//!
//! Its `/sbin/init` prints one more line before the marker, what the running kernel saw:
//!
//! ```text
//! KURA-SECURE-BOOT secureboot=<0|1> lockdown=<none|integrity|…> bootcurrent=<hex Boot####>
//! ```
//!
//! Needs shim-signed and grub-efi-amd64-signed as well.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bootimage::{Initramfs, TestKernel};
use crate::content::{ntfs_files, sha256_hex, text_bytes, FileSpec};
use crate::disks::{build_gpt, debugfs_w, read_at, write_at, Content, Disk, Fs, PartSpec, Partition, MIB, SECTOR};

/// What the restored system's `/sbin/init` prints first on its line.
pub const ROOT_MARKER: &str = "KURA-ROOT-MARKER";
/// What GRUB prints before it loads the kernel (BIOS builds, on the serial console).
pub const GRUB_MARKER: &str = "KURA-GRUB";
/// Where the UEFI loader lives on the ESP (its "own path").
pub const EFI_LOADER: &str = "EFI/kura/grubx64.efi";
/// Where the signed variant's shim lives on the ESP.
pub const SHIM_LOADER: &str = "EFI/debian/shimx64.efi";
/// What the signed variant's `/sbin/init` prints first on its Secure Boot line.
pub const SECURE_BOOT_MARKER: &str = "KURA-SECURE-BOOT";

/// Debian's signed boot chain: (file, package).
const SHIM: (&str, &str) = ("/usr/lib/shim/shimx64.efi.signed", "shim-signed");
const MOK_MANAGER: (&str, &str) = ("/usr/lib/shim/mmx64.efi.signed", "shim-signed");
const SIGNED_GRUB: (&str, &str) = ("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", "grub-efi-amd64-signed");

/// GRUB's i386-pc modules and images (package grub-pc-bin).
pub const GRUB_PC: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI: &str = "/usr/lib/grub/x86_64-efi";
const BUSYBOX: &str = "/bin/busybox";

/// Partition numbers.
pub const BIOS_BOOT: u32 = 1;
pub const ESP: u32 = 2;
pub const ROOT: u32 = 3;
pub const DATA: u32 = 4;

/// Size of the disk [`build`] makes.
pub const DISK_SIZE: u64 = 176 * MIB;
const ROOT_SIZE: u64 = 96 * MIB;

/// The system disk and what it should boot to.
pub struct BootDisk {
    pub disk: Disk,
    /// The root filesystem's UUID.
    pub root_uuid: String,
    /// The text `/sbin/init` prints after `marker=`.
    pub marker: String,
}

impl BootDisk {
    /// The marker line's start, as the serial console shows it.
    pub fn marker_line(&self) -> String {
        format!("{ROOT_MARKER} marker={}", self.marker)
    }
}

/// Builds the disk as `dir/name` ([`DISK_SIZE`] bytes). Panics naming the missing package.
pub fn build(dir: &Path, name: &str, marker: &str) -> BootDisk {
    build_with(dir, name, marker, 0)
}

/// Like [`build`], with an incompressible `/srv/big.bin` of `big` bytes (whole MiB) on a root
/// that much larger: a capture that takes a while.
pub fn build_with(dir: &Path, name: &str, marker: &str, big: u64) -> BootDisk {
    build_variant(dir, name, marker, big, Esp::Own)
}

/// The Secure Boot variant (see the module comment), with or without the removable-media
/// fallback `\EFI\BOOT\BOOTX64.EFI`.
pub fn build_signed(dir: &Path, name: &str, marker: &str, fallback: bool) -> BootDisk {
    build_variant(dir, name, marker, 0, Esp::Signed { fallback })
}

/// What the ESP holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esp {
    /// A GRUB made here with grub-mkimage at [`EFI_LOADER`] (unsigned).
    Own,
    /// Debian's signed shim, GRUB and kernel.
    Signed { fallback: bool },
}

fn build_variant(dir: &Path, name: &str, marker: &str, big: u64, esp: Esp) -> BootDisk {
    assert_eq!(big % MIB, 0, "whole MiB");
    for (path, package) in [(GRUB_PC, "grub-pc-bin"), (GRUB_EFI, "grub-efi-amd64-bin"), (BUSYBOX, "busybox-static")] {
        assert!(Path::new(path).exists(), "{path} is missing: apt-get install -y {package}");
    }
    if esp != Esp::Own {
        for (path, package) in [SHIM, MOK_MANAGER, SIGNED_GRUB] {
            assert!(Path::new(path).exists(), "{path} is missing: apt-get install -y {package}");
        }
    }
    let kernel = TestKernel::installed();
    let root_uuid = "4b555241-0000-4000-8000-726f6f746673".to_string();

    // The GRUB images, each with the configuration that boots the root.
    let work = dir.join(format!("{name}.grub"));
    std::fs::create_dir_all(&work).unwrap();
    let boot_cmds = format!(
        "search --no-floppy --fs-uuid --set=root {root_uuid}\n\
         linux /boot/vmlinuz root=UUID={root_uuid} console=ttyS0 panic=-1 loglevel=5\n\
         initrd /boot/initrd.img\n\
         boot\n"
    );
    let pc_cfg = work.join("pc.cfg");
    std::fs::write(
        &pc_cfg,
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
             echo {GRUB_MARKER} bios: loading the kernel\n{boot_cmds}"
        ),
    )
    .unwrap();
    let efi_cfg = work.join("efi.cfg");
    if esp == Esp::Own {
        std::fs::write(&efi_cfg, format!("echo {GRUB_MARKER} efi: loading the kernel\n{boot_cmds}")).unwrap();
    }
    let core = work.join("core.img");
    grub_mkimage(
        "i386-pc",
        GRUB_PC,
        &core,
        &pc_cfg,
        &["biosdisk", "part_gpt", "ext2", "search", "search_fs_uuid", "linux", "serial", "terminal", "echo"],
    );
    let efi = work.join("grubx64.efi");
    let esp_files = match esp {
        Esp::Own => {
            grub_mkimage(
                "x86_64-efi",
                GRUB_EFI,
                &efi,
                &efi_cfg,
                &["part_gpt", "fat", "ext2", "search", "search_fs_uuid", "linux", "echo"],
            );
            vec![FileSpec::new(EFI_LOADER, std::fs::read(&efi).unwrap())]
        }
        Esp::Signed { fallback } => {
            let read = |(path, _): (&str, &str)| std::fs::read(path).unwrap();
            let cfg = format!("echo {GRUB_MARKER} efi-signed: loading the kernel\n{boot_cmds}");
            let mut files = vec![
                FileSpec::new(SHIM_LOADER, read(SHIM)),
                FileSpec::new("EFI/debian/grubx64.efi", read(SIGNED_GRUB)),
                FileSpec::new("EFI/debian/mmx64.efi", read(MOK_MANAGER)),
                FileSpec::new("EFI/debian/grub.cfg", cfg.into_bytes()),
            ];
            if fallback {
                files.push(FileSpec::new("EFI/BOOT/BOOTX64.EFI", read(SHIM)));
                files.push(FileSpec::new("EFI/BOOT/grubx64.efi", read(SIGNED_GRUB)));
            }
            files
        }
    };
    let core_bytes = std::fs::read(&core).unwrap();
    assert!(
        core_bytes.len() as u64 <= MIB,
        "core.img is {} bytes: too big for the BIOS boot partition",
        core_bytes.len()
    );

    // The root's initramfs: mount the root by UUID, switch to it.
    // The signed variant's init reads the firmware's variables: efivarfs is a module.
    let modules: &[&str] = match esp {
        Esp::Own => &["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"],
        Esp::Signed { .. } => &["virtio_pci", "virtio_blk", "ext4", "crc32c_generic", "efivarfs"],
    };
    let initrd = Initramfs::new(&kernel, "rootinit")
        .modules(modules)
        .power_off(false)
        .script_line(
            r#"uuid=$(sed -n 's/.*root=UUID=\([^ ]*\).*/\1/p' /proc/cmdline)
dev=
for try in $(seq 1 100); do dev=$(findfs UUID=$uuid 2>/dev/null) && break; sleep 0.1; done
say root uuid=$uuid dev=$dev
mkdir -p /newroot
if mount -t ext4 -o ro "$dev" /newroot; then
  mount --move /dev /newroot/dev 2>/dev/null
  exec switch_root /newroot /sbin/init
fi
say root-mount-failed uuid=$uuid dev=$dev
poweroff -f"#,
        )
        .build(&work);

    // The signed variant's line on Secure Boot: the firmware's SecureBoot and BootCurrent
    // variables (efivarfs: 4 attribute bytes, then the data) and the kernel's lockdown mode.
    let secure_boot_line = match esp {
        Esp::Own => String::new(),
        Esp::Signed { .. } => format!(
            "b=/bin/busybox\n\
             $b mount -t sysfs sysfs /sys\n\
             $b mount -t efivarfs efivarfs /sys/firmware/efi/efivars\n\
             $b mount -t securityfs securityfs /sys/kernel/security\n\
             v=/sys/firmware/efi/efivars\n\
             g=8be4df61-93ca-11d2-aa0d-00e098032b8c\n\
             sb=$($b tail -c 1 $v/SecureBoot-$g | $b od -An -tu1 | $b tr -d ' ')\n\
             bc=$($b tail -c 2 $v/BootCurrent-$g | $b od -An -tx2 | $b tr -d ' ')\n\
             ld=$($b sed -n 's/.*\\[\\(.*\\)\\].*/\\1/p' /sys/kernel/security/lockdown)\n\
             echo \"{SECURE_BOOT_MARKER} secureboot=$sb lockdown=$ld bootcurrent=$bc\" > /dev/console\n"
        ),
    };
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         {secure_boot_line}\
         echo \"{ROOT_MARKER} marker=$(/bin/busybox cat /etc/kura-marker) kernel=$(/bin/busybox uname -r) \
         root=$(/bin/busybox awk '$2 == \"/\" {{print $1}}' /proc/mounts | /bin/busybox tail -n 1)\" > /dev/console\n\
         /bin/busybox poweroff -f\n\
         while true; do /bin/busybox sleep 3600; done\n"
    );
    let mut root_files = vec![
        FileSpec::new("boot/vmlinuz", std::fs::read(&kernel.vmlinuz).expect("cannot read the kernel (run as root)")),
        FileSpec::new("boot/initrd.img", std::fs::read(&initrd).unwrap()),
        FileSpec::new("bin/busybox", std::fs::read(BUSYBOX).unwrap()),
        FileSpec::new("sbin/init", init.into_bytes()),
        FileSpec::new("etc/kura-marker", marker.as_bytes().to_vec()),
        FileSpec::new("etc/hostname", b"kura-e2e\n".to_vec()),
    ];
    if big > 0 {
        root_files.push(FileSpec::new("srv/big.bin", crate::content::random_bytes(4242, big as usize)));
    }
    for i in 0..6 {
        root_files
            .push(FileSpec::new(format!("srv/app/data{i}.txt"), text_bytes(300 + i, 200_000 + 50_000 * i as usize)));
    }

    let parts = vec![
        PartSpec::gpt(MIB, "EF02", "bios", Content::Empty),
        PartSpec::gpt(32 * MIB, "EF00", "esp", Content::Fat { bits: 16, label: "ESP", files: esp_files }),
        PartSpec::gpt(ROOT_SIZE + big, "8300", "root", Content::Empty),
        PartSpec::gpt(
            32 * MIB,
            "0700",
            "data",
            Content::Ntfs { label: "DATA", files: ntfs_files(77), deleted: vec![] },
        ),
    ];
    let mut disk = build_gpt(dir, name, DISK_SIZE + big, parts);

    // The root filesystem, made here for its UUID.
    let root = disk.partition(ROOT).clone();
    let tree = work.join("root");
    for f in &root_files {
        let p = tree.join(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &f.data).unwrap();
    }
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-U", &root_uuid, "-E"])
        .arg(format!("offset={},nodiscard", root.offset))
        .arg("-d")
        .arg(&tree)
        .arg(&disk.path)
        .arg(format!("{}k", root.size / 1024)));
    let target = PathBuf::from(format!("{}?offset={}", disk.path.display(), root.offset));
    for exe in ["/bin/busybox", "/sbin/init"] {
        debugfs_w(&target, &format!("sif {exe} mode 0100755"));
    }
    let files: BTreeMap<String, String> = root_files.iter().map(|f| (f.path.clone(), sha256_hex(&f.data))).collect();
    let p = disk.partition_mut(ROOT);
    p.fs = Fs::Ext4;
    p.file_bytes = root_files.iter().map(|f| f.data.len() as u64).sum();
    p.files = files;

    install_grub_bios(&disk.path, disk.partition(BIOS_BOOT), core_bytes);
    std::fs::remove_dir_all(&tree).unwrap();

    BootDisk { disk, root_uuid, marker: marker.to_owned() }
}

/// GRUB for BIOS as grub-install would lay it out, without it: `core_bytes` (an i386-pc
/// `core.img` from [`grub_mkimage`], at most the partition's size) in the BIOS boot partition
/// `bios`, and GRUB's `boot.img` in LBA 0 pointing at it. The partition table in LBA 0 is kept.
pub fn install_grub_bios(disk: &Path, bios: &Partition, core_bytes: Vec<u8>) {
    assert!(
        core_bytes.len() as u64 <= bios.size,
        "core.img is {} bytes: too big for the BIOS boot partition ({} bytes)",
        core_bytes.len(),
        bios.size
    );
    let start_lba = bios.offset / SECTOR;
    let mut core_bytes = core_bytes;
    let sectors = core_bytes.len().div_ceil(SECTOR as usize);
    core_bytes.resize(sectors * SECTOR as usize, 0);
    // diskboot.img's block list (the last 12 bytes of core.img's first sector): the rest of
    // core.img, loaded at segment 0x820.
    let bl = SECTOR as usize - 12;
    core_bytes[bl..bl + 8].copy_from_slice(&(start_lba + 1).to_le_bytes());
    core_bytes[bl + 8..bl + 10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    core_bytes[bl + 10..bl + 12].copy_from_slice(&0x820u16.to_le_bytes());
    write_at(disk, bios.offset, &core_bytes);
    let boot_img = std::fs::read(Path::new(GRUB_PC).join("boot.img")).unwrap();
    assert_eq!(boot_img.len(), 512);
    let mut mbr = read_at(disk, 0, 512);
    // The code, but not the BPB area (3..0x5A) nor the disk signature and table (0x1B8..).
    mbr[..3].copy_from_slice(&boot_img[..3]);
    mbr[0x5A..0x1B8].copy_from_slice(&boot_img[0x5A..0x1B8]);
    // GRUB_BOOT_MACHINE_KERNEL_SECTOR: where core.img starts.
    mbr[0x5C..0x64].copy_from_slice(&start_lba.to_le_bytes());
    write_at(disk, 0, &mbr);
}

/// `grub-mkimage -O FORMAT -d DIR -p /boot/grub -c CONFIG -o OUT MODULES…`: a GRUB image with
/// `config` embedded.
pub fn grub_mkimage(format: &str, dir: &str, out: &Path, config: &Path, modules: &[&str]) {
    run(Command::new("grub-mkimage")
        .args(["-O", format, "-d", dir, "-p", "/boot/grub", "-c"])
        .arg(config)
        .arg("-o")
        .arg(out)
        .args(modules));
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
