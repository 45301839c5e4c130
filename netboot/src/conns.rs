//! Caps on a listener's concurrent connections, in all and per source address, so that one
//! client (or a slowloris holding connections open) cannot take every slot. The boot HTTP
//! listener ([`crate::http::serve`]) and the engine's API listener use it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The connections a listener holds, by source address.
pub struct ConnLimit {
    max_total: usize,
    max_per_source: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; its place is given back when dropped.
pub struct Slot {
    limit: Arc<ConnLimit>,
    ip: IpAddr,
}

impl ConnLimit {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit { max_total, max_per_source, held: Mutex::new((0, HashMap::new())) })
    }

    /// A slot for a new connection from `ip`, or `None` when the listener or that source is
    /// at its cap (the caller closes the connection).
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_source) = &mut *held;
        let mine = by_source.entry(ip).or_default();
        if *total >= self.max_total || *mine >= self.max_per_source {
            if *mine == 0 {
                by_source.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot { limit: self.clone(), ip })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.limit.held.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_source) = &mut *held;
        *total -= 1;
        if let Some(n) = by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_source_and_in_all_and_slots_come_back() {
        let limit = ConnLimit::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = limit.enter(a).unwrap();
        let _a2 = limit.enter(a).unwrap();
        assert!(limit.enter(a).is_none(), "a third connection from one source");
        let _b1 = limit.enter(b).unwrap();
        assert!(limit.enter(b).is_none(), "a fourth connection in all");
        drop(a1);
        assert_eq!(limit.held(), 2);
        assert!(limit.enter(b).is_some());
    }
}
