-- Kura catalog, migration 0004: notification targets (server/src/notify.rs delivers to them).
--
-- One row per target: a webhook (config {"url"}) or an e-mail relay (config {"smtp", "from",
-- "to", "starttls"}). Events (job failures, schedule run summaries) go to every target.

CREATE TABLE notify_targets (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'email')),
    config TEXT NOT NULL CHECK (json_valid(config)),
    created INTEGER NOT NULL
);
