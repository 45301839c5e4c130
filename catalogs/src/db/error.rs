//! The catalog error type, [`CatalogError`], and the mapping of SQLite and PostgreSQL failures
//! onto it.
//!
//! Error policy: every variant carries the facts that name the problem (what, which key, which
//! transition) so the HTTP layer can map it to a status (`NotFound` → 404, `Conflict` and
//! `InvalidTransition` → 409, `Invalid` → 400, `Forbidden` → 403, the rest → 500) without
//! parsing messages. [`CatalogError::is_retryable`] says whether trying again may help.

use super::jobs::JobState;
use crate::retention::RetentionError;

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{what} {key:?} not found")]
    NotFound { what: &'static str, key: String },
    #[error("{what} {key:?}: {reason}")]
    Conflict { what: &'static str, key: String, reason: String },
    #[error("job {job} cannot go from {from} to {to}")]
    InvalidTransition { job: i64, from: JobState, to: JobState },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("retention: {0}")]
    Retention(#[from] RetentionError),
    #[error(
        "the catalog database is at schema version {found}, newer than this build of Kura knows \
         ({known}); use a newer Kura"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("catalog database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("catalog database (PostgreSQL): {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot generate a random token: {0}")]
    Random(String),
    #[error("catalog database file {path}: {message}")]
    File { path: String, message: String },
}

impl CatalogError {
    pub(crate) fn not_found(what: &'static str, key: impl ToString) -> Self {
        CatalogError::NotFound { what, key: key.to_string() }
    }

    pub(crate) fn conflict(what: &'static str, key: impl ToString, reason: impl Into<String>) -> Self {
        CatalogError::Conflict { what, key: key.to_string(), reason: reason.into() }
    }

    /// Whether trying the same call again may succeed: only a database that is busy or locked
    /// by another process (after the busy timeout ran out); on PostgreSQL a serialization
    /// failure, a deadlock, a lock timeout, or a lost connection (reopened on the next call).
    pub fn is_retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            CatalogError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            CatalogError::Postgres(e) => {
                e.is_closed()
                    || matches!(
                        e.code(),
                        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == SqlState::T_R_DEADLOCK_DETECTED
                            || *c == SqlState::LOCK_NOT_AVAILABLE
                    )
            }
            _ => false,
        }
    }
}

/// Whether `e` is a UNIQUE or PRIMARY KEY constraint violation (on either backend).
pub(crate) fn is_unique_violation(e: &CatalogError) -> bool {
    match e {
        CatalogError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        }
        CatalogError::Postgres(e) => e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        _ => false,
    }
}
