//! The client side of the protocol: a blocking HTTP client used by the `kura` CLI and the
//! netbooted agent, and the [`RemoteUpload`] / [`RemoteSource`] that let the imaging flows
//! capture to and restore from an engine exactly as they do with a local store.
//!
//! Retries: a request whose failure [`ErrorKind::is_retryable`] (no answer, 500/502/503/429)
//! is sent again a few times with backoff; every other failure is returned at once as a
//! [`ProtocolError`] of its kind. Every route the client retries is idempotent on the engine
//! (a commit included: the same manifest committed twice to one session gets one snapshot).

pub mod tls;

use crate::error::{ErrorBody, ErrorKind, ProtocolError};
use crate::jobs::{Finish, Job, JobDetail, Progress};
use crate::routes;
use crate::uploads::{self, BeginUpload, Committed, UploadStarted, MISSING_BATCH};
use kura_imaging::chunk::{ChunkSink, ChunkSource, Digest, MAX_CHUNK_SIZE};
use kura_imaging::diskset::{SnapshotFile, SnapshotSet};
use kura_imaging::flow::SnapshotSink;
use kura_imaging::manifest::Manifest;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Default per-request timeout: a 1 MiB chunk over a slow, busy link still fits.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts per request when failures are retryable.
pub const TRIES: u32 = 4;
/// Chunk uploads a capture keeps in flight to the engine ([`ChunkSink::puts_in_flight`]),
/// unless `KURA_UPLOADS_IN_FLIGHT` (0–64; 0: each compressing worker waits for its own uploads)
/// says otherwise: a long, fat link (a WAN to another site) wants more.
pub const PUTS_IN_FLIGHT: usize = 4;
const PUTS_IN_FLIGHT_ENV: &str = "KURA_UPLOADS_IN_FLIGHT";

/// Chunk downloads a restore keeps in flight beyond its decompressing threads
/// ([`ChunkSource::gets_in_flight`]), unless `KURA_DOWNLOADS_IN_FLIGHT` (0–64) says otherwise.
pub const GETS_IN_FLIGHT: usize = 4;
const GETS_IN_FLIGHT_ENV: &str = "KURA_DOWNLOADS_IN_FLIGHT";

/// Memory a capture's parent manifest ([`RemoteUpload::parent`]) may take decoded: it is held
/// for the whole capture beside the capture's own buffers. 1 GiB holds the manifest of a disk
/// of about 15 TiB in 1 MiB chunks; a larger one is refused (the capture then goes without a
/// parent, storing changed chunks whole).
pub const MAX_PARENT_DECODED: u64 = 1 << 30;

fn puts_in_flight() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| in_flight_from_env(PUTS_IN_FLIGHT_ENV, PUTS_IN_FLIGHT))
}

fn gets_in_flight() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| in_flight_from_env(GETS_IN_FLIGHT_ENV, GETS_IN_FLIGHT))
}

/// A tuning knob from the environment: a bad value is warned about and the default used (no
/// capture or restore fails on it).
fn in_flight_from_env(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n <= 64 => n,
            _ => {
                tracing::warn!("{var}={v:?} is not a number from 0 to 64: using {default}");
                default
            }
        },
        Err(_) => default,
    }
}

/// Where the engine is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host:port` or `http://host:port`.
    pub url: String,
    pub token: String,
    /// Pinned server certificate (SHA-256), required for https.
    pub fingerprint: Option<String>,
    /// The machine's MAC address, sent by agents (`X-Kura-Mac`).
    pub mac: Option<crate::MacAddr>,
    /// Longest one request may take before it counts as failed (and is retried); default
    /// [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// The header an agent names its machine's MAC address in.
pub const MAC_HEADER: &str = "X-Kura-Mac";

#[derive(Clone)]
pub struct Client {
    http: Http,
    base: String,
    token: String,
    mac: Option<crate::MacAddr>,
}

/// An error and its sources on one line (reqwest's own message hides the cause, e.g. a
/// certificate fingerprint mismatch).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = c.source();
    }
    msg
}

