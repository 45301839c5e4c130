//! NTFS allocation maps: the unnamed `$DATA` of the `$Bitmap` metadata file, one bit per
//! cluster, read through the `ntfs` crate after validating the boot sector here.
//!
//! A volume that is marked dirty or whose `$LogFile` has not been closed cleanly (Windows crashed,
//! hibernated or used fast startup) may have allocations recorded only in the log, so it is
//! captured raw. The backup boot sector in the partition's last sector lies past the cluster
//! range; the map stops at the last whole cluster so that tail counts as used.

use super::{le16, le32, le64, read_at_or, AllocationMap, FsKind};
use crate::bitmap::Bitmap;
use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::structured_values::NtfsVolumeFlags;
use ntfs::{KnownNtfsFileRecordNumber, Ntfs};
use std::io::{Read, Seek};

const OEM_ID: &[u8] = b"NTFS    ";
const MAX_CLUSTER_SIZE: u64 = 2 << 20;
/// Bytes of `$LogFile` looked at: its two restart pages.
const LOGFILE_HEAD: u64 = 8192;
/// `RESTART_AREA.flags`: the volume was dismounted cleanly.
const RESTART_VOLUME_IS_CLEAN: u16 = 0x2;
/// `RESTART_AREA.client_in_use_list` when no client has the log open.
const LOGFILE_NO_CLIENT: u16 = 0xFFFF;

/// Whether `head` carries the NTFS OEM id.
pub(super) fn detect(head: &[u8]) -> bool {
    head.get(3..11) == Some(OEM_ID)
}

/// The boot sector fields checked before the `ntfs` crate sees the volume.
#[derive(Debug)]
struct Boot {
    cluster_size: u64,
    clusters: u64,
    mft_lcn: u64,
    mftmirr_lcn: u64,
}

impl Boot {
    fn parse(bs: &[u8], part_size: u64) -> Result<Boot, String> {
        if bs.len() < 512 || bs.get(3..11) != Some(OEM_ID) {
            return Err("no NTFS boot sector".into());
        }
        if bs[510..512] != [0x55, 0xAA] {
            return Err("boot sector signature 55 AA missing".into());
        }
        let bps = le16(bs, 0x0B) as u64;
        if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
            return Err(format!("{bps} bytes per sector"));
        }
        let spc_raw = bs[0x0D];
        let spc = match spc_raw {
            1..=128 if spc_raw.is_power_of_two() => spc_raw as u64,
            // Windows writes large cluster sizes as a negative power of two.
            244..=255 => 1u64 << (256 - spc_raw as u32),
            _ => return Err(format!("sectors per cluster byte {spc_raw:#x}")),
        };
        let cluster_size = bps * spc;
        if cluster_size > MAX_CLUSTER_SIZE {
            return Err(format!("cluster size {cluster_size} is over 2 MiB"));
        }
        let total_sectors = le64(bs, 0x28);
        let bytes = total_sectors.checked_mul(bps).filter(|&b| b <= part_size).ok_or_else(|| {
            format!("volume of {total_sectors} sectors of {bps} bytes is larger than the partition ({part_size} bytes)")
        })?;
        let clusters = bytes / cluster_size;
        if clusters < 16 {
            return Err(format!("{clusters} clusters is too small for NTFS"));
        }
        let mft_lcn = le64(bs, 0x30);
        let mftmirr_lcn = le64(bs, 0x38);
        if mft_lcn == 0 || mft_lcn >= clusters || mftmirr_lcn == 0 || mftmirr_lcn >= clusters {
            return Err(format!(
                "$MFT at cluster {mft_lcn} or $MFTMirr at {mftmirr_lcn} is outside {clusters} clusters"
            ));
        }
        Ok(Boot { cluster_size, clusters, mft_lcn, mftmirr_lcn })
    }
}

/// Reads the allocation map of the NTFS volume in `part`.
pub(super) fn read<R: Read + Seek>(part: &mut R, part_size: u64) -> Result<AllocationMap, String> {
    let mut bs = vec![0u8; 512];
    read_at_or(part, 0, &mut bs, "the boot sector")?;
    let boot = Boot::parse(&bs, part_size)?;
    // The crate is careful, but it is parsing untrusted metadata: a panic in it must become a raw
    // capture, not a crashed backup.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_with_crate(part, &boot)))
        .map_err(|_| "the NTFS parser failed on this volume".to_string())?;
    let (bitmap, label) = read?;
    for (what, lcn) in [("the boot sector", 0), ("$MFT", boot.mft_lcn), ("$MFTMirr", boot.mftmirr_lcn)] {
        if !bitmap.get(lcn) {
            return Err(format!("$Bitmap marks the cluster of {what} ({lcn}) free"));
        }
    }
    Ok(AllocationMap { kind: FsKind::Ntfs, block_size: boot.cluster_size as u32, bitmap, label, warnings: Vec::new() })
}

