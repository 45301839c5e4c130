//! DHCP for netbooting: proxyDHCP (the default) or a full DHCP server for an isolated backup
//! LAN. IPv4 only; DHCPv6/PXE over IPv6 is not offered.
//!
//! # What is answered
//!
//! **Proxy mode** (another DHCP server hands out addresses): only PXE clients (option 60
//! starting with `PXEClient`) are answered, and never with an address (`yiaddr` 0):
//!
//! - DHCPDISCOVER on port 67 → a ProxyDHCP OFFER, broadcast: option 60 `PXEClient`, option 54
//!   and `siaddr` = our address, option 97 (the client's GUID) echoed, and the boot file:
//!   - a PXE ROM gets the iPXE build the [`BootPolicy`] names for its architecture (option 93):
//!     BIOS `undionly.kpxe`, UEFI `ipxe.efi`/`snponly.efi`. BIOS ROMs also get option 43 with
//!     PXE_DISCOVERY_CONTROL (sub-option 6) = 8 ("use the boot file name, skip boot server
//!     discovery") so they do not wait for a menu. UEFI ROMs get no option 43: many UEFI
//!     firmwares ignore a ProxyDHCP offer that tries to bypass discovery, but all of them then
//!     ask on port 4011 (as pixiecore found), which we answer;
//!   - iPXE (user class option 77 `iPXE`) gets the HTTP URL of its boot script as the file name;
//!   - a UEFI PXE ROM on the signed path ([`BootSpec::Signed`], Secure Boot) gets shim's TFTP
//!     name; iPXE then gets its script only where the host's setting allows it (`auto`);
//!   - a PXE ROM the policy sends to its local disk ([`BootSpec::LocalDisk`]: UEFI machines
//!     without a job) gets no file but the PXE "local boot" menu ([`local_boot_menu`]): the
//!     firmware gives up network boot right after DHCP and tries its next boot entry, without
//!     loading iPXE (whose `exit` back to UEFI firmware is slow or hangs, issue 17); iPXE
//!     itself (a NIC's iPXE ROM) is not answered, finds nothing to boot and returns at once.
//! - DHCPREQUEST (or INFORM) on port 4011 from a PXE client → an ACK with the same boot file,
//!   unicast back to the sender. iPXE also asks here after a ProxyDHCP offer.
//!
//! **Full mode** (we are the only DHCP server): every client gets an address from the pool
//! (DISCOVER → OFFER, REQUEST → ACK or NAK, RELEASE, DECLINE, INFORM → ACK; see
//! [`crate::leases`]), with subnet mask, router, DNS and lease times. PXE clients also get
//! `siaddr` and the boot file in the same offer, without option 60/43 (a plain "DHCP with boot
//! file" answer every ROM follows, and iPXE does not then look for a ProxyDHCP server), or
//! option 60 and the local-boot menu for [`BootSpec::LocalDisk`]. iPXE
//! clients additionally get option 175.176 (`no-pxedhcp`) = 1 so they do not wait for
//! ProxyDHCP offers that will never come; in proxy mode it would not help (iPXE reads it only
//! from the offer that carries an address, which the other server sends).
//!
//! # Hostile packets
//!
//! [`decode`] checks the size and the fixed header first, then walks the options itself and
//! keeps only the ones Kura reads, with their lengths checked, before handing a clean packet
//! to `dhcproto`. (`dhcproto` 0.15 has `debug_assert!`s and subtractions on option lengths —
//! options 80, 81, 94, 151-155 — that panic in debug builds on hostile lengths.) Anything that
//! fails is dropped with a debug log; nothing here panics.
//!
//! [`Dhcp::handle`] is pure (bytes in, optional reply out, with the time as an argument); the
//! socket loop [`serve`] only moves datagrams and saves the lease table.

use crate::bootlog::{BootLog, Stage};
use crate::leases::{self, LeaseTable};
use crate::policy::{BootPolicy, BootSpec, ClientArch, MacAddr};
use crate::seen::{SeenHow, Sightings};
use dhcproto::v4::{
    Decodable, DhcpOption, Encodable, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use tokio::net::UdpSocket;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PXE_PORT: u16 = 4011;

/// Smallest and largest datagrams considered (BOOTP header + magic; an Ethernet frame).
pub const MIN_LEN: usize = 240;
pub const MAX_LEN: usize = 1500;
/// Replies are padded to the BOOTP minimum; some PXE ROMs drop shorter ones.
pub const MIN_REPLY: usize = 300;

const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Options Kura reads from requests, with the lengths accepted (min, max).
const KEPT: &[(u8, usize, usize)] = &[
    (50, 4, 4),    // requested IP
    (53, 1, 1),    // message type
    (54, 4, 4),    // server identifier
    (55, 1, 255),  // parameter request list
    (57, 2, 2),    // max message size
    (60, 1, 255),  // vendor class
    (61, 1, 255),  // client identifier
    (77, 1, 255),  // user class
    (93, 2, 255),  // client architectures (the first is used)
    (94, 3, 3),    // client network interface
    (97, 1, 255),  // client machine GUID
    (175, 1, 255), // iPXE encapsulated options
];

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    #[error("bad size {0}")]
    Size(usize),
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("not Ethernet (htype {0}, hlen {1})")]
    NotEthernet(u8, u8),
    #[error("bad magic cookie")]
    Magic,
    #[error("options run past the end")]
    Truncated,
    #[error("dhcproto: {0}")]
    Decode(String),
}

