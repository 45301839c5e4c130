-- Kura catalog, migration 0014: the `reader` role and pulled copies (issue 13; docs/dr.md).
--
-- 1. Tokens get the role `reader`: what a DR engine pulling from this one (`kura replicate
--    pull`) holds. It may list hosts and snapshots and read manifests and chunks, and report
--    which snapshots it now holds; nothing else. Like replica tokens it belongs to no user.
--    The table is rebuilt as in 0009 (SQLite cannot change a CHECK in place; nothing
--    references `tokens`).
ALTER TABLE tokens RENAME TO tokens_before_0014;
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE CHECK (length(hash) = 64),
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'agent', 'replica', 'reader')),
    label TEXT NOT NULL,
    user_id INTEGER REFERENCES users (id) ON DELETE CASCADE,
    job_id INTEGER REFERENCES jobs (id) ON DELETE CASCADE,
    mac TEXT,
    created INTEGER NOT NULL,
    expires INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    last_used INTEGER,
    CHECK ((role = 'agent') = (job_id IS NOT NULL AND mac IS NOT NULL AND user_id IS NULL)),
    CHECK (role IN ('agent', 'replica', 'reader') OR user_id IS NOT NULL)
);
INSERT INTO tokens (id, hash, role, label, user_id, job_id, mac, created, expires, revoked, last_used)
    SELECT id, hash, role, label, user_id, job_id, mac, created, expires, revoked, last_used FROM tokens_before_0014;
DROP TABLE tokens_before_0014;
CREATE INDEX tokens_user ON tokens (user_id);
CREATE INDEX tokens_job ON tokens (job_id);

-- 2. Pulled copies: the snapshots a reader token's engine reported holding (after it pulled and
--    committed them). `token_id` is the reader token (no foreign key: the record outlives a
--    revoked token, the copy still exists); `holder` is that token's label when it reported.
--    They count in a snapshot's COPIES beside the pushed copies (`snapshot_copies`).
CREATE TABLE pulled_copies (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    token_id INTEGER NOT NULL,
    holder TEXT NOT NULL,
    copied INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, token_id)
);
CREATE INDEX pulled_copies_token ON pulled_copies (token_id);
