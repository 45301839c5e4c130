//! The operational overview both the status page (`web`) and the Prometheus metrics
//! (`metrics`) show: hosts and their last good snapshot, active jobs, recent failures, job
//! counts and durations, store usage and the deduplication ratio, replication per remote and
//! each host's last snapshot's copies. Gathered in one place so
//! the page and the metrics cannot disagree.

use super::{ApiResult, AppState};
use kura_catalogs::db::{Backlog, HostStatus, Job, JobCount, JobDuration, SnapshotTotals, UnixTime};
use kura_catalogs::StoreUsage;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A host whose last good snapshot is older than this (or that has none) is stale.
pub const STALE_AFTER: i64 = 35 * 86_400;
/// Failures shown on the status page: those of the last 7 days.
pub const FAILURE_WINDOW: i64 = 7 * 86_400;
/// Failures listed at most.
pub const FAILURES_SHOWN: usize = 200;
/// How long a measured store usage is reused (walking `chunks/` is not free); a commit or a
/// garbage collection forgets it at once.
pub const USAGE_TTL: Duration = Duration::from_secs(10);

pub struct Overview {
    pub now: UnixTime,
    pub hosts: Vec<HostStatus>,
    pub active: Vec<Job>,
    pub failures: Vec<Job>,
    pub job_counts: Vec<JobCount>,
    pub durations: Vec<JobDuration>,
    pub snapshots: SnapshotTotals,
    pub store: StoreUsage,
    /// Each host's newest passed boot test (`kura verify --boot`): host, finish time.
    pub boot_successes: Vec<(String, UnixTime)>,
    /// Each host's newest boot test, passed or not (with its kept screenshot's name).
    pub boot_newest: Vec<(String, kura_catalogs::db::boot_tests::BootTest)>,
    /// What each remote still lacks (every remote, by name; `docs/dr.md`).
    pub replication: Vec<Backlog>,
    /// The remotes holding each snapshot that has copies.
    pub copies: HashMap<String, Vec<String>>,
    /// The remotes each host's snapshots should be copied to (by the rules).
    pub copies_wanted: HashMap<String, Vec<String>>,
}

impl Overview {
    /// Reads everything (blocking: call from `spawn_blocking`).
    pub fn gather(state: &AppState) -> ApiResult<Overview> {
        let c = &state.engine.catalog;
        let now = c.now();
        Ok(Overview {
            now,
            hosts: c.host_status()?,
            active: c.active_jobs()?,
            failures: c.failed_jobs_since(now - FAILURE_WINDOW, FAILURES_SHOWN)?,
            job_counts: c.job_counts()?,
            durations: c.job_durations()?,
            snapshots: c.snapshot_totals()?,
            store: store_usage(state)?,
            boot_successes: c.last_boot_success_by_host()?,
            boot_newest: c.newest_boot_test_by_host()?,
            replication: c.replication_backlog()?,
            copies: c.snapshot_copies()?,
            copies_wanted: c.replication_wanted()?,
        })
    }

    /// Seconds since the oldest snapshot a remote does not hold yet was queued (0: none).
    pub fn lag(&self, b: &Backlog) -> u64 {
        b.oldest_snapshot.map_or(0, |t| (self.now - t).max(0) as u64)
    }

    /// (copies, copies wanted) of snapshot `id` of `host`: this engine and its remotes.
    pub fn copies(&self, host: &str, id: &str) -> (usize, usize) {
        let copied: &[String] = self.copies.get(id).map(Vec::as_slice).unwrap_or_default();
        let mut wanted: Vec<&String> = self.copies_wanted.get(host).into_iter().flatten().chain(copied).collect();
        wanted.sort_unstable();
        wanted.dedup();
        (1 + copied.len(), 1 + wanted.len())
    }

    /// Seconds since the host's last good snapshot, if it has one.
    pub fn age(&self, h: &HostStatus) -> Option<i64> {
        h.last_snapshot.as_ref().map(|s| (self.now - s.created).max(0))
    }

    /// No good snapshot, or one older than [`STALE_AFTER`].
    pub fn is_stale(&self, h: &HostStatus) -> bool {
        self.age(h).is_none_or(|a| a > STALE_AFTER)
    }

    /// [`dedup_ratio`] of the catalog's snapshots over the store's chunks.
    pub fn dedup_ratio(&self) -> Option<f64> {
        dedup_ratio(self.snapshots.logical_bytes, self.store.bytes)
    }
}

/// The deduplication ratio: **logical bytes / stored bytes**, where
///
/// - *logical bytes* is the sum, over every committed snapshot in the catalog, of its
///   `used_bytes` (the bytes of the disk the snapshot holds: allocated filesystem blocks, boot
///   areas and partition tables — what copying each snapshot whole and uncompressed would
///   take), and
/// - *stored bytes* is the sum of the sizes of the chunk files in the store's `chunks/`
///   (encoded chunks: header plus compressed payload, each stored once however many
///   snapshots use it).
///
/// So it counts both deduplication and compression: 3.0 means the snapshots take a third of
/// what plain copies would. `None` while nothing is stored.
pub fn dedup_ratio(logical_bytes: u64, stored_bytes: u64) -> Option<f64> {
    (stored_bytes > 0).then(|| logical_bytes as f64 / stored_bytes as f64)
}

/// The store's usage, measured at most every [`USAGE_TTL`] (blocking).
pub fn store_usage(state: &AppState) -> ApiResult<StoreUsage> {
    if let Some((at, u)) = *state.engine.usage_cache.lock().expect("lock") {
        if at.elapsed() < USAGE_TTL {
            return Ok(u);
        }
    }
    let u = state.engine.store.usage()?;
    *state.engine.usage_cache.lock().expect("lock") = Some((Instant::now(), u));
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_logical_over_stored() {
        assert_eq!(dedup_ratio(300, 100), Some(3.0));
        assert_eq!(dedup_ratio(0, 100), Some(0.0));
        assert_eq!(dedup_ratio(100, 0), None);
    }
}
