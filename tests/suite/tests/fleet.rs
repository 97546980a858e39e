//! Three balancer nodes behind an FRR router with ECMP and BFD, each node's lbd announcing
//! the VIP through its own BIRD, backends behind the router on IP-in-IP (issue 13). Every
//! scenario asserts what a client sees (requests that failed, held connections that broke)
//! and what the router holds (its next hops for the VIP), and prints the figures.

use std::time::{Duration, Instant};

use lb_tests::{
    fleet::{Fleet, VIP},
    holds,
};
use serde_json::Value;

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");
const LBCTL: &str = env!("CARGO_BIN_EXE_lbt-lbctl");
/// Health checks every 200 ms, down after 2 failures.
const CHECK_MS: u32 = 200;
/// Held connections (each asks every 100 ms) in the failure scenarios.
const HELD: u32 = 200;

fn lbctl(f: &Fleet, node: usize, args: &[&str]) -> (bool, String) {
    f.lbctl(LBCTL, node, args)
}

fn json(f: &Fleet, node: usize, args: &[&str]) -> Value {
    f.lbctl_json(LBCTL, node, args)
}

/// New flows node `i` has scheduled for the VIP so far.
fn new_flows(f: &Fleet, i: usize) -> u64 {
    json(f, i, &["stats"])["vips"][0]["new_flows"]
        .as_u64()
        .unwrap()
}

