//! Notifications: telling people when something needs them. This module owns the events
//! (a job failed, a schedule run ended, a test), their payloads, and their delivery to the
//! targets configured in the catalog (`kura_catalogs::db::notify`): webhooks (JSON POST) and
//! e-mail through an SMTP relay (a small client here: EHLO, optional STARTTLS, MAIL, RCPT,
//! DATA, QUIT).
//!
//! Delivery never blocks nor fails the caller: [`Notifier::job_failed`] and
//! [`Notifier::run_summary`] return at once; the sending runs in a spawned task, each target
//! on its own, with a timeout per attempt and a bounded number of attempts
//! ([`Delivery`]), and a failure is logged, never returned. Only [`Notifier::send_test`]
//! (`kura notify test`) waits and reports each target's outcome.
//!
//! The webhook payload (documented in `docs/operations.md`, "Notifications") is one JSON
//! object with `event` (`job_failed`, `run_summary` or `test`), `time` (unix seconds), `time_rfc3339`,
//! `text` (one human-readable line, so chat webhooks show something useful) and the event's
//! details (`job` and `error`, or `summary`). The e-mail carries `text` as its subject and the
//! details as its body.

use kura_catalogs::db::{Catalog, Job, NotifyConfig, NotifyTarget, RunSummary, UnixTime};
use kura_imaging::time;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// How hard delivery tries.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// Limit of one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Attempts per target and event (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each later one.
    pub backoff: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery { timeout: Duration::from_secs(10), attempts: 3, backoff: Duration::from_secs(2) }
    }
}

/// The scheduler's finished runs go to every target (job failures are sent where jobs fail).
impl crate::scheduler::RunObserver for Notifier {
    fn run_finished(&self, summary: &RunSummary) {
        self.run_summary(summary);
    }
}

/// One thing to tell the targets.
#[derive(Debug, Clone)]
pub struct Event {
    /// One line (the mail subject, the webhook's `text`).
    pub text: String,
    /// The webhook body (also the mail's details).
    pub payload: Value,
}

impl Event {
    fn new(event: &str, time: UnixTime, text: String, details: Value) -> Event {
        let mut payload = json!({
            "event": event,
            "time": time,
            "time_rfc3339": time::format_rfc3339(time),
            "text": text,
        });
        if let (Some(p), Value::Object(d)) = (payload.as_object_mut(), details) {
            p.extend(d);
        }
        Event { text, payload }
    }

    /// A job failed.
    pub fn job_failed(job: &Job, error: &str, time: UnixTime) -> Event {
        let text = format!("Kura: {} job {} of host {} failed: {}", job.kind, job.id, job.host, one_line(error, 200));
        Event::new("job_failed", time, text, json!({ "job": job, "error": error }))
    }

    /// A schedule run ended (or its due time was missed).
    pub fn run_summary(summary: &RunSummary, time: UnixTime) -> Event {
        let text = format!(
            "Kura: schedule {} run due {}: {}, {} of {} hosts captured, {} failed, {} skipped",
            one_line(&summary.schedule, 100),
            time::format_rfc3339(summary.due),
            summary.state,
            summary.succeeded,
            summary.hosts,
            summary.failed,
            summary.skipped
        );
        Event::new("run_summary", time, text, json!({ "summary": summary }))
    }

    /// `kura notify test`.
    pub fn test(time: UnixTime) -> Event {
        Event::new("test", time, "Kura: test notification".into(), json!({}))
    }
}

/// One target's outcome of [`Notifier::send_test`].
#[derive(Debug, Clone, Serialize)]
pub struct Delivered {
    pub target: i64,
    pub kind: &'static str,
    pub ok: bool,
    pub error: Option<String>,
}

/// Sends events to every configured target. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<Catalog>,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    delivery: Delivery,
}

impl Notifier {
    pub fn new(catalog: Arc<Catalog>, delivery: Delivery) -> Notifier {
        let tls = Arc::new(client_tls());
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(delivery.timeout)
            .connect_timeout(delivery.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kura/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| {
                tracing::error!("building the webhook HTTP client: {e}; using defaults");
                reqwest::Client::new()
            });
        Notifier { inner: Arc::new(Inner { catalog, http, tls, delivery }) }
    }

    /// Tells every target that `job` failed with `error`. Returns at once.
    pub fn job_failed(&self, job: &Job, error: &str) {
        self.spawn(Event::job_failed(job, error, self.inner.catalog.now()));
    }

