-- Kura catalog (PostgreSQL), migration 0015: the queue of scheduled boot tests, kept across
-- restarts (issue 15). See the SQLite migration for the columns.
CREATE TABLE boot_test_queue (
    snapshot_id TEXT PRIMARY KEY REFERENCES snapshots (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    queued BIGINT NOT NULL,
    expect TEXT NOT NULL CHECK (expect::jsonb IS NOT NULL)
);
CREATE INDEX boot_test_queue_node ON boot_test_queue (node, queued);
