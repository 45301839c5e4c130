//! What the DHCP exchanges saw: for each MAC address, the IPv4 address its last DHCP packet
//! showed it using or being given, and when. A fact, not a decision: the script route hands the
//! sighting of the MAC it is asked about to [`crate::BootPolicy::decide`]
//! ([`crate::policy::BootRequest::dhcp`]), and the policy decides whether the requester is the
//! machine that booted.
//!
//! What is recorded, by mode (see [`crate::dhcp`]):
//!
//! - **full DHCP**: the address we ACKed to the MAC ([`SeenHow::Lease`]);
//! - **proxyDHCP**: a PXE client's DHCPREQUEST to the site's server on port 67 names the
//!   address it takes in option 50 (or `ciaddr` when it renews) ([`SeenHow::SiteRequest`]);
//!   its request to us on port 4011 comes unicast from the address it has
//!   ([`SeenHow::ProxyRequest`]: the datagram's source address, else `ciaddr`).
//!
//! Only packets from PXE clients (option 60 `PXEClient`) count in proxy mode. The table holds at
//! most [`MAX_SIGHTINGS`] MACs (the oldest sighting is dropped).

use crate::policy::MacAddr;
use serde::Serialize;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

pub const MAX_SIGHTINGS: usize = 4096;

/// Which packet showed the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeenHow {
    /// Full mode: the address of our ACK.
    Lease,
    /// Proxy mode: option 50 (or `ciaddr`) of a PXE client's DHCPREQUEST to the site's server.
    SiteRequest,
    /// Proxy mode: the source address (or `ciaddr`) of a PXE client's request on port 4011.
    ProxyRequest,
}

/// One MAC's latest DHCP sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sighting {
    pub ip: Ipv4Addr,
    /// Unix seconds.
    pub at: i64,
    pub how: SeenHow,
}

#[derive(Default)]
pub struct Sightings(Mutex<HashMap<MacAddr, Sighting>>);

impl Sightings {
    /// Records that `mac` was seen with `ip` at `at` (an unspecified or broadcast address is
    /// not a sighting).
    pub fn record(&self, mac: MacAddr, ip: Ipv4Addr, at: i64, how: SeenHow) {
        if ip.is_unspecified() || ip.is_broadcast() {
            return;
        }
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !g.contains_key(&mac) && g.len() >= MAX_SIGHTINGS {
            if let Some(oldest) = g.iter().min_by_key(|(_, s)| s.at).map(|(m, _)| *m) {
                g.remove(&oldest);
            }
        }
        g.insert(mac, Sighting { ip, at, how });
    }

    /// The latest sighting of `mac`.
    pub fn get(&self, mac: MacAddr) -> Option<Sighting> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&mac).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netboot_sightings_keep_the_latest_and_are_bounded() {
        let s = Sightings::default();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        s.record(mac, Ipv4Addr::UNSPECIFIED, 5, SeenHow::Lease);
        assert_eq!(s.get(mac), None);
        s.record(mac, Ipv4Addr::new(10, 0, 0, 5), 5, SeenHow::SiteRequest);
        s.record(mac, Ipv4Addr::new(10, 0, 0, 6), 7, SeenHow::ProxyRequest);
        assert_eq!(s.get(mac), Some(Sighting { ip: Ipv4Addr::new(10, 0, 0, 6), at: 7, how: SeenHow::ProxyRequest }));
        for i in 0..(MAX_SIGHTINGS as u32 + 10) {
            let b = i.to_be_bytes();
            s.record(
                MacAddr([4, 0, b[0], b[1], b[2], b[3]]),
                Ipv4Addr::new(10, 1, 0, 1),
                100 + i64::from(i),
                SeenHow::Lease,
            );
        }
        assert!(s.0.lock().unwrap().len() <= MAX_SIGHTINGS);
        assert_eq!(s.get(mac), None, "the oldest sighting went first");
    }
}
