//! Property tests of the two parsers a machine on the boot network reaches without a token:
//! the DHCP decoder (fed valid PXE/iPXE packets with random mutations: bit flips, overwritten
//! bytes, truncations, appended garbage) and the boot script's `?mac=` query (random query
//! strings against the real boot HTTP server on loopback). Neither may panic; DHCP replies stay
//! within one Ethernet frame; a script request without a valid MAC gets 400, never a 5xx.

use dhcproto::v4::{DhcpOption, Encodable, Flags, Message, MessageType, OptionCode, UnknownOption};
use kura_netboot::dhcp::{self, Dhcp, FullSettings, Port};
use kura_netboot::leases::LeaseTable;
use kura_netboot::{BootDecision, BootPolicy, BootRequest, BootSpec, ClientArch, PolicyError};
use kura_protocol::MacAddr;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

/// Netboots every machine: the most code runs for every packet.
struct EveryMachine;

impl BootPolicy for EveryMachine {
    fn boot_spec(&self, mac: MacAddr, _arch: ClientArch) -> BootSpec {
        BootSpec::Boot {
            firmware: Some("undionly.kpxe".into()),
            script_url: format!("http://10.9.0.1:8080/boot/script?mac={mac}"),
        }
    }

    fn decide(&self, _mac: MacAddr, _req: &BootRequest) -> Result<BootDecision, PolicyError> {
        Ok(BootDecision::LocalDisk { note: "fuzz".into() })
    }
}

fn proxy() -> Dhcp {
    Dhcp { server_ip: SERVER, policy: Arc::new(EveryMachine), full: None, seen: Default::default() }
}

fn full() -> Dhcp {
    let table = LeaseTable::new(Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 110), vec![SERVER], None)
        .unwrap()
        .load(0)
        .unwrap();
    let settings =
        FullSettings { netmask: Ipv4Addr::new(255, 255, 255, 0), router: Some(SERVER), dns: vec![], lease_secs: 600 };
    Dhcp { server_ip: SERVER, policy: Arc::new(EveryMachine), full: Some((settings, table)), seen: Default::default() }
}

/// A valid request as a PXE ROM or iPXE sends it.
fn valid(t: u8, arch: u16, ipxe: bool, mac: [u8; 6]) -> Vec<u8> {
    let mut m = Message::default();
    m.set_xid(0x1234_5678).set_flags(Flags::default().set_broadcast()).set_chaddr(&mac);
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::from(t)));
    m.opts_mut().insert(DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes()));
    m.opts_mut().insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    m.opts_mut().insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 101)));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    if ipxe {
        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(175), vec![19, 1, 1])));
    }
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask, OptionCode::BootfileName]));
    m.to_vec().unwrap()
}

/// One change to a packet.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
    /// Overwrite from `at` (in the options) with a run of bytes: a forged option.
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..300).prop_map(Mutation::Append),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..40)).prop_map(|(i, v)| Mutation::Splice(i, v)),
    ]
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    if b.is_empty() {
        return;
    }
    let n = b.len();
    match m {
        Mutation::FlipBit(i, bit) => b[i % n] ^= 1 << bit,
        Mutation::SetByte(i, v) => b[i % n] = *v,
        Mutation::Truncate(i) => b.truncate(i % n),
        Mutation::Append(v) => b.extend_from_slice(v),
        Mutation::Splice(i, v) => {
            let at = 240 + i % n.saturating_sub(240).max(1);
            for (k, x) in v.iter().enumerate() {
                match b.get_mut(at + k) {
                    Some(slot) => *slot = *x,
                    None => b.push(*x),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 2000, ..Config::default() })]

    #[test]
    fn mutated_dhcp_requests_never_panic_and_replies_stay_bounded(
        t in 1u8..=8,
        arch in prop_oneof![Just(0u16), Just(6), Just(7), Just(9), any::<u16>()],
        ipxe in any::<bool>(),
        mac in any::<[u8; 6]>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut b = valid(t, arch, ipxe, mac);
        for m in &mutations {
            apply(&mut b, m);
        }
        if let Ok(msg) = dhcp::decode(&b) {
            // The decoder keeps a subset of the options: never more than it was given.
            let again = msg.to_vec().expect("a decoded message encodes");
            prop_assert!(again.len() <= b.len().max(dhcp::MIN_LEN) + 64, "{} bytes from {}", again.len(), b.len());
            let _ = dhcp::client(&msg);
        }
        let src: SocketAddr = "10.9.0.50:68".parse().unwrap();
        for (mut d, port) in [(proxy(), Port::Dhcp), (proxy(), Port::Pxe), (full(), Port::Dhcp), (full(), Port::Pxe)] {
            if let Some(r) = d.handle(port, src, &b, 1_000) {
                prop_assert!(r.bytes.len() <= dhcp::MAX_LEN, "a {}-byte reply", r.bytes.len());
                prop_assert!(dhcp::decode(&b).is_ok(), "a reply to a packet the decoder drops");
            }
        }
    }

    #[test]
    fn any_mac_text_parses_or_is_refused(s in "\\PC{0,40}", hexish in "[0-9a-fA-F:.-]{0,20}") {
        for text in [&s, &hexish] {
            if let Ok(mac) = text.parse::<MacAddr>() {
                prop_assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
            }
        }
    }
}

