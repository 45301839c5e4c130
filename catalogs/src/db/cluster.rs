//! What several engine nodes on one catalog and one remote (S3) store share, the catalog's side
//! (issue 14; `docs/scale-out.md`): the store's chunk index, with the time each chunk was last
//! promised to a writer, and the leases of the writers (upload sessions) running on any node.
//!
//! # The rule that keeps garbage collection safe across nodes
//!
//! A chunk a writer was told is present, or is uploading, must stay until that writer ends.
//! On one node the in-memory [`crate::gc::WriterRegistry`] keeps it; across nodes it is this:
//!
//! 1. Every writer holds a lease row (`writer_leases`: its start and when it was last seen),
//!    renewed while it runs. A lease not renewed for the lease time is a dead node's.
//! 2. Telling a writer about a digest ([`Catalog::index_touch`]) and starting an upload set the
//!    digest's `touched` time to now (a pending row, size −1, if the store lacks it), in one
//!    writing transaction.
//! 3. The collector removes a chunk only through [`Catalog::index_remove_if_untouched`]: in one
//!    writing transaction it checks `touched` is older than its cutoff — the earlier of its own
//!    start and the oldest live lease's start, minus the grace period — deletes the row and
//!    only then sends the object's DELETE, before committing.
//!
//! Writing transactions run one at a time on every node (the catalog's write lock,
//! [`super::PG_WRITE_LOCK`]). So a touch either comes first (and the chunk is kept, its
//! `touched` being later than any running writer's start) or after the DELETE completed (and
//! the digest is reported missing and uploaded again). Times are the nodes' clocks: they must
//! agree to within the grace period (NTP).
//!
//! The index may list *fewer* chunks than the store (a lost insert costs one re-upload); it
//! never lists as present a chunk the store lacks: a row becomes present only after its PUT
//! returned, and is deleted before its object is.

use super::error::Result;
use super::sql::{Connection, OptionalExtension};
use super::{Catalog, UnixTime};
use crate::chunk_index::SharedChunkIndex;
use kura_imaging::chunk::Digest;
use kura_imaging::Error;
use rusqlite::params;
use std::time::{Duration, SystemTime};

/// Digests per statement in batched lookups.
const BATCH: usize = 500;