/// Sanitises and decodes a request (see the module docs).
pub fn decode(b: &[u8]) -> Result<Message, Drop> {
    if b.len() < MIN_LEN || b.len() > MAX_LEN {
        return Err(Drop::Size(b.len()));
    }
    if b[0] != 1 {
        return Err(Drop::NotRequest);
    }
    if b[1] != 1 || b[2] != 6 {
        return Err(Drop::NotEthernet(b[1], b[2]));
    }
    if b[236..240] != MAGIC {
        return Err(Drop::Magic);
    }
    let mut kept: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut i = 240;
    while i < b.len() {
        let code = b[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let len = *b.get(i + 1).ok_or(Drop::Truncated)? as usize;
        let data = b.get(i + 2..i + 2 + len).ok_or(Drop::Truncated)?;
        i += 2 + len;
        // Repeated options are concatenated (RFC 3396).
        match kept.iter_mut().find(|(c, _)| *c == code) {
            Some((_, d)) => d.extend_from_slice(data),
            None => kept.push((code, data.to_vec())),
        }
    }
    let mut clean = b[..240].to_vec();
    for (code, mut data) in kept {
        let Some(&(_, min, max)) = KEPT.iter().find(|(c, _, _)| *c == code) else { continue };
        if code == 93 && data.len() >= 2 {
            data.truncate(2);
        }
        if data.len() < min || data.len() > max {
            continue;
        }
        clean.push(code);
        clean.push(data.len() as u8);
        clean.extend_from_slice(&data);
    }
    clean.push(255);
    Message::from_bytes(&clean).map_err(|e| Drop::Decode(e.to_string()))
}

/// What a request says about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub mac: MacAddr,
    pub msg_type: MessageType,
    /// Option 60 starts with `PXEClient`.
    pub pxe: bool,
    /// User class `iPXE`.
    pub ipxe: bool,
    pub arch: ClientArch,
    pub guid: Option<Vec<u8>>,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
}

fn bytes_opt(m: &Message, code: OptionCode) -> Option<&[u8]> {
    match m.opts().get(code)? {
        DhcpOption::ClassIdentifier(b) | DhcpOption::UserClass(b) | DhcpOption::ClientMachineIdentifier(b) => Some(b),
        _ => None,
    }
}

pub fn client(m: &Message) -> Option<Client> {
    let mac = MacAddr(m.chaddr().get(..6)?.try_into().ok()?);
    let msg_type = m.opts().msg_type()?;
    let vendor = bytes_opt(m, OptionCode::ClassIdentifier).unwrap_or_default();
    let pxe = vendor.starts_with(b"PXEClient");
    let ipxe = bytes_opt(m, OptionCode::UserClass).is_some_and(|u| u.windows(4).any(|w| w == b"iPXE"));
    let arch = match m.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => ClientArch::from_option93(a.0),
        // "PXEClient:Arch:00007:UNDI:003016"
        _ => std::str::from_utf8(vendor)
            .ok()
            .and_then(|v| v.strip_prefix("PXEClient:Arch:"))
            .and_then(|v| v.get(..5))
            .and_then(|v| v.parse().ok())
            .map_or(ClientArch::BiosX86, ClientArch::from_option93),
    };
    let guid = bytes_opt(m, OptionCode::ClientMachineIdentifier).map(<[u8]>::to_vec);
    let requested_ip = match m.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    Some(Client { mac, msg_type, pxe, ipxe, arch, guid, requested_ip, server_id })
}

/// What a PXE or iPXE client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Download and run this file (an iPXE build over TFTP, or the script URL for iPXE).
    File(String),
    /// Boot locally: the PXE local-boot menu of [`local_boot_menu`], no file.
    LocalBoot,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::File(file) => f.write_str(file),
            Answer::LocalBoot => f.write_str("local boot (PXE menu)"),
        }
    }
}

/// The text of the one PXE menu item (shown by firmware that displays menus).
pub const LOCAL_BOOT_ITEM: &str = "Kura: no job, boot from local disk";

/// The menu prompt (not shown: its timeout is 0).
const LOCAL_BOOT_PROMPT: &str = "Kura";

/// Option 43 (PXE vendor options, PXE 2.1 table 2-1) that makes a PXE ROM boot locally at
/// once: PXE_DISCOVERY_CONTROL (6) = 3 (no broadcast or multicast discovery), PXE_BOOT_MENU
/// (9) with one item of boot server type 0 ("local boot"), PXE_MENU_PROMPT (10) with
/// timeout 0 (take the first item without showing a prompt). EDK2's PXE driver (OVMF, and
/// the UEFI of most servers) then returns EFI_ABORTED ("PXE-E21: Remote boot cancelled")
/// right after DHCP and the boot manager tries the next `Boot####` entry; BIOS PXE ROMs
/// return to the BIOS (INT 18h). dnsmasq's `pxe-service=…,"text"` without a file name sends
/// the same.
pub fn local_boot_menu() -> Vec<u8> {
    let item = LOCAL_BOOT_ITEM.as_bytes();
    let mut o = vec![6, 1, 3];
    o.extend_from_slice(&[9, (3 + item.len()) as u8, 0, 0, item.len() as u8]);
    o.extend_from_slice(item);
    o.extend_from_slice(&[10, 1 + LOCAL_BOOT_PROMPT.len() as u8, 0]);
    o.extend_from_slice(LOCAL_BOOT_PROMPT.as_bytes());
    o.push(255);
    o
}

/// Full-DHCP settings.
#[derive(Debug, Clone)]
pub struct FullSettings {
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: u32,
}

/// The port a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Dhcp,
    Pxe,
}

/// A reply and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub to: SocketAddrV4,
    pub bytes: Vec<u8>,
    pub message: Message,
    /// For the boot log.
    pub mac: MacAddr,
    pub note: String,
}

