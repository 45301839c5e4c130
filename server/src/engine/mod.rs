//! The engine's services: what the HTTP handlers (`crate::api`) call between parsing a request
//! and rendering its answer. A handler authorizes once (the [`Caller`]: a principal and, for an
//! agent, its job), calls one service function here in `spawn_blocking`, and renders the
//! result; a [`ServiceError`] becomes an HTTP answer in one `From` impl (`api::error`).
//!
//! - [`uploads`]: upload sessions (begin, missing, chunks, the idempotent commit, abort, idle
//!   expiry, a job's sessions aborted by the watchdog);
//! - [`jobs`]: creating a job (with its agent token and the power kick), progress, finish;
//! - [`tokens`]: the one function that mints agent tokens;
//! - [`hosts`]: the hosts an upload may create;
//! - [`watchdog`]: the agents' liveness, and failing jobs whose agent went silent;
//! - [`cluster`]: the writer leases that let several engine nodes share one S3 store.
//!
//! A service that changes several things is one function with its rollback rule written
//! beside it (the commit: store, then catalog; a job's end: state, then notification).

pub mod cluster;
pub mod hosts;
pub mod jobs;
pub mod tokens;
pub mod uploads;
pub mod watchdog;

use kura_catalogs::db::{Catalog, CatalogError, Principal, Role};
use kura_catalogs::gc::WriterRegistry;
use kura_catalogs::{Store, StoreUsage};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The engine's state and collaborators, shared by the API, the watchdog and the janitor.
pub struct Engine {
    /// The chunk store: a local directory or an S3 bucket (`kura_catalogs::backend`).
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    /// Upload sessions' protection from garbage collection.
    pub writers: Arc<WriterRegistry>,
    /// This node, when several engine nodes may share the store (an S3 store): upload
    /// sessions then hold leases in the catalog (`cluster`).
    pub cluster: Option<cluster::Cluster>,
    /// Open (and recently committed) upload sessions.
    pub uploads: uploads::Sessions,
    /// The turns of commits being received and decoded.
    pub commits: uploads::CommitGate,
    /// When each running job's agent was last heard from.
    pub liveness: watchdog::Liveness,
    /// Power control (Wake-on-LAN, Redfish, IPMI): kicks machines into netboot for new jobs.
    pub power: Arc<crate::power::Power>,
    /// Job failures and run summaries go out through it.
    pub notifier: crate::notify::Notifier,
    /// What uploads stored since start (for `/metrics`).
    pub ingested: Ingested,
    /// The last measured store usage (see `api::ops::store_usage`).
    pub usage_cache: Mutex<Option<(Instant, StoreUsage)>>,
    /// `kura serve --hold-unusual-captures`: the snapshot of a capture whose boot was unusual
    /// is held unconfirmed ([`Engine::holds_unusual_captures`]).
    pub hold_unusual_captures: AtomicBool,
    /// Wakes the replication worker (`crate::replication`) when something is queued.
    pub replication: tokio::sync::Notify,
    /// What the replication worker sent since start (for `/metrics`).
    pub replication_sent: crate::replication::Sent,
    /// Chunks stored by replicated hosts' captures, held for the worker to forward.
    pub forward: crate::replication_forward::ForwardBuffer,
    /// The key sealing secrets in the catalog (BMC passwords, remotes' tokens).
    pub secrets: Arc<kura_catalogs::secrets::SecretKey>,
    /// Boot tests run here: kept screenshots and the queue of scheduled tests.
    pub boot_tests: crate::boot_test::engine::BootTests,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        secrets: Arc<kura_catalogs::secrets::SecretKey>,
    ) -> Engine {
        let notifier = crate::notify::Notifier::new(catalog.clone(), crate::notify::Delivery::default());
        Engine {
            store,
            power: Arc::new(crate::power::Power::new(catalog.clone(), secrets.clone())),
            secrets,
            replication: tokio::sync::Notify::new(),
            replication_sent: crate::replication::Sent::default(),
            forward: Default::default(),
            catalog,
            writers: Arc::new(WriterRegistry::new()),
            cluster: None,
            uploads: uploads::Sessions::default(),
            commits: uploads::CommitGate::default(),
            liveness: watchdog::Liveness::default(),
            notifier,
            ingested: Ingested::default(),
            usage_cache: Mutex::new(None),
            hold_unusual_captures: AtomicBool::new(false),
            boot_tests: Default::default(),
        }
    }

    /// Whether a capture job's snapshot is held unconfirmed when its boot was unusual
    /// (`kura_catalogs::db::Catalog::commit_capture_holding`).
    pub fn holds_unusual_captures(&self) -> bool {
        self.hold_unusual_captures.load(Ordering::Relaxed)
    }

    /// Forgets the measured store usage (after a commit or a garbage collection).
    pub fn store_changed(&self) {
        *self.usage_cache.lock().expect("lock") = None;
    }
}

