//! `kura image verify SNAPSHOT --boot`: a snapshot booted in a throwaway QEMU machine, its disk
//! a copy-on-write overlay over the snapshot's NBD export (nothing restored, nothing written to
//! the store).
//!
//! The bootable test system disk ([`bootdisk`]: GRUB for BIOS and UEFI, ext4 root whose
//! `/sbin/init` prints a marker) is captured into a store, then:
//! - its snapshot passes under SeaBIOS (the layout has a BIOS boot partition), the console
//!   reaching the marker;
//! - the same snapshot passes under OVMF (`--firmware uefi`): the ESP's only loader,
//!   `\EFI\kura\grubx64.efi`, is not on the removable path, so the helper disk starts it;
//! - a snapshot of the same disk with GRUB's core image (the BIOS boot partition) zeroed
//!   fails, with "no boot loader ran" after the firmware stage, and exit status 1.
//!
//! Each verdict's time and the bytes fetched from the store are printed.
//!
//! Through the engine (`kura verify --boot`, the test running on the engine host): a passed
//! and a failed test are recorded on their snapshots, the failure reaches a webhook, `/metrics`
//! has `kura_snapshot_boot_test_last_success_timestamp` for the host whose snapshot passed
//! only.
//!
//! Root not needed; TCG under 2 cores: each boot takes seconds to a minute.

use std::path::Path;

use kura_tests::bootdisk::{self, BIOS_BOOT};
use kura_tests::engine::Server;
use kura_tests::kura_cli::{run, Store};
use kura_tests::webhook::webhook_receiver;
use serde_json::Value;
use std::time::Duration;

fn verify_boot(store: &Store, snapshot: &str, extra: &[&str]) -> (bool, Value) {
    let mut args = vec!["image", "verify", snapshot, "--boot", "--json", "--store", store.dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = run(&args);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("kura {args:?}: no verdict ({e}):\n{}\n{}", r.stdout, r.stderr));
    (r.status.success(), v)
}

fn figures(what: &str, v: &Value) {
    eprintln!(
        "{what}: passed={} stage={} firmware={} accel={} in {:.1} s, fetched {} chunks / {:.1} MiB of a {:.1} MiB disk; {}",
        v["passed"],
        v["stage"],
        v["firmware"],
        v["accel"],
        v["seconds"].as_f64().unwrap_or(0.0),
        v["fetched_chunks"],
        v["fetched_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
        v["disk_size"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
        v["reason"]
    );
}

#[test]
fn a_bootable_snapshot_passes_under_bios_and_uefi_and_one_without_its_boot_loader_fails() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let system = bootdisk::build(w, "system.img", "boot-test");
    let store = Store::new(w.join("store"));
    let good = store.capture(&system.disk.path, Some("bootable")).snapshot;
    let before: Vec<u8> = std::fs::read(&system.disk.path).unwrap();
    let marker = system.marker_line();
    let shot = w.join("no-boot-loader.png");
    let scratch = w.to_str().unwrap();

    let (ok, v) = verify_boot(&store, &good, &["--expect", &marker, "--stall", "120", "--scratch", scratch]);
    figures("BIOS, bootable", &v);
    assert!(ok && v["passed"] == true, "{v:#}");
    assert_eq!(v["firmware"], "bios");
    assert_eq!(v["stage"], "userspace");
    assert!(v["console_tail"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains(&marker)), "{v:#}");
    // Only what the boot read was fetched: a fraction of the disk.
    let fetched = v["fetched_bytes"].as_u64().unwrap();
    assert!(fetched > 0 && fetched < v["disk_size"].as_u64().unwrap() / 2, "{v:#}");

    let (ok, v) = verify_boot(
        &store,
        &good,
        &["--expect", &marker, "--stall", "120", "--scratch", scratch, "--firmware", "uefi"],
    );
    figures("UEFI, bootable", &v);
    assert!(ok && v["passed"] == true, "{v:#}");
    assert_eq!(v["firmware"], "uefi");
    assert_eq!(v["loader"], format!("/{}", bootdisk::EFI_LOADER));

    // The same disk with GRUB's core image zeroed: the firmware hands over to the boot sector,
    // which finds no core image.
    let broken = w.join("broken.img");
    std::fs::copy(&system.disk.path, &broken).unwrap();
    let p = system.disk.partition(BIOS_BOOT);
    zero(&broken, p.offset, p.size);
    let bad = store.capture(&broken, Some("no-core-image")).snapshot;
    let (ok, v) = verify_boot(
        &store,
        &bad,
        &["--expect", &marker, "--stall", "45", "--scratch", scratch, "--screenshot", shot.to_str().unwrap()],
    );
    figures("BIOS, core image zeroed", &v);
    assert!(!ok && v["passed"] == false, "{v:#}");
    assert!(v["reason"].as_str().unwrap().contains("no boot loader ran"), "{v:#}");
    // The screen at the verdict is kept (the machine was still running: a hung boot).
    let png = std::fs::read(&shot).expect("the screenshot was kept");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");

    // Nothing was written to the source or left in the scratch directory.
    assert_eq!(std::fs::read(&system.disk.path).unwrap(), before);
    let left: Vec<_> = std::fs::read_dir(w)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kura-boot-test."))
        .collect();
    assert!(left.is_empty(), "scratch directories left behind: {left:?}");
}

fn zero(path: &Path, offset: u64, len: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; len as usize], offset).unwrap();
}

