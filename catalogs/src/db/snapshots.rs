//! Snapshot rows: the catalog's record of each snapshot committed to the chunk store (host,
//! disk, kind, sizes, name), their two-phase deletion, and the retention plan over them.
//!
//! A snapshot's id is its manifest id in the store (16 lowercase hex digits). States:
//! `committed` (listed, restorable) → `deleting` (marked; its manifest is being removed from the
//! store) → row removed. A snapshot used by a queued or running restore cannot be marked.
//!
//! Apart from its state, a snapshot is *confirmed* or not. Every snapshot is, except the
//! capture of a job whose boot was unusual while the engine holds such captures (`kura serve
//! --hold-unusual-captures`, [`super::Catalog::commit_capture_holding`]): it stays unconfirmed
//! until an operator accepts it ([`Catalog::confirm_snapshot`], audited). Restores do not pick
//! an unconfirmed snapshot by default, and retention neither keeps nor deletes one (it does
//! not count towards keep-last either), so a held capture can never push a good one out.

use super::error::{is_unique_violation, CatalogError, Result};
use super::hosts::{disk_id, host_id};
use super::sql::{Connection, OptionalExtension, Row};
use super::{audit, Catalog, UnixTime};
use crate::retention::{self, Candidate, Plan};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use kura_imaging::diskset::{DiskEntry, SetRecord};

pub use kura_protocol::jobs::SnapshotKind;

text_enum! {
    pub enum SnapshotState { Committed => "committed", Deleting => "deleting" }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub host: String,
    pub disk: Option<String>,
    pub name: Option<String>,
    pub kind: SnapshotKind,
    pub created: UnixTime,
    pub disk_size: u64,
    pub used_bytes: u64,
    /// Bytes of chunks this snapshot stored for the first time.
    pub new_bytes: u64,
    /// Bytes of chunks this snapshot found already in the store.
    pub reused_bytes: u64,
    pub state: SnapshotState,
    /// False while held after an unusual boot (see the module docs).
    pub confirmed: bool,
    /// The newest boot test's verdict (`kura verify --boot`), if it was ever boot-tested.
    pub boot_test_passed: Option<bool>,
    /// A snapshot set's record (its disks in capture order, each with its member's id); `None`
    /// for any other snapshot. See "Snapshot sets" in the module docs.
    pub set: Option<SetRecord>,
    /// The set this snapshot is one disk of, if any.
    pub set_id: Option<String>,
}

/// A snapshot just committed to the store, to record.
#[derive(Debug, Clone, Deserialize)]
pub struct NewSnapshot {
    pub id: String,
    pub host: String,
    pub disk: Option<String>,
    pub name: Option<String>,
    pub kind: SnapshotKind,
    /// The capture time (the manifest's), unix seconds.
    pub created: UnixTime,
    pub disk_size: u64,
    pub used_bytes: u64,
    pub new_bytes: u64,
    pub reused_bytes: u64,
    /// A snapshot set's record; `None` for any other snapshot.
    #[serde(default)]
    pub set: Option<SetRecord>,
    /// A set's members, one ordinary snapshot per disk (their manifests are in the store),
    /// recorded with the set in its transaction.
    #[serde(default)]
    pub members: Vec<NewSnapshot>,
}

const SELECT: &str = "SELECT s.id, h.name, d.name, s.name, s.kind, s.created, s.disk_size, s.used_bytes, \
     s.new_bytes, s.reused_bytes, s.state, s.confirmed, (SELECT b.passed FROM boot_tests b WHERE b.snapshot_id = s.id \
     ORDER BY b.finished DESC, b.id DESC LIMIT 1), s.disks, s.set_id FROM snapshots s JOIN hosts h ON h.id = s.host_id \
     LEFT JOIN disks d ON d.id = s.disk_id";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Snapshot> {
    Ok(Snapshot {
        id: r.get(0)?,
        host: r.get(1)?,
        disk: r.get(2)?,
        name: r.get(3)?,
        kind: r.get(4)?,
        created: r.get(5)?,
        disk_size: r.get(6)?,
        used_bytes: r.get(7)?,
        new_bytes: r.get(8)?,
        reused_bytes: r.get(9)?,
        state: r.get(10)?,
        confirmed: r.get(11)?,
        boot_test_passed: r.get::<_, Option<i64>>(12)?.map(|p| p == 1),
        set: r
            .get::<_, Option<String>>(13)?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(13, rusqlite::types::Type::Text, Box::new(e)))?,
        set_id: r.get(14)?,
    })
}

