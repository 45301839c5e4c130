//! Jobs whose agent went silent.
//!
//! A running agent reports every few seconds (progress, log lines, chunk uploads). A running
//! job with no report for the agent timeout (`kura serve --agent-timeout`, default
//! [`DEFAULT_TIMEOUT`]) is failed with an error saying so, and its upload sessions are
//! aborted: a network cut or a machine that died mid-job ends as a clear failure, never as a
//! job that stays "running" and blocks the host's next one. A capture failed this way cannot
//! commit afterwards (commit checks the job first), so no snapshot appears from it.
//!
//! The liveness ([`Liveness`]) is touched by the services an agent calls (progress, uploads).
//! Last-contact times live in memory: after a restart of the server every running job gets a
//! full timeout from the moment the server first looks at it.

use super::Engine;
use kura_catalogs::db::JobState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default silence after which a running job is failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Who fails silent jobs, in the audit log.
const ACTOR: &str = "kura-serve (agent watchdog)";

/// When each running job's agent was last heard from, and the timeout.
pub struct Liveness {
    seen: Mutex<HashMap<i64, Instant>>,
    timeout_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { seen: Mutex::new(HashMap::new()), timeout_ms: AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64) }
    }
}

impl Liveness {
    /// The agent of `job` was heard from now.
    pub fn touch(&self, job: i64) {
        self.seen.lock().expect("lock").insert(job, Instant::now());
    }

    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// The running jobs (of `running`) silent for longer than the timeout; forgets jobs that
    /// are no longer running.
    fn silent(&self, running: &[i64]) -> Vec<(i64, Duration)> {
        let timeout = self.timeout();
        let mut seen = self.seen.lock().expect("lock");
        seen.retain(|id, _| running.contains(id));
        let now = Instant::now();
        running
            .iter()
            .filter_map(|id| {
                let last = *seen.entry(*id).or_insert(now);
                let quiet = now.duration_since(last);
                (quiet > timeout).then_some((*id, quiet))
            })
            .collect()
    }
}

/// Checks every second (or a quarter of the timeout, if shorter) until the server stops.
pub async fn run(engine: Arc<Engine>) {
    loop {
        let period = (engine.liveness.timeout() / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        tokio::time::sleep(period).await;
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || check(&e)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("agent watchdog: {e}"),
            Err(e) => tracing::warn!("agent watchdog: {e}"),
        }
    }
}

/// Fails every running job whose agent is silent: its upload sessions end first (so nothing
/// commits afterwards), then the job fails with a log line (one catalog transaction), then the
/// notification goes out.
fn check(engine: &Engine) -> Result<(), kura_catalogs::db::CatalogError> {
    let running: Vec<i64> =
        engine.catalog.active_jobs()?.into_iter().filter(|j| j.state == JobState::Running).map(|j| j.id).collect();
    for (id, quiet) in engine.liveness.silent(&running) {
        let msg = format!(
            "lost contact with the agent: no report for {} s (network cut, or the machine stopped?); \
             nothing was committed",
            quiet.as_secs()
        );
        let job = engine.catalog.get_job(id)?;
        if job.state != JobState::Running {
            continue;
        }
        super::uploads::abort_job_sessions(engine, id);
        let failed = engine.catalog.fail_job_logged(ACTOR, id, &msg)?;
        engine.notifier.job_failed(&failed, &msg);
        tracing::warn!("job {id} of host {}: {msg}", job.host);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_measured_from_the_last_touch() {
        let w = Liveness::default();
        w.set_timeout(Duration::from_millis(50));
        w.touch(1);
        assert!(w.silent(&[1, 2]).is_empty(), "2 is first seen now");
        std::thread::sleep(Duration::from_millis(80));
        w.touch(2);
        let s = w.silent(&[1, 2]);
        assert_eq!(s.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1]);
        // A job no longer running is forgotten.
        assert!(w.silent(&[]).is_empty());
        assert!(w.seen.lock().unwrap().is_empty());
    }
}
