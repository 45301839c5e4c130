//! UEFI boot tests: which boot loader on the snapshot's ESP to start, and the small helper disk
//! that starts it.
//!
//! A server finds its boot loader through a boot entry in its own NVRAM, which no snapshot
//! holds; the test machine's variable store is empty, so its firmware finds only the
//! removable-media path `\EFI\BOOT\BOOTX64.EFI` by itself. When the ESP has no such file, the
//! machine gets a second, tiny disk (GPT + FAT) whose `\EFI\BOOT\BOOTX64.EFI` is a GRUB built
//! here with `grub-mkstandalone` (package grub-efi-amd64-bin) that chainloads the snapshot's
//! loader, found in this order: the distributions' shims and Windows' boot manager (the list
//! the netboot local boot uses, [`kura_netboot::grub::LOCAL_LOADERS`]), then any
//! `\EFI\<vendor>\shimx64.efi` or `grubx64.efi`, then the removable path. The helper prints
//! `Kura boot test: chainloading …` and nothing the console reader counts as a boot stage.

use crate::files::{self, FsReader};
use crate::snapshot_disk::SnapshotDisk;
use anyhow::{bail, Context, Result};
use kura_imaging::fs::FsKind;
use kura_imaging::layout::{gpt_types, PartitionEntry};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// The firmware's own path for removable media.
pub const REMOVABLE: &str = "/EFI/BOOT/BOOTX64.EFI";

/// The ESP's boot loader to start, as a `/`-separated path, or `None` when the snapshot has no
/// readable ESP or no loader on it.
pub fn find_loader(disk: &Arc<SnapshotDisk>) -> Result<Option<String>> {
    let esps: Vec<u32> = disk
        .manifest()
        .layout
        .partitions
        .iter()
        .filter(|p| matches!(&p.entry, PartitionEntry::Gpt { type_guid, .. } if type_guid.eq_ignore_ascii_case(gpt_types::EFI_SYSTEM)))
        .map(|p| p.number)
        .collect();
    for part in files::partitions(disk).into_iter().filter(|p| esps.contains(&p.number) && p.fs == FsKind::Fat) {
        let mut fs = files::open(disk, &part)?;
        if let Some(found) = loader_on(fs.as_mut())? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn loader_on(fs: &mut dyn FsReader) -> Result<Option<String>> {
    let exists = |fs: &mut dyn FsReader, path: &str| -> bool {
        files::parse_path(path).is_ok_and(|p| fs.stat(&p).is_ok_and(|e| e.kind == files::Kind::File))
    };
    for path in kura_netboot::grub::LOCAL_LOADERS.iter().filter(|p| **p != REMOVABLE) {
        if exists(fs, path) {
            return Ok(Some((*path).to_string()));
        }
    }
    let mut vendors = Vec::new();
    if let Ok(efi) = files::parse_path("/EFI") {
        if fs.stat(&efi).is_ok_and(|e| e.kind == files::Kind::Dir) {
            for e in files::sorted_children(fs, &efi)? {
                if e.kind == files::Kind::Dir && !e.name.eq_ignore_ascii_case("BOOT") {
                    vendors.push(e.name);
                }
            }
        }
    }
    for file in ["shimx64.efi", "grubx64.efi"] {
        for v in &vendors {
            let path = format!("/EFI/{v}/{file}");
            if exists(fs, &path) {
                return Ok(Some(path));
            }
        }
    }
    Ok(exists(fs, REMOVABLE).then(|| REMOVABLE.to_string()))
}

/// Builds the helper disk (16 MiB: GPT, one FAT ESP) in `work` that chainloads `loader`.
pub fn helper_disk(work: &Path, loader: &str) -> Result<PathBuf> {
    if loader.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == '$' || c == '\\') {
        bail!("boot loader path {loader:?} cannot be written into a GRUB configuration");
    }
    let cfg = work.join("helper-grub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "set timeout=0\n\
             echo 'Kura boot test: chainloading the disk loader {loader}'\n\
             search --no-floppy --file --set=root {loader}\n\
             chainloader {loader}\n\
             boot\n\
             echo 'Kura boot test: the disk loader {loader} did not start'\n"
        ),
    )?;
    let efi = work.join("BOOTX64.EFI");
    tool(
        "grub-mkstandalone",
        "grub-efi-amd64-bin",
        &[
            "-O",
            "x86_64-efi",
            "-o",
            path_str(&efi)?,
            "--modules=part_gpt part_msdos fat search search_fs_file chain echo",
            "--locales=",
            "--fonts=",
            "--themes=",
            &format!("boot/grub/grub.cfg={}", path_str(&cfg)?),
        ],
    )?;
    let fat = work.join("helper-esp.fat");
    let _ = std::fs::remove_file(&fat);
    tool("mkfs.vfat", "dosfstools", &["-C", path_str(&fat)?, "14336"])?;
    tool("mmd", "mtools", &["-i", path_str(&fat)?, "::/EFI", "::/EFI/BOOT"])?;
    tool("mcopy", "mtools", &["-i", path_str(&fat)?, path_str(&efi)?, "::/EFI/BOOT/BOOTX64.EFI"])?;
    let disk = work.join("helper.img");
    let f = std::fs::File::create(&disk)?;
    f.set_len(16 << 20)?;
    drop(f);
    tool("sgdisk", "gdisk", &["-n1:2048:0", "-t1:EF00", path_str(&disk)?])?;
    let bytes = std::fs::read(&fat)?;
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(&disk)?.write_all_at(&bytes, 1 << 20)?;
    Ok(disk)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Runs a tool, failing with its output, or naming its package when it is missing.
pub(super) fn tool(program: &str, package: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .with_context(|| format!("cannot run {program}: apt-get install -y {package}"))?;
    if !out.status.success() {
        bail!("{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