/// A boot HTTP server on loopback, in its own runtime thread; returns its address.
fn boot_http(dir: &std::path::Path) -> SocketAddr {
    std::fs::write(dir.join("vmlinuz"), b"K").unwrap();
    std::fs::write(dir.join("initrd.img"), b"I").unwrap();
    let state = Arc::new(kura_netboot::http::BootHttp {
        policy: Arc::new(EveryMachine),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        kernel_args: String::new(),
        log: kura_netboot::BootLog::new(),
        seen: None,
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            kura_netboot::http::serve(listener, state, std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The status code of `GET /boot/script?{query}`.
fn script_status(addr: SocketAddr, query: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut req = b"GET /boot/script?".to_vec();
    req.extend_from_slice(query);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(&req).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line: {head:?}"))
}

#[test]
fn boot_script_queries_never_panic_and_bad_macs_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let addr = boot_http(dir.path());
    assert_eq!(script_status(addr, b"mac=52:54:00:12:34:56"), 200);
    let mut runner = TestRunner::new(Config { cases: 300, ..Config::default() });

    // Anything a client can put in the request target (visible ASCII but space and '#').
    let any_query = proptest::collection::vec(0x21u8..0x7f, 0..120)
        .prop_map(|v| v.into_iter().filter(|&c| c != b'#').collect::<Vec<u8>>());
    let tried = std::cell::Cell::new(0);
    runner
        .run(&any_query, |q| {
            tried.set(tried.get() + 1);
            let status = script_status(addr, &q);
            prop_assert!(status == 200 || status == 400, "{status} for {:?}", String::from_utf8_lossy(&q));
            Ok(())
        })
        .unwrap();
    assert_eq!(tried.get(), 300);

    // `mac=` with a value that needs no decoding: a MAC address in one of its spellings, maybe
    // damaged by one edit. 200 exactly when it still parses as a MAC address.
    let spelled = (any::<[u8; 6]>(), 0usize..4, any::<bool>()).prop_map(|(m, style, upper)| {
        let hex: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
        let s = match style {
            0 => hex.join(":"),
            1 => hex.join("-"),
            2 => hex.concat(),
            _ => hex.chunks(2).map(|c| c.concat()).collect::<Vec<_>>().join("."),
        };
        if upper {
            s.to_uppercase()
        } else {
            s
        }
    });
    let edit =
        prop_oneof![Just(None), (any::<usize>(), 0u8..3, prop::sample::select(b"0aF:.-gz ".to_vec())).prop_map(Some),];
    let (ok, bad) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    // A fresh runner: one that has run counts its earlier cases against this run's.
    let mut runner = TestRunner::new(Config { cases: 300, ..Config::default() });
    runner
        .run(&(spelled, edit, "[a-z_]{0,6}"), |(mut v, edit, other)| {
            if let Some((at, kind, c)) = edit {
                let i = at % (v.len() + 1);
                match kind {
                    0 if i < v.len() => {
                        v.remove(i);
                    }
                    1 => v.insert(i, c as char),
                    _ if i < v.len() => v.replace_range(i..i + 1, &(c as char).to_string()),
                    _ => v.push(c as char),
                }
            }
            let v = v.replace(' ', "+");
            let q = format!("{other}=1&mac={v}");
            let status = script_status(addr, q.as_bytes());
            let want = if v.replace('+', " ").parse::<MacAddr>().is_ok() { 200 } else { 400 };
            let counter = if want == 200 { &ok } else { &bad };
            counter.set(counter.get() + 1);
            prop_assert_eq!(status, want, "for ?{}", q);
            Ok(())
        })
        .unwrap();
    assert!(ok.get() > 50 && bad.get() > 20, "{} valid and {} damaged MACs tried", ok.get(), bad.get());
}
