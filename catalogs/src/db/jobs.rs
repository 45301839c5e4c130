//! Capture and restore jobs: their state machine, progress, and log lines.
//!
//! ```text
//! queued ──► running ──► succeeded
//!   │           ├──────► failed
//!   └───────────┴──────► cancelled
//! ```
//!
//! Every other transition is refused with [`CatalogError::InvalidTransition`]; `succeeded`,
//! `failed` and `cancelled` are final. A host has at most one queued or running job. A capture
//! job succeeds only by [`Catalog::commit_capture`], which records its snapshot in the same
//! transaction; a restore job names its snapshot when it is created.
//!
//! Each job keeps its newest [`JOB_LOG_CAP`] log lines; older ones are dropped as new ones
//! arrive. Progress and log lines are not audited; state changes are.

use super::error::{is_unique_violation, CatalogError, Result};
use super::hosts::{disk_id, host_id, normalize_mac};
use super::snapshots::{self, NewSnapshot, SnapshotState};
use super::sql::{Connection, OptionalExtension, Row};
use super::{audit, Catalog, UnixTime};
use rusqlite::params;
use serde_json::json;

/// Log lines kept per job (the newest).
pub const JOB_LOG_CAP: usize = 10_000;

pub use kura_protocol::jobs::{Job, JobKind, JobState, LogLevel, LogLine, NewJob};

pub(crate) const SELECT: &str =
    "SELECT j.id, j.kind, h.name, d.name, j.snapshot_id, j.state, j.done_bytes, j.total_bytes, \
     j.created, j.started, j.finished, j.error, j.disks FROM jobs j JOIN hosts h ON h.id = j.host_id \
     LEFT JOIN disks d ON d.id = j.disk_id";

pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        host: r.get(2)?,
        disk: r.get(3)?,
        snapshot: r.get(4)?,
        state: r.get(5)?,
        done_bytes: r.get(6)?,
        total_bytes: r.get(7)?,
        created: r.get(8)?,
        started: r.get(9)?,
        finished: r.get(10)?,
        error: r.get(11)?,
        disks: r.get(12)?,
    })
}

pub(crate) fn load(conn: &Connection, id: i64) -> Result<Job> {
    conn.query_row(&format!("{SELECT} WHERE j.id = ?1"), [id], from_row)
        .optional()?
        .ok_or_else(|| CatalogError::not_found("job", id))
}

fn unusual(conn: &Connection, id: i64) -> Result<Option<String>> {
    conn.query_row("SELECT unusual FROM jobs WHERE id = ?1", [id], |r| r.get(0))
}

/// Moves job `id` to `to` if the state machine allows it (inside the caller's transaction).
fn transition(
    conn: &Connection,
    now: UnixTime,
    actor: &str,
    id: i64,
    to: JobState,
    error: Option<&str>,
) -> Result<Job> {
    let job = load(conn, id)?;
    if !job.state.can_go_to(to) {
        return Err(CatalogError::InvalidTransition { job: id, from: job.state, to });
    }
    if to == JobState::Running {
        conn.execute("UPDATE jobs SET state = ?1, started = ?2 WHERE id = ?3", params![to, now, id])?;
    } else {
        conn.execute(
            "UPDATE jobs SET state = ?1, finished = ?2, error = ?3 WHERE id = ?4",
            params![to, now, error, id],
        )?;
    }
    let action = match to {
        JobState::Queued => "job.queue",
        JobState::Running => "job.start",
        JobState::Succeeded => "job.succeed",
        JobState::Failed => "job.fail",
        JobState::Cancelled => "job.cancel",
    };
    audit::append(conn, now, actor, action, &format!("job {id}"), json!({"from": job.state, "error": error}))?;
    load(conn, id)
}

