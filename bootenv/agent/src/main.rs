//! `kura-agent`: PID 1 of Kura's netboot initramfs (`/init`).
//!
//! 1. mounts `/proc`, `/sys`, `/dev` (devtmpfs), `/run`, `/tmp`;
//! 2. reads `kura.*` from the kernel command line ([`cmdline`]);
//! 3. loads the drivers for the hardware it finds ([`drivers`]) and logs whether Secure Boot
//!    and kernel lockdown are on ([`secureboot`]);
//! 4. brings up the NIC with the job's MAC and gets an address by DHCP ([`net`], [`dhcp`]);
//! 5. fetches its job from the engine and captures or restores the disk ([`job`]), sending
//!    progress and log lines every few seconds ([`report`]); after a restore on a UEFI machine
//!    it makes the firmware boot entry of the restored system ([`efi`]);
//! 6. powers off or reboots as the job says ([`sys`]).
//!
//! On any failure it reports `POST /jobs/{id}/finish {"ok": false, "error"}` when it can reach
//! the engine, prints the error framed on the console, keeps it there `kura.error_delay`
//! seconds (default 60), then does `kura.on_error` (default: power off). PID 1 never exits: if
//! reboot(2) itself fails, it sleeps forever.
//!
//! Error policy: `anyhow` with context naming the step; the whole chain is what the operator
//! sees on the console and in the job's error.

mod cmdline;
mod dhcp;
mod disks;
mod drivers;
mod efi;
mod job;
mod net;
mod report;
mod secureboot;
mod sys;

use anyhow::{Context, Result};
use cmdline::{AgentArgs, Finally};
use kura_protocol::client::{Client, Endpoint};
use kura_protocol::jobs::{Finish, JobKind};
use report::Reporter;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("kura-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if std::process::id() != 1 {
        eprintln!(
            "kura-agent is the init (PID 1) of Kura's netboot image: build one with `kura bootenv build` \
             and netboot a machine with it"
        );
        return ExitCode::FAILURE;
    }
    println!("kura-agent {} starting", env!("CARGO_PKG_VERSION"));
    let rep = Arc::new(Reporter::default());
    let mut on_error = (Finally::PowerOff, 60);
    let result = sys::mount_basics()
        .and_then(|()| std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline"))
        .and_then(|line| AgentArgs::parse(&line).context("the kernel command line"))
        .and_then(|params| {
            on_error = (params.on_error, params.error_delay);
            run(&params, &rep)
        });
    let action = match result {
        Ok(a) => a,
        Err(e) => {
            fail(&rep, &e);
            if on_error.1 > 0 {
                println!("kura-agent: {:?} in {} s", on_error.0, on_error.1);
                std::thread::sleep(Duration::from_secs(on_error.1));
            }
            on_error.0
        }
    };
    finally(action)
}

