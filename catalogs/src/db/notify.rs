//! Notification targets: where the engine sends job failures and schedule run summaries (the
//! delivery itself is the server's, `server/src/notify.rs`).
//!
//! A target is a webhook (JSON POST to a URL) or an e-mail relay (SMTP, optional STARTTLS).
//! Its settings are one JSON column, [`NotifyConfig`], tagged by `kind`. Adding and removing
//! targets is audited like every other change.

use super::error::{CatalogError, Result};
use super::sql::{Connection, OptionalExtension, Row};
use super::{audit, Catalog, UnixTime};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A target's settings, stored as JSON with its `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NotifyConfig {
    /// `POST url` with a JSON body (`docs/operations.md`, "Notifications").
    Webhook { url: String },
    /// Mail through an SMTP relay at `smtp` (`HOST:PORT`), from `from` to every address in
    /// `to`; with `starttls` the relay must offer STARTTLS and the session is encrypted.
    Email {
        smtp: String,
        from: String,
        to: Vec<String>,
        #[serde(default)]
        starttls: bool,
    },
}

impl NotifyConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            NotifyConfig::Webhook { .. } => "webhook",
            NotifyConfig::Email { .. } => "email",
        }
    }

    /// Checks the settings are usable (a URL with a scheme and host, a relay `HOST:PORT`,
    /// plausible addresses with no line breaks).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(CatalogError::Invalid(m));
        let clean = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_control() || c == ' ');
        match self {
            NotifyConfig::Webhook { url } => {
                let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
                match rest {
                    Some(r) if clean(url) && !r.is_empty() && !r.starts_with('/') => Ok(()),
                    _ => bad(format!("{url:?} is not an http:// or https:// URL")),
                }
            }
            NotifyConfig::Email { smtp, from, to, .. } => {
                let port = smtp.rsplit_once(':').and_then(|(h, p)| (!h.is_empty()).then_some(p));
                if !clean(smtp) || port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                    return bad(format!("{smtp:?} is not an SMTP relay HOST:PORT"));
                }
                let address = |a: &str| {
                    clean(a)
                        && !a.contains(['<', '>'])
                        && a.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
                };
                if !address(from) {
                    return bad(format!("{from:?} is not an e-mail address"));
                }
                if to.is_empty() {
                    return bad("an e-mail target needs at least one recipient".into());
                }
                match to.iter().find(|a| !address(a)) {
                    Some(a) => bad(format!("{a:?} is not an e-mail address")),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A configured target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotifyTarget {
    pub id: i64,
    pub created: UnixTime,
    #[serde(flatten)]
    pub config: NotifyConfig,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<NotifyTarget> {
    let config: String = r.get(1)?;
    let config = serde_json::from_str(&config)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into()))?;
    Ok(NotifyTarget { id: r.get(0)?, config, created: r.get(2)? })
}

fn load(conn: &Connection, id: i64) -> Result<NotifyTarget> {
    conn.query_row("SELECT id, config, created FROM notify_targets WHERE id = ?1", [id], from_row)
        .optional()?
        .ok_or_else(|| CatalogError::not_found("notification target", id))
}

impl Catalog {
    /// Adds a notification target (validated).
    pub fn add_notify_target(&self, actor: &str, config: &NotifyConfig) -> Result<NotifyTarget> {
        config.validate()?;
        let text = serde_json::to_string(config).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        self.write(|tx, now| {
            let id: i64 = tx.query_row(
                "INSERT INTO notify_targets (kind, config, created) VALUES (?1, ?2, ?3) RETURNING id",
                params![config.kind(), text, now],
                |r| r.get(0),
            )?;
            audit::append(tx, now, actor, "notify.add", &format!("notify {id}"), json!({ "kind": config.kind() }))?;
            load(tx, id)
        })
    }

    /// Every notification target, oldest first.
    pub fn list_notify_targets(&self) -> Result<Vec<NotifyTarget>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT id, config, created FROM notify_targets ORDER BY id")?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Removes a notification target.
    pub fn remove_notify_target(&self, actor: &str, id: i64) -> Result<()> {
        self.write(|tx, now| {
            let t = load(tx, id)?;
            tx.execute("DELETE FROM notify_targets WHERE id = ?1", [id])?;
            audit::append(tx, now, actor, "notify.remove", &format!("notify {id}"), json!({ "kind": t.config.kind() }))
        })
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::testing::START;
    use super::*;

    fn email(smtp: &str, from: &str, to: &[&str]) -> NotifyConfig {
        NotifyConfig::Email {
            smtp: smtp.into(),
            from: from.into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            starttls: false,
        }
    }

    #[test]
    fn add_list_remove_with_audit() {
        let (cat, _) = catalog();
        let hook = NotifyConfig::Webhook { url: "https://chat.example/hook?x=1".into() };
        let a = cat.add_notify_target("t", &hook).unwrap();
        let b = cat.add_notify_target("t", &email("relay:25", "kura@example", &["ops@example"])).unwrap();
        assert_eq!((a.config.clone(), a.created), (hook, START));
        assert_eq!(cat.list_notify_targets().unwrap(), [a.clone(), b.clone()]);
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["smtp"].as_str(), v["id"].as_i64()),
            (Some("email"), Some("relay:25"), Some(b.id))
        );
        cat.remove_notify_target("t", a.id).unwrap();
        assert!(matches!(cat.remove_notify_target("t", a.id), Err(CatalogError::NotFound { .. })));
        assert_eq!(cat.list_notify_targets().unwrap(), [b]);
        let actions: Vec<String> = cat.list_audit(10).unwrap().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["notify.remove", "notify.add", "notify.add"]);
    }

    #[test]
    fn refuses_unusable_settings() {
        let (cat, _) = catalog();
        let bad = [
            NotifyConfig::Webhook { url: "ftp://x".into() },
            NotifyConfig::Webhook { url: "http://".into() },
            NotifyConfig::Webhook { url: "http://a b".into() },
            email("relay", "a@b", &["c@d"]),
            email("relay:99999", "a@b", &["c@d"]),
            email("relay:25", "nobody", &["c@d"]),
            email("relay:25", "a@b", &[]),
            email("relay:25", "a@b", &["c@d\r\nRCPT TO:<x@y>"]),
            email("relay:25", "a@b>", &["c@d"]),
        ];
        for c in bad {
            assert!(matches!(cat.add_notify_target("t", &c), Err(CatalogError::Invalid(_))), "{c:?}");
        }
        assert!(cat.list_notify_targets().unwrap().is_empty());
    }
}
}
