//! One backend's state machine: rise and fall, degraded by latency and by error rate, the
//! agent's words, slow start, drain then fail, disabled backends, reconfiguration by a
//! reload.

use std::time::{Duration, Instant};

use lb_common::BACKEND_F_DOWN;

use super::*;
use crate::{Admin, Liveness, State};

/// A backend of a one-VIP config with these `[vip.health]` keys; `down` as if found
/// marked down in pinned maps.
fn backend(health: &[&str], extra: &str, down: bool) -> BackendState {
    let mut v = vip("v", "198.18.100.1", 80, 101);
    for kv in health {
        v = v.health(kv);
    }
    let cfg = config(&[v.backend("198.18.0.21", extra)]);
    let vc = cfg.vips[0].get_ref();
    let bc = vc.backends[0].get_ref().clone();
    let h = bc.health.over(&vc.health).resolve(vc.port);
    BackendState::new(bc, 7, h, down)
}

fn pass(b: &mut BackendState, ms: u64) -> Option<crate::Transition> {
    b.observe(&Ok(Duration::from_millis(ms)), Instant::now())
}

fn flunk(b: &mut BackendState) -> Option<crate::Transition> {
    b.observe(&Err("timeout".into()), Instant::now())
}

#[test]
fn fall_takes_a_backend_down_exactly_at_the_count() {
    let mut b = backend(&["fall = 3"], "", false);
    assert_eq!(b.state(), State::Up);
    assert_eq!(flunk(&mut b), None, "1 failure of 3");
    assert_eq!(flunk(&mut b), None, "2 failures of 3");
    assert_eq!(b.state(), State::Up);
    assert!(!b.dataplane_down());
    let t = flunk(&mut b).expect("the 3rd failure takes it down");
    assert_eq!(
        (t.from, t.to, t.was_down, t.now_down),
        (State::Up, State::Down, false, true)
    );
    assert!(t.reason.contains("3 checks failed"), "{}", t.reason);
    assert!(t.reason.contains("timeout"), "{}", t.reason);
    assert_eq!(b.state(), State::Down);
    assert!(b.dataplane_down() && !b.usable());
    assert_eq!(flunk(&mut b), None, "already down: no new transition");
}

#[test]
fn rise_brings_a_backend_up_exactly_at_the_count() {
    let mut b = backend(&["rise = 3"], "", true);
    assert_eq!(b.state(), State::Down);
    assert_eq!(pass(&mut b, 1), None);
    assert_eq!(pass(&mut b, 1), None);
    assert_eq!(b.state(), State::Down);
    let t = pass(&mut b, 1).expect("the 3rd success brings it up");
    assert_eq!(
        (t.from, t.to, t.was_down, t.now_down),
        (State::Down, State::Up, true, false)
    );
    assert!(t.reason.contains("3 checks passed"), "{}", t.reason);
    assert!(b.usable());
}

#[test]
fn a_success_resets_the_failure_streak_and_vice_versa() {
    let mut b = backend(&["fall = 2", "rise = 2"], "", false);
    assert_eq!(flunk(&mut b), None);
    assert_eq!(pass(&mut b, 1), None);
    assert_eq!(flunk(&mut b), None, "the streak started again");
    assert_eq!(b.state(), State::Up);
    assert!(flunk(&mut b).is_some(), "two in a row");
    assert_eq!(pass(&mut b, 1), None);
    assert_eq!(flunk(&mut b), None);
    assert_eq!(pass(&mut b, 1), None, "the success streak started again");
    assert_eq!(b.state(), State::Down);
    assert_eq!(pass(&mut b, 1).map(|t| t.to), Some(State::Up));
}

