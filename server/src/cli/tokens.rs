//! `kura token`: create (with an optional expiry), list and revoke API tokens through the
//! engine's admin API, and `kura token rotate-admin`, which replaces the bootstrap admin token
//! on the engine's own machine (it works on the data directory, so it needs no token — a lost
//! or leaked `admin.token` is exactly when it is needed).

use super::engine::client;
use super::ServerArgs;
use anyhow::{bail, Context, Result};
use kura_protocol::routes;
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

/// When a new token expires, as given to `--expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expires {
    /// Seconds from now (by the engine's clock): `30d`, `12h`, `90m`, `3600s`.
    In(i64),
    /// An RFC 3339 time, as unix seconds.
    At(i64),
}

/// Parses `--expires`: a duration (`30d`, `12h`, `90m`, `45s`) or an RFC 3339 time
/// (`2027-01-31T00:00:00Z`).
pub fn parse_expires(s: &str) -> Result<Expires, String> {
    if s.contains('-') || s.contains(':') {
        return kura_imaging::time::parse_rfc3339(s.trim()).map(Expires::At).map_err(|e| e.to_string());
    }
    match crate::scheduler::parse_duration(s)? {
        n if n > 0 => Ok(Expires::In(n)),
        _ => Err(format!("{s:?}: a token's lifetime must be longer than zero")),
    }
}

pub fn create(
    role: &str,
    note: &str,
    user: Option<&str>,
    expires: Option<Expires>,
    s: &ServerArgs,
) -> Result<ExitCode> {
    let mut body = serde_json::json!({ "role": role, "label": note, "user": user });
    match expires {
        Some(Expires::In(secs)) => body["expires_in"] = secs.into(),
        Some(Expires::At(t)) => body["expires_at"] = t.into(),
        None => {}
    }
    let v: Value = client(s)?.post_json(routes::TOKEN_CREATE.path, &body)?;
    if s.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{}", v["token"].as_str().unwrap_or(""));
        let until = v["expires"].as_i64().map(|t| format!(", valid until {}", time(t))).unwrap_or_default();
        eprintln!("token {}{until}: shown only once; the engine keeps only its hash", v["id"]);
    }
    Ok(ExitCode::SUCCESS)
}

fn time(t: i64) -> String {
    kura_imaging::time::format_rfc3339(t)
}

/// `revoked`, `expired` (by the engine's answer time `now`) or `active`.
fn state(v: &Value, now: i64) -> &'static str {
    if v["revoked"].as_bool().unwrap_or(false) {
        "revoked"
    } else if v["expires"].as_i64().is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

/// `kura token list`: every token (never a secret). Agent tokens of jobs only with `--agents`.
pub fn list(agents: bool, s: &ServerArgs) -> Result<ExitCode> {
    let list: Vec<Value> = client(s)?.get_json(routes::TOKENS.path)?;
    let list: Vec<Value> = list.into_iter().filter(|v| agents || v["role"] != "agent").collect();
    if s.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = kura_catalogs::db::system_now();
    println!(
        "{:>5}  {:8}  {:12}  {:24}  {:20}  {:20}  {:20}  STATE",
        "ID", "ROLE", "USER", "NOTE", "CREATED", "LAST USED", "EXPIRES"
    );
    let opt_time = |v: &Value| v.as_i64().map(time).unwrap_or_else(|| "-".into());
    for v in &list {
        println!(
            "{:>5}  {:8}  {:12}  {:24}  {:20}  {:20}  {:20}  {}",
            v["id"],
            v["role"].as_str().unwrap_or(""),
            v["user"].as_str().unwrap_or("-"),
            v["label"].as_str().unwrap_or(""),
            opt_time(&v["created"]),
            opt_time(&v["last_used"]),
            v["expires"].as_i64().map(time).unwrap_or_else(|| "never".into()),
            state(v, now)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura token revoke ID`: the token stops working at once, with its browser sessions.
pub fn revoke(id: i64, s: &ServerArgs) -> Result<ExitCode> {
    let v: Value = client(s)?.delete_json(&routes::token_revoke(id))?;
    if s.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("token {id} ({}) revoked", v["label"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura token rotate-admin --data DIR`: revokes the bootstrap admin token and writes a new one
/// to `DIR/admin.token` (0600, replaced by rename: never through a planted link). Works while
/// `kura serve` runs: the engine checks tokens in the catalog on every request.
pub fn rotate_admin(data: &Path, catalog: Option<&str>, user: &str, json: bool) -> Result<ExitCode> {
    if catalog.is_none() && !data.join("catalog.db").exists() {
        bail!("{} has no catalog.db: not an engine's data directory", data.display());
    }
    crate::datadir::check(data)?;
    let catalog = crate::serve::open_catalog(data, catalog)?;
    let issued = catalog.rotate_bootstrap_token("kura token rotate-admin", user)?;
    let path = data.join("admin.token");
    kura_catalogs::private::replace(&path, format!("{}\n", issued.secret).as_bytes())
        .with_context(|| format!("writing {} (the old token is already revoked: run this again)", path.display()))?;
    if json {
        println!("{}", serde_json::json!({ "id": issued.info.id, "user": user, "file": path }));
    } else {
        println!("new admin token {} for user {user} written to {} (mode 0600)", issued.info.id, path.display());
        println!("the previous bootstrap token is revoked; sessions made from it have ended");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_takes_a_duration_or_an_rfc3339_time() {
        assert_eq!(parse_expires("30d"), Ok(Expires::In(30 * 86_400)));
        assert_eq!(parse_expires("12h"), Ok(Expires::In(12 * 3600)));
        assert_eq!(parse_expires("2027-01-01T00:00:00Z"), Ok(Expires::At(1_798_761_600)));
        assert_eq!(parse_expires("2027-01-01T01:00:00+01:00"), Ok(Expires::At(1_798_761_600)));
        for bad in ["0d", "", "12x", "-5h", "2027-13-01T00:00:00Z", "tomorrow"] {
            assert!(parse_expires(bad).is_err(), "{bad:?} accepted");
        }
    }
}
