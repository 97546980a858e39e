//! The real XDP program in the kernel, through BPF_PROG_TEST_RUN: the action and the exact
//! output bytes for every packet shape the dataplane handles. Output checksums are
//! validated by etherparse, not by our code.

use std::net::IpAddr;

use lb_common::{
    BACKEND_F_DOWN, Forward, PROTO_TCP, PROTO_UDP, Reason, Scheduler, VIP_F_FRAGMENTS_ONLY,
    VIP_F_NO_BACKEND_PASS, VipKey,
};
use lb_control::predict;
use lb_tests::{harness::*, packets::*};

const VIP4: &str = "198.18.100.1";
const VIP6: &str = "2001:db8:100::1";
const CLIENT4: &str = "198.18.0.1";
const CLIENT6: &str = "2001:db8::1";

fn be_mac(id: u32) -> [u8; 6] {
    [0x02, 0, 0, 0, 1, id as u8]
}

/// Three IPv4 backends (1..=3), three IPv6 backends (11..=13).
fn backends(h: &mut Harness) {
    for id in 1..=3u32 {
        h.backend(id, &format!("198.18.1.{id}"), be_mac(id));
        h.backend(10 + id, &format!("2001:db8:1::{id}"), be_mac(10 + id));
    }
}

fn v4_set() -> Vec<(u32, &'static str, u32)> {
    vec![
        (1, "198.18.1.1", 1),
        (2, "198.18.1.2", 1),
        (3, "198.18.1.3", 1),
    ]
}

fn v6_set() -> Vec<(u32, &'static str, u32)> {
    vec![
        (11, "2001:db8:1::1", 1),
        (12, "2001:db8:1::2", 1),
        (13, "2001:db8:1::3", 1),
    ]
}

/// A Maglev, IP-in-IP VIP over `set`.
fn maglev(h: &mut Harness, addr: &str, port: u16, proto: u8, set: &[(u32, &str, u32)]) -> TestVip {
    h.vip(
        vip_key(addr, port, proto),
        Scheduler::Maglev,
        Forward::IpIp,
        0,
        set,
    )
}

fn setup(scheduler: Scheduler, forward: Forward) -> (Harness, TestVip) {
    let mut h = Harness::new();
    backends(&mut h);
    let v = h.vip(
        vip_key(VIP4, 80, PROTO_TCP),
        scheduler,
        forward,
        0,
        &v4_set(),
    );
    (h, v)
}

/// The backend address a forwarded frame went to (outer destination).
fn outer_dst(out: &[u8]) -> IpAddr {
    check_frame(out).expect("valid output frame").outer_dst
}

fn backend_addr(h: &mut Harness, id: u32) -> IpAddr {
    let be = h.dp.backend(id).unwrap();
    if be.family == 4 {
        IpAddr::from([be.addr[0], be.addr[1], be.addr[2], be.addr[3]])
    } else {
        IpAddr::from(be.addr)
    }
}

fn predicted(h: &mut Harness, v: &TestVip, f: &Frame) -> IpAddr {
    let key = flow_key(f);
    let id = predict(&v.meta, &v.ring, &key).expect("hash scheduler");
    backend_addr(h, id)
}

/// Runs `f` and asserts it leaves (XDP_TX) tunnelled to `to` with its IP packet unchanged;
/// returns the frame sent and what `check_frame` read from it.
fn assert_tunnelled(h: &Harness, f: &Frame, to: IpAddr) -> (Vec<u8>, Checked) {
    let (action, out) = h.run(&f.bytes());
    assert_eq!(action, XDP_TX);
    let c = check_frame(&out).unwrap();
    assert_eq!(c.outer_dst, to);
    assert_eq!(c.ip_payload, f.ip_packet());
    (out, c)
}

fn flow_key(f: &Frame) -> lb_common::FlowKey {
    let (src, family) = addr16(f.src);
    let (dst, _) = addr16(f.dst);
    let (sport, dport) = match f.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
        L4::Raw { .. } => (0, 0),
    };
    lb_common::FlowKey {
        src,
        dst,
        sport,
        dport,
        proto: f.l4.proto(),
        family,
        _pad: [0; 2],
    }
}

/// The same flow's next packet: an ACK.
fn ack(f: &Frame) -> Frame {
    let mut a = f.clone();
    if let L4::Tcp { sport, dport, .. } = a.l4 {
        a.l4 = L4::Tcp {
            sport,
            dport,
            flags: TCP_ACK,
        };
    }
    a
}

/// A client's SYN then its handshake ACK: both to one backend, which is returned. The ACK
/// creates the flow's entry (a SYN on a Maglev VIP is not remembered).
fn handshake(h: &Harness, syn: &Frame) -> IpAddr {
    let to = outer_dst(&h.run(&syn.bytes()).1);
    let new = h.dp.reason(Reason::FlowNew).unwrap();
    assert_eq!(
        outer_dst(&h.run(&ack(syn).bytes()).1),
        to,
        "ACK beside its SYN"
    );
    assert_eq!(
        h.dp.reason(Reason::FlowNew).unwrap(),
        new + 1,
        "the ACK remembers"
    );
    to
}

#[test]
fn ipv4_tcp_is_encapsulated_to_the_predicted_backend() {
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    let f = Frame::tcp(CLIENT4, 40000, VIP4, 80, TCP_SYN);
    let input = f.bytes();
    let (action, out) = h.run(&input);
    assert_eq!(action, XDP_TX);
    let c = check_frame(&out).unwrap();
    assert_eq!(c.dst_mac, GATEWAY_MAC, "no FIB: the gateway MAC");
    assert_eq!(
        c.src_mac, LB_MAC,
        "source MAC is the one the frame came in on"
    );
    assert_eq!(c.ip_proto, 4, "IPv4-in-IPv4");
    assert_eq!(c.outer_dst, predicted(&mut h, &v, &f));
    match c.outer_src {
        IpAddr::V4(a) => assert_eq!(
            a.octets()[..3],
            [198, 18, 255],
            "outer source from the configured /24"
        ),
        other => panic!("outer source {other}"),
    }
    assert_eq!(c.ip_payload, f.ip_packet(), "inner packet byte-identical");
    check_ip(&c.ip_payload).unwrap();
    assert_eq!(out.len(), input.len() + 20);
    // TTL 64, no options, DF copied (not set here).
    assert_eq!(out[14], 0x45);
    assert_eq!(out[14 + 8], 64);
    assert_eq!(out[14 + 6] & 0x40, 0);
    assert_eq!(h.dp.reason(Reason::TxIpip).unwrap(), 1);
    // A SYN of a never-seen flow on a Maglev VIP goes by the ring and is not remembered:
    // the handshake's next packet creates the entry, on the same backend.
    assert_eq!(h.dp.reason(Reason::SynStateless).unwrap(), 1);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 0);
    let s = h.dp.vip_stats(v.meta.vip_id).unwrap();
    assert_eq!(
        (s.packets, s.bytes, s.new_flows),
        (1, input.len() as u64, 0)
    );
    let a = ack(&f);
    assert_tunnelled(&h, &a, c.outer_dst);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 1);
    assert_eq!(h.dp.reason(Reason::FlowHit).unwrap(), 0);
    assert_eq!(h.dp.vip_stats(v.meta.vip_id).unwrap().new_flows, 1);
    assert_tunnelled(&h, &a, c.outer_dst);
    assert_eq!(h.dp.reason(Reason::FlowHit).unwrap(), 1);
    assert_eq!(h.dp.reason(Reason::SynStateless).unwrap(), 1);
}

