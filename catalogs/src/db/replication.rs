//! Engine-to-engine replication, the catalog's side (issue 13; `docs/dr.md`): remotes (other
//! engines this one pushes to, their replica token sealed), replication rules (which hosts go
//! where), the durable queue of chunks and snapshots still to send, and which remotes hold
//! which snapshot. The sending itself is the server's (`server/src/replication.rs`).
//!
//! # The queue
//!
//! One row per (remote, kind, item): a chunk (item = its digest, queued as an upload stores
//! it) or a snapshot (item = its id, queued at its commit). Enqueueing the same item twice
//! keeps one row. A row is deleted once the remote has the item; a failure counts an attempt
//! and sets the next try ([`Catalog::replication_failed`]). Queue rows are the engine's own
//! bookkeeping, like job progress, and are not audited; remotes and rules are.
//!
//! Nothing here ever deletes on a remote: the queue only adds.

use super::error::{is_unique_violation, CatalogError, Result};
use super::sql::{Connection, OptionalExtension, Row};
use super::{audit, Catalog, UnixTime};
use crate::secrets::Sealed;
use rusqlite::params;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;

/// The purpose a remote's token is sealed under (`crate::secrets`).
pub const REMOTE_TOKEN_PURPOSE: &str = "remote.token";

text_enum! {
    /// What a queue row sends.
    pub enum QueueKind { Chunk => "chunk", Snapshot => "snapshot" }
}

/// A remote engine, as listed (never with its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remote {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub fingerprint: Option<String>,
    pub created: UnixTime,
    /// The remote's quarantine mark when this engine last re-checked its copies there.
    pub quarantine_seen: i64,
}

/// A replication rule: snapshots of `hosts`, or of the hosts in `group`, or of every host (both
/// `None`) go to `remote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationRule {
    pub id: i64,
    pub remote: String,
    pub hosts: Option<Vec<String>>,
    pub group: Option<String>,
    pub created: UnixTime,
    /// A pull rule: this engine fetches the remote's snapshots (`kura replicate pull`).
    pub pull: bool,
    /// A pull rule's progress: every matching snapshot created before this is held here.
    pub pulled_up_to: UnixTime,
}

impl ReplicationRule {
    /// Whether the rule takes snapshots of `host`, a member of `group` (if any).
    pub fn matches(&self, host: &str, group: Option<&str>) -> bool {
        match (&self.hosts, &self.group) {
            (Some(hs), _) => hs.iter().any(|h| h == host),
            (None, Some(g)) => group == Some(g.as_str()),
            (None, None) => true,
        }
    }
}

/// One queued item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueItem {
    pub id: i64,
    pub remote_id: i64,
    pub kind: QueueKind,
    pub item: String,
    pub host: String,
    pub bytes: u64,
    pub queued: UnixTime,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// What one remote still lacks (for `/metrics` and `kura replicate list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Backlog {
    pub remote: String,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub snapshots: u64,
    /// When the oldest snapshot still to send was queued.
    pub oldest_snapshot: Option<UnixTime>,
    /// The most attempts of any queued item, and the newest error.
    pub attempts: i64,
    pub last_error: Option<String>,
}

const REMOTE_SELECT: &str = "SELECT id, name, url, fingerprint, created, quarantine_seen FROM remotes";

fn remote_from_row(r: &Row<'_>) -> rusqlite::Result<Remote> {
    Ok(Remote {
        id: r.get(0)?,
        name: r.get(1)?,
        url: r.get(2)?,
        fingerprint: r.get(3)?,
        created: r.get(4)?,
        quarantine_seen: r.get(5)?,
    })
}

fn load_remote(conn: &Connection, name: &str) -> Result<Remote> {
    conn.query_row(&format!("{REMOTE_SELECT} WHERE name = ?1"), [name], remote_from_row)
        .optional()?
        .ok_or_else(|| CatalogError::not_found("remote", name))
}

