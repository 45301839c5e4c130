//! The address pool and its leases, for full-DHCP mode (an isolated backup LAN with no other
//! DHCP server).
//!
//! Leases live in memory and are saved as a small JSON file (`{"version":1,"leases":[{"mac",
//! "ip","expires"}]}`) after every change, written to a temporary file, fsynced and renamed
//! over the old one, so a crash leaves either the old or the new table. On start the file is
//! loaded and expired leases are dropped. Offers are held (not saved) for [`OFFER_HOLD`]
//! seconds so two clients are not offered the same address. A declined address is kept out of
//! the pool for one lease time. An expired lease's address goes back to the pool, but its last
//! owner gets it again if it is still free.

use crate::policy::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Seconds an offered address stays reserved for the client it was offered to.
pub const OFFER_HOLD: i64 = 60;
/// The largest pool accepted (the allocator scans it).
pub const MAX_POOL: u32 = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Unix seconds.
    pub expires: i64,
}

#[derive(Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
}

#[derive(Debug)]
pub struct LeaseTable {
    start: u32,
    end: u32,
    /// Never handed out (the server's own address).
    reserved: Vec<Ipv4Addr>,
    leases: HashMap<MacAddr, Lease>,
    offers: HashMap<MacAddr, (Ipv4Addr, i64)>,
    declined: HashMap<Ipv4Addr, i64>,
    path: Option<PathBuf>,
    dirty: bool,
}

impl LeaseTable {
    /// A pool `start..=end`; `path` is where leases are kept (`None`: memory only).
    pub fn new(start: Ipv4Addr, end: Ipv4Addr, reserved: Vec<Ipv4Addr>, path: Option<PathBuf>) -> Result<Self, String> {
        let (s, e) = (u32::from(start), u32::from(end));
        if s > e || e - s >= MAX_POOL {
            return Err(format!("bad address pool {start}..{end} (at most {MAX_POOL} addresses, start <= end)"));
        }
        Ok(LeaseTable {
            start: s,
            end: e,
            reserved,
            leases: HashMap::new(),
            offers: HashMap::new(),
            declined: HashMap::new(),
            path,
            dirty: false,
        })
    }

    /// Loads saved leases (a missing file is an empty table), dropping expired ones and any
    /// outside the pool.
    pub fn load(mut self, now: i64) -> std::io::Result<Self> {
        let Some(path) = &self.path else { return Ok(self) };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(e) => return Err(e),
        };
        let file: LeaseFile = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
        for l in file.leases {
            if l.expires > now && self.in_pool(l.ip) {
                self.leases.insert(l.mac, l);
            }
        }
        Ok(self)
    }

    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= self.start && n <= self.end && !self.reserved.contains(&ip)
    }

    /// Whether `ip` is free for `mac` at `now` (no other client holds or was offered it).
    fn free_for(&self, ip: Ipv4Addr, mac: MacAddr, now: i64) -> bool {
        self.in_pool(ip)
            && self.declined.get(&ip).is_none_or(|&until| until <= now)
            && !self.leases.values().any(|l| l.ip == ip && l.mac != mac && l.expires > now)
            && !self.offers.iter().any(|(m, (o, until))| *o == ip && *m != mac && *until > now)
    }

    /// Picks an address for `mac` and holds it: its lease's, else the requested one if free,
    /// else the lowest free one. `None` when the pool is exhausted.
    pub fn offer(&mut self, mac: MacAddr, requested: Option<Ipv4Addr>, now: i64) -> Option<Ipv4Addr> {
        self.offers.retain(|_, (_, until)| *until > now);
        let previous = self.leases.get(&mac).map(|l| l.ip);
        let ip = previous
            .filter(|ip| self.free_for(*ip, mac, now))
            .or_else(|| requested.filter(|ip| self.free_for(*ip, mac, now)))
            .or_else(|| (self.start..=self.end).map(Ipv4Addr::from).find(|ip| self.free_for(*ip, mac, now)))?;
        self.offers.insert(mac, (ip, now + OFFER_HOLD));
        Some(ip)
    }

    /// Grants `ip` to `mac` for `secs` if it is free for it; `false` means NAK.
    pub fn grant(&mut self, mac: MacAddr, ip: Ipv4Addr, secs: u32, now: i64) -> bool {
        if !self.free_for(ip, mac, now) {
            return false;
        }
        self.offers.remove(&mac);
        self.leases.insert(mac, Lease { mac, ip, expires: now + i64::from(secs) });
        self.dirty = true;
        true
    }

    /// The client chose another server: forget our offer.
    pub fn forget_offer(&mut self, mac: MacAddr) {
        self.offers.remove(&mac);
    }

    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        if self.leases.get(&mac).is_some_and(|l| l.ip == ip) {
            self.leases.remove(&mac);
            self.dirty = true;
        }
    }

    /// The client found `ip` in use: keep it out of the pool for `secs`.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, secs: u32, now: i64) {
        if self.in_pool(ip) {
            self.declined.insert(ip, now + i64::from(secs));
        }
        self.release(mac, ip);
        self.offers.remove(&mac);
    }

    /// Current leases.
    #[cfg(test)]
    pub fn leases(&self, now: i64) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.leases.values().filter(|l| l.expires > now).cloned().collect();
        v.sort_by_key(|l| u32::from(l.ip));
        v
    }

    /// The table's file contents if it changed since the last call (then it is clean again).
    pub fn take_changes(&mut self) -> Option<(PathBuf, Vec<u8>)> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let path = self.path.clone()?;
        let mut leases: Vec<Lease> = self.leases.values().cloned().collect();
        leases.sort_by_key(|l| u32::from(l.ip));
        let bytes = serde_json::to_vec_pretty(&LeaseFile { version: 1, leases }).ok()?;
        Some((path, bytes))
    }
}

/// Replaces `path` with `bytes` atomically (temporary file, fsync, rename, directory fsync).
pub fn save(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    {
        // Private (0600) like every file in the data directory; O_EXCL never follows a
        // planted symlink.
        let create = || {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)
        };
        let mut f = create().or_else(|_| {
            std::fs::remove_file(&tmp)?;
            create()
        })?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
