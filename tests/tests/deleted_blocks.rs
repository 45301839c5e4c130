//! Free space is not captured: deleted files, freed NTFS clusters and old swap pages stay out
//! of the store, yet the restored disk has every live file.

use kura_tests::content::random_bytes;
use kura_tests::disks::MIB;
use kura_tests::fixtures::{self, DELETED_EXT4, DELETED_NTFS, STALE_SWAP};
use kura_tests::kura_cli::Store;
use kura_tests::store::{find_sectors, stored_bytes};
use kura_tests::tables::assert_restored;

#[test]
fn deleted_and_free_blocks_are_not_captured() {
    let work = tempfile::tempdir().unwrap();
    let (disk, stale) = fixtures::with_deleted_data(work.path());
    let stale_bytes = (DELETED_EXT4 + DELETED_NTFS + STALE_SWAP) as u64;
    let store = Store::new(work.path().join("store"));

    let cap = store.capture(&disk.path, None);
    eprintln!("{cap:?}");
    assert!(cap.warnings.is_empty(), "unexpected warnings: {:?}", cap.warnings);

    // The allocation maps do not count the stale data as used.
    assert!(
        cap.used_bytes + stale_bytes <= disk.size,
        "used_bytes {} counts free space: disk {} holds {stale_bytes} stale bytes",
        cap.used_bytes,
        disk.size
    );
    // What is stored is at most what is used, plus the chunk headers and zstd framing
    // (64 + at most 64 bytes a chunk) and 64 KiB for anything else.
    let allowance = 128 * cap.chunks + 64 * 1024;
    assert!(
        cap.new_stored_bytes <= cap.used_bytes + allowance,
        "stored {} > used {} + {allowance}",
        cap.new_stored_bytes,
        cap.used_bytes
    );
    // And far less than a copy of the stale data: the live data is about 17 MiB, half of it
    // incompressible, against 88 MiB of stale random bytes.
    let on_disk = stored_bytes(&store.dir);
    assert!(on_disk < stale_bytes / 3, "the store holds {on_disk} bytes for {stale_bytes} stale");
    assert!(on_disk < DELETED_EXT4 as u64, "the store holds {on_disk} bytes");

    // No sector of the deleted data is in any chunk. (The first page of the swap area is
    // the swap header, captured on purpose: leave it out.)
    let needles: Vec<&[u8]> = vec![&stale[0], &stale[1], &stale[2][4096..]];
    let hits = find_sectors(&store.dir, &needles);
    assert!(hits.is_empty(), "deleted data found in the store (chunk, offset): {hits:?}");
    // The search itself works: a live incompressible file (usr/lib/libc.so.6) is found.
    let live = random_bytes(10_005, 2 * MIB as usize + 12_345);
    assert!(!find_sectors(&store.dir, &[&live]).is_empty(), "live file data not found in the store");

    let restored = work.path().join("restored.img");
    store.restore(&cap.snapshot, &restored);
    assert_restored(&disk, &restored);
}