/// The DHCP decision maker. Pure apart from the lease table it owns and the sightings it
/// records.
pub struct Dhcp {
    pub server_ip: Ipv4Addr,
    pub policy: Arc<dyn BootPolicy>,
    /// `Some`: full mode.
    pub full: Option<(FullSettings, LeaseTable)>,
    /// Which address each MAC was seen with ([`crate::seen`] says which packets count).
    pub seen: Arc<Sightings>,
}

impl Dhcp {
    /// Handles one datagram that arrived on `port` from `src` at `now` (unix seconds).
    pub fn handle(&mut self, port: Port, src: SocketAddr, bytes: &[u8], now: i64) -> Option<Reply> {
        let msg = match decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("dhcp: dropping a datagram from {src}: {e}");
                return None;
            }
        };
        let c = client(&msg)?;
        let reply = match (port, self.full.is_some()) {
            (Port::Pxe, _) => self.pxe_ack(&msg, &c, src),
            (Port::Dhcp, false) => self.proxy_offer(&msg, &c),
            (Port::Dhcp, true) => self.full(&msg, &c, now),
        };
        self.record_sighting(port, src, &msg, &c, reply.as_ref(), now);
        reply
    }

    /// Records the address this exchange shows the client using (see [`crate::seen`]).
    fn record_sighting(&self, port: Port, src: SocketAddr, req: &Message, c: &Client, reply: Option<&Reply>, now: i64) {
        let seen = |ip: Ipv4Addr, how| self.seen.record(c.mac, ip, now, how);
        if self.full.is_some() {
            if let Some(r) = reply.filter(|r| r.message.opts().msg_type() == Some(MessageType::Ack)) {
                seen(r.message.yiaddr(), SeenHow::Lease);
            }
            return;
        }
        if !c.pxe {
            return;
        }
        let ciaddr = (!req.ciaddr().is_unspecified()).then_some(req.ciaddr());
        match (port, c.msg_type) {
            (Port::Pxe, MessageType::Request | MessageType::Inform) => {
                let from = match src {
                    SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
                    _ => ciaddr,
                };
                if let Some(ip) = from {
                    seen(ip, SeenHow::ProxyRequest);
                }
            }
            (Port::Dhcp, MessageType::Request) => {
                if let Some(ip) = c.requested_ip.or(ciaddr) {
                    seen(ip, SeenHow::SiteRequest);
                }
            }
            _ => {}
        }
    }

    /// What to tell a client, `None` when it is not to be answered.
    fn answer(&self, c: &Client) -> Option<Answer> {
        match self.policy.boot_spec(c.mac, c.arch) {
            BootSpec::Ignore => None,
            BootSpec::Boot { script_url, .. } if c.ipxe => Some(Answer::File(script_url)),
            BootSpec::Boot { firmware, .. } => firmware.map(Answer::File),
            // iPXE (the NIC's own ROM) gets nothing to boot, and gives up at once.
            BootSpec::LocalDisk { .. } if c.ipxe => None,
            BootSpec::LocalDisk { .. } => Some(Answer::LocalBoot),
            BootSpec::Signed { script_url, .. } if c.ipxe => script_url.map(Answer::File),
            BootSpec::Signed { shim, .. } => Some(Answer::File(shim)),
        }
    }

    /// Adds the answer: the boot file, or the PXE local-boot menu (and no file).
    fn add_answer(&self, m: &mut Message, c: &Client, answer: &Answer) {
        match answer {
            Answer::File(file) => self.add_boot(m, file),
            Answer::LocalBoot => {
                m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
                if let Some(g) = &c.guid {
                    m.opts_mut().insert(DhcpOption::ClientMachineIdentifier(g.clone()));
                }
                m.opts_mut().insert(DhcpOption::VendorExtensions(local_boot_menu()));
            }
        }
    }

    fn base_reply(&self, req: &Message, c: &Client, t: MessageType) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_xid(req.xid())
            .set_flags(req.flags())
            .set_giaddr(req.giaddr())
            .set_chaddr(&c.mac.0);
        m.opts_mut().insert(DhcpOption::MessageType(t));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(self.server_ip));
        m
    }

    /// Adds `siaddr`, `sname`, the boot file (header field when it fits, and option 67).
    fn add_boot(&self, m: &mut Message, file: &str) {
        m.set_siaddr(self.server_ip);
        m.set_sname_str(self.server_ip.to_string());
        if file.len() < 128 {
            m.set_fname_str(file);
        }
        m.opts_mut().insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }

    fn add_pxe_vendor(&self, m: &mut Message, c: &Client) {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        if let Some(g) = &c.guid {
            m.opts_mut().insert(DhcpOption::ClientMachineIdentifier(g.clone()));
        }
        if !c.arch.is_efi() || c.ipxe {
            // PXE_DISCOVERY_CONTROL = 8: boot the file named here, no discovery.
            m.opts_mut().insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        }
    }

    fn proxy_offer(&self, req: &Message, c: &Client) -> Option<Reply> {
        if !c.pxe || c.msg_type != MessageType::Discover {
            return None;
        }
        let answer = self.answer(c)?;
        let mut m = self.base_reply(req, c, MessageType::Offer);
        m.set_flags(Flags::default().set_broadcast());
        if matches!(answer, Answer::File(_)) {
            self.add_pxe_vendor(&mut m, c);
        }
        self.add_answer(&mut m, c, &answer);
        let to = self.destination(req, &m, false);
        Some(self.finish(m, to, c, format!("proxy offer ({}{}): {answer}", c.arch, if c.ipxe { ", iPXE" } else { "" })))
    }

    fn pxe_ack(&self, req: &Message, c: &Client, src: SocketAddr) -> Option<Reply> {
        if !c.pxe || !matches!(c.msg_type, MessageType::Request | MessageType::Inform) {
            return None;
        }
        let SocketAddr::V4(src) = src else { return None };
        let answer = self.answer(c)?;
        let mut m = self.base_reply(req, c, MessageType::Ack);
        m.set_ciaddr(req.ciaddr());
        if matches!(answer, Answer::File(_)) {
            self.add_pxe_vendor(&mut m, c);
        }
        self.add_answer(&mut m, c, &answer);
        Some(self.finish(m, src, c, format!("PXE ack on 4011 ({}): {answer}", c.arch)))
    }

    fn full(&mut self, req: &Message, c: &Client, now: i64) -> Option<Reply> {
        let server_ip = self.server_ip;
        let (settings, table) = self.full.as_mut()?;
        let settings = settings.clone();
        let (t, ip, note) = match c.msg_type {
            MessageType::Discover => {
                let ip = table.offer(c.mac, c.requested_ip, now);
                let Some(ip) = ip else {
                    tracing::warn!("dhcp: the address pool is exhausted; {} gets no offer", c.mac);
                    return None;
                };
                (MessageType::Offer, ip, "offer")
            }
            MessageType::Request => {
                if let Some(sid) = c.server_id {
                    if sid != server_ip {
                        table.forget_offer(c.mac);
                        return None;
                    }
                }
                let ciaddr = req.ciaddr();
                let wanted = c.requested_ip.or((!ciaddr.is_unspecified()).then_some(ciaddr));
                match wanted {
                    Some(ip) if table.grant(c.mac, ip, settings.lease_secs, now) => (MessageType::Ack, ip, "ack"),
                    Some(_) => (MessageType::Nak, Ipv4Addr::UNSPECIFIED, "nak"),
                    None => return None,
                }
            }
            MessageType::Release => {
                table.release(c.mac, req.ciaddr());
                return None;
            }
            MessageType::Decline => {
                if let Some(ip) = c.requested_ip {
                    table.decline(c.mac, ip, settings.lease_secs, now);
                }
                return None;
            }
            MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED, "inform ack"),
            _ => return None,
        };
        let mut m = self.base_reply(req, c, t);
        if t == MessageType::Nak {
            m.set_flags(Flags::default().set_broadcast());
            let to = self.destination(req, &m, true);
            return Some(self.finish(m, to, c, "nak".into()));
        }
        m.set_yiaddr(ip);
        if c.msg_type == MessageType::Inform {
            m.set_ciaddr(req.ciaddr());
        } else {
            let secs = settings.lease_secs;
            m.opts_mut().insert(DhcpOption::AddressLeaseTime(secs));
            m.opts_mut().insert(DhcpOption::Renewal(secs / 2));
            m.opts_mut().insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
        m.opts_mut().insert(DhcpOption::SubnetMask(settings.netmask));
        if let Some(r) = settings.router {
            m.opts_mut().insert(DhcpOption::Router(vec![r]));
        }
        if !settings.dns.is_empty() {
            m.opts_mut().insert(DhcpOption::DomainNameServer(settings.dns.clone()));
        }
        let mut note = format!("{note} {ip}");
        if c.pxe || c.ipxe {
            if let Some(answer) = self.answer(c) {
                self.add_answer(&mut m, c, &answer);
                if c.ipxe {
                    // iPXE: no-pxedhcp = 1.
                    m.opts_mut()
                        .insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(175), vec![176, 1, 1])));
                }
                note = format!("{note} ({}{}): {answer}", c.arch, if c.ipxe { ", iPXE" } else { "" });
            }
        }
        let to = self.destination(req, &m, false);
        Some(self.finish(m, to, c, note))
    }

    /// RFC 2131 4.1: to the relay, else unicast to a configured client, else broadcast (we
    /// cannot unicast to an address the client does not have yet without writing the ARP
    /// table).
    fn destination(&self, req: &Message, _reply: &Message, nak: bool) -> SocketAddrV4 {
        if !req.giaddr().is_unspecified() {
            return SocketAddrV4::new(req.giaddr(), SERVER_PORT);
        }
        if !nak && !req.ciaddr().is_unspecified() {
            return SocketAddrV4::new(req.ciaddr(), CLIENT_PORT);
        }
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    }

    fn finish(&self, m: Message, to: SocketAddrV4, c: &Client, note: String) -> Reply {
        let mut bytes = m.to_vec().unwrap_or_default();
        if bytes.len() < MIN_REPLY {
            bytes.resize(MIN_REPLY, 0);
        }
        Reply { to, bytes, message: m, mac: c.mac, note }
    }
}

