//! The engine's catalog database: hosts, disks, snapshots, jobs, users, tokens and the audit
//! log, in one SQLite file. A pure library: the HTTP API is built on top of [`Catalog`].
//!
//! - [`migrations`]: the schema version chain (`catalogs/migrations/*.sql`).
//! - [`hosts`]: hosts, their MAC addresses and disks, and retention rules.
//! - [`snapshots`]: the catalog rows of committed snapshots (the data lives in the chunk store).
//! - [`jobs`]: capture and restore jobs, their state machine, progress and log lines.
//! - [`power`]: per-host power control (Wake-on-LAN, Redfish, IPMI), with sealed passwords.
//! - [`schedules`]: scheduled captures: schedules, their runs and per-host entries.
//! - [`auth`]: users, API tokens and authentication.
//! - [`audit`]: the append-only audit log.
//! - [`notify`]: notification targets (webhooks, e-mail relays).
//! - [`replication`]: remotes, replication rules, the durable replication queue, copies.
//! - [`stats`]: read-only summaries for the status page and the metrics.
//!
//! # Conventions
//!
//! Times are unix seconds (UTC) everywhere, [`UnixTime`]; the catalog's clock (system time, or
//! one set with [`Catalog::with_clock`] in tests) stamps every row. Byte counts are `u64`.
//! Every change is written with its audit row in the same transaction: a change without an
//! audit row, or an audit row for a change that did not happen, cannot exist. Every changing
//! method takes the `actor` (who asked, e.g. [`auth::Principal::actor`]) for that row. Job
//! progress and job log lines are the job's own record and are not audited.
//!
//! # Locking design
//!
//! - One [`rusqlite::Connection`] behind a [`Mutex`]: `Catalog` is `Send + Sync`, shared in an
//!   `Arc` by the async server. Every method takes the lock, runs one short statement or one
//!   transaction, and returns; none waits on anything else while holding it (no I/O beyond
//!   SQLite, no callbacks), so calling them from async code (or `spawn_blocking`) is fine.
//! - Every changing method is one `BEGIN IMMEDIATE` transaction, so its reads and checks (does
//!   the host exist, is the job still queued) and its writes are atomic with respect to other
//!   processes too.
//! - The database is in WAL mode: readers in other processes (the `sqlite3` shell, a backup)
//!   do not block the server and see the last committed state. A busy timeout
//!   ([`BUSY_TIMEOUT`]) absorbs short locks by other processes; past it the call fails with a
//!   retryable [`CatalogError::Sqlite`].
//! - Foreign keys are enforced (`PRAGMA foreign_keys = ON` on every connection).
//!
//! The catalog and the chunk store ([`crate::store`]) are separate: the store's manifests are
//! the truth about what data exists; a snapshot row is the catalog's knowledge of one. Deleting
//! a snapshot is two-phase: [`Catalog::mark_snapshot_deleting`] (no longer listed as restorable)
//! → the manifest is removed from the store → [`Catalog::remove_snapshot`].

/// Declares a Rust enum stored as lowercase TEXT (with `as_str`, `Display`, `FromStr`, serde,
/// and rusqlite `ToSql`/`FromSql`); the SQL side has the matching `CHECK (... IN (...))`.
macro_rules! text_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        $vis enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::db::CatalogError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::db::CatalogError::Invalid(format!(
                        "{s:?} is not a {}; expected one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?.parse().map_err(|e: $crate::db::CatalogError| {
                    rusqlite::types::FromSqlError::Other(e.to_string().into())
                })
            }
        }
    };
}

/// Declares a test module twice: as written, on SQLite, and as `pg_tests`, the same tests on
/// PostgreSQL (a database of its own per test in the process's throwaway cluster,
/// `kura_tests::postgres`). The body gets its `catalog()` from here; one invocation per file.
#[cfg(test)]
macro_rules! for_each_backend {
    ($vis:vis mod $name:ident { $($body:tt)* }) => {
        $vis mod $name {
            #[allow(unused_imports)]
            use $crate::db::testing::sqlite_catalog as catalog;
            $($body)*
        }
        $vis mod pg_tests {
            #[allow(unused_imports)]
            use $crate::db::testing::postgres_catalog as catalog;
            $($body)*
        }
    };
}

pub mod audit;
pub mod auth;
pub mod boot_tests;
pub mod cluster;
pub mod error;
pub mod hosts;
pub mod jobs;
pub mod migrations;
pub mod notify;
pub mod postgres;
pub mod power;
pub mod replication;
pub mod schedules;
pub mod snapshots;
pub mod sql;
pub mod stats;

