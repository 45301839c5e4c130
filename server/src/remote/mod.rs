//! The client side of the wire protocol (`docs/protocol.md`): a blocking HTTP client used by
//! the CLI and the agent, and the [`RemoteSink`] / [`RemoteSource`] that let the imaging
//! pipelines capture to and restore from an engine exactly as they do with a local store.
//!
//! Transient failures (connection reset, timeouts, 5xx other than 507) are retried a few
//! times with backoff; everything else fails at once with the server's message.

pub mod tls;

use kura_imaging::chunk::{ChunkSink, ChunkSource, Digest};
use kura_imaging::Error;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::time::Duration;

/// Most digests asked about in one `missing` request.
pub const MISSING_BATCH: usize = 4096;

/// Where the server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host:port` or `http://host:port`.
    pub url: String,
    pub token: String,
    /// Pinned server certificate (SHA-256), required for https.
    pub fingerprint: Option<String>,
    /// The machine's MAC address, sent by agents (`X-Kura-Mac`).
    pub mac: Option<String>,
    /// Longest one request may take before it counts as failed (and is retried); default
    /// [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// Default per-request timeout: a 1 MiB chunk over a slow, busy link still fits.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Client {
    http: Http,
    base: String,
    token: String,
    mac: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UploadStarted {
    pub upload: String,
    pub chunk_size: u32,
}

#[derive(Debug, Deserialize, serde::Serialize)]
pub struct Committed {
    pub snapshot: String,
    pub new_bytes: u64,
    pub reused_bytes: u64,
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

fn remote_err(message: String, retryable: bool) -> Error {
    Error::Store { message, retryable }
}

impl Client {
    pub fn new(ep: &Endpoint) -> Result<Client, Error> {
        let base = ep.url.trim_end_matches('/').to_string();
        let mut b =
            Http::builder().timeout(ep.timeout.unwrap_or(DEFAULT_TIMEOUT)).connect_timeout(Duration::from_secs(10));
        if base.starts_with("https://") {
            let fp = ep.fingerprint.as_deref().ok_or_else(|| {
                remote_err(
                    "an https server needs its certificate fingerprint: pass --fingerprint (or KURA_FINGERPRINT) \
                     with the value `kura serve` printed"
                        .into(),
                    false,
                )
            })?;
            let config = tls::pinned_client_config(fp).map_err(|e| remote_err(e, false))?;
            b = b.use_preconfigured_tls(config);
        } else if !base.starts_with("http://") {
            return Err(remote_err(format!("server URL {base:?} must start with https:// or http://"), false));
        }
        let http = b.build().map_err(|e| remote_err(format!("building the HTTP client: {e}"), false))?;
        Ok(Client { http, base, token: ep.token.clone(), mac: ep.mac.clone() })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        let rb = rb.bearer_auth(&self.token);
        match &self.mac {
            Some(m) => rb.header("X-Kura-Mac", m),
            None => rb,
        }
    }

    /// Sends a request built by `make` (called again for each retry); maps failures.
    fn send(&self, what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response, Error> {
        self.send_tries(what, 4, make)
    }

    /// [`Client::send`] with at most `tries` attempts (1: never resent, for actions that must
    /// not run twice, such as a power cycle).
    fn send_tries(&self, what: &str, tries: u32, make: impl Fn() -> RequestBuilder) -> Result<Response, Error> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.auth(make()).send();
            let retry = match r {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().unwrap_or_default();
                    let msg = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or(body);
                    let transient = status.is_server_error() && status != StatusCode::INSUFFICIENT_STORAGE;
                    if !transient || attempt >= tries {
                        let e = remote_err(format!("{what}: server answered {status}: {msg}"), transient);
                        return Err(match status {
                            StatusCode::UNPROCESSABLE_ENTITY => {
                                Error::ChunkCorrupt { digest: what.into(), reason: msg }
                            }
                            _ => e,
                        });
                    }
                    format!("{status}: {msg}")
                }
                Err(e) => {
                    let chain = error_chain(&e);
                    // A refused certificate will be refused again: say why at once.
                    let tls = chain.contains("certificate") || chain.contains("fingerprint");
                    if attempt >= tries || e.is_builder() || tls {
                        return Err(remote_err(format!("{what}: {chain} (server {})", self.base), !tls));
                    }
                    chain
                }
            };
            tracing::warn!("{what} failed ({retry}); retrying in {delay:?}");
            std::thread::sleep(delay);
            delay *= 3;
        }
    }

    fn json<T: DeserializeOwned>(&self, what: &str, resp: Response) -> Result<T, Error> {
        resp.json().map_err(|e| remote_err(format!("{what}: unreadable answer: {e}"), false))
    }

    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let what = format!("GET {path}");
        let resp = self.send(&what, || self.http.get(self.url(path)))?;
        self.json(&what, resp)
    }

    /// POSTs JSON to a route that answers with no body (e.g. job progress).
    pub fn post_empty(&self, path: &str, body: &serde_json::Value) -> Result<(), Error> {
        self.send(&format!("POST {path}"), || self.http.post(self.url(path)).json(body)).map(|_| ())
    }

    /// DELETEs a resource (routes that answer with no body).
    pub fn delete(&self, path: &str) -> Result<(), Error> {
        self.send(&format!("DELETE {path}"), || self.http.delete(self.url(path))).map(|_| ())
    }

    pub fn post_json<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T, Error> {
        let what = format!("POST {path}");
        let resp = self.send(&what, || self.http.post(self.url(path)).json(body))?;
        self.json(&what, resp)
    }

    /// POSTs JSON once, never resending it (the action must not run twice).
    pub fn post_json_once<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T, Error> {
        let what = format!("POST {path}");
        let resp = self.send_tries(&what, 1, || self.http.post(self.url(path)).json(body))?;
        self.json(&what, resp)
    }

    pub fn put_json<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T, Error> {
        let what = format!("PUT {path}");
        let resp = self.send(&what, || self.http.put(self.url(path)).json(body))?;
        self.json(&what, resp)
    }

    /// DELETEs `path` and decodes the JSON answer.
    pub fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let what = format!("DELETE {path}");
        let resp = self.send(&what, || self.http.delete(self.url(path)))?;
        self.json(&what, resp)
    }

    pub fn begin_upload(
        &self,
        host: &str,
        name: Option<&str>,
        kind: &str,
        job: Option<i64>,
    ) -> Result<UploadStarted, Error> {
        self.post_json("/uploads", &serde_json::json!({"host": host, "name": name, "kind": kind, "job": job}))
    }

    pub fn commit(&self, upload: &str, manifest: &[u8]) -> Result<Committed, Error> {
        let what = "committing the snapshot";
        let path = format!("/uploads/{upload}/commit");
        let resp = self.send(what, || self.http.post(self.url(&path)).body(manifest.to_vec()))?;
        self.json(what, resp)
    }

    pub fn abort(&self, upload: &str) -> Result<(), Error> {
        let path = format!("/uploads/{upload}");
        self.send("aborting the upload", || self.http.delete(self.url(&path))).map(|_| ())
    }

    pub fn manifest(&self, snapshot: &str) -> Result<Vec<u8>, Error> {
        let path = format!("/snapshots/{snapshot}/manifest");
        let resp = self.send(&format!("fetching snapshot {snapshot}"), || self.http.get(self.url(&path)))?;
        resp.bytes().map(|b| b.to_vec()).map_err(|e| remote_err(format!("reading manifest {snapshot}: {e}"), true))
    }
}

