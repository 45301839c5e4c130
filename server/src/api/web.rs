//! The status page for operators and admins, and the browser login that guards it.
//!
//! Browsers cannot send bearer tokens, so `GET /login` shows a form where the operator pastes
//! a token; `POST /login` checks it as the API does (operator or admin only: agent tokens are
//! refused) and starts a server-side session: a random 256-bit id in a cookie
//! (`kura_session`, HttpOnly, SameSite=Strict, Secure under TLS, Path=/), mapped in memory to
//! the token's id and an expiry ([`SESSION_LIFETIME`]). The token itself is never in a URL nor
//! in the cookie. Every page request re-checks the token (revoked, expired, deleted user), so
//! revoking a token ends its sessions. `POST /logout` ends the session. Sessions do not
//! survive a restart of the server.
//!
//! Page routes have [`super::Access::Page`]: a request with a session (or an operator's bearer
//! token, for scripts) gets the page; one without is redirected to `/login` and gets no data.
//!
//! The page is server-rendered HTML with a small inline style sheet and no external assets;
//! it reloads itself every [`REFRESH_SECONDS`]. Everything that comes from the catalog is
//! HTML-escaped ([`esc`]). Elements carry stable ids and `data-*` attributes for tests and
//! scrapers (see `docs/operations.md`, "Status page"). Each host's newest boot test shows with
//! a thumbnail of its screenshot, served by [`boot_screenshot`] behind the same login.

use super::ops::{Overview, FAILURE_WINDOW, STALE_AFTER};
use super::{ApiError, ApiResult, AppState};
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use kura_catalogs::db::{Job, Principal, Role, UnixTime};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kura_session";
/// How long a session lasts after login (seconds).
pub const SESSION_LIFETIME: i64 = 12 * 3600;
/// Sessions kept at most; the oldest go first.
pub const MAX_SESSIONS: usize = 10_000;
/// The status page reloads itself this often.
pub const REFRESH_SECONDS: u32 = 10;

/// Live browser sessions: session id → token and expiry.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

#[derive(Clone, Copy)]
struct Session {
    token_id: i64,
    expires: UnixTime,
}

impl Sessions {
    fn insert(&self, id: String, s: Session, now: UnixTime) {
        let mut map = self.map.lock().expect("lock");
        map.retain(|_, v| v.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, v)| v.expires).map(|(k, _)| k.clone()) else { break };
            map.remove(&oldest);
        }
        map.insert(id, s);
    }

    fn get(&self, id: &str, now: UnixTime) -> Option<Session> {
        let mut map = self.map.lock().expect("lock");
        match map.get(id) {
            Some(s) if s.expires > now => Some(*s),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn remove(&self, id: &str) {
        self.map.lock().expect("lock").remove(id);
    }

    /// Ends every session made from token `token_id` (it was revoked). Not needed for safety
    /// (each request re-checks the token) but frees them at once.
    pub fn end_token(&self, token_id: i64) {
        self.map.lock().expect("lock").retain(|_, s| s.token_id != token_id);
    }
}

/// The session id in the request's cookies, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == SESSION_COOKIE && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(_, v)| v.to_string())
}

/// The principal of the request's session, if it has a live one whose token is still good
/// (and is an operator's or admin's).
pub async fn session_principal(state: &Arc<AppState>, headers: &HeaderMap) -> ApiResult<Option<Principal>> {
    let Some(id) = session_cookie(headers) else { return Ok(None) };
    let now = state.engine.catalog.now();
    let Some(s) = state.sessions.get(&id, now) else { return Ok(None) };
    let catalog = state.engine.catalog.clone();
    let p = tokio::task::spawn_blocking(move || catalog.token_principal(s.token_id, now)).await??;
    match p {
        Some(p) if matches!(p.role, Role::Admin | Role::Operator) => Ok(Some(p)),
        _ => {
            state.sessions.remove(&id);
            Ok(None)
        }
    }
}