#[test]
fn latency_above_the_limit_degrades_and_recovery_clears_it() {
    // Moving average: new = 0.7 * old + 0.3 * sample.
    let mut b = backend(&["max_latency_ms = 100"], "", false);
    assert_eq!(pass(&mut b, 50), None, "average 50 ms");
    assert_eq!(pass(&mut b, 150), None, "average 80 ms: within");
    let t = pass(&mut b, 300).expect("average 146 ms: degraded");
    assert_eq!((t.from, t.to), (State::Up, State::Degraded));
    assert!(!t.now_down, "degraded is not down for the dataplane");
    assert!(
        t.reason.contains("latency") && t.reason.contains("100 ms"),
        "{}",
        t.reason
    );
    assert!(!b.usable() && !b.dataplane_down());
    assert_eq!(pass(&mut b, 100), None, "average 132 ms: still degraded");
    assert_eq!(b.state(), State::Degraded);
    let mut back = None;
    for _ in 0..10 {
        if let Some(t) = pass(&mut b, 1) {
            back = Some(t);
            break;
        }
    }
    let t = back.expect("fast answers bring the average down");
    assert_eq!((t.from, t.to), (State::Degraded, State::Up));
    assert_eq!(t.reason, "back within thresholds");
    assert!(b.latency_ms.unwrap() <= 100.0);
}

#[test]
fn error_rate_is_judged_only_from_five_samples_on() {
    let mut b = backend(&["max_error_rate = 0.5", "fall = 100"], "", false);
    for i in 1..=4 {
        assert_eq!(flunk(&mut b), None, "failure {i}: too few samples to judge");
    }
    assert_eq!(b.error_rate(), 1.0);
    assert_eq!(b.state(), State::Up);
    // The 5th sample (a success) makes the rate 4/5: judged now, above 0.5.
    let t = pass(&mut b, 1).expect("5 samples, 80% errors: degraded");
    assert_eq!((t.from, t.to), (State::Up, State::Degraded));
    assert!(t.reason.contains("error rate 80%"), "{}", t.reason);
}

#[test]
fn error_rate_recovery_at_exactly_the_limit() {
    let mut b = backend(&["max_error_rate = 0.5", "fall = 100"], "", false);
    for _ in 0..4 {
        flunk(&mut b);
    }
    assert!(pass(&mut b, 1).is_some(), "4/5 failed: degraded");
    assert_eq!(pass(&mut b, 1), None, "4/6 failed");
    assert_eq!(pass(&mut b, 1), None, "4/7 failed");
    assert_eq!(b.state(), State::Degraded);
    let t = pass(&mut b, 1).expect("4/8 is not above 0.5");
    assert_eq!((t.from, t.to), (State::Degraded, State::Up));
    assert_eq!(b.recent.len(), 8);
}

#[test]
fn error_rate_looks_back_over_the_window_only() {
    let mut b = backend(&["max_error_rate = 0.2", "fall = 1000"], "", false);
    for _ in 0..5 {
        flunk(&mut b);
    }
    assert_eq!(b.state(), State::Degraded);
    for _ in 0..crate::ERROR_WINDOW {
        pass(&mut b, 1);
    }
    assert_eq!(b.recent.len(), crate::ERROR_WINDOW);
    assert_eq!(b.error_rate(), 0.0, "old failures left the window");
    assert_eq!(b.state(), State::Up);
}

#[test]
fn agent_down_is_sticky_until_up() {
    let mut b = backend(&["agent_port = 8082"], "", false);
    let t = b.observe_agent("down").expect("agent down");
    assert_eq!((t.from, t.to, t.now_down), (State::Up, State::Down, true));
    assert!(t.reason.contains("agent: down"), "{}", t.reason);
    for _ in 0..5 {
        assert_eq!(pass(&mut b, 1), None, "checks pass but the agent said down");
    }
    assert_eq!(b.state(), State::Down);
    let t = b.observe_agent("ready").expect("ready is up: clears down");
    assert_eq!((t.from, t.to, t.now_down), (State::Down, State::Up, false));
    assert!(!b.dataplane_down());
}