/// Established packets reach their VIP through the flow's entry and LB_VIP_BY_ID, not the
/// VIP lookup: that shortcut must end when the VIP goes, and must not follow a reused id.
#[test]
fn established_flows_follow_their_vip_only_while_it_serves_them() {
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    let f = Frame::tcp(CLIENT4, 41000, VIP4, 80, TCP_SYN);
    let to = predicted(&mut h, &v, &f);
    assert_tunnelled(&h, &f, to);
    let a = ack(&f);
    // The first ACK creates the entry; the next ones hit it.
    assert_tunnelled(&h, &a, to);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 1);
    let hits = h.dp.reason(Reason::FlowHit).unwrap();
    assert_tunnelled(&h, &a, to);
    assert_eq!(h.dp.reason(Reason::FlowHit).unwrap(), hits + 1);
    h.dp.remove_vip(&v.key, v.meta.vip_id).unwrap();
    h.assert_passed(&a.bytes(), Reason::PassNotVip);
    // Another address takes the id (and the ring): the old flow is not its traffic.
    h.dp.set_vip(&vip_key("198.18.100.2", 80, PROTO_TCP), &v.meta)
        .unwrap();
    h.assert_passed(&a.bytes(), Reason::PassNotVip);
    // Back under its own address, the flow carries on where it was.
    h.dp.set_vip(&v.key, &v.meta).unwrap();
    assert_tunnelled(&h, &a, to);
    assert_eq!(h.dp.reason(Reason::FlowHit).unwrap(), hits + 2);
    // The address under a new id (a restart that renumbers): the old id's record is cleared,
    // so the flow's packets are the new id's (counted there), still to the same backend.
    let renumbered = lb_common::VipMeta {
        vip_id: v.meta.vip_id + 7,
        ..v.meta
    };
    h.dp.set_vip(&v.key, &renumbered).unwrap();
    assert_tunnelled(&h, &a, to);
    assert_eq!(h.dp.vip_stats(renumbered.vip_id).unwrap().packets, 1);
}

#[test]
fn outer_source_spreads_flows_and_is_stable_per_flow() {
    let (h, _) = setup(Scheduler::Maglev, Forward::IpIp);
    let mut sources = std::collections::HashSet::new();
    for port in 0..64u16 {
        let f = Frame::tcp(CLIENT4, 30000 + port, VIP4, 80, TCP_SYN);
        let a = check_frame(&h.run(&f.bytes()).1).unwrap().outer_src;
        let b = check_frame(&h.run(&f.bytes()).1).unwrap().outer_src;
        assert_eq!(a, b, "same flow, same outer source");
        sources.insert(a);
    }
    assert!(
        sources.len() > 32,
        "64 flows used only {} outer sources",
        sources.len()
    );
}

#[test]
fn ipv6_in_ipv6() {
    let mut h = Harness::new();
    backends(&mut h);
    let v = maglev(&mut h, VIP6, 443, PROTO_TCP, &v6_set());
    let f = Frame::tcp(CLIENT6, 50000, VIP6, 443, TCP_SYN | TCP_ACK);
    let to = predicted(&mut h, &v, &f);
    let (out, c) = assert_tunnelled(&h, &f, to);
    assert_eq!(c.ip_proto, 41);
    assert!(
        matches!(c.outer_src, IpAddr::V6(a) if a.segments()[..6] == [0x2001, 0xdb8, 0xff, 0, 0, 0])
    );
    check_ip(&c.ip_payload).unwrap();
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(out.len(), f.bytes().len() + 40);
}

#[test]
fn ipv4_in_ipv6_toward_an_ipv6_backend() {
    let mut h = Harness::new();
    backends(&mut h);
    let v = maglev(&mut h, VIP4, 80, PROTO_TCP, &v6_set());
    let f = Frame::tcp(CLIENT4, 40001, VIP4, 80, TCP_SYN);
    let to = predicted(&mut h, &v, &f);
    assert!(to.is_ipv6());
    let (_, c) = assert_tunnelled(&h, &f, to);
    assert_eq!(c.ip_proto, 4, "next header: IPv4");
}

#[test]
fn ipv6_vip_toward_ipv4_backend_is_dropped_not_sent() {
    let mut h = Harness::new();
    backends(&mut h);
    maglev(&mut h, VIP6, 443, PROTO_TCP, &v4_set());
    let (action, _) = h.run(&Frame::tcp(CLIENT6, 50000, VIP6, 443, TCP_SYN).bytes());
    assert_eq!(action, XDP_DROP);
    assert_eq!(h.dp.reason(Reason::DropNoBackend).unwrap(), 1);
}

#[test]
fn udp_v4() {
    let mut h = Harness::new();
    backends(&mut h);
    let v = maglev(&mut h, VIP4, 53, PROTO_UDP, &v4_set());
    let f = Frame::udp(CLIENT4, 5353, VIP4, 53);
    let to = predicted(&mut h, &v, &f);
    let (_, c) = assert_tunnelled(&h, &f, to);
    check_ip(&c.ip_payload).unwrap();
    // TCP to the same address and port is not this VIP.
    let t = Frame::tcp(CLIENT4, 5353, VIP4, 53, TCP_SYN).bytes();
    assert_eq!(h.run(&t), (XDP_PASS, t.clone()));
}

#[test]
fn vlan_tags_are_kept() {
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    for vlans in [vec![(0x8100, 100)], vec![(0x88a8, 200), (0x8100, 100)]] {
        let mut f = Frame::tcp(CLIENT4, 40002, VIP4, 80, TCP_SYN);
        f.vlans = vlans.clone();
        let input = f.bytes();
        let to = predicted(&mut h, &v, &f);
        let (out, c) = assert_tunnelled(&h, &f, to);
        assert_eq!(c.vlans, vlans.len());
        let tags = 4 * vlans.len();
        assert_eq!(
            &out[12..12 + tags],
            &input[12..12 + tags],
            "tags as they came"
        );
    }
    let mut f = Frame::tcp(CLIENT4, 40002, VIP4, 80, TCP_SYN);
    f.vlans = vec![(0x88a8, 1), (0x8100, 2), (0x8100, 3)];
    h.assert_passed(&f.bytes(), Reason::PassVlanDepth);
}

#[test]
fn ipv4_options_are_carried() {
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    let mut f = Frame::tcp(CLIENT4, 40003, VIP4, 80, TCP_SYN);
    f.ipv4_options = vec![0x94, 0x04, 0, 0, 1, 1, 1, 0]; // router alert, NOPs, EOL
    let to = predicted(&mut h, &v, &f);
    let (_, c) = assert_tunnelled(&h, &f, to);
    check_ip(&c.ip_payload).unwrap();
}

