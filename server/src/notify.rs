//! Notifications: telling people when something needs them. This module owns the events
//! (a job failed, a schedule run ended, a test), their payloads, and their delivery to the
//! targets configured in the catalog (`kura_catalogs::db::notify`): webhooks (JSON POST,
//! `reqwest`) and e-mail through an SMTP relay (`lettre`: plain SMTP, or STARTTLS required).
//!
//! TLS (https webhooks, STARTTLS) trusts the system's roots, plus the PEM certificates in the
//! file named by `KURA_NOTIFY_CA` when the server starts with it set ([`NOTIFY_CA_ENV`]), for
//! a site whose relay or webhook has a private CA.
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

use kura_catalogs::db::boot_tests::BootTest;
use kura_catalogs::db::{Catalog, Job, NotifyConfig, NotifyTarget, RunSummary, UnixTime};
use kura_imaging::time;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, SinglePart};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Names a PEM file of extra root certificates that notifications trust, besides the
/// system's (read once, when the notifier is set up).
pub const NOTIFY_CA_ENV: &str = "KURA_NOTIFY_CA";

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

    /// A snapshot's boot test failed.
    pub fn boot_test_failed(host: &str, test: &BootTest, time: UnixTime) -> Event {
        let text = format!(
            "Kura: boot test of snapshot {} of host {} failed at the {} stage: {}",
            test.snapshot,
            host,
            test.stage,
            one_line(&test.reason, 200)
        );
        Event::new("boot_test_failed", time, text, json!({ "host": host, "boot_test": test }))
    }

    /// Replication to a remote has been failing since `since` (`docs/dr.md`).
    pub fn replication_failing(remote: &str, since: UnixTime, error: &str, time: UnixTime) -> Event {
        let text = format!(
            "Kura: replication to remote {} has been failing since {}: {}",
            one_line(remote, 100),
            time::format_rfc3339(since),
            one_line(error, 200)
        );
        Event::new("replication_failing", time, text, json!({ "remote": remote, "since": since, "error": error }))
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
    trust: Trust,
    delivery: Delivery,
}

impl Notifier {
    pub fn new(catalog: Arc<Catalog>, delivery: Delivery) -> Notifier {
        let trust = Trust::load(std::env::var_os(NOTIFY_CA_ENV).as_deref().map(std::path::Path::new));
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(trust.client_config())
            .timeout(delivery.timeout)
            .connect_timeout(delivery.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kura/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| {
                tracing::error!("building the webhook HTTP client: {e}; using defaults");
                reqwest::Client::new()
            });
        Notifier { inner: Arc::new(Inner { catalog, http, trust, delivery }) }
    }

    /// Tells every target that `job` failed with `error`. Returns at once.
    pub fn job_failed(&self, job: &Job, error: &str) {
        self.spawn(Event::job_failed(job, error, self.inner.catalog.now()));
    }

    /// Tells every target a snapshot's boot test failed. Returns at once.
    pub fn boot_test_failed(&self, host: &str, test: &BootTest) {
        self.spawn(Event::boot_test_failed(host, test, self.inner.catalog.now()));
    }

