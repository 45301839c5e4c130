//! Reading snapshots: listing, manifests and chunks for restores, confirming one held after an
//! unusual boot, and deletion.

use super::{ApiError, ApiResult, AppState};
use crate::engine::Caller;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::{JobKind, Principal, Snapshot};
use kura_imaging::chunk::Digest;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct ListQuery {
    host: Option<String>,
}

/// A listed snapshot with its copies (`docs/dr.md`): `copies` counts this engine and every
/// remote holding it (`copied_to`); `copies_wanted` this engine and every remote that should
/// (by the replication rules, or because it holds it).
#[derive(serde::Serialize)]
pub struct Listed {
    #[serde(flatten)]
    snapshot: Snapshot,
    copies: usize,
    copies_wanted: usize,
    copied_to: Vec<String>,
}

pub async fn list(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> ApiResult<Json<Vec<Listed>>> {
    let st = state.clone();
    Ok(Json(
        tokio::task::spawn_blocking(move || -> ApiResult<Vec<Listed>> {
            let catalog = &st.engine.catalog;
            let snapshots = catalog.list_snapshots(q.host.as_deref())?;
            let mut copies = catalog.snapshot_copies()?;
            let wanted_by_host = catalog.replication_wanted()?;
            Ok(snapshots
                .into_iter()
                .map(|snapshot| {
                    let copied_to = copies.remove(&snapshot.id).unwrap_or_default();
                    let mut wanted: Vec<&str> =
                        wanted_by_host.get(&snapshot.host).into_iter().flatten().map(String::as_str).collect();
                    wanted.extend(copied_to.iter().map(String::as_str));
                    wanted.sort_unstable();
                    wanted.dedup();
                    Listed { copies: 1 + copied_to.len(), copies_wanted: 1 + wanted.len(), copied_to, snapshot }
                })
                .collect())
        })
        .await??,
    ))
}

fn check_id(id: &str) -> ApiResult<()> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("{id:?} is not a snapshot id")))
    }
}

/// An agent may read only the snapshot its own restore job restores.
fn agent_snapshot(state: &AppState, caller: &Caller) -> ApiResult<Option<String>> {
    let Some(job) = caller.agent_job else { return Ok(None) };
    let job = state.engine.catalog.get_job(job)?;
    match (job.kind, job.snapshot) {
        (JobKind::Restore, Some(s)) if job.state.is_active() => Ok(Some(s)),
        _ => Err(ApiError::Forbidden("this agent token may only read the snapshot of its active restore job".into())),
    }
}

pub async fn manifest(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Vec<u8>> {
    check_id(&id)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(allowed) = agent_snapshot(&st, &caller)? {
            if allowed != id {
                return Err(ApiError::Forbidden(format!("this agent token may not read snapshot {id}")));
            }
        }
        Ok(crate::engine::uploads::snapshot_file(&st.engine, &id)?)
    })
    .await?
}

pub async fn chunk(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(digest): Path<String>,
) -> ApiResult<Vec<u8>> {
    let d: Digest = digest.parse().map_err(ApiError::BadRequest)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(snap) = agent_snapshot(&st, &caller)? {
            if !st.snapshot_digests(&snap)?.contains(&d) {
                return Err(ApiError::Forbidden(format!("chunk {d} is not part of snapshot {snap}")));
            }
        }
        match kura_imaging::chunk::ChunkSource::get_chunk(&*st.engine.store, &d) {
            Ok(b) => Ok(b),
            Err(kura_imaging::Error::ChunkMissing { .. }) => Err(ApiError::NotFound(format!("no chunk {d}"))),
            Err(e) => Err(e.into()),
        }
    })
    .await?
}

