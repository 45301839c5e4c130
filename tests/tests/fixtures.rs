//! The test support checked against itself, without Kura: every fixture reads back as built,
//! checks clean, and a byte-for-byte copy passes every restored-disk check while a damaged copy
//! fails them. If these fail, the imaging tests' failures mean nothing.

use std::fs;

use kura_tests::damage;
use kura_tests::disks::{Disk, Fs, TableKind, MIB};
use kura_tests::fixtures;
use kura_tests::readback::{assert_files_match, partition_files};
use kura_tests::tables::{assert_restored, raw_ranges};

fn check_fixture(disk: &Disk, work: &std::path::Path) {
    // The source itself passes every check against itself.
    assert_restored(disk, &disk.path);
    for p in disk.partitions.iter().filter(|p| matches!(p.fs, Fs::Ext4 | Fs::Ntfs | Fs::Fat)) {
        assert!(!p.files.is_empty(), "partition {} has no files", p.number);
    }
    // A copy passes too.
    let copy = work.join("copy.img");
    fs::copy(&disk.path, &copy).unwrap();
    assert_restored(disk, &copy);
}

#[test]
fn gpt_linux_fixture_reads_back() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::gpt_linux(work.path());
    assert_eq!(disk.table, TableKind::Gpt);
    assert_eq!(disk.partitions.len(), 5);
    check_fixture(&disk, work.path());
}

#[test]
fn mbr_legacy_fixture_reads_back() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::mbr_legacy(work.path());
    let numbers: Vec<(u32, Fs)> = disk.partitions.iter().map(|p| (p.number, p.fs)).collect();
    assert_eq!(numbers, [(1, Fs::Ext4), (2, Fs::Fat), (3, Fs::Extended), (5, Fs::Ext4), (6, Fs::Ntfs)]);
    check_fixture(&disk, work.path());
}

#[test]
fn gpt_windows_fixture_reads_back() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::gpt_windows(work.path());
    let report = kura_tests::tables::table_report(&disk, &disk.path);
    assert!(report.contains("Attribute flags: C000000000000001"), "{report}");
    assert!(report.contains("Microsoft reserved partition"), "{report}");
    check_fixture(&disk, work.path());
}

#[test]
fn deleted_data_fixture_keeps_stale_bytes_in_free_space() {
    let work = tempfile::tempdir().unwrap();
    let (disk, stale) = fixtures::with_deleted_data(work.path());
    check_fixture(&disk, work.path());
    // The deleted ext4 file's bytes are still on the disk (that is the point of the fixture).
    let image = fs::read(&disk.path).unwrap();
    for (i, s) in stale.iter().enumerate() {
        let probe = &s[s.len() / 2..s.len() / 2 + 4096];
        assert!(image.windows(4096).step_by(512).any(|w| w == probe), "stale data {i} is not on the disk");
    }
}

#[test]
fn checks_catch_damage() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::small_gpt(work.path());
    check_fixture(&disk, work.path());
    let copy = work.path().join("copy.img");

    // A changed byte in a file's data is caught by the readback.
    let root = disk.partition(1);
    let bad = root_file_offset(&disk);
    fs::copy(&disk.path, &copy).unwrap();
    damage::flip_byte(&copy, bad);
    let files = partition_files(&copy, root).unwrap();
    assert_ne!(files, root.files);
    assert!(std::panic::catch_unwind(|| assert_files_match(&disk, &copy)).is_err());

    // A changed byte in the gap before the first partition is caught by the raw comparison.
    fs::copy(&disk.path, &copy).unwrap();
    damage::flip_byte(&copy, 40 * 512 + 7);
    assert!(std::panic::catch_unwind(|| assert_restored(&disk, &copy)).is_err());
    assert!(raw_ranges(&disk)[0].end == MIB);

    // The overlap helper yields a table that sgdisk itself reports as overlapping.
    fs::copy(&disk.path, &copy).unwrap();
    let (_, last1) = damage::gpt_entry_lbas(&copy, 1);
    damage::set_gpt_first_lba(&copy, 2, last1 - 2047);
    let verify = kura_tests::tools::run("sgdisk", ["-v".as_ref(), copy.as_os_str()]);
    assert!(verify.to_lowercase().contains("overlap"), "{verify}");
}

/// The disk offset of a byte in the middle of the largest file on partition 1 (found by
/// searching the disk for its content).
fn root_file_offset(disk: &Disk) -> u64 {
    let data = kura_tests::content::random_bytes(14_004, 2_600_000); // home_files' track01.ogg
    let probe = &data[1_000_000..1_000_512];
    let image = fs::read(&disk.path).unwrap();
    let at = image.windows(512).position(|w| w == probe).expect("file data not found on disk");
    at as u64 + 100
}
