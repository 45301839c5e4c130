//! `kura bootenv build`: the kernel and initramfs netbooted machines run
//! (`kura_bootenv::initramfs`), and the signed chain that boots them under Secure Boot
//! (`kura_bootenv::signed`: Debian's shim and network GRUB). By default they go to
//! `DATA/boot/` (`vmlinuz`, `initrd.img`, `shimx64.efi`, `grubx64.efi`), where
//! `kura serve --data DATA` serves them to netbooting machines.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kura_bootenv::initramfs::{self, BuildOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum BootenvCommand {
    /// Build vmlinuz and initrd.img: the distribution's kernel, the kura-agent as /init, network
    /// and storage drivers with their dependencies and firmware.
    Build(BuildArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// The engine's data directory: the image goes to DATA/boot/ (unless --out).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Output directory (default: DATA/boot).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Kernel image (default: the newest /boot/vmlinuz-* with modules).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Its modules directory (default: /lib/modules/RELEASE).
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Firmware directory.
    #[arg(long, value_name = "DIR", default_value = "/lib/firmware")]
    firmware: PathBuf,
    /// The kernel's .config, which says how firmware is packed (default: config-RELEASE beside
    /// the kernel).
    #[arg(long, value_name = "PATH")]
    kernel_config: Option<PathBuf>,
    /// The static kura-agent binary (default: beside this kura binary, or its static build).
    #[arg(long, value_name = "PATH", env = "KURA_AGENT")]
    agent: Option<PathBuf>,
    /// Extra modules to include (by name), on top of the built-in list.
    #[arg(long = "module", value_name = "NAME")]
    extra_modules: Vec<String>,
    /// zstd compression level.
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// Keep the agent's debug info.
    #[arg(long)]
    no_strip: bool,
    /// Do not lay out the signed chain (Secure Boot netboot then offers iPXE only).
    #[arg(long)]
    no_signed_chain: bool,
    /// Signed shim (default: the shim-signed package's).
    #[arg(long, value_name = "PATH", default_value = kura_bootenv::signed::SHIM_SIGNED)]
    shim: PathBuf,
    /// Signed network GRUB (default: the grub-efi-amd64-signed package's grubnetx64).
    #[arg(long, value_name = "PATH", default_value = kura_bootenv::signed::GRUBNET_SIGNED)]
    grubnet: PathBuf,
    /// Print every driver (included, firmware present/missing) and the size by category.
    #[arg(long)]
    report: bool,
    #[arg(long)]
    json: bool,
}

/// `kura-agent` beside this binary, or the static build in the same cargo target directory.
fn default_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let profile = dir.file_name()?.to_os_string();
    let cross = dir.join("..").join("x86_64-unknown-linux-gnu");
    [dir.join("kura-agent"), cross.join(profile).join("kura-agent"), cross.join("release").join("kura-agent")]
        .into_iter()
        .filter(|p| p.is_file())
        .find(|p| initramfs::is_static_elf(p).unwrap_or(false))
}

pub fn run(cmd: BootenvCommand) -> Result<ExitCode> {
    let BootenvCommand::Build(a) = cmd;
    let out = match (a.out, a.data) {
        (Some(o), _) => o,
        (None, Some(d)) => d.join("boot"),
        (None, None) => bail!("say where the image goes: --data DIR (writes DIR/boot/) or --out DIR"),
    };
    let Some(agent) = a.agent.or_else(default_agent) else {
        bail!(
            "no static kura-agent found beside this binary: build it with {} and pass --agent",
            initramfs::AGENT_BUILD
        );
    };
    let mut opts = BuildOptions::new(agent, out.clone());
    opts.kernel = a.kernel;
    opts.modules = a.modules;
    opts.firmware = a.firmware;
    opts.kernel_config = a.kernel_config;
    opts.level = a.level;
    opts.strip = !a.no_strip;
    opts.drivers.extend(a.extra_modules);
    let sources = kura_bootenv::signed::Sources { shim: a.shim, grubnet: a.grubnet };
    // Checked before the long build: a missing package fails at once.
    if !a.no_signed_chain {
        for (p, package) in [(&sources.shim, "shim-signed"), (&sources.grubnet, "grub-efi-amd64-signed")] {
            if !p.is_file() {
                bail!(
                    "{} is missing: apt-get install {package} (the signed chain for Secure Boot netboot), \
                     or pass --no-signed-chain",
                    p.display()
                );
            }
        }
    }
    let r = initramfs::build(&opts).with_context(|| format!("building the netboot image in {}", out.display()))?;
    let signed = if a.no_signed_chain {
        None
    } else {
        Some(kura_bootenv::signed::lay_out(&sources, &out, &r.kernel).context("laying out the signed chain")?)
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["signed_chain"] = serde_json::to_value(&signed)?;
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", super::bootenv_report::render(&r, a.report));
        match &signed {
            Some(s) => {
                println!(
                    "signed   {} ({}), {} ({}){}",
                    s.shim.display(),
                    indicatif::BinaryBytes(s.shim_bytes),
                    s.grub.display(),
                    indicatif::BinaryBytes(s.grub_bytes),
                    if s.kernel_signed { "" } else { "; the kernel is NOT signed: it will not boot under Secure Boot" }
                );
            }
            None => println!("signed   not laid out (--no-signed-chain)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
