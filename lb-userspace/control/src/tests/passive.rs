//! Passive detection's verdicts: a backend whose SYNs go unanswered while its siblings'
//! are answered is judged; an idle VIP, too few SYNs, a lone backend and a flood that hits
//! every backend alike are not.

use crate::{Counts, PassiveConfig, Tracker};

fn cfg() -> PassiveConfig {
    PassiveConfig {
        enabled: true,
        ..PassiveConfig::default()
    }
}

/// Feed `ms` of traffic, sampled every 10 ms: each backend gets `rate` SYNs a second and
/// answers the share of them `answered` gives (its id, the time).
fn run(
    t: &mut Tracker,
    counts: &mut [Counts],
    from_ms: u64,
    ms: u64,
    rate: u64,
    answered: impl Fn(u32, u64) -> bool,
) {
    for at in (from_ms..from_ms + ms).step_by(10) {
        for (i, c) in counts.iter_mut().enumerate() {
            let id = i as u32 + 1;
            let n = rate / 100;
            c.syns += n;
            if answered(id, at) {
                c.handshakes += n;
            }
            t.record(id, at, *c, 1000);
        }
    }
}

#[test]
fn a_backend_that_stops_answering_is_judged_within_the_window() {
    let (mut t, mut c) = (Tracker::default(), vec![Counts::default(); 3]);
    // 100 SYNs a second each, all answered; then backend 2 dies at 1000 ms.
    run(&mut t, &mut c, 0, 1000, 100, |_, _| true);
    assert!(t.judge(&[1, 2, 3], 990, &cfg()).is_empty());
    let mut judged_at = None;
    for at in (1000..1400).step_by(10) {
        run(&mut t, &mut c, at, 10, 100, |id, _| id != 2);
        let v = t.judge(&[1, 2, 3], at, &cfg());
        if !v.is_empty() {
            assert_eq!(v.len(), 1, "{v:?}");
            assert_eq!(v[0].backend_id, 2);
            assert!(v[0].reason.contains("siblings 100%"), "{}", v[0].reason);
            judged_at = Some(at);
            break;
        }
    }
    let at = judged_at.expect("backend 2 judged");
    // Within handshake_ms + window_ms of the failure.
    assert!(
        at - 1000 <= 130,
        "judged {} ms after the failure",
        at - 1000
    );
}

#[test]
fn an_idle_vip_a_lone_backend_and_a_trickle_are_not_judged() {
    let (mut t, mut c) = (Tracker::default(), vec![Counts::default(); 3]);
    run(&mut t, &mut c, 0, 1000, 0, |_, _| false);
    assert!(t.judge(&[1, 2, 3], 990, &cfg()).is_empty(), "idle");
    // 20 SYNs a second: 2 in a 100 ms window, fewer than min_syns.
    run(&mut t, &mut c, 1000, 1000, 20, |id, _| id != 2);
    assert!(t.judge(&[1, 2, 3], 1990, &cfg()).is_empty(), "too few");
    // Plenty, but no sibling to compare with.
    let (mut t, mut c) = (Tracker::default(), vec![Counts::default(); 1]);
    run(&mut t, &mut c, 0, 1000, 1000, |_, _| false);
    assert!(t.judge(&[1], 990, &cfg()).is_empty(), "lone");
}

#[test]
fn a_flood_that_no_client_completes_judges_nobody() {
    let (mut t, mut c) = (Tracker::default(), vec![Counts::default(); 3]);
    run(&mut t, &mut c, 0, 500, 100, |_, _| true);
    // Spoofed SYNs: 10,000 a second to each backend, a few real clients among them.
    for at in (500..1500).step_by(10) {
        for (i, x) in c.iter_mut().enumerate() {
            x.syns += 100;
            x.handshakes += 1;
            t.record(i as u32 + 1, at, *x, 1000);
        }
        assert!(t.judge(&[1, 2, 3], at, &cfg()).is_empty(), "at {at}");
    }
}

