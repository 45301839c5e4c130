//! Bringing up the NIC: find it by MAC in `/sys/class/net`, set it up, wait for the link, get a
//! lease ([`crate::dhcp`]) and configure the address and default route over rtnetlink (the
//! `rtnetlink` crate on a single-threaded tokio runtime; no `ip` binary in the image).

use crate::dhcp::{self, Lease};
use anyhow::{Context, Result};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

/// The interface with MAC `mac` (lowercase, colon-separated) under `class_net`
/// (`/sys/class/net`).
pub fn find_interface(class_net: &Path, mac: &str) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(class_net)
        .ok()?
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("address"))
                .map(|a| a.trim().eq_ignore_ascii_case(mac))
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names.into_iter().next()
}

fn ifindex(name: &str) -> Result<u32> {
    let p = format!("/sys/class/net/{name}/ifindex");
    std::fs::read_to_string(&p)
        .with_context(|| format!("reading {p}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {p}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the netlink runtime")
}

/// Sets `lo` and `name` up.
pub fn link_up(name: &str) -> Result<()> {
    let idx = ifindex(name)?;
    runtime()?.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        for i in [1, idx] {
            handle
                .link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .with_context(|| format!("setting interface {i} up"))?;
        }
        Ok(())
    })
}

/// Waits until `name` reports carrier (a cable and a link partner), up to `wait`.
pub fn wait_carrier(name: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let p = format!("/sys/class/net/{name}/carrier");
    loop {
        if std::fs::read_to_string(&p).map(|s| s.trim() == "1").unwrap_or(false) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Configures the lease's address on `name` and, with a router, the default route.
pub fn configure(name: &str, lease: &Lease) -> Result<()> {
    let idx = ifindex(name)?;
    runtime()?.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        handle
            .address()
            .add(idx, IpAddr::V4(lease.addr), lease.prefix)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding {}/{} to {name}", lease.addr, lease.prefix))?;
        if let Some(gw) = lease.router {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(gw)
                .output_interface(idx)
                .scope(RouteScope::Universe)
                .build();
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .with_context(|| format!("adding the default route via {gw}"))?;
        }
        Ok(())
    })
}

/// Up, carrier, DHCP, configure. Returns the interface name and its lease.
pub fn bring_up(name: &str, mac: &[u8; 6], log: &dyn Fn(String)) -> Result<Lease> {
    link_up(name)?;
    if !wait_carrier(name, Duration::from_secs(30)) {
        log(format!("{name}: no carrier after 30 s; trying DHCP anyway"));
    }
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let lease = dhcp::obtain(name, mac, xid, 8, log)?;
    configure(name, &lease)?;
    Ok(lease)
}

/// Renews `lease` in the background for the rest of the run, logging through `log`.
pub fn keep_lease(name: &str, mac: &[u8; 6], lease: &Lease, log: impl Fn(String) + Send + 'static) {
    dhcp::keep(name.to_string(), *mac, lease.clone(), log);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nic_by_mac() {
        let d = tempfile::tempdir().unwrap();
        for (n, a) in [("lo", "00:00:00:00:00:00"), ("ens3", "52:54:00:12:34:56"), ("ens4", "52:54:00:12:34:57")] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("address"), format!("{a}\n")).unwrap();
        }
        assert_eq!(find_interface(d.path(), "52:54:00:12:34:56").as_deref(), Some("ens3"));
        assert_eq!(find_interface(d.path(), "52:54:00:12:34:58"), None);
    }
}
