//! Upload routes: the capture half of the wire protocol (begin → missing → chunks → commit).
//! Each handler parses, takes its [`Caller`], calls one function of the uploads service
//! (`crate::engine::uploads`, where the sessions and the commit rule live) and renders.

use super::{ApiError, ApiResult, AppState};
use crate::engine::{uploads, Caller};
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use kura_protocol::uploads::{BeginUpload, Committed, ParentQuery, PiecesQuery, UploadStarted};
use std::sync::Arc;
use std::time::Duration;

/// A commit body may take this long before it must keep up with [`COMMIT_BODY_MIN_RATE`].
pub const COMMIT_BODY_GRACE: Duration = Duration::from_secs(10);
/// The least average rate of a commit body after [`COMMIT_BODY_GRACE`], bytes per second
/// (1 MiB/s: a 256 MiB manifest, the largest accepted, may take 10 s + 256 s; a LAN carries it
/// in seconds).
pub const COMMIT_BODY_MIN_RATE: u64 = 1 << 20;

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

/// The parent's encoded manifest (decoded on the engine to remember its chunks: CPU work, so
/// on a blocking thread).
pub async fn parent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(upload): Path<String>,
    Query(q): Query<ParentQuery>,
) -> ApiResult<Vec<u8>> {
    let engine = state.engine.clone();
    Ok(tokio::task::spawn_blocking(move || uploads::parent(&engine, &caller, &upload, q.disk.as_deref())).await??)
}

/// Piece digests of parent chunks (each chunk read and decoded: on a blocking thread).
pub async fn pieces(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(upload): Path<String>,
    Query(q): Query<PiecesQuery>,
    body: Bytes,
) -> ApiResult<Vec<u8>> {
    let engine = state.engine.clone();
    Ok(tokio::task::spawn_blocking(move || uploads::pieces(&engine, &caller, &upload, q.size, &body)).await??)
}

/// 201 with the reply; a repeated commit of the same manifest (a retry after a lost reply)
/// gets 200 with the same reply.
///
/// The body is read only once the commit has its turn ([`crate::engine::uploads::CommitGate`]),
/// so commits in parallel hold at most `COMMITS_AT_ONCE` bodies and decoded manifests; a body
/// whose declared length is over the route's limit is refused before a byte of it is read, and
/// one that arrives too slowly ([`read_paced`]) gives its turn back.
pub async fn commit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(upload): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Committed>)> {
    let expected = match headers.get(kura_protocol::uploads::SNAPSHOT_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("bad {} header", kura_protocol::uploads::SNAPSHOT_HEADER)))?
                .to_string(),
        ),
        None => None,
    };
    let limit = kura_protocol::routes::UPLOAD_COMMIT.body_limit;
    let too_large = || ApiError::TooLarge(format!("a commit body is at most {limit} bytes"));
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let engine = state.engine.clone();
    let _turn = state.engine.commits.enter().await?;
    let body = read_paced(body, limit).await?;
    let out = tokio::task::spawn_blocking(move || {
        uploads::commit_expecting(&engine, &caller, &upload, &body, expected.as_deref())
    })
    .await??;
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

/// Reads a commit body of at most `limit` bytes, which must keep pace: at any time `t` after
/// the turn began, at least `(t - COMMIT_BODY_GRACE) · COMMIT_BODY_MIN_RATE` bytes must have
/// arrived. A client that trickles its body (holding one of the few commit turns) is refused
/// with 400 when it falls behind.
async fn read_paced(mut body: Body, limit: usize) -> ApiResult<Bytes> {
    let too_large = || ApiError::TooLarge(format!("a commit body is at most {limit} bytes"));
    let start = tokio::time::Instant::now();
    let mut buf = Vec::with_capacity(body.size_hint().lower().min(limit as u64) as usize);
    loop {
        let allowed = Duration::from_secs_f64(buf.len() as f64 / COMMIT_BODY_MIN_RATE as f64);
        let due = start + COMMIT_BODY_GRACE + allowed;
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout_at(due, next).await {
            Err(_) => {
                return Err(ApiError::BadRequest(format!(
                    "the commit body arrived too slowly: {} bytes in {}s (it must arrive at {} KiB/s or more \
                     after {}s)",
                    buf.len(),
                    start.elapsed().as_secs(),
                    COMMIT_BODY_MIN_RATE >> 10,
                    COMMIT_BODY_GRACE.as_secs()
                )))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ApiError::BadRequest(format!("reading the commit body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}
