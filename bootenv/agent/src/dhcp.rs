//! A DHCPv4 client for one lease: DISCOVER → OFFER → REQUEST → ACK (RFC 2131), with the
//! `dhcproto` crate for the packets and a UDP socket bound to `0.0.0.0:68` on the NIC
//! (`SO_BINDTODEVICE`, `SO_BROADCAST`). The broadcast flag asks servers and relays to broadcast
//! their answers: the NIC has no address yet, so the kernel would drop a unicast reply.
//!
//! The lease is kept for the agent's whole run ([`keep`]): at T1 (half the lease) a REQUEST
//! with `ciaddr` goes unicast to the server that granted it (RENEWING), from T2 (7/8) broadcast
//! to any server (REBINDING), as RFC 2131 §4.4.5 says; each ACK starts the timers again. A
//! lease that runs out anyway is logged loudly; the address stays configured (the job is
//! usually nearly done, and dropping it would certainly fail the job).

use anyhow::{bail, Context, Result};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: Option<u32>,
    pub dns: Vec<Ipv4Addr>,
}

/// An empty BOOTREQUEST from `mac` with transaction `xid` and the broadcast flag.
///
/// Built by decoding a hand-made header rather than with `Message::new_with_id`: that one
/// starts from `Message::default()`, which draws a random xid from `rand`, and at early boot
/// (no entropy source yet, e.g. a VM without RDRAND) that blocks until the kernel's random
/// number generator is ready, possibly for minutes.
fn blank(xid: u32, mac: &[u8; 6]) -> Message {
    let mut b = vec![0u8; 240];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // Ethernet
    b[2] = 6; // hardware address length
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[28..34].copy_from_slice(mac);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]); // magic cookie
    b.push(255); // end of options
    let mut m = Message::decode(&mut Decoder::new(&b)).expect("a well-formed BOOTP header");
    m.set_flags(Flags::default().set_broadcast());
    m
}

fn base(xid: u32, mac: &[u8; 6], kind: MessageType) -> Message {
    let mut m = blank(xid, mac);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
    ]));
    o.insert(DhcpOption::MaxMessageSize(1500));
    let mut cid = vec![1u8];
    cid.extend_from_slice(mac);
    o.insert(DhcpOption::ClientIdentifier(cid));
    m
}

pub fn discover(xid: u32, mac: &[u8; 6]) -> Message {
    base(xid, mac, MessageType::Discover)
}

/// The REQUEST for `offer` (selecting state: requested address and server identifier).
pub fn request(xid: u32, mac: &[u8; 6], offer: &Message) -> Result<Message> {
    let server = server_id(offer).context("the OFFER has no server identifier")?;
    let mut m = base(xid, mac, MessageType::Request);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    Ok(m)
}

/// A REQUEST extending `lease` (RENEWING when `unicast`, else REBINDING): `ciaddr` set, no
/// requested-address or server-identifier option, no broadcast flag (the client has its
/// address, so the answer can come unicast).
pub fn renew(xid: u32, mac: &[u8; 6], lease: &Lease) -> Message {
    let mut m = base(xid, mac, MessageType::Request);
    m.set_flags(Flags::default());
    m.set_ciaddr(lease.addr);
    m
}

/// When to renew (T1) and rebind (T2) a lease of `secs`, per RFC 2131's defaults; `None` for
/// an infinite lease or none stated.
pub fn timers(secs: Option<u32>) -> Option<(Duration, Duration, Duration)> {
    let secs = secs.filter(|s| *s != u32::MAX)?;
    let total = Duration::from_secs(u64::from(secs.max(8)));
    Some((total / 2, total * 7 / 8, total))
}

