//! Every route of the engine's API: method, path pattern (axum syntax) and body limit, declared
//! once. The engine builds its router from these (adding who may call each, which is policy and
//! stays in the engine); clients build URLs with the functions below, never by hand.

/// One route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    /// Pattern with `{name}` placeholders, as the router matches it.
    pub path: &'static str,
    /// Largest request body accepted, bytes.
    pub body_limit: usize,
}

/// Request body limits.
pub mod limits {
    /// JSON requests.
    pub const JSON: usize = 64 << 10;
    /// One encoded chunk: header + zstd's worst case for the largest chunk.
    pub const CHUNK: usize = 64 + (16 << 20) + (16 << 20) / 128 + 1024;
    /// One `missing` or `chunks/check` request.
    pub const MISSING: usize = crate::uploads::MISSING_BATCH * 32;
    /// One encoded manifest.
    pub const MANIFEST: usize = 256 << 20;
    /// One `pieces` request.
    pub const PIECES: usize = crate::uploads::PIECES_BATCH * 32;
}

use limits::*;

const fn r(method: &'static str, path: &'static str, body_limit: usize) -> Route {
    Route { method, path, body_limit }
}

pub const HEALTH: Route = r("GET", "/api/v1/health", JSON);
pub const HOSTS: Route = r("GET", "/api/v1/hosts", JSON);
pub const HOST_CREATE: Route = r("POST", "/api/v1/hosts", JSON);
pub const HOST: Route = r("GET", "/api/v1/hosts/{name}", JSON);
pub const HOST_SECURE_BOOT: Route = r("PUT", "/api/v1/hosts/{name}/secure-boot", JSON);
pub const HOST_POWER: Route = r("GET", "/api/v1/hosts/{name}/power", JSON);
pub const HOST_POWER_SET: Route = r("PUT", "/api/v1/hosts/{name}/power", JSON);
pub const HOST_POWER_CLEAR: Route = r("DELETE", "/api/v1/hosts/{name}/power", JSON);
pub const HOST_POWER_ACT: Route = r("POST", "/api/v1/hosts/{name}/power/{action}", JSON);
pub const SNAPSHOTS: Route = r("GET", "/api/v1/snapshots", JSON);
pub const SNAPSHOT_DELETE: Route = r("DELETE", "/api/v1/snapshots/{id}", JSON);
pub const SNAPSHOT_MANIFEST: Route = r("GET", "/api/v1/snapshots/{id}/manifest", JSON);
pub const SNAPSHOT_CONFIRM: Route = r("POST", "/api/v1/snapshots/{id}/confirm", JSON);
/// Boot the snapshot in a throwaway QEMU machine on the engine host; answers with the verdict
/// when the test ends (minutes: the client's timeout must cover the test's).
pub const SNAPSHOT_BOOT_TEST: Route = r("POST", "/api/v1/snapshots/{id}/boot-test", JSON);
pub const CHUNK: Route = r("GET", "/api/v1/chunks/{digest}", JSON);
pub const CHUNKS_CHECK: Route = r("POST", "/api/v1/chunks/check", MISSING);
pub const UPLOAD_BEGIN: Route = r("POST", "/api/v1/uploads", JSON);
pub const UPLOAD_MISSING: Route = r("POST", "/api/v1/uploads/{upload}/missing", MISSING);
pub const UPLOAD_CHUNK: Route = r("PUT", "/api/v1/uploads/{upload}/chunks/{digest}", limits::CHUNK);
pub const UPLOAD_COMMIT: Route = r("POST", "/api/v1/uploads/{upload}/commit", MANIFEST);
pub const UPLOAD_ABORT: Route = r("DELETE", "/api/v1/uploads/{upload}", JSON);
/// The manifest of the session host's latest snapshot (`?disk=NAME`: that member of a set), the
/// parent a capture compares its changed chunks with; 404 when there is none.
pub const UPLOAD_PARENT: Route = r("GET", "/api/v1/uploads/{upload}/parent", JSON);
/// The piece digests of chunks of the session's parents (`?size=N`), so that a changed chunk
/// can go as patches on its parent's (`kura_imaging::pieced`).
pub const UPLOAD_PIECES: Route = r("POST", "/api/v1/uploads/{upload}/pieces", PIECES);
pub const JOBS: Route = r("GET", "/api/v1/jobs", JSON);
pub const JOB_CREATE: Route = r("POST", "/api/v1/jobs", JSON);
pub const JOB: Route = r("GET", "/api/v1/jobs/{id}", JSON);
pub const JOB_PROGRESS: Route = r("POST", "/api/v1/jobs/{id}/progress", JSON);
pub const JOB_FINISH: Route = r("POST", "/api/v1/jobs/{id}/finish", JSON);
pub const SCHEDULES: Route = r("GET", "/api/v1/schedules", JSON);
pub const SCHEDULE_CREATE: Route = r("POST", "/api/v1/schedules", JSON);
pub const SCHEDULE_DELETE: Route = r("DELETE", "/api/v1/schedules/{name}", JSON);
pub const SCHEDULE_ENABLED: Route = r("PUT", "/api/v1/schedules/{name}/enabled", JSON);
pub const SCHEDULE_RUNS: Route = r("GET", "/api/v1/schedules/{name}/runs", JSON);
pub const TOKENS: Route = r("GET", "/api/v1/tokens", JSON);
pub const TOKEN_CREATE: Route = r("POST", "/api/v1/tokens", JSON);
pub const TOKEN_REVOKE: Route = r("DELETE", "/api/v1/tokens/{id}", JSON);
pub const RETENTION_APPLY: Route = r("POST", "/api/v1/retention/apply", JSON);
pub const GC: Route = r("POST", "/api/v1/gc", JSON);
pub const VERIFY: Route = r("POST", "/api/v1/verify", JSON);
pub const AUDIT: Route = r("GET", "/api/v1/audit", JSON);
pub const NETBOOT_STATUS: Route = r("GET", "/api/v1/netboot/status", JSON);
pub const NOTIFY: Route = r("GET", "/api/v1/notify", JSON);
pub const NOTIFY_ADD: Route = r("POST", "/api/v1/notify", JSON);
pub const NOTIFY_REMOVE: Route = r("DELETE", "/api/v1/notify/{id}", JSON);
pub const NOTIFY_TEST: Route = r("POST", "/api/v1/notify/test", JSON);
pub const REMOTES: Route = r("GET", "/api/v1/remotes", JSON);
pub const REMOTE_ADD: Route = r("POST", "/api/v1/remotes", JSON);
pub const REMOTE_REMOVE: Route = r("DELETE", "/api/v1/remotes/{name}", JSON);
/// The replication rules and what each remote still lacks.
pub const REPLICATION: Route = r("GET", "/api/v1/replication", JSON);
pub const REPLICATION_RULE_ADD: Route = r("POST", "/api/v1/replication/rules", JSON);
pub const REPLICATION_RULE_REMOVE: Route = r("DELETE", "/api/v1/replication/rules/{id}", JSON);
/// Check snapshots on a remote again and send what it lacks.
pub const REPLICATION_RESYNC: Route = r("POST", "/api/v1/replication/resync", JSON);
/// A DR engine's quarantine mark, for the primaries that replicate to it.
pub const REPLICA_QUARANTINE: Route = r("GET", "/api/v1/replica/quarantine", JSON);
/// A DR engine pulling from this one reports a snapshot it now holds.
pub const REPLICA_PULLED: Route = r("POST", "/api/v1/replica/pulled", JSON);
/// Add a MAC address to a host (`kura host set NAME --add-mac`).
pub const HOST_MAC_ADD: Route = r("POST", "/api/v1/hosts/{name}/macs", JSON);
/// Remove a MAC address from a host.
pub const HOST_MAC_REMOVE: Route = r("DELETE", "/api/v1/hosts/{name}/macs/{mac}", JSON);
pub const METRICS: Route = r("GET", "/metrics", JSON);
pub const PAGE_ROOT: Route = r("GET", "/", JSON);
pub const PAGE_STATUS: Route = r("GET", "/status", JSON);
pub const PAGE_LOGIN_FORM: Route = r("GET", "/login", JSON);
pub const PAGE_LOGIN: Route = r("POST", "/login", JSON);
pub const PAGE_LOGOUT: Route = r("POST", "/logout", JSON);
/// A boot test's screenshot (PNG) the engine keeps, by its file name (the status page links it).
pub const PAGE_BOOT_SCREENSHOT: Route = r("GET", "/boot-tests/screenshots/{name}", JSON);

