//! Signed S3 requests from the outside, for what the filer's HTTP API cannot show or do: a
//! bucket created with Object Lock and its default retention, an object's lock headers, a
//! DELETE naming a version, the keys and versions a listing holds. Signed by `object_store`'s
//! `AwsAuthorizer` (SigV4; never a signer of ours), sent with a plain blocking HTTP client.

use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};
use std::time::Duration;

use crate::s3::{SeaweedS3, ACCESS_KEY, SECRET_KEY};

/// An S3 answer.
#[derive(Debug)]
pub struct S3Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl S3Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Every text of `<tag>…</tag>` in `xml`, in order.
pub fn tags(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}

/// A client for the test server's S3 gateway, as the test identity.
pub struct S3Api {
    endpoint: String,
    credential: AwsCredential,
    http: reqwest::blocking::Client,
}

impl S3Api {
    pub fn new(server: &SeaweedS3) -> S3Api {
        S3Api {
            endpoint: server.endpoint(),
            credential: AwsCredential { key_id: ACCESS_KEY.into(), secret_key: SECRET_KEY.into(), token: None },
            http: reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        }
    }

    /// `METHOD /path?query` with extra headers and a body, signed.
    pub fn send(&self, method: &str, path_and_query: &str, headers: &[(&str, &str)], body: &str) -> S3Answer {
        let url = format!("{}{path_and_query}", self.endpoint);
        let mut b = http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req: HttpRequest = b.body(HttpRequestBody::from(body.to_string())).unwrap();
        AwsAuthorizer::new(&self.credential, "s3", "us-east-1").authorize(&mut req, None);
        let r = self
            .http
            .request(method.parse().unwrap(), &url)
            .headers(req.headers().clone())
            .body(body.to_string())
            .send()
            .unwrap_or_else(|e| panic!("{method} {path_and_query}: {e}"));
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        S3Answer { status, headers, body: r.text().unwrap_or_default() }
    }

    /// Creates `bucket` with Object Lock enabled (so versioned) and no default retention.
    pub fn create_lock_enabled_bucket(&self, bucket: &str) {
        let r = self.send("PUT", &format!("/{bucket}"), &[("x-amz-bucket-object-lock-enabled", "true")], "");
        assert_eq!(r.status, 200, "creating bucket {bucket} with Object Lock: {r:?}");
        let r = self.send("GET", &format!("/{bucket}?object-lock="), &[], "");
        assert_eq!((r.status, tags(&r.body, "ObjectLockEnabled")), (200, vec!["Enabled".to_string()]), "{r:?}");
    }

    /// Creates `bucket` with Object Lock enabled and a default retention of `days` in `mode`
    /// (`COMPLIANCE` or `GOVERNANCE`), and checks the server reports it back.
    pub fn create_locked_bucket(&self, bucket: &str, mode: &str, days: u32) {
        self.create_lock_enabled_bucket(bucket);
        let config = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled\
             </ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention>\
             </Rule></ObjectLockConfiguration>"
        );
        let r = self.send("PUT", &format!("/{bucket}?object-lock="), &[("content-type", "application/xml")], &config);
        assert_eq!(r.status, 200, "setting the default retention of {bucket}: {r:?}");
        let r = self.send("GET", &format!("/{bucket}?object-lock="), &[], "");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(tags(&r.body, "Mode"), vec![mode.to_string()], "{}", r.body);
        assert_eq!(tags(&r.body, "Days"), vec![days.to_string()], "{}", r.body);
    }

    /// HEAD of an object.
    pub fn head(&self, bucket: &str, key: &str) -> S3Answer {
        self.send("HEAD", &format!("/{bucket}/{key}"), &[], "")
    }

    /// Every version and delete marker under `prefix` (ListObjectVersions, one page): their
    /// version ids.
    pub fn versions(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let r = self.send("GET", &format!("/{bucket}?versions=&prefix={prefix}"), &[], "");
        assert_eq!(r.status, 200, "{r:?}");
        tags(&r.body, "VersionId")
    }

    /// The keys under `prefix` (one page of ListObjectsV2: the tests stay under 1000).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let r = self.send("GET", &format!("/{bucket}?list-type=2&max-keys=1000&prefix={prefix}"), &[], "");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(tags(&r.body, "IsTruncated"), vec!["false".to_string()], "more than one page: {}", r.body);
        tags(&r.body, "Key")
    }
}