fn ext(len8: usize) -> Vec<u8> {
    let mut e = vec![0u8; 8 * len8];
    e[1] = (len8 - 1) as u8;
    e[2] = 1; // PadN option over the rest
    e[3] = (8 * len8 - 4) as u8;
    e
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut h = Harness::new();
    backends(&mut h);
    let v = maglev(&mut h, VIP6, 443, PROTO_TCP, &v6_set());
    let mut f = Frame::tcp(CLIENT6, 50001, VIP6, 443, TCP_SYN);
    f.ipv6_ext = vec![(0, ext(1)), (60, ext(2))]; // hop-by-hop, destination options
    let to = predicted(&mut h, &v, &f);
    assert_tunnelled(&h, &f, to);
    // More than we walk: passed untouched, counted.
    f.ipv6_ext = vec![
        (0, ext(1)),
        (60, ext(1)),
        (60, ext(1)),
        (60, ext(1)),
        (60, ext(1)),
    ];
    h.assert_passed(&f.bytes(), Reason::PassExtHeaders);
}

/// Fragments of one datagram all reach one backend: hashed on addresses and protocol with
/// ports zero, through the (address, 0, protocol) entry.
#[test]
fn fragments_of_a_datagram_share_a_backend() {
    let mut h = Harness::new();
    backends(&mut h);
    let v = maglev(&mut h, VIP4, 53, PROTO_UDP, &v4_set());
    // The fragments-only alias userspace installs for a port VIP's address.
    h.dp.set_vip(
        &vip_key(VIP4, 0, PROTO_UDP),
        &lb_common::VipMeta {
            flags: VIP_F_FRAGMENTS_ONLY,
            ..v.meta
        },
    )
    .unwrap();
    let mut first = Frame::udp(CLIENT4, 5353, VIP4, 53);
    first.payload = vec![7; 64];
    first.fragment = Some((true, 0));
    let mut rest = Frame::new(
        CLIENT4,
        VIP4,
        L4::Raw {
            proto: PROTO_UDP,
            bytes: vec![9; 40],
        },
    );
    rest.fragment = Some((false, 9));
    let mut l3 = flow_key(&first);
    (l3.sport, l3.dport) = (0, 0);
    let want = predict(&v.meta, &v.ring, &l3).unwrap();
    let want = backend_addr(&mut h, want);
    for f in [&first, &rest] {
        assert_tunnelled(&h, f, want);
    }
    assert_eq!(h.dp.reason(Reason::Fragment).unwrap(), 2);
    assert_eq!(
        h.dp.reason(Reason::FlowNew).unwrap(),
        0,
        "fragments create no flows"
    );
    // The alias never matches unfragmented traffic to other ports.
    let other = Frame::udp(CLIENT4, 5353, VIP4, 54).bytes();
    assert_eq!(h.run(&other), (XDP_PASS, other.clone()));
}

#[test]
fn ipv6_fragments_share_a_backend() {
    let mut h = Harness::new();
    backends(&mut h);
    let v = maglev(&mut h, VIP6, 53, PROTO_UDP, &v6_set());
    h.dp.set_vip(
        &vip_key(VIP6, 0, PROTO_UDP),
        &lb_common::VipMeta {
            flags: VIP_F_FRAGMENTS_ONLY,
            ..v.meta
        },
    )
    .unwrap();
    let frag_hdr = |off: u16, more: bool| {
        let v = (off << 3) | more as u16;
        let b = v.to_be_bytes();
        vec![0, 0, b[0], b[1], 0, 0, 0, 42]
    };
    let mut first = Frame::udp(CLIENT6, 5353, VIP6, 53);
    first.ipv6_ext = vec![(44, frag_hdr(0, true))];
    let mut rest = Frame::new(
        CLIENT6,
        VIP6,
        L4::Raw {
            proto: PROTO_UDP,
            bytes: vec![1; 32],
        },
    );
    rest.ipv6_ext = vec![(44, frag_hdr(8, false))];
    let mut l3 = flow_key(&first);
    (l3.sport, l3.dport) = (0, 0);
    let want = predict(&v.meta, &v.ring, &l3).unwrap();
    let want = backend_addr(&mut h, want);
    for f in [&first, &rest] {
        let (action, out) = h.run(&f.bytes());
        assert_eq!(action, XDP_TX);
        assert_eq!(outer_dst(&out), want);
    }
}

#[test]
fn df_packet_too_big_for_the_tunnel_gets_icmp_frag_needed() {
    let (h, _) = setup(Scheduler::Maglev, Forward::IpIp);
    let mut f = Frame::tcp(CLIENT4, 40004, VIP4, 80, TCP_ACK);
    f.dont_fragment = true;
    f.payload = vec![0xab; 1500 - 40]; // a full 1500-byte IP packet: 1520 with the outer header
    let input = f.bytes();
    let (action, out) = h.run(&input);
    assert_eq!(action, XDP_TX);
    let c = check_frame(&out).unwrap(); // validates the ICMP checksum
    assert_eq!(c.dst_mac, CLIENT_MAC, "back to the client");
    assert_eq!(c.src_mac, LB_MAC);
    assert_eq!(c.outer_src, VIP4.parse::<IpAddr>().unwrap());
    assert_eq!(c.outer_dst, CLIENT4.parse::<IpAddr>().unwrap());
    assert_eq!(c.ip_proto, 1);
    let icmp = &c.ip_payload;
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1480,
        "MTU minus the 20-byte outer header"
    );
    assert_eq!(
        &icmp[8..8 + 64],
        &input[14..14 + 64],
        "quotes the offending packet"
    );
    assert_eq!(h.dp.reason(Reason::TxIcmpTooBig).unwrap(), 1);
    // Without DF it is forwarded as it is and counted.
    f.dont_fragment = false;
    let (action, out) = h.run(&f.bytes());
    assert_eq!(action, XDP_TX);
    assert_eq!(check_frame(&out).unwrap().ip_proto, 4);
    assert_eq!(h.dp.reason(Reason::OverMtuForwarded).unwrap(), 1);
}

#[test]
fn ipv6_too_big_gets_packet_too_big() {
    let mut h = Harness::new();
    backends(&mut h);
    maglev(&mut h, VIP6, 443, PROTO_TCP, &v6_set());
    let mut f = Frame::tcp(CLIENT6, 50002, VIP6, 443, TCP_ACK);
    f.payload = vec![0xcd; 1500 - 60];
    let input = f.bytes();
    let (action, out) = h.run(&input);
    assert_eq!(action, XDP_TX);
    let c = check_frame(&out).unwrap(); // validates the ICMPv6 checksum
    assert_eq!(c.ip_proto, 58);
    assert_eq!(c.outer_dst, CLIENT6.parse::<IpAddr>().unwrap());
    let icmp = &c.ip_payload;
    assert_eq!(icmp[0], 2, "packet too big");
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        1460
    );
    assert_eq!(&icmp[8..8 + 64], &input[14..14 + 64]);
}

/// A router between backend and client reports "fragmentation needed" to the VIP about the
/// backend's reply; the error must reach the backend that owns the flow.
#[test]
fn icmp_error_about_a_vip_flow_goes_to_its_backend() {
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    let flow = Frame::tcp(CLIENT4, 40005, VIP4, 80, TCP_SYN);
    let (_, out) = h.run(&flow.bytes());
    let owner = outer_dst(&out);
    assert_eq!(owner, predicted(&mut h, &v, &flow));
    // The backend's reply, VIP:80 -> client:40005, quoted in the error.
    let reply = Frame::tcp(VIP4, 80, CLIENT4, 40005, TCP_SYN | TCP_ACK).ip_packet();
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x00];
    icmp.extend_from_slice(&reply[..28]);
    let c = fold(inet_sum(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let err = Frame::new(
        "198.18.50.1",
        VIP4,
        L4::Raw {
            proto: 1,
            bytes: icmp,
        },
    );
    let mut err = err;
    err.payload = vec![];
    assert_tunnelled(&h, &err, owner);
    assert_eq!(h.dp.reason(Reason::IcmpErrorSteered).unwrap(), 1);
    // An echo request to the VIP address is the host's business.
    let mut echo = Frame::new(
        CLIENT4,
        VIP4,
        L4::Raw {
            proto: 1,
            bytes: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0],
        },
    );
    echo.payload = vec![];
    h.assert_passed(&echo.bytes(), Reason::PassIcmpLocal);
}

