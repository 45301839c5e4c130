//! The child processes `kura bench --engine` measures, and what the kernel says about them: a
//! real `kura serve` (this same binary) on a private data directory and a free loopback port,
//! killed when dropped, and `kura image capture|restore --server` clients run under GNU
//! `/usr/bin/time` (package `time`), so each client's wall time, CPU time and peak RSS are its
//! own. The engine's CPU time comes from `/proc/PID/stat` (utime + stime, deltas over a step),
//! its peak RSS from `VmHWM` in `/proc/PID/status`, reset before a step by writing `5` to
//! `/proc/PID/clear_refs` (Linux ≥ 4.0).

use anyhow::{bail, ensure, Context, Result};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long `kura serve` may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// GNU time, for the clients' own CPU time and peak RSS.
const GNU_TIME: &str = "/usr/bin/time";

/// Fails, naming the Debian package, if GNU time is missing.
pub fn check_gnu_time() -> Result<()> {
    ensure!(
        Path::new(GNU_TIME).is_file(),
        "{GNU_TIME} is missing: `kura bench --engine` measures its clients with GNU time (apt-get install time)"
    );
    Ok(())
}

/// A running `kura serve` child, killed (SIGKILL) and reaped when dropped.
pub struct Engine {
    child: Option<Child>,
    pub url: String,
    pub token: String,
    pub fingerprint: String,
    log: PathBuf,
}

impl Engine {
    /// Starts `kura serve --data DATA --listen 127.0.0.1:0` (HTTPS, SQLite catalog in DATA),
    /// its stderr into `log`, and waits until it says where it listens. The first admin token
    /// and the certificate's fingerprint are read from DATA, as an operator's script would.
    pub fn start(data: &Path, log: &Path) -> Result<Engine> {
        let exe = std::env::current_exe().context("finding the kura binary")?;
        let err = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(&exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env_remove("KURA_CATALOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads every line (so the pipe never fills), sending the URL on.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let mut engine = Engine {
            child: Some(child),
            url: String::new(),
            token: String::new(),
            fingerprint: String::new(),
            log: log.to_path_buf(),
        };
        engine.url = match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                engine.kill();
                bail!("kura serve did not start within {START_TIMEOUT:?}:\n{}", engine.log_tail());
            }
        };
        let read = |p: PathBuf| -> Result<String> {
            Ok(fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string())
        };
        engine.token = read(data.join("admin.token"))?;
        engine.fingerprint = read(data.join("tls").join("fingerprint"))?;
        Ok(engine)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The end of what the engine wrote on stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// CPU seconds (user + system, all threads) the engine has used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        process_cpu_seconds(self.pid())
    }

    /// Resets the engine's peak RSS (`VmHWM`) to its current RSS; false where the kernel
    /// does not allow it (then the peak is since the engine started).
    pub fn reset_peak_rss(&self) -> bool {
        fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// The engine's peak RSS in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> Result<u64> {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid())).context("reading the engine's status")?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmHWM in the engine's /proc status")?;
        Ok(kib * 1024)
    }

    /// Stops the engine: SIGTERM, then SIGKILL if it is still running after 15 s.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else { return Ok(()) };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!("kura serve ignored SIGTERM for 15 s:\n{}", self.log_tail())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kura ARGS --server URL --json` as a child under GNU time, as the admin; not waited for.
    pub fn spawn_client(&self, args: &[&std::ffi::OsStr]) -> Result<Client> {
        let exe = std::env::current_exe().context("finding the kura binary")?;
        let child = Command::new(GNU_TIME)
            .args(["-f", "KURA-TIME %e %U %S %M"])
            .arg(&exe)
            .args(args)
            .args(["--json", "--server", &self.url])
            .env("KURA_TOKEN", &self.token)
            .env("KURA_FINGERPRINT", &self.fingerprint)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {GNU_TIME} (apt-get install time)"))?;
        let what = format!("kura {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        Ok(Client { child: Some(child), what })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running client, killed when dropped unless waited for.
pub struct Client {
    child: Option<Child>,
    what: String,
}

/// What a finished client did, by GNU time and its `--json` output.
pub struct ClientRun {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss: u64,
    pub json: serde_json::Value,
}

impl Client {
    /// Waits for the client, which must succeed.
    pub fn finish(mut self, engine: &Engine) -> Result<ClientRun> {
        let child = self.child.take().context("client already waited for")?;
        let out = child.wait_with_output().with_context(|| format!("waiting for {}", self.what))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "{} failed ({}):\n{}\nengine log:\n{}",
            self.what,
            out.status,
            stderr.trim(),
            engine.log_tail()
        );
        let line = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("KURA-TIME "))
            .with_context(|| format!("no GNU time line from {}:\n{stderr}", self.what))?;
        let f: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        ensure!(f.len() == 4, "cannot read GNU time's line {line:?}");
        let json = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{} printed no JSON: {}", self.what, String::from_utf8_lossy(&out.stdout)))?;
        Ok(ClientRun { seconds: f[0], cpu_seconds: f[1] + f[2], peak_rss: f[3] as u64 * 1024, json })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU seconds (user + system) a running process has used, from `/proc/PID/stat`.
fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (the 12th and 13th after the command name).
    let ticks: f64 = f.get(11..13).unwrap_or_default().iter().filter_map(|v| v.parse::<f64>().ok()).sum();
    Ok(ticks / super::clock_ticks())
}
