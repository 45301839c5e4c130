-- Kura catalog, migration 0002: scheduled capture jobs.
--
-- A schedule captures a host or every host of a group at the due times of a cron expression
-- (UTC). Each due time becomes one run, unique per (schedule, due time), so recording a due
-- time twice (a restart in the due minute) cannot create a second run. A run has one entry
-- per host, which the scheduler moves pending -> released (a capture job) -> succeeded, or
-- retrying -> released again, or failed / skipped.

CREATE TABLE schedules (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (name <> ''),
    target_kind TEXT NOT NULL CHECK (target_kind IN ('host', 'group')),
    target TEXT NOT NULL CHECK (target <> ''),
    cron TEXT NOT NULL,
    keep_last INTEGER CHECK (keep_last >= 0),
    keep_monthly INTEGER CHECK (keep_monthly >= 0),
    max_concurrent INTEGER NOT NULL CHECK (max_concurrent >= 1),
    retries INTEGER NOT NULL CHECK (retries >= 0),
    retry_delay INTEGER NOT NULL CHECK (retry_delay >= 0),
    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created INTEGER NOT NULL,
    -- Due times up to and including this one have been recorded (as runs or missed).
    evaluated_until INTEGER NOT NULL,
    CHECK ((keep_last IS NULL) = (keep_monthly IS NULL))
);

CREATE TABLE schedule_runs (
    id INTEGER PRIMARY KEY,
    schedule_id INTEGER NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    due INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'missed')),
    created INTEGER NOT NULL,
    finished INTEGER,
    summary TEXT CHECK (summary IS NULL OR json_valid(summary)),
    UNIQUE (schedule_id, due)
);
CREATE INDEX schedule_runs_state ON schedule_runs (state);

-- One row per host of a run. The host's name is kept as it was when the run was recorded.
CREATE TABLE schedule_run_hosts (
    run_id INTEGER NOT NULL REFERENCES schedule_runs (id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'released', 'retrying', 'succeeded', 'failed', 'skipped')),
    job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    not_before INTEGER,
    error TEXT,
    PRIMARY KEY (run_id, host)
);
CREATE INDEX schedule_run_hosts_state ON schedule_run_hosts (state);
CREATE INDEX schedule_run_hosts_job ON schedule_run_hosts (job_id);