#[test]
fn icmpv6_error_about_a_vip_flow_goes_to_its_backend() {
    let mut h = Harness::new();
    backends(&mut h);
    let v = maglev(&mut h, VIP6, 443, PROTO_TCP, &v6_set());
    let flow = Frame::tcp(CLIENT6, 50003, VIP6, 443, TCP_SYN);
    let owner = predicted(&mut h, &v, &flow);
    let reply = Frame::tcp(VIP6, 443, CLIENT6, 50003, TCP_SYN | TCP_ACK).ip_packet();
    let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    icmp.extend_from_slice(&reply[..48]);
    let router: IpAddr = "2001:db8:50::1".parse().unwrap();
    let vip: IpAddr = VIP6.parse().unwrap();
    let mut sum = inet_sum(
        &match router {
            IpAddr::V6(a) => a.octets(),
            _ => unreachable!(),
        },
        0,
    );
    sum = inet_sum(
        &match vip {
            IpAddr::V6(a) => a.octets(),
            _ => unreachable!(),
        },
        sum,
    );
    sum += icmp.len() as u32 + 58;
    let c = fold(inet_sum(&icmp, sum));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut err = Frame::new(
        "2001:db8:50::1",
        VIP6,
        L4::Raw {
            proto: 58,
            bytes: icmp,
        },
    );
    err.payload = vec![];
    assert_tunnelled(&h, &err, owner);
}

#[test]
fn non_vip_traffic_passes_byte_identical() {
    let (h, _) = setup(Scheduler::Maglev, Forward::IpIp);
    let arp = {
        let mut a = vec![0xff; 6];
        a.extend_from_slice(&CLIENT_MAC);
        a.extend_from_slice(&[0x08, 0x06]);
        a.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        a.extend_from_slice(&[0; 20]);
        a
    };
    let cases = [
        (
            Frame::tcp(CLIENT4, 1, "198.18.100.2", 80, TCP_SYN).bytes(),
            Reason::PassNotVip,
        ),
        (
            Frame::tcp(CLIENT4, 1, VIP4, 81, TCP_SYN).bytes(),
            Reason::PassNotVip,
        ),
        (
            Frame::udp(CLIENT6, 1, "2001:db8::99", 53).bytes(),
            Reason::PassNotVip,
        ),
        // Tagged: not screened before parsing, judged on the full path.
        (
            {
                let mut f = Frame::tcp(CLIENT4, 1, "198.18.100.2", 80, TCP_SYN);
                f.vlans = vec![(0x8100, 100)];
                f.bytes()
            },
            Reason::PassNotVip,
        ),
        (arp, Reason::PassNotIp),
        // IPv4 cut inside its header (the kernel refuses frames under 14 bytes).
        (
            Frame::tcp(CLIENT4, 1, VIP4, 80, TCP_SYN).bytes()[..24].to_vec(),
            Reason::PassMalformed,
        ),
    ];
    for (input, reason) in cases {
        h.assert_passed(&input, reason);
    }
}

#[test]
fn lying_length_to_a_vip_is_dropped_and_counted() {
    let (h, _) = setup(Scheduler::Maglev, Forward::IpIp);
    let mut input = Frame::tcp(CLIENT4, 40006, VIP4, 80, TCP_SYN).bytes();
    input[16..18].copy_from_slice(&2000u16.to_be_bytes()); // total length past the frame
    assert_eq!(h.run(&input).0, XDP_DROP);
    assert_eq!(h.dp.reason(Reason::DropMalformed).unwrap(), 1);
}

#[test]
fn l2_dsr_rewrites_macs_only() {
    let (h, v) = setup(Scheduler::Maglev, Forward::L2Dsr);
    let f = Frame::tcp(CLIENT4, 40007, VIP4, 80, TCP_SYN);
    let input = f.bytes();
    let (action, out) = h.run(&input);
    assert_eq!(action, XDP_TX);
    let want = predict(&v.meta, &v.ring, &flow_key(&f)).unwrap();
    assert_eq!(&out[0..6], &be_mac(want), "to the backend's MAC");
    assert_eq!(&out[6..12], &LB_MAC, "from ours");
    assert_eq!(&out[12..], &input[12..], "nothing else changes");
    check_frame(&out).unwrap();
    assert_eq!(h.dp.reason(Reason::TxL2Dsr).unwrap(), 1);
}

/// Established flows keep their backend when the ring changes; a flow whose backend is
/// marked down is rescheduled.
#[test]
fn connection_table_pins_flows_until_their_backend_is_down() {
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    let flows: Vec<Frame> = (0..200u16)
        .map(|p| Frame::tcp(CLIENT4, 20000 + p, VIP4, 80, TCP_SYN))
        .collect();
    let before: Vec<IpAddr> = flows.iter().map(|f| handshake(&h, f)).collect();
    // Replace the ring by one where backend 3 owns every slot (a big reshuffle).
    let all3 = vec![3u32; v.ring.len()];
    h.dp.write_ring(v.meta.ring_offset, &all3).unwrap();
    for (f, b) in flows.iter().zip(&before) {
        assert_eq!(
            &outer_dst(&h.run(&ack(f).bytes()).1),
            b,
            "established flow moved"
        );
    }
    // Backend 1 fails: its flows go to the ring's choice (3); others stay.
    h.set_backend_flags(1, BACKEND_F_DOWN);
    let b1 = backend_addr(&mut h, 1);
    let b3 = backend_addr(&mut h, 3);
    let mut moved = 0;
    for (f, b) in flows.iter().zip(&before) {
        let now = outer_dst(&h.run(&ack(f).bytes()).1);
        if *b == b1 {
            assert_eq!(now, b3);
            moved += 1;
        } else {
            assert_eq!(now, *b);
        }
    }
    assert!(moved > 20, "backend 1 had only {moved} of 200 flows");
    assert_eq!(h.dp.reason(Reason::FlowRescheduled).unwrap(), moved);
}

/// Draining = out of the ring, not down: established flows stay, new flows avoid it.
#[test]
fn drained_backend_keeps_established_flows() {
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    let b2 = backend_addr(&mut h, 2);
    let established: Vec<Frame> = (0..300u16)
        .map(|p| Frame::tcp(CLIENT4, 10000 + p, VIP4, 80, TCP_SYN))
        .filter(|f| handshake(&h, f) == b2)
        .collect();
    assert!(!established.is_empty());
    let drained = lb_control::maglev(
        &[
            lb_control::RingMember {
                id: 1,
                identity: b"198.18.1.1".to_vec(),
                weight: 1,
            },
            lb_control::RingMember {
                id: 3,
                identity: b"198.18.1.3".to_vec(),
                weight: 1,
            },
        ],
        RING,
    )
    .unwrap();
    let written =
        h.dp.update_ring(v.meta.ring_offset, &v.ring, &drained)
            .unwrap();
    let owned_by_2 = v.ring.iter().filter(|&&s| s == 2).count();
    assert!(
        written >= owned_by_2 && written < owned_by_2 * 3 / 2,
        "wrote {written} slots for {owned_by_2} of backend 2"
    );
    for f in &established {
        assert_eq!(outer_dst(&h.run(&ack(f).bytes()).1), b2);
    }
    for p in 0..300u16 {
        let f = Frame::tcp(CLIENT4, 60000 + p, VIP4, 80, TCP_SYN);
        assert_ne!(
            outer_dst(&h.run(&f.bytes()).1),
            b2,
            "new flow to a draining backend"
        );
    }
}