impl Client {
    pub fn new(ep: &Endpoint) -> Result<Client, ProtocolError> {
        let base = ep.url.trim_end_matches('/').to_string();
        let mut b =
            Http::builder().timeout(ep.timeout.unwrap_or(DEFAULT_TIMEOUT)).connect_timeout(Duration::from_secs(10));
        if base.starts_with("https://") {
            let fp = ep.fingerprint.as_deref().ok_or_else(|| {
                ProtocolError::new(
                    ErrorKind::BadRequest,
                    "an https server needs its certificate fingerprint: pass --fingerprint (or KURA_FINGERPRINT) \
                     with the value `kura serve` printed",
                )
            })?;
            let config = tls::pinned_client_config(fp).map_err(|e| ProtocolError::new(ErrorKind::BadRequest, e))?;
            b = b.use_preconfigured_tls(config);
        } else if !base.starts_with("http://") {
            return Err(ProtocolError::new(
                ErrorKind::BadRequest,
                format!("server URL {base:?} must start with https:// or http://"),
            ));
        }
        let http =
            b.build().map_err(|e| ProtocolError::new(ErrorKind::Internal, format!("building the HTTP client: {e}")))?;
        Ok(Client { http, base, token: ep.token.clone(), mac: ep.mac })
    }

    /// The engine's base URL (`https://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        let rb = rb.bearer_auth(&self.token);
        match &self.mac {
            Some(m) => rb.header(MAC_HEADER, m.to_string()),
            None => rb,
        }
    }

    /// Sends a request built by `make` (called again for each retry); maps failures.
    fn send(&self, what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response, ProtocolError> {
        self.send_tries(what, TRIES, make)
    }

    /// [`Client::send`] with at most `tries` attempts (1: never resent, for actions that must
    /// not run twice, such as a power cycle).
    fn send_tries(&self, what: &str, tries: u32, make: impl Fn() -> RequestBuilder) -> Result<Response, ProtocolError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.auth(make()).send() {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().unwrap_or_default();
                    let (msg, kind) = match serde_json::from_str::<ErrorBody>(&body) {
                        Ok(b) => (b.error, b.kind.unwrap_or_else(|| ErrorKind::from_status(status.as_u16()))),
                        Err(_) => (body, ErrorKind::from_status(status.as_u16())),
                    };
                    ProtocolError::new(kind, format!("{what}: server answered {status}: {msg}"))
                }
                Err(e) => {
                    let chain = error_chain(&e);
                    // A refused certificate will be refused again.
                    let kind = if chain.contains("certificate") || chain.contains("fingerprint") {
                        ErrorKind::Tls
                    } else if e.is_builder() {
                        ErrorKind::BadRequest
                    } else {
                        ErrorKind::Transport
                    };
                    ProtocolError::new(kind, format!("{what}: {chain} (server {})", self.base))
                }
            };
            if !err.is_retryable() || attempt >= tries {
                return Err(err);
            }
            tracing::warn!("{} ({}); retrying in {delay:?}", err.message, attempt);
            std::thread::sleep(delay);
            delay *= 3;
        }
    }

    fn json<T: DeserializeOwned>(&self, what: &str, resp: Response) -> Result<T, ProtocolError> {
        resp.json().map_err(|e| ProtocolError::new(ErrorKind::BadReply, format!("{what}: unreadable answer: {e}")))
    }

    fn bytes(&self, what: &str, resp: Response) -> Result<Vec<u8>, ProtocolError> {
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| ProtocolError::new(ErrorKind::Transport, format!("{what}: reading the answer: {e}")))
    }

    /// `GET path` (a path from [`routes`]), decoding the JSON answer.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ProtocolError> {
        let what = format!("GET {path}");
        let resp = self.send(&what, || self.http.get(self.url(path)))?;
        self.json(&what, resp)
    }

    /// POSTs JSON to a route that answers with no body (e.g. job progress).
    pub fn post_empty(&self, path: &str, body: &impl Serialize) -> Result<(), ProtocolError> {
        self.send(&format!("POST {path}"), || self.http.post(self.url(path)).json(body)).map(|_| ())
    }

    /// DELETEs a resource (routes that answer with no body).
    pub fn delete(&self, path: &str) -> Result<(), ProtocolError> {
        self.send(&format!("DELETE {path}"), || self.http.delete(self.url(path))).map(|_| ())
    }

    pub fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, ProtocolError> {
        let what = format!("POST {path}");
        let resp = self.send(&what, || self.http.post(self.url(path)).json(body))?;
        self.json(&what, resp)
    }

    /// POSTs JSON once, never resending it (the action must not run twice).
    pub fn post_json_once<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, ProtocolError> {
        let what = format!("POST {path}");
        let resp = self.send_tries(&what, 1, || self.http.post(self.url(path)).json(body))?;
        self.json(&what, resp)
    }

    pub fn put_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, ProtocolError> {
        let what = format!("PUT {path}");
        let resp = self.send(&what, || self.http.put(self.url(path)).json(body))?;
        self.json(&what, resp)
    }

    /// DELETEs `path` and decodes the JSON answer.
    pub fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ProtocolError> {
        let what = format!("DELETE {path}");
        let resp = self.send(&what, || self.http.delete(self.url(path)))?;
        self.json(&what, resp)
    }

    pub fn begin_upload(&self, req: &BeginUpload) -> Result<UploadStarted, ProtocolError> {
        self.post_json(routes::UPLOAD_BEGIN.path, req)
    }

    /// Commits the session's snapshot. Safe to retry: the engine answers a repeated commit of
    /// the same manifest with the same snapshot.
    pub fn commit(&self, upload: &str, manifest: &[u8]) -> Result<Committed, ProtocolError> {
        let what = "committing the snapshot";
        let path = routes::upload_commit(upload);
        let id = Manifest::id_of(manifest);
        let resp = self.send(what, || {
            self.http.post(self.url(&path)).header(uploads::SNAPSHOT_HEADER, &id).body(manifest.to_vec())
        })?;
        self.json(what, resp)
    }

    pub fn abort(&self, upload: &str) -> Result<(), ProtocolError> {
        let path = routes::upload_abort(upload);
        self.send("aborting the upload", || self.http.delete(self.url(&path))).map(|_| ())
    }

    /// The manifest of `snapshot`, checked against its id (a snapshot id is the digest of its
    /// encoded manifest) and decoded.
    pub fn manifest(&self, snapshot: &str) -> Result<Manifest, ProtocolError> {
        let bytes = self.manifest_bytes(snapshot)?;
        if kura_imaging::diskset::is_set(&bytes) {
            return Err(ProtocolError::new(
                ErrorKind::BadRequest,
                format!(
                    "snapshot {snapshot} is a set of several disks: restore it onto a machine with `kura restore HOST`"
                ),
            ));
        }
        Manifest::decode(&bytes)
            .map_err(|e| ProtocolError::new(ErrorKind::Corrupt, format!("decoding the manifest of {snapshot}: {e}")))
    }

    /// The encoded manifest of `snapshot`, checked against its id.
    pub fn manifest_bytes(&self, snapshot: &str) -> Result<Vec<u8>, ProtocolError> {
        let path = routes::snapshot_manifest(snapshot);
        let what = format!("fetching snapshot {snapshot}");
        let resp = self.send(&what, || self.http.get(self.url(&path)))?;
        let bytes = self.bytes(&what, resp)?;
        if Manifest::id_of(&bytes) != snapshot {
            return Err(ProtocolError::new(
                ErrorKind::Corrupt,
                format!("the engine sent a manifest that does not match snapshot id {snapshot}"),
            ));
        }
        Ok(bytes)
    }

    /// The file of `snapshot` (a one-disk manifest or a snapshot set), checked against its id
    /// and decoded.
    pub fn snapshot_file(&self, snapshot: &str) -> Result<SnapshotFile, ProtocolError> {
        let bytes = self.manifest_bytes(snapshot)?;
        SnapshotFile::decode(&bytes)
            .map_err(|e| ProtocolError::new(ErrorKind::Corrupt, format!("decoding snapshot {snapshot}: {e}")))
    }

    pub fn job(&self, id: i64) -> Result<JobDetail, ProtocolError> {
        self.get_json(&routes::job(id))
    }

    pub fn progress(&self, id: i64, p: &Progress) -> Result<(), ProtocolError> {
        self.post_empty(&routes::job_progress(id), p)
    }

    pub fn finish(&self, id: i64, f: &Finish) -> Result<Job, ProtocolError> {
        self.post_json(&routes::job_finish(id), f)
    }

    fn digest_query(&self, what: &str, path: &str, part: &[Digest]) -> Result<Vec<u8>, ProtocolError> {
        let body = uploads::encode_digests(part);
        let resp = self.send(what, || self.http.post(self.url(path)).body(body.clone()))?;
        let bytes = self.bytes(what, resp)?;
        if bytes.len() != part.len() {
            return Err(ProtocolError::new(
                ErrorKind::BadReply,
                format!("{what}: asked about {} chunks, got {} answers", part.len(), bytes.len()),
            ));
        }
        Ok(bytes)
    }
}

