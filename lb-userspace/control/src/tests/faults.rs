//! Partial failures: every write of a change is made to fail in turn. The controller keeps
//! serving the previous revision, says whether its maps are in step, and a repair or the
//! next apply leaves the maps exactly as a fresh controller would write the config.

use lb_common::{MAP_BACKENDS, MAP_RINGS};

use super::*;
use crate::{ControlError, Fault};

/// The revision served before the change.
fn before() -> Config {
    config(&[
        vip("web", "198.18.100.1", 80, 401)
            .health("fall = 1")
            .health("rise = 1")
            .backend("198.18.0.21", "")
            .backend("198.18.0.22", "")
            .backend("198.18.0.23", ""),
        vip("api", "198.18.100.2", 80, 211)
            .backend("198.18.0.31", "")
            .backend("198.18.0.32", ""),
        vip("old", "198.18.100.3", 80, 101).backend("198.18.0.41", ""),
        vip("legacy", "198.18.100.4", 80, 101).backend("198.18.0.51", ""),
    ])
}

/// A real change: in web a weight changed, a backend removed and one added; api moved to
/// another port; old removed; legacy renamed; dns (IPv6, UDP) added.
fn after() -> Config {
    config(&[
        vip("web", "198.18.100.1", 80, 401)
            .health("fall = 1")
            .health("rise = 1")
            .backend("198.18.0.21", "weight = 50")
            .backend("198.18.0.23", "")
            .backend("198.18.0.24", ""),
        vip("api", "198.18.100.2", 8080, 211)
            .backend("198.18.0.31", "")
            .backend("198.18.0.32", ""),
        vip("legacy2", "198.18.100.4", 80, 101).backend("198.18.0.51", ""),
        vip("dns", "2001:db8:100::1", 53, 101)
            .set("protocol = \"udp\"")
            .backend("2001:db8::21", ""),
    ])
}

/// The maps a fresh controller writes for `cfg` from empty maps, in id-free form.
fn fresh(cfg: &Config) -> Canon {
    canon(applied(cfg).maps())
}

/// Writes the change makes when nothing fails.
fn writes_of_change(from: &Config, to: &Config) -> usize {
    let mut c = applied(from);
    let w = c.maps().writes;
    c.apply(to).unwrap();
    c.maps().writes - w
}

fn expect_partial(r: Result<(), ControlError>, restored_expected: bool, n: usize) {
    match r {
        Err(ControlError::Partial { restored, source }) => {
            assert_eq!(restored, restored_expected, "write {n}: restored");
            assert_eq!(source.detail, "injected fault", "write {n}");
        }
        Err(e) => panic!("write {n}: expected a partial failure, got {e}"),
        Ok(()) => panic!("write {n}: the apply succeeded"),
    }
}

fn every_write_can_fail(repair_first: bool) {
    let (one, two) = (before(), after());
    let total = writes_of_change(&one, &two);
    assert!(total > 100, "{total} writes");
    let (fresh_one, fresh_two) = (fresh(&one), fresh(&two));
    for n in 0..total {
        let mut c = applied(&one);
        let served = view(&c);
        c.maps_mut().fail_after(n);
        let r = c.apply(&two);
        let e = r
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        expect_partial(r, false, n);
        assert!(e.contains("rewritten in full at the next repair"), "{e}");
        assert!(
            !c.in_step(),
            "write {n}: the restore failed too, the maps are not in step"
        );
        assert_eq!(view(&c), served, "write {n}: still the previous revision");
        c.maps_mut().heal();
        if repair_first {
            c.repair()
                .unwrap_or_else(|e| panic!("write {n}: repair: {e}"));
            assert_serves(&c, &one);
            assert_eq!(canon(c.maps()), fresh_one, "write {n}: after the repair");
            assert_eq!(view(&c), served);
        }
        c.apply(&two)
            .unwrap_or_else(|e| panic!("write {n}: the next apply: {e}"));
        assert_serves(&c, &two);
        assert_eq!(
            canon(c.maps()),
            fresh_two,
            "write {n}: after the next apply"
        );
    }
    // And with one write more than it needs, the change goes through.
    let mut c = applied(&one);
    c.maps_mut().fail_after(total);
    c.apply(&two).unwrap();
    assert_serves(&c, &two);
}

#[test]
fn every_write_of_a_change_can_fail_then_repair_and_apply() {
    every_write_can_fail(true);
}

#[test]
fn every_write_of_a_change_can_fail_then_apply_again() {
    every_write_can_fail(false);
}

#[test]
fn every_write_of_a_first_apply_can_fail() {
    let cfg = after();
    let total = writes_of_change(&config(&[]), &cfg);
    let fresh_cfg = fresh(&cfg);
    let empty = canon(&MemMaps::new());
    for n in 0..total {
        let mut c = Controller::new(MemMaps::new(), cfg.dataplane.ring_capacity).unwrap();
        c.maps_mut().fail_after(n);
        expect_partial(c.apply(&cfg), false, n);
        assert!(c.vips.is_empty() && !c.in_step());
        c.maps_mut().heal();
        c.repair().unwrap();
        assert!(c.in_step());
        assert_eq!(
            canon(c.maps()),
            empty,
            "write {n}: the repair removed what was written"
        );
        c.apply(&cfg).unwrap();
        assert_serves(&c, &cfg);
        assert_eq!(canon(c.maps()), fresh_cfg, "write {n}");
    }
}

