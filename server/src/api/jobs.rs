//! Job routes: captures and restores queued for a machine's next netboot, their progress and
//! logs. Handlers parse, authorize once ([`JobCaller`]: an agent only on its own job), call
//! one function of the jobs service (`crate::engine::jobs`) and render.

use super::auth::JobCaller;
use super::{ApiResult, AppState};
use crate::engine::{jobs, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kura_catalogs::db::Job;
use kura_protocol::jobs::{CreateJob, Finish, JobCreated, JobDetail, Progress};
use std::sync::Arc;

pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<Job>>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.list_jobs(None, 1000)).await??))
}

/// Queues a job and issues its one-time agent token (shown once, in this answer).
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<CreateJob>,
) -> ApiResult<(StatusCode, Json<JobCreated>)> {
    let engine = state.engine.clone();
    let created = tokio::task::spawn_blocking(move || jobs::create(&engine, &caller, req)).await??;
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn show(State(state): State<Arc<AppState>>, on: JobCaller) -> ApiResult<Json<JobDetail>> {
    let engine = state.engine.clone();
    let (job, log) = tokio::task::spawn_blocking(move || jobs::show(&engine, on.job)).await??;
    Ok(Json(JobDetail { job, log }))
}

pub async fn progress(
    State(state): State<Arc<AppState>>,
    on: JobCaller,
    Json(req): Json<Progress>,
) -> ApiResult<StatusCode> {
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || jobs::progress(&engine, &on.caller, on.job, &req)).await??;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn finish(
    State(state): State<Arc<AppState>>,
    on: JobCaller,
    Json(req): Json<Finish>,
) -> ApiResult<Json<Job>> {
    let engine = state.engine.clone();
    Ok(Json(tokio::task::spawn_blocking(move || jobs::finish(&engine, &on.caller, on.job, req)).await??))
}
