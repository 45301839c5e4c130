-- The full current schema of the Kura catalog (all migrations applied), for reading and for
-- the test that checks it equals all migrations applied. Update it with every new migration.
--
-- Conventions: every time is INTEGER unix seconds (UTC); every byte count is INTEGER >= 0;
-- enumerations are lowercase TEXT with a CHECK; JSON is TEXT.

CREATE TABLE hosts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (name <> ''),
    host_group TEXT,
    notes TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL,
    -- The boot chain of its UEFI netboots ('on', 'off', 'auto'); NULL: the netboot default.
    secure_boot TEXT CHECK (secure_boot IN ('on', 'off', 'auto'))
);

-- A host has several MAC addresses; a MAC belongs to one host. Stored as aa:bb:cc:dd:ee:ff.
CREATE TABLE host_macs (
    mac TEXT PRIMARY KEY CHECK (length(mac) = 17 AND mac = lower(mac)),
    host_id INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE
);
CREATE INDEX host_macs_host ON host_macs (host_id);

CREATE TABLE disks (
    id INTEGER PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    name TEXT NOT NULL CHECK (name <> ''),
    serial TEXT,
    size INTEGER NOT NULL CHECK (size >= 0),
    UNIQUE (host_id, name)
);

-- A committed snapshot; its id is the 16-hex manifest id in the chunk store. A host with
-- snapshots cannot be deleted (no ON DELETE action).
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY CHECK (length(id) = 16),
    host_id INTEGER NOT NULL REFERENCES hosts (id),
    disk_id INTEGER REFERENCES disks (id) ON DELETE SET NULL,
    name TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('manual', 'scheduled')),
    created INTEGER NOT NULL,
    disk_size INTEGER NOT NULL CHECK (disk_size >= 0),
    used_bytes INTEGER NOT NULL CHECK (used_bytes >= 0),
    new_bytes INTEGER NOT NULL CHECK (new_bytes >= 0),
    reused_bytes INTEGER NOT NULL CHECK (reused_bytes >= 0),
    state TEXT NOT NULL CHECK (state IN ('committed', 'deleting')),
    -- 0: held after an unusual boot until an operator confirms it (migration 0006).
    confirmed INTEGER NOT NULL DEFAULT 1 CHECK (confirmed IN (0, 1)),
    -- A snapshot set's disks (JSON, migration 0013); NULL for any other snapshot.
    disks TEXT CHECK (disks IS NULL OR json_valid(disks)),
    -- A set member's set (migration 0013): the id of the set's row; NULL for any other snapshot.
    set_id TEXT
);
CREATE INDEX snapshots_host_created ON snapshots (host_id, created);
CREATE INDEX snapshots_set ON snapshots (set_id);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('capture', 'restore')),
    host_id INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    disk_id INTEGER REFERENCES disks (id) ON DELETE SET NULL,
    snapshot_id TEXT REFERENCES snapshots (id) ON DELETE SET NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    done_bytes INTEGER NOT NULL DEFAULT 0 CHECK (done_bytes >= 0),
    total_bytes INTEGER CHECK (total_bytes >= 0),
    created INTEGER NOT NULL,
    started INTEGER,
    finished INTEGER,
    error TEXT,
    -- Why its netboot looked unusual (first reason; migration 0006), NULL if it did not.
    unusual TEXT,
    -- A capture's --disks or a restore's --map (migration 0013); NULL for the default.
    disks TEXT
);
CREATE INDEX jobs_host ON jobs (host_id, id);
-- A machine runs one thing at a time: at most one queued or running job per host.
CREATE UNIQUE INDEX jobs_one_active_per_host ON jobs (host_id) WHERE state IN ('queued', 'running');

CREATE TABLE job_log (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    time INTEGER NOT NULL,
    level TEXT NOT NULL CHECK (level IN ('error', 'warn', 'info', 'debug')),
    message TEXT NOT NULL
);
CREATE INDEX job_log_job ON job_log (job_id, id);

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (name <> ''),
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator')),
    created INTEGER NOT NULL
);

