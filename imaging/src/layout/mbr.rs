//! MBR: the four primary entries of sector 0 (and whether they form a protective MBR), and the
//! EBR chain of extended partitions that holds the logical partitions.
//!
//! MBR disks are read with 512-byte sectors. The EBR chain is untrusted: every EBR must lie in
//! its extended partition, each is visited once, and the chain is at most [`MAX_EBRS`] long.

use std::io::{Read, Seek};

use super::{check_overlaps, le_u32, read_at, LayoutError, Partition, PartitionEntry, Span};

/// Sector size of MBR disks, in bytes.
pub(super) const SECTOR_SIZE: u64 = 512;
pub(super) const SECTOR_LEN: usize = SECTOR_SIZE as usize;

/// The most EBRs followed in one extended partition.
const MAX_EBRS: usize = 128;
/// Offset of the first of the four partition entries.
const TABLE_OFFSET: usize = 446;
const ENTRY_LEN: usize = 16;
const SIGNATURE_OFFSET: usize = 510;
const SIGNATURE: [u8; 2] = [0x55, 0xAA];
const PROTECTIVE_TYPE: u8 = 0xEE;
/// The first logical partition's number, as Linux numbers them.
const FIRST_LOGICAL: u32 = 5;

/// One 16-byte entry of an MBR or EBR (CHS fields ignored).
#[derive(Debug, Clone, Copy)]
struct Entry {
    status: u8,
    type_byte: u8,
    start_lba: u32,
    sectors: u32,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.type_byte == 0 || self.sectors == 0
    }

    fn is_extended(&self) -> bool {
        matches!(self.type_byte, 0x05 | 0x0F | 0x85)
    }
}

fn entries(sector: &[u8; SECTOR_LEN]) -> [Entry; 4] {
    std::array::from_fn(|slot| {
        let at = TABLE_OFFSET + slot * ENTRY_LEN;
        Entry {
            status: sector.get(at).copied().unwrap_or(0),
            type_byte: sector.get(at + 4).copied().unwrap_or(0),
            start_lba: le_u32(sector, at + 8),
            sectors: le_u32(sector, at + 12),
        }
    })
}

/// Whether the sector ends with the 0x55AA signature.
pub(super) fn has_signature(sector: &[u8; SECTOR_LEN]) -> bool {
    sector.get(SIGNATURE_OFFSET..) == Some(SIGNATURE.as_slice())
}

/// Whether sector 0 is a protective (or hybrid) MBR: signed, with a 0xEE entry.
pub(super) fn is_protective(sector: &[u8; SECTOR_LEN]) -> bool {
    has_signature(sector) && entries(sector).iter().any(|e| e.type_byte == PROTECTIVE_TYPE)
}

/// Whether a protective MBR also lists other partitions (a hybrid MBR).
pub(super) fn is_hybrid(sector: &[u8; SECTOR_LEN]) -> bool {
    entries(sector).iter().any(|e| !e.is_empty() && e.type_byte != PROTECTIVE_TYPE)
}

