//! Remotes and replication rules over the API (admins only; `docs/dr.md`): add, list and
//! remove remotes (the replica token sealed at once, never shown again) and rules, and what
//! each remote still lacks; a resync of what a remote may have lost; and, on a DR engine, its
//! quarantine mark for the primaries, and on a primary the copies its pulling DR engines
//! report (`docs/dr.md`). The sending is `crate::replication`, the pulling
//! `crate::replication_pull`.

use super::{ApiError, ApiResult, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::replication::REMOTE_TOKEN_PURPOSE;
use kura_catalogs::db::{Principal, Remote, ReplicationRule};
use kura_protocol::replication::{AddRemote, AddRule, Pulled, PulledAck, QuarantineMark, Resync, Resynced};
use std::sync::Arc;

pub async fn list_remotes(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<Remote>>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.list_remotes()).await??))
}

pub async fn add_remote(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<AddRemote>,
) -> ApiResult<(StatusCode, Json<Remote>)> {
    let token = req.token.trim();
    if !token.starts_with(kura_catalogs::db::auth::TOKEN_PREFIX) {
        return Err(ApiError::BadRequest("the remote's token is not a Kura token (kura_…)".into()));
    }
    let sealed = state
        .engine
        .secrets
        .seal(REMOTE_TOKEN_PURPOSE, token.as_bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let st = state.clone();
    let remote = tokio::task::spawn_blocking(move || {
        st.engine.catalog.add_remote(&p.actor(), &req.name, &req.url, req.fingerprint.as_deref(), &sealed)
    })
    .await??;
    state.engine.replication.notify_one();
    Ok((StatusCode::CREATED, Json(remote)))
}

pub async fn remove_remote(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.engine.catalog.remove_remote(&p.actor(), &name)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /replication`: `{"rules": [..], "remotes": [backlog per remote]}`.
pub async fn status(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let st = state.clone();
    let (rules, backlog) = tokio::task::spawn_blocking(move || -> ApiResult<_> {
        Ok((st.engine.catalog.list_replication_rules()?, st.engine.catalog.replication_backlog()?))
    })
    .await??;
    Ok(Json(serde_json::json!({ "rules": rules, "remotes": backlog })))
}

pub async fn add_rule(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<AddRule>,
) -> ApiResult<(StatusCode, Json<ReplicationRule>)> {
    let st = state.clone();
    let rule = tokio::task::spawn_blocking(move || {
        st.engine.catalog.add_replication_rule(
            &p.actor(),
            &req.remote,
            req.hosts.as_deref(),
            req.group.as_deref(),
            req.pull,
        )
    })
    .await??;
    Ok((StatusCode::CREATED, Json(rule)))
}

pub async fn remove_rule(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.engine.catalog.remove_replication_rule(&p.actor(), id)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /replication/resync`: queues `snapshot` (or every snapshot copied to the remote) to be
/// checked there again; the worker sends whatever chunks the remote lacks.
pub async fn resync(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<Resync>,
) -> ApiResult<Json<Resynced>> {
    let st = state.clone();
    let queued = tokio::task::spawn_blocking(move || -> ApiResult<u64> {
        let catalog = &st.engine.catalog;
        let remote = catalog.remote_by_name(&req.remote)?;
        let queued = catalog.resync_remote(remote.id, req.snapshot.as_deref())?;
        catalog.record_audit(
            &p.actor(),
            "replicate.resync",
            &req.remote,
            serde_json::json!({ "snapshot": req.snapshot, "queued": queued }),
        )?;
        Ok(queued)
    })
    .await??;
    state.engine.replication.notify_one();
    Ok(Json(Resynced { queued }))
}

/// `GET /replica/quarantine` (a DR engine, for its primaries): the quarantine mark.
pub async fn quarantine_mark(State(state): State<Arc<AppState>>) -> ApiResult<Json<QuarantineMark>> {
    let st = state.clone();
    let mark = tokio::task::spawn_blocking(move || st.engine.catalog.quarantine_mark()).await??;
    Ok(Json(QuarantineMark { mark }))
}

/// `POST /replica/pulled` (reader tokens only): the DR engine pulling with this token holds
/// the snapshot now; it counts in the snapshot's copies, under the token's label.
pub async fn pulled(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<Pulled>,
) -> ApiResult<Json<PulledAck>> {
    let st = state.clone();
    let recorded =
        tokio::task::spawn_blocking(move || st.engine.catalog.record_pulled_copy(&req.snapshot, p.token_id, &p.label))
            .await??;
    Ok(Json(PulledAck { recorded }))
}