fn rule_from_row(r: &Row<'_>) -> rusqlite::Result<ReplicationRule> {
    let hosts: Option<String> = r.get(2)?;
    let hosts = match hosts {
        Some(h) => Some(
            serde_json::from_str(&h)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into()))?,
        ),
        None => None,
    };
    Ok(ReplicationRule {
        id: r.get(0)?,
        remote: r.get(1)?,
        hosts,
        group: r.get(4)?,
        created: r.get(3)?,
        pull: r.get::<_, i64>(5)? != 0,
        pulled_up_to: r.get(6)?,
    })
}

const RULE_SELECT: &str = "SELECT r.id, m.name, r.hosts, r.created, r.host_group, r.pull, r.pulled_up_to \
     FROM replication_rules r JOIN remotes m ON m.id = r.remote_id";

fn item_from_row(r: &Row<'_>) -> rusqlite::Result<QueueItem> {
    Ok(QueueItem {
        id: r.get(0)?,
        remote_id: r.get(1)?,
        kind: r.get(2)?,
        item: r.get(3)?,
        host: r.get(4)?,
        bytes: r.get::<_, i64>(5)? as u64,
        queued: r.get(6)?,
        attempts: r.get(7)?,
        last_error: r.get(8)?,
    })
}

fn validate_url(url: &str) -> Result<()> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !url.chars().any(|c| c.is_control() || c == ' ') => Ok(()),
        _ => Err(CatalogError::Invalid(format!("{url:?} is not an https:// or http:// URL of an engine"))),
    }
}

