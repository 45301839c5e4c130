//! The replication worker: sends what the durable queue (`kura_catalogs::db::replication`)
//! holds to each remote engine, with the remote's replica token, over the ordinary upload
//! protocol (`docs/dr.md`).
//!
//! # What is sent when
//!
//! - **Chunks, while the capture runs.** The uploads service hands every chunk a session of a
//!   replicated host stores to this worker from memory (`crate::replication_forward`, bounded
//!   per remote; what does not fit is queued in the catalog) and wakes it
//!   ([`crate::engine::Engine::replication`]). A pass takes up to [`CHUNK_BATCH`] chunks of a
//!   remote, from memory first, then due rows of the durable queue (read back from the store),
//!   asks the remote which of them it lacks (one `missing` request per
//!   [`kura_protocol::uploads::MISSING_BATCH`]), sends only those, and drops them (a batch
//!   from memory whose send failed is queued durably). The chunks go into one open session per
//!   remote, which protects them from the remote's garbage collector until the snapshot is
//!   committed there. Nothing read back from the store, no row per chunk: the primary's extra
//!   work for a replicated capture is the sending itself.
//! - **The snapshot, right after its commit.** In a session of its own: `missing` for every
//!   chunk the manifest references (chunks the primary already had before the capture were
//!   never queued, and a remote that restarted may have collected unreferenced ones), the
//!   missing chunks, then the commit with the snapshot id named
//!   ([`kura_protocol::uploads::SNAPSHOT_HEADER`]). The copy is recorded
//!   (`snapshot_copies`), the row dropped.
//!
//! # Failures and restarts
//!
//! A failed item stays queued: its attempts are counted and its next try is put off by
//! [`backoff`] (1 s doubling to [`MAX_BACKOFF`]). The queue is in the catalog, so a restart of
//! either engine resumes where it stopped: a lost session is begun again (`404`), and every
//! step is idempotent on the remote (a chunk it has is not sent again; the same snapshot
//! committed twice is answered `200`). Deleting here (retention, GC) never reaches a remote:
//! the worker only adds. A snapshot deleted here before it was sent is dropped from the queue.
//!
//! # Chunks a remote lost
//!
//! Every [`PROBE_EVERY`] the worker asks each remote for its quarantine mark
//! (`GET /replica/quarantine`), which grows whenever the remote's `kura verify` quarantines
//! damaged chunks. When it has grown since the last look (`remotes.quarantine_seen`), every
//! snapshot recorded as copied there is queued again ([`Catalog::resync_remote`]): sending a
//! snapshot asks the remote about all its chunks, so the quarantined ones (missing there now)
//! are sent again, and the commit is a no-op. `kura replicate resync` queues the same by hand.
//!
//! [`Catalog::resync_remote`]: kura_catalogs::db::Catalog::resync_remote
//!
//! A remote whose sends have been failing for [`ALERT_AFTER`] (every send since, none
//! succeeding) raises one `replication_failing` notification (`crate::notify`); the next
//! success re-arms it.
//!
//! [`run`] takes its shutdown future as an argument, like the scheduler.

