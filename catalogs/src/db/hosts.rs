//! Hosts (the machines Kura backs up), their MAC addresses and disks, and the retention rules
//! that apply to a host or a host group.
//!
//! A host has a unique name, an optional group, free-form notes, any number of MAC addresses
//! (each belonging to exactly one host, stored as `aa:bb:cc:dd:ee:ff`) and any number of disks
//! (unique by name within the host). A host with snapshots or an active job cannot be deleted.

use super::audit;
use super::error::{is_unique_violation, CatalogError, Result};
use super::sql::{Connection, OptionalExtension};
use super::{Catalog, UnixTime};
use crate::retention::Rule;
use kura_protocol::SecureBoot;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub id: i64,
    pub name: String,
    pub group: Option<String>,
    pub notes: String,
    pub created: UnixTime,
    /// Normalised MAC addresses, sorted.
    pub macs: Vec<String>,
    /// Disks, sorted by name.
    pub disks: Vec<Disk>,
    /// The boot chain of its UEFI netboots; `None` follows the netboot configuration.
    pub secure_boot: Option<SecureBoot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    pub id: i64,
    pub name: String,
    pub serial: Option<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewHost {
    pub name: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub notes: String,
}

/// Changes to a host; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HostPatch {
    pub name: Option<String>,
    /// `Some(None)` removes the host from its group.
    pub group: Option<Option<String>>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NewDisk {
    pub name: String,
    #[serde(default)]
    pub serial: Option<String>,
    pub size: u64,
}

/// What a retention rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "scope", content = "name")]
pub enum RetentionScope {
    Host(String),
    Group(String),
}

/// Normalises a MAC address to lowercase `aa:bb:cc:dd:ee:ff`. Accepts `:` or `-` separated
/// pairs, Cisco-style `aabb.ccdd.eeff` and 12 bare hex digits; refuses anything else.
pub fn normalize_mac(mac: &str) -> Result<String> {
    mac.parse::<kura_protocol::MacAddr>().map(|m| m.to_string()).map_err(|e| CatalogError::Invalid(e.to_string()))
}

/// Checks a name (host, disk, group, user): 1 to 255 characters, no control characters, no
/// leading or trailing whitespace.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.trim() != name || name.chars().any(char::is_control) {
        return Err(CatalogError::Invalid(format!(
            "{what} name {name:?} must be 1 to 255 characters without control characters or surrounding spaces"
        )));
    }
    Ok(())
}

fn normalize_group(group: Option<&str>) -> Result<Option<String>> {
    match group {
        None | Some("") => Ok(None),
        Some(g) => {
            validate_name("group", g)?;
            Ok(Some(g.to_string()))
        }
    }
}

