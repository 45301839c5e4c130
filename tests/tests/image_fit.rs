//! `kura image fit`: a snapshot of a 2 GiB GPT disk (ext4, then NTFS last) with about 600 MiB
//! used is fitted to 1 GiB and restored onto a 1 GiB file; the restored disk checks clean
//! (`e2fsck -fn`, `ntfsfix -n`, `sgdisk -v`) and holds every file unchanged. A size below the
//! used data and an XFS last partition are refused, naming why, with nothing written; the
//! source snapshot is untouched; a plain restore onto the too-small file names the fit command.
//! Against an engine, the fit is uploaded as a new snapshot of the same host.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use kura_tests::checkers::assert_fsck_clean;
use kura_tests::content::{linux_root_files, ntfs_files, random_bytes, sha256_hex, FileSpec};
use kura_tests::disks::{build_gpt, patterned_file, Content, Disk, Fs, PartSpec, MIB};
use kura_tests::engine::Server;
use kura_tests::kura_cli::{run, Run, Store};
use kura_tests::readback::assert_files_match;
use kura_tests::tools::run as tool;

const GIB: u64 = 1 << 30;

fn fit_run(store: &Store, snapshot: &str, size: &str, scratch: &Path) -> Run {
    run([
        OsStr::new("image"),
        OsStr::new("fit"),
        OsStr::new(snapshot),
        OsStr::new("--size"),
        OsStr::new(size),
        OsStr::new("--store"),
        store.dir.as_os_str(),
        OsStr::new("--scratch"),
        scratch.as_os_str(),
        OsStr::new("--json"),
    ])
}

/// Every file under `dir` (path → sha256): the store's chunks and manifests.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if e.file_name() != "lock" {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, sha256_hex(&std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

fn sgdisk(args: &[&str], disk: &Path) -> String {
    tool("sgdisk", args.iter().map(OsStr::new).chain([disk.as_os_str()]))
}

/// A 2 GiB GPT disk: a 600 MiB ext4 partition and an NTFS partition over the rest, each with
/// about 300 MiB of files.
fn two_gib_disk(dir: &Path) -> Disk {
    let mut root = linux_root_files(71, 100);
    root.extend(
        (0..4).map(|i| FileSpec::new(format!("srv/data/blob{i}.bin"), random_bytes(7100 + i, 20 * MIB as usize))),
    );
    let mut ntfs = ntfs_files(72);
    ntfs.extend((0..10).map(|i| FileSpec::new(format!("archive{i}.bin"), random_bytes(7200 + i, 30 * MIB as usize))));
    build_gpt(
        dir,
        "two-gib.img",
        2 * GIB,
        vec![
            PartSpec::gpt(
                600 * MIB,
                "8300",
                "root",
                Content::Ext4 { label: "root", block_size: 4096, files: root, deleted: vec![] },
            ),
            PartSpec::gpt(
                2 * GIB - 602 * MIB,
                "0700",
                "data",
                Content::Ntfs { label: "DATA", files: ntfs, deleted: vec![] },
            ),
        ],
    )
}

#[test]
fn an_ext4_and_ntfs_disk_is_fitted_to_half_its_size_and_restores_clean() {
    kura_tests::space::require_free(3 * GIB, "the 2 GiB disk, its store, the fitted snapshot and the restore");
    let work = tempfile::tempdir().unwrap();
    let disk = two_gib_disk(work.path());
    let used: u64 = disk.partitions.iter().map(|p| p.file_bytes).sum();
    assert!(used > 550 * MIB, "the disk holds about 600 MiB of files, not {used}");
    let store = Store::new(work.path().join("store"));
    let orig = store.capture(&disk.path, Some("two-gib"));
    let scratch = tempfile::tempdir().unwrap();

    // A plain restore onto a 1 GiB disk is refused, naming the command that makes it fit.
    let small = work.path().join("one-gib.img");
    patterned_file(&small, GIB);
    let pattern = sha256_hex(&std::fs::read(&small).unwrap());
    store
        .restore_run(&orig.snapshot, &small)
        .expect_failure_mentioning(&["nothing was written", &format!("kura image fit {} --size {GIB}", orig.snapshot)]);
    assert_eq!(sha256_hex(&std::fs::read(&small).unwrap()), pattern, "the refused target is untouched");

    // A size below the used data: refused before anything is written.
    let before = tree(&store.dir);
    fit_run(&store, &orig.snapshot, "800M", scratch.path()).expect_failure_mentioning(&[
        "nothing was written",
        "data does not fit",
        "partition 2",
    ]);
    assert_eq!(tree(&store.dir), before, "a refused fit writes nothing to the store");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "no scratch left behind");

    // Fit to 1 GiB.
    let fitted: serde_json::Value = fit_run(&store, &orig.snapshot, "1G", scratch.path()).expect_success().json();
    eprintln!("{fitted}");
    let new_id = fitted["snapshot"].as_str().unwrap().to_string();
    assert_ne!(new_id, orig.snapshot);
    assert_eq!(fitted["source_snapshot"], orig.snapshot.as_str());
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "the scratch copy is removed");
    let after = tree(&store.dir);
    for (path, digest) in &before {
        assert_eq!(after.get(path), Some(digest), "{path} of the source snapshot changed");
    }
    let list = store.list();
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(|s| s.id == new_id && s.disk_size == GIB), "{list:?}");
    assert!(store.verify_run(None).success(), "both snapshots verify");

    // Restored onto the 1 GiB file: GPT valid for the new size, partition 1 unchanged,
    // partition 2 ending on the last MiB boundary before the backup GPT.
    store.restore(&new_id, &small);
    assert_eq!(small.metadata().unwrap().len(), GIB);
    let verify = sgdisk(&["-v"], &small);
    assert!(verify.contains("No problems found"), "sgdisk -v on the fitted disk:\n{verify}");
    assert_eq!(sgdisk(&["-i", "1"], &small), sgdisk(&["-i", "1"], &disk.path));
    let p2 = sgdisk(&["-i", "2"], &small);
    assert!(p2.contains(&format!("Last sector: {} ", GIB / 512 - 2048 - 1)), "{p2}");
    assert_eq!(
        p2.lines().filter(|l| !l.starts_with("Last sector") && !l.starts_with("Partition size")).collect::<Vec<_>>(),
        sgdisk(&["-i", "2"], &disk.path)
            .lines()
            .filter(|l| !l.starts_with("Last sector") && !l.starts_with("Partition size"))
            .collect::<Vec<_>>(),
        "type, GUID, name and attributes kept"
    );

    let mut fitted_layout = disk.clone();
    fitted_layout.path = small.clone();
    fitted_layout.size = GIB;
    let p = fitted_layout.partition_mut(2);
    p.size = GIB - MIB - p.offset;
    assert_fsck_clean(&fitted_layout, &small);
    assert_files_match(&fitted_layout, &small);
}

