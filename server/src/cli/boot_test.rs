//! `kura image verify SNAPSHOT --boot`: boot the snapshot in a throwaway QEMU machine on this
//! host (see [`crate::boot_test`]), its chunks read lazily from a local store or an engine;
//! prints the verdict and exits 0 when it passed, 1 when it did not.

use super::nbd::open_disks;
use super::Location;
use crate::boot_test::{self, Accel, DiskBus, Firmware, Options, Verdict};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BootArgs {
    /// Firmware of the test machine (auto: as the snapshot's layout says).
    #[arg(long, value_enum, default_value = "auto")]
    firmware: Firmware,
    /// QEMU accelerator (auto: KVM when this machine has usable hardware KVM).
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    /// Disk controller of the test machine (auto: SATA for a Windows layout, else virtio).
    #[arg(long, value_enum, default_value = "auto")]
    disk_bus: DiskBus,
    /// Time limit of the whole test, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Seconds the console may stay silent before userspace is reached.
    #[arg(long, default_value_t = 180)]
    stall: u64,
    /// A console text that also means the system came up (repeatable), besides a login
    /// prompt and systemd's "Reached target".
    #[arg(long, value_name = "TEXT")]
    expect: Vec<String>,
    #[arg(long, default_value_t = 1024)]
    memory_mib: u32,
    /// Keep the screenshot taken at the verdict here (PNG).
    #[arg(long, value_name = "FILE")]
    screenshot: Option<PathBuf>,
    /// Scratch directory for the overlay and the console log (removed afterwards).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    scratch: PathBuf,
}

pub fn run(snapshot: &str, at: &Location, args: &BootArgs) -> Result<ExitCode> {
    let opened = open_disks(snapshot, at, crate::snapshot_disk::CACHE_BYTES)?;
    let opts = Options {
        firmware: args.firmware,
        accel: args.accel,
        disk_bus: args.disk_bus,
        timeout: Duration::from_secs(args.timeout),
        stall: Duration::from_secs(args.stall),
        expect: args.expect.clone(),
        memory_mib: args.memory_mib,
        screenshot: args.screenshot.clone(),
        work_parent: args.scratch.clone(),
    };
    let disks: Vec<_> = opened.disks.iter().map(|(_, d)| d.clone()).collect();
    let verdict = if opened.is_set {
        boot_test::run_set(&opened.id, disks, &opts)?
    } else {
        boot_test::run(disks[0].clone(), &opts)?
    };
    if at.server.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        print(&verdict);
    }
    Ok(if verdict.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print(v: &Verdict) {
    println!(
        "boot test of {}: {} ({}) after {:.1} s; {} firmware, {}, {} disk{}",
        v.snapshot,
        if v.passed { "PASSED" } else { "FAILED" },
        v.reason,
        v.seconds,
        v.firmware,
        v.accel,
        v.disk_bus,
        v.loader.as_deref().map(|l| format!(", loader {l}")).unwrap_or_default()
    );
    println!(
        "fetched {} chunks, {:.1} MiB stored bytes, for a {:.1} MiB disk",
        v.fetched_chunks,
        v.fetched_bytes as f64 / (1 << 20) as f64,
        v.disk_size as f64 / (1 << 20) as f64
    );
    if let Some(d) = &v.boot_disk {
        println!("snapshot set of {} disks: booted disk {d}, the others attached", v.disks);
    }
    if let Some(s) = &v.screenshot {
        println!("screenshot: {s}");
    }
    println!("last console lines:");
    for l in &v.console_tail {
        println!("  {l}");
    }
}
