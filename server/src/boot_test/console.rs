//! Reading a boot test's console: how far the machine got, and whether something already
//! says it will get no further. Pure text in, a [`Reading`] out: the runner decides when to
//! look and when to stop.
//!
//! Stages, each recognised by what firmware, boot loaders and kernels print on a serial
//! console:
//!
//! | stage | seen when the console shows |
//! |---|---|
//! | firmware | SeaBIOS's banner or "Booting from Hard Disk", OVMF's `BdsDxe` |
//! | boot loader | GRUB (its banner, menu entries, `Booting ...`, errors), `KURA-GRUB`, a Windows boot manager line, the EFI stub |
//! | kernel | `Linux version`, kernel log time stamps, `Run /init` |
//! | userspace | a login prompt, systemd's `Reached target`, or any text the operator expects (`--expect`) |
//!
//! Failures seen on the console end the test at once: the firmware found no boot loader
//! (SeaBIOS "Boot failed" / "No bootable device", OVMF "failed to load" / "No bootable
//! option"), GRUB's rescue shell, a kernel panic or an unmountable root.

use serde::Serialize;

/// How far a boot got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Nothing recognisable on the console yet.
    Nothing,
    Firmware,
    BootLoader,
    Kernel,
    Userspace,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Nothing => "nothing",
            Stage::Firmware => "firmware",
            Stage::BootLoader => "boot loader",
            Stage::Kernel => "kernel",
            Stage::Userspace => "userspace",
        }
    }
}

/// What the console says so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub stage: Stage,
    /// A line that says the boot failed, if one did.
    pub failure: Option<String>,
}

const FIRMWARE: &[&str] = &["SeaBIOS (version", "Booting from Hard Disk", "BdsDxe:", "UEFI Interactive Shell"];
const BOOT_LOADER: &[&str] = &[
    "GNU GRUB",
    "Welcome to GRUB",
    "Booting `",
    "KURA-GRUB",
    "Loading Linux",
    "Loading initial ramdisk",
    "EFI stub:",
    "Windows Boot Manager",
];
const KERNEL: &[&str] = &["Linux version ", "Run /init", "Run /sbin/init", "[    0.0"];
// Not systemd's "Welcome to …" banner: GRUB's own banner reads "Welcome to GRUB!".
const USERSPACE: &[&str] = &[" login: ", "Reached target"];
const FAILURES: &[&str] = &[
    "Boot failed:",
    "No bootable device",
    "failed to load Boot",
    "No bootable option or device was found",
    "grub rescue>",
    "Kernel panic",
    "Gave up waiting for root",
    "can't find the root",
];

/// Reads `console` (everything printed so far). `expect`: texts that also mean userspace.
pub fn read(console: &str, expect: &[String]) -> Reading {
    let has = |needles: &[&str]| needles.iter().any(|n| console.contains(n));
    let stage = if has(USERSPACE) || expect.iter().any(|e| !e.is_empty() && console.contains(e.as_str())) {
        Stage::Userspace
    } else if has(KERNEL) {
        Stage::Kernel
    } else if has(BOOT_LOADER) {
        Stage::BootLoader
    } else if has(FIRMWARE) {
        Stage::Firmware
    } else {
        Stage::Nothing
    };
    let failure = if stage == Stage::Userspace {
        None
    } else {
        console.lines().find(|l| FAILURES.iter().any(|f| l.contains(f))).map(|l| clean(l).to_string())
    };
    Reading { stage, failure }
}

/// A console line without terminal escapes and control characters.
pub fn clean(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (0x40..=0x7e); other escapes: ESC and one char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// The last `n` non-empty lines of the console, cleaned.
pub fn tail(console: &str, n: usize) -> Vec<String> {
    let lines: Vec<String> = console.lines().map(clean).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_console() {
        let none: &[String] = &[];
        assert_eq!(read("", none).stage, Stage::Nothing);
        let bios = "SeaBIOS (version 1.16.2)\nBooting from Hard Disk...\n";
        assert_eq!(read(bios, none), Reading { stage: Stage::Firmware, failure: None });
        let grub = format!("{bios}KURA-GRUB\n");
        assert_eq!(read(&grub, none).stage, Stage::BootLoader);
        let kernel = format!("{grub}[    0.000000] Linux version 6.1.0\n");
        assert_eq!(read(&kernel, none).stage, Stage::Kernel);
        let marker = format!("{kernel}KURA-ROOT-MARKER marker=x\n");
        assert_eq!(read(&marker, none).stage, Stage::Kernel);
        assert_eq!(read(&marker, &["KURA-ROOT-MARKER".to_string()]).stage, Stage::Userspace);
        assert_eq!(read(&format!("{kernel}\nweb01 login: "), none).stage, Stage::Userspace);
        assert_eq!(read("Welcome to GRUB!\n", none).stage, Stage::BootLoader);
    }

    #[test]
    fn failures_are_named_by_their_line() {
        let r = read("SeaBIOS (version 1.16)\nBoot failed: not a bootable disk\n\nNo bootable device.\n", &[]);
        assert_eq!(r.stage, Stage::Firmware);
        assert_eq!(r.failure.as_deref(), Some("Boot failed: not a bootable disk"));
        let r = read("GNU GRUB\nerror: unknown filesystem.\nEntering rescue mode...\ngrub rescue> ", &[]);
        assert_eq!(r.failure.as_deref(), Some("grub rescue>"));
        // Userspace reached: an earlier failure line (say a first boot entry) does not count.
        let r = read("BdsDxe: failed to load Boot0001\nBdsDxe: starting Boot0002\nx login: ", &[]);
        assert_eq!(r, Reading { stage: Stage::Userspace, failure: None });
    }

    #[test]
    fn console_lines_are_cleaned_of_terminal_escapes() {
        assert_eq!(clean("\u{1b}[2J\u{1b}[01;01HBdsDxe: loading\r"), "BdsDxe: loading");
        assert_eq!(tail("a\n\n\u{1b}[0mb\nc\n", 2), vec!["b", "c"]);
    }
}
