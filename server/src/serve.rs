//! `kura serve`: the engine on embedded defaults. Everything lives under one data directory:
//!
//! ```text
//! DIR/store/         the chunk store (catalogs::store), unless `--store s3://…` puts it in a
//!                    bucket (catalogs::s3); then DIR/store.spec records which one, and
//! DIR/cache/         holds that store's chunk cache and chunk index (never the truth)
//! DIR/catalog.db     the SQLite catalog (WAL)
//! DIR/admin.token    the first admin token, mode 0600, written on first start
//! DIR/secrets.key    the key sealing BMC passwords in the catalog, mode 0600, made on first
//!                    start (kura_catalogs::secrets); never inside the catalog
//! DIR/tls/           cert.pem, key.pem (self-signed on first start), fingerprint
//! DIR/serve.json     where the running server listens: {"url", "fingerprint"}
//! ```
//!
//! The directory is private (`crate::datadir`): created 0700, every file 0600, secrets created
//! `O_EXCL|O_NOFOLLOW` or replaced by rename, never through a planted symbolic link; startup
//! refuses a directory, parent, entry or secret that someone else could have planted or read.
//!
//! Beside the API runs the scheduler (`crate::scheduler`), which turns schedules into capture
//! jobs; it and the API stop on the same SIGTERM / Ctrl-C.
//!
//! On start the catalog is reconciled with the store: the store is the source of truth for
//! which snapshots exist (a server killed between writing a manifest and recording it loses
//! nothing).

use crate::api::{self, AppState};
use crate::scheduler::{Clock, FileClock, Hooks, Scheduler, SystemClock};
use anyhow::{bail, Context, Result};
use kura_catalogs::backend::{self, CacheOptions};
use kura_catalogs::db::{Catalog, NewHost, NewSnapshot, SnapshotKind};
use kura_catalogs::private;
use kura_catalogs::{LocalStore, Store};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ServeOptions {
    pub data: PathBuf,
    /// `--catalog`: a PostgreSQL URL instead of DIR/catalog.db.
    pub catalog: Option<String>,
    pub listen: SocketAddr,
    /// Serve plain HTTP (only when explicitly asked).
    pub insecure_http: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Netboot configuration (JSON, `kura_netboot::NetbootConfig`): run DHCP/TFTP/boot HTTP.
    pub netboot: Option<PathBuf>,
    /// Silence after which a running job's agent is given up (`api::watchdog`).
    pub agent_timeout: std::time::Duration,
    /// The scheduler's settings (tick, catch-up window, overall job cap).
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// Take the time from this file (RFC 3339) instead of the system clock: tests only.
    pub test_clock: Option<PathBuf>,
    /// Hold the snapshots of captures whose boot was unusual unconfirmed
    /// (`crate::engine::Engine::hold_unusual_captures`).
    pub hold_unusual_captures: bool,
    /// The chunk store when it is not `DATA/store`: `s3://bucket/prefix?…` (`kura_catalogs::s3`).
    pub store: Option<String>,
    /// Size bound of the local chunk cache of an S3 store.
    pub cache_bytes: u64,
    /// How long an upload session's writer lease lasts unrenewed (several nodes on one S3
    /// store; `crate::engine::cluster`).
    pub writer_lease: std::time::Duration,
}

/// The file recording which remote store a data directory's catalog belongs to.
const STORE_SPEC_FILE: &str = "store.spec";

/// The store `data`'s catalog belongs to: `None` for the local `DATA/store`, or the remote
/// spec. The first start with `--store` records it; a later start with another store (or
/// with none when one is recorded, and vice versa) is refused, since reconciling a catalog
/// with the wrong store would drop its snapshots. A given spec may change the settings (the
/// part after `?`) of the recorded store, not the store.
pub fn store_spec(data: &Path, given: Option<&str>) -> Result<Option<String>> {
    let path = data.join(STORE_SPEC_FILE);
    let recorded = match std::fs::read_to_string(&path) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let name = |s: &str| s.split('?').next().unwrap_or("").trim_end_matches('/').to_string();
    let given = given.filter(|g| *g != data.join("store").to_string_lossy());
    match (recorded, given) {
        (None, None) => Ok(None),
        (Some(r), None) => Ok(Some(r)),
        (None, Some(g)) => {
            if !backend::is_remote(g) {
                bail!("--store for kura serve is an s3:// store (the local store is always DATA/store)");
            }
            if data.join("catalog.db").exists() && LocalStore::open(&data.join("store")).is_ok() {
                bail!("{} already has a local store and catalog; use a new data directory for {g}", data.display());
            }
            write_private(&path, &format!("{g}\n"))?;
            Ok(Some(g.to_string()))
        }
        (Some(r), Some(g)) if name(&r) == name(g) => {
            if r != g {
                write_private(&path, &format!("{g}\n"))?;
            }
            Ok(Some(g.to_string()))
        }
        (Some(r), Some(g)) => bail!(
            "{}'s catalog belongs to the store {} ({}); refusing {}",
            data.display(),
            name(&r),
            path.display(),
            name(g)
        ),
    }
}

