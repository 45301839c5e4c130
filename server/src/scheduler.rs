//! The scheduler of `kura serve`: turns schedules (`kura_catalogs::db::schedules`) into capture
//! jobs. It owns the policy — when a due time becomes a run, the catch-up window, the
//! concurrency caps, retries — and the hooks other parts of the engine plug into; the catalog
//! owns the records and makes each step one transaction.
//!
//! Every tick (`--scheduler-tick-ms`, default 10 s), with `now` from its [`Clock`] (UTC):
//!
//! 1. **Record due times.** For each enabled schedule, the cron due times in
//!    `(evaluated_until, now]` are recorded as runs, keyed by `(schedule, due time)`, so a due
//!    time recorded twice (a restart within the due minute) is still one run. Only the most
//!    recent of them is run, and only if it is less than the catch-up window old
//!    (`--schedule-catch-up`, default 6 h); the others are recorded as `missed`.
//! 2. **Settle** entries whose capture job ended: succeeded (the schedule's retention rule, if
//!    any, is applied to the host), or failed/cancelled: retried after the retry delay while
//!    attempts remain, else `failed`.
//! 3. **Release** pending entries (and retrying ones whose delay is over) into capture jobs,
//!    oldest run first, while the schedule has fewer than its `max_concurrent` jobs queued or
//!    running and all schedules together fewer than `--max-concurrent-jobs`. A host that already
//!    has an active job is skipped for that run.
//! 4. **Finish** runs whose entries are all final, with a summary.
//!
//! Hooks ([`Hooks`]): [`RunObserver`] (notifications: a run finished or was missed, a host's
//! job failed), [`ReleaseHook`] (power control: a capture job was released for a host, wake
//! it so it netboots) and [`CaptureHook`] (boot tests: a scheduled capture committed its
//! snapshot; `crate::boot_test::engine` queues its test when the schedule asks for one). They are called on the scheduler's blocking thread, after the catalog
//! change is committed, at most once per event (an engine killed between the commit and the
//! call skips it); they must return quickly and hand slow work (HTTP, SMTP, IPMI) to a thread of
//! their own. All methods have no-op defaults.

use anyhow::{Context, Result};
use kura_catalogs::cron::Cron;
use kura_catalogs::db::{Catalog, HostRunState, Release, RunState, RunSummary, Schedule, SnapshotState, UnixTime};
use kura_catalogs::retention::{self, Candidate, Rule};
use kura_catalogs::Store;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The actor of the scheduler's catalog changes.
pub const ACTOR: &str = "scheduler";

/// At most this many missed due times are recorded for one schedule in one tick (the newest);
/// older ones are only counted in the log.
pub const MAX_MISSED_RECORDED: usize = 100;

/// Where the scheduler (and, with `--test-clock`, the whole engine) gets the time.
pub trait Clock: Send + Sync {
    /// Unix seconds, UTC.
    fn now(&self) -> UnixTime;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        kura_catalogs::db::system_now()
    }
}

/// A clock for tests (`kura serve --test-clock FILE`): the time is the RFC 3339 UTC time in
/// FILE, read at every call. An unreadable or half-written file keeps the last good time.
pub struct FileClock {
    path: PathBuf,
    last: Mutex<UnixTime>,
}

impl FileClock {
    /// Opens the clock; FILE must hold a time now.
    pub fn open(path: PathBuf) -> Result<FileClock> {
        let t = Self::read(&path).with_context(|| format!("reading the test clock {}", path.display()))?;
        Ok(FileClock { path, last: Mutex::new(t) })
    }

    fn read(path: &std::path::Path) -> Result<UnixTime> {
        let text = std::fs::read_to_string(path)?;
        let text = text.trim();
        Ok(kura_imaging::time::parse_rfc3339(text)?)
    }
}

impl Clock for FileClock {
    fn now(&self) -> UnixTime {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match Self::read(&self.path) {
            Ok(t) => *last = t,
            Err(e) => tracing::warn!("test clock {}: {e}; keeping {}", self.path.display(), *last),
        }
        *last
    }
}