impl Route {
    /// The path with its placeholders filled in order. Values are percent-encoded.
    pub fn url(&self, args: &[&str]) -> String {
        let mut out = String::with_capacity(self.path.len() + 32);
        let mut rest = self.path;
        let mut args = args.iter();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map(|c| open + c).expect("a closed placeholder");
            let value = args.next().unwrap_or_else(|| panic!("route {} needs more arguments", self.path));
            out.push_str(&encode_segment(value));
            rest = &rest[close + 1..];
        }
        assert!(args.next().is_none(), "route {} takes fewer arguments", self.path);
        out.push_str(rest);
        out
    }
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn encode_query(s: &str) -> String {
    encode_segment(s)
}

pub fn job(id: i64) -> String {
    JOB.url(&[&id.to_string()])
}
pub fn job_progress(id: i64) -> String {
    JOB_PROGRESS.url(&[&id.to_string()])
}
pub fn job_finish(id: i64) -> String {
    JOB_FINISH.url(&[&id.to_string()])
}
pub fn upload_missing(upload: &str) -> String {
    UPLOAD_MISSING.url(&[upload])
}
pub fn upload_chunk(upload: &str, digest: &kura_imaging::chunk::Digest) -> String {
    UPLOAD_CHUNK.url(&[upload, &digest.to_hex()])
}
pub fn upload_commit(upload: &str) -> String {
    UPLOAD_COMMIT.url(&[upload])
}
pub fn upload_abort(upload: &str) -> String {
    UPLOAD_ABORT.url(&[upload])
}
/// `GET /uploads/{upload}/parent[?disk=NAME]`.
pub fn upload_parent(upload: &str, disk: Option<&str>) -> String {
    let path = UPLOAD_PARENT.url(&[upload]);
    match disk {
        Some(d) => format!("{path}?disk={}", encode_query(d)),
        None => path,
    }
}
/// `POST /uploads/{upload}/pieces?size=N`.
pub fn upload_pieces(upload: &str, piece_size: u32) -> String {
    format!("{}?size={piece_size}", UPLOAD_PIECES.url(&[upload]))
}
pub fn token_revoke(id: i64) -> String {
    TOKEN_REVOKE.url(&[&id.to_string()])
}
pub fn snapshot_manifest(id: &str) -> String {
    SNAPSHOT_MANIFEST.url(&[id])
}
pub fn snapshot_confirm(id: &str) -> String {
    SNAPSHOT_CONFIRM.url(&[id])
}
pub fn snapshot_boot_test(id: &str) -> String {
    SNAPSHOT_BOOT_TEST.url(&[id])
}
pub fn chunk(digest: &kura_imaging::chunk::Digest) -> String {
    CHUNK.url(&[&digest.to_hex()])
}
/// `GET /snapshots[?host=NAME]`.
pub fn snapshots(host: Option<&str>) -> String {
    match host {
        Some(h) => format!("{}?host={}", SNAPSHOTS.path, encode_query(h)),
        None => SNAPSHOTS.path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_fill_placeholders_in_order() {
        assert_eq!(job(42), "/api/v1/jobs/42");
        assert_eq!(job_finish(7), "/api/v1/jobs/7/finish");
        assert_eq!(HOST_POWER_ACT.url(&["web 01", "cycle"]), "/api/v1/hosts/web%2001/power/cycle");
        assert_eq!(snapshots(Some("a&b")), "/api/v1/snapshots?host=a%26b");
        assert_eq!(HEALTH.url(&[]), "/api/v1/health");
        assert_eq!(upload_parent("u1", Some("sda 2")), "/api/v1/uploads/u1/parent?disk=sda%202");
        assert_eq!(upload_parent("u1", None), "/api/v1/uploads/u1/parent");
        assert_eq!(upload_pieces("u1", 16384), "/api/v1/uploads/u1/pieces?size=16384");
    }

    #[test]
    #[should_panic(expected = "needs more arguments")]
    fn missing_arguments_are_a_bug() {
        UPLOAD_CHUNK.url(&["x"]);
    }
}
