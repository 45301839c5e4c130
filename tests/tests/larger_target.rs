//! A GPT disk restored onto a larger disk: partitions, files and boot areas come back, and the
//! backup GPT is moved to the new end, so the table verifies clean (`sgdisk -v`).

use kura_tests::disks::{patterned_file, MIB};
use kura_tests::fixtures;
use kura_tests::kura_cli::Store;
use kura_tests::readback::assert_files_match;
use std::process::Command;

fn sgdisk(args: &[&str], disk: &std::path::Path) -> String {
    let out = Command::new("sgdisk").args(args).arg(disk).output().expect("sgdisk (apt-get install gdisk)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sgdisk -p`'s partition lines (the header lines name the disk size, which differs).
fn partition_lines(disk: &std::path::Path) -> Vec<String> {
    let p = sgdisk(&["-p"], disk);
    p.lines().skip_while(|l| !l.starts_with("Number")).map(str::to_string).collect()
}

#[test]
fn gpt_restored_onto_a_larger_disk_gets_its_backup_table_at_the_new_end() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::small_gpt(work.path());
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, None);

    let target = work.path().join("larger.img");
    patterned_file(&target, disk.size + 16 * MIB);
    store.restore(&cap.snapshot, &target);

    assert_eq!(target.metadata().unwrap().len(), disk.size + 16 * MIB);
    let verify = sgdisk(&["-v"], &target);
    assert!(verify.contains("No problems found"), "sgdisk -v on the restored disk:\n{verify}");
    assert_eq!(partition_lines(&target), partition_lines(&disk.path));
    for n in 1..=disk.partitions.len() as u32 {
        let info = |d: &std::path::Path| sgdisk(&["-i", &n.to_string()], d);
        assert_eq!(info(&target), info(&disk.path), "partition {n}");
    }
    assert_files_match(&disk, &target);
}