/// Parses a duration: a number of seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 6h or 1d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too long"))
}

/// A capture job the scheduler queued for a host (for power control).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReleased {
    pub schedule_id: i64,
    pub schedule: String,
    pub run: i64,
    pub host: String,
    pub job: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// A scheduled capture job that failed (or was cancelled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailed {
    pub schedule_id: i64,
    pub schedule: String,
    pub run: i64,
    pub host: String,
    pub job: Option<i64>,
    /// Attempts so far.
    pub attempts: u32,
    pub error: String,
    /// When it is tried again; `None` when attempts are exhausted (the host failed this run).
    pub retry_at: Option<UnixTime>,
}

/// Notifications seam (webhooks, mail): what happened to runs. No-op defaults.
pub trait RunObserver: Send + Sync {
    /// A run ended (`summary.state` is `done`) or a due time was missed (`missed`).
    fn run_finished(&self, _summary: &RunSummary) {}
    /// A host's scheduled capture job failed; `failed.retry_at` says whether it is retried.
    fn job_failed(&self, _failed: &JobFailed) {}
}

/// Power-control seam: a capture job was released for a host, which must now netboot (wake
/// it, or reset it). No-op default.
pub trait ReleaseHook: Send + Sync {
    fn job_released(&self, _released: &JobReleased) {}
}

/// A scheduled capture that committed its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureCommitted {
    pub schedule_id: i64,
    pub schedule: String,
    pub run: i64,
    pub host: String,
    pub snapshot: String,
    /// The schedule asks for a boot test of each snapshot (`kura schedule add --boot-test`).
    pub boot_test: bool,
    pub boot_test_expect: Option<String>,
}

/// Boot-test seam: a scheduled capture committed its snapshot. No-op default.
pub trait CaptureHook: Send + Sync {
    fn capture_committed(&self, _committed: &CaptureCommitted) {}
}

/// The hooks the scheduler calls; empty by default.
#[derive(Clone, Default)]
pub struct Hooks {
    pub observers: Vec<Arc<dyn RunObserver>>,
    pub release: Vec<Arc<dyn ReleaseHook>>,
    pub captures: Vec<Arc<dyn CaptureHook>>,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Time between ticks.
    pub tick: Duration,
    /// A missed due time older than this (seconds) is not run after downtime.
    pub catch_up: i64,
    /// Queued or running scheduler jobs, all schedules together.
    pub max_concurrent_jobs: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { tick: Duration::from_secs(10), catch_up: 6 * 3600, max_concurrent_jobs: 4 }
    }
}

/// What one tick did (for tests and the log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub started: usize,
    pub missed: usize,
    pub released: usize,
    pub skipped: usize,
    pub settled: usize,
    pub finished: usize,
}

pub struct Scheduler {
    catalog: Arc<Catalog>,
    /// For retention after a successful capture (snapshots' manifests are removed from it).
    store: Option<Arc<dyn Store>>,
    config: SchedulerConfig,
    hooks: Hooks,
    /// Ticks [`run`] completed (`kura_scheduler_ticks_total`: a test that moved the clock
    /// waits for a tick instead of sleeping).
    ticks: Arc<AtomicU64>,
}

impl Scheduler {
    pub fn new(catalog: Arc<Catalog>, store: Option<Arc<dyn Store>>, config: SchedulerConfig, hooks: Hooks) -> Self {
        Scheduler { catalog, store, config, hooks, ticks: Arc::default() }
    }

    /// The number of ticks [`run`] has completed, shared (for `/metrics`).
    pub fn tick_counter(&self) -> Arc<AtomicU64> {
        self.ticks.clone()
    }

