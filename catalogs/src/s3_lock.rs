//! S3 Object Lock on the bucket of an S3 store ([`crate::s3`]): what Kura learns of it and how
//! it keeps from deleting a locked object.
//!
//! - **At open**, one `GET ?object-lock` (GetObjectLockConfiguration) says whether the bucket
//!   has Object Lock and its default retention (mode, days or years). A bucket without it (or a
//!   server without the API: 404, 501) is an ordinary bucket and nothing below applies.
//! - **In a locked bucket** every object gets the default retention when written: it is kept
//!   until `LastModified + period`. The GC's sweep skips an object whose default retention has
//!   not ended without any request ([`ObjectLock::locked_by_default`]); before any DELETE —
//!   GC, `kura snapshot delete`, retention — one `HEAD` reads the object's own retain-until
//!   date and legal hold (a retention extended by `PutObjectRetention` is seen there), and an
//!   object still under either is reported as [`Error::Locked`], no DELETE sent.
//! - **The DELETE names the version** (`?versionId=` from the HEAD): a locked bucket is
//!   versioned, and a DELETE without a version would only add a delete marker, hiding the
//!   object while it keeps taking space. A server that still refuses the DELETE (403: clock
//!   skew, a hold set in between) is reported as locked too.
//!
//! The requests are signed by `object_store`'s [`AwsAuthorizer`] and sent through its HTTP
//! client (the TLS settings of the store's other requests): never a signer of ours.

use kura_imaging::Error;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A bucket's default retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRetention {
    /// `COMPLIANCE` or `GOVERNANCE`.
    pub mode: String,
    pub period: Duration,
}

/// The Object Lock of a store's bucket, and the requests that respect it.
pub struct ObjectLock {
    http: HttpClient,
    credential: AwsCredential,
    region: String,
    /// `http(s)://host[:port]/bucket` (path style) or `http(s)://bucket.host[:port]`.
    bucket_url: String,
    bucket: String,
    /// `None`: Object Lock is enabled without a default (objects carry their own retention).
    pub default: Option<DefaultRetention>,
}

/// Where the bucket's requests go (from the store's `S3Spec`).
pub struct BucketAddress {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
}

impl BucketAddress {
    fn url(&self) -> String {
        let (b, r) = (&self.bucket, &self.region);
        match (self.endpoint.as_deref().map(|e| e.trim_end_matches('/')), self.path_style) {
            (Some(e), true) => format!("{e}/{b}"),
            (Some(e), false) => match e.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{b}.{host}"),
                None => format!("{e}/{b}"),
            },
            (None, true) => format!("https://s3.{r}.amazonaws.com/{b}"),
            (None, false) => format!("https://{b}.s3.{r}.amazonaws.com"),
        }
    }
}

/// An object key in a URL path: every byte but the unreserved ones and `/` percent-encoded.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].trim())
}

/// Parses a GetObjectLockConfiguration answer: `None` if Object Lock is not enabled.
fn parse_configuration(xml: &str) -> Result<Option<Option<DefaultRetention>>, String> {
    if tag(xml, "ObjectLockEnabled") != Some("Enabled") {
        return Ok(None);
    }
    let Some(rule) = tag(xml, "DefaultRetention") else { return Ok(Some(None)) };
    let mode = tag(rule, "Mode").ok_or("a default retention without a Mode")?.to_string();
    let number = |t: &str| tag(rule, t).map(|v| v.parse::<u64>().map_err(|_| format!("{t} {v:?} is not a number")));
    let days = match (number("Days").transpose()?, number("Years").transpose()?) {
        (Some(d), None) => d,
        (None, Some(y)) => y * 365,
        _ => return Err("a default retention needs Days or Years (one of them)".into()),
    };
    Ok(Some(Some(DefaultRetention { mode, period: Duration::from_secs(days * 86_400) })))
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// What a HEAD says of an object (the default: it does not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectState {
    pub version: Option<String>,
    /// The retention mode and retain-until time (unix seconds), if any.
    pub retention: Option<(String, i64)>,
    pub legal_hold: bool,
}

impl ObjectState {
    /// `Err(Locked)` if the object may not be deleted at `now`.
    pub fn check(&self, object: &str, now: SystemTime) -> Result<(), Error> {
        if self.legal_hold {
            return Err(Error::Locked { object: object.to_string(), mode: "legal hold".into(), until: None });
        }
        match &self.retention {
            Some((mode, until)) if *until > unix(now) => {
                Err(Error::Locked { object: object.to_string(), mode: mode.clone(), until: Some(*until) })
            }
            _ => Ok(()),
        }
    }
}

