//! Users, API tokens and authentication.
//!
//! - Roles: `admin` (everything, including users and tokens), `operator` (hosts, jobs,
//!   snapshots), `agent` (one job's own endpoints). Users are admins or operators.
//! - A token's secret is `kura_` followed by 64 hex digits (32 random bytes from the OS). It is
//!   shown once, when issued ([`IssuedToken`]); the catalog stores only its SHA-256, so lookup
//!   is by hash and needs no constant-time comparison.
//! - Admin and operator tokens belong to a user and carry the user's role; deleting the user
//!   deletes them. Agent tokens are bound to one job and one MAC address of the job's host, and
//!   are valid only while that job is queued or running: ending the job ends the token.
//! - Replica tokens (role `replica`, migration 0009) belong to no user either: a DR engine's
//!   token for the primary that pushes to it. They may add chunks and snapshots, nothing else
//!   (the engine's route table and upload service enforce that).
//! - A token is refused once revoked or at or after its expiry time. Browser sessions remember
//!   a token's id and re-check it on every request ([`Catalog::token_principal`]), so revoking
//!   or expiring a token ends its sessions too.
//! - Each token records when it was last used, written at most once per
//!   [`LAST_USED_RESOLUTION`] (authenticating stays a read nearly always).
//! - The bootstrap admin token (label [`BOOTSTRAP_LABEL`], kept in the data directory's
//!   `admin.token`) is replaced by [`Catalog::rotate_bootstrap_token`].

use super::error::{is_unique_violation, CatalogError, Result};
use super::hosts::{normalize_mac, validate_name};
use super::jobs::{self, JobState};
use super::sql::{Connection, OptionalExtension, Row};
use super::{audit, Catalog, UnixTime};
use rusqlite::params;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The prefix of every token secret (lets secret scanners and people recognise one).
pub const TOKEN_PREFIX: &str = "kura_";

/// The label of the bootstrap admin token (the one in the data directory's `admin.token`).
pub const BOOTSTRAP_LABEL: &str = "bootstrap";

/// A token's `last_used` is rewritten only when it is at least this old (seconds).
pub const LAST_USED_RESOLUTION: UnixTime = 60;

text_enum! {
    pub enum Role {
        Admin => "admin",
        Operator => "operator",
        Agent => "agent",
        Replica => "replica",
        Reader => "reader",
    }
}

impl Role {
    /// Admins and operators: the roles of people (users), as opposed to machines (agents, and
    /// the engines replicating with this one: replica and reader tokens).
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Admin | Role::Operator)
    }

    /// The roles of other engines: replica (a primary pushing here) and reader (a DR engine
    /// pulling from here). Their tokens belong to no user.
    pub fn is_peer(self) -> bool {
        matches!(self, Role::Replica | Role::Reader)
    }

    /// Whether a principal with this role may do what needs `needed`: an admin may do what an
    /// operator may; an agent only agent things.
    pub fn allows(self, needed: Role) -> bool {
        self == needed || (self == Role::Admin && needed == Role::Operator)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created: UnixTime,
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub role: Role,
    pub label: String,
    pub user: Option<String>,
    pub job_id: Option<i64>,
    pub mac: Option<String>,
    pub created: UnixTime,
    pub expires: Option<UnixTime>,
    pub revoked: bool,
    /// When it last authenticated a request (to within [`LAST_USED_RESOLUTION`]).
    pub last_used: Option<UnixTime>,
}

/// A newly issued token: the only time its secret is available.
#[derive(Clone)]
pub struct IssuedToken {
    pub secret: String,
    pub info: TokenInfo,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken").field("secret", &"<redacted>").field("info", &self.info).finish()
    }
}

/// Who is calling, as established by [`Catalog::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub token_id: i64,
    pub role: Role,
    pub label: String,
    /// The owning user (admin and operator tokens).
    pub user: Option<String>,
    /// The job an agent token is bound to.
    pub job_id: Option<i64>,
    /// The MAC address an agent token is bound to.
    pub mac: Option<String>,
}

