//! Schedules: capture jobs at the due times of a cron expression (UTC), their runs, and the
//! per-host entries of each run. This module owns the records and their transitions; the
//! policy that drives them (when to record a run, the catch-up window, the caps, calling the
//! hooks) is the engine's scheduler (`server/src/scheduler.rs`).
//!
//! - A **schedule** targets one host or every host of a group (resolved when a run is
//!   recorded), with a 5-field cron expression ([`crate::cron`]), an optional retention rule
//!   applied to a host after its scheduled capture succeeds, a concurrency cap, a retry count
//!   and a retry delay. `evaluated_until` is the due time up to which it has been evaluated.
//! - A **run** is one due time of one schedule, unique by `(schedule, due)`: recording a due
//!   time again (a restart within the due minute) is a no-op. `running → done` when every host
//!   entry is final, with a JSON [`RunSummary`]; a due time that was not run (past the catch-up
//!   window) is recorded directly as `missed`.
//! - A **host entry** of a run:
//!
//! ```text
//! pending ──► released(job) ──► succeeded
//!    │  ▲            │
//!    │  └─ retrying ◄┤ (the job failed or was cancelled, attempts ≤ retries; after the delay)
//!    │               └──────► failed (attempts exhausted)
//!    └──► skipped (the host had an active job, or no longer exists)
//! ```
//!
//! Releasing an entry creates its capture job in the same transaction, so an entry is never
//! released without a job nor a job created without its entry. Every transition writes an
//! audit row (`schedule.create`, `schedule.delete`, `schedule.run`, `schedule.missed`,
//! `schedule.release`, `schedule.skip`, `schedule.retry`, `schedule.host_failed`,
//! `schedule.host_succeeded`, `schedule.run_done`).

use super::error::{is_unique_violation, CatalogError, Result};
use super::hosts::validate_name;
use super::jobs::{self, Job, JobKind, JobState, NewJob};
use super::sql::{Connection, OptionalExtension, Row};
use super::{audit, Catalog, UnixTime};
use crate::cron::Cron;
use crate::retention::Rule;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::json;

text_enum! {
    /// What a schedule's target names.
    pub enum TargetKind { Host => "host", Group => "group" }
}

text_enum! {
    pub enum RunState { Running => "running", Done => "done", Missed => "missed" }
}

text_enum! {
    pub enum HostRunState {
        Pending => "pending",
        Released => "released",
        Retrying => "retrying",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
    }
}

impl HostRunState {
    /// Succeeded, failed or skipped.
    pub fn is_final(self) -> bool {
        matches!(self, HostRunState::Succeeded | HostRunState::Failed | HostRunState::Skipped)
    }
}

/// Default per-schedule concurrency cap.
pub const DEFAULT_MAX_CONCURRENT: u32 = 5;
/// Default retry delay, seconds.
pub const DEFAULT_RETRY_DELAY: i64 = 1800;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub id: i64,
    pub name: String,
    pub target_kind: TargetKind,
    pub target: String,
    pub cron: String,
    /// Applied to each host whose scheduled capture succeeded.
    pub retention: Option<Rule>,
    /// At most this many of the schedule's jobs queued or running at once.
    pub max_concurrent: u32,
    /// Further attempts after a failed one.
    pub retries: u32,
    /// Seconds between a failed attempt and the next.
    pub retry_delay: i64,
    pub enabled: bool,
    pub created: UnixTime,
    /// Due times up to and including this one have been recorded.
    pub evaluated_until: UnixTime,
    /// Each snapshot the schedule's captures commit is boot-tested by the engine.
    pub boot_test: bool,
    /// A console text that also means the boot test's system came up.
    pub boot_test_expect: Option<String>,
}

fn default_max_concurrent() -> u32 {
    DEFAULT_MAX_CONCURRENT
}

fn default_retry_delay() -> i64 {
    DEFAULT_RETRY_DELAY
}

fn default_enabled() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
pub struct NewSchedule {
    /// Unique; default: the target's name (with `-2`, `-3`... if taken).
    #[serde(default)]
    pub name: Option<String>,
    /// A host name or a group name.
    pub target: String,
    /// Which one `target` is; default: a host if one has that name, else a group that has hosts.
    #[serde(default)]
    pub target_kind: Option<TargetKind>,
    pub cron: String,
    #[serde(default)]
    pub retention: Option<Rule>,
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    #[serde(default)]
    pub retries: u32,
    #[serde(default = "default_retry_delay")]
    pub retry_delay: i64,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Boot-test each snapshot the schedule's captures commit.
    #[serde(default)]
    pub boot_test: bool,
    #[serde(default)]
    pub boot_test_expect: Option<String>,
}

