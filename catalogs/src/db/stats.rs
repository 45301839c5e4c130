//! Read-only summaries of the catalog for operations: the status page and the Prometheus
//! metrics (`server/src/api/web.rs`, `server/src/api/metrics.rs`). Nothing here changes the
//! catalog; every method is one short read.

use super::jobs::{self, Job, JobKind, JobState};
use super::snapshots::{Snapshot, SnapshotState};
use super::{Catalog, Result, UnixTime};
use rusqlite::params;
use serde::Serialize;
use std::collections::HashMap;

/// A host and its last good snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub group: Option<String>,
    /// The host's newest committed snapshot (by creation time, then id), if any.
    pub last_snapshot: Option<Snapshot>,
}

/// How many jobs of one kind are in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JobCount {
    pub kind: JobKind,
    pub state: JobState,
    pub count: u64,
}

/// One finished job's run time (`finished - started`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JobDuration {
    pub kind: JobKind,
    pub state: JobState,
    pub seconds: u64,
}

/// Committed snapshots, counted and added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotTotals {
    pub count: u64,
    /// Sum of `used_bytes` of every committed snapshot: the data the snapshots describe, as if
    /// each were stored whole and uncompressed (the numerator of the deduplication ratio).
    pub logical_bytes: u64,
}

impl Catalog {
    /// Every host, by name, with its last good snapshot.
    pub fn host_status(&self) -> Result<Vec<HostStatus>> {
        let hosts = self.list_hosts()?;
        let mut newest: HashMap<String, Snapshot> = HashMap::new();
        for s in self.list_snapshots(None)? {
            if s.state != SnapshotState::Committed {
                continue;
            }
            let newer = newest.get(&s.host).is_none_or(|n| (s.created, &s.id) > (n.created, &n.id));
            if newer {
                newest.insert(s.host.clone(), s);
            }
        }
        Ok(hosts
            .into_iter()
            .map(|h| HostStatus { last_snapshot: newest.remove(&h.name), name: h.name, group: h.group })
            .collect())
    }

    /// Queued and running jobs, oldest first.
    pub fn active_jobs(&self) -> Result<Vec<Job>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("{} WHERE j.state IN ('queued', 'running') ORDER BY j.id", jobs::SELECT))?;
            let rows = stmt.query_map([], jobs::from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Jobs that failed at or after `since`, newest first, at most `limit`.
    pub fn failed_jobs_since(&self, since: UnixTime, limit: usize) -> Result<Vec<Job>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{} WHERE j.state = 'failed' AND j.finished >= ?1 ORDER BY j.finished DESC, j.id DESC LIMIT ?2",
                jobs::SELECT
            ))?;
            let rows = stmt.query_map(params![since, limit], jobs::from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The number of jobs for every (kind, state) pair, zeros included, in declaration order.
    pub fn job_counts(&self) -> Result<Vec<JobCount>> {
        let counted: HashMap<(JobKind, JobState), u64> = self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state")?;
            let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        let mut out = Vec::new();
        for &kind in JobKind::ALL {
            for &state in JobState::ALL {
                out.push(JobCount { kind, state, count: counted.get(&(kind, state)).copied().unwrap_or(0) });
            }
        }
        Ok(out)
    }

    /// Run times of the jobs that ran and ended (succeeded or failed), oldest first.
    pub fn job_durations(&self) -> Result<Vec<JobDuration>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, state, CASE WHEN finished > started THEN finished - started ELSE 0 END FROM jobs \
                 WHERE state IN ('succeeded', 'failed') AND started IS NOT NULL AND finished IS NOT NULL \
                 ORDER BY id",
            )?;
            let rows =
                stmt.query_map([], |r| Ok(JobDuration { kind: r.get(0)?, state: r.get(1)?, seconds: r.get(2)? }))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Count and logical bytes of the committed snapshots.
    pub fn snapshot_totals(&self) -> Result<SnapshotTotals> {
        self.read(|conn| {
            conn.query_row(
                "SELECT count(*), CAST(coalesce(sum(used_bytes), 0) AS BIGINT) FROM snapshots WHERE state = 'committed'",
                [],
                |r| Ok(SnapshotTotals { count: r.get(0)?, logical_bytes: r.get(1)? }),
            )
        })
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::jobs::NewJob;
    use super::super::snapshots::tests::{host, new_snapshot};
    use super::super::testing::START;
    use super::*;

    fn capture(host: &str) -> NewJob {
        NewJob { kind: JobKind::Capture, host: host.into(), disk: None, snapshot: None, disks: None }
    }

    #[test]
    fn summaries_match_what_was_recorded() {
        let (cat, clock) = catalog();
        for h in ["a", "b", "c"] {
            host(&cat, h);
        }
        cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 100)).unwrap();
        cat.add_snapshot("t", &new_snapshot("00000000000000a2", "a", 300)).unwrap();
        cat.add_snapshot("t", &new_snapshot("00000000000000b1", "b", 200)).unwrap();
        cat.add_snapshot("t", &new_snapshot("00000000000000b2", "b", 400)).unwrap();
        // Being deleted: not "good", not counted.
        cat.mark_snapshot_deleting("t", "00000000000000b2").unwrap();
        let status = cat.host_status().unwrap();
        let last: Vec<(&str, Option<&str>)> =
            status.iter().map(|h| (h.name.as_str(), h.last_snapshot.as_ref().map(|s| s.id.as_str()))).collect();
        assert_eq!(last, [("a", Some("00000000000000a2")), ("b", Some("00000000000000b1")), ("c", None)]);
        assert_eq!(cat.snapshot_totals().unwrap(), SnapshotTotals { count: 3, logical_bytes: 3 << 20 });

        let j1 = cat.create_job("t", &capture("a")).unwrap().id;
        cat.start_job("t", j1).unwrap();
        clock.advance(90);
        cat.fail_job("t", j1, "disk gone").unwrap();
        let j2 = cat.create_job("t", &capture("b")).unwrap().id;
        cat.start_job("t", j2).unwrap();
        let j3 = cat.create_job("t", &capture("c")).unwrap().id;
        assert_eq!(cat.active_jobs().unwrap().iter().map(|j| j.id).collect::<Vec<_>>(), [j2, j3]);
        let failed = cat.failed_jobs_since(START, 10).unwrap();
        assert_eq!((failed.len(), failed[0].error.as_deref()), (1, Some("disk gone")));
        assert!(cat.failed_jobs_since(START + 91, 10).unwrap().is_empty());

        let counts = cat.job_counts().unwrap();
        assert_eq!(counts.len(), JobKind::ALL.len() * JobState::ALL.len());
        let count = |k, s| counts.iter().find(|c| c.kind == k && c.state == s).unwrap().count;
        assert_eq!(count(JobKind::Capture, JobState::Failed), 1);
        assert_eq!(count(JobKind::Capture, JobState::Running), 1);
        assert_eq!(count(JobKind::Capture, JobState::Queued), 1);
        assert_eq!(count(JobKind::Restore, JobState::Queued), 0);
        assert_eq!(
            cat.job_durations().unwrap(),
            [JobDuration { kind: JobKind::Capture, state: JobState::Failed, seconds: 90 }]
        );
    }
}
}
