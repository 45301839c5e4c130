//! Upload sessions: the capture half of the wire protocol (begin → missing → chunks → commit).
//!
//! The engine never trusts a chunk: each body is decoded and its SHA-256 compared with the
//! digest in the URL before it is stored. A snapshot becomes visible only at commit, after the
//! store has made every chunk and then the manifest durable; an abandoned session leaves only
//! unreferenced chunks for the garbage collector.
//!
//! # The commit rule
//!
//! A session is `open`, then `committing` (one commit at a time), then `committed`:
//!
//! - A commit of an open session decodes and checks the manifest, refuses it if the session's
//!   job is no longer running, makes the manifest durable in the store, then records the
//!   snapshot in the catalog (for a job, with the job's success, in one transaction).
//!   **Rollback**: if anything after the store write fails, the manifest is removed from the
//!   store again (the store is the source of truth at the next start, so a manifest the catalog
//!   refused must not come back as a snapshot) — unless the store already held that manifest
//!   before this commit, which then belongs to someone else and stays. A failed commit leaves
//!   the session open: the client may retry.
//! - A successful commit releases the session's protection from garbage collection (the
//!   snapshot now references its chunks) and keeps the session, `committed`, remembering the
//!   manifest's id ([`Manifest::id_of`] of the body) and the reply, until idle expiry.
//! - A commit is idempotent: the same manifest sent again to a committed session (a retry after
//!   a lost reply) gets the same reply (200 instead of 201); a different manifest is refused
//!   (409). A commit arriving while another is in progress is refused as busy (503, which the
//!   client retries).
//! - A snapshot set (several disks, `kura_imaging::diskset`) is committed the same way, told
//!   from a manifest by its magic: each disk's manifest goes to the store as an ordinary
//!   snapshot (so every backend, the shared chunk index, GC, verify and replication treat it
//!   like any other), then the set's row (its record: the set file's metadata) and its members'
//!   rows are recorded in one catalog transaction; the rollback removes the members' manifests
//!   this commit wrote. The set's id is its file's ([`Manifest::id_of`] of the body); the engine
//!   serves the file rebuilt from the record and the members ([`snapshot_file`]). A set is
//!   visible whole or not at all; replication queues each member.
//! - `missing` and chunk uploads after a commit (or during one) are refused (409); aborting a
//!   committed session only forgets it, its snapshot stays.
//!
//! # Replica commits
//!
//! A replica token (a primary engine pushing its snapshots here, `docs/dr.md`) adds and never
//! overwrites: a commit of a snapshot this engine already holds (same id, hence the same
//! manifest: an id is the digest of its manifest) is answered with `200` and changes nothing,
//! whatever session it comes in; a commit naming an existing snapshot
//! ([`kura_protocol::uploads::SNAPSHOT_HEADER`]) with another manifest is refused (409). Chunks
//! cannot be overwritten by anyone: each is checked against its digest.
//!
//! # Replication
//!
//! When a host's snapshots go to remotes (`crate::replication`), each chunk an upload session
//! stores is handed to the worker at once, from memory (`crate::replication_forward`; what does
//! not fit is queued in the catalog), and the snapshot is queued at its commit (the durable
//! queue of `kura_catalogs::db::replication`); the worker is woken through
//! [`Engine::replication`].
//!
//! # Identity
//!
//! A snapshot's host, kind and job never come from the uploaded manifest. An agent token's
//! session is its own capture job's (checked at begin and again at commit): the host is the
//! job's host, the kind is the job's (scheduled when a schedule released it, else manual). An
//! operator's session is for the host it named (or its job's host). A manifest naming any
//! other host (or none) is refused with 403 `forbidden`, audited (`upload.commit_refused`),
//! logged as a warning in the job's log, and nothing reaches the store or the catalog.

use super::{hosts, Caller, Engine, ServiceError, ServiceResult};
use bytes::Bytes;
use kura_catalogs::db::{JobKind, JobState, LogLevel, NewSnapshot, QueueKind, Role, SnapshotKind};
use kura_catalogs::gc::WriterId;
use kura_imaging::chunk::{Decoder, Digest, DEFAULT_CHUNK_SIZE};
use kura_imaging::diskset::{SnapshotFile, SnapshotSet};
use kura_imaging::manifest::{ChunkRef, Manifest};
use kura_protocol::uploads::{BeginUpload, Committed, UploadStarted};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upload sessions idle longer than this are ended (committed ones included).
pub const IDLE: Duration = Duration::from_secs(3600);
/// Uncommitted upload sessions one token may hold at once (an agent needs one; an operator's
/// parallel manual uploads a few): more are refused with `too_many` (429).
pub const MAX_OPEN_SESSIONS_PER_TOKEN: usize = 16;
/// Uncommitted upload sessions the engine holds at once, all tokens together: more are refused
/// with `unavailable` (503, retry later).
pub const MAX_OPEN_SESSIONS: usize = 256;
/// Sessions of any phase the engine remembers (committed ones are kept for idempotent retries
/// until idle expiry): beyond this a new session is refused with `unavailable` (503).
pub const MAX_SESSIONS: usize = 4096;
/// Commits received and decoded at once (each holds its body, up to the route's 256 MiB, and
/// its decoded manifest): more wait for a turn, up to [`COMMIT_WAIT`].
pub const COMMITS_AT_ONCE: usize = 2;
/// Memory one committed manifest may take decoded (checked from its metadata before the rest
/// is read): 2 GiB holds a disk of about 30 TiB in 1 MiB chunks with 4 KiB-block bitmaps
/// (66 bytes per MiB of disk). A larger declared structure is refused (400).
pub const MAX_COMMIT_DECODED: u64 = 2 << 30;
/// How long a commit waits for its turn before it is refused with `unavailable` (503, retry).
pub const COMMIT_WAIT: Duration = Duration::from_secs(60);
/// Tests only (undocumented for operators): `KURA_TEST_COMMIT_WAIT_MS` shortens [`COMMIT_WAIT`]
/// so a test of the gate need not wait a minute.
const COMMIT_WAIT_ENV: &str = "KURA_TEST_COMMIT_WAIT_MS";

/// [`COMMIT_WAIT`], or the test override of [`COMMIT_WAIT_ENV`].
fn commit_wait() -> Duration {
    static WAIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        std::env::var(COMMIT_WAIT_ENV).ok().and_then(|v| v.parse().ok()).map_or(COMMIT_WAIT, Duration::from_millis)
    })
}

/// The engine's upload sessions, by id.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

/// The turns of commits being received and decoded ([`COMMITS_AT_ONCE`]).
pub struct CommitGate(tokio::sync::Semaphore);

impl Default for CommitGate {
    fn default() -> Self {
        CommitGate(tokio::sync::Semaphore::new(COMMITS_AT_ONCE))
    }
}

impl CommitGate {
    /// Waits for a commit's turn, at most [`COMMIT_WAIT`].
    pub async fn enter(&self) -> ServiceResult<tokio::sync::SemaphorePermit<'_>> {
        let wait = commit_wait();
        match tokio::time::timeout(wait, self.0.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ServiceError::Busy(format!(
                "{COMMITS_AT_ONCE} commits are in progress and this one waited {:.1}s for its turn: retry later",
                wait.as_secs_f64()
            ))),
        }
    }
}

/// Refuses a new session past the limits ([`MAX_OPEN_SESSIONS_PER_TOKEN`],
/// [`MAX_OPEN_SESSIONS`], [`MAX_SESSIONS`]).
fn check_session_limits(sessions: &HashMap<String, Session>, owner: i64) -> ServiceResult<()> {
    let open = |s: &&Session| !matches!(s.phase, Phase::Committed { .. });
    let mine = sessions.values().filter(open).filter(|s| s.owner == owner).count();
    if mine >= MAX_OPEN_SESSIONS_PER_TOKEN {
        return Err(ServiceError::TooMany(format!(
            "this token already has {mine} open upload sessions (at most {MAX_OPEN_SESSIONS_PER_TOKEN}): \
             commit or abort one first"
        )));
    }
    let all = sessions.values().filter(open).count();
    if all >= MAX_OPEN_SESSIONS || sessions.len() >= MAX_SESSIONS {
        return Err(ServiceError::Busy(format!(
            "the engine holds {all} open upload sessions (at most {MAX_OPEN_SESSIONS}) and {} in all \
             (at most {MAX_SESSIONS}): retry later",
            sessions.len()
        )));
    }
    Ok(())
}

