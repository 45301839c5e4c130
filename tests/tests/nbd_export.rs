//! `kura nbd`: a snapshot of a GPT disk (ext4, NTFS, swap) whose free space holds old data,
//! exported over NBD from a local store and read by `qemu-img compare` and by a small NBD client written here:
//! the export equals what a restore writes, and the source wherever the capture kept the bytes;
//! 16 concurrent readers of random ranges get the right bytes while clients vanish mid-read;
//! writes and out-of-range reads are refused without ending the session. And a snapshot on an
//! engine, exported with an operator's token: equal to what a restore from the engine writes;
//! a wrong token or certificate fingerprint fails before anything listens.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kura_tests::content::{linux_root_files, random_bytes, FileSpec};
use kura_tests::disks::{build_gpt, Content, PartSpec, MIB};
use kura_tests::engine::Server as EngineServer;
use kura_tests::fixtures;
use kura_tests::kura_cli::{kura_bin, run, run_env, Store};
use kura_tests::store::chunk_files;

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_TRIM: u16 = 4;
const FLAG_READ_ONLY: u16 = 1 << 1;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;

/// A minimal NBD client: fixed newstyle, `NBD_OPT_GO` on the default export, simple replies.
struct Client {
    s: UnixStream,
    size: u64,
    flags: u16,
    cookie: u64,
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[0..8], b"NBDMAGIC");
        assert_eq!(u64::from_be_bytes(hello[8..16].try_into().unwrap()), IHAVEOPT);
        assert_eq!(u16::from_be_bytes([hello[16], hello[17]]) & 3, 3, "fixed newstyle, no zeroes");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&6u32.to_be_bytes());
        opt.extend_from_slice(&0u32.to_be_bytes()); // default export
        opt.extend_from_slice(&0u16.to_be_bytes()); // no information requests
        s.write_all(&opt).unwrap();
        let (mut size, mut flags) = (None, 0);
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), OPT_GO);
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut data = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
            s.read_exact(&mut data).unwrap();
            match kind {
                REP_INFO if data[0..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                    flags = u16::from_be_bytes([data[10], data[11]]);
                }
                REP_INFO => {}
                REP_ACK => break,
                other => panic!("NBD_OPT_GO answered {other:#x}"),
            }
        }
        Client { s, size: size.expect("NBD_INFO_EXPORT"), flags, cookie: 0 }
    }

    fn send(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        self.cookie += 1;
        let mut r = Vec::with_capacity(28 + payload.len());
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.s.write_all(&r).unwrap();
        self.cookie
    }

    /// The error of the reply to `cookie`, and its `len` data bytes if it succeeded.
    fn reply(&mut self, cookie: u64, len: usize) -> (u32, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x6744_6698, "simple reply magic");
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut data = Vec::new();
        if error == 0 {
            data.resize(len, 0);
            self.s.read_exact(&mut data).unwrap();
        }
        (error, data)
    }

    fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        let c = self.send(CMD_READ, offset, len, &[]);
        let (e, data) = self.reply(c, len as usize);
        assert_eq!(e, 0, "read of {len} bytes at {offset} failed");
        data
    }

    fn disconnect(mut self) {
        self.send(CMD_DISC, 0, 0, &[]);
    }
}

/// `kura nbd` running; killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kura nbd SNAPSHOT --store DIR --listen LISTEN`; returns it once it says where it
/// listens, with that line.
fn start_nbd(store: &Path, snapshot: &str, listen: &str) -> (Server, String) {
    let mut cmd = Command::new(kura_bin());
    cmd.args(["nbd", snapshot, "--store"]).arg(store).args(["--listen", listen]);
    spawn_nbd(cmd)
}

/// Starts `cmd` (a `kura nbd`); returns it once it says where it listens, with that line.
fn spawn_nbd(mut cmd: Command) -> (Server, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child);
    assert!(line.contains("exporting snapshot"), "kura nbd said {line:?}");
    (server, line.trim().to_string())
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running qemu-img ({e}): install the Debian package qemu-utils"))
}

/// A small xorshift generator: reproducible random ranges without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn file_range(f: &std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

