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

/// `POST /replication/rules`: snapshots of `hosts` (every host when absent) go to `remote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRule {
    pub remote: String,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}