impl Principal {
    /// How this principal appears as the actor of audit rows.
    pub fn actor(&self) -> String {
        match &self.user {
            Some(user) => format!("{user} (token {}: {})", self.token_id, self.label),
            None => format!("token {}: {}", self.token_id, self.label),
        }
    }
}

/// Checks that `principal` is the agent token of job `job_id` on the machine `mac`.
pub fn authorize_agent(principal: &Principal, job_id: i64, mac: &str) -> Result<()> {
    if principal.role != Role::Agent {
        return Err(CatalogError::Forbidden(format!("a {} token is not an agent token", principal.role)));
    }
    if principal.job_id != Some(job_id) {
        return Err(CatalogError::Forbidden(format!("this agent token is not for job {job_id}")));
    }
    let mac = normalize_mac(mac)?;
    if principal.mac.as_deref() != Some(mac.as_str()) {
        return Err(CatalogError::Forbidden(format!("this agent token is not for MAC address {mac}")));
    }
    Ok(())
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| CatalogError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

const TOKEN_SELECT: &str = "SELECT t.id, t.role, t.label, u.name, t.job_id, t.mac, t.created, t.expires, t.revoked, \
     t.last_used \
     FROM tokens t LEFT JOIN users u ON u.id = t.user_id";

fn token_from_row(r: &Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(0)?,
        role: r.get(1)?,
        label: r.get(2)?,
        user: r.get(3)?,
        job_id: r.get(4)?,
        mac: r.get(5)?,
        created: r.get(6)?,
        expires: r.get(7)?,
        revoked: r.get(8)?,
        last_used: r.get(9)?,
    })
}

fn load_token(conn: &Connection, id: i64) -> Result<TokenInfo> {
    conn.query_row(&format!("{TOKEN_SELECT} WHERE t.id = ?1"), [id], token_from_row)
        .optional()?
        .ok_or_else(|| CatalogError::not_found("token", id))
}

fn load_user(conn: &Connection, name: &str) -> Result<User> {
    conn.query_row("SELECT id, name, role, created FROM users WHERE name = ?1", [name], |r| {
        Ok(User { id: r.get(0)?, name: r.get(1)?, role: r.get(2)?, created: r.get(3)? })
    })
    .optional()?
    .ok_or_else(|| CatalogError::not_found("user", name))
}

/// What a new token grants.
struct Grant<'a> {
    role: Role,
    label: &'a str,
    user_id: Option<i64>,
    job_id: Option<i64>,
    mac: Option<&'a str>,
    expires: Option<UnixTime>,
}

/// Inserts a token row with a fresh secret (inside the caller's transaction) and audits it.
/// The grant of a bootstrap admin token (first start, and `kura token rotate-admin`).
fn bootstrap_grant(user_id: i64) -> Grant<'static> {
    Grant { role: Role::Admin, label: BOOTSTRAP_LABEL, user_id: Some(user_id), job_id: None, mac: None, expires: None }
}

fn issue(conn: &Connection, now: UnixTime, actor: &str, g: Grant<'_>) -> Result<IssuedToken> {
    if g.expires.is_some_and(|e| e <= now) {
        return Err(CatalogError::Invalid("the token's expiry time is in the past".into()));
    }
    let secret = new_secret()?;
    let id: i64 = conn.query_row(
        "INSERT INTO tokens (hash, role, label, user_id, job_id, mac, created, expires) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        params![hash_secret(&secret), g.role, g.label, g.user_id, g.job_id, g.mac, now, g.expires],
        |r| r.get(0),
    )?;
    let info = load_token(conn, id)?;
    let detail = json!({
        "role": g.role, "label": g.label, "user": info.user, "job": g.job_id, "mac": g.mac, "expires": g.expires
    });
    audit::append(conn, now, actor, "token.create", &format!("token {}", info.id), detail)?;
    Ok(IssuedToken { secret, info })
}

