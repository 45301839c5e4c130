//! The S3 chunk store: the same names as the local store (`kura-store.json`, `chunks/<4 hex>/<64
//! hex>`, `snapshots/<id>.kmf`, `quarantine/…`) as objects under a bucket's prefix, through the
//! `object_store` crate (SigV4 signing, retries; never a signer of ours), with a local chunk
//! cache ([`crate::chunk_cache`]) in a private cache directory, and a chunk index
//! ([`crate::chunk_index`]): a file in that directory for offline commands, the catalog's shared
//! index for an engine ([`S3Store::with_shared_index`]), so several engine nodes can share the
//! bucket. The durability contract is the trait's ([`crate::backend`]): a chunk is durable
//! when its PUT returned, the manifest is PUT last, after every chunk it names is known present.
//!
//! # The spec
//!
//! `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path_style=true|false&credentials=FILE]`; each
//! setting not in the spec is read from `KURA_S3_ENDPOINT`, `KURA_S3_REGION`,
//! `KURA_S3_PATH_STYLE`, `KURA_S3_CREDENTIALS`. Region defaults to `us-east-1`; path-style
//! requests default to on when an endpoint is given (MinIO, SeaweedFS, Ceph RGW), off for AWS.
//! Credentials are never in the spec: a file (mode 0600 or stricter, owned by this user —
//! anything group or others may read is refused) with lines `access_key_id = …`,
//! `secret_access_key = …` and optionally `session_token = …`, or else the environment's
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
//!
//! # Requests
//!
//! One PUT per new chunk, one GET per chunk read that misses the cache, no HEAD per digest
//! (the index answers), one LIST per 1000 objects when the index is rebuilt or a GC sweeps.
//! [`S3Store::requests`] counts them (docs/scale-out.md has the cost per GB).
//!
//! A bucket with S3 Object Lock is found at open; no retained object is then deleted
//! ([`crate::s3_lock`]).

use crate::backend::{CacheOptions, Store};
use crate::chunk_cache::ChunkCache;
use crate::chunk_index::{ChunkIndex, IndexOrigin, SharedChunkIndex};
use crate::s3_lock::{BucketAddress, ObjectLock, ObjectState};
use crate::store::{StoreLock, StoreUsage};
use futures::StreamExt;
use kura_imaging::chunk::{check_quick, ChunkSink, ChunkSource, Digest};
use kura_imaging::flow::SnapshotSink;
use kura_imaging::manifest::Manifest;
use kura_imaging::Error;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

const MARKER: &str = "kura-store.json";
const STORE_FORMAT: u32 = 1;
/// Chunk PUTs a capture keeps in flight ([`ChunkSink::puts_in_flight`]).
const PUTS_IN_FLIGHT: usize = 8;

/// Where an S3 store is and how to reach it (credentials excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Spec {
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub credentials_file: Option<PathBuf>,
}

fn bad_spec(spec: &str, why: impl std::fmt::Display) -> Error {
    Error::Store { message: format!("bad S3 store {spec:?}: {why}"), retryable: false }
}

