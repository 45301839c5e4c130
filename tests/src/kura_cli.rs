//! Running the real `kura` binary and decoding its `--json` output.
//!
//! The binary is `$KURA_BIN` if set, else `<workspace>/target/debug/kura` (or under
//! `$CARGO_TARGET_DIR`). Build it first: `cargo build -p kura`.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Longest a single kura command may take before the test gives up on it.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// The `kura` binary to test; panics with instructions if it has not been built.
pub fn kura_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "KURA_BIN={} does not exist", p.display());
        return p;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { workspace.join(t) })
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join("kura");
    assert!(
        bin.is_file(),
        "the kura binary is not at {}: run `cargo build -p kura` first (or set KURA_BIN)",
        bin.display()
    );
    bin
}

/// The static `kura-agent` for boot images (`$KURA_AGENT`, else the release build on the
/// host's gnu target that `scripts/test` makes); panics with the build command if missing.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_AGENT") {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { workspace.join(t) })
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("x86_64-unknown-linux-gnu/release/kura-agent");
    assert!(
        bin.is_file(),
        "the static agent is not at {}: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release \
         -p kura-agent --target x86_64-unknown-linux-gnu (or set KURA_AGENT)",
        bin.display()
    );
    bin
}

/// What a kura run did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<OsString>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Decodes stdout as JSON, panicking with the whole run if it is not.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("kura output is not the expected JSON ({e}):\n{self}"))
    }

    /// Panics with the whole run unless it exited 0.
    pub fn expect_success(&self) -> &Self {
        assert!(self.success(), "kura failed:\n{self}");
        self
    }

    /// Panics unless the run failed, with a message on stderr containing every one of `words`
    /// (case-insensitive).
    pub fn expect_failure_mentioning(&self, words: &[&str]) -> &Self {
        eprintln!("{self}");
        assert!(!self.success(), "kura should have failed:\n{self}");
        let stderr = self.stderr.to_lowercase();
        for w in words {
            assert!(stderr.contains(&w.to_lowercase()), "kura's error does not mention {w:?}:\n{self}");
        }
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args: Vec<_> = self.args.iter().map(|a| a.to_string_lossy()).collect();
        writeln!(f, "$ kura {}", args.join(" "))?;
        writeln!(f, "exit: {}", self.status)?;
        writeln!(f, "stdout:\n{}", self.stdout)?;
        write!(f, "stderr:\n{}", self.stderr)
    }
}

/// Runs `kura args…` to completion (at most [`TIMEOUT`]).
pub fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_env(args, &[])
}

/// Runs `kura args…` with extra environment variables (e.g. `KURA_TOKEN`), to completion (at
/// most [`TIMEOUT`]).
pub fn run_env<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(kura_bin())
        .args(&args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start kura");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        out.read_to_end(&mut s).map(|_| s)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        err.read_to_end(&mut s).map(|_| s)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("kura {args:?} took longer than {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap().unwrap()).into_owned();
    Run { args, status, stdout, stderr }
}

/// `kura image capture --json` output.
#[derive(Clone, Debug, Deserialize)]
pub struct CaptureReport {
    pub snapshot: String,
    pub disk_size: u64,
    pub used_bytes: u64,
    pub read_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_stored_bytes: u64,
    pub reused_chunks: u64,
    /// Changed chunks stored as patches on the previous snapshot's (manifest v2).
    #[serde(default)]
    pub pieced_chunks: u64,
    #[serde(default)]
    pub new_patches: u64,
    pub warnings: Vec<String>,
}

/// `kura image restore --json` output.
#[derive(Clone, Debug, Deserialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub written_bytes: u64,
}

/// One entry of `kura image list --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct SnapshotEntry {
    pub id: String,
    pub name: Option<String>,
    pub created: serde_json::Value,
    pub disk_size: u64,
}

/// `kura image verify --json` output.
#[derive(Clone, Debug, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub chunks_checked: u64,
    pub damaged: Vec<DamagedChunk>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DamagedChunk {
    pub digest: String,
    pub reason: String,
    pub snapshots: Vec<String>,
}

/// A store directory and the `kura image` commands on it.
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).unwrap();
        Store { dir }
    }

    pub fn capture_run(&self, source: &Path, name: Option<&str>) -> Run {
        self.capture_run_with(source, name, &[])
    }

    /// `kura image capture` with `extra` arguments (e.g. `--threads 4`).
    pub fn capture_run_with(&self, source: &Path, name: Option<&str>, extra: &[&str]) -> Run {
        let mut args: Vec<OsString> = vec!["image".into(), "capture".into(), source.into()];
        args.extend(extra.iter().map(OsString::from));
        args.extend(["--store".into(), self.dir.clone().into_os_string()]);
        if let Some(name) = name {
            args.extend(["--name".into(), name.into()]);
        }
        args.push("--json".into());
        run(args)
    }

    /// Captures `source`, which must succeed.
    pub fn capture(&self, source: &Path, name: Option<&str>) -> CaptureReport {
        self.capture_run(source, name).expect_success().json()
    }

    pub fn restore_run(&self, snapshot: &str, target: &Path) -> Run {
        run([
            OsStr::new("image"),
            OsStr::new("restore"),
            OsStr::new(snapshot),
            target.as_os_str(),
            OsStr::new("--store"),
            self.dir.as_os_str(),
            OsStr::new("--json"),
        ])
    }

    /// Restores `snapshot` onto `target`, which must succeed.
    pub fn restore(&self, snapshot: &str, target: &Path) -> RestoreReport {
        self.restore_run(snapshot, target).expect_success().json()
    }

    pub fn list(&self) -> Vec<SnapshotEntry> {
        run([
            OsStr::new("image"),
            OsStr::new("list"),
            OsStr::new("--store"),
            self.dir.as_os_str(),
            OsStr::new("--json"),
        ])
        .expect_success()
        .json()
    }

    pub fn verify_run(&self, snapshot: Option<&str>) -> Run {
        let mut args: Vec<OsString> = vec!["image".into(), "verify".into()];
        args.extend(["--store".into(), self.dir.clone().into_os_string()]);
        if let Some(s) = snapshot {
            args.push(s.into());
        }
        args.push("--json".into());
        run(args)
    }
}
