//! Wake-on-LAN: the magic packet, and sending it. Protocol only; when to wake a machine is
//! decided by [`super::Power`].
//!
//! The packet is 6 bytes of `0xFF` followed by the target MAC address 16 times (102 bytes),
//! sent as a UDP broadcast to port 9 (discard). With an interface, the socket is bound to it
//! (`SO_BINDTODEVICE`, needs `CAP_NET_RAW`), so the packet leaves on that segment whatever the
//! routing table says.

use super::PowerError;
use kura_catalogs::db::PowerDriver;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The UDP port magic packets go to.
pub const PORT: u16 = 9;
/// Size of a magic packet.
pub const PACKET_LEN: usize = 6 + 16 * 6;

/// The magic packet for `mac`.
pub fn magic_packet(mac: [u8; 6]) -> [u8; PACKET_LEN] {
    let mut p = [0xffu8; PACKET_LEN];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    p
}

/// Parses `aa:bb:cc:dd:ee:ff` (any form `catalogs::db::normalize_mac` accepts).
pub fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let norm = kura_catalogs::db::normalize_mac(mac).ok()?;
    let bytes = hex::decode(norm.replace(':', "")).ok()?;
    bytes.try_into().ok()
}

/// Sends the magic packet for `mac` to `broadcast:9`, from `interface` if given.
pub fn send(mac: &str, broadcast: Ipv4Addr, interface: Option<&str>) -> Result<(), PowerError> {
    let target = match interface {
        Some(i) => format!("to {broadcast}:{PORT} via {i}"),
        None => format!("to {broadcast}:{PORT}"),
    };
    let err = |step: &'static str, e: std::io::Error| PowerError::Device {
        driver: PowerDriver::Wol,
        target: target.clone(),
        step,
        message: e.to_string(),
    };
    let bytes = parse_mac(mac).ok_or_else(|| PowerError::Unsupported(format!("{mac:?} is not a MAC address")))?;
    let socket =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(|e| err("opening a UDP socket", e))?;
    socket.set_broadcast(true).map_err(|e| err("enabling broadcast", e))?;
    if let Some(i) = interface {
        socket.bind_device(Some(i.as_bytes())).map_err(|e| err("binding to the interface", e))?;
    }
    let sent = socket
        .send_to(&magic_packet(bytes), &SocketAddrV4::new(broadcast, PORT).into())
        .map_err(|e| err("sending the magic packet", e))?;
    if sent != PACKET_LEN {
        return Err(err("sending the magic packet", std::io::Error::other(format!("only {sent} bytes sent"))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_packet_is_six_ff_then_sixteen_macs() {
        let mac = parse_mac("52-54-00-AB-CD-EF").unwrap();
        assert_eq!(mac, [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xff; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + 6 * i..12 + 6 * i], &mac, "repetition {i}");
        }
        assert!(parse_mac("52:54:00").is_none());
    }

    #[test]
    fn a_missing_interface_is_named_in_the_error() {
        let e = send("52:54:00:ab:cd:ef", Ipv4Addr::LOCALHOST, Some("kura-nonexist")).unwrap_err().to_string();
        assert!(e.starts_with("wol to 127.0.0.1:9 via kura-nonexist: binding to the interface"), "{e}");
    }
}
