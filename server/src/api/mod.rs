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
mod metrics;
mod notify;
mod ops;
mod power;
mod schedules;
mod snapshots;
mod uploads;
pub mod watchdog;
mod web;

pub use auth::Access;
pub use error::{ApiError, ApiResult};

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;
use kura_catalogs::db::Catalog;
use kura_catalogs::gc::WriterRegistry;
use kura_catalogs::LocalStore;
use kura_imaging::chunk::Digest;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Request body caps. Every route has one; the largest bodies are chunks and manifests.
pub mod limits {
    /// JSON requests.
    pub const JSON: usize = 64 << 10;
    /// One encoded chunk: header + zstd's worst case for the largest chunk.
    pub const CHUNK: usize = 64 + (16 << 20) + (16 << 20) / 128 + 1024;
    /// One `missing` request: 4096 digests.
    pub const MISSING: usize = 4096 * 32;
    /// One encoded manifest.
    pub const MANIFEST: usize = 256 << 20;
}

/// Upload sessions idle longer than this are aborted.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(3600);

pub struct AppState {
    pub store: Arc<LocalStore>,
    pub catalog: Arc<Catalog>,
    pub writers: Arc<WriterRegistry>,
    pub uploads: Mutex<HashMap<String, uploads::Upload>>,
    /// Serialises garbage collection runs.
    pub gc_running: tokio::sync::Mutex<()>,
    /// The boot log of the netboot services, when `kura serve` runs them.
    pub bootlog: Option<Arc<crate::netboot::bootlog::BootLog>>,
    /// Fails running jobs whose agent went silent.
    pub watchdog: watchdog::Watchdog,
    /// Power control (Wake-on-LAN, Redfish, IPMI): kicks machines into netboot for new jobs.
    pub power: Arc<crate::power::Power>,
    /// Digests of snapshots being restored by agents (to scope their chunk reads).
    digest_cache: Mutex<HashMap<String, Arc<HashSet<Digest>>>>,
    /// Whether the server speaks TLS (session cookies are then `Secure`).
    pub tls: bool,
    /// Browser sessions of the status page.
    pub sessions: web::Sessions,
    /// Job failures and run summaries go out through it.
    pub notifier: crate::notify::Notifier,
    /// What uploads stored since start (for `/metrics`).
    pub ingested: metrics::Ingested,
    /// When this server started (unix seconds).
    pub started: i64,
    /// Ticks the scheduler completed (set once it exists; for `/metrics`).
    pub scheduler_ticks: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>>,
    /// The last measured store usage (see `ops::store_usage`).
    usage_cache: Mutex<Option<(std::time::Instant, kura_catalogs::StoreUsage)>>,
}