fn store_err(e: super::CatalogError) -> Error {
    let retryable = e.is_retryable();
    Error::Store { message: format!("chunk index in the catalog: {e}"), retryable }
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

/// Which of `hex` have a row present (`size >= 0`).
fn present_of(tx: &Connection<'_>, hex: &[String]) -> Result<std::collections::HashSet<String>> {
    let mut found = std::collections::HashSet::new();
    for part in hex.chunks(BATCH) {
        let sql =
            format!("SELECT digest FROM chunk_index WHERE size >= 0 AND digest IN ({})", placeholders(1, part.len()));
        let refs: Vec<&dyn rusqlite::ToSql> = part.iter().map(|h| h as &dyn rusqlite::ToSql).collect();
        let mut st = tx.prepare_cached(&sql)?;
        for d in st.query_map(refs.as_slice(), |r| r.get::<_, String>(0))? {
            found.insert(d?);
        }
    }
    Ok(found)
}

impl Catalog {
    /// Marks `digests` as promised to a writer now (a pending row for those the store lacks)
    /// and returns which the store has. See the module docs.
    pub fn index_touch(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let hex: Vec<String> = digests.iter().map(|d| d.to_hex()).collect();
        self.write(|tx, now| {
            for h in &hex {
                tx.execute(
                    "INSERT INTO chunk_index (digest, size, touched) VALUES (?1, -1, ?2) \
                     ON CONFLICT (digest) DO UPDATE SET touched = ?2",
                    params![h, now],
                )?;
            }
            let found = present_of(tx, &hex)?;
            Ok(hex.iter().map(|h| found.contains(h)).collect())
        })
    }

    /// Which of `digests` the store has, by the index (no touch).
    pub fn index_present(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let hex: Vec<String> = digests.iter().map(|d| d.to_hex()).collect();
        self.read(|c| {
            let found = present_of(c, &hex)?;
            Ok(hex.iter().map(|h| found.contains(h)).collect())
        })
    }

    /// Records a chunk whose PUT returned (`size`: its encoded size).
    pub fn index_stored(&self, d: &Digest, size: u64) -> Result<()> {
        self.write(|tx, now| {
            tx.execute(
                "INSERT INTO chunk_index (digest, size, touched) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (digest) DO UPDATE SET size = ?2, touched = ?3",
                params![d.to_hex(), size as i64, now],
            )?;
            Ok(())
        })
    }

    /// Removes chunk `d` from the index and runs `delete` (the object's DELETE) in one writing
    /// transaction, unless a writer touched it at or after `cutoff`. Returns whether it was
    /// removed; `delete`'s failure is returned after the row's removal is committed (an index
    /// listing fewer chunks is safe).
    pub fn index_remove_if_untouched(
        &self,
        d: &Digest,
        cutoff: UnixTime,
        delete: &mut dyn FnMut() -> std::result::Result<(), Error>,
    ) -> std::result::Result<bool, Error> {
        let mut failed = None;
        let removed = self
            .write(|tx, _| {
                let touched: Option<i64> = tx
                    .query_row("SELECT touched FROM chunk_index WHERE digest = ?1", [d.to_hex()], |r| r.get(0))
                    .optional()?;
                if touched.is_some_and(|t| t >= cutoff) {
                    return Ok(false);
                }
                tx.execute("DELETE FROM chunk_index WHERE digest = ?1", [d.to_hex()])?;
                if let Err(e) = delete() {
                    failed = Some(e);
                }
                Ok(true)
            })
            .map_err(store_err)?;
        match failed {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Forgets chunk `d` (moved aside or removed outside the collector); durable on return.
    pub fn index_forget(&self, d: &Digest) -> Result<()> {
        self.write(|tx, _| {
            tx.execute("DELETE FROM chunk_index WHERE digest = ?1", [d.to_hex()])?;
            Ok(())
        })
    }

    /// Chunks present and their summed encoded size.
    pub fn index_usage(&self) -> Result<(u64, u64)> {
        self.read(|c| {
            let (n, bytes): (i64, Option<i64>) =
                c.query_row("SELECT count(*), CAST(sum(size) AS BIGINT) FROM chunk_index WHERE size >= 0", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok((n as u64, bytes.unwrap_or(0) as u64))
        })
    }

    /// The store the index was filled from, if any.
    pub fn index_built_from(&self) -> Result<Option<String>> {
        self.read(|c| {
            c.query_row("SELECT value FROM cluster_state WHERE key = 'chunk_index_store'", [], |r| r.get(0)).optional()
        })
    }

    /// Fills the index from a listing of store `store` (rows already there are kept) and
    /// records that it was.
    pub fn index_fill(&self, store: &str, chunks: &[(Digest, u64)]) -> Result<()> {
        for part in chunks.chunks(BATCH) {
            self.write(|tx, now| {
                for (d, size) in part {
                    tx.execute(
                        "INSERT INTO chunk_index (digest, size, touched) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (digest) DO UPDATE SET size = ?2",
                        params![d.to_hex(), *size as i64, now],
                    )?;
                }
                Ok(())
            })?;
        }
        self.write(|tx, _| {
            tx.execute(
                "INSERT INTO cluster_state (key, value) VALUES ('chunk_index_store', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = ?1",
                [store],
            )?;
            Ok(())
        })
    }

    /// Takes a lease for writer `id` (an upload session) on node `node`.
    pub fn lease_writer(&self, id: &str, node: &str) -> Result<()> {
        self.write(|tx, now| {
            tx.execute(
                "INSERT INTO writer_leases (id, node, started, seen) VALUES (?1, ?2, ?3, ?3)",
                params![id, node, now],
            )?;
            Ok(())
        })
    }

    /// Renews the leases of `ids`; returns those that are gone (expired and reaped elsewhere).
    pub fn renew_writers(&self, ids: &[String]) -> Result<Vec<String>> {
        self.write(|tx, now| {
            let mut gone = Vec::new();
            for id in ids {
                if tx.execute("UPDATE writer_leases SET seen = ?1 WHERE id = ?2", params![now, id])? == 0 {
                    gone.push(id.clone());
                }
            }
            Ok(gone)
        })
    }

    /// Ends writer `id`'s lease (its session committed or ended).
    pub fn end_writer(&self, id: &str) -> Result<()> {
        self.write(|tx, _| {
            tx.execute("DELETE FROM writer_leases WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// Ends every lease of node `node` (a restarted node: its sessions are gone); returns how
    /// many.
    pub fn end_node_writers(&self, node: &str) -> Result<usize> {
        self.write(|tx, _| tx.execute("DELETE FROM writer_leases WHERE node = ?1", [node]))
    }

    /// Reaps leases not renewed for `lease`, then returns the start of the oldest live one.
    pub fn oldest_live_writer(&self, lease: Duration) -> Result<Option<UnixTime>> {
        self.write(|tx, now| {
            let reaped = tx.execute("DELETE FROM writer_leases WHERE seen < ?1", [now - lease.as_secs() as i64])?;
            if reaped > 0 {
                tracing::warn!("{reaped} writer lease(s) expired (their node stopped renewing them): released");
            }
            tx.query_row("SELECT min(started) FROM writer_leases", [], |r| r.get(0))
        })
    }

    /// Live leases as (id, node, started, seen), oldest first.
    pub fn writer_leases(&self) -> Result<Vec<(String, String, UnixTime, UnixTime)>> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT id, node, started, seen FROM writer_leases ORDER BY started, id")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

fn unix(t: SystemTime) -> UnixTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    }
}

impl SharedChunkIndex for Catalog {
    fn touch(&self, digests: &[Digest]) -> std::result::Result<Vec<bool>, Error> {
        self.index_touch(digests).map_err(store_err)
    }

    fn present(&self, digests: &[Digest]) -> std::result::Result<Vec<bool>, Error> {
        self.index_present(digests).map_err(store_err)
    }

    fn stored(&self, d: &Digest, size: u64) -> std::result::Result<(), Error> {
        self.index_stored(d, size).map_err(store_err)
    }

    fn remove_if_untouched(
        &self,
        d: &Digest,
        cutoff: SystemTime,
        delete: &mut dyn FnMut() -> std::result::Result<(), Error>,
    ) -> std::result::Result<bool, Error> {
        self.index_remove_if_untouched(d, unix(cutoff), delete)
    }

    fn forget(&self, d: &Digest) -> std::result::Result<(), Error> {
        self.index_forget(d).map_err(store_err)
    }

    fn usage(&self) -> std::result::Result<(u64, u64), Error> {
        self.index_usage().map_err(store_err)
    }

    fn built_from(&self) -> std::result::Result<Option<String>, Error> {
        self.index_built_from().map_err(store_err)
    }

    fn fill(&self, store: &str, chunks: &[(Digest, u64)]) -> std::result::Result<(), Error> {
        self.index_fill(store, chunks).map_err(store_err)
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::*;
    use std::cell::Cell;

    fn d(i: u8) -> Digest {
        Digest::of(&[i])
    }

    #[test]
    fn touched_chunks_survive_a_removal_with_an_earlier_cutoff() {
        let (c, _clock) = catalog();
        c.index_fill("s3://b/p", &[(d(1), 10), (d(2), 20)]).unwrap();
        assert_eq!(c.index_built_from().unwrap().as_deref(), Some("s3://b/p"));
        // d(3) is unknown: reported missing, and a pending row protects its upload.
        assert_eq!(c.index_touch(&[d(1), d(3)]).unwrap(), vec![true, false]);
        assert_eq!(c.index_present(&[d(1), d(2), d(3)]).unwrap(), vec![true, true, false]);
        assert_eq!(c.index_usage().unwrap(), (2, 30));

        let now = c.now();
        let deleted = Cell::new(0);
        let mut delete = || {
            deleted.set(deleted.get() + 1);
            Ok(())
        };
        // Touched now: kept by a cutoff at or before now.
        assert!(!c.index_remove_if_untouched(&d(1), now, &mut delete).unwrap());
        assert!(!c.index_remove_if_untouched(&d(3), now, &mut delete).unwrap());
        assert_eq!(deleted.get(), 0);
        // A later cutoff (no writer older than now): removed, row first.
        assert!(c.index_remove_if_untouched(&d(1), now + 1, &mut delete).unwrap());
        assert_eq!((deleted.get(), c.index_present(&[d(1)]).unwrap()), (1, vec![false]));

        // A failed DELETE still leaves the row removed (listing fewer is safe).
        let mut failing = || Err(Error::Store { message: "boom".into(), retryable: true });
        assert!(c.index_remove_if_untouched(&d(2), now + 1, &mut failing).is_err());
        assert_eq!(c.index_present(&[d(2)]).unwrap(), vec![false]);

        c.index_stored(&d(3), 33).unwrap();
        assert_eq!(c.index_usage().unwrap(), (1, 33));
    }

    #[test]
    fn leases_pin_the_oldest_writer_until_they_end_or_expire() {
        let (c, clock) = catalog();
        let lease = Duration::from_secs(60);
        assert_eq!(c.oldest_live_writer(lease).unwrap(), None);
        c.lease_writer("w1", "node-a").unwrap();
        let first = c.now();
        clock.advance(10);
        c.lease_writer("w2", "node-b").unwrap();
        assert_eq!(c.oldest_live_writer(lease).unwrap(), Some(first));
        assert_eq!(c.renew_writers(&["w1".into(), "gone".into()]).unwrap(), vec!["gone".to_string()]);
        c.end_writer("w1").unwrap();
        assert_eq!(c.oldest_live_writer(lease).unwrap(), Some(first + 10));
        c.lease_writer("w3", "node-a").unwrap();
        assert_eq!(c.end_node_writers("node-a").unwrap(), 1);
        // w2 is not renewed for longer than the lease: its node is dead, the lease reaped.
        clock.advance(61);
        assert_eq!(c.oldest_live_writer(lease).unwrap(), None);
        assert!(c.writer_leases().unwrap().is_empty());
        assert_eq!(c.renew_writers(&["w2".into()]).unwrap(), vec!["w2".to_string()]);
    }
}
}
