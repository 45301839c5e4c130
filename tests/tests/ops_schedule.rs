//! Scheduled captures against a real `kura serve` whose clock the test moves
//! (`--test-clock FILE`, `--scheduler-tick-ms`): one run per due time across months and
//! across restarts in the due minute, the per-schedule and overall concurrency caps, and
//! retries of a failing host ending in a failed run summary. "Nothing happened" is checked
//! after a scheduler tick that began after the moment in question (`kura_scheduler_ticks_total`
//! in `/metrics`), not after a sleep.
//!
//! No machine ever boots here: the test ends the released capture jobs through the API the
//! agent uses (`POST /jobs/{id}/finish` with `ok: false`). A capture job can only succeed by
//! committing a snapshot, so every simulated job fails; the runs' summaries say so.

use kura_tests::engine::{Api, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TICK_MS: &str = "40";

/// The engine's clock: an RFC 3339 time in a file, replaced atomically.
struct Clock {
    path: PathBuf,
}

impl Clock {
    fn new(dir: &Path, t: &str) -> Clock {
        let c = Clock { path: dir.join("clock") };
        c.set(t);
        c
    }

    fn set(&self, t: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{t}\n")).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

fn start(dir: &Path, clock: &Clock, extra: &[&str]) -> Server {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"--test-clock", &clock.path, &"--scheduler-tick-ms", &TICK_MS];
    for a in extra {
        args.push(a);
    }
    Server::start_http_with(&dir.join("engine"), &args)
}

/// The scheduler's completed ticks, from the engine's `/metrics`.
fn ticks(server: &Server) -> u64 {
    let r = server.api().raw("GET", "/metrics").token(&server.admin).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let line = text.lines().find_map(|l| l.strip_prefix("kura_scheduler_ticks_total "));
    line.and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("no kura_scheduler_ticks_total in:\n{text}"))
}

/// Waits until the scheduler has run a whole tick that began after this call, so whatever
/// the test did before (moved the clock, ended a job) has been seen by the scheduler. The
/// count read first may exclude a tick already under way, which may have read the old clock:
/// two more ticks means one started after the read.
fn settle(server: &Server) {
    let start = ticks(server);
    wait_for("a scheduler tick", server, || (ticks(server) >= start + 2).then_some(()));
}

fn wait_for<T>(what: &str, server: &Server, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}\nserver log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok(r: kura_tests::engine::Resp, want: u16) -> Value {
    assert_eq!(r.status, want, "{}", r.text());
    r.json()
}

fn add_host(api: &Api, admin: &str, name: &str, group: &str, n: usize) {
    let mac = format!("52:54:00:00:{:02x}:{:02x}", n / 256, n % 256);
    ok(api.req("POST", "/hosts").token(admin).json(&json!({"name": name, "group": group, "macs": [mac]})).send(), 201);
}

fn runs(api: &Api, admin: &str, schedule: &str) -> Vec<Value> {
    ok(api.req("GET", &format!("/schedules/{schedule}/runs")).token(admin).send(), 200).as_array().unwrap().clone()
}

fn jobs(api: &Api, admin: &str) -> Vec<Value> {
    ok(api.req("GET", "/jobs").token(admin).send(), 200).as_array().unwrap().clone()
}

fn active(jobs: &[Value]) -> Vec<&Value> {
    jobs.iter().filter(|j| matches!(j["state"].as_str(), Some("queued" | "running"))).collect()
}

/// Ends a job as its agent would on failure.
fn fail_job(api: &Api, admin: &str, id: i64, error: &str) {
    let r = api.req("POST", &format!("/jobs/{id}/finish")).token(admin).json(&json!({"ok": false, "error": error}));
    ok(r.send(), 200);
}

fn unix(t: &str) -> i64 {
    // The engine reports unix seconds; the test speaks RFC 3339 (UTC).
    let d = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
    let (y, m, day, hh, mm, ss) = (d(0..4), d(5..7), d(8..10), d(11..13), d(14..16), d(17..19));
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

#[test]
fn a_monthly_schedule_runs_once_per_month_and_once_across_restarts() {
    let work = tempfile::tempdir().unwrap();
    let clock = Clock::new(work.path(), "2026-01-15T12:00:00Z");
    let mut server = start(work.path(), &clock, &[]);
    let (api, admin) = (server.api(), server.admin.clone());
    add_host(&api, &admin, "web01", "web", 1);
    // Through the CLI, as an operator would.
    let run = server.kura(&[&"schedule", &"add", &"--hosts", &"web01", &"--cron", &"0 2 1 * *", &"--json"]);
    assert!(run.success(), "{run}");
    let s: Value = run.json();
    assert_eq!((s["name"].as_str(), s["target_kind"].as_str()), (Some("web01"), Some("host")));
    let list = server.kura(&[&"schedule", &"list", &"--json"]);
    assert!(list.success(), "{list}");
    assert_eq!(list.json::<Vec<Value>>().len(), 1);

    let mut expected: Vec<i64> = Vec::new();
    for month in ["02", "03", "04", "05"] {
        clock.set(&format!("2026-{month}-01T01:59:00Z"));
        settle(&server);
        assert_eq!(runs(&api, &admin, "web01").len(), expected.len(), "a run before {month}'s due time");
        clock.set(&format!("2026-{month}-01T02:00:30Z"));
        expected.push(unix(&format!("2026-{month}-01T02:00:00Z")));
        let job = wait_for("the month's run", &server, || {
            let r = runs(&api, &admin, "web01");
            (r.len() == expected.len()).then(|| r[0]["hosts"][0]["job"].as_i64()).flatten()
        });
        // Later in the month: nothing more. The machine never booted: its job fails.
        clock.set(&format!("2026-{month}-20T02:00:00Z"));
        fail_job(&api, &admin, job, "simulated: the machine did not boot");
        settle(&server);
        let r = runs(&api, &admin, "web01");
        let dues: Vec<i64> = r.iter().rev().map(|r| r["due"].as_i64().unwrap()).collect();
        assert_eq!(dues, expected, "exactly one run per month");
        assert_eq!(r[0]["state"], "done", "{:?}", r[0]);
        assert_eq!(r[0]["summary"]["failed"], 1);
    }

    // Stopped before June; started again exactly at the due minute: one run.
    server.stop();
    clock.set("2026-06-01T02:00:00Z");
    server.restart();
    let (api, admin) = (server.api(), server.admin.clone());
    expected.push(unix("2026-06-01T02:00:00Z"));
    wait_for("June's run", &server, || (runs(&api, &admin, "web01").len() == expected.len()).then_some(()));
    settle(&server);
    // Killed and started again within the same minute: still one run, one job.
    server.kill9();
    clock.set("2026-06-01T02:00:40Z");
    server.restart();
    let (api, admin) = (server.api(), server.admin.clone());
    settle(&server);
    let r = runs(&api, &admin, "web01");
    let dues: Vec<i64> = r.iter().rev().map(|r| r["due"].as_i64().unwrap()).collect();
    assert_eq!(dues, expected, "a restart in the due minute neither loses nor repeats the run");
    assert_eq!((r[0]["state"].as_str(), r[0]["hosts"][0]["attempts"].as_i64()), (Some("running"), Some(1)));
    let all = jobs(&api, &admin);
    assert_eq!(all.len(), 5, "one capture job per run: {all:?}");
    assert_eq!(active(&all).len(), 1);

    // Text output of runs works too.
    let text = server.kura(&[&"schedule", &"runs", &"web01"]);
    assert!(text.success() && text.stdout.contains("2026-06-01T02:00:00Z"), "{text}");
}

#[test]
fn twenty_hosts_due_at_once_respect_the_schedule_and_overall_caps() {
    let work = tempfile::tempdir().unwrap();
    let clock = Clock::new(work.path(), "2026-03-10T00:00:00Z");
    let server = start(work.path(), &clock, &["--max-concurrent-jobs", "7"]);
    let (api, admin) = (server.api(), server.admin.clone());
    for i in 0..20 {
        add_host(&api, &admin, &format!("lab{i:02}"), "lab", i);
    }
    for i in 0..6 {
        add_host(&api, &admin, &format!("ops{i}"), "ops", 100 + i);
    }
    for (group, cap) in [("lab", 5), ("ops", 5)] {
        let body = json!({"target": group, "cron": "0 3 * * *", "max_concurrent": cap, "retries": 0});
        ok(api.req("POST", "/schedules").token(&admin).json(&body).send(), 201);
    }
    clock.set("2026-03-10T03:00:05Z");
    wait_for("the first releases", &server, || (active(&jobs(&api, &admin)).len() == 7).then_some(()));

    let (mut max_lab, mut max_total, mut ended) = (0, 0, 0);
    loop {
        settle(&server);
        let all = jobs(&api, &admin);
        let act = active(&all);
        let lab = act.iter().filter(|j| j["host"].as_str().unwrap().starts_with("lab")).count();
        let ops = act.len() - lab;
        assert!(lab <= 5 && ops <= 5, "a schedule's cap exceeded: lab {lab}, ops {ops}");
        assert!(act.len() <= 7, "the overall cap exceeded: {}", act.len());
        max_lab = max_lab.max(lab);
        max_total = max_total.max(act.len());
        let Some(next) = act.iter().min_by_key(|j| j["id"].as_i64()) else { break };
        fail_job(&api, &admin, next["id"].as_i64().unwrap(), "simulated");
        ended += 1;
        assert!(ended <= 26, "more jobs than hosts");
    }
    assert_eq!((max_lab, max_total), (5, 7), "the caps were reached, not just respected");
    let all = jobs(&api, &admin);
    let mut hosts: Vec<&str> = all.iter().map(|j| j["host"].as_str().unwrap()).collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!((all.len(), hosts.len()), (26, 26), "every host got exactly one capture job");
    for group in ["lab", "ops"] {
        let r = wait_for("the run's end", &server, || {
            let r = runs(&api, &admin, group);
            (r[0]["state"] == "done").then(|| r[0].clone())
        });
        let n = if group == "lab" { 20 } else { 6 };
        assert_eq!((r["summary"]["hosts"].as_i64(), r["summary"]["failed"].as_i64()), (Some(n), Some(n)), "{r}");
    }
}

#[test]
fn a_failing_host_is_retried_after_the_delay_then_reported_failed() {
    let work = tempfile::tempdir().unwrap();
    let clock = Clock::new(work.path(), "2026-04-01T00:00:00Z");
    let server = start(work.path(), &clock, &[]);
    let (api, admin) = (server.api(), server.admin.clone());
    add_host(&api, &admin, "flaky", "x", 7);
    // The run's summary (and each failure) also goes to a webhook.
    let (hook, events) = kura_tests::webhook::webhook_receiver();
    let run = server.kura(&[&"notify", &"add", &"webhook", &hook]);
    assert!(run.success(), "{run}");
    let run = server.kura(&[
        &"schedule",
        &"add",
        &"--hosts",
        &"flaky",
        &"--cron",
        &"30 1 * * *",
        &"--name",
        &"nightly",
        &"--retries",
        &"2",
        &"--retry-delay",
        &"10m",
    ]);
    assert!(run.success(), "{run}");

    let mut now = unix("2026-04-01T01:30:00Z");
    let set = |t: i64| {
        let secs = t.rem_euclid(86_400);
        clock.set(&format!("2026-04-01T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60));
    };
    set(now + 1);
    let mut job_ids = Vec::new();
    for attempt in 1..=3 {
        let job = wait_for("a released job", &server, || {
            let act: Vec<i64> = active(&jobs(&api, &admin)).iter().map(|j| j["id"].as_i64().unwrap()).collect();
            (act.len() == 1).then(|| act[0])
        });
        job_ids.push(job);
        fail_job(&api, &admin, job, &format!("disk not found (attempt {attempt})"));
        settle(&server);
        let r = &runs(&api, &admin, "nightly")[0];
        let h = &r["hosts"][0];
        assert_eq!(h["attempts"].as_i64(), Some(attempt), "{r}");
        if attempt < 3 {
            assert_eq!(h["state"], "retrying", "{r}");
            // Not before the delay is over.
            set(now + 599);
            settle(&server);
            assert!(active(&jobs(&api, &admin)).is_empty(), "retried before the delay");
            now += 601;
            set(now);
        } else {
            assert_eq!(h["state"], "failed", "{r}");
        }
    }
    job_ids.dedup();
    assert_eq!(job_ids.len(), 3, "one job per attempt");
    let r = wait_for("the run's end", &server, || {
        let r = runs(&api, &admin, "nightly");
        (r[0]["state"] == "done").then(|| r[0].clone())
    });
    let s = &r["summary"];
    assert_eq!((s["hosts"].as_i64(), s["failed"].as_i64(), s["succeeded"].as_i64()), (Some(1), Some(1), Some(0)));
    let f = &s["failures"][0];
    assert_eq!((f["host"].as_str(), f["attempts"].as_i64()), (Some("flaky"), Some(3)));
    assert_eq!(f["error"].as_str(), Some("disk not found (attempt 3)"));
    // The webhook got the three failures and the run's summary.
    let mut got = Vec::new();
    while let Ok((_, e)) = events.recv_timeout(std::time::Duration::from_secs(20)) {
        let done = e["event"] == "run_summary";
        got.push(e);
        if done {
            break;
        }
    }
    let kinds: Vec<&str> = got.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "job_failed").count(), 3, "{got:#?}");
    let summary = got.iter().find(|e| e["event"] == "run_summary").unwrap_or_else(|| panic!("{got:#?}"));
    assert_eq!(summary["summary"]["schedule"], "nightly", "{summary:#}");
    assert_eq!(summary["summary"]["failures"][0]["host"], "flaky", "{summary:#}");
    assert!(summary["text"].as_str().unwrap().contains("0 of 1 hosts captured, 1 failed"), "{summary:#}");
    // The audit log tells the same story.
    let audit = ok(api.req("GET", "/audit").token(&admin).send(), 200);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|a| a["action"].as_str()).collect();
    for a in [
        "schedule.create",
        "schedule.run",
        "schedule.release",
        "schedule.retry",
        "schedule.host_failed",
        "schedule.run_done",
    ] {
        assert!(actions.contains(&a), "no {a} in the audit log: {actions:?}");
    }
    // Removing the schedule removes its runs; the jobs stay.
    let run = server.kura(&[&"schedule", &"remove", &"nightly"]);
    assert!(run.success(), "{run}");
    assert_eq!(api.req("GET", "/schedules/nightly/runs").token(&admin).send().status, 404);
    assert_eq!(jobs(&api, &admin).len(), 3);
}

#[test]
fn a_paused_schedule_records_no_runs_and_resumes_without_catching_up() {
    let work = tempfile::tempdir().unwrap();
    let clock = Clock::new(work.path(), "2026-01-15T12:00:00Z");
    let server = start(work.path(), &clock, &[]);
    let (api, admin) = (server.api(), server.admin.clone());
    add_host(&api, &admin, "db01", "db", 9);
    let run = server.kura(&[&"schedule", &"add", &"--hosts", &"db01", &"--cron", &"0 2 * * *", &"--name", &"daily"]);
    assert!(run.success(), "{run}");

    // Paused over a maintenance window: the due time passes without a run.
    let run = server.kura(&[&"schedule", &"disable", &"daily", &"--json"]);
    assert!(run.success(), "{run}");
    assert_eq!(run.json::<Value>()["enabled"], false);
    clock.set("2026-01-16T02:00:30Z");
    settle(&server);
    assert!(runs(&api, &admin, "daily").is_empty(), "a paused schedule ran");

    // Resumed after the due time: the paused one is not caught up, the next one runs.
    clock.set("2026-01-16T03:00:00Z");
    let run = server.kura(&[&"schedule", &"enable", &"daily"]);
    assert!(run.success(), "{run}");
    settle(&server);
    assert!(runs(&api, &admin, "daily").is_empty(), "resuming ran the due time of the pause");
    clock.set("2026-01-17T02:00:30Z");
    let r = wait_for("the next day's run", &server, || {
        let r = runs(&api, &admin, "daily");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["due"].as_i64(), Some(unix("2026-01-17T02:00:00Z")));
    let audit = ok(api.req("GET", "/audit").token(&admin).send(), 200);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|a| a["action"].as_str()).collect();
    assert!(actions.contains(&"schedule.disable") && actions.contains(&"schedule.enable"), "{actions:?}");
    // Only admins pause schedules.
    let operator =
        ok(api.req("POST", "/tokens").token(&admin).json(&json!({"role": "operator", "label": "t"})).send(), 201);
    let op = operator["token"].as_str().unwrap();
    let r = api.req("PUT", "/schedules/daily/enabled").token(op).json(&json!({"enabled": false})).send();
    assert_eq!(r.status, 403, "{}", r.text());
}
