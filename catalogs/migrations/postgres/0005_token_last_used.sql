-- Kura catalog (PostgreSQL), migration 0005: when each API token was last used (`kura token list`).
--
-- Written at most once a minute per token (catalogs/src/db/auth.rs, LAST_USED_RESOLUTION), so
-- authenticating stays a read nearly always. NULL: never used since this column exists.

ALTER TABLE tokens ADD COLUMN last_used BIGINT;