impl Catalog {
    /// Creates an admin or operator user.
    pub fn create_user(&self, actor: &str, name: &str, role: Role) -> Result<User> {
        validate_name("user", name)?;
        if !role.is_staff() {
            return Err(CatalogError::Invalid(
                "users are admins or operators; agents get job tokens, other engines replica or reader tokens".into(),
            ));
        }
        self.write(|tx, now| {
            tx.execute("INSERT INTO users (name, role, created) VALUES (?1, ?2, ?3)", params![name, role, now])
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        CatalogError::conflict("user", name, "a user with this name already exists")
                    } else {
                        e
                    }
                })?;
            audit::append(tx, now, actor, "user.create", name, json!({"role": role}))?;
            load_user(tx, name)
        })
    }

    /// If the catalog has no users yet, creates admin `name` and a first token for it; returns
    /// `None` (and changes nothing) otherwise.
    pub fn bootstrap_admin(&self, name: &str) -> Result<Option<IssuedToken>> {
        validate_name("user", name)?;
        self.write(|tx, now| {
            let users: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
            if users > 0 {
                return Ok(None);
            }
            let user_id: i64 = tx.query_row(
                "INSERT INTO users (name, role, created) VALUES (?1, 'admin', ?2) RETURNING id",
                params![name, now],
                |r| r.get(0),
            )?;
            audit::append(tx, now, "bootstrap", "user.create", name, json!({"role": Role::Admin}))?;
            let grant = bootstrap_grant(user_id);
            issue(tx, now, "bootstrap", grant).map(Some)
        })
    }

    pub fn get_user(&self, name: &str) -> Result<User> {
        self.read(|conn| load_user(conn, name))
    }

    /// Every user, by name.
    pub fn list_users(&self) -> Result<Vec<User>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT id, name, role, created FROM users ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| Ok(User { id: r.get(0)?, name: r.get(1)?, role: r.get(2)?, created: r.get(3)? }))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Deletes a user and their tokens. The last admin cannot be deleted.
    pub fn delete_user(&self, actor: &str, name: &str) -> Result<()> {
        self.write(|tx, now| {
            let user = load_user(tx, name)?;
            if user.role == Role::Admin {
                let admins: i64 = tx.query_row("SELECT count(*) FROM users WHERE role = 'admin'", [], |r| r.get(0))?;
                if admins == 1 {
                    return Err(CatalogError::conflict("user", name, "it is the last admin"));
                }
            }
            tx.execute("DELETE FROM users WHERE id = ?1", [user.id])?;
            audit::append(tx, now, actor, "user.delete", name, json!({}))
        })
    }

    /// Issues a token for `user`, with the user's role.
    pub fn create_token(&self, actor: &str, user: &str, label: &str, expires: Option<UnixTime>) -> Result<IssuedToken> {
        self.write(|tx, now| {
            let u = load_user(tx, user)?;
            let grant = Grant { role: u.role, label, user_id: Some(u.id), job_id: None, mac: None, expires };
            issue(tx, now, actor, grant)
        })
    }

    /// Issues a token for another engine (no user): `replica`, what a primary engine uses to
    /// push snapshots here, or `reader`, what a DR engine uses to pull them from here.
    pub fn create_peer_token(
        &self,
        actor: &str,
        role: Role,
        label: &str,
        expires: Option<UnixTime>,
    ) -> Result<IssuedToken> {
        if !role.is_peer() {
            return Err(CatalogError::Invalid(format!("{role} is not a role of another engine (replica, reader)")));
        }
        self.write(|tx, now| {
            let grant = Grant { role, label, user_id: None, job_id: None, mac: None, expires };
            issue(tx, now, actor, grant)
        })
    }

    /// Issues an agent token for job `job_id` on the machine with `mac`, which must be one of
    /// the job's host's MAC addresses. The job must be queued or running.
    pub fn create_agent_token(
        &self,
        actor: &str,
        job_id: i64,
        mac: &str,
        expires: Option<UnixTime>,
    ) -> Result<IssuedToken> {
        let mac = normalize_mac(mac)?;
        self.write(|tx, now| {
            let job = jobs::load(tx, job_id)?;
            if !job.state.is_active() {
                return Err(CatalogError::conflict("job", job_id, format!("it is {}", job.state)));
            }
            let owner: Option<String> = tx
                .query_row(
                    "SELECT h.name FROM host_macs m JOIN hosts h ON h.id = m.host_id WHERE m.mac = ?1",
                    [&mac],
                    |r| r.get(0),
                )
                .optional()?;
            if owner.as_deref() != Some(job.host.as_str()) {
                return Err(CatalogError::Invalid(format!("MAC address {mac} is not one of host {:?}'s", job.host)));
            }
            let label = format!("agent for job {job_id} on {mac}");
            let grant = Grant {
                role: Role::Agent,
                label: &label,
                user_id: None,
                job_id: Some(job_id),
                mac: Some(&mac),
                expires,
            };
            issue(tx, now, actor, grant)
        })
    }

    /// Replaces the bootstrap admin token: revokes every live token labelled
    /// [`BOOTSTRAP_LABEL`] and issues a new one for admin user `user` (created if missing, as
    /// on first start: whoever may write the data directory may administer the engine), in one
    /// transaction. The caller writes the new secret to `admin.token`.
    pub fn rotate_bootstrap_token(&self, actor: &str, user: &str) -> Result<IssuedToken> {
        validate_name("user", user)?;
        self.write(|tx, now| {
            let user_id = match load_user(tx, user) {
                Ok(u) if u.role == Role::Admin => u.id,
                Ok(u) => {
                    return Err(CatalogError::conflict("user", user, format!("it is an {}, not an admin", u.role)))
                }
                Err(CatalogError::NotFound { .. }) => {
                    let id: i64 = tx.query_row(
                        "INSERT INTO users (name, role, created) VALUES (?1, 'admin', ?2) RETURNING id",
                        params![user, now],
                        |r| r.get(0),
                    )?;
                    audit::append(tx, now, actor, "user.create", user, json!({"role": Role::Admin}))?;
                    id
                }
                Err(e) => return Err(e),
            };
            let old: Vec<i64> = {
                let mut stmt =
                    tx.prepare_cached("SELECT id FROM tokens WHERE label = ?1 AND role = 'admin' AND revoked = 0")?;
                let rows = stmt.query_map([BOOTSTRAP_LABEL], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for id in &old {
                tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", [id])?;
                audit::append(
                    tx,
                    now,
                    actor,
                    "token.revoke",
                    &format!("token {id}"),
                    json!({"label": BOOTSTRAP_LABEL}),
                )?;
            }
            let grant = bootstrap_grant(user_id);
            let issued = issue(tx, now, actor, grant)?;
            audit::append(
                tx,
                now,
                actor,
                "token.rotate",
                &format!("token {}", issued.info.id),
                json!({"revoked": old}),
            )?;
            Ok(issued)
        })
    }

    /// Every token (without secrets), oldest first.
    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{TOKEN_SELECT} ORDER BY t.id"))?;
            let rows = stmt.query_map([], token_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Revokes a token for good. Revoking a revoked token is a no-op.
    pub fn revoke_token(&self, actor: &str, id: i64) -> Result<TokenInfo> {
        self.write(|tx, now| {
            let token = load_token(tx, id)?;
            if token.revoked {
                return Ok(token);
            }
            tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", [id])?;
            audit::append(tx, now, actor, "token.revoke", &format!("token {id}"), json!({"label": token.label}))?;
            load_token(tx, id)
        })
    }

    /// The principal a token secret stands for at time `now`, or `None` if the secret is
    /// unknown, malformed, revoked, expired, or an agent token whose job is no longer queued
    /// or running. Callers answer every `None` the same way (401) and should not say which.
    /// A usable token's `last_used` becomes `now` if it is older than [`LAST_USED_RESOLUTION`].
    pub fn authenticate(&self, secret: &str, now: UnixTime) -> Result<Option<Principal>> {
        let well_formed = secret
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Ok(None);
        }
        let hash = hash_secret(secret);
        self.read(|conn| principal_where(conn, "t.hash = ?1", &hash, now))
    }

    /// The principal of token `id` at time `now`, with the same checks as
    /// [`Catalog::authenticate`] (for sessions that remember a token, not its secret), and
    /// the same `last_used` update.
    pub fn token_principal(&self, id: i64, now: UnixTime) -> Result<Option<Principal>> {
        self.read(|conn| principal_where(conn, "t.id = ?1", &id, now))
    }
}

/// The principal of the token matching `clause` (with `?1` = `key`), if it is usable at `now`.
fn principal_where(
    conn: &Connection,
    clause: &str,
    key: &dyn rusqlite::ToSql,
    now: UnixTime,
) -> Result<Option<Principal>> {
    let row = conn
        .query_row(
            &format!(
                "SELECT t.id, t.role, t.label, u.name, t.job_id, t.mac, t.expires, t.revoked, j.state, t.last_used \
                 FROM tokens t LEFT JOIN users u ON u.id = t.user_id LEFT JOIN jobs j ON j.id = t.job_id \
                 WHERE {clause}"
            ),
            [key],
            |r| {
                let principal = Principal {
                    token_id: r.get(0)?,
                    role: r.get(1)?,
                    label: r.get(2)?,
                    user: r.get(3)?,
                    job_id: r.get(4)?,
                    mac: r.get(5)?,
                };
                let expires: Option<UnixTime> = r.get(6)?;
                let revoked: bool = r.get(7)?;
                let job_state: Option<JobState> = r.get(8)?;
                let last_used: Option<UnixTime> = r.get(9)?;
                Ok((principal, expires, revoked, job_state, last_used))
            },
        )
        .optional()?;
    let Some((principal, expires, revoked, job_state, last_used)) = row else { return Ok(None) };
    let expired = expires.is_some_and(|e| now >= e);
    let job_ended = principal.role == Role::Agent && !job_state.is_some_and(JobState::is_active);
    if revoked || expired || job_ended {
        return Ok(None);
    }
    if last_used.is_none_or(|t| now - t >= LAST_USED_RESOLUTION) {
        // One small autocommit write per token per minute, outside any transaction.
        conn.execute("UPDATE tokens SET last_used = ?1 WHERE id = ?2", params![now, principal.token_id])?;
    }
    Ok(Some(principal))
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::jobs::{JobKind, NewJob};
    use super::super::snapshots::tests::host;
    use super::super::testing::START;
    use super::*;

    #[test]
    fn replica_tokens_belong_to_no_user_and_replica_users_do_not_exist() {
        let (cat, _) = catalog();
        let issued = cat.create_peer_token("t", Role::Replica, "primary", None).unwrap();
        assert_eq!((issued.info.role, issued.info.user.as_deref()), (Role::Replica, None));
        let p = cat.authenticate(&issued.secret, START).unwrap().unwrap();
        assert_eq!((p.role, p.user, p.job_id), (Role::Replica, None, None));
        assert!(matches!(cat.create_user("t", "r", Role::Replica), Err(CatalogError::Invalid(_))));
        cat.revoke_token("t", issued.info.id).unwrap();
        assert!(cat.authenticate(&issued.secret, START).unwrap().is_none());
    }

    #[test]
    fn reader_tokens_belong_to_no_user_and_only_peer_roles_get_peer_tokens() {
        let (cat, _) = catalog();
        let issued = cat.create_peer_token("t", Role::Reader, "dr-pull", None).unwrap();
        assert_eq!((issued.info.role, issued.info.user.as_deref()), (Role::Reader, None));
        let p = cat.authenticate(&issued.secret, START).unwrap().unwrap();
        assert_eq!((p.role, p.user, p.label.as_str()), (Role::Reader, None, "dr-pull"));
        assert!(matches!(cat.create_user("t", "r", Role::Reader), Err(CatalogError::Invalid(_))));
        for role in [Role::Admin, Role::Operator, Role::Agent] {
            assert!(matches!(cat.create_peer_token("t", role, "x", None), Err(CatalogError::Invalid(_))), "{role}");
        }
    }

    #[test]
    fn token_lifecycle_create_authenticate_revoke() {
        let (cat, _) = catalog();
        cat.create_user("t", "alice", Role::Operator).unwrap();
        let issued = cat.create_token("t", "alice", "laptop", None).unwrap();
        assert!(issued.secret.starts_with("kura_") && issued.secret.len() == 5 + 64, "{}", issued.secret);
        assert_eq!((issued.info.role, issued.info.user.as_deref()), (Role::Operator, Some("alice")));
        assert!(!format!("{issued:?}").contains(&issued.secret));

        let p = cat.authenticate(&issued.secret, START).unwrap().unwrap();
        assert_eq!(p.token_id, issued.info.id);
        assert_eq!(
            (p.role, p.label.as_str(), p.user.as_deref(), p.job_id),
            (Role::Operator, "laptop", Some("alice"), None)
        );
        assert_eq!(p.actor(), format!("alice (token {}: laptop)", p.token_id));

        // Only the hash is stored.
        let stored: String = cat.read(|c| c.query_row("SELECT hash FROM tokens", [], |r| r.get(0))).unwrap();
        assert_eq!(stored, hash_secret(&issued.secret));
        assert!(!stored.contains(&issued.secret[5..]));

        assert_eq!(cat.token_principal(issued.info.id, START).unwrap().as_ref(), Some(&p));
        assert!(cat.revoke_token("t", issued.info.id).unwrap().revoked);
        assert!(cat.authenticate(&issued.secret, START).unwrap().is_none());
        assert!(cat.token_principal(issued.info.id, START).unwrap().is_none());
        assert!(cat.token_principal(999, START).unwrap().is_none());
        assert!(cat.revoke_token("t", issued.info.id).unwrap().revoked);
        assert!(matches!(cat.revoke_token("t", 999), Err(CatalogError::NotFound { .. })));
        let actions: Vec<String> = cat.list_audit(10).unwrap().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["token.revoke", "token.create", "user.create"]);
    }

    #[test]
    fn last_used_is_written_at_most_once_a_minute() {
        let (cat, _) = catalog();
        cat.create_user("t", "alice", Role::Operator).unwrap();
        let issued = cat.create_token("t", "alice", "laptop", None).unwrap();
        let last_used = |cat: &Catalog| cat.list_tokens().unwrap()[0].last_used;
        assert_eq!(last_used(&cat), None);
        cat.authenticate(&issued.secret, START + 10).unwrap().unwrap();
        assert_eq!(last_used(&cat), Some(START + 10));
        cat.authenticate(&issued.secret, START + 10 + LAST_USED_RESOLUTION - 1).unwrap().unwrap();
        assert_eq!(last_used(&cat), Some(START + 10), "rewritten within the resolution");
        cat.token_principal(issued.info.id, START + 10 + LAST_USED_RESOLUTION).unwrap().unwrap();
        assert_eq!(last_used(&cat), Some(START + 10 + LAST_USED_RESOLUTION), "a session's use counts");
        // A refused token is not "used".
        cat.revoke_token("t", issued.info.id).unwrap();
        assert!(cat.authenticate(&issued.secret, START + 1000).unwrap().is_none());
        assert_eq!(last_used(&cat), Some(START + 10 + LAST_USED_RESOLUTION));
    }

    #[test]
    fn rotating_the_bootstrap_token_revokes_the_old_one() {
        let (cat, _) = catalog();
        let first = cat.bootstrap_admin("admin").unwrap().unwrap();
        cat.create_user("t", "op", Role::Operator).unwrap();
        let other = cat.create_token("t", "admin", "laptop", None).unwrap();
        let second = cat.rotate_bootstrap_token("local", "admin").unwrap();
        assert!(cat.authenticate(&first.secret, START).unwrap().is_none(), "the old bootstrap token still works");
        let p = cat.authenticate(&second.secret, START).unwrap().unwrap();
        assert_eq!((p.role, p.label.as_str(), p.user.as_deref()), (Role::Admin, BOOTSTRAP_LABEL, Some("admin")));
        assert!(cat.authenticate(&other.secret, START).unwrap().is_some(), "another admin token was revoked");
        // The admin user was deleted meanwhile: rotation makes it again (local access rules).
        cat.create_user("t", "root", Role::Admin).unwrap();
        cat.delete_user("t", "admin").unwrap();
        let third = cat.rotate_bootstrap_token("local", "admin").unwrap();
        assert_eq!(cat.authenticate(&third.secret, START).unwrap().unwrap().role, Role::Admin);
        assert!(matches!(cat.rotate_bootstrap_token("local", "op"), Err(CatalogError::Conflict { .. })));
        let actions: Vec<String> = cat.list_audit(3).unwrap().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["token.rotate", "token.create", "user.create"]);
    }

    #[test]
    fn unknown_and_malformed_secrets_are_refused() {
        let (cat, _) = catalog();
        cat.create_user("t", "alice", Role::Admin).unwrap();
        let issued = cat.create_token("t", "alice", "x", None).unwrap();
        let mut other = issued.secret.clone();
        other.replace_range(10..11, if &other[10..11] == "0" { "1" } else { "0" });
        for bad in ["", "kura_", "kura_xyz", &issued.secret[5..], &other, &issued.secret.to_uppercase()] {
            assert!(cat.authenticate(bad, START).unwrap().is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let (cat, _) = catalog();
        cat.create_user("t", "alice", Role::Admin).unwrap();
        let issued = cat.create_token("t", "alice", "ci", Some(START + 60)).unwrap();
        assert!(cat.authenticate(&issued.secret, START + 59).unwrap().is_some());
        assert!(cat.authenticate(&issued.secret, START + 60).unwrap().is_none());
        assert!(matches!(cat.create_token("t", "alice", "old", Some(START)), Err(CatalogError::Invalid(_))));
    }

    #[test]
    fn users_and_roles() {
        let (cat, _) = catalog();
        assert!(matches!(cat.create_user("t", "bot", Role::Agent), Err(CatalogError::Invalid(_))));
        cat.create_user("t", "root", Role::Admin).unwrap();
        assert!(matches!(cat.create_user("t", "root", Role::Operator), Err(CatalogError::Conflict { .. })));
        cat.create_user("t", "op", Role::Operator).unwrap();
        assert_eq!(cat.list_users().unwrap().iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["op", "root"]);
        assert!(matches!(cat.delete_user("t", "root"), Err(CatalogError::Conflict { .. })));
        let t = cat.create_token("t", "op", "x", None).unwrap();
        cat.delete_user("t", "op").unwrap();
        assert!(cat.authenticate(&t.secret, START).unwrap().is_none());
        assert!(matches!(cat.get_user("op"), Err(CatalogError::NotFound { .. })));
        assert!(matches!(cat.create_token("t", "op", "x", None), Err(CatalogError::NotFound { .. })));

        assert!(Role::Admin.allows(Role::Operator) && Role::Admin.allows(Role::Admin));
        assert!(!Role::Operator.allows(Role::Admin) && !Role::Admin.allows(Role::Agent));
        assert!(!Role::Agent.allows(Role::Operator));
    }

    #[test]
    fn bootstrap_admin_only_once() {
        let (cat, _) = catalog();
        let t = cat.bootstrap_admin("admin").unwrap().unwrap();
        assert_eq!(cat.authenticate(&t.secret, START).unwrap().unwrap().role, Role::Admin);
        assert!(cat.bootstrap_admin("admin2").unwrap().is_none());
        assert_eq!(cat.list_users().unwrap().len(), 1);
        assert_eq!(cat.list_tokens().unwrap().len(), 1);
    }

    #[test]
    fn agent_tokens_are_bound_to_an_active_job_and_a_mac() {
        let (cat, _) = catalog();
        host(&cat, "h");
        host(&cat, "other");
        cat.add_mac("t", "h", "aa:00:00:00:00:01").unwrap();
        cat.add_mac("t", "other", "aa:00:00:00:00:09").unwrap();
        let job = cat
            .create_job("t", &NewJob { kind: JobKind::Capture, host: "h".into(), disk: None, snapshot: None, disks: None })
            .unwrap();
        assert!(matches!(
            cat.create_agent_token("t", job.id, "aa:00:00:00:00:09", None),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            cat.create_agent_token("t", job.id, "aa:00:00:00:00:02", None),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            cat.create_agent_token("t", 999, "aa:00:00:00:00:01", None),
            Err(CatalogError::NotFound { .. })
        ));
        let t = cat.create_agent_token("t", job.id, "AA:00:00:00:00:01", None).unwrap();
        assert_eq!(
            (t.info.role, t.info.job_id, t.info.mac.as_deref()),
            (Role::Agent, Some(job.id), Some("aa:00:00:00:00:01"))
        );

        let p = cat.authenticate(&t.secret, START).unwrap().unwrap();
        assert_eq!(
            (p.role, p.job_id, p.mac.as_deref(), p.user.as_deref()),
            (Role::Agent, Some(job.id), Some("aa:00:00:00:00:01"), None)
        );
        authorize_agent(&p, job.id, "aa-00-00-00-00-01").unwrap();
        assert!(matches!(authorize_agent(&p, job.id, "aa:00:00:00:00:02"), Err(CatalogError::Forbidden(_))));
        assert!(matches!(authorize_agent(&p, job.id + 1, "aa:00:00:00:00:01"), Err(CatalogError::Forbidden(_))));
        assert!(matches!(authorize_agent(&p, job.id, "garbage"), Err(CatalogError::Invalid(_))));

        cat.start_job("t", job.id).unwrap();
        assert!(cat.authenticate(&t.secret, START).unwrap().is_some());
        cat.fail_job("t", job.id, "x").unwrap();
        assert!(cat.authenticate(&t.secret, START).unwrap().is_none(), "token outlived its job");
        let e = cat.create_agent_token("t", job.id, "aa:00:00:00:00:01", None).unwrap_err();
        assert!(e.to_string().contains("it is failed"), "{e}");

        // A user token is not an agent token.
        cat.create_user("t", "root", Role::Admin).unwrap();
        let admin = cat.create_token("t", "root", "x", None).unwrap();
        let p = cat.authenticate(&admin.secret, START).unwrap().unwrap();
        assert!(matches!(authorize_agent(&p, job.id, "aa:00:00:00:00:01"), Err(CatalogError::Forbidden(_))));
    }

    #[test]
    fn cancelling_a_queued_job_ends_its_agent_token() {
        let (cat, _) = catalog();
        host(&cat, "h");
        cat.add_mac("t", "h", "aa:00:00:00:00:01").unwrap();
        let job = cat
            .create_job("t", &NewJob { kind: JobKind::Capture, host: "h".into(), disk: None, snapshot: None, disks: None })
            .unwrap();
        let t = cat.create_agent_token("t", job.id, "aa:00:00:00:00:01", None).unwrap();
        cat.cancel_job("t", job.id).unwrap();
        assert!(cat.authenticate(&t.secret, START).unwrap().is_none());
    }
}
}
