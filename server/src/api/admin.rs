//! Administration: tokens (create, list, revoke), retention, garbage collection,
//! verification, the audit log.

use super::{ApiError, ApiResult, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::{Principal, RetentionScope, Role, TokenInfo};
use kura_catalogs::gc::{self, GcOptions};
use kura_catalogs::retention::Rule;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "protocol": 1, "version": env!("CARGO_PKG_VERSION") }))
}

#[derive(Deserialize)]
pub struct CreateToken {
    role: Role,
    label: String,
    /// The user the token belongs to (created with `role` if missing; default: named after
    /// the role).
    #[serde(default)]
    user: Option<String>,
    /// Lifetime in seconds from now, by the engine's clock (default: no expiry).
    #[serde(default)]
    expires_in: Option<i64>,
    /// Expiry time, unix seconds (instead of `expires_in`).
    #[serde(default)]
    expires_at: Option<i64>,
}

pub async fn create_token(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<CreateToken>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if req.role == Role::Agent {
        return Err(ApiError::BadRequest("agent tokens are issued with their job (POST /jobs)".into()));
    }
    if req.expires_in.is_some() && req.expires_at.is_some() {
        return Err(ApiError::BadRequest("give expires_in or expires_at, not both".into()));
    }
    if req.expires_in.is_some_and(|s| s <= 0) {
        return Err(ApiError::BadRequest("expires_in must be a positive number of seconds".into()));
    }
    let st = state.clone();
    let issued = tokio::task::spawn_blocking(move || {
        let now = st.engine.catalog.now();
        let expires = match (req.expires_in, req.expires_at) {
            (Some(s), _) => {
                Some(now.checked_add(s).ok_or_else(|| ApiError::BadRequest(format!("expires_in {s} is too long")))?)
            }
            (None, at) => at,
        };
        if req.role.is_peer() {
            if req.user.is_some() {
                return Err(ApiError::BadRequest(format!("a {} token belongs to no user", req.role)));
            }
            return Ok(st.engine.catalog.create_peer_token(&p.actor(), req.role, &req.label, expires)?);
        }
        let user = req.user.unwrap_or_else(|| req.role.to_string());
        match st.engine.catalog.get_user(&user) {
            Ok(u) if u.role != req.role => {
                return Err(ApiError::Conflict(format!("user {user} has role {}, not {}", u.role, req.role)))
            }
            Ok(_) => {}
            Err(kura_catalogs::db::CatalogError::NotFound { .. }) => {
                st.engine.catalog.create_user(&p.actor(), &user, req.role)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(st.engine.catalog.create_token(&p.actor(), &user, &req.label, expires)?)
    })
    .await??;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": issued.secret, "id": issued.info.id, "expires": issued.info.expires })),
    ))
}

/// `GET /tokens`: every token, never with its secret (the catalog keeps only hashes).
pub async fn list_tokens(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<TokenInfo>>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.list_tokens()).await??))
}

/// `DELETE /tokens/{id}`: revokes a token at once; the browser sessions made from it end too.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("{id:?} is not a token id")))?;
    let st = state.clone();
    let info = tokio::task::spawn_blocking(move || st.engine.catalog.revoke_token(&p.actor(), id)).await??;
    state.sessions.end_token(id);
    Ok(Json(info))
}

#[derive(Deserialize)]
pub struct ApplyRetention {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    group: Option<String>,
    /// Sets the rule for the host or group before applying it.
    #[serde(default)]
    rule: Option<Rule>,
    #[serde(default)]
    dry_run: bool,
}