-- API tokens, stored only as the hex SHA-256 of the secret. Admin and operator tokens belong
-- to a user; agent tokens are bound to one job and one MAC address instead; replica and reader
-- tokens to neither.
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE CHECK (length(hash) = 64),
    -- replica: a primary engine's token for pushing to this one (migration 0009); reader: a DR
    -- engine's token for pulling from this one (migration 0014; both rebuilt the table).
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'agent', 'replica', 'reader')),
    label TEXT NOT NULL,
    user_id INTEGER REFERENCES users (id) ON DELETE CASCADE,
    job_id INTEGER REFERENCES jobs (id) ON DELETE CASCADE,
    mac TEXT,
    created INTEGER NOT NULL,
    expires INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    -- When the token last authenticated a request (migration 0005; at most once a minute).
    last_used INTEGER,
    CHECK ((role = 'agent') = (job_id IS NOT NULL AND mac IS NOT NULL AND user_id IS NULL)),
    CHECK (role IN ('agent', 'replica', 'reader') OR user_id IS NOT NULL)
);
CREATE INDEX tokens_user ON tokens (user_id);
CREATE INDEX tokens_job ON tokens (job_id);

-- Retention rules, for one host or for a host group; a host's own rule wins over its group's.
CREATE TABLE retention_rules (
    id INTEGER PRIMARY KEY,
    host_id INTEGER UNIQUE REFERENCES hosts (id) ON DELETE CASCADE,
    host_group TEXT UNIQUE,
    keep_last INTEGER NOT NULL CHECK (keep_last >= 0),
    keep_monthly INTEGER NOT NULL CHECK (keep_monthly >= 0),
    CHECK ((host_id IS NULL) <> (host_group IS NULL)),
    CHECK (keep_last + keep_monthly > 0)
);

-- Append-only: one row per change, written in the same transaction as the change.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
);
CREATE INDEX audit_time ON audit (time);

-- Per-host power control (migration 0003). password_sealed is AEAD-sealed with the key in
-- DATA/secrets.key, never the password.
CREATE TABLE host_power (
    host_id INTEGER PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    driver TEXT NOT NULL CHECK (driver IN ('none', 'wol', 'redfish', 'ipmi')),
    -- Redfish: the BMC's base URL; IPMI: HOST or HOST:PORT.
    address TEXT,
    username TEXT,
    password_sealed BLOB,
    -- Redfish: the ComputerSystem id (default: the BMC's only system).
    system_id TEXT,
    -- Redfish over HTTPS: accept any certificate (insecure) or exactly the pinned one.
    insecure INTEGER NOT NULL DEFAULT 0 CHECK (insecure IN (0, 1)),
    tls_fingerprint TEXT,
    -- Wake-on-LAN: the IPv4 broadcast address and the interface to send from.
    broadcast TEXT,
    interface TEXT,
    -- IPMI: the RMCP+ cipher suite (ipmitool -C); absent: negotiated.
    cipher_suite INTEGER CHECK (cipher_suite BETWEEN 0 AND 17),
    updated INTEGER NOT NULL
);

-- Notification targets (server/src/notify.rs delivers to them): a webhook (config {"url"}) or
-- an e-mail relay (config {"smtp", "from", "to", "starttls"}).
CREATE TABLE notify_targets (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'email')),
    config TEXT NOT NULL CHECK (json_valid(config)),
    created INTEGER NOT NULL
);

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
    -- Boot-test each snapshot its captures commit (server/src/boot_test/engine.rs).
    boot_test INTEGER NOT NULL DEFAULT 0 CHECK (boot_test IN (0, 1)),
    -- A console text that also means the boot test's system came up.
    boot_test_expect TEXT,
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

