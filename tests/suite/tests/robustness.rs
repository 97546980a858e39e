//! Robustness: 1,000,000 random and mutated frames through the kernel program. Never
//! XDP_ABORTED, every packet's fate counted exactly once, and anything passed to the kernel
//! leaves byte for byte as it came.

use lb_common::{Forward, PROTO_TCP, PROTO_UDP, Reason, Scheduler, VIP_F_FRAGMENTS_ONLY, VipMeta};
use lb_tests::{harness::*, packets::*};
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};

const PACKETS: u32 = 1_000_000;

fn templates() -> Vec<Vec<u8>> {
    let mut t = Vec::new();
    let vip4 = "198.18.100.1";
    let vip6 = "2001:db8:100::1";
    for (src, dst) in [
        ("198.18.0.1", vip4),
        ("198.18.0.1", "198.18.9.9"),
        ("2001:db8::1", vip6),
        ("2001:db8::1", "2001:db8::9"),
    ] {
        for l4 in [
            L4::Tcp {
                sport: 1234,
                dport: 80,
                flags: TCP_SYN,
            },
            L4::Udp {
                sport: 1234,
                dport: 53,
            },
        ] {
            let mut f = Frame::new(src, dst, l4);
            t.push(f.bytes());
            f.vlans = vec![(0x8100, 10)];
            t.push(f.bytes());
            f.vlans = vec![(0x88a8, 10), (0x8100, 20)];
            t.push(f.bytes());
            f.vlans = vec![];
            if src.contains(':') {
                f.ipv6_ext = vec![
                    (0, vec![0, 0, 1, 4, 0, 0, 0, 0]),
                    (44, vec![0, 0, 0, 1, 0, 0, 0, 7]),
                ];
            } else {
                f.ipv4_options = vec![1, 1, 1, 0];
                f.fragment = Some((true, 0));
            }
            t.push(f.bytes());
            f.payload = vec![0x55; 1480];
            f.dont_fragment = true;
            t.push(f.bytes());
        }
    }
    // ICMP errors quoting a VIP flow, and ARP.
    let reply = Frame::tcp(vip4, 80, "198.18.0.1", 1234, TCP_ACK).ip_packet();
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 5, 0];
    icmp.extend_from_slice(&reply[..28]);
    let mut e = Frame::new(
        "198.18.50.1",
        vip4,
        L4::Raw {
            proto: 1,
            bytes: icmp,
        },
    );
    e.payload = vec![];
    t.push(e.bytes());
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    t.push(arp);
    t
}

/// One of the ways a frame lies or breaks.
fn mutate(rng: &mut SmallRng, f: &mut Vec<u8>) {
    let l3 = match u16::from_be_bytes([f[12], f[13]]) {
        0x8100 | 0x88a8 if u16::from_be_bytes([f[16], f[17]]) == 0x8100 => 22,
        0x8100 | 0x88a8 => 18,
        _ => 14,
    };
    match rng.random_range(0..10) {
        0 => {} // as built
        1 => {
            let at = rng.random_range(14..=f.len());
            f.truncate(at);
        }
        2 => {
            for _ in 0..rng.random_range(1..5) {
                let i = rng.random_range(0..f.len());
                f[i] = rng.random();
            }
        }
        3 if f.len() > l3 => f[l3] = (f[l3] & 0xf0) | rng.random_range(0..5), // IHL below 5
        4 if f.len() > l3 + 6 => {
            let len: u16 = rng.random();
            f[l3 + 2..l3 + 4].copy_from_slice(&len.to_be_bytes()); // v4 total length
            f[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes()); // v6 payload length
        }
        5 if f.len() > l3 + 41 => f[l3 + 41] = rng.random(), // first extension header's length
        6 => {
            let t: u16 = rng.random();
            f[12..14].copy_from_slice(&t.to_be_bytes()); // unknown ethertype
        }
        7 => {
            // Stack of tags in front of whatever was there.
            for _ in 0..rng.random_range(1..4) {
                f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
            }
        }
        8 if f.len() > l3 + 20 => {
            let i = rng.random_range(l3..f.len());
            f[i] ^= 0xff;
            f.truncate(rng.random_range(i.max(14)..=f.len()));
        }
        _ => {
            let n = rng.random_range(14..200);
            *f = (0..n).map(|_| rng.random()).collect();
        }
    }
}

#[test]
fn a_million_hostile_frames() {
    let mut h = Harness::new();
    for id in 1..=3u32 {
        h.backend(id, &format!("198.18.1.{id}"), [2, 0, 0, 0, 1, id as u8]);
        h.backend(
            10 + id,
            &format!("2001:db8:1::{id}"),
            [2, 0, 0, 0, 1, 10 + id as u8],
        );
    }
    let set4 = [
        (1, "198.18.1.1", 1),
        (2, "198.18.1.2", 1),
        (3, "198.18.1.3", 1),
    ];
    let set6 = [
        (11, "2001:db8:1::1", 1),
        (12, "2001:db8:1::2", 1),
        (13, "2001:db8:1::3", 1),
    ];
    let v = h.vip(
        vip_key("198.18.100.1", 80, PROTO_TCP),
        Scheduler::Maglev,
        Forward::IpIp,
        0,
        &set4,
    );
    h.dp.set_vip(
        &vip_key("198.18.100.1", 0, PROTO_TCP),
        &VipMeta {
            flags: VIP_F_FRAGMENTS_ONLY,
            ..v.meta
        },
    )
    .unwrap();
    h.vip(
        vip_key("198.18.100.1", 53, PROTO_UDP),
        Scheduler::LeastConn,
        Forward::L2Dsr,
        0,
        &set4,
    );
    h.vip(
        vip_key("2001:db8:100::1", 80, PROTO_TCP),
        Scheduler::RoundRobin,
        Forward::IpIp,
        0,
        &set6,
    );
    h.vip(
        vip_key("2001:db8:100::1", 53, PROTO_UDP),
        Scheduler::Random,
        Forward::IpIp,
        0,
        &set6,
    );

    let templates = templates();
    let mut rng = SmallRng::seed_from_u64(0xbad_f00d);
    let mut actions = [0u64; 5];
    for i in 0..PACKETS {
        let mut f = templates.choose(&mut rng).unwrap().clone();
        mutate(&mut rng, &mut f);
        let (action, out) = h.run(&f);
        assert!(
            (1..=4).contains(&action),
            "frame {i} got action {action}: {f:02x?}"
        );
        if action == XDP_PASS {
            assert_eq!(out, f, "frame {i} passed but changed");
        }
        actions[action as usize] += 1;
    }
    let fates: u64 =
        h.dp.reasons()
            .unwrap()
            .iter()
            .filter(|(r, _)| is_fate(*r))
            .map(|(_, n)| n)
            .sum();
    println!(
        "robustness: {PACKETS} frames: drop {} pass {} tx {} redirect {}; aborted 0",
        actions[1], actions[2], actions[3], actions[4]
    );
    assert_eq!(
        fates, PACKETS as u64,
        "every frame's fate is counted exactly once"
    );
    assert!(
        actions[3] > 10_000 && actions[2] > 10_000 && actions[1] > 1_000,
        "{actions:?}"
    );
}

/// Reasons that end a packet's path (the others annotate it).
fn is_fate(r: Reason) -> bool {
    !matches!(
        r,
        Reason::IcmpErrorSteered
            | Reason::Fragment
            | Reason::OverMtuForwarded
            | Reason::FibFallback
            | Reason::FlowHit
            | Reason::FlowNew
            | Reason::FlowRescheduled
            | Reason::SynStateless
            | Reason::FlowOverRate
            | Reason::Decapsulated
    )
}
