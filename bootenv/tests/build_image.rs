//! Builds a real netboot image from the kernel installed on this machine (`linux-image-amd64`)
//! and checks what is inside. Fails, naming what to install or build, when no kernel or no static agent is
//! available; `scripts/test` provides both.

use kura_bootenv::cpio::{self, Reader};
use kura_bootenv::initramfs::{self, BuildOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The static agent from `cargo build --release -p kura-agent --target x86_64-unknown-linux-gnu`,
/// else busybox-static as a stand-in `/init` (the test is about the image, not the agent).
fn static_agent() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    [target.join("x86_64-unknown-linux-gnu/release/kura-agent"), PathBuf::from("/bin/busybox")]
        .into_iter()
        .find(|p| p.is_file() && initramfs::is_static_elf(p).unwrap_or(false))
}

#[test]
fn image_from_the_installed_kernel() {
    let Some((kernel, modules)) = initramfs::find_installed_kernel() else {
        panic!("no /boot/vmlinuz-* with /lib/modules: apt-get install linux-image-amd64 (scripts/test does)");
    };
    let Some(agent) = static_agent() else {
        panic!("no static kura-agent built (scripts/test builds it): {}", initramfs::AGENT_BUILD);
    };
    let out = tempfile::tempdir().unwrap();
    let mut opts = BuildOptions::new(agent.clone(), out.path().join("boot"));
    opts.kernel = Some(kernel.clone());
    opts.modules = Some(modules.clone());
    opts.level = 3;
    let r = initramfs::build(&opts).unwrap();
    eprintln!(
        "initrd {} bytes ({} uncompressed), {} modules, {} firmware files ({} missing), agent stripped: {}",
        r.initrd_bytes,
        r.cpio_bytes,
        r.modules.len(),
        r.firmware.len(),
        r.firmware_missing.len(),
        r.agent_stripped
    );
    assert_eq!(r.initrd, out.path().join("boot/initrd.img"));
    assert_eq!(r.kernel, out.path().join("boot/vmlinuz"));
    assert_eq!(std::fs::metadata(&r.kernel).unwrap().len(), std::fs::metadata(&kernel).unwrap().len());
    assert_eq!(std::fs::metadata(&r.initrd).unwrap().len(), r.initrd_bytes);
    assert!(r.initrd_bytes > 1 << 20 && r.initrd_bytes < 200 << 20, "{} bytes", r.initrd_bytes);

    // Read the image back: zstd, then our cpio reader.
    let file = std::fs::File::open(&r.initrd).unwrap();
    let mut rd = Reader::new(zstd::stream::read::Decoder::new(file).unwrap());
    let mut entries: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    let mut names = Vec::new();
    while let Some(h) = rd.next_entry().unwrap() {
        rd.skip(&h).unwrap();
        names.push(h.name.clone());
        entries.insert(h.name, (h.mode, h.size));
    }
    // The kernel creates no parent directories: each must come before what it holds.
    for (i, n) in names.iter().enumerate() {
        if let Some((parent, _)) = n.rsplit_once('/') {
            let at = names.iter().position(|x| x == parent).unwrap_or_else(|| panic!("{parent} is not in the image"));
            assert!(at < i, "{n} comes before its directory");
        }
    }
    // The report's categories add up to the image.
    assert_eq!(r.sizes.iter().map(|c| c.bytes).sum::<u64>(), r.cpio_bytes);
    assert_eq!(r.sizes.iter().map(|c| c.compressed_bytes).sum::<u64>(), r.initrd_bytes);
    let init = entries["init"];
    assert_eq!(init.0, cpio::S_IFREG | 0o755);
    assert!(init.1 > 0);
    assert_eq!(entries["dev/console"].0, cpio::S_IFCHR | 0o600);
    let release = &r.release;
    for meta in ["modules.dep", "modules.alias", "modules.builtin"] {
        assert!(entries.contains_key(&format!("lib/modules/{release}/{meta}")), "{meta}");
    }
    let has_module = |name: &str| {
        entries.keys().any(|k| {
            k.starts_with(&format!("lib/modules/{release}/"))
                && kura_bootenv::modules::module_name(k) == name
                && k.ends_with(".ko")
        })
    };
    // Every family's modules (docs/drivers.md), shipped or built in.
    for m in kura_bootenv::families::default_modules() {
        assert!(has_module(&m) || r.builtin.contains(&m), "{m} neither shipped nor built in");
        let status = r.drivers.iter().find(|d| d.module == m).map(|d| d.status);
        assert!(matches!(status, Some("included" | "builtin")), "{m}: {status:?}");
    }
    // Dependencies come along: nvme needs nvme_core (unless built in).
    if has_module("nvme") && !r.builtin.contains(&"nvme_core".to_string()) {
        assert!(has_module("nvme_core"));
    }
    // Only plain modules: the agent loads with finit_module and no decompressor.
    assert!(!entries.keys().any(|k| k.ends_with(".ko.xz") || k.ends_with(".ko.zst") || k.ends_with(".ko.gz")));
    // The shipped modules.dep names exactly the shipped modules.
    let mut rd = Reader::new(zstd::stream::read::Decoder::new(std::fs::File::open(&r.initrd).unwrap()).unwrap());
    while let Some(h) = rd.next_entry().unwrap() {
        if h.name == format!("lib/modules/{release}/modules.dep") {
            let mut dep = Vec::new();
            rd.read_data(&h, &mut dep).unwrap();
            let dep = kura_bootenv::modules::DepTable::parse(&String::from_utf8(dep).unwrap()).unwrap();
            assert_eq!(dep.modules.len(), r.modules.len());
            for e in dep.modules.values() {
                assert!(entries.contains_key(&format!("lib/modules/{release}/{}", e.path)), "{}", e.path);
            }
        } else {
            rd.skip(&h).unwrap();
        }
    }

    // The system's cpio lists the decompressed archive too.
    let raw = out.path().join("initrd.cpio");
    zstd::stream::copy_decode(std::fs::File::open(&r.initrd).unwrap(), std::fs::File::create(&raw).unwrap()).unwrap();
    if let Ok(o) =
        std::process::Command::new("cpio").args(["-it", "--quiet"]).stdin(std::fs::File::open(&raw).unwrap()).output()
    {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let listed: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
        assert_eq!(listed, names);
    }

    // Deterministic: building again gives the same bytes.
    let mut again = opts.clone();
    again.out = out.path().join("again");
    let r2 = initramfs::build(&again).unwrap();
    assert_eq!(std::fs::read(&r.initrd).unwrap(), std::fs::read(&r2.initrd).unwrap());
}