    /// The due times of `s` to record at `now`: the newest runs if within the catch-up
    /// window, the others (at most [`MAX_MISSED_RECORDED`]) are missed.
    fn due_times(&self, s: &Schedule, now: UnixTime) -> Result<Vec<(UnixTime, RunState)>> {
        let cron: Cron = s.cron.parse()?;
        let mut due = std::collections::VecDeque::new();
        let mut dropped = 0u64;
        let mut t = s.evaluated_until;
        while let Some(next) = cron.next_after(t) {
            if next > now {
                break;
            }
            due.push_back(next);
            if due.len() > MAX_MISSED_RECORDED + 1 {
                due.pop_front();
                dropped += 1;
            }
            t = next;
        }
        if dropped > 0 {
            tracing::warn!("schedule {}: {dropped} more due times were missed (not recorded)", s.name);
        }
        let newest = due.back().copied();
        Ok(due
            .into_iter()
            .map(|t| {
                let run = Some(t) == newest && now - t < self.config.catch_up;
                (t, if run { RunState::Running } else { RunState::Missed })
            })
            .collect())
    }

    /// One pass of the scheduler at time `now` (see the module docs).
    pub fn tick(&self, now: UnixTime) -> Result<TickReport> {
        let mut report = TickReport::default();
        let schedules = self.catalog.list_schedules()?;
        // 1. Due times.
        for s in schedules.iter().filter(|s| s.enabled && s.evaluated_until < now) {
            let due = match self.due_times(s, now) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("schedule {}: {e:#}", s.name);
                    continue;
                }
            };
            if due.is_empty() {
                continue;
            }
            let recorded = match self.catalog.record_due_times(ACTOR, s.id, &due, now) {
                Ok(r) => r,
                // Removed since it was listed: nothing to record.
                Err(kura_catalogs::db::CatalogError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            report.started += recorded.started.len();
            report.missed += recorded.missed.len();
            for m in &recorded.missed {
                tracing::warn!("schedule {}: due time {} missed (past the catch-up window)", s.name, m.due);
                self.each_observer(|o| o.run_finished(m));
            }
        }
        let by_id: HashMap<i64, &Schedule> = schedules.iter().map(|s| (s.id, s)).collect();
        // 2. Settle ended jobs.
        for st in self.catalog.settle_released_hosts(ACTOR, now)? {
            report.settled += 1;
            let name = by_id.get(&st.schedule_id).map(|s| s.name.clone()).unwrap_or_default();
            match st.state {
                HostRunState::Succeeded => {
                    if let (Some(s), Some(snapshot)) = (by_id.get(&st.schedule_id), &st.snapshot) {
                        let ev = CaptureCommitted {
                            schedule_id: s.id,
                            schedule: s.name.clone(),
                            run: st.run,
                            host: st.host.clone(),
                            snapshot: snapshot.clone(),
                            boot_test: s.boot_test,
                            boot_test_expect: s.boot_test_expect.clone(),
                        };
                        for h in &self.hooks.captures {
                            h.capture_committed(&ev);
                        }
                    }
                    if let Some(rule) = by_id.get(&st.schedule_id).and_then(|s| s.retention) {
                        if let Err(e) = self.apply_retention(&st.host, rule) {
                            tracing::error!("schedule {name}: retention for host {}: {e:#}", st.host);
                        }
                    }
                }
                state => {
                    let failed = JobFailed {
                        schedule_id: st.schedule_id,
                        schedule: name,
                        run: st.run,
                        host: st.host.clone(),
                        job: st.job,
                        attempts: st.attempts,
                        error: st.error.clone().unwrap_or_default(),
                        retry_at: (state == HostRunState::Retrying)
                            .then(|| now + self.retry_delay(&by_id, st.schedule_id)),
                    };
                    self.each_observer(|o| o.job_failed(&failed));
                }
            }
        }
        // 3. Release within the caps.
        let mut active: HashMap<i64, u32> = self.catalog.scheduled_active_jobs()?.into_iter().collect();
        let mut total: u32 = active.values().sum();
        for r in self.catalog.releasable_hosts(now)? {
            if total >= self.config.max_concurrent_jobs {
                break;
            }
            let cap = by_id.get(&r.schedule_id).map(|s| s.max_concurrent).unwrap_or(1);
            let n = active.entry(r.schedule_id).or_default();
            if *n >= cap {
                continue;
            }
            match self.catalog.release_run_host(ACTOR, r.run, &r.host)? {
                Release::Released(job) => {
                    *n += 1;
                    total += 1;
                    report.released += 1;
                    let ev = JobReleased {
                        schedule_id: r.schedule_id,
                        schedule: by_id.get(&r.schedule_id).map(|s| s.name.clone()).unwrap_or_default(),
                        run: r.run,
                        host: r.host.clone(),
                        job: job.id,
                        attempt: r.attempts + 1,
                    };
                    for h in &self.hooks.release {
                        h.job_released(&ev);
                    }
                }
                Release::Skipped(reason) => {
                    report.skipped += 1;
                    tracing::warn!("run {}: host {} skipped: {reason}", r.run, r.host);
                }
            }
        }
        // 4. Finished runs.
        for summary in self.catalog.finish_runs(ACTOR)? {
            report.finished += 1;
            self.each_observer(|o| o.run_finished(&summary));
        }
        Ok(report)
    }