#[test]
fn an_xfs_last_partition_is_refused_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    let xfs = work.path().join("xfs.img");
    std::fs::File::create(&xfs).unwrap().set_len(320 * MIB).unwrap();
    tool("mkfs.xfs", ["-q", "-f", "-L", "fitxfs", xfs.to_str().unwrap()]);
    let disk = build_gpt(
        work.path(),
        "xfs-last.img",
        424 * MIB,
        vec![
            PartSpec::gpt(
                100 * MIB,
                "8300",
                "boot",
                Content::Ext4 { label: "boot", block_size: 4096, files: linux_root_files(81, 2), deleted: vec![] },
            ),
            PartSpec::gpt(320 * MIB, "8300", "root", Content::Image { fs: Fs::Raw, path: xfs }),
        ],
    );
    let store = Store::new(work.path().join("store"));
    let orig = store.capture(&disk.path, None);
    let scratch = tempfile::tempdir().unwrap();
    let before = tree(&store.dir);
    fit_run(&store, &orig.snapshot, "300M", scratch.path()).expect_failure_mentioning(&[
        "nothing was written",
        "partition 2",
        "XFS",
        "never shrink",
    ]);
    assert_eq!(tree(&store.dir), before, "a refused fit writes nothing to the store");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn an_engine_snapshot_is_fitted_and_uploaded_for_the_same_host() {
    let work = tempfile::tempdir().unwrap();
    let mut data = linux_root_files(91, 8);
    data.extend((0..3).map(|i| FileSpec::new(format!("srv/blob{i}.bin"), random_bytes(9100 + i, 10 * MIB as usize))));
    let disk = build_gpt(
        work.path(),
        "engine.img",
        320 * MIB,
        vec![
            PartSpec::gpt(
                64 * MIB,
                "8300",
                "boot",
                Content::Ext4 { label: "boot", block_size: 4096, files: linux_root_files(92, 1), deleted: vec![] },
            ),
            PartSpec::gpt(
                254 * MIB,
                "8300",
                "root",
                Content::Ext4 { label: "root", block_size: 4096, files: data, deleted: vec![] },
            ),
        ],
    );
    let server = Server::start(&work.path().join("engine"));
    let orig = server.capture(&disk.path, "web01");

    let small = work.path().join("small.img");
    patterned_file(&small, 160 * MIB);
    server.restore_run(&orig.snapshot, &small).expect_failure_mentioning(&[
        "nothing was written",
        &format!("kura image fit {} --size {}", orig.snapshot, 160 * MIB),
    ]);

    let scratch = tempfile::tempdir().unwrap();
    let run =
        server.kura(&[&"image", &"fit", &orig.snapshot, &"--size", &"160M", &"--scratch", &scratch.path(), &"--json"]);
    assert!(run.success(), "fit failed:\n{run}\nserver log:\n{}", server.log());
    let fitted: serde_json::Value = run.json();
    let new_id = fitted["snapshot"].as_str().unwrap().to_string();
    let snaps = server.snapshots();
    let entry = snaps.iter().find(|s| s["id"] == new_id.as_str()).unwrap_or_else(|| panic!("{snaps:?}"));
    assert_eq!(entry["host"], "web01");
    assert_eq!(snaps.len(), 2);
    server.assert_verify_ok();

    server.restore(&new_id, &small);
    let verify = sgdisk(&["-v"], &small);
    assert!(verify.contains("No problems found"), "sgdisk -v on the fitted disk:\n{verify}");
    let mut layout = disk.clone();
    layout.path = small.clone();
    layout.size = 160 * MIB;
    let p = layout.partition_mut(2);
    p.size = 159 * MIB - p.offset;
    assert_fsck_clean(&layout, &small);
    assert_files_match(&layout, &small);
}
