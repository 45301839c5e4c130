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

pub mod audit;
pub mod auth;
pub mod error;
pub mod hosts;
pub mod jobs;
pub mod migrations;
pub mod notify;
pub mod power;
pub mod schedules;
pub mod snapshots;
pub mod stats;

pub use audit::AuditEntry;
pub use auth::{authorize_agent, IssuedToken, Principal, Role, TokenInfo, User};
pub use error::{CatalogError, Result};
pub use hosts::{normalize_mac, Disk, Host, HostPatch, NewDisk, NewHost, RetentionScope};
pub use jobs::{Job, JobKind, JobState, LogLevel, LogLine, NewJob, JOB_LOG_CAP};
pub use notify::{NotifyConfig, NotifyTarget};
pub use power::{PasswordChange, PowerControl, PowerDriver, PowerSettings, PowerView};
pub use schedules::{
    HostFailure, HostRunState, NewSchedule, Recorded, Releasable, Release, RunHost, RunState, RunSummary, Schedule,
    ScheduleRun, Settled, TargetKind,
};
pub use snapshots::{NewSnapshot, Snapshot, SnapshotKind, SnapshotState};
pub use stats::{HostStatus, JobCount, JobDuration, SnapshotTotals};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Unix seconds, UTC.
pub type UnixTime = i64;

/// How long a call waits for a lock held by another process before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// The catalog database. See the module docs for the locking design.
pub struct Catalog {
    conn: Mutex<Connection>,
    clock: Clock,
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
        let conn = Connection::open_with_flags(path, flags)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::setup(conn)
    }

    /// A private, empty catalog in memory (tests).
    pub fn open_in_memory() -> Result<Catalog> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Catalog> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        migrations::migrate(&mut conn)?;
        Ok(Catalog { conn: Mutex::new(conn), clock: Arc::new(system_now) })
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

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        migrations::schema_version(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open (dropping a
        // `Transaction` rolls it back), so the connection is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the connection, outside a transaction (reads).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        f(&self.lock())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction with the current time, and commits.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>, UnixTime) -> Result<T>) -> Result<T> {
        let now = self.now();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx, now)?;
        tx.commit()?;
        Ok(value)
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

    pub fn catalog() -> (Catalog, TestClock) {
        let clock = TestClock(Arc::new(AtomicI64::new(START)));
        let c = clock.clone();
        (Catalog::open_in_memory().unwrap().with_clock(move || c.0.load(Ordering::SeqCst)), clock)
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
        let conn = cat.lock();
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
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }
        let e = Catalog::open(&path).unwrap_err();
        assert!(matches!(e, CatalogError::SchemaTooNew { found: 999, .. }), "{e}");
        assert!(e.to_string().contains("newer than this build"), "{e}");
    }
}