#[test]
fn the_engine_records_boot_tests_notifies_failures_and_exports_the_last_success() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let system = bootdisk::build(w, "system.img", "engine-boot");
    let marker = system.marker_line();
    let broken = w.join("broken.img");
    std::fs::copy(&system.disk.path, &broken).unwrap();
    let p = system.disk.partition(BIOS_BOOT);
    zero(&broken, p.offset, p.size);

    let server = Server::start_http(&w.join("engine"));
    let (hook_url, hooks) = webhook_receiver();
    assert!(server.kura(&[&"notify", &"add", &"webhook", &hook_url]).success());
    let good = server.capture(&system.disk.path, "web01").snapshot;
    let bad = server.capture(&broken, "web02").snapshot;

    let r = server.kura(&[&"verify", &"--boot", &good, &"--expect", &marker, &"--stall", &"120", &"--json"]);
    assert!(r.success(), "{r}");
    let v: Value = r.json();
    figures("engine, bootable", &v);
    assert_eq!((v["passed"].as_bool(), v["host"].as_str()), (Some(true), Some("web01")), "{v:#}");

    let r = server.kura(&[&"verify", &"--boot", &bad, &"--expect", &marker, &"--stall", &"45", &"--json"]);
    assert!(!r.success(), "{r}");
    let v: Value = r.json();
    figures("engine, core image zeroed", &v);
    assert_eq!(v["passed"], false);
    let (_, hook) = hooks.recv_timeout(Duration::from_secs(60)).expect("no webhook for the failed boot test");
    assert_eq!(hook["event"], "boot_test_failed", "{hook:#}");
    assert_eq!(hook["boot_test"]["snapshot"], bad.as_str());
    assert_eq!(hook["host"], "web02");

    // Each snapshot shows its verdict in `kura snapshots`.
    let verdicts: Vec<(String, Value)> = server
        .snapshots()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["boot_test_passed"].clone()))
        .collect();
    assert!(verdicts.contains(&(good.clone(), Value::Bool(true))), "{verdicts:?}");
    assert!(verdicts.contains(&(bad.clone(), Value::Bool(false))), "{verdicts:?}");

    // The last success per host, in /metrics.
    let api = server.api();
    let operator = api.operator_token(&server.admin);
    let metrics = api.raw("GET", "/metrics").token(&operator).send().text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kura_snapshot_boot_test_last_success_timestamp{host=\"web01\"}"))
        .unwrap_or_else(|| panic!("no boot test gauge for web01:\n{metrics}"));
    let t: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(t > 1_700_000_000, "{line}");
    assert!(!metrics.contains("kura_snapshot_boot_test_last_success_timestamp{host=\"web02\"}"), "{metrics}");
}

/// Boot code for a disk's first sector: switch to VGA mode 13h (320×200, 256 colours) and,
/// with `draw`, fill the screen with a pattern of most of the palette (a stand-in for a logon
/// screen's picture); then halt for ever. Without `draw` the screen stays black.
fn vga_boot_code(draw: bool) -> Vec<u8> {
    let mut code = vec![
        0xFC, // cld
        0xB8, 0x13, 0x00, // mov ax, 0x0013
        0xCD, 0x10, // int 0x10: mode 13h
    ];
    if draw {
        code.extend([
            0xB8, 0x00, 0xA0, // mov ax, 0xA000
            0x8E, 0xC0, // mov es, ax
            0x31, 0xFF, // xor di, di
            0xB9, 0x00, 0xFA, // mov cx, 64000
            0x89, 0xF8, // fill: mov ax, di
            0x30, 0xE0, // xor al, ah
            0xAA, // stosb
            0xE2, 0xF9, // loop fill
        ]);
    }
    code.extend([0xF4, 0xEB, 0xFD]); // hang: hlt; jmp hang
    code
}

/// A Windows-looking disk (GPT, Microsoft reserved + NTFS: the boot test gives it SATA and
/// watches its screen, since such a system prints nothing on a serial console) whose boot code
/// draws a still picture passes by its screen; the same disk whose boot code leaves the screen
/// black fails.
#[test]
fn a_windows_looking_disk_passes_by_a_still_graphical_screen_and_fails_on_a_black_one() {
    use kura_tests::disks::{build_gpt, write_at, Content, PartSpec, MIB};
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let store = Store::new(w.join("store"));
    let mut ids = Vec::new();
    for draw in [true, false] {
        let name = if draw { "picture.img" } else { "black.img" };
        let disk = build_gpt(
            w,
            name,
            64 * MIB,
            vec![
                PartSpec::gpt(16 * MIB, "0c01", "Microsoft reserved partition", Content::Empty),
                PartSpec::gpt(
                    40 * MIB,
                    "0700",
                    "Basic data partition",
                    Content::Ntfs { label: "C", files: vec![], deleted: vec![] },
                ),
            ],
        );
        write_at(&disk.path, 0, &vga_boot_code(draw));
        ids.push(store.capture(&disk.path, Some(name)).snapshot);
    }
    let scratch = w.to_str().unwrap();
    let shot = w.join("picture.png");
    let (ok, v) =
        verify_boot(&store, &ids[0], &["--stall", "60", "--scratch", scratch, "--screenshot", shot.to_str().unwrap()]);
    figures("Windows-looking disk, still picture", &v);
    assert!(ok && v["passed"] == true, "{v:#}");
    assert_eq!((v["disk_bus"].as_str(), v["stage"].as_str()), (Some("sata"), Some("userspace")), "{v:#}");
    assert!(v["reason"].as_str().unwrap().contains("graphical"), "{v:#}");
    assert!(shot.exists(), "the screenshot of the verdict was not kept");

    let (ok, v) = verify_boot(&store, &ids[1], &["--stall", "20", "--scratch", scratch]);
    figures("Windows-looking disk, black screen", &v);
    assert!(!ok && v["passed"] == false, "a black screen passed: {v:#}");
}
