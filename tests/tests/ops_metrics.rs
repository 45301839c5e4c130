//! `/metrics` after real captures: the Prometheus text parses, and every value matches what
//! the catalog (`kura snapshots`), the store's files and the jobs say.

use std::collections::HashMap;

use kura_tests::content::random_bytes;
use kura_tests::engine::{chunk_count, raw_disk, Server};
use kura_tests::store::chunk_files;

/// Parses the text exposition format: `name{labels} value` samples, each after its family's
/// `# TYPE` line.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut typed: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let name = key.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(typed.last().is_some_and(|t| t == name || t == family), "{line:?} outside its family");
        let v: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(out.insert(key.to_string(), v).is_none(), "duplicate sample {key}");
    }
    out
}

#[test]
fn metrics_match_the_catalog_after_real_captures() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let operator = api.operator_token(&server.admin);

    // Two hosts with the same disk (the second capture stores nothing new), a third with its own.
    let same = raw_disk(work.path(), "same.img", random_bytes(11, 6 << 20));
    let other = raw_disk(work.path(), "other.img", random_bytes(12, 3 << 20));
    let a = server.capture(&same.path, "web01");
    let b = server.capture(&same.path, "web02");
    let c = server.capture(&other.path, "db01");
    assert_eq!(b.new_chunks, 0, "{b:?}");
    let failed = api.failed_job(&server.admin, "mail01", "aa:bb:cc:00:00:01", "test: disk on fire");

    assert_eq!(api.raw("GET", "/metrics").send().status, 401);
    let r = api.raw("GET", "/metrics").token(&operator).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type")[0].starts_with("text/plain; version=0.0.4"), "{:?}", r.header("content-type"));
    let m = parse(&r.text());
    eprintln!("{}", r.text());
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no sample {k} in\n{}", r.text()));

    let snapshots = server.snapshots();
    let logical: u64 = snapshots.iter().map(|s| s["used_bytes"].as_u64().unwrap()).sum();
    let files = chunk_files(&server.store());
    let stored: u64 = files.iter().map(|f| f.len).sum();
    assert_eq!(get("kura_snapshots"), snapshots.len() as f64);
    assert_eq!(snapshots.len(), 3);
    assert_eq!(get("kura_snapshot_logical_bytes"), logical as f64);
    assert_eq!(get("kura_store_chunks"), chunk_count(&server.store()) as f64);
    assert_eq!(get("kura_store_chunks"), files.len() as f64);
    assert_eq!(get("kura_store_bytes"), stored as f64);
    assert!((get("kura_dedup_ratio") - logical as f64 / stored as f64).abs() < 1e-9);
    assert!(get("kura_dedup_ratio") > 1.5, "two hosts share one disk: {}", get("kura_dedup_ratio"));
    // Everything in this fresh store came through this server's uploads.
    assert_eq!(get("kura_ingested_bytes_total"), stored as f64);
    assert_eq!(get("kura_ingested_chunks_total"), files.len() as f64);
    assert_eq!(get("kura_ingested_chunks_total"), (a.new_chunks + b.new_chunks + c.new_chunks) as f64);

    assert_eq!(get("kura_jobs{kind=\"capture\",state=\"failed\"}"), 1.0);
    for state in ["queued", "running", "succeeded", "cancelled"] {
        assert_eq!(get(&format!("kura_jobs{{kind=\"capture\",state=\"{state}\"}}")), 0.0, "{state}");
    }
    assert_eq!(get("kura_job_duration_seconds_count{kind=\"capture\"}"), 1.0);
    assert_eq!(get("kura_job_duration_seconds_bucket{kind=\"capture\",le=\"+Inf\"}"), 1.0);
    assert_eq!(get("kura_job_duration_seconds_count{kind=\"restore\"}"), 0.0);
    assert_eq!(get("kura_hosts"), 4.0);
    assert_eq!(get("kura_hosts_stale"), 1.0, "mail01 has no snapshot");
    let newest = snapshots.iter().filter(|s| s["host"] == "db01").map(|s| s["created"].as_i64().unwrap()).max();
    assert_eq!(get("kura_host_last_snapshot_timestamp_seconds{host=\"db01\"}"), newest.unwrap() as f64);
    eprintln!("failed job {failed}");
}
