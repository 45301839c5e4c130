//! Tests of the LVM2 reader against volume groups made by LVM's own tools (`lvm pvcreate`,
//! `vgcreate`, `lvcreate` on a loop device, with activation off: device-mapper is not needed) and
//! filesystems made by their own mkfs, written into the logical volumes' extents.
//!
//! The segments the reader finds are checked against `lvs -o seg_pe_ranges`; each plain volume's
//! share of the map against the map of the same filesystem probed on its own.

use super::lvm::{self, calc_crc};
use super::test_images::{file_of, require, run, run_out, Image};
use super::{probe, FsKind};
use proptest::prelude::*;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const MIB: u64 = 1 << 20;

/// A loop device over an image file, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(img: &Image) -> Loop {
        Loop(run_out("losetup", &["-f", "--show", img.path_str()]).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(require("losetup")).args(["-d", &self.0]).status();
    }
}

/// Runs `lvm CMD ARGS` restricted to `dev`, with activation, backups and the devices file off,
/// so that nothing outside the test's loop device is touched.
fn lvm(dev: &str, cmd: &str, args: &[&str]) -> String {
    lvm_on(&[dev], cmd, args)
}

/// [`lvm`] seeing the devices `devs`.
fn lvm_on(devs: &[&str], cmd: &str, args: &[&str]) -> String {
    let accept: Vec<String> = devs.iter().map(|d| format!("\"a|^{d}$|\", ")).collect();
    let config = format!(
        "global {{ activation = 0 }} backup {{ backup = 0 archive = 0 }} \
         devices {{ use_devicesfile = 0 obtain_device_list_from_udev = 0 filter = [ {}\"r|.*|\" ] }}",
        accept.concat()
    );
    let mut all = vec![cmd, "--config", &config];
    all.extend_from_slice(args);
    let exe = require("lvm");
    let out = Command::new(exe).args(&all).env("LVM_SUPPRESS_FD_WARNINGS", "1").output().unwrap();
    assert!(out.status.success(), "lvm {all:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unique_vg() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("kt{}x{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// (start extent in the LV, first PV extent, extent count) of every segment of `lv`, from
/// `lvs -o seg_start_pe,seg_pe_ranges`.
fn tool_segments(dev: &str, vg: &str, lv: &str) -> Vec<(u64, u64, u64)> {
    let out = lvm(
        dev,
        "lvs",
        &["--noheadings", "--separator", ";", "-o", "seg_start_pe,seg_pe_ranges", &format!("{vg}/{lv}")],
    );
    let mut segs: Vec<(u64, u64, u64)> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (start, ranges) = l.trim().split_once(';').unwrap();
            let range = ranges.rsplit(':').next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            (start.trim().parse().unwrap(), a, b - a + 1)
        })
        .collect();
    segs.sort();
    segs
}

/// A filesystem image of `size` bytes made by `mkfs` with some files in it.
fn fs_image(kind: &str, size: u64, seed: u32) -> Image {
    let img = Image::with_size(size);
    let src = tempfile::tempdir().unwrap();
    for i in 0..6u32 {
        std::fs::write(src.path().join(format!("f{i}")), file_of(100_000 * (i as usize + 1), seed + i)).unwrap();
    }
    match kind {
        "ext4" => {
            run("mke2fs", &["-q", "-F", "-t", "ext4", "-b", "4096", "-d", src.path().to_str().unwrap(), img.path_str()])
        }
        "xfs" => run("mkfs.xfs", &["-q", "-f", img.path_str()]),
        "swap" => run("mkswap", &[img.path_str()]),
        _ => unreachable!(),
    }
    img
}

/// Copies the volume image `vol` to the PV byte offsets of the LV's segments.
fn scatter(pv: &mut std::fs::File, vol: &Image, segs: &[(u64, u64, u64)], pe_start: u64, ext: u64) {
    let mut src = std::fs::File::open(vol.path_str()).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for &(lv_start, pv_first, count) in segs {
        src.seek(SeekFrom::Start(lv_start * ext)).unwrap();
        pv.seek(SeekFrom::Start(pe_start + pv_first * ext)).unwrap();
        for _ in 0..count * ext / MIB {
            src.read_exact(&mut buf).unwrap();
            pv.write_all(&buf).unwrap();
        }
    }
}

/// The layout the reader finds in the PV image `img`.
fn read_layout(img: &Image) -> lvm::PvLayout {
    let mut f = std::fs::File::open(img.path_str()).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact(&mut head).unwrap();
    let label = lvm::read_label(&head, img.size()).unwrap();
    assert_eq!(label.data_offset, MIB);
    let (mo, ms) = label.metadata_areas[0];
    let text = lvm::read_metadata(&mut f, mo, ms).unwrap();
    lvm::layout(&lvm::parse_text(&text).unwrap(), &label.uuid, img.size()).unwrap()
}

#[test]
fn a_volume_group_maps_each_volume_and_frees_unallocated_extents() {
    // mkfs.xfs wants at least 300 MB.
    let img = Image::new(440);
    let vg = unique_vg();
    let ext = 4 * MIB;
    let lvs = [("root", "xfs"), ("home", "ext4"), ("swap", "swap")];
    let segs: Vec<Vec<(u64, u64, u64)>>;
    {
        let lp = Loop::attach(&img);
        let dev = lp.0.as_str();
        lvm(dev, "pvcreate", &["-y", dev]);
        lvm(dev, "vgcreate", &["-s", "4m", &vg, dev]);
        lvm(dev, "lvcreate", &["-an", "-Zn", "-y", "-L", "304m", "-n", "root", &vg]);
        lvm(dev, "lvcreate", &["-an", "-Zn", "-y", "-L", "24m", "-n", "home", &vg]);
        // root in two segments, with home between them.
        lvm(dev, "lvextend", &["-L", "+12m", &format!("{vg}/root")]);
        lvm(dev, "lvcreate", &["-an", "-Zn", "-y", "-L", "8m", "-n", "swap", &vg]);
        segs = lvs.iter().map(|(n, _)| tool_segments(dev, &vg, n)).collect();
    }
    assert_eq!(segs[0].len(), 2, "root has two segments: {:?}", segs[0]);
    let pe_start = MIB;
    let mut pv = std::fs::OpenOptions::new().read(true).write(true).open(img.path_str()).unwrap();
    let fs_imgs: Vec<Image> = lvs
        .iter()
        .zip(&segs)
        .enumerate()
        .map(|(i, ((_, kind), s))| {
            let size = s.iter().map(|x| x.2).sum::<u64>() * ext;
            let f = fs_image(kind, size, 100 * i as u32);
            scatter(&mut pv, &f, s, pe_start, ext);
            f
        })
        .collect();
    drop(pv);

    // The reader's segments are the tool's.
    let layout = read_layout(&img);
    assert_eq!(layout.vg, vg);
    for ((name, _), s) in lvs.iter().zip(&segs) {
        let lv = layout.lvs.iter().find(|l| l.name == *name).unwrap();
        let mine: Vec<(u64, u64, u64)> =
            lv.pieces.iter().map(|p| (p.vol_offset / ext, (p.at - pe_start) / ext, p.len / ext)).collect();
        assert_eq!(&mine, s, "segments of {name}");
        assert!(lv.raw_reason.is_none(), "{name}: {:?}", lv.raw_reason);
    }

    let map = img.probe(None);
    assert_eq!(map.kind, FsKind::Lvm, "{:?}", map.warnings);
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    assert_eq!(map.label.as_deref(), Some(vg.as_str()));
    let bs = map.block_size as u64;
    assert_eq!(bs, 4096);
    // Label and metadata area: used.
    assert_eq!(map.bitmap.runs_in(0, pe_start / bs).map(|r| r.1).sum::<u64>(), pe_start / bs);
    // Each volume's share is its filesystem's own map.
    let mut allocated = vec![false; (layout.pe_count) as usize];
    for ((name, _), (s, f)) in lvs.iter().zip(segs.iter().zip(&fs_imgs)) {
        let own = f.probe(None);
        assert_eq!(own.block_size, 4096, "{name}");
        for &(lv_start, first, count) in s {
            for i in 0..count * ext / bs {
                let lv_block = lv_start * ext / bs + i;
                let pv_block = (pe_start + first * ext) / bs + i;
                assert_eq!(map.bitmap.get(pv_block), own.bitmap.get(lv_block), "{name} block {lv_block}");
            }
            for pe in first..first + count {
                allocated[pe as usize] = true;
            }
        }
    }
    // Free extents: nothing captured.
    for (pe, used) in allocated.iter().enumerate() {
        let first = (pe_start + pe as u64 * ext) / bs;
        if !used {
            assert!(!map.bitmap.any_in(first, ext / bs), "free extent {pe} is marked used");
        }
    }
    assert!(allocated.iter().filter(|a| !**a).count() >= 10, "the test keeps free extents");
    let used = map.used_bytes(img.size());
    let own_used: u64 = fs_imgs.iter().map(|f| f.probe(None).used_bytes(f.size())).sum();
    assert!(used <= own_used + pe_start + ext, "used {used} vs the volumes' {own_used}");
}

#[test]
fn thin_pools_and_their_volumes_are_captured_raw_with_their_names() {
    // lvcreate cannot make a thin pool without device-mapper; LVM's own vgcfgrestore accepts
    // one written into the VG's metadata: two plain volumes become the pool's hidden metadata
    // and data volumes, and the pool and a thin volume are added.
    let img = Image::new(96);
    let vg = unique_vg();
    {
        let lp = Loop::attach(&img);
        let dev = lp.0.as_str();
        lvm(dev, "pvcreate", &["-y", dev]);
        lvm(dev, "vgcreate", &["-s", "4m", &vg, dev]);
        lvm(dev, "lvcreate", &["-an", "-Zn", "-y", "-L", "16m", "-n", "plain", &vg]);
        lvm(dev, "lvcreate", &["-an", "-Zn", "-y", "-L", "4m", "-n", "tm", &vg]);
        lvm(dev, "lvcreate", &["-an", "-Zn", "-y", "-L", "32m", "-n", "td", &vg]);
        let backup = img.dir.path().join("vg.txt");
        lvm(dev, "vgcfgbackup", &["-f", backup.to_str().unwrap(), &vg]);
        let text = std::fs::read_to_string(&backup).unwrap();
        let hide = |t: String, from: &str, to: &str| {
            let (a, b) = t.split_once(&format!("\t\t{from} {{")).unwrap();
            let b = b.replacen("\"READ\", \"WRITE\", \"VISIBLE\"", "\"READ\", \"WRITE\"", 1);
            format!("{a}\t\t{to} {{{b}")
        };
        let text = hide(hide(text, "tm", "pool_tmeta"), "td", "pool_tdata");
        let (a, b) = text.split_once("logical_volumes {").unwrap();
        let text = format!("{a}logical_volumes {{{THIN_LVS}{b}");
        std::fs::write(&backup, text).unwrap();
        lvm(dev, "vgcfgrestore", &["--force", "-f", backup.to_str().unwrap(), &vg]);
        let segtypes = lvm(dev, "lvs", &["-a", "--noheadings", "-o", "lv_name,segtype", &vg]);
        assert!(segtypes.contains("thin-pool") && segtypes.contains("thin "), "{segtypes}");
    }
    let map = img.probe(None);
    assert_eq!(map.kind, FsKind::Lvm, "{:?}", map.warnings);
    let w = map.warnings.join("\n");
    assert!(w.contains("pool_tdata") && w.contains("captured raw"), "{w}");
    assert!(w.contains("pool_tmeta"), "{w}");
    assert!(!w.contains("/plain captured raw"), "the plain volume is probed: {w}");
    // The pool's data extents are all captured.
    let layout = read_layout(&img);
    let tdata = layout.lvs.iter().find(|l| l.name == "pool_tdata").unwrap();
    for p in &tdata.pieces {
        let (first, n) = (p.at / 4096, p.len / 4096);
        assert_eq!(map.bitmap.runs_in(first, n).map(|r| r.1).sum::<u64>(), n);
    }
}

#[test]
fn the_text_format_parser_reads_lvm_syntax_and_bounds_nesting() {
    let t = br#"vg0 {
        id = "abc"   # comment
        seqno = 3
        status = ["READ", "WRITE"]
        empty = []
        quoted = "a \"b\" c"
        physical_volumes { pv0 { pe_start = 2048 } }
    }
    contents = "Text Format Volume Group"
    version = 1
    creation_time = 1700000000	# Tue
    "#;
    let v = lvm::parse_text(t).unwrap();
    let s = format!("{v:?}");
    assert!(s.contains("a \\\"b\\\" c"), "{s}");
    let deep = "a { ".repeat(20) + &"} ".repeat(20);
    assert!(lvm::parse_text(deep.as_bytes()).unwrap_err().contains("too deep"));
    assert!(lvm::parse_text(b"a = \"open").is_err());
    assert!(lvm::parse_text(b"a = 1\na = 2").unwrap_err().contains("twice"));
    assert!(lvm::parse_text(b"a = [1, [2]]").is_err());
    assert!(lvm::parse_text(b"a = 99999999999999999999999").is_err());
}

