//! Differential: the backend the kernel program picks equals the userspace model's
//! prediction for every one of 100,000 random flows over several VIPs and backend sets,
//! before and after the backend sets change.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{FlowKey, Forward, PROTO_TCP, PROTO_UDP, Scheduler};
use lb_control::{RingMember, maglev, predict};
use lb_tests::{harness::*, packets::*};
use rand::{Rng, SeedableRng, rngs::SmallRng};

struct Vip {
    tv: TestVip,
    addr: &'static str,
    port: u16,
    proto: u8,
    members: Vec<RingMember>,
}

fn members(ids: std::ops::Range<u32>, v6: bool, rng: &mut SmallRng) -> Vec<RingMember> {
    ids.map(|id| {
        let identity = if v6 {
            format!("2001:db8:2::{id:x}")
        } else {
            format!("198.19.{}.{}", id / 256, id % 256)
        };
        RingMember {
            id,
            identity: identity.into_bytes(),
            weight: rng.random_range(1..=8),
        }
    })
    .collect()
}

fn random_client(rng: &mut SmallRng, v6: bool, phase: u8) -> String {
    if v6 {
        format!(
            "2001:db8:{:x}::{:x}:{:x}",
            0x10 + phase as u32,
            rng.random::<u16>(),
            rng.random::<u16>()
        )
    } else {
        format!(
            "198.18.{}.{}",
            rng.random_range(0..64u8) + 64 * phase,
            rng.random::<u8>()
        )
    }
}

#[test]
fn kernel_choice_equals_model_for_100k_flows() {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut h = Harness::new();
    let mut by_addr: HashMap<IpAddr, u32> = HashMap::new();
    let sets = [
        (
            "198.18.100.1",
            80u16,
            PROTO_TCP,
            Scheduler::Maglev,
            members(1..6, false, &mut rng),
        ),
        (
            "2001:db8:100::1",
            53,
            PROTO_UDP,
            Scheduler::Maglev,
            members(100..117, true, &mut rng),
        ),
        (
            "198.18.100.2",
            443,
            PROTO_TCP,
            Scheduler::SourceHash,
            members(200..300, false, &mut rng),
        ),
        (
            "198.18.100.3",
            0,
            PROTO_UDP,
            Scheduler::Maglev,
            members(400..450, true, &mut rng),
        ),
    ];
    let mut vips = Vec::new();
    for (addr, port, proto, sched, m) in sets {
        for b in &m {
            let ip: IpAddr = std::str::from_utf8(&b.identity).unwrap().parse().unwrap();
            h.backend(
                b.id,
                &ip.to_string(),
                [2, 0, 0, 0, (b.id >> 8) as u8, b.id as u8],
            );
            by_addr.insert(ip, b.id);
        }
        let triples: Vec<(u32, &str, u32)> = m
            .iter()
            .map(|b| (b.id, std::str::from_utf8(&b.identity).unwrap(), b.weight))
            .collect();
        let tv = h.vip(
            vip_key(addr, port, proto),
            sched,
            Forward::IpIp,
            0,
            &triples,
        );
        vips.push(Vip {
            tv,
            addr,
            port,
            proto,
            members: m,
        });
    }

    let mut checked = 0u32;
    for phase in 0..2u8 {
        if phase == 1 {
            // Backend sets change: one backend leaves each Maglev VIP, weights move.
            for v in vips
                .iter_mut()
                .filter(|v| v.tv.meta.scheduler == Scheduler::Maglev as u8)
            {
                v.members.remove(0);
                v.members[0].weight += 3;
                let ring = maglev(&v.members, RING).unwrap();
                h.dp.update_ring(v.tv.meta.ring_offset, &v.tv.ring, &ring)
                    .unwrap();
                v.tv.ring = ring;
            }
        }
        for i in 0..50_000u32 {
            let v = &vips[(i % vips.len() as u32) as usize];
            let v6 = v.addr.contains(':');
            let client = random_client(&mut rng, v6, phase);
            let sport = rng.random_range(1024..65535u16);
            let dport = if v.port == 0 {
                rng.random_range(1..65535u16)
            } else {
                v.port
            };
            let f = if v.proto == PROTO_TCP {
                Frame::tcp(&client, sport, v.addr, dport, TCP_SYN)
            } else {
                Frame::udp(&client, sport, v.addr, dport)
            };
            let (src, family) = addr16(f.src);
            let (dst, _) = addr16(f.dst);
            let key = FlowKey {
                src,
                dst,
                sport,
                dport,
                proto: v.proto,
                family,
                _pad: [0; 2],
            };
            let want = predict(&v.tv.meta, &v.tv.ring, &key).unwrap();
            let (action, out) = h.run(&f.bytes());
            assert_eq!(action, XDP_TX, "flow {i} of phase {phase}");
            let got = by_addr[&check_frame(&out).unwrap().outer_dst];
            assert_eq!(got, want, "flow {key:?}: kernel chose {got}, model {want}");
            checked += 1;
        }
    }
    println!(
        "differential: {checked} flows over {} VIPs, kernel == model for all",
        vips.len()
    );
    assert_eq!(checked, 100_000);
}