/// One host of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunHost {
    pub host: String,
    pub state: HostRunState,
    /// The latest capture job released for it.
    pub job: Option<i64>,
    pub attempts: u32,
    /// A retrying entry is released again no earlier than this.
    pub not_before: Option<UnixTime>,
    /// The last failure (or why it was skipped).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleRun {
    pub id: i64,
    pub schedule_id: i64,
    pub schedule: String,
    pub due: UnixTime,
    pub state: RunState,
    pub created: UnixTime,
    pub finished: Option<UnixTime>,
    pub summary: Option<RunSummary>,
    pub hosts: Vec<RunHost>,
}

/// A host that did not get its capture in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFailure {
    pub host: String,
    /// `failed` or `skipped`.
    pub state: HostRunState,
    pub attempts: u32,
    pub error: Option<String>,
    /// The last job released for it.
    pub job: Option<i64>,
}

/// The outcome of a finished (or missed) run, stored with it and handed to the run observers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run: i64,
    pub schedule_id: i64,
    pub schedule: String,
    pub due: UnixTime,
    /// `done` or `missed`.
    pub state: RunState,
    pub hosts: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    /// Failed and skipped hosts, by name.
    pub failures: Vec<HostFailure>,
}

/// A host entry the scheduler may release now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Releasable {
    pub run: i64,
    pub schedule_id: i64,
    pub host: String,
    pub attempts: u32,
}

/// What releasing an entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// A capture job was queued for the host.
    Released(Job),
    /// The host was skipped (it had an active job, or no longer exists); the reason.
    Skipped(String),
}

/// What became of a released entry whose job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub run: i64,
    pub schedule_id: i64,
    pub host: String,
    pub job: Option<i64>,
    pub attempts: u32,
    /// `succeeded`, `retrying` or `failed`.
    pub state: HostRunState,
    pub error: Option<String>,
    /// The snapshot a succeeded capture committed.
    pub snapshot: Option<String>,
}

/// Due times recorded by [`Catalog::record_due_times`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// New running runs (ids).
    pub started: Vec<i64>,
    /// New missed runs.
    pub missed: Vec<RunSummary>,
}

/// A released entry whose job ended: run, host, job, attempts, schedule, job state, job error,
/// job snapshot.
type EndedEntry = (i64, String, Option<i64>, u32, i64, Option<JobState>, Option<String>, Option<String>);

const SELECT: &str = "SELECT id, name, target_kind, target, cron, keep_last, keep_monthly, max_concurrent, \
     retries, retry_delay, enabled, created, evaluated_until, boot_test, boot_test_expect FROM schedules";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Schedule> {
    let keep: (Option<u32>, Option<u32>) = (r.get(5)?, r.get(6)?);
    Ok(Schedule {
        id: r.get(0)?,
        name: r.get(1)?,
        target_kind: r.get(2)?,
        target: r.get(3)?,
        cron: r.get(4)?,
        retention: match keep {
            (Some(keep_last), Some(keep_monthly)) => Some(Rule { keep_last, keep_monthly }),
            _ => None,
        },
        max_concurrent: r.get(7)?,
        retries: r.get(8)?,
        retry_delay: r.get(9)?,
        enabled: r.get(10)?,
        created: r.get(11)?,
        evaluated_until: r.get(12)?,
        boot_test: r.get(13)?,
        boot_test_expect: r.get(14)?,
    })
}

/// The schedule with id `key` (if it is a number naming one), else named `key`.
fn load(conn: &Connection, key: &str) -> Result<Schedule> {
    if let Ok(id) = key.parse::<i64>() {
        if let Some(s) = conn.query_row(&format!("{SELECT} WHERE id = ?1"), [id], from_row).optional()? {
            return Ok(s);
        }
    }
    conn.query_row(&format!("{SELECT} WHERE name = ?1"), [key], from_row)
        .optional()?
        .ok_or_else(|| CatalogError::not_found("schedule", key))
}

fn load_id(conn: &Connection, id: i64) -> Result<Schedule> {
    conn.query_row(&format!("{SELECT} WHERE id = ?1"), [id], from_row)
        .optional()?
        .ok_or_else(|| CatalogError::not_found("schedule", id))
}

