//! VIP and backend ids, and ring windows: never 0, reused only once their owner is gone,
//! kept by a rename, given fresh to a VIP whose key changes.

use lb_common::PROTO_TCP;

use super::*;
use crate::{Ids, Windows};

fn a(name: &str, last: u8) -> Vip {
    vip(name, &format!("198.18.100.{last}"), 80, 101).backend(&format!("198.18.{last}.1"), "")
}

#[test]
fn ids_start_at_one_never_zero() {
    let cfg = config(&[a("a", 1), a("b", 2), a("c", 3)]);
    let c = applied(&cfg);
    let vip_ids: Vec<u32> = c.vips.iter().map(|v| v.meta.vip_id).collect();
    assert_eq!(vip_ids, [1, 2, 3]);
    let backend_ids: Vec<u32> = c.vips.iter().map(|v| v.backends[0].id).collect();
    assert_eq!(backend_ids, [1, 2, 3]);
    assert!(!c.maps().by_id.contains_key(&0) && !c.maps().backends.contains_key(&0));
    let mut ids = Ids::new([1, 2, 4], 6);
    assert_eq!(
        (ids.alloc(), ids.alloc(), ids.alloc()),
        (Some(3), Some(5), None)
    );
    assert_eq!(Ids::new([], 1).alloc(), None, "id 0 is never handed out");
}

#[test]
fn a_vip_id_is_reused_only_after_its_owner_is_gone() {
    let mut c = applied(&config(&[a("a", 1), a("b", 2)]));
    assert_eq!(vip_of(&c, "b").meta.vip_id, 2);
    // b leaves and c arrives in the same apply: c must not get b's id, which the dataplane
    // still uses for b's flows until the apply is done.
    let cfg = config(&[a("a", 1), a("c", 3)]);
    c.apply(&cfg).unwrap();
    assert_eq!(vip_of(&c, "c").meta.vip_id, 3);
    assert!(!c.maps().by_id.contains_key(&2), "b's id is cleared");
    assert_serves(&c, &cfg);
    // Now b is gone: its id is free.
    let cfg = config(&[a("a", 1), a("c", 3), a("d", 4)]);
    c.apply(&cfg).unwrap();
    assert_eq!(vip_of(&c, "d").meta.vip_id, 2);
    assert_serves(&c, &cfg);
}

#[test]
fn a_backend_id_is_reused_only_after_its_owner_is_gone() {
    let web = |addrs: &[&str]| {
        let mut v = vip("web", "198.18.100.1", 80, 401);
        for x in addrs {
            v = v.backend(x, "");
        }
        config(&[v])
    };
    let mut c = applied(&web(&["198.18.0.1", "198.18.0.2", "198.18.0.3"]));
    assert_eq!(bid(&c, "web", "198.18.0.2"), 2);
    let cfg = web(&["198.18.0.1", "198.18.0.3", "198.18.0.4"]);
    c.apply(&cfg).unwrap();
    assert_eq!(
        bid(&c, "web", "198.18.0.4"),
        4,
        "not the id .2 held in the same apply"
    );
    assert_eq!(
        (bid(&c, "web", "198.18.0.1"), bid(&c, "web", "198.18.0.3")),
        (1, 3)
    );
    assert!(!c.maps().backends.contains_key(&2));
    assert!(
        events(&c).contains(&"web/198.18.0.2: backend removed".into()),
        "{:?}",
        events(&c)
    );
    assert_serves(&c, &cfg);
    let cfg = web(&["198.18.0.1", "198.18.0.3", "198.18.0.4", "198.18.0.5"]);
    c.apply(&cfg).unwrap();
    assert_eq!(bid(&c, "web", "198.18.0.5"), 2, "free now");
    assert_serves(&c, &cfg);
}

#[test]
fn backends_keep_their_ids_when_the_file_reorders_them() {
    let one = config(&[vip("web", "198.18.100.1", 80, 401)
        .backend("198.18.0.1", "")
        .backend("198.18.0.2", "")
        .backend("198.18.0.3", "")]);
    let mut c = applied(&one);
    let ring = window(&c, "web");
    let other = config(&[vip("web", "198.18.100.1", 80, 401)
        .backend("198.18.0.3", "")
        .backend("198.18.0.1", "")
        .backend("198.18.0.2", "")]);
    let before = c.maps().writes;
    c.apply(&other).unwrap();
    assert_eq!(
        [
            bid(&c, "web", "198.18.0.1"),
            bid(&c, "web", "198.18.0.2"),
            bid(&c, "web", "198.18.0.3")
        ],
        [1, 2, 3]
    );
    assert_eq!(window(&c, "web"), ring, "same set, same ring");
    // LB_CONFIG and LB_NEW_RATE, 3 backends, the VIP, its fragment alias: no ring slot.
    assert_eq!(c.maps().writes - before, 2 + 3 + 1 + 1);
}

