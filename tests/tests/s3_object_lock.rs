//! S3 Object Lock as an immutable store: a SeaweedFS bucket created with Object Lock and a
//! default retention of one day in COMPLIANCE mode, captured into through the engine. Then:
//! `kura snapshot delete` is refused naming the retention date, `kura retention` reports the
//! snapshot it would delete as locked, `kura gc` reports the garbage chunks as locked (with the
//! date) instead of failing, and nothing is deleted; a direct S3 DeleteObject of the manifest's
//! version and a shortening of its retention are refused by the server itself (SeaweedFS 4.x
//! enforces Object Lock; this test fails if it stops doing so). Every snapshot still restores.
//!
//! And in a bucket with Object Lock but no default retention (versioned, nothing retained):
//! Kura's deletions name the version, so a collected chunk or a deleted manifest is gone for
//! good — no version left behind a delete marker.

use kura_tests::content::{random_bytes, sha256_file};
use kura_tests::disks::MIB;
use kura_tests::engine::{encode_stored_chunk, raw_disk, Server};
use kura_tests::s3::SeaweedS3;
use kura_tests::s3_api::S3Api;
use serde_json::{json, Value};

const BUCKET: &str = "kura-locked";

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `date -u -d DATE +%s` (coreutils).
fn date_to_unix(date: &str) -> i64 {
    let out = std::process::Command::new("date").args(["-u", "-d", date, "+%s"]).output().unwrap();
    assert!(out.status.success(), "date -d {date:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// RFC 3339 UTC of a unix time (`date -u`).
fn unix_to_date(t: i64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `YYYY-MM-DDTHH:MM:SS` of an RFC 3339 date (as Kura prints it, without a fraction).
fn to_second(date: &str) -> &str {
    &date[..19]
}

#[test]
fn locked_objects_are_reported_not_deleted_by_kura_and_refused_by_the_server() {
    let work = tempfile::tempdir().unwrap();
    let s3 = SeaweedS3::start();
    let api = S3Api::new(&s3);
    api.create_locked_bucket(BUCKET, "COMPLIANCE", 1);
    let spec = s3.spec_in(BUCKET, "engine");
    let server = Server::start_http_with(&work.path().join("engine"), &[&"--store", &spec]);

    let disk = raw_disk(work.path(), "a.img", random_bytes(1, 4 * MIB as usize));
    let first = server.capture(&disk.path, "a").snapshot;
    let second = server.capture(&disk.path, "a").snapshot;
    assert_ne!(first, second);

    // The manifest carries the bucket's default retention.
    let key = format!("engine/snapshots/{first}.kmf");
    let head = api.head(BUCKET, &key);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("x-amz-object-lock-mode"), Some("COMPLIANCE"), "{head:?}");
    let until = head.header("x-amz-object-lock-retain-until-date").expect("a retain-until date").to_string();
    let version = head.header("x-amz-version-id").expect("a version id (a locked bucket is versioned)").to_string();
    eprintln!("{key}: version {version}, retained until {until}");

    // Kura refuses to delete it, naming the date; the snapshot stays listed and in the bucket.
    let run = server.kura(&[&"snapshot", &"delete", &first]);
    eprintln!("{run}");
    run.expect_failure_mentioning(&[first.as_str(), "locked", "COMPLIANCE", to_second(&until)]);
    assert!(server.snapshot_ids().contains(&first), "a refused delete dropped the snapshot from the list");
    assert_eq!(api.head(BUCKET, &key).status, 200);

    // Retention would delete the older snapshot: it reports it locked, deletes nothing.
    let run = server.kura(&[&"retention", &"--host", &"a", &"--keep-last", &"1", &"--json"]);
    eprintln!("{run}");
    let v: Value = run.expect_success().json();
    assert_eq!(v["deleted"], json!([]), "{v}");
    // The older of the two (captures in the same second are ordered by id).
    let locked = v["locked"].as_array().unwrap();
    let older = locked[0]["snapshot"].as_str().unwrap_or_default();
    assert!(locked.len() == 1 && [&first, &second].contains(&&older.to_string()), "{v}");
    let older_until = api.head(BUCKET, &format!("engine/snapshots/{older}.kmf"));
    let older_until = older_until.header("x-amz-object-lock-retain-until-date").unwrap();
    assert_eq!(locked[0]["until"].as_str().map(to_second), Some(to_second(older_until)), "{v}");
    assert_eq!(server.snapshot_ids().len(), 2);

    // Garbage: three chunks of an upload that is aborted. GC reports them locked, removes none.
    let dead = garbage(&server, 3);
    let run = server.kura(&[&"gc", &"--grace", &"0", &"--json"]);
    eprintln!("{run}");
    let gc: Value = run.expect_success().json();
    assert_eq!((gc["removed"].as_u64(), gc["locked"].as_u64()), (Some(0), Some(3)), "{gc}");
    let gc_until = gc["locked_until"].as_str().expect("locked_until").to_string();
    let t = date_to_unix(&gc_until);
    assert!(
        (unix_now() + 23 * 3600..unix_now() + 25 * 3600).contains(&t),
        "locked until {gc_until}: not a day from now"
    );
    let text = server.kura(&[&"gc", &"--grace", &"0"]);
    text.expect_success();
    assert!(text.stdout.contains("3 chunks locked until"), "{text}");
    let chunks = api.keys(BUCKET, "engine/chunks/");
    for d in &dead {
        assert!(chunks.iter().any(|k| k.ends_with(d.as_str())), "garbage chunk {d} was deleted from a locked bucket");
    }

    // The server itself refuses to delete the manifest's version, or to shorten its retention.
    let del = api.send("DELETE", &format!("/{BUCKET}/{key}?versionId={version}"), &[], "");
    eprintln!("direct DeleteObject with the version id: {} {}", del.status, del.body);
    assert_eq!(del.status, 403, "SeaweedFS deleted a version under COMPLIANCE retention: {del:?}");
    let shorter = format!(
        "<Retention><Mode>COMPLIANCE</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
        unix_to_date(unix_now() + 60)
    );
    let r = api.send("PUT", &format!("/{BUCKET}/{key}?retention=&versionId={version}"), &[], &shorter);
    assert_eq!(r.status, 403, "SeaweedFS shortened a COMPLIANCE retention: {r:?}");
    let after = api.head(BUCKET, &key);
    assert_eq!((after.status, after.header("x-amz-version-id")), (200, Some(version.as_str())), "{after:?}");
    assert_eq!(after.header("x-amz-object-lock-retain-until-date"), Some(until.as_str()));
    // The listing of versions still holds it, with no delete marker in front of it.
    assert_eq!(api.versions(BUCKET, &key), vec![version.clone()]);

    // Both snapshots restore.
    let sha = sha256_file(&disk.path);
    for id in [&first, &second] {
        let target = work.path().join("restored.img");
        server.restore(id, &target);
        assert_eq!(sha256_file(&target), sha, "snapshot {id}");
        std::fs::remove_file(&target).unwrap();
    }
}

/// Aborted-upload garbage: `n` chunks uploaded for host `g`, the upload then aborted.
fn garbage(server: &Server, n: u64) -> Vec<String> {
    let http = server.api();
    let r = http.req("POST", "/uploads").token(&server.admin).json(&json!({"host": "g"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let upload = r.json()["upload"].as_str().unwrap().to_string();
    let mut digests = Vec::new();
    for i in 0..n {
        let (digest, bytes) = encode_stored_chunk(&random_bytes(200 + i, 64 << 10));
        let r = http.req("PUT", &format!("/uploads/{upload}/chunks/{digest}")).token(&server.admin).bytes(bytes).send();
        assert!(r.status < 300, "{} {}", r.status, r.text());
        digests.push(digest);
    }
    let r = http.req("DELETE", &format!("/uploads/{upload}")).token(&server.admin).send();
    assert!(r.status < 300, "{} {}", r.status, r.text());
    digests
}

#[test]
fn in_a_versioned_bucket_without_retention_deletions_remove_the_version() {
    let work = tempfile::tempdir().unwrap();
    let s3 = SeaweedS3::start();
    let api = S3Api::new(&s3);
    let bucket = "kura-versioned";
    api.create_lock_enabled_bucket(bucket);
    let spec = s3.spec_in(bucket, "engine");
    let server = Server::start_http_with(&work.path().join("engine"), &[&"--store", &spec]);
    let disk = raw_disk(work.path(), "a.img", random_bytes(3, 2 * MIB as usize));
    let first = server.capture(&disk.path, "a").snapshot;
    let second = server.capture(&disk.path, "a").snapshot;

    let key = format!("engine/snapshots/{first}.kmf");
    assert_eq!(api.versions(bucket, &key).len(), 1);
    server.kura(&[&"snapshot", &"delete", &first]).expect_success();
    assert_eq!(server.snapshot_ids(), vec![second.clone()]);
    assert_eq!(api.versions(bucket, &key), Vec::<String>::new(), "the manifest's version (or a delete marker) is left");

    let digests = garbage(&server, 2);
    // The catalog's chunk index stamps touches in whole seconds, and a chunk touched in the
    // collection's own second is kept (catalogs/src/db/cluster.rs): start the next second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let run = server.kura(&[&"gc", &"--grace", &"0", &"--json"]);
    let gc: Value = run.expect_success().json();
    assert_eq!((gc["removed"].as_u64(), gc["locked"].as_u64()), (Some(2), Some(0)), "{gc}");
    for d in &digests {
        let versions = api.versions(bucket, &format!("engine/chunks/{}/{d}", &d[..4]));
        assert!(versions.is_empty(), "chunk {d}: versions left after GC: {versions:?}");
    }
    let target = work.path().join("restored.img");
    server.restore(&second, &target);
    assert_eq!(sha256_file(&target), sha256_file(&disk.path));
}

/// The immutable off-site copy: a DR engine whose store is a bucket with Object Lock (COMPLIANCE,
/// one day) receives a primary's snapshot by replication; the copy carries the retention, and
/// neither the DR engine's own admin nor the primary (deletions never propagate) can remove it.
#[test]
fn a_dr_engine_on_a_locked_bucket_keeps_the_replicated_copy_immutable() {
    let work = tempfile::tempdir().unwrap();
    let s3 = SeaweedS3::start();
    let api = S3Api::new(&s3);
    let bucket = "kura-dr-locked";
    api.create_locked_bucket(bucket, "COMPLIANCE", 1);
    let spec = s3.spec_in(bucket, "dr");
    let dr = Server::start_https_with(&work.path().join("dr"), &[&"--store", &spec], &[]);
    let fingerprint = dr.fingerprint.clone().expect("an https engine has a fingerprint");
    let made = dr.kura(&[&"token", &"create", &"--role", &"replica", &"--json"]);
    let token: Value = made.expect_success().json();
    let token_file = work.path().join("dr.token");
    std::fs::write(&token_file, format!("{}\n", token["token"].as_str().unwrap())).unwrap();
    let primary = Server::start_http(&work.path().join("primary"));
    let add = [&"remote" as &dyn AsRef<std::ffi::OsStr>, &"add", &"dr", &dr.url, &"--fingerprint", &fingerprint];
    primary.kura(&[&add[..], &[&"--token-file" as &dyn AsRef<std::ffi::OsStr>, &token_file]].concat()).expect_success();
    primary.kura(&[&"replicate", &"add", &"--to", &"dr"]).expect_success();

    let disk = raw_disk(work.path(), "a.img", random_bytes(11, 3 * MIB as usize));
    let id = primary.capture(&disk.path, "a").snapshot;
    let t0 = std::time::Instant::now();
    while !dr.snapshot_ids().contains(&id) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "not replicated:\n{}", primary.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let key = format!("dr/snapshots/{id}.kmf");
    let head = api.head(bucket, &key);
    assert_eq!(head.header("x-amz-object-lock-mode"), Some("COMPLIANCE"), "{head:?}");
    let until = head.header("x-amz-object-lock-retain-until-date").expect("a retain-until date").to_string();

    // The primary deletes its snapshot: the DR copy stays. The DR admin cannot delete it either.
    primary.kura(&[&"snapshot", &"delete", &id]).expect_success();
    dr.kura(&[&"snapshot", &"delete", &id]).expect_failure_mentioning(&[id.as_str(), "locked", to_second(&until)]);
    assert!(dr.snapshot_ids().contains(&id));
    let target = work.path().join("restored.img");
    dr.restore(&id, &target);
    assert_eq!(sha256_file(&target), sha256_file(&disk.path));
}