#[test]
fn agent_drain_and_maint_and_up_clears_them() {
    let mut b = backend(&[], "", false);
    let t = b.observe_agent("drain").unwrap();
    assert_eq!(
        (t.to, t.now_down),
        (State::Draining, false),
        "drain keeps flows"
    );
    let t = b.observe_agent("maint").unwrap();
    assert_eq!(
        (t.from, t.to, t.now_down),
        (State::Draining, State::Disabled, true)
    );
    let t = b.observe_agent("up").unwrap();
    assert_eq!(
        (t.from, t.to, t.now_down),
        (State::Disabled, State::Up, false)
    );
    assert!(!b.agent.drain && !b.agent.maint && !b.agent.down);
    assert_eq!(b.observe_agent("up"), None, "nothing changes");
    assert_eq!(
        b.observe_agent("what is this"),
        None,
        "unknown words are ignored"
    );
}

#[test]
fn agent_weight_percent_scales_the_weight_without_a_state_change() {
    let mut b = backend(&[], "weight = 200", false);
    let t = b.observe_agent("50%").expect("weight changed");
    assert!(!t.visible(), "same state");
    assert_eq!((t.from, t.to), (State::Up, State::Up));
    assert!(t.reason.contains("weight 200 -> 100"), "{}", t.reason);
    assert_eq!(b.weight(), 100);
    assert_eq!(b.observe_agent("50%"), None, "same weight again");
    b.observe_agent("0%").unwrap();
    assert_eq!(b.weight(), 0);
    assert_eq!(b.state(), State::Up);
    assert!(!b.usable(), "weight 0 takes no new flows");
    b.observe_agent("up 100%").unwrap();
    assert_eq!(b.weight(), 200);
}

#[test]
fn slow_start_ramps_the_weight_after_recovery() {
    let mut b = backend(&["slow_start_ms = 1000", "rise = 1"], "weight = 100", true);
    let t0 = Instant::now();
    let t = b.observe(&Ok(Duration::from_millis(1)), t0).unwrap();
    assert_eq!(t.to, State::Up);
    assert_eq!(b.up_since, Some(t0));
    assert_eq!(b.weight_at(t0), 1, "starts near zero, never 0");
    assert_eq!(b.weight_at(t0 + Duration::from_millis(250)), 25);
    assert_eq!(b.weight_at(t0 + Duration::from_millis(500)), 50);
    assert_eq!(b.weight_at(t0 + Duration::from_millis(999)), 99);
    assert_eq!(b.weight_at(t0 + Duration::from_millis(1000)), 100);
    assert!(b.ramping(t0 + Duration::from_millis(999)));
    assert!(!b.ramping(t0 + Duration::from_millis(1000)));
    // Without slow start a recovery is at full weight at once.
    let mut c = backend(&["rise = 1"], "", true);
    c.observe(&Ok(Duration::from_millis(1)), t0).unwrap();
    assert_eq!((c.up_since, c.weight_at(t0)), (None, 100));
}

#[test]
fn reconfigure_takes_the_files_admin_state() {
    let mut b = backend(&[], "", false);
    let cfg = config(&[vip("v", "198.18.100.1", 80, 101).backend("198.18.0.21", "drain = true")]);
    let vc = cfg.vips[0].get_ref();
    let bc = vc.backends[0].get_ref().clone();
    let h = bc.health.over(&vc.health).resolve(80);
    let t = b
        .reconfigure(bc.clone(), h.clone())
        .expect("drained by the file");
    assert_eq!(
        (t.from, t.to, t.now_down),
        (State::Up, State::Draining, false)
    );
    assert_eq!(t.reason, "configuration");
    assert_eq!(b.reason, "configuration");
    assert_eq!(b.admin, Admin::Draining);
    assert_eq!(b.reconfigure(bc, h), None, "the same again changes nothing");
}

// --- through the controller ---

fn web(health: &[&str], extras: [&str; 3]) -> Config {
    let mut v = vip("web", "198.18.100.1", 80, 1009);
    for kv in health {
        v = v.health(kv);
    }
    for (i, e) in extras.iter().enumerate() {
        v = v.backend(&format!("198.18.0.{}", 21 + i), e);
    }
    config(&[v])
}

