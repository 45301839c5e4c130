//! The engine from the outside: a real `kura serve` child process on 127.0.0.1 (killed when
//! dropped), the `kura` CLI pointed at it, and a small HTTP client for raw API calls.
//!
//! `kura serve --data DIR --listen 127.0.0.1:0` prints `kura serve: listening on URL` once it
//! is ready; it keeps its first admin token in `DIR/admin.token` and (HTTPS) its certificate's
//! fingerprint in `DIR/tls/fingerprint`. The CLI gets the token and the pinned fingerprint
//! through `KURA_TOKEN` / `KURA_FINGERPRINT`, as an operator's script would. Raw API tests start
//! the server with `--insecure-http`; the CLI tests use HTTPS with the pinned certificate.
//!
//! The catalog is SQLite in DIR unless the test process runs with `KURA_TEST_CATALOG=postgres`:
//! then every engine gets a fresh PostgreSQL database (`kura serve` with `KURA_CATALOG`), so the
//! same engine tests run on both backends (`scripts/test` runs the chosen ones twice).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::disks::{build_gpt, Content, Disk, PartSpec, MIB};
use crate::kura_cli::{kura_bin, run_env, CaptureReport, RestoreReport, Run};

/// How long `kura serve` may take to say it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `kura serve`, killed (SIGKILL) when dropped.
pub struct Server {
    pub data: PathBuf,
    pub url: String,
    /// The pinned certificate fingerprint (HTTPS only).
    pub fingerprint: Option<String>,
    /// The first admin token (`DIR/admin.token`).
    pub admin: String,
    insecure_http: bool,
    /// Extra `kura serve` arguments, kept for restarts.
    extra: Vec<OsString>,
    /// Extra environment of `kura serve`, kept for restarts.
    serve_env: Vec<(OsString, OsString)>,
    child: Option<Child>,
    /// Everything the server wrote on stderr, for failure messages.
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts an HTTPS engine on `data` (created if missing).
    pub fn start(data: &Path) -> Server {
        Self::spawn(data, false, Vec::new(), Vec::new())
    }

    /// Starts a plain-HTTP engine (`--insecure-http`) for raw API calls.
    pub fn start_http(data: &Path) -> Server {
        Self::spawn(data, true, Vec::new(), Vec::new())
    }

    /// Starts an HTTPS engine with extra `kura serve` arguments and environment (kept across
    /// restarts), e.g. `--netboot CONFIG`.
    pub fn start_https_with(data: &Path, extra: &[&dyn AsRef<OsStr>], env: &[(&str, &dyn AsRef<OsStr>)]) -> Server {
        let env = env.iter().map(|(k, v)| (OsString::from(k), v.as_ref().to_owned())).collect();
        Self::spawn(data, false, extra.iter().map(|a| a.as_ref().to_owned()).collect(), env)
    }

    /// Starts a plain-HTTP engine with extra `kura serve` arguments (kept across restarts),
    /// e.g. `--test-clock FILE --scheduler-tick-ms 50`.
    pub fn start_http_with(data: &Path, extra: &[&dyn AsRef<OsStr>]) -> Server {
        Self::spawn(data, true, extra.iter().map(|a| a.as_ref().to_owned()).collect(), Vec::new())
    }

    /// Starts a plain-HTTP engine with extra `kura serve` arguments and environment (both kept
    /// across restarts), e.g. a test clock and `KURA_LOG=info`.
    pub fn start_http_with_env(data: &Path, extra: &[&dyn AsRef<OsStr>], env: &[(&str, &dyn AsRef<OsStr>)]) -> Server {
        let env = env.iter().map(|(k, v)| (OsString::from(k), v.as_ref().to_owned())).collect();
        Self::spawn(data, true, extra.iter().map(|a| a.as_ref().to_owned()).collect(), env)
    }

    /// Starts a plain-HTTP engine with extra environment variables (kept across restarts),
    /// e.g. `KURA_NOTIFY_CA`.
    pub fn start_http_env(data: &Path, env: &[(&str, &dyn AsRef<OsStr>)]) -> Server {
        let env = env.iter().map(|(k, v)| (OsString::from(k), v.as_ref().to_owned())).collect();
        Self::spawn(data, true, Vec::new(), env)
    }

