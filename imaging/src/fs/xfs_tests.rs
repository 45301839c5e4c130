//! Tests of the XFS reader against real filesystems made by `mkfs.xfs` (populated from a
//! protofile, or through a loop mount to delete files and fragment the free space), checked
//! exactly against `xfs_db` (`freesp -d`, `bmap`) and `xfs_logprint -t`.

use super::*;
use crate::fs::test_images::{file_of, require, run, run_out, Image};
use crate::fs::{probe, FsKind};
use proptest::prelude::*;
use std::io::{self, Cursor, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the test filesystems: mkfs.xfs refuses anything under 300 MB, and wants AGs that
/// hold its 64 MiB log. The images are sparse, and the reader only reads metadata.
const MIB: u64 = 1024;

/// Writes a protofile for a root with `small.txt`, `medium.bin`, `sub/big.bin` and
/// `many/fNNNN` (`many` small files), and returns its path.
fn protofile(img: &Image, many: usize) -> PathBuf {
    let dir = img.dir.path().join("content");
    std::fs::create_dir_all(&dir).unwrap();
    let put = |name: &str, data: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    };
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    proto += &format!("small.txt ---644 0 0 {}\n", put("small", b"hello kura\n".to_vec()));
    proto += &format!("medium.bin ---644 0 0 {}\n", put("medium", file_of(300_000, 9)));
    proto += &format!("sub d--755 0 0\nbig.bin ---644 0 0 {}\n$\n", put("big", file_of(3 << 20, 7)));
    if many > 0 {
        proto += "many d--755 0 0\n";
        for i in 0..many {
            let p = put(&format!("m{i}"), file_of(500 + 37 * (i % 100), i as u32));
            proto += &format!("f{i:04} ---644 0 0 {p}\n");
        }
        proto += "$\n";
    }
    proto += "$\n";
    let path = img.dir.path().join("proto");
    std::fs::write(&path, proto).unwrap();
    path
}

/// An XFS image made by `mkfs.xfs mkfs_args` from [`protofile`].
fn build(mkfs_args: &[&str], many: usize) -> Image {
    require("mkfs.xfs");
    let img = Image::new(MIB);
    let proto = protofile(&img, many);
    let mut args = vec!["-q", "-f", "-L", "kuratest", "-p", proto.to_str().unwrap()];
    args.extend_from_slice(mkfs_args);
    args.push(img.path_str());
    run("mkfs.xfs", &args);
    img
}