#[test]
fn lvm_crc_matches_the_reference_value() {
    // calc_crc is CRC-32 without the final inversion: with the standard initial value its
    // complement is the well-known CRC-32 of "123456789".
    assert_eq!(!calc_crc(0xffff_ffff, b"123456789"), 0xcbf4_3926);
}

/// A small real PV (label, metadata, one volume holding ext4) for the mutation tests.
fn small_pv() -> Vec<u8> {
    let img = Image::new(24);
    let vg = unique_vg();
    let segs;
    {
        let lp = Loop::attach(&img);
        let dev = lp.0.as_str();
        lvm(dev, "pvcreate", &["-y", dev]);
        lvm(dev, "vgcreate", &["-s", "1m", &vg, dev]);
        lvm(dev, "lvcreate", &["-an", "-Zn", "-y", "-L", "8m", "-n", "v", &vg]);
        segs = tool_segments(dev, &vg, "v");
    }
    let f = fs_image("ext4", 8 * MIB, 1);
    let mut pv = std::fs::OpenOptions::new().write(true).open(img.path_str()).unwrap();
    scatter(&mut pv, &f, &segs, MIB, MIB);
    drop(pv);
    img.bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    /// Mutated labels, headers and metadata text (with the checksums re-fixed half the time, so
    /// the parser and the layout checks are reached) never panic, and the map never exceeds the
    /// partition.
    #[test]
    fn mutated_metadata_never_panics(edits in proptest::collection::vec((0usize..12288, any::<u8>()), 1..8), fix in any::<bool>()) {
        static PV: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let mut pv = PV.get_or_init(small_pv).clone();
        let label = lvm::read_label(&pv[..4096], pv.len() as u64).unwrap();
        let (mo, _) = label.metadata_areas[0];
        for (at, b) in edits {
            // Half of the edits hit the label sector and the area header, the rest the text.
            let off = if at < 1024 { 512 + at % 512 } else { mo as usize + at };
            pv[off] = b;
        }
        if fix {
            let l = &mut pv[512..1024];
            let c = calc_crc(0xf597a6cf, &l[20..]);
            l[16..20].copy_from_slice(&c.to_le_bytes());
            let m = mo as usize;
            let (t_off, t_size) = (
                u64::from_le_bytes(pv[m + 40..m + 48].try_into().unwrap()) as usize,
                u64::from_le_bytes(pv[m + 48..m + 56].try_into().unwrap()) as usize,
            );
            if t_size < 1 << 20 && m + t_off + t_size < pv.len() {
                let c = calc_crc(0xf597a6cf, &pv[m + t_off..m + t_off + t_size]);
                pv[m + 56..m + 60].copy_from_slice(&c.to_le_bytes());
            }
            let c = calc_crc(0xf597a6cf, &pv[m + 4..m + 512]);
            pv[m..m + 4].copy_from_slice(&c.to_le_bytes());
        }
        let size = pv.len() as u64;
        let map = probe(&mut Cursor::new(&pv), size, None);
        prop_assert!(map.bitmap.len() * map.block_size as u64 <= size.div_ceil(map.block_size as u64) * map.block_size as u64);
        let mut r = Cursor::new(&pv);
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
    }
}

