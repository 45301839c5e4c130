//! Engine-to-engine replication on the wire (`docs/dr.md`): the requests of the remote and
//! rule routes an admin uses on the primary. The pushing itself uses the upload routes with a
//! replica token ([`crate::uploads`], header [`crate::uploads::SNAPSHOT_HEADER`]).

use serde::{Deserialize, Serialize};

/// `POST /remotes`: another engine this one pushes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRemote {
    pub name: String,
    /// `https://host:port` (or `http://` for a test engine).
    pub url: String,
    /// The remote's certificate fingerprint (required for https).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// A `replica` token of the remote engine (stored sealed; never shown again).
    pub token: String,
}

/// `POST /replication/rules`: snapshots of `hosts`, or of the hosts in `group`, or of every
/// host (both absent) go to `remote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRule {
    pub remote: String,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub group: Option<String>,
    /// A pull rule: this engine (a DR engine) fetches the remote's snapshots of those hosts,
    /// with an operator token of the remote (`kura replicate pull --from NAME`).
    #[serde(default)]
    pub pull: bool,
}

/// `POST /replication/resync`: check `snapshot` (or every snapshot copied to `remote`) on the
/// remote again, sending the chunks it lacks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resync {
    pub remote: String,
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// The answer of `POST /replication/resync`: how many snapshots are queued for the check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resynced {
    pub queued: u64,
}

/// `GET /replica/quarantine` on a DR engine: its quarantine mark, which grows whenever its
/// verify quarantines chunks. A primary that sees it grow checks every snapshot it copied
/// there again (`docs/dr.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineMark {
    pub mark: i64,
}

/// `POST /replica/pulled` on the primary, by a DR engine pulling with a `reader` token: it now
/// holds `snapshot` (committed in its own catalog). The primary counts it in the snapshot's
/// copies. Answered with [`PulledAck`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pulled {
    pub snapshot: String,
}

/// The answer to [`Pulled`]: whether the primary holds that snapshot (and so recorded the copy).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PulledAck {
    pub recorded: bool,
}