fn read_with_crate<R: Read + Seek>(part: &mut R, boot: &Boot) -> Result<(Bitmap, Option<String>), String> {
    let ntfs = Ntfs::new(part).map_err(|e| format!("cannot open the volume: {e}"))?;
    if ntfs.cluster_size() as u64 != boot.cluster_size {
        return Err("the NTFS parser disagrees on the cluster size".into());
    }
    let info = ntfs.volume_info(part).map_err(|e| format!("cannot read $Volume: {e}"))?;
    if info.flags().contains(NtfsVolumeFlags::IS_DIRTY) {
        return Err("the volume is marked dirty (run chkdsk)".into());
    }
    let log = read_data_head(&ntfs, part, KnownNtfsFileRecordNumber::LogFile, LOGFILE_HEAD, "$LogFile")?;
    logfile_is_clean(&log)?;

    let need = boot.clusters.div_ceil(8);
    let bytes = read_data_head(&ntfs, part, KnownNtfsFileRecordNumber::Bitmap, need, "$Bitmap")?;
    if (bytes.len() as u64) < need {
        return Err(format!("$Bitmap holds {} bytes but {} clusters need {need}", bytes.len(), boot.clusters));
    }
    let bitmap = Bitmap::from_bytes(bytes, boot.clusters).ok_or("$Bitmap is too short")?;

    let label = match ntfs.volume_name(part) {
        Some(Ok(name)) => Some(name.name().to_string_lossy()).filter(|l| !l.is_empty()),
        _ => None,
    };
    Ok((bitmap, label))
}

/// The first `max` bytes (fewer if the file is shorter) of the unnamed `$DATA` of a metadata
/// file. Refuses sparse data runs: a hole in `$Bitmap` would read as free clusters.
fn read_data_head<R: Read + Seek>(
    ntfs: &Ntfs,
    part: &mut R,
    which: KnownNtfsFileRecordNumber,
    max: u64,
    name: &str,
) -> Result<Vec<u8>, String> {
    let err = |e: ntfs::NtfsError| format!("cannot read {name}: {e}");
    let file = ntfs.file(part, which as u64).map_err(err)?;
    let item = file.data(part, "").ok_or_else(|| format!("{name} has no $DATA"))?.map_err(err)?;
    let attr = item.to_attribute().map_err(err)?;
    let value = attr.value(part).map_err(err)?;
    if let NtfsAttributeValue::NonResident(v) = &value {
        for run in v.data_runs() {
            if run.map_err(err)?.data_position().value().is_none() {
                return Err(format!("{name} has a sparse data run"));
            }
        }
    }
    let len = value.len().min(max);
    let mut buf = vec![0u8; len as usize];
    value.attach(part).read_exact(&mut buf).map_err(|e| format!("cannot read {name}: {e}"))?;
    Ok(buf)
}

/// Checks the `$LogFile` restart pages say the volume was closed cleanly (the test `ntfs-3g`
/// applies before mounting). An all-0xFF log (freshly formatted or reset) is clean.
fn logfile_is_clean(log: &[u8]) -> Result<(), String> {
    if log.is_empty() {
        return Err("$LogFile is empty".into());
    }
    if log[..4096.min(log.len())].iter().all(|&b| b == 0xFF) {
        return Ok(());
    }
    let mut newest: Option<(u64, bool)> = None;
    let page_size = match le32(log, 0x10) {
        p @ 512..=65536 if p.is_power_of_two() => p as usize,
        _ => 4096,
    };
    for start in [0, page_size] {
        let Some(page) = log.get(start..(start + page_size).min(log.len())) else {
            continue;
        };
        if page.get(..4) != Some(b"RSTR") {
            continue;
        }
        if let Some(state) = restart_page_state(page) {
            if newest.is_none_or(|(lsn, _)| state.0 > lsn) {
                newest = Some(state);
            }
        }
    }
    match newest {
        Some((_, true)) => Ok(()),
        Some((_, false)) => {
            Err("$LogFile says the volume was not shut down cleanly (Windows crash, hibernation or fast startup)"
                .into())
        }
        None => Err("$LogFile has no valid restart page".into()),
    }
}

