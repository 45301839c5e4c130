//! Boot tests of snapshots (`kura verify --boot`): each run's verdict, kept with the snapshot
//! (deleted with it). The test itself runs in the server (`server/src/boot_test`); this module
//! only records and answers "when did this host's image last boot?" and "what did its screen
//! show?". A test's screenshot is a file the engine keeps (`DATA/screenshots/NAME`); the row
//! holds its name, and [`Catalog::prune_boot_test_screenshots`] decides which are kept.

use super::error::{CatalogError, Result};
use super::sql::Row;
use super::{audit, Catalog, UnixTime};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};

/// One boot test's verdict, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTest {
    /// The catalog's id (0 before it is recorded).
    #[serde(default)]
    pub id: i64,
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
    /// The screenshot's file name in the engine's `screenshots/`, while it is kept.
    #[serde(default)]
    pub screenshot: Option<String>,
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
        id: r.get(9)?,
        screenshot: r.get(10)?,
    })
}

const COLUMNS: &str = "b.snapshot_id, b.finished, b.passed, b.stage, b.reason, b.millis, b.firmware, \
     b.console_tail, b.fetched_bytes, b.id, b.screenshot";

impl Catalog {
    /// Records a boot test of a committed snapshot (its time is the catalog's now), audited.
    pub fn record_boot_test(&self, actor: &str, t: &BootTest) -> Result<BootTest> {
        if !matches!(t.firmware.as_str(), "bios" | "uefi") {
            return Err(CatalogError::Invalid(format!("firmware {:?} is neither bios nor uefi", t.firmware)));
        }
        let tail = serde_json::to_string(&t.console_tail).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        self.write(|tx, now| {
            let known: i64 =
                tx.query_row("SELECT count(*) FROM snapshots WHERE id = ?1", [&t.snapshot], |r| r.get(0))?;
            if known == 0 {
                return Err(CatalogError::NotFound { what: "snapshot", key: t.snapshot.clone() });
            }
            let id: i64 = tx.query_row(
                "INSERT INTO boot_tests (snapshot_id, finished, passed, stage, reason, millis, firmware, console_tail, \
                 fetched_bytes, screenshot) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
                params![
                    t.snapshot,
                    now,
                    t.passed as i64,
                    t.stage,
                    t.reason,
                    t.millis,
                    t.firmware,
                    tail,
                    t.fetched_bytes,
                    t.screenshot
                ],
                |r| r.get(0),
            )?;
            audit::append(
                tx,
                now,
                actor,
                "boot_test",
                &format!("snapshot {}", t.snapshot),
                json!({ "passed": t.passed, "stage": t.stage, "reason": t.reason }),
            )?;
            Ok(BootTest { id, finished: now, ..t.clone() })
        })
    }