/// Wait until every node has every backend up: until then the nodes' rings differ, and a
/// flow the router moves between nodes may reach another backend (scenario 6 measures that
/// window; the others must not start inside it).
fn wait_all_up(f: &Fleet) {
    let end = Instant::now() + Duration::from_secs(20);
    for i in 0..f.nodes.len() {
        loop {
            // A daemon just (re)started may not answer yet.
            let (ok, out) = lbctl(f, i, &["--json", "vip", "list"]);
            let v: Value = match ok {
                true => serde_json::from_str(&out).unwrap_or(Value::Null),
                false => Value::Null,
            };
            if v[0]["usable"] == f.backends.len() {
                break;
            }
            assert!(
                Instant::now() < end,
                "node {i} never had every backend up: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One fleet at a time: each is a router, three nodes and three backends of real daemons,
/// and health checks every 200 ms misjudge on a machine of two CPUs running several.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(bfd: bool) -> (std::sync::MutexGuard<'static, ()>, Fleet) {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = Fleet::new(3, 3, ECHO, LBD, bfd);
    for i in 0..3 {
        let c = f.lbd_config(i, CHECK_MS);
        f.start_lbd(i, LBD, &c);
    }
    f.wait_next_hops(&[0, 1, 2], 30);
    if bfd {
        f.wait_bfd_up(30);
    }
    wait_all_up(&f);
    (turn, f)
}

/// Watch the router's next hops until `done`; returns every distinct set seen, in order.
fn watch_next_hops(f: &Fleet, done: impl Fn() -> bool) -> Vec<Vec<String>> {
    let mut seen: Vec<Vec<String>> = vec![f.next_hops()];
    while !done() {
        let now = f.next_hops();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen
}

fn assert_none_broken(h: &holds::Held, what: &str) {
    let total: u32 = h.at.values().sum();
    assert_eq!(total, HELD, "{what}: held {:?}", h.at);
    assert!(
        h.broken.is_empty(),
        "{what}: held connections broke: {:?} (of {:?}): {:?}",
        h.broken,
        h.at,
        h.why
    );
}

#[test]
fn nodes_announce_fail_drain_and_restart_without_breaking_connections() {
    let (_turn, mut f) = start(true);
    // 1. Every node announces; new connections spread over the nodes and the backends.
    let before: Vec<u64> = (0..3).map(|i| new_flows(&f, i)).collect();
    let (seen, failed) = f.requests(300);
    let per_node: Vec<u64> = (0..3).map(|i| new_flows(&f, i) - before[i]).collect();
    println!("300 new connections: per node {per_node:?}, per backend {seen:?}, failed {failed}");
    assert_eq!(failed, 0);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(per_node.iter().all(|n| *n > 0), "{per_node:?}");
    // Replies go from the backends straight to the client, never back through a node.
    let through: Vec<u64> = (0..3).map(|i| f.replies_through(i)).collect();
    assert_eq!(through, [0, 0, 0], "replies came back through the nodes");
    for i in 0..3 {
        let s = json(&f, i, &["status"]);
        assert_eq!(
            s["announce"]["routes"],
            serde_json::json!([VIP]),
            "node {i}: {s}"
        );
        let v = json(&f, i, &["vip", "list"]);
        assert_eq!(v[0]["announced"], true, "node {i}: {v}");
    }

    // 2. Node 2 fails silently: its link to the router drops everything. BFD takes it out;
    // connections it carried, and those the router moves between the survivors, keep their
    // backend on whichever node they land.
    let hold = f.hold(HELD, 4000);
    std::thread::sleep(Duration::from_millis(1000));
    // New connections all along, to see which fail and until when.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failed_at = Instant::now();
    let (detect, failures) = std::thread::scope(|sc| {
        let prober = sc.spawn(|| {
            let mut failures: Vec<(Duration, u32)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, failed) = f.requests(5);
                if failed > 0 {
                    failures.push((failed_at.elapsed(), failed));
                }
            }
            failures
        });
        f.cut_link(1);
        f.wait_next_hops(&[0, 2], 10);
        let detect = failed_at.elapsed();
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (detect, prober.join().unwrap())
    });
    let failed_new: u32 = failures.iter().map(|(_, n)| n).sum();
    let last_failure = failures.last().map(|(t, _)| *t);
    let held = holds::finish(hold);
    println!(
        "silent failure of node 2: router dropped it after {:.0} ms (BFD 100 ms x 3); {failed_new} new connections failed, the last {:.0} ms after the failure; held {:?}, broken {:?}",
        detect.as_secs_f64() * 1000.0,
        last_failure.unwrap_or_default().as_secs_f64() * 1000.0,
        held.at,
        held.broken
    );
    // New connections fail only inside the detection window (a connect that started just
    // before the route went may finish failing a retransmission later: one RTO of 1 s).
    assert!(
        last_failure.is_none_or(|t| t < detect + Duration::from_millis(1500)),
        "new connections failed {last_failure:?} after the failure, detection took {detect:?}"
    );
    // BFD, not the BGP hold timer (3 s), took it out.
    assert!(detect < Duration::from_secs(3), "took {detect:?}");
    assert_none_broken(&held, "silent failure");
    f.mend_link(1);
    f.wait_next_hops(&[0, 1, 2], 30);
    // Node 2's checks failed through the cut too: its backends come back one by one.
    wait_all_up(&f);

    // 3. `lbctl node drain` withdraws node 1's route; resume brings it back. Nothing breaks.
    let hold = f.hold(HELD, 3000);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let (ok, out) = lbctl(&f, 0, &["node", "drain"]);
    assert!(ok, "{out}");
    let gone = f.wait_next_hops(&[1, 2], 10);
    let (_, failed_drain) = f.requests(100);
    let s = json(&f, 0, &["status"]);
    assert_eq!(s["announce"]["maintenance"], true, "{s}");
    assert_eq!(s["announce"]["routes"], serde_json::json!([]), "{s}");
    let (ok, out) = lbctl(&f, 0, &["node", "resume"]);
    assert!(ok, "{out}");
    let back = f.wait_next_hops(&[0, 1, 2], 10);
    let held = holds::finish(hold);
    println!(
        "node drain: route gone {:.0} ms after the command; {failed_drain} of 100 new connections failed; resumed in {:.0} ms; held broken {:?}",
        t.elapsed().min(gone).as_secs_f64() * 1000.0,
        back.as_secs_f64() * 1000.0,
        held.broken
    );
    assert_eq!(failed_drain, 0);
    assert_none_broken(&held, "drain and resume");
    let history = json(&f, 0, &["config", "history"]);
    let sources: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["source"].as_str())
        .collect();
    assert!(
        sources.contains(&"api: node.drain") && sources.contains(&"api: node.resume"),
        "drain and resume are revisions: {sources:?}"
    );

    // 4. kill -9 of node 3's lbd: the pinned dataplane forwards and BIRD keeps the route;
    // the restarted lbd adopts and keeps announcing, with no withdraw in between.
    let hold = f.hold(HELD, 3000);
    std::thread::sleep(Duration::from_millis(300));
    f.nodes[2].lbd().kill9();
    let (_, failed_dead) = f.requests(100);
    f.nodes[2].lbd().restart();
    let restarted = Instant::now();
    let nodes = &f;
    let hops = watch_next_hops(nodes, || {
        restarted.elapsed() > Duration::from_secs(2)
            && nodes.nodes[2]
                .lbd
                .as_ref()
                .is_some_and(|d| d.log().contains("BIRD took the announcements"))
            || restarted.elapsed() > Duration::from_secs(20)
    });
    let held = holds::finish(hold);
    println!(
        "kill -9 of node 3's lbd and restart: {failed_dead} of 100 new connections failed; next-hop sets seen {hops:?}; held broken {:?}",
        held.broken
    );
    assert_eq!(failed_dead, 0);
    assert_eq!(
        hops.len(),
        1,
        "the route moved while lbd restarted: {hops:?}"
    );
    assert_eq!(hops[0].len(), 3);
    assert_none_broken(&held, "kill -9 and restart");
    let log = f.nodes[2].lbd().last_log();
    assert!(log.contains("adopting pinned dataplane state"), "{log}");

    // SIGTERM keeps the routes (a hitless restart); with --withdraw-on-exit they go first.
    f.nodes[2].lbd().signal("TERM");
    let st = f.nodes[2].lbd().wait_exit(10);
    assert!(st.success(), "{st}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.next_hops().len(), 3, "a plain SIGTERM withdrew the route");
    f.nodes[2].lbd().set_run_args(&["--withdraw-on-exit"]);
    f.nodes[2].lbd().restart();
    wait_all_up(&f);
    let t = Instant::now();
    f.nodes[2].lbd().signal("TERM");
    let st = f.nodes[2].lbd().wait_exit(10);
    let exited = t.elapsed();
    assert!(st.success(), "{st}");
    // lbd exits once BIRD took the empty routes; the router hears the withdrawal from BIRD
    // a moment later (BGP), so it is waited for, and its time reported. Once in a CI run
    // the router had no route at all for 2 s here: nodes 1 and 2 had not withdrawn, so
    // their BFD sessions had most likely flapped under load. The wait allows for BGP to come
    // back, and a slow one prints the router's BFD peers to show what happened.
    let after = f.wait_next_hops(&[0, 1], 10);
    if after > Duration::from_secs(2) {
        println!(
            "the router took {after:?} to show nodes 1 and 2 alone; its BFD peers now:\n{}",
            f.bfd_peers()
        );
    }
    println!(
        "SIGTERM with --withdraw-on-exit: lbd exited after {:.0} ms, having withdrawn; the router dropped the route {:.0} ms after that",
        exited.as_secs_f64() * 1000.0,
        after.as_secs_f64() * 1000.0
    );
    let log = f.nodes[2].lbd().last_log();
    assert!(
        log.contains("every route withdrawn before stopping"),
        "{log}"
    );
}

/// The time of the first event on node `i` since `after` whose text contains `what` about
/// `backend`.
fn event_at(
    f: &Fleet,
    i: usize,
    backend: &str,
    what: &str,
    after: std::time::SystemTime,
) -> Option<std::time::SystemTime> {
    let events = json(f, i, &["events", "--limit", "1000"]);
    events
        .as_array()?
        .iter()
        .filter(|e| e["backend"] == backend && e["what"].as_str().is_some_and(|w| w.contains(what)))
        .filter_map(|e| humantime::parse_rfc3339(e["at"].as_str()?).ok())
        .find(|t| *t >= after)
}

#[test]
fn a_node_without_backends_withdraws_and_a_dead_backend_leaves_every_node() {
    let (_turn, mut f) = start(true);
    // 5. Node 1 loses its path to every backend (its health checks fail there only): it
    // withdraws the VIP; the others keep serving it.
    let cut = std::time::SystemTime::now();
    f.nodes[0].ns.exec(
        "nft add table inet cut && \
         nft add chain inet cut output_checks '{ type filter hook output priority 0; }' && \
         nft add rule inet cut output_checks ip daddr 198.18.20.0/22 tcp dport 80 drop",
    );
    let gone = f.wait_next_hops(&[1, 2], 15);
    let gone_at = std::time::SystemTime::now();
    // The verdict that left the VIP without backends: the last of its backends to go down.
    let verdict = f
        .backends
        .iter()
        .filter_map(|b| event_at(&f, 0, &b.addr, "up -> down", cut))
        .max()
        .expect("node 1 marked its backends down");
    let (_, failed) = f.requests(200);
    let v = json(&f, 0, &["vip", "list"]);
    println!(
        "node 1 lost its backends: route gone {:.0} ms after the cut, {:.0} ms after the verdict (checks every {CHECK_MS} ms, fall 2); then {failed} of 200 new connections failed; vip list says {}",
        gone.as_secs_f64() * 1000.0,
        gone_at
            .duration_since(verdict)
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0,
        v[0]["withheld"]
    );
    assert_eq!(failed, 0);
    assert_eq!(v[0]["announced"], false, "{v}");
    let (ok, shown) = lbctl(&f, 0, &["vip", "show", "web"]);
    assert!(
        ok && shown.contains("announced") && shown.contains("no: 0 usable backends, 1 needed"),
        "{shown}"
    );
    assert!(
        v[0]["withheld"]
            .as_str()
            .unwrap()
            .contains("0 usable backends, 1 needed"),
        "{v}"
    );
    f.nodes[0].ns.exec("nft delete table inet cut");
    f.wait_next_hops(&[0, 1, 2], 15);
    wait_all_up(&f);

    // 6. A backend dies: every node stops sending new flows to it. The nodes' verdicts come
    // apart by up to a check interval: the window in which they disagree on the backend set.
    let hold = f.hold(HELD, 3000);
    std::thread::sleep(Duration::from_millis(300));
    let died = std::time::SystemTime::now();
    f.stop_server(1);
    let b2 = &f.backends[1].addr.clone();
    let end = Instant::now() + Duration::from_secs(10);
    let verdicts: Vec<std::time::SystemTime> = loop {
        let v: Vec<_> = (0..3)
            .map(|i| event_at(&f, i, b2, "up -> down", died))
            .collect();
        if v.iter().all(Option::is_some) {
            break v.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < end,
            "not every node marked {b2} down: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let since = |t: &std::time::SystemTime| t.duration_since(died).unwrap_or_default();
    let first = verdicts.iter().map(since).min().unwrap();
    let last = verdicts.iter().map(since).max().unwrap();
    let (seen, failed) = f.requests(300);
    let held = holds::finish(hold);
    println!(
        "backend b2 died: nodes marked it down after {:?} ms; they disagreed for {:.0} ms; then 300 new connections: {seen:?}, {failed} failed; held: broken {:?} (only b2's may break), connects retried {}",
        verdicts
            .iter()
            .map(|t| since(t).as_millis())
            .collect::<Vec<_>>(),
        (last - first).as_secs_f64() * 1000.0,
        held.broken,
        held.retried
    );
    assert_eq!(failed, 0);
    assert!(!seen.contains_key("b2"), "{seen:?}");
    assert!(
        held.broken.keys().all(|b| b == "b2"),
        "connections to healthy backends broke: {:?}",
        held.broken
    );
    f.start_server(1);
}

#[test]
fn bird_trouble_is_reported_and_traffic_keeps_flowing() {
    let (_turn, mut f) = start(true);
    // 7a. A bird.conf error: lbd's change is not taken; lbd says so, and BIRD keeps the
    // configuration (and route) it had, which status reports truthfully.
    let conf = f.nodes[0].dir.join("bird.conf");
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{good}\nthis is not bird syntax;\n")).unwrap();
    let (ok, out) = lbctl(&f, 0, &["node", "drain"]);
    assert!(ok, "{out}");
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = json(&f, 0, &["status"]);
        if s["announce"]["error"].is_string() {
            break s;
        }
        assert!(Instant::now() < end, "no error reported: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, failed) = f.requests(100);
    println!(
        "bird.conf broken on node 1: status says {}; {failed} of 100 requests failed",
        status["announce"]
    );
    assert!(
        status["announce"]["error"]
            .as_str()
            .unwrap()
            .contains("syntax error"),
        "{status}"
    );
    assert_eq!(failed, 0);
    assert_eq!(f.next_hops().len(), 3, "BIRD kept its previous routes");
    // Fixed: lbd's retry gets the drain through.
    std::fs::write(&conf, &good).unwrap();
    f.wait_next_hops(&[1, 2], 15);
    let (ok, out) = lbctl(&f, 0, &["node", "resume"]);
    assert!(ok, "{out}");
    f.wait_next_hops(&[0, 1, 2], 15);

    // 7b. BIRD stops on node 2: its routes go with it (the router drops node 2), lbd
    // reports it, and announces again once BIRD is back.
    f.stop_bird(1);
    f.wait_next_hops(&[0, 2], 10);
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = json(&f, 1, &["status"]);
        if s["announce"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not answer"))
        {
            break s;
        }
        assert!(Instant::now() < end, "BIRD's absence not reported: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, failed) = f.requests(100);
    println!(
        "BIRD stopped on node 2: status says {}; {failed} of 100 failed",
        s["announce"]
    );
    assert_eq!(failed, 0);
    assert_eq!(s["announce"]["routes"], serde_json::json!([]), "{s}");
    f.restart_bird(1, true);
    let back = f.wait_next_hops(&[0, 1, 2], 20);
    println!(
        "BIRD back on node 2: announced again after {:.0} ms",
        back.as_secs_f64() * 1000.0
    );
    assert!(f.nodes[1].lbd().log().contains("BIRD does not answer"));
    f.nodes[1].lbd().assert_running();

    // 7c. A control socket that nothing serves: a clear error, the dataplane unaffected.
    let (ok, out) = lbctl(&f, 2, &["config", "show"]);
    assert!(ok, "{out}");
    let text = out.replace(
        &f.nodes[2].bird_socket().display().to_string(),
        "/nonexistent/bird.ctl",
    );
    let file = f.nodes[2].dir.join("wrong-socket.toml");
    std::fs::write(&file, text).unwrap();
    let (ok, out) = lbctl(&f, 2, &["config", "apply", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = json(&f, 2, &["status"]);
        if s["announce"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/bird.ctl"))
        {
            break s;
        }
        assert!(
            Instant::now() < end,
            "the unreachable socket is not reported: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, failed) = f.requests(100);
    println!(
        "unreachable control socket on node 3: {}; {failed} of 100 failed",
        s["announce"]["error"]
    );
    assert_eq!(failed, 0);
    f.nodes[2].lbd().assert_running();
}

#[test]
fn without_bfd_a_silent_failure_waits_for_the_hold_timer() {
    // The baseline for the BFD figure of the first test.
    let (_turn, f) = start(false);
    let t = Instant::now();
    f.cut_link(1);
    f.wait_next_hops(&[0, 2], 15);
    let took = t.elapsed();
    println!(
        "silent failure of node 2 without BFD: router dropped it after {:.0} ms (hold time 3 s)",
        took.as_secs_f64() * 1000.0
    );
    // The hold timer, not BFD: this is what BFD saves.
    assert!(took > Duration::from_secs(1), "took {took:?}");
}