#[test]
fn a_down_backend_leaves_the_ring_and_is_flagged_down() {
    let cfg = web(&["fall = 2", "rise = 2"], ["", "", ""]);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.22");
    assert!(slots_of(&c, "web", id) > 250);
    assert_eq!(c.on_probe(&fail("web", id)).unwrap(), None);
    assert!(
        slots_of(&c, "web", id) > 250,
        "one failure of two changes nothing"
    );
    assert_eq!(c.on_probe(&fail("web", id)).unwrap(), Some(State::Down));
    assert_eq!(slots_of(&c, "web", id), 0);
    assert_eq!(
        c.maps().backends[&id].flags & BACKEND_F_DOWN,
        BACKEND_F_DOWN
    );
    assert_serves(&c, &cfg);
    c.on_probe(&ok("web", id, 1)).unwrap();
    assert_eq!(c.on_probe(&ok("web", id, 1)).unwrap(), Some(State::Up));
    assert!(slots_of(&c, "web", id) > 250);
    assert_eq!(c.maps().backends[&id].flags, 0);
    assert_serves(&c, &cfg);
}

#[test]
fn a_degraded_backend_leaves_the_ring_but_is_not_flagged_down() {
    let cfg = web(&["max_latency_ms = 100"], ["", "", ""]);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.21");
    assert_eq!(
        c.on_probe(&ok("web", id, 900)).unwrap(),
        Some(State::Degraded)
    );
    assert_eq!(slots_of(&c, "web", id), 0, "no new flows");
    assert_eq!(c.maps().backends[&id].flags, 0, "established flows stay");
    assert_serves(&c, &cfg);
    let mut state = None;
    for _ in 0..20 {
        if let Some(s) = c.on_probe(&ok("web", id, 1)).unwrap() {
            state = Some(s);
            break;
        }
    }
    assert_eq!(state, Some(State::Up));
    assert!(slots_of(&c, "web", id) > 250);
}

#[test]
fn agent_answers_through_the_controller() {
    let cfg = web(&["agent_port = 8082"], ["", "", ""]);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.23");
    let full = slots_of(&c, "web", id);
    assert_eq!(
        c.on_probe(&agent("web", id, "down")).unwrap(),
        Some(State::Down)
    );
    assert_eq!(slots_of(&c, "web", id), 0);
    assert_eq!(c.maps().backends[&id].flags, BACKEND_F_DOWN);
    assert_eq!(
        c.on_probe(&agent("web", id, "up")).unwrap(),
        Some(State::Up)
    );
    assert_eq!(slots_of(&c, "web", id), full);
    assert_eq!(
        c.on_probe(&agent("web", id, "drain")).unwrap(),
        Some(State::Draining)
    );
    assert_eq!(slots_of(&c, "web", id), 0);
    assert_eq!(
        c.maps().backends[&id].flags,
        0,
        "draining keeps established flows"
    );
    assert_eq!(
        c.on_probe(&agent("web", id, "maint")).unwrap(),
        Some(State::Disabled)
    );
    assert_eq!(c.maps().backends[&id].flags, BACKEND_F_DOWN);
    assert_eq!(
        c.on_probe(&agent("web", id, "up")).unwrap(),
        Some(State::Up)
    );
    // A weight is not a state: on_probe reports no state, but the ring follows.
    assert_eq!(c.on_probe(&agent("web", id, "25%")).unwrap(), None);
    let quarter = slots_of(&c, "web", id);
    // Shares 25 : 100 : 100 of 1009 slots.
    assert!((quarter as i64 - 112).abs() <= 5, "{quarter} slots at 25%");
    assert!(events(&c).last().unwrap().contains("weight 100 -> 25"));
    assert_serves(&c, &cfg);
}

#[test]
fn an_unreachable_agent_changes_nothing() {
    let cfg = web(&["agent_port = 8082"], ["", "", ""]);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.21");
    c.on_probe(&agent("web", id, "drain")).unwrap();
    let (before, n_events) = (snapshot(c.maps()), c.events.len());
    for _ in 0..5 {
        assert_eq!(c.on_probe(&agent_unreachable("web", id)).unwrap(), None);
    }
    assert_eq!(snapshot(c.maps()), before, "no write");
    assert_eq!(c.events.len(), n_events, "no event");
    assert_eq!(
        backend_of(&c, "web", "198.18.0.21").state(),
        State::Draining,
        "still what it said"
    );
}

