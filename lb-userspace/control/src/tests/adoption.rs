//! A restarted daemon adopts what the maps hold: same config, no ring slot written, same
//! ids; backends pinned as down start down; pinned VIPs no longer configured are removed.

use lb_common::BACKEND_F_DOWN;

use super::*;

fn cfg() -> Config {
    config(&[
        vip("web", "198.18.100.1", 80, 1009)
            .backend("198.18.0.21", "")
            .backend("198.18.0.22", "weight = 50")
            .backend("198.18.0.23", "health = { kind = \"none\" }"),
        vip("rr", "198.18.100.1", 443, 211)
            .set("scheduler = \"round_robin\"")
            .backend("198.18.0.31", "weight = 3")
            .backend("198.18.0.32", "weight = 1"),
        vip("dns", "2001:db8:100::1", 53, 211)
            .set("protocol = \"udp\"")
            .backend("2001:db8::21", ""),
    ])
}

/// The maps a previous controller left, and its view.
fn pinned(cfg: &Config) -> (MemMaps, Vec<VipView>) {
    let c = applied(cfg);
    (c.maps().clone(), view(&c))
}

#[test]
fn adopting_the_same_config_writes_no_ring_slot_and_keeps_ids() {
    let cfg = cfg();
    let (maps, was) = pinned(&cfg);
    let before = snapshot(&maps);
    let mut c = Controller::new(maps, cfg.dataplane.ring_capacity).unwrap();
    assert!(c.vips.is_empty(), "nothing served before the first apply");
    assert_eq!(snapshot(c.maps()), before, "adoption reads only");
    c.apply(&cfg).unwrap();
    let after = snapshot(c.maps());
    assert_eq!(after.rings, before.rings);
    // LB_CONFIG and LB_NEW_RATE, 6 backends, 3 VIPs, 2 fragment aliases (one per address and protocol).
    assert_eq!(
        after.writes - before.writes,
        2 + 6 + 3 + 2,
        "no ring slot written"
    );
    assert_eq!(
        Snapshot { writes: 0, ..after },
        Snapshot {
            writes: 0,
            ..before
        }
    );
    assert_eq!(view(&c), was, "same ids, windows, rings, states");
    assert_serves(&c, &cfg);
}

#[test]
fn a_backend_pinned_as_down_and_checked_starts_down() {
    let cfg = cfg();
    let (mut maps, _) = pinned(&cfg);
    let checked = 1; // 198.18.0.21 (tcp checks)
    let unchecked = 3; // 198.18.0.23 (kind = "none")
    maps.backends.get_mut(&checked).unwrap().flags |= BACKEND_F_DOWN;
    maps.backends.get_mut(&unchecked).unwrap().flags |= BACKEND_F_DOWN;
    let mut c = Controller::new(maps, cfg.dataplane.ring_capacity).unwrap();
    c.apply(&cfg).unwrap();
    let b = backend_of(&c, "web", "198.18.0.21");
    assert_eq!((b.id, b.state()), (checked, State::Down));
    assert_eq!(
        c.maps().backends[&checked].flags,
        BACKEND_F_DOWN,
        "still down"
    );
    assert_eq!(slots_of(&c, "web", checked), 0, "and out of the ring");
    // Nothing would ever bring an unchecked backend back up: it starts up.
    let b = backend_of(&c, "web", "198.18.0.23");
    assert_eq!((b.id, b.state()), (unchecked, State::Up));
    assert_eq!(c.maps().backends[&unchecked].flags, 0);
    assert!(slots_of(&c, "web", unchecked) > 0);
    assert_serves(&c, &cfg);
    // Its checks bring it back.
    c.on_probe(&ok("web", checked, 1)).unwrap();
    assert_eq!(c.on_probe(&ok("web", checked, 1)).unwrap(), Some(State::Up));
    assert!(slots_of(&c, "web", checked) > 0);
}

#[test]
fn pinned_vips_not_in_the_config_are_removed() {
    let cfg = cfg();
    let (maps, was) = pinned(&cfg);
    let rr_key = was[1].key;
    let dns = &was[2];
    let only_web = config(&[vip("web", "198.18.100.1", 80, 1009)
        .backend("198.18.0.21", "")
        .backend("198.18.0.22", "weight = 50")
        .backend("198.18.0.23", "health = { kind = \"none\" }")]);
    let mut c = Controller::new(maps, cfg.dataplane.ring_capacity).unwrap();
    c.apply(&only_web).unwrap();
    let m = c.maps();
    assert!(!m.vips.contains_key(&rr_key) && !m.vips.contains_key(&dns.key));
    assert!(!m.by_id.contains_key(&dns.meta.vip_id));
    for (id, _, _, _) in was[1].backends.iter().chain(&dns.backends) {
        assert!(
            !m.backends.contains_key(id),
            "backend {id} of a removed VIP"
        );
    }
    // No fragment alias of the IPv6 address is left either.
    assert!(m.vips.keys().all(|k| k.family == lb_common::FAMILY_V4));
    assert_eq!(vip_of(&c, "web").meta, was[0].meta, "web adopted as it was");
    assert_serves(&c, &only_web);
    // The removed VIPs' ids are free again for the next apply... once they are gone.
    c.apply(&cfg).unwrap();
    assert_serves(&c, &cfg);
}

#[test]
fn adoption_keeps_ids_for_a_new_vip_clear_of_pinned_ones() {
    let cfg = cfg();
    let (maps, was) = pinned(&cfg);
    // A config that drops "rr" and adds "new": new must not take an id still pinned.
    let mut vips: Vec<Vip> = vec![
        vip("web", "198.18.100.1", 80, 1009)
            .backend("198.18.0.21", "")
            .backend("198.18.0.22", "weight = 50")
            .backend("198.18.0.23", "health = { kind = \"none\" }"),
        vip("dns", "2001:db8:100::1", 53, 211)
            .set("protocol = \"udp\"")
            .backend("2001:db8::21", ""),
    ];
    vips.push(vip("new", "198.18.100.9", 80, 101).backend("198.18.0.91", ""));
    let next = config(&vips);
    let mut c = Controller::new(maps, cfg.dataplane.ring_capacity).unwrap();
    c.apply(&next).unwrap();
    let pinned_ids: Vec<u32> = was.iter().map(|v| v.meta.vip_id).collect();
    assert!(!pinned_ids.contains(&vip_of(&c, "new").meta.vip_id));
    let pinned_backends: Vec<u32> = was
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| b.0))
        .collect();
    assert!(!pinned_backends.contains(&bid(&c, "new", "198.18.0.91")));
    assert_eq!(vip_of(&c, "dns").meta, was[2].meta);
    assert_serves(&c, &next);
}

#[test]
fn a_pinned_round_robin_vip_is_adopted_with_its_short_entry() {
    let cfg = cfg();
    let (maps, was) = pinned(&cfg);
    assert_eq!(was[1].meta.ring_size, 4, "weights 3 : 1 walk 4 slots");
    let mut c = Controller::new(maps, cfg.dataplane.ring_capacity).unwrap();
    let rings = snapshot(c.maps()).rings;
    c.apply(&cfg).unwrap();
    assert_eq!(vip_of(&c, "rr").meta, was[1].meta, "same id and window");
    assert_eq!(snapshot(c.maps()).rings, rings);
}