#[test]
fn vip_without_backends_drops_or_passes_as_configured() {
    let mut h = Harness::new();
    backends(&mut h);
    h.vip(
        vip_key(VIP4, 80, PROTO_TCP),
        Scheduler::Maglev,
        Forward::IpIp,
        0,
        &[],
    );
    h.vip(
        vip_key(VIP4, 8080, PROTO_TCP),
        Scheduler::Maglev,
        Forward::IpIp,
        VIP_F_NO_BACKEND_PASS,
        &[],
    );
    let a = Frame::tcp(CLIENT4, 1000, VIP4, 80, TCP_SYN).bytes();
    let b = Frame::tcp(CLIENT4, 1000, VIP4, 8080, TCP_SYN).bytes();
    assert_eq!(h.run(&a).0, XDP_DROP);
    assert_eq!(h.run(&b), (XDP_PASS, b.clone()));
    assert_eq!(h.dp.reason(Reason::DropNoBackend).unwrap(), 1);
    assert_eq!(h.dp.reason(Reason::PassNoBackend).unwrap(), 1);
}

#[test]
fn all_port_vip_matches_any_port() {
    let mut h = Harness::new();
    backends(&mut h);
    let v = maglev(&mut h, VIP4, 0, PROTO_TCP, &v4_set());
    for port in [1u16, 80, 443, 65535] {
        let f = Frame::tcp(CLIENT4, 3333, VIP4, port, TCP_SYN);
        let (action, out) = h.run(&f.bytes());
        assert_eq!(action, XDP_TX);
        assert_eq!(outer_dst(&out), predicted(&mut h, &v, &f));
    }
}