fn store_err(message: String, retryable: bool) -> Error {
    Error::Store { message, retryable }
}

impl ObjectLock {
    /// [`detect`](Self::detect) on a runtime of its own, from any thread (async or not).
    pub fn detect_blocking(addr: BucketAddress, credential: AwsCredential) -> Result<Option<ObjectLock>, Error> {
        std::thread::scope(|s| {
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| store_err(format!("starting the S3 client: {e}"), false))?;
                rt.block_on(Self::detect(addr, credential))
            })
            .join()
            .unwrap_or_else(|_| Err(store_err("detecting Object Lock: the thread panicked".into(), false)))
        })
    }

    /// Reads the bucket's Object Lock configuration: `Ok(None)` for a bucket without Object
    /// Lock (or a server without the API).
    pub async fn detect(addr: BucketAddress, credential: AwsCredential) -> Result<Option<ObjectLock>, Error> {
        let allow_http = addr.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        let options = object_store::ClientOptions::new().with_allow_http(allow_http);
        let http = ReqwestConnector::default()
            .connect(&options)
            .map_err(|e| store_err(format!("configuring the S3 client: {e}"), false))?;
        let mut lock = ObjectLock {
            http,
            credential,
            region: addr.region.clone(),
            bucket_url: addr.url(),
            bucket: addr.bucket.clone(),
            default: None,
        };
        let what = format!("reading the Object Lock configuration of bucket {}", addr.bucket);
        let (status, _, body) = lock.send("GET", &format!("{}?object-lock=", lock.bucket_url), &what).await?;
        let body = String::from_utf8_lossy(&body);
        match status {
            200 => match parse_configuration(&body) {
                Ok(None) => Ok(None),
                Ok(Some(default)) => {
                    lock.default = default;
                    Ok(Some(lock))
                }
                Err(e) => Err(store_err(format!("{what}: {e}: {body}"), false)),
            },
            // ObjectLockConfigurationNotFoundError (or NoSuchBucket, which opening reports);
            // servers without the API.
            404 | 501 => Ok(None),
            400 if body.contains("NotImplemented") => Ok(None),
            403 => Err(store_err(
                format!(
                    "{what}: access denied: Kura must know whether objects are locked before it deletes any; allow \
                     s3:GetBucketObjectLockConfiguration on the bucket"
                ),
                false,
            )),
            s => Err(store_err(format!("{what}: HTTP {s}: {body}"), s >= 500)),
        }
    }

    /// `default retention COMPLIANCE, 30 days`, for messages.
    pub fn describe(&self) -> String {
        match &self.default {
            Some(d) => format!("default retention {}, {} days", d.mode, d.period.as_secs() / 86_400),
            None => "no default retention".to_string(),
        }
    }

    /// Until when an object written at `written` stays under the bucket's default retention,
    /// if that is still in the future at `now`.
    pub fn locked_by_default(&self, written: SystemTime, now: SystemTime) -> Option<(String, i64)> {
        let d = self.default.as_ref()?;
        let until = written + d.period;
        (until > now).then(|| (d.mode.clone(), unix(until)))
    }

    fn object_url(&self, key: &str) -> String {
        format!("{}/{}", self.bucket_url, encode_key(key))
    }

    /// `s3://bucket/key`, for messages.
    pub fn name(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// HEAD of `key`: `None` if it does not exist.
    pub async fn state(&self, key: &str) -> Result<Option<ObjectState>, Error> {
        let what = format!("looking up the lock of {}", self.name(key));
        let (status, headers, _) = self.send("HEAD", &self.object_url(key), &what).await?;
        match status {
            200 => {}
            404 => return Ok(None),
            s => return Err(store_err(format!("{what}: HTTP {s}"), s >= 500)),
        }
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let retention = match (header("x-amz-object-lock-mode"), header("x-amz-object-lock-retain-until-date")) {
            (Some(mode), Some(until)) => {
                let t = kura_imaging::time::parse_rfc3339(&until)
                    .map_err(|e| store_err(format!("{what}: retain-until date {until:?}: {e}"), false))?;
                Some((mode, t))
            }
            _ => None,
        };
        Ok(Some(ObjectState {
            version: header("x-amz-version-id").filter(|v| !v.is_empty() && v != "null"),
            retention,
            legal_hold: header("x-amz-object-lock-legal-hold").is_some_and(|h| h.eq_ignore_ascii_case("ON")),
        }))
    }

    /// Deletes one version of `key` (the object itself, not a delete marker). A 403 — the
    /// server enforcing a retention Kura did not see — is reported as [`Error::Locked`].
    pub async fn delete_version(&self, key: &str, state: &ObjectState) -> Result<(), Error> {
        let url = match &state.version {
            Some(v) => format!("{}?versionId={}", self.object_url(key), encode_key(v)),
            None => self.object_url(key),
        };
        let what = format!("deleting {}", self.name(key));
        let (status, _, body) = self.send("DELETE", &url, &what).await?;
        match status {
            200..=299 | 404 => Ok(()),
            403 => Err(Error::Locked {
                object: self.name(key),
                mode: state.retention.as_ref().map(|r| r.0.clone()).unwrap_or_else(|| "refused by the server".into()),
                until: state.retention.as_ref().map(|r| r.1),
            }),
            s => Err(store_err(format!("{what}: HTTP {s}: {}", String::from_utf8_lossy(&body)), s >= 500)),
        }
    }

    async fn send(&self, method: &str, url: &str, what: &str) -> Result<(u16, http::HeaderMap, Vec<u8>), Error> {
        let mut req: HttpRequest = http::Request::builder()
            .method(method)
            .uri(url)
            .body(HttpRequestBody::empty())
            .map_err(|e| store_err(format!("{what}: {e}"), false))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region).authorize(&mut req, None);
        let resp = self.http.execute(req).await.map_err(|e| store_err(format!("{what}: {e}"), true))?;
        let (parts, body) = resp.into_parts();
        let body = body.bytes().await.map_err(|e| store_err(format!("{what}: {e}"), true))?;
        Ok((parts.status.as_u16(), parts.headers, body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_and_states() {
        let xml = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention>\
                   <Mode>COMPLIANCE</Mode><Days>30</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
        let d = parse_configuration(xml).unwrap().unwrap().unwrap();
        assert_eq!(d, DefaultRetention { mode: "COMPLIANCE".into(), period: Duration::from_secs(30 * 86_400) });
        let years = xml.replace("<Days>30</Days>", "<Years>2</Years>");
        assert_eq!(parse_configuration(&years).unwrap().unwrap().unwrap().period.as_secs(), 730 * 86_400);
        let no_rule =
            "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";
        assert_eq!(parse_configuration(no_rule).unwrap(), Some(None));
        assert_eq!(parse_configuration("<ObjectLockConfiguration/>").unwrap(), None);
        assert!(parse_configuration(&xml.replace("<Days>30</Days>", "<Days>x</Days>")).is_err());

        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let held = ObjectState { version: None, retention: Some(("COMPLIANCE".into(), 1_000_001)), legal_hold: false };
        match held.check("s3://b/k", now) {
            Err(Error::Locked { until: Some(1_000_001), mode, .. }) => assert_eq!(mode, "COMPLIANCE"),
            other => panic!("{other:?}"),
        }
        let ended = ObjectState { retention: Some(("COMPLIANCE".into(), 1_000_000)), ..held.clone() };
        assert!(ended.check("s3://b/k", now).is_ok());
        let hold = ObjectState { legal_hold: true, ..ended };
        assert!(matches!(hold.check("s3://b/k", now), Err(Error::Locked { until: None, .. })));
        let e = held.check("s3://b/k", now).unwrap_err().to_string();
        assert!(e.contains("1970-01-12T13:46:41Z") && e.contains("COMPLIANCE"), "{e}");
    }

    #[test]
    fn addresses_and_keys() {
        let a = |endpoint: Option<&str>, path_style| {
            let endpoint = endpoint.map(str::to_string);
            BucketAddress { bucket: "b".into(), region: "eu-1".into(), endpoint, path_style }.url()
        };
        assert_eq!(a(Some("http://127.0.0.1:8333/"), true), "http://127.0.0.1:8333/b");
        assert_eq!(a(Some("https://s3.example"), false), "https://b.s3.example");
        assert_eq!(a(None, false), "https://b.s3.eu-1.amazonaws.com");
        assert_eq!(encode_key("p q/chunks/ab+c"), "p%20q/chunks/ab%2Bc");
    }
}