/// The id of the host named `name`.
pub(crate) fn host_id(conn: &Connection, name: &str) -> Result<i64> {
    conn.query_row("SELECT id FROM hosts WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| CatalogError::not_found("host", name))
}

/// The id of the disk `disk` of host `host_id`.
pub(crate) fn disk_id(conn: &Connection, host_id: i64, disk: &str) -> Result<i64> {
    conn.query_row("SELECT id FROM disks WHERE host_id = ?1 AND name = ?2", params![host_id, disk], |r| r.get(0))
        .optional()?
        .ok_or_else(|| CatalogError::not_found("disk", disk))
}

fn load_host(conn: &Connection, id: i64) -> Result<Host> {
    let mut host = conn.query_row(
        "SELECT id, name, host_group, notes, created, secure_boot FROM hosts WHERE id = ?1",
        [id],
        |r| {
            let secure_boot: Option<String> = r.get(5)?;
            Ok(Host {
                id: r.get(0)?,
                name: r.get(1)?,
                group: r.get(2)?,
                notes: r.get(3)?,
                created: r.get(4)?,
                macs: Vec::new(),
                disks: Vec::new(),
                // The column's CHECK admits only the three words.
                secure_boot: secure_boot.and_then(|s| s.parse().ok()),
            })
        },
    )?;
    let mut stmt = conn.prepare_cached("SELECT mac FROM host_macs WHERE host_id = ?1 ORDER BY mac")?;
    host.macs = stmt.query_map([id], |r| r.get(0))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached("SELECT id, name, serial, size FROM disks WHERE host_id = ?1 ORDER BY name")?;
    host.disks = stmt
        .query_map([id], |r| Ok(Disk { id: r.get(0)?, name: r.get(1)?, serial: r.get(2)?, size: r.get(3)? }))?
        .collect::<Result<_, _>>()?;
    Ok(host)
}

impl Catalog {
    pub fn create_host(&self, actor: &str, new: &NewHost) -> Result<Host> {
        validate_name("host", &new.name)?;
        let group = normalize_group(new.group.as_deref())?;
        self.write(|tx, now| {
            let id: i64 = tx
                .query_row(
                    "INSERT INTO hosts (name, host_group, notes, created) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                    params![new.name, group, new.notes, now],
                    |r| r.get(0),
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        CatalogError::conflict("host", &new.name, "a host with this name already exists")
                    } else {
                        e
                    }
                })?;
            audit::append(tx, now, actor, "host.create", &new.name, json!({"group": group, "notes": new.notes}))?;
            load_host(tx, id)
        })
    }

    pub fn get_host(&self, name: &str) -> Result<Host> {
        self.read(|conn| load_host(conn, host_id(conn, name)?))
    }

    /// Every host, by name.
    pub fn list_hosts(&self) -> Result<Vec<Host>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT id FROM hosts ORDER BY name")?;
            let ids: Vec<i64> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            ids.into_iter().map(|id| load_host(conn, id)).collect()
        })
    }

    /// The host a MAC address belongs to, if any (the boot policy's question).
    pub fn host_by_mac(&self, mac: &str) -> Result<Option<Host>> {
        let mac = normalize_mac(mac)?;
        self.read(|conn| {
            let id: Option<i64> =
                conn.query_row("SELECT host_id FROM host_macs WHERE mac = ?1", [&mac], |r| r.get(0)).optional()?;
            id.map(|id| load_host(conn, id)).transpose()
        })
    }

    pub fn update_host(&self, actor: &str, name: &str, patch: &HostPatch) -> Result<Host> {
        if let Some(n) = &patch.name {
            validate_name("host", n)?;
        }
        let group = patch.group.as_ref().map(|g| normalize_group(g.as_deref())).transpose()?;
        self.write(|tx, now| {
            let id = host_id(tx, name)?;
            if let Some(new_name) = &patch.name {
                tx.execute("UPDATE hosts SET name = ?1 WHERE id = ?2", params![new_name, id]).map_err(|e| {
                    if is_unique_violation(&e) {
                        CatalogError::conflict("host", new_name, "a host with this name already exists")
                    } else {
                        e
                    }
                })?;
            }
            if let Some(group) = &group {
                tx.execute("UPDATE hosts SET host_group = ?1 WHERE id = ?2", params![group, id])?;
            }
            if let Some(notes) = &patch.notes {
                tx.execute("UPDATE hosts SET notes = ?1 WHERE id = ?2", params![notes, id])?;
            }
            let detail = json!({"name": patch.name, "group": group, "notes": patch.notes});
            audit::append(tx, now, actor, "host.update", name, detail)?;
            load_host(tx, id)
        })
    }

    /// Sets the boot chain of a host's UEFI netboots (`None`: the netboot configuration's
    /// default). Audited.
    pub fn set_secure_boot(&self, actor: &str, name: &str, secure_boot: Option<SecureBoot>) -> Result<Host> {
        let value = secure_boot.map(SecureBoot::as_str);
        self.write(|tx, now| {
            let id = host_id(tx, name)?;
            tx.execute("UPDATE hosts SET secure_boot = ?1 WHERE id = ?2", params![value, id])?;
            audit::append(tx, now, actor, "host.secure_boot", name, json!({ "secure_boot": value }))?;
            load_host(tx, id)
        })
    }

    /// Deletes a host with its MACs, disks, retention rule and finished jobs. Refused while it
    /// has snapshots or a queued or running job.
    pub fn delete_host(&self, actor: &str, name: &str) -> Result<()> {
        self.write(|tx, now| {
            let id = host_id(tx, name)?;
            let snapshots: i64 =
                tx.query_row("SELECT count(*) FROM snapshots WHERE host_id = ?1", [id], |r| r.get(0))?;
            if snapshots > 0 {
                return Err(CatalogError::conflict("host", name, format!("it has {snapshots} snapshot(s)")));
            }
            let active: i64 = tx.query_row(
                "SELECT count(*) FROM jobs WHERE host_id = ?1 AND state IN ('queued', 'running')",
                [id],
                |r| r.get(0),
            )?;
            if active > 0 {
                return Err(CatalogError::conflict("host", name, "it has a queued or running job"));
            }
            tx.execute("DELETE FROM hosts WHERE id = ?1", [id])?;
            audit::append(tx, now, actor, "host.delete", name, json!({}))
        })
    }

    /// Adds a MAC address to a host; returns it normalised. Refused if another host (or this
    /// one) has it.
    pub fn add_mac(&self, actor: &str, host: &str, mac: &str) -> Result<String> {
        let mac = normalize_mac(mac)?;
        self.write(|tx, now| {
            let id = host_id(tx, host)?;
            let owner: Option<String> = tx
                .query_row(
                    "SELECT h.name FROM host_macs m JOIN hosts h ON h.id = m.host_id WHERE m.mac = ?1",
                    [&mac],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(owner) = owner {
                return Err(CatalogError::conflict("MAC address", &mac, format!("it belongs to host {owner:?}")));
            }
            tx.execute("INSERT INTO host_macs (mac, host_id) VALUES (?1, ?2)", params![mac, id])?;
            audit::append(tx, now, actor, "host.add_mac", host, json!({"mac": mac}))?;
            Ok(mac)
        })
    }

    /// Removes MAC address `mac` from `host`; not found when `host` does not have it.
    pub fn remove_mac(&self, actor: &str, host: &str, mac: &str) -> Result<()> {
        let mac = normalize_mac(mac)?;
        self.write(|tx, now| {
            let owner: Option<String> = tx
                .query_row(
                    "SELECT h.name FROM host_macs m JOIN hosts h ON h.id = m.host_id WHERE m.mac = ?1",
                    [&mac],
                    |r| r.get(0),
                )
                .optional()?;
            if owner.as_deref() != Some(host) {
                return Err(CatalogError::not_found("MAC address", format!("{mac} of host {host}")));
            }
            tx.execute("DELETE FROM host_macs WHERE mac = ?1", [&mac])?;
            audit::append(tx, now, actor, "host.remove_mac", host, json!({"mac": mac}))
        })
    }

    /// Adds a disk to a host, or updates the serial and size of the disk of that name.
    pub fn put_disk(&self, actor: &str, host: &str, disk: &NewDisk) -> Result<Disk> {
        validate_name("disk", &disk.name)?;
        self.write(|tx, now| {
            let hid = host_id(tx, host)?;
            tx.execute(
                "INSERT INTO disks (host_id, name, serial, size) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (host_id, name) DO UPDATE SET serial = excluded.serial, size = excluded.size",
                params![hid, disk.name, disk.serial, disk.size],
            )?;
            let id = disk_id(tx, hid, &disk.name)?;
            let detail = json!({"disk": disk.name, "serial": disk.serial, "size": disk.size});
            audit::append(tx, now, actor, "host.put_disk", host, detail)?;
            Ok(Disk { id, name: disk.name.clone(), serial: disk.serial.clone(), size: disk.size })
        })
    }

    /// Removes a disk from a host; its snapshots stay, with no disk.
    pub fn remove_disk(&self, actor: &str, host: &str, disk: &str) -> Result<()> {
        self.write(|tx, now| {
            let id = disk_id(tx, host_id(tx, host)?, disk)?;
            tx.execute("DELETE FROM disks WHERE id = ?1", [id])?;
            audit::append(tx, now, actor, "host.remove_disk", host, json!({"disk": disk}))
        })
    }

    /// Sets the retention rule of a host or a group (refusing a rule that keeps nothing).
    pub fn set_retention(&self, actor: &str, scope: &RetentionScope, rule: Rule) -> Result<()> {
        rule.validate()?;
        self.write(|tx, now| {
            let (host_id, group, target) = match scope {
                RetentionScope::Host(h) => (Some(host_id(tx, h)?), None, format!("host {h}")),
                RetentionScope::Group(g) => {
                    validate_name("group", g)?;
                    (None, Some(g.as_str()), format!("group {g}"))
                }
            };
            tx.execute(
                "DELETE FROM retention_rules WHERE host_id IS NOT DISTINCT FROM ?1 AND host_group IS NOT DISTINCT FROM ?2",
                params![host_id, group],
            )?;
            tx.execute(
                "INSERT INTO retention_rules (host_id, host_group, keep_last, keep_monthly) VALUES (?1, ?2, ?3, ?4)",
                params![host_id, group, rule.keep_last, rule.keep_monthly],
            )?;
            let detail = json!({"keep_last": rule.keep_last, "keep_monthly": rule.keep_monthly});
            audit::append(tx, now, actor, "retention.set", &target, detail)
        })
    }

    /// Removes the retention rule of a host or a group, if it has one.
    pub fn clear_retention(&self, actor: &str, scope: &RetentionScope) -> Result<()> {
        self.write(|tx, now| {
            let (n, target) = match scope {
                RetentionScope::Host(h) => (
                    tx.execute("DELETE FROM retention_rules WHERE host_id = ?1", [host_id(tx, h)?])?,
                    format!("host {h}"),
                ),
                RetentionScope::Group(g) => {
                    (tx.execute("DELETE FROM retention_rules WHERE host_group = ?1", [g])?, format!("group {g}"))
                }
            };
            if n == 0 {
                return Err(CatalogError::not_found("retention rule", target));
            }
            audit::append(tx, now, actor, "retention.clear", &target, json!({}))
        })
    }

    /// The rule that applies to a host: its own, else its group's, else none.
    pub fn retention_for_host(&self, host: &str) -> Result<Option<Rule>> {
        self.read(|conn| {
            let id = host_id(conn, host)?;
            conn.query_row(
                "SELECT r.keep_last, r.keep_monthly FROM retention_rules r, hosts h WHERE h.id = ?1 \
                     AND (r.host_id = h.id OR r.host_group = h.host_group) \
                     ORDER BY r.host_id IS NULL LIMIT 1",
                [id],
                |r| Ok(Rule { keep_last: r.get(0)?, keep_monthly: r.get(1)? }),
            )
            .optional()
        })
    }
}