fn pin_to_cpu0() {
    // SAFETY: plain syscall on this thread's affinity mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn round_robin_follows_the_weighted_sequence() {
    pin_to_cpu0(); // the cursor is per CPU
    let mut h = Harness::new();
    backends(&mut h);
    let v = h.vip(
        vip_key(VIP4, 80, PROTO_TCP),
        Scheduler::RoundRobin,
        Forward::IpIp,
        0,
        &[
            (1, "198.18.1.1", 5),
            (2, "198.18.1.2", 1),
            (3, "198.18.1.3", 1),
        ],
    );
    assert_eq!(v.ring, vec![1, 1, 2, 1, 3, 1, 1]);
    let got: Vec<IpAddr> = (0..14u16)
        .map(|p| {
            outer_dst(
                &h.run(&Frame::tcp(CLIENT4, 7000 + p, VIP4, 80, TCP_SYN).bytes())
                    .1,
            )
        })
        .collect();
    let want: Vec<IpAddr> = v
        .ring
        .iter()
        .chain(&v.ring)
        .map(|id| backend_addr(&mut h, *id))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn random_spreads_new_flows() {
    let (mut h, _) = setup(Scheduler::Random, Forward::IpIp);
    let mut counts = std::collections::HashMap::new();
    for p in 0..3000u16 {
        *counts
            .entry(outer_dst(
                &h.run(&Frame::tcp(CLIENT4, 1 + p, VIP4, 80, TCP_SYN).bytes())
                    .1,
            ))
            .or_insert(0) += 1;
    }
    for id in 1..=3 {
        let n = counts.get(&backend_addr(&mut h, id)).copied().unwrap_or(0);
        assert!((800..1200).contains(&n), "backend {id}: {n} of 3000");
    }
}

#[test]
fn least_connections_balances_open_flows_and_counts_closes() {
    let (mut h, v) = setup(Scheduler::LeastConn, Forward::IpIp);
    let flows: Vec<Frame> = (0..600u16)
        .map(|p| Frame::tcp(CLIENT4, 1 + p, VIP4, 80, TCP_SYN))
        .collect();
    let mut counts = std::collections::HashMap::new();
    for f in &flows {
        *counts
            .entry(outer_dst(&h.run(&f.bytes()).1))
            .or_insert(0u64) += 1;
    }
    let conns: Vec<u64> = (1..=3).map(|id| h.dp.connections(id).unwrap()).collect();
    assert_eq!(conns.iter().sum::<u64>(), 600);
    let (min, max) = (conns.iter().min().unwrap(), conns.iter().max().unwrap());
    assert!(max - min <= 15, "power of two choices left {conns:?}");
    // Closing 100 flows (FIN, twice: the retransmission must not count again).
    for f in flows.iter().take(100) {
        let mut fin = f.clone();
        fin.l4 = match fin.l4 {
            L4::Tcp { sport, dport, .. } => L4::Tcp {
                sport,
                dport,
                flags: TCP_FIN | TCP_ACK,
            },
            other => other,
        };
        h.run(&fin.bytes());
        h.run(&fin.bytes());
    }
    let after: u64 = (1..=3).map(|id| h.dp.connections(id).unwrap()).sum();
    assert_eq!(after, 500);
    // Backend 1 fails (and leaves the ring): its open flows move and are counted on their
    // new backends, taken off backend 1 once however many packets follow.
    let on_1 = h.dp.connections(1).unwrap();
    assert!(on_1 > 0);
    let without_1: Vec<u32> = v
        .ring
        .iter()
        .map(|&id| if id == 1 { 2 } else { id })
        .collect();
    h.dp.write_ring(v.meta.ring_offset, &without_1).unwrap();
    h.set_backend_flags(1, BACKEND_F_DOWN);
    for f in flows.iter().skip(100) {
        h.run(&ack(f).bytes());
        h.run(&ack(f).bytes());
    }
    assert_eq!(h.dp.connections(1).unwrap(), 0);
    let open: u64 = (2..=3).map(|id| h.dp.connections(id).unwrap()).sum();
    assert_eq!(open, 500);
    assert_eq!(h.dp.reason(Reason::FlowRescheduled).unwrap(), on_1);
}

#[test]
fn source_hash_keeps_a_client_on_one_backend() {
    let (mut h, v) = setup(Scheduler::SourceHash, Forward::IpIp);
    for client in ["198.18.0.1", "198.18.0.2", "198.18.7.9"] {
        let f0 = Frame::tcp(client, 1, VIP4, 80, TCP_SYN);
        let want = predicted(&mut h, &v, &f0);
        for p in 0..50u16 {
            let f = Frame::tcp(client, 1000 + p, VIP4, 80, TCP_SYN);
            assert_eq!(outer_dst(&h.run(&f.bytes()).1), want);
        }
    }
}

#[test]
fn per_backend_counters_move() {
    let (mut h, _) = setup(Scheduler::Maglev, Forward::IpIp);
    let mut sent = std::collections::HashMap::new();
    for p in 0..90u16 {
        let f = Frame::tcp(CLIENT4, 2000 + p, VIP4, 80, TCP_SYN);
        let input = f.bytes();
        let dst = outer_dst(&h.run(&input).1);
        let e = sent.entry(dst).or_insert((0u64, 0u64));
        e.0 += 1;
        e.1 += input.len() as u64;
    }
    for id in 1..=3 {
        let s = h.dp.backend_stats(id).unwrap();
        let want = sent
            .get(&backend_addr(&mut h, id))
            .copied()
            .unwrap_or((0, 0));
        assert_eq!((s.packets, s.bytes), want, "backend {id}");
    }
}

/// A client reusing an old connection's ports opens a new connection with a SYN: it is
/// placed by the current ring, not pinned to the old connection's backend.
#[test]
fn a_new_syn_on_an_old_flow_follows_the_current_ring() {
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    let f = Frame::tcp(CLIENT4, 41000, VIP4, 80, TCP_SYN);
    let first = handshake(&h, &f);
    let other = (1..=3)
        .map(|id| backend_addr(&mut h, id))
        .find(|a| *a != first)
        .unwrap();
    let other_id = (1..=3)
        .find(|id| backend_addr(&mut h, *id) == other)
        .unwrap();
    h.dp.write_ring(v.meta.ring_offset, &vec![other_id; v.ring.len()])
        .unwrap();
    assert_eq!(
        outer_dst(&h.run(&ack(&f).bytes()).1),
        first,
        "established flow pinned"
    );
    assert_eq!(
        outer_dst(&h.run(&f.bytes()).1),
        other,
        "new SYN placed by the ring"
    );
    assert_eq!(
        outer_dst(&h.run(&ack(&f).bytes()).1),
        other,
        "and remembered"
    );
    assert_eq!(h.dp.reason(Reason::FlowRescheduled).unwrap(), 0);
}

/// With the FIB on and no route answer (a fresh namespace: forwarding off, so
/// bpf_fib_lookup declines), the configured gateway MAC is the next hop; without one the
/// packet is dropped and counted, never sent to a wrong MAC.
#[test]
fn without_a_fib_answer_the_gateway_mac_is_used_or_the_packet_dropped() {
    let ns = lb_tests::netns::Netns::new(lb_tests::netns::Netns::group(), "fib");
    let (mut h, _) = setup(Scheduler::Maglev, Forward::IpIp);
    h.set_config(|c| c.flags = 0);
    let f = Frame::tcp(CLIENT4, 40100, VIP4, 80, TCP_SYN);
    let input = f.bytes();
    let (h, with_gateway, without) = ns.enter(move || {
        let with_gateway = h.run(&input);
        h.set_config(|c| {
            c.flags = 0;
            c.gateway_mac = [0; 6];
        });
        let without = h.run(&input);
        (h, with_gateway, without)
    });
    assert_eq!(with_gateway.0, XDP_TX);
    assert_eq!(check_frame(&with_gateway.1).unwrap().dst_mac, GATEWAY_MAC);
    assert_eq!(without.0, XDP_DROP);
    assert_eq!(h.dp.reason(Reason::FibFallback).unwrap(), 1);
    assert_eq!(h.dp.reason(Reason::DropNoNexthop).unwrap(), 1);
}

/// Writes `LB_NEW_RATE` (new connection-table entries per second and burst, per CPU), found
/// through the program's maps as an operator's `bpftool map update name LB_NEW_RATE` would.
fn set_new_rate(h: &Harness, per_sec: u64, burst: u64) {
    set_rate(
        h,
        (lb_common::NEW_RATE_PER_SEC, per_sec),
        (lb_common::NEW_RATE_BURST, burst),
    );
}

/// Writes two slots of `LB_NEW_RATE`: (index, value) each.
fn set_rate(h: &Harness, a: (usize, u64), b: (usize, u64)) {
    use aya::maps::{Array, Map, MapData, MapInfo};
    let ids = h.dp.program().unwrap().info().unwrap().map_ids().unwrap();
    let id = ids
        .unwrap()
        .into_iter()
        .find(|id| MapInfo::from_id(*id).unwrap().name_as_str() == Some(lb_common::MAP_NEW_RATE))
        .expect("LB_NEW_RATE among the program's maps");
    let mut rate: Array<MapData, u64> =
        Array::try_from(Map::Array(MapData::from_id(id).unwrap())).unwrap();
    rate.set(a.0 as u32, a.1, 0).unwrap();
    rate.set(b.0 as u32, b.1, 0).unwrap();
}

/// A never-seen flow from a spoofed source: address and port from `i`.
fn spoofed(i: u32, flags: u8) -> Frame {
    let src = format!("198.19.{}.{}", (i >> 8) & 0xff, i & 0xff);
    Frame::tcp(&src, 1024 + (i >> 16) as u16, VIP4, 80, flags)
}

/// The flow-hash choice on a VIP's ring (what round robin, random and least connections
/// fall back to when they cannot remember).
fn by_hash(h: &mut Harness, v: &TestVip, f: &Frame) -> IpAddr {
    let hash = lb_common::flow_hash(&flow_key(f));
    backend_addr(h, v.ring[(hash % v.ring.len() as u32) as usize])
}

/// A spoofed SYN flood on a Maglev VIP goes by the ring and never writes the connection
/// table: in a table far smaller than the flood, established flows are neither evicted nor
/// moved, and every flood SYN is counted as `syn_stateless`.
#[test]
fn a_syn_flood_neither_writes_nor_evicts_the_connection_table() {
    pin_to_cpu0(); // LRU lists are per CPU
    let dp = lb_dataplane::Dataplane::load(
        lb_dataplane::LoadOptions {
            flows: 1024,
            ring_capacity: 8 * RING,
        },
        None,
    )
    .unwrap();
    let mut h = Harness::with(dp, |_| {});
    backends(&mut h);
    let v = maglev(&mut h, VIP4, 80, PROTO_TCP, &v4_set());
    let flows: Vec<Frame> = (0..100u16)
        .map(|p| Frame::tcp(CLIENT4, 20000 + p, VIP4, 80, TCP_SYN))
        .collect();
    let before: Vec<IpAddr> = flows.iter().map(|f| handshake(&h, f)).collect();
    let new = h.dp.reason(Reason::FlowNew).unwrap();
    let stateless = h.dp.reason(Reason::SynStateless).unwrap();
    const FLOOD: u32 = 20_000;
    for i in 0..FLOOD {
        let f = spoofed(i, TCP_SYN);
        if i % 1000 == 0 {
            // Still placed by the ring.
            assert_eq!(outer_dst(&h.run(&f.bytes()).1), predicted(&mut h, &v, &f));
        } else {
            assert_eq!(h.run(&f.bytes()).0, XDP_TX);
        }
    }
    assert_eq!(
        h.dp.reason(Reason::SynStateless).unwrap(),
        stateless + FLOOD as u64
    );
    assert_eq!(
        h.dp.reason(Reason::FlowNew).unwrap(),
        new,
        "the flood wrote"
    );
    // A new ring where backend 3 owns every slot: a flow that lost its entry would move.
    h.dp.write_ring(v.meta.ring_offset, &vec![3u32; v.ring.len()])
        .unwrap();
    let hits = h.dp.reason(Reason::FlowHit).unwrap();
    for (f, b) in flows.iter().zip(&before) {
        assert_eq!(&outer_dst(&h.run(&ack(f).bytes()).1), b, "flow moved");
    }
    assert_eq!(h.dp.reason(Reason::FlowHit).unwrap(), hits + 100);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), new);
}

