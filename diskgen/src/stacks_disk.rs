//! The disk `kura bench --stacks` measures: a RHEL-style server disk with a SUSE-style btrfs
//! volume beside it, every filesystem made by its own tools over old junk (so free space holds
//! stale data, as on a real server):
//!
//! ```text
//! p1 ESP      FAT32, 128 MiB          mkfs.vfat + mcopy
//! p2 /boot    XFS, 512 MiB            mkfs.xfs -p protofile (no mount)
//! p3 LVM2 PV  VG "kurabench":         pvcreate/vgcreate/lvcreate on a loop device, activation off
//!               root  XFS (~60 %)     made in its own image, copied to its extents
//!               home  XFS (~30 %)
//!               swap  128 MiB         mkswap
//!               free extents (junk)
//! p4 btrfs    ~20 % of the disk       mkfs.btrfs --rootdir (no mount)
//! ```
//!
//! Beside the disk: each volume's image on its own (what `partclone.<fs>` reads, as Clonezilla
//! images each LV). Root only: LVM's tools need a loop device (no device-mapper is used).
//! Needs xfsprogs, btrfs-progs, lvm2, dosfstools, mtools, gdisk, util-linux.

use crate::bulk::{generate_files, SystemFiles};
use crate::content::XorShift;
use crate::disk::{build_gpt_zero_gaps, Content, Fs, PartSpec};
use crate::image::{make_fat, make_swap, sync_file};
use crate::tools::run;
use crate::MIB;
use anyhow::{bail, ensure, Context, Result};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const KIB: u64 = 1 << 10;
/// The smallest disk the layout makes sense for.
pub const MIN_SIZE: u64 = 4096 * MIB;
const SEED: u64 = 0x7374_6163_6b73;
/// The volume group's extent size.
const EXTENT: u64 = 4 * MIB;

/// One filesystem of the disk, where it lies and its own image.
pub struct Volume {
    /// `esp`, `boot`, `root`, `home`, `btrfs`.
    pub name: &'static str,
    /// The filesystem type as partclone names it: `vfat`, `xfs`, `btrfs`.
    pub fs: &'static str,
    /// Byte offset on the disk (an LV is one contiguous segment).
    pub start: u64,
    pub size: u64,
    /// The volume on its own (byte-identical to the disk's copy).
    pub image: PathBuf,
}

pub struct StacksDisk {
    pub path: PathBuf,
    pub size: u64,
    pub volumes: Vec<Volume>,
    /// The swap LV (partclone has no swap back end; Clonezilla recreates swap with mkswap).
    pub swap: (u64, u64),
}