    fn retry_delay(&self, by_id: &HashMap<i64, &Schedule>, id: i64) -> i64 {
        by_id.get(&id).map(|s| s.retry_delay).unwrap_or(0)
    }

    fn each_observer(&self, f: impl Fn(&dyn RunObserver)) {
        for o in &self.hooks.observers {
            f(o.as_ref());
        }
    }

    /// Deletes the host's snapshots `rule` does not keep (as `kura retention` does).
    fn apply_retention(&self, host: &str, rule: Rule) -> Result<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let candidates: Vec<Candidate> = self
            .catalog
            .list_snapshots(Some(host))?
            .into_iter()
            .filter(|s| s.state == SnapshotState::Committed && s.set_id.is_none())
            .map(|s| Candidate { id: s.id, created: s.created })
            .collect();
        for id in retention::plan(&rule, &candidates)?.delete {
            // A snapshot S3 Object Lock still retains stays, listed, until its retention ends.
            match store.check_manifest_removable(&id) {
                Err(kura_imaging::Error::Locked { until, .. }) => {
                    tracing::info!(
                        "retention: snapshot {id} of host {host} is locked (until {until:?}, unix time): kept"
                    );
                    continue;
                }
                r => r?,
            }
            self.catalog.mark_snapshot_deleting(ACTOR, &id)?;
            for m in self.catalog.snapshot_manifests(&id)? {
                store.remove_manifest(&m)?;
            }
            self.catalog.remove_snapshot(ACTOR, &id)?;
            tracing::info!("retention: deleted snapshot {id} of host {host}");
        }
        Ok(())
    }
}

