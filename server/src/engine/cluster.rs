//! This engine as one node of several on a shared catalog and remote (S3) store (issue 14,
//! `docs/scale-out.md`): the lease each upload session holds in the catalog, renewed while it
//! runs, so the collector on any node sees the writers of every node
//! (`kura_catalogs::db::cluster` has the rule). An engine on the local store writes alone and
//! has no [`Cluster`].

use super::{Engine, ServiceError, ServiceResult};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// This node's name and lease time.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Shown in the lease rows (which node holds which writer).
    pub node: String,
    pub lease: Duration,
}

impl Cluster {
    /// The node of data directory `data`: named after this machine and an id kept in
    /// `DATA/node-id` (made at its first start), so a restarted node knows its old leases.
    pub fn of_data_dir(data: &std::path::Path, lease: Duration) -> anyhow::Result<Cluster> {
        use anyhow::Context;
        let path = data.join("node-id");
        let id = match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() == 16 && s.trim().bytes().all(|b| b.is_ascii_hexdigit()) => s.trim().to_string(),
            Ok(_) => anyhow::bail!("{} is damaged (not 16 hex digits): remove it", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let id = hex::encode(b);
                kura_catalogs::private::write_new(&path, format!("{id}\n").as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                id
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
        Ok(Cluster { node: format!("{}/{id}", host.trim()), lease })
    }

    /// At start: ends the leases this node held before it stopped (its sessions did not
    /// survive). Returns how many.
    pub fn end_previous_leases(&self, catalog: &kura_catalogs::db::Catalog) -> anyhow::Result<usize> {
        Ok(catalog.end_node_writers(&self.node)?)
    }
}

/// Takes the lease of upload session `upload` (before it is usable).
pub fn take(engine: &Engine, upload: &str) -> ServiceResult<()> {
    if let Some(c) = &engine.cluster {
        engine.catalog.lease_writer(upload, &c.node)?;
    }
    Ok(())
}

/// Ends upload session `upload`'s lease (committed or ended); a failure is logged: the lease
/// then expires by itself.
pub fn end(engine: &Engine, upload: &str) {
    if engine.cluster.is_some() {
        if let Err(e) = engine.catalog.end_writer(upload) {
            tracing::warn!("ending the writer lease of upload session {upload}: {e} (it expires by itself)");
        }
    }
}

/// Before a commit: renews the session's lease, refusing the commit if it had expired (this
/// node was cut off for longer than the lease: another node's collector may have removed
/// chunks the session relied on).
pub fn check_before_commit(engine: &Engine, upload: &str) -> ServiceResult<()> {
    if engine.cluster.is_none() {
        return Ok(());
    }
    if !engine.catalog.renew_writers(&[upload.to_string()])?.is_empty() {
        return Err(ServiceError::Conflict(format!(
            "upload session {upload}'s writer lease expired (this engine node was unreachable for longer than the \
             lease): start the capture again"
        )));
    }
    Ok(())
}

/// For the collector: when the oldest writer on any node started (`None` when this engine
/// writes alone or no writer runs).
pub fn writers_since(engine: &Engine) -> ServiceResult<Option<SystemTime>> {
    let Some(c) = &engine.cluster else {
        return Ok(None);
    };
    Ok(engine
        .catalog
        .oldest_live_writer(c.lease)?
        .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)))
}

/// Renews the leases of this node's open sessions, three times per lease time, until the
/// server stops.
pub async fn renew_loop(engine: Arc<Engine>) {
    let Some(c) = engine.cluster.clone() else {
        return;
    };
    let every = (c.lease / 3).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        let ids = super::uploads::open_session_ids(&engine);
        if ids.is_empty() {
            continue;
        }
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || e.catalog.renew_writers(&ids)).await {
            Ok(Ok(gone)) => {
                for id in gone {
                    tracing::error!("the writer lease of upload session {id} expired before it was renewed");
                }
            }
            Ok(Err(e)) => tracing::warn!("renewing writer leases: {e}"),
            Err(e) => tracing::warn!("renewing writer leases: {e}"),
        }
    }
}