struct Session {
    /// Protection of the session's chunks from garbage collection; released at commit.
    writer: Option<WriterId>,
    host: String,
    name: Option<String>,
    kind: SnapshotKind,
    job: Option<i64>,
    /// The token that began the session; only it (or an admin) may continue it.
    owner: i64,
    uploaded: HashSet<Digest>,
    new_bytes: u64,
    last_seen: Instant,
    phase: Phase,
    /// The remotes this host's snapshots are replicated to (ids), when the session began.
    replicate_to: Vec<i64>,
    /// The parents handed out by [`parent`] (manifest ids), and the stored chunks they reference:
    /// the only chunks [`pieces`] answers about. Emptied at commit.
    parents: Parents,
}

/// What [`parent`] handed out to a session.
#[derive(Default)]
struct Parents {
    manifests: HashSet<String>,
    digests: HashSet<Digest>,
}

#[derive(Clone)]
enum Phase {
    Open,
    Committing,
    Committed { manifest: String, reply: Committed },
}

/// What [`commit`] did: committed now (`fresh`), or answered a repeat with the first reply.
pub struct CommitOutcome {
    pub reply: Committed,
    pub fresh: bool,
}

fn random_id() -> ServiceResult<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ServiceError::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

/// The snapshot kind of an upload: a job a schedule released takes a scheduled snapshot,
/// whatever the client says; otherwise what it asked for (manual by default).
fn snapshot_kind(engine: &Engine, job: Option<i64>, asked: Option<SnapshotKind>) -> ServiceResult<SnapshotKind> {
    let scheduled = match job {
        Some(j) => engine.catalog.schedule_of_job(j)?.is_some(),
        None => false,
    };
    Ok(if scheduled { SnapshotKind::Scheduled } else { asked.unwrap_or(SnapshotKind::Manual) })
}

/// `POST /uploads`: opens a session. An agent uploads only the snapshot of its own running
/// capture job (host from the job); staff name the host, which only an admin's upload creates
/// if unknown (`hosts::ensure_for_upload`).
pub fn begin(engine: &Engine, caller: &Caller, req: BeginUpload) -> ServiceResult<UploadStarted> {
    let (host, job) = match caller.agent_job {
        Some(own) => {
            let job = engine.catalog.get_job(own)?;
            if req.job != Some(own) || job.kind != JobKind::Capture || job.state != JobState::Running {
                return Err(ServiceError::Forbidden(format!(
                    "this agent token may only upload for its running capture job {own}"
                )));
            }
            (job.host, Some(own))
        }
        None if caller.principal.role == Role::Replica && req.job.is_some() => {
            return Err(ServiceError::Forbidden("a replica token uploads snapshots, not jobs".into()))
        }
        None => {
            if let Some(j) = req.job {
                let job = engine.catalog.get_job(j)?;
                if job.host != req.host {
                    return Err(ServiceError::BadRequest(format!("job {j} belongs to host {}", job.host)));
                }
            }
            hosts::ensure_for_upload(&engine.catalog, caller, &req.host)?;
            (req.host, req.job)
        }
    };
    let kind = snapshot_kind(engine, job, req.kind)?;
    let replicate_to = engine.catalog.remotes_for_host(&host)?;
    let id = random_id()?;
    super::cluster::take(engine, &id)?;
    let mut sessions = engine.uploads.0.lock().expect("lock");
    if let Err(e) = check_session_limits(&sessions, caller.principal.token_id) {
        drop(sessions);
        super::cluster::end(engine, &id);
        return Err(e);
    }
    let writer = engine.writers.register();
    let session = Session {
        writer: Some(writer),
        host,
        name: req.name,
        kind,
        job,
        owner: caller.principal.token_id,
        uploaded: HashSet::new(),
        new_bytes: 0,
        last_seen: Instant::now(),
        phase: Phase::Open,
        replicate_to,
        parents: Parents::default(),
    };
    sessions.insert(id.clone(), session);
    Ok(UploadStarted { upload: id, chunk_size: DEFAULT_CHUNK_SIZE })
}

/// Runs `f` on session `upload` if `caller` may use it (its owner, or an admin); the session
/// and its job's agent count as heard from.
fn with_session<R>(
    engine: &Engine,
    caller: &Caller,
    upload: &str,
    f: impl FnOnce(&mut Session) -> ServiceResult<R>,
) -> ServiceResult<R> {
    let mut sessions = engine.uploads.0.lock().expect("lock");
    let s = sessions.get_mut(upload).ok_or_else(|| ServiceError::NotFound(format!("no upload session {upload}")))?;
    if s.owner != caller.principal.token_id && !caller.is_admin() {
        return Err(ServiceError::Forbidden(format!("upload session {upload} belongs to another token")));
    }
    s.last_seen = Instant::now();
    if let Some(job) = s.job {
        engine.liveness.touch(job);
    }
    f(s)
}

/// The writer of an open session, for `missing` and chunk uploads.
fn open_writer(s: &Session, upload: &str) -> ServiceResult<WriterId> {
    match (&s.phase, s.writer) {
        (Phase::Open, Some(w)) => Ok(w),
        (Phase::Committing, _) => Err(ServiceError::Conflict(format!("upload session {upload} is being committed"))),
        _ => Err(ServiceError::Conflict(format!("upload session {upload} is committed: it takes no more chunks"))),
    }
}

/// `POST /uploads/{id}/missing`: one answer byte per digest of `body`.
pub fn missing(engine: &Engine, caller: &Caller, upload: &str, body: &[u8]) -> ServiceResult<Vec<u8>> {
    let writer = with_session(engine, caller, upload, |s| open_writer(s, upload))?;
    let digests = kura_protocol::uploads::decode_digests(body).map_err(ServiceError::BadRequest)?;
    let answer = engine
        .writers
        .missing(writer, &*engine.store, &digests)?
        .ok_or_else(|| ServiceError::NotFound(format!("upload session {upload} has ended")))?;
    use kura_protocol::uploads::missing::{MISSING, PRESENT};
    Ok(answer.into_iter().map(|m| if m { MISSING } else { PRESENT }).collect())
}

thread_local! {
    static DECODER: RefCell<Option<(Decoder, Vec<u8>)>> = const { RefCell::new(None) };
}

/// Fully checks an uploaded chunk against its digest.
fn check_chunk(d: &Digest, blob: &[u8]) -> Result<(), kura_imaging::Error> {
    DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some((Decoder::new()?, Vec::new()));
        }
        let (dec, buf) = slot.as_mut().expect("decoder");
        dec.decode_into(blob, d, buf)
    })
}