/// Runs the scheduler every `config.tick` with the time from `clock` until `shutdown`
/// completes. A failing tick is logged and the next one tries again.
pub async fn run(scheduler: Arc<Scheduler>, clock: Arc<dyn Clock>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let tick = scheduler.config.tick;
    loop {
        let (s, c) = (scheduler.clone(), clock.clone());
        match tokio::task::spawn_blocking(move || s.tick(c.now())).await {
            Ok(Ok(r)) if r != TickReport::default() => tracing::info!("scheduler: {r:?}"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("scheduler tick failed: {e:#}"),
            Err(e) => tracing::error!("scheduler tick panicked: {e}"),
        }
        scheduler.ticks.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalogs::db::{JobState, NewHost, NewSchedule};
    use std::sync::atomic::{AtomicI64, Ordering};

    const JAN1: UnixTime = 1_767_225_600; // 2026-01-01T00:00:00Z

    #[derive(Default)]
    struct Recorder {
        committed: Mutex<Vec<CaptureCommitted>>,
        released: Mutex<Vec<JobReleased>>,
        failed: Mutex<Vec<JobFailed>>,
        finished: Mutex<Vec<RunSummary>>,
    }

    impl RunObserver for Recorder {
        fn run_finished(&self, s: &RunSummary) {
            self.finished.lock().unwrap().push(s.clone());
        }
        fn job_failed(&self, f: &JobFailed) {
            self.failed.lock().unwrap().push(f.clone());
        }
    }

    impl CaptureHook for Recorder {
        fn capture_committed(&self, c: &CaptureCommitted) {
            self.committed.lock().unwrap().push(c.clone());
        }
    }

    impl ReleaseHook for Recorder {
        fn job_released(&self, r: &JobReleased) {
            self.released.lock().unwrap().push(r.clone());
        }
    }

    fn setup(hosts: usize, overall: u32) -> (Arc<Catalog>, Scheduler, Arc<Recorder>, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(JAN1));
        let n = now.clone();
        let cat = Arc::new(Catalog::open_in_memory().unwrap().with_clock(move || n.load(Ordering::SeqCst)));
        for i in 0..hosts {
            cat.create_host("t", &NewHost { name: format!("h{i:02}"), group: Some("g".into()), notes: String::new() })
                .unwrap();
        }
        let rec = Arc::new(Recorder::default());
        let hooks = Hooks { observers: vec![rec.clone()], release: vec![rec.clone()], captures: vec![rec.clone()] };
        let config = SchedulerConfig { max_concurrent_jobs: overall, ..Default::default() };
        (cat.clone(), Scheduler::new(cat, None, config, hooks), rec, now)
    }

    fn schedule(cat: &Catalog, cron: &str, cap: u32, retries: u32, delay: i64) {
        cat.create_schedule(
            "t",
            &NewSchedule {
                name: None,
                target: "g".into(),
                target_kind: None,
                cron: cron.into(),
                retention: None,
                max_concurrent: cap,
                retries,
                retry_delay: delay,
                enabled: true,
                boot_test: false,
                boot_test_expect: None,
            },
        )
        .unwrap();
    }

    fn fail_active(cat: &Catalog) -> usize {
        let jobs: Vec<_> = cat.list_jobs(None, 1000).unwrap().into_iter().filter(|j| j.state.is_active()).collect();
        for j in &jobs {
            if j.state == JobState::Queued {
                cat.start_job("agent", j.id).unwrap();
            }
            cat.fail_job("agent", j.id, "no disk").unwrap();
        }
        jobs.len()
    }

    #[test]
    fn caps_retries_and_summary() {
        let (cat, sched, rec, now) = setup(7, 4);
        schedule(&cat, "0 2 * * *", 3, 1, 600);
        let at = |t: i64| {
            now.store(t, Ordering::SeqCst);
            sched.tick(t).unwrap()
        };
        assert_eq!(at(JAN1 + 3600), TickReport::default());
        let r = at(JAN1 + 2 * 3600 + 5);
        assert_eq!((r.started, r.released), (1, 3), "the schedule's cap");
        assert_eq!(at(JAN1 + 2 * 3600 + 15).released, 0);
        // Fail every active job, round after round: first attempts, then retries after 600 s.
        let mut t = JAN1 + 2 * 3600 + 20;
        let mut rounds = 0;
        while rec.finished.lock().unwrap().is_empty() {
            assert!(fail_active(&cat) <= 3, "more than the cap active");
            t += 300;
            at(t);
            rounds += 1;
            assert!(rounds < 50);
        }
        let sum = rec.finished.lock().unwrap()[0].clone();
        assert_eq!((sum.hosts, sum.failed, sum.succeeded), (7, 7, 0));
        assert!(sum.failures.iter().all(|f| f.attempts == 2 && f.error.as_deref() == Some("no disk")));
        assert_eq!(rec.released.lock().unwrap().len(), 14);
        let failed = rec.failed.lock().unwrap();
        assert_eq!(failed.len(), 14);
        assert_eq!(failed.iter().filter(|f| f.retry_at.is_none()).count(), 7);
    }

    #[test]
    fn only_the_newest_missed_due_time_runs_within_the_window() {
        let (cat, sched, rec, _) = setup(1, 4);
        schedule(&cat, "0 * * * *", 5, 0, 0);
        // Down for 5 h 10 min: 5 due times; the newest (10 min ago) runs.
        let r = sched.tick(JAN1 + 5 * 3600 + 600).unwrap();
        assert_eq!((r.started, r.missed, r.released), (1, 4, 1));
        assert_eq!(rec.finished.lock().unwrap().len(), 4);
        // Again at the same time: nothing new.
        assert_eq!(sched.tick(JAN1 + 5 * 3600 + 600).unwrap().started, 0);
        fail_active(&cat);
        // Down again until 13:59:59: the newest due time (13:00) is within 6 h: it runs.
        let r = sched.tick(JAN1 + 13 * 3600 + 3600 - 1).unwrap();
        assert_eq!((r.started, r.missed), (1, 7));
        // A monthly schedule (created at midnight Jan 1) down until Feb 1 09:00: both Jan 1 02:00
        // and Feb 1 02:00 (7 h ago, past the window) are missed.
        let (cat, sched, _, _) = setup(1, 4);
        schedule(&cat, "0 2 1 * *", 5, 0, 0);
        let r = sched.tick(JAN1 + 31 * 86_400 + 9 * 3600).unwrap();
        assert_eq!((r.started, r.missed), (0, 2));
    }

    #[test]
    fn overall_cap_across_schedules_and_busy_hosts_are_skipped() {
        let (cat, sched, _, _) = setup(6, 4);
        schedule(&cat, "0 2 * * *", 3, 0, 0);
        schedule(&cat, "0 2 * * *", 3, 0, 0);
        let r = sched.tick(JAN1 + 2 * 3600).unwrap();
        assert_eq!((r.started, r.released), (2, 4));
        let r = sched.tick(JAN1 + 2 * 3600 + 10).unwrap();
        assert_eq!(r.released, 0);
        // The second schedule's hosts overlap: once the first's jobs end, the busy ones are skipped.
        fail_active(&cat);
        let r = sched.tick(JAN1 + 2 * 3600 + 20).unwrap();
        assert!(r.released <= 4);
    }

    #[test]
    fn a_committed_scheduled_capture_reaches_the_capture_hooks_with_the_schedules_boot_test() {
        let (cat, sched, rec, now) = setup(2, 4);
        let s = cat
            .create_schedule(
                "t",
                &NewSchedule {
                    name: Some("nightly".into()),
                    target: "g".into(),
                    target_kind: None,
                    cron: "0 2 * * *".into(),
                    retention: None,
                    max_concurrent: 5,
                    retries: 0,
                    retry_delay: 0,
                    enabled: true,
                    boot_test: true,
                    boot_test_expect: Some("web login:".into()),
                },
            )
            .unwrap();
        let t = JAN1 + 2 * 3600;
        now.store(t, Ordering::SeqCst);
        assert_eq!(sched.tick(t).unwrap().released, 2);
        // h00's capture commits a snapshot; h01's fails: only h00's reaches the hook.
        let jobs = cat.list_jobs(None, 10).unwrap();
        let job = |host: &str| jobs.iter().find(|j| j.host == host).unwrap().id;
        cat.start_job("agent", job("h00")).unwrap();
        let snap = kura_catalogs::db::NewSnapshot {
            id: "00000000000000d1".into(),
            host: "h00".into(),
            disk: None,
            name: None,
            kind: kura_catalogs::db::SnapshotKind::Scheduled,
            created: t,
            disk_size: 1 << 30,
            used_bytes: 1 << 20,
            new_bytes: 1 << 20,
            reused_bytes: 0,
            set: None,
            members: Vec::new(),
        };
        cat.commit_capture("agent", job("h00"), &snap).unwrap();
        cat.start_job("agent", job("h01")).unwrap();
        cat.fail_job("agent", job("h01"), "no disk").unwrap();
        sched.tick(t + 10).unwrap();
        let committed = rec.committed.lock().unwrap().clone();
        assert_eq!(
            committed,
            [CaptureCommitted {
                schedule_id: s.id,
                schedule: "nightly".into(),
                run: committed[0].run,
                host: "h00".into(),
                snapshot: "00000000000000d1".into(),
                boot_test: true,
                boot_test_expect: Some("web login:".into()),
            }]
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("6h"), Ok(21_600));
        assert_eq!(parse_duration("45"), Ok(45));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("m").is_err());
    }
}