/// An upload session on the engine: a capture's chunks go to it, and it ends with the commit of
/// the manifest (which makes the snapshot) or an abort.
pub struct RemoteUpload {
    pub client: Client,
    /// The session, and the chunk size the engine wants.
    pub started: UploadStarted,
}

impl RemoteUpload {
    /// Starts an upload session.
    pub fn begin(client: &Client, req: &BeginUpload) -> Result<RemoteUpload, ProtocolError> {
        Ok(RemoteUpload { client: client.clone(), started: client.begin_upload(req)? })
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.started.upload
    }

    /// The parent of this capture (`kura_imaging::capture::CaptureOptions::parent`): the
    /// manifest of the session host's latest snapshot on the engine, or with `disk`, of that
    /// disk's member of the host's latest snapshot set. `None` when the engine has none (404;
    /// an engine older than the route answers 404 too). The engine then answers `pieces` about
    /// this manifest's chunks. (An unknown session is a 404 too: the capture's first request
    /// then fails with it.)
    pub fn parent(&self, disk: Option<&str>) -> Result<Option<Manifest>, ProtocolError> {
        let path = routes::upload_parent(self.id(), disk);
        let what = "fetching the parent snapshot";
        let resp = match self.client.send(what, || self.client.http.get(self.client.url(&path))) {
            Ok(resp) => resp,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let limit = routes::limits::MANIFEST as u64;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(resp, limit + 1), &mut bytes)
            .map_err(|e| ProtocolError::new(ErrorKind::Transport, format!("{what}: reading the answer: {e}")))?;
        if bytes.len() as u64 > limit {
            return Err(ProtocolError::new(ErrorKind::BadReply, format!("{what}: more than {limit} bytes")));
        }
        Manifest::decode_within(&bytes, MAX_PARENT_DECODED)
            .map(Some)
            .map_err(|e| ProtocolError::new(ErrorKind::BadReply, format!("{what}: decoding it: {e}")))
    }
}