pub use audit::AuditEntry;
pub use auth::{authorize_agent, IssuedToken, Principal, Role, TokenInfo, User};
pub use error::{CatalogError, Result};
pub use hosts::{normalize_mac, Disk, Host, HostPatch, NewDisk, NewHost, RetentionScope};
pub use jobs::{Job, JobKind, JobState, LogLevel, LogLine, NewJob, JOB_LOG_CAP};
pub use notify::{NotifyConfig, NotifyTarget};
pub use power::{PasswordChange, PowerControl, PowerDriver, PowerSettings, PowerView};
pub use replication::{Backlog, QueueItem, QueueKind, Remote, ReplicationRule};
pub use schedules::{
    HostFailure, HostRunState, NewSchedule, Recorded, Releasable, Release, RunHost, RunState, RunSummary, Schedule,
    ScheduleRun, Settled, TargetKind,
};
pub use snapshots::{NewSnapshot, Snapshot, SnapshotKind, SnapshotState};
pub use stats::{HostStatus, JobCount, JobDuration, SnapshotTotals};

use postgres::PgClient;
use sql::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Unix seconds, UTC.
pub type UnixTime = i64;

/// How long a call waits for a lock held by another process before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL advisory lock every writing transaction takes first (the catalog's
/// `BEGIN IMMEDIATE`): writers on every node run one at a time. The number is Kura's own
/// (`"kura"` in ASCII), shared by nothing else in the database.
pub const PG_WRITE_LOCK: i64 = 0x6b75_7261;

type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// The catalog database. See the module docs for the locking design.
pub struct Catalog {
    db: Db,
    clock: Clock,
}

enum Db {
    Sqlite(Mutex<rusqlite::Connection>),
    /// The URL to reconnect with, and the connection (`None` after it was lost).
    Postgres {
        url: String,
        client: Mutex<Option<PgClient>>,
    },
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

/// The current system time in unix seconds.
pub fn system_now() -> UnixTime {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Where the catalog lives: `--catalog` (a `postgres://` or `postgresql://` URL), or by default
/// the SQLite file `catalog.db` in the data directory.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

impl Catalog {
    /// Opens the catalog at `path`, creating it if missing, and migrates it to the current
    /// schema. Refuses a database written by a newer Kura.
    ///
    /// A new database file is created mode 0600 (`O_EXCL|O_NOFOLLOW`, [`crate::private`])
    /// before SQLite opens it: SQLite gives its `-wal` and `-shm` files the database file's
    /// mode. The path is opened with `SQLITE_OPEN_NOFOLLOW` (a symbolic link is refused).
    pub fn open(path: &Path) -> Result<Catalog> {
        match crate::private::create_new(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(CatalogError::File {
                    path: path.display().to_string(),
                    message: format!("cannot create it: {e}"),
                })
            }
        }
        let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = rusqlite::Connection::open_with_flags(path, flags)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::setup(conn)
    }

    /// A private, empty catalog in memory (tests).
    pub fn open_in_memory() -> Result<Catalog> {
        Self::setup(rusqlite::Connection::open_in_memory()?)
    }

    fn setup(mut conn: rusqlite::Connection) -> Result<Catalog> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        migrations::migrate(&mut conn)?;
        Ok(Catalog { db: Db::Sqlite(Mutex::new(conn)), clock: Arc::new(system_now) })
    }

    /// Opens the catalog in the PostgreSQL database at `url` (`postgres://USER@HOST/DB`, or
    /// `postgres://USER@/DB?host=/run/postgresql` for a Unix socket) and migrates it to the
    /// current schema; refuses a database written by a newer Kura, and one whose collation is
    /// not `C` (text must sort as on SQLite: byte order). See `docs/scale-out.md`.
    pub fn open_postgres(url: &str) -> Result<Catalog> {
        let client = PgClient::connect(url)?;
        postgres::check_database(&client)?;
        migrations::migrate_postgres(&client)?;
        Ok(Catalog {
            db: Db::Postgres { url: url.to_string(), client: Mutex::new(Some(client)) },
            clock: Arc::new(system_now),
        })
    }

    /// Opens `location`: a PostgreSQL URL ([`Catalog::open_postgres`]) or else a SQLite file
    /// path ([`Catalog::open`]).
    pub fn open_location(location: &str) -> Result<Catalog> {
        if is_postgres_url(location) {
            Self::open_postgres(location)
        } else {
            Self::open(Path::new(location))
        }
    }

