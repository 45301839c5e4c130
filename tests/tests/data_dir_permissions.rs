//! The engine's data directory is private (issue 16, items 3 and 4), tried as an attacker who
//! is an unprivileged local user (`nobody`, through `setpriv`): they cannot read anything under
//! a data directory or an offline store, and every file they could have planted in a data
//! directory that was once world-writable (an `admin.token`, a symbolic link in its place, a
//! `tls/` key pair) makes `kura serve` refuse to start, with a message naming the file.
//!
//! The tests run as root (as the engine usually does) and need `setpriv` (util-linux).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kura_tests::content::random_bytes;
use kura_tests::engine::{raw_disk, Server};
use kura_tests::kura_cli::{kura_bin, run, Run};

const NOBODY_UID: u32 = 65534;

fn kura(args: &[&dyn AsRef<OsStr>]) -> Run {
    run(args.iter().map(|a| a.as_ref().to_owned()).collect::<Vec<OsString>>())
}

/// A base directory under /tmp that `nobody` may traverse (0755), removed when dropped.
fn base() -> tempfile::TempDir {
    let uid = std::fs::metadata("/proc/self").expect("/proc is mounted").uid();
    assert_eq!(uid, 0, "these tests plant files as another user and must run as root");
    let dir = tempfile::Builder::new().prefix("kura-perms").tempdir_in("/tmp").unwrap();
    chmod(dir.path(), 0o755);
    dir
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Runs `sh -c script` as nobody:nogroup with no supplementary groups.
fn as_nobody(script: &str, env: &[(&str, &str)]) -> Output {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "sh", "-c", script])
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("setpriv is missing: install util-linux"),
        Err(e) => panic!("setpriv: {e}"),
    }
}

/// Every path under `root` (itself included), as root sees them.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        all.push(p);
    }
    all.sort();
    all
}

/// Asserts every directory under `root` is 0700 and every file 0600, and that nobody can
/// list or read any of them (and can read `control`, a file readable by all: the harness is
/// shown to detect a read). Returns the paths.
fn assert_private(root: &Path, control: &Path) -> Vec<PathBuf> {
    let all = walk(root);
    let wrong: Vec<String> = all
        .iter()
        .filter(|p| mode(p) != if p.is_dir() { 0o700 } else { 0o600 })
        .map(|p| format!("{:o} {}", mode(p), p.display()))
        .collect();
    assert!(wrong.is_empty(), "not private:\n{}", wrong.join("\n"));
    let mut script = format!("cat '{}' >/dev/null || echo CONTROL-FAILED\n", control.display());
    for p in &all {
        let verb = if p.is_dir() { "ls" } else { "cat" };
        script.push_str(&format!("{verb} '{}' >/dev/null 2>&1 && echo 'READ {}'\n", p.display(), p.display()));
    }
    script.push_str("true\n");
    let out = as_nobody(&script, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.trim().is_empty(), "nobody could read:\n{stdout}");
    all
}

/// What `kura serve` did on `data`: `Ok(stderr)` if it exited (refused), `Err(stderr)` if it
/// started listening (it is then killed).
fn serve_outcome(data: &Path) -> Result<String, String> {
    let mut child = Command::new(kura_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start kura serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    loop {
        if rx.try_recv().is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err_thread.join().unwrap());
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(err_thread.join().unwrap());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kura serve neither started nor exited within 60 s:\n{}", err_thread.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts `kura serve` on `data` refuses to start with an error naming every one of `words`.
fn assert_refused(data: &Path, words: &[&str]) -> String {
    let stderr = match serve_outcome(data) {
        Ok(s) => s,
        Err(s) => panic!("kura serve started on an untrusted data directory; it should refuse:\n{s}"),
    };
    eprintln!("{stderr}");
    for w in words {
        assert!(stderr.to_lowercase().contains(&w.to_lowercase()), "the error does not mention {w:?}:\n{stderr}");
    }
    stderr
}

/// A data directory that was once world-writable (0777) while `nobody` ran `plant` in it, and
/// was then closed (0700), as an administrator would after the fact.
fn planted(base: &Path, plant: &str, env: &[(&str, &str)]) -> PathBuf {
    let data = base.join("engine");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o777);
    let out = as_nobody(&format!("set -e; cd '{}'; umask 0; {plant}", data.display()), env);
    assert!(out.status.success(), "planting failed: {}", String::from_utf8_lossy(&out.stderr));
    chmod(&data, 0o700);
    data
}

#[test]
fn nothing_under_the_data_directory_or_an_offline_store_is_readable_by_another_user() {
    let base = base();
    let control = base.path().join("control");
    std::fs::write(&control, b"anyone may read this").unwrap();
    chmod(&control, 0o644);
    let disk = raw_disk(base.path(), "a.img", random_bytes(7, 3 << 20));
    chmod(&disk.path, 0o644);

    let data = base.path().join("engine");
    let server = Server::start(&data);
    let snap = server.capture(&disk.path, "h1").snapshot;
    // While it runs: the WAL is there too.
    let all = assert_private(&data, &control);
    for expect in ["catalog.db", "catalog.db-wal", "admin.token", "secrets.key", "tls/key.pem", "tls/cert.pem"] {
        assert!(all.contains(&data.join(expect)), "{expect} missing from {all:#?}");
    }
    assert!(all.contains(&data.join(format!("store/snapshots/{snap}.kmf"))));
    let chunks = data.join("store/chunks");
    assert!(all.iter().any(|p| p.parent().and_then(Path::parent) == Some(chunks.as_path())), "no chunk");
    drop(server);

    // The offline store, in a directory that does not exist yet.
    let store = base.path().join("offline/store");
    kura(&[&"image", &"capture", &disk.path, &"--store", &store, &"--json"]).expect_success();
    let all = assert_private(&base.path().join("offline"), &control);
    assert!(all.iter().any(|p| p.extension().is_some_and(|e| e == "kmf")), "{all:#?}");
}

#[test]
fn a_world_writable_or_foreign_data_directory_or_parent_is_refused() {
    let base = base();
    let data = base.path().join("open");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o777);
    assert_refused(&data, &["open", "mode 777", "chmod 700"]);

    let data = base.path().join("theirs");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o700);
    std::os::unix::fs::chown(&data, Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
    assert_refused(&data, &["theirs", "owned by uid 65534"]);

    let parent = base.path().join("shared");
    std::fs::create_dir(&parent).unwrap();
    chmod(&parent, 0o775);
    assert_refused(&parent.join("engine"), &["shared", "mode 775", "go-w"]);
}