    /// A snapshot's boot tests, newest first.
    pub fn boot_tests(&self, snapshot: &str) -> Result<Vec<BootTest>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM boot_tests b WHERE b.snapshot_id = ?1 ORDER BY b.finished DESC, b.id DESC"
            ))?;
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

    /// Each host's newest boot test (passed or not), by host name.
    pub fn newest_boot_test_by_host(&self) -> Result<Vec<(String, BootTest)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS}, h.name FROM boot_tests b JOIN snapshots s ON s.id = b.snapshot_id \
                 JOIN hosts h ON h.id = s.host_id WHERE b.id = (SELECT b2.id FROM boot_tests b2 \
                 JOIN snapshots s2 ON s2.id = b2.snapshot_id WHERE s2.host_id = s.host_id \
                 ORDER BY b2.finished DESC, b2.id DESC LIMIT 1) ORDER BY h.name"
            ))?;
            // The host's name follows the test's columns.
            let rows = stmt.query_map([], |r| Ok((r.get(11)?, from_row(r)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Keeps the screenshots of each host's newest `keep` boot tests that have one; older
    /// tests forget theirs. Returns the names still kept: the engine deletes every other file
    /// of its `screenshots/` (also those of tests deleted with their snapshot).
    pub fn prune_boot_test_screenshots(&self, keep: usize) -> Result<HashSet<String>> {
        self.write(|tx, _| {
            let rows: Vec<(i64, String, i64)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT b.id, b.screenshot, s.host_id FROM boot_tests b JOIN snapshots s ON s.id = b.snapshot_id \
                     WHERE b.screenshot IS NOT NULL ORDER BY s.host_id, b.finished DESC, b.id DESC",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut per_host: HashMap<i64, usize> = HashMap::new();
            let mut kept = HashSet::new();
            for (id, name, host) in rows {
                let n = per_host.entry(host).or_default();
                *n += 1;
                if *n <= keep {
                    kept.insert(name);
                } else {
                    tx.execute("UPDATE boot_tests SET screenshot = NULL WHERE id = ?1", [id])?;
                }
            }
            Ok(kept)
        })
    }
}

/// A scheduled boot test waiting (or running, or cut short by a stop): see migration 0015.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedBootTest {
    pub snapshot: String,
    pub queued: UnixTime,
    /// Console texts that also mean the system came up (the schedule's `--expect`).
    pub expect: Vec<String>,
}

impl Catalog {
    /// Queues the boot test of committed snapshot `snapshot` for engine node `node`; false when
    /// it is already queued (by any node) or the snapshot is gone.
    pub fn queue_boot_test(&self, node: &str, snapshot: &str, expect: &[String]) -> Result<bool> {
        let expect = serde_json::to_string(expect).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        self.write(|tx, now| {
            let n = tx.execute(
                "INSERT INTO boot_test_queue (snapshot_id, node, queued, expect) \
                 SELECT id, ?2, ?3, ?4 FROM snapshots WHERE id = ?1 AND state = 'committed' \
                 ON CONFLICT (snapshot_id) DO NOTHING",
                params![snapshot, node, now, expect],
            )?;
            Ok(n == 1)
        })
    }

    /// The boot test of `snapshot` ended (its verdict recorded, or it could not run).
    pub fn unqueue_boot_test(&self, snapshot: &str) -> Result<()> {
        self.write(|tx, _| {
            tx.execute("DELETE FROM boot_test_queue WHERE snapshot_id = ?1", [snapshot])?;
            Ok(())
        })
    }

    /// The boot tests node `node` queued and has not ended, oldest first.
    pub fn queued_boot_tests(&self, node: &str) -> Result<Vec<QueuedBootTest>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT snapshot_id, queued, expect FROM boot_test_queue WHERE node = ?1 ORDER BY queued, snapshot_id",
            )?;
            let rows = stmt.query_map([node], |r| {
                let expect: String = r.get(2)?;
                Ok(QueuedBootTest {
                    snapshot: r.get(0)?,
                    queued: r.get(1)?,
                    expect: serde_json::from_str(&expect).unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
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
            id: 0,
            screenshot: None,
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

    #[test]
    fn the_boot_test_queue_keeps_each_snapshot_once_per_node_until_it_ends() {
        let (cat, clock) = catalog();
        host(&cat, "web01");
        cat.add_snapshot("t", &new_snapshot("00000000000000d1", "web01", 100)).unwrap();
        cat.add_snapshot("t", &new_snapshot("00000000000000d2", "web01", 100)).unwrap();
        let expect = vec!["login:".to_string()];
        assert!(cat.queue_boot_test("local", "00000000000000d2", &expect).unwrap());
        clock.advance(5);
        assert!(cat.queue_boot_test("local", "00000000000000d1", &[]).unwrap());
        assert!(!cat.queue_boot_test("other", "00000000000000d1", &[]).unwrap(), "queued once, by one node");
        assert!(!cat.queue_boot_test("local", "00000000000000ff", &[]).unwrap(), "no such snapshot");
        let q = cat.queued_boot_tests("local").unwrap();
        let ids: Vec<&str> = q.iter().map(|t| t.snapshot.as_str()).collect();
        assert_eq!(ids, ["00000000000000d2", "00000000000000d1"], "oldest first");
        assert_eq!(q[0].expect, expect);
        assert!(cat.queued_boot_tests("other").unwrap().is_empty());
        cat.unqueue_boot_test("00000000000000d2").unwrap();
        // A deleted snapshot leaves the queue with it.
        cat.mark_snapshot_deleting("t", "00000000000000d1").unwrap();
        cat.remove_snapshot("t", "00000000000000d1").unwrap();
        assert!(cat.queued_boot_tests("local").unwrap().is_empty());
    }

    #[test]
    fn each_host_keeps_the_screenshots_of_its_newest_tests_only() {
        let (cat, clock) = catalog();
        host(&cat, "web01");
        host(&cat, "web02");
        cat.add_snapshot("t", &new_snapshot("00000000000000c1", "web01", 100)).unwrap();
        cat.add_snapshot("t", &new_snapshot("00000000000000c2", "web02", 100)).unwrap();
        let shot = |snapshot: &str, passed: bool, name: &str| {
            clock.advance(10);
            let t = BootTest { screenshot: Some(name.into()), ..verdict(snapshot, passed) };
            cat.record_boot_test("op", &t).unwrap()
        };
        shot("00000000000000c1", true, "a.png");
        shot("00000000000000c1", false, "b.png");
        let newest = shot("00000000000000c1", true, "c.png");
        shot("00000000000000c2", false, "d.png");
        let kept = cat.prune_boot_test_screenshots(2).unwrap();
        let mut names: Vec<_> = kept.into_iter().collect();
        names.sort();
        assert_eq!(names, ["b.png", "c.png", "d.png"]);
        assert_eq!(cat.boot_tests("00000000000000c1").unwrap()[2].screenshot, None, "the oldest forgot its screenshot");
        // The newest test of each host, whatever its verdict, with its screenshot.
        let by_host = cat.newest_boot_test_by_host().unwrap();
        assert_eq!(by_host.len(), 2);
        assert_eq!(by_host[0], ("web01".to_string(), newest));
        assert_eq!((by_host[1].0.as_str(), by_host[1].1.passed), ("web02", false));
        assert_eq!(by_host[1].1.screenshot.as_deref(), Some("d.png"));
        // Deleted with the snapshot: no longer kept.
        cat.mark_snapshot_deleting("t", "00000000000000c2").unwrap();
        cat.remove_snapshot("t", "00000000000000c2").unwrap();
        assert!(!cat.prune_boot_test_screenshots(2).unwrap().contains("d.png"));
    }
}
}
