-- Kura catalog (PostgreSQL), migration 0012: replication rules by host group, and re-sending
-- what a remote quarantined (see the SQLite migration of the same name).

ALTER TABLE replication_rules ADD COLUMN host_group TEXT;
ALTER TABLE remotes ADD COLUMN quarantine_seen BIGINT NOT NULL DEFAULT 0;
