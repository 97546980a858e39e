//! Events (for `lbctl events`) and the observer (for metrics).

use super::*;

fn cfg(drain: bool) -> Config {
    config(&[vip("web", "198.18.100.1", 80, 401)
        .health("fall = 1")
        .health("rise = 1")
        .backend("198.18.0.21", "")
        .backend("198.18.0.22", if drain { "drain = true" } else { "" })])
}

#[test]
fn transitions_produce_events_with_the_vip_and_backend() {
    let mut c = applied(&cfg(false));
    let n = c.events.len();
    c.on_probe(&fail("web", 1)).unwrap();
    assert_eq!(c.events.len(), n + 1);
    let e = c.events.back().unwrap();
    assert_eq!(e.vip, "web");
    assert_eq!(e.backend, Some("198.18.0.21".parse().unwrap()));
    assert!(
        e.what
            .starts_with("up -> down: 1 checks failed, last: connection refused; "),
        "{}",
        e.what
    );
    assert!(e.what.contains("ring slots written"), "{}", e.what);
    assert!(crate::ago(e.at) < Duration::from_secs(5));
    c.on_probe(&ok("web", 1, 1)).unwrap();
    assert!(
        c.events
            .back()
            .unwrap()
            .what
            .starts_with("down -> up: 1 checks passed")
    );
    // Nothing changed: no event.
    let n = c.events.len();
    c.on_probe(&ok("web", 1, 1)).unwrap();
    assert_eq!(c.events.len(), n);
}

#[test]
fn probes_for_unknown_vips_or_backends_are_ignored() {
    let mut c = applied(&cfg(false));
    let (maps, n) = (snapshot(c.maps()), c.events.len());
    assert_eq!(c.on_probe(&fail("nope", 1)).unwrap(), None);
    assert_eq!(c.on_probe(&fail("web", 99)).unwrap(), None);
    assert_eq!(snapshot(c.maps()), maps);
    assert_eq!(c.events.len(), n);
}

#[test]
fn the_observer_sees_checks_transitions_rings_and_state() {
    let mut c = applied(&cfg(false));
    let r = recorder(&mut c);
    assert_eq!(r.states.lock().unwrap().len(), 1, "the state at once");
    let addr: IpAddr = "198.18.0.21".parse().unwrap();
    assert_eq!(c.on_probe(&ok("web", 1, 7)).unwrap(), None);
    assert_eq!(
        *r.checks.lock().unwrap(),
        vec![("web".to_string(), addr, Duration::from_millis(7))]
    );
    assert!(r.transitions.lock().unwrap().is_empty());
    c.on_probe(&fail("web", 1)).unwrap();
    assert_eq!(
        *r.transitions.lock().unwrap(),
        vec![("web".to_string(), addr, State::Down)]
    );
    assert_eq!(*r.rings.lock().unwrap(), 1, "one ring rewritten");
    let states = r.states.lock().unwrap().clone();
    let last = states.last().unwrap();
    assert_eq!(last[0].0, "web");
    assert_eq!(
        last[0].1,
        vec![
            (addr, State::Down),
            ("198.18.0.22".parse().unwrap(), State::Up)
        ]
    );
    // A weight change is no transition: no transition() call, but a new state.
    let calls = r.states.lock().unwrap().len();
    c.on_probe(&agent("web", 2, "50%")).unwrap();
    assert_eq!(r.transitions.lock().unwrap().len(), 1);
    assert_eq!(r.states.lock().unwrap().len(), calls + 1);
    // A reload's transitions are reported too, and the new state.
    c.apply(&cfg(true)).unwrap();
    assert_eq!(
        r.transitions.lock().unwrap().last().unwrap(),
        &(
            "web".to_string(),
            "198.18.0.22".parse().unwrap(),
            State::Draining
        )
    );
    let states = r.states.lock().unwrap();
    assert_eq!(states.last().unwrap()[0].1[1].1, State::Draining);
}

#[test]
fn applies_record_what_left() {
    let mut c = applied(&config(&[
        vip("a", "198.18.100.1", 80, 211)
            .backend("198.18.0.1", "")
            .backend("198.18.0.2", ""),
        vip("b", "198.18.100.2", 80, 101).backend("198.18.0.3", ""),
    ]));
    c.apply(&config(&[
        vip("a", "198.18.100.1", 80, 211).backend("198.18.0.1", "")
    ]))
    .unwrap();
    let ev = events(&c);
    assert!(ev.contains(&"b: VIP removed".to_string()), "{ev:?}");
    assert!(
        ev.contains(&"a/198.18.0.2: backend removed".to_string()),
        "{ev:?}"
    );
}

#[test]
fn the_event_log_is_bounded() {
    let mut c = applied(&cfg(false));
    for i in 0..10_005 {
        c.event("web", None, format!("e{i}"));
    }
    assert_eq!(c.events.len(), 10_000);
    assert_eq!(c.events.back().unwrap().what, "e10004");
    assert_eq!(c.events.front().unwrap().what, "e5", "the oldest go first");
}
