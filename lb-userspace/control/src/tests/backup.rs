//! The backup pool: backups join the ring while fewer than `min_primaries` primaries are
//! usable, and leave it when the primaries recover.

use super::*;

const P1: &str = "198.18.0.21";
const P2: &str = "198.18.0.22";
const B1: &str = "198.18.0.31";
const B2: &str = "198.18.0.32";

fn pool(min_primaries: u32, p1: &str) -> Config {
    config(&[vip("web", "198.18.100.1", 80, 1009)
        .set(&format!("min_primaries = {min_primaries}"))
        .health("fall = 1")
        .health("rise = 1")
        .backend(P1, p1)
        .backend(P2, "")
        .backend(B1, "role = \"backup\"")
        .backend(B2, "role = \"backup\"; weight = 50")])
}

#[test]
fn backups_never_serve_while_enough_primaries_are_usable() {
    let cfg = pool(2, "");
    let mut c = applied(&cfg);
    let (b1, b2) = (bid(&c, "web", B1), bid(&c, "web", B2));
    assert!(!vip_of(&c, "web").on_backup);
    assert_eq!((slots_of(&c, "web", b1), slots_of(&c, "web", b2)), (0, 0));
    // Changes that leave both primaries usable keep the backups out.
    let p1 = bid(&c, "web", P1);
    c.on_probe(&ok("web", p1, 1)).unwrap();
    c.on_probe(&agent("web", p1, "30%")).unwrap();
    assert!(!vip_of(&c, "web").on_backup);
    assert_eq!((slots_of(&c, "web", b1), slots_of(&c, "web", b2)), (0, 0));
    let w = window(&c, "web");
    assert!(w.iter().all(|s| *s == p1 || *s == bid(&c, "web", P2)));
    assert!(
        !events(&c).iter().any(|e| e.contains("backup pool")),
        "{:?}",
        events(&c)
    );
    assert_serves(&c, &cfg);
}

#[test]
fn backups_take_over_below_min_primaries_and_hand_back_on_recovery() {
    let cfg = pool(2, "");
    let mut c = applied(&cfg);
    let before = window(&c, "web");
    let (p1, p2, b1, b2) = (
        bid(&c, "web", P1),
        bid(&c, "web", P2),
        bid(&c, "web", B1),
        bid(&c, "web", B2),
    );
    assert_eq!(c.on_probe(&fail("web", p1)).unwrap(), Some(State::Down));
    assert!(vip_of(&c, "web").on_backup);
    assert!(
        events(&c).contains(&"web: backup pool takes over: too few primaries usable".into()),
        "{:?}",
        events(&c)
    );
    // The usable primary keeps serving beside the backups, by weight (100 : 100 : 50).
    assert_eq!(slots_of(&c, "web", p1), 0);
    let (sp2, sb1, sb2) = (
        slots_of(&c, "web", p2),
        slots_of(&c, "web", b1),
        slots_of(&c, "web", b2),
    );
    assert_eq!(sp2 + sb1 + sb2, 1009);
    assert!(
        (sp2 as i64 - 404).abs() <= 5 && (sb2 as i64 - 202).abs() <= 5,
        "{sp2} {sb1} {sb2}"
    );
    assert_serves(&c, &cfg);
    assert_eq!(c.on_probe(&ok("web", p1, 1)).unwrap(), Some(State::Up));
    assert!(!vip_of(&c, "web").on_backup);
    // The pool's event, then the transition that caused it.
    let ev = events(&c);
    assert_eq!(
        ev[ev.len() - 2],
        "web: primaries recovered: backup pool hands back",
        "{ev:?}"
    );
    assert!(
        ev[ev.len() - 1].starts_with(&format!("web/{P1}: down -> up: 1 checks passed")),
        "{ev:?}"
    );
    assert_eq!((slots_of(&c, "web", b1), slots_of(&c, "web", b2)), (0, 0));
    assert_eq!(
        window(&c, "web"),
        before,
        "the primaries' ring is back as it was"
    );
    assert_serves(&c, &cfg);
}

#[test]
fn min_primaries_zero_means_backups_never_serve() {
    let cfg = pool(0, "");
    let mut c = applied(&cfg);
    let (p1, p2) = (bid(&c, "web", P1), bid(&c, "web", P2));
    c.on_probe(&fail("web", p1)).unwrap();
    c.on_probe(&fail("web", p2)).unwrap();
    assert!(!vip_of(&c, "web").on_backup);
    assert!(
        window(&c, "web").iter().all(|s| *s == NO_BACKEND),
        "no usable backend: empty ring"
    );
    assert_serves(&c, &cfg);
}

#[test]
fn the_pool_serves_from_the_first_apply_when_primaries_are_missing() {
    let cfg = pool(2, "disabled = true");
    let c = applied(&cfg);
    assert!(vip_of(&c, "web").on_backup);
    assert!(slots_of(&c, "web", bid(&c, "web", B1)) > 0);
    assert!(
        events(&c).contains(&"web: backup pool takes over: too few primaries usable".into()),
        "{:?}",
        events(&c)
    );
    // Enabling the primary by a reload hands back.
    let mut c = c;
    let enabled = pool(2, "");
    c.apply(&enabled).unwrap();
    assert!(!vip_of(&c, "web").on_backup);
    assert_eq!(slots_of(&c, "web", bid(&c, "web", B1)), 0);
    assert_eq!(
        events(&c).last().unwrap(),
        "web: primaries recovered: backup pool hands back"
    );
    assert_serves(&c, &enabled);
}

#[test]
fn backups_that_are_down_do_not_make_the_pool_serve() {
    let cfg = pool(2, "");
    let mut c = applied(&cfg);
    let (p1, b1, b2) = (bid(&c, "web", P1), bid(&c, "web", B1), bid(&c, "web", B2));
    c.on_probe(&fail("web", b1)).unwrap();
    c.on_probe(&fail("web", b2)).unwrap();
    c.on_probe(&fail("web", p1)).unwrap();
    assert!(
        !vip_of(&c, "web").on_backup,
        "no usable backup: the pool does not serve"
    );
    assert_eq!(slots_of(&c, "web", bid(&c, "web", P2)), 1009);
    assert_eq!(c.on_probe(&ok("web", b1, 1)).unwrap(), Some(State::Up));
    assert!(
        vip_of(&c, "web").on_backup,
        "a backup came back: it serves now"
    );
    assert!(slots_of(&c, "web", b1) > 0);
    assert_eq!(slots_of(&c, "web", b2), 0);
    assert_serves(&c, &cfg);
}