/// Opens (creating if needed) the store and the catalog under `data`, after checking that
/// the data directory is private (`crate::datadir`; warnings go to stderr). The store is
/// `DATA/store` or the remote one recorded for `data` or given (see [`store_spec`]), with its
/// cache in `DATA/cache` bounded to `cache_bytes`. The catalog is `catalog` (`--catalog`, a
/// PostgreSQL URL) if given, else DATA/catalog.db, on `clock` when given (tests). A remote
/// store keeps its chunk index in the catalog, which several engine nodes may share
/// (`kura_catalogs::db::cluster`); the third value says so.
pub fn open_state(
    data: &Path,
    store: Option<&str>,
    catalog: Option<&str>,
    cache_bytes: u64,
    clock: Option<Arc<dyn Clock>>,
) -> Result<(Arc<dyn Store>, Arc<Catalog>, bool)> {
    for warning in crate::datadir::prepare(data)? {
        eprintln!("{warning}");
    }
    let spec = store_spec(data, store)?;
    let mut catalog = open_catalog(data, catalog)?;
    if let Some(c) = clock {
        // The catalog stamps rows with the test clock too, so the engine has one time.
        catalog = catalog.with_clock(move || c.now());
    }
    let catalog = Arc::new(catalog);
    let (store, shared): (Arc<dyn Store>, bool) = match spec {
        None => (Arc::new(LocalStore::open_or_create(&data.join("store"))?), false),
        Some(spec) if backend::is_remote(&spec) => {
            let cache = CacheOptions { dir: Some(data.join("cache")), max_bytes: cache_bytes };
            let s3 = kura_catalogs::s3::S3Store::open(&spec, &cache, true)
                .and_then(|s| s.with_shared_index(catalog.clone()))
                .with_context(|| format!("opening the store {}", spec.split('?').next().unwrap_or("")))?;
            (Arc::new(s3), true)
        }
        Some(spec) => {
            let cache = CacheOptions { dir: Some(data.join("cache")), max_bytes: cache_bytes };
            (backend::open_or_create(&spec, &cache).with_context(|| format!("opening the store {spec}"))?, false)
        }
    };
    Ok((store, catalog, shared))
}

/// The catalog of `--catalog` (a PostgreSQL URL) or, without it, DIR/catalog.db.
pub fn open_catalog(data: &Path, catalog: Option<&str>) -> Result<Catalog> {
    match catalog {
        Some(url) if kura_catalogs::db::is_postgres_url(url) => {
            Catalog::open_postgres(url).context("opening the catalog (PostgreSQL)")
        }
        Some(other) => anyhow::bail!("--catalog {other:?} is not a postgres:// URL (the default is DIR/catalog.db)"),
        None => Catalog::open(&data.join("catalog.db")).context("opening the catalog"),
    }
}

