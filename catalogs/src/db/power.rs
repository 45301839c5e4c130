//! Per-host power control: how Kura gets a machine into netboot when a job is queued for it.
//!
//! This module owns the `host_power` rows: the driver (`none`, `wol`, `redfish`, `ipmi`), the
//! BMC's address and user, the sealed password ([`crate::secrets::Sealed`]; the catalog never
//! sees the plaintext) and the driver's options. What to do with them is decided elsewhere
//! (the server's `power` module); this is only the record, validated and audited. Audit rows
//! say what changed and whether the password changed, never the password.

use super::audit;
use super::error::{CatalogError, Result};
use super::hosts::host_id;
use super::sql::{Connection, OptionalExtension};
use super::{Catalog, UnixTime};
use crate::secrets::Sealed;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::json;

text_enum! {
    /// How a host is powered on into netboot.
    pub enum PowerDriver {
        /// Nothing: the job waits for the machine's next PXE boot.
        None => "none",
        /// Wake-on-LAN magic packet to the host's MAC addresses.
        Wol => "wol",
        /// Redfish BMC: one-time PXE boot override, then a reset.
        Redfish => "redfish",
        /// IPMI BMC (lanplus): boot device PXE, then a power cycle.
        Ipmi => "ipmi",
    }
}

/// A host's power settings, without the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerSettings {
    pub driver: PowerDriver,
    /// Redfish: base URL (`https://bmc.example`); IPMI: `HOST` or `HOST:PORT`.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Redfish: the ComputerSystem id (default: the BMC's only system).
    #[serde(default)]
    pub system_id: Option<String>,
    /// Redfish over HTTPS: accept any certificate.
    #[serde(default)]
    pub insecure: bool,
    /// Redfish over HTTPS: accept exactly the certificate with this SHA-256 fingerprint.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// Wake-on-LAN: IPv4 broadcast address (default 255.255.255.255).
    #[serde(default)]
    pub broadcast: Option<String>,
    /// Wake-on-LAN: interface to send from (SO_BINDTODEVICE).
    #[serde(default)]
    pub interface: Option<String>,
    /// IPMI: the RMCP+ cipher suite (`ipmitool -C`); absent: negotiated with the BMC.
    #[serde(default)]
    pub cipher_suite: Option<u8>,
}

/// A host's stored power control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerControl {
    pub host: String,
    pub settings: PowerSettings,
    /// The sealed BMC password, if one is set.
    pub password: Option<Sealed>,
    pub updated: UnixTime,
}

/// What may be shown of a host's power control: everything but the password, which is only
/// `"set"` or absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerView {
    pub host: String,
    #[serde(flatten)]
    pub settings: PowerSettings,
    pub password: Option<&'static str>,
    pub updated: UnixTime,
}

impl PowerControl {
    pub fn view(&self) -> PowerView {
        PowerView {
            host: self.host.clone(),
            settings: self.settings.clone(),
            password: self.password.as_ref().map(|_| "set"),
            updated: self.updated,
        }
    }
}

/// The password change that goes with new settings.
#[derive(Debug, Clone)]
pub enum PasswordChange {
    /// Keep the stored one (if the new driver uses a password).
    Keep,
    Set(Sealed),
}

fn invalid(msg: impl Into<String>) -> CatalogError {
    CatalogError::Invalid(msg.into())
}

fn check_text(what: &str, v: &Option<String>) -> Result<()> {
    if let Some(s) = v {
        if s.is_empty() || s.len() > 512 || s.trim() != s || s.chars().any(char::is_control) {
            return Err(invalid(format!("power {what} {s:?} must be 1 to 512 characters without spaces around")));
        }
    }
    Ok(())
}

