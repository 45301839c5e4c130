//! Running the system tools that build and check disks (sgdisk, mkfs.*, mtools, debugfs, fsck).

use std::ffi::OsStr;
use std::process::{Command, Output};

/// Runs `program args…`; panics with its stderr unless it exits 0. Returns its stdout.
pub fn run<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_unchecked(program, args);
    if !out.status.success() {
        panic!(
            "`{program}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program args…` and returns whatever happened. Panics only if it cannot be started
/// (naming the Debian package that provides it).
pub fn run_unchecked<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    Command::new(program)
        .args(&args)
        // mtools refuses partition images whose geometry does not look like a floppy's.
        .env("MTOOLS_SKIP_CHECK", "1")
        // No locale surprises in the output we compare.
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}); install it: apt-get install -y {}", package(program)))
}

fn package(program: &str) -> &'static str {
    match program {
        "sgdisk" => "gdisk",
        "sfdisk" => "fdisk",
        "mkfs.ext4" | "debugfs" | "e2fsck" => "e2fsprogs",
        "mkntfs" | "ntfscp" | "ntfsfix" | "ntfsls" | "ntfstruncate" => "ntfs-3g",
        "mkfs.vfat" | "fsck.vfat" => "dosfstools",
        "mcopy" | "mmd" | "mdir" | "mtype" => "mtools",
        "mkswap" => "util-linux",
        _ => "the package providing it",
    }
}
