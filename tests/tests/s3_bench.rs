//! Benchmark (ignored; run with `cargo test -p kura-tests --test s3_bench -- --ignored
//! --nocapture`): an engine on the local store and one on S3 (SeaweedFS on loopback), the same
//! disk captured twice (the second time all chunks are known) and restored from a cold and a
//! warm cache; throughput, the engine's requests per GiB (`/metrics`), and the S3 server's own
//! CPU time. `KURA_BENCH_MIB` sets the disk's size (default 256).

use std::collections::BTreeMap;
use std::time::Instant;

use kura_tests::content::{random_bytes, sha256_file, text_bytes};
use kura_tests::disks::MIB;
use kura_tests::engine::{raw_disk, Server};
use kura_tests::s3::Backend;

/// User + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5) (utime, stime, in clock ticks of 1/100 s); `after` starts at 3.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// `kura_store_requests_total` by operation.
fn requests(server: &Server) -> BTreeMap<String, u64> {
    // `/metrics` is outside `/api/v1` (`raw`, not `req`, which would ask for /api/v1/metrics).
    let r = server.api().raw("GET", "/metrics").token(&server.admin).send();
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    let text = r.text();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("kura_store_requests_total{op=\"")?;
            let (op, n) = rest.split_once("\"} ")?;
            Some((op.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

fn per_gib(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    after
        .iter()
        .filter(|(op, n)| **n > before.get(*op).copied().unwrap_or(0))
        .map(|(op, n)| format!("{:.0} {op}", (n - before.get(op).copied().unwrap_or(0)) as f64 / gib))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
#[ignore = "benchmark: prints figures"]
fn local_vs_s3_throughput_and_requests_per_gib() {
    let mib: u64 = std::env::var("KURA_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let work = tempfile::tempdir().unwrap();
    // Half incompressible, half text-like: transfer and compression both matter.
    let mut data = random_bytes(1, (mib / 2 * MIB) as usize);
    data.extend(text_bytes(2, (mib / 2 * MIB) as usize));
    let disk = raw_disk(work.path(), "bench.img", data);
    let size = std::fs::metadata(&disk.path).unwrap().len();
    let sha = sha256_file(&disk.path);
    let target = work.path().join("restored.img");
    let mbs = |secs: f64| size as f64 / MIB as f64 / secs;
    let mut rows = Vec::new();
    let mut s3_cpu = 0.0;

    for backend in [Backend::local(), Backend::s3()] {
        let name = backend.name();
        let cpu = |b: &Backend| match b {
            Backend::S3 { server, .. } => cpu_seconds(server.pid()),
            Backend::Local => 0.0,
        };
        let cpu0 = cpu(&backend);
        let mut server = backend.start_http(&work.path().join(format!("engine-{name}")));
        let timed = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        let r0 = requests(&server);
        let mut id = String::new();
        let t = timed(&mut || id = server.capture(&disk.path, "a").snapshot);
        let r1 = requests(&server);
        rows.push(format!("{name:12}  capture                {:7.1} MiB/s  {}", mbs(t), per_gib(&r0, &r1, size)));
        let t = timed(&mut || {
            server.capture(&disk.path, "b");
        });
        let r2 = requests(&server);
        rows.push(format!("{name:12}  capture, all known     {:7.1} MiB/s  {}", mbs(t), per_gib(&r1, &r2, size)));
        // Cold: a restarted engine without its cached chunks (the chunk index stays).
        server.stop();
        let _ = std::fs::remove_dir_all(server.data.join("cache/chunks"));
        server.restart();
        let r0 = requests(&server);
        let t = timed(&mut || {
            server.restore(&id, &target);
        });
        assert_eq!(sha256_file(&target), sha);
        let r1 = requests(&server);
        let is_s3 = matches!(backend, Backend::S3 { .. });
        let what = if is_s3 { "restore, cold cache" } else { "restore" };
        rows.push(format!("{name:12}  {what:22} {:7.1} MiB/s  {}", mbs(t), per_gib(&r0, &r1, size)));
        if is_s3 {
            let t = timed(&mut || {
                server.restore(&id, &target);
            });
            assert_eq!(sha256_file(&target), sha);
            let r2 = requests(&server);
            rows.push(format!("{name:12}  restore, warm cache    {:7.1} MiB/s  {}", mbs(t), per_gib(&r1, &r2, size)));
            s3_cpu = cpu(&backend) - cpu0;
        }
        let _ = std::fs::remove_file(&target);
    }
    eprintln!(
        "\n{mib} MiB of data ({} MiB disk image), 1 MiB chunks; CLI ↔ engine over loopback HTTP; SeaweedFS on loopback\n{}\nSeaweedFS CPU during the S3 runs: {s3_cpu:.1} s",
        size / MIB,
        rows.join("\n")
    );
}
