//! Catalog schema versions: the linear chain of migrations in `catalogs/migrations/`.
//!
//! Migration `N` (file `000N_*.sql`) takes the database from schema version `N - 1` to `N`. Each
//! file is self-contained SQL, embedded at build time, applied in its own transaction together
//! with `PRAGMA user_version = N`, so a crash leaves the database at one version or the next,
//! never between. A database whose version is newer than [`SCHEMA_VERSION`] is refused: an old
//! build must not write to a schema it does not understand.
//!
//! `migrations/schema.sql` is the full current schema for reading; the tests check that it
//! builds exactly the database that applying every migration builds.
//!
//! To change the schema: add `migrations/000{N+1}_what.sql`, append it to [`MIGRATIONS`], and
//! update `schema.sql`. Never edit a migration that has shipped.

use super::error::{CatalogError, Result};
use rusqlite::Connection;

/// The migrations, in order; migration `i` (0-based) produces schema version `i + 1`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_initial", include_str!("../../migrations/0001_initial.sql")),
    ("0002_schedules", include_str!("../../migrations/0002_schedules.sql")),
    ("0003_power", include_str!("../../migrations/0003_power.sql")),
    ("0004_notify", include_str!("../../migrations/0004_notify.sql")),
    ("0005_token_last_used", include_str!("../../migrations/0005_token_last_used.sql")),
    ("0006_unconfirmed_snapshots", include_str!("../../migrations/0006_unconfirmed_snapshots.sql")),
    ("0007_host_secure_boot", include_str!("../../migrations/0007_host_secure_boot.sql")),
];

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The full current schema (documentation, and the reference for the migration test).
pub const SCHEMA_SQL: &str = include_str!("../../migrations/schema.sql");

/// The schema version recorded in the database (0 for a new, empty database).
pub fn schema_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Brings the database up to [`SCHEMA_VERSION`]; returns the version it found.
pub fn migrate(conn: &mut Connection) -> Result<i64> {
    let found = schema_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(CatalogError::SchemaTooNew { found, known: SCHEMA_VERSION });
    }
    if found < 0 {
        return Err(CatalogError::Invalid(format!("catalog database has a negative schema version {found}")));
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(migration = name, version, "applied catalog migration");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sqlite_master` rows with the SQL text normalised: comments dropped, whitespace collapsed
    /// and removed around punctuation (so `ALTER TABLE ... ADD COLUMN` output, which SQLite
    /// splices into the stored text, compares equal to the same table written out by hand).
    fn normalised_schema(conn: &Connection) -> Vec<(String, String, String, String)> {
        let mut stmt = conn
            .prepare(
                "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master \
                 WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, normalise_sql(&r.get::<_, String>(3)?))))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn normalise_sql(sql: &str) -> String {
        let no_comments: Vec<&str> = sql.lines().map(|l| l.split("--").next().unwrap_or("")).collect();
        let collapsed = no_comments.join(" ").split_whitespace().collect::<Vec<_>>().join(" ");
        let mut out = String::new();
        for c in collapsed.chars() {
            if matches!(c, '(' | ')' | ',') && out.ends_with(' ') {
                out.pop();
            }
            if c == ' ' && out.ends_with(['(', ')', ',']) {
                continue;
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn schema_sql_equals_all_migrations_applied() {
        let mut migrated = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut migrated).unwrap(), 0);
        assert_eq!(schema_version(&migrated).unwrap(), SCHEMA_VERSION);

        let fresh = Connection::open_in_memory().unwrap();
        fresh.execute_batch(SCHEMA_SQL).unwrap();

        let (a, b) = (normalised_schema(&migrated), normalised_schema(&fresh));
        assert!(!a.is_empty());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "schema.sql differs from the migrations");
        }
        assert_eq!(a.len(), b.len(), "schema.sql and the migrations define different objects:\n{a:#?}\n{b:#?}");
    }

    #[test]
    fn normalising_ignores_layout_and_comments_only() {
        // What SQLite stores after `ALTER TABLE t ADD COLUMN c INTEGER` equals the table
        // written out by hand.
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (\n  a INTEGER, -- first\n  b TEXT\n);\nALTER TABLE t ADD COLUMN c INTEGER;",
        )
        .unwrap();
        let fresh = Connection::open_in_memory().unwrap();
        fresh.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c INTEGER)").unwrap();
        assert_eq!(normalised_schema(&conn), normalised_schema(&fresh));
        conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c TEXT)").unwrap();
        assert_ne!(normalised_schema(&conn), normalised_schema(&fresh));
    }

    #[test]
    fn every_migration_file_is_in_the_chain_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "schema.sql")
            .collect();
        files.sort();
        let names: Vec<String> = MIGRATIONS.iter().map(|(n, _)| format!("{n}.sql")).collect();
        assert_eq!(files, names, "migrations/ and MIGRATIONS disagree");
        for (name, n) in names.iter().zip(1..) {
            assert!(name.starts_with(&format!("{n:04}_")), "{name} is out of sequence");
        }
    }

    #[test]
    fn migrate_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn refuses_a_database_newer_than_the_code() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        match migrate(&mut conn) {
            Err(CatalogError::SchemaTooNew { found, known }) => {
                assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A database where migration 1's first table already exists: the migration fails and
        // nothing of it (nor the version bump) is left behind.
        conn.execute_batch("CREATE TABLE hosts (x INTEGER)").unwrap();
        assert!(migrate(&mut conn).is_err());
        assert_eq!(schema_version(&conn).unwrap(), 0);
        let tables: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 1);
    }
}