/// Above the new-entry rate a never-seen flow is forwarded by the ring and not remembered
/// (`flow_over_rate`); below it, it is remembered. What that costs: a ring change moves the
/// flows that were not remembered.
#[test]
fn new_entries_above_the_rate_are_forwarded_but_not_remembered() {
    pin_to_cpu0(); // the bucket is per CPU
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    set_new_rate(&h, 1, 3);
    // An ACK flood of never-seen flows: three fit the burst.
    let flows: Vec<Frame> = (0..10).map(|i| spoofed(i, TCP_ACK)).collect();
    let before: Vec<IpAddr> = flows
        .iter()
        .map(|f| {
            let to = outer_dst(&h.run(&f.bytes()).1);
            assert_eq!(to, predicted(&mut h, &v, f));
            to
        })
        .collect();
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 3);
    assert_eq!(h.dp.reason(Reason::FlowOverRate).unwrap(), 7);
    // A SYN never takes a token on a Maglev VIP.
    h.run(&spoofed(100, TCP_SYN).bytes());
    assert_eq!(h.dp.reason(Reason::SynStateless).unwrap(), 1);
    assert_eq!(h.dp.reason(Reason::FlowOverRate).unwrap(), 7);
    let b3 = backend_addr(&mut h, 3);
    h.dp.write_ring(v.meta.ring_offset, &vec![3u32; v.ring.len()])
        .unwrap();
    let now: Vec<IpAddr> = flows
        .iter()
        .map(|f| outer_dst(&h.run(&f.bytes()).1))
        .collect();
    assert_eq!(now[..3], before[..3], "remembered flows stay");
    assert!(
        now[3..].iter().all(|a| *a == b3),
        "unremembered follow the ring"
    );
    assert_eq!(h.dp.reason(Reason::FlowHit).unwrap(), 3);
    assert_eq!(h.dp.reason(Reason::FlowOverRate).unwrap(), 14);
}

/// A round-robin VIP `key` over three equal IPv4 backends, IP-in-IP.
fn round_robin_of_three(key: VipKey) -> (Harness, TestVip) {
    let mut h = Harness::new();
    backends(&mut h);
    let v = h.vip(
        key,
        Scheduler::RoundRobin,
        Forward::IpIp,
        0,
        &[
            (1, "198.18.1.1", 1),
            (2, "198.18.1.2", 1),
            (3, "198.18.1.3", 1),
        ],
    );
    (h, v)
}

/// Round robin cannot compute its choice again: a SYN within the rate is remembered with
/// the scheduler's choice; above it, the SYN and every later packet of its flow (until one
/// is remembered) are placed alike, by the flow hash on the VIP's weighted ring.
#[test]
fn round_robin_over_the_rate_places_the_handshake_by_hash() {
    pin_to_cpu0(); // cursor and bucket are per CPU
    let (mut h, v) = round_robin_of_three(vip_key(VIP4, 80, PROTO_TCP));
    set_new_rate(&h, 1, 1);
    // Within the rate: the round-robin choice, remembered at the SYN.
    let first = spoofed(0, TCP_SYN);
    let rr = outer_dst(&h.run(&first.bytes()).1);
    assert_eq!(rr, backend_addr(&mut h, v.ring[0]));
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 1);
    assert_eq!(outer_dst(&h.run(&ack(&first).bytes()).1), rr);
    assert_eq!(h.dp.reason(Reason::FlowHit).unwrap(), 1);
    // Over the rate: SYN and ACK land together, by hash, on backends of every kind.
    let mut seen = std::collections::HashSet::new();
    for i in 1..=30 {
        let syn = spoofed(i, TCP_SYN);
        let want = by_hash(&mut h, &v, &syn);
        assert_eq!(outer_dst(&h.run(&syn.bytes()).1), want, "SYN {i}");
        assert_eq!(outer_dst(&h.run(&ack(&syn).bytes()).1), want, "ACK {i}");
        seen.insert(want);
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 1);
    assert_eq!(h.dp.reason(Reason::FlowOverRate).unwrap(), 60);
    // The rate back up: the next packet of such a flow is remembered where it already was.
    set_new_rate(&h, 1_000_000_000, 1_000_000);
    let syn = spoofed(7, TCP_SYN);
    let want = by_hash(&mut h, &v, &syn);
    assert_eq!(outer_dst(&h.run(&ack(&syn).bytes()).1), want);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 2);
    h.dp.write_ring(v.meta.ring_offset, &vec![3u32; v.ring.len()])
        .unwrap();
    assert_eq!(outer_dst(&h.run(&ack(&syn).bytes()).1), want);
    assert_eq!(outer_dst(&h.run(&ack(&first).bytes()).1), rr);
}

/// UDP on a round-robin VIP: within the rate a flow's first datagram is remembered with the
/// scheduler's choice; above it (a UDP flood, which would otherwise evict every VIP's flows)
/// every datagram is placed by the flow hash on the weighted ring and nothing is written;
/// for a second after the last refusal, new flows are remembered where the hash puts them,
/// so that a flow which began over the rate does not move; then round robin again.
#[test]
fn udp_on_round_robin_over_the_rate_is_placed_by_hash_and_not_remembered() {
    pin_to_cpu0(); // cursor and bucket are per CPU
    let (mut h, v) = round_robin_of_three(vip_key(VIP4, 53, PROTO_UDP));
    let datagram = |i: u32| {
        let src = format!("198.19.{}.{}", (i >> 8) & 0xff, i & 0xff);
        Frame::udp(&src, 1024 + i as u16, VIP4, 53)
    };
    set_new_rate(&h, 1, 1);
    // Within the rate: the round-robin choice, remembered at the first datagram.
    let first = datagram(0);
    let rr = outer_dst(&h.run(&first.bytes()).1);
    assert_eq!(rr, backend_addr(&mut h, v.ring[0]));
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 1);
    // Over the rate: every datagram of a flow lands alike, by hash, on backends of every
    // kind, and none is remembered.
    let mut seen = std::collections::HashSet::new();
    for i in 1..=30 {
        let d = datagram(i);
        let want = by_hash(&mut h, &v, &d);
        assert_eq!(outer_dst(&h.run(&d.bytes()).1), want, "datagram {i}");
        assert_eq!(outer_dst(&h.run(&d.bytes()).1), want, "datagram {i} again");
        seen.insert(want);
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 1);
    assert_eq!(h.dp.reason(Reason::FlowOverRate).unwrap(), 60);
    // Passive detection's counts: only the remembered flow asked; the datagrams over the
    // rate, never remembered, ask nothing (their second datagram could never answer).
    let asks: u64 = (1..=3).map(|id| h.dp.backend_flows(id).unwrap().syns).sum();
    assert_eq!(asks, 1);
    // The rate back up, within a second of the last refusal: a flow that began over the
    // rate is remembered where it already was, and stays there through a ring change.
    // Flows whose hash placement differs from what round robin would choose next, so that
    // the test tells the two apart.
    let next_rr = backend_addr(&mut h, v.ring[1]);
    let unlike_rr = |h: &mut Harness, from: u32| {
        (from..from + 100)
            .map(datagram)
            .find(|d| by_hash(h, &v, d) != next_rr)
            .unwrap()
    };
    set_new_rate(&h, 1_000_000_000, 1_000_000);
    let d = unlike_rr(&mut h, 1);
    let want = by_hash(&mut h, &v, &d);
    assert_eq!(outer_dst(&h.run(&d.bytes()).1), want);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 2);
    // A second after the last refusal: round robin again, from where its cursor stood.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let later = unlike_rr(&mut h, 1000);
    assert_eq!(outer_dst(&h.run(&later.bytes()).1), next_rr);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), 3);
    h.dp.write_ring(v.meta.ring_offset, &vec![3u32; v.ring.len()])
        .unwrap();
    assert_eq!(outer_dst(&h.run(&d.bytes()).1), want);
    assert_eq!(outer_dst(&h.run(&first.bytes()).1), rr);
    assert_eq!(h.dp.reason(Reason::FlowOverRate).unwrap(), 60);
}

