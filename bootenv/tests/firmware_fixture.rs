//! The firmware path of `kura bootenv build` against a fixture firmware directory: the installed
//! kernel's real bnx2x and tg3 modules (their `.modinfo` names their firmware), a firmware
//! directory holding some of those files (plain and zstd-compressed) and not others, and a kernel
//! config saying how the loader wants them. Present files must be in the image, in the packed form
//! with their content; missing ones must be listed and warned about with their Debian package.

use kura_bootenv::cpio::Reader;
use kura_bootenv::firmware::Packing;
use kura_bootenv::initramfs::{self, BuildOptions, Report};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn agent() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    [target.join("x86_64-unknown-linux-gnu/release/kura-agent"), PathBuf::from("/bin/busybox")]
        .into_iter()
        .find(|p| p.is_file() && initramfs::is_static_elf(p).unwrap_or(false))
        .expect("no static kura-agent and no /bin/busybox: apt-get install busybox-static")
}

/// Every file of the image: name → content.
fn files(initrd: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut rd = Reader::new(zstd::stream::read::Decoder::new(std::fs::File::open(initrd).unwrap()).unwrap());
    let mut out = BTreeMap::new();
    while let Some(h) = rd.next_entry().unwrap() {
        let mut data = Vec::new();
        rd.read_data(&h, &mut data).unwrap();
        out.insert(h.name, data);
    }
    out
}

fn build(fw_dir: &Path, config: &str, out: &Path) -> Report {
    let Some((kernel, modules)) = initramfs::find_installed_kernel() else {
        panic!("no /boot/vmlinuz-* with /lib/modules: apt-get install linux-image-amd64 (scripts/test does)");
    };
    let config_path = out.with_extension("config");
    std::fs::write(&config_path, config).unwrap();
    let mut opts = BuildOptions::new(agent(), out.to_path_buf());
    opts.kernel = Some(kernel);
    opts.modules = Some(modules);
    opts.firmware = fw_dir.to_path_buf();
    opts.kernel_config = Some(config_path);
    opts.drivers = vec!["bnx2x".into(), "tg3".into(), "no_such_driver".into()];
    opts.driver_dirs = Vec::new();
    opts.level = 1;
    opts.strip = false;
    initramfs::build(&opts).unwrap()
}

#[test]
fn present_firmware_is_packed_and_missing_firmware_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let fw = d.path().join("firmware");
    // What the modules name, from their .modinfo: take one bnx2x and one tg3 file.
    let (_, modules) = initramfs::find_installed_kernel().expect("linux-image-amd64");
    let dep =
        kura_bootenv::modules::DepTable::parse(&std::fs::read_to_string(modules.join("modules.dep")).unwrap()).unwrap();
    let names_of = |m: &str| {
        let e = dep.get(m).unwrap_or_else(|| panic!("{m} is not a module of {}", modules.display()));
        let src = modules.join(&e.path);
        let plain = d.path().join(format!("{m}.ko"));
        if kura_bootenv::modules::plain_path(&e.path) == e.path {
            std::fs::copy(&src, &plain).unwrap();
        } else {
            initramfs::decompress_to(&src, &plain).unwrap();
        }
        initramfs::modinfo_firmware(&plain).unwrap()
    };
    let (bnx2x, tg3) = (names_of("bnx2x"), names_of("tg3"));
    assert!(bnx2x.len() >= 2 && !tg3.is_empty(), "{bnx2x:?} {tg3:?}");
    let plain_one = &bnx2x[0];
    let zst_one = &tg3[0];
    let content = |n: &str| format!("fixture firmware {n} ").repeat(500).into_bytes();
    std::fs::create_dir_all(fw.join(plain_one).parent().unwrap()).unwrap();
    std::fs::write(fw.join(plain_one), content(plain_one)).unwrap();
    std::fs::create_dir_all(fw.join(zst_one).parent().unwrap()).unwrap();
    std::fs::write(fw.join(format!("{zst_one}.zst")), zstd::encode_all(&content(zst_one)[..], 3).unwrap()).unwrap();

    // Debian 6.1's loader: xz.
    let xz_config = "CONFIG_FW_LOADER=y\nCONFIG_FW_LOADER_COMPRESS=y\nCONFIG_FW_LOADER_COMPRESS_XZ=y\n";
    let r = build(&fw, xz_config, &d.path().join("xz"));
    assert_eq!(r.firmware_packing, Packing::Xz);
    assert_eq!(r.firmware, {
        let mut v = vec![plain_one.clone(), zst_one.clone()];
        v.sort();
        v
    });
    let image = files(&r.initrd);
    for n in [plain_one, zst_one] {
        let packed = image.get(&format!("lib/firmware/{n}.xz")).unwrap_or_else(|| panic!("{n}.xz not packed"));
        assert!(!image.contains_key(&format!("lib/firmware/{n}")), "{n} packed twice");
        let (x, back) = (d.path().join("x.xz"), d.path().join("x"));
        std::fs::write(&x, packed).unwrap();
        initramfs::decompress_to(&x, &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), content(n), "{n}");
    }
    // Every other name is missing, with the modules that name it and its package.
    let missing: BTreeMap<&str, &initramfs::MissingFirmware> =
        r.firmware_missing.iter().map(|m| (m.name.as_str(), m)).collect();
    for n in bnx2x.iter().skip(1) {
        assert_eq!(missing[n.as_str()].package.as_deref(), Some("firmware-bnx2x"), "{n}");
        assert_eq!(missing[n.as_str()].modules, ["bnx2x"]);
        assert!(r.warnings.iter().any(|w| w.contains(n.as_str()) && w.contains("firmware-bnx2x")), "{:#?}", r.warnings);
    }
    assert!(!missing.contains_key(plain_one.as_str()) && !missing.contains_key(zst_one.as_str()));
    assert_eq!(missing.len(), bnx2x.len() + tg3.len() - 2);
    // Per driver.
    let drv: BTreeMap<&str, &initramfs::DriverStatus> = r.drivers.iter().map(|d| (d.module.as_str(), d)).collect();
    assert_eq!(drv["bnx2x"].status, "included");
    assert_eq!(drv["bnx2x"].family, "broadcom-nx2");
    assert_eq!(drv["bnx2x"].firmware_present, vec![plain_one.to_string()]);
    assert_eq!(drv["bnx2x"].firmware_missing.len(), bnx2x.len() - 1);
    assert_eq!(drv["tg3"].firmware_present, vec![zst_one.to_string()]);
    assert_eq!(drv["no_such_driver"].status, "missing");
    assert!(r.warnings.iter().any(|w| w.contains("no_such_driver")), "{:#?}", r.warnings);
    // The sizes add up to the image, and firmware is its own category.
    let fw_size = r.sizes.iter().find(|c| c.category == "firmware").expect("a firmware category");
    assert_eq!(fw_size.files, 2);
    assert_eq!(r.sizes.iter().map(|c| c.bytes).sum::<u64>(), r.cpio_bytes);
    assert_eq!(r.sizes.iter().map(|c| c.compressed_bytes).sum::<u64>(), r.initrd_bytes);
    assert!(r.sizes.iter().any(|c| c.category == "modules/broadcom-nx2" && c.files >= 1), "{:#?}", r.sizes);

    // A loader without compression gets plain files.
    let r = build(&fw, "# CONFIG_FW_LOADER_COMPRESS is not set\n", &d.path().join("plain"));
    assert_eq!(r.firmware_packing, Packing::Plain);
    let image = files(&r.initrd);
    for n in [plain_one, zst_one] {
        assert_eq!(image.get(&format!("lib/firmware/{n}")), Some(&content(n)), "{n}");
    }
}