    /// Tells every target how a schedule run went. Returns at once.
    pub fn run_summary(&self, summary: &RunSummary) {
        self.spawn(Event::run_summary(summary, self.inner.catalog.now()));
    }

    /// Sends `event` to every target in the background (needs a Tokio runtime; without one
    /// the event is logged and dropped).
    pub fn spawn(&self, event: Event) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("notification not sent (no async runtime): {}", event.text);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let targets = match me.targets().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("notification not sent: cannot read the targets: {e}");
                    return;
                }
            };
            let event = Arc::new(event);
            for t in targets {
                let (me, event) = (me.clone(), event.clone());
                tokio::spawn(async move {
                    if let Err(e) = me.deliver(&t, &event, me.inner.delivery.attempts).await {
                        tracing::error!("notification target {} ({}): gave up: {e}", t.id, t.config.kind());
                    }
                });
            }
        });
    }

    /// Sends a test event to every target, one attempt each, and reports each outcome.
    pub async fn send_test(&self) -> Result<Vec<Delivered>, String> {
        let event = Event::test(self.inner.catalog.now());
        let mut out = Vec::new();
        for t in self.targets().await? {
            let r = self.deliver(&t, &event, 1).await;
            out.push(Delivered { target: t.id, kind: t.config.kind(), ok: r.is_ok(), error: r.err() });
        }
        Ok(out)
    }

    async fn targets(&self) -> Result<Vec<NotifyTarget>, String> {
        let catalog = self.inner.catalog.clone();
        match tokio::task::spawn_blocking(move || catalog.list_notify_targets()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Up to `attempts` attempts to hand `event` to `target`.
    async fn deliver(&self, target: &NotifyTarget, event: &Event, attempts: u32) -> Result<(), String> {
        let d = self.inner.delivery;
        let mut wait = d.backoff;
        let mut attempt = 1;
        loop {
            let r = match tokio::time::timeout(d.timeout, self.attempt(&target.config, event)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::retry(format!("no answer within {:?}", d.timeout))),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(f) if f.retry && attempt < attempts.max(1) => {
                    tracing::warn!(
                        "notification target {} ({}), attempt {attempt}: {}; retrying in {wait:?}",
                        target.id,
                        target.config.kind(),
                        f.message
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(f) => return Err(f.message),
            }
        }
    }

    async fn attempt(&self, config: &NotifyConfig, event: &Event) -> Result<(), Failure> {
        match config {
            NotifyConfig::Webhook { url } => {
                let resp = self.inner.http.post(url).json(&event.payload).send().await.map_err(|e| {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg = format!("{msg}: {s}");
                        src = s.source();
                    }
                    Failure::retry(msg)
                })?;
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else {
                    let retry = status.is_server_error() || status.as_u16() == 429;
                    Err(Failure { message: format!("the webhook answered {status}"), retry })
                }
            }
            NotifyConfig::Email { smtp, from, to, starttls } => {
                let message = mail_message(from, to, event);
                send_mail(smtp, from, to, *starttls, &self.inner.tls, &message).await
            }
        }
    }
}

/// Why an attempt failed, and whether another may succeed.
#[derive(Debug)]
struct Failure {
    message: String,
    retry: bool,
}

impl Failure {
    fn retry(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), retry: true }
    }

    fn permanent(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), retry: false }
    }
}

/// TLS for webhooks and STARTTLS: the system's trusted roots (`/etc/ssl/certs`).
fn client_tls() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("loading the system's trusted certificates: {e}");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no trusted certificates found: https webhooks and STARTTLS will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// `s` on one line, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// RFC 5322 date (`Thu, 01 Jan 2026 00:00:00 +0000`).
fn mail_date(t: UnixTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, secs) = time::split_day(t.max(0));
    let (y, m, d) = time::civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} +0000",
        DAYS[time::weekday(days) as usize],
        MONTHS[m as usize - 1],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A header value: one line; non-ASCII as an RFC 2047 encoded word.