/// Above the SYN-lookup rate (a SYN flood), a bare SYN does not read the table: it is placed
/// by the ring. What that costs, shown: a new connection that reuses an old one's 4-tuple
/// after the ring changed gets its SYN to the ring's backend while its ACK still follows
/// the old entry. Below the rate the SYN re-places the entry (the test above).
#[test]
fn above_the_syn_lookup_rate_a_syn_is_placed_without_the_table() {
    pin_to_cpu0(); // the bucket is per CPU
    let (mut h, v) = setup(Scheduler::Maglev, Forward::IpIp);
    set_rate(
        &h,
        (lb_common::SYN_LOOKUP_PER_SEC, 1),
        (lb_common::SYN_LOOKUP_BURST, 1),
    );
    let f = Frame::tcp(CLIENT4, 41000, VIP4, 80, TCP_SYN);
    // The handshake's SYN takes the only token (a miss); its ACK creates the entry.
    let first = handshake(&h, &f);
    let other_id = (1..=3)
        .find(|id| backend_addr(&mut h, *id) != first)
        .unwrap();
    let other = backend_addr(&mut h, other_id);
    h.dp.write_ring(v.meta.ring_offset, &vec![other_id; v.ring.len()])
        .unwrap();
    let (new, stateless) = (
        h.dp.reason(Reason::FlowNew).unwrap(),
        h.dp.reason(Reason::SynStateless).unwrap(),
    );
    assert_eq!(outer_dst(&h.run(&f.bytes()).1), other, "SYN by the ring");
    assert_eq!(
        h.dp.reason(Reason::SynStateless).unwrap(),
        stateless + 1,
        "counted as a SYN the table does not hold"
    );
    assert_eq!(
        h.dp.reason(Reason::FlowNew).unwrap(),
        new,
        "entry untouched"
    );
    assert_eq!(
        outer_dst(&h.run(&ack(&f).bytes()).1),
        first,
        "the ACK follows the old entry"
    );
    // With the rate lifted the SYN reads the table again and re-places the flow, once the
    // empty bucket has looked at the clock (it does so every 64th refusal).
    set_rate(
        &h,
        (lb_common::SYN_LOOKUP_PER_SEC, 1_000_000_000),
        (lb_common::SYN_LOOKUP_BURST, 1_000_000),
    );
    for i in 0..64 {
        assert_eq!(h.run(&spoofed(i, TCP_SYN).bytes()).0, XDP_TX);
    }
    assert_eq!(outer_dst(&h.run(&f.bytes()).1), other);
    assert_eq!(h.dp.reason(Reason::FlowNew).unwrap(), new + 1);
    assert_eq!(outer_dst(&h.run(&ack(&f).bytes()).1), other);
}

/// (SYNs, handshakes) over backends 1 to 3: `LB_BE_FLOWS`, summed over CPUs.
fn flows_total(h: &Harness) -> (u64, u64) {
    (1..=3).fold((0, 0), |(s, k), id| {
        let b = h.dp.backend_flows(id).unwrap();
        (s + b.syns, k + b.handshakes)
    })
}

/// Passive detection's counters: a bare SYN counts a SYN for its backend, the client's next
/// packet a handshake, once per flow, whichever the scheduler (Maglev remembers the flow at
/// that packet, round robin at the SYN); later packets, retransmitted SYNs and a RST
/// instead of the handshake's ACK count none.
#[test]
fn syns_and_handshakes_are_counted_per_backend() {
    for scheduler in [Scheduler::Maglev, Scheduler::RoundRobin] {
        let (mut h, _) = setup(scheduler, Forward::IpIp);
        let syn = Frame::tcp(CLIENT4, 41000, VIP4, 80, TCP_SYN);
        let to = outer_dst(&h.run(&syn.bytes()).1);
        let id = (1..=3).find(|id| backend_addr(&mut h, *id) == to).unwrap();
        let at = |h: &Harness| {
            let b = h.dp.backend_flows(id).unwrap();
            (b.syns, b.handshakes)
        };
        assert_eq!(at(&h), (1, 0), "{scheduler:?}: the SYN");
        assert_eq!(outer_dst(&h.run(&ack(&syn).bytes()).1), to);
        assert_eq!(at(&h), (1, 1), "{scheduler:?}: the handshake's ACK");
        h.run(&ack(&syn).bytes());
        assert_eq!(at(&h), (1, 1), "{scheduler:?}: data is no second handshake");
        assert_eq!(
            flows_total(&h),
            (1, 1),
            "{scheduler:?}: only its backend counts"
        );
        // A SYN that is never answered: retransmitted, then given up (RST).
        let lost = Frame::tcp(CLIENT4, 41001, VIP4, 80, TCP_SYN);
        h.run(&lost.bytes());
        h.run(&lost.bytes());
        let mut rst = lost.clone();
        if let L4::Tcp { sport, dport, .. } = rst.l4 {
            rst.l4 = L4::Tcp {
                sport,
                dport,
                flags: TCP_RST | TCP_ACK,
            };
        }
        h.run(&rst.bytes());
        assert_eq!(
            flows_total(&h),
            (3, 1),
            "{scheduler:?}: two SYNs, no handshake"
        );
    }
}

/// UDP, where a flow has a second datagram: its first asks, its second answers (the
/// backend kept the client talking), later ones count nothing; a flow of one datagram
/// (a DNS query) only asks.
#[test]
fn udp_flows_ask_with_their_first_datagram_and_answer_with_their_second() {
    for scheduler in [Scheduler::Maglev, Scheduler::RoundRobin] {
        let mut h = Harness::new();
        backends(&mut h);
        h.vip(
            vip_key(VIP4, 53, PROTO_UDP),
            scheduler,
            Forward::IpIp,
            0,
            &v4_set(),
        );
        let f = Frame::udp(CLIENT4, 5353, VIP4, 53);
        let to = outer_dst(&h.run(&f.bytes()).1);
        assert_eq!(
            flows_total(&h),
            (1, 0),
            "{scheduler:?}: the first datagram asks"
        );
        assert_eq!(outer_dst(&h.run(&f.bytes()).1), to);
        assert_eq!(flows_total(&h), (1, 1), "{scheduler:?}: the second answers");
        h.run(&f.bytes());
        assert_eq!(
            flows_total(&h),
            (1, 1),
            "{scheduler:?}: the third counts nothing"
        );
        h.run(&Frame::udp(CLIENT4, 5354, VIP4, 53).bytes());
        assert_eq!(
            flows_total(&h),
            (2, 1),
            "{scheduler:?}: a one-datagram flow only asks"
        );
    }
}
