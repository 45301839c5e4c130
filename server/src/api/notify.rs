//! Notification targets over the API (admins only): list, add, remove, and send a test
//! message to each. Delivery itself is `crate::notify`.

use super::{ApiError, ApiResult, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::{NotifyConfig, NotifyTarget, Principal};
use std::sync::Arc;

pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<NotifyTarget>>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.list_notify_targets()).await??))
}

/// Body: a [`NotifyConfig`], e.g. `{"kind": "webhook", "url": "https://..."}`.
pub async fn add(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(config): Json<NotifyConfig>,
) -> ApiResult<(StatusCode, Json<NotifyTarget>)> {
    let st = state.clone();
    let t = tokio::task::spawn_blocking(move || st.engine.catalog.add_notify_target(&p.actor(), &config)).await??;
    Ok((StatusCode::CREATED, Json(t)))
}

pub async fn remove(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.engine.catalog.remove_notify_target(&p.actor(), id)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a test message to every target (one attempt each) and reports each outcome.
pub async fn test(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let results = state.engine.notifier.send_test().await.map_err(ApiError::Internal)?;
    let ok = results.iter().all(|r| r.ok);
    Ok(Json(serde_json::json!({ "ok": ok, "targets": results })))
}
