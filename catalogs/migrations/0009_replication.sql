-- Kura catalog, migration 0009: engine-to-engine replication (issue 13).
--
-- 1. Tokens get the role `replica` (a DR engine's token for its primary: it may add chunks and
--    snapshots, never delete or overwrite). Replica tokens, like agent tokens, belong to no
--    user. SQLite cannot change a CHECK constraint in place, so the table is rebuilt; nothing
--    references `tokens`, so the rebuild loses nothing.
ALTER TABLE tokens RENAME TO tokens_before_0009;
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE CHECK (length(hash) = 64),
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'agent', 'replica')),
    label TEXT NOT NULL,
    user_id INTEGER REFERENCES users (id) ON DELETE CASCADE,
    job_id INTEGER REFERENCES jobs (id) ON DELETE CASCADE,
    mac TEXT,
    created INTEGER NOT NULL,
    expires INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    last_used INTEGER,
    CHECK ((role = 'agent') = (job_id IS NOT NULL AND mac IS NOT NULL AND user_id IS NULL)),
    CHECK (role IN ('agent', 'replica') OR user_id IS NOT NULL)
);
INSERT INTO tokens (id, hash, role, label, user_id, job_id, mac, created, expires, revoked, last_used)
    SELECT id, hash, role, label, user_id, job_id, mac, created, expires, revoked, last_used FROM tokens_before_0009;
DROP TABLE tokens_before_0009;
CREATE INDEX tokens_user ON tokens (user_id);
CREATE INDEX tokens_job ON tokens (job_id);

-- 2. Remotes: other engines this one pushes snapshots to. The replica token is sealed with the
--    engine's secret key (`catalogs/src/secrets.rs`, purpose `remote.token`).
CREATE TABLE remotes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (name <> ''),
    url TEXT NOT NULL,
    fingerprint TEXT,
    token_sealed BLOB NOT NULL,
    created INTEGER NOT NULL
);

-- 3. Replication rules: snapshots of these hosts (a JSON array; NULL: every host) go to the
--    remote.
CREATE TABLE replication_rules (
    id INTEGER PRIMARY KEY,
    remote_id INTEGER NOT NULL REFERENCES remotes (id) ON DELETE CASCADE,
    hosts TEXT CHECK (hosts IS NULL OR json_valid(hosts)),
    created INTEGER NOT NULL
);
CREATE INDEX replication_rules_remote ON replication_rules (remote_id);

-- 4. The durable replication queue: a chunk (item = its digest) or a snapshot (item = its id)
--    still to send to a remote. A row goes when the remote has it; failures set the next try.
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

-- 5. Which remotes hold a snapshot (its manifest committed there).
CREATE TABLE snapshot_copies (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    remote_id INTEGER NOT NULL REFERENCES remotes (id) ON DELETE CASCADE,
    copied INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, remote_id)
);
CREATE INDEX snapshot_copies_remote ON snapshot_copies (remote_id);