/// Builds the disk of `size` bytes (whole MiB, at least [`MIN_SIZE`]) in `work` as
/// `stacks.img`, the volumes' images beside it. `say` hears what is being done.
pub fn build(work: &Path, size: u64, say: &dyn Fn(&str)) -> Result<StacksDisk> {
    ensure!(
        size >= MIN_SIZE && size.is_multiple_of(MIB),
        "the stacks disk must be whole MiB, at least {MIN_SIZE} bytes"
    );
    let usable = size - 2 * MIB;
    let esp = 128 * MIB;
    let boot = 512 * MIB;
    let btrfs = (usable - esp - boot) / 5 / MIB * MIB;
    let pv = usable - esp - boot - btrfs;
    let swap = 128 * MIB;
    let pe_count_guess = (pv - MIB) / EXTENT - 1;
    let root_ext = (pe_count_guess - swap / EXTENT) * 6 / 10;
    let home_ext = (pe_count_guess - swap / EXTENT) * 3 / 10;
    let mut rng = XorShift::new(SEED);
    let mut sys = SystemFiles::new();

    say("  ESP: mkfs.vfat, mcopy");
    let esp_img = work.join("esp.img");
    let esp_src = work.join("esp-src");
    generate_files(&esp_src.join("EFI/redhat"), 24 * MIB, &[256 * KIB, 4 * MIB], &mut rng, true)?;
    let esp_files: Vec<String> = fs::read_dir(esp_src.join("EFI/redhat"))?
        .map(|e| Ok(format!("EFI/redhat/{}", e?.file_name().to_string_lossy())))
        .collect::<Result<_>>()?;
    let names: Vec<&str> = esp_files.iter().map(String::as_str).collect();
    make_fat(&esp_img, esp, 32, "ESP", MIB, &esp_src, &names)?;
    fs::remove_dir_all(&esp_src)?;

    say("  /boot: XFS from a protofile");
    let boot_img = work.join("boot.img");
    xfs_volume(&boot_img, boot, "boot", 45, &mut sys, &mut rng, work)?;

    say("  LVM: root and home XFS, swap");
    let root_img = work.join("root.img");
    xfs_volume(&root_img, root_ext * EXTENT, "root", 50, &mut sys, &mut rng, work)?;
    let home_img = work.join("home.img");
    xfs_volume(&home_img, home_ext * EXTENT, "home", 40, &mut sys, &mut rng, work)?;
    let swap_img = work.join("swap.img");
    make_swap(&swap_img, swap, "swap", None)?;
    let pv_img = work.join("pv.img");
    junk_file(&pv_img, pv, &mut rng)?;
    let placed = make_vg(&pv_img, &[("root", root_ext), ("home", home_ext), ("swap", swap / EXTENT)])?;
    for (name, img) in [("root", &root_img), ("home", &home_img), ("swap", &swap_img)] {
        let at = placed.iter().find(|p| p.0 == name).context("LV not placed")?.1;
        copy_into(img, &pv_img, at)?;
    }

    say("  btrfs: mkfs.btrfs --rootdir");
    let btrfs_img = work.join("btrfs.img");
    let src = work.join("btrfs-src");
    sys.copy_into(&src.join("usr"), btrfs * 25 / 100)?;
    generate_files(&src.join("srv/data"), btrfs * 20 / 100, &[64 * KIB, 2 * MIB, 16 * MIB], &mut rng, false)?;
    junk_file(&btrfs_img, btrfs, &mut rng)?;
    run(
        "mkfs.btrfs",
        [
            "-q".as_ref(),
            "-f".as_ref(),
            "-K".as_ref(),
            "-L".as_ref(),
            "data".as_ref(),
            "--rootdir".as_ref(),
            src.as_os_str(),
            btrfs_img.as_os_str(),
        ],
    )?;
    fs::remove_dir_all(&src)?;

    say("  disk: sgdisk, volumes placed");
    let parts = vec![
        PartSpec::gpt(esp, "EF00", "esp", Content::Image { fs: Fs::Fat, path: esp_img.clone() }),
        PartSpec::gpt(boot, "8300", "boot", Content::Image { fs: Fs::Raw, path: boot_img.clone() }),
        PartSpec::gpt(pv, "8E00", "lvm", Content::Image { fs: Fs::Raw, path: pv_img.clone() }),
        PartSpec::gpt(btrfs, "8300", "data", Content::Image { fs: Fs::Raw, path: btrfs_img.clone() }),
    ];
    let disk = build_gpt_zero_gaps(work, "stacks.img", size, parts)?;
    let offset = |n: u32| disk.partition(n).offset;
    let lv_at = |name: &str| -> u64 { offset(3) + placed.iter().find(|p| p.0 == name).map_or(0, |p| p.1) };
    sync_file(&disk.path)?;
    fs::remove_file(&pv_img)?;
    fs::remove_file(&swap_img)?;
    let volumes = vec![
        Volume { name: "esp", fs: "vfat", start: offset(1), size: esp, image: esp_img },
        Volume { name: "boot", fs: "xfs", start: offset(2), size: boot, image: boot_img },
        Volume { name: "root", fs: "xfs", start: lv_at("root"), size: root_ext * EXTENT, image: root_img },
        Volume { name: "home", fs: "xfs", start: lv_at("home"), size: home_ext * EXTENT, image: home_img },
        Volume { name: "btrfs", fs: "btrfs", start: offset(4), size: btrfs, image: btrfs_img },
    ];
    for v in &volumes {
        sync_file(&v.image)?;
    }
    let swap = (lv_at("swap"), swap);
    Ok(StacksDisk { path: disk.path.clone(), size, volumes, swap })
}

/// A file of `size` bytes of old junk (pseudo-random, so it neither compresses nor dedups).
fn junk_file(path: &Path, size: u64, rng: &mut XorShift) -> Result<()> {
    let mut f = fs::File::create(path)?;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        rng.fill(&mut buf);
        f.write_all(&buf)?;
    }
    f.set_len(size)?;
    Ok(())
}

/// An XFS image of `size` bytes over junk, `percent` of it filled with system files and
/// generated text and data, made by `mkfs.xfs -p` from a protofile.
fn xfs_volume(
    img: &Path,
    size: u64,
    label: &str,
    percent: u64,
    sys: &mut SystemFiles,
    rng: &mut XorShift,
    work: &Path,
) -> Result<()> {
    let src = work.join(format!("{label}-src"));
    let budget = size * percent / 100;
    sys.copy_into(&src.join("usr"), budget / 2)?;
    generate_files(&src.join("var/log"), budget / 4, &[16 * KIB, MIB, 8 * MIB], rng, false)?;
    generate_files(&src.join("var/lib/db"), budget / 4, &[256 * KIB, 4 * MIB, 32 * MIB], rng, true)?;
    let proto = work.join(format!("{label}.proto"));
    fs::write(&proto, protofile(&src)?)?;
    junk_file(img, size, rng)?;
    run(
        "mkfs.xfs",
        [
            "-q".as_ref(),
            "-f".as_ref(),
            "-K".as_ref(),
            "-L".as_ref(),
            label.as_ref(),
            "-p".as_ref(),
            proto.as_os_str(),
            img.as_os_str(),
        ],
    )?;
    fs::remove_dir_all(&src)?;
    fs::remove_file(&proto)?;
    Ok(())
}