/// `(current LSN, clean)` of one restart page, after applying its update sequence fixups;
/// `None` if the page is malformed or torn.
fn restart_page_state(page: &[u8]) -> Option<(u64, bool)> {
    let mut page = page.to_vec();
    let usa_ofs = le16(&page, 0x04) as usize;
    let usa_count = le16(&page, 0x06) as usize;
    if usa_count == 0 || usa_ofs + 2 * usa_count > page.len() || (usa_count - 1) * 512 > page.len() {
        return None;
    }
    let usn = [page[usa_ofs], page[usa_ofs + 1]];
    for i in 1..usa_count {
        let end = i * 512;
        if page[end - 2..end] != usn {
            return None;
        }
        let fix = [page[usa_ofs + 2 * i], page[usa_ofs + 2 * i + 1]];
        page[end - 2..end].copy_from_slice(&fix);
    }
    let ra = le16(&page, 0x18) as usize;
    if ra + 0x10 > page.len() {
        return None;
    }
    let lsn = le64(&page, ra);
    let in_use = le16(&page, ra + 0x0C);
    let flags = le16(&page, ra + 0x0E);
    Some((lsn, in_use == LOGFILE_NO_CLIENT || flags & RESTART_VOLUME_IS_CLEAN != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::probe;
    use crate::fs::test_images::{file_of, require, run, run_out, Image};
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Builds an NTFS image of `mib` MiB with `cluster` byte clusters and a few files.
    fn build(mib: u64, cluster: u32) -> Image {
        let img = Image::new(mib);
        let c = cluster.to_string();
        run("mkntfs", &["-F", "-Q", "-q", "-c", &c, "-L", "KuraNTFS", img.path_str()]);
        let dir = img.dir.path();
        std::fs::write(dir.join("big.bin"), file_of(3 << 20, 5)).unwrap();
        std::fs::write(dir.join("medium.bin"), file_of(200_000, 6)).unwrap();
        for f in ["big.bin", "medium.bin"] {
            run("ntfscp", &["-f", img.path_str(), dir.join(f).to_str().unwrap(), f]);
        }
        img
    }

    /// `(total, free)` clusters from `ntfsinfo -m`.
    fn ntfsinfo_clusters(img: &Image) -> (u64, u64) {
        let out = run_out("ntfsinfo", &["-m", "-f", img.path_str()]);
        let field = |name: &str| -> u64 {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
                .unwrap_or_else(|| panic!("{name} missing from ntfsinfo output:\n{out}"))
        };
        (field("Volume Size in Clusters:"), field("Free Clusters:"))
    }

    /// Clusters of a file's $DATA, from `ntfsinfo -F` ("... LCN ... Length").
    fn file_lcns(img: &Image, file: &str) -> Vec<u64> {
        let out = run_out("ntfsinfo", &["-f", "-v", "-F", file, img.path_str()]);
        let mut lcns = Vec::new();
        let mut in_runs = false;
        for line in out.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.ends_with(&["VCN", "LCN", "Length"]) {
                in_runs = true;
                continue;
            }
            if in_runs {
                let nums: Option<Vec<u64>> =
                    words.iter().map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok()).collect();
                match nums.as_deref() {
                    Some([_vcn, lcn, len]) => lcns.extend(*lcn..lcn + len),
                    _ => in_runs = false,
                }
            }
        }
        lcns
    }

    fn check_variant(cluster: u32) {
        require("mkntfs");
        require("ntfscp");
        require("ntfsinfo");
        let img = build(64, cluster);
        let map = img.probe(None);
        assert_eq!(map.kind, FsKind::Ntfs, "{:?}", map.warnings);
        assert_eq!(map.block_size, cluster);
        assert_eq!(map.label.as_deref(), Some("KuraNTFS"));
        let (total, free) = ntfsinfo_clusters(&img);
        assert_eq!(map.bitmap.len(), total);
        assert_eq!(map.bitmap.count_ones(), total - free, "used clusters vs ntfsinfo");
        // The backup boot sector (last sector) lies past the bitmap, so it counts as used.
        assert!(map.bitmap.len() * cluster as u64 <= img.size() - 512);
        let lcns = file_lcns(&img, "big.bin");
        assert!(lcns.len() as u64 >= (3 << 20) / cluster as u64, "found {} clusters of big.bin", lcns.len());
        for lcn in lcns {
            assert!(map.bitmap.get(lcn), "cluster {lcn} of big.bin not used");
        }
    }

    #[test]
    fn ntfs_4k_clusters() {
        check_variant(4096);
    }

    #[test]
    fn ntfs_512_clusters() {
        check_variant(512);
    }

    #[test]
    fn ntfs_64k_clusters() {
        check_variant(65536);
    }

    #[test]
    fn garbage_boot_sector_is_raw() {
        require("mkntfs");
        let img = build(16, 4096);
        let mut bytes = img.bytes();
        for (i, b) in bytes[11..510].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        let len = bytes.len() as u64;
        let map = probe(&mut Cursor::new(bytes), len, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert!(map.warnings[0].contains("NTFS"), "{:?}", map.warnings);
    }

    #[test]
    fn garbage_mft_is_raw() {
        require("mkntfs");
        let img = build(16, 4096);
        let mut bytes = img.bytes();
        let boot = Boot::parse(&bytes, bytes.len() as u64).unwrap();
        let mft = (boot.mft_lcn * boot.cluster_size) as usize;
        for (i, b) in bytes[mft..mft + 16 * 1024].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151).wrapping_add(3);
        }
        let len = bytes.len() as u64;
        let map = probe(&mut Cursor::new(bytes), len, None);
        assert_eq!(map.kind, FsKind::Raw);
        assert!(map.warnings[0].contains("NTFS"), "{:?}", map.warnings);
    }

    #[test]
    fn dirty_logfile_is_detected() {
        let mut page = vec![0u8; 4096];
        page[..4].copy_from_slice(b"RSTR");
        page[0x04..0x06].copy_from_slice(&0x1Eu16.to_le_bytes());
        page[0x06..0x08].copy_from_slice(&9u16.to_le_bytes());
        page[0x10..0x14].copy_from_slice(&4096u32.to_le_bytes());
        page[0x18..0x1A].copy_from_slice(&0x30u16.to_le_bytes());
        // Update sequence: number 7, and each sector's saved tail bytes.
        page[0x1E..0x20].copy_from_slice(&7u16.to_le_bytes());
        for i in 1..9 {
            page[i * 512 - 2..i * 512].copy_from_slice(&7u16.to_le_bytes());
        }
        let mut dirty = page.clone();
        dirty[0x30..0x38].copy_from_slice(&100u64.to_le_bytes());
        dirty[0x30 + 0x0C..0x30 + 0x0E].copy_from_slice(&0u16.to_le_bytes());
        assert!(logfile_is_clean(&dirty).is_err());
        let mut clean = dirty.clone();
        clean[0x30 + 0x0E] = RESTART_VOLUME_IS_CLEAN as u8;
        assert!(logfile_is_clean(&clean).is_ok());
        // The newer restart page wins.
        let mut both = clean.clone();
        both.extend_from_slice(&dirty);
        both[4096 + 0x30..4096 + 0x38].copy_from_slice(&200u64.to_le_bytes());
        assert!(logfile_is_clean(&both).is_err());
        // A torn page (sequence number mismatch) is not trusted.
        let mut torn = clean.clone();
        torn[1022] = 0;
        assert!(logfile_is_clean(&torn).is_err());
        assert!(logfile_is_clean(&[0xFF; 8192]).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_boot_sector_never_panics(bpb in proptest::collection::vec(any::<u8>(), 499), size_kib in 1u64..50_000) {
            let mut img = vec![0u8; 512];
            img[3..11].copy_from_slice(OEM_ID);
            img[11..510].copy_from_slice(&bpb);
            img[510] = 0x55;
            img[511] = 0xAA;
            img.resize(256 * 1024, 0);
            let size = size_kib * 1024;
            let map = probe(&mut Cursor::new(img), size, None);
            prop_assert!(map.bitmap.len() * map.block_size as u64 <= size.next_multiple_of(map.block_size as u64));
        }
    }

    #[test]
    fn mutated_real_volume_never_panics() {
        require("mkntfs");
        let img = build(16, 4096);
        let pristine = img.bytes();
        let boot = Boot::parse(&pristine, pristine.len() as u64).unwrap();
        let mft = (boot.mft_lcn * boot.cluster_size) as usize;
        let len = pristine.len() as u64;
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
        runner
            .run(
                &(
                    proptest::collection::vec((0usize..512, any::<u8>()), 0..4),
                    proptest::collection::vec((0usize..8192, any::<u8>()), 1..8),
                ),
                |(boot_muts, mft_muts)| {
                    let mut bytes = pristine.clone();
                    for (off, v) in boot_muts {
                        bytes[off] = v;
                    }
                    for (off, v) in mft_muts {
                        bytes[mft + off] = v;
                    }
                    let map = probe(&mut Cursor::new(bytes), len, None);
                    prop_assert!(map.bitmap.len() * map.block_size as u64 <= len);
                    Ok(())
                },
            )
            .unwrap();
    }
}