/// Keeps `lease` on `ifname` alive in a background thread for as long as the agent runs.
pub fn keep(ifname: String, mac: [u8; 6], lease: Lease, log: impl Fn(String) + Send + 'static) {
    if timers(lease.lease_secs).is_none() {
        return;
    }
    std::thread::spawn(move || {
        let mut lease = lease;
        let mut xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]).rotate_left(7);
        let s = match socket(&ifname) {
            Ok(s) => s,
            Err(e) => return log(format!("DHCP: cannot keep the lease on {ifname}: {e:#}")),
        };
        while let Some((t1, t2, end)) = timers(lease.lease_secs) {
            let granted = Instant::now();
            std::thread::sleep(t1);
            let mut renewed = None;
            while renewed.is_none() && granted.elapsed() < end {
                xid = xid.wrapping_add(1);
                let unicast = granted.elapsed() < t2;
                let to = if unicast { lease.server } else { Ipv4Addr::BROADCAST };
                let sent = renew(xid, &mac, &lease)
                    .to_vec()
                    .context("encoding a DHCP message")
                    .and_then(|b| s.send_to(&b, SocketAddrV4::new(to, 67)).context("sending the renewal"));
                match sent.and_then(|_| receive(&s, xid, &mac, MessageType::Ack, Duration::from_secs(4))) {
                    Ok(Some(ack)) => renewed = Some(ack),
                    Ok(None) => std::thread::sleep(Duration::from_secs(if unicast { 10 } else { 4 })),
                    Err(e) => {
                        log(format!("DHCP: renewing {}: {e:#}", lease.addr));
                        std::thread::sleep(Duration::from_secs(10));
                    }
                }
            }
            match renewed.map(|ack| self::lease(&ack)) {
                Some(Ok(l)) if l.addr == lease.addr => {
                    log(format!("DHCP: {} renewed for {} s", l.addr, l.lease_secs.unwrap_or(0)));
                    lease = l;
                }
                Some(Ok(l)) => {
                    return log(format!("DHCP: the server answered the renewal with another address ({})", l.addr))
                }
                Some(Err(e)) => return log(format!("DHCP: unusable renewal answer: {e:#}")),
                None => {
                    return log(format!(
                        "DHCP: the lease of {} ran out without renewal; keeping the address (no server answered)",
                        lease.addr
                    ))
                }
            }
        }
    });
}

fn server_id(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
        _ => None,
    }
}

/// Decodes `bytes` as a reply to our transaction `xid` for `mac`; anything else is `None`.
pub fn parse_reply(bytes: &[u8], xid: u32, mac: &[u8; 6]) -> Option<(MessageType, Message)> {
    let m = Message::decode(&mut Decoder::new(bytes)).ok()?;
    if m.opcode() != Opcode::BootReply || m.xid() != xid || m.chaddr().get(..6) != Some(&mac[..]) {
        return None;
    }
    Some((m.opts().msg_type()?, m))
}

/// The lease an ACK grants.
pub fn lease(ack: &Message) -> Result<Lease> {
    let addr = ack.yiaddr();
    if addr.is_unspecified() {
        bail!("the DHCP ACK assigns no address");
    }
    let prefix = match ack.opts().get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).leading_ones() as u8,
        _ => 24,
    };
    let router = match ack.opts().get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match ack.opts().get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => vec![],
    };
    let lease_secs = match ack.opts().get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
        _ => None,
    };
    Ok(Lease { addr, prefix, router, server: server_id(ack).unwrap_or(ack.siaddr()), lease_secs, dns })
}

/// The DHCP socket: set up with `socket2` (device binding must precede `bind`), then used as a
/// plain `UdpSocket`.
fn socket(ifname: &str) -> Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).context("creating the DHCP socket")?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true).context("SO_BROADCAST")?;
    s.bind_device(Some(ifname.as_bytes())).with_context(|| format!("binding the DHCP socket to {ifname}"))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))).context("binding 0.0.0.0:68")?;
    Ok(s.into())
}

fn send(s: &UdpSocket, m: &Message) -> Result<()> {
    let bytes = m.to_vec().context("encoding a DHCP message")?;
    s.send_to(&bytes, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)).context("sending a DHCP message")?;
    Ok(())
}

/// Waits up to `wait` for a reply of kind `want` (a NAK is an error).
fn receive(s: &UdpSocket, xid: u32, mac: &[u8; 6], want: MessageType, wait: Duration) -> Result<Option<Message>> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving a DHCP reply"),
        };
        match parse_reply(&buf[..n], xid, mac) {
            Some((MessageType::Nak, _)) => bail!("the DHCP server refused the address (NAK)"),
            Some((t, m)) if t == want => return Ok(Some(m)),
            _ => {}
        }
    }
}

