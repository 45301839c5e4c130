//! Linux swap allocation maps: only the header page (signature, UUID, label) is worth keeping;
//! the rest is scratch space that `mkswap`'s header is enough to recreate.
//!
//! A swap area holding a hibernation image is the exception: its pages are the suspended
//! system, so it is captured raw.

use super::{label_from_bytes, le32, AllocationMap, FsKind};
use crate::bitmap::Bitmap;

/// Page sizes a swap header may have been written with (x86 uses 4096).
const PAGE_SIZES: [usize; 4] = [4096, 8192, 16384, 65536];

/// Signatures of a usable swap area (v1 and the obsolete v0).
const SWAP_MAGICS: [&[u8]; 2] = [b"SWAPSPACE2", b"SWAP-SPACE"];

/// Signatures swsusp/uswsusp put in place of the swap signature while an image is stored.
const HIBERNATION_MAGICS: [&[u8]; 4] = [b"S1SUSPEND\0", b"S2SUSPEND\0", b"ULSUSPEND\0", b"LINHIB0001"];

/// The page size whose signature slot holds one of `magics`.
fn signature_page(head: &[u8], magics: &[&[u8]]) -> Option<usize> {
    PAGE_SIZES.into_iter().find(|&ps| head.get(ps - 10..ps).is_some_and(|sig| magics.contains(&sig)))
}

/// Whether `head` carries a swap (or hibernated swap) signature.
pub(super) fn detect(head: &[u8]) -> bool {
    signature_page(head, &SWAP_MAGICS).is_some() || signature_page(head, &HIBERNATION_MAGICS).is_some()
}

/// The allocation map of a swap partition: its first page.
pub(super) fn read(part_size: u64, head: &[u8]) -> Result<AllocationMap, String> {
    if signature_page(head, &HIBERNATION_MAGICS).is_some() {
        return Err("it holds a hibernation image".into());
    }
    let page = signature_page(head, &SWAP_MAGICS).ok_or("no swap signature")?;
    let pages = part_size / page as u64;
    if pages < 2 {
        return Err(format!("partition of {part_size} bytes is too small for a swap area"));
    }
    let is_v1 = head.get(page - 10..page) == Some(b"SWAPSPACE2".as_slice());
    let label = if is_v1 {
        let version = le32(head, 1024);
        if version != 1 && version.swap_bytes() != 1 {
            return Err(format!("unknown swap header version {version}"));
        }
        label_from_bytes(&head[1052..1068])
    } else {
        None
    };
    let mut bitmap = Bitmap::new(pages);
    bitmap.set(0);
    Ok(AllocationMap { kind: FsKind::Swap, block_size: page as u32, bitmap, label, warnings: Vec::new() })
}

#[cfg(test)]
mod tests {
    use crate::fs::test_images::{require, run, Image};
    use crate::fs::{probe, FsKind};
    use crate::layout::{gpt_types, PartitionEntry};
    use proptest::prelude::*;
    use std::io::Cursor;

    fn gpt(type_guid: &str) -> PartitionEntry {
        PartitionEntry::Gpt {
            type_guid: type_guid.into(),
            unique_guid: "00000000-0000-0000-0000-000000000001".into(),
            name: String::new(),
            attributes: 0,
        }
    }

    #[test]
    fn swap_header_page_only() {
        require("mkswap");
        let img = Image::new(32);
        run("mkswap", &["-L", "kuraswap", img.path_str()]);
        let map = img.probe(Some(&gpt(gpt_types::LINUX_SWAP)));
        assert_eq!(map.kind, FsKind::Swap, "{:?}", map.warnings);
        assert_eq!(map.label.as_deref(), Some("kuraswap"));
        assert_eq!(map.block_size, 4096);
        assert_eq!(map.bitmap.len(), 8192);
        assert_eq!(map.bitmap.count_ones(), 1);
        assert!(map.bitmap.get(0));
        assert_eq!(map.used_bytes(img.size()), 4096);
    }

    #[test]
    fn swap_type_without_signature_is_raw() {
        let img = vec![0u8; 1 << 20];
        let map = probe(&mut Cursor::new(img), 1 << 20, Some(&gpt(gpt_types::LINUX_SWAP)));
        assert_eq!(map.kind, FsKind::Raw);
        assert_eq!(map.warnings, vec!["partition type says swap but no swap signature; captured raw"]);
    }

    #[test]
    fn hibernation_image_is_raw() {
        let mut img = vec![0u8; 1 << 20];
        img[4086..4096].copy_from_slice(b"S1SUSPEND\0");
        let map = probe(&mut Cursor::new(img), 1 << 20, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert!(map.warnings[0].contains("hibernation"), "{:?}", map.warnings);
    }

    #[test]
    fn no_filesystem_partitions_are_raw_without_warning() {
        for t in [gpt_types::BIOS_BOOT, gpt_types::MS_RESERVED] {
            let map = probe(&mut Cursor::new(vec![0u8; 1 << 20]), 1 << 20, Some(&gpt(t)));
            assert_eq!(map.kind, FsKind::Raw);
            assert!(map.warnings.is_empty());
        }
        let map = probe(&mut Cursor::new(vec![0u8; 1 << 20]), 1 << 20, None);
        assert_eq!(map.warnings, vec!["partition holds no recognised filesystem; captured raw"]);
    }

    #[test]
    fn short_partition_is_raw() {
        // The reader claims more bytes than it has: reading the head fails, no panic.
        let map = probe(&mut Cursor::new(vec![0u8; 100]), 1 << 20, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert!(map.warnings[0].contains("could not read"), "{:?}", map.warnings);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_swap_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 4096), size in 0u64..100_000) {
            let mut img = bytes;
            img[4086..4096].copy_from_slice(b"SWAPSPACE2");
            img.resize(100_000, 0);
            let map = probe(&mut Cursor::new(img), size, None);
            prop_assert!(map.bitmap.len() * map.block_size as u64 <= size.next_multiple_of(map.block_size as u64));
        }
    }
}
