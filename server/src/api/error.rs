//! The API's one error type. Client mistakes become 4xx with a message naming the problem;
//! server faults become 500 with a generic message, the details going to the log only.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kura_catalogs::db::CatalogError;

#[derive(Debug)]
pub enum ApiError {
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    /// A chunk whose content does not match its digest.
    Unprocessable(String),
    StoreFull(String),
    /// A device the engine talks to on the client's behalf (a BMC) failed: 502 with its message.
    BadGateway(String),
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::StoreFull(m) => (StatusCode::INSUFFICIENT_STORAGE, m),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, m),
            ApiError::Internal(m) => {
                tracing::error!("internal error: {m}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal server error (see the server log)".to_string())
            }
        };
        (status, Json(serde_json::json!({ "error": msg }))).into_response()
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            CatalogError::Conflict { .. } | CatalogError::InvalidTransition { .. } => ApiError::Conflict(e.to_string()),
            CatalogError::Invalid(_) | CatalogError::Retention(_) => ApiError::BadRequest(e.to_string()),
            CatalogError::Forbidden(_) => ApiError::Forbidden(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<kura_imaging::Error> for ApiError {
    fn from(e: kura_imaging::Error) -> Self {
        use kura_imaging::Error as E;
        match e {
            E::ChunkCorrupt { .. } => ApiError::Unprocessable(e.to_string()),
            E::ChunkMissing { .. } => ApiError::Conflict(e.to_string()),
            E::Manifest(_) => ApiError::BadRequest(e.to_string()),
            E::Store { ref message, .. } if message.contains("the store is full") => ApiError::StoreFull(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::power::PowerError> for ApiError {
    fn from(e: crate::power::PowerError) -> Self {
        use crate::power::PowerError as P;
        match e {
            P::Device { .. } => ApiError::BadGateway(e.to_string()),
            P::Unsupported(m) => ApiError::Conflict(m),
            P::Catalog(c) => c.into(),
            P::Secret(s) => ApiError::Internal(s.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("worker task failed: {e}"))
    }
}
