-- Kura catalog, migration 0015: the queue of scheduled boot tests, kept across restarts (issue
-- 15; server/src/boot_test/engine.rs).
--
-- A row per snapshot whose scheduled boot test has not ended: queued when the schedule's
-- capture commits, deleted when the test's verdict is recorded (or the test cannot run). An
-- engine starting again runs the rows of its node again, oldest first (a test cut short by the
-- stop is run from the start). node: the engine node that queued it (`DATA/node-id` for an
-- engine on a shared store, `local` otherwise); expect: the schedule's `--expect` texts (JSON).
CREATE TABLE boot_test_queue (
    snapshot_id TEXT PRIMARY KEY REFERENCES snapshots (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    queued INTEGER NOT NULL,
    expect TEXT NOT NULL CHECK (json_valid(expect))
);
CREATE INDEX boot_test_queue_node ON boot_test_queue (node, queued);