    fn spawn(
        data: &Path,
        insecure_http: bool,
        extra: Vec<OsString>,
        mut serve_env: Vec<(OsString, OsString)>,
    ) -> Server {
        // The catalog backend under test: `KURA_TEST_CATALOG=postgres` gives each new engine a
        // database of its own in the process's throwaway PostgreSQL cluster (`crate::postgres`);
        // the URL stays in `serve_env`, so a restart reopens the same catalog.
        if std::env::var("KURA_TEST_CATALOG").as_deref() == Ok("postgres")
            && !serve_env.iter().any(|(k, _)| k == "KURA_CATALOG")
        {
            serve_env.push(("KURA_CATALOG".into(), crate::postgres::shared().create_database().into()));
        }
        let mut cmd = Command::new(kura_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data);
        if insecure_http {
            cmd.arg("--insecure-http");
        }
        cmd.args(&extra).envs(serve_env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start kura serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let url = match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("kura serve did not start within {START_TIMEOUT:?}:\n{}", log.lock().unwrap());
            }
        };
        let serve_json: Value =
            serde_json::from_str(&std::fs::read_to_string(data.join("serve.json")).unwrap()).unwrap();
        assert_eq!(serve_json["url"].as_str(), Some(url.as_str()), "serve.json disagrees with stdout");
        let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
        let fingerprint = (!insecure_http)
            .then(|| std::fs::read_to_string(data.join("tls").join("fingerprint")).unwrap().trim().to_string());
        Server {
            data: data.to_path_buf(),
            url,
            fingerprint,
            admin,
            insecure_http,
            extra,
            serve_env,
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is not running").id()
    }

    /// The chunk store under the data directory.
    pub fn store(&self) -> PathBuf {
        self.data.join("store")
    }

