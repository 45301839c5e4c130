//! `GET /metrics`: Prometheus metrics in the text exposition format 0.0.4, written by hand.
//! Operators and admins only (Prometheus sends the token with `authorization: {credentials:
//! ...}` / `bearer_token_file`). Every value is read when scraped, from the catalog, the store
//! ([`super::ops::Overview`]) and this process's counters ([`Ingested`]). The metric names are
//! listed in `docs/operations.md`, "Metrics".

use super::ops::Overview;
use super::{ApiResult, AppState};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use kura_catalogs::db::JobKind;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Upper bounds (seconds) of the job duration histogram's buckets.
pub const DURATION_BUCKETS: &[u64] = &[60, 300, 900, 1800, 3600, 7200, 14_400, 28_800, 86_400];

pub use crate::engine::Ingested;

pub async fn metrics(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let st = state.clone();
    let o = tokio::task::spawn_blocking(move || Overview::gather(&st)).await??;
    let mut text = render(&o, &state.engine.ingested, state.started);
    replication(&mut text, &o.replication, &state.engine.replication_sent, o.now);
    if let Some(ticks) = state.scheduler_ticks.get() {
        family(
            &mut text,
            "kura_scheduler_ticks_total",
            "counter",
            "Scheduler passes completed since this server started.",
        );
        let _ = writeln!(text, "kura_scheduler_ticks_total {}", ticks.load(Ordering::SeqCst));
    }
    family(
        &mut text,
        "kura_boot_tests_queued",
        "gauge",
        "Boot tests of scheduled captures' snapshots waiting or running (one runs at a time).",
    );
    let _ = writeln!(text, "kura_boot_tests_queued {}", state.engine.boot_tests.pending());
    // A remote (S3) store: its requests and its local cache.
    let requests = state.engine.store.requests();
    if !requests.is_empty() {
        family(
            &mut text,
            "kura_store_requests_total",
            "counter",
            "Requests sent to the object store since this server started, by operation (list: pages of up to 1000).",
        );
        for (op, n) in requests {
            let _ = writeln!(text, "kura_store_requests_total{{op=\"{op}\"}} {n}");
        }
    }
    if let Some((hits, misses)) = state.engine.store.cache_hits_misses() {
        family(
            &mut text,
            "kura_store_cache_reads_total",
            "counter",
            "Chunk reads of the local cache of the object store.",
        );
        let _ = writeln!(text, "kura_store_cache_reads_total{{result=\"hit\"}} {hits}");
        let _ = writeln!(text, "kura_store_cache_reads_total{{result=\"miss\"}} {misses}");
    }
    let mut r = text.into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(r)
}

/// A replication gauge: name, help, and its value for one remote at a time.
type Gauge = (&'static str, &'static str, fn(&kura_catalogs::db::Backlog, i64) -> u64);
/// What the worker sent to one remote: (remote, chunks, bytes, snapshots).
type SentRow = (String, u64, u64, u64);
/// A replication counter: name, help, and its value from a [`SentRow`].
type Counter = (&'static str, &'static str, fn(&SentRow) -> u64);

