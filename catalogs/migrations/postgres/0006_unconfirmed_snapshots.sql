-- Kura catalog (PostgreSQL), migration 0006: snapshots held "unconfirmed" after an unusual boot (issue 16).
--
-- jobs.unusual: why the job's netboot looked unusual (its token requested twice, from another
-- address, …; the first reason), NULL for a normal boot. Set by server/src/boot_policy.rs.
-- snapshots.confirmed: 0 while a capture of such a job waits for an operator to accept it
-- (`kura serve --hold-unusual-captures`, `kura snapshot confirm ID`); every other snapshot is 1.
-- Restores do not pick an unconfirmed snapshot by default.

ALTER TABLE jobs ADD COLUMN unusual TEXT;
ALTER TABLE snapshots ADD COLUMN confirmed BIGINT NOT NULL DEFAULT 1 CHECK (confirmed IN (0, 1));
