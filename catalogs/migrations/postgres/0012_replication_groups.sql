-- Kura catalog (PostgreSQL), migration 0012: replication rules by host group, and re-sending
-- what a remote quarantined, and pull rules (see the SQLite migration of the same name).

ALTER TABLE replication_rules ADD COLUMN host_group TEXT;
ALTER TABLE replication_rules ADD COLUMN pull BIGINT NOT NULL DEFAULT 0 CHECK (pull IN (0, 1));
ALTER TABLE replication_rules ADD COLUMN pulled_up_to BIGINT NOT NULL DEFAULT 0;
ALTER TABLE remotes ADD COLUMN quarantine_seen BIGINT NOT NULL DEFAULT 0;
