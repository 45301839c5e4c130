//! The boot log: what each machine was offered and what it fetched, kept in memory (bounded)
//! for `kura netboot status`.
//!
//! Events are keyed by MAC address. TFTP and HTTP only see the client's IP address; the log
//! maps an IP to a MAC once it has seen both together (a PXE request on port 4011, a lease in
//! full-DHCP mode, a script fetch that names its MAC) and files the event under that MAC, else
//! under the bare IP. At most [`MAX_MACHINES`] machines are kept (the least recently seen is
//! dropped) and [`MAX_EVENTS`] events per machine (the oldest are dropped). Beside the events,
//! named counters ([`BootLog::count`]) that the boot policy keeps.

use crate::policy::MacAddr;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub const MAX_MACHINES: usize = 256;
pub const MAX_EVENTS: usize = 32;

/// One step of a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// A DHCP offer or ack (proxy or full) with a boot file name.
    Dhcp,
    /// A lease handed out in full-DHCP mode.
    Lease,
    /// A TFTP read request and its outcome.
    Tftp,
    /// The iPXE script.
    Script,
    /// The kernel or initrd over HTTP.
    Kernel,
    Initrd,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix seconds.
    pub time: i64,
    pub stage: Stage,
    pub client: Option<IpAddr>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `None` when only the IP address is known.
    pub mac: Option<MacAddr>,
    pub ip: Option<IpAddr>,
    pub last_seen: i64,
    pub events: VecDeque<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Mac(MacAddr),
    Ip(IpAddr),
}

#[derive(Default)]
struct Inner {
    machines: HashMap<Key, Machine>,
    ip_to_mac: HashMap<IpAddr, MacAddr>,
    counters: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
pub struct BootLog {
    inner: Mutex<Inner>,
}

fn now() -> i64 {
    crate::unix_now()
}

impl BootLog {
    pub fn new() -> Arc<BootLog> {
        Arc::new(BootLog::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `ip` belongs to `mac` (events already filed under the IP move to the MAC).
    pub fn learn(&self, mac: MacAddr, ip: IpAddr) {
        let mut g = self.lock();
        if g.ip_to_mac.get(&ip) == Some(&mac) {
            return;
        }
        if g.ip_to_mac.len() >= MAX_MACHINES * 4 {
            g.ip_to_mac.clear();
        }
        g.ip_to_mac.insert(ip, mac);
        if let Some(old) = g.machines.remove(&Key::Ip(ip)) {
            let m = entry(&mut g, Key::Mac(mac));
            m.ip = Some(ip);
            for e in old.events {
                push(m, e);
            }
        }
    }

    /// Records an event of the machine with `mac`.
    pub fn record_mac(&self, mac: MacAddr, client: Option<IpAddr>, stage: Stage, detail: impl Into<String>) {
        if let Some(ip) = client.filter(|ip| !ip.is_unspecified()) {
            self.learn(mac, ip);
        }
        let mut g = self.lock();
        let m = entry(&mut g, Key::Mac(mac));
        if client.is_some_and(|ip| !ip.is_unspecified()) {
            m.ip = client;
        }
        push(m, Event { time: now(), stage, client, detail: detail.into() });
    }

    /// Records an event of the machine at `ip` (filed under its MAC if known).
    pub fn record_ip(&self, ip: IpAddr, stage: Stage, detail: impl Into<String>) {
        let mut g = self.lock();
        let key = g.ip_to_mac.get(&ip).map_or(Key::Ip(ip), |m| Key::Mac(*m));
        let m = entry(&mut g, key);
        m.ip = Some(ip);
        push(m, Event { time: now(), stage, client: Some(ip), detail: detail.into() });
    }

    /// Adds one to the counter `name` (say, unknown MACs registered or turned away).
    pub fn count(&self, name: &'static str) {
        *self.lock().counters.entry(name).or_default() += 1;
    }

    /// Every counter since the start.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.lock().counters.clone()
    }

    /// Every machine, most recently seen first.
    pub fn machines(&self) -> Vec<Machine> {
        let g = self.lock();
        let mut v: Vec<Machine> = g.machines.values().cloned().collect();
        v.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.mac.cmp(&b.mac)));
        v
    }
}

fn entry(g: &mut Inner, key: Key) -> &mut Machine {
    if !g.machines.contains_key(&key) && g.machines.len() >= MAX_MACHINES {
        if let Some(oldest) = g.machines.iter().min_by_key(|(_, m)| m.last_seen).map(|(k, _)| *k) {
            g.machines.remove(&oldest);
        }
    }
    g.machines.entry(key).or_insert_with(|| Machine {
        mac: match key {
            Key::Mac(m) => Some(m),
            Key::Ip(_) => None,
        },
        ip: match key {
            Key::Ip(ip) => Some(ip),
            Key::Mac(_) => None,
        },
        last_seen: now(),
        events: VecDeque::new(),
    })
}

fn push(m: &mut Machine, e: Event) {
    m.last_seen = m.last_seen.max(e.time);
    if m.events.len() >= MAX_EVENTS {
        m.events.pop_front();
    }
    m.events.push_back(e);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netboot_bootlog_files_ip_events_under_the_mac_and_is_bounded() {
        let log = BootLog::new();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        log.record_ip(ip, Stage::Tftp, "undionly.kpxe");
        log.record_mac(mac, Some(ip), Stage::Dhcp, "offer");
        log.record_ip(ip, Stage::Kernel, "vmlinuz");
        let ms = log.machines();
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].mac, Some(mac));
        assert_eq!(ms[0].events.len(), 3);
        for i in 0..100 {
            log.record_mac(mac, None, Stage::Script, format!("{i}"));
        }
        assert_eq!(log.machines()[0].events.len(), MAX_EVENTS);
        for i in 0..(MAX_MACHINES as u8 + 10) {
            log.record_mac(MacAddr([4, 0, 0, 0, 1, i]), None, Stage::Dhcp, "x");
        }
        assert!(log.machines().len() <= MAX_MACHINES);
        log.count("a");
        log.count("a");
        assert_eq!(log.counters().into_iter().collect::<Vec<_>>(), [("a", 2)]);
    }
}
