-- Kura catalog, migration 0008: boot tests (issue 15). One row per boot test of a snapshot
-- (`kura verify --boot`): whether it passed, how far the boot got, why, how long it took, the
-- last console lines (a JSON array of strings) and the bytes fetched from the store. Deleted
-- with the snapshot.

CREATE TABLE boot_tests (
    id INTEGER PRIMARY KEY,
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    finished INTEGER NOT NULL,
    passed INTEGER NOT NULL CHECK (passed IN (0, 1)),
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    millis INTEGER NOT NULL CHECK (millis >= 0),
    firmware TEXT NOT NULL CHECK (firmware IN ('bios', 'uefi')),
    console_tail TEXT NOT NULL CHECK (json_valid(console_tail)),
    fetched_bytes INTEGER NOT NULL CHECK (fetched_bytes >= 0)
);
CREATE INDEX boot_tests_snapshot ON boot_tests (snapshot_id, finished);