impl SnapshotSink for RemoteUpload {
    type Committed = Committed;

    fn commit(&self, manifest: &Manifest) -> Result<Committed, kura_imaging::Error> {
        let bytes = manifest.encode()?;
        self.client.commit(self.id(), &bytes).map_err(|e| e.into_imaging(None))
    }

    /// A set goes to the same commit route: the engine tells it from a manifest by its magic.
    fn commit_set(&self, set: &SnapshotSet) -> Result<Committed, kura_imaging::Error> {
        let bytes = set.encode()?;
        self.client.commit(self.id(), &bytes).map_err(|e| e.into_imaging(None))
    }

    fn abort(&self) {
        let _ = self.client.abort(self.id());
    }
}

impl RemoteUpload {
    /// Uploads one encoded chunk held in shared memory (a retry sends the same bytes, not a
    /// copy); `true` if it was new to the engine.
    pub fn put_shared_chunk(&self, digest: &Digest, blob: bytes::Bytes) -> Result<bool, kura_imaging::Error> {
        let path = routes::upload_chunk(self.id(), digest);
        let what = format!("uploading chunk {digest}");
        let resp = self
            .client
            .send(&what, || self.client.http.put(self.client.url(&path)).body(blob.clone()))
            .map_err(|e| e.into_imaging(Some(digest)))?;
        Ok(resp.status() == reqwest::StatusCode::CREATED)
    }
}