#[test]
fn slow_start_ramp_rewrites_the_ring() {
    let cfg = web(
        &["slow_start_ms = 10000", "rise = 1", "fall = 1"],
        ["", "", ""],
    );
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.21");
    let full = slots_of(&c, "web", id);
    assert_eq!(c.ramp().unwrap(), 0, "nothing ramps after a plain apply");
    c.on_probe(&fail("web", id)).unwrap();
    assert_eq!(c.on_probe(&ok("web", id, 1)).unwrap(), Some(State::Up));
    let cold = slots_of(&c, "web", id);
    assert!(cold <= 8, "weight ~1 of 100: {cold} slots");
    // Half way through the ramp (moved back in time rather than waited for).
    let half = Instant::now() - Duration::from_millis(5000);
    c.vips[0].backends[0].up_since = Some(half);
    let written = c.ramp().unwrap();
    let warm = slots_of(&c, "web", id);
    assert!(
        written > 0 && warm > cold,
        "{written} slots written, {cold} -> {warm}"
    );
    // Weights 50 : 100 : 100 of 1009 slots.
    assert!(
        (warm as i64 - 202).abs() <= 10,
        "{warm} slots at half weight"
    );
    assert_serves(&c, &cfg);
    c.vips[0].backends[0].up_since = Some(Instant::now() - Duration::from_millis(10_000));
    assert!(c.ramp().unwrap() > 0);
    assert_eq!(
        slots_of(&c, "web", id),
        full,
        "full weight: the original share back"
    );
    assert_eq!(c.vips[0].backends[0].up_since, None, "the ramp is over");
    assert_eq!(c.ramp().unwrap(), 0, "nothing left to ramp");
    assert_serves(&c, &cfg);
}

#[test]
fn a_draining_backend_that_fails_stays_draining_but_is_marked_down() {
    let cfg = web(&["fall = 2", "rise = 1"], ["", "", ""]);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.22");
    assert!(slots_of(&c, "web", id) > 0);
    let drained = web(&["fall = 2", "rise = 1"], ["", "drain = true", ""]);
    c.apply(&drained).unwrap();
    assert_eq!(
        backend_of(&c, "web", "198.18.0.22").state(),
        State::Draining
    );
    assert_eq!(slots_of(&c, "web", id), 0, "no new flows");
    assert_eq!(c.maps().backends[&id].flags, 0, "established flows stay");
    c.on_probe(&fail("web", id)).unwrap();
    assert_eq!(
        c.on_probe(&fail("web", id)).unwrap(),
        None,
        "the state shown did not change"
    );
    let b = backend_of(&c, "web", "198.18.0.22");
    assert_eq!((b.state(), b.live), (State::Draining, Liveness::Down));
    assert_eq!(
        c.maps().backends[&id].flags,
        BACKEND_F_DOWN,
        "its flows must move"
    );
    assert_eq!(slots_of(&c, "web", id), 0);
    assert!(
        events(&c)
            .last()
            .unwrap()
            .ends_with("draining and failing its checks: marked down"),
        "{:?}",
        events(&c).last()
    );
    assert_serves(&c, &drained);
    c.on_probe(&ok("web", id, 1)).unwrap();
    assert_eq!(
        c.maps().backends[&id].flags,
        0,
        "passing again: no longer down"
    );
    assert!(
        events(&c)
            .last()
            .unwrap()
            .ends_with("passing its checks again")
    );
    assert_eq!(slots_of(&c, "web", id), 0, "still draining");
}