#[test]
fn a_snapshot_is_served_over_nbd_as_a_restore_would_write_it() {
    let work = tempfile::tempdir().unwrap();
    let (disk, _stale) = fixtures::with_deleted_data(work.path());
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, Some("nbd"));

    let restored = work.path().join("restored.img");
    let t = Instant::now();
    store.restore(&cap.snapshot, &restored);
    let restore_time = t.elapsed();

    let sock: PathBuf = work.path().join("nbd.sock");
    let (_server, line) = start_nbd(&store.dir, &cap.snapshot, &format!("unix:{}", sock.display()));
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    assert!(line.contains(&uri), "{line}");

    // qemu-img reads the export end to end: identical to the restored disk.
    let out = qemu_img(&["compare", "-f", "raw", "-F", "raw", restored.to_str().unwrap(), &uri]);
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Images are identical"));

    // A full sequential read with the test's client; every byte is the source's or, in a range
    // the capture did not keep, zero; regions the capture kept whole match the source exactly.
    let src = std::fs::File::open(&disk.path).unwrap();
    let rest = std::fs::File::open(&restored).unwrap();
    let mut c = Client::connect(&sock);
    assert_eq!(c.size, disk.size);
    assert_eq!(c.flags & (FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN), FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN);
    let step = 4u64 << 20;
    let t = Instant::now();
    let mut exported = Vec::with_capacity(disk.size as usize);
    let mut off = 0;
    while off < disk.size {
        let n = step.min(disk.size - off) as u32;
        exported.extend_from_slice(&c.read(off, n));
        off += n as u64;
    }
    let read_time = t.elapsed();
    let source = file_range(&src, 0, disk.size as usize);
    let (mut same, mut zeroed) = (0u64, 0u64);
    for (i, (e, s)) in exported.chunks(4096).zip(source.chunks(4096)).enumerate() {
        if e == s {
            same += 1;
        } else {
            assert!(e.iter().all(|&b| b == 0), "block {i} differs from the source and is not zero");
            zeroed += 1;
        }
    }
    // The deleted files' and old swap pages' blocks (at least 32 + 24 + 32 MiB) read as zeros.
    assert!(zeroed * 4096 >= 80 << 20 && same > 0, "{same} blocks as the source, {zeroed} zeroed");
    let show = run(["image", "show", &cap.snapshot, "--store", store.dir.to_str().unwrap(), "--json"]);
    let show: serde_json::Value = show.expect_success().json();
    let mut whole = 0;
    for r in show["regions"].as_array().unwrap() {
        let (start, size, used) =
            (r["start"].as_u64().unwrap(), r["size"].as_u64().unwrap(), r["used_bytes"].as_u64().unwrap());
        if used == size {
            let (a, b) = (start as usize, (start + size) as usize);
            assert!(exported[a..b] == source[a..b], "region at {start} was captured whole but differs");
            whole += 1;
        }
    }
    assert!(whole >= 1, "the partition-table gaps are kept whole: {show}");
    eprintln!(
        "disk {} MiB: full sequential read over NBD {:.2} s, restore {:.2} s",
        disk.size >> 20,
        read_time.as_secs_f64(),
        restore_time.as_secs_f64()
    );

    // Refused: writes and trims (EPERM), reads past the end or over 32 MiB (EINVAL); the
    // session goes on after each.
    let w = c.send(CMD_WRITE, 0, 4096, &[0xAA; 4096]);
    assert_eq!(c.reply(w, 0).0, EPERM);
    let t = c.send(CMD_TRIM, 0, 4096, &[]);
    assert_eq!(c.reply(t, 0).0, EPERM);
    let r = c.send(CMD_READ, disk.size - 512, 1024, &[]);
    assert_eq!(c.reply(r, 0).0, EINVAL);
    let r = c.send(CMD_READ, u64::MAX - 10, 512, &[]);
    assert_eq!(c.reply(r, 0).0, EINVAL);
    let r = c.send(CMD_READ, 0, (32 << 20) + 1, &[]);
    assert_eq!(c.reply(r, 0).0, EINVAL);
    assert_eq!(c.read(0, 4096), file_range(&rest, 0, 4096), "the write changed nothing");
    c.disconnect();
    // qemu's own client refuses to write to a read-only export too.
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "write 0 4k", &uri]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wrote"), "{out:?}");

    // 16 concurrent readers of random ranges, while other clients vanish mid-read: a raw
    // connection that asks for 32 MiB and hangs up after a few bytes of the reply, and a
    // qemu-img convert killed while it reads.
    let t = Instant::now();
    std::thread::scope(|s| {
        for seed in 1..=16u64 {
            let (sock, rest) = (&sock, &rest);
            s.spawn(move || {
                let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let mut c = Client::connect(sock);
                for _ in 0..150 {
                    let len = (rng.next() % (2 << 20)) as u32 + 1;
                    let off = rng.next() % (disk.size - len as u64);
                    assert!(c.read(off, len) == file_range(rest, off, len as usize), "reader {seed}: {len} at {off}");
                }
                c.disconnect();
            });
        }
        s.spawn(|| {
            for i in 0..8 {
                let mut c = Client::connect(&sock);
                c.send(CMD_READ, (i * 7) << 20, 32 << 20, &[]);
                let mut some = [0u8; 1000];
                c.s.read_exact(&mut some).unwrap();
                drop(c); // gone mid-reply
            }
        });
        s.spawn(|| {
            let mut q = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", &uri])
                .arg(work.path().join("killed.img"))
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            q.kill().unwrap();
            q.wait().unwrap();
        });
    });
    eprintln!("16 readers × 150 random reads (≤ 2 MiB each): {:.2} s", t.elapsed().as_secs_f64());

    // The server still serves new clients.
    let mut c = Client::connect(&sock);
    let off = disk.size / 3;
    assert_eq!(c.read(off, 65536), file_range(&rest, off, 65536));
    c.disconnect();

    // On a loopback TCP port too (port 0: the line says which).
    let (_tcp, line) = start_nbd(&store.dir, &cap.snapshot[..8], "127.0.0.1:0");
    let url = line.split_whitespace().last().unwrap();
    assert!(url.starts_with("nbd://127.0.0.1:"), "{line}");
    let out = qemu_img(&["info", "--output=json", url]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(info["virtual-size"].as_u64(), Some(disk.size));
    // A non-loopback address is refused: the export has no authentication.
    let r = run(["nbd", &cap.snapshot, "--store", store.dir.to_str().unwrap(), "--listen", "0.0.0.0:0"]);
    r.expect_failure_mentioning(&["loopback"]);
}

