//! Boot tests the engine runs: `kura verify --boot` (answered when the test ends) and the
//! snapshots that schedules with `--boot-test` commit (queued). The test runs on the engine
//! host with chunks from the engine's own store ([`super::run`]); the verdict is recorded on
//! the snapshot (catalog, audited), a failure is notified (`boot_test_failed`), and the
//! screenshot taken at the verdict is kept for the status page.
//!
//! Screenshots: `DATA/screenshots/<snapshot>-<unix ms>.png`, the directory 0700 and each file
//! 0600 (`kura_catalogs::private`), named in the test's catalog row. After each recorded test,
//! each host keeps the screenshots of its newest [`SCREENSHOTS_PER_HOST`] tests only
//! (`Catalog::prune_boot_test_screenshots`); every other file of the directory (older tests,
//! tests deleted with their snapshot) is deleted. Without a data directory (an engine built in
//! a unit test) no screenshot is kept.
//!
//! Scheduled tests wait in a FIFO served by one thread: one test at a time, never in the way of
//! captures (the scheduler only hands over a snapshot id and returns). The queue is bounded
//! ([`QUEUE_LIMIT`]); a snapshot already queued is not queued twice. It is also kept in the
//! catalog (`boot_test_queue`, a row per test until it ends): an engine that stops with tests
//! waiting or running runs them when it starts again ([`resume`]), oldest first, each node of a
//! shared store its own.

use super::{Accel, DiskBus, Firmware, Options, Verdict};
use crate::engine::Engine;
use anyhow::{Context, Result};
use kura_catalogs::db::boot_tests::BootTest;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

/// Each host keeps the screenshots of this many of its newest boot tests.
pub const SCREENSHOTS_PER_HOST: usize = 5;
/// The screenshots' directory under the data directory.
pub const SCREENSHOT_DIR: &str = "screenshots";
/// Scheduled tests waiting at most; more are dropped with an error in the log.
pub const QUEUE_LIMIT: usize = 1000;
/// The actor of scheduled tests in the audit log.
pub const SCHEDULED_ACTOR: &str = "scheduler";

/// What to test a snapshot with.
#[derive(Debug, Clone)]
pub struct Request {
    pub firmware: Firmware,
    /// Console texts that also mean the system came up.
    pub expect: Vec<String>,
    pub timeout: Duration,
    pub stall: Duration,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            firmware: Firmware::Auto,
            expect: Vec::new(),
            timeout: Duration::from_secs(900),
            stall: Duration::from_secs(180),
        }
    }
}

/// A recorded test: the verdict as the test saw it, and the catalog's row.
pub struct Outcome {
    pub verdict: Verdict,
    pub recorded: BootTest,
    pub host: String,
}

/// The engine's boot tests: where screenshots go, and the queue of scheduled tests.
#[derive(Default)]
pub struct BootTests {
    screenshots: OnceLock<PathBuf>,
    /// Serialises keeping a screenshot with recording and pruning (a prune must not delete a
    /// file whose row is not written yet).
    files: Mutex<()>,
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<(String, Request)>,
    /// The snapshot under test by the worker, if any.
    running: Option<String>,
    worker: bool,
}

impl BootTests {
    /// Keeps screenshots in `DATA/screenshots/` from now on (created private if missing).
    pub fn keep_screenshots_in(&self, data: &Path) -> Result<()> {
        let dir = data.join(SCREENSHOT_DIR);
        kura_catalogs::private::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = self.screenshots.set(dir);
        Ok(())
    }

    /// The screenshot file `name` if it is one of ours (a bare `<hex>-<digits>.png`).
    pub fn screenshot_path(&self, name: &str) -> Option<PathBuf> {
        let dir = self.screenshots.get()?;
        valid_name(name).then(|| dir.join(name))
    }

    /// Scheduled tests queued or running.
    pub fn pending(&self) -> usize {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.waiting.len() + usize::from(q.running.is_some())
    }
}

fn valid_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".png") else { return false };
    let Some((id, ms)) = stem.split_once('-') else { return false };
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && (1..=20).contains(&ms.len())
        && ms.bytes().all(|b| b.is_ascii_digit())
}

