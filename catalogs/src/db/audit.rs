//! The audit log: one append-only row (time, actor, action, target, detail JSON) per change to
//! the catalog, written in the change's own transaction by the other `db` modules.
//!
//! Actions are dotted names, `<record>.<verb>`: `host.create`, `job.cancel`, `token.revoke`...

use super::sql::Connection;
use super::{Catalog, Result, UnixTime};
use rusqlite::params;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub time: UnixTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// Appends one audit row (inside the caller's transaction).
pub(crate) fn append(
    conn: &Connection,
    time: UnixTime,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<()> {
    conn.execute(
        "INSERT INTO audit (time, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![time, actor, action, target, detail.to_string()],
    )?;
    Ok(())
}

impl Catalog {
    /// Records an event that is not a catalog change but belongs in the audit log (a restore
    /// requested through the API, a refused login...).
    pub fn record_audit(&self, actor: &str, action: &str, target: &str, detail: serde_json::Value) -> Result<()> {
        self.write(|tx, now| append(tx, now, actor, action, target, detail))
    }

    /// The newest `limit` audit rows, newest first.
    pub fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, time, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                let detail: String = r.get(5)?;
                Ok(AuditEntry {
                    id: r.get(0)?,
                    time: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::testing::START;
    use super::super::*;

    #[test]
    fn changes_write_audit_rows_newest_first() {
        let (cat, clock) = catalog();
        cat.create_host("alice", &NewHost { name: "web1".into(), group: None, notes: String::new() }).unwrap();
        clock.advance(5);
        cat.add_mac("bob", "web1", "aa:bb:cc:dd:ee:ff").unwrap();
        cat.record_audit("carol", "restore.request", "web1", serde_json::json!({"snapshot": "x"})).unwrap();

        let rows = cat.list_audit(10).unwrap();
        let summary: Vec<(&str, &str, &str)> =
            rows.iter().map(|r| (r.actor.as_str(), r.action.as_str(), r.target.as_str())).collect();
        assert_eq!(
            summary,
            [("carol", "restore.request", "web1"), ("bob", "host.add_mac", "web1"), ("alice", "host.create", "web1"),]
        );
        assert_eq!(rows[0].detail["snapshot"], "x");
        assert_eq!(rows[1].detail["mac"], "aa:bb:cc:dd:ee:ff");
        assert_eq!((rows[1].time, rows[2].time), (START + 5, START));
        assert_eq!(cat.list_audit(1).unwrap().len(), 1);
    }

    #[test]
    fn a_refused_change_writes_no_audit_row() {
        let (cat, _) = catalog();
        cat.create_host("a", &NewHost { name: "web1".into(), group: None, notes: String::new() }).unwrap();
        assert!(cat.create_host("a", &NewHost { name: "web1".into(), group: None, notes: String::new() }).is_err());
        assert!(cat.add_mac("a", "web1", "not a mac").is_err());
        assert_eq!(cat.list_audit(10).unwrap().len(), 1);
    }
}
}
