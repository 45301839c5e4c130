//! An XFS partition round trip: a GPT disk whose XFS partition has deleted files in its free
//! space is captured (only the blocks outside the free-space B+trees are stored, none of the
//! deleted bytes) and restored; the restored filesystem passes `xfs_repair -n` and, mounted
//! read-only through a loop device at the partition's offset, holds every file unchanged. The
//! stored size is printed beside what `partclone.xfs` + `zstd` makes of the same filesystem.

use std::collections::HashSet;
use std::path::Path;

use kura_tests::content::random_bytes;
use kura_tests::disks::{build_gpt, read_at, Content, Fs, PartSpec, MIB};
use kura_tests::kura_cli::Store;
use kura_tests::lvm::{tree_digests, Mounted};
use kura_tests::store::find_sectors;
use kura_tests::tools::{run, run_unchecked};

const PART_SIZE: u64 = 600 * MIB;
const JUNK_FILES: u64 = 6;
const JUNK_SIZE: usize = 16 * MIB as usize;

/// A number from `xfs_db -r -c CMD -c "p FIELD"`.
fn xfs_db_field(image: &Path, cmd: &str, field: &str) -> u64 {
    let out = run("xfs_db", ["-r", "-c", cmd, "-c", &format!("p {field}"), image.to_str().unwrap()]);
    out.trim().strip_prefix(&format!("{field} = ")).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{out}"))
}

/// How many 512-byte sectors of `needles` occur sector-aligned in `path`.
fn sectors_present(path: &Path, needles: &[Vec<u8>]) -> usize {
    let wanted: HashSet<&[u8]> = needles.iter().flat_map(|n| n.chunks_exact(512)).collect();
    let data = std::fs::read(path).unwrap();
    data.chunks_exact(512).filter(|s| wanted.contains(s)).count()
}

