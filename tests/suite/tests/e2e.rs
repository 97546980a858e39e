//! End to end in network namespaces: a client, the balancer attached in native XDP mode on
//! a veth, and three backends running real TCP and UDP servers. Requests to the VIPs are
//! answered, and the answers go straight from the backends to the client.

use lb_common::{Forward, PROTO_TCP, PROTO_UDP, Reason, Scheduler};
use lb_tests::{
    harness::vip_key,
    topology::{Topology, VIP4, VIP6},
};

const N: u32 = 40;
const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");

fn weighted(set: &[(u32, String)]) -> Vec<(u32, &str, u32)> {
    set.iter().map(|(id, a)| (*id, a.as_str(), 1)).collect()
}

/// Backends 1..=3 by IPv4 address, 11..=13 by IPv6 address; VIPs on both families.
fn vips(t: &mut Topology, forward: Forward) {
    let v4: Vec<(u32, String)> = t
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u32 + 1, b.v4.clone()))
        .collect();
    let v6: Vec<(u32, String)> = t
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u32 + 11, b.v6.clone()))
        .collect();
    let macs: Vec<[u8; 6]> = t.backends.iter().map(|b| b.mac).collect();
    for (i, mac) in macs.iter().enumerate() {
        t.lb().backend(v4[i].0, &v4[i].1, *mac);
        t.lb().backend(v6[i].0, &v6[i].1, *mac);
    }
    for (addr, proto, port, set) in [
        (VIP4, PROTO_TCP, 80, weighted(&v4)),
        (VIP4, PROTO_UDP, 53, weighted(&v4)),
        (VIP6, PROTO_TCP, 80, weighted(&v6)),
        (VIP6, PROTO_UDP, 53, weighted(&v6)),
    ] {
        t.lb().vip(
            vip_key(addr, port, proto),
            Scheduler::Maglev,
            forward,
            0,
            &set,
        );
    }
    if forward == Forward::IpIp {
        // IPv4 VIP served by IPv6 backends: IPv4-in-IPv6.
        t.lb().vip(
            vip_key(VIP4, 8080, PROTO_TCP),
            Scheduler::Maglev,
            forward,
            0,
            &weighted(&v6),
        );
    }
}

fn assert_served(t: &Topology, kind: &str, addr: &str) {
    let (seen, failed) = t.requests(kind, addr, N);
    println!("{kind} {addr}: {seen:?}, failed {failed}");
    assert_eq!(failed, 0, "{kind} {addr}: {failed} of {N} requests failed");
    assert_eq!(seen.values().sum::<u32>(), N);
    assert!(seen.len() >= 2, "{kind} {addr}: only {seen:?} answered");
}

/// TCP and UDP VIPs over IPv4 and IPv6.
fn assert_both_families_served(t: &Topology) {
    assert_served(t, "--tcp", &format!("{VIP4}:80"));
    assert_served(t, "--udp", &format!("{VIP4}:53"));
    assert_served(t, "--tcp", &format!("[{VIP6}]:80"));
    assert_served(t, "--udp", &format!("[{VIP6}]:53"));
}

#[test]
fn ip_in_ip_with_decap_on_backends() {
    let mut t = Topology::with_balancer(3, Forward::IpIp, ECHO);
    vips(&mut t, Forward::IpIp);
    assert_both_families_served(&t);
    assert_served(&t, "--tcp", &format!("{VIP4}:8080"));
    let decapsulated: u64 = (0..3).map(|i| t.decapsulated(i)).sum();
    let sent = t.lb().dp.reason(Reason::TxIpip).unwrap();
    assert!(sent >= (5 * N * 2) as u64, "tx_ipip {sent}");
    assert_eq!(
        decapsulated, sent,
        "every tunnelled packet was stripped by a backend"
    );
    assert_eq!(
        t.lb().dp.reason(Reason::FibFallback).unwrap(),
        0,
        "next hops came from the FIB"
    );
    // Direct server return: no reply reached the balancer.
    assert_eq!(
        t.replies_through_lb(),
        0,
        "replies went through the balancer"
    );
}

#[test]
fn l2_dsr_with_vip_on_loopback() {
    let mut t = Topology::with_balancer(3, Forward::L2Dsr, ECHO);
    vips(&mut t, Forward::L2Dsr);
    assert_both_families_served(&t);
    assert!(t.lb().dp.reason(Reason::TxL2Dsr).unwrap() >= (4 * N * 2) as u64);
    assert_eq!(
        t.replies_through_lb(),
        0,
        "replies went through the balancer"
    );
}
