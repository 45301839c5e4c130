//! Deterministic file contents: the same seed always gives the same bytes, so a failing test can
//! be rerun and its disks rebuilt exactly. One generator, [`XorShift`], drives them all:
//! incompressible bytes, text-like lines of a small vocabulary (the test fixtures), log lines
//! that compress about 4× (the benchmark), recognisable patterns, and the small file trees of the
//! test fixtures.

use sha2::{Digest, Sha256};

/// A seeded xorshift64* generator: fast, deterministic, and its output does not compress.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero; mix the seed so small seeds differ in every bit.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
    }
}

/// `len` incompressible bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    XorShift::new(seed).fill(&mut buf);
    buf
}

const WORDS: &[&str] = &[
    "kernel",
    "initrd",
    "boot",
    "partition",
    "sector",
    "volume",
    "backup",
    "restore",
    "chunk",
    "digest",
    "journal",
    "inode",
    "extent",
    "cluster",
    "bitmap",
    "superblock",
    "manifest",
    "snapshot",
    "network",
    "service",
    "config",
    "timeout",
    "enabled",
    "disabled",
    "true",
    "false",
    "=",
    "#",
    "[section]",
    "/usr/lib",
    "/etc/fstab",
    "UUID=",
    "0x1f",
    "error",
    "warning",
    "info",
    "debug",
];

/// `len` bytes of text-like, compressible content (lines of words from a small vocabulary).
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{line:06} ").as_bytes());
        for _ in 0..3 + rng.below(9) {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
        line += 1;
    }
    out.truncate(len);
    out
}

/// Exactly `len` bytes of log-like text (syslog lines of a few services; compresses about 4×
/// with zstd -3), continuing `rng`'s stream.
pub fn log_text(len: u64, rng: &mut XorShift) -> String {
    const WORDS: [&str; 48] = [
        "started",
        "stopped",
        "request",
        "response",
        "timeout",
        "connection",
        "accepted",
        "refused",
        "user",
        "session",
        "opened",
        "closed",
        "for",
        "from",
        "port",
        "error",
        "warning",
        "info",
        "debug",
        "cache",
        "miss",
        "hit",
        "upstream",
        "backend",
        "disk",
        "write",
        "read",
        "flush",
        "queue",
        "length",
        "retry",
        "scheduled",
        "job",
        "finished",
        "in",
        "ms",
        "bytes",
        "sent",
        "received",
        "kernel",
        "eth0",
        "link",
        "up",
        "down",
        "mount",
        "device",
        "ready",
        "configuration",
    ];
    const SERVICES: [&str; 8] = ["sshd", "nginx", "systemd", "cron", "kernel", "postgres", "dockerd", "NetworkManager"];
    let mut s = String::with_capacity(len as usize + 200);
    let mut t = 1_700_000_000u64 + rng.next_u64() % 1_000_000;
    while (s.len() as u64) < len {
        t += rng.next_u64() % 3;
        let r = rng.next_u64();
        let svc = SERVICES[(r % 8) as usize];
        s += &format!("{t} host{:02} {svc}[{}]:", (r >> 8) % 16, (r >> 16) % 30000 + 100);
        for k in 0..(3 + (r >> 32) % 8) {
            s.push(' ');
            s += WORDS[((r >> (k * 5)) % 48) as usize];
        }
        s += &format!(" id={:08x} took={}ms\n", rng.next_u64() as u32, (r >> 40) % 5000);
    }
    s.truncate(len as usize);
    s
}