use crate::engine::Engine;
use bytes::Bytes;
use kura_catalogs::db::replication::REMOTE_TOKEN_PURPOSE;
use kura_catalogs::db::{QueueItem, QueueKind};
use kura_imaging::chunk::{ChunkSink, Digest};
use kura_imaging::manifest::Manifest;
use kura_protocol::client::{Client, Endpoint, RemoteUpload};
use kura_protocol::replication::QuarantineMark;
use kura_protocol::routes;
use kura_protocol::uploads::BeginUpload;
use kura_protocol::ErrorKind;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chunks taken from a remote's queue in one pass.
pub const CHUNK_BATCH: u32 = 256;
/// Snapshots taken from a remote's queue in one pass.
pub const SNAPSHOT_BATCH: u32 = 4;
/// The longest a failed item waits before its next try.
pub const MAX_BACKOFF: i64 = 30;
/// How often the worker looks at the queue when nothing woke it (items waiting for their
/// next try).
pub const IDLE_PASS: Duration = Duration::from_secs(1);
/// How long a remote may fail before the notification targets are told (once).
pub const ALERT_AFTER: Duration = Duration::from_secs(3600);
/// Tests only (undocumented for operators): `KURA_TEST_REPLICATION_ALERT_SECS` shortens
/// [`ALERT_AFTER`].
const ALERT_AFTER_ENV: &str = "KURA_TEST_REPLICATION_ALERT_SECS";
/// How often each remote's quarantine mark is read.
pub const PROBE_EVERY: Duration = Duration::from_secs(60);
/// Tests only: `KURA_TEST_REPLICATION_PROBE_SECS` shortens [`PROBE_EVERY`].
const PROBE_EVERY_ENV: &str = "KURA_TEST_REPLICATION_PROBE_SECS";

fn probe_every() -> Duration {
    static EVERY: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var(PROBE_EVERY_ENV).ok().and_then(|v| v.parse().ok()).map(Duration::from_secs).unwrap_or(PROBE_EVERY)
    })
}

fn alert_after() -> i64 {
    static AFTER: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *AFTER.get_or_init(|| {
        std::env::var(ALERT_AFTER_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(ALERT_AFTER.as_secs() as i64)
    })
}

/// Per-request timeout towards a remote.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Seconds before the next try of an item that failed `attempts` times.
pub fn backoff(attempts: i64) -> i64 {
    1i64.checked_shl(attempts.clamp(0, 16) as u32).unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF)
}

/// What the worker sent since start, per remote name (for `/metrics`).
#[derive(Default)]
pub struct Sent {
    by_remote: Mutex<HashMap<String, Arc<SentCounters>>>,
}

#[derive(Default)]
pub struct SentCounters {
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
    pub snapshots: AtomicU64,
}

impl Sent {
    fn of(&self, remote: &str) -> Arc<SentCounters> {
        self.by_remote.lock().expect("lock").entry(remote.to_string()).or_default().clone()
    }

