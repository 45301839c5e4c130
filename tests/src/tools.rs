//! Running the system tools that build and check disks (sgdisk, mkfs.*, mtools, debugfs, fsck):
//! [`kura_diskgen::tools`], panicking on failure as a test should.

use std::ffi::OsStr;
use std::process::Output;

/// Runs `program args…`; panics with its stderr unless it exits 0. Returns its stdout.
pub fn run<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    kura_diskgen::tools::run(program, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `program args…` and returns whatever happened. Panics only if it cannot be started
/// (naming the Debian package that provides it).
pub fn run_unchecked<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    kura_diskgen::tools::run_unchecked(program, args).unwrap_or_else(|e| panic!("{e:#}"))
}