/// A recognisable, non-zero pattern for boot code and gaps: `tag` repeated, then a counter.
pub fn pattern_bytes(tag: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u32;
    while out.len() < len {
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(&i.to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// sha256 of a whole file (streamed), e.g. to show that a failed restore left its target alone.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A file to put into a filesystem: a relative path with `/` separators, and its bytes.
#[derive(Clone)]
pub struct FileSpec {
    pub path: String,
    pub data: Vec<u8>,
}

impl FileSpec {
    pub fn new(path: impl Into<String>, data: Vec<u8>) -> Self {
        FileSpec { path: path.into(), data }
    }
}

/// A mixed tree for a Linux root filesystem: nested directories, text and binary files, two
/// multi-MiB files, an empty file. About `8 + 2 * big_mib` MiB in all.
pub fn linux_root_files(seed: u64, big_mib: usize) -> Vec<FileSpec> {
    let mib = 1 << 20;
    let mut files = vec![
        FileSpec::new("etc/hostname", b"kura-test\n".to_vec()),
        FileSpec::new("etc/fstab", text_bytes(seed + 1, 900)),
        FileSpec::new("etc/default/grub", text_bytes(seed + 2, 1500)),
        FileSpec::new("etc/systemd/system/kura.service", text_bytes(seed + 3, 700)),
        FileSpec::new("usr/bin/busybox", random_bytes(seed + 4, 1_200_000)),
        FileSpec::new("usr/lib/libc.so.6", random_bytes(seed + 5, 2 * mib + 12_345)),
        FileSpec::new("usr/share/doc/kura/README", text_bytes(seed + 6, 40_000)),
        FileSpec::new("usr/share/doc/kura/changelog", text_bytes(seed + 7, 300_000)),
        FileSpec::new("var/log/syslog", text_bytes(seed + 8, 3 * mib + 777)),
        FileSpec::new("var/lib/empty", Vec::new()),
        FileSpec::new("boot/vmlinuz", random_bytes(seed + 9, big_mib * mib + 4097)),
        FileSpec::new("boot/initrd.img", random_bytes(seed + 10, big_mib * mib - 513)),
        FileSpec::new("home/user/notes.txt", text_bytes(seed + 11, 5_000)),
    ];
    for i in 0..24 {
        let data = if i % 3 == 0 {
            random_bytes(seed + 100 + i, 3000 + 517 * i as usize)
        } else {
            text_bytes(seed + 100 + i, 1000 + 1234 * i as usize)
        };
        files.push(FileSpec::new(format!("usr/share/misc/deep/dir{}/file{i}.dat", i % 4), data));
    }
    files
}

/// Files for an EFI system partition.
pub fn esp_files(seed: u64) -> Vec<FileSpec> {
    vec![
        FileSpec::new("EFI/BOOT/BOOTX64.EFI", random_bytes(seed + 1, 950_000)),
        FileSpec::new("EFI/kura/grubx64.efi", random_bytes(seed + 2, 1_700_000)),
        FileSpec::new("EFI/kura/grub.cfg", text_bytes(seed + 3, 2_000)),
        FileSpec::new("loader/entries/kura.conf", text_bytes(seed + 4, 300)),
        FileSpec::new("loader/random-seed", Vec::new()),
        FileSpec::new("startup.nsh", b"\\EFI\\BOOT\\BOOTX64.EFI\r\n".to_vec()),
    ]
}

/// Flat files (no directories: the NTFS builder cannot make any) for an NTFS data volume.
pub fn ntfs_files(seed: u64) -> Vec<FileSpec> {
    vec![
        FileSpec::new("report.txt", text_bytes(seed + 1, 120_000)),
        FileSpec::new("photo.jpg", random_bytes(seed + 2, 2_500_000)),
        FileSpec::new("setup.log", text_bytes(seed + 3, 900_000)),
        FileSpec::new("tiny.ini", b"[kura]\r\nmode=test\r\n".to_vec()),
        FileSpec::new("empty.dat", Vec::new()),
        FileSpec::new("zeros.bin", vec![0u8; 700_000]),
        FileSpec::new("Mixed Case Name.bin", random_bytes(seed + 4, 65_536)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic_and_sized() {
        assert_eq!(random_bytes(7, 1001), random_bytes(7, 1001));
        assert_ne!(random_bytes(7, 64), random_bytes(8, 64));
        assert_eq!(text_bytes(3, 5000).len(), 5000);
        assert_eq!(pattern_bytes("KURA", 10), b"KURA\0\0\0\0KU");
        let log = |seed| log_text(10_000, &mut XorShift::new(seed));
        assert_eq!(log(1), log(1));
        assert_eq!(log(1).len(), 10_000);
        assert_ne!(log(1), log(2));
    }

    /// The fixtures' sizes and chunk counts rest on these exact bytes: a change to a generator
    /// must be a deliberate one.
    #[test]
    fn generators_keep_their_bytes() {
        assert_eq!(sha256_hex(&random_bytes(42, 4096))[..16], *"474af062afd7658c");
        assert_eq!(sha256_hex(&text_bytes(42, 4096))[..16], *"79d91f0c52f67e10");
    }
}