    /// (remote, counters) for every remote sent to since start.
    pub fn snapshot(&self) -> Vec<(String, u64, u64, u64)> {
        let map = self.by_remote.lock().expect("lock");
        let mut out: Vec<_> = map
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    c.chunks.load(Ordering::Relaxed),
                    c.bytes.load(Ordering::Relaxed),
                    c.snapshots.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// A remote as the worker talks to it: its name, client, and the open chunk session.
struct Conn {
    name: String,
    client: Client,
    chunk_session: Option<String>,
    /// Since when every send to the remote failed, and whether that was notified.
    failing_since: Option<i64>,
    alerted: bool,
    /// When the remote's quarantine mark was last read.
    probed: Option<std::time::Instant>,
    /// When the remote was last polled for the pull rules that fetch from it.
    pulled: Option<std::time::Instant>,
}

impl Conn {
    fn succeeded(&mut self) {
        if self.alerted {
            tracing::info!("replication to {} works again", self.name);
        }
        self.failing_since = None;
        self.alerted = false;
    }

    fn failed(&mut self, engine: &Engine, message: &str) {
        let now = engine.catalog.now();
        let since = *self.failing_since.get_or_insert(now);
        if !self.alerted && now - since >= alert_after() {
            self.alerted = true;
            engine.notifier.replication_failing(&self.name, since, message);
        }
    }
}

fn connect(engine: &Engine, remote: i64) -> Result<Conn, String> {
    let (r, sealed) = engine.catalog.remote_with_token(remote).map_err(|e| e.to_string())?;
    let token = engine.secrets.open(REMOTE_TOKEN_PURPOSE, &sealed).map_err(|e| e.to_string())?;
    let token = String::from_utf8(token).map_err(|_| "the stored token is not text".to_string())?;
    let client = Client::new(&Endpoint {
        url: r.url.clone(),
        token,
        fingerprint: r.fingerprint.clone(),
        mac: None,
        timeout: Some(REQUEST_TIMEOUT),
    })
    .map_err(|e| e.to_string())?;
    Ok(Conn {
        name: r.name,
        client,
        chunk_session: None,
        failing_since: None,
        alerted: false,
        probed: None,
        pulled: None,
    })
}

/// An error of one step; `lost_session` when the remote forgot the session (it restarted).
struct StepError {
    message: String,
    lost_session: bool,
}

impl From<kura_protocol::ProtocolError> for StepError {
    fn from(e: kura_protocol::ProtocolError) -> Self {
        StepError { lost_session: e.kind == ErrorKind::NotFound, message: e.to_string() }
    }
}

impl From<kura_imaging::Error> for StepError {
    fn from(e: kura_imaging::Error) -> Self {
        let message = e.to_string();
        StepError { lost_session: message.contains("404") || message.contains("no upload session"), message }
    }
}

/// Sends the chunks among `digests` that the remote lacks into `upload`, read from the store;
/// returns how many.
fn send_missing(engine: &Engine, conn: &Conn, upload: &RemoteUpload, digests: &[Digest]) -> Result<u64, StepError> {
    send_missing_of(engine, conn, upload, digests, |_, d| match engine.store.get_chunk(d) {
        Ok(b) => Ok(Some(Bytes::from(b))),
        Err(kura_imaging::Error::ChunkMissing { .. }) => {
            tracing::warn!("replication to {}: chunk {d} is no longer in the store; not sent", conn.name);
            Ok(None)
        }
        Err(e) => Err(StepError { message: format!("reading chunk {d}: {e}"), lost_session: false }),
    })
}

/// Sends the chunks among `digests` that the remote lacks into `upload`, each body from
/// `blob(index, digest)` (`None`: skip it); returns how many were sent.
fn send_missing_of(
    engine: &Engine,
    conn: &Conn,
    upload: &RemoteUpload,
    digests: &[Digest],
    mut blob: impl FnMut(usize, &Digest) -> Result<Option<Bytes>, StepError>,
) -> Result<u64, StepError> {
    let missing = upload.missing(digests)?;
    let counters = engine.replication_sent.of(&conn.name);
    let mut sent = 0;
    for (i, (d, m)) in digests.iter().zip(missing).enumerate() {
        if !m {
            continue;
        }
        let Some(body) = blob(i, d)? else { continue };
        let len = body.len() as u64;
        upload.put_shared_chunk(d, body)?;
        counters.chunks.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(len, Ordering::Relaxed);
        sent += 1;
    }
    Ok(sent)
}

/// The remote session the chunks sent ahead of their snapshots go into (protecting them from
/// the remote's collector), begun for `host` if there is none.
fn chunk_session(conn: &mut Conn, host: &str) -> Result<RemoteUpload, StepError> {
    let upload = match &conn.chunk_session {
        Some(u) => u.clone(),
        None => {
            let req = BeginUpload { host: host.to_string(), ..Default::default() };
            let started = conn.client.begin_upload(&req)?;
            conn.chunk_session = Some(started.upload.clone());
            started.upload
        }
    };
    Ok(upload_of(conn, upload))
}

/// One batch of the chunks held in memory for `remote` (`crate::replication_forward`);
/// `Ok(true)` if any were handled. A batch whose send failed is queued durably, where the
/// next tries and their back-off are counted.
fn forward_pass(engine: &Engine, remote: i64, conn: &mut Conn) -> Result<bool, String> {
    let items = engine.forward.take(remote, CHUNK_BATCH as usize);
    if items.is_empty() {
        return Ok(false);
    }
    let digests: Vec<Digest> = items.iter().map(|f| f.digest).collect();
    let result = chunk_session(conn, &items[0].host)
        .and_then(|upload| send_missing_of(engine, conn, &upload, &digests, |i, _| Ok(Some(items[i].blob.clone()))));
    match result {
        Ok(sent) => {
            tracing::debug!("replication to {}: {} chunks forwarded, {sent} sent", conn.name, digests.len());
            conn.succeeded();
        }
        Err(e) => {
            if e.lost_session {
                conn.chunk_session = None;
            } else {
                conn.failed(engine, &e.message);
            }
            tracing::info!(
                "replication to {}: forwarding failed ({}); queueing {} chunks",
                conn.name,
                e.message,
                items.len()
            );
            for f in &items {
                engine
                    .catalog
                    .enqueue_replication(&[remote], QueueKind::Chunk, &f.digest.to_hex(), &f.host, f.blob.len() as u64)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(true)
}

fn upload_of(conn: &Conn, upload: String) -> RemoteUpload {
    RemoteUpload {
        client: conn.client.clone(),
        started: kura_protocol::uploads::UploadStarted { upload, chunk_size: 0 },
    }
}

/// One batch of due chunks for `conn`; `Ok(true)` if any were handled.
fn chunk_pass(engine: &Engine, remote: i64, conn: &mut Conn) -> Result<bool, String> {
    let now = engine.catalog.now();
    let items =
        engine.catalog.due_replication(remote, QueueKind::Chunk, now, CHUNK_BATCH).map_err(|e| e.to_string())?;
    if items.is_empty() {
        return Ok(false);
    }
    let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
    let digests: Vec<Digest> = items.iter().filter_map(|i| i.item.parse().ok()).collect();
    let result = chunk_session(conn, &items[0].host).and_then(|upload| send_missing(engine, conn, &upload, &digests));
    match result {
        Ok(sent) => {
            tracing::debug!("replication to {}: {} chunks checked, {sent} sent", conn.name, digests.len());
            engine.catalog.replication_done(&ids).map_err(|e| e.to_string())?;
            conn.succeeded();
            Ok(true)
        }
        Err(e) if e.lost_session && conn.chunk_session.is_some() => {
            // The remote restarted and forgot the session: begin another at once.
            tracing::info!(
                "replication to {}: the remote lost the chunk session ({}); beginning another",
                conn.name,
                e.message
            );
            conn.chunk_session = None;
            Ok(true)
        }
        Err(e) => {
            fail(engine, conn, &items, &e.message);
            Ok(false)
        }
    }
}

/// Counts a failure of `items` and puts off their next try.
fn fail(engine: &Engine, conn: &mut Conn, items: &[QueueItem], message: &str) {
    conn.failed(engine, message);
    let attempts = items.iter().map(|i| i.attempts).max().unwrap_or(0);
    let next = engine.catalog.now() + backoff(attempts);
    tracing::warn!("replication to {} failed (attempt {}): {message}", conn.name, attempts + 1);
    let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
    if let Err(e) = engine.catalog.replication_failed(&ids, message, next) {
        tracing::error!("replication to {}: recording a failure: {e}", conn.name);
    }
}

/// Sends snapshot `item` to `conn`: its missing chunks, then its manifest.
fn send_snapshot(engine: &Engine, conn: &Conn, item: &QueueItem) -> Result<Option<String>, StepError> {
    let id = &item.item;
    let local = |e: String| StepError { message: e, lost_session: false };
    let snap = match engine.catalog.get_snapshot(id) {
        Ok(s) => s,
        Err(kura_catalogs::db::CatalogError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(local(e.to_string())),
    };
    let bytes = match engine.store.manifest_bytes(id) {
        Ok(b) => b,
        Err(e) if !engine.store.manifest_exists(id) => {
            tracing::warn!("replication to {}: snapshot {id} is gone here ({e}); not sent", conn.name);
            return Ok(None);
        }
        Err(e) => return Err(local(format!("reading snapshot {id}: {e}"))),
    };
    let manifest = Manifest::decode(&bytes).map_err(|e| local(format!("decoding snapshot {id}: {e}")))?;
    let mut seen = HashSet::new();
    let digests: Vec<Digest> = manifest.data_digests().copied().filter(|d| seen.insert(*d)).collect();
    let req = BeginUpload { host: snap.host.clone(), name: snap.name.clone(), kind: Some(snap.kind), job: None };
    let upload = RemoteUpload::begin(&conn.client, &req)?;
    let result = (|| -> Result<String, StepError> {
        let sent = send_missing(engine, conn, &upload, &digests)?;
        let committed = conn.client.commit(upload.id(), &bytes)?;
        tracing::info!(
            "replication to {}: snapshot {id} of {} committed ({sent} of {} chunks sent)",
            conn.name,
            snap.host,
            digests.len()
        );
        Ok(committed.snapshot)
    })();
    if result.is_err() {
        let _ = conn.client.abort(upload.id());
    }
    result.map(Some)
}

/// One batch of due snapshots for `conn`; `Ok(true)` if any were handled.
fn snapshot_pass(engine: &Engine, remote: i64, conn: &mut Conn) -> Result<bool, String> {
    let now = engine.catalog.now();
    let items =
        engine.catalog.due_replication(remote, QueueKind::Snapshot, now, SNAPSHOT_BATCH).map_err(|e| e.to_string())?;
    let mut progressed = false;
    for item in &items {
        match send_snapshot(engine, conn, item) {
            Ok(copied) => {
                if let Some(id) = copied {
                    engine.catalog.record_copy(&id, remote).map_err(|e| e.to_string())?;
                    engine.replication_sent.of(&conn.name).snapshots.fetch_add(1, Ordering::Relaxed);
                }
                engine.catalog.replication_done(&[item.id]).map_err(|e| e.to_string())?;
                conn.succeeded();
                progressed = true;
            }
            Err(e) => {
                fail(engine, conn, std::slice::from_ref(item), &e.message);
                break;
            }
        }
    }
    Ok(progressed)
}

/// Reads the quarantine mark of `remote` if [`probe_every`] has passed, and queues every
/// snapshot copied there again if it grew; `true` if it did.
fn probe(engine: &Engine, remote: &kura_catalogs::db::Remote, conn: &mut Conn) -> bool {
    if conn.probed.is_some_and(|t| t.elapsed() < probe_every()) {
        return false;
    }
    conn.probed = Some(std::time::Instant::now());
    let mark = match conn.client.get_json::<QuarantineMark>(routes::REPLICA_QUARANTINE.path) {
        Ok(m) => m.mark,
        Err(e) => {
            // An older engine without the route, or the link is down (the sends say so).
            tracing::debug!("replication to {}: reading its quarantine mark: {e}", conn.name);
            return false;
        }
    };
    if mark <= remote.quarantine_seen {
        return false;
    }
    let queued = engine.catalog.resync_remote(remote.id, None).and_then(|n| {
        engine.catalog.set_quarantine_seen(remote.id, mark)?;
        Ok(n)
    });
    match queued {
        Ok(n) => {
            tracing::warn!(
                "replication to {}: its verify quarantined chunks (mark {mark}); checking the {n} snapshots copied \
                 there again",
                conn.name
            );
            true
        }
        Err(e) => {
            tracing::error!("replication to {}: queueing a resync: {e}", conn.name);
            false
        }
    }
}

/// One step of a pass for one remote; `Ok(true)` if it handled something.
type Step = fn(&Engine, i64, &mut Conn) -> Result<bool, String>;

/// One pass over every remote with a queue; `true` if something was sent (look again soon).
fn pass(engine: &Engine, conns: &mut HashMap<i64, Conn>) -> bool {
    // A connection (with its chunk session on the remote, begun once and never ended) lives as
    // long as its remote, not its queue: dropped whenever a queue ran dry (a slow capture's
    // chunks trickle in), each new connection left one more open session there until the
    // replica token hit the remote's per-token limit and every send failed with 429.
    let mut busy = false;
    let rules = engine.catalog.list_replication_rules().unwrap_or_else(|e| {
        tracing::error!("replication: listing the rules: {e}");
        Vec::new()
    });
    match engine.catalog.list_remotes() {
        Ok(all) => {
            conns.retain(|id, _| all.iter().any(|r| r.id == *id));
            for gone in engine.forward.remotes().into_iter().filter(|id| !all.iter().any(|r| r.id == *id)) {
                engine.forward.forget(gone);
            }
            for r in &all {
                let Some(conn) = conn_of(engine, conns, r.id) else { continue };
                let pulls: Vec<_> = rules.iter().filter(|x| x.pull && x.remote == r.name).collect();
                if pulls.is_empty() {
                    // A remote this engine pulls from is a primary, not a replica.
                    busy |= probe(engine, r, conn);
                } else if conn.pulled.is_none_or(|t| t.elapsed() >= crate::replication_pull::pull_every()) {
                    conn.pulled = Some(std::time::Instant::now());
                    for rule in pulls {
                        match crate::replication_pull::pull_round(engine, &conn.client, rule) {
                            Ok(n) => {
                                conn.succeeded();
                                // More may have been committed there meanwhile: look again soon.
                                if n > 0 {
                                    conn.pulled = None;
                                }
                            }
                            Err(e) => {
                                tracing::warn!("pulling from {}: {e}", conn.name);
                                conn.failed(engine, &e);
                            }
                        }
                    }
                }
            }
        }
        Err(e) => tracing::error!("replication: listing the remotes: {e}"),
    }
    let mut remotes = match engine.catalog.remotes_with_queue() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("replication: reading the queue: {e}");
            return false;
        }
    };
    remotes.extend(engine.forward.remotes());
    remotes.sort_unstable();
    remotes.dedup();
    for remote in remotes {
        let Some(conn) = conn_of(engine, conns, remote) else { continue };
        // Chunks in memory first: the snapshot pass after them finds its chunks sent already.
        for step in [forward_pass as Step, chunk_pass, snapshot_pass] {
            match step(engine, remote, conn) {
                Ok(progressed) => busy |= progressed,
                Err(e) => tracing::error!("replication to {}: {e}", conn.name),
            }
        }
    }
    busy
}

/// The connection to remote `remote`, made if needed.
fn conn_of<'a>(engine: &Engine, conns: &'a mut HashMap<i64, Conn>, remote: i64) -> Option<&'a mut Conn> {
    match conns.entry(remote) {
        std::collections::hash_map::Entry::Occupied(o) => Some(o.into_mut()),
        std::collections::hash_map::Entry::Vacant(v) => match connect(engine, remote) {
            Ok(c) => Some(v.insert(c)),
            Err(e) => {
                tracing::error!("replication: remote {remote}: {e}");
                None
            }
        },
    }
}

/// Sends the queue until `shutdown` completes: a pass whenever something is queued (or every
/// [`IDLE_PASS`] for items waiting for their next try), at once again while passes send.
pub async fn run(engine: Arc<Engine>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut conns = Some(HashMap::new());
    loop {
        let e = engine.clone();
        let mut c = conns.take().expect("connections");
        let pass = tokio::task::spawn_blocking(move || {
            let busy = pass(&e, &mut c);
            (c, busy)
        });
        let busy = tokio::select! {
            _ = &mut shutdown => return,
            done = pass => match done {
                Ok((c, busy)) => {
                    conns = Some(c);
                    busy
                }
                Err(e) => {
                    tracing::error!("replication pass panicked: {e}");
                    conns = Some(HashMap::new());
                    false
                }
            },
        };
        if busy {
            continue;
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = engine.replication.notified() => {}
            _ = tokio::time::sleep(IDLE_PASS) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!([0, 1, 2, 3, 4, 5, 6, 60].map(backoff), [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
