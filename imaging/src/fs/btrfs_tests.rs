//! Tests of the btrfs reader against filesystems made by `mkfs.btrfs` (and changed through a
//! loop mount: subvolumes, snapshots, deleted files), checked exactly against what
//! `btrfs inspect-internal dump-tree` prints of the chunk and extent trees.

use super::test_images::{file_of, require, run, run_out, Image};
use super::{probe, FsKind};
use crate::bitmap::Bitmap;
use proptest::prelude::*;
use std::io::Cursor;
use std::process::Command;

/// A btrfs image of `mib` MiB made with `mkfs.btrfs ARGS --rootdir` over a few files.
fn build(args: &[&str], mib: u64) -> Image {
    let img = Image::new(mib);
    let src = tempfile::tempdir().unwrap();
    for i in 0..8u32 {
        std::fs::write(src.path().join(format!("f{i}")), file_of(200_000 * (i as usize + 1), i)).unwrap();
    }
    std::fs::create_dir(src.path().join("dir")).unwrap();
    for i in 0..200u32 {
        std::fs::write(src.path().join("dir").join(format!("s{i}")), file_of(3000, 1000 + i)).unwrap();
    }
    let mut all = vec!["-q", "-f", "--rootdir", src.path().to_str().unwrap()];
    all.extend_from_slice(args);
    all.push(img.path_str());
    run("mkfs.btrfs", &all);
    img
}

/// The image mounted through a loop device on a temporary directory; unmounted on drop.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(img: &Image) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        require("umount");
        run("mount", &["-t", "btrfs", "-o", "loop", img.path_str(), dir.path().to_str().unwrap()]);
        Mounted { dir }
    }
    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = Command::new(require("umount")).arg(self.dir.path()).output().unwrap();
        if !out.status.success() && !std::thread::panicking() {
            panic!("umount failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// (logical, length, flags text, stripe offsets) of every chunk, from `dump-tree -t chunk`.
fn tool_chunks(img: &Image) -> Vec<(u64, u64, String, Vec<u64>)> {
    let out = run_out("btrfs", &["inspect-internal", "dump-tree", "-t", "chunk", img.path_str()]);
    let mut chunks: Vec<(u64, u64, String, Vec<u64>)> = Vec::new();
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("item ").and_then(|l| l.split_once("CHUNK_ITEM ")) {
            let logical = rest.1.split(')').next().unwrap().parse().unwrap();
            chunks.push((logical, 0, String::new(), Vec::new()));
        } else if let (Some(c), Some(rest)) = (chunks.last_mut(), line.strip_prefix("length ")) {
            if c.1 == 0 {
                let f: Vec<&str> = rest.split_whitespace().collect();
                c.1 = f[0].parse().unwrap();
                c.2 = f[f.iter().position(|w| *w == "type").unwrap() + 1].to_string();
            }
        } else if let (Some(c), Some(rest)) = (chunks.last_mut(), line.strip_prefix("stripe ")) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(f[1..3], ["devid", "1"]);
            c.3.push(f[4].parse().unwrap());
        }
    }
    assert!(!chunks.is_empty(), "{out}");
    chunks
}

/// (logical, length) of every extent, from `dump-tree -t extent`.
fn tool_extents(img: &Image, nodesize: u64) -> Vec<(u64, u64)> {
    let out = run_out("btrfs", &["inspect-internal", "dump-tree", "-t", "extent", img.path_str()]);
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("item ").and_then(|l| l.split_once("key (")).map(|x| x.1))
        .filter_map(|k| {
            let f: Vec<&str> = k.split([' ', ')']).collect();
            match f[1] {
                "EXTENT_ITEM" => Some((f[0].parse().unwrap(), f[2].parse().unwrap())),
                "METADATA_ITEM" => Some((f[0].parse().unwrap(), nodesize)),
                _ => None,
            }
        })
        .collect()
}

/// The map the reader's rules give, computed from the tools' output alone.
fn expected(img: &Image, sector: u64, nodesize: u64) -> Bitmap {
    let chunks = tool_chunks(img);
    let size = img.size();
    let mut bm = Bitmap::new(size / sector);
    let mut mark = |s: u64, l: u64| bm.set_range(s / sector, (s + l).div_ceil(sector) - s / sector);
    mark(0, 1 << 20);
    for m in [0x10000u64, 64 << 20, 256 << 30] {
        if m + 4096 <= size {
            mark(m, 4096);
        }
    }
    for (_, len, ty, stripes) in &chunks {
        if ty.starts_with("SYSTEM") {
            stripes.iter().for_each(|&s| mark(s, *len));
        }
    }
    let extents = tool_extents(img, nodesize);
    assert!(extents.len() > 10, "dump-tree listed {} extents", extents.len());
    for (logical, len) in extents {
        let (cl, _, _, stripes) =
            chunks.iter().find(|c| c.0 <= logical && logical < c.0 + c.1).expect("extent outside every chunk");
        stripes.iter().for_each(|&s| mark(s + logical - cl, len));
    }
    bm
}

fn check_exact(img: &Image, sector: u64, nodesize: u64) -> super::AllocationMap {
    let map = img.probe(None);
    assert_eq!(map.kind, FsKind::Btrfs, "{:?}", map.warnings);
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    assert_eq!(map.block_size as u64, sector);
    let want = expected(img, sector, nodesize);
    assert_eq!(map.bitmap.len(), want.len());
    let diff: Vec<u64> = (0..want.len()).filter(|&i| map.bitmap.get(i) != want.get(i)).take(10).collect();
    assert!(diff.is_empty(), "blocks differing from dump-tree: {diff:?}");
    map
}

