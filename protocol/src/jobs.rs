//! Jobs on the wire: captures and restores queued for a machine's next netboot, the one
//! [`JobKind`] and [`JobState`] every side uses, and the requests and replies of the job routes.
//!
//! ```text
//! queued ──► running ──► succeeded
//!   │           ├──────► failed
//!   └───────────┴──────► cancelled
//! ```

use crate::mac::MacAddr;
use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch (UTC).
pub type UnixTime = i64;

/// An enum that travels as a lowercase word (JSON, the catalog's text columns).
pub trait WireEnum: Copy + Sized + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    /// The value named `s`, or an error listing the accepted words.
    fn parse_word(s: &str) -> Result<Self, UnknownWord> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| UnknownWord {
            what: std::any::type_name::<Self>().rsplit("::").next().unwrap_or("value"),
            got: s.to_string(),
            expected: Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// A word that names no value of a [`WireEnum`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{got:?} is not a {what}; expected one of: {expected}")]
pub struct UnknownWord {
    pub what: &'static str,
    pub got: String,
    pub expected: String,
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        $vis enum $name { $($(#[$vm])* $variant),+ }

        impl WireEnum for $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];
            fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = <$name as WireEnum>::ALL;
            pub fn as_str(self) -> &'static str {
                <$name as WireEnum>::as_str(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                <$name as WireEnum>::parse_word(s)
            }
        }

        #[cfg(feature = "sqlite")]
        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        #[cfg(feature = "sqlite")]
        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                <$name as WireEnum>::parse_word(v.as_str()?)
                    .map_err(|e| rusqlite::types::FromSqlError::Other(e.to_string().into()))
            }
        }
    };
}

wire_enum! {
    pub enum JobKind { Capture => "capture", Restore => "restore" }
}

wire_enum! {
    pub enum JobState {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

wire_enum! {
    /// How a snapshot came to be: asked for by someone, or released by a schedule.
    pub enum SnapshotKind { Manual => "manual", Scheduled => "scheduled" }
}

wire_enum! {
    pub enum LogLevel { Error => "error", Warn => "warn", Info => "info", Debug => "debug" }
}

impl JobState {
    /// Whether the state machine allows `self → to`.
    pub fn can_go_to(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Running) | (Running, Succeeded) | (Running, Failed) | (Queued | Running, Cancelled)
        )
    }

    /// Queued or running.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
}

/// A job as the engine shows it (`GET /jobs/{id}`, `GET /jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub host: String,
    pub disk: Option<String>,
    /// For a restore, the snapshot to restore; for a capture, the snapshot it committed.
    pub snapshot: Option<String>,
    pub state: JobState,
    pub done_bytes: u64,
    pub total_bytes: Option<u64>,
    pub created: UnixTime,
    pub started: Option<UnixTime>,
    pub finished: Option<UnixTime>,
    pub error: Option<String>,
    /// A capture's disk selection (`vda,vdb`; none: every disk) or a restore's mapping
    /// overrides (`vda=sdb,vdb=none`; none: the rules of `kura_imaging::diskmap`).
    #[serde(default)]
    pub disks: Option<String>,
}

/// What a new job is (`POST /jobs`, and the scheduler).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    pub kind: JobKind,
    pub host: String,
    #[serde(default)]
    pub disk: Option<String>,
    /// Required for a restore, refused for a capture.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// See [`Job::disks`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<String>,
}

/// `POST /jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateJob {
    #[serde(flatten)]
    pub job: NewJob,
    /// MAC address the job's agent token is bound to (default: the host's only MAC).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// A restore of a snapshot held unconfirmed (after an unusual boot) is refused unless
    /// this is set.
    #[serde(default)]
    pub allow_unconfirmed: bool,
}

/// The answer to `POST /jobs`: the job and its one-time agent token (shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobCreated {
    pub job: Job,
    pub agent_token: String,
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub id: i64,
    pub time: UnixTime,
    pub level: LogLevel,
    pub message: String,
}

/// The answer to `GET /jobs/{id}`: the job and its newest log lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDetail {
    pub job: Job,
    #[serde(default)]
    pub log: Vec<LogLine>,
}

/// Most log lines one progress report may carry.
pub const PROGRESS_LOG_LINES: usize = 100;

/// `POST /jobs/{id}/progress`: bytes done (of total, when known) and new log lines. The first
/// report moves a queued job to running.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub log: Vec<String>,
}

/// `POST /jobs/{id}/finish`: how the agent's job ended. A capture succeeds only by committing
/// its snapshot; `ok: true` is for restores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finish {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_errors_list_the_choices() {
        for &s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        let e = "done".parse::<JobState>().unwrap_err().to_string();
        assert!(e.contains("not a JobState") && e.contains("queued, running"), "{e}");
        assert!(JobState::Queued.can_go_to(JobState::Running));
        assert!(!JobState::Succeeded.can_go_to(JobState::Failed));
    }

    #[test]
    fn job_detail_parses_what_the_engine_sends() {
        let v = serde_json::json!({"job": {"id": 3, "kind": "restore", "host": "h", "disk": null, "snapshot": "abc",
            "state": "queued", "done_bytes": 0, "total_bytes": null, "created": 1, "started": null, "finished": null,
            "error": null}, "log": []});
        let d: JobDetail = serde_json::from_value(v).unwrap();
        assert_eq!((d.job.kind, d.job.snapshot.as_deref()), (JobKind::Restore, Some("abc")));
    }
}
