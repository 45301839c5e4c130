//! Kura's test disks: real disk image files built with the filesystems' own tools, and the
//! deterministic content that goes into them. The end-to-end tests (`kura-tests`) and
//! `kura bench` both build their disks here, so there is one disk builder and one content
//! generator.
//!
//! Nothing needs root, loop devices or mounts (except [`stacks_disk`]'s LVM volume group): each filesystem is made in its own image file
//! (`mkfs.ext4 -d`, `mkntfs` + `ntfscp`, `mkfs.vfat` + `mmd`/`mcopy`, `mkswap`), the disk file is
//! partitioned with `sgdisk` (GPT) or `sfdisk` (MBR), and the images are copied into place.
//!
//! - [`content`]: the seeded RNG and byte generators (incompressible, text-like, log lines,
//!   patterns), and the small file trees of the test fixtures.
//! - [`bulk`]: large file trees written straight to disk (generated files, real system files).
//! - [`tools`]: running the system tools; a missing tool's error names its Debian package.
//! - [`image`]: filesystem images and plain file surgery (placing, patching, reading at offsets).
//! - [`disk`]: partitioned disks from a list of partition specs, and what they should contain;
//!   deleted files leave their bytes as junk in free space.
//! - [`bench_disk`]: the half-full ext4 + NTFS disk that `kura bench` measures, and its copy
//!   with about 1 % of the ext4 files changed.
//! - [`month_disk`]: a realistic disk (junk in free space, `/usr`, databases, logs, NTFS) and
//!   the same disk after a scripted month of changes, for `kura bench --month`.
//! - [`stacks_disk`]: the RHEL-style disk (`/boot` XFS, LVM with XFS root and home, swap) plus a
//!   btrfs volume that `kura bench --stacks` measures.
//!
//! Needs gdisk, fdisk, e2fsprogs, ntfs-3g, dosfstools, mtools and util-linux (for what is used).

pub mod bench_disk;
pub mod bulk;
pub mod content;
pub mod disk;
pub mod image;
pub mod month_disk;
pub mod stacks_disk;
pub mod tools;

/// 2^20 bytes.
pub const MIB: u64 = 1 << 20;
/// The sector size every disk here uses.
pub const SECTOR: u64 = 512;
