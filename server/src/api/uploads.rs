//! Upload sessions: the capture half of the wire protocol (begin → missing → chunks → commit).
//!
//! The server never trusts a chunk: each body is decoded and its SHA-256 compared with the
//! digest in the URL before it is stored. A snapshot becomes visible only at commit, after the
//! store has made every chunk and then the manifest durable; an abandoned session leaves only
//! unreferenced chunks for the garbage collector.

use super::auth::agent_job;
use super::{ApiError, ApiResult, AppState, UPLOAD_IDLE};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::{JobKind, JobState, NewHost, NewSnapshot, Principal, Role, SnapshotKind};
use kura_catalogs::gc::WriterId;
use kura_imaging::chunk::{ChunkSink, Decoder, Digest, DEFAULT_CHUNK_SIZE};
use kura_imaging::manifest::{ChunkRef, Manifest};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

pub struct Upload {
    writer: WriterId,
    host: String,
    name: Option<String>,
    kind: SnapshotKind,
    job: Option<i64>,
    /// The token that began the session; only it (or an admin) may continue it.
    owner: i64,
    uploaded: HashSet<Digest>,
    new_bytes: u64,
    last_seen: Instant,
}

#[derive(Deserialize)]
pub struct BeginRequest {
    host: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<SnapshotKind>,
    #[serde(default)]
    job: Option<i64>,
}

fn random_id() -> ApiResult<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

pub async fn begin(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<BeginRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let (name, asked_kind) = (req.name.clone(), req.kind);
    let st = state.clone();
    let p2 = p.clone();
    let (host, job, kind) = tokio::task::spawn_blocking(move || -> ApiResult<(String, Option<i64>, SnapshotKind)> {
        // The snapshot of a job a schedule released is a scheduled one, whatever the client says.
        let kind = |job: Option<i64>| -> ApiResult<SnapshotKind> {
            let scheduled = match job {
                Some(j) => st.catalog.schedule_of_job(j)?.is_some(),
                None => false,
            };
            Ok(if scheduled { SnapshotKind::Scheduled } else { asked_kind.unwrap_or(SnapshotKind::Manual) })
        };
        if let Some(own) = agent_job(&p2) {
            // An agent uploads only the snapshot of its own, running capture job.
            let job = st.catalog.get_job(own)?;
            if req.job != Some(own) || job.kind != JobKind::Capture || job.state != JobState::Running {
                return Err(ApiError::Forbidden(format!(
                    "this agent token may only upload for its running capture job {own}"
                )));
            }
            return Ok((job.host, Some(own), kind(Some(own))?));
        }
        if p2.role == Role::Agent {
            return Err(ApiError::Forbidden("agent token without a job".into()));
        }
        if let Some(j) = req.job {
            let job = st.catalog.get_job(j)?;
            if job.host != req.host {
                return Err(ApiError::BadRequest(format!("job {j} belongs to host {}", job.host)));
            }
        }
        if let Err(kura_catalogs::db::CatalogError::NotFound { .. }) = st.catalog.get_host(&req.host) {
            st.catalog.create_host(&p2.actor(), &NewHost { name: req.host.clone(), ..Default::default() })?;
        }
        let k = kind(req.job)?;
        Ok((req.host, req.job, k))
    })
    .await??;
    let id = random_id()?;
    let writer = state.writers.register();
    state.uploads.lock().expect("lock").insert(
        id.clone(),
        Upload {
            writer,
            host,
            name,
            kind,
            job,
            owner: p.token_id,
            uploaded: HashSet::new(),
            new_bytes: 0,
            last_seen: Instant::now(),
        },
    );
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "upload": id, "chunk_size": DEFAULT_CHUNK_SIZE }))))
}

/// Looks up a session the principal may use; returns its writer.
fn session(state: &AppState, upload: &str, p: &Principal) -> ApiResult<WriterId> {
    let mut uploads = state.uploads.lock().expect("lock");
    let u = uploads.get_mut(upload).ok_or_else(|| ApiError::NotFound(format!("no upload session {upload}")))?;
    if u.owner != p.token_id && p.role != Role::Admin {
        return Err(ApiError::Forbidden(format!("upload session {upload} belongs to another token")));
    }
    u.last_seen = Instant::now();
    if let Some(job) = u.job {
        state.watchdog.touch(job);
    }
    Ok(u.writer)
}

pub async fn missing(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(upload): Path<String>,
    body: Bytes,
) -> ApiResult<Vec<u8>> {
    let writer = session(&state, &upload, &p)?;
    let digests: Vec<Digest> = kura_protocol::uploads::decode_digests(&body).map_err(ApiError::BadRequest)?;
    let st = state.clone();
    let answer = tokio::task::spawn_blocking(move || st.writers.missing(writer, &st.store, &digests))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("upload session {upload} has ended")))?;
    use kura_protocol::uploads::missing::{MISSING, PRESENT};
    Ok(answer.into_iter().map(|m| if m { MISSING } else { PRESENT }).collect())
}

thread_local! {
    static DECODER: RefCell<Option<(Decoder, Vec<u8>)>> = const { RefCell::new(None) };
}

