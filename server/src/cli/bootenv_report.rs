//! The text of `kura bootenv build`: a short summary with the warnings, or with `--report` every
//! requested driver (included, built in or missing; its firmware present or missing with the
//! Debian package to install) and the initramfs's size by category.

use indicatif::BinaryBytes;
use kura_bootenv::initramfs::Report;
use std::fmt::Write;

/// The summary lines, the report's tables when `full`, then the warnings.
pub fn render(r: &Report, full: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "kernel   {} ({}, {})", r.kernel.display(), r.release, BinaryBytes(r.kernel_bytes));
    let _ = writeln!(
        s,
        "initrd   {} ({}; {} uncompressed)",
        r.initrd.display(),
        BinaryBytes(r.initrd_bytes),
        BinaryBytes(r.cpio_bytes)
    );
    let included = r.drivers.iter().filter(|d| d.status == "included").count();
    let _ = writeln!(
        s,
        "drivers  {} requested: {included} included, {} built in, {} missing; {} modules with dependencies and \
         the driver directories",
        r.drivers.len(),
        r.builtin.len(),
        r.missing.len(),
        r.modules.len()
    );
    let packing = match (&r.kernel_config, r.firmware_packing.suffix()) {
        (None, _) => "plain (no kernel config found)".to_string(),
        (Some(c), "") => format!("plain ({} has no CONFIG_FW_LOADER_COMPRESS)", c.display()),
        (Some(c), sfx) => format!("as NAME{sfx} (the loader's compression in {})", c.display()),
    };
    let _ = writeln!(
        s,
        "firmware {} files packed {packing}; {} named by modules but not in {}",
        r.firmware.len(),
        r.firmware_missing.len(),
        r.firmware_dir.display()
    );
    if !r.agent_stripped {
        let _ = writeln!(s, "note: the agent was not stripped (no `strip`, or --no-strip)");
    }
    if full {
        let _ = writeln!(s, "\n{:<14} {:<16} {:<9} firmware", "driver", "family", "status");
        for d in &r.drivers {
            let fw = match (d.firmware_present.len(), d.firmware_missing.len()) {
                (0, 0) => "-".to_string(),
                (p, 0) => format!("{p} present"),
                (p, m) => {
                    let pkgs: Vec<String> = d
                        .firmware_missing
                        .iter()
                        .filter_map(|f| r.firmware_missing.iter().find(|x| &x.name == f)?.package.clone())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let pkgs = if pkgs.is_empty() { String::new() } else { format!(" (install {})", pkgs.join(", ")) };
                    format!("{p} present, {m} MISSING{pkgs}")
                }
            };
            let _ = writeln!(s, "{:<14} {:<16} {:<9} {fw}", d.module, d.family, d.status);
        }
        let _ =
            writeln!(s, "\n{:<26} {:>6} {:>13} {:>12}", "initramfs by category", "files", "uncompressed", "compressed");
        for c in &r.sizes {
            let _ = writeln!(
                s,
                "{:<26} {:>6} {:>13} {:>12}",
                c.category,
                c.files,
                BinaryBytes(c.bytes).to_string(),
                BinaryBytes(c.compressed_bytes).to_string()
            );
        }
        let files: usize = r.sizes.iter().map(|c| c.files).sum();
        let _ = writeln!(
            s,
            "{:<26} {:>6} {:>13} {:>12}",
            "total",
            files,
            BinaryBytes(r.cpio_bytes).to_string(),
            BinaryBytes(r.initrd_bytes).to_string()
        );
    }
    if !r.warnings.is_empty() {
        s.push('\n');
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}
