//! Free disk space for the tests' scratch files. A test that makes GiBs of disk images says up
//! front how much it needs; on a machine short of disk it fails at once naming the shortfall,
//! not minutes later with an ENOSPC from some tool deep inside (CI machines' free space varies).

use std::path::Path;

use crate::tools::run;

pub const GIB: u64 = 1 << 30;

/// Bytes available to an unprivileged writer on the filesystem holding `dir` (`df`'s "avail").
pub fn available(dir: &Path) -> u64 {
    let out = run("df", ["-B1", "--output=avail", dir.to_str().expect("a UTF-8 path")]);
    let last = out.lines().last().unwrap_or("").trim();
    last.parse().unwrap_or_else(|_| panic!("cannot read df's avail for {}: {out:?}", dir.display()))
}

/// Panics unless the temporary directory (`$TMPDIR`, where `tempfile` puts scratch files) has
/// `need` bytes free for `what`.
pub fn require_free(need: u64, what: &str) {
    let dir = std::env::temp_dir();
    let have = available(&dir);
    assert!(
        have >= need,
        "not enough free disk space in {} for {what}: {:.1} GiB needed, {:.1} GiB free",
        dir.display(),
        need as f64 / GIB as f64,
        have as f64 / GIB as f64
    );
}
