//! Deterministic file contents, from [`kura_diskgen::content`] (the same seed always gives the
//! same bytes, so a failing test can be rerun and its disks rebuilt exactly).

pub use kura_diskgen::content::{
    esp_files, linux_root_files, ntfs_files, pattern_bytes, random_bytes, sha256_hex, text_bytes, FileSpec, XorShift,
};

/// sha256 of a whole file (streamed), e.g. to show that a failed restore left its target alone.
pub fn sha256_file(path: &std::path::Path) -> String {
    kura_diskgen::content::sha256_file(path).unwrap_or_else(|e| panic!("hashing {}: {e}", path.display()))
}