impl S3Spec {
    /// Parses `s3://bucket/prefix?…`; settings missing from it come from `env` (a lookup of
    /// `KURA_S3_*` variables, `std::env::var` in production).
    pub fn parse(spec: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<S3Spec, Error> {
        let rest = spec.strip_prefix("s3://").ok_or_else(|| bad_spec(spec, "it does not start with s3://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad_spec(spec, "the bucket name must be 3-63 lower-case letters, digits, '-' or '.'"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(bad_spec(spec, "the prefix may not contain '.', '..' or empty parts"));
        }
        let (mut endpoint, mut region, mut path_style, mut credentials) = (None, None, None, None);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad_spec(spec, format!("{kv:?} is not key=value")))?;
            match k {
                "endpoint" => endpoint = Some(v.to_string()),
                "region" => region = Some(v.to_string()),
                "path_style" => path_style = Some(v.to_string()),
                "credentials" => credentials = Some(v.to_string()),
                other => {
                    return Err(bad_spec(
                        spec,
                        format!("unknown setting {other:?} (endpoint, region, path_style, credentials)"),
                    ))
                }
            }
        }
        let endpoint = endpoint.or_else(|| env("KURA_S3_ENDPOINT")).filter(|e| !e.is_empty());
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(bad_spec(spec, format!("the endpoint {e:?} must start with http:// or https://")));
            }
        }
        let path_style = match path_style.or_else(|| env("KURA_S3_PATH_STYLE")).as_deref() {
            None | Some("") => endpoint.is_some(),
            Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(other) => return Err(bad_spec(spec, format!("path_style={other:?} is not true or false"))),
        };
        Ok(S3Spec {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
            endpoint,
            region: region.or_else(|| env("KURA_S3_REGION")).filter(|r| !r.is_empty()).unwrap_or("us-east-1".into()),
            path_style,
            credentials_file: credentials
                .or_else(|| env("KURA_S3_CREDENTIALS"))
                .filter(|c| !c.is_empty())
                .map(PathBuf::from),
        })
    }

    /// `s3://bucket/prefix`, without settings: the store's name.
    pub fn name(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }
}

/// S3 credentials.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl Credentials {
    /// From `file` (which must be private) if given, else from the environment.
    pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Credentials, Error> {
        let refuse = |m: String| Error::Store { message: m, retryable: false };
        if let Some(path) = file {
            let bytes = crate::private::read_secret(path, 0o077)
                .map_err(|e| refuse(format!("S3 credentials file refused: {e}")))?;
            let text = String::from_utf8(bytes).map_err(|_| refuse(format!("{} is not text", path.display())))?;
            let (mut id, mut secret, mut token) = (None, None, None);
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', '['])) {
                let Some((k, v)) = line.split_once('=') else {
                    return Err(refuse(format!("{}: {line:?} is not key = value", path.display())));
                };
                let v = v.trim().to_string();
                match k.trim().trim_start_matches("aws_") {
                    "access_key_id" => id = Some(v),
                    "secret_access_key" => secret = Some(v),
                    "session_token" => token = Some(v),
                    other => return Err(refuse(format!("{}: unknown key {other:?}", path.display()))),
                }
            }
            return match (id, secret) {
                (Some(access_key_id), Some(secret_access_key)) => {
                    Ok(Credentials { access_key_id, secret_access_key, session_token: token })
                }
                _ => Err(refuse(format!("{} lacks access_key_id or secret_access_key", path.display()))),
            };
        }
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => {
                Ok(Credentials { access_key_id, secret_access_key, session_token: env("AWS_SESSION_TOKEN") })
            }
            _ => Err(refuse(
                "no S3 credentials: give a file (credentials=FILE in the store spec or KURA_S3_CREDENTIALS, \
                 mode 0600) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    .into(),
            )),
        }
    }
}

/// Requests sent to the object store since it was opened.
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    pub copy: AtomicU64,
}

impl RequestCounts {
    /// (put, get, head, list pages, delete, copy)
    pub fn snapshot(&self) -> [u64; 6] {
        [&self.put, &self.get, &self.head, &self.list, &self.delete, &self.copy].map(|c| c.load(Ordering::Relaxed))
    }
}

pub struct S3Store {
    name: String,
    prefix: String,
    client: Arc<dyn ObjectStore>,
    rt: Option<tokio::runtime::Runtime>,
    cache: ChunkCache,
    cache_dir: PathBuf,
    index: OnceLock<ChunkIndex>,
    /// Serialises the index's first opening (one LIST if it must be rebuilt).
    index_init: Mutex<()>,
    /// The catalog's index, when an engine opened the store: used instead of the file.
    shared: Option<Arc<dyn SharedChunkIndex>>,
    requests: Arc<RequestCounts>,
    /// The bucket's Object Lock, found at open (`None` for an ordinary bucket).
    object_lock: Option<Arc<ObjectLock>>,
    _lock: File,
    _temp: Option<tempfile::TempDir>,
}