/// `PUT /uploads/{id}/chunks/{digest}`: checks and stores one chunk; `true` if it was new.
pub fn put_chunk(engine: &Engine, caller: &Caller, upload: &str, digest: &str, body: &Bytes) -> ServiceResult<bool> {
    let writer = with_session(engine, caller, upload, |s| open_writer(s, upload))?;
    let d: Digest = digest.parse().map_err(ServiceError::BadRequest)?;
    // Protect the chunk before it exists, so a collection cannot remove it between the write
    // and the protection.
    if !engine.writers.touch(writer, &d) {
        return Err(ServiceError::NotFound(format!("upload session {upload} has ended")));
    }
    let len = body.len() as u64;
    // Stored meanwhile by another session (similar hosts captured at once are told "missing"
    // for the same chunks): that copy was fully checked when it was stored, so this one gets
    // only the cheap check (the header names this digest; lengths; payload CRC), which still
    // refuses a damaged or mislabelled body, and is neither decoded nor written. A new chunk
    // gets the full check, which begins with the cheap one.
    let new = if engine.store.has(&d) {
        kura_imaging::chunk::check_quick(body, &d)?;
        false
    } else {
        check_chunk(&d, body)?;
        engine.store.put_chunk(&d, body)?
    };
    let mut replicate = None;
    if let Some(s) = engine.uploads.0.lock().expect("lock").get_mut(upload) {
        s.uploaded.insert(d);
        if new {
            s.new_bytes += len;
        }
        if !s.replicate_to.is_empty() {
            replicate = Some((s.replicate_to.clone(), s.host.clone()));
        }
    }
    if let Some((remotes, host)) = replicate {
        // Forwarded from memory; queued durably only what does not fit.
        let spill: Vec<i64> = remotes.into_iter().filter(|r| !engine.forward.offer(*r, d, body, &host)).collect();
        engine.catalog.enqueue_replication(&spill, QueueKind::Chunk, &d.to_hex(), &host, len)?;
        engine.replication.notify_one();
    }
    if new {
        engine.ingested.add(len);
    }
    Ok(new)
}

/// `GET /uploads/{id}/parent[?disk=NAME]`: the encoded manifest of the session host's latest
/// committed snapshot, the parent its capture compares changed chunks with
/// (`kura_imaging::pieced`). With `disk`, the host's latest snapshot must be a set and the
/// parent is its member of that disk name. No such snapshot (none yet, a set asked without a
/// disk, a single disk asked with one, no member of that name): `NotFound` (404), and the client
/// captures without a parent. The session remembers the parent's stored chunks for [`pieces`],
/// and protects the bases and patches of the parent's pieced chunks from garbage collection (a
/// capture refers to an unchanged pieced chunk again without asking about them).
pub fn parent(engine: &Engine, caller: &Caller, upload: &str, disk: Option<&str>) -> ServiceResult<Vec<u8>> {
    let host = with_session(engine, caller, upload, |s| {
        open_writer(s, upload)?;
        Ok(s.host.clone())
    })?;
    let none = |why: String| ServiceError::NotFound(format!("host {host} has no parent for this capture: {why}"));
    let latest = latest_snapshot(engine, &host)?.ok_or_else(|| none("no committed snapshot".into()))?;
    let manifest = match (&latest.set, disk) {
        (None, None) => latest.id.clone(),
        (Some(set), Some(name)) => set
            .disks
            .iter()
            .find(|d| d.disk.name == name)
            .map(|d| d.manifest.clone())
            .ok_or_else(|| none(format!("its latest snapshot set {} has no disk {name:?}", latest.id)))?,
        (Some(_), None) => return Err(none(format!("its latest snapshot {} is a set: name a disk", latest.id))),
        (None, Some(name)) => {
            return Err(none(format!("its latest snapshot {} is of one disk, not a set with disk {name:?}", latest.id)))
        }
    };
    let bytes = engine.store.manifest_bytes(&manifest)?;
    let known = with_session(engine, caller, upload, |s| Ok(s.parents.manifests.contains(&manifest)))?;
    if !known {
        let decoded = Manifest::decode_within(&bytes, MAX_COMMIT_DECODED)?;
        // A pieced chunk unchanged since the parent is referenced again as it is, its base and
        // patches never asked about (`missing` or `pieces`): protect them from garbage
        // collection now, and give no parent that has lost one (deleted meanwhile).
        let writer = with_session(engine, caller, upload, |s| open_writer(s, upload))?;
        for c in decoded.regions.iter().flat_map(|r| &r.chunks) {
            let ChunkRef::Pieced(p) = c else { continue };
            for d in p.stored() {
                if !engine.writers.touch(writer, d) {
                    return Err(ServiceError::NotFound(format!("upload session {upload} has ended")));
                }
                if !engine.store.has(d) {
                    return Err(none(format!("snapshot {manifest} lost chunk {d} (deleted meanwhile?)")));
                }
            }
        }
        let digests = decoded.unique_digests();
        drop(decoded);
        with_session(engine, caller, upload, |s| {
            open_writer(s, upload)?;
            s.parents.digests.extend(digests);
            s.parents.manifests.insert(manifest);
            Ok(())
        })?;
    }
    Ok(bytes)
}

/// The latest committed snapshot of `host` (a set, not one of its members). The catalog
/// orders by capture time in seconds; snapshots of the same second (captures moments apart)
/// are told apart by their manifests' creation times, written to the nanosecond in UTC
/// (`kura_imaging::time::format_rfc3339_nanos`, so they compare as text).
fn latest_snapshot(engine: &Engine, host: &str) -> ServiceResult<Option<kura_catalogs::db::Snapshot>> {
    let mut all: Vec<_> = engine
        .catalog
        .list_snapshots(Some(host))?
        .into_iter()
        .filter(|s| s.state == kura_catalogs::db::SnapshotState::Committed && s.set_id.is_none())
        .collect();
    let Some(newest) = all.iter().map(|s| s.created).max() else { return Ok(None) };
    all.retain(|s| s.created == newest);
    if all.len() == 1 {
        return Ok(all.pop());
    }
    let mut timed = Vec::with_capacity(all.len());
    for s in all {
        let created = match &s.set {
            Some(set) => set.created.clone(),
            None => engine.store.load_manifest(&s.id)?.created,
        };
        timed.push((created, s));
    }
    Ok(timed.into_iter().max_by(|a, b| (&a.0, &a.1.id).cmp(&(&b.0, &b.1.id))).map(|(_, s)| s))
}

/// `POST /uploads/{id}/pieces?size=N`: for each chunk digest of `body` (1 to
/// [`kura_protocol::uploads::PIECES_BATCH`]), the digests of its `piece_size`-byte pieces,
/// read from the store and fully checked ([`kura_imaging::pieced::stored_piece_digests`]);
/// encoded by [`kura_protocol::uploads::encode_pieces`]. Only chunks of the parents the session
/// was handed ([`parent`]) are answered about: any other is refused (403), so a client cannot
/// probe what other hosts stored. A chunk missing or damaged in the store gets no pieces (count
/// 0: it must not be a base). Each chunk asked about is protected from garbage collection until
/// the session ends, as the capture's manifest will reference it without uploading it.
pub fn pieces(engine: &Engine, caller: &Caller, upload: &str, piece_size: u32, body: &[u8]) -> ServiceResult<Vec<u8>> {
    use kura_imaging::manifest::MIN_PIECE_SIZE;
    let batch = kura_protocol::uploads::PIECES_BATCH;
    let digests = kura_protocol::uploads::decode_digests_within(body, batch).map_err(ServiceError::BadRequest)?;
    if !piece_size.is_power_of_two() || !(MIN_PIECE_SIZE..DEFAULT_CHUNK_SIZE).contains(&piece_size) {
        return Err(ServiceError::BadRequest(format!(
            "piece size {piece_size}: it must be a power of two from {MIN_PIECE_SIZE} bytes and less than the \
             chunk size ({DEFAULT_CHUNK_SIZE} bytes)"
        )));
    }
    let writer = with_session(engine, caller, upload, |s| {
        let w = open_writer(s, upload)?;
        if let Some(d) = digests.iter().find(|d| !s.parents.digests.contains(d)) {
            return Err(ServiceError::Forbidden(format!(
                "chunk {d} is not referenced by a parent snapshot this upload session was given: a session may only \
                 ask about its parents' chunks"
            )));
        }
        Ok(w)
    })?;
    let mut answers = Vec::with_capacity(digests.len());
    for d in &digests {
        if !engine.writers.touch(writer, d) {
            return Err(ServiceError::NotFound(format!("upload session {upload} has ended")));
        }
        answers.push(match stored_pieces(&*engine.store, d, piece_size) {
            Ok(p) => p,
            Err(e @ (kura_imaging::Error::ChunkMissing { .. } | kura_imaging::Error::ChunkCorrupt { .. })) => {
                tracing::warn!("upload session {upload}: parent chunk {d} cannot be a base: {e}");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        });
    }
    Ok(kura_protocol::uploads::encode_pieces(&answers))
}

/// The piece digests of stored chunk `d`, decoded with this thread's decoder.
fn stored_pieces(
    store: &dyn kura_catalogs::Store,
    d: &Digest,
    piece_size: u32,
) -> Result<Vec<Digest>, kura_imaging::Error> {
    DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some((Decoder::new()?, Vec::new()));
        }
        let (dec, _) = slot.as_mut().expect("decoder");
        kura_imaging::pieced::stored_piece_digests(store, dec, d, piece_size)
    })
}