impl AppState {
    pub fn new(
        store: Arc<LocalStore>,
        catalog: Arc<Catalog>,
        bootlog: Option<Arc<crate::netboot::bootlog::BootLog>>,
        secrets: Arc<kura_catalogs::secrets::SecretKey>,
        tls: bool,
    ) -> Arc<AppState> {
        let notifier = crate::notify::Notifier::new(catalog.clone(), crate::notify::Delivery::default());
        Arc::new(AppState {
            started: catalog.now(),
            scheduler_ticks: std::sync::OnceLock::new(),
            store,
            power: Arc::new(crate::power::Power::new(catalog.clone(), secrets)),
            catalog,
            bootlog,
            watchdog: watchdog::Watchdog::default(),
            tls,
            notifier,
            sessions: web::Sessions::default(),
            ingested: metrics::Ingested::default(),
            usage_cache: Mutex::new(None),
            writers: Arc::new(WriterRegistry::new()),
            uploads: Mutex::new(HashMap::new()),
            gc_running: tokio::sync::Mutex::new(()),
            digest_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Forgets the measured store usage (after a commit or a garbage collection).
    pub fn store_changed(&self) {
        *self.usage_cache.lock().expect("lock") = None;
    }

    /// The set of chunk digests snapshot `id` references (cached; blocking).
    pub fn snapshot_digests(&self, id: &str) -> ApiResult<Arc<HashSet<Digest>>> {
        if let Some(s) = self.digest_cache.lock().expect("lock").get(id) {
            return Ok(s.clone());
        }
        let m = self.store.load_manifest(id)?;
        let set: Arc<HashSet<Digest>> = Arc::new(m.data_digests().copied().collect());
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

fn route(
    method: Method,
    path: &'static str,
    access: Access,
    body_limit: usize,
    handler: MethodRouter<Arc<AppState>>,
) -> RouteSpec {
    RouteSpec { method, path, access, body_limit, handler }
}

/// The route table: the single place routes are declared.
pub fn routes() -> Vec<RouteSpec> {
    use axum::routing::{delete, get, post, put};
    use limits::*;
    use Access::*;
    vec![
        route(Method::GET, "/api/v1/health", Public, JSON, get(admin::health)),
        route(Method::GET, "/api/v1/hosts", Operator, JSON, get(hosts::list)),
        route(Method::POST, "/api/v1/hosts", Admin, JSON, post(hosts::create)),
        route(Method::GET, "/api/v1/hosts/{name}", Operator, JSON, get(hosts::show)),
        route(Method::GET, "/api/v1/hosts/{name}/power", Admin, JSON, get(power::show)),
        route(Method::PUT, "/api/v1/hosts/{name}/power", Admin, JSON, put(power::set)),
        route(Method::DELETE, "/api/v1/hosts/{name}/power", Admin, JSON, delete(power::clear)),
        route(Method::POST, "/api/v1/hosts/{name}/power/{action}", Admin, JSON, post(power::act)),
        route(Method::GET, "/api/v1/snapshots", Operator, JSON, get(snapshots::list)),
        route(Method::DELETE, "/api/v1/snapshots/{id}", Admin, JSON, delete(snapshots::remove)),
        route(Method::GET, "/api/v1/snapshots/{id}/manifest", OperatorOrAgent, JSON, get(snapshots::manifest)),
        route(Method::GET, "/api/v1/chunks/{digest}", OperatorOrAgent, JSON, get(snapshots::chunk)),
        route(Method::POST, "/api/v1/chunks/check", OperatorOrAgent, MISSING, post(snapshots::check_chunks)),
        route(Method::POST, "/api/v1/uploads", OperatorOrAgent, JSON, post(uploads::begin)),
        route(Method::POST, "/api/v1/uploads/{upload}/missing", OperatorOrAgent, MISSING, post(uploads::missing)),
        route(Method::PUT, "/api/v1/uploads/{upload}/chunks/{digest}", OperatorOrAgent, CHUNK, put(uploads::put_chunk)),
        route(Method::POST, "/api/v1/uploads/{upload}/commit", OperatorOrAgent, MANIFEST, post(uploads::commit)),
        route(Method::DELETE, "/api/v1/uploads/{upload}", OperatorOrAgent, JSON, delete(uploads::abort)),
        route(Method::GET, "/api/v1/jobs", Operator, JSON, get(jobs::list)),
        route(Method::POST, "/api/v1/jobs", Operator, JSON, post(jobs::create)),
        route(Method::GET, "/api/v1/jobs/{id}", OperatorOrAgent, JSON, get(jobs::show)),
        route(Method::POST, "/api/v1/jobs/{id}/progress", OperatorOrAgent, JSON, post(jobs::progress)),
        route(Method::POST, "/api/v1/jobs/{id}/finish", OperatorOrAgent, JSON, post(jobs::finish)),
        route(Method::GET, "/api/v1/schedules", Operator, JSON, get(schedules::list)),
        route(Method::POST, "/api/v1/schedules", Admin, JSON, post(schedules::create)),
        route(Method::DELETE, "/api/v1/schedules/{name}", Admin, JSON, delete(schedules::remove)),
        route(Method::PUT, "/api/v1/schedules/{name}/enabled", Admin, JSON, put(schedules::set_enabled)),
        route(Method::GET, "/api/v1/schedules/{name}/runs", Operator, JSON, get(schedules::runs)),
        route(Method::POST, "/api/v1/tokens", Admin, JSON, post(admin::create_token)),
        route(Method::POST, "/api/v1/retention/apply", Admin, JSON, post(admin::apply_retention)),
        route(Method::POST, "/api/v1/gc", Admin, JSON, post(admin::gc)),
        route(Method::POST, "/api/v1/verify", Admin, JSON, post(admin::verify)),
        route(Method::GET, "/api/v1/audit", Admin, JSON, get(admin::audit)),
        route(Method::GET, "/api/v1/netboot/status", Operator, JSON, get(crate::netboot::http::status)),
        route(Method::GET, "/api/v1/notify", Admin, JSON, get(notify::list)),
        route(Method::POST, "/api/v1/notify", Admin, JSON, post(notify::add)),
        route(Method::DELETE, "/api/v1/notify/{id}", Admin, JSON, delete(notify::remove)),
        route(Method::POST, "/api/v1/notify/test", Admin, JSON, post(notify::test)),
        route(Method::GET, "/metrics", Operator, JSON, get(metrics::metrics)),
        route(Method::GET, "/", Page, JSON, get(web::status)),
        route(Method::GET, "/status", Page, JSON, get(web::status)),
        route(Method::GET, "/login", Public, JSON, get(web::login_form)),
        route(Method::POST, "/login", Public, JSON, post(web::login)),
        route(Method::POST, "/logout", Public, JSON, post(web::logout)),
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

/// Serves the API on `listener` until `shutdown` completes. With `tls`, speaks HTTPS only.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let app = router(state.clone());
    let janitor = tokio::spawn(uploads::expire_idle_loop(state.clone()));
    let watchdog = tokio::spawn(watchdog::run(state));
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let r = match tls {
        Some(config) => {
            axum_server::from_tcp_rustls(listener, config).handle(handle).serve(app.into_make_service()).await
        }
        None => axum_server::from_tcp(listener).handle(handle).serve(app.into_make_service()).await,
    };
    janitor.abort();
    watchdog.abort();
    r
}