-- One row per boot test of a snapshot (`kura verify --boot`; migration 0008): passed or not,
-- the stage reached, why, how long (ms), the last console lines (JSON array), the bytes fetched.
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
    fetched_bytes INTEGER NOT NULL CHECK (fetched_bytes >= 0),
    -- The PNG at the verdict, a file name in the data directory's screenshots/ (NULL: not kept).
    screenshot TEXT
);
CREATE INDEX boot_tests_snapshot ON boot_tests (snapshot_id, finished);

-- Engine-to-engine replication (migration 0009). Remotes: other engines this one pushes
-- snapshots to, their replica token sealed with the engine's secret key.
CREATE TABLE remotes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (name <> ''),
    url TEXT NOT NULL,
    fingerprint TEXT,
    token_sealed BLOB NOT NULL,
    created INTEGER NOT NULL,
    -- The remote's quarantine mark when this engine last re-checked its copies there (0012).
    quarantine_seen INTEGER NOT NULL DEFAULT 0
);

-- Snapshots of these hosts (a JSON array), or of this host group (migration 0012), or of every
-- host (both NULL) go to the remote.
CREATE TABLE replication_rules (
    id INTEGER PRIMARY KEY,
    remote_id INTEGER NOT NULL REFERENCES remotes (id) ON DELETE CASCADE,
    hosts TEXT CHECK (hosts IS NULL OR json_valid(hosts)),
    created INTEGER NOT NULL,
    host_group TEXT,
    -- 1: a pull rule (this engine fetches the remote's snapshots), with its durable progress.
    pull INTEGER NOT NULL DEFAULT 0 CHECK (pull IN (0, 1)),
    pulled_up_to INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX replication_rules_remote ON replication_rules (remote_id);

-- The durable replication queue: a chunk (item = digest) or snapshot (item = id) still to send.
CREATE TABLE replication_queue (
    id INTEGER PRIMARY KEY,
    remote_id INTEGER NOT NULL REFERENCES remotes (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('chunk', 'snapshot')),
    item TEXT NOT NULL,
    host TEXT NOT NULL,
    bytes INTEGER NOT NULL CHECK (bytes >= 0),
    queued INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_try INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE UNIQUE INDEX replication_queue_item ON replication_queue (remote_id, kind, item);
CREATE INDEX replication_queue_due ON replication_queue (remote_id, next_try);

-- Which remotes hold a snapshot (its manifest committed there).
CREATE TABLE snapshot_copies (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    remote_id INTEGER NOT NULL REFERENCES remotes (id) ON DELETE CASCADE,
    copied INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, remote_id)
);
CREATE INDEX snapshot_copies_remote ON snapshot_copies (remote_id);

-- Which DR engines pulling with a reader token reported holding a snapshot (migration 0014;
-- no foreign key to tokens: the copy outlives a revoked token). holder: the token's label.
CREATE TABLE pulled_copies (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    token_id INTEGER NOT NULL,
    holder TEXT NOT NULL,
    copied INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, token_id)
);
CREATE INDEX pulled_copies_token ON pulled_copies (token_id);

-- The chunk index of a remote (S3) store and the leases of running writers, shared by every
-- engine node (migration 0011; catalogs/src/db/cluster.rs). size -1: an upload is pending.
CREATE TABLE chunk_index (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size >= -1),
    touched INTEGER NOT NULL
);
CREATE TABLE writer_leases (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    started INTEGER NOT NULL,
    seen INTEGER NOT NULL
);
CREATE TABLE cluster_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Scheduled boot tests not ended yet (migration 0015; server/src/boot_test/engine.rs): run again,
-- oldest first, by the node that queued them when it starts again.
CREATE TABLE boot_test_queue (
    snapshot_id TEXT PRIMARY KEY REFERENCES snapshots (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    queued INTEGER NOT NULL,
    expect TEXT NOT NULL CHECK (json_valid(expect))
);
CREATE INDEX boot_test_queue_node ON boot_test_queue (node, queued);
