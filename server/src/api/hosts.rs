//! Hosts: the machines Kura backs up.

use super::{ApiResult, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kura_catalogs::db::{Host, NewHost, Principal};
use serde::Deserialize;
use std::sync::Arc;

pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<Host>>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.list_hosts()).await??))
}

pub async fn show(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<Json<Host>> {
    let st = state.clone();
    Ok(Json(tokio::task::spawn_blocking(move || st.engine.catalog.get_host(&name)).await??))
}

#[derive(Deserialize)]
pub struct CreateHost {
    #[serde(flatten)]
    host: NewHost,
    #[serde(default)]
    macs: Vec<String>,
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(req): Json<CreateHost>,
) -> ApiResult<(StatusCode, Json<Host>)> {
    let st = state.clone();
    let host = tokio::task::spawn_blocking(move || -> kura_catalogs::db::Result<Host> {
        st.engine.catalog.create_host(&p.actor(), &req.host)?;
        for mac in &req.macs {
            st.engine.catalog.add_mac(&p.actor(), &req.host.name, mac)?;
        }
        st.engine.catalog.get_host(&req.host.name)
    })
    .await??;
    Ok((StatusCode::CREATED, Json(host)))
}

/// `PUT /hosts/{name}/secure-boot`: the boot chain of the host's UEFI netboots (`null`: the
/// netboot configuration's default).
pub async fn set_secure_boot(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(req): Json<kura_protocol::secure_boot::SetSecureBoot>,
) -> ApiResult<Json<Host>> {
    let st = state.clone();
    let host =
        tokio::task::spawn_blocking(move || st.engine.catalog.set_secure_boot(&p.actor(), &name, req.secure_boot))
            .await??;
    Ok(Json(host))
}

/// `POST /hosts/{name}/macs` body: one MAC address to add (any common notation).
#[derive(Deserialize)]
pub struct AddMac {
    mac: String,
}

/// `POST /hosts/{name}/macs`: the host also netboots from this MAC address (a replacement
/// machine, a second NIC). `409` when another host has it.
pub async fn add_mac(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Json(req): Json<AddMac>,
) -> ApiResult<Json<Host>> {
    let st = state.clone();
    let host = tokio::task::spawn_blocking(move || -> kura_catalogs::db::Result<Host> {
        st.engine.catalog.add_mac(&p.actor(), &name, &req.mac)?;
        st.engine.catalog.get_host(&name)
    })
    .await??;
    Ok(Json(host))
}

/// `DELETE /hosts/{name}/macs/{mac}`: `404` when the host does not have it.
pub async fn remove_mac(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((name, mac)): Path<(String, String)>,
) -> ApiResult<Json<Host>> {
    let st = state.clone();
    let host = tokio::task::spawn_blocking(move || -> kura_catalogs::db::Result<Host> {
        st.engine.catalog.remove_mac(&p.actor(), &name, &mac)?;
        st.engine.catalog.get_host(&name)
    })
    .await??;
    Ok(Json(host))
}
