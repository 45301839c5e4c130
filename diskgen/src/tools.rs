//! Running the system tools that build and check disks (sgdisk, mkfs.*, mtools, debugfs, fsck).
//!
//! Every tool runs with `/usr/sbin` and `/sbin` on its `PATH` (a user's `PATH` may lack them),
//! the C locale (output that is parsed or compared stays the same) and `MTOOLS_SKIP_CHECK=1`
//! (mtools refuses partition images whose geometry does not look like a floppy's).

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The `PATH` tools run with: the caller's, then the system directories.
pub fn search_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/sbin:/sbin:/usr/bin:/bin")
}

/// Where `name` is installed, looking in `PATH` and the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&search_path()).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A command for `program` with the environment described above and no stdin.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", search_path()).env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C").stdin(Stdio::null());
    cmd
}

/// Runs `program args…`; fails with its output unless it exits 0. Returns its stdout.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command(program);
    cmd.args(args);
    run_output(&mut cmd)
}

/// Runs a prepared command (e.g. from [`command`]); fails with its output unless it exits 0.
/// Returns its stdout.
pub fn run_output(cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{program}` failed ({}):\ncommand: {cmd:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args…` and returns whatever happened. Fails only if it cannot be started
/// (naming the Debian package that provides it).
pub fn run_unchecked<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command(program);
    cmd.args(args);
    output(&mut cmd)
}

fn output(cmd: &mut Command) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.output()
        .with_context(|| format!("cannot run `{program}`; install it: apt-get install -y {}", package(&program)))
}

/// The Debian package that provides `program`.
pub fn package(program: &str) -> &'static str {
    match program {
        "sgdisk" => "gdisk",
        "sfdisk" => "fdisk",
        "mkfs.ext4" | "debugfs" | "e2fsck" => "e2fsprogs",
        "mkntfs" | "ntfscp" | "ntfsfix" | "ntfsls" | "ntfstruncate" => "ntfs-3g",
        "mkfs.vfat" | "fsck.vfat" => "dosfstools",
        "mcopy" | "mmd" | "mdir" | "mtype" => "mtools",
        "mkswap" | "losetup" => "util-linux",
        "mkfs.btrfs" | "btrfs" => "btrfs-progs",
        "lvm" => "lvm2",
        "partclone.xfs" | "partclone.btrfs" | "partclone.vfat" | "partclone.extfs" | "partclone.ntfs" => "partclone",
        "zstd" => "zstd",
        "mkfs.xfs" | "xfs_repair" | "xfs_db" => "xfsprogs",
        "mount" | "umount" => "mount",
        _ => "the package providing it",
    }
}