/// The image loop-mounted on a temporary directory; unmounted (which frees the loop device)
/// on drop, also when the test fails.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(img: &Image) -> Mounted {
        require("umount");
        let dir = tempfile::tempdir().unwrap();
        run("mount", &["-t", "xfs", "-o", "loop", img.path_str(), dir.path().to_str().unwrap()]);
        Mounted { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn unmount(self) {}
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = Command::new(require("umount")).arg(self.dir.path()).output().unwrap();
        if !out.status.success() && !std::thread::panicking() {
            panic!("umount failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Every free extent `xfs_db freesp -d` lists, as `(agno, agbno, len)`, sorted. (xfs_db lists
/// the free list blocks too, one block each.)
fn xfs_db_free(img: &Image) -> Vec<(u64, u64, u64)> {
    let out = run_out("xfs_db", &["-r", "-c", "freesp -d", img.path_str()]);
    let mut v = Vec::new();
    let mut histogram = false;
    for l in out.lines().skip_while(|l| !l.contains("agno")).skip(1) {
        let Ok(f) = l.split_whitespace().map(str::parse).collect::<Result<Vec<u64>, _>>() else {
            histogram = l.contains("from");
            break;
        };
        assert_eq!(f.len(), 3, "unexpected freesp line {l:?}");
        v.push((f[0], f[1], f[2]));
    }
    assert!(histogram, "freesp -d output not understood:\n{out}");
    v.sort_unstable();
    v
}

/// A superblock or AGF field from `xfs_db -r -c "<what>" -c "p <field>"`.
fn xfs_db_field(img: &Image, what: &str, field: &str) -> u64 {
    let out = run_out("xfs_db", &["-r", "-c", what, "-c", &format!("p {field}"), img.path_str()]);
    let v = out.trim().strip_prefix(&format!("{field} = ")).unwrap_or_else(|| panic!("{out}"));
    v.parse().unwrap_or_else(|_| panic!("{field} = {v}"))
}

/// `(agno, agbno, count)` of every extent of `path`, from `xfs_db bmap`.
fn file_extents(img: &Image, path: &str) -> Vec<(u64, u64, u64)> {
    let out = run_out("xfs_db", &["-r", "-c", &format!("path {path}"), "-c", "bmap", img.path_str()]);
    out.lines()
        .map(|l| {
            let (_, rest) = l.split_once('(').unwrap_or_else(|| panic!("bmap line {l:?}"));
            let (ag, rest) = rest.split_once('/').unwrap();
            let (bno, rest) = rest.split_once(") count ").unwrap();
            let count = rest.split_whitespace().next().unwrap();
            (ag.parse().unwrap(), bno.parse().unwrap(), count.parse().unwrap())
        })
        .collect()
}

/// `xfs_logprint -t`'s verdict on the log: true for `<CLEAN>`.
fn logprint_clean(img: &Image) -> bool {
    let out = run_out("xfs_logprint", &["-t", img.path_str()]);
    let state = out.lines().find(|l| l.contains("state:")).unwrap_or_else(|| panic!("{out}"));
    assert!(state.contains("<CLEAN>") || state.contains("<DIRTY>"), "{state}");
    state.contains("<CLEAN>")
}

/// Checks the free space and the map of `img` against xfs_db; returns the bnobt's deepest level.
fn check(img: &Image, files: &[&str]) -> u32 {
    require("xfs_db");
    require("xfs_logprint");
    assert!(logprint_clean(img), "xfs_logprint finds the log dirty");
    let (g, ags) = read_free_space(&mut std::fs::File::open(img.path_str()).unwrap(), img.size()).unwrap();
    let mut ours = Vec::new();
    for (agno, ag) in ags.iter().enumerate() {
        ours.extend(ag.extents.iter().map(|&(b, n)| (agno as u64, b, n)));
        ours.extend(ag.agfl.iter().map(|&b| (agno as u64, b, 1)));
    }
    ours.sort_unstable();
    assert_eq!(ours, xfs_db_free(img), "free extents and free list blocks differ from xfs_db freesp -d");
    assert_eq!(g.dblocks, xfs_db_field(img, "sb 0", "dblocks"));
    assert_eq!(g.agcount, xfs_db_field(img, "sb 0", "agcount"));

    let map = img.probe(None);
    assert_eq!(map.kind, FsKind::Xfs, "{:?}", map.warnings);
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    assert_eq!(map.label.as_deref(), Some("kuratest"));
    assert_eq!(map.block_size as u64, g.block_size);
    assert_eq!(map.bitmap.len(), g.dblocks);
    // Used = everything but the bnobt's extents. The superblock's free count (the kernel's
    // `xfs_initialize_perag_data`) also counts the free list blocks and the btree blocks past
    // the roots, which partclone (and Kura) capture.
    let free: u64 = ags.iter().flat_map(|a| &a.extents).map(|e| e.1).sum();
    let agfl: u64 = ags.iter().map(|a| a.agfl.len() as u64).sum();
    let btree: u64 = (0..g.agcount).map(|ag| xfs_db_field(img, &format!("agf {ag}"), "btreeblks")).sum();
    assert_eq!(map.bitmap.count_ones(), g.dblocks - free);
    assert_eq!(
        free + agfl + btree,
        xfs_db_field(img, "sb 0", "fdblocks"),
        "bnobt + AGFL + btree blocks vs the superblock's free count"
    );
    assert_eq!(map.used_bytes(img.size()), img.size() - free * g.block_size);
    for path in files {
        let ext = file_extents(img, path);
        assert!(!ext.is_empty(), "{path} has no extents");
        for (ag, bno, n) in ext {
            let first = ag * g.agblocks + bno;
            assert_eq!(map.bitmap.runs_in(first, n).map(|r| r.1).sum::<u64>(), n, "{path}: {ag}/{bno}+{n} not used");
        }
    }
    // The internal log is used.
    assert_eq!(map.bitmap.runs_in(g.log_start, g.log_blocks).map(|r| r.1).sum::<u64>(), g.log_blocks);
    ags.iter().map(|a| a.bno_levels).max().unwrap()
}

const FILES: [&str; 3] = ["/small.txt", "/medium.bin", "/sub/big.bin"];

#[test]
fn v5_default() {
    let img = build(&[], 0);
    check(&img, &FILES);
}

#[test]
fn v5_1k_blocks_many_ags_many_files() {
    let img = build(&["-b", "size=1024", "-d", "agcount=8"], 400);
    check(&img, &[&FILES[..], &["/many/f0000", "/many/f0399"]].concat());
}

#[test]
fn v5_no_reflink_no_rmap_two_ags() {
    let img = build(&["-m", "reflink=0,rmapbt=0", "-d", "agcount=2"], 50);
    check(&img, &FILES);
}

#[test]
fn v5_reflink_rmap_finobt_sectors_4k() {
    let img = build(&["-m", "reflink=1,rmapbt=1,finobt=1", "-s", "size=4096", "-d", "agcount=3"], 50);
    check(&img, &FILES);
}

#[test]
fn v4_4k_blocks() {
    let img = build(&["-m", "crc=0", "-d", "agcount=4"], 100);
    check(&img, &FILES);
}

#[test]
fn v4_1k_blocks() {
    let img = build(&["-m", "crc=0", "-b", "size=1024", "-d", "agcount=5"], 100);
    check(&img, &FILES);
}

#[test]
fn nearly_empty_many_ags() {
    require("mkfs.xfs");
    let img = Image::new(2 * MIB);
    run("mkfs.xfs", &["-q", "-f", "-L", "kuratest", "-d", "agcount=16", img.path_str()]);
    check(&img, &[]);
    let map = img.probe(None);
    assert!(map.used_bytes(img.size()) < img.size() / 4, "an empty filesystem uses {}", map.used_bytes(img.size()));
}

/// Writes `n` files of `size` bytes into `dir`, then deletes every other one, leaving `n / 2`
/// separate free extents.
fn fragment(dir: &Path, n: usize, size: usize) {
    let data = file_of(size, 3);
    std::fs::create_dir(dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("f{i}")), &data).unwrap();
    }
    run("sync", &[]);
    for i in (0..n).step_by(2) {
        std::fs::remove_file(dir.join(format!("f{i}"))).unwrap();
    }
}

#[test]
fn fragmented_free_space_4k_two_levels() {
    let img = build(&["-d", "agcount=2"], 0);
    let m = Mounted::new(&img);
    fragment(&m.path().join("frag"), 3000, 4096);
    std::fs::write(m.path().join("after.bin"), file_of(1 << 20, 5)).unwrap();
    m.unmount();
    let levels = check(&img, &[&FILES[..], &["/frag/f1", "/frag/f2999", "/after.bin"]].concat());
    assert!(levels >= 2, "the bnobt reached only {levels} levels");
}

#[test]
fn fragmented_free_space_1k_three_levels() {
    let img = build(&["-b", "size=1024", "-d", "agcount=2"], 0);
    let m = Mounted::new(&img);
    fragment(&m.path().join("frag"), 24000, 1024);
    m.unmount();
    let levels = check(&img, &[&FILES[..], &["/frag/f1", "/frag/f23999"]].concat());
    assert!(levels >= 3, "the bnobt reached only {levels} levels");
}

#[test]
fn full_filesystem() {
    require("fallocate");
    let img = build(&["-d", "agcount=4"], 0);
    let m = Mounted::new(&img);
    let mut i = 0;
    for size in ["64M", "1M", "4K"] {
        loop {
            let p = m.path().join(format!("fill{i}"));
            i += 1;
            let ok = Command::new(require("fallocate")).args(["-l", size]).arg(&p).status().unwrap().success();
            if !ok {
                let _ = std::fs::remove_file(&p);
                break;
            }
        }
    }
    m.unmount();
    check(&img, &[&FILES[..], &["/fill0"]].concat());
    let map = img.probe(None);
    let used = map.used_bytes(img.size());
    assert!(used > img.size() / 100 * 95, "a full filesystem uses only {used} of {}", img.size());
}

#[test]
fn cleanly_unmounted_after_use_is_read() {
    let img = build(&[], 0);
    let m = Mounted::new(&img);
    for i in 0..200 {
        std::fs::write(m.path().join(format!("n{i}")), file_of(3000, i)).unwrap();
    }
    std::fs::remove_file(m.path().join("medium.bin")).unwrap();
    m.unmount();
    check(&img, &["/small.txt", "/sub/big.bin", "/n0", "/n199"]);
}

#[test]
fn dirty_log_is_raw() {
    require("xfs_io");
    let img = build(&[], 0);
    let m = Mounted::new(&img);
    for i in 0..50 {
        std::fs::write(m.path().join(format!("d{i}")), file_of(5000, i)).unwrap();
    }
    // Flush the log, then shut down without writing back the metadata: recovery is needed.
    run("xfs_io", &["-x", "-c", "shutdown -f", m.path().to_str().unwrap()]);
    m.unmount();
    assert!(!logprint_clean(&img), "xfs_logprint should find the log dirty");
    let map = img.probe(None);
    assert_eq!(map.kind, FsKind::Raw);
    assert!(map.warnings[0].starts_with("XFS filesystem rejected: the log is dirty"), "{:?}", map.warnings);
}

#[test]
fn external_log_is_raw() {
    let logdev = Image::new(80);
    let img = build(&["-l", &format!("logdev={},size=64m", logdev.path_str())], 0);
    let map = img.probe(None);
    assert_eq!(map.kind, FsKind::Raw);
    assert!(map.warnings[0].contains("external device"), "{:?}", map.warnings);
}

#[test]
fn realtime_section_is_raw() {
    let rtdev = Image::new(64);
    let img = build(&["-r", &format!("rtdev={}", rtdev.path_str())], 0);
    let map = img.probe(None);
    assert_eq!(map.kind, FsKind::Raw);
    assert!(map.warnings[0].contains("realtime"), "{:?}", map.warnings);
}

#[test]
fn inprogress_and_bad_crc_are_raw() {
    let img = build(&[], 0);
    let bytes_at = |off: u64, len: usize| {
        let mut b = vec![0u8; len];
        read_at_or(&mut std::fs::File::open(img.path_str()).unwrap(), off, &mut b, "test").unwrap();
        b
    };
    let sb = bytes_at(0, 512);
    let mut patched = sb.clone();
    patched[0x7E] = 1;
    fix_crc(&mut patched, SB_CRC_OFF);
    let map = probe(&mut Overlay::new(&img, vec![(0, patched)]), img.size(), None);
    assert!(map.warnings[0].contains("in progress"), "{:?}", map.warnings);
    let mut agf = bytes_at(512, 512);
    agf[0x34] ^= 1; // free block count, checksum not updated
    let map = probe(&mut Overlay::new(&img, vec![(512, agf.clone())]), img.size(), None);
    assert_eq!(map.kind, FsKind::Raw);
    assert!(map.warnings[0].contains("AG 0: AGF checksum"), "{:?}", map.warnings);
    fix_crc(&mut agf, AGF_CRC_OFF);
    let map = probe(&mut Overlay::new(&img, vec![(512, agf)]), img.size(), None);
    assert!(map.warnings[0].contains("free blocks but the AGF says"), "{:?}", map.warnings);
}

#[test]
fn filesystem_larger_than_partition_is_raw() {
    let img = build(&[], 0);
    let map = probe(&mut std::fs::File::open(img.path_str()).unwrap(), img.size() - 4096, None);
    assert_eq!(map.kind, FsKind::Raw);
    assert!(map.warnings[0].contains("larger than the partition"), "{:?}", map.warnings);
}

/// Recomputes the little-endian CRC32c at `off` of a v5 structure.
fn fix_crc(buf: &mut [u8], off: usize) {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    buf[off..off + 4].fill(0);
    let c = CRC32C.checksum(buf);
    buf[off..off + 4].copy_from_slice(&c.to_le_bytes());
}

/// An image file read through a list of replaced byte ranges: mutated metadata without copying
/// a 320 MiB image.
struct Overlay {
    file: std::fs::File,
    pos: u64,
    patches: Vec<(u64, Vec<u8>)>,
}

impl Overlay {
    fn new(img: &Image, patches: Vec<(u64, Vec<u8>)>) -> Overlay {
        Overlay { file: std::fs::File::open(img.path_str()).unwrap(), pos: 0, patches }
    }
}

impl Read for Overlay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let n = self.file.read(buf)?;
        for (off, bytes) in &self.patches {
            let (s, e) = (self.pos.max(*off), (self.pos + n as u64).min(off + bytes.len() as u64));
            if s < e {
                buf[(s - self.pos) as usize..(e - self.pos) as usize]
                    .copy_from_slice(&bytes[(s - off) as usize..(e - off) as usize]);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Overlay {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            _ => return Err(io::Error::other("only absolute seeks")),
        };
        Ok(self.pos)
    }
}

/// The metadata structures of a real image, as `(byte offset, length, CRC offset)`: the
/// superblock, AGF and AGFL of every AG, every bnobt block, and the start of the log.
fn metadata_regions(img: &Image) -> Vec<(u64, usize, Option<usize>)> {
    let mut f = std::fs::File::open(img.path_str()).unwrap();
    let (g, _) = read_free_space(&mut f, img.size()).unwrap();
    let s = g.sect_size;
    let mut out = Vec::new();
    let crc = |off: usize| g.v5.then_some(off);
    for agno in 0..g.agcount {
        let base = agno * g.agblocks * g.block_size;
        out.push((base, s as usize, crc(SB_CRC_OFF)));
        out.push((base + s, s as usize, crc(AGF_CRC_OFF)));
        out.push((base + 3 * s, s as usize, crc(AGFL_CRC_OFF)));
        let mut agf = vec![0u8; s as usize];
        read_at_or(&mut f, base + s, &mut agf, "agf").unwrap();
        let root = be32(&agf, 0x10) as u64;
        let mut blk = vec![0u8; g.block_size as usize];
        read_at_or(&mut f, base + root * g.block_size, &mut blk, "root").unwrap();
        out.push((base + root * g.block_size, g.block_size as usize, crc(BTREE_CRC_OFF)));
        // The root's children, if it is a node.
        if be16(&blk, 4) > 0 {
            let hdr = if g.v5 { BTREE_HDR_V5 } else { BTREE_HDR_V4 };
            let ptrs = hdr + 8 * ((g.block_size as usize - hdr) / 12);
            for i in 0..be16(&blk, 6) as usize {
                let child = be32(&blk, ptrs + 4 * i) as u64;
                out.push((base + child * g.block_size, g.block_size as usize, crc(BTREE_CRC_OFF)));
            }
        }
    }
    out.push((g.log_start * g.block_size, 4096, None));
    out
}

/// Mutates bytes of real metadata (fixing the CRC afterwards half of the time, so the mutation
/// reaches the parser behind the checksum) and probes: no panic, and a map within the partition.
fn mutate_real_metadata(img: &Image) {
    let regions = metadata_regions(img);
    let len = img.size();
    let mut f = std::fs::File::open(img.path_str()).unwrap();
    let pristine: Vec<Vec<u8>> = regions
        .iter()
        .map(|&(off, n, _)| {
            let mut b = vec![0u8; n];
            read_at_or(&mut f, off, &mut b, "region").unwrap();
            b
        })
        .collect();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(300));
    let strategy =
        (0..regions.len(), proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), any::<bool>());
    runner
        .run(&strategy, |(r, muts, fix)| {
            let (off, _, crc_off) = regions[r];
            let mut bytes = pristine[r].clone();
            for (i, v) in muts {
                let at = i.index(bytes.len());
                bytes[at] = v;
            }
            if let (true, Some(c)) = (fix, crc_off) {
                fix_crc(&mut bytes, c);
            }
            let map = probe(&mut Overlay::new(img, vec![(off, bytes)]), len, None);
            prop_assert!(map.bitmap.len() * map.block_size as u64 <= len);
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_real_v5_metadata_never_panics() {
    let img = build(&["-d", "agcount=2"], 0);
    let m = Mounted::new(&img);
    fragment(&m.path().join("frag"), 1500, 4096);
    m.unmount();
    mutate_real_metadata(&img);
}

#[test]
fn mutated_real_v4_metadata_never_panics() {
    let img = build(&["-m", "crc=0", "-b", "size=1024", "-d", "agcount=2"], 300);
    mutate_real_metadata(&img);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_superblock_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 512..=512),
        size_kib in 1u64..400_000,
    ) {
        let mut img = bytes;
        img[..4].copy_from_slice(SB_MAGIC);
        img.resize(64 * 1024, 0);
        let size = size_kib * 1024;
        let map = probe(&mut Cursor::new(img), size, None);
        prop_assert!(map.bitmap.len() * map.block_size as u64 <= size.next_multiple_of(map.block_size as u64));
    }
}

