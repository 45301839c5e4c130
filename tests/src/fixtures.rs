//! The disks of the imaging issue, built fresh in a directory the test owns.

use std::path::Path;

use crate::content::{esp_files, linux_root_files, ntfs_files, random_bytes, text_bytes, FileSpec};
use crate::disks::{build_gpt, build_mbr, Content, Disk, PartSpec, MIB};

/// GPT attribute bits.
pub const REQUIRED: u8 = 0;
pub const HIDDEN: u8 = 62;
pub const NO_AUTOMOUNT: u8 = 63;

/// (a) A Linux-style GPT disk, 355 MiB:
/// 1 EFI system (FAT32, 64 MiB), 2 BIOS boot (1 MiB of non-zero bytes), 3 root (ext4, 4 KiB
/// blocks, 192 MiB), 4 swap (32 MiB), 5 data (NTFS, 64 MiB).
pub fn gpt_linux(dir: &Path) -> Disk {
    build_gpt(
        dir,
        "gpt-linux.img",
        355 * MIB,
        vec![
            PartSpec::gpt(64 * MIB, "ef00", "EFI system partition", esp(1000)),
            PartSpec::gpt(MIB, "ef02", "BIOS boot partition", Content::Raw(random_bytes(2000, MIB as usize))),
            PartSpec::gpt(192 * MIB, "8300", "root", ext4("root", 4096, linux_root_files(3000, 4))),
            PartSpec::gpt(32 * MIB, "8200", "swap", Content::Swap { label: "swap", stale: None }),
            PartSpec::gpt(64 * MIB, "0700", "data", ntfs("DATA", ntfs_files(4000))),
        ],
    )
}

/// (b) A legacy MBR disk, 200 MiB: 1 ext4 (1 KiB blocks, 80 MiB, bootable), 2 FAT16 (32 MiB),
/// 3 extended over the rest, holding 5 ext4 (40 MiB) and 6 NTFS (40 MiB).
pub fn mbr_legacy(dir: &Path) -> Disk {
    build_mbr(
        dir,
        "mbr-legacy.img",
        200 * MIB,
        vec![
            PartSpec::mbr(80 * MIB, 0x83, ext4("boot", 1024, linux_root_files(5000, 2))).bootable(),
            PartSpec::mbr(32 * MIB, 0x06, fat(16, "DOSDATA", esp_files(6000))),
            PartSpec::mbr(40 * MIB, 0x83, ext4("home", 4096, home_files(7000))).logical(),
            PartSpec::mbr(40 * MIB, 0x07, ntfs("SHARED", ntfs_files(8000))).logical(),
        ],
    )
}

/// (c) A Windows-style GPT disk, 274 MiB: 1 EFI system (FAT32, 64 MiB), 2 Microsoft reserved
/// (16 MiB, zeros), 3 Windows (NTFS, 128 MiB), 4 recovery (NTFS, 64 MiB, required + hidden +
/// no automount), with the names Windows gives them.
pub fn gpt_windows(dir: &Path) -> Disk {
    let mut windows = ntfs_files(9000);
    windows.push(FileSpec::new("pagefile.sys", random_bytes(9100, 3 * MIB as usize)));
    windows.push(FileSpec::new("bootmgr", random_bytes(9200, 400_000)));
    let recovery = vec![
        FileSpec::new("Winre.wim", random_bytes(9300, 3 * MIB as usize + 12345)),
        FileSpec::new("ReAgent.xml", text_bytes(9400, 1_500)),
    ];
    build_gpt(
        dir,
        "gpt-windows.img",
        274 * MIB,
        vec![
            PartSpec::gpt(64 * MIB, "ef00", "EFI system partition", esp(9500)),
            PartSpec::gpt(16 * MIB, "0c01", "Microsoft reserved partition", Content::Empty),
            PartSpec::gpt(128 * MIB, "0700", "Basic data partition", ntfs("Windows", windows)),
            PartSpec::gpt(64 * MIB, "2700", "Recovery", ntfs("Recovery", recovery)).attrs(&[
                REQUIRED,
                HIDDEN,
                NO_AUTOMOUNT,
            ]),
        ],
    )
}