/// Obtains a lease on `ifname`: up to `attempts` rounds of DISCOVER/REQUEST with growing waits.
pub fn obtain(ifname: &str, mac: &[u8; 6], xid: u32, attempts: u32, log: &dyn Fn(String)) -> Result<Lease> {
    let s = socket(ifname)?;
    let mut wait = Duration::from_secs(2);
    for attempt in 1..=attempts {
        log(format!("DHCP: DISCOVER on {ifname} (attempt {attempt})"));
        send(&s, &discover(xid, mac))?;
        if let Some(offer) = receive(&s, xid, mac, MessageType::Offer, wait)? {
            log(format!("DHCP: OFFER of {} from {:?}", offer.yiaddr(), server_id(&offer)));
            send(&s, &request(xid, mac, &offer)?)?;
            match receive(&s, xid, mac, MessageType::Ack, wait) {
                Ok(Some(ack)) => return lease(&ack),
                Ok(None) => log("DHCP: no ACK".into()),
                Err(e) => log(format!("DHCP: {e:#}")),
            }
        }
        wait = (wait * 2).min(Duration::from_secs(16));
    }
    bail!("no DHCP lease on {ifname} after {attempts} attempts (is a DHCP server on this network?)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::Encoder;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A server's reply to `req`, as a DHCP server (or QEMU's) would build it.
    fn reply(req: &Message, kind: MessageType, yiaddr: Ipv4Addr) -> Vec<u8> {
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            req.chaddr(),
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]));
        o.insert(DhcpOption::AddressLeaseTime(86400));
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out)).unwrap();
        out
    }

    #[test]
    fn discover_offer_request_ack() {
        let d = discover(0x1234_5678, &MAC);
        let bytes = d.to_vec().unwrap();
        let back = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(back.xid(), 0x1234_5678);
        assert_eq!(back.opcode(), Opcode::BootRequest);
        assert_eq!(back.opts().msg_type(), Some(MessageType::Discover));
        assert!(back.flags().broadcast(), "replies must be broadcast: we have no address yet");
        assert_eq!(&back.chaddr()[..6], &MAC);

        let yi = Ipv4Addr::new(10, 0, 2, 15);
        let offer_bytes = reply(&back, MessageType::Offer, yi);
        assert!(parse_reply(&offer_bytes, 0x1234_5679, &MAC).is_none(), "another transaction");
        assert!(parse_reply(&offer_bytes, 0x1234_5678, &[0; 6]).is_none(), "another machine");
        assert!(parse_reply(&bytes, 0x1234_5678, &MAC).is_none(), "our own request is no reply");
        let (t, offer) = parse_reply(&offer_bytes, 0x1234_5678, &MAC).unwrap();
        assert_eq!(t, MessageType::Offer);

        let r = request(0x1234_5678, &MAC, &offer).unwrap();
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(r.opts().get(OptionCode::RequestedIpAddress), Some(&DhcpOption::RequestedIpAddress(yi)));
        assert_eq!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)))
        );

        let ack_bytes = reply(&r, MessageType::Ack, yi);
        let (t, ack) = parse_reply(&ack_bytes, 0x1234_5678, &MAC).unwrap();
        assert_eq!(t, MessageType::Ack);
        assert_eq!(
            lease(&ack).unwrap(),
            Lease {
                addr: yi,
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                server: Ipv4Addr::new(10, 0, 2, 2),
                lease_secs: Some(86400),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            }
        );
    }

    #[test]
    fn renewal_requests_and_timers() {
        let lease = Lease {
            addr: Ipv4Addr::new(10, 0, 0, 9),
            prefix: 24,
            router: None,
            server: Ipv4Addr::new(10, 0, 0, 1),
            lease_secs: Some(3600),
            dns: vec![],
        };
        let m = renew(7, &MAC, &lease);
        assert_eq!(m.ciaddr(), lease.addr);
        assert!(!m.flags().broadcast(), "a renewal needs no broadcast answer");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Request));
        assert!(m.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert!(m.opts().get(OptionCode::ServerIdentifier).is_none());
        let (t1, t2, end) = timers(Some(3600)).unwrap();
        assert_eq!((t1.as_secs(), t2.as_secs(), end.as_secs()), (1800, 3150, 3600));
        assert!(timers(None).is_none());
        assert!(timers(Some(u32::MAX)).is_none(), "infinite");
    }

    #[test]
    fn garbage_is_no_reply() {
        assert!(parse_reply(&[0u8; 10], 1, &MAC).is_none());
        assert!(parse_reply(&[0xffu8; 600], 1, &MAC).is_none());
    }
}