    /// Replaces the clock that stamps rows (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Catalog {
        self.clock = Arc::new(clock);
        self
    }

    /// The catalog clock's current time.
    pub fn now(&self) -> UnixTime {
        (self.clock)()
    }

    /// Which database this catalog is in.
    pub fn backend(&self) -> sql::Backend {
        match self.db {
            Db::Sqlite(_) => sql::Backend::Sqlite,
            Db::Postgres { .. } => sql::Backend::Postgres,
        }
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        self.read(migrations::schema_version)
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // A panic while holding the lock cannot leave a transaction open (dropping a
        // `Transaction` rolls it back; so does [`postgres::TxGuard`]), so the connection is
        // still usable.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The PostgreSQL client, reconnected first if the connection was lost.
    fn pg<'a>(url: &str, client: &'a Mutex<Option<PgClient>>) -> Result<MutexGuard<'a, Option<PgClient>>> {
        let mut guard = Self::lock(client);
        if guard.as_ref().is_none_or(PgClient::is_closed) {
            *guard = None;
            let c = PgClient::connect(url)?;
            tracing::info!("reconnected to the catalog database");
            *guard = Some(c);
        }
        Ok(guard)
    }

    /// Runs `f` on the connection, outside a transaction (reads).
    fn read<T>(&self, f: impl FnOnce(&Connection<'_>) -> Result<T>) -> Result<T> {
        match &self.db {
            Db::Sqlite(m) => f(&Connection::Sqlite(&Self::lock(m))),
            Db::Postgres { url, client } => {
                let guard = Self::pg(url, client)?;
                let c = guard.as_ref().expect("connected");
                f(&Connection::Postgres(c))
            }
        }
    }

    /// Runs `f` in one writing transaction with the current time, and commits: SQLite's
    /// `BEGIN IMMEDIATE`, or on PostgreSQL a READ COMMITTED transaction that first takes
    /// [`PG_WRITE_LOCK`].
    fn write<T>(&self, f: impl FnOnce(&Connection<'_>, UnixTime) -> Result<T>) -> Result<T> {
        let now = self.now();
        match &self.db {
            Db::Sqlite(m) => {
                let mut conn = Self::lock(m);
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let value = f(&Connection::Sqlite(&tx), now)?;
                tx.commit()?;
                Ok(value)
            }
            Db::Postgres { url, client } => {
                let guard = Self::pg(url, client)?;
                let c = guard.as_ref().expect("connected");
                let tx = postgres::TxGuard::begin(c)?;
                let value = f(&Connection::Postgres(c), now)?;
                tx.commit()?;
                Ok(value)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A test clock, starting at 2026-01-01T00:00:00Z, moved by hand.
    #[derive(Clone)]
    pub struct TestClock(pub Arc<AtomicI64>);

    pub const START: UnixTime = 1_767_225_600;

    impl TestClock {
        pub fn advance(&self, secs: i64) {
            self.0.fetch_add(secs, Ordering::SeqCst);
        }
    }

    /// A new, empty catalog in memory, on the test clock.
    pub fn sqlite_catalog() -> (Catalog, TestClock) {
        with_test_clock(Catalog::open_in_memory().unwrap())
    }

    /// A new, empty catalog in a new database of the process's PostgreSQL cluster.
    pub fn postgres_catalog() -> (Catalog, TestClock) {
        let url = kura_tests::postgres::shared().create_database();
        with_test_clock(Catalog::open_postgres(&url).unwrap())
    }

    fn with_test_clock(cat: Catalog) -> (Catalog, TestClock) {
        let clock = TestClock(Arc::new(AtomicI64::new(START)));
        let c = clock.clone();
        (cat.with_clock(move || c.0.load(Ordering::SeqCst)), clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Catalog>();
    }

    #[test]
    fn open_sets_wal_foreign_keys_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        let Db::Sqlite(conn) = &cat.db else { unreachable!() };
        let conn = Catalog::lock(conn);
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
        drop(conn);
        assert_eq!(cat.schema_version().unwrap(), migrations::SCHEMA_VERSION);
    }

    #[test]
    fn database_wal_and_shm_are_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        cat.create_user("admin", "alice", Role::Operator).unwrap();
        for name in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // A symbolic link in its place is refused, not followed.
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(dir.path().join("catalog.db"), &link).unwrap();
        assert!(Catalog::open(&link).is_err());
    }

    #[test]
    fn reopened_database_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let cat = Catalog::open(&path).unwrap();
            cat.create_host("admin", &NewHost { name: "web1".into(), group: Some("web".into()), notes: String::new() })
                .unwrap();
            cat.add_mac("admin", "web1", "AA-BB-CC-DD-EE-01").unwrap();
            let user = cat.create_user("admin", "alice", Role::Operator).unwrap();
            assert_eq!(user.name, "alice");
        }
        let cat = Catalog::open(&path).unwrap();
        let host = cat.get_host("web1").unwrap();
        assert_eq!(host.group.as_deref(), Some("web"));
        assert_eq!(host.macs, vec!["aa:bb:cc:dd:ee:01".to_string()]);
        assert_eq!(cat.list_users().unwrap().len(), 1);
        assert_eq!(cat.list_audit(10).unwrap().len(), 3);
    }

    #[test]
    fn refuses_to_open_a_newer_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }
        let e = Catalog::open(&path).unwrap_err();
        assert!(matches!(e, CatalogError::SchemaTooNew { found: 999, .. }), "{e}");
        assert!(e.to_string().contains("newer than this build"), "{e}");
    }
}
