//! A throwaway PostgreSQL cluster for tests (Debian's `postgresql`): `initdb` into a temporary
//! directory, the server listening only on a Unix socket in that directory, stopped and removed
//! when the [`Cluster`] is dropped — and also when the test process ends without dropping it
//! (the process-wide [`shared`] cluster, or a test killed mid-way).
//!
//! How: the server runs under a small `sh` supervisor whose stdin is a pipe from the test
//! process. The supervisor waits for end-of-file on it, which comes when the cluster is dropped
//! or when the test process exits in any way (the kernel closes the pipe), then stops the
//! server (fast shutdown) and deletes the directory.
//!
//! `initdb` refuses to run as root, and so does `postgres`: when the tests run as root, the
//! cluster runs as the user `nobody` (its directory is chowned to it; the test process, root,
//! can still reach the socket). Otherwise it runs as the current user. The cluster is
//! initialised with `--locale=C` (the catalog needs byte-order text) and trust authentication
//! for the `postgres` superuser on its private socket; `fsync` is off (throwaway data).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the server may take to accept connections (initdb excluded). Measured: under a
/// second on an idle machine, a few seconds with the test suite's QEMU load; 60 s is the margin.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running throwaway cluster; see the module docs.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    supervisor: Child,
    stdin: Option<ChildStdin>,
    next_db: AtomicU32,
}

/// The newest installed PostgreSQL's `bin` directory (`/usr/lib/postgresql/<N>/bin`). Panics
/// naming the Debian package when there is none.
pub fn bin_dir() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").map(|d| {
        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|v| Path::new(&format!("/usr/lib/postgresql/{v}/bin/initdb")).exists())
            .max()
    });
    match versions {
        Ok(Some(v)) => PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")),
        _ => panic!(
            "PostgreSQL's initdb and postgres are missing (/usr/lib/postgresql/N/bin): install the Debian package \
             `postgresql`"
        ),
    }
}

/// The uid and gid of `nobody` (from /etc/passwd), which runs the cluster when we are root.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "nobody" {
            return (f[2].parse().expect("nobody's uid"), f[3].parse().expect("nobody's gid"));
        }
    }
    panic!("running as root, and there is no user `nobody` to run PostgreSQL as (initdb refuses root)");
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command that runs as `nobody` when we are root, with a HOME it may not need.
fn as_cluster_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    if is_root() {
        let (uid, gid) = nobody();
        c.uid(uid).gid(gid).env("HOME", "/nonexistent");
    }
    c.env_remove("PGDATA").env_remove("PGHOST").env_remove("PGUSER");
    c
}

impl Cluster {
    /// Initialises and starts a new cluster; panics (naming the package) if PostgreSQL is not
    /// installed, or with the server's log if it does not come up.
    pub fn start() -> Cluster {
        let bin = bin_dir();
        // Kept by hand: the supervisor deletes it (it may outlive this process).
        let dir = tempfile::Builder::new().prefix("kura-pg.").tempdir().expect("temp dir").keep();
        if is_root() {
            let (uid, gid) = nobody();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster directory to nobody");
        }
        let out = as_cluster_user(bin.join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--locale=C", "--encoding=UTF8", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .output()
            .expect("running initdb");
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("initdb failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        // $1: bin dir, $2: cluster dir. `exec cat` would lose the cleanup; `cat` returns at EOF.
        let script = r#"
            "$1/postgres" -D "$2/data" -k "$2" -c listen_addresses= -c fsync=off \
                -c full_page_writes=off -c max_connections=200 >"$2/log" 2>&1 &
            pid=$!
            cat >/dev/null
            kill -INT "$pid" 2>/dev/null
            wait "$pid"
            rm -rf "$2"
        "#;
        let mut supervisor = as_cluster_user("sh")
            .args(["-c", script, "kura-pg-supervisor"])
            .arg(&bin)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the PostgreSQL supervisor (sh)");
        let stdin = supervisor.stdin.take();
        let cluster = Cluster { dir, bin, supervisor, stdin, next_db: AtomicU32::new(0) };
        cluster.wait_ready();
        cluster
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.dir)
                .args(["-U", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if Instant::now() > deadline {
                let mut log = String::new();
                let _ = std::fs::File::open(self.dir.join("log")).and_then(|mut f| f.read_to_string(&mut log));
                panic!("PostgreSQL did not accept connections within {READY_TIMEOUT:?}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The connection URL of database `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@localhost/{db}?host={}", self.dir.display())
    }

    /// Runs one SQL statement with `psql` on database `postgres`; panics with its output if it
    /// fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs one SQL statement with `psql` on database `db` (unaligned, tuples only); panics
    /// with its output if it fails.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-U", "postgres", "-d", db, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("running psql");
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Drops the database of `url` (made by [`create_database`](Self::create_database); its
    /// connections are closed) and makes it again, empty: a lost catalog.
    pub fn recreate_database(&self, url: &str) {
        let path = url.split('?').next().unwrap_or(url);
        let name = path.rsplit('/').next().expect("a database name in the URL");
        assert!(name.starts_with("kura_test_"), "not a test database: {url}");
        self.psql(&format!("DROP DATABASE {name} WITH (FORCE)"));
        self.psql(&format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"));
    }

    /// A new, empty database (collation C, as the catalog requires); returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!("kura_test_{}", self.next_db.fetch_add(1, Ordering::SeqCst));
        self.psql(&format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"));
        self.url(&name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.supervisor.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One cluster for the whole test process (many tests, one database each): started on first
/// use, stopped and removed when the process exits (see the module docs).
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(Cluster::start)
}