    /// Tells every target that replication to `remote` has been failing since `since`.
    /// Returns at once.
    pub fn replication_failing(&self, remote: &str, since: UnixTime, error: &str) {
        self.spawn(Event::replication_failing(remote, since, error, self.inner.catalog.now()));
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
        let tls = match config {
            NotifyConfig::Webhook { url } => url.starts_with("https://"),
            NotifyConfig::Email { starttls, .. } => *starttls,
        };
        if let (true, Some(e)) = (tls, &self.inner.trust.error) {
            return Err(Failure::permanent(e.clone()));
        }
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
                let message = mail_message(from, to, event)?;
                send_mail(smtp, *starttls, &self.inner.trust, self.inner.delivery.timeout, &message).await
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

/// The roots that TLS to notification targets (https webhooks, STARTTLS) trusts.
struct Trust {
    /// The system's (`/etc/ssl/certs`) and those of [`NOTIFY_CA_ENV`]'s file, each one that
    /// rustls accepts as a trust anchor.
    roots: Vec<CertificateDer<'static>>,
    /// Why the [`NOTIFY_CA_ENV`] file could not be used: every TLS delivery fails with this
    /// (rather than quietly trusting less than the operator asked for).
    error: Option<String>,
}

impl Trust {
    fn load(extra: Option<&std::path::Path>) -> Trust {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("loading the system's trusted certificates: {e}");
        }
        let mut certs = found.certs;
        let mut error = None;
        if let Some(path) = extra {
            let read: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(path) {
                Ok(iter) => iter.collect(),
                Err(e) => Err(e),
            };
            match read {
                Ok(c) if c.is_empty() => {
                    error = Some(format!("{NOTIFY_CA_ENV}={}: no certificates in it", path.display()))
                }
                Ok(c) => certs.extend(c),
                Err(e) => error = Some(format!("{NOTIFY_CA_ENV}={}: {e}", path.display())),
            }
            if let Some(e) = &error {
                tracing::error!("notifications over TLS will fail: {e}");
            }
        }
        // Keep only what rustls accepts, so one odd system certificate cannot break the rest.
        let roots: Vec<_> =
            certs.into_iter().filter(|c| rustls::RootCertStore::empty().add(c.clone()).is_ok()).collect();
        if roots.is_empty() {
            tracing::warn!("no trusted certificates found: https webhooks and STARTTLS will fail");
        }
        Trust { roots, error }
    }

    /// TLS for webhooks.
    fn client_config(&self) -> rustls::ClientConfig {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(self.roots.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(store)
            .with_no_client_auth()
    }
}

/// `s` on one line, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// The mail for `event`: `text` is the subject; the body repeats it, then the details. lettre
/// encodes it (RFC 2047 subjects, a transfer encoding that suits the body, CRLF lines).
fn mail_message(from: &str, to: &[String], event: &Event) -> Result<Message, Failure> {
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
    let mailbox =
        |a: &str| a.parse::<Mailbox>().map_err(|e| Failure::permanent(format!("{a:?} is not an e-mail address: {e}")));
    let mut m = Message::builder()
        .date(std::time::UNIX_EPOCH + Duration::from_secs(time.max(0) as u64))
        .from(mailbox(from)?)
        .subject(one_line(&event.text, 400))
        .message_id(Some(format!("<{}@{domain}>", hex::encode(id))))
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".into()));
    for a in to {
        m = m.to(mailbox(a)?);
    }
    m.singlepart(SinglePart::plain(body)).map_err(|e| Failure::permanent(format!("building the mail: {e}")))
}

/// Hands `message` to the relay at `relay` (`HOST:PORT`): plain SMTP, or with `starttls` an
/// encrypted session (the relay must offer STARTTLS; its certificate is checked against
/// `trust`). lettre speaks the protocol (EHLO, STARTTLS, MAIL, RCPT, DATA, QUIT).
async fn send_mail(
    relay: &str,
    starttls: bool,
    trust: &Trust,
    timeout: Duration,
    message: &Message,
) -> Result<(), Failure> {
    let (host, port) = relay
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().ok()?)))
        .ok_or_else(|| Failure::permanent(format!("{relay:?} is not an SMTP relay HOST:PORT")))?;
    let tls = if starttls {
        let mut params = TlsParameters::builder(host.to_string()).certificate_store(CertificateStore::None);
        for root in &trust.roots {
            let cert = Certificate::from_der(root.to_vec())
                .map_err(|e| Failure::permanent(format!("a trusted certificate: {e}")))?;
            params = params.add_root_certificate(cert);
        }
        let params = params.build_rustls().map_err(|e| Failure::permanent(format!("TLS for {relay}: {e}")))?;
        Tls::Required(params)
    } else {
        Tls::None
    };
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(timeout))
        .build();
    match transport.send(message.clone()).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // Display already shows the first source; add the deeper ones.
            let mut msg = format!("{relay}: {e}");
            let mut src = std::error::Error::source(&e).and_then(|s| s.source());
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            // 4xx replies and network trouble may pass; 5xx replies, TLS failures (a bad
            // certificate), a relay without STARTTLS and garbled replies will not.
            let retry = !(e.is_permanent() || e.is_tls() || e.is_client() || e.is_response());
            Err(Failure { message: msg, retry })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formatted(m: &Message) -> String {
        String::from_utf8(m.formatted()).unwrap()
    }

    #[test]
    fn headers_dates_and_encodings() {
        let event = Event::new("test", 1_767_225_600 + 86_400 * 45 + 3661, "a\r\nBcc: x".into(), json!({}));
        let m = formatted(
            &mail_message("kura@example.test", &["ops@example.test".into(), "b@c.test".into()], &event).unwrap(),
        );
        let (head, _) = m.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Date: Sun, 15 Feb 2026 01:01:01 +0000\r\n"), "{head}");
        // One line: the text cannot add headers.
        assert!(head.contains("Subject: a  Bcc: x\r\n") && !head.contains("\nBcc"), "{head}");
        assert!(head.contains("From: kura@example.test\r\n"), "{head}");
        assert!(head.contains("To: ops@example.test, b@c.test\r\n"), "{head}");
        assert!(head.contains("Message-ID: <") && head.contains("@example.test>\r\n"), "{head}");
        assert!(head.contains("Auto-Submitted: auto-generated\r\n"), "{head}");
        assert!(head.contains("MIME-Version: 1.0\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain; charset=utf-8\r\n"), "{head}");
        let event = Event::new("test", 0, "蔵".into(), json!({}));
        let m = formatted(&mail_message("kura@example.test", &["ops@example.test".into()], &event).unwrap());
        assert!(m.contains("Subject: =?utf-8?b?6JS1?=\r\n"), "{m}");
        assert!(m.contains("Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n"), "{m}");
        assert_eq!(one_line("abcdef", 3), "abc…");
        let event = Event::test(0);
        let bad = mail_message("kura@example.test", &["not an address".into()], &event).unwrap_err();
        assert!(!bad.retry && bad.message.contains("not an address"), "{bad:?}");
    }

    #[test]
    fn messages_have_crlf_lines_and_the_details() {
        let event = Event::new("test", 0, "subject line".into(), json!({ "error": ".starts with a dot\nsecond" }));
        let m = formatted(&mail_message("kura@example.test", &["ops@example.test".into()], &event).unwrap());
        assert!(m.contains("Subject: subject line\r\n"), "{m}");
        assert!(!m.replace("\r\n", "").contains('\n'), "{m:?}");
        let (head, body) = m.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with("\r\nContent-Transfer-Encoding: 7bit"), "{head}");
        assert!(body.starts_with("subject line\r\n"), "{body}");
        assert!(body.contains("error: .starts with a dot\r\nsecond\r\n"), "{body}");
    }

    /// Extra roots come from the `KURA_NOTIFY_CA` file; a missing or empty one is an error
    /// that TLS deliveries report.
    #[test]
    fn extra_roots() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, ca.pem()).unwrap();
        let system = Trust::load(None);
        assert!(system.error.is_none());
        let with = Trust::load(Some(&pem));
        assert!(with.error.is_none(), "{:?}", with.error);
        assert!(with.roots.iter().any(|c| c.as_ref() == ca.der().as_ref()));
        assert_eq!(with.roots.len(), system.roots.len() + 1);
        let missing = Trust::load(Some(&dir.path().join("nope.pem")));
        assert!(missing.error.as_deref().is_some_and(|e| e.starts_with("KURA_NOTIFY_CA=")), "{:?}", missing.error);
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let empty = Trust::load(Some(&dir.path().join("empty.pem")));
        assert!(empty.error.as_deref().is_some_and(|e| e.contains("no certificates")), "{:?}", empty.error);
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