#[test]
fn a_planted_admin_token_is_refused_and_never_written() {
    let base = base();
    let data = planted(base.path(), "echo planted > admin.token; chmod 666 admin.token", &[]);
    assert_refused(&data, &["admin.token", "owned by uid 65534"]);
    assert_eq!(std::fs::read_to_string(data.join("admin.token")).unwrap(), "planted\n");
}

#[test]
fn a_symlink_planted_as_admin_token_is_refused_and_its_target_untouched() {
    let base = base();
    let victim = base.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    let data = planted(base.path(), &format!("ln -s '{}' admin.token", victim.display()), &[]);
    assert_refused(&data, &["admin.token"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");

    // A dangling one, where the engine would have created its target.
    let base = self::base();
    let target = base.path().join("created-by-root");
    let data = planted(base.path(), &format!("ln -s '{}' admin.token", target.display()), &[]);
    assert_refused(&data, &["admin.token"]);
    assert!(!target.exists(), "the engine wrote through a planted symlink");
}

#[test]
fn a_planted_tls_key_pair_is_refused() {
    let base = base();
    let cert = rcgen::generate_simple_self_signed(vec!["kura".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (key, pem) = (cert.key_pair.serialize_pem(), cert.cert.pem());
    let data = planted(
        base.path(),
        "mkdir tls; printf '%s' \"$KEY\" > tls/key.pem; printf '%s' \"$CERT\" > tls/cert.pem; chmod 600 tls/key.pem",
        &[("KEY", key.as_str()), ("CERT", pem.as_str())],
    );
    assert_refused(&data, &["tls", "owned by uid 65534"]);
}

#[test]
fn secrets_readable_by_others_are_refused() {
    let base = base();
    let data = base.path().join("engine");
    let server = Server::start(&data);
    // secrets.key is made just after the server says it listens.
    let t0 = Instant::now();
    while !data.join("secrets.key").exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    for name in ["tls/key.pem", "admin.token", "secrets.key"] {
        let path = data.join(name);
        assert_eq!(mode(&path), 0o600, "{name}");
        chmod(&path, 0o644);
        assert_refused(&data, &[name, "mode 644", "chmod 600"]);
        chmod(&path, 0o600);
    }
    // And a symbolic link the engine's own user made is not followed for a secret either.
    let key = data.join("tls/key.pem");
    std::fs::rename(&key, data.join("tls/real-key.pem")).unwrap();
    std::os::unix::fs::symlink("real-key.pem", &key).unwrap();
    assert_refused(&data, &["key.pem", "symbolic link"]);
    std::fs::rename(data.join("tls/real-key.pem"), &key).unwrap();
    drop(Server::start(&data));
}

#[test]
fn fix_permissions_makes_an_old_data_directory_private() {
    let base = base();
    let control = base.path().join("control");
    std::fs::write(&control, b"anyone may read this").unwrap();
    chmod(&control, 0o644);
    let disk = raw_disk(base.path(), "a.img", random_bytes(8, 2 << 20));
    let data = base.path().join("engine");
    let mut server = Server::start(&data);
    server.capture(&disk.path, "h1");
    server.stop();
    // The modes an older Kura left: directories 0755, files 0644, the secrets 0600.
    for p in walk(&data) {
        chmod(&p, if p.is_dir() { 0o755 } else { 0o644 });
    }
    for name in ["tls/key.pem", "admin.token", "secrets.key"] {
        chmod(&data.join(name), 0o600);
    }
    let mut server = Server::start(&data);
    let t0 = Instant::now();
    while !server.log().contains("kura admin fix-permissions") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.log().contains("kura admin fix-permissions"), "no warning:\n{}", server.log());
    // Not while the engine runs.
    kura(&[&"admin", &"fix-permissions", &"--data", &data]).expect_failure_mentioning(&["stop `kura serve`"]);
    server.stop();

    let fixed = kura(&[&"admin", &"fix-permissions", &"--data", &data, &"--json"]);
    let v: serde_json::Value = fixed.expect_success().json();
    assert!(v["fixed"].as_u64().unwrap() > 5, "{fixed}");
    assert_eq!(v["check"], "ok", "{fixed}");
    assert_private(&data, &control);

    // A file another user owns is reported, left alone, and fails the command.
    let foreign = data.join("store/tmp/left-by-nobody");
    std::fs::write(&foreign, b"x").unwrap();
    std::os::unix::fs::chown(&foreign, Some(NOBODY_UID), None).unwrap();
    kura(&[&"admin", &"fix-permissions", &"--data", &data]).expect_failure_mentioning(&["left-by-nobody", "owned by"]);
    std::fs::remove_file(&foreign).unwrap();
    let server = Server::start(&data);
    assert!(!server.log().contains("fix-permissions"), "{}", server.log());
}