fn os_err(what: String, e: object_store::Error) -> Error {
    let retryable = matches!(e, object_store::Error::Generic { .. });
    Error::Store { message: format!("{what}: {e}"), retryable }
}

impl S3Store {
    /// Opens the store named by `spec` (see the module docs); with `create`, an empty prefix
    /// becomes a store.
    pub fn open(spec: &str, cache: &CacheOptions, create: bool) -> Result<S3Store, Error> {
        let env = |k: &str| std::env::var(k).ok();
        let s = S3Spec::parse(spec, &env)?;
        let creds = Credentials::load(s.credentials_file.as_deref(), &env)?;
        let object_lock = ObjectLock::detect_blocking(
            BucketAddress {
                bucket: s.bucket.clone(),
                region: s.region.clone(),
                endpoint: s.endpoint.clone(),
                path_style: s.path_style,
            },
            object_store::aws::AwsCredential {
                key_id: creds.access_key_id.clone(),
                secret_key: creds.secret_access_key.clone(),
                token: creds.session_token.clone(),
            },
        )?;
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_access_key_id(creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key)
            .with_virtual_hosted_style_request(!s.path_style)
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            });
        if let Some(t) = creds.session_token {
            b = b.with_token(t);
        }
        if object_lock.is_some() {
            // AWS requires a checksum on every PUT into a bucket with Object Lock.
            b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        }
        if let Some(e) = &s.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        let client = b.build().map_err(|e| os_err(format!("configuring {}", s.name()), e))?;
        let mut store = Self::with_client(Arc::new(client), &s.name(), &s.prefix, cache, create)?;
        if let Some(lock) = &object_lock {
            tracing::info!(
                "{}: the bucket has S3 Object Lock ({}): retained objects are never deleted",
                s.name(),
                lock.describe()
            );
        }
        store.object_lock = object_lock.map(Arc::new);
        Ok(store)
    }

    /// Opens the store over any `object_store` client (tests use the in-memory one).
    pub fn with_client(
        client: Arc<dyn ObjectStore>,
        name: &str,
        prefix: &str,
        cache: &CacheOptions,
        create: bool,
    ) -> Result<S3Store, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kura-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Store { message: format!("starting the S3 client: {e}"), retryable: false })?;
        let (cache_dir, temp) = match &cache.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new().prefix("kura-s3-cache").tempdir().map_err(|e| Error::Store {
                    message: format!("making a cache directory: {e}"),
                    retryable: false,
                })?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let io = |what: &str, e: std::io::Error| Error::Store {
            message: format!("{what} {}: {e}", cache_dir.display()),
            retryable: false,
        };
        crate::private::create_dir_all(&cache_dir).map_err(|e| io("creating the cache directory", e))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache_dir.join("lock"))
            .map_err(|e| io("opening the lock of", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Store {
                    message: format!(
                        "the cache directory {} of {name} is in use by another Kura process (kura serve, \
                         or an offline command): stop it first",
                        cache_dir.display()
                    ),
                    retryable: true,
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", e)),
        }
        let chunk_cache = ChunkCache::open(&cache_dir, cache.max_bytes)?;
        let store = S3Store {
            name: name.to_string(),
            prefix: prefix.to_string(),
            client,
            rt: Some(rt),
            cache: chunk_cache,
            cache_dir,
            index: OnceLock::new(),
            index_init: Mutex::new(()),
            shared: None,
            requests: Arc::default(),
            object_lock: None,
            _lock: lock,
            _temp: temp,
        };
        store.check_marker(create)?;
        Ok(store)
    }

    fn check_marker(&self, create: bool) -> Result<(), Error> {
        let marker = self.path(MARKER);
        match self.get(&marker) {
            Ok(Some(bytes)) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if v["kind"] != "kura-store" || v["format"] != STORE_FORMAT {
                    return Err(Error::Store {
                        message: format!(
                            "{} has an unsupported store format: {}",
                            self.name,
                            String::from_utf8_lossy(&bytes).trim()
                        ),
                        retryable: false,
                    });
                }
                Ok(())
            }
            Ok(None) if create => {
                if !self.list(&self.prefix.clone())?.is_empty() {
                    return Err(Error::Store {
                        message: format!("{} is not a Kura store ({MARKER} missing) and is not empty", self.name),
                        retryable: false,
                    });
                }
                let text = serde_json::json!({"kind": "kura-store", "format": STORE_FORMAT}).to_string() + "\n";
                self.put(&marker, text.into_bytes())
            }
            Ok(None) => Err(Error::Store {
                message: format!("{} is not a Kura store ({MARKER}: not found)", self.name),
                retryable: false,
            }),
            Err(e) => Err(e),
        }
    }

    /// The requests sent so far.
    pub fn requests(&self) -> &RequestCounts {
        &self.requests
    }

    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    fn path(&self, rel: &str) -> ObjPath {
        ObjPath::from(format!("{}{rel}", self.prefix))
    }

    fn chunk_key(d: &Digest) -> String {
        let hex = d.to_hex();
        format!("chunks/{}/{hex}", &hex[..4])
    }

    /// Runs `fut` on this store's runtime and waits for it (from any thread, async or not).
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref().expect("runtime").spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("the S3 client's runtime stopped")
    }

    fn put(&self, path: &ObjPath, bytes: Vec<u8>) -> Result<(), Error> {
        self.requests.put.fetch_add(1, Ordering::Relaxed);
        let (c, p) = (self.client.clone(), path.clone());
        self.run(async move { c.put(&p, PutPayload::from(bytes)).await })
            .map(|_| ())
            .map_err(|e| os_err(format!("writing {}/{path}", self.bucket_name()), e))
    }

    /// The object's bytes, `None` if it does not exist.
    fn get(&self, path: &ObjPath) -> Result<Option<Vec<u8>>, Error> {
        self.requests.get.fetch_add(1, Ordering::Relaxed);
        let (c, p) = (self.client.clone(), path.clone());
        match self.run(async move {
            match c.get(&p).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(os_err(format!("reading {}/{path}", self.bucket_name()), e)),
        }
    }

    fn exists(&self, path: &ObjPath) -> Result<bool, Error> {
        self.requests.head.fetch_add(1, Ordering::Relaxed);
        let (c, p) = (self.client.clone(), path.clone());
        match self.run(async move { c.head(&p).await }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(os_err(format!("looking up {}/{path}", self.bucket_name()), e)),
        }
    }

    fn delete(&self, path: &ObjPath) -> Result<(), Error> {
        self.requests.delete.fetch_add(1, Ordering::Relaxed);
        let (c, p) = (self.client.clone(), path.clone());
        match self.run(async move { c.delete(&p).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err(format!("deleting {}/{path}", self.bucket_name()), e)),
        }
    }

    /// With Object Lock: the object's state (HEAD), `Err(Error::Locked)` if it is retained.
    /// `None` for an ordinary bucket.
    fn check_lock(&self, path: &ObjPath) -> Result<Option<ObjectState>, Error> {
        let Some(lock) = self.object_lock.clone() else { return Ok(None) };
        self.requests.head.fetch_add(1, Ordering::Relaxed);
        let (l, key) = (lock.clone(), path.to_string());
        let state = self.run(async move { l.state(&key).await })?.unwrap_or_default();
        state.check(&lock.name(path.as_ref()), SystemTime::now())?;
        Ok(Some(state))
    }

    /// Deletes an object checked by [`check_lock`](Self::check_lock): by its version in a
    /// locked bucket, else as [`delete`](Self::delete) does.
    fn delete_checked(&self, path: &ObjPath, state: Option<ObjectState>) -> Result<(), Error> {
        match (self.object_lock.clone(), state) {
            (Some(lock), Some(state)) => {
                self.requests.delete.fetch_add(1, Ordering::Relaxed);
                let key = path.to_string();
                self.run(async move { lock.delete_version(&key, &state).await })
            }
            _ => self.delete(path),
        }
    }

    /// Every object under the key prefix `key_prefix` (a whole path segment): (path, size,
    /// last modified).
    fn list(&self, key_prefix: &str) -> Result<Vec<(ObjPath, u64, SystemTime)>, Error> {
        let c = self.client.clone();
        let prefix = ObjPath::from(key_prefix.trim_end_matches('/'));
        let counts = self.requests.clone();
        let r = self.run(async move {
            let mut out = Vec::new();
            let mut stream = c.list(Some(&prefix));
            // Pages of up to 1000 keys; counted as one request per 1000 objects (or part).
            counts.list.fetch_add(1, Ordering::Relaxed);
            while let Some(m) = stream.next().await {
                let m = m?;
                if out.len() % 1000 == 999 {
                    counts.list.fetch_add(1, Ordering::Relaxed);
                }
                out.push((m.location, m.size, SystemTime::from(m.last_modified)));
            }
            Ok::<_, object_store::Error>(out)
        });
        r.map_err(|e| os_err(format!("listing {}", self.name), e))
    }

    fn bucket_name(&self) -> &str {
        self.name.trim_end_matches('/')
    }

    /// Every chunk in the store with its size (a LIST of `chunks/`).
    fn list_chunks(&self) -> Result<Vec<(Digest, u64, SystemTime)>, Error> {
        let listed = self.list(&format!("{}chunks/", self.prefix))?;
        Ok(listed
            .into_iter()
            .filter_map(|(p, size, t)| Some((p.filename()?.parse::<Digest>().ok()?, size, t)))
            .collect())
    }

    /// Makes the store use `index` (the catalog's, shared by every engine node on this bucket)
    /// as its chunk index instead of the file in the cache directory; fills it from a LIST if
    /// it was never built from this store.
    pub fn with_shared_index(mut self, index: Arc<dyn SharedChunkIndex>) -> Result<S3Store, Error> {
        if index.built_from()?.as_deref() != Some(self.name.as_str()) {
            let listed: Vec<(Digest, u64)> = self.list_chunks()?.into_iter().map(|(d, s, _)| (d, s)).collect();
            index.fill(&self.name, &listed)?;
            tracing::info!("the catalog's chunk index of {} built from a listing ({} chunks)", self.name, listed.len());
        }
        self.shared = Some(index);
        Ok(self)
    }

    /// Which of `digests` the index lists as present.
    fn present(&self, digests: &[Digest]) -> Result<Vec<bool>, Error> {
        match &self.shared {
            Some(s) => s.present(digests),
            None => {
                let index = self.index()?;
                Ok(digests.iter().map(|d| index.contains(d)).collect())
            }
        }
    }

    /// The file chunk index, opened (or rebuilt from a LIST) on first use.
    fn index(&self) -> Result<&ChunkIndex, Error> {
        if let Some(i) = self.index.get() {
            return Ok(i);
        }
        let _one = self.index_init.lock().expect("lock");
        if let Some(i) = self.index.get() {
            return Ok(i);
        }
        let (index, origin) = ChunkIndex::open(&self.cache_dir.join("chunk-index"), &self.name, || {
            Ok(self.list_chunks()?.into_iter().map(|(d, s, _)| (d, s)).collect())
        })?;
        if origin == IndexOrigin::Rebuilt {
            tracing::info!("chunk index of {} rebuilt from a listing ({} chunks)", self.name, index.usage().0);
        }
        let _ = self.index.set(index);
        Ok(self.index.get().expect("set"))
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Not `drop(rt)`: that blocks, which panics when the store is dropped in async code.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ChunkSink for S3Store {
    /// With the shared index, asking is also a promise: the chunks reported present are
    /// protected from every node's collector until this writer ends (`crate::db::cluster`).
    fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, Error> {
        let present = match &self.shared {
            Some(s) => s.touch(digests)?,
            None => self.present(digests)?,
        };
        Ok(present.into_iter().map(|p| !p).collect())
    }

    fn put_chunk(&self, digest: &Digest, blob: &[u8]) -> Result<bool, Error> {
        check_quick(blob, digest)?;
        // Shared index: touched before the PUT, so no collector removes it in between.
        let present = match &self.shared {
            Some(s) => s.touch(std::slice::from_ref(digest))?[0],
            None => self.index()?.contains(digest),
        };
        if present {
            return Ok(false);
        }
        self.put(&self.path(&Self::chunk_key(digest)), blob.to_vec())?;
        match &self.shared {
            Some(s) => s.stored(digest, blob.len() as u64)?,
            None => self.index()?.added(digest, blob.len() as u64)?,
        }
        self.cache.put(digest, blob);
        Ok(true)
    }

    /// Each PUT is a round trip to the bucket: several in flight.
    fn puts_in_flight(&self) -> usize {
        PUTS_IN_FLIGHT
    }

    /// One GET of the base chunk (often from the cache), decoded and hashed here.
    fn piece_digests(&self, digest: &Digest, piece_size: u32) -> Result<Option<Vec<Digest>>, Error> {
        let mut dec = kura_imaging::chunk::Decoder::new()?;
        kura_imaging::pieced::stored_piece_digests(self, &mut dec, digest, piece_size).map(Some)
    }
}

impl ChunkSource for S3Store {
    fn get_chunk(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        if let Some(b) = self.cache.get(digest) {
            return Ok(b);
        }
        let blob = self.read_uncached(digest)?;
        if check_quick(&blob, digest).is_ok() {
            self.cache.put(digest, &blob);
        }
        Ok(blob)
    }

    /// Each GET is a round trip to the bucket: several in flight.
    fn gets_in_flight(&self) -> usize {
        PUTS_IN_FLIGHT
    }
}

impl SnapshotSink for S3Store {
    type Committed = String;

    fn commit(&self, manifest: &Manifest) -> Result<String, Error> {
        self.commit_manifest(manifest)
    }

    /// Nothing to undo: stored chunks are unreferenced until a snapshot names them.
    fn abort(&self) {}
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn has(&self, d: &Digest) -> bool {
        self.present(std::slice::from_ref(d)).map(|p| p[0]).unwrap_or(false)
    }

    fn flush_staged(&self) -> Result<usize, Error> {
        Ok(0) // every chunk is durable when its PUT returns
    }

    fn commit_manifest(&self, manifest: &Manifest) -> Result<String, Error> {
        let digests = manifest.unique_digests();
        for (d, present) in digests.iter().zip(self.present(&digests)?) {
            if !present {
                return Err(Error::ChunkMissing { digest: d.to_hex() });
            }
        }
        let bytes = manifest.encode()?;
        let id = Manifest::id_of(&bytes);
        self.put(&self.path(&format!("snapshots/{id}.kmf")), bytes)?;
        Ok(id)
    }

    fn snapshot_ids(&self) -> Result<Vec<String>, Error> {
        let mut ids: Vec<String> = self
            .list(&format!("{}snapshots/", self.prefix))?
            .into_iter()
            .filter_map(|(p, _, _)| {
                let id = p.filename()?.strip_suffix(".kmf")?.to_string();
                (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn manifest_bytes(&self, id: &str) -> Result<Vec<u8>, Error> {
        let Some(bytes) = self.get(&self.path(&format!("snapshots/{id}.kmf")))? else {
            return Err(Error::Store { message: format!("no snapshot {id} in the store"), retryable: false });
        };
        if Manifest::id_of(&bytes) != id {
            return Err(Error::Manifest(format!("snapshot {id}: manifest content does not match its id (damaged)")));
        }
        Ok(bytes)
    }

    fn manifest_exists(&self, id: &str) -> bool {
        self.exists(&self.path(&format!("snapshots/{id}.kmf"))).unwrap_or(false)
    }

    fn remove_manifest(&self, id: &str) -> Result<(), Error> {
        let path = self.path(&format!("snapshots/{id}.kmf"));
        let state = self.check_lock(&path)?;
        self.delete_checked(&path, state)
    }

    fn check_manifest_removable(&self, id: &str) -> Result<(), Error> {
        self.check_lock(&self.path(&format!("snapshots/{id}.kmf"))).map(|_| ())
    }

    fn locked_until(&self, written: SystemTime) -> Option<i64> {
        self.object_lock.as_ref()?.locked_by_default(written, SystemTime::now()).map(|(_, until)| until)
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(Digest, u64, SystemTime) -> Result<(), Error>) -> Result<(), Error> {
        for (d, size, t) in self.list_chunks()? {
            f(d, size, t)?;
        }
        Ok(())
    }

    fn remove_chunk(&self, d: &Digest) -> Result<bool, Error> {
        self.remove_chunk_untouched_since(d, SystemTime::now() + Duration::from_secs(365 * 86400))
    }

    fn remove_chunk_untouched_since(&self, d: &Digest, cutoff: SystemTime) -> Result<bool, Error> {
        let path = self.path(&Self::chunk_key(d));
        // A retained chunk is refused before the index forgets it; the index forgets it durably
        // before the DELETE: it must never claim a chunk the store lacks.
        let state = self.check_lock(&path)?;
        self.cache.remove(d);
        let mut state = Some(state);
        match &self.shared {
            Some(s) => s.remove_if_untouched(d, cutoff, &mut || self.delete_checked(&path, state.take().flatten())),
            None => {
                self.index()?.before_remove(d)?;
                self.delete_checked(&path, state.take().flatten())?;
                Ok(true)
            }
        }
    }

    fn quarantine_chunk(&self, d: &Digest) -> Result<String, Error> {
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let rel = format!("quarantine/{d}.{stamp}");
        let (from, to) = (self.path(&Self::chunk_key(d)), self.path(&rel));
        self.requests.copy.fetch_add(1, Ordering::Relaxed);
        let (c, f, t) = (self.client.clone(), from.clone(), to.clone());
        self.run(async move { c.copy(&f, &t).await })
            .map_err(|e| os_err(format!("quarantining chunk {d} in {}", self.name), e))?;
        match self.remove_chunk(d) {
            // Object Lock retains the damaged object: it stays, but the index forgets it, so the
            // next capture's PUT makes a sound version the current one.
            Err(Error::Locked { .. }) => {
                match &self.shared {
                    Some(s) => s.forget(d)?,
                    None => self.index()?.before_remove(d)?,
                }
                self.cache.remove(d);
            }
            r => {
                r?;
            }
        }
        Ok(format!("{}/{rel}", self.name.trim_end_matches('/')))
    }

    fn clean_tmp(&self) -> Result<usize, Error> {
        Ok(0) // PUTs are atomic: an interrupted one leaves nothing
    }

    fn lock(&self, _exclusive: bool) -> Result<StoreLock, Error> {
        // This process holds its cache directory's lock from open to drop.
        Ok(StoreLock::held_elsewhere())
    }

    fn read_uncached(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        self.get(&self.path(&Self::chunk_key(d)))?.ok_or_else(|| Error::ChunkMissing { digest: d.to_hex() })
    }

    fn requests(&self) -> Vec<(&'static str, u64)> {
        ["put", "get", "head", "list", "delete", "copy"].into_iter().zip(self.requests.snapshot()).collect()
    }

    fn cache_hits_misses(&self) -> Option<(u64, u64)> {
        let s = self.cache.stats();
        Some((s.hits, s.misses))
    }

    fn usage(&self) -> Result<StoreUsage, Error> {
        let (chunks, bytes) = match &self.shared {
            Some(s) => s.usage()?,
            None => self.index()?.usage(),
        };
        Ok(StoreUsage { chunks, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_imaging::chunk::Encoder;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let v: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn spec_parsing_and_refusals() {
        let none = env_of(&[]);
        let s =
            S3Spec::parse("s3://kura-backups/site-a/store?endpoint=http://127.0.0.1:8333&region=eu-1", &none).unwrap();
        assert_eq!(
            s,
            S3Spec {
                bucket: "kura-backups".into(),
                prefix: "site-a/store/".into(),
                endpoint: Some("http://127.0.0.1:8333".into()),
                region: "eu-1".into(),
                path_style: true,
                credentials_file: None,
            }
        );
        assert_eq!(s.name(), "s3://kura-backups/site-a/store");
        let aws = S3Spec::parse("s3://bucket", &env_of(&[("KURA_S3_CREDENTIALS", "/etc/kura/s3")])).unwrap();
        assert_eq!((aws.prefix.as_str(), aws.path_style, aws.region.as_str()), ("", false, "us-east-1"));
        assert_eq!(aws.credentials_file.as_deref(), Some(Path::new("/etc/kura/s3")));
        for bad in
            ["s3://B/x", "s3://ab", "s3://bucket/a/../b", "s3://bucket?endpoint=ftp://x", "s3://bucket?color=red"]
        {
            let e = S3Spec::parse(bad, &none).unwrap_err().to_string();
            assert!(e.contains("bad S3 store"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_credentials_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, "# kura\naccess_key_id = AK\nsecret_access_key = SK\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::load(Some(&path), &env_of(&[])).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::load(Some(&path), &env_of(&[])).unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AK", "SK"));
        let e = Credentials::load(None, &env_of(&[])).err().unwrap().to_string();
        assert!(e.contains("no S3 credentials"), "{e}");
        let c =
            Credentials::load(None, &env_of(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")])).unwrap();
        assert_eq!(c.access_key_id, "a");
    }

    fn blob(data: &[u8]) -> (Digest, Vec<u8>) {
        let d = Digest::of(data);
        let mut out = Vec::new();
        Encoder::new(3).unwrap().encode_into(&d, data, &mut out).unwrap();
        (d, out)
    }

    /// The store over the in-memory object store: no request per digest for presence, the
    /// cache serves repeated reads, the index survives a reopen, GC removal reaches the bucket.
    #[test]
    fn chunks_index_and_cache_over_an_in_memory_bucket() {
        let bucket: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheOptions { dir: Some(dir.path().join("cache")), max_bytes: 1 << 20 };
        let open = |create| S3Store::with_client(bucket.clone(), "s3://b/p", "p/", &cache, create);
        let e = open(false).err().unwrap().to_string();
        assert!(e.contains("is not a Kura store"), "{e}");
        let store = open(true).unwrap();
        let (a, ab) = blob(&b"chunk a".repeat(500));
        let (b, _) = blob(b"chunk b");
        assert!(store.put_chunk(&a, &ab).unwrap());
        assert!(!store.put_chunk(&a, &ab).unwrap());
        assert_eq!(store.missing(&[a, b]).unwrap(), vec![false, true]);
        assert_eq!(store.get_chunk(&a).unwrap(), ab);
        let [put, get, head, ..] = store.requests().snapshot();
        // The marker's GET, the emptiness LIST, the marker's PUT, one chunk PUT; the read was cached.
        assert_eq!((put, get, head), (2, 1, 0));
        drop(store);

        let store = open(false).unwrap();
        assert!(store.has(&a) && !store.has(&b));
        assert_eq!(store.requests().snapshot()[3], 0, "the index was listed although its file was intact");
        assert_eq!(store.usage().unwrap(), StoreUsage { chunks: 1, bytes: ab.len() as u64 });
        assert!(store.remove_chunk(&a).unwrap());
        assert!(!store.has(&a));
        assert!(matches!(store.get_chunk(&a), Err(Error::ChunkMissing { .. })));
        drop(store);

        // The index lost: rebuilt from a LIST.
        std::fs::remove_file(dir.path().join("cache/chunk-index")).unwrap();
        let store = open(false).unwrap();
        store.put_chunk(&b, &blob(b"chunk b").1).unwrap();
        drop(store);
        std::fs::remove_file(dir.path().join("cache/chunk-index")).unwrap();
        let store = open(false).unwrap();
        assert!(store.has(&b) && !store.has(&a));
        assert_eq!(store.requests().snapshot()[3], 1);
    }
}
