-- Kura catalog, migration 0012: replication rules by host group, re-sending what a remote
-- quarantined, and pull rules (issue 13; docs/dr.md).
--
-- replication_rules.host_group: the rule takes the snapshots of every host in this group (at
-- the time each chunk or snapshot is queued); a rule names hosts, a group, or neither (every
-- host), never both (checked by the catalog).
-- remotes.quarantine_seen: the remote's quarantine mark (`GET /replica/quarantine` there) the
-- last time this engine re-checked every snapshot it copied there; a higher mark means the
-- remote's verify has quarantined chunks since, and the snapshots are re-checked again.

-- replication_rules.pull: 1 for a pull rule (this engine, a DR engine, fetches the remote's
-- snapshots: `kura replicate pull --from NAME`), 0 for a push rule.
-- replication_rules.pulled_up_to: a pull rule's durable progress: every matching snapshot of
-- the remote created before this time is held here (a restart resumes from it).
ALTER TABLE replication_rules ADD COLUMN host_group TEXT;
ALTER TABLE replication_rules ADD COLUMN pull INTEGER NOT NULL DEFAULT 0 CHECK (pull IN (0, 1));
ALTER TABLE replication_rules ADD COLUMN pulled_up_to INTEGER NOT NULL DEFAULT 0;
ALTER TABLE remotes ADD COLUMN quarantine_seen INTEGER NOT NULL DEFAULT 0;
