-- Kura catalog, migration 0010: scheduled boot tests and their screenshots (issue 15).
--
-- schedules.boot_test: after each capture the schedule started commits, the engine boot-tests
-- the new snapshot (`kura schedule add ... --boot-test`; server/src/boot_test/engine.rs);
-- schedules.boot_test_expect: a console text that also means the system came up (`--expect`).
-- boot_tests.screenshot: the file name of the PNG taken at the verdict, kept in the data
-- directory's `screenshots/` (only each host's newest few are kept; NULL: none kept).

ALTER TABLE schedules ADD COLUMN boot_test INTEGER NOT NULL DEFAULT 0 CHECK (boot_test IN (0, 1));
ALTER TABLE schedules ADD COLUMN boot_test_expect TEXT;
ALTER TABLE boot_tests ADD COLUMN screenshot TEXT;
