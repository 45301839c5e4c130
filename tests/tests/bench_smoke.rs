//! `kura bench` end to end on a small disk, so the benchmark cannot rot: it builds its test disk,
//! runs every contender and prints JSON with positive figures. The engine modes start a real
//! `kura serve` child and need GNU time (package `time`).
//!
//! Needs the `kura` binary (`cargo build -p kura`, or `$KURA_BIN`) and the benchmark's tools
//! (partclone, zstd, gdisk, e2fsprogs, ntfs-3g).

use std::path::{Path, PathBuf};
use std::process::Command;

fn kura_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_BIN") {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { workspace.join(t) })
        .unwrap_or_else(|| workspace.join("target"));
    target.join("debug").join("kura")
}

fn positive(v: &serde_json::Value, path: &str) -> f64 {
    let x = path.split('.').fold(v, |v, k| &v[k]);
    let n = x.as_f64().unwrap_or_else(|| panic!("{path} is not a number: {x}"));
    assert!(n > 0.0, "{path} should be positive, is {n}");
    n
}

#[test]
fn bench_runs_end_to_end_on_a_small_disk() {
    let bin = kura_bin();
    assert!(bin.is_file(), "the kura binary is not at {}: run `cargo build -p kura` first", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["bench", "--disk-size", "512M", "--runs", "1", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kura bench failed ({}):\n{stderr}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));

    let used = positive(&v, "disk.used_bytes");
    let size = positive(&v, "disk.size");
    assert!(used > size / 4.0 && used < size, "about half the disk should be used: {used} of {size}");
    for row in [
        "capture.cat_partitions",
        "capture.cat_disk",
        "capture.partclone_zstd",
        "capture.kura",
        "capture.kura_null_sink",
        "restore.partclone_zstd",
        "restore.kura",
    ] {
        positive(&v, &format!("{row}.mib_s"));
        positive(&v, &format!("{row}.seconds"));
    }
    positive(&v, "capture.kura.stored_bytes");
    positive(&v, "capture.partclone_zstd.stored_bytes");
    positive(&v, "capture.speed_ratio");
    positive(&v, "capture.stored_ratio");
    positive(&v, "restore.speed_ratio");

    let limits = v["limits"].as_array().expect("limits");
    assert!(limits.len() >= 3, "{limits:?}");
    for l in limits {
        positive(l, "mib_s");
    }

    let rows = v["chunk_sizes"]["rows"].as_array().expect("chunk size rows");
    let sizes: Vec<u64> = rows.iter().map(|r| r["chunk_size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [256 << 10, 1 << 20, 4 << 20]);
    positive(&v, "chunk_sizes.changed_files");
    for r in rows {
        positive(r, "capture.mib_s");
        positive(r, "capture.stored_bytes");
        // The change is small: the second capture stores something, but far less than the first.
        let new = positive(r, "second_new_bytes");
        assert!(new < positive(r, "capture.stored_bytes") / 2.0, "{r}");
    }
    assert!(!v["checks"].as_array().expect("checks").is_empty());

    // The work directory was removed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "bench left files behind");
}

#[test]
fn bench_level_mode_runs_on_a_tiny_disk() {
    let bin = kura_bin();
    assert!(bin.is_file(), "the kura binary is not at {}: run `cargo build -p kura` first", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["bench", "--disk-size", "256M", "--runs", "1", "--json", "--levels", "1,5", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kura bench --levels failed ({}):\n{stderr}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));

    // The reference is partclone | zstd -3 even though level 3 was not asked for.
    assert_eq!(v["reference"]["name"], "partclone -c | zstd -T0 -3");
    let reference = positive(&v, "reference.stored_bytes");
    for k in ["loadavg_start", "loadavg_end"] {
        assert!(v[k].as_f64().is_some_and(|l| l >= 0.0), "{k}: {}", v[k]);
    }
    let rows = v["rows"].as_array().expect("level rows");
    let levels: Vec<i64> = rows.iter().map(|r| r["level"].as_i64().unwrap()).collect();
    assert_eq!(levels, [1, 5]);
    for r in rows {
        positive(r, "kura.mib_s");
        positive(r, "kura.cpu_seconds");
        positive(r, "stream.stored_bytes");
        let stored = positive(r, "kura.stored_bytes");
        assert!((positive(r, "stored_ratio") - stored / reference).abs() < 1e-9, "{r}");
        assert!(r["kura_neighbour_cores"].as_f64().unwrap() >= 0.0, "{r}");
    }
    // A higher level stores less (the disk holds compressible text and system files).
    let stored = |i: usize| rows[i]["kura"]["stored_bytes"].as_u64().unwrap();
    assert!(stored(1) < stored(0), "level 5 stored {} bytes, level 1 {}", stored(1), stored(0));

    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "bench left files behind");
}

/// Runs `kura bench ARGS --json --runs 1 --disk-size 256M` in a fresh directory, which it must
/// leave empty; returns the JSON.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let bin = kura_bin();
    assert!(bin.is_file(), "the kura binary is not at {}: run `cargo build -p kura` first", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["bench", "--disk-size", "256M", "--runs", "1", "--json", "--dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kura bench {args:?} failed ({}):\n{stderr}", out.status);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "bench left files behind");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn bench_engine_mode_runs_on_a_tiny_disk() {
    let v = bench_json(&["--engine"]);
    let used = positive(&v, "disk.used_bytes");
    for pair in ["capture", "restore"] {
        for side in ["offline", "engine"] {
            let s = &v[pair][side];
            positive(s, "seconds");
            positive(s, "mib_s");
            positive(s, "client_cpu_seconds");
            assert_eq!(positive(s, "used_bytes"), used, "{pair} {side}: {s}");
            assert!(s["neighbour_cores"].as_f64().is_some_and(|n| n >= 0.0), "{s}");
            assert_eq!(v[pair][format!("{side}_runs")].as_array().map(Vec::len), Some(1), "{pair} {side}");
        }
        let e = &v[pair]["engine"];
        positive(e, "engine_cpu_seconds");
        // Peak RSS between 4 MiB and 2 GiB: read from the processes, not made up.
        for rss in ["client_peak_rss", "engine_peak_rss"] {
            let r = positive(e, rss);
            assert!(r > 4.0 * 1048576.0 && r < 2048.0 * 1048576.0, "{pair} {rss} {r}");
        }
        positive(&v[pair], "engine_offline_ratio");
    }
    // Both stores hold the same chunks.
    let stored = positive(&v, "capture.engine.stored_bytes");
    assert_eq!(stored, positive(&v, "capture.offline.stored_bytes"));
    let checks: Vec<&str> = v["checks"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert!(checks.iter().all(|c| c.contains("identical")), "{checks:?}");
    assert!(checks[1].starts_with("engine restore"), "{checks:?}");
}

#[test]
fn bench_engine_concurrent_mode_runs_two_hosts() {
    let v = bench_json(&["--engine", "--concurrent", "2"]);
    let used = positive(&v, "disk.used_bytes");
    let own = positive(&v, "own_file_bytes_per_host");
    let best = &v["best"];
    let clients = best["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 2);
    for c in clients {
        assert_eq!(positive(c, "used_bytes"), used, "{c}");
        positive(c, "cpu_seconds");
        positive(c, "peak_rss");
    }
    assert_eq!(positive(best, "used_bytes"), 2.0 * used);
    positive(best, "mib_s");
    positive(best, "engine_cpu_seconds");
    positive(best, "engine_peak_rss");
    positive(best, "engine_clients_ratio");
    // The store holds no more than was sent, and at least both hosts' own random files (half
    // of each host's own bytes, incompressible).
    let stored = positive(best, "stored_bytes");
    let sent = positive(best, "sent_bytes");
    assert!(stored <= sent, "stored {stored} of {sent} sent");
    assert!(stored > own, "stored {stored}, own files {own} per host");
}

#[test]
fn bench_month_mode_runs_on_a_small_disk() {
    let bin = kura_bin();
    assert!(bin.is_file(), "the kura binary is not at {}: run `cargo build -p kura` first", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["bench", "--month", "--disk-size", "512M", "--runs", "1", "--chunk-sizes", "64K,1M", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kura bench --month failed ({}):\n{stderr}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));

    // The month changed something, and far less than the disk.
    let bound = positive(&v, "lower_bound.zstd_per_extent");
    let used = positive(&v, "month_used_bytes");
    assert!(bound < used / 10.0, "lower bound {bound} of {used} used bytes");
    assert!(positive(&v, "lower_bound.zstd_per_block") >= bound, "{}", v["lower_bound"]);
    assert!(positive(&v, "lower_bound.changed_bytes") > bound, "{}", v["lower_bound"]);
    for k in ["db_pages_rewritten", "log_bytes_appended", "files_replaced", "files_added", "files_deleted"] {
        positive(&v, &format!("changes.{k}"));
    }
    positive(&v, "cold_cat_used.seconds");

    let rows = v["rows"].as_array().expect("chunk size rows");
    let sizes: Vec<u64> = rows.iter().map(|r| r["chunk_size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [64 << 10, 1 << 20]);
    for r in rows {
        for k in ["first_seconds", "first_stored_bytes", "second_seconds", "restore_seconds", "second_manifest_bytes"] {
            positive(r, k);
        }
        // No chunk size stores less than the changed blocks compressed, nor anything like the
        // whole disk again.
        let added = positive(r, "added_bytes");
        assert!(added >= bound * 0.9, "{r}");
        assert!(added < positive(r, "first_stored_bytes") / 2.0, "{r}");
        assert!((positive(r, "added_vs_lower_bound") - added / bound).abs() < 1e-9, "{r}");
        assert!(positive(r, "catalog_rows") >= positive(r, "first_new_chunks"), "{r}");
    }
    let field = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    assert!(field(0, "added_bytes") <= field(1, "added_bytes"), "64 KiB chunks added more than 1 MiB ones");
    assert!(field(0, "second_new_chunks") > field(1, "second_new_chunks"));
    assert!(field(0, "second_manifest_bytes") > field(1, "second_manifest_bytes"));

    // The two-level simulation (1 MiB chunks, changed ones as 64 KiB sub-chunks) stores what the
    // 64 KiB capture stored at most, and less than the 1 MiB one.
    let two = &v["two_level"][0];
    assert_eq!(two["sub_chunk_size"].as_u64(), Some(64 << 10), "{two}");
    let two_added = positive(two, "added_bytes");
    assert!(two_added <= field(0, "added_bytes") && two_added < field(1, "added_bytes"), "{two}");
    assert!(positive(two, "manifest_entries") > rows[1]["manifest_entries"].as_f64().unwrap(), "{two}");

    // The two-level scheme as built (manifest v2): 16 and 64 KiB pieces, each incremental with
    // pieced chunks, storing less than plain 1 MiB chunks; each restore was checked.
    let pieced = v["pieced"].as_array().expect("pieced rows");
    let pieces: Vec<u64> = pieced.iter().map(|r| r["piece_size"].as_u64().unwrap()).collect();
    assert_eq!(pieces, [16 << 10, 64 << 10]);
    for r in pieced {
        positive(r, "pieced_chunks");
        positive(r, "restore_seconds");
        let added = positive(r, "added_bytes");
        assert!(added >= bound * 0.9 && added < field(1, "added_bytes"), "{r}");
        assert!(positive(r, "manifest_entries") > rows[1]["manifest_entries"].as_f64().unwrap(), "{r}");
    }
    let checks = v["checks"].as_array().expect("checks");
    assert_eq!(checks.iter().filter(|c| c.as_str().unwrap().contains("pieces")).count(), 2, "{checks:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "bench left files behind");
}