pub(crate) fn load(conn: &Connection, id: &str) -> Result<Snapshot> {
    conn.query_row(&format!("{SELECT} WHERE s.id = ?1"), [id], from_row)
        .optional()?
        .ok_or_else(|| CatalogError::not_found("snapshot", id))
}

fn validate_id(id: &str) -> Result<()> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(CatalogError::Invalid(format!("{id:?} is not a snapshot id (16 lowercase hex digits)")));
    }
    Ok(())
}

/// Inserts a snapshot row (inside the caller's transaction) and audits it; a set's members
/// follow its own row, each naming the set.
pub(crate) fn insert(
    conn: &Connection,
    now: UnixTime,
    actor: &str,
    new: &NewSnapshot,
    confirmed: bool,
) -> Result<Snapshot> {
    insert_one(conn, now, actor, new, confirmed, None)?;
    match &new.set {
        Some(set) => {
            let recorded: Vec<&str> = set.disks.iter().map(|d| d.manifest.as_str()).collect();
            let given: Vec<&str> = new.members.iter().map(|m| m.id.as_str()).collect();
            if recorded != given {
                return Err(CatalogError::Invalid(format!(
                    "snapshot set {}: its record names members {recorded:?}, the commit gives {given:?}",
                    new.id
                )));
            }
            for m in &new.members {
                if m.set.is_some() || !m.members.is_empty() || m.host != new.host {
                    return Err(CatalogError::Invalid(format!(
                        "snapshot {}: a set's member is one disk of its host",
                        m.id
                    )));
                }
                insert_one(conn, now, actor, m, confirmed, Some(&new.id))?;
            }
        }
        None if !new.members.is_empty() => {
            return Err(CatalogError::Invalid(format!("snapshot {} has members but no set record", new.id)));
        }
        None => {}
    }
    load(conn, &new.id)
}

fn insert_one(
    conn: &Connection,
    now: UnixTime,
    actor: &str,
    new: &NewSnapshot,
    confirmed: bool,
    set_id: Option<&str>,
) -> Result<()> {
    validate_id(&new.id)?;
    let hid = host_id(conn, &new.host)?;
    let did = new.disk.as_deref().map(|d| disk_id(conn, hid, d)).transpose()?;
    conn.execute(
        "INSERT INTO snapshots (id, host_id, disk_id, name, kind, created, disk_size, used_bytes, new_bytes, \
         reused_bytes, state, confirmed, disks, set_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'committed', ?11, ?12, ?13)",
        params![
            new.id,
            hid,
            did,
            new.name,
            new.kind,
            new.created,
            new.disk_size,
            new.used_bytes,
            new.new_bytes,
            new.reused_bytes,
            confirmed,
            new.set.as_ref().map(|d| serde_json::to_string(d).expect("a set record serializes")),
            set_id
        ],
    )
    .map_err(|e| {
        if is_unique_violation(&e) {
            CatalogError::conflict("snapshot", &new.id, "it is already in the catalog")
        } else {
            e
        }
    })?;
    let detail = json!({
        "host": new.host, "disk": new.disk, "kind": new.kind, "used_bytes": new.used_bytes, "confirmed": confirmed,
        "set": set_id, "disks": new.set.as_ref().map(|s| s.disks.len()),
    });
    audit::append(conn, now, actor, "snapshot.add", &new.id, detail)
}

impl Catalog {
    /// Records a snapshot committed to the store outside a capture job (an import, a CLI
    /// capture). Captures by a job use [`Catalog::commit_capture`].
    pub fn add_snapshot(&self, actor: &str, new: &NewSnapshot) -> Result<Snapshot> {
        self.write(|tx, now| insert(tx, now, actor, new, true))
    }

