//! A change that does not fit LB_RINGS is refused whole, before any write; a rename at full
//! capacity keeps its window; the VIP count is bounded by the ids.

use super::*;
use crate::{ControlError, MAX_VIP_COUNT};

fn one(name: &str, last: u8, ring: u32) -> Vip {
    vip(name, &format!("198.18.100.{last}"), 80, ring).backend(&format!("198.18.{last}.1"), "")
}

#[test]
fn a_change_that_does_not_fit_changes_nothing() {
    let first = config(&[one("a", 1, 1009)]);
    let mut c = Controller::new(MemMaps::new(), 2100).unwrap();
    c.apply(&first).unwrap();
    let (maps, served) = (snapshot(c.maps()), view(&c));
    let too_big = config(&[one("a", 1, 1009), one("b", 2, 1009), one("c", 3, 1009)]);
    let e = c.apply(&too_big).unwrap_err();
    match &e {
        ControlError::Capacity {
            needed, available, ..
        } => assert_eq!((*needed, *available), (2018, 1091)),
        other => panic!("expected a capacity error, got {other}"),
    }
    assert!(e.to_string().contains("Nothing was changed"), "{e}");
    assert_eq!(snapshot(c.maps()), maps, "not one write");
    assert_eq!(view(&c), served, "the controller serves what it served");
    assert!(c.in_step());
    let fits = config(&[one("a", 1, 1009), one("b", 2, 1009)]);
    c.apply(&fits).unwrap();
    assert_eq!(vip_of(&c, "b").meta.ring_offset, 1009);
    assert_serves(&c, &fits);
}

#[test]
fn renaming_a_vip_at_full_capacity_keeps_its_window() {
    // The reported bug: 16 VIPs of 65537 slots fill the default LB_RINGS; renaming one was
    // refused as if it needed a second window.
    let vips = |last: &str| -> Vec<Vip> {
        (0..16)
            .map(|i| {
                let name = if i == 15 {
                    last.to_string()
                } else {
                    format!("v{i}")
                };
                one(&name, i as u8 + 1, 65537)
            })
            .collect()
    };
    let cfg = config(&vips("v15"));
    assert_eq!(cfg.dataplane.ring_capacity, 16 * 65537);
    let mut c = applied(&cfg);
    let meta = vip_of(&c, "v15").meta;
    let (ring, writes) = (window(&c, "v15"), c.maps().writes);
    let renamed = config(&vips("v15-renamed"));
    c.apply(&renamed).expect("a rename needs no new window");
    assert_eq!(vip_of(&c, "v15-renamed").meta, meta);
    assert_eq!(window(&c, "v15-renamed"), ring);
    // LB_CONFIG and LB_NEW_RATE, 16 backends, 16 VIPs, their 16 fragment aliases: no ring slot.
    assert_eq!(
        c.maps().writes - writes,
        2 + 16 + 16 + 16,
        "no slot rewritten"
    );
    assert!(c.in_step());
    // Moving a VIP to another port at full capacity also fits: its old window is given
    // back before the new entry takes one.
    let mut moved = vips("v15-renamed");
    moved[3] = vip("v3", "198.18.100.4", 8080, 65537).backend("198.18.4.1", "");
    let moved = config(&moved);
    c.apply(&moved).expect("a moved VIP reuses its window");
    assert_eq!(vip_of(&c, "v3").key.port, 8080);
    assert_serves(&c, &moved);
}

#[test]
fn a_removal_frees_its_window_only_once_applied() {
    let cap = 2 * 1009;
    let both = config(&[one("a", 1, 1009), one("b", 2, 1009)]);
    let mut c = Controller::new(MemMaps::new(), cap).unwrap();
    c.apply(&both).unwrap();
    let swap = config(&[one("a", 1, 1009), one("c", 3, 1009)]);
    let maps = snapshot(c.maps());
    assert!(matches!(c.apply(&swap), Err(ControlError::Capacity { .. })));
    assert_eq!(snapshot(c.maps()), maps);
    assert_eq!(view(&c).len(), 2);
    let only_a = config(&[one("a", 1, 1009)]);
    c.apply(&only_a).unwrap();
    c.apply(&swap).expect("the window is free now");
    assert_eq!(vip_of(&c, "c").meta.ring_offset, 1009);
    assert_serves(&c, &swap);
}

#[test]
fn at_most_1023_vips() {
    assert_eq!(MAX_VIP_COUNT, 1023);
    let vips = |n: u32| -> Vec<Vip> {
        (0..n)
            .map(|i| {
                vip(&format!("v{i}"), "198.18.100.1", 1 + i as u16, 101)
                    .backend(&format!("198.19.{}.{}", i / 256, i % 256), "")
            })
            .collect()
    };
    let cfg = config(&vips(1023));
    let c = applied(&cfg);
    let ids: BTreeSet<u32> = c.vips.iter().map(|v| v.meta.vip_id).collect();
    assert_eq!(ids.len(), 1023);
    assert_eq!(
        (ids.first(), ids.last()),
        (Some(&1), Some(&1023)),
        "never 0"
    );
    assert_serves(&c, &cfg);
    let src = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\n\n{}",
        config_text("", &vips(1024))
    );
    let e = Config::parse(&src, Path::new("test.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("1024 VIPs: at most 1023"), "{e}");
}