/// mkfs.xfs's protofile for the tree at `root`: directories and regular files (mode 0755/0644,
/// owner root); names with whitespace are left out (the format cannot quote them).
fn protofile(root: &Path) -> Result<String> {
    fn dir(out: &mut String, path: &Path, depth: usize) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(path)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.chars().any(char::is_whitespace) || name.is_empty() {
                continue;
            }
            let t = e.file_type()?;
            let pad = " ".repeat(depth);
            if t.is_dir() {
                writeln!(out, "{pad}{name} d--755 0 0")?;
                dir(out, &e.path(), depth + 1)?;
                writeln!(out, "{pad}$")?;
            } else if t.is_file() {
                let p = e.path();
                let ps = p.to_str().context("non-UTF-8 path")?;
                if ps.chars().any(char::is_whitespace) {
                    continue;
                }
                writeln!(out, "{pad}{name} ---644 0 0 {ps}")?;
            }
        }
        Ok(())
    }
    let mut out = String::from("/dev/null\n0 0\nd--755 0 0\n");
    dir(&mut out, root, 1)?;
    out.push_str("$\n");
    Ok(out)
}

/// Makes `pv` (a file) an LVM2 PV holding VG `kurabench` with the LVs (name, extents), each one
/// contiguous segment, with LVM's own tools on a loop device, activation off. Returns each LV's
/// byte offset in the PV.
fn make_vg(pv: &Path, lvs: &[(&'static str, u64)]) -> Result<Vec<(&'static str, u64)>> {
    let dev = run("losetup", ["-f".as_ref(), "--show".as_ref(), pv.as_os_str()])
        .context("kura bench --stacks needs root: LVM's tools work on a loop device")?
        .trim()
        .to_string();
    let result = (|| -> Result<Vec<(&'static str, u64)>> {
        let lvm = |cmd: &str, args: &[&str]| -> Result<String> {
            let config = format!(
                "global {{ activation = 0 }} backup {{ backup = 0 archive = 0 }} devices {{ use_devicesfile = 0 \
                 obtain_device_list_from_udev = 0 filter = [ \"a|^{dev}$|\", \"r|.*|\" ] }}"
            );
            let mut all = vec![cmd, "--config", &config];
            all.extend_from_slice(args);
            run("lvm", all)
        };
        lvm("pvcreate", &["-y", "-q", &dev])?;
        lvm("vgcreate", &["-q", "-s", "4m", "kurabench", &dev])?;
        for (name, extents) in lvs {
            lvm(
                "lvcreate",
                &[
                    "-q",
                    "-an",
                    "-Zn",
                    "-y",
                    "--alloc",
                    "contiguous",
                    "-l",
                    &extents.to_string(),
                    "-n",
                    name,
                    "kurabench",
                ],
            )?;
        }
        let pe_start: u64 = lvm("pvs", &["--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", &dev])?
            .trim()
            .parse()
            .context("pvs printed no pe_start")?;
        let mut out = Vec::new();
        for (name, _) in lvs {
            let ranges = lvm("lvs", &["--noheadings", "-o", "seg_pe_ranges", &format!("kurabench/{name}")])?;
            let ranges = ranges.trim();
            // "/dev/loop3:0-299"
            let (first, _) = ranges.rsplit(':').next().and_then(|r| r.split_once('-')).context("seg_pe_ranges")?;
            if ranges.lines().count() != 1 {
                bail!("LV {name} is not one segment: {ranges}");
            }
            out.push((*name, pe_start + first.parse::<u64>()? * EXTENT));
        }
        Ok(out)
    })();
    run("losetup", ["-d", &dev])?;
    result
}

/// Writes the whole of `img` into `dst` at `offset`.
fn copy_into(img: &Path, dst: &Path, offset: u64) -> Result<()> {
    let mut src = fs::File::open(img)?;
    let mut d = OpenOptions::new().write(true).open(dst)?;
    d.seek(SeekFrom::Start(offset))?;
    std::io::copy(&mut src, &mut d)?;
    Ok(())
}
