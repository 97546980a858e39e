//! Ring writes are diffs: the same config writes no slot, a failing backend rewrites its
//! share, weights are followed.

use lb_common::{FlowKey, PROTO_TCP};

use super::*;
use crate::predict;

fn two_vips() -> Config {
    config(&[
        vip("web", "198.18.100.1", 80, 1009)
            .health("fall = 1")
            .backend("198.18.0.21", "")
            .backend("198.18.0.22", "weight = 50")
            .backend("198.18.0.23", ""),
        vip("dns", "2001:db8:100::1", 53, 211)
            .set("protocol = \"udp\"")
            .backend("2001:db8::21", "")
            .backend("2001:db8::22", ""),
    ])
}

#[test]
fn the_same_config_twice_writes_no_ring_slot() {
    let cfg = two_vips();
    let mut c = applied(&cfg);
    let first = c.maps().writes;
    assert!(
        first > 1009 + 211,
        "the first apply fills both windows: {first} writes"
    );
    let before = snapshot(c.maps());
    c.apply(&cfg).unwrap();
    let after = snapshot(c.maps());
    assert_eq!(after.rings, before.rings);
    // Only the per-apply entries: LB_CONFIG, LB_NEW_RATE, 5 backends, 2 VIPs, 2 aliases.
    assert_eq!(after.writes - before.writes, 2 + 5 + 2 + 2);
    assert_eq!(
        Snapshot { writes: 0, ..after },
        Snapshot {
            writes: 0,
            ..before
        }
    );
    assert_serves(&c, &cfg);
}

#[test]
fn one_backend_failing_rewrites_only_its_share() {
    let cfg = config(&[(1..=5).fold(
        vip("web", "198.18.100.1", 80, 1009).health("fall = 1"),
        |v, i| v.backend(&format!("198.18.0.{i}"), ""),
    )]);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.3");
    let before = window(&c, "web");
    let own = before.iter().filter(|s| **s == id).count();
    let writes = c.maps().writes;
    c.on_probe(&fail("web", id)).unwrap();
    let after = window(&c, "web");
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let others_moved = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| **a != id && a != b)
        .count();
    println!(
        "1 of 5 backends failed: its {own} slots moved, plus {others_moved} of the others' {}",
        1009 - own
    );
    assert!(after.iter().all(|s| *s != id));
    assert!(before.iter().zip(&after).all(|(a, b)| *a != id || a != b));
    // One backend entry (its down flag) and exactly the slots that changed.
    assert_eq!(c.maps().writes - writes, 1 + changed);
    assert!((own as i64 - 202).abs() <= 3, "{own}");
    assert!(
        (others_moved as f64) < 0.05 * (1009 - own) as f64,
        "{others_moved} of the other backends' slots moved"
    );
    assert!(
        events(&c)
            .last()
            .unwrap()
            .contains(&format!("{changed} ring slots written"))
    );
    // Recovery brings back the very same ring: it depends on the set, not on history.
    c.on_probe(&ok("web", id, 1)).unwrap();
    c.on_probe(&ok("web", id, 1)).unwrap();
    assert_eq!(window(&c, "web"), before);
    assert_serves(&c, &cfg);
}

#[test]
fn weights_are_respected_by_the_controllers_rings() {
    let cfg = config(&[vip("web", "198.18.100.1", 80, 10007)
        .backend("198.18.0.1", "weight = 100")
        .backend("198.18.0.2", "weight = 200")
        .backend("198.18.0.3", "weight = 300")]);
    let c = applied(&cfg);
    for (addr, w) in [
        ("198.18.0.1", 100.0),
        ("198.18.0.2", 200.0),
        ("198.18.0.3", 300.0),
    ] {
        let share = slots_of(&c, "web", bid(&c, "web", addr)) as f64 / 10007.0;
        let want = w / 600.0;
        assert!(
            ((share - want) / want).abs() < 0.02,
            "{addr}: share {share}, want {want}"
        );
    }
}

