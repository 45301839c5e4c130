-- Kura catalog (PostgreSQL), migration 0014: the `reader` role and pulled copies (issue 13).
--
-- 1. Tokens get the role `reader` (a DR engine pulling from this one: reads only, and reports
--    the snapshots it holds); reader tokens belong to no user. The two CHECK constraints that
--    name roles are replaced, as in 0009.
ALTER TABLE tokens
    DROP CONSTRAINT tokens_role_check,
    DROP CONSTRAINT tokens_check1,
    ADD CONSTRAINT tokens_role_check CHECK (role IN ('admin', 'operator', 'agent', 'replica', 'reader')),
    ADD CONSTRAINT tokens_check1 CHECK (role IN ('agent', 'replica', 'reader') OR user_id IS NOT NULL);

-- 2. Pulled copies: the snapshots a reader token's engine reported holding.
CREATE TABLE pulled_copies (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    token_id BIGINT NOT NULL,
    holder TEXT NOT NULL,
    copied BIGINT NOT NULL,
    PRIMARY KEY (snapshot_id, token_id)
);
CREATE INDEX pulled_copies_token ON pulled_copies (token_id);