impl Catalog {
    /// Adds remote `name` at `url` (its certificate pinned by `fingerprint` for https) with its
    /// sealed replica token.
    pub fn add_remote(
        &self,
        actor: &str,
        name: &str,
        url: &str,
        fingerprint: Option<&str>,
        token: &Sealed,
    ) -> Result<Remote> {
        super::hosts::validate_name("remote", name)?;
        validate_url(url)?;
        if url.starts_with("https://") && fingerprint.is_none() {
            return Err(CatalogError::Invalid(format!(
                "remote {name}: an https URL needs the certificate fingerprint"
            )));
        }
        self.write(|tx, now| {
            tx.execute(
                "INSERT INTO remotes (name, url, fingerprint, token_sealed, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, url, fingerprint, token.as_bytes(), now],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CatalogError::conflict("remote", name, "a remote with this name already exists")
                } else {
                    e
                }
            })?;
            audit::append(tx, now, actor, "remote.add", name, json!({ "url": url, "fingerprint": fingerprint }))?;
            load_remote(tx, name)
        })
    }

    /// Every remote, by name.
    pub fn list_remotes(&self) -> Result<Vec<Remote>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{REMOTE_SELECT} ORDER BY name"))?;
            let rows = stmt.query_map([], remote_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Remote `id` and its sealed token (for the replication worker only).
    pub fn remote_with_token(&self, id: i64) -> Result<(Remote, Sealed)> {
        self.read(|conn| {
            conn.query_row(
                "SELECT id, name, url, fingerprint, created, quarantine_seen, token_sealed FROM remotes WHERE id = ?1",
                [id],
                |r| Ok((remote_from_row(r)?, Sealed::from_stored(r.get(6)?))),
            )
            .optional()?
            .ok_or_else(|| CatalogError::not_found("remote", id))
        })
    }

    /// Removes remote `name` with its rules, its queue and its copy records (nothing is deleted
    /// on the remote itself).
    pub fn remove_remote(&self, actor: &str, name: &str) -> Result<()> {
        self.write(|tx, now| {
            let r = load_remote(tx, name)?;
            tx.execute("DELETE FROM remotes WHERE id = ?1", [r.id])?;
            audit::append(tx, now, actor, "remote.remove", name, json!({ "url": r.url }))
        })
    }

    /// Adds a rule: snapshots of `hosts`, or of the hosts of `group` (as they are when each
    /// item is queued), or of every host (both `None`) go to remote `remote`.
    pub fn add_replication_rule(
        &self,
        actor: &str,
        remote: &str,
        hosts: Option<&[String]>,
        group: Option<&str>,
        pull: bool,
    ) -> Result<ReplicationRule> {
        if hosts.is_some_and(|h| h.is_empty()) {
            return Err(CatalogError::Invalid("a rule names at least one host (or none for every host)".into()));
        }
        if hosts.is_some() && group.is_some() {
            return Err(CatalogError::Invalid("a rule names hosts or a group, not both".into()));
        }
        if let Some(g) = group {
            super::hosts::validate_name("group", g)?;
        }
        let hosts_json = hosts.map(|h| serde_json::to_string(h).expect("strings serialise"));
        self.write(|tx, now| {
            let r = load_remote(tx, remote)?;
            let id: i64 = tx.query_row(
                "INSERT INTO replication_rules (remote_id, hosts, host_group, created, pull) \
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![r.id, hosts_json, group, now, pull as i64],
                |row| row.get(0),
            )?;
            audit::append(
                tx,
                now,
                actor,
                "replicate.add",
                &format!("rule {id}"),
                json!({ "remote": remote, "hosts": hosts, "group": group, "pull": pull }),
            )?;
            tx.query_row(&format!("{RULE_SELECT} WHERE r.id = ?1"), [id], rule_from_row)
        })
    }

    /// Every replication rule, oldest first.
    pub fn list_replication_rules(&self) -> Result<Vec<ReplicationRule>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{RULE_SELECT} ORDER BY r.id"))?;
            let rows = stmt.query_map([], rule_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Removes rule `id` (what is queued stays queued).
    pub fn remove_replication_rule(&self, actor: &str, id: i64) -> Result<()> {
        self.write(|tx, now| {
            let n = tx.execute("DELETE FROM replication_rules WHERE id = ?1", [id])?;
            if n == 0 {
                return Err(CatalogError::not_found("replication rule", id));
            }
            audit::append(tx, now, actor, "replicate.remove", &format!("rule {id}"), json!({}))
        })
    }

    /// Queues for `remote` again, as snapshot items, snapshot `snapshot` or (`None`) every
    /// snapshot recorded as copied there: the worker then asks the remote which of each one's
    /// chunks it lacks, sends those, and commits the manifest again (a no-op there). This is
    /// how a chunk the remote lost or quarantined is sent again. Returns how many were queued
    /// (already queued ones count too).
    pub fn resync_remote(&self, remote: i64, snapshot: Option<&str>) -> Result<u64> {
        self.write(|tx, now| {
            let select = "SELECT CAST(?1 AS BIGINT), 'snapshot', s.id, h.name, 0, CAST(?2 AS BIGINT) FROM snapshots s JOIN hosts h ON h.id = s.host_id";
            let n = match snapshot {
                Some(id) => {
                    let found: bool = tx.query_row(
                        "SELECT count(*) > 0 FROM snapshots WHERE id = ?1 AND state = 'committed'",
                        [id],
                        |r| r.get(0),
                    )?;
                    if !found {
                        return Err(CatalogError::not_found("snapshot", id));
                    }
                    tx.execute(
                        &format!(
                            "INSERT INTO replication_queue (remote_id, kind, item, host, bytes, queued) \
                             {select} WHERE s.id = ?3 ON CONFLICT (remote_id, kind, item) DO NOTHING"
                        ),
                        params![remote, now, id],
                    )?;
                    1
                }
                None => {
                    tx.execute(
                        &format!(
                            "INSERT INTO replication_queue (remote_id, kind, item, host, bytes, queued) \
                             {select} JOIN snapshot_copies c ON c.snapshot_id = s.id \
                             WHERE c.remote_id = ?1 AND s.state = 'committed' \
                             ON CONFLICT (remote_id, kind, item) DO NOTHING"
                        ),
                        params![remote, now],
                    )?;
                    tx.query_row(
                        "SELECT count(*) FROM replication_queue WHERE remote_id = ?1 AND kind = 'snapshot'",
                        [remote],
                        |r| r.get::<_, i64>(0),
                    )? as u64
                }
            };
            Ok(n)
        })
    }

    /// Records a pull rule's progress (it only moves forward).
    pub fn set_pulled_up_to(&self, rule: i64, created: UnixTime) -> Result<()> {
        self.write(|tx, _| {
            tx.execute(
                "UPDATE replication_rules SET pulled_up_to = ?1 WHERE id = ?2 AND pulled_up_to < ?1",
                params![created, rule],
            )?;
            Ok(())
        })
    }

    /// Remote `name` (without its token).
    pub fn remote_by_name(&self, name: &str) -> Result<Remote> {
        self.read(|conn| load_remote(conn, name))
    }

    /// Records that every snapshot copied to `remote` was re-checked against its quarantine
    /// mark `mark`.
    pub fn set_quarantine_seen(&self, remote: i64, mark: i64) -> Result<()> {
        self.write(|tx, _| {
            tx.execute("UPDATE remotes SET quarantine_seen = ?1 WHERE id = ?2", params![mark, remote])?;
            Ok(())
        })
    }

    /// This engine's quarantine mark, for the engines that replicate to it: the audit id of the
    /// newest `verify` that quarantined chunks (0: none ever did). It only grows.
    pub fn quarantine_mark(&self) -> Result<i64> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT id, detail FROM audit WHERE action = 'verify' ORDER BY id DESC")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, detail) = row?;
                let quarantined = serde_json::from_str::<serde_json::Value>(&detail)
                    .ok()
                    .and_then(|v| v["quarantined"].as_u64())
                    .unwrap_or(0);
                if quarantined > 0 {
                    return Ok(id);
                }
            }
            Ok(0)
        })
    }

    /// The remotes (ids) whose rules take snapshots of `host` (by name, by its group now, or
    /// every host).
    pub fn remotes_for_host(&self, host: &str) -> Result<Vec<i64>> {
        self.read(|conn| {
            let group: Option<String> = conn
                .query_row("SELECT host_group FROM hosts WHERE name = ?1", [host], |r| r.get(0))
                .optional()?
                .flatten();
            let mut stmt = conn.prepare_cached(
                "SELECT r.id, m.name, r.hosts, r.created, r.host_group, r.pull, r.pulled_up_to, m.id \
                 FROM replication_rules r JOIN remotes m ON m.id = r.remote_id WHERE r.pull = 0 ORDER BY m.id",
            )?;
            let rows = stmt.query_map([], |r| Ok((rule_from_row(r)?, r.get::<_, i64>(7)?)))?;
            let mut out: Vec<i64> = Vec::new();
            for row in rows {
                let (rule, remote) = row?;
                if rule.matches(host, group.as_deref()) && !out.contains(&remote) {
                    out.push(remote);
                }
            }
            Ok(out)
        })
    }

    /// For every host, the remotes (names) its snapshots should be copied to: by the push
    /// rules, and every engine that pulled one of its snapshots with a reader token still valid.
    pub fn replication_wanted(&self) -> Result<HashMap<String, Vec<String>>> {
        let rules: Vec<ReplicationRule> = self.list_replication_rules()?.into_iter().filter(|r| !r.pull).collect();
        let now = self.now();
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT name, host_group FROM hosts")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?;
            let mut out: HashMap<String, Vec<String>> = HashMap::new();
            for row in rows {
                let (host, group) = row?;
                let remotes: Vec<String> =
                    rules.iter().filter(|r| r.matches(&host, group.as_deref())).map(|r| r.remote.clone()).collect();
                out.insert(host, remotes);
            }
            // An engine that pulled a snapshot of a host with a reader token that still works
            // is expected to pull the host's next snapshots too.
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT h.name, p.holder || ' (pulled)' FROM pulled_copies p \
                 JOIN snapshots s ON s.id = p.snapshot_id JOIN hosts h ON h.id = s.host_id \
                 JOIN tokens t ON t.id = p.token_id \
                 WHERE t.role = 'reader' AND t.revoked = 0 AND (t.expires IS NULL OR t.expires > ?1)",
            )?;
            let rows = stmt.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (host, holder) = row?;
                out.entry(host).or_default().push(holder);
            }
            for remotes in out.values_mut() {
                remotes.sort_unstable();
                remotes.dedup();
            }
            Ok(out)
        })
    }

    /// Queues `item` of `host` (`bytes` long) for each of `remotes`; already queued items stay
    /// as they are.
    pub fn enqueue_replication(
        &self,
        remotes: &[i64],
        kind: QueueKind,
        item: &str,
        host: &str,
        bytes: u64,
    ) -> Result<()> {
        if remotes.is_empty() {
            return Ok(());
        }
        self.write(|tx, now| {
            for r in remotes {
                tx.execute(
                    "INSERT INTO replication_queue (remote_id, kind, item, host, bytes, queued) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (remote_id, kind, item) DO NOTHING",
                    params![r, kind, item, host, bytes as i64, now],
                )?;
            }
            Ok(())
        })
    }

    /// Up to `limit` items of `kind` for `remote` due at `now`, oldest first.
    pub fn due_replication(&self, remote: i64, kind: QueueKind, now: UnixTime, limit: u32) -> Result<Vec<QueueItem>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, remote_id, kind, item, host, bytes, queued, attempts, last_error FROM replication_queue \
                 WHERE remote_id = ?1 AND kind = ?2 AND next_try <= ?3 ORDER BY id LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![remote, kind, now, limit as i64], item_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The remotes with queued items (ids).
    pub fn remotes_with_queue(&self) -> Result<Vec<i64>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT DISTINCT remote_id FROM replication_queue ORDER BY remote_id")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The remote has these queue rows' items: they go.
    pub fn replication_done(&self, ids: &[i64]) -> Result<()> {
        self.write(|tx, _| {
            for id in ids {
                tx.execute("DELETE FROM replication_queue WHERE id = ?1", [id])?;
            }
            Ok(())
        })
    }

    /// Sending these rows failed with `error`: one more attempt each, next try at `next_try`.
    pub fn replication_failed(&self, ids: &[i64], error: &str, next_try: UnixTime) -> Result<()> {
        self.write(|tx, _| {
            for id in ids {
                tx.execute(
                    "UPDATE replication_queue SET attempts = attempts + 1, next_try = ?1, last_error = ?2 WHERE id = ?3",
                    params![next_try, error, id],
                )?;
            }
            Ok(())
        })
    }

    /// Records that `remote` holds snapshot `snapshot` (a snapshot deleted here meanwhile is
    /// not recorded).
    pub fn record_copy(&self, snapshot: &str, remote: i64) -> Result<()> {
        self.write(|tx, now| {
            tx.execute(
                "INSERT INTO snapshot_copies (snapshot_id, remote_id, copied) \
                 SELECT id, ?2, ?3 FROM snapshots WHERE id = ?1 \
                 ON CONFLICT (snapshot_id, remote_id) DO NOTHING",
                params![snapshot, remote, now],
            )?;
            Ok(())
        })
    }

    /// Records that the engine pulling with reader token `token` (labelled `holder`) holds
    /// snapshot `snapshot`; false (nothing recorded) when this engine has no such committed
    /// snapshot. Reporting a copy again changes nothing.
    pub fn record_pulled_copy(&self, snapshot: &str, token: i64, holder: &str) -> Result<bool> {
        self.write(|tx, now| {
            let found: bool = tx.query_row(
                "SELECT count(*) > 0 FROM snapshots WHERE id = ?1 AND state = 'committed'",
                [snapshot],
                |r| r.get(0),
            )?;
            if found {
                tx.execute(
                    "INSERT INTO pulled_copies (snapshot_id, token_id, holder, copied) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (snapshot_id, token_id) DO NOTHING",
                    params![snapshot, token, holder, now],
                )?;
            }
            Ok(found)
        })
    }

    /// The remotes (names) holding each snapshot that has copies: pushed copies by the
    /// remote's name, pulled ones by the reader token's label and ` (pulled)`.
    pub fn snapshot_copies(&self) -> Result<HashMap<String, Vec<String>>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.snapshot_id, m.name FROM snapshot_copies c JOIN remotes m ON m.id = c.remote_id \
                 UNION SELECT p.snapshot_id, p.holder || ' (pulled)' FROM pulled_copies p \
                 ORDER BY 1, 2",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out: HashMap<String, Vec<String>> = HashMap::new();
            for row in rows {
                let (s, m) = row?;
                out.entry(s).or_default().push(m);
            }
            Ok(out)
        })
    }

    /// What each remote still lacks, by remote name (every remote, even with nothing queued).
    pub fn replication_backlog(&self) -> Result<Vec<Backlog>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT m.name, \
                 CAST(coalesce(sum(CASE WHEN q.kind = 'chunk' THEN 1 ELSE 0 END), 0) AS BIGINT), \
                 CAST(coalesce(sum(CASE WHEN q.kind = 'chunk' THEN q.bytes ELSE 0 END), 0) AS BIGINT), \
                 CAST(coalesce(sum(CASE WHEN q.kind = 'snapshot' THEN 1 ELSE 0 END), 0) AS BIGINT), \
                 min(CASE WHEN q.kind = 'snapshot' THEN q.queued END), \
                 coalesce(max(q.attempts), 0) \
                 FROM remotes m LEFT JOIN replication_queue q ON q.remote_id = m.id \
                 GROUP BY m.id, m.name ORDER BY m.name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Backlog {
                    remote: r.get(0)?,
                    chunks: r.get::<_, i64>(1)? as u64,
                    chunk_bytes: r.get::<_, i64>(2)? as u64,
                    snapshots: r.get::<_, i64>(3)? as u64,
                    oldest_snapshot: r.get(4)?,
                    attempts: r.get(5)?,
                    last_error: None,
                })
            })?;
            let mut out: Vec<Backlog> = rows.collect::<Result<_, _>>()?;
            for b in &mut out {
                b.last_error = conn
                    .query_row(
                        "SELECT q.last_error FROM replication_queue q JOIN remotes m ON m.id = q.remote_id \
                         WHERE m.name = ?1 AND q.last_error IS NOT NULL ORDER BY q.next_try DESC LIMIT 1",
                        [&b.remote],
                        |r| r.get(0),
                    )
                    .optional()?;
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::auth::Role;
    use super::super::snapshots::tests::{host, new_snapshot};
    use super::super::testing::START;
    use super::*;

    fn sealed() -> Sealed {
        let key = crate::secrets::SecretKey::generate().unwrap();
        key.seal(REMOTE_TOKEN_PURPOSE, b"kura_secret").unwrap()
    }

    #[test]
    fn remotes_rules_queue_and_copies() {
        let (cat, _) = catalog();
        let dr = cat.add_remote("t", "dr", "https://dr:8443", Some("ab"), &sealed()).unwrap();
        assert!(matches!(cat.add_remote("t", "dr", "https://x", Some("ab"), &sealed()), Err(CatalogError::Conflict { .. })));
        assert!(matches!(cat.add_remote("t", "x", "https://x", None, &sealed()), Err(CatalogError::Invalid(_))));
        assert!(matches!(cat.add_remote("t", "x", "ftp://x", None, &sealed()), Err(CatalogError::Invalid(_))));
        let two = cat.add_remote("t", "two", "http://127.0.0.1:1", None, &sealed()).unwrap();
        assert_eq!(cat.list_remotes().unwrap(), [dr.clone(), two.clone()]);
        assert_eq!(cat.remote_with_token(dr.id).unwrap().1.as_bytes(), cat.remote_with_token(dr.id).unwrap().1.as_bytes());

        let all = cat.add_replication_rule("t", "dr", None, None, false).unwrap();
        let some = cat.add_replication_rule("t", "two", Some(&["a".to_string()]), None, false).unwrap();
        assert_eq!((all.remote.as_str(), all.hosts.clone()), ("dr", None));
        assert_eq!(cat.remotes_for_host("a").unwrap(), [dr.id, two.id]);
        assert_eq!(cat.remotes_for_host("b").unwrap(), [dr.id]);

        // Queueing twice keeps one row; done rows go; failures are counted.
        cat.enqueue_replication(&[dr.id, two.id], QueueKind::Chunk, "d1", "a", 10).unwrap();
        cat.enqueue_replication(&[dr.id], QueueKind::Chunk, "d1", "a", 10).unwrap();
        cat.enqueue_replication(&[dr.id], QueueKind::Snapshot, "s1", "a", 0).unwrap();
        let due = cat.due_replication(dr.id, QueueKind::Chunk, START, 10).unwrap();
        assert_eq!(due.len(), 1);
        cat.replication_failed(&[due[0].id], "link down", START + 60).unwrap();
        assert!(cat.due_replication(dr.id, QueueKind::Chunk, START, 10).unwrap().is_empty());
        let again = cat.due_replication(dr.id, QueueKind::Chunk, START + 60, 10).unwrap();
        assert_eq!((again[0].attempts, again[0].last_error.as_deref()), (1, Some("link down")));
        let backlog = cat.replication_backlog().unwrap();
        assert_eq!(
            (backlog[0].remote.as_str(), backlog[0].chunks, backlog[0].chunk_bytes, backlog[0].snapshots),
            ("dr", 1, 10, 1)
        );
        assert_eq!((backlog[0].oldest_snapshot, backlog[0].last_error.as_deref()), (Some(START), Some("link down")));
        cat.replication_done(&[again[0].id]).unwrap();
        assert!(cat.due_replication(dr.id, QueueKind::Chunk, START + 60, 10).unwrap().is_empty());
        assert_eq!(cat.remotes_with_queue().unwrap(), [dr.id, two.id]);

        // Copies are recorded for existing snapshots only.
        host(&cat, "a");
        let s = cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 1)).unwrap();
        cat.record_copy(&s.id, dr.id).unwrap();
        cat.record_copy(&s.id, dr.id).unwrap();
        cat.record_copy("0000000000000000", dr.id).unwrap();
        assert_eq!(cat.snapshot_copies().unwrap().get(&s.id).cloned(), Some(vec!["dr".to_string()]));

        cat.remove_replication_rule("t", some.id).unwrap();
        assert!(matches!(cat.remove_replication_rule("t", some.id), Err(CatalogError::NotFound { .. })));
        cat.remove_remote("t", "dr").unwrap();
        assert!(cat.snapshot_copies().unwrap().is_empty(), "copy records go with the remote");
        assert_eq!(cat.remotes_with_queue().unwrap(), [two.id]);
        let actions: Vec<String> = cat.list_audit(10).unwrap().into_iter().map(|a| a.action).collect();
        assert!(actions.contains(&"remote.remove".to_string()) && actions.contains(&"replicate.add".to_string()));
    }

    #[test]
    fn pulled_copies_count_as_copies_and_make_the_puller_wanted_while_its_token_works() {
        let (cat, _) = catalog();
        host(&cat, "a");
        host(&cat, "b");
        let s1 = cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 1)).unwrap();
        let reader = cat.create_peer_token("t", Role::Reader, "dr-site", None).unwrap();
        assert!(cat.replication_wanted().unwrap()["a"].is_empty());

        assert!(cat.record_pulled_copy(&s1.id, reader.info.id, "dr-site").unwrap());
        assert!(cat.record_pulled_copy(&s1.id, reader.info.id, "dr-site").unwrap(), "reported again: no change");
        assert!(!cat.record_pulled_copy("00000000000000ff", reader.info.id, "dr-site").unwrap());
        let held = vec!["dr-site (pulled)".to_string()];
        assert_eq!(cat.snapshot_copies().unwrap().get(&s1.id), Some(&held));
        let wanted = cat.replication_wanted().unwrap();
        assert_eq!((&wanted["a"], wanted["b"].is_empty()), (&held, true), "the puller of a's snapshots, not b's");

        // A revoked token's engine is no longer expected; the copies it made stay counted.
        cat.revoke_token("t", reader.info.id).unwrap();
        assert!(cat.replication_wanted().unwrap()["a"].is_empty());
        assert_eq!(cat.snapshot_copies().unwrap().get(&s1.id), Some(&held));
    }

    #[test]
    fn rules_by_group_resync_and_the_quarantine_mark() {
        use super::super::hosts::NewHost;
        let (cat, _) = catalog();
        let dr = cat.add_remote("t", "dr", "http://127.0.0.1:1", None, &sealed()).unwrap();
        let new_host = |name: &str, group: Option<&str>| {
            let new = NewHost { name: name.into(), group: group.map(Into::into), notes: String::new() };
            cat.create_host("t", &new).unwrap();
        };
        new_host("web01", Some("web"));
        new_host("db01", Some("db"));
        new_host("lone", None);
        let rule = cat.add_replication_rule("t", "dr", None, Some("web"), false).unwrap();
        assert_eq!(rule.group.as_deref(), Some("web"));
        assert_eq!(cat.list_replication_rules().unwrap(), std::slice::from_ref(&rule));
        assert!(!rule.pull);
        assert_eq!(cat.remotes_for_host("web01").unwrap(), [dr.id]);
        assert!(cat.remotes_for_host("db01").unwrap().is_empty());
        assert!(cat.remotes_for_host("lone").unwrap().is_empty());
        assert!(cat.remotes_for_host("unknown").unwrap().is_empty());
        // A pull rule takes nothing from here: it fetches from the remote.
        let pull = cat.add_replication_rule("t", "dr", None, None, true).unwrap();
        assert_eq!((pull.pull, pull.pulled_up_to), (true, 0));
        assert!(cat.remotes_for_host("db01").unwrap().is_empty());
        cat.set_pulled_up_to(pull.id, 50).unwrap();
        cat.set_pulled_up_to(pull.id, 40).unwrap();
        let listed = cat.list_replication_rules().unwrap();
        assert_eq!(listed.iter().find(|r| r.id == pull.id).unwrap().pulled_up_to, 50, "progress only moves forward");
        let wanted = cat.replication_wanted().unwrap();
        assert_eq!((wanted["web01"].as_slice(), wanted["db01"].is_empty()), (["dr".to_string()].as_slice(), true));
        // Hosts or a group, not both; a group name like a host name.
        let both = cat.add_replication_rule("t", "dr", Some(&["a".to_string()]), Some("web"), false);
        assert!(matches!(both, Err(CatalogError::Invalid(_))), "{both:?}");
        assert!(matches!(cat.add_replication_rule("t", "dr", None, Some(" x"), false), Err(CatalogError::Invalid(_))));

        // Resync: one snapshot, or every snapshot copied to the remote, queued again.
        let a = cat.add_snapshot("t", &new_snapshot("00000000000000a1", "web01", 1)).unwrap();
        let b = cat.add_snapshot("t", &new_snapshot("00000000000000b1", "db01", 2)).unwrap();
        cat.record_copy(&a.id, dr.id).unwrap();
        assert!(matches!(cat.resync_remote(dr.id, Some("00000000000000ff")), Err(CatalogError::NotFound { .. })));
        assert_eq!(cat.resync_remote(dr.id, None).unwrap(), 1);
        assert_eq!(cat.resync_remote(dr.id, None).unwrap(), 1, "queued once");
        let due = cat.due_replication(dr.id, QueueKind::Snapshot, START, 10).unwrap();
        assert_eq!((due.len(), due[0].item.as_str(), due[0].host.as_str()), (1, a.id.as_str(), "web01"));
        assert_eq!(cat.resync_remote(dr.id, Some(&b.id)).unwrap(), 1);
        let due: Vec<String> = cat.due_replication(dr.id, QueueKind::Snapshot, START, 10).unwrap().into_iter().map(|i| i.item).collect();
        assert_eq!(due, [a.id.clone(), b.id.clone()]);

        // The quarantine mark: the newest verify that quarantined something.
        assert_eq!(cat.quarantine_mark().unwrap(), 0);
        cat.record_audit("t", "verify", "store", json!({"ok": true, "damaged": 0, "quarantined": 0})).unwrap();
        assert_eq!(cat.quarantine_mark().unwrap(), 0);
        cat.record_audit("t", "verify", "store", json!({"ok": false, "damaged": 1, "quarantined": 1})).unwrap();
        let mark = cat.quarantine_mark().unwrap();
        assert!(mark > 0);
        cat.record_audit("t", "verify", "store", json!({"ok": true, "damaged": 0, "quarantined": 0})).unwrap();
        assert_eq!(cat.quarantine_mark().unwrap(), mark, "a clean verify keeps the mark");
        assert_eq!(cat.remote_by_name("dr").unwrap().quarantine_seen, 0);
        cat.set_quarantine_seen(dr.id, mark).unwrap();
        assert_eq!(cat.remote_by_name("dr").unwrap().quarantine_seen, mark);
    }
}
}