/// Counters of what uploads stored since start.
#[derive(Default)]
pub struct Ingested {
    /// Encoded bytes of chunks that were new to the store.
    pub bytes: AtomicU64,
    pub chunks: AtomicU64,
}

impl Ingested {
    pub fn add(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.chunks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who calls a service: an authenticated principal and, for an agent, the job its token is
/// bound to (an agent token without a job never becomes a `Caller`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// `Some` exactly for agents.
    pub agent_job: Option<i64>,
}

impl Caller {
    /// The caller for `principal`; an agent token must be bound to a job.
    pub fn new(principal: Principal) -> Result<Caller, ServiceError> {
        let agent_job = match principal.role {
            Role::Agent => {
                Some(principal.job_id.ok_or_else(|| ServiceError::Forbidden("agent token without a job".into()))?)
            }
            _ => None,
        };
        Ok(Caller { principal, agent_job })
    }

    /// How the caller appears in the audit log.
    pub fn actor(&self) -> String {
        self.principal.actor()
    }

    pub fn is_admin(&self) -> bool {
        self.principal.role == Role::Admin
    }

    /// Whether the caller may act on job `id`: staff on any, an agent on its own only.
    pub fn may_act_on_job(&self, id: i64) -> Result<(), ServiceError> {
        match self.agent_job {
            Some(own) if own != id => {
                Err(ServiceError::Forbidden(format!("this agent token belongs to job {own}, not {id}")))
            }
            _ => Ok(()),
        }
    }
}

/// What a service refuses or fails with; each becomes one protocol error kind.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    /// The resource's state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// A chunk or manifest that does not match its digest.
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    StoreFull(String),
    /// Busy with the same thing right now (a commit in progress), or at a global limit: retry.
    #[error("{0}")]
    Busy(String),
    /// The caller holds too many of something (upload sessions): 429.
    #[error("{0}")]
    TooMany(String),
    /// The engine failed; the details are for its log only.
    #[error("{0}")]
    Internal(String),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl From<CatalogError> for ServiceError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound { .. } => ServiceError::NotFound(e.to_string()),
            CatalogError::Conflict { .. } | CatalogError::InvalidTransition { .. } => {
                ServiceError::Conflict(e.to_string())
            }
            CatalogError::Invalid(_) | CatalogError::Retention(_) => ServiceError::BadRequest(e.to_string()),
            CatalogError::Forbidden(_) => ServiceError::Forbidden(e.to_string()),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<kura_imaging::Error> for ServiceError {
    fn from(e: kura_imaging::Error) -> Self {
        use kura_imaging::Error as E;
        match e {
            E::ChunkCorrupt { .. } => ServiceError::Corrupt(e.to_string()),
            E::ChunkMissing { .. } | E::Locked { .. } => ServiceError::Conflict(e.to_string()),
            E::Manifest(_) => ServiceError::BadRequest(e.to_string()),
            E::StoreFull { .. } => ServiceError::StoreFull(e.to_string()),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// A one-chunk manifest of host `h`, all zeros (so no chunk needs to be stored): the unit
/// tests' smallest snapshot.
#[cfg(test)]
pub(crate) fn zero_manifest(name: &str, created: &str) -> kura_imaging::manifest::Manifest {
    use kura_imaging::layout::{DiskLayout, Scheme};
    use kura_imaging::manifest::{ChunkRef, Manifest, Region};
    Manifest {
        name: Some(name.into()),
        created: created.into(),
        source: "test".into(),
        host: Some("h".into()),
        chunk_size: 4096,
        layout: DiskLayout {
            disk_size: 4096,
            sector_size: 512,
            scheme: Scheme::None,
            gpt: None,
            partitions: vec![],
            warnings: vec![],
        },
        regions: vec![Region {
            start: 0,
            size: 4096,
            partition: None,
            fs: kura_imaging::fs::FsKind::Raw,
            label: None,
            block_size: 4096,
            used_bytes: 4096,
            warnings: vec![],
            bitmap: kura_imaging::bitmap::Bitmap::full(1),
            chunks: vec![ChunkRef::Zero],
        }],
    }
}
