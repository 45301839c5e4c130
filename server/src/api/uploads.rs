//! Upload routes: the capture half of the wire protocol (begin → missing → chunks → commit).
//! Each handler parses, takes its [`Caller`], calls one function of the uploads service
//! (`crate::engine::uploads`, where the sessions and the commit rule live) and renders.

use super::{ApiError, ApiResult, AppState};
use crate::engine::{uploads, Caller};
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kura_protocol::uploads::{BeginUpload, Committed, UploadStarted};
use std::sync::Arc;

pub async fn begin(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<BeginUpload>,
) -> ApiResult<(StatusCode, Json<UploadStarted>)> {
    let engine = state.engine.clone();
    let started = tokio::task::spawn_blocking(move || uploads::begin(&engine, &caller, req)).await??;
    Ok((StatusCode::CREATED, Json(started)))
}

pub async fn missing(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(upload): Path<String>,
    body: Bytes,
) -> ApiResult<Vec<u8>> {
    let engine = state.engine.clone();
    Ok(tokio::task::spawn_blocking(move || uploads::missing(&engine, &caller, &upload, &body)).await??)
}

pub async fn put_chunk(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((upload, digest)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let engine = state.engine.clone();
    let new =
        tokio::task::spawn_blocking(move || uploads::put_chunk(&engine, &caller, &upload, &digest, &body)).await??;
    Ok(if new { StatusCode::CREATED } else { StatusCode::OK })
}

/// 201 with the reply; a repeated commit of the same manifest (a retry after a lost reply)
/// gets 200 with the same reply.
///
/// The body is read only once the commit has its turn ([`crate::engine::uploads::CommitGate`]),
/// so commits in parallel hold at most `COMMITS_AT_ONCE` bodies and decoded manifests; a body
/// whose declared length is over the route's limit is refused before a byte of it is read.
pub async fn commit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(upload): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Committed>)> {
    let limit = kura_protocol::routes::UPLOAD_COMMIT.body_limit;
    let too_large = || ApiError::TooLarge(format!("a commit body is at most {limit} bytes"));
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let engine = state.engine.clone();
    let _turn = state.engine.commits.enter().await?;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    let out = tokio::task::spawn_blocking(move || uploads::commit(&engine, &caller, &upload, &body)).await??;
    Ok((if out.fresh { StatusCode::CREATED } else { StatusCode::OK }, Json(out.reply)))
}

pub async fn abort(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(upload): Path<String>,
) -> ApiResult<StatusCode> {
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || uploads::abort(&engine, &caller, &upload)).await??;
    Ok(StatusCode::NO_CONTENT)
}