#[test]
fn maps_equal_dump_tree_on_mkfs_variants() {
    require("mkfs.btrfs");
    for (args, nodesize) in [
        (&[][..], 16384u64),
        (&["-m", "single"][..], 16384),
        (&["-n", "4096"][..], 4096),
        (&["--mixed"][..], 4096),
        (&["-L", "suse-root", "-m", "dup", "-d", "single", "-n", "65536"][..], 65536),
    ] {
        let img = build(args, 400);
        let map = check_exact(&img, 4096, nodesize);
        let used = map.used_bytes(img.size());
        // 3.4 MiB of files; metadata and the reserved first MiB on top, never the whole disk.
        assert!(used > 3 << 20 && used < 64 << 20, "{args:?}: {used} bytes used");
        if args.contains(&"suse-root") {
            assert_eq!(map.label.as_deref(), Some("suse-root"));
        }
    }
}

#[test]
fn subvolumes_snapshots_and_deleted_files_map_exactly() {
    let img = build(&[], 512);
    {
        let m = Mounted::new(&img);
        let p = m.path();
        run("btrfs", &["subvolume", "create", p.join("@home").to_str().unwrap()]);
        std::fs::write(p.join("@home/data"), file_of(20 << 20, 5)).unwrap();
        std::fs::write(p.join("@home/junk"), file_of(40 << 20, 6)).unwrap();
        run(
            "btrfs",
            &["subvolume", "snapshot", p.join("@home").to_str().unwrap(), p.join("@home-snap").to_str().unwrap()],
        );
        std::fs::remove_file(p.join("@home/junk")).unwrap();
        std::fs::remove_file(p.join("@home-snap/junk")).unwrap();
        std::fs::write(p.join("@home/after"), file_of(8 << 20, 7)).unwrap();
        run("sync", &[]);
    }
    let map = check_exact(&img, 4096, 16384);
    let used = map.used_bytes(img.size());
    // 28 MiB of live data + the mkfs files; the deleted 40 MiB are not captured.
    assert!(used > 30 << 20 && used < 60 << 20, "{used} bytes used");
}

#[test]
fn a_log_tree_keeps_metadata_chunks_whole() {
    let img = build(&[], 400);
    let copy = Image::new(400);
    {
        let m = Mounted::new(&img);
        run("sync", &[]);
        // An fsync of a new file writes a log tree and points the superblock at it; the copy taken
        // before the next commit is what a crash leaves.
        let f = std::fs::File::create(m.path().join("fsynced")).unwrap();
        use std::io::Write;
        (&f).write_all(&file_of(1 << 20, 9)).unwrap();
        f.sync_all().unwrap();
        std::fs::copy(img.path_str(), copy.path_str()).unwrap();
    }
    let mut sb = vec![0u8; 4096];
    let bytes = copy.bytes();
    sb.copy_from_slice(&bytes[0x10000..0x11000]);
    let log_root = u64::from_le_bytes(sb[0x60..0x68].try_into().unwrap());
    assert_ne!(log_root, 0, "the copy has a log tree (else the test proves nothing)");
    let map = copy.probe(None);
    assert_eq!(map.kind, FsKind::Btrfs, "{:?}", map.warnings);
    assert!(map.warnings.iter().any(|w| w.contains("log tree")), "{:?}", map.warnings);
    for (_, len, ty, stripes) in tool_chunks(&copy) {
        if ty.starts_with("METADATA") {
            for s in stripes {
                assert_eq!(map.bitmap.runs_in(s / 4096, len / 4096).map(|r| r.1).sum::<u64>(), len / 4096);
            }
        }
    }
}

#[test]
fn two_device_filesystems_are_raw() {
    let a = Image::new(300);
    let b = Image::new(300);
    run("mkfs.btrfs", &["-q", "-f", "-d", "raid1", "-m", "raid1", a.path_str(), b.path_str()]);
    let map = a.probe(None);
    assert_eq!(map.kind, FsKind::Raw);
    assert!(map.warnings[0].contains("2 devices"), "{:?}", map.warnings);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    /// Mutated superblocks and tree blocks (checksums re-fixed half the time so the walks are
    /// reached) never panic, and the map never exceeds the partition.
    #[test]
    fn mutated_metadata_never_panics(edits in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..6), fix in any::<bool>()) {
        static IMG: std::sync::OnceLock<std::sync::Mutex<(Vec<u8>, Vec<u64>)>> = std::sync::OnceLock::new();
        let mut guard = IMG.get_or_init(|| {
            let img = build(&["-m", "single", "-n", "4096"], 128);
            // Where the tree blocks are: every metadata/system chunk stripe.
            let mut blocks = vec![0x10000u64];
            for (_, len, ty, stripes) in tool_chunks(&img) {
                if !ty.starts_with("DATA") {
                    for s in stripes {
                        blocks.extend((0..len.min(1 << 20) / 4096).map(|i| s + i * 4096));
                    }
                }
            }
            std::sync::Mutex::new((img.bytes(), blocks))
        }).lock().unwrap_or_else(|e| e.into_inner());
        let (img, blocks) = &mut *guard;
        // Edits are undone afterwards: (offset, original bytes) of every block touched.
        let mut undo: Vec<(usize, Vec<u8>)> = Vec::new();
        for (at, byte) in edits {
            let block = blocks[at as usize % blocks.len()] as usize;
            let off = block + (at as usize >> 8) % 4096;
            undo.push((block, img[block..block + 4096].to_vec()));
            img[off] = byte;
            if fix {
                let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&img[block + 32..block + 4096]);
                img[block..block + 4].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let size = img.len() as u64;
        let map = probe(&mut Cursor::new(&*img), size, None);
        for (block, orig) in undo.into_iter().rev() {
            img[block..block + 4096].copy_from_slice(&orig);
        }
        prop_assert!(map.bitmap.len() * map.block_size as u64 <= size);
    }
}
