//! `GET /api/v1/netboot/status`: the boot log of the netboot services in this process (a
//! `kura_netboot::BootLog`, read here so the netboot crate knows nothing of the API).

use super::AppState;
use axum::extract::State;
use axum::Json;
use std::sync::Arc;

pub async fn status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    match &state.bootlog {
        Some(log) => {
            Json(serde_json::json!({ "enabled": true, "machines": log.machines(), "counters": log.counters() }))
        }
        None => Json(serde_json::json!({ "enabled": false, "machines": [] })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_netboot::bootlog::Stage;
    use kura_netboot::BootLog;

    fn state(bootlog: Option<Arc<BootLog>>) -> (tempfile::TempDir, Arc<AppState>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(kura_catalogs::LocalStore::open_or_create(dir.path()).unwrap());
        let cat = Arc::new(kura_catalogs::db::Catalog::open_in_memory().unwrap());
        let secrets = Arc::new(kura_catalogs::secrets::SecretKey::generate().unwrap());
        (dir, AppState::new(store, cat, bootlog, secrets, false, None))
    }

    #[tokio::test]
    async fn netboot_status_shows_the_boot_log() {
        let (_d, off) = state(None);
        let s = status(State(off)).await.0;
        assert_eq!(s, serde_json::json!({ "enabled": false, "machines": [] }));
        let log = BootLog::new();
        log.record_mac("52:54:00:00:00:07".parse().unwrap(), None, Stage::Script, "local-boot script");
        let (_d, on) = state(Some(log));
        let s = status(State(on)).await.0;
        assert_eq!(s["enabled"], true);
        assert_eq!(s["machines"][0]["mac"], "52:54:00:00:00:07", "{s}");
        assert_eq!(s["machines"][0]["events"][0]["detail"], "local-boot script", "{s}");
    }
}
