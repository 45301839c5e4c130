//! The API's one error type. Client mistakes become 4xx with a message naming the problem;
//! server faults become 500 with a generic message, the details going to the log only. Every
//! answer carries its [`ErrorKind`] (the protocol's), so clients decide on the kind, never on
//! the text.

use crate::engine::ServiceError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kura_catalogs::db::CatalogError;
use kura_protocol::error::{ErrorBody, ErrorKind};

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
    /// Busy with the same request right now (a commit in progress), or at a global limit:
    /// 503, retry.
    Unavailable(String),
    /// The caller holds too many of something (upload sessions): 429.
    TooMany(String),
    /// A body over the route's limit: 413.
    TooLarge(String),
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// The protocol's kind of this error (and so its status code).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Unauthorized(_) => ErrorKind::Unauthorized,
            ApiError::Forbidden(_) => ErrorKind::Forbidden,
            ApiError::NotFound(_) => ErrorKind::NotFound,
            ApiError::BadRequest(_) => ErrorKind::BadRequest,
            ApiError::Conflict(_) => ErrorKind::Conflict,
            ApiError::Unprocessable(_) => ErrorKind::Corrupt,
            ApiError::StoreFull(_) => ErrorKind::StoreFull,
            ApiError::BadGateway(_) => ErrorKind::BadGateway,
            ApiError::Unavailable(_) => ErrorKind::Unavailable,
            ApiError::TooMany(_) => ErrorKind::TooMany,
            ApiError::TooLarge(_) => ErrorKind::TooLarge,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let msg = match self {
            ApiError::Internal(m) => {
                tracing::error!("internal error: {m}");
                "internal server error (see the server log)".to_string()
            }
            ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::BadRequest(m)
            | ApiError::Conflict(m)
            | ApiError::Unprocessable(m)
            | ApiError::StoreFull(m)
            | ApiError::BadGateway(m)
            | ApiError::Unavailable(m)
            | ApiError::TooMany(m)
            | ApiError::TooLarge(m) => m,
        };
        (status, Json(ErrorBody { error: msg, kind: Some(kind) })).into_response()
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

/// The one mapping of the engine's service errors to answers.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound(m) => ApiError::NotFound(m),
            ServiceError::Forbidden(m) => ApiError::Forbidden(m),
            ServiceError::BadRequest(m) => ApiError::BadRequest(m),
            ServiceError::Conflict(m) => ApiError::Conflict(m),
            ServiceError::Corrupt(m) => ApiError::Unprocessable(m),
            ServiceError::StoreFull(m) => ApiError::StoreFull(m),
            ServiceError::Busy(m) => ApiError::Unavailable(m),
            ServiceError::TooMany(m) => ApiError::TooMany(m),
            ServiceError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<kura_imaging::Error> for ApiError {
    fn from(e: kura_imaging::Error) -> Self {
        use kura_imaging::Error as E;
        match e {
            E::ChunkCorrupt { .. } => ApiError::Unprocessable(e.to_string()),
            E::ChunkMissing { .. } | E::Locked { .. } => ApiError::Conflict(e.to_string()),
            E::Manifest(_) => ApiError::BadRequest(e.to_string()),
            E::StoreFull { .. } => ApiError::StoreFull(e.to_string()),
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