/// Queues a job (inside the caller's transaction); see [`Catalog::create_job`].
pub(crate) fn insert(tx: &Connection, now: UnixTime, actor: &str, new: &NewJob) -> Result<Job> {
    let hid = host_id(tx, &new.host)?;
    let did = new.disk.as_deref().map(|d| disk_id(tx, hid, d)).transpose()?;
    match (new.kind, &new.snapshot) {
        (JobKind::Capture, Some(_)) => {
            return Err(CatalogError::Invalid("a capture job does not take a snapshot".into()));
        }
        (JobKind::Restore, None) => {
            return Err(CatalogError::Invalid("a restore job needs a snapshot".into()));
        }
        (JobKind::Restore, Some(s)) => {
            if snapshots::load(tx, s)?.state != SnapshotState::Committed {
                return Err(CatalogError::conflict("snapshot", s, "it is being deleted"));
            }
        }
        (JobKind::Capture, None) => {}
    }
    let id: i64 = tx
        .query_row(
            "INSERT INTO jobs (kind, host_id, disk_id, snapshot_id, state, created, disks) \
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6) RETURNING id",
            params![new.kind, hid, did, new.snapshot, now, new.disks],
            |r| r.get(0),
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                CatalogError::conflict("host", &new.host, "it already has a queued or running job")
            } else {
                e
            }
        })?;
    let detail =
        json!({"kind": new.kind, "host": new.host, "disk": new.disk, "snapshot": new.snapshot, "disks": new.disks});
    audit::append(tx, now, actor, "job.create", &format!("job {id}"), detail)?;
    load(tx, id)
}

/// Appends one log line to job `id` (inside the caller's transaction), dropping its oldest
/// beyond [`JOB_LOG_CAP`]; returns the line's id.
fn append_log(tx: &Connection, now: UnixTime, id: i64, level: LogLevel, message: &str) -> Result<i64> {
    let line: i64 = tx.query_row(
        "INSERT INTO job_log (job_id, time, level, message) VALUES (?1, ?2, ?3, ?4) RETURNING id",
        params![id, now, level, message],
        |r| r.get(0),
    )?;
    tx.execute(
        "DELETE FROM job_log WHERE job_id = ?1 AND id <= \
         (SELECT id FROM job_log WHERE job_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![id, JOB_LOG_CAP],
    )?;
    Ok(line)
}

impl Catalog {
    /// Queues a job. A restore needs a committed snapshot; a capture must not name one. A
    /// disk, if given, must belong to the host. Refused while the host has an active job.
    pub fn create_job(&self, actor: &str, new: &NewJob) -> Result<Job> {
        self.write(|tx, now| insert(tx, now, actor, new))
    }

    pub fn get_job(&self, id: i64) -> Result<Job> {
        self.read(|conn| load(conn, id))
    }