/// Receives on the DHCP socket (port 67) and, if given, the PXE socket (port 4011), answers
/// through the same socket, until `shutdown` completes. The lease table is saved after every
/// change.
pub async fn serve(
    mut dhcp: Dhcp,
    socket: UdpSocket,
    pxe_socket: Option<UdpSocket>,
    log: Arc<BootLog>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    socket.set_broadcast(true)?;
    let mut buf = vec![0u8; 4096];
    let mut buf2 = vec![0u8; 4096];
    tokio::pin!(shutdown);
    loop {
        let (port, r) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = socket.recv_from(&mut buf) => (Port::Dhcp, r.map(|(n, a)| (n, a, &buf))),
            r = async {
                match &pxe_socket {
                    Some(s) => s.recv_from(&mut buf2).await,
                    None => std::future::pending().await,
                }
            } => (Port::Pxe, r.map(|(n, a)| (n, a, &buf2))),
        };
        let (n, src, b) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("dhcp: receive failed: {e}");
                continue;
            }
        };
        let now = crate::unix_now();
        // A datagram filling the buffer may have been truncated: too big to be ours.
        let reply = if n >= b.len() { None } else { dhcp.handle(port, src, &b[..n], now) };
        if let Some(r) = reply {
            let out = match port {
                Port::Dhcp => &socket,
                Port::Pxe => pxe_socket.as_ref().unwrap_or(&socket),
            };
            if let Err(e) = out.send_to(&r.bytes, SocketAddr::V4(r.to)).await {
                tracing::warn!("dhcp: sending to {}: {e}", r.to);
            }
            let client_ip = match port {
                Port::Pxe => Some(src.ip()),
                Port::Dhcp => (!r.message.yiaddr().is_unspecified()).then(|| r.message.yiaddr().into()),
            };
            log.record_mac(
                r.mac,
                client_ip,
                if r.note.starts_with("ack") { Stage::Lease } else { Stage::Dhcp },
                r.note,
            );
        }
        if let Some((_, table)) = dhcp.full.as_mut() {
            if let Some((path, bytes)) = table.take_changes() {
                let r = tokio::task::spawn_blocking(move || leases::save(&path, &bytes)).await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::error!("dhcp: could not save the lease table: {r:?}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BootDecision, StaticPolicy};
    use dhcproto::v4::Architecture;
    use proptest::prelude::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn policy() -> Arc<dyn BootPolicy> {
        Arc::new(StaticPolicy {
            bios_firmware: Some("undionly.kpxe".into()),
            efi_firmware: Some("ipxe.efi".into()),
            script_url: "http://10.9.0.1:8080/boot/script?mac={mac}".into(),
            decision: BootDecision::LocalDisk { note: String::new() },
        })
    }

    fn proxy() -> Dhcp {
        Dhcp { server_ip: SERVER, policy: policy(), full: None, seen: Default::default() }
    }

    fn full(path: Option<std::path::PathBuf>, now: i64) -> Dhcp {
        let table = LeaseTable::new(Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 102), vec![SERVER], path)
            .unwrap()
            .load(now)
            .unwrap();
        let settings = FullSettings {
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(SERVER),
            dns: vec![],
            lease_secs: 3600,
        };
        Dhcp { server_ip: SERVER, policy: policy(), full: Some((settings, table)), seen: Default::default() }
    }

    /// A client packet as a PXE ROM (arch 0 BIOS, 7 UEFI x64) or iPXE would send it.
    fn packet(t: MessageType, mac: [u8; 6], arch: Option<u16>, ipxe: bool, pxe: bool) -> Message {
        let mut m = Message::default();
        m.set_xid(0x1234_5678).set_flags(Flags::default().set_broadcast()).set_chaddr(&mac);
        m.opts_mut().insert(DhcpOption::MessageType(t));
        if pxe {
            let a = arch.unwrap_or(0);
            m.opts_mut().insert(DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{a:05}:UNDI:002001").into_bytes()));
            m.opts_mut().insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
            m.opts_mut().insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
        }
        if let Some(a) = arch {
            m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture(a)));
        }
        if ipxe {
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(175), vec![19, 1, 1])));
        }
        m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask, OptionCode::BootfileName]));
        m
    }

    fn bytes(m: &Message) -> Vec<u8> {
        m.to_vec().unwrap()
    }

    fn src() -> SocketAddr {
        "0.0.0.0:68".parse().unwrap()
    }

    fn reply_of(r: &Reply) -> Message {
        assert!(r.bytes.len() >= MIN_REPLY);
        Message::from_bytes(&r.bytes).unwrap()
    }

    fn opt_bytes(m: &Message, code: u8) -> Option<Vec<u8>> {
        let mut b = Vec::new();
        let mut e = dhcproto::Encoder::new(&mut b);
        m.opts().get(OptionCode::from(code))?.encode(&mut e).unwrap();
        Some(b[2..].to_vec())
    }

    /// A policy that sends every machine to its local disk.
    struct LocalPolicy;

    impl BootPolicy for LocalPolicy {
        fn boot_spec(&self, mac: MacAddr, _arch: ClientArch) -> BootSpec {
            BootSpec::LocalDisk { script_url: format!("http://10.9.0.1:8080/boot/script?mac={mac}") }
        }
        fn decide(&self, _mac: MacAddr, _req: &crate::policy::BootRequest) -> Result<BootDecision, crate::PolicyError> {
            Ok(BootDecision::LocalDisk { note: String::new() })
        }
    }

    /// The PXE vendor options of a local-boot answer, parsed as EDK2 does: tag, length, value.
    fn vendor_tags(o: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut tags = Vec::new();
        let mut i = 0;
        while i < o.len() && o[i] != 255 {
            let (tag, len) = (o[i], o[i + 1] as usize);
            tags.push((tag, o[i + 2..i + 2 + len].to_vec()));
            i += 2 + len;
        }
        assert_eq!(o.get(i), Some(&255), "option 43 must end with PXE_END");
        tags
    }

    #[test]
    fn netboot_dhcp_local_boot_is_a_pxe_menu_without_a_file_and_nothing_for_ipxe() {
        for full_mode in [false, true] {
            let mut d = if full_mode { full(None, 0) } else { proxy() };
            d.policy = Arc::new(LocalPolicy);
            let req = packet(MessageType::Discover, MAC, Some(7), false, true);
            let r = d.handle(Port::Dhcp, src(), &bytes(&req), 0).expect("an offer");
            let m = reply_of(&r);
            assert!(r.note.contains("local boot (PXE menu)"), "{}", r.note);
            assert_eq!(opt_bytes(&m, 60).unwrap(), b"PXEClient");
            assert!(opt_bytes(&m, 67).is_none(), "no boot file");
            assert!(m.fname().is_none_or(|f| f.iter().all(|b| *b == 0)), "no boot file");
            let tags = vendor_tags(&opt_bytes(&m, 43).expect("option 43"));
            let item = LOCAL_BOOT_ITEM.as_bytes();
            assert_eq!(tags[0], (6, vec![3]), "discovery control");
            assert_eq!(tags[1].0, 9, "boot menu");
            assert_eq!(&tags[1].1[..3], &[0, 0, item.len() as u8], "item of type 0 = local boot");
            assert_eq!(&tags[1].1[3..], item);
            assert_eq!(tags[2].0, 10, "menu prompt");
            assert_eq!(tags[2].1[0], 0, "prompt timeout 0: take the item at once");
            if full_mode {
                assert!(!m.yiaddr().is_unspecified(), "full mode still leases an address");
            } else {
                assert!(m.yiaddr().is_unspecified());
                // The same on port 4011, should a ROM ask there.
                let req = packet(MessageType::Request, MAC, Some(7), false, true);
                let r = d.handle(Port::Pxe, "10.9.0.50:68".parse().unwrap(), &bytes(&req), 0).expect("an ack");
                assert!(opt_bytes(&reply_of(&r), 43).is_some() && opt_bytes(&reply_of(&r), 67).is_none());
            }
            // iPXE (the NIC's own ROM, say) gets nothing to boot: no answer in proxy mode, an
            // address without a boot file in full mode.
            let req = packet(MessageType::Discover, MAC, Some(7), true, true);
            match d.handle(Port::Dhcp, src(), &bytes(&req), 0) {
                None => assert!(!full_mode, "full mode must still lease an address"),
                Some(r) => {
                    let m = reply_of(&r);
                    assert!(full_mode && !m.yiaddr().is_unspecified(), "{}", r.note);
                    assert!(opt_bytes(&m, 67).is_none() && opt_bytes(&m, 43).is_none(), "{}", r.note);
                }
            }
        }
    }

    #[test]
    fn netboot_dhcp_proxy_offers_bios_pxe_rom_undionly_with_discovery_control() {
        let mut d = proxy();
        let req = packet(MessageType::Discover, MAC, Some(0), false, true);
        let r = d.handle(Port::Dhcp, src(), &bytes(&req), 0).expect("an offer");
        assert_eq!(r.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        let m = reply_of(&r);
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 0x1234_5678);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED, "proxy mode never hands out addresses");
        assert_eq!(m.siaddr(), SERVER);
        assert_eq!(&m.chaddr()[..6], &MAC);
        assert_eq!(m.fname_str().unwrap().unwrap().trim_end_matches('\0'), "undionly.kpxe");
        assert_eq!(opt_bytes(&m, 60).unwrap(), b"PXEClient");
        assert_eq!(opt_bytes(&m, 43).unwrap(), vec![6, 1, 8, 255]);
        assert_eq!(opt_bytes(&m, 54).unwrap(), SERVER.octets());
        assert_eq!(opt_bytes(&m, 97).unwrap(), vec![0; 17]);
        assert_eq!(opt_bytes(&m, 67).unwrap(), b"undionly.kpxe");
    }

    #[test]
    fn netboot_dhcp_proxy_offers_uefi_ipxe_efi_and_answers_on_4011() {
        let mut d = proxy();
        let req = packet(MessageType::Discover, MAC, Some(7), false, true);
        let m = reply_of(&d.handle(Port::Dhcp, src(), &bytes(&req), 0).unwrap());
        assert_eq!(m.fname_str().unwrap().unwrap().trim_end_matches('\0'), "ipxe.efi");
        assert!(opt_bytes(&m, 43).is_none(), "no discovery control for UEFI");
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        // The ROM then asks on 4011 with its address.
        let mut req = packet(MessageType::Request, MAC, Some(7), false, true);
        req.set_ciaddr(Ipv4Addr::new(10, 9, 0, 57));
        let from: SocketAddr = "10.9.0.57:4011".parse().unwrap();
        let r = d.handle(Port::Pxe, from, &bytes(&req), 0).unwrap();
        assert_eq!(r.to, "10.9.0.57:4011".parse().unwrap());
        let m = reply_of(&r);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.fname_str().unwrap().unwrap().trim_end_matches('\0'), "ipxe.efi");
        assert_eq!(m.siaddr(), SERVER);
        // DISCOVER on 4011 and REQUEST on 67 are not answered in proxy mode.
        assert!(d
            .handle(Port::Pxe, from, &bytes(&packet(MessageType::Discover, MAC, Some(7), false, true)), 0)
            .is_none());
        assert!(d.handle(Port::Dhcp, src(), &bytes(&req), 0).is_none());
    }

    #[test]
    fn netboot_dhcp_proxy_gives_ipxe_the_script_url() {
        let mut d = proxy();
        let req = packet(MessageType::Discover, MAC, Some(0), true, true);
        let m = reply_of(&d.handle(Port::Dhcp, src(), &bytes(&req), 0).unwrap());
        let url = "http://10.9.0.1:8080/boot/script?mac=52:54:00:12:34:56";
        assert_eq!(m.fname_str().unwrap().unwrap().trim_end_matches('\0'), url);
        assert!(opt_bytes(&m, 175).is_none(), "no-pxedhcp only helps in full mode");
        let req = packet(MessageType::Request, MAC, Some(7), true, true);
        let m = reply_of(&d.handle(Port::Pxe, "10.9.0.57:4011".parse().unwrap(), &bytes(&req), 0).unwrap());
        assert_eq!(opt_bytes(&m, 67).unwrap(), url.as_bytes());
    }

    #[test]
    fn netboot_dhcp_proxy_ignores_non_pxe_clients_and_unsupported_arches() {
        let mut d = proxy();
        assert!(d
            .handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, MAC, None, false, false)), 0)
            .is_none());
        // Arch 16 is UEFI HTTP boot: not offered.
        assert!(d
            .handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, MAC, Some(16), false, true)), 0)
            .is_none());
    }

    #[test]
    fn netboot_dhcp_drops_malformed_and_hostile_packets() {
        let mut d = proxy();
        let good = bytes(&packet(MessageType::Discover, MAC, Some(0), false, true));
        assert!(d.handle(Port::Dhcp, src(), &good, 0).is_some());
        let mut cases: Vec<Vec<u8>> = vec![vec![], vec![1; 100], good[..239].to_vec(), vec![0; 5000]];
        let mut reply_op = good.clone();
        reply_op[0] = 2;
        cases.push(reply_op);
        let mut bad_magic = good.clone();
        bad_magic[237] = 0;
        cases.push(bad_magic);
        let mut not_eth = good.clone();
        not_eth[2] = 16;
        cases.push(not_eth);
        // An option whose length runs past the end.
        let mut trunc = good[..240].to_vec();
        trunc.extend_from_slice(&[53, 1, 1, 60, 200, b'P']);
        cases.push(trunc);
        for c in &cases {
            assert!(d.handle(Port::Dhcp, src(), c, 0).is_none(), "answered {c:?}");
        }
        // Options with lengths that make dhcproto's decoder panic in debug builds are dropped,
        // and the rest of the packet still works.
        let mut evil = good[..240].to_vec();
        for (code, len) in [(94u8, 1u8), (80, 3), (81, 1), (151, 0), (152, 2), (93, 1), (53, 1)] {
            evil.push(code);
            evil.push(len);
            evil.extend(std::iter::repeat_n(1u8, len as usize));
        }
        evil.extend_from_slice(&[60, 9]);
        evil.extend_from_slice(b"PXEClient");
        evil.push(255);
        let r = d.handle(Port::Dhcp, src(), &evil, 0).expect("still a PXE discover");
        assert_eq!(reply_of(&r).fname_str().unwrap().unwrap().trim_end_matches('\0'), "undionly.kpxe");
    }

    #[test]
    fn netboot_dhcp_full_mode_lease_flow_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        let mut d = full(Some(path.clone()), 1000);
        // A PXE ROM (UEFI) gets an address and the boot file in one offer.
        let r = d.handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, MAC, Some(7), false, true)), 1000);
        let m = reply_of(&r.unwrap());
        let ip = m.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(10, 9, 0, 100));
        assert_eq!(m.fname_str().unwrap().unwrap().trim_end_matches('\0'), "ipxe.efi");
        assert!(opt_bytes(&m, 60).is_none() && opt_bytes(&m, 43).is_none());
        assert_eq!(opt_bytes(&m, 51).unwrap(), 3600u32.to_be_bytes());
        assert_eq!(opt_bytes(&m, 1).unwrap(), [255, 255, 255, 0]);
        // A second client is offered another address while the first offer is held.
        let mac2 = [2, 0, 0, 0, 0, 2];
        let m2 = reply_of(
            &d.handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, mac2, None, false, false)), 1000)
                .unwrap(),
        );
        assert_eq!(m2.yiaddr(), Ipv4Addr::new(10, 9, 0, 101));
        assert!(m2.fname().is_none(), "no boot file for a non-PXE client");
        // REQUEST for the offered address → ACK; for another's address → NAK.
        let mut req = packet(MessageType::Request, MAC, Some(7), false, true);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        let m = reply_of(&d.handle(Port::Dhcp, src(), &bytes(&req), 1001).unwrap());
        assert_eq!((m.opts().msg_type(), m.yiaddr()), (Some(MessageType::Ack), ip));
        let mut steal = packet(MessageType::Request, mac2, None, false, false);
        steal.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        let m = reply_of(&d.handle(Port::Dhcp, src(), &bytes(&steal), 1001).unwrap());
        assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
        // A REQUEST naming another server drops our offer silently.
        let mut other = packet(MessageType::Request, mac2, None, false, false);
        other.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 254)));
        other.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 101)));
        assert!(d.handle(Port::Dhcp, src(), &bytes(&other), 1001).is_none());
        // iPXE in full mode: the script URL and no-pxedhcp.
        let m = reply_of(
            &d.handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, MAC, Some(7), true, true)), 1002)
                .unwrap(),
        );
        assert_eq!(m.yiaddr(), ip, "the same client keeps its address");
        assert!(m.fname_str().unwrap().unwrap().starts_with("http://10.9.0.1:8080/boot/script?mac="));
        assert_eq!(opt_bytes(&m, 175).unwrap(), vec![176, 1, 1]);
        // Renewal (ciaddr set, unicast back).
        let mut renew = packet(MessageType::Request, MAC, None, false, false);
        renew.set_ciaddr(ip).set_flags(Flags::default());
        let r = d.handle(Port::Dhcp, SocketAddr::new(ip.into(), 68), &bytes(&renew), 2000).unwrap();
        assert_eq!(r.to, SocketAddrV4::new(ip, 68));
        assert_eq!(reply_of(&r).opts().msg_type(), Some(MessageType::Ack));
        let (_, table) = d.full.as_mut().unwrap();
        let (p, b) = table.take_changes().unwrap();
        leases::save(&p, &b).unwrap();
        // Restart: the lease survives, so the client gets the same address back and another
        // client does not get it.
        let mut d = full(Some(path.clone()), 2100);
        assert_eq!(d.full.as_ref().unwrap().1.leases(2100).len(), 1);
        let m = reply_of(
            &d.handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, mac2, None, false, false)), 2100)
                .unwrap(),
        );
        assert_ne!(m.yiaddr(), ip);
        let m = reply_of(
            &d.handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, MAC, None, false, false)), 2100)
                .unwrap(),
        );
        assert_eq!(m.yiaddr(), ip);
        // After expiry (renewed at 2000 for 3600 s) the address is free for others.
        let d2 = full(Some(path), 6000);
        assert!(d2.full.as_ref().unwrap().1.leases(6000).is_empty());
    }

    /// What the script route later compares the requester with: in proxy mode the address a
    /// PXE client asks the site's server for (option 50 on 67) and the source of its request on
    /// 4011; in full mode the address we ACKed. Offers, non-PXE clients and NAKs show nothing.
    #[test]
    fn netboot_dhcp_records_the_address_each_mac_was_seen_with() {
        use crate::seen::Sighting;
        let mac = MacAddr(MAC);
        let mut d = proxy();
        d.handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, MAC, Some(0), true, true)), 10);
        assert_eq!(d.seen.get(mac), None, "a DISCOVER shows no address");
        let mut site = packet(MessageType::Request, MAC, Some(0), true, true);
        site.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 57)));
        site.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 2)));
        assert!(d.handle(Port::Dhcp, src(), &bytes(&site), 11).is_none(), "not ours to answer");
        let seen = |ip, at, how| Some(Sighting { ip, at, how });
        assert_eq!(d.seen.get(mac), seen(Ipv4Addr::new(10, 9, 0, 57), 11, SeenHow::SiteRequest));
        let req = packet(MessageType::Request, MAC, Some(0), true, true);
        d.handle(Port::Pxe, "10.9.0.58:4011".parse().unwrap(), &bytes(&req), 12).unwrap();
        assert_eq!(d.seen.get(mac), seen(Ipv4Addr::new(10, 9, 0, 58), 12, SeenHow::ProxyRequest));
        // A non-PXE client's request to the site's server is not a boot.
        let other = [2, 0, 0, 0, 0, 7];
        let mut plain = packet(MessageType::Request, other, None, false, false);
        plain.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 70)));
        d.handle(Port::Dhcp, src(), &bytes(&plain), 13);
        assert_eq!(d.seen.get(MacAddr(other)), None);

        let mut d = full(None, 0);
        let offer = reply_of(
            &d.handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, MAC, Some(0), true, true)), 20).unwrap(),
        );
        assert_eq!(d.seen.get(mac), None, "an offer is not a lease");
        let mut req = packet(MessageType::Request, MAC, Some(0), true, true);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        d.handle(Port::Dhcp, src(), &bytes(&req), 21).unwrap();
        assert_eq!(d.seen.get(mac), seen(offer.yiaddr(), 21, SeenHow::Lease));
        // A NAK (another's address) changes nothing.
        let mut steal = packet(MessageType::Request, other, None, false, false);
        steal.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        d.handle(Port::Dhcp, src(), &bytes(&steal), 22).unwrap();
        assert_eq!(d.seen.get(MacAddr(other)), None);
    }

    #[test]
    fn netboot_dhcp_full_mode_pool_exhaustion_release_and_decline() {
        let mut d = full(None, 0);
        let mut ips = Vec::new();
        for i in 0..3u8 {
            let mac = [2, 0, 0, 0, 1, i];
            let m = reply_of(
                &d.handle(Port::Dhcp, src(), &bytes(&packet(MessageType::Discover, mac, None, false, false)), 0)
                    .unwrap(),
            );
            ips.push(m.yiaddr());
        }
        assert!(d
            .handle(
                Port::Dhcp,
                src(),
                &bytes(&packet(MessageType::Discover, [2, 0, 0, 0, 1, 9], None, false, false)),
                0
            )
            .is_none());
        // Offers expire.
        assert!(d
            .handle(
                Port::Dhcp,
                src(),
                &bytes(&packet(MessageType::Discover, [2, 0, 0, 0, 1, 9], None, false, false)),
                100
            )
            .is_some());
        // Decline keeps the address out of the pool.
        let mut decl = packet(MessageType::Decline, [2, 0, 0, 0, 1, 9], None, false, false);
        decl.opts_mut().insert(DhcpOption::RequestedIpAddress(ips[0]));
        assert!(d.handle(Port::Dhcp, src(), &bytes(&decl), 100).is_none());
        let m = reply_of(
            &d.handle(
                Port::Dhcp,
                src(),
                &bytes(&packet(MessageType::Discover, [2, 0, 0, 0, 1, 8], None, false, false)),
                100,
            )
            .unwrap(),
        );
        assert_ne!(m.yiaddr(), ips[0]);
    }

    proptest! {
        #[test]
        fn netboot_dhcp_handle_never_panics_on_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let mut d = proxy();
            let _ = d.handle(Port::Dhcp, src(), &b, 0);
            let mut f = full(None, 0);
            let _ = f.handle(Port::Dhcp, src(), &b, 0);
        }

        #[test]
        fn netboot_dhcp_handle_never_panics_on_random_options(
            opts in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..30),
            raw_tail in proptest::collection::vec(any::<u8>(), 0..20),
            t in 1u8..=8,
        ) {
            let base = bytes(&packet(MessageType::from(t), MAC, Some(7), true, true));
            let mut b = base[..240].to_vec();
            for (code, data) in &opts {
                b.push(*code);
                b.push(data.len() as u8);
                b.extend_from_slice(data);
            }
            b.extend_from_slice(&raw_tail);
            for port in [Port::Dhcp, Port::Pxe] {
                let _ = proxy().handle(port, "10.9.0.5:4011".parse().unwrap(), &b, 0);
                let _ = full(None, 0).handle(port, src(), &b, 0);
            }
        }
    }
}