/// What a commit needs of its session, copied out of the lock.
struct Pending {
    host: String,
    name: Option<String>,
    kind: SnapshotKind,
    job: Option<i64>,
    uploaded: HashSet<Digest>,
    new_bytes: u64,
}

/// Puts a session left `committing` back to `open` unless disarmed (a failed or panicking
/// commit must not leave the session busy forever).
struct Reopen<'a> {
    engine: &'a Engine,
    upload: &'a str,
    armed: bool,
}

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(s) = self.engine.uploads.0.lock().unwrap_or_else(|e| e.into_inner()).get_mut(self.upload) {
                s.phase = Phase::Open;
            }
        }
    }
}

/// `POST /uploads/{id}/commit`, by the rule at the top of this module.
#[cfg(test)]
pub fn commit(engine: &Engine, caller: &Caller, upload: &str, body: &[u8]) -> ServiceResult<CommitOutcome> {
    commit_expecting(engine, caller, upload, body, None)
}

/// [`commit`] of a client that names the snapshot id it expects (`expected`, the
/// [`kura_protocol::uploads::SNAPSHOT_HEADER`]), with the replica rule at the top of this
/// module.
pub fn commit_expecting(
    engine: &Engine,
    caller: &Caller,
    upload: &str,
    body: &[u8],
    expected: Option<&str>,
) -> ServiceResult<CommitOutcome> {
    let manifest_id = Manifest::id_of(body);
    // Only the session's owner learns anything about the ids below.
    with_session(engine, caller, upload, |_| Ok(()))?;
    if let Some(e) = expected.filter(|e| *e != manifest_id) {
        return Err(match engine.catalog.get_snapshot(e) {
            Ok(_) => ServiceError::Conflict(format!(
                "snapshot {e} exists here with another manifest (this one is {manifest_id}): a snapshot is never \
                 overwritten"
            )),
            Err(_) => ServiceError::BadRequest(format!("the manifest is snapshot {manifest_id}, not {e}")),
        });
    }
    let held = || engine.catalog.get_snapshot(&manifest_id).is_ok() && engine.store.manifest_exists(&manifest_id);
    if caller.principal.role == Role::Replica && held() {
        // Chunks sent again for a snapshot held here (a resync after a quarantine, docs/dr.md)
        // are made durable as at any commit.
        engine.store.flush_staged()?;
        end_session(engine, upload);
        let reply = Committed { snapshot: manifest_id, new_bytes: 0, reused_bytes: 0 };
        return Ok(CommitOutcome { reply, fresh: false });
    }
    let pending = with_session(engine, caller, upload, |s| match &s.phase {
        Phase::Open => {
            s.phase = Phase::Committing;
            Ok(Err(Pending {
                host: s.host.clone(),
                name: s.name.clone(),
                kind: s.kind,
                job: s.job,
                uploaded: s.uploaded.clone(),
                new_bytes: s.new_bytes,
            }))
        }
        Phase::Committing => Err(ServiceError::Busy(format!("a commit of upload session {upload} is in progress"))),
        Phase::Committed { manifest, reply } if *manifest == manifest_id => Ok(Ok(reply.clone())),
        Phase::Committed { reply, .. } => Err(ServiceError::Conflict(format!(
            "upload session {upload} already committed snapshot {} from another manifest",
            reply.snapshot
        ))),
    })?;
    let pending = match pending {
        Ok(reply) => return Ok(CommitOutcome { reply, fresh: false }),
        Err(p) => p,
    };
    let mut reopen = Reopen { engine, upload, armed: true };
    super::cluster::check_before_commit(engine, upload)?;
    let reply = store_and_record(engine, caller, body, pending)?;
    reopen.armed = false;
    let writer = {
        let mut sessions = engine.uploads.0.lock().expect("lock");
        sessions.get_mut(upload).and_then(|s| {
            s.phase = Phase::Committed { manifest: manifest_id, reply: reply.clone() };
            s.parents = Parents::default();
            s.writer.take()
        })
    };
    if let Some(w) = writer {
        engine.writers.unregister(w);
        super::cluster::end(engine, upload);
    }
    engine.store_changed();
    queue_snapshot(engine, &reply.snapshot);
    Ok(CommitOutcome { reply, fresh: true })
}

/// Queues a committed snapshot for the remotes its host's snapshots go to. A failure is
/// logged, not returned: the snapshot is committed, and `kura snapshots` shows it without its
/// copy (`COPIES 1/2`).
///
/// A snapshot set is queued as its members (each an ordinary snapshot, see the module docs): a
/// remote receives every disk; the set's record itself is this engine's.
fn queue_snapshot(engine: &Engine, id: &str) {
    let queued = engine.catalog.get_snapshot(id).and_then(|s| {
        let remotes = engine.catalog.remotes_for_host(&s.host)?;
        for member in engine.catalog.snapshot_manifests(id)? {
            engine.catalog.enqueue_replication(&remotes, QueueKind::Snapshot, &member, &s.host, 0)?;
        }
        Ok(!remotes.is_empty())
    });
    match queued {
        Ok(true) => engine.replication.notify_one(),
        Ok(false) => {}
        Err(e) => tracing::error!("snapshot {id} could not be queued for replication: {e}"),
    }
}

/// The file of committed snapshot `id`: its manifest as stored, or for a snapshot set the set
/// file rebuilt from its record and its members' manifests (checked against the set's id).
pub fn snapshot_file(engine: &Engine, id: &str) -> ServiceResult<Vec<u8>> {
    let snap = engine.catalog.get_snapshot(id)?;
    let Some(record) = snap.set else { return Ok(engine.store.manifest_bytes(&snap.id)?) };
    let members =
        record.disks.iter().map(|d| engine.store.load_manifest(&d.manifest)).collect::<Result<Vec<Manifest>, _>>()?;
    let bytes = SnapshotSet::from_record(record, members)?.encode()?;
    if Manifest::id_of(&bytes) != snap.id {
        return Err(ServiceError::Internal(format!("snapshot set {id}: its rebuilt file does not match its id")));
    }
    Ok(bytes)
}

/// The snapshot's identity (see "Identity" in the module docs): host, kind and job from the
/// job the session's token is bound to, checked against the manifest. A manifest naming
/// another host is refused (403), audited, and flagged in the job's log; nothing is recorded.
fn identity(engine: &Engine, caller: &Caller, manifest_host: Option<&str>, mut p: Pending) -> ServiceResult<Pending> {
    if let Some(own) = caller.agent_job {
        let job = engine.catalog.get_job(own)?;
        if p.job != Some(own) || job.kind != JobKind::Capture {
            return Err(ServiceError::Forbidden(format!(
                "this agent token may only commit the snapshot of its capture job {own}"
            )));
        }
        p.host = job.host;
        p.kind = snapshot_kind(engine, Some(own), None)?;
    } else if let Some(j) = p.job {
        p.host = engine.catalog.get_job(j)?.host;
    }
    if manifest_host == Some(p.host.as_str()) {
        return Ok(p);
    }
    let what = format!(
        "the manifest names host {} but this upload is for host {}{}",
        manifest_host.map_or("(none)".to_string(), |h| format!("{h:?}")),
        p.host,
        p.job.map_or(String::new(), |j| format!(" (job {j})"))
    );
    let detail = serde_json::json!({ "job": p.job, "manifest_host": manifest_host, "reason": what });
    engine.catalog.record_audit(&caller.actor(), "upload.commit_refused", &p.host, detail)?;
    if let Some(j) = p.job {
        engine.catalog.append_job_log(
            j,
            LogLevel::Warn,
            &format!("a commit was refused: {what}; nothing was recorded"),
        )?;
    }
    tracing::warn!("upload commit refused ({}): {what}", caller.actor());
    Err(ServiceError::Forbidden(format!("{what}: refused, nothing was recorded")))
}