#[test]
fn disabled_backends_are_down_for_the_dataplane_until_enabled() {
    let cfg = web(&[], ["", "disabled = true", ""]);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.22");
    let b = backend_of(&c, "web", "198.18.0.22");
    assert_eq!((b.state(), b.admin), (State::Disabled, Admin::Disabled));
    assert_eq!(c.maps().backends[&id].flags, BACKEND_F_DOWN);
    assert_eq!(slots_of(&c, "web", id), 0);
    // Passing checks do not bring a disabled backend back.
    for _ in 0..3 {
        assert_eq!(c.on_probe(&ok("web", id, 1)).unwrap(), None);
    }
    assert_eq!(slots_of(&c, "web", id), 0);
    let enabled = web(&[], ["", "", ""]);
    c.apply(&enabled).unwrap();
    assert_eq!(bid(&c, "web", "198.18.0.22"), id, "same backend, same id");
    assert_eq!(backend_of(&c, "web", "198.18.0.22").state(), State::Up);
    assert_eq!(c.maps().backends[&id].flags, 0);
    assert!(slots_of(&c, "web", id) > 250);
    assert!(
        events(&c)
            .iter()
            .any(|e| e == "web/198.18.0.22: disabled -> up by configuration"),
        "{:?}",
        events(&c)
    );
    assert_serves(&c, &enabled);
}

#[test]
fn a_reload_that_drains_is_a_configuration_transition() {
    let cfg = web(&[], ["", "", ""]);
    let mut c = applied(&cfg);
    let r = recorder(&mut c);
    let drained = web(&[], ["drain = true", "", ""]);
    c.apply(&drained).unwrap();
    let b = backend_of(&c, "web", "198.18.0.21");
    assert_eq!(
        (b.state(), b.reason.as_str()),
        (State::Draining, "configuration")
    );
    assert_eq!(slots_of(&c, "web", b.id), 0);
    assert!(
        events(&c).contains(&"web/198.18.0.21: up -> draining by configuration".to_string()),
        "{:?}",
        events(&c)
    );
    assert_eq!(
        *r.transitions.lock().unwrap(),
        vec![(
            "web".to_string(),
            "198.18.0.21".parse().unwrap(),
            State::Draining
        )]
    );
    assert_serves(&c, &drained);
}

#[test]
fn a_reload_keeps_the_health_state_of_backends_that_stay() {
    let cfg = web(&["fall = 1"], ["", "", ""]);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.23");
    c.on_probe(&fail("web", id)).unwrap();
    // A reload that changes another backend's weight and adds one.
    let mut v = vip("web", "198.18.100.1", 80, 1009).health("fall = 1");
    v = v
        .backend("198.18.0.21", "weight = 50")
        .backend("198.18.0.22", "")
        .backend("198.18.0.23", "")
        .backend("198.18.0.24", "");
    let next = config(&[v]);
    c.apply(&next).unwrap();
    let b = backend_of(&c, "web", "198.18.0.23");
    assert_eq!((b.id, b.state()), (id, State::Down), "still down, same id");
    assert_eq!(slots_of(&c, "web", id), 0);
    assert_serves(&c, &next);
}

#[test]
fn weight_zero_takes_no_slot_but_stays_up() {
    let cfg = web(&[], ["", "weight = 0", ""]);
    let c = applied(&cfg);
    let b = backend_of(&c, "web", "198.18.0.22");
    assert_eq!((b.state(), b.usable()), (State::Up, false));
    assert_eq!(slots_of(&c, "web", b.id), 0);
    assert_eq!(c.maps().backends[&b.id].flags, 0);
}

#[test]
fn probes_and_agents_list_what_to_check() {
    let v = vip("web", "198.18.100.1", 80, 1009)
        .health("agent_port = 8082")
        .backend("198.18.0.21", "")
        .backend("198.18.0.22", "health = { port = 8080 }")
        .backend("198.18.0.23", "health = { kind = \"none\" }");
    let c = applied(&config(&[v]));
    let probes: Vec<String> = c.probes().iter().map(|p| p.addr.to_string()).collect();
    assert_eq!(probes, ["198.18.0.21:80", "198.18.0.22:8080"]);
    let agents: Vec<String> = c.agents().iter().map(|p| p.addr.to_string()).collect();
    assert_eq!(
        agents,
        ["198.18.0.21:8082", "198.18.0.22:8082", "198.18.0.23:8082"]
    );
    let p = &c.probes()[1];
    assert_eq!(
        (p.vip.as_str(), p.backend_id),
        ("web", bid(&c, "web", "198.18.0.22"))
    );
}
