//! Authentication and roles on every API route, driven by the engine's own route table
//! (`kura admin routes --json`), agent tokens bound to their job and machine, and malformed or
//! oversized requests, which must get a 4xx and leave the engine serving. Route × role runs on
//! the local store with SQLite and on S3 (SeaweedFS) with PostgreSQL.

use kura_tests::engine::{chunk_count, encode_stored_chunk, files_named, Api, Server};
use kura_tests::kura_cli;
use kura_tests::s3::Backend;
use serde_json::{json, Value};

struct Tokens {
    admin: String,
    operator: String,
    agent: String,
    agent_mac: String,
    /// A primary engine's token for its DR engine (issue 13): uploads only.
    replica: String,
    /// A DR engine's token for pulling from its primary (issue 13): reads, and reports copies.
    reader: String,
    job: i64,
}

fn setup(server: &Server, api: &Api) -> Tokens {
    let admin = server.admin.clone();
    let r = api.req("POST", "/tokens").token(&admin).json(&json!({"role": "operator", "label": "test"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let operator = r.json()["token"].as_str().unwrap().to_string();
    let r = api.req("POST", "/tokens").token(&admin).json(&json!({"role": "replica", "label": "primary"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let replica = r.json()["token"].as_str().unwrap().to_string();
    let r = api.req("POST", "/tokens").token(&admin).json(&json!({"role": "reader", "label": "dr-pull"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let reader = r.json()["token"].as_str().unwrap().to_string();
    for (name, mac) in [("h1", "aa:bb:cc:dd:ee:01"), ("h2", "aa:bb:cc:dd:ee:02")] {
        let r = api.req("POST", "/hosts").token(&admin).json(&json!({"name": name, "macs": [mac]})).send();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = api.req("POST", "/jobs").token(&operator).json(&json!({"kind": "capture", "host": "h1"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    Tokens {
        admin,
        operator,
        agent: v["agent_token"].as_str().unwrap().to_string(),
        agent_mac: "aa:bb:cc:dd:ee:01".into(),
        replica,
        reader,
        job: v["job"]["id"].as_i64().unwrap(),
    }
}

/// The route table, from the binary itself.
fn routes() -> Vec<Value> {
    let run = kura_cli::run(["admin", "routes", "--json"]);
    run.expect_success();
    let routes: Vec<Value> = run.json();
    assert!(routes.len() >= 20, "{routes:?}");
    routes
}

fn fill(path: &str, job: i64) -> String {
    let mut p = path.replace("{name}", "h1");
    p = p.replace("{digest}", &"ab".repeat(32)).replace("{upload}", &"00".repeat(16));
    // h1 has no power control: an admin's power action is refused (409) and touches nothing.
    p = p.replace("{action}", "pxe-reset");
    p = p.replace("{mac}", "aa:bb:cc:dd:ee:77");
    if p.starts_with("/api/v1/jobs/") {
        p = p.replace("{id}", &job.to_string());
    } else {
        p = p.replace("{id}", "0123456789abcdef");
    }
    assert!(!p.contains('{'), "no value for a parameter of {path}");
    p
}

#[test]
fn every_route_checks_token_and_role() {
    every_route_checks_token_and_role_on(Backend::local());
}

#[test]
fn every_route_checks_token_and_role_s3_postgres() {
    every_route_checks_token_and_role_on(Backend::s3());
}

fn every_route_checks_token_and_role_on(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let server = backend.start_http(&work.path().join("engine"));
    let api = server.api();
    let t = setup(&server, &api);
    let mut problems = Vec::new();
    let mut checked = 0;
    for route in routes() {
        let (method, path, access) =
            (route["method"].as_str().unwrap(), route["path"].as_str().unwrap(), route["access"].as_str().unwrap());
        let url = fill(path, t.job);
        let call = |token: Option<&str>, mac: Option<&str>| {
            let mut r = api.raw(method, &url);
            if let Some(t) = token {
                r = r.token(t);
            }
            if let Some(m) = mac {
                r = r.mac(m);
            }
            if method != "GET" && method != "DELETE" {
                // An empty object: never a valid request for a changing route, so a call that
                // gets past the checks changes nothing.
                r = r.json(&json!({}));
            }
            r.send().status
        };
        let mut expect = |who: &str, got: u16, want: &[u16]| {
            checked += 1;
            if !want.contains(&got) {
                problems.push(format!("{method} {path} ({access}) as {who}: {got}, want one of {want:?}"));
            }
        };
        let not_auth: Vec<u16> = (100..600).filter(|s| *s != 401 && *s != 403).collect();
        if access == "Public" {
            // A public GET is a page or a health check; a public POST (login, logout) with an
            // empty JSON body is refused or redirected, but never for lack of a token.
            let want: Vec<u16> =
                if method == "GET" { vec![200] } else { (300..500).filter(|s| *s != 401 && *s != 403).collect() };
            expect("nobody", call(None, None), &want);
            continue;
        }
        // A page without a session or token sends the browser to the login page.
        expect("nobody", call(None, None), if access == "Page" { &[303] } else { &[401] });
        expect("a garbage token", call(Some("garbage"), None), &[401]);
        expect("an unknown well-formed token", call(Some(&format!("kura_{}", "0".repeat(64))), None), &[401]);
        // Only the reader's own report route is closed to an admin (an admin holds no copies).
        expect("admin", call(Some(&t.admin), None), if access == "Reader" { &[403] } else { &not_auth });
        let operator = call(Some(&t.operator), None);
        let agent = call(Some(&t.agent), Some(&t.agent_mac));
        let replica = call(Some(&t.replica), None);
        let reader = call(Some(&t.reader), None);
        match access {
            "Admin" => {
                expect("operator", operator, &[403]);
                expect("agent", agent, &[403]);
                expect("replica", replica, &[403]);
                expect("reader", reader, &[403]);
            }
            "Operator" | "Page" => {
                expect("operator", operator, &not_auth);
                expect("agent", agent, &[403]);
                expect("replica", replica, &[403]);
                expect("reader", reader, &[403]);
            }
            "OperatorOrReader" => {
                // Listing hosts and snapshots: staff, and a DR engine pulling from here.
                expect("operator", operator, &not_auth);
                expect("reader", reader, &not_auth);
                expect("agent", agent, &[403]);
                expect("replica", replica, &[403]);
            }
            "OperatorOrAgent" | "ReadSnapshot" | "Upload" => {
                // Only the upload routes take a replica token (it adds, never reads or deletes);
                // only the snapshot reads take a reader token (it reads, never adds or deletes).
                expect("replica", replica, if access == "Upload" { &not_auth } else { &[403] });
                expect("reader", reader, if access == "ReadSnapshot" { &not_auth } else { &[403] });
                expect("operator", operator, &not_auth);
                // The agent's token from its own machine gets the route's answer for an agent
                // of a capture job (not a blanket 403); the wrong machine, or none, is refused.
                // A route missing from agent_answer() expects 0: it fails, naming the route.
                expect("agent from its MAC (see agent_answer)", agent, &[agent_answer(method, path).unwrap_or(0)]);
                expect("agent from another MAC", call(Some(&t.agent), Some("aa:bb:cc:dd:ee:99")), &[403]);
                expect("agent without a MAC", call(Some(&t.agent), None), &[403]);
            }
            "Replica" => {
                // What a primary replicating here may read: its quarantine mark, nothing else.
                expect("replica", replica, &not_auth);
                expect("operator", operator, &[403]);
                expect("agent", agent, &[403]);
                expect("reader", reader, &[403]);
            }
            "Reader" => {
                // What a DR engine pulling from here reports: the copies it holds.
                expect("reader", reader, &not_auth);
                expect("operator", operator, &[403]);
                expect("agent", agent, &[403]);
                expect("replica", replica, &[403]);
            }
            other => problems.push(format!("{method} {path}: unknown access {other}")),
        }
    }
    // The calls above left the agent's job as it was: still queued, its token still valid.
    let r = api.req("GET", &format!("/jobs/{}", t.job)).token(&t.agent).mac(&t.agent_mac).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["job"]["state"], "queued", "{}", r.text());
    eprintln!("{checked} checks");
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    assert_eq!(api.req("GET", "/health").send().status, 200);
}

/// What an agent of a queued capture job gets, from its own machine, on each route open to
/// agents, called as `every_route_checks_token_and_role` calls it (parameters from `fill`, an
/// empty JSON object as the body of a POST or PUT).
fn agent_answer(method: &str, path: &str) -> Option<u16> {
    Some(match (method, path) {
        // Reading snapshots is for restore jobs: refused by the handler.
        ("GET", "/api/v1/snapshots/{id}/manifest") | ("GET", "/api/v1/chunks/{digest}") => 403,
        // `{}` is not a list of digests: refused before the role matters.
        ("POST", "/api/v1/chunks/check") => 400,
        // `{}` names no host: the JSON is refused.
        ("POST", "/api/v1/uploads") => 422,
        // No such upload session.
        ("POST", "/api/v1/uploads/{upload}/missing")
        | ("PUT", "/api/v1/uploads/{upload}/chunks/{digest}")
        | ("POST", "/api/v1/uploads/{upload}/commit")
        | ("DELETE", "/api/v1/uploads/{upload}")
        | ("GET", "/api/v1/uploads/{upload}/parent") => 404,
        // No `size` query, and `{}` is not a list of digests: refused before the session is
        // looked up.
        ("POST", "/api/v1/uploads/{upload}/pieces") => 400,
        // Its own job.
        ("GET", "/api/v1/jobs/{id}") => 200,
        // Its own job, but `{}` is not a progress report nor a result.
        ("POST", "/api/v1/jobs/{id}/progress") | ("POST", "/api/v1/jobs/{id}/finish") => 422,
        _ => return None,
    })
}

/// Each path answers only the methods the route table declares for it: any other method gets
/// 405 (or 404) from the router, for every caller, and never reaches a handler.
#[test]
fn every_route_answers_only_its_declared_methods() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let t = setup(&server, &api);
    let table = routes();
    let mut declared: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for r in &table {
        declared.entry(r["path"].as_str().unwrap()).or_default().push(r["method"].as_str().unwrap());
    }
    let audit_before = api.req("GET", "/audit").token(&t.admin).send().text();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, methods) in &declared {
        let url = fill(path, t.job);
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if methods.contains(&other) {
                continue;
            }
            let callers: [(&str, Option<&str>, Option<&str>); 4] = [
                ("admin", Some(&t.admin), None),
                ("operator", Some(&t.operator), None),
                ("agent", Some(&t.agent), Some(&t.agent_mac)),
                ("nobody", None, None),
            ];
            for (who, token, mac) in callers {
                let mut r = api.raw(other, &url);
                if let Some(tok) = token {
                    r = r.token(tok);
                }
                if let Some(m) = mac {
                    r = r.mac(m);
                }
                if other != "GET" && other != "DELETE" {
                    r = r.json(&json!({}));
                }
                let got = r.send();
                checked += 1;
                if got.status != 405 && got.status != 404 {
                    problems.push(format!(
                        "{other} {path} (declared: {methods:?}) as {who}: {} {}",
                        got.status,
                        got.text()
                    ));
                }
            }
        }
    }
    eprintln!("{checked} checks");
    assert!(checked >= 100, "only {checked} undeclared method calls");
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    // No handler ran: nothing was recorded, the job is untouched.
    assert_eq!(
        api.req("GET", "/audit").token(&t.admin).send().text(),
        audit_before,
        "an undeclared method changed something"
    );
    let r = api.req("GET", &format!("/jobs/{}", t.job)).token(&t.agent).mac(&t.agent_mac).send();
    assert_eq!((r.status, r.json()["job"]["state"].as_str()), (200, Some("queued")), "{}", r.text());
}

/// The status page's browser login: redirects without a session, sessions only for operator
/// and admin tokens, a cookie that scripts cannot read, logout ends the session.
#[test]
fn status_page_needs_a_session_from_an_operator_token() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let t = setup(&server, &api);
    let r = api.raw("GET", "/status").send();
    assert_eq!((r.status, r.header("location")), (303, vec!["/login".to_string()]), "{}", r.text());
    assert!(!r.text().contains("h1"), "a redirect must not carry the page: {}", r.text());
    let r = api.raw("GET", "/").header("Cookie", &format!("kura_session={}", "ab".repeat(32))).send();
    assert_eq!(r.status, 303, "an unknown session");
    let r = api.raw("GET", "/login").send();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("id=\"login\""), "{}", r.text());

    let login = |token: &str| {
        api.raw("POST", "/login")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .bytes(format!("token={token}").into_bytes())
            .send()
    };
    let r = login("garbage");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("set-cookie").is_empty());
    let r = login(&t.agent);
    assert_eq!(r.status, 403, "an agent token: {}", r.text());
    assert!(r.header("set-cookie").is_empty());

    let r = login(&t.operator);
    assert_eq!((r.status, r.header("location")), (303, vec!["/status".to_string()]), "{}", r.text());
    let cookie = r.header("set-cookie").pop().expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(!cookie.contains(&t.operator), "the token must not be in the cookie: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let r = api.raw("GET", "/status").header("Cookie", &session).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    assert!(page.contains("id=\"hosts\"") && page.contains("data-host=\"h1\""), "{page}");
    assert!(r.header("content-type")[0].starts_with("text/html"));
    assert_eq!(r.header("cache-control"), ["no-store"]);
    // Bearer tokens work too (scripts), and the role still counts.
    assert_eq!(api.raw("GET", "/status").token(&t.operator).send().status, 200);

    let r = api.raw("POST", "/logout").header("Cookie", &session).send();
    assert_eq!((r.status, r.header("location")), (303, vec!["/login".to_string()]));
    assert!(r.header("set-cookie")[0].contains("Max-Age=0"), "{:?}", r.header("set-cookie"));
    assert_eq!(api.raw("GET", "/status").header("Cookie", &session).send().status, 303, "a session after logout");
}

#[test]
fn agent_tokens_are_bound_to_their_job_machine_and_lifetime() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let t = setup(&server, &api);
    let r = api.req("POST", "/jobs").token(&t.operator).json(&json!({"kind": "capture", "host": "h2"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let other = r.json();
    let (agent2, job2, mac2) =
        (other["agent_token"].as_str().unwrap(), other["job"]["id"].as_i64().unwrap(), "aa:bb:cc:dd:ee:02");

    let own = format!("/jobs/{}", t.job);
    assert_eq!(api.req("GET", &own).token(&t.agent).mac(&t.agent_mac).send().status, 200);
    // The same MAC spelled another way is the same machine.
    assert_eq!(api.req("GET", &own).token(&t.agent).mac("AA-BB-CC-DD-EE-01").send().status, 200);
    assert_eq!(api.req("GET", &own).token(&t.agent).mac(mac2).send().status, 403, "another MAC");
    let progress = json!({"done": 1, "total": 10});
    let r = api.req("POST", &format!("/jobs/{job2}/progress")).token(&t.agent).mac(&t.agent_mac).json(&progress).send();
    assert_eq!(r.status, 403, "another job's progress: {}", r.text());
    let r = api.req("GET", &format!("/jobs/{job2}")).token(&t.agent).mac(&t.agent_mac).send();
    assert_eq!(r.status, 403, "another job: {}", r.text());
    // An agent may not upload for another host's job, nor without its job.
    let r =
        api.req("POST", "/uploads").token(&t.agent).mac(&t.agent_mac).json(&json!({"host": "h2", "job": job2})).send();
    assert_eq!(r.status, 403, "upload for another job: {}", r.text());

    // The job starts (first progress report), then ends: its token is dead.
    let r = api.req("POST", &format!("/jobs/{job2}/progress")).token(agent2).mac(mac2).json(&progress).send();
    assert_eq!(r.status, 204, "{}", r.text());
    let r = api
        .req("POST", &format!("/jobs/{job2}/finish"))
        .token(agent2)
        .mac(mac2)
        .json(&json!({"ok": false, "error": "test: disk not found"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "failed", "{}", r.text());
    let r = api.req("GET", &format!("/jobs/{job2}")).token(agent2).mac(mac2).send();
    assert_eq!(r.status, 401, "a token of an ended job: {}", r.text());
    let r = api.req("POST", &format!("/jobs/{job2}/progress")).token(agent2).mac(mac2).json(&progress).send();
    assert_eq!(r.status, 401, "a token of an ended job: {}", r.text());
    // The job's record is there for the operator.
    let r = api.req("GET", &format!("/jobs/{job2}")).token(&t.operator).send();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("disk not found"), "{}", r.text());
}

#[test]
fn malformed_and_oversized_requests_get_a_4xx() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let admin = server.admin.clone();
    let mut problems = Vec::new();
    let mut check = |what: &str, want: &[u16], r: Result<kura_tests::engine::Resp, String>| match r {
        Ok(r) if want.contains(&r.status) => eprintln!("{what}: {} {}", r.status, r.text()),
        Ok(r) => problems.push(format!("{what}: {} {}, want {want:?}", r.status, r.text())),
        Err(e) => problems.push(format!("{what}: no answer: {e}")),
    };

    let hosts = || api.req("POST", "/hosts").token(&admin);
    check(
        "bad JSON",
        &[400],
        hosts().header("Content-Type", "application/json").bytes(b"{\"name\": ".to_vec()).try_send(),
    );
    check("no content type", &[415], hosts().bytes(br#"{"name": "x"}"#.to_vec()).try_send());
    check(
        "wrong content type",
        &[415],
        hosts().header("Content-Type", "text/plain").bytes(br#"{"name":"x"}"#.to_vec()).try_send(),
    );
    check("wrong JSON shape", &[422], hosts().json(&json!({"name": 5})).try_send());
    check("JSON over 64 KiB", &[413], hosts().json(&json!({"name": "x", "notes": "n".repeat(70_000)})).try_send());
    check("a bad MAC", &[400, 422], hosts().json(&json!({"name": "m", "macs": ["not-a-mac"]})).try_send());
    let tok = json!({"role": "agent", "label": "x"});
    check("agent token without a job", &[400], api.req("POST", "/tokens").token(&admin).json(&tok).try_send());
    check("job id not a number", &[400], api.req("GET", "/jobs/abc").token(&admin).try_send());
    check("unknown job", &[404], api.req("GET", "/jobs/999999").token(&admin).try_send());
    check("bad snapshot id", &[400], api.req("GET", "/snapshots/zzz/manifest").token(&admin).try_send());
    check("unknown snapshot", &[404], api.req("GET", "/snapshots/0123456789abcdef/manifest").token(&admin).try_send());
    check("bad digest", &[400], api.req("GET", "/chunks/xyz").token(&admin).try_send());
    check("short digest", &[400], api.req("GET", &format!("/chunks/{}", "a".repeat(63))).token(&admin).try_send());
    check("unknown chunk", &[404], api.req("GET", &format!("/chunks/{}", "a".repeat(64))).token(&admin).try_send());
    check("unknown route", &[404], api.req("GET", "/nothing/here").token(&admin).try_send());

    let r = api.req("POST", "/uploads").token(&admin).json(&json!({"host": "web"})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let up = r.json()["upload"].as_str().unwrap().to_string();
    let missing =
        |body: Vec<u8>| api.req("POST", &format!("/uploads/{up}/missing")).token(&admin).bytes(body).try_send();
    check("missing: 33 bytes", &[400], missing(vec![1; 33]));
    check("missing: empty", &[400], missing(Vec::new()));
    check("missing: 4097 digests", &[400, 413], missing(vec![1; 4097 * 32]));
    check(
        "missing: unknown session",
        &[404],
        api.req("POST", &format!("/uploads/{}/missing", "00".repeat(16))).token(&admin).bytes(vec![0; 32]).try_send(),
    );
    let put = |digest: &str, body: Vec<u8>| {
        api.req("PUT", &format!("/uploads/{up}/chunks/{digest}")).token(&admin).bytes(body).try_send()
    };
    // Over the cap (header + 16 MiB + zstd's bound + slack): cut off, not read into memory.
    check("chunk over the cap", &[413], put(&"ab".repeat(32), vec![7; 64 + (16 << 20) + (16 << 20) / 128 + 1024 + 1]));
    check("chunk: bad digest in path", &[400], put("nothex", vec![0; 100]));
    check("chunk: garbage body", &[422, 400], put(&"ab".repeat(32), vec![0; 100]));
    check(
        "commit: garbage manifest",
        &[400],
        api.req("POST", &format!("/uploads/{up}/commit")).token(&admin).bytes(b"not a manifest".to_vec()).try_send(),
    );

    // A chunk whose body does not match its digest is refused and nothing is stored.
    let store = server.store();
    let plain = kura_tests::content::random_bytes(5, 100_000);
    let (digest, blob) = encode_stored_chunk(&plain);
    let (other, _) = encode_stored_chunk(b"some other content");
    check("chunk under another digest", &[422], put(&other, blob.clone()));
    let mut flipped = blob.clone();
    flipped[64 + 500] ^= 0x20;
    check("chunk with a flipped payload bit", &[422], put(&digest, flipped));
    let mut lying = blob.clone();
    // Header and payload agree (CRC recomputed) but the content is not what the digest says.
    lying[64 + 500] ^= 0x20;
    let crc = crc32fast::hash(&lying[64..]);
    lying[20..24].copy_from_slice(&crc.to_le_bytes());
    check("chunk with a recomputed CRC but wrong content", &[422], put(&digest, lying));
    for d in [&digest, &other] {
        let files = files_named(&store, d);
        assert!(files.is_empty(), "a refused chunk left files in the store: {files:?}");
    }
    assert_eq!(chunk_count(&store), 0, "a refused chunk was stored");
    // The same chunk, intact, is accepted (the checks above are not refusing everything).
    check("an intact chunk", &[201], put(&digest, blob.clone()));
    check("the same chunk again", &[200], put(&digest, blob.clone()));
    assert!(!files_named(&store, &digest).is_empty(), "an accepted chunk is nowhere in the store");
    let got = api.req("GET", &format!("/chunks/{digest}")).token(&admin).send();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, blob, "the chunk read back differs from the one stored");

    assert!(
        problems.is_empty(),
        "{} problems:\n{}\nserver log:\n{}",
        problems.len(),
        problems.join("\n"),
        server.log()
    );
    assert_eq!(api.req("GET", "/health").send().status, 200, "the engine stopped answering");
}

/// Issue 16, the planted snapshot over HTTP: an attacker who got no token for the victim (the
/// netboot tests show that) but holds an agent token of its own machine's capture job commits
/// a real manifest of the victim's disk, which names the victim's host. The engine refuses it
/// (403, audited, the job's log says so): no snapshot is added for either host, and the job
/// still runs.
#[test]
fn an_agent_commit_of_a_manifest_naming_another_host_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_http(&work.path().join("engine"));
    let api = server.api();
    let t = setup(&server, &api);
    // The victim, h2, has a snapshot; its manifest (naming h2) is what the attacker sends.
    let disk = work.path().join("victim.img");
    kura_tests::disks::patterned_file(&disk, 4 << 20);
    let victim = server.capture(&disk, "h2").snapshot;
    let r = api.req("GET", &format!("/snapshots/{victim}/manifest")).token(&t.admin).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let forged = r.body;

    // The attacker's own machine, h1: its agent starts the job and opens an upload for it.
    let agent = |method: &str, path: &str| api.req(method, path).token(&t.agent).mac(&t.agent_mac);
    let r = agent("POST", &format!("/jobs/{}/progress", t.job)).json(&json!({"done": 0, "total": 1})).send();
    assert_eq!(r.status, 204, "{}", r.text());
    let r = agent("POST", "/uploads").json(&json!({"host": "h1", "job": t.job})).send();
    assert_eq!(r.status, 201, "{}", r.text());
    let up = r.json()["upload"].as_str().unwrap().to_string();
    let r = agent("POST", &format!("/uploads/{up}/commit")).bytes(forged).send();
    assert_eq!(r.status, 403, "a manifest naming another host was accepted: {}", r.text());
    assert!(r.text().contains("h2") && r.text().contains("h1"), "{}", r.text());

    let snaps: Vec<(String, String)> = server
        .snapshots()
        .iter()
        .map(|s| (s["host"].as_str().unwrap().to_string(), s["id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(snaps, [("h2".to_string(), victim.clone())], "the snapshots changed");
    let r = api.req("GET", &format!("/jobs/{}", t.job)).token(&t.operator).send();
    let detail = r.json();
    assert_eq!(detail["job"]["state"], "running", "{detail:#}");
    assert!(detail["job"]["snapshot"].is_null(), "{detail:#}");
    assert!(r.text().contains("a commit was refused"), "{detail:#}");
    let audit = api.req("GET", "/audit").token(&t.admin).send().text();
    assert!(audit.contains("upload.commit_refused"), "{audit}");
}