/// The hosts a schedule targets now, sorted by name.
fn target_hosts(conn: &Connection, s: &Schedule) -> Result<Vec<String>> {
    let sql = match s.target_kind {
        TargetKind::Host => "SELECT name FROM hosts WHERE name = ?1",
        TargetKind::Group => "SELECT name FROM hosts WHERE host_group = ?1 ORDER BY name",
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([&s.target], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn run_hosts(conn: &Connection, run: i64) -> Result<Vec<RunHost>> {
    let mut stmt = conn.prepare_cached(
        "SELECT host, state, job_id, attempts, not_before, error FROM schedule_run_hosts WHERE run_id = ?1 \
         ORDER BY host",
    )?;
    let rows = stmt.query_map([run], |r| {
        Ok(RunHost {
            host: r.get(0)?,
            state: r.get(1)?,
            job: r.get(2)?,
            attempts: r.get(3)?,
            not_before: r.get(4)?,
            error: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn summarise(conn: &Connection, run: i64, schedule: &Schedule, due: UnixTime, state: RunState) -> Result<RunSummary> {
    let hosts = run_hosts(conn, run)?;
    let count = |st: HostRunState| hosts.iter().filter(|h| h.state == st).count() as u32;
    Ok(RunSummary {
        run,
        schedule_id: schedule.id,
        schedule: schedule.name.clone(),
        due,
        state,
        hosts: hosts.len() as u32,
        succeeded: count(HostRunState::Succeeded),
        failed: count(HostRunState::Failed),
        skipped: count(HostRunState::Skipped),
        failures: hosts
            .iter()
            .filter(|h| matches!(h.state, HostRunState::Failed | HostRunState::Skipped))
            .map(|h| HostFailure {
                host: h.host.clone(),
                state: h.state,
                attempts: h.attempts,
                error: h.error.clone(),
                job: h.job,
            })
            .collect(),
    })
}

/// The run's schedule id and its host entry's state and attempts.
fn entry(conn: &Connection, run: i64, host: &str) -> Result<(i64, HostRunState, u32)> {
    conn.query_row(
        "SELECT r.schedule_id, e.state, e.attempts FROM schedule_run_hosts e JOIN schedule_runs r ON r.id = e.run_id \
         WHERE e.run_id = ?1 AND e.host = ?2",
        params![run, host],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()?
    .ok_or_else(|| CatalogError::not_found("run host", format!("run {run} host {host}")))
}

fn audit_target(schedule: &str) -> String {
    format!("schedule {schedule}")
}

impl Catalog {
    /// Creates a schedule; its first due time is the first one after now.
    pub fn create_schedule(&self, actor: &str, new: &NewSchedule) -> Result<Schedule> {
        let cron: Cron = new.cron.parse().map_err(|e: crate::cron::CronError| CatalogError::Invalid(e.to_string()))?;
        if let Some(rule) = &new.retention {
            rule.validate()?;
        }
        if new.max_concurrent == 0 {
            return Err(CatalogError::Invalid("max_concurrent must be at least 1".into()));
        }
        if new.retry_delay < 0 {
            return Err(CatalogError::Invalid("retry_delay must not be negative".into()));
        }
        if let Some(e) = &new.boot_test_expect {
            if e.is_empty() || e.len() > 256 || e.chars().any(char::is_control) || !new.boot_test {
                return Err(CatalogError::Invalid(
                    "boot_test_expect is 1 to 256 characters without control characters, with boot_test".into(),
                ));
            }
        }
        validate_name("target", &new.target)?;
        if let Some(n) = &new.name {
            validate_name("schedule", n)?;
        }
        self.write(|tx, now| {
            let is_host: bool =
                tx.query_row("SELECT count(*) > 0 FROM hosts WHERE name = ?1", [&new.target], |r| r.get(0))?;
            let is_group: bool =
                tx.query_row("SELECT count(*) > 0 FROM hosts WHERE host_group = ?1", [&new.target], |r| r.get(0))?;
            let kind = match (new.target_kind, is_host, is_group) {
                (Some(TargetKind::Host), false, _) => return Err(CatalogError::not_found("host", &new.target)),
                (Some(k), _, _) => k,
                (None, true, true) => {
                    return Err(CatalogError::Invalid(format!(
                        "{:?} is both a host and a group: say which (target_kind)",
                        new.target
                    )))
                }
                (None, true, false) => TargetKind::Host,
                (None, false, true) => TargetKind::Group,
                (None, false, false) => return Err(CatalogError::not_found("host or group", &new.target)),
            };
            let name = match &new.name {
                Some(n) => n.clone(),
                None => {
                    let taken = |n: &str| -> Result<bool> {
                        tx.query_row("SELECT count(*) > 0 FROM schedules WHERE name = ?1", [n], |r| r.get(0))
                    };
                    let mut n = new.target.clone();
                    let mut i = 2;
                    while taken(&n)? {
                        n = format!("{}-{i}", new.target);
                        i += 1;
                    }
                    n
                }
            };
            if name.parse::<i64>().is_ok() {
                return Err(CatalogError::Invalid(format!("schedule name {name:?} must not be a number")));
            }
            let id: i64 = tx
                .query_row(
                    "INSERT INTO schedules (name, target_kind, target, cron, keep_last, keep_monthly, max_concurrent, \
                 retries, retry_delay, enabled, created, evaluated_until, boot_test, boot_test_expect) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13) RETURNING id",
                    params![
                        name,
                        kind,
                        new.target,
                        cron.to_string(),
                        new.retention.map(|r| r.keep_last),
                        new.retention.map(|r| r.keep_monthly),
                        new.max_concurrent,
                        new.retries,
                        new.retry_delay,
                        new.enabled,
                        now,
                        new.boot_test,
                        new.boot_test_expect
                    ],
                    |r| r.get(0),
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        CatalogError::conflict("schedule", &name, "a schedule with this name already exists")
                    } else {
                        e
                    }
                })?;
            let s = load_id(tx, id)?;
            audit::append(
                tx,
                now,
                actor,
                "schedule.create",
                &audit_target(&s.name),
                serde_json::to_value(&s).unwrap_or_default(),
            )?;
            Ok(s)
        })
    }

    /// The schedule with id `key`, else the one named `key`.
    pub fn get_schedule(&self, key: &str) -> Result<Schedule> {
        self.read(|conn| load(conn, key))
    }

    /// Every schedule, by id.
    pub fn list_schedules(&self) -> Result<Vec<Schedule>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY id"))?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Deletes a schedule with its runs. Jobs it released stay (as ordinary jobs).
    pub fn delete_schedule(&self, actor: &str, key: &str) -> Result<Schedule> {
        self.write(|tx, now| {
            let s = load(tx, key)?;
            tx.execute("DELETE FROM schedules WHERE id = ?1", [s.id])?;
            audit::append(tx, now, actor, "schedule.delete", &audit_target(&s.name), json!({"id": s.id}))?;
            Ok(s)
        })
    }

    /// Pauses (`enabled == false`) or resumes a schedule. A paused schedule records no runs;
    /// resuming does not catch up the due times that passed while it was paused (a pause is
    /// on purpose, e.g. a maintenance window): only due times from now on run. Runs already
    /// recorded go on either way.
    pub fn set_schedule_enabled(&self, actor: &str, key: &str, enabled: bool) -> Result<Schedule> {
        self.write(|tx, now| {
            let s = load(tx, key)?;
            if s.enabled != enabled {
                tx.execute(
                    "UPDATE schedules SET enabled = ?1, \
                     evaluated_until = CASE WHEN ?1 = 1 AND ?2 > evaluated_until THEN ?2 ELSE evaluated_until END \
                     WHERE id = ?3",
                    params![enabled, now, s.id],
                )?;
                let action = if enabled { "schedule.enable" } else { "schedule.disable" };
                audit::append(tx, now, actor, action, &audit_target(&s.name), json!({"id": s.id}))?;
            }
            load_id(tx, s.id)
        })
    }

    /// Records due times of a schedule: each `(due, Running)` becomes a running run with one
    /// pending entry per host the schedule targets now, each `(due, Missed)` a missed run; a due
    /// time already recorded is left as it is. Then moves the schedule's `evaluated_until` up to
    /// `evaluated_until` (never back). One transaction.
    pub fn record_due_times(
        &self,
        actor: &str,
        schedule_id: i64,
        due: &[(UnixTime, RunState)],
        evaluated_until: UnixTime,
    ) -> Result<Recorded> {
        self.write(|tx, now| {
            let s = load_id(tx, schedule_id)?;
            let mut out = Recorded::default();
            for &(t, state) in due {
                if state == RunState::Done {
                    return Err(CatalogError::Invalid("a run is recorded as running or missed".into()));
                }
                let run: Option<i64> = tx
                    .query_row(
                        "INSERT INTO schedule_runs (schedule_id, due, state, created, finished) \
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (schedule_id, due) DO NOTHING RETURNING id",
                        params![s.id, t, state, now, (state == RunState::Missed).then_some(now)],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(run) = run else {
                    continue;
                };
                if state == RunState::Missed {
                    let summary = summarise(tx, run, &s, t, state)?;
                    tx.execute(
                        "UPDATE schedule_runs SET summary = ?1 WHERE id = ?2",
                        params![serde_json::to_string(&summary).unwrap_or_default(), run],
                    )?;
                    audit::append(
                        tx,
                        now,
                        actor,
                        "schedule.missed",
                        &audit_target(&s.name),
                        json!({"run": run, "due": t}),
                    )?;
                    out.missed.push(summary);
                } else {
                    let hosts = target_hosts(tx, &s)?;
                    for h in &hosts {
                        tx.execute(
                            "INSERT INTO schedule_run_hosts (run_id, host, state) VALUES (?1, ?2, 'pending')",
                            params![run, h],
                        )?;
                    }
                    let detail = json!({"run": run, "due": t, "hosts": hosts});
                    audit::append(tx, now, actor, "schedule.run", &audit_target(&s.name), detail)?;
                    out.started.push(run);
                }
            }
            tx.execute(
                "UPDATE schedules SET evaluated_until = CASE WHEN evaluated_until > ?1 THEN evaluated_until ELSE ?1 END \
                 WHERE id = ?2",
                params![evaluated_until, s.id],
            )?;
            Ok(out)
        })
    }

    /// The newest `limit` runs of a schedule, newest first, with their host entries.
    pub fn list_runs(&self, key: &str, limit: usize) -> Result<Vec<ScheduleRun>> {
        self.read(|conn| {
            let s = load(conn, key)?;
            let mut stmt = conn.prepare_cached(
                "SELECT id, due, state, created, finished, summary FROM schedule_runs WHERE schedule_id = ?1 \
                 ORDER BY due DESC, id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![s.id, limit], |r| {
                let summary: Option<String> = r.get(5)?;
                Ok(ScheduleRun {
                    id: r.get(0)?,
                    schedule_id: s.id,
                    schedule: s.name.clone(),
                    due: r.get(1)?,
                    state: r.get(2)?,
                    created: r.get(3)?,
                    finished: r.get(4)?,
                    summary: summary.and_then(|j| serde_json::from_str(&j).ok()),
                    hosts: Vec::new(),
                })
            })?;
            let mut runs: Vec<ScheduleRun> = rows.collect::<Result<_, _>>()?;
            for run in &mut runs {
                run.hosts = run_hosts(conn, run.id)?;
            }
            Ok(runs)
        })
    }

    /// The schedule that released job `job`, if a schedule did.
    pub fn schedule_of_job(&self, job: i64) -> Result<Option<i64>> {
        self.read(|conn| {
            conn.query_row(
                "SELECT r.schedule_id FROM schedule_run_hosts e JOIN schedule_runs r ON r.id = e.run_id \
                     WHERE e.job_id = ?1",
                [job],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Jobs released by schedules that are queued or running: `(schedule id, count)` for each
    /// schedule that has any.
    pub fn scheduled_active_jobs(&self) -> Result<Vec<(i64, u32)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT r.schedule_id, count(*) FROM schedule_run_hosts e \
                 JOIN schedule_runs r ON r.id = e.run_id JOIN jobs j ON j.id = e.job_id \
                 WHERE e.state = 'released' AND j.state IN ('queued', 'running') GROUP BY r.schedule_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Host entries of running runs that may be released at `now` (pending, or retrying with
    /// their delay over), oldest run first, then by host name.
    pub fn releasable_hosts(&self, now: UnixTime) -> Result<Vec<Releasable>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.run_id, r.schedule_id, e.host, e.attempts FROM schedule_run_hosts e \
                 JOIN schedule_runs r ON r.id = e.run_id \
                 WHERE r.state = 'running' AND (e.state = 'pending' OR (e.state = 'retrying' AND e.not_before <= ?1)) \
                 ORDER BY r.due, r.id, e.host",
            )?;
            let rows = stmt.query_map([now], |r| {
                Ok(Releasable { run: r.get(0)?, schedule_id: r.get(1)?, host: r.get(2)?, attempts: r.get(3)? })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Releases a pending or retrying host entry: queues its capture job (same transaction),
    /// or skips the host if it has an active job or no longer exists.
    pub fn release_run_host(&self, actor: &str, run: i64, host: &str) -> Result<Release> {
        self.write(|tx, now| {
            let (schedule_id, state, attempts) = entry(tx, run, host)?;
            if !matches!(state, HostRunState::Pending | HostRunState::Retrying) {
                return Err(CatalogError::conflict(
                    "run host",
                    format!("run {run} host {host}"),
                    format!("it is {state}"),
                ));
            }
            let s = load_id(tx, schedule_id)?;
            let exists: bool = tx.query_row("SELECT count(*) > 0 FROM hosts WHERE name = ?1", [host], |r| r.get(0))?;
            let active: Option<(i64, JobKind)> = tx
                .query_row(
                    "SELECT j.id, j.kind FROM jobs j JOIN hosts h ON h.id = j.host_id \
                     WHERE h.name = ?1 AND j.state IN ('queued', 'running')",
                    [host],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let skip = match (exists, active) {
                (false, _) => Some("the host no longer exists".to_string()),
                (true, Some((id, kind))) => Some(format!("the host already had an active {kind} job {id}")),
                (true, None) => None,
            };
            if let Some(reason) = skip {
                tx.execute(
                    "UPDATE schedule_run_hosts SET state = 'skipped', error = ?1, not_before = NULL \
                     WHERE run_id = ?2 AND host = ?3",
                    params![reason, run, host],
                )?;
                let detail = json!({"run": run, "host": host, "reason": reason});
                audit::append(tx, now, actor, "schedule.skip", &audit_target(&s.name), detail)?;
                return Ok(Release::Skipped(reason));
            }
            let job = jobs::insert(
                tx,
                now,
                actor,
                &NewJob { kind: JobKind::Capture, host: host.to_string(), disk: None, snapshot: None, disks: None },
            )?;
            tx.execute(
                "UPDATE schedule_run_hosts SET state = 'released', job_id = ?1, attempts = attempts + 1, \
                 not_before = NULL WHERE run_id = ?2 AND host = ?3",
                params![job.id, run, host],
            )?;
            let detail = json!({"run": run, "host": host, "job": job.id, "attempt": attempts + 1});
            audit::append(tx, now, actor, "schedule.release", &audit_target(&s.name), detail)?;
            Ok(Release::Released(job))
        })
    }

    /// Settles every released entry whose job has ended: succeeded → `succeeded`; failed or
    /// cancelled (or deleted) → `retrying` (not before `now + retry_delay`) while attempts ≤
    /// the schedule's retries, else `failed`. One transaction.
    pub fn settle_released_hosts(&self, actor: &str, now: UnixTime) -> Result<Vec<Settled>> {
        self.write(|tx, _| {
            let ended: Vec<EndedEntry> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT e.run_id, e.host, e.job_id, e.attempts, r.schedule_id, j.state, j.error, j.snapshot_id \
                     FROM schedule_run_hosts e JOIN schedule_runs r ON r.id = e.run_id \
                     LEFT JOIN jobs j ON j.id = e.job_id \
                     WHERE e.state = 'released' AND (j.id IS NULL OR j.state NOT IN ('queued', 'running')) \
                     ORDER BY e.run_id, e.host",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let mut out = Vec::new();
            for (run, host, job, attempts, schedule_id, job_state, job_error, job_snapshot) in ended {
                let s = load_id(tx, schedule_id)?;
                let (state, error, not_before) = match job_state {
                    Some(JobState::Succeeded) => (HostRunState::Succeeded, None, None),
                    other => {
                        let error = match other {
                            None => "the job was deleted".to_string(),
                            Some(JobState::Cancelled) => job_error.unwrap_or_else(|| "the job was cancelled".into()),
                            Some(_) => job_error.unwrap_or_else(|| "the job failed".into()),
                        };
                        if attempts <= s.retries {
                            (HostRunState::Retrying, Some(error), Some(now + s.retry_delay))
                        } else {
                            (HostRunState::Failed, Some(error), None)
                        }
                    }
                };
                tx.execute(
                    "UPDATE schedule_run_hosts SET state = ?1, error = ?2, not_before = ?3 WHERE run_id = ?4 AND host = ?5",
                    params![state, error, not_before, run, host],
                )?;
                let action = match state {
                    HostRunState::Succeeded => "schedule.host_succeeded",
                    HostRunState::Retrying => "schedule.retry",
                    _ => "schedule.host_failed",
                };
                let detail =
                    json!({"run": run, "host": host, "job": job, "attempts": attempts, "error": error, "not_before": not_before});
                audit::append(tx, now, actor, action, &audit_target(&s.name), detail)?;
                let snapshot = (state == HostRunState::Succeeded).then_some(job_snapshot).flatten();
                out.push(Settled { run, schedule_id, host, job, attempts, state, error, snapshot });
            }
            Ok(out)
        })
    }

    /// Marks `done` every running run whose host entries are all final, storing its summary;
    /// returns the summaries.
    pub fn finish_runs(&self, actor: &str) -> Result<Vec<RunSummary>> {
        self.write(|tx, now| {
            let done: Vec<(i64, i64, UnixTime)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT r.id, r.schedule_id, r.due FROM schedule_runs r WHERE r.state = 'running' AND NOT EXISTS \
                     (SELECT 1 FROM schedule_run_hosts e WHERE e.run_id = r.id \
                      AND e.state IN ('pending', 'released', 'retrying')) ORDER BY r.id",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut out = Vec::new();
            for (run, schedule_id, due) in done {
                let s = load_id(tx, schedule_id)?;
                let summary = summarise(tx, run, &s, due, RunState::Done)?;
                tx.execute(
                    "UPDATE schedule_runs SET state = 'done', finished = ?1, summary = ?2 WHERE id = ?3",
                    params![now, serde_json::to_string(&summary).unwrap_or_default(), run],
                )?;
                let detail = serde_json::to_value(&summary).unwrap_or_default();
                audit::append(tx, now, actor, "schedule.run_done", &audit_target(&s.name), detail)?;
                out.push(summary);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::snapshots::tests::new_snapshot;
    use super::super::testing::START;
    use super::super::NewHost;
    use super::*;

    fn host(cat: &Catalog, name: &str, group: Option<&str>) {
        cat.create_host("t", &NewHost { name: name.into(), group: group.map(Into::into), notes: String::new() })
            .unwrap();
    }

    fn new_schedule(target: &str, cron: &str) -> NewSchedule {
        NewSchedule {
            name: None,
            target: target.into(),
            target_kind: None,
            cron: cron.into(),
            retention: None,
            max_concurrent: 5,
            retries: 0,
            retry_delay: 60,
            enabled: true,
            boot_test: false,
            boot_test_expect: None,
        }
    }

    #[test]
    fn create_resolves_the_target_and_validates() {
        let (cat, _) = catalog();
        host(&cat, "web1", Some("web"));
        host(&cat, "db", Some("db"));
        let s = cat.create_schedule("t", &new_schedule("web1", "0 2 1 * *")).unwrap();
        assert_eq!((s.name.as_str(), s.target_kind, s.evaluated_until), ("web1", TargetKind::Host, START));
        let g = cat.create_schedule("t", &new_schedule("web", "0 2 * * *")).unwrap();
        assert_eq!(g.target_kind, TargetKind::Group);
        let again = cat.create_schedule("t", &new_schedule("web1", "0 3 * * *")).unwrap();
        assert_eq!(again.name, "web1-2");
        assert!(matches!(cat.create_schedule("t", &new_schedule("db", "* * * * *")), Err(CatalogError::Invalid(_))));
        assert!(matches!(
            cat.create_schedule("t", &new_schedule("nope", "* * * * *")),
            Err(CatalogError::NotFound { .. })
        ));
        let e = cat.create_schedule("t", &new_schedule("web1", "61 * * * *")).unwrap_err();
        assert!(e.to_string().contains("minute 61"), "{e}");
        let mut bad = new_schedule("web1", "* * * * *");
        bad.retention = Some(Rule { keep_last: 0, keep_monthly: 0 });
        assert!(cat.create_schedule("t", &bad).is_err());
        let mut named = new_schedule("web1", "* * * * *");
        named.name = Some("web1".into());
        assert!(matches!(cat.create_schedule("t", &named), Err(CatalogError::Conflict { .. })));
        assert_eq!(cat.get_schedule(&g.id.to_string()).unwrap(), g);
        assert_eq!(cat.get_schedule("web").unwrap(), g);
        assert_eq!(cat.list_schedules().unwrap().len(), 3);
        cat.delete_schedule("t", "web").unwrap();
        assert!(matches!(cat.get_schedule("web"), Err(CatalogError::NotFound { .. })));
        let actions: Vec<String> = cat.list_audit(3).unwrap().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["schedule.delete", "schedule.create", "schedule.create"]);
    }

    #[test]
    fn a_due_time_is_recorded_once() {
        let (cat, _) = catalog();
        host(&cat, "a", Some("g"));
        host(&cat, "b", Some("g"));
        let s = cat.create_schedule("t", &new_schedule("g", "0 2 1 * *")).unwrap();
        let due = START + 3600;
        let r = cat.record_due_times("sched", s.id, &[(due, RunState::Running)], due).unwrap();
        assert_eq!(r.started.len(), 1);
        let r2 = cat.record_due_times("sched", s.id, &[(due, RunState::Running)], due).unwrap();
        assert_eq!(r2, Recorded::default());
        let r3 = cat.record_due_times("sched", s.id, &[(due - 60, RunState::Missed)], due - 60).unwrap();
        assert_eq!(r3.missed.len(), 1);
        assert_eq!(cat.get_schedule("g").unwrap().evaluated_until, due, "never moves back");
        let runs = cat.list_runs("g", 10).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].due, runs[0].state, runs[0].hosts.len()), (due, RunState::Running, 2));
        assert_eq!((runs[1].state, runs[1].hosts.len()), (RunState::Missed, 0));
    }

    #[test]
    fn entries_release_retry_fail_and_finish() {
        let (cat, clock) = catalog();
        host(&cat, "a", Some("g"));
        host(&cat, "b", Some("g"));
        host(&cat, "c", Some("g"));
        let mut n = new_schedule("g", "0 2 1 * *");
        n.retries = 1;
        n.boot_test_expect = Some("login ok".into());
        assert!(matches!(cat.create_schedule("t", &n), Err(CatalogError::Invalid(_))), "an expect text without a test");
        n.boot_test = true;
        let s = cat.create_schedule("t", &n).unwrap();
        assert!(s.boot_test && cat.get_schedule("g").unwrap().boot_test);
        assert_eq!(s.boot_test_expect.as_deref(), Some("login ok"));
        // c is busy with a manual job: skipped.
        cat.create_job("op", &NewJob { kind: JobKind::Capture, host: "c".into(), disk: None, snapshot: None, disks: None }).unwrap();
        let due = START + 60;
        let run = cat.record_due_times("s", s.id, &[(due, RunState::Running)], due).unwrap().started[0];
        let rel = cat.releasable_hosts(due).unwrap();
        assert_eq!(rel.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let Release::Released(ja) = cat.release_run_host("s", run, "a").unwrap() else { panic!() };
        let Release::Released(jb) = cat.release_run_host("s", run, "b").unwrap() else { panic!() };
        assert!(
            matches!(cat.release_run_host("s", run, "c").unwrap(), Release::Skipped(r) if r.contains("active capture job"))
        );
        assert!(cat.release_run_host("s", run, "a").is_err(), "already released");
        assert_eq!(cat.scheduled_active_jobs().unwrap(), [(s.id, 2)]);
        assert_eq!(cat.schedule_of_job(ja.id).unwrap(), Some(s.id));
        assert!(cat.settle_released_hosts("s", due).unwrap().is_empty());

        // a succeeds; b fails once (retry), then again (failed).
        cat.start_job("agent", ja.id).unwrap();
        cat.commit_capture("agent", ja.id, &new_snapshot("00000000000000aa", "a", START)).unwrap();
        cat.start_job("agent", jb.id).unwrap();
        cat.fail_job("agent", jb.id, "disk on fire").unwrap();
        clock.advance(100);
        let settled = cat.settle_released_hosts("s", START + 1000).unwrap();
        assert_eq!(
            settled.iter().map(|s| (s.host.as_str(), s.state)).collect::<Vec<_>>(),
            [("a", HostRunState::Succeeded), ("b", HostRunState::Retrying)]
        );
        // The succeeded capture names its snapshot (for the schedule's boot test); a failed one none.
        assert_eq!(settled[0].snapshot.as_deref(), Some("00000000000000aa"));
        assert_eq!(settled[1].snapshot, None);
        assert!(cat.finish_runs("s").unwrap().is_empty());
        assert!(cat.releasable_hosts(START + 1059).unwrap().is_empty(), "retry delay");
        assert_eq!(cat.releasable_hosts(START + 1060).unwrap().len(), 1);
        let Release::Released(jb2) = cat.release_run_host("s", run, "b").unwrap() else { panic!() };
        cat.cancel_job("op", jb2.id).unwrap();
        let settled = cat.settle_released_hosts("s", START + 2000).unwrap();
        assert_eq!((settled[0].state, settled[0].attempts), (HostRunState::Failed, 2));
        let done = cat.finish_runs("s").unwrap();
        assert_eq!(done.len(), 1);
        let sum = &done[0];
        assert_eq!((sum.hosts, sum.succeeded, sum.failed, sum.skipped), (3, 1, 1, 1));
        assert_eq!(sum.failures[0].host, "b");
        assert_eq!(sum.failures[0].error.as_deref(), Some("the job was cancelled"));
        let runs = cat.list_runs("g", 1).unwrap();
        assert_eq!(runs[0].state, RunState::Done);
        assert_eq!(runs[0].summary.as_ref(), Some(sum));
        assert!(cat.finish_runs("s").unwrap().is_empty());
    }
}
}