#[cfg(test)]
for_each_backend! {
mod tests {
    use super::*;

    fn new_host(name: &str, group: Option<&str>) -> NewHost {
        NewHost { name: name.into(), group: group.map(Into::into), notes: String::new() }
    }

    #[test]
    fn mac_addresses_are_normalised_or_refused() {
        for ok in ["AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "aabb.ccdd.eeff", "AABBCCDDEEFF", " aa:bb:cc:dd:ee:ff "] {
            assert_eq!(normalize_mac(ok).unwrap(), "aa:bb:cc:dd:ee:ff", "{ok}");
        }
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "a:bb:cc:dd:ee:fff",
            "aa:bb-cc:dd:ee:ff",
            "aabbccddeef",
            "aabb.ccdd.eef",
            "+a:bb:cc:dd:ee:ff",
        ] {
            assert!(matches!(normalize_mac(bad), Err(CatalogError::Invalid(_))), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_names_are_unique() {
        let (cat, _) = catalog();
        let h = cat.create_host("t", &new_host("web1", Some("web"))).unwrap();
        assert_eq!((h.name.as_str(), h.group.as_deref()), ("web1", Some("web")));
        let e = cat.create_host("t", &new_host("web1", None)).unwrap_err();
        assert!(matches!(e, CatalogError::Conflict { what: "host", .. }), "{e}");
        cat.create_host("t", &new_host("web2", None)).unwrap();
        let e = cat.update_host("t", "web2", &HostPatch { name: Some("web1".into()), ..Default::default() });
        assert!(matches!(e, Err(CatalogError::Conflict { .. })));
        assert!(matches!(cat.create_host("t", &new_host(" x", None)), Err(CatalogError::Invalid(_))));
        assert!(matches!(cat.create_host("t", &new_host("", None)), Err(CatalogError::Invalid(_))));
        let names: Vec<String> = cat.list_hosts().unwrap().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["web1", "web2"]);
    }

    #[test]
    fn host_secure_boot_is_set_cleared_and_audited() {
        let (cat, _) = catalog();
        assert_eq!(cat.create_host("t", &new_host("sb", None)).unwrap().secure_boot, None);
        assert_eq!(cat.set_secure_boot("t", "sb", Some(SecureBoot::Auto)).unwrap().secure_boot, Some(SecureBoot::Auto));
        assert_eq!(cat.get_host("sb").unwrap().secure_boot, Some(SecureBoot::Auto));
        assert_eq!(cat.set_secure_boot("t", "sb", None).unwrap().secure_boot, None);
        assert!(matches!(cat.set_secure_boot("t", "nope", Some(SecureBoot::On)), Err(CatalogError::NotFound { .. })));
        let audit = cat.list_audit(10).unwrap();
        assert_eq!(audit.iter().filter(|a| a.action == "host.secure_boot").count(), 2);
    }

    #[test]
    fn a_mac_belongs_to_one_host() {
        let (cat, _) = catalog();
        cat.create_host("t", &new_host("a", None)).unwrap();
        cat.create_host("t", &new_host("b", None)).unwrap();
        assert_eq!(cat.add_mac("t", "a", "AA:00:00:00:00:01").unwrap(), "aa:00:00:00:00:01");
        cat.add_mac("t", "a", "aa:00:00:00:00:02").unwrap();
        let e = cat.add_mac("t", "b", "aa-00-00-00-00-01").unwrap_err();
        assert!(e.to_string().contains("belongs to host \"a\""), "{e}");
        assert!(matches!(cat.add_mac("t", "a", "aa:00:00:00:00:01"), Err(CatalogError::Conflict { .. })));
        assert!(matches!(cat.add_mac("t", "nope", "aa:00:00:00:00:03"), Err(CatalogError::NotFound { .. })));

        assert_eq!(cat.get_host("a").unwrap().macs, ["aa:00:00:00:00:01", "aa:00:00:00:00:02"]);
        assert_eq!(cat.host_by_mac("AA:00:00:00:00:02").unwrap().unwrap().name, "a");
        assert!(cat.host_by_mac("aa:00:00:00:00:09").unwrap().is_none());

        assert!(matches!(cat.remove_mac("t", "b", "aa:00:00:00:00:01"), Err(CatalogError::NotFound { .. })));
        cat.remove_mac("t", "a", "aa:00:00:00:00:01").unwrap();
        assert!(matches!(cat.remove_mac("t", "a", "aa:00:00:00:00:01"), Err(CatalogError::NotFound { .. })));
        cat.add_mac("t", "b", "aa:00:00:00:00:01").unwrap();
        assert_eq!(cat.host_by_mac("aa:00:00:00:00:01").unwrap().unwrap().name, "b");
    }

    #[test]
    fn disks_are_added_updated_and_removed() {
        let (cat, _) = catalog();
        cat.create_host("t", &new_host("a", None)).unwrap();
        let d =
            cat.put_disk("t", "a", &NewDisk { name: "sda".into(), serial: Some("S1".into()), size: 1 << 40 }).unwrap();
        let d2 =
            cat.put_disk("t", "a", &NewDisk { name: "sda".into(), serial: Some("S2".into()), size: 2 << 40 }).unwrap();
        assert_eq!(d.id, d2.id);
        cat.put_disk("t", "a", &NewDisk { name: "nvme0n1".into(), serial: None, size: 512 }).unwrap();
        let host = cat.get_host("a").unwrap();
        assert_eq!(host.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["nvme0n1", "sda"]);
        assert_eq!((host.disks[1].serial.as_deref(), host.disks[1].size), (Some("S2"), 2 << 40));
        cat.remove_disk("t", "a", "sda").unwrap();
        assert!(matches!(cat.remove_disk("t", "a", "sda"), Err(CatalogError::NotFound { what: "disk", .. })));
        assert_eq!(cat.get_host("a").unwrap().disks.len(), 1);
    }

    #[test]
    fn update_and_delete_host() {
        let (cat, _) = catalog();
        cat.create_host("t", &new_host("a", Some("g"))).unwrap();
        cat.add_mac("t", "a", "aa:00:00:00:00:01").unwrap();
        let patch = HostPatch { name: Some("b".into()), group: Some(None), notes: Some("rack 4".into()) };
        let h = cat.update_host("t", "a", &patch).unwrap();
        assert_eq!((h.name.as_str(), h.group, h.notes.as_str()), ("b", None, "rack 4"));
        assert!(matches!(cat.get_host("a"), Err(CatalogError::NotFound { .. })));
        cat.delete_host("t", "b").unwrap();
        assert!(cat.host_by_mac("aa:00:00:00:00:01").unwrap().is_none());
        assert!(matches!(cat.delete_host("t", "b"), Err(CatalogError::NotFound { .. })));
    }

    #[test]
    fn retention_rule_of_host_wins_over_group() {
        let (cat, _) = catalog();
        cat.create_host("t", &new_host("a", Some("g"))).unwrap();
        cat.create_host("t", &new_host("b", None)).unwrap();
        assert_eq!(cat.retention_for_host("a").unwrap(), None);
        let group_rule = Rule { keep_last: 3, keep_monthly: 6 };
        cat.set_retention("t", &RetentionScope::Group("g".into()), group_rule).unwrap();
        assert_eq!(cat.retention_for_host("a").unwrap(), Some(group_rule));
        assert_eq!(cat.retention_for_host("b").unwrap(), None);
        let host_rule = Rule { keep_last: 1, keep_monthly: 0 };
        cat.set_retention("t", &RetentionScope::Host("a".into()), host_rule).unwrap();
        assert_eq!(cat.retention_for_host("a").unwrap(), Some(host_rule));
        // Setting again replaces.
        let host_rule = Rule { keep_last: 2, keep_monthly: 0 };
        cat.set_retention("t", &RetentionScope::Host("a".into()), host_rule).unwrap();
        assert_eq!(cat.retention_for_host("a").unwrap(), Some(host_rule));
        cat.clear_retention("t", &RetentionScope::Host("a".into())).unwrap();
        assert_eq!(cat.retention_for_host("a").unwrap(), Some(group_rule));
        assert!(matches!(
            cat.clear_retention("t", &RetentionScope::Host("a".into())),
            Err(CatalogError::NotFound { .. })
        ));
        let e = cat.set_retention("t", &RetentionScope::Group("g".into()), Rule { keep_last: 0, keep_monthly: 0 });
        assert!(matches!(e, Err(CatalogError::Retention(_))));
    }
}
}