#[test]
fn a_weight_change_moves_few_slots_of_the_others() {
    let heavy = |w: u32| {
        config(&[vip("web", "198.18.100.1", 80, 1009)
            .backend("198.18.0.1", "")
            .backend("198.18.0.2", &format!("weight = {w}"))
            .backend("198.18.0.3", "")])
    };
    let mut c = applied(&heavy(100));
    let before = window(&c, "web");
    let writes = c.maps().writes;
    c.apply(&heavy(200)).unwrap();
    let after = window(&c, "web");
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    // LB_CONFIG, LB_NEW_RATE, 3 backends, VIP, alias, and exactly the changed slots.
    assert_eq!(c.maps().writes - writes, 2 + 3 + 1 + 1 + changed);
    let two = bid(&c, "web", "198.18.0.2");
    let share = after.iter().filter(|s| **s == two).count();
    assert!(
        (share as i64 - 504).abs() <= 3,
        "{share} slots at half the weight"
    );
    assert!(
        changed < 350,
        "{changed} slots changed for a 1/3 -> 1/2 share move"
    );
}

#[test]
fn round_robin_walks_only_the_filled_prefix() {
    let cfg = config(&[vip("rr", "198.18.100.1", 80, 211)
        .set("scheduler = \"round_robin\"")
        .health("fall = 1")
        .backend("198.18.0.1", "weight = 2")
        .backend("198.18.0.2", "weight = 1")]);
    let mut c = applied(&cfg);
    let v = vip_of(&c, "rr");
    assert_eq!(v.meta.ring_size, 3, "the dataplane walks 3 slots");
    assert_eq!(c.maps().vips[&v.key].ring_size, 3);
    assert_eq!(&window(&c, "rr")[..3], &[1, 2, 1]);
    assert!(window(&c, "rr")[3..].iter().all(|s| *s == NO_BACKEND));
    c.on_probe(&fail("rr", 1)).unwrap();
    let v = vip_of(&c, "rr");
    assert_eq!(
        c.maps().vips[&v.key].ring_size,
        1,
        "the entry follows the ring"
    );
    assert_eq!(window(&c, "rr")[0], 2);
    assert_serves(&c, &cfg);
}

#[test]
fn flows_on_other_backends_keep_their_backend_when_one_fails() {
    let cfg = config(&[(1..=4).fold(
        vip("web", "198.18.100.1", 80, 4099).health("fall = 1"),
        |v, i| v.backend(&format!("198.18.0.{i}"), ""),
    )]);
    let mut c = applied(&cfg);
    let key = |i: u32| FlowKey {
        src: {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&(0xc612_0000 + i).to_be_bytes());
            a
        },
        dst: vip_of(&c, "web").key.addr,
        sport: (1024 + i % 50000) as u16,
        dport: 80,
        proto: PROTO_TCP,
        family: lb_common::FAMILY_V4,
        _pad: [0; 2],
    };
    let flows: Vec<FlowKey> = (0..4000).map(key).collect();
    let meta = vip_of(&c, "web").meta;
    let ring = window(&c, "web");
    let before: Vec<u32> = flows
        .iter()
        .map(|k| predict(&meta, &ring, k).unwrap())
        .collect();
    let failed = bid(&c, "web", "198.18.0.2");
    c.on_probe(&fail("web", failed)).unwrap();
    let ring = window(&c, "web");
    let mut moved = 0;
    for (k, was) in flows.iter().zip(&before) {
        let now = predict(&meta, &ring, k).unwrap();
        assert_ne!(now, failed);
        if *was != failed && now != *was {
            moved += 1;
        }
    }
    let kept = before.iter().filter(|b| **b != failed).count();
    println!("{moved} of {kept} flows on healthy backends moved");
    assert!(
        kept > 2500 && (moved as f64) < 0.05 * kept as f64,
        "{moved} of {kept}"
    );
}

#[test]
fn the_connection_tables_rates_are_written_from_the_configuration() {
    let c = applied(&config_with(
        "new_flow_rate = 1000\nnew_flow_burst = 2000\nsyn_lookup_rate = 3000",
        &[vip("web", "198.18.100.1", 80, 401).backend("198.18.0.21", "")],
    ));
    assert_eq!(c.maps().new_rate, [1000, 2000, 3000, 0]);
    let c = applied(&config(&[
        vip("web", "198.18.100.1", 80, 401).backend("198.18.0.21", "")
    ]));
    assert_eq!(c.maps().new_rate, [0; 4], "0: the dataplane's defaults");
}