/// Bytes process `pid` has received so far on its open TCP connections to `port` on
/// 127.0.0.1 (`bytes_received` of `ss -tinp`): what it fetched from the engine, TLS included.
fn bytes_from_engine(pid: u32, port: &str) -> u64 {
    let out = Command::new("ss")
        .args(["-Htinp", "dst", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap_or_else(|e| panic!("running ss ({e}): install the Debian package iproute2"));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut total, mut ours) = (0, false);
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            ours = line.contains(&format!("pid={pid},"));
        } else if ours {
            let n = line.split_whitespace().find_map(|w| w.strip_prefix("bytes_received:"));
            total += n.map_or(0, |n| n.parse::<u64>().unwrap());
        }
    }
    total
}

#[test]
fn a_snapshot_on_an_engine_is_served_over_nbd_with_the_callers_token() {
    let work = tempfile::tempdir().unwrap();
    // A small GPT disk: ext4 with a deleted file (unused blocks the capture leaves out), and a
    // raw partition of incompressible bytes (kept whole).
    let disk = build_gpt(
        work.path(),
        "small.img",
        48 * MIB,
        vec![
            PartSpec::gpt(
                32 * MIB,
                "8300",
                "root",
                Content::Ext4 {
                    label: "root",
                    block_size: 4096,
                    files: linux_root_files(21_000, 1),
                    deleted: vec![FileSpec::new("var/tmp/old.bin", random_bytes(21_001, 6 << 20))],
                },
            ),
            PartSpec::gpt(4 * MIB, "ef02", "raw", Content::Raw(random_bytes(21_002, 4 << 20))),
        ],
    );
    let server = EngineServer::start(&work.path().join("engine"));
    let fingerprint = server.fingerprint.clone().expect("an HTTPS engine");
    let cap = server.capture(&disk.path, "nbd-host");
    let restored = work.path().join("restored.img");
    server.restore(&cap.snapshot, &restored);

    let r = server.kura(&[&"token", &"create", &"--role", &"operator", &"--note", &"nbd"]);
    assert!(r.success(), "{r}");
    let operator = r.stdout.trim().to_string();
    assert!(operator.starts_with("kura_"), "{r}");

    // `kura nbd SNAPSHOT --server URL --token TOKEN`, the certificate pinned through
    // KURA_FINGERPRINT as for every other command that talks to an engine.
    let sock = work.path().join("engine-nbd.sock");
    let listen = format!("unix:{}", sock.display());
    let mut cmd = Command::new(kura_bin());
    cmd.args(["nbd", &cap.snapshot, "--server", &server.url, "--token", &operator, "--listen", &listen])
        .env_remove("KURA_TOKEN")
        .env("KURA_FINGERPRINT", &fingerprint);
    let (nbd, line) = spawn_nbd(cmd);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    assert!(line.contains(&uri) && line.contains(&cap.snapshot), "{line}");

    let port = server.url.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    let before = bytes_from_engine(nbd.0.id(), &port);
    let t = Instant::now();
    let out = qemu_img(&["compare", "-f", "raw", "-F", "raw", restored.to_str().unwrap(), &uri]);
    let took = t.elapsed();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Images are identical"),
        "qemu-img compare: {}{}\nengine log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let fetched = bytes_from_engine(nbd.0.id(), &port) - before;
    let stored: u64 = chunk_files(&server.store()).iter().map(|c| c.len).sum();
    eprintln!(
        "disk {} MiB ({} used): a full read over NBD took {:.2} s and read {fetched} bytes from the engine \
         (its store holds {stored} bytes of chunks)",
        disk.size >> 20,
        cap.used_bytes,
        took.as_secs_f64()
    );
    // Every chunk is fetched once (the cache holds the whole disk), TLS and HTTP framing aside.
    assert!(fetched >= stored && fetched < stored + stored / 4 + (1 << 20), "{fetched} for {stored}");

    // The export also agrees byte for byte with the test's own client, and the disk with the
    // source wherever the capture kept whole regions (the raw partition).
    let mut c = Client::connect(&sock);
    assert_eq!(c.size, disk.size);
    let rest = std::fs::File::open(&restored).unwrap();
    for off in (0..disk.size).step_by(5 << 20) {
        let n = (5u64 << 20).min(disk.size - off) as u32;
        assert!(c.read(off, n) == file_range(&rest, off, n as usize), "{n} bytes at {off}");
    }
    c.disconnect();
    drop(nbd);

    // A wrong token fails at once with a clear error, and nothing listens.
    let sock2 = work.path().join("refused.sock");
    let bad = format!("kura_{}", "0".repeat(64));
    let r = run_env(
        [
            "nbd",
            &cap.snapshot,
            "--server",
            &server.url,
            "--token",
            &bad,
            "--listen",
            &format!("unix:{}", sock2.display()),
        ],
        &[("KURA_FINGERPRINT", &fingerprint)],
    );
    r.expect_failure_mentioning(&["401", "token"]);
    assert!(!sock2.exists(), "kura nbd listened before failing");
    assert!(!r.stdout.contains("exporting"), "{r}");
    // So does the right token with the wrong certificate fingerprint.
    let last = fingerprint.chars().last().unwrap();
    let wrong_fp = format!("{}{}", &fingerprint[..fingerprint.len() - 1], if last == '0' { '1' } else { '0' });
    let r = run_env(
        [
            "nbd",
            &cap.snapshot,
            "--server",
            &server.url,
            "--token",
            &operator,
            "--listen",
            &format!("unix:{}", sock2.display()),
        ],
        &[("KURA_FINGERPRINT", &wrong_fp)],
    );
    r.expect_failure_mentioning(&["fingerprint"]);
    assert!(!sock2.exists(), "kura nbd listened before failing");
}
