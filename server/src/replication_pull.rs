//! Pull mode (`kura replicate pull --from NAME`, `docs/dr.md`): this engine, a DR engine at a
//! site that only allows outbound connections, fetches the snapshots of a remote (the primary)
//! instead of the primary pushing them.
//!
//! Every [`PULL_EVERY`] (from the replication worker's pass, `crate::replication`), for each
//! pull rule: the remote's snapshot list (`GET /snapshots`, and `GET /hosts` for a rule by
//! group) with the remote's reader token (an operator token works too); the matching
//! committed snapshots created at or after the rule's progress (`pulled_up_to`), oldest first. Each one this engine does not hold
//! is fetched into a local upload session, as a replica's push would be: its manifest (checked
//! against its id), then the chunks this store lacks (`missing` against its own store; each
//! fetched chunk checked against its digest by the upload service), then the commit. After
//! each snapshot this engine holds it tells the remote so (`POST /replica/pulled`: the remote
//! counts the copy in its `kura snapshots`), then the rule's progress moves to the snapshot's
//! creation time (durably, in the catalog), so a restart resumes there; the first failure
//! stops the round (the next round retries it).
//!
//! Nothing is ever deleted, here or on the remote: a snapshot the remote deleted is simply not
//! listed any more; the ones this engine holds stay, under its own retention rules.

use crate::engine::uploads;
use crate::engine::{Caller, Engine, ServiceError};
use kura_catalogs::db::{Principal, ReplicationRule, Role};
use kura_imaging::chunk::ChunkSource;
use kura_imaging::chunk::Digest;
use kura_imaging::manifest::Manifest;
use kura_protocol::client::{Client, RemoteSource};
use kura_protocol::routes;
use kura_protocol::uploads::{encode_digests, missing::MISSING, BeginUpload, MISSING_BATCH};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How often a pull rule polls its remote.
pub const PULL_EVERY: Duration = Duration::from_secs(30);
/// Tests only: `KURA_TEST_REPLICATION_PULL_SECS` shortens [`PULL_EVERY`].
const PULL_EVERY_ENV: &str = "KURA_TEST_REPLICATION_PULL_SECS";

pub fn pull_every() -> Duration {
    static EVERY: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var(PULL_EVERY_ENV).ok().and_then(|v| v.parse().ok()).map(Duration::from_secs).unwrap_or(PULL_EVERY)
    })
}

/// One snapshot of the remote's list.
struct Listed {
    id: String,
    host: String,
    name: Option<String>,
    kind: Option<kura_protocol::jobs::SnapshotKind>,
    created: i64,
}

/// One round of pull rule `rule` from `client`; returns how many snapshots were fetched.
pub fn pull_round(engine: &Engine, client: &Client, rule: &ReplicationRule) -> Result<u64, String> {
    let list: Vec<Value> = client.get_json(routes::SNAPSHOTS.path).map_err(|e| e.to_string())?;
    let groups: HashMap<String, Option<String>> = if rule.group.is_some() {
        let hosts: Vec<Value> = client.get_json(routes::HOSTS.path).map_err(|e| e.to_string())?;
        hosts
            .iter()
            .filter_map(|h| Some((h["name"].as_str()?.to_string(), h["group"].as_str().map(str::to_string))))
            .collect()
    } else {
        HashMap::new()
    };
    let mut wanted: Vec<Listed> = list
        .iter()
        .filter(|s| s["state"].as_str().is_none_or(|st| st == "committed"))
        .filter_map(|s| {
            Some(Listed {
                id: s["id"].as_str()?.to_string(),
                host: s["host"].as_str()?.to_string(),
                name: s["name"].as_str().map(str::to_string),
                kind: serde_json::from_value(s["kind"].clone()).ok(),
                created: s["created"].as_i64()?,
            })
        })
        .filter(|s| s.created >= rule.pulled_up_to)
        .filter(|s| rule.matches(&s.host, groups.get(&s.host).and_then(|g| g.as_deref())))
        .collect();
    wanted.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let mut fetched = 0;
    let mut report = true;
    for s in &wanted {
        let held = engine.catalog.get_snapshot(&s.id).is_ok() && engine.store.manifest_exists(&s.id);
        if !held {
            let chunks = pull_snapshot(engine, client, &rule.remote, s)?;
            tracing::info!("pulled snapshot {} of {} from {} ({chunks} chunks fetched)", s.id, s.host, rule.remote);
            fetched += 1;
        }
        if report {
            report = report_copy(client, &rule.remote, &s.id)?;
        }
        engine.catalog.set_pulled_up_to(rule.id, s.created).map_err(|e| e.to_string())?;
    }
    Ok(fetched)
}

/// Tells the remote this engine holds snapshot `id` (`POST /replica/pulled`), so that its
/// `kura snapshots` counts the copy. Returns whether to go on reporting this round: a token
/// that is not a reader token (an operator's, as before the reader role) pulls but cannot
/// report, which is logged, not an error; any other failure ends the round like a failed
/// fetch (the snapshot is reported again next round).
fn report_copy(client: &Client, remote: &str, id: &str) -> Result<bool, String> {
    let body = kura_protocol::replication::Pulled { snapshot: id.to_string() };
    match client.post_json::<kura_protocol::replication::PulledAck>(routes::REPLICA_PULLED.path, &body) {
        Ok(_) => Ok(true),
        Err(e) if e.kind == kura_protocol::ErrorKind::Forbidden => {
            tracing::warn!(
                "remote {remote} does not take copy reports from this token (not a reader token): its \
                 snapshot list will not count this engine's copies"
            );
            Ok(false)
        }
        Err(e) => Err(format!("reporting the copy of snapshot {id} to {remote}: {e}")),
    }
}

/// Fetches snapshot `s` into a local upload session and commits it; returns the chunks fetched.
fn pull_snapshot(engine: &Engine, client: &Client, remote: &str, s: &Listed) -> Result<u64, String> {
    let err = |e: ServiceError| format!("snapshot {}: {e}", s.id);
    let bytes = client.manifest_bytes(&s.id).map_err(|e| e.to_string())?;
    let manifest = Manifest::decode(&bytes).map_err(|e| format!("decoding snapshot {}: {e}", s.id))?;
    let mut seen = HashSet::new();
    let digests: Vec<Digest> = manifest.data_digests().copied().filter(|d| seen.insert(*d)).collect();
    let caller = Caller {
        principal: Principal {
            token_id: 0,
            role: Role::Replica,
            label: format!("pull from {remote}"),
            user: None,
            job_id: None,
            mac: None,
        },
        agent_job: None,
    };
    let req = BeginUpload { host: s.host.clone(), name: s.name.clone(), kind: s.kind, job: None };
    let upload = uploads::begin(engine, &caller, req).map_err(err)?.upload;
    let source = RemoteSource { client: client.clone() };
    let result = (|| -> Result<u64, String> {
        let mut fetched = 0;
        for part in digests.chunks(MISSING_BATCH) {
            let answer = uploads::missing(engine, &caller, &upload, &encode_digests(part)).map_err(err)?;
            for (d, m) in part.iter().zip(answer) {
                if m != MISSING {
                    continue;
                }
                let blob = source.get_chunk(d).map_err(|e| e.to_string())?;
                uploads::put_chunk(engine, &caller, &upload, &d.to_hex(), &blob.into()).map_err(err)?;
                fetched += 1;
            }
        }
        uploads::commit_expecting(engine, &caller, &upload, &bytes, Some(&s.id)).map_err(err)?;
        Ok(fetched)
    })();
    if result.is_err() {
        let _ = uploads::abort(engine, &caller, &upload);
    }
    result
}