/// Where a page request without a session goes.
pub fn to_login() -> Response {
    let mut r = (StatusCode::SEE_OTHER, "log in first").into_response();
    r.headers_mut().insert(LOCATION, HeaderValue::from_static("/login"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An HTML page with the headers every page gets.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}\
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.stale td{background:#fff3cd}.badge{padding:0 .4em;border-radius:3px;background:#e0a800;color:#fff}\
tr.failed td{background:#fde2e1}code{font-size:.95em}.muted{color:#777}\
header{display:flex;justify-content:space-between;align-items:baseline}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;background:#fff;padding:.6em;border:1px solid #ddd;width:max-content}\
dt{font-weight:600}dd{margin:0}form{margin:0}img.boot-shot{display:block;width:160px;margin-top:.2em;\
border:1px solid #ccc}td.boot-verdict[data-passed=\"false\"]{background:#fde2e1}";

fn page(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">{head_extra}\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        esc(title)
    )
}

fn login_page(error: Option<&str>) -> String {
    let err = error.map(|e| format!("<p id=\"login-error\" role=\"alert\">{}</p>", esc(e))).unwrap_or_default();
    page(
        "Kura — log in",
        "",
        &format!(
            "<h1>Kura</h1><p>Paste an operator or admin API token (<code>kura token create --role operator</code>).</p>\
             {err}<form id=\"login\" method=\"post\" action=\"/login\">\
             <label for=\"token\">Token</label> \
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" size=\"72\" required> \
             <button id=\"login-submit\" type=\"submit\">Log in</button></form>"
        ),
    )
}

/// `GET /login`.
pub async fn login_form() -> Response {
    html(StatusCode::OK, login_page(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

fn random_id() -> ApiResult<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

/// `POST /login` (form `token=...`): a session for an operator's or admin's token.
pub async fn login(State(state): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> ApiResult<Response> {
    let token = f.token.trim().to_string();
    let catalog = state.engine.catalog.clone();
    let found = tokio::task::spawn_blocking(move || -> ApiResult<Option<Principal>> {
        let now = catalog.now();
        let p = catalog.authenticate(&token, now)?;
        if let Some(p) = &p {
            if p.role.is_staff() {
                catalog.record_audit(&p.actor(), "web.login", "status page", serde_json::json!({}))?;
            }
        }
        Ok(p)
    })
    .await??;
    let p = match found {
        None => return Ok(html(StatusCode::UNAUTHORIZED, login_page(Some("Unknown, expired or revoked token.")))),
        Some(p) if !p.role.is_staff() => {
            return Ok(html(
                StatusCode::FORBIDDEN,
                login_page(Some("Agent, replica and reader tokens cannot use the status page.")),
            ))
        }
        Some(p) => p,
    };
    let id = random_id()?;
    let now = state.engine.catalog.now();
    state.sessions.insert(id.clone(), Session { token_id: p.token_id, expires: now + SESSION_LIFETIME }, now);
    let secure = if state.tls { "; Secure" } else { "" };
    let cookie =
        format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_LIFETIME}{secure}");
    let mut r = (StatusCode::SEE_OTHER, "logged in").into_response();
    r.headers_mut().insert(LOCATION, HeaderValue::from_static("/status"));
    r.headers_mut().insert(SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.to_string()))?);
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `POST /logout`: ends the session (if any) and clears the cookie.
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.sessions.remove(&id);
    }
    let secure = if state.tls { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut r = to_login();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

/// `GET /` and `GET /status`: the status page.
pub async fn status(State(state): State<Arc<AppState>>, Extension(p): Extension<Principal>) -> ApiResult<Response> {
    let st = state.clone();
    let o = tokio::task::spawn_blocking(move || Overview::gather(&st)).await??;
    Ok(html(StatusCode::OK, render(&o, &p)))
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3d 4h`, `5h 2m`, `42s`.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

fn time(t: UnixTime) -> String {
    kura_imaging::time::format_rfc3339(t)
}

fn opt(v: &Option<String>) -> String {
    v.as_deref().map(esc).unwrap_or_default()
}

/// The page's HTML (everything from the catalog escaped).
pub fn render(o: &Overview, p: &Principal) -> String {
    let mut b = String::new();
    let who = p.user.clone().unwrap_or_else(|| p.label.clone());
    let _ = write!(
        b,
        "<header><div><h1>Kura status</h1><span class=\"muted\">as of <time id=\"generated\" data-unix=\"{}\">{}</time>, \
         refreshes every {REFRESH_SECONDS} s</span></div>\
         <div>signed in as <span id=\"whoami\" data-role=\"{}\">{}</span> \
         <form id=\"logout\" method=\"post\" action=\"/logout\" style=\"display:inline\">\
         <button type=\"submit\">Log out</button></form></div></header>",
        o.now,
        time(o.now),
        p.role,
        esc(&who)
    );

    // Hosts.
    let stale = o.hosts.iter().filter(|h| o.is_stale(h)).count();
    let _ = write!(
        b,
        "<h2>Hosts <span class=\"muted\">({} host{}, <span id=\"stale-count\" data-count=\"{stale}\">{stale}</span> \
         without a good snapshot in {} days)</span></h2>\
         <table id=\"hosts\"><thead><tr><th>Host</th><th>Group</th><th>Last good snapshot</th><th>Taken</th>\
         <th>Age</th><th>Used bytes</th><th>Copies</th><th>Boot test passed</th><th>Newest boot test</th></tr></thead><tbody>",
        o.hosts.len(),
        if o.hosts.len() == 1 { "" } else { "s" },
        STALE_AFTER / 86_400
    );
    for h in &o.hosts {
        let is_stale = o.is_stale(h);
        let _ = write!(
            b,
            "<tr data-host=\"{}\" data-stale=\"{is_stale}\"{}><td class=\"host\">{}{}</td><td>{}</td>",
            esc(&h.name),
            if is_stale { " class=\"stale\"" } else { "" },
            esc(&h.name),
            if is_stale { " <span class=\"badge\">stale</span>" } else { "" },
            opt(&h.group)
        );
        match &h.last_snapshot {
            Some(s) => {
                let age = o.age(h).unwrap_or(0);
                let name = s.name.as_deref().map(|n| format!(" <span class=\"muted\">{}</span>", esc(n)));
                let _ = write!(
                    b,
                    "<td class=\"snapshot\" data-snapshot=\"{id}\"><code>{id}</code>{}</td>\
                     <td data-unix=\"{}\">{}</td><td class=\"age num\" data-age-seconds=\"{age}\">{}</td>\
                     <td class=\"num\" data-bytes=\"{}\">{}</td>",
                    name.unwrap_or_default(),
                    s.created,
                    time(s.created),
                    human_age(age),
                    s.used_bytes,
                    human_bytes(s.used_bytes),
                    id = esc(&s.id),
                );
                let (copies, wanted) = o.copies(&h.name, &s.id);
                let copied_to = o.copies.get(&s.id).map(|c| c.join(", ")).unwrap_or_default();
                let _ = write!(
                    b,
                    "<td class=\"copies num{}\" data-copies=\"{copies}\" data-copies-wanted=\"{wanted}\" \
                     title=\"here{}{}\">{copies}/{wanted}</td>",
                    if copies < wanted { " stale" } else { "" },
                    if copied_to.is_empty() { "" } else { ", " },
                    esc(&copied_to)
                );
            }
            None => {
                b.push_str(
                    "<td class=\"snapshot\" data-snapshot=\"\">none</td><td></td><td class=\"age\" data-age-seconds=\"\">never</td><td></td>\
                     <td class=\"copies\" data-copies=\"0\"></td>",
                );
            }
        }
        // The newest passed boot test of one of its snapshots (`kura verify --boot`).
        match o.boot_successes.iter().find(|(host, _)| *host == h.name) {
            Some((_, t)) => {
                let _ = write!(b, "<td class=\"boot-test\" data-unix=\"{t}\">{}</td>", time(*t));
            }
            None => b.push_str("<td class=\"boot-test\" data-unix=\"\">never</td>"),
        }
        // The newest boot test, passed or not, with the screen at its verdict.
        match o.boot_newest.iter().find(|(host, _)| *host == h.name) {
            Some((_, t)) => b.push_str(&boot_verdict_cell(t)),
            None => b.push_str("<td class=\"boot-verdict\" data-passed=\"\">none</td>"),
        }
        b.push_str("</tr>");
    }
    if o.hosts.is_empty() {
        b.push_str("<tr><td colspan=\"9\" class=\"muted\">no hosts yet</td></tr>");
    }
    b.push_str("</tbody></table>");

    // Active jobs.
    let _ = write!(
        b,
        "<h2>Running and queued jobs</h2><table id=\"jobs\"><thead><tr><th>Job</th><th>Kind</th><th>Host</th>\
         <th>State</th><th>Progress</th><th>Percent</th><th>Throughput</th><th>Started</th></tr></thead><tbody>"
    );
    for j in &o.active {
        let pct = j.total_bytes.filter(|t| *t > 0).map(|t| j.done_bytes as f64 * 100.0 / t as f64);
        let rate = j.started.map(|s| o.now - s).filter(|d| *d > 0).map(|d| j.done_bytes as f64 / d as f64);
        let _ = write!(
            b,
            "<tr data-job=\"{}\" data-state=\"{}\" data-done-bytes=\"{}\" data-total-bytes=\"{}\">\
             <td>{}</td><td>{}</td><td class=\"host\">{}</td><td>{}</td><td class=\"num\">{}{}</td>\
             <td class=\"num percent\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            j.id,
            j.state,
            j.done_bytes,
            j.total_bytes.map(|t| t.to_string()).unwrap_or_default(),
            j.id,
            j.kind,
            esc(&j.host),
            j.state,
            human_bytes(j.done_bytes),
            j.total_bytes.map(|t| format!(" of {}", human_bytes(t))).unwrap_or_default(),
            pct.map(|p| format!("{p:.1}%")).unwrap_or_default(),
            rate.map(|r| format!("{}/s", human_bytes(r as u64))).unwrap_or_default(),
            j.started.map(time).unwrap_or_default()
        );
    }
    if o.active.is_empty() {
        b.push_str("<tr><td colspan=\"8\" class=\"muted\">none</td></tr>");
    }
    b.push_str("</tbody></table>");

    // Failures.
    let _ = write!(
        b,
        "<h2>Failures in the last {} days</h2><table id=\"failures\"><thead><tr><th>Job</th><th>Kind</th>\
         <th>Host</th><th>Failed at</th><th>Error</th></tr></thead><tbody>",
        FAILURE_WINDOW / 86_400
    );
    for j in &o.failures {
        b.push_str(&failure_row(j));
    }
    if o.failures.is_empty() {
        b.push_str("<tr><td colspan=\"5\" class=\"muted\">none</td></tr>");
    }
    b.push_str("</tbody></table>");

    // Replication, per remote (only when this engine has remotes).
    if !o.replication.is_empty() {
        b.push_str(
            "<h2>Replication</h2><table id=\"replication\"><thead><tr><th>Remote</th><th>Queued chunks</th>\
             <th>Queued bytes</th><th>Snapshots not yet copied</th><th>Lag</th><th>Attempts</th><th>Last error</th>\
             </tr></thead><tbody>",
        );
        for r in &o.replication {
            let lag = o.lag(r);
            let _ = write!(
                b,
                "<tr data-remote=\"{name}\" data-queued-chunks=\"{}\" data-queued-bytes=\"{}\" \
                 data-queued-snapshots=\"{}\" data-lag-seconds=\"{lag}\"{}><td class=\"remote\">{name}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num lag\">{}</td><td class=\"num\">{}</td><td class=\"error\">{}</td></tr>",
                r.chunks,
                r.chunk_bytes,
                r.snapshots,
                if r.last_error.is_some() { " class=\"stale\"" } else { "" },
                r.chunks,
                human_bytes(r.chunk_bytes),
                r.snapshots,
                if lag == 0 { "–".to_string() } else { human_age(lag as i64) },
                r.attempts,
                opt(&r.last_error),
                name = esc(&r.remote),
            );
        }
        b.push_str("</tbody></table>");
    }

    // Store.
    let ratio = o.dedup_ratio();
    let _ = write!(
        b,
        "<h2>Store</h2><dl id=\"store\">\
         <dt>Bytes on disk</dt><dd id=\"store-bytes\" data-bytes=\"{sb}\">{} <span class=\"muted\">({sb} bytes)</span></dd>\
         <dt>Chunks</dt><dd id=\"store-chunks\" data-chunks=\"{c}\">{c}</dd>\
         <dt>Snapshots</dt><dd id=\"snapshot-count\" data-count=\"{n}\">{n}</dd>\
         <dt>Logical bytes</dt><dd id=\"logical-bytes\" data-bytes=\"{lb}\">{} <span class=\"muted\">({lb} bytes)</span></dd>\
         <dt>Deduplication ratio</dt><dd id=\"dedup-ratio\" data-ratio=\"{}\" title=\"logical bytes of all snapshots / bytes of chunks on disk\">{}</dd>\
         </dl>",
        human_bytes(o.store.bytes),
        human_bytes(o.snapshots.logical_bytes),
        ratio.map(|r| format!("{r:.4}")).unwrap_or_default(),
        ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into()),
        sb = o.store.bytes,
        c = o.store.chunks,
        n = o.snapshots.count,
        lb = o.snapshots.logical_bytes,
    );
    let refresh = format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">");
    page("Kura status", &refresh, &b)
}

/// A host's newest boot test: verdict, when, why, and the screenshot's thumbnail linking to it.
fn boot_verdict_cell(t: &kura_catalogs::db::boot_tests::BootTest) -> String {
    let verdict = if t.passed { "passed" } else { "failed" };
    let shot = match &t.screenshot {
        Some(name) => {
            let url = kura_protocol::routes::PAGE_BOOT_SCREENSHOT.url(&[name]);
            format!(
                "<a class=\"boot-shot\" href=\"{u}\"><img class=\"boot-shot\" src=\"{u}\" \
                 alt=\"the screen at the verdict\"></a>",
                u = esc(&url)
            )
        }
        None => String::new(),
    };
    format!(
        "<td class=\"boot-verdict\" data-passed=\"{}\" data-snapshot=\"{}\" data-unix=\"{}\">\
         <span class=\"verdict\">{verdict}</span> <span class=\"muted\">{} ({:.1} s): {}</span>{shot}</td>",
        t.passed,
        esc(&t.snapshot),
        t.finished,
        time(t.finished),
        t.millis as f64 / 1000.0,
        esc(&t.reason),
    )
}

/// Largest screenshot served (a QEMU screen dump is far smaller).
const SCREENSHOT_MAX_BYTES: u64 = 16 << 20;

/// `GET /boot-tests/screenshots/{name}`: a kept boot test screenshot (PNG), for a logged-in
/// operator (page access, like the status page).
pub async fn boot_screenshot(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<Response> {
    let path = state
        .engine
        .boot_tests
        .screenshot_path(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no screenshot {name:?}")))?;
    let png = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let f = std::fs::File::open(&path)?;
        let mut png = Vec::new();
        f.take(SCREENSHOT_MAX_BYTES).read_to_end(&mut png)?;
        Ok(png)
    })
    .await?
    .map_err(|_| ApiError::NotFound(format!("no screenshot {name:?}")))?;
    let mut r = (StatusCode::OK, png).into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    Ok(r)
}

fn failure_row(j: &Job) -> String {
    format!(
        "<tr class=\"failed\" data-job=\"{}\" data-host=\"{}\"><td>{}</td><td>{}</td><td class=\"host\">{}</td>\
         <td data-unix=\"{}\">{}</td><td class=\"error\">{}</td></tr>",
        j.id,
        esc(&j.host),
        j.id,
        j.kind,
        esc(&j.host),
        j.finished.unwrap_or(0),
        j.finished.map(time).unwrap_or_default(),
        opt(&j.error)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalogs::db::{HostStatus, JobKind, JobState, Snapshot, SnapshotKind, SnapshotState, SnapshotTotals};
    use kura_catalogs::StoreUsage;

    #[test]
    fn everything_from_the_catalog_is_escaped() {
        let evil = "<script>alert('x')</script>&\"";
        let snap = Snapshot {
            id: "00000000000000a1".into(),
            host: evil.into(),
            disk: None,
            name: Some(evil.into()),
            kind: SnapshotKind::Manual,
            created: 100,
            disk_size: 10,
            used_bytes: 300,
            new_bytes: 0,
            reused_bytes: 0,
            state: SnapshotState::Committed,
            confirmed: true,
            boot_test_passed: None,
            set: None,
            set_id: None,
        };
        let job = Job {
            id: 7,
            kind: JobKind::Capture,
            host: evil.into(),
            disk: None,
            snapshot: None,
            state: JobState::Failed,
            done_bytes: 5,
            total_bytes: Some(10),
            created: 1,
            started: Some(2),
            finished: Some(3),
            error: Some(evil.into()),
            disks: None,
        };
        let o = Overview {
            now: 100 + STALE_AFTER + 1,
            hosts: vec![HostStatus { name: evil.into(), group: Some(evil.into()), last_snapshot: Some(snap) }],
            active: vec![Job { state: JobState::Running, ..job.clone() }],
            failures: vec![job],
            job_counts: vec![],
            durations: vec![],
            snapshots: SnapshotTotals { count: 1, logical_bytes: 300 },
            store: StoreUsage { chunks: 2, bytes: 100 },
            boot_successes: vec![(evil.into(), 7)],
            boot_newest: vec![(
                evil.into(),
                kura_catalogs::db::boot_tests::BootTest {
                    id: 3,
                    snapshot: "00000000000000a1".into(),
                    finished: 7,
                    passed: false,
                    stage: "firmware".into(),
                    reason: evil.into(),
                    millis: 4_500,
                    firmware: "bios".into(),
                    console_tail: vec![],
                    fetched_bytes: 1,
                    screenshot: Some("00000000000000a1-7000.png".into()),
                },
            )],
            replication: vec![kura_catalogs::db::Backlog {
                remote: evil.into(),
                chunks: 3,
                chunk_bytes: 4096,
                snapshots: 1,
                oldest_snapshot: Some(40),
                attempts: 2,
                last_error: Some(evil.into()),
            }],
            copies: [("00000000000000a1".to_string(), vec![evil.to_string()])].into(),
            copies_wanted: [(evil.to_string(), vec![evil.to_string(), "dr2".to_string()])].into(),
        };
        let p = Principal {
            token_id: 1,
            role: Role::Operator,
            label: evil.into(),
            user: Some(evil.into()),
            job_id: None,
            mac: None,
        };
        let html = render(&o, &p);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("'x'"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"), "{html}");
        assert!(html.contains("data-stale=\"true\""), "{html}");
        assert!(html.contains("<td class=\"boot-test\" data-unix=\"7\">"), "{html}");
        assert!(html.contains("<td class=\"boot-verdict\" data-passed=\"false\""), "{html}");
        assert!(
            html.contains("<img class=\"boot-shot\" src=\"/boot-tests/screenshots/00000000000000a1-7000.png\""),
            "{html}"
        );
        assert!(html.contains("id=\"dedup-ratio\" data-ratio=\"3.0000\""), "{html}");
        assert!(html.contains("<td class=\"num percent\">50.0%</td>"), "{html}");
        assert!(html.contains("data-copies=\"2\" data-copies-wanted=\"3\""), "{html}");
        let lag = 100 + STALE_AFTER + 1 - 40;
        assert!(
            html.contains(&format!(
                "data-queued-chunks=\"3\" data-queued-bytes=\"4096\" data-queued-snapshots=\"1\" data-lag-seconds=\"{lag}\""
            )),
            "{html}"
        );
    }

    #[test]
    fn cookies_and_formats() {
        let mut h = HeaderMap::new();
        let id = "ab".repeat(32);
        h.append(COOKIE, HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={id}; c=d")).unwrap());
        assert_eq!(session_cookie(&h), Some(id));
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("kura_session=short"));
        assert_eq!(session_cookie(&h), None);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_age(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
        assert_eq!(human_age(42), "42s");
    }

    #[test]
    fn sessions_expire() {
        let s = Sessions::default();
        s.insert("a".into(), Session { token_id: 1, expires: 10 }, 0);
        assert_eq!(s.get("a", 9).map(|x| x.token_id), Some(1));
        assert!(s.get("a", 10).is_none());
        assert!(s.get("a", 0).is_none(), "an expired session is gone");
    }
}
