//! Jobs: captures and restores queued for a machine's next netboot, their progress and logs.

use super::auth::agent_job;
use super::{ApiError, ApiResult, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::{Job, JobKind, JobState, LogLevel, NewJob, Principal, Role};
use serde::Deserialize;
use std::sync::Arc;

pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<Job>>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.catalog.list_jobs(None, 1000)).await??))
}

#[derive(Deserialize)]
pub struct CreateJob {
    #[serde(flatten)]
    job: NewJob,
    /// MAC address the job's agent token is bound to (default: the host's only MAC).
    #[serde(default)]
    mac: Option<String>,
}

/// Queues a job and issues its one-time agent token (shown once, in this answer). Once the job
/// is committed, power control kicks the machine into netboot in the background
/// (`crate::power`); its outcome goes into the job's log.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<CreateJob>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || -> ApiResult<serde_json::Value> {
        let host = st.catalog.get_host(&req.job.host)?;
        let mac = match (req.mac, host.macs.as_slice()) {
            (Some(m), _) => m,
            (None, [only]) => only.clone(),
            (None, []) => return Err(ApiError::BadRequest(format!("host {} has no MAC address", host.name))),
            (None, _) => return Err(ApiError::BadRequest(format!("host {} has several MACs: say which", host.name))),
        };
        let job = st.catalog.create_job(&p.actor(), &req.job)?;
        let token = st.catalog.create_agent_token(&p.actor(), job.id, &mac, None)?;
        Ok(serde_json::json!({ "job": job, "agent_token": token.secret }))
    })
    .await??;
    if let Some(id) = out["job"]["id"].as_i64() {
        state.power.spawn_kick_job(id);
    }
    Ok((StatusCode::CREATED, Json(out)))
}

fn own_job(p: &Principal, id: i64) -> ApiResult<()> {
    match agent_job(p) {
        Some(j) if j != id => Err(ApiError::Forbidden(format!("this agent token belongs to job {j}, not {id}"))),
        None if p.role == Role::Agent => Err(ApiError::Forbidden("agent token without a job".into())),
        _ => Ok(()),
    }
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult<Json<serde_json::Value>> {
    own_job(&p, id)?;
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || -> ApiResult<serde_json::Value> {
        let job = st.catalog.get_job(id)?;
        let log = st.catalog.job_log(id, None, 200)?;
        Ok(serde_json::json!({ "job": job, "log": log }))
    })
    .await??;
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct Progress {
    done: u64,
    total: Option<u64>,
    #[serde(default)]
    log: Vec<String>,
}

pub async fn progress(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
    Json(req): Json<Progress>,
) -> ApiResult<StatusCode> {
    own_job(&p, id)?;
    state.watchdog.touch(id);
    let st = state.clone();
    tokio::task::spawn_blocking(move || -> ApiResult<()> {
        if st.catalog.get_job(id)?.state == JobState::Queued {
            st.catalog.start_job(&p.actor(), id)?;
        }
        st.catalog.set_job_progress(id, req.done, req.total)?;
        for line in req.log.iter().take(100) {
            st.catalog.append_job_log(id, LogLevel::Info, line)?;
        }
        Ok(())
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct Finish {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

pub async fn finish(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
    Json(req): Json<Finish>,
) -> ApiResult<Json<Job>> {
    own_job(&p, id)?;
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || -> ApiResult<Job> {
        let job = st.catalog.get_job(id)?;
        Ok(if req.ok {
            if job.kind == JobKind::Capture {
                return Err(ApiError::Conflict(format!("capture job {id} succeeds by committing its snapshot")));
            }
            st.catalog.succeed_job(&p.actor(), id)?
        } else {
            let msg = req.error.unwrap_or_else(|| "the agent reported a failure".into());
            if job.state == JobState::Queued {
                // An agent that fails before its first progress report still ends its job.
                st.catalog.start_job(&p.actor(), id)?;
            }
            st.catalog.append_job_log(id, LogLevel::Error, &msg)?;
            st.catalog.fail_job(&p.actor(), id, &msg)?
        })
    })
    .await??;
    if job.state == JobState::Failed {
        // In the background: a slow or broken target never holds up the agent.
        state.notifier.job_failed(&job, job.error.as_deref().unwrap_or(""));
    }
    Ok(Json(job))
}
