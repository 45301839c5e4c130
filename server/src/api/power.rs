//! Power control routes (admin only): a host's power settings (the password is write-only:
//! answers say `"password": "set"`, never the value) and manual power actions. The policy
//! itself lives in `crate::power`.

use super::{ApiError, ApiResult, AppState};
use crate::power::Action;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::{PasswordChange, PowerSettings, PowerView, Principal};
use serde::Deserialize;
use std::sync::Arc;

pub async fn show(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<Json<PowerView>> {
    let st = state.clone();
    let p = tokio::task::spawn_blocking(move || -> ApiResult<PowerView> {
        let control = st
            .engine
            .catalog
            .get_power(&name)?
            .ok_or_else(|| ApiError::NotFound(format!("host {name} has no power control")))?;
        Ok(control.view())
    })
    .await??;
    Ok(Json(p))
}

#[derive(Deserialize)]
pub struct SetPower {
    #[serde(flatten)]
    settings: PowerSettings,
    /// The BMC password; absent keeps the stored one.
    #[serde(default)]
    password: Option<String>,
}

pub async fn set(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(req): Json<SetPower>,
) -> ApiResult<Json<PowerView>> {
    let st = state.clone();
    let view = tokio::task::spawn_blocking(move || -> ApiResult<PowerView> {
        let password = match &req.password {
            Some(pw) if pw.is_empty() => return Err(ApiError::BadRequest("the password is empty".into())),
            Some(pw) => {
                PasswordChange::Set(st.engine.power.seal_password(pw).map_err(|e| ApiError::Internal(e.to_string()))?)
            }
            None => PasswordChange::Keep,
        };
        Ok(st.engine.catalog.set_power(&p.actor(), &name, &req.settings, password)?.view())
    })
    .await??;
    Ok(Json(view))
}

pub async fn clear(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.engine.catalog.clear_power(&p.actor(), &name)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a power action now and answers when the BMC has (502 naming the BMC and the step if it
/// failed).
pub async fn act(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let action: Action = action.parse().map_err(ApiError::BadRequest)?;
    let st = state.clone();
    let done = tokio::task::spawn_blocking(move || st.engine.power.act(&p.actor(), &name, action)).await??;
    Ok(Json(serde_json::json!({ "action": action.as_str(), "done": done })))
}
