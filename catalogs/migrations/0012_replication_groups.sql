-- Kura catalog, migration 0012: replication rules by host group, and re-sending what a remote
-- quarantined (issue 13; docs/dr.md).
--
-- replication_rules.host_group: the rule takes the snapshots of every host in this group (at
-- the time each chunk or snapshot is queued); a rule names hosts, a group, or neither (every
-- host), never both (checked by the catalog).
-- remotes.quarantine_seen: the remote's quarantine mark (`GET /replica/quarantine` there) the
-- last time this engine re-checked every snapshot it copied there; a higher mark means the
-- remote's verify has quarantined chunks since, and the snapshots are re-checked again.

ALTER TABLE replication_rules ADD COLUMN host_group TEXT;
ALTER TABLE remotes ADD COLUMN quarantine_seen INTEGER NOT NULL DEFAULT 0;
