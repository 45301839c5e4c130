-- Kura catalog, migration 0013: hosts with several disks (issue 11; docs/manifest.md,
-- "Snapshot set").
--
-- A snapshot set is one snapshot of several disks. Each disk is an ordinary snapshot (its
-- manifest in the store, its row here: replication, GC and verify treat it like any other) whose
-- set_id names the set; the set's own row carries the disks. The set's row and its members' rows
-- are inserted in one transaction, so the catalog shows a set whole or not at all.
--
-- snapshots.disks: on a set's row, its disks as JSON: [{"name", "size", "model"?, "serial"?,
-- "wwn"?, "path"?, "manifest", "used_bytes"}] in capture order ("manifest" is the member's id);
-- NULL otherwise.
-- snapshots.set_id: on a member's row, the id of its set; NULL otherwise.
-- jobs.disks: a capture's disk selection (`kura capture HOST --disks vda,vdb`) or a restore's
-- mapping overrides (`kura restore HOST --map vda=sdb,...`); NULL: every disk, mapped by the rules.

ALTER TABLE snapshots ADD COLUMN disks TEXT CHECK (disks IS NULL OR json_valid(disks));
ALTER TABLE snapshots ADD COLUMN set_id TEXT;
CREATE INDEX snapshots_set ON snapshots (set_id);
ALTER TABLE jobs ADD COLUMN disks TEXT;