/// Sets (optionally) and applies retention: deletes the snapshots the rule does not keep. The
/// chunks they alone used are reclaimed by the next garbage collection.
pub async fn apply_retention(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<ApplyRetention>,
) -> ApiResult<Json<serde_json::Value>> {
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || -> ApiResult<serde_json::Value> {
        let scope = match (&req.host, &req.group) {
            (Some(h), None) => Some(RetentionScope::Host(h.clone())),
            (None, Some(g)) => Some(RetentionScope::Group(g.clone())),
            (None, None) => None,
            _ => return Err(ApiError::BadRequest("give a host or a group, not both".into())),
        };
        if let Some(rule) = req.rule {
            let scope = scope.clone().ok_or_else(|| ApiError::BadRequest("a rule needs a host or a group".into()))?;
            rule.validate().map_err(|e| ApiError::BadRequest(e.to_string()))?;
            st.engine.catalog.set_retention(&p.actor(), &scope, rule)?;
        }
        let hosts: Vec<String> = st
            .engine
            .catalog
            .list_hosts()?
            .into_iter()
            .filter(|h| match &scope {
                Some(RetentionScope::Host(n)) => &h.name == n,
                Some(RetentionScope::Group(g)) => h.group.as_deref() == Some(g.as_str()),
                None => true,
            })
            .map(|h| h.name)
            .collect();
        let (mut deleted, mut locked) = (Vec::new(), Vec::new());
        for host in hosts {
            let Some(plan) = st.engine.catalog.retention_plan(&host)? else { continue };
            for id in plan.delete {
                // S3 Object Lock: reported, not deleted (checked before the catalog is touched).
                match st.engine.store.check_manifest_removable(&id) {
                    Err(kura_imaging::Error::Locked { mode, until, .. }) => {
                        let until = until.map(kura_imaging::time::format_rfc3339);
                        locked.push(serde_json::json!({ "host": host, "snapshot": id, "mode": mode, "until": until }));
                        continue;
                    }
                    r => r?,
                }
                if !req.dry_run {
                    st.engine.catalog.mark_snapshot_deleting(&p.actor(), &id)?;
                    for m in st.engine.catalog.snapshot_manifests(&id)? {
                        st.engine.store.remove_manifest(&m)?;
                    }
                    st.engine.catalog.remove_snapshot(&p.actor(), &id)?;
                }
                deleted.push(serde_json::json!({ "host": host, "snapshot": id }));
            }
        }
        Ok(serde_json::json!({ "deleted": deleted, "locked": locked, "dry_run": req.dry_run }))
    })
    .await??;
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct GcRequest {
    /// Seconds; chunks younger than this are kept (default 3600).
    #[serde(default)]
    grace: Option<u64>,
    #[serde(default)]
    dry_run: bool,
}

pub async fn gc(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<GcRequest>,
) -> ApiResult<Json<gc::GcReport>> {
    let _running = state.gc_running.lock().await;
    let st = state.clone();
    let report = tokio::task::spawn_blocking(move || -> ApiResult<gc::GcReport> {
        let opts = GcOptions {
            grace: Duration::from_secs(req.grace.unwrap_or(3600)),
            dry_run: req.dry_run,
            writers_since: crate::engine::cluster::writers_since(&st.engine)?,
        };
        let report = gc::collect(&*st.engine.store, &st.engine.writers, &opts)?;
        st.engine.catalog.record_audit(&p.actor(), "gc", "store", serde_json::to_value(&report).unwrap_or_default())?;
        Ok(report)
    })
    .await??;
    state.engine.store_changed();
    Ok(Json(report))
}

#[derive(Deserialize)]
pub struct VerifyRequest {
    #[serde(default)]
    snapshot: Option<String>,
    /// Move damaged chunks to quarantine (default true).
    #[serde(default = "yes")]
    quarantine: bool,
}

fn yes() -> bool {
    true
}

pub async fn verify(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<VerifyRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || -> ApiResult<serde_json::Value> {
        if let Some(s) = &req.snapshot {
            snapshot_in_store(&st, s)?;
        }
        let threads = kura_imaging::capture::default_threads();
        let report = st.engine.store.verify(req.snapshot.as_deref(), threads, &kura_imaging::progress::NoProgress)?;
        let mut quarantined = Vec::new();
        if req.quarantine {
            for d in &report.damaged {
                if d.reason == "missing" {
                    continue;
                }
                let digest = d.digest.parse().map_err(ApiError::Internal)?;
                quarantined.push(st.engine.store.quarantine_chunk(&digest)?);
            }
        }
        st.engine.catalog.record_audit(
            &p.actor(),
            "verify",
            req.snapshot.as_deref().unwrap_or("store"),
            serde_json::json!({ "ok": report.ok, "damaged": report.damaged.len(), "quarantined": quarantined.len() }),
        )?;
        let mut v = serde_json::to_value(&report).map_err(|e| ApiError::Internal(e.to_string()))?;
        v["quarantined"] = serde_json::json!(quarantined);
        Ok(v)
    })
    .await??;
    state.engine.store_changed();
    Ok(Json(out))
}

/// Checks that `id` (a snapshot id or a unique prefix of one) names one snapshot in the store:
/// a malformed or ambiguous one is a bad request, an unknown one is not found.
fn snapshot_in_store(state: &AppState, id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!("{id:?} is not a snapshot id (up to 16 hex digits)")));
    }
    let matches = state.engine.store.snapshot_ids()?.into_iter().filter(|s| s.starts_with(id)).count();
    match matches {
        0 => Err(ApiError::NotFound(format!("no snapshot {id}"))),
        1 => Ok(()),
        n => Err(ApiError::BadRequest(format!("snapshot id {id:?} is ambiguous ({n} snapshots)"))),
    }
}

#[derive(Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
}

pub async fn audit(
    State(state): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<kura_catalogs::db::AuditEntry>>> {
    let st = state.clone();
    Ok(Json(
        tokio::task::spawn_blocking(move || st.engine.catalog.list_audit(q.limit.unwrap_or(100).min(10_000))).await??,
    ))
}