/// The replication gauges and counters, per remote (`docs/dr.md`).
fn replication(text: &mut String, backlog: &[kura_catalogs::db::Backlog], sent: &crate::replication::Sent, now: i64) {
    if backlog.is_empty() {
        return;
    }
    let gauges: [Gauge; 4] = [
        ("kura_replication_queued_chunks", "Chunks queued for a remote and not yet sent.", |b, _| b.chunks),
        ("kura_replication_queued_bytes", "Bytes of the chunks queued for a remote.", |b, _| b.chunk_bytes),
        ("kura_replication_queued_snapshots", "Committed snapshots a remote does not hold yet.", |b, _| b.snapshots),
        (
            "kura_replication_lag_seconds",
            "Seconds since the oldest snapshot a remote does not hold yet was committed (0: none).",
            |b, now| b.oldest_snapshot.map_or(0, |t| (now - t).max(0) as u64),
        ),
    ];
    for (name, help, value) in gauges {
        family(text, name, "gauge", help);
        for b in backlog {
            let _ = writeln!(text, "{name}{{remote=\"{}\"}} {}", label(&b.remote), value(b, now));
        }
    }
    let sent = sent.snapshot();
    let counters: [Counter; 3] = [
        ("kura_replication_sent_chunks_total", "Chunks sent to a remote since this server started.", |s| s.1),
        ("kura_replication_sent_bytes_total", "Bytes of chunks sent to a remote since this server started.", |s| s.2),
        ("kura_replication_sent_snapshots_total", "Snapshots committed on a remote since this server started.", |s| {
            s.3
        }),
    ];
    for (name, help, value) in counters {
        family(text, name, "counter", help);
        for b in backlog {
            let n = sent.iter().find(|s| s.0 == b.remote).map_or(0, value);
            let _ = writeln!(text, "{name}{{remote=\"{}\"}} {n}", label(&b.remote));
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text.
pub fn render(o: &Overview, ingested: &Ingested, started: i64) -> String {
    let mut m = String::new();
    family(&mut m, "kura_start_time_seconds", "gauge", "When this server started (unix seconds).");
    let _ = writeln!(m, "kura_start_time_seconds {started}");

    family(&mut m, "kura_jobs", "gauge", "Jobs in the catalog, by kind and state.");
    for c in &o.job_counts {
        let _ = writeln!(m, "kura_jobs{{kind=\"{}\",state=\"{}\"}} {}", c.kind, c.state, c.count);
    }

    family(
        &mut m,
        "kura_job_duration_seconds",
        "histogram",
        "Run time (finished - started) of the jobs that ran and ended (succeeded or failed), from the catalog.",
    );
    for &kind in JobKind::ALL {
        let d: Vec<u64> = o.durations.iter().filter(|d| d.kind == kind).map(|d| d.seconds).collect();
        for le in DURATION_BUCKETS {
            let n = d.iter().filter(|s| *s <= le).count();
            let _ = writeln!(m, "kura_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(m, "kura_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}", d.len());
        let _ = writeln!(m, "kura_job_duration_seconds_sum{{kind=\"{kind}\"}} {}", d.iter().sum::<u64>());
        let _ = writeln!(m, "kura_job_duration_seconds_count{{kind=\"{kind}\"}} {}", d.len());
    }

    family(
        &mut m,
        "kura_ingested_bytes_total",
        "counter",
        "Bytes (encoded) of chunks new to the store that uploads stored since this server started.",
    );
    let _ = writeln!(m, "kura_ingested_bytes_total {}", ingested.bytes.load(Ordering::Relaxed));
    family(
        &mut m,
        "kura_ingested_chunks_total",
        "counter",
        "Chunks new to the store that uploads stored since this server started.",
    );
    let _ = writeln!(m, "kura_ingested_chunks_total {}", ingested.chunks.load(Ordering::Relaxed));

    family(&mut m, "kura_store_bytes", "gauge", "Bytes of the chunk files in the store (encoded, compressed).");
    let _ = writeln!(m, "kura_store_bytes {}", o.store.bytes);
    family(&mut m, "kura_store_chunks", "gauge", "Chunk files in the store.");
    let _ = writeln!(m, "kura_store_chunks {}", o.store.chunks);
    family(&mut m, "kura_snapshots", "gauge", "Committed snapshots in the catalog.");
    let _ = writeln!(m, "kura_snapshots {}", o.snapshots.count);
    family(&mut m, "kura_snapshot_logical_bytes", "gauge", "Sum of the used bytes of every committed snapshot.");
    let _ = writeln!(m, "kura_snapshot_logical_bytes {}", o.snapshots.logical_bytes);
    family(
        &mut m,
        "kura_dedup_ratio",
        "gauge",
        "kura_snapshot_logical_bytes / kura_store_bytes (deduplication and compression; NaN while the store is empty).",
    );
    let _ = writeln!(m, "kura_dedup_ratio {}", o.dedup_ratio().map(|r| r.to_string()).unwrap_or_else(|| "NaN".into()));

    family(&mut m, "kura_hosts", "gauge", "Hosts in the catalog.");
    let _ = writeln!(m, "kura_hosts {}", o.hosts.len());
    family(&mut m, "kura_hosts_stale", "gauge", "Hosts without a committed snapshot in the last 35 days.");
    let _ = writeln!(m, "kura_hosts_stale {}", o.hosts.iter().filter(|h| o.is_stale(h)).count());
    family(
        &mut m,
        "kura_host_last_snapshot_timestamp_seconds",
        "gauge",
        "Creation time of each host's newest committed snapshot (hosts without one are absent).",
    );
    for h in &o.hosts {
        if let Some(s) = &h.last_snapshot {
            let _ =
                writeln!(m, "kura_host_last_snapshot_timestamp_seconds{{host=\"{}\"}} {}", label(&h.name), s.created);
        }
    }
    family(
        &mut m,
        "kura_snapshot_boot_test_last_success_timestamp",
        "gauge",
        "When each host's newest passed boot test of one of its snapshots finished (hosts without one are absent).",
    );
    for (host, t) in &o.boot_successes {
        let _ = writeln!(m, "kura_snapshot_boot_test_last_success_timestamp{{host=\"{}\"}} {t}", label(host));
    }
    m
}

/// A label value: backslash, double quote and line feed escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalogs::db::{JobDuration, JobState, SnapshotTotals};
    use kura_catalogs::StoreUsage;

    #[test]
    fn exposition_format() {
        let o = Overview {
            now: 0,
            hosts: vec![],
            active: vec![],
            failures: vec![],
            job_counts: vec![],
            durations: vec![
                JobDuration { kind: JobKind::Capture, state: JobState::Failed, seconds: 30 },
                JobDuration { kind: JobKind::Capture, state: JobState::Succeeded, seconds: 400 },
            ],
            snapshots: SnapshotTotals { count: 2, logical_bytes: 1000 },
            store: StoreUsage { chunks: 3, bytes: 250 },
            boot_successes: vec![("web01".into(), 1_700_000_000)],
            boot_newest: vec![],
            replication: vec![],
            copies: Default::default(),
            copies_wanted: Default::default(),
        };
        let ing = Ingested::default();
        ing.add(250);
        let text = render(&o, &ing, 5);
        for line in [
            "kura_job_duration_seconds_bucket{kind=\"capture\",le=\"60\"} 1",
            "kura_job_duration_seconds_bucket{kind=\"capture\",le=\"900\"} 2",
            "kura_job_duration_seconds_bucket{kind=\"capture\",le=\"+Inf\"} 2",
            "kura_job_duration_seconds_sum{kind=\"capture\"} 430",
            "kura_job_duration_seconds_count{kind=\"restore\"} 0",
            "kura_ingested_bytes_total 250",
            "kura_dedup_ratio 4",
            "kura_store_chunks 3",
            "kura_snapshot_boot_test_last_success_timestamp{host=\"web01\"} 1700000000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