/// Runs a boot test of committed snapshot `id` on this host and records it (see the module
/// docs). Blocking: minutes.
pub fn run_and_record(engine: &Engine, id: &str, actor: &str, req: &Request) -> Result<Outcome> {
    let tests = &engine.boot_tests;
    let snapshot = engine.catalog.get_snapshot(id)?;
    if snapshot.state != kura_catalogs::db::SnapshotState::Committed {
        anyhow::bail!("snapshot {id} is {}, not committed", snapshot.state);
    }
    let source: Arc<dyn kura_imaging::chunk::ChunkSource> = engine.store.clone();
    let open = |disk_id: &str| -> Result<Arc<crate::snapshot_disk::SnapshotDisk>> {
        let manifest = engine.store.load_manifest(disk_id)?;
        let disk = crate::snapshot_disk::SnapshotDisk::new(
            disk_id.to_string(),
            manifest,
            source.clone(),
            crate::snapshot_disk::CACHE_BYTES,
        )?;
        Ok(Arc::new(disk))
    };
    // A snapshot set boots with all its disks (`super::run_set`).
    let set_disks = match &snapshot.set {
        Some(record) => Some(record.disks.iter().map(|d| open(&d.manifest)).collect::<Result<Vec<_>>>()?),
        None => None,
    };
    let scratch = tempfile::Builder::new().prefix("kura-boot-shot.").tempdir()?;
    let shot = scratch.path().join("screen.png");
    let opts = Options {
        firmware: req.firmware,
        accel: Accel::Auto,
        disk_bus: DiskBus::Auto,
        timeout: req.timeout,
        stall: req.stall,
        expect: req.expect.clone(),
        memory_mib: 1024,
        screenshot: tests.screenshots.get().map(|_| shot.clone()),
        work_parent: std::env::temp_dir(),
    };
    let verdict = match set_disks {
        Some(disks) => super::run_set(id, disks, &opts),
        None => super::run(open(id)?, &opts),
    }
    .context("boot test")?;
    let mut record = BootTest {
        id: 0,
        snapshot: id.to_string(),
        finished: 0,
        passed: verdict.passed,
        stage: serde_json::to_value(verdict.stage)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        reason: verdict.reason.clone(),
        millis: (verdict.seconds * 1000.0) as u64,
        firmware: verdict.firmware.to_string(),
        console_tail: verdict.console_tail.clone(),
        fetched_bytes: verdict.fetched_bytes,
        screenshot: None,
    };
    let recorded = {
        let _files = tests.files.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(dir), true) = (tests.screenshots.get(), verdict.screenshot.is_some()) {
            let name = format!("{id}-{}.png", unix_millis());
            let png = std::fs::read(&shot).context("reading the screenshot")?;
            kura_catalogs::private::write_new(&dir.join(&name), &png)
                .with_context(|| format!("keeping the screenshot in {}", dir.display()))?;
            record.screenshot = Some(name);
        }
        let recorded = engine.catalog.record_boot_test(actor, &record);
        if let Err(e) = prune(engine) {
            tracing::warn!("boot test screenshots: {e:#}");
        }
        recorded?
    };
    if !verdict.passed {
        engine.notifier.boot_test_failed(&snapshot.host, &recorded);
    }
    Ok(Outcome { verdict, recorded, host: snapshot.host })
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Deletes the screenshots the catalog no longer keeps. Called with `files` held.
fn prune(engine: &Engine) -> Result<()> {
    let Some(dir) = engine.boot_tests.screenshots.get() else { return Ok(()) };
    let kept = engine.catalog.prune_boot_test_screenshots(SCREENSHOTS_PER_HOST)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if valid_name(&name) && !kept.contains(name.as_ref()) {
            std::fs::remove_file(entry.path()).with_context(|| format!("deleting {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The engine node whose boot-test queue rows these are: the cluster node on a shared store,
/// `local` otherwise.
fn node(engine: &Engine) -> &str {
    engine.cluster.as_ref().map_or("local", |c| c.node.as_str())
}

/// Queues a boot test of `snapshot` (a schedule's capture committed it): durably in the catalog
/// (so a restart runs it, [`resume`]), then for the worker. Returns at once.
pub fn enqueue(engine: &Arc<Engine>, snapshot: &str, req: Request) {
    if engine.boot_tests.pending() >= QUEUE_LIMIT {
        tracing::error!("boot test of snapshot {snapshot} dropped: {QUEUE_LIMIT} tests are already waiting");
        return;
    }
    match engine.catalog.queue_boot_test(node(engine), snapshot, &req.expect) {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!("boot test of snapshot {snapshot} not queued: already queued, or the snapshot is gone");
            return;
        }
        // The test still runs; only a restart before it ends would forget it.
        Err(e) => tracing::error!("boot test of snapshot {snapshot}: cannot record it in the catalog's queue: {e}"),
    }
    hand_to_worker(engine, snapshot, req);
}

/// At start: hands the worker every boot test this node queued before it stopped and that has
/// not ended, oldest first (one cut short by the stop runs again from the start). Returns how
/// many.
pub fn resume(engine: &Arc<Engine>) -> Result<usize> {
    let queued = engine.catalog.queued_boot_tests(node(engine)).context("reading the boot test queue")?;
    for t in &queued {
        hand_to_worker(engine, &t.snapshot, Request { expect: t.expect.clone(), ..Request::default() });
    }
    if !queued.is_empty() {
        tracing::info!("{} scheduled boot tests queued before the last stop are queued again", queued.len());
    }
    Ok(queued.len())
}

/// Puts a test in the worker's FIFO (once), starting the worker on first use; it holds the
/// engine only weakly.
fn hand_to_worker(engine: &Arc<Engine>, snapshot: &str, req: Request) {
    let tests = &engine.boot_tests;
    let mut q = tests.queue.lock().unwrap_or_else(|e| e.into_inner());
    if q.running.as_deref() == Some(snapshot) || q.waiting.iter().any(|(s, _)| s == snapshot) {
        return;
    }
    q.waiting.push_back((snapshot.to_string(), req));
    tracing::info!("boot test of snapshot {snapshot} queued ({} waiting)", q.waiting.len());
    if !q.worker {
        let weak = Arc::downgrade(engine);
        match std::thread::Builder::new().name("kura-boot-tests".into()).spawn(move || worker(weak)) {
            Ok(_) => q.worker = true,
            Err(e) => tracing::error!("cannot start the boot test thread: {e}"),
        }
    }
    tests.wake.notify_one();
}

fn worker(engine: Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        let next = {
            let mut q = e.boot_tests.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(n) = q.waiting.pop_front() {
                    q.running = Some(n.0.clone());
                    break Some(n);
                }
                let (guard, timeout) =
                    e.boot_tests.wake.wait_timeout(q, Duration::from_secs(60)).unwrap_or_else(|e| e.into_inner());
                q = guard;
                if timeout.timed_out() && q.waiting.is_empty() {
                    break None;
                }
            }
        };
        let Some((snapshot, req)) = next else {
            // Idle: let go of the engine for a while (it may be shutting down).
            drop(e);
            continue;
        };
        match run_and_record(&e, &snapshot, SCHEDULED_ACTOR, &req) {
            Ok(o) => tracing::info!(
                "scheduled boot test of snapshot {snapshot} (host {}): {} — {} in {:.1} s, {} chunks / {} bytes fetched",
                o.host,
                if o.verdict.passed { "passed" } else { "failed" },
                o.verdict.reason,
                o.verdict.seconds,
                o.verdict.fetched_chunks,
                o.verdict.fetched_bytes
            ),
            Err(err) => tracing::error!("scheduled boot test of snapshot {snapshot}: {err:#}"),
        }
        // Ended, with a verdict or unable to run (which a restart would not change).
        if let Err(err) = e.catalog.unqueue_boot_test(&snapshot) {
            tracing::error!("boot test of snapshot {snapshot}: cannot remove it from the catalog's queue: {err}");
        }
        e.boot_tests.queue.lock().unwrap_or_else(|e| e.into_inner()).running = None;
    }
}

/// The scheduler's hook: a schedule with `boot_test` committed a snapshot.
pub struct TestScheduledCaptures(pub Weak<Engine>);

impl crate::scheduler::CaptureHook for TestScheduledCaptures {
    fn capture_committed(&self, committed: &crate::scheduler::CaptureCommitted) {
        let Some(engine) = self.0.upgrade() else { return };
        if !committed.boot_test {
            return;
        }
        let req = Request { expect: committed.boot_test_expect.iter().cloned().collect(), ..Request::default() };
        enqueue(&engine, &committed.snapshot, req);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_screenshot_names_are_served() {
        assert!(valid_name("00000000000000b1-1765100000123.png"));
        for bad in ["../x.png", "b1-1.png.tmp", "b1.png", "-1.png", "zz-1.png", "b1-1a.png", "b1-/1.png", ""] {
            assert!(!valid_name(bad), "{bad}");
        }
        let t = BootTests::default();
        assert_eq!(t.screenshot_path("00b1-1.png"), None, "no directory, nothing served");
    }
}