#[test]
fn a_rename_keeps_the_vip_id_and_window() {
    let cfg = config(&[a("a", 1), a("b", 2), a("c", 3)]);
    let mut c = applied(&cfg);
    let old = vip_of(&c, "b").meta;
    let backend = bid(&c, "b", "198.18.2.1");
    let ring = window(&c, "b");
    let renamed = config(&[a("a", 1), a("b-renamed", 2), a("c", 3)]);
    let before = c.maps().writes;
    c.apply(&renamed).unwrap();
    let v = vip_of(&c, "b-renamed");
    assert_eq!(v.meta, old, "same id, same window");
    assert_eq!(bid(&c, "b-renamed", "198.18.2.1"), backend);
    assert_eq!(window(&c, "b-renamed"), ring);
    assert_eq!(c.maps().vips[&v.key], old);
    // LB_CONFIG and LB_NEW_RATE, 3 backends, 3 VIPs and their 3 fragment aliases: no ring slot.
    assert_eq!(
        c.maps().writes - before,
        2 + 3 + 3 + 3,
        "no ring slot rewritten"
    );
    assert_serves(&c, &renamed);
}

#[test]
fn a_port_change_gets_a_fresh_entry_and_the_old_key_goes() {
    let cfg = config(&[a("a", 1), a("b", 2)]);
    let mut c = applied(&cfg);
    let old_key = vip_of(&c, "b").key;
    let old_id = vip_of(&c, "b").meta.vip_id;
    let old_backend = bid(&c, "b", "198.18.2.1");
    let moved = config(&[
        a("a", 1),
        vip("b", "198.18.100.2", 8080, 101).backend("198.18.2.1", ""),
    ]);
    c.apply(&moved).unwrap();
    let v = vip_of(&c, "b");
    assert_eq!((v.key.port, v.key.proto), (8080, PROTO_TCP));
    assert_ne!(v.meta.vip_id, old_id, "a fresh entry");
    assert_ne!(v.meta.vip_id, 0);
    assert!(
        !c.maps().vips.contains_key(&old_key),
        "the old key is removed"
    );
    assert_eq!(c.maps().vips[&v.key], v.meta);
    assert!(!c.maps().backends.contains_key(&old_backend));
    assert_ne!(v.backends[0].id, old_backend);
    assert!(
        events(&c).contains(&"b: VIP removed".into()),
        "{:?}",
        events(&c)
    );
    assert_serves(&c, &moved);
}

#[test]
fn a_new_vip_never_serves_what_an_old_vip_left_in_its_window() {
    // "old" fills window [0, 101) with its backend id 1 and is removed; "b" takes another
    // window (the removed VIP's is freed only once the removal is applied).
    let mut c = applied(&config(&[
        vip("old", "198.18.100.1", 80, 101).backend("198.18.1.1", "")
    ]));
    assert_eq!(window(&c, "old"), vec![1; 101]);
    let two = config(&[vip("b", "198.18.100.2", 80, 101).backend("198.18.2.1", "")]);
    c.apply(&two).unwrap();
    assert_eq!(vip_of(&c, "b").meta.ring_offset, 101);
    // Now: b gets a backend (the lowest free id: 1, old's) and "new" takes the freed window
    // with no usable backend. Its ring must be empty, not old's slots naming id 1, which
    // is b's new backend now.
    let three = config(&[
        vip("b", "198.18.100.2", 80, 101)
            .backend("198.18.2.1", "")
            .backend("198.18.2.2", "weight = 0"),
        vip("new", "198.18.100.3", 80, 101).backend("198.18.3.1", "disabled = true"),
    ]);
    c.apply(&three).unwrap();
    assert_eq!(bid(&c, "b", "198.18.2.2"), 1);
    assert_eq!(vip_of(&c, "new").meta.ring_offset, 0);
    assert!(
        window(&c, "new").iter().all(|s| *s == NO_BACKEND),
        "new's window still names backends: {:?}",
        &window(&c, "new")[..8]
    );
    assert_serves(&c, &three);
}

#[test]
fn a_vip_moved_to_another_port_with_no_usable_backend_keeps_no_stale_slot() {
    let mut c = applied(&config(&[
        vip("b", "198.18.100.2", 80, 101).backend("198.18.2.1", "")
    ]));
    let moved =
        config(&[vip("b", "198.18.100.2", 81, 101).backend("198.18.2.1", "disabled = true")]);
    c.apply(&moved).unwrap();
    assert!(
        window(&c, "b").iter().all(|s| *s == NO_BACKEND),
        "{:?}",
        &window(&c, "b")[..8]
    );
    assert_serves(&c, &moved);
}

#[test]
fn windows_first_fit_and_free() {
    let mut w = Windows::new(300);
    assert_eq!(w.alloc(101), Some(0));
    assert_eq!(w.alloc(101), Some(101));
    assert_eq!(w.alloc(101), None, "98 slots left");
    w.free(0);
    assert_eq!(w.used(), 101);
    assert_eq!(w.alloc(50), Some(0), "the first gap that fits");
    assert_eq!(w.alloc(60), Some(202), "the gap at 50 holds only 51");
    assert_eq!(w.alloc(52), None, "gaps of 51 and 38");
    assert_eq!(w.alloc(51), Some(50));
    assert_eq!(w.alloc(38), Some(262));
    assert_eq!(w.alloc(1), None);
    assert_eq!(w.used(), 300);
}
