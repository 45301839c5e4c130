-- Kura catalog, migration 0011: the chunk index of a remote (S3) store and the leases of running
-- writers, in the catalog, so several engine nodes on one bucket share them (issue 14;
-- catalogs/src/db/cluster.rs has the rules).
--
-- chunk_index: a digest the store holds (size >= 0, its encoded size) or that a writer is about
-- to upload (size = -1, pending); touched: the last time (unix s) a writer was told about it or
-- uploaded it. GC removes a row, then its object, only if touched is older than the oldest
-- running writer's start.
-- writer_leases: one row per open upload session on any node, renewed while it runs; a row not
-- renewed for the lease time is a dead node's and no longer protects anything.
-- cluster_state: small facts shared by the nodes (which store the chunk index was built from).

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
