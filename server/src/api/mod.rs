//! The engine's HTTP API (`docs/protocol.md`).
//!
//! Every route is declared once in [`routes`] with the access it requires; the router and the
//! authentication layer are generated from that table, and the table-driven test walks the
//! same table, so a new route cannot escape authentication.
//!
//! Besides the JSON API under `/api/v1`, the table declares the operator's status page
//! (`web`: `/`, `/status`, `/login`, `/logout`) and the Prometheus metrics (`/metrics`).
//!
//! [`serve`] takes its listener and a shutdown future as arguments (tests bind port 0).

mod admin;
mod auth;
mod error;
mod hosts;
mod jobs;
mod listen;
mod metrics;
mod netboot;
mod notify;
mod ops;
mod power;
mod replication;
mod schedules;
mod snapshots;
mod uploads;
mod web;

pub use auth::Access;
pub use error::{ApiError, ApiResult};

use crate::engine::Engine;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;
use kura_catalogs::db::Catalog;
use kura_catalogs::Store;
use kura_imaging::chunk::Digest;
use kura_protocol::routes::{self, Route};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The HTTP side of the engine: the services ([`Engine`]) and what only the web needs.
pub struct AppState {
    /// The engine's services and state (stores, uploads, liveness, power, notifications).
    pub engine: Arc<Engine>,
    /// Serialises garbage collection runs.
    pub gc_running: tokio::sync::Mutex<()>,
    /// The boot log of the netboot services, when `kura serve` runs them.
    pub bootlog: Option<Arc<kura_netboot::BootLog>>,
    /// Digests of snapshots being restored by agents (to scope their chunk reads).
    digest_cache: Mutex<HashMap<String, Arc<HashSet<Digest>>>>,
    /// Whether the server speaks TLS (session cookies are then `Secure`).
    pub tls: bool,
    /// Browser sessions of the status page.
    pub sessions: web::Sessions,
    /// When this server started (unix seconds).
    pub started: i64,
    /// Ticks the scheduler completed (set once it exists; for `/metrics`).
    pub scheduler_ticks: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        bootlog: Option<Arc<kura_netboot::BootLog>>,
        secrets: Arc<kura_catalogs::secrets::SecretKey>,
        tls: bool,
        cluster: Option<crate::engine::cluster::Cluster>,
    ) -> Arc<AppState> {
        let mut engine = Engine::new(store, catalog, secrets);
        engine.cluster = cluster;
        Arc::new(AppState {
            started: engine.catalog.now(),
            engine: Arc::new(engine),
            scheduler_ticks: std::sync::OnceLock::new(),
            bootlog,
            tls,
            sessions: web::Sessions::default(),
            gc_running: tokio::sync::Mutex::new(()),
            digest_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The set of chunk digests snapshot `id` references (cached; blocking).
    pub fn snapshot_digests(&self, id: &str) -> ApiResult<Arc<HashSet<Digest>>> {
        if let Some(s) = self.digest_cache.lock().expect("lock").get(id) {
            return Ok(s.clone());
        }
        let mut set = HashSet::new();
        for m in self.engine.catalog.snapshot_manifests(id)? {
            set.extend(self.engine.store.load_manifest(&m)?.data_digests().copied());
        }
        let set: Arc<HashSet<Digest>> = Arc::new(set);
        let mut cache = self.digest_cache.lock().expect("lock");
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(id.to_string(), set.clone());
        Ok(set)
    }
}

/// One API route: method, path (axum syntax), who may call it, and its body cap.
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub body_limit: usize,
    handler: MethodRouter<Arc<AppState>>,
}

/// The route `r` of the protocol, answered by `handler` for its declared method only (any other
/// method on the path gets 405).
fn route<H, T>(r: Route, access: Access, handler: H) -> RouteSpec
where
    H: axum::handler::Handler<T, Arc<AppState>>,
    T: 'static,
{
    let method = Method::from_bytes(r.method.as_bytes()).expect("a valid method in the protocol's route table");
    let filter = axum::routing::MethodFilter::try_from(method.clone()).expect("a routable method");
    RouteSpec { method, path: r.path, access, body_limit: r.body_limit, handler: axum::routing::on(filter, handler) }
}

/// The route table: the single place routes are declared.
pub fn routes() -> Vec<RouteSpec> {
    use Access::*;
    vec![
        route(routes::HEALTH, Public, admin::health),
        route(routes::HOSTS, OperatorOrReader, hosts::list),
        route(routes::HOST_CREATE, Admin, hosts::create),
        route(routes::HOST, Operator, hosts::show),
        route(routes::HOST_SECURE_BOOT, Admin, hosts::set_secure_boot),
        route(routes::HOST_MAC_ADD, Admin, hosts::add_mac),
        route(routes::HOST_MAC_REMOVE, Admin, hosts::remove_mac),
        route(routes::HOST_POWER, Admin, power::show),
        route(routes::HOST_POWER_SET, Admin, power::set),
        route(routes::HOST_POWER_CLEAR, Admin, power::clear),
        route(routes::HOST_POWER_ACT, Admin, power::act),
        route(routes::SNAPSHOTS, OperatorOrReader, snapshots::list),
        route(routes::SNAPSHOT_DELETE, Admin, snapshots::remove),
        route(routes::SNAPSHOT_MANIFEST, ReadSnapshot, snapshots::manifest),
        route(routes::SNAPSHOT_CONFIRM, Operator, snapshots::confirm),
        route(routes::SNAPSHOT_BOOT_TEST, Operator, snapshots::boot_test),
        route(routes::CHUNK, ReadSnapshot, snapshots::chunk),
        route(routes::CHUNKS_CHECK, OperatorOrAgent, snapshots::check_chunks),
        route(routes::UPLOAD_BEGIN, Upload, uploads::begin),
        route(routes::UPLOAD_MISSING, Upload, uploads::missing),
        route(routes::UPLOAD_CHUNK, Upload, uploads::put_chunk),
        route(routes::UPLOAD_COMMIT, Upload, uploads::commit),
        route(routes::UPLOAD_ABORT, Upload, uploads::abort),
        route(routes::UPLOAD_PARENT, Upload, uploads::parent),
        route(routes::UPLOAD_PIECES, Upload, uploads::pieces),
        route(routes::JOBS, Operator, jobs::list),
        route(routes::JOB_CREATE, Operator, jobs::create),
        route(routes::JOB, OperatorOrAgent, jobs::show),
        route(routes::JOB_PROGRESS, OperatorOrAgent, jobs::progress),
        route(routes::JOB_FINISH, OperatorOrAgent, jobs::finish),
        route(routes::SCHEDULES, Operator, schedules::list),
        route(routes::SCHEDULE_CREATE, Admin, schedules::create),
        route(routes::SCHEDULE_DELETE, Admin, schedules::remove),
        route(routes::SCHEDULE_ENABLED, Admin, schedules::set_enabled),
        route(routes::SCHEDULE_RUNS, Operator, schedules::runs),
        route(routes::TOKENS, Admin, admin::list_tokens),
        route(routes::TOKEN_CREATE, Admin, admin::create_token),
        route(routes::TOKEN_REVOKE, Admin, admin::revoke_token),
        route(routes::RETENTION_APPLY, Admin, admin::apply_retention),
        route(routes::GC, Admin, admin::gc),
        route(routes::VERIFY, Admin, admin::verify),
        route(routes::AUDIT, Admin, admin::audit),
        route(routes::NETBOOT_STATUS, Operator, netboot::status),
        route(routes::NOTIFY, Admin, notify::list),
        route(routes::NOTIFY_ADD, Admin, notify::add),
        route(routes::NOTIFY_REMOVE, Admin, notify::remove),
        route(routes::NOTIFY_TEST, Admin, notify::test),
        route(routes::REMOTES, Admin, replication::list_remotes),
        route(routes::REMOTE_ADD, Admin, replication::add_remote),
        route(routes::REMOTE_REMOVE, Admin, replication::remove_remote),
        route(routes::REPLICATION, Operator, replication::status),
        route(routes::REPLICATION_RULE_ADD, Admin, replication::add_rule),
        route(routes::REPLICATION_RULE_REMOVE, Admin, replication::remove_rule),
        route(routes::REPLICATION_RESYNC, Admin, replication::resync),
        route(routes::REPLICA_QUARANTINE, Replica, replication::quarantine_mark),
        route(routes::REPLICA_PULLED, Reader, replication::pulled),
        route(routes::METRICS, Operator, metrics::metrics),
        route(routes::PAGE_ROOT, Page, web::status),
        route(routes::PAGE_STATUS, Page, web::status),
        route(routes::PAGE_LOGIN_FORM, Public, web::login_form),
        route(routes::PAGE_LOGIN, Public, web::login),
        route(routes::PAGE_LOGOUT, Public, web::logout),
        route(routes::PAGE_BOOT_SCREENSHOT, Page, web::boot_screenshot),
    ]
}

/// Builds the router from [`routes`], each route behind its access check and body cap.
pub fn router(state: Arc<AppState>) -> Router {
    let mut r: Router<Arc<AppState>> = Router::new();
    for spec in routes() {
        let layered = spec
            .handler
            .layer(DefaultBodyLimit::max(spec.body_limit))
            .route_layer(axum::middleware::from_fn_with_state((state.clone(), spec.access), auth::require));
        r = r.route(spec.path, layered);
    }
    r.fallback(not_found).with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such API route".into())
}

/// How long a client has for the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to send a complete request head after the handshake; an idle
/// keep-alive connection is closed after the same time (hyper's header-read timer runs while it
/// waits for the next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1 settings of the API listener: the header-read timeout (which needs hyper's timer).
fn http_limits(builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
}

/// Serves the API on `listener` until `shutdown` completes. With `tls`, speaks HTTPS only.
/// Connections are admitted within the caps of [`listen`] (`MAX_CONNECTIONS`,
/// `MAX_CONNECTIONS_PER_SOURCE`) and get [`TLS_HANDSHAKE_TIMEOUT`] and [`HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let app = router(state.clone());
    let janitor = tokio::spawn(crate::engine::uploads::expire_idle_loop(state.engine.clone()));
    let watchdog = tokio::spawn(crate::engine::watchdog::run(state.engine.clone()));
    let leases = tokio::spawn(crate::engine::cluster::renew_loop(state.engine.clone()));
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let r = match tls {
        Some(config) => {
            let mut server = axum_server::from_tcp_rustls(listener, config)
                .map(|tls| tls.handshake_timeout(TLS_HANDSHAKE_TIMEOUT).acceptor(listen::Capped::new()))
                .handle(handle);
            http_limits(server.http_builder());
            server.serve(app.into_make_service()).await
        }
        None => {
            let mut server = axum_server::from_tcp(listener).acceptor(listen::Capped::new()).handle(handle);
            http_limits(server.http_builder());
            server.serve(app.into_make_service()).await
        }
    };
    janitor.abort();
    watchdog.abort();
    leases.abort();
    r
}