#[test]
fn only_usable_backends_are_judged_and_compared() {
    let (mut t, mut c) = (Tracker::default(), vec![Counts::default(); 3]);
    // Backend 3 is down already (its SYNs... none: it takes no new flows).
    run(&mut t, &mut c, 0, 1000, 100, |id, _| id == 1);
    let v = t.judge(&[1, 2], 990, &cfg());
    assert_eq!(v.iter().map(|v| v.backend_id).collect::<Vec<_>>(), [2]);
    // Not enough history for a window: nothing.
    assert!(Tracker::default().judge(&[1, 2], 50, &cfg()).is_empty());
}

#[test]
fn a_passive_verdict_takes_the_backend_out_of_the_ring_until_its_checks_rise() {
    use super::*;
    let cfg = config(&[vip("web", "198.18.100.1", 80, 401)
        .health("rise = 2")
        .set("passive = { enabled = true }")
        .backend("198.18.0.21", "")
        .backend("198.18.0.22", "")]);
    assert!(cfg.vips[0].get_ref().passive.enabled);
    let mut c = applied(&cfg);
    let id = bid(&c, "web", "198.18.0.21");
    let state = c.on_traffic("web", id, "traffic: 0 of 9".into()).unwrap();
    assert_eq!(state, Some(crate::State::Down));
    assert_eq!(slots_of(&c, "web", id), 0, "out of the ring at once");
    assert_eq!(
        backend_of(&c, "web", "198.18.0.21").reason,
        "traffic: 0 of 9"
    );
    // A second verdict on a backend already down changes nothing.
    assert_eq!(c.on_traffic("web", id, "again".into()).unwrap(), None);
    // The active checks' rise brings it back.
    let ok = || probe("web", id, Ok(std::time::Duration::from_millis(1)));
    assert_eq!(c.on_probe(&ok()).unwrap(), None, "1 of rise 2");
    assert_eq!(c.on_probe(&ok()).unwrap(), Some(crate::State::Up));
    assert!(slots_of(&c, "web", id) > 0);
}

#[test]
fn passive_settings_are_checked_at_their_key() {
    for (set, key) in [
        ("passive = { window_ms = 5 }", "window_ms"),
        ("passive = { handshake_ms = 0 }", "handshake_ms"),
        ("passive = { min_syns = 0 }", "min_syns"),
        ("passive = { ratio = 1.5 }", "ratio"),
        ("passive = { ratio = 0.0 }", "ratio"),
    ] {
        let text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\n\n{}",
            super::config_text("", &[super::vip("web", "198.18.100.1", 80, 101).set(set)])
        );
        let e = crate::Config::parse(&text, std::path::Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("[vip.passive] {key}")), "{set}: {e}");
        if key == "window_ms" {
            assert!(e.contains("window_ms 5 is out of range 20..=60000"), "{e}");
        }
    }
}

/// A few unanswered SYNs that land on one backend in one window are not a failure: a CI
/// run judged a healthy backend at a flood's onset on 1 of 5 answered, beside its
/// siblings' 13 of 14, which passes every other guard. Five unanswered of five beside
/// clean siblings is judged.
#[test]
fn a_handful_of_unanswered_syns_on_one_backend_is_not_a_verdict() {
    let judge = |own: (u64, u64), third: (u64, u64)| {
        let mut t = Tracker::default();
        for (id, (syns, answered)) in [(1, (7, 7)), (2, own), (3, third)] {
            t.record(id, 900, Counts::default(), 1000);
            let sent = Counts {
                syns,
                handshakes: 0,
            };
            t.record(id, 960, sent, 1000);
            let now = Counts {
                syns,
                handshakes: answered,
            };
            t.record(id, 990, now, 1000);
        }
        t.judge(&[1, 2, 3], 990, &cfg())
    };
    let v = judge((5, 1), (7, 6));
    assert!(v.is_empty(), "{v:?}");
    let v = judge((5, 0), (7, 7));
    assert_eq!(v.iter().map(|v| v.backend_id).collect::<Vec<_>>(), [2]);
}
