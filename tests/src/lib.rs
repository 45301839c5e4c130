//! Test support for Kura's end-to-end tests.
//!
//! The tests build real disk images with real tools (sgdisk, sfdisk, mkfs.ext4, mkntfs,
//! mkfs.vfat, mkswap — no root, no loop devices), run the real `kura` binary on them, and check
//! the results with readers that share no code with Kura.
//!
//! - [`content`]: deterministic file contents (text-like, incompressible, patterns).
//! - [`tools`]: running the system tools.
//! - [`disks`]: building partitioned disk image files; [`fixtures`]: the disks of the issue.
//! - [`readback`]: reading files back from ext4, NTFS and FAT partitions of an image.
//! - [`checkers`]: fsck of every filesystem of an image.
//! - [`tables`]: partition tables and bytes outside filesystems, source against restored.
//! - [`damage`]: breaking disks on purpose (truncation, GPT headers, overlaps).
//! - [`store`]: looking inside a chunk store by its documented layout.
//! - [`s3`]: a real S3 server (SeaweedFS) and the [`s3::Backend`] parameterised engine tests
//!   run on (local store and SQLite, or S3 and PostgreSQL); [`s3_api`]: signed S3 calls from
//!   the outside (Object Lock, versions).
//! - [`kura_cli`]: running the `kura` binary and decoding its `--json` output.
//! - [`engine`]: a real `kura serve` child process, the CLI against it, raw API calls;
//!   [`proxy`]: a loopback proxy that follows, holds or drops its HTTP messages.
//! - [`bmc`]: real BMCs for power control: `ipmi_sim` (IPMI, optionally driving a QEMU
//!   machine) and sushy-tools' Redfish emulator.
//! - [`rawconn`]: raw plain or TLS connections from chosen loopback addresses (partial requests,
//!   held connections), the open-files limit, a process's memory figures.
//! - [`webhook`], [`smtp`]: notification receivers (an HTTP server; aiosmtpd with STARTTLS).
//! - [`postgres`]: a throwaway PostgreSQL cluster on a Unix socket (the catalog's second backend).
//! - [`space`]: free disk space a heavy test needs, checked before it starts.
//! - [`lvm`]: LVM2 volume groups and XFS filesystems in image files, without device-mapper (root:
//!   loop devices and mounts).
//!
//! Netbooting real machines (root only, run as root in CI):
//! - [`netns`]: a private network namespace per test (bridge, taps), torn down on drop.
//! - [`site_dhcp`]: the site's plain DHCP server (dnsmasq, DHCP only) inside it.
//! - [`qemu`]: QEMU machines (SeaBIOS or OVMF, PXE or direct kernel boot) on its bridge.
//! - [`bootimage`]: a tiny busybox initramfs and the distribution kernel for them.
//! - [`netboot`]: `kura serve --netboot` inside the namespace, and the CLI and API from there.
//! - [`bootdisk`]: a bootable GPT Linux system disk (GRUB for BIOS and UEFI, ext4 root, NTFS).
//! - [`md`]: software RAID arrays made (and checked) by mdadm in a machine with the md driver.
//! - [`rhel_disk`]: a bootable RHEL-style disk (GRUB for BIOS, `/boot` XFS, root XFS on LVM2).
//!
//! Needs the packages gdisk, fdisk, e2fsprogs, ntfs-3g, dosfstools, mtools and util-linux; the
//! netboot tests also need qemu-system-x86, ipxe-qemu, ipxe, ovmf, dnsmasq-base, busybox-static,
//! linux-image-amd64 and iproute2.

pub mod bmc;
pub mod bootdisk;
pub mod bootimage;
pub mod browser;
pub mod checkers;
pub mod content;
pub mod damage;
pub mod disks;
pub mod engine;
pub mod fixtures;
pub mod kura_cli;
pub mod lvm;
pub mod md;
pub mod netboot;
pub mod netns;
pub mod postgres;
pub mod proxy;
pub mod qemu;
pub mod rawconn;
pub mod readback;
pub mod rhel_disk;
pub mod s3;
pub mod s3_api;
pub mod site_dhcp;
pub mod smtp;
pub mod space;
pub mod store;
pub mod tables;
pub mod tools;
pub mod webhook;