/// Reads an MBR disk whose sector 0 (`sector0`) has the signature. `None` when sector 0 is not a
/// partition table after all (a boot flag other than 0x00/0x80, as in a whole-disk
/// filesystem's boot sector); a warning then says so.
pub(super) fn read<R: Read + Seek>(
    disk: &mut R,
    disk_size: u64,
    sector0: &[u8; SECTOR_LEN],
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<Partition>>, LayoutError> {
    let primaries = entries(sector0);
    for (slot, entry) in primaries.iter().enumerate() {
        if entry.status != 0x00 && entry.status != 0x80 {
            warnings.push(format!(
                "sector 0 has the 0x55AA signature but MBR entry {} has boot flag 0x{:02X}: \
                 not a partition table (a whole-disk filesystem?)",
                slot + 1,
                entry.status
            ));
            return Ok(None);
        }
    }

    let disk_sectors = disk_size / SECTOR_SIZE;
    let mut partitions = Vec::new();
    let mut primary_spans: Vec<Span> = Vec::new();
    let mut containers = Vec::new();
    for (number, entry) in (1u32..).zip(primaries.iter()) {
        if entry.is_empty() {
            continue;
        }
        let start = u64::from(entry.start_lba);
        let end = start + u64::from(entry.sectors);
        let range = (start * SECTOR_SIZE, end * SECTOR_SIZE);
        if start == 0 {
            return Err(out_of_range(number, range, "the disk after the MBR (LBA 1 onwards)".into()));
        }
        if end > disk_sectors {
            let limit = format!("the disk ({disk_size} bytes; is the image truncated?)");
            return Err(out_of_range(number, range, limit));
        }
        primary_spans.push((number, range.0, range.1));
        if entry.is_extended() {
            containers.push((number, start, end));
        } else {
            partitions.push(Partition {
                number,
                start: range.0,
                size: range.1 - range.0,
                entry: PartitionEntry::Mbr {
                    type_byte: entry.type_byte,
                    bootable: entry.status == 0x80,
                    logical: false,
                },
            });
        }
    }
    check_overlaps(&mut primary_spans)?;

    let mut next_number = FIRST_LOGICAL;
    for container in containers {
        read_logicals(disk, container, &mut next_number, &mut partitions, warnings)?;
    }
    // Logical partitions lie inside their containers, which do not overlap the primaries; this
    // checks the logical partitions against each other.
    let mut spans: Vec<Span> = partitions.iter().map(|p| (p.number, p.start, p.end())).collect();
    check_overlaps(&mut spans)?;
    partitions.sort_by_key(|p| (p.start, p.number));
    Ok(Some(partitions))
}

fn out_of_range(number: u32, (start, end): (u64, u64), limit: String) -> LayoutError {
    LayoutError::OutOfRange { number, start, end, limit }
}

/// Follows the EBR chain of the extended partition `(number, start LBA, end LBA)` (already
/// checked to lie on the disk), appending its logical partitions.
fn read_logicals<R: Read + Seek>(
    disk: &mut R,
    (ext_number, ext_start, ext_end): (u32, u64, u64),
    next_number: &mut u32,
    partitions: &mut Vec<Partition>,
    warnings: &mut Vec<String>,
) -> Result<(), LayoutError> {
    let container =
        || format!("extended partition {ext_number} (bytes {}..{})", ext_start * SECTOR_SIZE, ext_end * SECTOR_SIZE);
    let mut visited: Vec<u64> = Vec::new();
    let mut ebr_lba = ext_start;
    loop {
        if visited.contains(&ebr_lba) {
            return Err(LayoutError::Mbr(format!(
                "the EBR chain of extended partition {ext_number} loops back to LBA {ebr_lba} \
                 after {} EBRs",
                visited.len()
            )));
        }
        if visited.len() >= MAX_EBRS {
            return Err(LayoutError::Mbr(format!(
                "the EBR chain of extended partition {ext_number} is longer than {MAX_EBRS} EBRs"
            )));
        }
        if ebr_lba < ext_start || ebr_lba >= ext_end {
            return Err(LayoutError::Mbr(format!("an EBR at LBA {ebr_lba} lies outside {}", container())));
        }
        visited.push(ebr_lba);

        let mut sector = [0u8; SECTOR_LEN];
        read_at(disk, ebr_lba * SECTOR_SIZE, &mut sector)?;
        if !has_signature(&sector) {
            if visited.len() == 1 && sector.iter().all(|&b| b == 0) {
                // An extended partition without logical partitions yet.
                return Ok(());
            }
            warnings.push(format!(
                "the EBR at LBA {ebr_lba} in extended partition {ext_number} has no 0x55AA \
                 signature; the EBR chain ends there"
            ));
            return Ok(());
        }
        let [logical, link, ..] = entries(&sector);

        if !logical.is_empty() {
            let number = *next_number;
            let start = ebr_lba + u64::from(logical.start_lba);
            let end = start + u64::from(logical.sectors);
            if start <= ebr_lba || end > ext_end {
                let range = (start * SECTOR_SIZE, end * SECTOR_SIZE);
                return Err(out_of_range(number, range, container()));
            }
            partitions.push(Partition {
                number,
                start: start * SECTOR_SIZE,
                size: u64::from(logical.sectors) * SECTOR_SIZE,
                entry: PartitionEntry::Mbr {
                    type_byte: logical.type_byte,
                    bootable: logical.status == 0x80,
                    logical: true,
                },
            });
            *next_number = number.saturating_add(1);
        }

        if link.is_empty() {
            return Ok(());
        }
        if !link.is_extended() {
            warnings.push(format!(
                "the EBR at LBA {ebr_lba} links to the next EBR with type 0x{:02X} instead of \
                 0x05/0x0F/0x85; the EBR chain ends there",
                link.type_byte
            ));
            return Ok(());
        }
        ebr_lba = ext_start + u64::from(link.start_lba);
    }
}

#[cfg(test)]
mod tests {
    //! A small test-only MBR/EBR writer, then unit, corruption, `sfdisk` and property tests.

    use super::*;
    use crate::layout::{read_layout, DiskLayout, Scheme};
    use proptest::prelude::*;
    use std::io::Cursor;
    use std::process::Command;

    fn put_entry(img: &mut [u8], lba: u64, slot: usize, status: u8, type_byte: u8, start: u64, size: u64) {
        let at = lba as usize * SECTOR_LEN + TABLE_OFFSET + slot * ENTRY_LEN;
        img[at] = status;
        img[at + 4] = type_byte;
        img[at + 8..at + 12].copy_from_slice(&u32::try_from(start).unwrap().to_le_bytes());
        img[at + 12..at + 16].copy_from_slice(&u32::try_from(size).unwrap().to_le_bytes());
    }

    fn sign(img: &mut [u8], lba: u64) {
        let at = lba as usize * SECTOR_LEN + SIGNATURE_OFFSET;
        img[at..at + 2].copy_from_slice(&SIGNATURE);
    }

    /// An MBR disk: primary entries `(slot, status, type, start, size)` and, inside the
    /// extended primary (if any), logical partitions `(ebr_lba, type, start, size)` in absolute
    /// LBAs, chained in the order given.
    #[derive(Debug, Clone)]
    struct TestMbr {
        disk_sectors: u64,
        primaries: Vec<(usize, u8, u8, u64, u64)>,
        logicals: Vec<(u64, u8, u64, u64)>,
    }

    impl TestMbr {
        fn ext_start(&self) -> u64 {
            self.primaries.iter().find(|p| matches!(p.2, 0x05 | 0x0F | 0x85)).map_or(0, |p| p.3)
        }

        fn write(&self) -> Vec<u8> {
            let mut img = vec![0u8; self.disk_sectors as usize * SECTOR_LEN];
            for &(slot, status, type_byte, start, size) in &self.primaries {
                put_entry(&mut img, 0, slot, status, type_byte, start, size);
            }
            sign(&mut img, 0);
            let ext = self.ext_start();
            for (i, &(ebr, type_byte, start, size)) in self.logicals.iter().enumerate() {
                put_entry(&mut img, ebr, 0, 0, type_byte, start - ebr, size);
                if let Some(&(next, _, next_start, next_size)) = self.logicals.get(i + 1) {
                    put_entry(&mut img, ebr, 1, 0, 0x05, next - ext, next_start + next_size - next);
                }
                sign(&mut img, ebr);
            }
            img
        }

        fn expected(&self) -> Vec<Partition> {
            let primaries = self.primaries.iter().filter(|p| !matches!(p.2, 0x05 | 0x0F | 0x85)).map(
                |&(slot, status, type_byte, start, size)| Partition {
                    number: slot as u32 + 1,
                    start: start * SECTOR_SIZE,
                    size: size * SECTOR_SIZE,
                    entry: PartitionEntry::Mbr { type_byte, bootable: status == 0x80, logical: false },
                },
            );
            let logicals = (5u32..).zip(&self.logicals).map(|(number, &(_, type_byte, start, size))| Partition {
                number,
                start: start * SECTOR_SIZE,
                size: size * SECTOR_SIZE,
                entry: PartitionEntry::Mbr { type_byte, bootable: false, logical: true },
            });
            let mut all: Vec<Partition> = primaries.chain(logicals).collect();
            all.sort_by_key(|p| p.start);
            all
        }
    }

    fn read(img: &[u8]) -> Result<DiskLayout, LayoutError> {
        read_layout(&mut Cursor::new(img), img.len() as u64)
    }

    /// Primary 1 (bootable Linux), extended 2 with logicals 5 and 6, primary 4 (NTFS).
    fn sample() -> TestMbr {
        TestMbr {
            disk_sectors: 400,
            primaries: vec![(0, 0x80, 0x83, 10, 40), (1, 0, 0x05, 100, 200), (3, 0, 0x07, 320, 50)],
            logicals: vec![(100, 0x83, 102, 48), (200, 0x82, 210, 60)],
        }
    }

    fn numbers(layout: &DiskLayout) -> Vec<u32> {
        layout.partitions.iter().map(|p| p.number).collect()
    }

    #[test]
    fn reads_primaries_and_logicals() {
        let mbr = sample();
        let layout = read(&mbr.write()).unwrap();
        assert_eq!(layout.scheme, Scheme::Mbr);
        assert_eq!(layout.sector_size, 512);
        assert!(layout.gpt.is_none());
        assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);
        assert_eq!(numbers(&layout), [1, 5, 6, 4]);
        assert_eq!(layout.partitions, mbr.expected());
    }

    #[test]
    fn signed_mbr_without_entries_has_no_partitions() {
        let mbr = TestMbr { disk_sectors: 10, primaries: vec![], logicals: vec![] };
        let layout = read(&mbr.write()).unwrap();
        assert_eq!(layout.scheme, Scheme::Mbr);
        assert!(layout.partitions.is_empty());
    }

    #[test]
    fn type_zero_and_size_zero_entries_are_empty() {
        let mbr =
            TestMbr { disk_sectors: 100, primaries: vec![(0, 0, 0x00, 10, 10), (1, 0, 0x83, 30, 0)], logicals: vec![] };
        let layout = read(&mbr.write()).unwrap();
        assert_eq!(layout.scheme, Scheme::Mbr);
        assert!(layout.partitions.is_empty());
    }

    #[test]
    fn no_signature_is_scheme_none() {
        let layout = read(&[0u8; 4096]).unwrap();
        assert_eq!(layout.scheme, Scheme::None);
        assert!(layout.partitions.is_empty());
        assert!(layout.warnings.is_empty());
    }

    #[test]
    fn bad_boot_flag_means_no_partition_table() {
        let mut img = sample().write();
        img[TABLE_OFFSET + ENTRY_LEN] = 0x12;
        let layout = read(&img).unwrap();
        assert_eq!(layout.scheme, Scheme::None);
        assert!(layout.partitions.is_empty());
        assert!(layout.warnings[0].contains("boot flag 0x12"), "{:?}", layout.warnings);
    }

    #[test]
    fn disk_smaller_than_two_sectors_is_too_small() {
        let mbr = sample().write();
        for len in [0, 1, 512, 1023] {
            let err = read(&mbr[..len]).unwrap_err();
            assert!(matches!(err, LayoutError::DiskTooSmall { size } if size == len as u64), "{err}");
        }
    }

    #[test]
    fn truncated_image_names_partition_and_disk_size() {
        let img = sample().write();
        match read(&img[..350 * 512]) {
            Err(LayoutError::OutOfRange { number: 4, start, end, limit }) => {
                assert_eq!((start, end), (320 * 512, 370 * 512));
                assert!(limit.contains("179200 bytes") && limit.contains("truncated"), "{limit}");
            }
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn partition_on_the_mbr_is_rejected() {
        let mbr = TestMbr { disk_sectors: 100, primaries: vec![(2, 0, 0x83, 0, 10)], logicals: vec![] };
        assert!(matches!(read(&mbr.write()), Err(LayoutError::OutOfRange { number: 3, start: 0, .. })));
    }

    #[test]
    fn overlapping_primaries_are_rejected() {
        let mut mbr = sample();
        mbr.primaries.push((2, 0, 0x83, 45, 10));
        match read(&mbr.write()) {
            Err(LayoutError::Overlap { a: 1, b: 3, a_start, a_end, b_start, b_end }) => {
                assert_eq!((a_start, a_end, b_start, b_end), (5120, 25600, 23040, 28160));
            }
            other => panic!("expected Overlap, got {other:?}"),
        }
        // A primary inside the extended container overlaps it.
        let mut mbr = sample();
        mbr.primaries.push((2, 0, 0x83, 290, 5));
        assert!(matches!(read(&mbr.write()), Err(LayoutError::Overlap { a: 2, b: 3, .. })));
    }

    #[test]
    fn overlapping_logicals_are_rejected() {
        let mut mbr = sample();
        mbr.logicals = vec![(100, 0x83, 102, 150), (200, 0x82, 210, 60)];
        assert!(matches!(read(&mbr.write()), Err(LayoutError::Overlap { a: 5, b: 6, .. })));
    }

    #[test]
    fn logical_outside_extended_is_rejected() {
        let mut mbr = sample();
        mbr.logicals[1].3 = 95; // 210 + 95 > 300
        match read(&mbr.write()) {
            Err(LayoutError::OutOfRange { number: 6, limit, .. }) => {
                assert!(limit.contains("extended partition 2"), "{limit}");
            }
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn ebr_loop_is_an_error_not_a_hang() {
        // The second EBR links back to the first.
        let mut img = sample().write();
        put_entry(&mut img, 200, 1, 0, 0x05, 0, 10);
        let err = read(&img).unwrap_err();
        assert!(matches!(&err, LayoutError::Mbr(m) if m.contains("loops back to LBA 100")), "{err}");
        // An EBR linking to itself.
        let mut img = sample().write();
        put_entry(&mut img, 100, 1, 0, 0x05, 0, 10);
        let err = read(&img).unwrap_err();
        assert!(matches!(&err, LayoutError::Mbr(m) if m.contains("loops back to LBA 100")), "{err}");
    }

    #[test]
    fn ebr_outside_extended_is_an_error() {
        let mut img = sample().write();
        put_entry(&mut img, 200, 1, 0, 0x05, 250, 10);
        let err = read(&img).unwrap_err();
        assert!(matches!(&err, LayoutError::Mbr(m) if m.contains("LBA 350") && m.contains("outside")), "{err}");
    }

    #[test]
    fn overlong_ebr_chain_is_an_error() {
        let logicals: Vec<(u64, u8, u64, u64)> = (0..130).map(|i| (10 + 2 * i, 0x83, 11 + 2 * i, 1)).collect();
        let mbr = TestMbr { disk_sectors: 300, primaries: vec![(0, 0, 0x0F, 10, 280)], logicals };
        let err = read(&mbr.write()).unwrap_err();
        assert!(matches!(&err, LayoutError::Mbr(m) if m.contains("longer than 128")), "{err}");
        // 128 is fine.
        let logicals: Vec<(u64, u8, u64, u64)> = (0..128).map(|i| (10 + 2 * i, 0x83, 11 + 2 * i, 1)).collect();
        let mbr = TestMbr { disk_sectors: 300, primaries: vec![(0, 0, 0x0F, 10, 280)], logicals };
        let layout = read(&mbr.write()).unwrap();
        assert_eq!(layout.partitions.len(), 128);
        assert_eq!(layout.partitions.last().unwrap().number, 132);
    }

    #[test]
    fn broken_ebr_chain_ends_with_a_warning() {
        // Second EBR without its signature.
        let mut img = sample().write();
        img[200 * 512 + SIGNATURE_OFFSET] = 0;
        let layout = read(&img).unwrap();
        assert_eq!(numbers(&layout), [1, 5, 4]);
        assert!(layout.warnings[0].contains("no 0x55AA signature"), "{:?}", layout.warnings);
        // A link entry that is not an extended type.
        let mut img = sample().write();
        img[100 * 512 + TABLE_OFFSET + ENTRY_LEN + 4] = 0x83;
        let layout = read(&img).unwrap();
        assert_eq!(numbers(&layout), [1, 5, 4]);
        assert!(layout.warnings[0].contains("type 0x83"), "{:?}", layout.warnings);
    }

    #[test]
    fn empty_extended_partition_has_no_logicals() {
        let mbr = TestMbr { disk_sectors: 100, primaries: vec![(0, 0, 0x05, 10, 50)], logicals: vec![] };
        let layout = read(&mbr.write()).unwrap();
        assert_eq!(layout.scheme, Scheme::Mbr);
        assert!(layout.partitions.is_empty());
        assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);
    }

    #[test]
    fn ebr_without_logical_continues_the_chain() {
        let mut img = sample().write();
        img[100 * 512 + TABLE_OFFSET..][..ENTRY_LEN].fill(0);
        let layout = read(&img).unwrap();
        assert_eq!(numbers(&layout), [1, 5, 4]);
        assert_eq!(layout.partitions[1].start, 210 * 512);
    }

    #[test]
    fn reads_table_made_by_sfdisk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mbr.img");
        std::fs::File::create(&path).unwrap().set_len(16 << 20).unwrap();
        let script = "label: dos\n\
            start=2048, size=4096, type=83, bootable\n\
            start=8192, size=20480, type=5\n\
            start=10240, size=4096, type=83\n\
            start=16384, size=4096, type=82\n\
            start=28672, size=2048, type=7\n";
        let mut child =
            Command::new("sfdisk").arg("-q").arg(&path).stdin(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());

        let mut file = std::fs::File::open(&path).unwrap();
        let layout = read_layout(&mut file, 16 << 20).unwrap();
        assert_eq!(layout.scheme, Scheme::Mbr);
        assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);

        let out = Command::new("sfdisk").arg("--json").arg(&path).output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let node_prefix = path.to_str().unwrap();
        let mut expected: Vec<Partition> = json["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] != "5")
            .map(|p| {
                let number: u32 = p["node"].as_str().unwrap().strip_prefix(node_prefix).unwrap().parse().unwrap();
                Partition {
                    number,
                    start: p["start"].as_u64().unwrap() * 512,
                    size: p["size"].as_u64().unwrap() * 512,
                    entry: PartitionEntry::Mbr {
                        type_byte: u8::from_str_radix(p["type"].as_str().unwrap(), 16).unwrap(),
                        bootable: p["bootable"].as_bool().unwrap_or(false),
                        logical: number >= 5,
                    },
                }
            })
            .collect();
        expected.sort_by_key(|p| p.start);
        assert_eq!(layout.partitions, expected);
        assert_eq!(numbers(&layout), [1, 5, 6, 3]);
        assert_eq!(layout.partitions[2].start, 16384 * 512);
        assert!(matches!(layout.partitions[2].entry, PartitionEntry::Mbr { type_byte: 0x82, logical: true, .. }));
    }

    /// Random valid MBR disks: up to three primaries and an optional extended partition with
    /// logical partitions, laid out in order with gaps.
    fn arb_mbr() -> impl Strategy<Value = TestMbr> {
        let kinds = prop_oneof![Just(0x83u8), Just(0x07), Just(0x0C), Just(0x82), Just(0xFD)];
        (
            prop::collection::vec((1u64..5, 1u64..20, kinds.clone(), any::<bool>()), 0..4),
            prop::option::of((
                prop_oneof![Just(0x05u8), Just(0x0F), Just(0x85)],
                prop::collection::vec((1u64..4, 1u64..10, kinds), 0..8),
            )),
            any::<prop::sample::Index>(),
            0u64..5,
        )
            .prop_map(|(specs, ext, ext_pos, tail)| {
                let mut mbr = TestMbr { disk_sectors: 0, primaries: Vec::new(), logicals: Vec::new() };
                let ext_slot = ext.as_ref().map(|_| ext_pos.index(specs.len() + 1));
                let mut next = 1u64;
                let mut slot = 0usize;
                let mut specs = specs.into_iter().peekable();
                while slot < 4 {
                    if Some(slot) == ext_slot {
                        let (ext_type, logicals) = ext.clone().unwrap();
                        let ext_start = next;
                        for (gap, size, type_byte) in logicals {
                            let ebr = next;
                            let start = ebr + gap;
                            mbr.logicals.push((ebr, type_byte, start, size));
                            next = start + size;
                        }
                        next = next.max(ext_start + 1);
                        mbr.primaries.push((slot, 0, ext_type, ext_start, next - ext_start));
                    } else if let Some((gap, size, type_byte, boot)) = specs.next() {
                        let start = next + gap - 1;
                        mbr.primaries.push((slot, if boot { 0x80 } else { 0 }, type_byte, start.max(1), size));
                        next = start.max(1) + size;
                    } else if ext_slot.is_none_or(|e| e < slot) {
                        break;
                    }
                    slot += 1;
                }
                mbr.disk_sectors = (next + tail).max(2);
                mbr
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip_random_tables(mbr in arb_mbr()) {
            let layout = read(&mbr.write()).unwrap();
            prop_assert_eq!(layout.scheme, Scheme::Mbr);
            prop_assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);
            prop_assert_eq!(layout.partitions, mbr.expected());
        }

        #[test]
        fn mutated_tables_never_panic(
            mbr in arb_mbr(),
            mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut img = mbr.write();
            // Mutate the table areas of the MBR and every EBR.
            let mut hot: Vec<usize> = (TABLE_OFFSET..SECTOR_LEN).collect();
            for &(ebr, ..) in &mbr.logicals {
                hot.extend((TABLE_OFFSET..SECTOR_LEN).map(|i| ebr as usize * SECTOR_LEN + i));
            }
            for (at, byte) in mutations {
                img[*at.get(&hot)] = byte;
            }
            let _ = read(&img);
            let len = cut.index(img.len() + 1);
            let _ = read(&img[..len]);
        }
    }
}