/// The store write and the catalog record of a commit, with the rollback rule.
///
/// A snapshot set (several disks, `kura_imaging::diskset`) commits the same way: its members'
/// manifests reach the store, then its row and its members' rows the catalog in one
/// transaction; if the catalog refuses, the members this commit wrote are removed again.
fn store_and_record(engine: &Engine, caller: &Caller, body: &[u8], p: Pending) -> ServiceResult<Committed> {
    let file = SnapshotFile::decode_within(body, MAX_COMMIT_DECODED)?;
    // A manifest whose creation time does not parse is a bad manifest (400), refused before
    // anything reaches the store.
    let created = file.created_unix()?;
    let p = identity(engine, caller, file.host(), p)?;
    let mut reused_bytes = 0u64;
    let mut seen = HashSet::new();
    for (_, manifest) in file.disks() {
        for r in &manifest.regions {
            for (i, c) in r.chunks.iter().enumerate() {
                let len = manifest.chunk_len(r, i);
                match c {
                    ChunkRef::Data(d) if !p.uploaded.contains(d) && seen.insert(*d) => reused_bytes += len,
                    // A pieced chunk reuses what its patches uploaded now do not cover.
                    ChunkRef::Pieced(pc) if seen.insert(pc.digest) => {
                        let sent = pc.patches.iter().filter(|(_, d)| p.uploaded.contains(d)).count() as u64;
                        reused_bytes += len.saturating_sub(sent * pc.piece_size as u64);
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(j) = p.job {
        // A job that ended meanwhile (cancelled, or failed by the agent watchdog) takes no
        // snapshot: refuse before the manifest reaches the store.
        let state = engine.catalog.get_job(j)?.state;
        if state != JobState::Running {
            return Err(ServiceError::Conflict(format!("job {j} is {state}: its snapshot is not committed")));
        }
    }
    // The manifests this commit writes to the store: (id, whether the store held it before).
    let mut written: Vec<(String, bool)> = Vec::new();
    let stored = (|| -> ServiceResult<()> {
        for (_, manifest) in file.disks() {
            let existed = engine.store.manifest_exists(&Manifest::id_of(&manifest.encode()?));
            let id = engine.store.commit_manifest(manifest)?;
            written.push((id, existed));
        }
        Ok(())
    })();
    let rollback = |written: &[(String, bool)], why: &dyn std::fmt::Display| {
        for (id, existed) in written {
            if !existed {
                if let Err(rm) = engine.store.remove_manifest(id) {
                    tracing::error!("snapshot {id} was refused ({why}) and could not be removed: {rm}");
                }
            }
        }
    };
    if let Err(e) = stored {
        rollback(&written, &e);
        return Err(e);
    }
    let mut record = NewSnapshot {
        id: written[0].0.clone(),
        host: p.host.clone(),
        disk: None,
        name: p.name.or(file.name().map(String::from)),
        kind: p.kind,
        created,
        disk_size: file.disk_size(),
        used_bytes: file.used_bytes(),
        new_bytes: p.new_bytes,
        reused_bytes,
        set: None,
        members: Vec::new(),
    };
    if let SnapshotFile::Set(set) = &file {
        record.id = Manifest::id_of(body);
        record.set = Some(set.record()?);
        record.members = set
            .members
            .iter()
            .zip(&written)
            .map(|(m, (id, _))| NewSnapshot {
                id: id.clone(),
                host: p.host.clone(),
                disk: None,
                name: Some(m.disk.name.clone()),
                kind: p.kind,
                created,
                disk_size: m.manifest.disk_size(),
                used_bytes: m.manifest.used_bytes(),
                new_bytes: 0,
                reused_bytes: 0,
                set: None,
                members: Vec::new(),
            })
            .collect();
    }
    let id = record.id.clone();
    let actor = caller.actor();
    let recorded = match p.job {
        Some(j) => {
            engine.catalog.commit_capture_holding(&actor, j, &record, engine.holds_unusual_captures()).map(|_| ())
        }
        None => engine.catalog.add_snapshot(&actor, &record).map(|_| ()),
    };
    if let Err(e) = recorded {
        rollback(&written, &e);
        return Err(e.into());
    }
    Ok(Committed { snapshot: id, new_bytes: p.new_bytes, reused_bytes })
}

/// Ends session `upload` (whatever its phase), releasing its writer.
fn end_session(engine: &Engine, upload: &str) {
    let removed = engine.uploads.0.lock().expect("lock").remove(upload);
    if let Some(w) = removed.and_then(|s| s.writer) {
        engine.writers.unregister(w);
        super::cluster::end(engine, upload);
    }
}

/// `DELETE /uploads/{id}`.
pub fn abort(engine: &Engine, caller: &Caller, upload: &str) -> ServiceResult<()> {
    with_session(engine, caller, upload, |_| Ok(()))?;
    end_session(engine, upload);
    Ok(())
}

/// Ends every upload session of job `job` (its agent went silent).
pub fn abort_job_sessions(engine: &Engine, job: i64) {
    let ids: Vec<String> = engine
        .uploads
        .0
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, s)| s.job == Some(job))
        .map(|(k, _)| k.clone())
        .collect();
    for id in ids {
        tracing::warn!("upload session {id} of job {job} aborted");
        end_session(engine, &id);
    }
}

/// Ends the sessions idle for longer than `idle` (a commit in progress is never idle).
pub fn expire_idle(engine: &Engine, idle: Duration) {
    let expired: Vec<String> = engine
        .uploads
        .0
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, s)| !matches!(s.phase, Phase::Committing) && s.last_seen.elapsed() > idle)
        .map(|(k, _)| k.clone())
        .collect();
    for id in expired {
        tracing::info!("upload session {id} idle for over {idle:?}: ended");
        end_session(engine, &id);
    }
}

/// Ids of the sessions that still hold a writer (open or committing), for lease renewal.
pub fn open_session_ids(engine: &Engine) -> Vec<String> {
    let sessions = engine.uploads.0.lock().expect("lock");
    sessions.iter().filter(|(_, s)| s.writer.is_some()).map(|(k, _)| k.clone()).collect()
}

/// Ends idle sessions every minute until the server stops.
pub async fn expire_idle_loop(engine: Arc<Engine>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        expire_idle(&engine, IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalogs::db::{Catalog, Principal, Role};
    use kura_catalogs::LocalStore;

    /// The encoded one-chunk test manifest named `name`.
    fn manifest(name: &str) -> Vec<u8> {
        crate::engine::zero_manifest(name, "2026-11-25T17:14:41.000000005Z").encode().unwrap()
    }

    fn operator(token_id: i64) -> Caller {
        Caller::new(Principal {
            token_id,
            role: Role::Operator,
            label: "test".into(),
            user: Some("op".into()),
            job_id: None,
            mac: None,
        })
        .unwrap()
    }

    /// An engine on a new store in a temporary directory (kept alive by the first value).
    fn test_engine() -> (tempfile::TempDir, Arc<LocalStore>, Arc<Catalog>, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open_or_create(&dir.path().join("store")).unwrap());
        let catalog = Arc::new(Catalog::open_in_memory().unwrap());
        let key = Arc::new(kura_catalogs::secrets::SecretKey::generate().unwrap());
        let engine = Engine::new(store.clone(), catalog.clone(), key);
        catalog.create_host("test", &kura_catalogs::db::NewHost { name: "h".into(), ..Default::default() }).unwrap();
        (dir, store, catalog, engine)
    }

    #[test]
    fn a_commit_is_idempotent_and_a_committed_session_refuses_everything_else() {
        let (_dir, store, catalog, engine) = test_engine();
        let op = operator(1);
        let req = BeginUpload { host: "h".into(), ..Default::default() };
        let upload = begin(&engine, &op, req).unwrap().upload;
        let writer = engine.uploads.0.lock().unwrap()[&upload].writer.unwrap();
        assert!(engine.writers.is_registered(writer));

        let first = commit(&engine, &op, &upload, &manifest("a")).unwrap();
        assert!(first.fresh);
        assert!(!engine.writers.is_registered(writer), "the commit releases the session's GC protection");
        // The same manifest again (a retry after a lost reply): the same answer, no new snapshot.
        let again = commit(&engine, &op, &upload, &manifest("a")).unwrap();
        assert!(!again.fresh);
        assert_eq!(again.reply, first.reply);
        assert_eq!(catalog.list_snapshots(None).unwrap().len(), 1);
        // Another manifest, more digests, more chunks: refused as conflicts.
        let other = commit(&engine, &op, &upload, &manifest("b"));
        assert!(matches!(other, Err(ServiceError::Conflict(_))), "{:?}", other.err());
        let digests = kura_protocol::uploads::encode_digests(&[Digest([7; 32])]);
        assert!(matches!(missing(&engine, &op, &upload, &digests), Err(ServiceError::Conflict(_))));
        let chunk = put_chunk(&engine, &op, &upload, &Digest([7; 32]).to_hex(), &Bytes::from_static(b"x"));
        assert!(matches!(chunk, Err(ServiceError::Conflict(_))), "{:?}", chunk.err());
        assert_eq!(store.snapshot_ids().unwrap(), std::slice::from_ref(&first.reply.snapshot));
        // Another token may not replay it; its owner may end it, the snapshot stays.
        assert!(matches!(commit(&engine, &operator(2), &upload, &manifest("a")), Err(ServiceError::Forbidden(_))));
        abort(&engine, &op, &upload).unwrap();
        assert!(matches!(commit(&engine, &op, &upload, &manifest("a")), Err(ServiceError::NotFound(_))));
        assert_eq!(catalog.list_snapshots(None).unwrap().len(), 1);
    }

    #[test]
    fn the_parent_is_the_latest_snapshot_to_the_nanosecond_and_pieces_answer_only_about_it() {
        let (_dir, _store, _catalog, engine) = test_engine();
        let op = operator(1);
        let session = || begin(&engine, &op, BeginUpload { host: "h".into(), ..Default::default() }).unwrap().upload;
        let upload = session();
        let none = parent(&engine, &op, &upload, None);
        assert!(matches!(none, Err(ServiceError::NotFound(_))), "no snapshot yet: {:?}", none.err());
        // Two snapshots of the same second, the later one (by its manifest) committed first: the
        // catalog's seconds cannot tell them apart, the manifests' nanoseconds do.
        let later = crate::engine::zero_manifest("later", "2026-11-25T17:14:41.000000009Z").encode().unwrap();
        let earlier = crate::engine::zero_manifest("earlier", "2026-11-25T17:14:41.000000005Z").encode().unwrap();
        assert!(
            Manifest::id_of(&earlier) > Manifest::id_of(&later),
            "the catalog's order (seconds, id) ends with earlier"
        );
        for bytes in [&later, &earlier] {
            commit(&engine, &op, &session(), bytes).unwrap();
        }
        assert_eq!(parent(&engine, &op, &upload, None).unwrap(), later);
        let as_set = parent(&engine, &op, &upload, Some("sda"));
        assert!(matches!(as_set, Err(ServiceError::NotFound(_))), "not a set: {:?}", as_set.err());
        // Only the parents' chunks (none here), with a sound piece size; another token's
        // session is not this one's.
        let body = kura_protocol::uploads::encode_digests(&[Digest([7; 32])]);
        let refused = pieces(&engine, &op, &upload, 16 << 10, &body);
        assert!(matches!(refused, Err(ServiceError::Forbidden(_))), "{:?}", refused.err());
        for bad in [1000, 256, DEFAULT_CHUNK_SIZE] {
            let r = pieces(&engine, &op, &upload, bad, &body);
            assert!(matches!(r, Err(ServiceError::BadRequest(_))), "size {bad}: {:?}", r.err());
        }
        let r = pieces(&engine, &op, &upload, 16 << 10, &vec![0; 65 * 32]);
        assert!(matches!(r, Err(ServiceError::BadRequest(_))), "65 digests: {:?}", r.err());
        assert!(matches!(parent(&engine, &operator(2), &upload, None), Err(ServiceError::Forbidden(_))));
    }

    #[test]
    fn a_chunk_stored_meanwhile_is_not_decoded_again_and_a_mislabelled_body_is_refused() {
        let (_dir, store, _catalog, engine) = test_engine();
        let op = operator(1);
        let a = begin(&engine, &op, BeginUpload { host: "h".into(), ..Default::default() }).unwrap().upload;
        let b = begin(&engine, &op, BeginUpload { host: "h".into(), ..Default::default() }).unwrap().upload;
        let mut enc = kura_imaging::chunk::Encoder::new(3).unwrap();
        let encode = |enc: &mut kura_imaging::chunk::Encoder, d: &Digest, plain: &[u8]| {
            let mut out = Vec::new();
            enc.encode_into(d, plain, &mut out).unwrap();
            Bytes::from(out)
        };
        let plain = vec![5u8; 8192];
        let d = Digest::of(&plain);
        let blob = encode(&mut enc, &d, &plain);
        assert!(put_chunk(&engine, &op, &a, &d.to_hex(), &blob).unwrap(), "new to the store");
        // Another session sends the same digest with a body that passes the cheap check (its
        // header names the digest, its CRC is right) but decodes to other content: the store
        // has the chunk, so the body is neither decoded nor written; the stored copy stays.
        let forged = encode(&mut enc, &d, b"other content under the same digest");
        assert!(kura_imaging::chunk::check_quick(&forged, &d).is_ok());
        assert!(!put_chunk(&engine, &op, &b, &d.to_hex(), &forged).unwrap());
        assert_eq!(kura_imaging::chunk::ChunkSource::get_chunk(&*store, &d).unwrap(), blob.to_vec());
        // The same kind of body for a digest the store lacks is decoded, and refused.
        let d2 = Digest::of(b"a chunk nobody stored");
        let forged2 = encode(&mut enc, &d2, b"not that chunk");
        assert!(matches!(put_chunk(&engine, &op, &b, &d2.to_hex(), &forged2), Err(ServiceError::Corrupt(_))));
        assert!(!store.has(&d2));
        // A body whose header names another chunk is refused, even for a digest the store has.
        let other = vec![6u8; 8192];
        let mislabelled = encode(&mut enc, &Digest::of(&other), &other);
        assert!(matches!(put_chunk(&engine, &op, &b, &d.to_hex(), &mislabelled), Err(ServiceError::Corrupt(_))));
    }

    #[test]
    fn a_refused_commit_leaves_the_session_open_and_the_store_as_it_was() {
        let (_dir, store, catalog, engine) = test_engine();
        let op = operator(1);
        let upload = begin(&engine, &op, BeginUpload { host: "h".into(), ..Default::default() }).unwrap().upload;
        // A bad manifest is refused before the store; the session stays open and protected.
        assert!(matches!(commit(&engine, &op, &upload, b"not a manifest"), Err(ServiceError::BadRequest(_))));
        let writer = engine.uploads.0.lock().unwrap()[&upload].writer.unwrap();
        assert!(engine.writers.is_registered(writer));
        // The catalog refuses the snapshot (its id is taken): the manifest the commit wrote goes.
        let bytes = manifest("a");
        let id = Manifest::id_of(&bytes);
        let m = Manifest::decode(&bytes).unwrap();
        let taken = NewSnapshot {
            id: id.clone(),
            host: "h".into(),
            disk: None,
            name: None,
            kind: SnapshotKind::Manual,
            created: 1,
            disk_size: 4096,
            used_bytes: 4096,
            new_bytes: 0,
            reused_bytes: 0,
            set: None,
            members: Vec::new(),
        };
        catalog.add_snapshot("t", &taken).unwrap();
        let refused = commit(&engine, &op, &upload, &bytes);
        assert!(matches!(refused, Err(ServiceError::Conflict(_))), "{:?}", refused.err());
        assert!(!store.manifest_exists(&id), "a manifest the catalog refused stays out of the store");
        // A manifest that was in the store before the refused commit stays there.
        store.commit_manifest(&m).unwrap();
        assert!(commit(&engine, &op, &upload, &bytes).is_err());
        assert!(store.manifest_exists(&id), "someone else's manifest was removed");
        // The session is still open: it takes chunks questions.
        let digests = kura_protocol::uploads::encode_digests(&[Digest([7; 32])]);
        assert_eq!(missing(&engine, &op, &upload, &digests).unwrap(), [kura_protocol::uploads::missing::MISSING]);
    }

    /// Issue 11: a snapshot set commits as one snapshot with its disks, one file in the store;
    /// a set naming another host is refused and leaves nothing, in the store or the catalog.
    #[test]
    fn a_snapshot_set_commits_whole_or_not_at_all() {
        use kura_imaging::diskmap::DiskIdentity;
        use kura_imaging::diskset::{Member, SnapshotSet};
        let (_dir, store, catalog, engine) = test_engine();
        let op = operator(1);
        let member = |name: &str, serial: &str, at: &str| Member {
            disk: DiskIdentity { name: name.into(), size: 4096, serial: Some(serial.into()), ..Default::default() },
            manifest: crate::engine::zero_manifest(name, at),
        };
        let mut set = SnapshotSet {
            name: Some("two".into()),
            created: "2026-12-07T03:00:00Z".into(),
            host: Some("other".into()),
            members: vec![member("vda", "A", "2026-12-07T03:00:01Z"), member("vdb", "B", "2026-12-07T03:00:02Z")],
        };
        let upload = begin(&engine, &op, BeginUpload { host: "h".into(), ..Default::default() }).unwrap().upload;
        let refused = commit(&engine, &op, &upload, &set.encode().unwrap());
        assert!(matches!(refused, Err(ServiceError::Forbidden(_))), "{:?}", refused.err());
        assert!(store.snapshot_ids().unwrap().is_empty() && catalog.list_snapshots(None).unwrap().is_empty());
        // Members naming another host than the set: refused too.
        set.host = Some("h".into());
        set.members[1].manifest.host = Some("other".into());
        assert!(matches!(commit(&engine, &op, &upload, &set.encode().unwrap()), Err(ServiceError::Forbidden(_))));
        set.members[1].manifest.host = Some("h".into());
        // Host h's snapshots go to a remote: the set's commit queues each member for it.
        let sealed = engine.secrets.seal(kura_catalogs::db::replication::REMOTE_TOKEN_PURPOSE, b"kura_secret").unwrap();
        let dr = catalog.add_remote("t", "dr", "https://dr:8443", Some("ab"), &sealed).unwrap();
        catalog.add_replication_rule("t", "dr", None, None, false).unwrap();
        let bytes = set.encode().unwrap();
        let done = commit(&engine, &op, &upload, &bytes).unwrap();
        let id = done.reply.snapshot.clone();
        assert_eq!(id, Manifest::id_of(&bytes));
        // The store holds the two members, each an ordinary manifest; the catalog the set's
        // row and theirs.
        let members: Vec<String> = set.members.iter().map(|m| Manifest::id_of(&m.manifest.encode().unwrap())).collect();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(store.snapshot_ids().unwrap(), sorted);
        let snap = catalog.get_snapshot(&id).unwrap();
        let disks = &snap.set.as_ref().expect("the set's record").disks;
        let names: Vec<(&str, Option<&str>)> =
            disks.iter().map(|d| (d.disk.name.as_str(), d.disk.serial.as_deref())).collect();
        assert_eq!(names, [("vda", Some("A")), ("vdb", Some("B"))]);
        assert_eq!(snap.disk_size, 8192);
        for m in &members {
            assert_eq!(catalog.get_snapshot(m).unwrap().set_id.as_deref(), Some(id.as_str()));
        }
        assert_eq!(catalog.snapshot_manifests(&id).unwrap(), members);
        // The engine serves the set file rebuilt, byte for byte.
        assert_eq!(snapshot_file(&engine, &id).unwrap(), bytes);
        let queued: Vec<String> = catalog
            .due_replication(dr.id, QueueKind::Snapshot, i64::MAX, 10)
            .unwrap()
            .into_iter()
            .map(|q| q.item)
            .collect();
        assert_eq!(queued, members, "each member is queued for the remote");
    }

    /// A set whose catalog record is refused (its job ended meanwhile) leaves no member in the
    /// store: the rollback removes what the commit wrote.
    #[test]
    fn a_refused_set_leaves_no_member_behind() {
        use kura_imaging::diskmap::DiskIdentity;
        use kura_imaging::diskset::{Member, SnapshotSet};
        let (_dir, store, catalog, engine) = test_engine();
        let op = operator(1);
        let member = |name: &str, at: &str| Member {
            disk: DiskIdentity { name: name.into(), size: 4096, ..Default::default() },
            manifest: crate::engine::zero_manifest(name, at),
        };
        let mut set = SnapshotSet {
            name: None,
            created: "2026-12-07T03:00:00Z".into(),
            host: Some("h".into()),
            members: vec![member("vda", "2026-12-07T03:00:01Z"), member("vdb", "2026-12-07T03:00:02Z")],
        };
        for m in &mut set.members {
            m.manifest.host = Some("h".into());
        }
        // The same member twice: the catalog refuses the second row (one id), after the store
        // took both manifests.
        set.members[1].manifest = set.members[0].manifest.clone();
        let upload = begin(&engine, &op, BeginUpload { host: "h".into(), ..Default::default() }).unwrap().upload;
        let refused = commit(&engine, &op, &upload, &set.encode().unwrap());
        assert!(refused.is_err());
        assert!(store.snapshot_ids().unwrap().is_empty(), "{:?}", store.snapshot_ids());
        assert!(catalog.list_snapshots(None).unwrap().is_empty());
    }

    /// The planted-snapshot attack of issue 16: an agent token's commit of a manifest naming
    /// another host is refused (403), audited and flagged in the job's log; nothing reaches the
    /// store or the catalog, and the job still runs. The job's own host commits fine after.
    #[test]
    fn an_agent_commit_naming_another_host_is_refused_and_nothing_is_recorded() {
        use kura_catalogs::db::{NewHost, NewJob};
        let (_dir, store, catalog, engine) = test_engine();
        // test_engine() registers host "h".
        catalog.create_host("t", &NewHost { name: "victim".into(), group: None, notes: String::new() }).unwrap();
        let job = catalog
            .create_job(
                "t",
                &NewJob { kind: JobKind::Capture, host: "victim".into(), disk: None, snapshot: None, disks: None },
            )
            .unwrap();
        catalog.start_job("t", job.id).unwrap();
        let agent = Caller::new(Principal {
            token_id: 9,
            role: Role::Agent,
            label: "agent".into(),
            user: None,
            job_id: Some(job.id),
            mac: Some("52:54:00:00:00:01".into()),
        })
        .unwrap();
        // The agent asks for host "h" and kind scheduled: the job's host and kind win.
        let req = BeginUpload {
            host: "h".into(),
            job: Some(job.id),
            kind: Some(SnapshotKind::Scheduled),
            ..Default::default()
        };
        let upload = begin(&engine, &agent, req).unwrap().upload;
        // zero_manifest names host "h".
        let forged = manifest("planted");
        let refused = commit(&engine, &agent, &upload, &forged);
        match refused {
            Err(e @ ServiceError::Forbidden(_)) => {
                assert!(e.to_string().contains("\"h\"") && e.to_string().contains("victim"), "{e}")
            }
            other => panic!("expected a 403, got {:?}", other.map(|o| o.reply)),
        }
        assert!(catalog.list_snapshots(None).unwrap().is_empty(), "a snapshot was recorded");
        assert!(store.snapshot_ids().unwrap().is_empty(), "a manifest reached the store");
        assert_eq!(catalog.get_job(job.id).unwrap().state, JobState::Running);
        let audit = catalog.list_audit(10).unwrap();
        assert!(audit.iter().any(|a| a.action == "upload.commit_refused" && a.target == "victim"), "{audit:?}");
        let log = catalog.job_log(job.id, None, 10).unwrap();
        assert!(log.iter().any(|l| l.level == LogLevel::Warn && l.message.contains("a commit was refused")), "{log:?}");
        // The real manifest, naming the job's host, is committed as a manual snapshot of it.
        let mut real = crate::engine::zero_manifest("real", "2026-11-25T17:14:41.000000005Z");
        real.host = Some("victim".into());
        commit(&engine, &agent, &upload, &real.encode().unwrap()).unwrap();
        let snaps = catalog.list_snapshots(None).unwrap();
        assert_eq!((snaps.len(), snaps[0].host.as_str(), snaps[0].kind), (1, "victim", SnapshotKind::Manual));
        assert_eq!(catalog.get_job(job.id).unwrap().state, JobState::Succeeded);
    }

    /// Issue 16, the stronger mode (`kura serve --hold-unusual-captures`): the capture of a job
    /// whose boot was flagged is recorded unconfirmed; a restore of it is refused (409) unless
    /// allowed explicitly, and allowed once an operator confirmed it. Without the mode, or
    /// without a flag, the snapshot is confirmed.
    #[tokio::test]
    async fn a_flagged_capture_is_held_unconfirmed_and_restores_refuse_it() {
        use kura_catalogs::db::{NewHost, NewJob};
        use kura_protocol::jobs::CreateJob;
        let (_dir, _store, catalog, engine) = test_engine();
        catalog.create_host("t", &NewHost { name: "victim".into(), group: None, notes: String::new() }).unwrap();
        let mac = "52:54:00:00:00:01";
        catalog.add_mac("t", "victim", mac).unwrap();
        let capture_as_agent = |n: u64, flag: bool| -> String {
            let job = catalog
                .create_job(
                    "t",
                    &NewJob { kind: JobKind::Capture, host: "victim".into(), disk: None, snapshot: None, disks: None },
                )
                .unwrap();
            if flag {
                catalog.flag_job(job.id, "possible impostor: token requested twice").unwrap();
            }
            catalog.start_job("t", job.id).unwrap();
            let agent = Caller::new(Principal {
                token_id: 9,
                role: Role::Agent,
                label: "agent".into(),
                user: None,
                job_id: Some(job.id),
                mac: Some(mac.into()),
            })
            .unwrap();
            let upload =
                begin(&engine, &agent, BeginUpload { host: "victim".into(), job: Some(job.id), ..Default::default() })
                    .unwrap()
                    .upload;
            let mut m = crate::engine::zero_manifest("cap", &format!("2026-11-25T17:14:4{n}.000000005Z"));
            m.host = Some("victim".into());
            commit(&engine, &agent, &upload, &m.encode().unwrap()).unwrap();
            catalog.get_job(job.id).unwrap().snapshot.unwrap()
        };
        // The mode is off: a flagged capture is confirmed.
        let off = capture_as_agent(1, true);
        assert!(catalog.get_snapshot(&off).unwrap().confirmed);
        // The mode is on: an unflagged capture is confirmed, a flagged one held.
        engine.hold_unusual_captures.store(true, std::sync::atomic::Ordering::Relaxed);
        let clean = capture_as_agent(2, false);
        assert!(catalog.get_snapshot(&clean).unwrap().confirmed);
        let held = capture_as_agent(3, true);
        assert!(!catalog.get_snapshot(&held).unwrap().confirmed);

        let restore = |snapshot: &str, allow_unconfirmed: bool| {
            let req = CreateJob {
                job: NewJob {
                    kind: JobKind::Restore,
                    host: "victim".into(),
                    disk: None,
                    snapshot: Some(snapshot.into()),
                    disks: None,
                },
                mac: None,
                allow_unconfirmed,
            };
            crate::engine::jobs::create(&engine, &operator(1), req).map(|c| c.job.id)
        };
        match restore(&held, false) {
            Err(ServiceError::Conflict(msg)) => {
                assert!(msg.contains("unconfirmed") && msg.contains("--allow-unconfirmed"), "{msg}")
            }
            other => panic!("a restore of a held snapshot was not refused: {other:?}"),
        }
        assert!(catalog.active_job_for_host("victim").unwrap().is_none(), "a refused restore left a job");
        // Allowed explicitly; or once confirmed.
        let job = restore(&held, true).unwrap();
        catalog.cancel_job("t", job).unwrap();
        catalog.confirm_snapshot("operator", &held).unwrap();
        restore(&held, false).unwrap();
    }

    /// Issue 16: upload sessions are limited per token (429 `too_many`) and in all (503
    /// `unavailable`); a committed session no longer counts as open.
    #[test]
    fn open_upload_sessions_are_limited_per_token_and_in_all() {
        let (_dir, _store, _catalog, engine) = test_engine();
        let begin_as =
            |token: i64| begin(&engine, &operator(token), BeginUpload { host: "h".into(), ..Default::default() });
        let mine: Vec<String> = (0..MAX_OPEN_SESSIONS_PER_TOKEN).map(|_| begin_as(1).unwrap().upload).collect();
        let refused = begin_as(1).map(|s| s.upload);
        let Err(ServiceError::TooMany(msg)) = refused else { panic!("{refused:?}") };
        assert!(msg.contains("open upload sessions"), "{msg}");
        assert_eq!(
            crate::api::ApiError::from(ServiceError::TooMany(msg)).kind(),
            kura_protocol::error::ErrorKind::TooMany
        );
        // Committing one frees a place; aborting another too.
        commit(&engine, &operator(1), &mine[0], &manifest("a")).unwrap();
        begin_as(1).unwrap();
        abort(&engine, &operator(1), &mine[1]).unwrap();
        begin_as(1).unwrap();
        assert!(matches!(begin_as(1), Err(ServiceError::TooMany(_))));
        // Other tokens fill the engine up to the global limit, then get 503.
        let mut token = 2;
        let mut opened = MAX_OPEN_SESSIONS_PER_TOKEN;
        while opened < MAX_OPEN_SESSIONS {
            for _ in 0..MAX_OPEN_SESSIONS_PER_TOKEN.min(MAX_OPEN_SESSIONS - opened) {
                begin_as(token).unwrap();
                opened += 1;
            }
            token += 1;
        }
        let full = begin_as(token).map(|s| s.upload);
        let Err(ServiceError::Busy(msg)) = full else { panic!("{full:?}") };
        assert!(msg.contains("open upload sessions"), "{msg}");
        assert_eq!(
            crate::api::ApiError::from(ServiceError::Busy(msg)).kind(),
            kura_protocol::error::ErrorKind::Unavailable
        );
    }
}