/// Makes the catalog agree with the store: every manifest in the store has a snapshot row,
/// and rows whose manifest is gone are removed. Returns (added, removed). A snapshot set's row
/// goes (with its members' rows) when any member's manifest is gone; a member's manifest left
/// without rows by a crash inside a set's commit comes back as a one-disk snapshot.
///
/// Other engine nodes may commit meanwhile (a shared catalog): the rows are read *before* the
/// store is listed, and a commit writes its manifest before its row, so a row read here has
/// its manifest in the listing unless it was deleted. A manifest without a row may be a commit
/// in progress on another node: it is adopted only when no writer lease is live on any node.
pub fn reconcile(store: &dyn Store, catalog: &Catalog, actor: &str) -> Result<(usize, usize)> {
    let rows = catalog.list_snapshots(None)?;
    let in_store = store.snapshot_ids()?;
    let known: std::collections::HashSet<&String> = rows.iter().map(|s| &s.id).collect();
    let orphans: Vec<&String> = in_store.iter().filter(|id| !known.contains(id)).collect();
    let writing = catalog.writer_leases()?.len();
    if writing > 0 && !orphans.is_empty() {
        tracing::warn!(
            "{} manifests in the store have no catalog row; {writing} uploads run on other engine nodes, so they \
             may be commits in progress: left for a later start",
            orphans.len()
        );
    }
    let mut added = 0;
    for id in orphans.into_iter().filter(|_| writing == 0) {
        let m = match store.load_manifest(id) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("snapshot {id} in the store is unreadable and is not listed: {e}");
                continue;
            }
        };
        let created = match m.created_unix() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("snapshot {id} in the store has a bad manifest and is not listed: {e}");
                continue;
            }
        };
        let host = m.host.clone().unwrap_or_else(|| "unknown".to_string());
        if catalog.get_host(&host).is_err() {
            catalog.create_host(actor, &NewHost { name: host.clone(), ..Default::default() })?;
        }
        catalog.add_snapshot(
            actor,
            &NewSnapshot {
                id: id.clone(),
                host,
                disk: None,
                name: m.name.clone(),
                kind: SnapshotKind::Manual,
                created,
                disk_size: m.disk_size(),
                used_bytes: m.used_bytes(),
                new_bytes: 0,
                reused_bytes: 0,
                set: None,
                members: Vec::new(),
            },
        )?;
        added += 1;
    }
    let present: std::collections::HashSet<&String> = in_store.iter().collect();
    let mut removed = 0;
    for s in &rows {
        // A snapshot set has no file of its own: it is present while every member is.
        let gone = match &s.set {
            Some(set) => set.disks.iter().any(|d| !present.contains(&d.manifest)),
            None => !present.contains(&s.id),
        };
        if gone && s.set_id.is_none() {
            if s.state == kura_catalogs::db::SnapshotState::Committed {
                catalog.mark_snapshot_deleting(actor, &s.id)?;
            }
            catalog.remove_snapshot(actor, &s.id)?;
            removed += 1;
        }
    }
    Ok((added, removed))
}

/// Writes a private file (0600), replacing an older one by rename: a symbolic link planted in
/// its place is replaced, its target never written (`kura_catalogs::private::replace`).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    private::replace(path, contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Loads the TLS certificate, making a self-signed one on first start. Returns the rustls
/// config and the certificate's SHA-256 fingerprint.
fn tls_config(opts: &ServeOptions) -> Result<(rustls::ServerConfig, String)> {
    let (cert_path, key_path, key_forbidden) = match (&opts.tls_cert, &opts.tls_key) {
        // An operator's own key may be group-readable (the `ssl-cert` group), never by all.
        (Some(c), Some(k)) => (c.clone(), k.clone(), 0o007),
        (None, None) => {
            let dir = opts.data.join("tls");
            private::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            private::check_dir(&dir).map_err(|e| anyhow::anyhow!("refusing the TLS directory: {e}"))?;
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if c.symlink_metadata().is_err() || k.symlink_metadata().is_err() {
                let mut names = vec!["kura".to_string(), "localhost".to_string()];
                names.push(opts.listen.ip().to_string());
                let cert = rcgen::generate_simple_self_signed(names).context("generating a TLS certificate")?;
                write_private(&k, &cert.key_pair.serialize_pem())?;
                write_private(&c, &cert.cert.pem())?;
            }
            (c, k, 0o077)
        }
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> = {
        let pem = std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        rustls_pemfile_certs(&pem).with_context(|| format!("parsing {}", cert_path.display()))?
    };
    let key = {
        use rustls::pki_types::pem::PemObject;
        // The data directory's key must be the engine's own and private; an operator's key
        // (--tls-key, often a symbolic link as certbot makes them) must not be world-readable.
        let pem = if opts.tls_key.is_some() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_path)
                .with_context(|| format!("reading the private key {}", key_path.display()))?
                .permissions()
                .mode();
            if mode & key_forbidden != 0 {
                bail!(
                    "refusing the private key {}: mode {:o} lets every local user read it; `chmod o-rwx {}`",
                    key_path.display(),
                    mode & 0o777,
                    key_path.display()
                );
            }
            std::fs::read(&key_path).with_context(|| format!("reading the private key {}", key_path.display()))?
        } else {
            private::read_secret(&key_path, key_forbidden)
                .map_err(|e| anyhow::anyhow!("refusing the TLS private key: {e}"))?
        };
        rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem)
            .with_context(|| format!("reading the private key {}", key_path.display()))?
    };
    let fp = kura_protocol::client::tls::fingerprint(certs.first().context("no certificate in the PEM file")?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("loading the TLS certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, fp))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.context("bad PEM")?;
    if certs.is_empty() {
        bail!("no certificate found");
    }
    Ok(certs)
}

/// The open-files limit `kura serve` wants: both listeners' connection caps
/// (`api::listen::MAX_CONNECTIONS`, the boot HTTP's) plus the store's and catalog's files.
pub const WANTED_OPEN_FILES: u64 = 4096;

/// Raises the soft open-files limit towards [`WANTED_OPEN_FILES`] (at most the hard limit), so
/// the listeners' connection caps, not `EMFILE`, are what bounds a connection flood.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < WANTED_OPEN_FILES => {
            let want = WANTED_OPEN_FILES.min(hard);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
                tracing::warn!("cannot raise the open-files limit from {soft} to {want}: {e}");
            } else if want < WANTED_OPEN_FILES {
                tracing::warn!("the open-files limit is {want} (hard limit); {WANTED_OPEN_FILES} is advised");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-files limit: {e}"),
    }
}

