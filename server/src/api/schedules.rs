//! Schedules: scheduled captures of a host or a group, and their runs (the scheduler itself is
//! `crate::scheduler`).

use super::{ApiResult, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::{NewSchedule, Principal, Schedule, ScheduleRun};
use serde::Deserialize;
use std::sync::Arc;

pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<Schedule>>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.list_schedules()).await??))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<NewSchedule>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    let st = state.clone();
    let s = tokio::task::spawn_blocking(move || st.engine.catalog.create_schedule(&p.actor(), &req)).await??;
    Ok((StatusCode::CREATED, Json(s)))
}

/// `{name}` is a schedule's id or name.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<Schedule>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.delete_schedule(&p.actor(), &name)).await??))
}

#[derive(Deserialize)]
pub struct Enabled {
    enabled: bool,
}

/// Pauses or resumes a schedule (`{"enabled": false|true}`); see
/// `Catalog::set_schedule_enabled` for what resuming does with the paused due times.
pub async fn set_enabled(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(req): Json<Enabled>,
) -> ApiResult<Json<Schedule>> {
    let st = state.clone();
    let s = tokio::task::spawn_blocking(move || st.engine.catalog.set_schedule_enabled(&p.actor(), &name, req.enabled));
    Ok(Json(s.await??))
}

#[derive(Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// The newest runs of a schedule (default 100), newest first, with their host entries.
pub async fn runs(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Vec<ScheduleRun>>> {
    let st = state.clone();
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.list_runs(&name, limit)).await??))
}