    /// Accepts a snapshot held unconfirmed (see the module docs); audited
    /// (`snapshot.confirm`). Confirming a confirmed snapshot changes nothing; one being deleted
    /// cannot be confirmed.
    pub fn confirm_snapshot(&self, actor: &str, id: &str) -> Result<Snapshot> {
        self.write(|tx, now| {
            let snap = load(tx, id)?;
            if snap.confirmed {
                return Ok(snap);
            }
            if snap.state != SnapshotState::Committed {
                return Err(CatalogError::conflict("snapshot", id, "it is being deleted"));
            }
            tx.execute("UPDATE snapshots SET confirmed = 1 WHERE id = ?1", [id])?;
            audit::append(tx, now, actor, "snapshot.confirm", id, json!({"host": snap.host}))?;
            load(tx, id)
        })
    }

    pub fn get_snapshot(&self, id: &str) -> Result<Snapshot> {
        self.read(|conn| load(conn, id))
    }

    /// The snapshots of one host (or all), oldest first, including those being deleted.
    pub fn list_snapshots(&self, host: Option<&str>) -> Result<Vec<Snapshot>> {
        self.read(|conn| {
            let hid = host.map(|h| host_id(conn, h)).transpose()?;
            let mut stmt = conn.prepare_cached(&format!(
                "{SELECT} WHERE CAST(?1 AS BIGINT) IS NULL OR s.host_id = ?1 ORDER BY s.created, s.id"
            ))?;
            let rows = stmt.query_map([hid], from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn rename_snapshot(&self, actor: &str, id: &str, name: Option<&str>) -> Result<Snapshot> {
        self.write(|tx, now| {
            load(tx, id)?;
            tx.execute("UPDATE snapshots SET name = ?1 WHERE id = ?2", params![name, id])?;
            audit::append(tx, now, actor, "snapshot.rename", id, json!({"name": name}))?;
            load(tx, id)
        })
    }

    /// First phase of deletion: `committed` → `deleting`. Refused while a queued or running
    /// restore uses the snapshot. Marking one already being deleted is a no-op.
    pub fn mark_snapshot_deleting(&self, actor: &str, id: &str) -> Result<Snapshot> {
        self.write(|tx, now| {
            let snap = load(tx, id)?;
            if snap.state == SnapshotState::Deleting {
                return Ok(snap);
            }
            let restore: Option<i64> = tx
                .query_row(
                    "SELECT id FROM jobs WHERE snapshot_id = ?1 AND state IN ('queued', 'running') LIMIT 1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(job) = restore {
                return Err(CatalogError::conflict("snapshot", id, format!("job {job} is restoring it")));
            }
            if let Some(set) = &snap.set_id {
                return Err(CatalogError::conflict(
                    "snapshot",
                    id,
                    format!("it is one disk of snapshot set {set}: delete the set"),
                ));
            }
            tx.execute("UPDATE snapshots SET state = 'deleting' WHERE id = ?1 OR set_id = ?1", [id])?;
            audit::append(tx, now, actor, "snapshot.mark_deleting", id, json!({"host": snap.host}))?;
            load(tx, id)
        })
    }

    /// Last phase of deletion, once the manifest is gone from the store: removes the row.
    /// Only a snapshot marked `deleting` can be removed.
    pub fn remove_snapshot(&self, actor: &str, id: &str) -> Result<()> {
        self.write(|tx, now| {
            let snap = load(tx, id)?;
            if snap.state != SnapshotState::Deleting {
                return Err(CatalogError::conflict("snapshot", id, "it must be marked for deletion first"));
            }
            tx.execute("DELETE FROM snapshots WHERE set_id = ?1", [id])?;
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
            audit::append(tx, now, actor, "snapshot.remove", id, json!({"host": snap.host}))
        })
    }

    /// The manifests in the store that hold snapshot `id`: its own, or for a set its members'
    /// (a set's row has no file of its own). Deleting a snapshot removes these.
    pub fn snapshot_manifests(&self, id: &str) -> Result<Vec<String>> {
        self.read(|conn| {
            let snap = load(conn, id)?;
            Ok(match snap.set {
                Some(set) => set.disks.into_iter().map(|d| d.manifest).collect(),
                None => vec![snap.id],
            })
        })
    }

    /// What the host's retention rule would keep and delete among its committed, confirmed
    /// snapshots (an unconfirmed one is left alone: see the module docs); `None` if no rule
    /// applies to the host.
    pub fn retention_plan(&self, host: &str) -> Result<Option<Plan>> {
        let Some(rule) = self.retention_for_host(host)? else { return Ok(None) };
        let candidates: Vec<Candidate> = self
            .list_snapshots(Some(host))?
            .into_iter()
            .filter(|s| s.state == SnapshotState::Committed && s.confirmed && s.set_id.is_none())
            .map(|s| Candidate { id: s.id, created: s.created })
            .collect();
        Ok(Some(retention::plan(&rule, &candidates)?))
    }
}

#[cfg(test)]
for_each_backend! {
pub(crate) mod tests {
    use super::super::{HostPatch, NewDisk, NewHost, RetentionScope};
    use super::*;
    use crate::retention::Rule;

    pub(crate) fn new_snapshot(id: &str, host: &str, created: UnixTime) -> NewSnapshot {
        NewSnapshot {
            id: id.into(),
            host: host.into(),
            disk: None,
            name: None,
            kind: SnapshotKind::Manual,
            created,
            disk_size: 1 << 30,
            used_bytes: 1 << 20,
            new_bytes: 1 << 19,
            reused_bytes: 1 << 19,
            set: None,
            members: Vec::new(),
        }
    }

    pub(crate) fn host(cat: &Catalog, name: &str) {
        cat.create_host("t", &NewHost { name: name.into(), group: None, notes: String::new() }).unwrap();
    }

    #[test]
    fn add_get_list_snapshots() {
        let (cat, _) = catalog();
        host(&cat, "a");
        host(&cat, "b");
        cat.put_disk("t", "a", &NewDisk { name: "sda".into(), serial: None, size: 1 << 30 }).unwrap();
        let mut s = new_snapshot("00000000000000a2", "a", 200);
        s.disk = Some("sda".into());
        s.kind = SnapshotKind::Scheduled;
        let got = cat.add_snapshot("t", &s).unwrap();
        assert_eq!(
            (got.disk.as_deref(), got.kind, got.state),
            (Some("sda"), SnapshotKind::Scheduled, SnapshotState::Committed)
        );
        assert_eq!(got.new_bytes + got.reused_bytes, got.used_bytes);
        cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 100)).unwrap();
        cat.add_snapshot("t", &new_snapshot("00000000000000b1", "b", 150)).unwrap();

        let ids = |h| cat.list_snapshots(h).unwrap().into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(Some("a")), ["00000000000000a1", "00000000000000a2"]);
        assert_eq!(ids(None), ["00000000000000a1", "00000000000000b1", "00000000000000a2"]);
        assert_eq!(cat.get_snapshot("00000000000000b1").unwrap().host, "b");
        assert!(matches!(cat.list_snapshots(Some("zz")), Err(CatalogError::NotFound { what: "host", .. })));

        // The host can be renamed; its snapshots follow. It cannot be deleted.
        cat.update_host("t", "b", &HostPatch { name: Some("c".into()), ..Default::default() }).unwrap();
        assert_eq!(cat.get_snapshot("00000000000000b1").unwrap().host, "c");
        let e = cat.delete_host("t", "c").unwrap_err();
        assert!(e.to_string().contains("1 snapshot"), "{e}");
        // Removing the disk keeps the snapshot, without a disk.
        cat.remove_disk("t", "a", "sda").unwrap();
        assert_eq!(cat.get_snapshot("00000000000000a2").unwrap().disk, None);
    }

    /// Issue 11: a snapshot set's row and its members' rows are recorded in one transaction
    /// (a bad member leaves nothing); a member cannot be deleted alone, deleting the set takes
    /// its members, and retention sees the set, not its members.
    #[test]
    fn snapshot_sets_are_recorded_and_deleted_whole() {
        use kura_imaging::diskmap::DiskIdentity;
        let (cat, _) = catalog();
        host(&cat, "a");
        let entry = |name: &str, id: &str| DiskEntry {
            disk: DiskIdentity { name: name.into(), size: 1 << 30, serial: Some(format!("S-{name}")), ..Default::default() },
            manifest: id.into(),
            used_bytes: 1 << 20,
        };
        let mut set = new_snapshot("00000000000005e7", "a", 300);
        set.set = Some(SetRecord {
            name: None,
            created: "2026-12-07T03:00:00Z".into(),
            host: Some("a".into()),
            disks: vec![entry("vda", "00000000000000d1"), entry("vdb", "00000000000000d2")],
        });
        set.members = vec![new_snapshot("00000000000000d1", "a", 300), new_snapshot("00000000000000d2", "bad host", 300)];
        assert!(cat.add_snapshot("t", &set).is_err());
        assert!(cat.list_snapshots(None).unwrap().is_empty(), "a refused set leaves no row");
        set.members[1].host = "a".into();
        set.members.swap(0, 1);
        assert!(matches!(cat.add_snapshot("t", &set), Err(CatalogError::Invalid(_))), "members out of order");
        set.members.swap(0, 1);
        let got = cat.add_snapshot("t", &set).unwrap();
        assert_eq!(got.set.as_ref().map(|s| s.disks.len()), Some(2));
        let member = cat.get_snapshot("00000000000000d2").unwrap();
        assert_eq!(member.set_id.as_deref(), Some("00000000000005e7"));
        assert_eq!(cat.snapshot_manifests("00000000000005e7").unwrap(), ["00000000000000d1", "00000000000000d2"]);
        assert_eq!(cat.snapshot_manifests("00000000000000d1").unwrap(), ["00000000000000d1"]);

        cat.set_retention("t", &RetentionScope::Host("a".into()), Rule { keep_last: 1, keep_monthly: 0 }).unwrap();
        let plan = cat.retention_plan("a").unwrap().unwrap();
        assert_eq!((plan.keep.len(), plan.delete.len()), (1, 0), "{plan:?}");

        let e = cat.mark_snapshot_deleting("t", "00000000000000d1").unwrap_err();
        assert!(e.to_string().contains("one disk of snapshot set 00000000000005e7"), "{e}");
        cat.mark_snapshot_deleting("t", "00000000000005e7").unwrap();
        assert_eq!(cat.get_snapshot("00000000000000d2").unwrap().state, SnapshotState::Deleting);
        cat.remove_snapshot("t", "00000000000005e7").unwrap();
        assert!(cat.list_snapshots(None).unwrap().is_empty());
    }

    #[test]
    fn bad_snapshots_are_refused() {
        let (cat, _) = catalog();
        host(&cat, "a");
        cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 1)).unwrap();
        assert!(matches!(
            cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 1)),
            Err(CatalogError::Conflict { what: "snapshot", .. })
        ));
        for bad in ["00000000000000A1", "00000000000000a", "zz000000000000a1"] {
            assert!(matches!(cat.add_snapshot("t", &new_snapshot(bad, "a", 1)), Err(CatalogError::Invalid(_))));
        }
        assert!(matches!(
            cat.add_snapshot("t", &new_snapshot("00000000000000a2", "nope", 1)),
            Err(CatalogError::NotFound { what: "host", .. })
        ));
        let mut s = new_snapshot("00000000000000a2", "a", 1);
        s.disk = Some("sdz".into());
        assert!(matches!(cat.add_snapshot("t", &s), Err(CatalogError::NotFound { what: "disk", .. })));
        assert!(matches!(cat.get_snapshot("ffffffffffffffff"), Err(CatalogError::NotFound { .. })));
    }

    #[test]
    fn deletion_is_two_phase() {
        let (cat, _) = catalog();
        host(&cat, "a");
        let id = "00000000000000a1";
        cat.add_snapshot("t", &new_snapshot(id, "a", 1)).unwrap();
        assert!(matches!(cat.remove_snapshot("t", id), Err(CatalogError::Conflict { .. })));
        assert_eq!(cat.mark_snapshot_deleting("t", id).unwrap().state, SnapshotState::Deleting);
        assert_eq!(cat.mark_snapshot_deleting("t", id).unwrap().state, SnapshotState::Deleting);
        cat.remove_snapshot("t", id).unwrap();
        assert!(matches!(cat.get_snapshot(id), Err(CatalogError::NotFound { .. })));
        let actions: Vec<String> = cat.list_audit(3).unwrap().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["snapshot.remove", "snapshot.mark_deleting", "snapshot.add"]);
        cat.delete_host("t", "a").unwrap();
    }

    #[test]
    fn rename_snapshot() {
        let (cat, _) = catalog();
        host(&cat, "a");
        cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 1)).unwrap();
        assert_eq!(
            cat.rename_snapshot("t", "00000000000000a1", Some("before upgrade")).unwrap().name.as_deref(),
            Some("before upgrade")
        );
        assert_eq!(cat.rename_snapshot("t", "00000000000000a1", None).unwrap().name, None);
    }

    /// A held snapshot (as `commit_capture_holding` records it).
    pub(crate) fn add_held(cat: &Catalog, id: &str, host: &str, created: UnixTime) {
        cat.write(|tx, now| insert(tx, now, "t", &new_snapshot(id, host, created), false)).unwrap();
    }

    #[test]
    fn confirming_a_held_snapshot_is_audited_once() {
        let (cat, _) = catalog();
        host(&cat, "a");
        assert!(cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 1)).unwrap().confirmed);
        add_held(&cat, "00000000000000a2", "a", 2);
        assert!(!cat.get_snapshot("00000000000000a2").unwrap().confirmed);
        assert!(cat.confirm_snapshot("op", "00000000000000a2").unwrap().confirmed);
        assert!(cat.get_snapshot("00000000000000a2").unwrap().confirmed);
        // Again, or an already confirmed one: nothing changes, nothing is audited.
        cat.confirm_snapshot("op", "00000000000000a2").unwrap();
        cat.confirm_snapshot("op", "00000000000000a1").unwrap();
        let audit = cat.list_audit(10).unwrap();
        let confirms: Vec<_> = audit.iter().filter(|a| a.action == "snapshot.confirm").collect();
        assert_eq!(confirms.len(), 1, "{audit:?}");
        assert_eq!((confirms[0].actor.as_str(), confirms[0].target.as_str()), ("op", "00000000000000a2"));
        assert!(matches!(cat.confirm_snapshot("op", "ffffffffffffffff"), Err(CatalogError::NotFound { .. })));
        // One being deleted cannot be confirmed.
        add_held(&cat, "00000000000000a3", "a", 3);
        cat.mark_snapshot_deleting("t", "00000000000000a3").unwrap();
        assert!(matches!(cat.confirm_snapshot("op", "00000000000000a3"), Err(CatalogError::Conflict { .. })));
    }

    #[test]
    fn retention_leaves_held_snapshots_alone() {
        let (cat, _) = catalog();
        host(&cat, "a");
        cat.add_snapshot("t", &new_snapshot("00000000000000a1", "a", 100)).unwrap();
        cat.add_snapshot("t", &new_snapshot("00000000000000a2", "a", 200)).unwrap();
        add_held(&cat, "00000000000000a3", "a", 300);
        cat.set_retention("t", &RetentionScope::Host("a".into()), Rule { keep_last: 1, keep_monthly: 0 }).unwrap();
        let plan = cat.retention_plan("a").unwrap().unwrap();
        // The held newest neither counts as the one kept nor is deleted.
        assert_eq!(plan.keep, ["00000000000000a2"]);
        assert_eq!(plan.delete, ["00000000000000a1"]);
    }

    #[test]
    fn retention_plan_uses_the_rule_and_committed_snapshots() {
        let (cat, _) = catalog();
        host(&cat, "a");
        assert_eq!(cat.retention_plan("a").unwrap(), None);
        for (i, t) in [100, 200, 300, 400].iter().enumerate() {
            cat.add_snapshot("t", &new_snapshot(&format!("00000000000000a{i}"), "a", *t)).unwrap();
        }
        cat.mark_snapshot_deleting("t", "00000000000000a0").unwrap();
        cat.set_retention("t", &RetentionScope::Host("a".into()), Rule { keep_last: 2, keep_monthly: 0 }).unwrap();
        let plan = cat.retention_plan("a").unwrap().unwrap();
        assert_eq!(plan.keep, ["00000000000000a3", "00000000000000a2"]);
        assert_eq!(plan.delete, ["00000000000000a1"]);
    }
}
}