/// Sizes of what [`with_deleted_data`] leaves behind in free space.
pub const DELETED_EXT4: usize = 32 * MIB as usize;
pub const DELETED_NTFS: usize = 24 * MIB as usize;
pub const STALE_SWAP: usize = 32 * MIB as usize;

/// (d) A GPT disk, 226 MiB, whose free space is full of old incompressible data:
/// 1 ext4 (128 MiB) where a 32 MiB file was written then deleted, 2 NTFS (64 MiB) where a
/// 24 MiB file was written then truncated to nothing, 3 swap (32 MiB) full of old pages.
/// Returns the disk and the stale bytes (ext4 file, NTFS file, swap), none of which may be
/// captured.
pub fn with_deleted_data(dir: &Path) -> (Disk, Vec<Vec<u8>>) {
    let ext4_big = random_bytes(11_000, DELETED_EXT4);
    let ntfs_big = random_bytes(12_000, DELETED_NTFS);
    let swap_old = random_bytes(13_000, STALE_SWAP);
    let disk = build_gpt(
        dir,
        "deleted.img",
        226 * MIB,
        vec![
            PartSpec::gpt(
                128 * MIB,
                "8300",
                "root",
                Content::Ext4 {
                    label: "root",
                    block_size: 4096,
                    files: linux_root_files(10_000, 1),
                    deleted: vec![FileSpec::new("var/tmp/big.iso", ext4_big.clone())],
                },
            ),
            PartSpec::gpt(
                64 * MIB,
                "0700",
                "data",
                Content::Ntfs {
                    label: "DATA",
                    files: ntfs_files(10_500),
                    deleted: vec![FileSpec::new("big.vhd", ntfs_big.clone())],
                },
            ),
            PartSpec::gpt(32 * MIB, "8200", "swap", Content::Swap { label: "swap", stale: Some(swap_old.clone()) }),
        ],
    );
    (disk, vec![ext4_big, ntfs_big, swap_old])
}

/// (e) A small GPT disk for the bad-input tests, 48 MiB: 1 ext4 (1 KiB blocks, 24 MiB),
/// 2 FAT16 (16 MiB).
pub fn small_gpt(dir: &Path) -> Disk {
    build_gpt(
        dir,
        "small.img",
        48 * MIB,
        vec![
            PartSpec::gpt(24 * MIB, "8300", "root", ext4("small", 1024, home_files(14_000))),
            PartSpec::gpt(16 * MIB, "0700", "data", fat(16, "SMALL", esp_files(15_000))),
        ],
    )
}

fn home_files(seed: u64) -> Vec<FileSpec> {
    vec![
        FileSpec::new("user/.profile", text_bytes(seed + 1, 800)),
        FileSpec::new("user/docs/thesis.tex", text_bytes(seed + 2, 250_000)),
        FileSpec::new("user/docs/figures/plot.png", random_bytes(seed + 3, 700_000)),
        FileSpec::new("user/music/track01.ogg", random_bytes(seed + 4, 2_600_000)),
        FileSpec::new("user/.cache/empty", Vec::new()),
        FileSpec::new("shared/notes.md", text_bytes(seed + 5, 9_000)),
    ]
}

fn esp(seed: u64) -> Content {
    Content::Fat { bits: 32, label: "ESP", files: esp_files(seed) }
}

fn fat(bits: u8, label: &'static str, files: Vec<FileSpec>) -> Content {
    Content::Fat { bits, label, files }
}

fn ext4(label: &'static str, block_size: u32, files: Vec<FileSpec>) -> Content {
    Content::Ext4 { label, block_size, files, deleted: Vec::new() }
}

fn ntfs(label: &'static str, files: Vec<FileSpec>) -> Content {
    Content::Ntfs { label, files, deleted: Vec::new() }
}