fn header_value(s: &str) -> String {
    let flat = one_line(s, 400);
    if flat.is_ascii() {
        return flat;
    }
    format!("=?utf-8?b?{}?=", base64(flat.as_bytes()))
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The whole message (headers and body, CRLF line ends, not yet dot-stuffed).
fn mail_message(from: &str, to: &[String], event: &Event) -> String {
    let time = event.payload["time"].as_i64().unwrap_or(0);
    let mut id = [0u8; 12];
    let _ = getrandom::fill(&mut id);
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("kura");
    let mut body = format!("{}\n\n", event.text);
    if let Some(obj) = event.payload.as_object() {
        for (k, v) in obj {
            if matches!(k.as_str(), "text" | "time") {
                continue;
            }
            let v = match v {
                Value::String(s) => s.clone(),
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            body.push_str(&format!("{k}: {v}\n"));
        }
    }
    let mut m = String::new();
    m.push_str(&format!("Date: {}\r\n", mail_date(time)));
    m.push_str(&format!("From: <{from}>\r\n"));
    m.push_str(&format!("To: {}\r\n", to.iter().map(|a| format!("<{a}>")).collect::<Vec<_>>().join(", ")));
    m.push_str(&format!("Subject: {}\r\n", header_value(&event.text)));
    m.push_str(&format!("Message-ID: <{}@{domain}>\r\n", hex::encode(id)));
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n");
    m.push_str("Auto-Submitted: auto-generated\r\n\r\n");
    for line in body.lines() {
        m.push_str(line);
        m.push_str("\r\n");
    }
    m
}

/// Longest reply line and most lines of one reply read from a relay.
const SMTP_LINE_MAX: usize = 4096;
const SMTP_LINES_MAX: usize = 100;

struct Smtp<S> {
    io: BufStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    /// Reads one (possibly multi-line) reply: its code and text lines.
    async fn reply(&mut self) -> Result<(u16, Vec<String>), Failure> {
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.io)
                .take(SMTP_LINE_MAX as u64)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| Failure::retry(format!("reading from the relay: {e}")))?;
            if n == 0 {
                return Err(Failure::retry("the relay closed the connection"));
            }
            if !buf.ends_with(b"\n") {
                return Err(Failure::permanent("the relay sent an overlong line"));
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else { return Err(Failure::permanent(format!("not an SMTP reply: {line:?}"))) };
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok((code, lines));
            }
            if lines.len() >= SMTP_LINES_MAX {
                return Err(Failure::permanent("the relay sent an overlong reply"));
            }
        }
    }

    /// Expects a reply with code `want`.
    async fn expect(&mut self, what: &str, want: u16) -> Result<Vec<String>, Failure> {
        let (code, lines) = self.reply().await?;
        if code != want {
            // 4xx: try again later; 5xx: will not work.
            let msg = format!("{what}: the relay answered {code} {}", lines.join(" "));
            return Err(if code / 100 == 4 { Failure::retry(msg) } else { Failure::permanent(msg) });
        }
        Ok(lines)
    }

    async fn send(&mut self, line: &str) -> Result<(), Failure> {
        let w = async {
            self.io.write_all(line.as_bytes()).await?;
            self.io.write_all(b"\r\n").await?;
            self.io.flush().await
        };
        w.await.map_err(|e| Failure::retry(format!("writing to the relay: {e}")))
    }

    async fn command(&mut self, line: &str, want: u16) -> Result<Vec<String>, Failure> {
        self.send(line).await?;
        let verb = line.split([' ', ':']).next().unwrap_or(line);
        self.expect(verb, want).await
    }

    /// EHLO, falling back to HELO; returns the extension keywords.
    async fn hello(&mut self, name: &str) -> Result<Vec<String>, Failure> {
        self.send(&format!("EHLO {name}")).await?;
        match self.reply().await? {
            (250, lines) => Ok(lines.iter().skip(1).map(|l| l.to_ascii_uppercase()).collect()),
            _ => self.command(&format!("HELO {name}"), 250).await.map(|_| Vec::new()),
        }
    }

    /// MAIL, RCPT, DATA, QUIT.
    async fn transaction(&mut self, from: &str, to: &[String], message: &str) -> Result<(), Failure> {
        self.command(&format!("MAIL FROM:<{from}>"), 250).await?;
        for rcpt in to {
            self.send(&format!("RCPT TO:<{rcpt}>")).await?;
            let (code, lines) = self.reply().await?;
            if code != 250 && code != 251 {
                let msg = format!("RCPT {rcpt}: the relay answered {code} {}", lines.join(" "));
                return Err(if code / 100 == 4 { Failure::retry(msg) } else { Failure::permanent(msg) });
            }
        }
        self.command("DATA", 354).await?;
        let mut data = String::with_capacity(message.len() + 64);
        for line in message.split("\r\n") {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        // `message` ends with CRLF, so the split's last piece is empty: data ends "\r\n\r\n".
        data.truncate(data.len() - 2);
        data.push('.');
        self.send(&data).await?;
        self.expect("the message", 250).await?;
        // The mail is accepted; a failed QUIT does not matter.
        let _ = self.command("QUIT", 221).await;
        Ok(())
    }
}

