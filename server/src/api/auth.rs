//! Authentication and role checks, applied to every route from the route table.
//!
//! A request carries `Authorization: Bearer <token>`. The token is looked up (by hash) in the
//! catalog; the resulting [`Principal`] is checked against the route's [`Access`] and handed to
//! the handler as an extension. Agent tokens must also present the MAC address they are bound
//! to (`X-Kura-Mac`). Handlers take the [`Caller`] extractor (the principal and, for an agent,
//! its job — an agent token without a job is refused there, once) or [`JobCaller`] for the
//! `/jobs/{id}` routes (which also refuses an agent another job). Page routes
//! ([`Access::Page`]) also accept the status page's session cookie (`super::web`).

use super::{ApiError, AppState};
use crate::engine::Caller;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use kura_catalogs::db::{Principal, Role};
use std::sync::Arc;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// Admin only.
    Admin,
    /// Operator or admin.
    Operator,
    /// Operator, admin, or a reader (a DR engine pulling from this one: it lists hosts and
    /// snapshots).
    OperatorOrReader,
    /// Operator, admin, or an agent acting on its own job (checked by the handler).
    OperatorOrAgent,
    /// Reading a snapshot's manifest and chunks: operator, admin, an agent for the snapshot its
    /// own restore job restores (checked by the handler), or a reader.
    ReadSnapshot,
    /// The upload routes: operator, admin, an agent on its own job, or a replica (a primary
    /// engine pushing snapshots; it may add, never delete or overwrite: the uploads service
    /// checks its commits).
    Upload,
    /// What a primary engine replicating to this one may read about it (its quarantine mark):
    /// a replica token, or an admin.
    Replica,
    /// What a DR engine pulling from this one reports (the snapshots it now holds): a reader
    /// token only.
    Reader,
    /// A browser page for operators and admins: a status-page session cookie (see `web`) or
    /// an operator's bearer token; a request with neither is redirected to `/login`.
    Page,
}

impl Access {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public => true,
            Access::Admin => role == Role::Admin,
            Access::Operator | Access::Page => role.is_staff(),
            Access::OperatorOrReader => role.is_staff() || role == Role::Reader,
            Access::OperatorOrAgent => role.is_staff() || role == Role::Agent,
            Access::ReadSnapshot => role.is_staff() || matches!(role, Role::Agent | Role::Reader),
            Access::Upload => role.is_staff() || matches!(role, Role::Agent | Role::Replica),
            Access::Replica => matches!(role, Role::Admin | Role::Replica),
            Access::Reader => role == Role::Reader,
        }
    }
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers().get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

pub async fn require(
    State((state, access)): State<(Arc<AppState>, Access)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if access == Access::Public {
        return Ok(next.run(req).await);
    }
    if access == Access::Page && bearer(&req).is_none() {
        let headers = req.headers().clone();
        return Ok(match super::web::session_principal(&state, &headers).await? {
            Some(p) => {
                req.extensions_mut().insert(p);
                next.run(req).await
            }
            None => super::web::to_login(),
        });
    }
    let token = bearer(&req).ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?.to_string();
    let catalog = state.engine.catalog.clone();
    let principal = tokio::task::spawn_blocking(move || catalog.authenticate(&token, catalog.now()))
        .await??
        .ok_or_else(|| ApiError::Unauthorized("unknown, expired or revoked token".into()))?;
    if !access.allows(principal.role) {
        return Err(ApiError::Forbidden(format!("role {} may not use this route", principal.role)));
    }
    if principal.role == Role::Agent {
        let mac = req.headers().get(kura_protocol::client::MAC_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mac = kura_catalogs::db::normalize_mac(mac).unwrap_or_default();
        if principal.mac.as_deref() != Some(mac.as_str()) {
            return Err(ApiError::Forbidden("this agent token is bound to another machine".into()));
        }
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

/// The caller of a route behind [`require`]: its principal, and an agent's job.
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Caller, ApiError> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("a route without authentication asked for its caller".into()))?;
        Ok(Caller::new(principal)?)
    }
}

/// The caller of a `/jobs/{id}` route and the job `id`, once the caller may act on it (staff
/// on any job, an agent on its own).
pub struct JobCaller {
    pub caller: Caller,
    pub job: i64,
}

impl FromRequestParts<Arc<AppState>> for JobCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<JobCaller, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Path(job) = Path::<i64>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("bad job id: {e}")))?;
        caller.may_act_on_job(job)?;
        Ok(JobCaller { caller, job })
    }
}