    /// What the server wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (graceful shutdown), waiting up to 15 s before falling back to SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("kura serve ignored SIGTERM for 15 s:\n{}", self.log());
        }
    }

    /// Starts the server again on the same data directory (killing it first if it runs). The
    /// port changes; the admin token is re-read (a rebuilt catalog issues a new one).
    pub fn restart(&mut self) {
        self.kill9();
        let fresh = Self::spawn(&self.data, self.insecure_http, self.extra.clone(), self.serve_env.clone());
        let old_log = self.log();
        fresh.log.lock().unwrap().insert_str(0, &format!("{old_log}--- restarted ---\n"));
        *self = fresh;
    }

    /// Environment for a CLI run with `token`.
    fn env<'a>(&'a self, token: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("KURA_TOKEN", token)];
        if let Some(fp) = &self.fingerprint {
            env.push(("KURA_FINGERPRINT", fp.as_str()));
        }
        env
    }

    fn with_server(&self, args: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
        let mut v: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        v.extend(["--server".into(), self.url.clone().into()]);
        v
    }

    /// `kura ARGS --server URL` as the admin.
    pub fn kura(&self, args: &[&dyn AsRef<OsStr>]) -> Run {
        self.kura_as(&self.admin, args)
    }

    /// `kura ARGS --server URL` with `token`.
    pub fn kura_as(&self, token: &str, args: &[&dyn AsRef<OsStr>]) -> Run {
        run_env(self.with_server(args), &self.env(token))
    }

    /// Starts `kura ARGS --server URL` as the admin without waiting; its stdout and stderr go
    /// to `log` (created or truncated).
    pub fn spawn_kura(&self, args: &[&dyn AsRef<OsStr>], log: &Path) -> ChildGuard {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(kura_bin())
            .args(self.with_server(args))
            .envs(self.env(&self.admin))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("cannot start kura");
        ChildGuard(Some(child))
    }

    pub fn capture_run(&self, disk: &Path, host: &str) -> Run {
        self.kura(&[&"image", &"capture", &disk, &"--host", &host, &"--json"])
    }

    /// Captures `disk` for `host` through the CLI, which must succeed.
    pub fn capture(&self, disk: &Path, host: &str) -> CaptureReport {
        let run = self.capture_run(disk, host);
        assert!(run.success(), "capture failed:\n{run}\nserver log:\n{}", self.log());
        run.json()
    }

    pub fn restore_run(&self, snapshot: &str, target: &Path) -> Run {
        self.kura(&[&"image", &"restore", &snapshot, &target, &"--json"])
    }

    /// Restores `snapshot` from the engine onto `target`, which must succeed.
    pub fn restore(&self, snapshot: &str, target: &Path) -> RestoreReport {
        let run = self.restore_run(snapshot, target);
        assert!(run.success(), "restore failed:\n{run}\nserver log:\n{}", self.log());
        run.json()
    }

    /// `kura snapshots --json`.
    pub fn snapshots(&self) -> Vec<Value> {
        let run = self.kura(&[&"snapshots", &"--json"]);
        assert!(run.success(), "kura snapshots failed:\n{run}\nserver log:\n{}", self.log());
        run.json()
    }

    /// Sorted ids of `kura snapshots --json`.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.snapshots().iter().map(|s| s["id"].as_str().expect("snapshot id").to_string()).collect();
        ids.sort();
        ids
    }

    /// `kura verify --json` (the engine re-reads every chunk; quarantines damaged ones).
    pub fn verify_run(&self) -> Run {
        self.kura(&[&"verify", &"--json"])
    }

    /// Asserts `kura verify` finds the store intact.
    pub fn assert_verify_ok(&self) -> Value {
        let run = self.verify_run();
        assert!(run.success(), "kura verify failed:\n{run}\nserver log:\n{}", self.log());
        let v: Value = run.json();
        assert_eq!(v["ok"], true, "{run}");
        v
    }

    /// A raw API client for this server (plain HTTP servers only).
    pub fn api(&self) -> Api {
        assert!(self.insecure_http, "raw API calls need a server started with start_http");
        Api::new(&self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Exit status if it has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Waits for the process to end, at most `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            assert!(t0.elapsed() < limit, "process did not end within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw HTTP client for the API.
pub struct Api {
    http: reqwest::blocking::Client,
    base: String,
}

/// An API answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Values of a response header.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
    }
}

/// A request being built: `api.req("GET", "/hosts").token(t).send()`.
pub struct Req<'a> {
    api: &'a Api,
    method: reqwest::Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Api {
    pub fn new(base: &str) -> Api {
        // Redirects are not followed: the status page's redirect to its login is what tests see.
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Api { http, base: base.trim_end_matches('/').to_string() }
    }

    /// A request to `/api/v1{path}` (or `path` as is if it starts with `/api/`).
    pub fn req(&self, method: &str, path: &str) -> Req<'_> {
        let path = if path.starts_with("/api/") { path.to_string() } else { format!("/api/v1{path}") };
        Req { api: self, method: method.parse().unwrap(), path, headers: Vec::new(), body: None }
    }

    /// A request to `path` exactly as given (the route table's paths, pages, `/metrics`).
    pub fn raw(&self, method: &str, path: &str) -> Req<'_> {
        Req { api: self, method: method.parse().unwrap(), path: path.to_string(), headers: Vec::new(), body: None }
    }

    /// The server's base URL (`http://127.0.0.1:PORT`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A new operator token (created with `admin`).
    pub fn operator_token(&self, admin: &str) -> String {
        let r = self
            .req("POST", "/tokens")
            .token(admin)
            .json(&serde_json::json!({"role": "operator", "label": "test"}))
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["token"].as_str().unwrap().to_string()
    }

    /// Creates host `name` with one MAC, queues a capture job for it and fails the job as its
    /// agent with `error`. Returns the job id.
    pub fn failed_job(&self, admin: &str, name: &str, mac: &str, error: &str) -> i64 {
        let r = self.req("POST", "/hosts").token(admin).json(&serde_json::json!({"name": name, "macs": [mac]})).send();
        assert_eq!(r.status, 201, "{}", r.text());
        let r =
            self.req("POST", "/jobs").token(admin).json(&serde_json::json!({"kind": "capture", "host": name})).send();
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        let (job, agent) = (v["job"]["id"].as_i64().unwrap(), v["agent_token"].as_str().unwrap().to_string());
        let r = self
            .req("POST", &format!("/jobs/{job}/finish"))
            .token(&agent)
            .mac(mac)
            .json(&serde_json::json!({"ok": false, "error": error}))
            .send();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["state"], "failed");
        job
    }
}