#[test]
fn xfs_partition_round_trip_leaves_free_space_behind() {
    let work = tempfile::tempdir().unwrap();
    let xfs = work.path().join("xfs.img");
    std::fs::File::create(&xfs).unwrap().set_len(PART_SIZE).unwrap();
    run("mkfs.xfs", ["-q", "-f", "-L", "kuraxfs", xfs.to_str().unwrap()]);

    // Live files (about 30 MiB) and 96 MiB of junk written, flushed, then deleted.
    let junk: Vec<Vec<u8>> = (0..JUNK_FILES).map(|i| random_bytes(9000 + i, JUNK_SIZE)).collect();
    let expected = {
        let m = Mounted::new("xfs", &xfs, "loop");
        let root = m.path();
        for d in ["etc/conf.d", "data", "junk"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for i in 0..300u64 {
            let dir = if i % 3 == 0 { "etc/conf.d" } else { "etc" };
            std::fs::write(root.join(format!("{dir}/f{i}")), random_bytes(100 + i, 200 + 97 * i as usize)).unwrap();
        }
        for (i, j) in junk.iter().enumerate() {
            std::fs::write(root.join(format!("junk/j{i}")), j).unwrap();
        }
        for i in 0..3u64 {
            std::fs::write(root.join(format!("data/big{i}.bin")), random_bytes(200 + i, 8 * MIB as usize + 4321))
                .unwrap();
        }
        run("sync", Vec::<&str>::new());
        std::fs::remove_dir_all(root.join("junk")).unwrap();
        run("sync", Vec::<&str>::new());
        tree_digests(root)
    };
    assert_eq!(expected.len(), 303);
    run("xfs_repair", ["-n", xfs.to_str().unwrap()]);
    // The bnobt's free blocks: xfs_db's free count less the free list blocks it includes.
    let total_free = {
        let out = run("xfs_db", ["-r", "-c", "freesp -s", xfs.to_str().unwrap()]);
        let line = out.lines().find(|l| l.contains("total free blocks")).unwrap_or_else(|| panic!("{out}"));
        line.split_whitespace().last().unwrap().parse::<u64>().unwrap()
    };
    let agcount = xfs_db_field(&xfs, "sb 0", "agcount");
    let flcount: u64 = (0..agcount).map(|ag| xfs_db_field(&xfs, &format!("agf {ag}"), "flcount")).sum();
    let block_size = xfs_db_field(&xfs, "sb 0", "blocksize");
    let free_bytes = (total_free - flcount) * block_size;

    let disk = build_gpt(
        work.path(),
        "disk.img",
        PART_SIZE + 2 * MIB,
        vec![PartSpec::gpt(PART_SIZE, "8300", "root", Content::Image { fs: Fs::Raw, path: xfs.clone() })],
    );
    let part = disk.partition(1).clone();
    // The junk really is in the source disk's free space.
    let present = sectors_present(&disk.path, &junk);
    assert!(present * 512 > JUNK_SIZE * JUNK_FILES as usize * 9 / 10, "only {present} junk sectors on the disk");

    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, None);
    eprintln!("{cap:?}");
    assert!(cap.warnings.is_empty(), "unexpected warnings: {:?}", cap.warnings);
    // Exactly the bnobt's free extents are left out.
    assert_eq!(cap.used_bytes, disk.size - free_bytes, "used bytes vs xfs_db's free space");
    let allowance = 128 * cap.chunks + 64 * 1024;
    assert!(
        cap.new_stored_bytes <= cap.used_bytes + allowance,
        "stored {} > used {} + {allowance}",
        cap.new_stored_bytes,
        cap.used_bytes
    );
    let junk_refs: Vec<&[u8]> = junk.iter().map(|j| j.as_slice()).collect();
    let hits = find_sectors(&store.dir, &junk_refs);
    assert!(hits.is_empty(), "deleted data found in the store (chunk, offset): {hits:?}");
    let live = random_bytes(200, 8 * MIB as usize);
    assert!(!find_sectors(&store.dir, &[&live]).is_empty(), "live file data not found in the store");

    // The peer: partclone.xfs (the same bnobt rule) + zstd on the same filesystem.
    let pc = work.path().join("xfs.pc");
    run("partclone.xfs", ["-q", "-c", "-s", xfs.to_str().unwrap(), "-O", pc.to_str().unwrap()]);
    run("zstd", ["-q", "-f", "--rm", pc.to_str().unwrap()]);
    let peer = std::fs::metadata(work.path().join("xfs.pc.zst")).unwrap().len();
    eprintln!("stored: kura {} bytes, partclone.xfs + zstd {peer} bytes", cap.new_stored_bytes);
    assert!(cap.new_stored_bytes < peer + peer / 4, "kura stores {} against partclone's {peer}", cap.new_stored_bytes);

    let restored = work.path().join("restored.img");
    store.restore(&cap.snapshot, &restored);
    assert_eq!(std::fs::metadata(&restored).unwrap().len(), disk.size);
    assert_eq!(read_at(&restored, 0, part.offset as usize), read_at(&disk.path, 0, part.offset as usize), "GPT area");
    let tail = disk.size - part.end();
    assert_eq!(read_at(&restored, part.end(), tail as usize), read_at(&disk.path, part.end(), tail as usize));
    assert_eq!(sectors_present(&restored, &junk), 0, "junk came back");

    let part_copy = work.path().join("restored-p1.img");
    kura_tests::checkers::extract(&restored, part.offset, part.size, &part_copy);
    let repair = run_unchecked("xfs_repair", ["-n", part_copy.to_str().unwrap()]);
    assert!(
        repair.status.success(),
        "xfs_repair -n on the restored partition:\n{}{}",
        String::from_utf8_lossy(&repair.stdout),
        String::from_utf8_lossy(&repair.stderr)
    );
    let m = Mounted::new("xfs", &restored, &format!("ro,loop,offset={},sizelimit={}", part.offset, part.size));
    assert_eq!(tree_digests(m.path()), expected, "restored files differ");
}
