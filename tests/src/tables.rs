//! Comparing partition tables and the bytes outside filesystems between a source disk and a
//! restored one.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::disks::{Disk, Fs, TableKind, SECTOR};
use crate::tools::run;

/// The partition table as the partitioning tool prints it, with the file name taken out:
/// `sgdisk -p` plus `sgdisk -i N` for every partition (type and unique GUIDs, names,
/// attribute flags), or `sfdisk -d` (disk identifier, types, boot flags) for MBR.
pub fn table_report(disk: &Disk, image: &Path) -> String {
    let name = image.display().to_string();
    let raw = match disk.table {
        TableKind::Gpt => {
            let mut report = run("sgdisk", ["-p", &name]);
            for p in &disk.partitions {
                report.push_str(&format!("--- partition {}\n", p.number));
                report.push_str(&run("sgdisk", ["-i", &p.number.to_string(), &name]));
            }
            report
        }
        TableKind::Mbr => run("sfdisk", ["-d", &name]),
    };
    raw.replace(&name, "DISK")
}

/// Asserts the partition tables of `source` and `restored` are identical, and (GPT) that
/// `sgdisk -v` finds no problem in the restored one.
pub fn assert_tables_equal(source: &Disk, restored: &Path) {
    let want = table_report(source, &source.path);
    let got = table_report(source, restored);
    assert_eq!(got, want, "partition table of {} differs from the source's", restored.display());
    if source.table == TableKind::Gpt {
        let verify = run("sgdisk", ["-v".as_ref(), restored.as_os_str()]);
        assert!(verify.contains("No problems found"), "sgdisk -v {}:\n{verify}", restored.display());
    }
}

/// A byte range that must come back exactly, and what it is.
#[derive(Clone, Debug)]
pub struct RawRange {
    pub what: String,
    pub start: u64,
    pub end: u64,
}

/// Everything of `disk` that lies outside filesystems: boot code, partition tables and the
/// gaps between partitions, EBRs, raw partitions (BIOS boot, Microsoft reserved), the swap
/// header page, the backup GPT.
pub fn raw_ranges(disk: &Disk) -> Vec<RawRange> {
    // Filesystem extents, whose free space need not come back (swap keeps its header page).
    let mut fs: Vec<(u64, u64)> = disk
        .partitions
        .iter()
        .filter(|p| p.fs.has_allocation_map())
        .map(|p| if p.fs == Fs::Swap { (p.offset + 4096, p.end()) } else { (p.offset, p.end()) })
        .collect();
    fs.sort();
    let mut out = Vec::new();
    let mut pos = 0;
    for (start, end) in fs.into_iter().chain([(disk.size, disk.size)]) {
        if start > pos {
            let inside = disk.partitions.iter().find(|p| p.offset <= pos && start <= p.end());
            let what = match inside {
                Some(p) if p.fs == Fs::Swap => format!("partition {} swap header", p.number),
                Some(p) => format!("partition {} ({:?})", p.number, p.fs),
                None if pos == 0 => "boot code, partition table and gap before the first partition".into(),
                None if start == disk.size => "end of the disk (with the backup GPT)".into(),
                None => "gap between partitions".into(),
            };
            out.push(RawRange { what, start: pos, end: start });
        }
        pos = pos.max(end);
    }
    out
}

/// Named ranges the issue calls out, checked on their own for clearer failures: LBA 0 up to
/// the first partition, every raw partition, and (GPT) the last 33 sectors.
pub fn boot_ranges(disk: &Disk) -> Vec<RawRange> {
    let mut out =
        vec![RawRange { what: "LBA 0 up to the first partition".into(), start: 0, end: disk.first_partition_offset() }];
    for p in disk.partitions.iter().filter(|p| p.fs == Fs::Raw) {
        out.push(RawRange { what: format!("raw partition {}", p.number), start: p.offset, end: p.end() });
    }
    if disk.table == TableKind::Gpt {
        out.push(RawRange {
            what: "backup GPT (last 33 sectors)".into(),
            start: disk.size - 33 * SECTOR,
            end: disk.size,
        });
    }
    out
}

/// Asserts the two files hold the same bytes in each range.
pub fn assert_ranges_equal(source: &Path, restored: &Path, ranges: &[RawRange]) {
    let mut a = File::open(source).unwrap();
    let mut b = File::open(restored).unwrap();
    let mut problems = Vec::new();
    for r in ranges {
        if let Some(at) = first_difference(&mut a, &mut b, r.start, r.end) {
            problems.push(format!("{} [{}, {}): first difference at byte {at}", r.what, r.start, r.end));
        }
    }
    assert!(
        problems.is_empty(),
        "{} is not byte-identical to {} outside the filesystems:\n{}",
        restored.display(),
        source.display(),
        problems.join("\n")
    );
}

/// The first offset in `[start, end)` where the files differ (or one of them ends).
pub fn first_difference(a: &mut File, b: &mut File, start: u64, end: u64) -> Option<u64> {
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut pos = start;
    while pos < end {
        let n = ((end - pos) as usize).min(ba.len());
        a.seek(SeekFrom::Start(pos)).unwrap();
        b.seek(SeekFrom::Start(pos)).unwrap();
        if a.read_exact(&mut ba[..n]).is_err() || b.read_exact(&mut bb[..n]).is_err() {
            return Some(pos);
        }
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Some(pos + i as u64);
        }
        pos += n as u64;
    }
    None
}

/// Everything a restored disk must satisfy: same size, same partition table, same bytes
/// outside filesystems (boot areas, raw partitions, backup GPT), every file identical, and
/// every filesystem checks clean.
pub fn assert_restored(source: &Disk, restored: &Path) {
    let size = restored.metadata().unwrap().len();
    assert_eq!(size, source.size, "restored disk {} has the wrong size", restored.display());
    assert_tables_equal(source, restored);
    assert_ranges_equal(&source.path, restored, &boot_ranges(source));
    assert_ranges_equal(&source.path, restored, &raw_ranges(source));
    crate::readback::assert_files_match(source, restored);
    crate::checkers::assert_fsck_clean(source, restored);
}