fn finally(action: Finally) -> ! {
    match action {
        Finally::Wait => println!("kura-agent: done; waiting (power the machine off when you like)"),
        Finally::PowerOff => println!("kura-agent: powering off"),
        Finally::Reboot => println!("kura-agent: rebooting"),
    }
    if action != Finally::Wait {
        let e = sys::power(action == Finally::Reboot);
        println!("kura-agent: could not {action:?}: {e:#}");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Reports the failure to the engine (if connected) and frames it on the console.
fn fail(rep: &Reporter, e: &anyhow::Error) {
    let msg = format!("{e:#}");
    rep.log(format!("FAILED: {msg}"));
    let mut told = false;
    if let Some(client) = rep.client() {
        let _ = rep.flush();
        if let Some(job) = JOB.get() {
            told = client.finish(*job, &Finish { ok: false, error: Some(msg.clone()) }).is_ok();
        }
    }
    let bar = "=".repeat(72);
    println!("\n{bar}\nKURA AGENT FAILED\n\n{msg}\n");
    println!("{}", if told { "The engine has been told." } else { "The engine could not be told." });
    println!("{bar}\n");
}

static JOB: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

fn run(p: &AgentArgs, rep: &Arc<Reporter>) -> Result<Finally> {
    let _ = JOB.set(p.job);
    let mac_bytes = p.mac.0;
    if let Some(host) = cmdline::hostname_needing_dns(&p.server) {
        rep.log(format!("warning: kura.server names {host}: the agent has no DNS resolver; use an IP address"));
    }
    let log = |s: String| rep.log(s);

    // Drivers, until a pass loads nothing new.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let dir = drivers::modules_dir(Path::new("/lib/modules"), &release)?;
    let mut drv = drivers::Drivers::open(&dir)?;
    let (sys_devices, sys_module) = (Path::new("/sys/devices"), Path::new("/sys/module"));
    for _ in 0..8 {
        if drv.load_pass(sys_devices, sys_module, &log) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // UEFI variables, for the boot entry a restore makes.
    if efi::booted_uefi() {
        drv.load_named("efivarfs", sys_module, &log);
        if let Err(e) = sys::mount_efivarfs() {
            rep.log(format!("warning: {e:#}"));
        }
    }
    rep.log(secureboot::describe(Path::new(efi::EFIVARS)));

    // The NIC with the job's MAC.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ifname = loop {
        if let Some(n) = net::find_interface(Path::new("/sys/class/net"), &p.mac.to_string()) {
            break n;
        }
        if Instant::now() > deadline {
            let present: Vec<String> = std::fs::read_dir("/sys/class/net")
                .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
                .unwrap_or_default();
            anyhow::bail!(
                "no network interface has MAC {} (interfaces: {}); is its driver in the image?",
                p.mac,
                present.join(", ")
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        drv.load_pass(sys_devices, sys_module, &log);
    };
    let lease = net::bring_up(&ifname, &mac_bytes, &log).with_context(|| format!("bringing up {ifname}"))?;
    let r = rep.clone();
    net::keep_lease(&ifname, &mac_bytes, &lease, move |line| r.log(line));
    rep.log(format!(
        "{ifname}: {}/{} via {} (DHCP server {})",
        lease.addr,
        lease.prefix,
        lease.router.map(|r| r.to_string()).unwrap_or_else(|| "no router".into()),
        lease.server
    ));

    // The engine and the job.
    let client = Client::new(&Endpoint {
        url: p.server.clone(),
        token: p.token.clone(),
        fingerprint: p.fingerprint.clone(),
        mac: Some(p.mac),
        timeout: Some(Duration::from_secs(p.timeout)),
    })?;
    let job = job::fetch(&client, p.job)?;
    rep.connect(client.clone(), p.job);
    rep.log(format!("job {}: {} of host {} on {}", job.id, job.kind, job.host, p.server));
    // The first progress report moves a queued job to running.
    rep.flush().context("reporting to the engine")?;

    // SAS/RAID controllers discover their disks after the driver loaded (a real HBA spins up
    // and scans its ports): up to two minutes; a machine whose disks are there goes on as soon
    // as the list has been stable for two seconds.
    let disks = job::wait_for_disks(Path::new("/sys/block"), Duration::from_secs(120), || {
        drv.load_pass(sys_devices, sys_module, &log);
    });
    if disks.is_empty() {
        rep.log(format!(
            "no disks after 120 s; storage hosts the kernel registered: {}",
            job::scsi_hosts(Path::new("/sys/class/scsi_host"))
        ));
    }
    for d in &disks {
        rep.log(format!("disk {}", d.identity()));
    }
    match job.kind {
        JobKind::Capture => match job::capture_disks(&disks, &job)?.as_slice() {
            [one] => job::capture(&client, &job, one, rep)?,
            several => job::capture_set(&client, &job, several, rep)?,
        },
        JobKind::Restore => job::restore(&client, &job, &disks, rep)?,
    }
    Ok(job::after(&job, p.after))
}
