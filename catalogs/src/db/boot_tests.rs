//! Boot tests of snapshots (`kura verify --boot`): each run's verdict, kept with the snapshot
//! (deleted with it). The test itself runs in the server (`server/src/boot_test`); this module
//! only records and answers "when did this host's image last boot?".

use super::error::{CatalogError, Result};
use super::sql::Row;
use super::{audit, Catalog, UnixTime};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One boot test's verdict, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTest {
    pub snapshot: String,
    pub finished: UnixTime,
    pub passed: bool,
    /// How far the boot got: `nothing`, `firmware`, `boot-loader`, `kernel`, `userspace`.
    pub stage: String,
    pub reason: String,
    pub millis: u64,
    /// `bios` or `uefi`.
    pub firmware: String,
    pub console_tail: Vec<String>,
    pub fetched_bytes: u64,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<BootTest> {
    let tail: String = r.get(7)?;
    Ok(BootTest {
        snapshot: r.get(0)?,
        finished: r.get(1)?,
        passed: r.get::<_, i64>(2)? == 1,
        stage: r.get(3)?,
        reason: r.get(4)?,
        millis: r.get(5)?,
        firmware: r.get(6)?,
        console_tail: serde_json::from_str(&tail).unwrap_or_default(),
        fetched_bytes: r.get(8)?,
    })
}

const SELECT: &str = "SELECT snapshot_id, finished, passed, stage, reason, millis, firmware, console_tail, \
     fetched_bytes FROM boot_tests";

impl Catalog {
    /// Records a boot test of a committed snapshot (its time is the catalog's now), audited.
    pub fn record_boot_test(&self, actor: &str, t: &BootTest) -> Result<BootTest> {
        if !matches!(t.firmware.as_str(), "bios" | "uefi") {
            return Err(CatalogError::Invalid(format!("firmware {:?} is neither bios nor uefi", t.firmware)));
        }
        let tail = serde_json::to_string(&t.console_tail).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        self.write(|tx, now| {
            let known: i64 = tx.query_row("SELECT count(*) FROM snapshots WHERE id = ?1", [&t.snapshot], |r| r.get(0))?;
            if known == 0 {
                return Err(CatalogError::NotFound { what: "snapshot", key: t.snapshot.clone() });
            }
            tx.execute(
                "INSERT INTO boot_tests (snapshot_id, finished, passed, stage, reason, millis, firmware, console_tail, \
                 fetched_bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![t.snapshot, now, t.passed as i64, t.stage, t.reason, t.millis, t.firmware, tail, t.fetched_bytes],
            )?;
            audit::append(
                tx,
                now,
                actor,
                "boot_test",
                &format!("snapshot {}", t.snapshot),
                json!({ "passed": t.passed, "stage": t.stage, "reason": t.reason }),
            )?;
            Ok(BootTest { finished: now, ..t.clone() })
        })
    }

    /// A snapshot's boot tests, newest first.
    pub fn boot_tests(&self, snapshot: &str) -> Result<Vec<BootTest>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("{SELECT} WHERE snapshot_id = ?1 ORDER BY finished DESC, id DESC"))?;
            let rows = stmt.query_map([snapshot], from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// For each host with a passed boot test: when the newest one finished.
    pub fn last_boot_success_by_host(&self) -> Result<Vec<(String, UnixTime)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT h.name, max(b.finished) FROM boot_tests b JOIN snapshots s ON s.id = b.snapshot_id \
                 JOIN hosts h ON h.id = s.host_id WHERE b.passed = 1 GROUP BY h.name ORDER BY h.name",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::snapshots::tests::{host, new_snapshot};
    use super::*;

    fn verdict(snapshot: &str, passed: bool) -> BootTest {
        BootTest {
            snapshot: snapshot.into(),
            finished: 0,
            passed,
            stage: if passed { "userspace" } else { "firmware" }.into(),
            reason: if passed { "userspace reached" } else { "no boot loader ran" }.into(),
            millis: 9_000,
            firmware: "bios".into(),
            console_tail: vec!["SeaBIOS".into(), "x login: ".into()],
            fetched_bytes: 11 << 20,
        }
    }

    #[test]
    fn boot_tests_are_recorded_listed_and_deleted_with_their_snapshot() {
        let (cat, _) = catalog();
        host(&cat, "web01");
        host(&cat, "web02");
        cat.add_snapshot("t", &new_snapshot("00000000000000b1", "web01", 100)).unwrap();
        cat.add_snapshot("t", &new_snapshot("00000000000000b2", "web02", 100)).unwrap();
        let ok = cat.record_boot_test("op", &verdict("00000000000000b1", true)).unwrap();
        assert!(ok.finished > 0);
        cat.record_boot_test("op", &verdict("00000000000000b2", false)).unwrap();
        // The snapshot shows its newest verdict.
        assert_eq!(cat.get_snapshot("00000000000000b1").unwrap().boot_test_passed, Some(true));
        assert_eq!(cat.get_snapshot("00000000000000b2").unwrap().boot_test_passed, Some(false));
        let listed = cat.boot_tests("00000000000000b1").unwrap();
        assert_eq!(listed, vec![ok.clone()]);
        // Only passed tests count as a host's last success.
        assert_eq!(cat.last_boot_success_by_host().unwrap(), vec![("web01".to_string(), ok.finished)]);
        // Unknown snapshots and bad firmware are refused.
        assert!(matches!(
            cat.record_boot_test("op", &verdict("00000000000000ff", true)),
            Err(CatalogError::NotFound { .. })
        ));
        let mut bad = verdict("00000000000000b1", true);
        bad.firmware = "coreboot".into();
        assert!(matches!(cat.record_boot_test("op", &bad), Err(CatalogError::Invalid(_))));
        // Deleted with the snapshot.
        cat.mark_snapshot_deleting("t", "00000000000000b1").unwrap();
        cat.remove_snapshot("t", "00000000000000b1").unwrap();
        assert!(cat.boot_tests("00000000000000b1").unwrap().is_empty());
        assert!(cat.last_boot_success_by_host().unwrap().is_empty());
    }
}
}