/// Captures into an upload session on the engine.
pub struct RemoteSink {
    pub client: Client,
    pub upload: String,
}

impl ChunkSink for RemoteSink {
    fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, Error> {
        let mut out = Vec::with_capacity(digests.len());
        for part in digests.chunks(MISSING_BATCH) {
            let body: Vec<u8> = part.iter().flat_map(|d| d.0).collect();
            let path = format!("/uploads/{}/missing", self.upload);
            let resp = self.client.send("asking which chunks the server lacks", || {
                self.client.http.post(self.client.url(&path)).body(body.clone())
            })?;
            let bytes = resp.bytes().map_err(|e| remote_err(format!("reading the missing-chunk answer: {e}"), true))?;
            if bytes.len() != part.len() {
                return Err(remote_err(
                    format!("asked about {} chunks, got {} answers", part.len(), bytes.len()),
                    true,
                ));
            }
            out.extend(bytes.iter().map(|&b| b == 1));
        }
        Ok(out)
    }

    fn put_chunk(&self, digest: &Digest, blob: &[u8]) -> Result<bool, Error> {
        let path = format!("/uploads/{}/chunks/{digest}", self.upload);
        let what = format!("uploading chunk {digest}");
        let resp = self.client.send(&what, || self.client.http.put(self.client.url(&path)).body(blob.to_vec()))?;
        Ok(resp.status() == StatusCode::CREATED)
    }
}

/// Restores from the engine; each chunk is one GET (run in parallel by the restore workers).
pub struct RemoteSource {
    pub client: Client,
}

impl ChunkSource for RemoteSource {
    fn check_chunks(&self, digests: &[Digest]) -> Result<Vec<Option<String>>, Error> {
        let mut out = Vec::with_capacity(digests.len());
        for part in digests.chunks(MISSING_BATCH) {
            let body: Vec<u8> = part.iter().flat_map(|d| d.0).collect();
            let resp = self.client.send("checking chunks on the server", || {
                self.client.http.post(self.client.url("/chunks/check")).body(body.clone())
            })?;
            let bytes = resp.bytes().map_err(|e| remote_err(format!("reading the chunk check answer: {e}"), true))?;
            if bytes.len() != part.len() {
                return Err(remote_err(format!("checked {} chunks, got {} answers", part.len(), bytes.len()), true));
            }
            out.extend(bytes.iter().map(|b| match b {
                0 => None,
                1 => Some("missing".to_string()),
                _ => Some("damaged on the server (header or checksum)".to_string()),
            }));
        }
        Ok(out)
    }

    fn get_chunk(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let path = format!("/chunks/{digest}");
        let what = format!("fetching chunk {digest}");
        match self.client.send(&what, || self.client.http.get(self.client.url(&path))) {
            Ok(resp) => resp.bytes().map(|b| b.to_vec()).map_err(|e| remote_err(format!("{what}: {e}"), true)),
            Err(Error::Store { message, .. }) if message.contains("404") => {
                Err(Error::ChunkMissing { digest: digest.to_hex() })
            }
            Err(e) => Err(e),
        }
    }
}