/// Checks that `s` has what its driver needs and nothing another driver uses.
pub fn validate(s: &PowerSettings, has_password: bool) -> Result<()> {
    for (what, v) in [
        ("address", &s.address),
        ("username", &s.username),
        ("system id", &s.system_id),
        ("TLS fingerprint", &s.tls_fingerprint),
        ("broadcast address", &s.broadcast),
        ("interface", &s.interface),
    ] {
        check_text(what, v)?;
    }
    let d = s.driver;
    let refuse = |field: &str, set: bool| -> Result<()> {
        if set {
            Err(invalid(format!("{field} does not apply to the {d} power driver")))
        } else {
            Ok(())
        }
    };
    match d {
        PowerDriver::None | PowerDriver::Wol => {
            refuse("an address", s.address.is_some())?;
            refuse("a username", s.username.is_some())?;
            refuse("a password", has_password)?;
            refuse("a system id", s.system_id.is_some())?;
            refuse("insecure TLS", s.insecure)?;
            refuse("a TLS fingerprint", s.tls_fingerprint.is_some())?;
            refuse("a cipher suite", s.cipher_suite.is_some())?;
            if d == PowerDriver::None {
                refuse("a broadcast address", s.broadcast.is_some())?;
                refuse("an interface", s.interface.is_some())?;
            }
            if let Some(b) = &s.broadcast {
                b.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| invalid(format!("broadcast address {b:?} is not an IPv4 address")))?;
            }
            if let Some(i) = &s.interface {
                if i.len() > 15 || i.contains('/') {
                    return Err(invalid(format!("{i:?} is not a network interface name")));
                }
            }
        }
        PowerDriver::Redfish | PowerDriver::Ipmi => {
            refuse("a broadcast address", s.broadcast.is_some())?;
            refuse("an interface", s.interface.is_some())?;
            let Some(addr) = &s.address else {
                return Err(invalid(format!("the {d} power driver needs the BMC's address")));
            };
            if s.username.is_none() || !has_password {
                return Err(invalid(format!("the {d} power driver needs a username and a password")));
            }
            if d == PowerDriver::Redfish {
                refuse("a cipher suite", s.cipher_suite.is_some())?;
                if !(addr.starts_with("https://") || addr.starts_with("http://")) {
                    return Err(invalid(format!("Redfish address {addr:?} must be an https:// (or http://) URL")));
                }
                if s.insecure && s.tls_fingerprint.is_some() {
                    return Err(invalid("give either insecure TLS or a pinned TLS fingerprint, not both"));
                }
            } else {
                refuse("a system id", s.system_id.is_some())?;
                refuse("insecure TLS", s.insecure)?;
                refuse("a TLS fingerprint", s.tls_fingerprint.is_some())?;
                if s.cipher_suite.is_some_and(|c| c > 17) {
                    return Err(invalid("an IPMI cipher suite is 0 to 17"));
                }
                if addr.contains("://") || addr.contains(char::is_whitespace) || addr.starts_with('-') {
                    return Err(invalid(format!("IPMI address {addr:?} must be HOST or HOST:PORT")));
                }
            }
        }
    }
    Ok(())
}

fn load(conn: &Connection, host: &str) -> Result<Option<PowerControl>> {
    let id = host_id(conn, host)?;
    conn.query_row(
        "SELECT driver, address, username, password_sealed, system_id, insecure, tls_fingerprint, \
             broadcast, interface, updated, cipher_suite FROM host_power WHERE host_id = ?1",
        [id],
        |r| {
            Ok(PowerControl {
                host: host.to_string(),
                settings: PowerSettings {
                    driver: r.get(0)?,
                    address: r.get(1)?,
                    username: r.get(2)?,
                    system_id: r.get(4)?,
                    insecure: r.get(5)?,
                    tls_fingerprint: r.get(6)?,
                    broadcast: r.get(7)?,
                    interface: r.get(8)?,
                    cipher_suite: r.get(10)?,
                },
                password: r.get::<_, Option<Vec<u8>>>(3)?.map(Sealed::from_stored),
                updated: r.get(9)?,
            })
        },
    )
    .optional()
}

impl Catalog {
    /// Sets a host's power control. With [`PasswordChange::Keep`] the stored password stays
    /// (a driver without passwords drops it).
    pub fn set_power(
        &self,
        actor: &str,
        host: &str,
        settings: &PowerSettings,
        password: PasswordChange,
    ) -> Result<PowerControl> {
        self.write(|tx, now| {
            let id = host_id(tx, host)?;
            let uses_password = matches!(settings.driver, PowerDriver::Redfish | PowerDriver::Ipmi);
            let old = load(tx, host)?.and_then(|p| p.password);
            let (sealed, changed) = match password {
                PasswordChange::Set(s) => (Some(s), true),
                PasswordChange::Keep if uses_password => (old, false),
                PasswordChange::Keep => (None, old.is_some()),
            };
            validate(settings, sealed.is_some())?;
            let s = settings;
            tx.execute(
                "INSERT INTO host_power (host_id, driver, address, username, password_sealed, \
                 system_id, insecure, tls_fingerprint, broadcast, interface, updated, cipher_suite) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (host_id) DO UPDATE SET driver = excluded.driver, address = excluded.address, \
                 username = excluded.username, password_sealed = excluded.password_sealed, \
                 system_id = excluded.system_id, insecure = excluded.insecure, \
                 tls_fingerprint = excluded.tls_fingerprint, broadcast = excluded.broadcast, \
                 interface = excluded.interface, updated = excluded.updated, cipher_suite = excluded.cipher_suite",
                params![
                    id,
                    s.driver,
                    s.address,
                    s.username,
                    sealed.as_ref().map(Sealed::as_bytes),
                    s.system_id,
                    s.insecure,
                    s.tls_fingerprint,
                    s.broadcast,
                    s.interface,
                    now,
                    s.cipher_suite
                ],
            )?;
            let mut detail = serde_json::to_value(s).map_err(|e| invalid(e.to_string()))?;
            detail["password_changed"] = json!(changed);
            audit::append(tx, now, actor, "power.set", host, detail)?;
            Ok(load(tx, host)?.expect("just written"))
        })
    }