/// Fully checks an uploaded chunk against its digest.
fn check_chunk(d: &Digest, blob: &[u8]) -> Result<(), kura_imaging::Error> {
    DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some((Decoder::new()?, Vec::new()));
        }
        let (dec, buf) = slot.as_mut().expect("decoder");
        dec.decode_into(blob, d, buf)
    })
}

pub async fn put_chunk(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((upload, digest)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let writer = session(&state, &upload, &p)?;
    let d: Digest = digest.parse().map_err(ApiError::BadRequest)?;
    let st = state.clone();
    let len = body.len() as u64;
    let stored = tokio::task::spawn_blocking(move || -> ApiResult<bool> {
        check_chunk(&d, &body)?;
        // Protect the chunk before it exists, so a collection cannot remove it between the
        // write and the protection.
        if !st.writers.touch(writer, &d) {
            return Err(ApiError::NotFound(format!("upload session {upload} has ended")));
        }
        let new = st.store.put_chunk(&d, &body)?;
        if let Some(u) = st.uploads.lock().expect("lock").get_mut(&upload) {
            u.uploaded.insert(d);
            if new {
                u.new_bytes += len;
            }
        }
        if new {
            st.ingested.add(len);
        }
        Ok(new)
    })
    .await??;
    Ok(if stored { StatusCode::CREATED } else { StatusCode::OK })
}

pub async fn commit(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(upload): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    session(&state, &upload, &p)?;
    let st = state.clone();
    let actor = p.actor();
    let up = upload.clone();
    let out = tokio::task::spawn_blocking(move || -> ApiResult<serde_json::Value> {
        let manifest = Manifest::decode(&body)?;
        // A manifest whose creation time does not parse is a bad manifest (400), refused
        // before anything reaches the store.
        let created = manifest.created_unix()?;
        let (host, job, new_bytes, reused_bytes, name, kind) = {
            let uploads = st.uploads.lock().expect("lock");
            let u = uploads.get(&up).ok_or_else(|| ApiError::NotFound(format!("no upload session {up}")))?;
            let mut reused = 0u64;
            let mut seen = HashSet::new();
            for r in &manifest.regions {
                for (i, c) in r.chunks.iter().enumerate() {
                    if let ChunkRef::Data(d) = c {
                        if !u.uploaded.contains(d) && seen.insert(*d) {
                            reused += manifest.chunk_len(r, i);
                        }
                    }
                }
            }
            (u.host.clone(), u.job, u.new_bytes, reused, u.name.clone().or(manifest.name.clone()), u.kind)
        };
        if manifest.host.as_deref() != Some(host.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "the manifest names host {:?} but this upload is for {host:?}",
                manifest.host
            )));
        }
        if let Some(j) = job {
            // A job that ended meanwhile (cancelled, or failed by the agent watchdog) takes no
            // snapshot: refuse before the manifest reaches the store.
            let state = st.catalog.get_job(j)?.state;
            if state != JobState::Running {
                return Err(ApiError::Conflict(format!("job {j} is {state}: its snapshot is not committed")));
            }
        }
        let id = st.store.commit_manifest(&manifest)?;
        let record = NewSnapshot {
            id: id.clone(),
            host,
            disk: None,
            name,
            kind,
            created,
            disk_size: manifest.disk_size(),
            used_bytes: manifest.used_bytes(),
            new_bytes,
            reused_bytes,
        };
        let recorded = match job {
            Some(j) => st.catalog.commit_capture(&actor, j, &record).map(|_| ()),
            None => st.catalog.add_snapshot(&actor, &record).map(|_| ()),
        };
        if let Err(e) = recorded {
            // The store is the source of truth at the next start: a manifest the catalog
            // refused must not come back from it as a snapshot.
            if let Err(rm) = st.store.remove_manifest(&id) {
                tracing::error!("snapshot {id} was refused by the catalog ({e}) and could not be removed: {rm}");
            }
            return Err(e.into());
        }
        Ok(serde_json::json!({ "snapshot": id, "new_bytes": new_bytes, "reused_bytes": reused_bytes }))
    })
    .await??;
    end_session(&state, &upload);
    state.store_changed();
    Ok((StatusCode::CREATED, Json(out)))
}

fn end_session(state: &AppState, upload: &str) {
    if let Some(u) = state.uploads.lock().expect("lock").remove(upload) {
        state.writers.unregister(u.writer);
    }
}

pub async fn abort(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(upload): Path<String>,
) -> ApiResult<StatusCode> {
    session(&state, &upload, &p)?;
    end_session(&state, &upload);
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every upload session of job `job` (its agent went silent).
pub fn abort_job_sessions(state: &AppState, job: i64) {
    let ids: Vec<String> = state
        .uploads
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, u)| u.job == Some(job))
        .map(|(k, _)| k.clone())
        .collect();
    for id in ids {
        tracing::warn!("upload session {id} of job {job} aborted");
        end_session(state, &id);
    }
}

/// Aborts sessions idle for longer than [`UPLOAD_IDLE`].
pub async fn expire_idle_loop(state: Arc<AppState>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let idle: Vec<String> = state
            .uploads
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, u)| u.last_seen.elapsed() > UPLOAD_IDLE)
            .map(|(k, _)| k.clone())
            .collect();
        for id in idle {
            tracing::warn!("upload session {id} idle for over {UPLOAD_IDLE:?}: aborted");
            end_session(&state, &id);
        }
    }
}