#[test]
fn when_the_restore_succeeds_the_controller_is_in_step() {
    // A failing LB_RINGS: the change fails at its first ring slot, before any slot is
    // written; the restore needs no slot, so it succeeds.
    let (one, two) = (before(), after());
    let mut c = applied(&one);
    let served = view(&c);
    c.maps_mut().fault = Fault::Map(MAP_RINGS);
    let r = c.apply(&two);
    let e = r
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    expect_partial(r, true, 0);
    assert!(e.contains("written back and keeps serving"), "{e}");
    assert!(c.in_step(), "restored: in step");
    assert_eq!(view(&c), served);
    assert_serves(&c, &one);
    assert_eq!(canon(c.maps()), fresh(&one));
    c.maps_mut().heal();
    c.apply(&two).unwrap();
    assert_serves(&c, &two);
    assert_eq!(canon(c.maps()), fresh(&two));
}

#[test]
fn when_the_restore_fails_the_controller_says_so() {
    let (one, two) = (before(), after());
    let mut c = applied(&one);
    c.maps_mut().fault = Fault::Map(MAP_BACKENDS);
    expect_partial(c.apply(&two), false, 0);
    assert!(!c.in_step());
    // Still failing: a repair fails and says so, and the controller stays out of step.
    assert!(matches!(c.repair(), Err(ControlError::Map(_))));
    assert!(!c.in_step());
    c.maps_mut().heal();
    c.repair().unwrap();
    assert_serves(&c, &one);
    assert_eq!(canon(c.maps()), fresh(&one));
}

/// Writes a probe that takes web's first backend down makes.
fn writes_of_failure(cfg: &Config) -> usize {
    let mut c = applied(cfg);
    let w = c.maps().writes;
    c.on_probe(&fail("web", 1)).unwrap();
    c.maps().writes - w
}

#[test]
fn a_failed_write_during_a_probe_is_repaired() {
    let cfg = before();
    let total = writes_of_failure(&cfg);
    assert!(total > 50, "{total}");
    for n in 0..total {
        let mut c = applied(&cfg);
        assert_eq!(c.on_probe(&ok("web", 1, 1)).unwrap(), None);
        c.maps_mut().fail_after(n);
        let r = c.on_probe(&fail("web", 1));
        assert!(matches!(r, Err(ControlError::Map(_))), "write {n}: {r:?}");
        assert!(
            !c.in_step(),
            "write {n}: a failed write puts the maps out of step"
        );
        assert_eq!(backend_of(&c, "web", "198.18.0.21").state(), State::Down);
        c.maps_mut().heal();
        c.repair().unwrap();
        assert!(c.in_step());
        // The maps hold the controller's view, and that view has the backend down: no
        // slot of it is left in the ring.
        assert_serves(&c, &cfg);
        assert_eq!(
            slots_of(&c, "web", 1),
            0,
            "write {n}: a down backend still has slots"
        );
        assert_eq!(c.maps().backends[&1].flags, lb_common::BACKEND_F_DOWN);
    }
}

#[test]
fn an_apply_after_a_failed_probe_write_puts_the_maps_in_step() {
    let cfg = before();
    let mut c = applied(&cfg);
    c.maps_mut().fail_after(3);
    assert!(c.on_probe(&fail("web", 2)).is_err());
    c.maps_mut().heal();
    c.apply(&cfg).unwrap();
    assert_serves(&c, &cfg);
    assert_eq!(slots_of(&c, "web", 2), 0);
}

#[test]
fn a_failed_ramp_write_is_repaired() {
    let cfg = config(&[vip("web", "198.18.100.1", 80, 401)
        .health("slow_start_ms = 10000")
        .health("rise = 1")
        .health("fall = 1")
        .backend("198.18.0.21", "")
        .backend("198.18.0.22", "")]);
    let mut c = applied(&cfg);
    c.on_probe(&fail("web", 1)).unwrap();
    c.on_probe(&ok("web", 1, 1)).unwrap();
    c.vips[0].backends[0].up_since = Some(Instant::now() - Duration::from_millis(5000));
    c.maps_mut().fail_after(2);
    assert!(matches!(c.ramp(), Err(ControlError::Map(_))));
    assert!(!c.in_step());
    c.maps_mut().heal();
    c.repair().unwrap();
    assert_serves(&c, &cfg);
    // The ramp goes on: half the weight, about a third of the slots (50 : 100).
    c.ramp().unwrap();
    assert_serves(&c, &cfg);
    let share = slots_of(&c, "web", 1);
    assert!((share as i64 - 134).abs() <= 8, "{share}");
}