pub fn run(opts: ServeOptions) -> Result<()> {
    raise_open_files_limit();
    let clock: Arc<dyn Clock> = match &opts.test_clock {
        Some(path) => {
            eprintln!("WARNING: the engine's clock is the test clock {}", path.display());
            Arc::new(FileClock::open(path.clone())?)
        }
        None => Arc::new(SystemClock),
    };
    let (store, catalog, shared) = open_state(
        &opts.data,
        opts.store.as_deref(),
        opts.catalog.as_deref(),
        opts.cache_bytes,
        opts.test_clock.is_some().then(|| clock.clone()),
    )?;
    let _lock = store.lock(true)?;
    let leftovers = store.clean_tmp()?;
    if leftovers > 0 {
        eprintln!("removed {leftovers} files of interrupted writes from the store's tmp/");
    }
    let cluster = match shared {
        true => {
            let c = crate::engine::cluster::Cluster::of_data_dir(&opts.data, opts.writer_lease)?;
            let ended = c.end_previous_leases(&catalog)?;
            if ended > 0 {
                eprintln!("ended {ended} writer leases this node held before it stopped");
            }
            Some(c)
        }
        false => None,
    };
    let (added, removed) = reconcile(&*store, &catalog, "kura-serve")?;
    if added + removed > 0 {
        eprintln!("catalog reconciled with the store: {added} snapshots added, {removed} removed");
    }
    // Before the listener: a node that says it listens has its data directory complete.
    let secrets = kura_catalogs::secrets::SecretKey::load_or_create(&opts.data.join("secrets.key"))?;
    if let Some(issued) = catalog.bootstrap_admin("admin")? {
        let path = opts.data.join("admin.token");
        write_private(&path, &format!("{}\n", issued.secret))?;
        eprintln!("created the first admin token: {} (mode 0600; keep it safe)", path.display());
    }
    let (tls, fingerprint, scheme) = if opts.insecure_http {
        eprintln!("WARNING: serving plain HTTP (--insecure-http): tokens and data cross the network unencrypted");
        (None, None, "http")
    } else {
        let (config, fp) = tls_config(&opts)?;
        write_private(&opts.data.join("tls").join("fingerprint"), &format!("{fp}\n"))?;
        (Some(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config))), Some(fp), "https")
    };
    let listener = std::net::TcpListener::bind(opts.listen).with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("{scheme}://{addr}");
    write_private(
        &opts.data.join("serve.json"),
        &serde_json::json!({ "url": url, "fingerprint": fingerprint }).to_string(),
    )?;
    println!("kura serve: listening on {url}");
    if let Some(fp) = &fingerprint {
        println!("kura serve: certificate fingerprint (pin it with --fingerprint): {fp}");
    }
    std::io::stdout().flush().ok();

    // Netboot (optional): DHCP/TFTP/boot HTTP beside the API; see the kura-netboot crate and src/boot_policy.rs.
    let netboot = match &opts.netboot {
        Some(p) => {
            Some(crate::boot_policy::prepare(p, &opts.data, catalog.clone(), scheme, addr, fingerprint.clone())?)
        }
        None => None,
    };
    let state = AppState::new(
        store.clone(),
        catalog,
        netboot.as_ref().map(|nb| nb.log.clone()),
        Arc::new(secrets),
        tls.is_some(),
        cluster,
    );
    state.engine.liveness.set_timeout(opts.agent_timeout);
    state.engine.hold_unusual_captures.store(opts.hold_unusual_captures, std::sync::atomic::Ordering::Relaxed);
    state.engine.boot_tests.keep_screenshots_in(&opts.data)?;
    crate::boot_test::engine::resume(&state.engine)?;
    // The scheduler reports finished runs to the notifier, released jobs to power control and
    // committed captures to the boot tests.
    let hooks = Hooks {
        observers: vec![Arc::new(state.engine.notifier.clone()) as Arc<dyn crate::scheduler::RunObserver>],
        release: vec![
            Arc::new(crate::power::KickReleased(state.engine.power.clone())) as Arc<dyn crate::scheduler::ReleaseHook>
        ],
        captures: vec![Arc::new(crate::boot_test::engine::TestScheduledCaptures(Arc::downgrade(&state.engine)))
            as Arc<dyn crate::scheduler::CaptureHook>],
    };
    let scheduler =
        Arc::new(Scheduler::new(state.engine.catalog.clone(), Some(store.clone()), opts.scheduler.clone(), hooks));
    let _ = state.scheduler_ticks.set(scheduler.tick_counter());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let netboot = match netboot {
            Some(nb) => Some(kura_netboot::start(nb).await?),
            None => None,
        };
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let mut replication_stop = stop_rx.clone();
        let scheduler_task = tokio::spawn(crate::scheduler::run(scheduler, clock, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }));
        // Engine-to-engine replication (docs/dr.md): sends the catalog's durable queue.
        let replication_task = tokio::spawn(crate::replication::run(state.engine.clone(), async move {
            let _ = replication_stop.wait_for(|stop| *stop).await;
        }));
        let shutdown = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            // Not eprintln!: with stderr's reader gone it would panic here, and the server
            // would never stop.
            let _ = writeln!(std::io::stderr(), "kura serve: shutting down");
            let _ = stop_tx.send(true);
        };
        let served = api::serve(listener, tls, state, shutdown).await;
        let _ = scheduler_task.await;
        let _ = replication_task.await;
        if let Some(nb) = netboot {
            nb.stop().await;
        }
        served.map_err(anyhow::Error::from)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::zero_manifest as manifest;

    #[test]
    fn reconcile_lists_manifests_by_their_creation_time_and_refuses_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(&dir.path().join("store")).unwrap();
        let catalog = Catalog::open_in_memory().unwrap();
        let good = store.commit_manifest(&manifest("good", "2026-11-25T17:14:41.000000005Z")).unwrap();
        store.commit_manifest(&manifest("bad", "25 Nov 2026")).unwrap();
        assert_eq!(reconcile(&store, &catalog, "test").unwrap(), (1, 0));
        let listed = catalog.list_snapshots(None).unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!((listed[0].id.as_str(), listed[0].created), (good.as_str(), 1_795_626_881));
    }

    #[test]
    fn the_store_of_a_data_directory_is_recorded_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        assert_eq!(store_spec(data, None).unwrap(), None);
        let local = data.join("store");
        assert_eq!(store_spec(data, local.to_str()).unwrap(), None, "DATA/store is the local default");
        let e = store_spec(data, Some("/elsewhere")).unwrap_err().to_string();
        assert!(e.contains("s3://"), "{e}");
        let a = "s3://bucket/a?endpoint=http://127.0.0.1:1";
        assert_eq!(store_spec(data, Some(a)).unwrap().as_deref(), Some(a));
        assert_eq!(store_spec(data, None).unwrap().as_deref(), Some(a), "recorded at the first start");
        // New settings for the same store replace the recorded ones.
        let a2 = "s3://bucket/a/?endpoint=http://127.0.0.1:2";
        assert_eq!(store_spec(data, Some(a2)).unwrap().as_deref(), Some(a2));
        assert_eq!(store_spec(data, None).unwrap().as_deref(), Some(a2));
        let e = store_spec(data, Some("s3://bucket/b")).unwrap_err().to_string();
        assert!(e.contains("belongs to the store s3://bucket/a") && e.contains("refusing s3://bucket/b"), "{e}");
    }
}