    /// Removes a host's power control (it is then as driver `none`).
    pub fn clear_power(&self, actor: &str, host: &str) -> Result<()> {
        self.write(|tx, now| {
            let id = host_id(tx, host)?;
            if tx.execute("DELETE FROM host_power WHERE host_id = ?1", [id])? == 0 {
                return Err(CatalogError::not_found("power control of host", host));
            }
            audit::append(tx, now, actor, "power.clear", host, json!({}))
        })
    }

    /// A host's power control, if set.
    pub fn get_power(&self, host: &str) -> Result<Option<PowerControl>> {
        self.read(|conn| load(conn, host))
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::super::*;
    use super::*;
    use crate::secrets::SecretKey;

    fn redfish() -> PowerSettings {
        PowerSettings {
            driver: PowerDriver::Redfish,
            address: Some("https://bmc1.lan".into()),
            username: Some("root".into()),
            system_id: None,
            insecure: true,
            tls_fingerprint: None,
            broadcast: None,
            interface: None,
            cipher_suite: None,
        }
    }

    fn wol() -> PowerSettings {
        PowerSettings {
            driver: PowerDriver::Wol,
            address: None,
            username: None,
            system_id: None,
            insecure: false,
            tls_fingerprint: None,
            broadcast: Some("10.0.0.255".into()),
            interface: Some("br0".into()),
            cipher_suite: None,
        }
    }

    #[test]
    fn set_show_clear_and_audit_without_the_password() {
        let (cat, _) = catalog();
        cat.create_host("t", &NewHost { name: "h".into(), ..Default::default() }).unwrap();
        let key = SecretKey::generate().unwrap();
        assert!(cat.get_power("h").unwrap().is_none());
        let e = cat.set_power("t", "h", &redfish(), PasswordChange::Keep).unwrap_err();
        assert!(e.to_string().contains("needs a username and a password"), "{e}");
        let sealed = key.seal("power.password", b"pa55word").unwrap();
        let p = cat.set_power("t", "h", &redfish(), PasswordChange::Set(sealed.clone())).unwrap();
        assert_eq!(p.password.as_ref(), Some(&sealed));
        assert_eq!(key.open("power.password", p.password.as_ref().unwrap()).unwrap(), b"pa55word");
        let view = serde_json::to_string(&p.view()).unwrap();
        assert!(view.contains(r#""password":"set""#) && !view.contains("pa55word"), "{view}");
        // New settings, same password.
        let mut other = redfish();
        other.system_id = Some("1".into());
        let p = cat.set_power("t", "h", &other, PasswordChange::Keep).unwrap();
        assert_eq!((p.password.as_ref(), p.settings.system_id.as_deref()), (Some(&sealed), Some("1")));
        // WoL drops the password.
        let p = cat.set_power("t", "h", &wol(), PasswordChange::Keep).unwrap();
        assert!(p.password.is_none());
        cat.clear_power("t", "h").unwrap();
        assert!(cat.get_power("h").unwrap().is_none());
        assert!(matches!(cat.clear_power("t", "h"), Err(CatalogError::NotFound { .. })));
        let audit = cat.list_audit(10).unwrap();
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(actions, ["power.clear", "power.set", "power.set", "power.set", "host.create"]);
        assert_eq!(audit[3].detail["password_changed"], true);
        assert_eq!(audit[2].detail["password_changed"], false);
        assert_eq!(audit[1].detail["password_changed"], true, "dropping the password is a change");
        for a in &audit {
            assert!(!a.detail.to_string().contains("pa55word"));
        }
    }

    #[test]
    fn settings_are_checked_per_driver() {
        let ok = |s: &PowerSettings, pw: bool| validate(s, pw).map_err(|e| e.to_string());
        assert!(ok(&redfish(), true).is_ok());
        assert!(ok(&wol(), false).is_ok());
        assert!(ok(&wol(), true).unwrap_err().contains("password does not apply"));
        let mut s = redfish();
        s.address = Some("bmc1.lan".into());
        assert!(ok(&s, true).unwrap_err().contains("https://"));
        s = redfish();
        s.tls_fingerprint = Some("ab".into());
        assert!(ok(&s, true).unwrap_err().contains("not both"));
        s = PowerSettings {
            driver: PowerDriver::Ipmi,
            insecure: false,
            address: Some("10.0.0.9:623".into()),
            ..redfish()
        };
        assert!(ok(&s, true).is_ok());
        s.cipher_suite = Some(3);
        assert!(ok(&s, true).is_ok());
        s.cipher_suite = Some(18);
        assert!(ok(&s, true).is_err());
        s.cipher_suite = None;
        s.address = Some("-oProxyCommand".into());
        assert!(ok(&s, true).is_err());
        s = wol();
        s.broadcast = Some("10.0.0".into());
        assert!(ok(&s, false).unwrap_err().contains("not an IPv4 address"));
        s = PowerSettings { driver: PowerDriver::None, broadcast: None, interface: None, ..wol() };
        assert!(ok(&s, false).is_ok());
    }
}
}