/// A log formatted by `xfs_db logformat` to a later cycle: the unmount record at block 0 in
/// cycle `c`, the rest of the log filled with records of cycle `c - 1` (what `xfs_repair -L`
/// leaves). With a log stripe unit the unmount record is padded to it.
#[test]
fn reformatted_logs_are_clean_and_a_broken_unmount_record_is_dirty() {
    let img = build(&[], 0);
    for args in [&["-c", "7"][..], &["-c", "3", "-s", "32768"], &["-c", "1000"]] {
        let cmd = format!("logformat {}", args.join(" "));
        run("xfs_db", &["-x", "-c", &cmd, img.path_str()]);
        check(&img, &FILES);
    }
    let (g, _) = read_free_space(&mut std::fs::File::open(img.path_str()).unwrap(), img.size()).unwrap();
    let op_flags = g.log_start * g.block_size + 512 + 9;
    let map = probe(&mut Overlay::new(&img, vec![(op_flags, vec![0x10])]), img.size(), None);
    assert_eq!(map.kind, FsKind::Raw);
    assert!(map.warnings[0].contains("not an unmount record"), "{:?}", map.warnings);
    // A record of cycle 1000 a little after the head (at block 2): a hole in the log, dirty.
    let after_head = g.log_start * g.block_size + 100 * 512;
    let mut rec = vec![0u8; 512];
    rec[..4].copy_from_slice(&LOG_MAGIC.to_be_bytes());
    rec[4..8].copy_from_slice(&1000u32.to_be_bytes());
    let map = probe(&mut Overlay::new(&img, vec![(after_head, rec)]), img.size(), None);
    assert!(map.warnings[0].contains("holes around its head"), "{:?}", map.warnings);
}