impl Req<'_> {
    pub fn token(mut self, token: &str) -> Self {
        self.headers.push(("Authorization".into(), format!("Bearer {token}")));
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn mac(self, mac: &str) -> Self {
        self.header("X-Kura-Mac", mac)
    }

    pub fn json(mut self, v: &Value) -> Self {
        self.body = Some(serde_json::to_vec(v).unwrap());
        self.header("Content-Type", "application/json")
    }

    pub fn bytes(mut self, b: Vec<u8>) -> Self {
        self.body = Some(b);
        self
    }

    /// Sends it; `Err` for a transport failure (connection refused, reset, timeout).
    pub fn try_send(self) -> Result<Resp, String> {
        let url = format!("{}{}", self.api.base, self.path);
        let mut rb = self.api.http.request(self.method.clone(), &url);
        for (k, v) in &self.headers {
            rb = rb.header(k, v);
        }
        if let Some(b) = self.body {
            rb = rb.body(b);
        }
        let resp = rb.send().map_err(|e| format!("{} {}: {e:?}", self.method, self.path))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = resp.bytes().map_err(|e| format!("{} {}: reading the body: {e}", self.method, self.path))?;
        Ok(Resp { status, headers, body: body.to_vec() })
    }

    /// Sends it; panics on a transport failure.
    pub fn send(self) -> Resp {
        self.try_send().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A GPT disk with one raw partition (no filesystem: every byte is captured) holding `data`
/// (its size rounded up to a MiB), 4 MiB larger than the partition.
pub fn raw_disk(dir: &Path, name: &str, data: Vec<u8>) -> Disk {
    let part = (data.len() as u64).div_ceil(MIB) * MIB;
    build_gpt(dir, name, part + 4 * MIB, vec![PartSpec::gpt(part, "ef02", "BIOS boot partition", Content::Raw(data))])
}

/// Number of chunk files in a store directory (cheap: no decoding).
pub fn chunk_count(store: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(store.join("chunks")) else { return 0 };
    shards
        .filter_map(|s| s.ok())
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().len() == 64).count())
        .sum()
}

/// Chunks the engine has received: chunk files in place plus chunk files still in `tmp/`
/// (a store may stage new chunks there until a batch is made durable or the commit).
pub fn received_count(store: &Path) -> usize {
    let staged = std::fs::read_dir(store.join("tmp")).map(|d| d.count()).unwrap_or(0);
    chunk_count(store) + staged
}

/// Paths of every file under `store` (chunks, `tmp/`, quarantine...) whose name holds `digest`.
pub fn files_named(store: &Path, digest: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, digest: &str, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, digest, out);
            } else if e.file_name().to_string_lossy().contains(digest) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(store, digest, &mut out);
    out
}

/// Names (ids) of the manifests in a store's `snapshots/`, sorted.
pub fn manifest_ids(store: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(store.join("snapshots"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".kmf")).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// A mount (tmpfs) unmounted when dropped.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs of `size_mib` MiB on `dir` (needs root), private (0700, as `kura serve`
    /// requires of its data directory). `None` if mounting is not possible here (not root, no
    /// permission), with the reason printed.
    pub fn tmpfs(dir: &Path, size_mib: u64) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(Mount { dir: dir.to_path_buf() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Encodes `plain` as a stored (uncompressed) chunk by the documented format
/// (`docs/chunk.md`); returns (digest hex, encoded bytes).
pub fn encode_stored_chunk(plain: &[u8]) -> (String, Vec<u8>) {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(plain);
    let mut h = vec![0u8; 64];
    h[..8].copy_from_slice(&Sha256::digest(b"Kura chunk v1")[..8]);
    h[8..10].copy_from_slice(&1u16.to_le_bytes());
    h[10] = 0;
    h[12..16].copy_from_slice(&(plain.len() as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(plain.len() as u32).to_le_bytes());
    h[20..24].copy_from_slice(&crc32fast::hash(plain).to_le_bytes());
    h[24..56].copy_from_slice(&digest);
    h.extend_from_slice(plain);
    (hex::encode(digest), h)
}