async fn send_mail(
    relay: &str,
    from: &str,
    to: &[String],
    starttls: bool,
    tls: &Arc<rustls::ClientConfig>,
    message: &str,
) -> Result<(), Failure> {
    let stream = TcpStream::connect(relay).await.map_err(|e| Failure::retry(format!("connecting to {relay}: {e}")))?;
    let me = match stream.local_addr() {
        Ok(a) if a.is_ipv6() => format!("[IPv6:{}]", a.ip()),
        Ok(a) => format!("[{}]", a.ip()),
        Err(_) => "kura".to_string(),
    };
    let mut s = Smtp { io: BufStream::new(stream) };
    s.expect("greeting", 220).await?;
    let ext = s.hello(&me).await?;
    if !starttls {
        return s.transaction(from, to, message).await;
    }
    if !ext.iter().any(|e| e == "STARTTLS") {
        return Err(Failure::permanent(format!("the relay {relay} does not offer STARTTLS")));
    }
    s.command("STARTTLS", 220).await?;
    let host = relay.rsplit_once(':').map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')).unwrap_or(relay);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| Failure::permanent(format!("{host:?} is not a TLS server name: {e}")))?;
    let plain = s.io.into_inner();
    let conn = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, plain)
        .await
        .map_err(|e| Failure::permanent(format!("STARTTLS with {relay}: {e}")))?;
    let mut s = Smtp { io: BufStream::new(conn) };
    s.hello(&me).await?;
    s.transaction(from, to, message).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_encodings() {
        assert_eq!(mail_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(mail_date(1_767_225_600), "Thu, 01 Jan 2026 00:00:00 +0000");
        assert_eq!(mail_date(1_767_225_600 + 86_400 * 45 + 3661), "Sun, 15 Feb 2026 01:01:01 +0000");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(header_value("a\r\nBcc: x"), "a  Bcc: x");
        assert_eq!(header_value("蔵"), "=?utf-8?b?6JS1?=");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }

    #[test]
    fn messages_have_crlf_lines_and_the_details() {
        let event = Event::new("test", 0, "subject line".into(), json!({ "error": ".starts with a dot\nsecond" }));
        let m = mail_message("kura@example.test", &["ops@example.test".into()], &event);
        assert!(m.contains("Subject: subject line\r\n"), "{m}");
        assert!(m.ends_with("\r\n") && !m.replace("\r\n", "").contains('\n'), "{m:?}");
        let (_, body) = m.split_once("\r\n\r\n").unwrap();
        assert!(body.starts_with("subject line\r\n"), "{body}");
        assert!(body.contains("error: .starts with a dot\r\nsecond\r\n"), "{body}");
    }

    #[test]
    fn payload_fields() {
        let e = Event::test(1_767_225_600);
        assert_eq!(e.payload["event"], "test");
        assert_eq!(e.payload["time"], 1_767_225_600);
        assert_eq!(e.payload["time_rfc3339"], "2026-01-01T00:00:00Z");
        assert_eq!(e.payload["text"], "Kura: test notification");
        let s = RunSummary {
            run: 3,
            schedule_id: 1,
            schedule: "nightly".into(),
            due: 1_767_225_600,
            state: kura_catalogs::db::RunState::Done,
            hosts: 2,
            succeeded: 1,
            failed: 1,
            skipped: 0,
            failures: vec![kura_catalogs::db::HostFailure {
                host: "b".into(),
                state: kura_catalogs::db::HostRunState::Failed,
                attempts: 3,
                error: Some("x".into()),
                job: Some(2),
            }],
        };
        let e = Event::run_summary(&s, 5);
        assert_eq!(
            e.text,
            "Kura: schedule nightly run due 2026-01-01T00:00:00Z: done, 1 of 2 hosts captured, 1 failed, 0 skipped"
        );
        assert_eq!(e.payload["summary"]["failures"][0]["error"], "x");
    }
}
