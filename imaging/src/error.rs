//! The imaging error type. See the crate docs for the error policy.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("partition table: {0}")]
    Layout(#[from] crate::layout::LayoutError),
    #[error("source is truncated: {what} needs {needed} bytes but the source has {actual}")]
    Truncated { what: String, needed: u64, actual: u64 },
    #[error("target is too small: the snapshot needs {needed} bytes but the target has {actual}")]
    TargetTooSmall { needed: u64, actual: u64 },
    /// The restore target cannot be used (mounted, not a device or file, absent).
    #[error("{0}")]
    Target(String),
    #[error("chunk {digest} is damaged: {reason}")]
    ChunkCorrupt { digest: String, reason: String },
    #[error("chunk {digest} is missing from the store")]
    ChunkMissing { digest: String },
    #[error("manifest is invalid: {0}")]
    Manifest(String),
    #[error("chunk store: {message}")]
    Store { message: String, retryable: bool },
    /// The store has no room left (`ENOSPC` locally, `507` from an engine): not retryable, and
    /// reported to clients as its own kind.
    #[error("chunk store: {message}")]
    StoreFull { message: String },
    #[error("cancelled")]
    Cancelled,
    /// The object is under S3 Object Lock (a retention that has not ended, or a legal hold):
    /// the store refuses to delete it. `until` is the retain-until time (unix seconds), `None`
    /// for a legal hold.
    #[error("{object} is locked (S3 Object Lock, {mode}) {}: it cannot be deleted before then", locked_until(.until))]
    Locked { object: String, mode: String, until: Option<i64> },
}

fn locked_until(until: &Option<i64>) -> String {
    match until {
        Some(t) => format!("until {}", crate::time::format_rfc3339(*t)),
        None => "until its legal hold is removed".to_string(),
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// Whether trying the same operation again may succeed (transient I/O, a store that was
    /// briefly unavailable) as opposed to a permanent fault of the input.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            Error::Store { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// Adds context to `io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}