/// Preflight of a restore: for each digest in the body (32 bytes each, at most 4096), one
/// byte: 0 present and intact (header, length, checksum), 1 missing, 2 damaged.
pub async fn check_chunks(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Vec<u8>> {
    let digests: Vec<Digest> = kura_protocol::uploads::decode_digests(&body).map_err(ApiError::BadRequest)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let allowed = match agent_snapshot(&st, &caller)? {
            Some(snap) => Some(st.snapshot_digests(&snap)?),
            None => None,
        };
        digests
            .iter()
            .map(|d| {
                if allowed.as_ref().is_some_and(|a| !a.contains(d)) {
                    return Err(ApiError::Forbidden(format!("chunk {d} is not part of this agent's snapshot")));
                }
                use kura_protocol::uploads::check;
                Ok(match kura_imaging::chunk::ChunkSource::get_chunk(&*st.engine.store, d) {
                    Ok(blob) if kura_imaging::chunk::check_quick(&blob, d).is_ok() => check::OK,
                    Ok(_) => check::DAMAGED,
                    Err(kura_imaging::Error::ChunkMissing { .. }) => check::MISSING,
                    Err(e) => return Err(e.into()),
                })
            })
            .collect()
    })
    .await?
}

/// `POST /snapshots/{id}/confirm`: accepts a snapshot held unconfirmed (audited by the
/// catalog); answers the snapshot.
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Snapshot>> {
    check_id(&id)?;
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.confirm_snapshot(&p.actor(), &id)).await??))
}

pub async fn remove(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || -> ApiResult<()> {
        // S3 Object Lock: refused (409, naming the date) before the catalog is touched.
        st.engine.store.check_manifest_removable(&id).map_err(|e| match e {
            kura_imaging::Error::Locked { .. } => ApiError::Conflict(format!("snapshot {id} cannot be deleted: {e}")),
            other => other.into(),
        })?;
        st.engine.catalog.mark_snapshot_deleting(&p.actor(), &id)?;
        for m in st.engine.catalog.snapshot_manifests(&id)? {
            st.engine.store.remove_manifest(&m)?;
        }
        st.engine.catalog.remove_snapshot(&p.actor(), &id)?;
        Ok(())
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

/// Limits of a boot test asked through the API.
const BOOT_TEST_MAX_TIMEOUT: u64 = 3600;

#[derive(Deserialize)]
pub struct BootTestRequest {
    /// Console texts that also mean the system came up.
    #[serde(default)]
    expect: Vec<String>,
    firmware: Option<crate::boot_test::Firmware>,
    /// Seconds (default 900, at most [`BOOT_TEST_MAX_TIMEOUT`]).
    timeout: Option<u64>,
    /// Seconds of console silence that fail the test (default 180).
    stall: Option<u64>,
}

/// Boots a committed snapshot in a throwaway QEMU machine on this host (`crate::boot_test`):
/// chunks from the engine's own store, nothing restored or written to it. The verdict is
/// recorded on the snapshot (catalog, audited); a failure is notified. Answers when the test
/// ends.
pub async fn boot_test(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    Json(req): Json<BootTestRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    check_id(&id)?;
    let timeout = req.timeout.unwrap_or(900);
    if timeout == 0
        || timeout > BOOT_TEST_MAX_TIMEOUT
        || req.expect.len() > 16
        || req.expect.iter().any(|e| e.len() > 256)
    {
        return Err(ApiError::BadRequest(format!(
            "a boot test takes 1..={BOOT_TEST_MAX_TIMEOUT} s and at most 16 --expect texts of 256 bytes"
        )));
    }
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || -> ApiResult<serde_json::Value> {
        // An unknown snapshot is a 404, not a failed test.
        st.engine.catalog.get_snapshot(&id)?;
        let r = crate::boot_test::engine::Request {
            firmware: req.firmware.unwrap_or(crate::boot_test::Firmware::Auto),
            timeout: std::time::Duration::from_secs(timeout),
            stall: std::time::Duration::from_secs(req.stall.unwrap_or(180).clamp(10, timeout)),
            expect: req.expect,
        };
        // The verdict and the recorded row (screenshot included) go to the client.
        let o = crate::boot_test::engine::run_and_record(&st.engine, &id, &p.actor(), &r)
            .map_err(|e| ApiError::Internal(format!("{e:#}")))?;
        let mut v = serde_json::to_value(&o.verdict).map_err(|e| ApiError::Internal(e.to_string()))?;
        v["host"] = serde_json::json!(o.host);
        v["finished"] = serde_json::json!(o.recorded.finished);
        v["screenshot"] = serde_json::json!(o.recorded.screenshot);
        Ok(v)
    })
    .await??;
    Ok(Json(out))
}
