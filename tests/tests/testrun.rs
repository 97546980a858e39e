//! The real XDP program in the kernel, through BPF_PROG_TEST_RUN: exact output bytes for
//! every packet shape the dataplane handles.

use lb_common::{Forward, PROTO_TCP, Reason, Scheduler};
use lb_tests::{harness::*, packets::*};

fn basic() -> (Harness, TestVip) {
    let mut h = Harness::new();
    for (id, ip) in [(1, "198.18.1.1"), (2, "198.18.1.2"), (3, "198.18.1.3")] {
        h.backend(id, ip, [0x02, 0, 0, 0, 1, id as u8]);
    }
    let v = h.vip(
        vip_key("198.18.100.1", 80, PROTO_TCP),
        Scheduler::Maglev,
        Forward::IpIp,
        0,
        &[(1, "198.18.1.1", 1), (2, "198.18.1.2", 1), (3, "198.18.1.3", 1)],
    );
    (h, v)
}

#[test]
fn ipv4_tcp_is_encapsulated_to_its_backend() {
    let (h, v) = basic();
    let f = Frame::tcp("198.18.0.1", 40000, "198.18.100.1", 80, TCP_SYN);
    let input = f.bytes();
    let (action, out) = h.run(&input);
    assert_eq!(action, XDP_TX);
    let c = check_frame(&out).unwrap();
    assert_eq!(c.dst_mac, GATEWAY_MAC);
    assert_eq!(c.src_mac, LB_MAC);
    assert_eq!(c.ip_proto, 4);
    // Inner packet is byte-identical to what the client sent.
    assert_eq!(c.ip_payload, f.ip_packet());
    check_ip(&c.ip_payload).unwrap();
    assert_eq!(out.len(), input.len() + 20);
    assert_eq!(h.dp.reason(Reason::TxIpip).unwrap(), 1);
    let _ = v;
}