    /// The newest `limit` jobs of one host (or all), newest first.
    pub fn list_jobs(&self, host: Option<&str>, limit: usize) -> Result<Vec<Job>> {
        self.read(|conn| {
            let hid = host.map(|h| host_id(conn, h)).transpose()?;
            let mut stmt = conn.prepare_cached(&format!(
                "{SELECT} WHERE CAST(?1 AS BIGINT) IS NULL OR j.host_id = ?1 ORDER BY j.id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![hid, limit], from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The queued or running job of a host, if any.
    pub fn active_job_for_host(&self, host: &str) -> Result<Option<Job>> {
        self.read(|conn| {
            let hid = host_id(conn, host)?;
            conn.query_row(
                &format!("{SELECT} WHERE j.host_id = ?1 AND j.state IN ('queued', 'running')"),
                [hid],
                from_row,
            )
            .optional()
        })
    }

    /// The queued or running job of the host that owns `mac`, if any: what a machine booting
    /// from the network should do.
    pub fn active_job_for_mac(&self, mac: &str) -> Result<Option<Job>> {
        let mac = normalize_mac(mac)?;
        self.read(|conn| {
            conn.query_row(
                &format!(
                    "{SELECT} JOIN host_macs m ON m.host_id = j.host_id \
                         WHERE m.mac = ?1 AND j.state IN ('queued', 'running')"
                ),
                [mac],
                from_row,
            )
            .optional()
        })
    }

    /// `queued → running`.
    pub fn start_job(&self, actor: &str, id: i64) -> Result<Job> {
        self.write(|tx, now| transition(tx, now, actor, id, JobState::Running, None))
    }

    /// `running → failed`, with the error message.
    pub fn fail_job(&self, actor: &str, id: i64, error: &str) -> Result<Job> {
        self.write(|tx, now| transition(tx, now, actor, id, JobState::Failed, Some(error)))
    }

    /// `queued | running → cancelled`.
    pub fn cancel_job(&self, actor: &str, id: i64) -> Result<Job> {
        self.write(|tx, now| transition(tx, now, actor, id, JobState::Cancelled, None))
    }

    /// `running → succeeded` for a restore job. A capture job succeeds by
    /// [`Catalog::commit_capture`] instead.
    pub fn succeed_job(&self, actor: &str, id: i64) -> Result<Job> {
        self.write(|tx, now| {
            if load(tx, id)?.kind == JobKind::Capture {
                return Err(CatalogError::Invalid(format!("capture job {id} succeeds by committing its snapshot")));
            }
            transition(tx, now, actor, id, JobState::Succeeded, None)
        })
    }

    /// `running → succeeded` for a capture job, recording the snapshot it committed to the
    /// store (which must be of the job's host) in the same transaction.
    pub fn commit_capture(&self, actor: &str, id: i64, snapshot: &NewSnapshot) -> Result<Job> {
        self.commit_capture_holding(actor, id, snapshot, false)
    }

    /// [`Catalog::commit_capture`]; with `hold_unusual`, the snapshot of a job whose boot was
    /// unusual ([`Catalog::flag_job`]) is recorded unconfirmed (`kura serve
    /// --hold-unusual-captures`): restores do not pick it until it is confirmed
    /// ([`Catalog::confirm_snapshot`]). The job's log says so.
    pub fn commit_capture_holding(
        &self,
        actor: &str,
        id: i64,
        snapshot: &NewSnapshot,
        hold_unusual: bool,
    ) -> Result<Job> {
        self.write(|tx, now| {
            let job = load(tx, id)?;
            if job.kind != JobKind::Capture {
                return Err(CatalogError::Invalid(format!("job {id} is a {}, not a capture", job.kind)));
            }
            if !job.state.can_go_to(JobState::Succeeded) {
                return Err(CatalogError::InvalidTransition { job: id, from: job.state, to: JobState::Succeeded });
            }
            if snapshot.host != job.host {
                return Err(CatalogError::Invalid(format!(
                    "job {id} captures host {:?}, not {:?}",
                    job.host, snapshot.host
                )));
            }
            let unusual = if hold_unusual { unusual(tx, id)? } else { None };
            snapshots::insert(tx, now, actor, snapshot, unusual.is_none())?;
            if let Some(why) = unusual {
                let line = format!(
                    "snapshot {} is held unconfirmed: this job's boot was unusual ({why}); restores do not pick \
                     it until an operator confirms it (kura snapshot confirm {})",
                    snapshot.id, snapshot.id
                );
                append_log(tx, now, id, LogLevel::Warn, &line)?;
            }
            tx.execute("UPDATE jobs SET snapshot_id = ?1 WHERE id = ?2", params![snapshot.id, id])?;
            transition(tx, now, actor, id, JobState::Succeeded, None)
        })
    }

    /// Marks job `id`'s boot as unusual (a possible impostor asked for its token; the first
    /// reason is kept) and appends `message` to its log at level warn, in one transaction.
    pub fn flag_job(&self, id: i64, message: &str) -> Result<()> {
        self.write(|tx, now| {
            load(tx, id)?;
            tx.execute("UPDATE jobs SET unusual = coalesce(unusual, ?1) WHERE id = ?2", params![message, id])?;
            append_log(tx, now, id, LogLevel::Warn, message).map(|_| ())
        })
    }

    /// Why job `id`'s boot was unusual ([`Catalog::flag_job`]), if it was.
    pub fn job_unusual(&self, id: i64) -> Result<Option<String>> {
        self.read(|conn| {
            load(conn, id)?;
            unusual(conn, id)
        })
    }

    /// Records progress of a running job.
    pub fn set_job_progress(&self, id: i64, done_bytes: u64, total_bytes: Option<u64>) -> Result<()> {
        self.write(|conn, _| {
            let n = conn.execute(
                "UPDATE jobs SET done_bytes = ?1, total_bytes = ?2 WHERE id = ?3 AND state = 'running'",
                params![done_bytes, total_bytes, id],
            )?;
            if n == 0 {
                let job = load(conn, id)?;
                return Err(CatalogError::conflict("job", id, format!("it is {}, not running", job.state)));
            }
            Ok(())
        })
    }

    /// Appends a log line to a job, dropping its oldest beyond [`JOB_LOG_CAP`]. Returns the
    /// line's id (increasing; use it with [`Catalog::job_log`] to follow a log).
    pub fn append_job_log(&self, id: i64, level: LogLevel, message: &str) -> Result<i64> {
        self.write(|tx, now| {
            load(tx, id)?;
            append_log(tx, now, id, level, message)
        })
    }

    /// An agent's progress report, in one transaction: a queued job starts (`queued →
    /// running`), its progress is recorded, and `lines` are appended at level info. A job that
    /// is neither queued nor running refuses the whole report (conflict), changing nothing.
    pub fn report_progress(
        &self,
        actor: &str,
        id: i64,
        done_bytes: u64,
        total_bytes: Option<u64>,
        lines: &[String],
    ) -> Result<Job> {
        // The catalog stores integers as i64: a larger count is a client's mistake, not a fault.
        let fits = |what: &str, v: u64| {
            i64::try_from(v)
                .map_err(|_| CatalogError::Invalid(format!("{what} {v} is too large (at most {})", i64::MAX)))
        };
        let done_bytes = fits("done", done_bytes)?;
        let total_bytes = total_bytes.map(|t| fits("total", t)).transpose()?;
        self.write(|tx, now| {
            let job = load(tx, id)?;
            match job.state {
                JobState::Queued => {
                    transition(tx, now, actor, id, JobState::Running, None)?;
                }
                JobState::Running => {}
                other => return Err(CatalogError::conflict("job", id, format!("it is {other}, not running"))),
            }
            tx.execute(
                "UPDATE jobs SET done_bytes = ?1, total_bytes = ?2 WHERE id = ?3",
                params![done_bytes, total_bytes, id],
            )?;
            for line in lines {
                append_log(tx, now, id, LogLevel::Info, line)?;
            }
            load(tx, id)
        })
    }

    /// A job's failure, in one transaction: a queued job starts first (an agent that fails
    /// before its first report still ends its job), `error` goes into its log at level error,
    /// then `running → failed`. Any other state refuses it, changing nothing.
    pub fn fail_job_logged(&self, actor: &str, id: i64, error: &str) -> Result<Job> {
        self.write(|tx, now| {
            if load(tx, id)?.state == JobState::Queued {
                transition(tx, now, actor, id, JobState::Running, None)?;
            }
            let job = load(tx, id)?;
            if !job.state.can_go_to(JobState::Failed) {
                return Err(CatalogError::InvalidTransition { job: id, from: job.state, to: JobState::Failed });
            }
            append_log(tx, now, id, LogLevel::Error, error)?;
            transition(tx, now, actor, id, JobState::Failed, Some(error))
        })
    }

    /// Up to `limit` log lines of a job with ids greater than `after` (all if `None`), oldest
    /// first.
    pub fn job_log(&self, id: i64, after: Option<i64>, limit: usize) -> Result<Vec<LogLine>> {
        self.read(|conn| {
            load(conn, id)?;
            let mut stmt = conn.prepare_cached(
                "SELECT id, time, level, message FROM job_log WHERE job_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![id, after.unwrap_or(0), limit], |r| {
                Ok(LogLine { id: r.get(0)?, time: r.get(1)?, level: r.get(2)?, message: r.get(3)? })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::snapshots::tests::{host, new_snapshot};
    use super::super::testing::START;
    use super::super::NewDisk;
    use super::*;

    fn capture(host: &str) -> NewJob {
        NewJob { kind: JobKind::Capture, host: host.into(), disk: None, snapshot: None, disks: None }
    }

    /// Drives a fresh job into `state` along allowed transitions.
    fn job_in(cat: &Catalog, host: &str, state: JobState) -> i64 {
        let id = cat.create_job("t", &capture(host)).unwrap().id;
        match state {
            JobState::Queued => {}
            JobState::Running => {
                cat.start_job("t", id).unwrap();
            }
            JobState::Succeeded => {
                cat.start_job("t", id).unwrap();
                let snap = new_snapshot(&format!("{:016x}", id), host, START);
                cat.commit_capture("t", id, &snap).unwrap();
            }
            JobState::Failed => {
                cat.start_job("t", id).unwrap();
                cat.fail_job("t", id, "boom").unwrap();
            }
            JobState::Cancelled => {
                cat.cancel_job("t", id).unwrap();
            }
        }
        assert_eq!(cat.get_job(id).unwrap().state, state);
        id
    }

    fn try_go(cat: &Catalog, id: i64, to: JobState) -> Result<Job> {
        match to {
            JobState::Queued => {
                // There is no API back to queued; check the state machine refuses it.
                let from = cat.get_job(id)?.state;
                assert!(!from.can_go_to(JobState::Queued));
                Err(CatalogError::InvalidTransition { job: id, from, to })
            }
            JobState::Running => cat.start_job("t", id),
            JobState::Succeeded => cat.commit_capture("t", id, &new_snapshot(&format!("{:016x}", 0xf000 + id), "h", 1)),
            JobState::Failed => cat.fail_job("t", id, "x"),
            JobState::Cancelled => cat.cancel_job("t", id),
        }
    }

    #[test]
    fn state_machine_allows_exactly_the_documented_transitions() {
        use JobState::*;
        let allowed =
            [(Queued, Running), (Running, Succeeded), (Running, Failed), (Queued, Cancelled), (Running, Cancelled)];
        for &from in JobState::ALL {
            for &to in JobState::ALL {
                assert_eq!(from.can_go_to(to), allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
        let (cat, _) = catalog();
        host(&cat, "h");
        for &from in JobState::ALL {
            for &to in JobState::ALL {
                let id = job_in(&cat, "h", from);
                let result = try_go(&cat, id, to);
                if allowed.contains(&(from, to)) {
                    assert_eq!(result.unwrap().state, to, "{from} -> {to}");
                } else {
                    match result {
                        Err(CatalogError::InvalidTransition { job, from: f, to: t }) => {
                            assert_eq!((job, f, t), (id, from, to));
                        }
                        other => panic!("{from} -> {to}: expected InvalidTransition, got {other:?}"),
                    }
                    assert_eq!(cat.get_job(id).unwrap().state, from, "a refused transition changed the job");
                }
                // Leave the host free for the next job.
                if cat.get_job(id).unwrap().state.is_active() {
                    cat.cancel_job("t", id).unwrap();
                }
            }
        }
        let e = CatalogError::InvalidTransition { job: 7, from: Succeeded, to: Running };
        assert_eq!(e.to_string(), "job 7 cannot go from succeeded to running");
    }

    #[test]
    fn timestamps_and_errors_are_recorded() {
        let (cat, clock) = catalog();
        host(&cat, "h");
        let job = cat.create_job("t", &capture("h")).unwrap();
        assert_eq!((job.state, job.created, job.started, job.finished), (JobState::Queued, START, None, None));
        clock.advance(10);
        let job = cat.start_job("t", job.id).unwrap();
        assert_eq!(job.started, Some(START + 10));
        cat.set_job_progress(job.id, 500, Some(1000)).unwrap();
        clock.advance(10);
        let job = cat.fail_job("t", job.id, "disk read error at 0x1000").unwrap();
        assert_eq!((job.done_bytes, job.total_bytes), (500, Some(1000)));
        assert_eq!((job.finished, job.error.as_deref()), (Some(START + 20), Some("disk read error at 0x1000")));
        assert!(matches!(cat.set_job_progress(job.id, 600, None), Err(CatalogError::Conflict { .. })));
        assert!(matches!(cat.set_job_progress(999, 600, None), Err(CatalogError::NotFound { .. })));
        let actions: Vec<String> = cat.list_audit(10).unwrap().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["job.fail", "job.start", "job.create", "host.create"]);
    }

    #[test]
    fn capture_commits_its_snapshot_and_restore_needs_one() {
        let (cat, _) = catalog();
        host(&cat, "h");
        host(&cat, "other");
        cat.put_disk("t", "h", &NewDisk { name: "sda".into(), serial: None, size: 10 }).unwrap();
        let job = cat.create_job("t", &NewJob { disk: Some("sda".into()), ..capture("h") }).unwrap();
        assert_eq!(job.disk.as_deref(), Some("sda"));
        cat.start_job("t", job.id).unwrap();
        assert!(matches!(cat.succeed_job("t", job.id), Err(CatalogError::Invalid(_))));
        let wrong_host = new_snapshot("00000000000000c1", "other", START);
        assert!(matches!(cat.commit_capture("t", job.id, &wrong_host), Err(CatalogError::Invalid(_))));
        let job = cat.commit_capture("t", job.id, &new_snapshot("00000000000000c1", "h", START)).unwrap();
        assert_eq!((job.state, job.snapshot.as_deref()), (JobState::Succeeded, Some("00000000000000c1")));
        assert_eq!(cat.get_snapshot("00000000000000c1").unwrap().host, "h");

        let restore = |snapshot: Option<&str>| NewJob {
            kind: JobKind::Restore,
            host: "other".into(),
            disk: None,
            snapshot: snapshot.map(Into::into),
            disks: None,
        };
        assert!(matches!(cat.create_job("t", &restore(None)), Err(CatalogError::Invalid(_))));
        assert!(matches!(cat.create_job("t", &restore(Some("00000000000000ff"))), Err(CatalogError::NotFound { .. })));
        let with_snapshot = NewJob { snapshot: Some("00000000000000c1".into()), ..capture("h") };
        assert!(matches!(cat.create_job("t", &with_snapshot), Err(CatalogError::Invalid(_))));
        let r = cat.create_job("t", &restore(Some("00000000000000c1"))).unwrap();
        // The snapshot cannot be deleted while the restore is active.
        assert!(matches!(cat.mark_snapshot_deleting("t", "00000000000000c1"), Err(CatalogError::Conflict { .. })));
        cat.start_job("t", r.id).unwrap();
        assert_eq!(cat.succeed_job("t", r.id).unwrap().state, JobState::Succeeded);
        cat.mark_snapshot_deleting("t", "00000000000000c1").unwrap();
        assert!(matches!(cat.create_job("t", &restore(Some("00000000000000c1"))), Err(CatalogError::Conflict { .. })));
    }

    #[test]
    fn an_unusual_boot_holds_its_capture_unconfirmed_only_when_asked() {
        let (cat, _) = catalog();
        host(&cat, "h");
        // A normal boot: confirmed, whatever the setting.
        let normal = cat.create_job("t", &capture("h")).unwrap();
        cat.start_job("t", normal.id).unwrap();
        assert_eq!(cat.job_unusual(normal.id).unwrap(), None);
        cat.commit_capture_holding("t", normal.id, &new_snapshot("00000000000000d1", "h", START), true).unwrap();
        assert!(cat.get_snapshot("00000000000000d1").unwrap().confirmed);

        // Flagged twice: the first reason is kept, both lines are logged.
        let flagged = cat.create_job("t", &capture("h")).unwrap();
        cat.flag_job(flagged.id, "possible impostor: first").unwrap();
        cat.flag_job(flagged.id, "possible impostor: second").unwrap();
        assert_eq!(cat.job_unusual(flagged.id).unwrap().as_deref(), Some("possible impostor: first"));
        let warns: Vec<String> = cat
            .job_log(flagged.id, None, 10)
            .unwrap()
            .into_iter()
            .filter(|l| l.level == LogLevel::Warn)
            .map(|l| l.message)
            .collect();
        assert_eq!(warns, ["possible impostor: first", "possible impostor: second"]);
        assert!(matches!(cat.flag_job(999, "x"), Err(CatalogError::NotFound { .. })));
        cat.start_job("t", flagged.id).unwrap();
        let job =
            cat.commit_capture_holding("t", flagged.id, &new_snapshot("00000000000000d2", "h", START), true).unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        let held = cat.get_snapshot("00000000000000d2").unwrap();
        assert!(!held.confirmed, "{held:?}");
        let log = cat.job_log(flagged.id, None, 10).unwrap();
        assert!(log.iter().any(|l| l.message.contains("held unconfirmed") && l.message.contains("first")), "{log:?}");

        // The same unusual boot without the setting: confirmed.
        let off = cat.create_job("t", &capture("h")).unwrap();
        cat.flag_job(off.id, "possible impostor").unwrap();
        cat.start_job("t", off.id).unwrap();
        cat.commit_capture_holding("t", off.id, &new_snapshot("00000000000000d3", "h", START), false).unwrap();
        assert!(cat.get_snapshot("00000000000000d3").unwrap().confirmed);
    }

    #[test]
    fn one_active_job_per_host() {
        let (cat, _) = catalog();
        host(&cat, "h");
        cat.add_mac("t", "h", "aa:00:00:00:00:01").unwrap();
        assert!(cat.active_job_for_mac("aa:00:00:00:00:01").unwrap().is_none());
        let a = cat.create_job("t", &capture("h")).unwrap();
        let e = cat.create_job("t", &capture("h")).unwrap_err();
        assert!(e.to_string().contains("already has a queued or running job"), "{e}");
        assert_eq!(cat.active_job_for_host("h").unwrap().unwrap().id, a.id);
        assert_eq!(cat.active_job_for_mac("AA-00-00-00-00-01").unwrap().unwrap().id, a.id);
        let e = cat.delete_host("t", "h").unwrap_err();
        assert!(matches!(e, CatalogError::Conflict { .. }));
        cat.cancel_job("t", a.id).unwrap();
        assert!(cat.active_job_for_host("h").unwrap().is_none());
        let b = cat.create_job("t", &capture("h")).unwrap();
        assert_eq!(cat.list_jobs(Some("h"), 10).unwrap().iter().map(|j| j.id).collect::<Vec<_>>(), [b.id, a.id]);
        assert_eq!(cat.list_jobs(None, 1).unwrap().len(), 1);
        assert!(matches!(cat.get_job(12345), Err(CatalogError::NotFound { what: "job", .. })));
        cat.cancel_job("t", b.id).unwrap();
        // Finished jobs go with the host.
        cat.delete_host("t", "h").unwrap();
        assert!(matches!(cat.get_job(a.id), Err(CatalogError::NotFound { .. })));
    }

    #[test]
    fn job_log_is_capped_and_followable() {
        let (cat, _) = catalog();
        host(&cat, "h");
        let id = cat.create_job("t", &capture("h")).unwrap().id;
        let first = cat.append_job_log(id, LogLevel::Info, "line 0").unwrap();
        for i in 1..JOB_LOG_CAP + 5 {
            cat.append_job_log(id, LogLevel::Debug, &format!("line {i}")).unwrap();
        }
        let lines = cat.job_log(id, None, usize::MAX >> 1).unwrap();
        assert_eq!(lines.len(), JOB_LOG_CAP);
        assert_eq!(lines[0].message, "line 5");
        assert_eq!(lines.last().unwrap().message, format!("line {}", JOB_LOG_CAP + 4));
        let tail = cat.job_log(id, Some(lines[lines.len() - 3].id), 10).unwrap();
        assert_eq!(tail.len(), 2);
        assert!(tail[0].id > first);
        assert!(matches!(cat.append_job_log(999, LogLevel::Info, "x"), Err(CatalogError::NotFound { .. })));
        // Log lines are not audited.
        assert_eq!(cat.list_audit(100).unwrap().len(), 2);
    }

    #[test]
    fn a_progress_report_starts_records_and_logs_in_one_transaction() {
        let (cat, _) = catalog();
        host(&cat, "h");
        let id = cat.create_job("t", &capture("h")).unwrap().id;
        let lines = vec!["reading".to_string(), "writing".to_string()];
        let job = cat.report_progress("agent", id, 10, Some(100), &lines).unwrap();
        assert_eq!((job.state, job.done_bytes, job.total_bytes), (JobState::Running, 10, Some(100)));
        assert!(job.started.is_some());
        let log: Vec<_> = cat.job_log(id, None, 10).unwrap().into_iter().map(|l| (l.level, l.message)).collect();
        assert_eq!(log, [(LogLevel::Info, "reading".to_string()), (LogLevel::Info, "writing".to_string())]);
        // A running job only records; an ended one refuses the whole report.
        assert_eq!(cat.report_progress("agent", id, 20, None, &[]).unwrap().done_bytes, 20);
        cat.cancel_job("t", id).unwrap();
        let e = cat.report_progress("agent", id, 30, None, &["late".to_string()]).unwrap_err();
        assert!(matches!(e, CatalogError::Conflict { .. }), "{e}");
        assert_eq!(cat.get_job(id).unwrap().done_bytes, 20);
        assert_eq!(cat.job_log(id, None, 10).unwrap().len(), 2, "nothing of a refused report is kept");
    }

    #[test]
    fn progress_beyond_i64_is_refused_and_changes_nothing() {
        let (cat, _) = catalog();
        host(&cat, "h");
        let id = cat.create_job("t", &capture("h")).unwrap().id;
        for (done, total) in [(u64::MAX, None), (1, Some(u64::MAX)), (i64::MAX as u64 + 1, Some(1))] {
            let e = cat.report_progress("agent", id, done, total, &["x".to_string()]).unwrap_err();
            assert!(matches!(e, CatalogError::Invalid(_)) && e.to_string().contains("too large"), "{e}");
        }
        let job = cat.get_job(id).unwrap();
        assert_eq!((job.state, job.done_bytes), (JobState::Queued, 0), "a refused report started the job");
        let job = cat.report_progress("agent", id, i64::MAX as u64, Some(i64::MAX as u64), &[]).unwrap();
        assert_eq!(job.done_bytes, i64::MAX as u64);
    }

    #[test]
    fn a_logged_failure_starts_a_queued_job_and_changes_nothing_when_refused() {
        let (cat, _) = catalog();
        host(&cat, "h");
        let id = cat.create_job("t", &capture("h")).unwrap().id;
        let job = cat.fail_job_logged("agent", id, "no disk").unwrap();
        assert_eq!((job.state, job.error.as_deref()), (JobState::Failed, Some("no disk")));
        assert!(job.started.is_some());
        let log = cat.job_log(id, None, 10).unwrap();
        assert_eq!((log.len(), log[0].level, log[0].message.as_str()), (1, LogLevel::Error, "no disk"));
        let e = cat.fail_job_logged("agent", id, "again").unwrap_err();
        assert!(matches!(e, CatalogError::InvalidTransition { .. }), "{e}");
        assert_eq!(cat.job_log(id, None, 10).unwrap().len(), 1);
    }
}
}