/// A thin pool over `pool_tmeta`/`pool_tdata` and one thin volume, in LVM's text format.
const THIN_LVS: &str = r#"
        pool {
            id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg"
            status = ["READ", "WRITE", "VISIBLE"]
            flags = []
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 8
                type = "thin-pool"
                metadata = "pool_tmeta"
                pool = "pool_tdata"
                transaction_id = 1
                chunk_size = 128
                discards = "passdown"
                zero_new_blocks = 1
            }
        }
        thinvol {
            id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-hhhhhh"
            status = ["READ", "WRITE", "VISIBLE"]
            flags = []
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 16
                type = "thin"
                thin_pool = "pool"
                transaction_id = 0
                device_id = 1
            }
        }
"#;

/// A VG over two PVs on two partitions of one disk, with an LV whose ext4 spans both: the
/// disk-wide scan reads the LV across the PVs, and each partition's map holds its share of the
/// filesystem's map (checked against the ext4 probed alone, through `lvs`'s segments). Probed
/// alone, each partition captures its share raw and says why.
#[test]
fn an_lv_spanning_two_pvs_of_one_disk_is_mapped_across_them() {
    require("sgdisk");
    let (a, b) = (Image::new(64), Image::new(64));
    for (img, seed) in [(&a, 1u32), (&b, 2)] {
        std::fs::write(img.path_str(), file_of(img.size() as usize, seed)).unwrap();
    }
    let vg = unique_vg();
    let ext = 4 * MIB;
    // (start extent in the LV, first PV extent, count, which PV) of each segment.
    let segs: Vec<(u64, u64, u64, usize)>;
    {
        let (la, lb) = (Loop::attach(&a), Loop::attach(&b));
        let devs = [la.0.as_str(), lb.0.as_str()];
        lvm_on(&devs, "pvcreate", &["-y", devs[0], devs[1]]);
        lvm_on(&devs, "vgcreate", &["-s", "4m", &vg, devs[0], devs[1]]);
        lvm_on(&devs, "lvcreate", &["-an", "-Zn", "-y", "-L", "96m", "-n", "data", &vg]);
        let out = lvm_on(
            &devs,
            "lvs",
            &["--noheadings", "--separator", ";", "-o", "seg_start_pe,seg_pe_ranges", &format!("{vg}/data")],
        );
        segs = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (start, range) = l.trim().split_once(';').unwrap();
                let (dev, r) = range.rsplit_once(':').unwrap();
                let (x, y) = r.split_once('-').unwrap();
                let (x, y): (u64, u64) = (x.parse().unwrap(), y.parse().unwrap());
                (start.trim().parse().unwrap(), x, y - x + 1, devs.iter().position(|d| *d == dev).unwrap())
            })
            .collect();
    }
    assert!(segs.iter().any(|s| s.3 == 0) && segs.iter().any(|s| s.3 == 1), "data spans both PVs: {segs:?}");
    let fs = fs_image("ext4", 96 * MIB, 7);
    let pe_start = MIB;
    for (i, img) in [&a, &b].into_iter().enumerate() {
        let mut pv = std::fs::OpenOptions::new().read(true).write(true).open(img.path_str()).unwrap();
        let mine: Vec<(u64, u64, u64)> = segs.iter().filter(|s| s.3 == i).map(|s| (s.0, s.1, s.2)).collect();
        scatter(&mut pv, &fs, &mine, pe_start, ext);
    }

    // The disk: GPT, the two PVs as partitions 1 and 2.
    let disk = Image::with_size(2 * MIB + 128 * MIB);
    run("sgdisk", &["-n1:2048:+64M", "-t1:8E00", "-n2:0:+64M", "-t2:8E00", disk.path_str()]);
    {
        let mut d = std::fs::OpenOptions::new().write(true).open(disk.path_str()).unwrap();
        for (i, img) in [&a, &b].into_iter().enumerate() {
            d.seek(SeekFrom::Start(MIB + i as u64 * 64 * MIB)).unwrap();
            d.write_all(&img.bytes()).unwrap();
        }
    }
    let plan = {
        let mut f = std::fs::File::open(disk.path_str()).unwrap();
        crate::capture::plan(&mut f, disk.size(), &crate::progress::NoProgress).unwrap()
    };
    let alone = fs.probe(None);
    assert_eq!(alone.kind, FsKind::Ext4);
    for (i, img) in [&a, &b].into_iter().enumerate() {
        let region = plan.regions.iter().find(|r| r.partition == Some(i as u32 + 1)).unwrap();
        assert_eq!(region.map.kind, FsKind::Lvm, "{:?}", region.map.warnings);
        assert!(region.map.warnings.is_empty(), "{:?}", region.map.warnings);
        // Expected: label and metadata used, the LV's extents here as the ext4's map says, the
        // rest of the extents (free) unused, the tail after the last extent used.
        let layout = read_layout(img);
        let bs = 4096u64;
        let blocks = img.size() / bs;
        let mut expected = vec![false; blocks as usize];
        for b in 0..pe_start / bs {
            expected[b as usize] = true;
        }
        let ext_end = pe_start + layout.pe_count * ext;
        for b in ext_end / bs..blocks {
            expected[b as usize] = true;
        }
        for s in segs.iter().filter(|s| s.3 == i) {
            for k in 0..s.2 * ext / bs {
                let lv_byte = s.0 * ext + k * bs;
                let used = alone.bitmap.get(lv_byte / alone.block_size as u64);
                expected[((pe_start + s.1 * ext) / bs + k) as usize] = used;
            }
        }
        let got: Vec<bool> = (0..blocks).map(|b| region.map.bitmap.get(b)).collect();
        assert_eq!(got, expected, "partition {}", i + 1);

        // Alone, the partition cannot read the LV's filesystem: its share is raw, said so.
        let map = img.probe(None);
        assert!(
            map.warnings.iter().any(|w| w.contains("data captured raw: it continues on a PV that is not on this disk")),
            "{:?}",
            map.warnings
        );
    }
}
