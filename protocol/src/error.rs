//! [`ProtocolError`]: what went wrong on the wire, as a kind both sides agree on.
//!
//! The engine answers every failure with its kind's HTTP status code and a JSON body
//! `{"error": "<message for a human>", "kind": "<kind>"}`; the client turns the status code (and
//! the kind, when present) back into an [`ErrorKind`]. Decisions — retry, report a missing chunk,
//! stop because the store is full — are made on the kind, never on the message text.

use serde::{Deserialize, Serialize};

/// The kinds of failure the protocol distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400: the request is malformed or names something impossible.
    BadRequest,
    /// 401: no valid token.
    Unauthorized,
    /// 403: the token may not do this.
    Forbidden,
    /// 404: no such resource (or route).
    NotFound,
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    /// 409: the resource's state forbids it (a job that ended, a name taken).
    Conflict,
    /// 413: the body is larger than the route accepts.
    TooLarge,
    /// 422: a chunk or manifest whose content does not match its digest, or is damaged.
    Corrupt,
    /// 429: too many requests or sessions; try later.
    TooMany,
    /// 500: the engine failed; details are in its log.
    Internal,
    /// 502: a device the engine talks to on the client's behalf (a BMC) failed.
    BadGateway,
    /// 503: the engine is starting, stopping or overloaded.
    Unavailable,
    /// 507: the store has no room.
    StoreFull,
    /// No HTTP answer at all: connection refused or reset, timeout, DNS.
    Transport,
    /// The server's certificate is not the pinned one (never retried).
    Tls,
    /// An answer the client cannot read (wrong type, truncated).
    BadReply,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Conflict,
        ErrorKind::TooLarge,
        ErrorKind::Corrupt,
        ErrorKind::TooMany,
        ErrorKind::Internal,
        ErrorKind::BadGateway,
        ErrorKind::Unavailable,
        ErrorKind::StoreFull,
        ErrorKind::Transport,
        ErrorKind::Tls,
        ErrorKind::BadReply,
    ];

    /// The HTTP status code the engine answers with (client-side kinds map to 0).
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Corrupt => 422,
            ErrorKind::TooMany => 429,
            ErrorKind::Internal => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::StoreFull => 507,
            ErrorKind::Transport | ErrorKind::Tls | ErrorKind::BadReply => 0,
        }
    }

    /// The kind of an HTTP error status. Unknown 4xx are bad requests, unknown 5xx internal.
    pub fn from_status(status: u16) -> ErrorKind {
        ErrorKind::ALL.iter().copied().find(|k| k.status() == status && status != 0).unwrap_or(if status >= 500 {
            ErrorKind::Internal
        } else {
            ErrorKind::BadRequest
        })
    }

    /// Whether sending the same request again may succeed: the engine or the link failed
    /// transiently. A full store, a refusal or a damaged chunk will fail again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Internal
                | ErrorKind::BadGateway
                | ErrorKind::Unavailable
                | ErrorKind::TooMany
                | ErrorKind::Transport
                | ErrorKind::BadReply
        )
    }
}

/// A failed request: its kind and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProtocolError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ProtocolError {
        ProtocolError { kind, message: message.into() }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> ProtocolError {
        ProtocolError { kind: self.kind, message: format!("{context}: {}", self.message) }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// Absent in answers from engines older than the kind (the status code still says it).
    #[serde(default)]
    pub kind: Option<ErrorKind>,
}

/// For the chunk traits of the imaging pipelines: a damaged chunk stays a damaged chunk, a
/// missing one a missing one, everything else is a store failure that keeps its retry flag.
impl ProtocolError {
    pub fn into_imaging(self, digest: Option<&kura_imaging::chunk::Digest>) -> kura_imaging::Error {
        use kura_imaging::Error as E;
        match (self.kind, digest) {
            (ErrorKind::Corrupt, Some(d)) => E::ChunkCorrupt { digest: d.to_hex(), reason: self.message },
            (ErrorKind::NotFound, Some(d)) => E::ChunkMissing { digest: d.to_hex() },
            (ErrorKind::StoreFull, _) => E::StoreFull { message: self.message },
            (kind, _) => E::Store { message: self.message, retryable: kind.is_retryable() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for &k in ErrorKind::ALL {
            if k.status() != 0 {
                assert_eq!(ErrorKind::from_status(k.status()), k, "{k:?}");
            }
        }
        assert_eq!(ErrorKind::from_status(418), ErrorKind::BadRequest);
        assert_eq!(ErrorKind::from_status(504), ErrorKind::Internal);
        assert!(!ErrorKind::StoreFull.is_retryable());
        assert!(!ErrorKind::Corrupt.is_retryable());
        assert!(ErrorKind::Transport.is_retryable());
        assert!(!ErrorKind::Tls.is_retryable());
    }

    #[test]
    fn body_names_the_kind() {
        let b = ErrorBody { error: "no room".into(), kind: Some(ErrorKind::StoreFull) };
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"error":"no room","kind":"store_full"}"#);
        let old: ErrorBody = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
        assert_eq!(old.kind, None);
    }
}