impl ChunkSink for RemoteUpload {
    fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, kura_imaging::Error> {
        let path = routes::upload_missing(self.id());
        let mut out = Vec::with_capacity(digests.len());
        for part in digests.chunks(MISSING_BATCH) {
            let answer = self
                .client
                .digest_query("asking which chunks the server lacks", &path, part)
                .map_err(|e| e.into_imaging(None))?;
            out.extend(answer.iter().map(|&b| b == uploads::missing::MISSING));
        }
        Ok(out)
    }

    fn put_chunk(&self, digest: &Digest, blob: &[u8]) -> Result<bool, kura_imaging::Error> {
        self.put_shared_chunk(digest, bytes::Bytes::copy_from_slice(blob))
    }

    /// Each chunk is one request to the engine: a few in flight hide the round trip and the
    /// engine's check and write behind the client's compression.
    fn puts_in_flight(&self) -> usize {
        puts_in_flight()
    }

    /// The engine reads, decodes and hashes the base chunk and sends 32 bytes per piece. One
    /// chunk per request (the route takes up to `PIECES_BATCH`): the capture asks for one base
    /// at a time from its compressing workers, only for chunks that changed, so batching would
    /// mean reshaping the capture for a round trip per changed chunk. A count of 0 (the engine
    /// no longer holds the base intact) stores the chunk whole.
    fn piece_digests(&self, digest: &Digest, piece_size: u32) -> Result<Option<Vec<Digest>>, kura_imaging::Error> {
        let path = routes::upload_pieces(self.id(), piece_size);
        let what = format!("asking for the pieces of chunk {digest}");
        let body = uploads::encode_digests(std::slice::from_ref(digest));
        let resp = match self.client.send(&what, || self.client.http.post(self.client.url(&path)).body(body.clone())) {
            Ok(resp) => resp,
            // The engine will not answer this question (a base it does not count among the
            // session's parents, a piece size it refuses): the chunk is stored whole, as
            // without a parent. Anything else (the session gone, the engine unreachable after
            // the retries) fails the capture as a chunk upload's failure would.
            Err(e) if matches!(e.kind, ErrorKind::Forbidden | ErrorKind::BadRequest) => {
                tracing::warn!("storing chunk {digest} whole: {}", e.message);
                return Ok(None);
            }
            Err(e) => return Err(e.into_imaging(None)),
        };
        let bytes = self.client.bytes(&what, resp).map_err(|e| e.into_imaging(None))?;
        let mut answers = uploads::decode_pieces(&bytes, 1, MAX_CHUNK_SIZE, piece_size).map_err(|e| {
            ProtocolError::new(ErrorKind::BadReply, format!("{what}: unreadable answer: {e}")).into_imaging(None)
        })?;
        let pieces = answers.pop().expect("one answer");
        Ok((!pieces.is_empty()).then_some(pieces))
    }
}

/// Restores from the engine; each chunk is one GET (run in parallel by the restore workers).
pub struct RemoteSource {
    pub client: Client,
}

impl ChunkSource for RemoteSource {
    fn check_chunks(&self, digests: &[Digest]) -> Result<Vec<Option<String>>, kura_imaging::Error> {
        let mut out = Vec::with_capacity(digests.len());
        for part in digests.chunks(MISSING_BATCH) {
            let answer = self
                .client
                .digest_query("checking chunks on the server", routes::CHUNKS_CHECK.path, part)
                .map_err(|e| e.into_imaging(None))?;
            out.extend(answer.iter().map(|&b| match b {
                uploads::check::OK => None,
                uploads::check::MISSING => Some("missing".to_string()),
                _ => Some("damaged on the server (header or checksum)".to_string()),
            }));
        }
        Ok(out)
    }

    fn get_chunk(&self, digest: &Digest) -> Result<Vec<u8>, kura_imaging::Error> {
        let path = routes::chunk(digest);
        let what = format!("fetching chunk {digest}");
        let resp = self
            .client
            .send(&what, || self.client.http.get(self.client.url(&path)))
            .map_err(|e| e.into_imaging(Some(digest)))?;
        self.client.bytes(&what, resp).map_err(|e| e.into_imaging(Some(digest)))
    }

    /// Each chunk is one request to the engine: a few more in flight than decompressing
    /// threads hide the round trip and the engine's read.
    fn gets_in_flight(&self) -> usize {
        gets_in_flight()
    }
}
