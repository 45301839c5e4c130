//! IPv6 router advertisements that say "no router here", for full-DHCP mode.
//!
//! iPXE's `autoboot` configures a NIC with every configurator it has, DHCPv4 and IPv6 router
//! discovery, and waits for all of them before it fetches its script: on a LAN without an IPv6
//! router it sends router solicitations for about 16 seconds (measured under QEMU). In
//! full-DHCP mode Kura owns the backup LAN, so it answers each solicitation with a router
//! advertisement that carries no prefix, no "managed"/"other" flags and a router lifetime of 0
//! (RFC 4861 6.2.3: "not a default router"). iPXE's IPv6 configuration then ends at once, with
//! no address or route beyond its link-local one, and the script is fetched right after
//! DHCPv4.
//!
//! Only on the interface of the boot network, at most one advertisement per [`MIN_INTERVAL`]
//! (a solicitation flood gets a bounded trickle of 16-byte replies: no amplification), and:
//!
//! - in **full-DHCP mode** (Kura owns the backup LAN) to all nodes (`ff02::1`);
//! - in **proxy mode** (the site owns the LAN and may run real routers, whose "managed" flag
//!   a multicast advertisement could override on running hosts) only as a unicast answer to a
//!   machine that is netbooting right now: the solicitation's source MAC (its source
//!   link-layer address option, else the EUI-64 of its link-local source) must have made a PXE
//!   DHCP exchange seen by netboot ([`Sightings`]) within [`SEEN_WINDOW`] seconds. A
//!   netbooting machine is in its firmware, not in an operating system that could be misled.

use crate::policy::MacAddr;
use crate::seen::Sightings;
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// ICMPv6 router solicitation and advertisement (RFC 4861 4.1, 4.2).
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// All-nodes and all-routers link-local multicast groups.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// The shortest time between two advertisements.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// Proxy mode: how recent a machine's PXE DHCP exchange must be for it to get an answer.
pub const SEEN_WINDOW: i64 = 120;

/// Who gets advertisements.
pub enum Audience {
    /// Full-DHCP mode: every solicitation, answered to all nodes.
    Everyone,
    /// Proxy mode: only machines netbooting now, answered by unicast.
    Netbooting(Arc<Sightings>),
}

/// The advertisement: type 134, code 0, checksum (the kernel fills it in on raw ICMPv6
/// sockets), current hop limit 0 (unspecified), flags 0 (no DHCPv6), router lifetime 0,
/// reachable time 0, retransmission timer 0, no options.
pub fn advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra
}

/// The MAC address of a solicitation's sender: its source link-layer address option (type 1,
/// RFC 4861 4.6.1), else the modified EUI-64 interface identifier of its link-local source.
pub fn sender_mac(packet: &[u8], source: Ipv6Addr) -> Option<MacAddr> {
    let mut opts = packet.get(8..)?;
    while opts.len() >= 8 {
        let (kind, len) = (opts[0], usize::from(opts[1]) * 8);
        if len == 0 || len > opts.len() {
            break;
        }
        if kind == 1 && len == 8 {
            return Some(MacAddr(opts[2..8].try_into().ok()?));
        }
        opts = &opts[len..];
    }
    let o = source.octets();
    let link_local = o[0] == 0xfe && o[1] & 0xc0 == 0x80;
    (link_local && o[11] == 0xff && o[12] == 0xfe).then(|| MacAddr([o[8] ^ 2, o[9], o[10], o[13], o[14], o[15]]))
}

/// Whether `packet` (an ICMPv6 message without its IPv6 header) is a router solicitation.
pub fn is_solicitation(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] == ROUTER_SOLICITATION && packet[1] == 0
}

/// The interface index of `interface` (from sysfs).
pub fn ifindex(interface: &str) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))?;
    text.trim().parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("ifindex: {e}")))
}

/// A raw ICMPv6 socket bound to `interface`, in the all-routers group, sending with hop
/// limit 255 (RFC 4861 requires it of neighbour discovery). Needs `CAP_NET_RAW`.
pub fn socket(interface: &str) -> std::io::Result<(Socket, u32)> {
    let index = ifindex(interface)?;
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.join_multicast_v6(&ALL_ROUTERS, index)?;
    s.set_multicast_if_v6(index)?;
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_loop_v6(false)?;
    s.set_nonblocking(true)?;
    Ok((s, index))
}

/// Answers router solicitations on `socket` (from [`socket`]) for `audience` until `shutdown`
/// completes.
///
/// The raw socket is driven through tokio's `UdpSocket`: `recvfrom`/`sendto` on a datagram
/// file descriptor are the same system calls whatever its protocol, and this keeps the crate
/// free of `unsafe` (tokio's `AsyncFd::register` is unsafe).
pub async fn serve(
    socket: Socket,
    index: u32,
    audience: Audience,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(std::os::fd::OwnedFd::from(socket)))?;
    let all_nodes = SocketAddrV6::new(ALL_NODES, 0, 0, index);
    let ra = advertisement();
    let mut last: Option<Instant> = None;
    let mut buf = [0u8; 1500];
    tokio::pin!(shutdown);
    loop {
        let (n, from) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("ra: receive failed: {e}");
                    continue;
                }
            },
        };
        if !is_solicitation(&buf[..n]) || last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
            continue;
        }
        let to = match (&audience, from) {
            (Audience::Everyone, _) => all_nodes,
            (Audience::Netbooting(seen), SocketAddr::V6(src)) if !src.ip().is_unspecified() => {
                let netbooting = sender_mac(&buf[..n], *src.ip())
                    .and_then(|mac| seen.get(mac))
                    .is_some_and(|s| crate::unix_now() - s.at <= SEEN_WINDOW);
                if !netbooting {
                    continue;
                }
                SocketAddrV6::new(*src.ip(), 0, 0, index)
            }
            _ => continue,
        };
        last = Some(Instant::now());
        if let Err(e) = socket.send_to(&ra, to).await {
            tracing::debug!("ra: sending the advertisement to {to}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netboot_ra_answers_only_solicitations_with_a_no_router_advertisement() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(is_solicitation(&[133, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 1, 2, 3]));
        assert!(!is_solicitation(&[133, 0, 0, 0]), "too short");
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]), "an advertisement");
        assert!(!is_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]), "code must be 0");
        let ra = advertisement();
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5], 0, "no managed/other flags");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert!(ra.len() <= 2 * 8, "no larger than twice the smallest solicitation");
    }

    #[test]
    fn netboot_ra_finds_the_sender_mac_from_its_option_or_its_link_local_address() {
        let ll: Ipv6Addr = "fe80::5054:ff:fe4b:603".parse().unwrap();
        let mac = MacAddr([0x52, 0x54, 0, 0x4b, 0x06, 0x03]);
        assert_eq!(sender_mac(&[133, 0, 0, 0, 0, 0, 0, 0], ll), Some(mac));
        let with_option = [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 9];
        assert_eq!(sender_mac(&with_option, Ipv6Addr::UNSPECIFIED), Some(MacAddr([2, 0, 0, 0, 0, 9])));
        assert_eq!(sender_mac(&[133, 0, 0, 0, 0, 0, 0, 0], "fe80::1".parse().unwrap()), None);
        assert_eq!(sender_mac(&[133, 0, 0, 0, 0, 0, 0, 0], "2001:db8::5054:ff:fe4b:603".parse().unwrap()), None);
        // A zero-length option ends the walk instead of looping.
        assert_eq!(sender_mac(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], ll), Some(mac));
    }
}
