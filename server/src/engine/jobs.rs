//! Jobs: creating one (the job, its agent token, then the power kick), an agent's progress
//! reports, and how its job ends.
//!
//! Each multi-step change is one operation here: a progress report starts a queued job,
//! records the progress and appends its log lines in one catalog transaction
//! ([`Catalog::report_progress`](kura_catalogs::db::Catalog::report_progress)); a failure
//! starts a queued job, logs the error and fails it in one transaction, and only then is the
//! notification sent (in the background: a slow target never holds up the agent). A job
//! created without its token is cancelled again, so no job waits for an agent that cannot
//! authenticate.

use super::{tokens, Caller, Engine, ServiceError, ServiceResult};
use kura_catalogs::db::{Job, JobKind, JobState, LogLine};
use kura_protocol::jobs::{CreateJob, Finish, JobCreated, Progress, PROGRESS_LOG_LINES};
use kura_protocol::MacAddr;

/// Log lines `GET /jobs/{id}` shows.
const SHOWN_LOG_LINES: usize = 200;

/// `POST /jobs`: queues a job and mints its one-time agent token, bound to the given MAC (or
/// the host's only one). Once both are committed, power control kicks the machine into netboot
/// in the background (`crate::power`); its outcome goes into the job's log.
///
/// A restore of a snapshot held unconfirmed (after an unusual boot) is refused (409) unless
/// the request allows it: a snapshot is never unconfirmed again once confirmed, so checking
/// before the job is created is enough.
pub fn create(engine: &Engine, caller: &Caller, req: CreateJob) -> ServiceResult<JobCreated> {
    let host = engine.catalog.get_host(&req.job.host)?;
    check_disks(&req.job)?;
    if let (JobKind::Restore, Some(id)) = (req.job.kind, &req.job.snapshot) {
        if !req.allow_unconfirmed && !engine.catalog.get_snapshot(id)?.confirmed {
            return Err(ServiceError::Conflict(format!(
                "snapshot {id} is unconfirmed: it was captured after an unusual boot (see its job's log); \
                 confirm it (kura snapshot confirm {id}) or allow it explicitly (--allow-unconfirmed)"
            )));
        }
    }
    let mac = match (req.mac, host.macs.as_slice()) {
        (Some(m), _) => m,
        (None, [only]) => only
            .parse::<MacAddr>()
            .map_err(|e| ServiceError::Internal(format!("host {} has a bad MAC {only:?}: {e}", host.name)))?,
        (None, []) => return Err(ServiceError::BadRequest(format!("host {} has no MAC address", host.name))),
        (None, _) => return Err(ServiceError::BadRequest(format!("host {} has several MACs: say which", host.name))),
    };
    let actor = caller.actor();
    let job = engine.catalog.create_job(&actor, &req.job)?;
    let token = match tokens::mint_agent_token(&engine.catalog, &actor, job.id, mac, None) {
        Ok(t) => t,
        Err(e) => {
            // Rollback: a job no agent can authenticate for must not block the host.
            if let Err(c) = engine.catalog.cancel_job(&actor, job.id) {
                tracing::error!("job {} has no agent token ({e}) and could not be cancelled: {c}", job.id);
            }
            return Err(e.into());
        }
    };
    engine.power.spawn_kick_job(job.id);
    Ok(JobCreated { job, agent_token: token.secret })
}

/// A job's `disks`: for a capture, disk names separated by commas; for a restore, `--map`
/// pairs (`kura_imaging::diskmap::parse_overrides`). Checked here so a typo fails at once, not
/// at the machine's next boot.
fn check_disks(job: &kura_protocol::jobs::NewJob) -> ServiceResult<()> {
    let Some(text) = job.disks.as_deref() else { return Ok(()) };
    let bad = |why: String| Err(ServiceError::BadRequest(why));
    if text.len() > 4096 {
        return bad("the disk list is longer than 4096 bytes".into());
    }
    match job.kind {
        JobKind::Restore => {
            kura_imaging::diskmap::parse_overrides(text).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        }
        JobKind::Capture => {
            let names: Vec<&str> = text.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
            let ok = |n: &&str| {
                n.trim_start_matches("/dev/").bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if names.is_empty() || !names.iter().all(ok) {
                return bad(format!("--disks {text:?}: expected disk names separated by commas (vda,vdb)"));
            }
        }
    }
    Ok(())
}

/// `GET /jobs/{id}`: the job and its newest log lines.
pub fn show(engine: &Engine, id: i64) -> ServiceResult<(Job, Vec<LogLine>)> {
    let job = engine.catalog.get_job(id)?;
    let log = engine.catalog.job_log(id, None, SHOWN_LOG_LINES)?;
    Ok((job, log))
}

/// `POST /jobs/{id}/progress`: the agent is alive; a queued job starts, the progress and up
/// to [`PROGRESS_LOG_LINES`] log lines are recorded, all in one transaction.
pub fn progress(engine: &Engine, caller: &Caller, id: i64, p: &Progress) -> ServiceResult<Job> {
    engine.liveness.touch(id);
    let lines = &p.log[..p.log.len().min(PROGRESS_LOG_LINES)];
    Ok(engine.catalog.report_progress(&caller.actor(), id, p.done, p.total, lines)?)
}

/// `POST /jobs/{id}/finish`: a restore succeeds (a capture succeeds only by committing its
/// snapshot); a failure is recorded (start if queued, log, fail: one transaction) and then
/// notified.
pub fn finish(engine: &Engine, caller: &Caller, id: i64, f: Finish) -> ServiceResult<Job> {
    let actor = caller.actor();
    if f.ok {
        if engine.catalog.get_job(id)?.kind == JobKind::Capture {
            return Err(ServiceError::Conflict(format!("capture job {id} succeeds by committing its snapshot")));
        }
        return Ok(engine.catalog.succeed_job(&actor, id)?);
    }
    let msg = f.error.unwrap_or_else(|| "the agent reported a failure".into());
    let job = engine.catalog.fail_job_logged(&actor, id, &msg)?;
    debug_assert_eq!(job.state, JobState::Failed);
    engine.notifier.job_failed(&job, &msg);
    Ok(job)
}
