//! The daemon end to end: real servers as backends in namespaces, the daemon as a process
//! in the balancer's namespace. Failover (server stopped, black-holed, link down), recovery,
//! drain, backup pool, a SIGKILL restart with traffic running, and a bad reload.

use std::time::{Duration, Instant};

use lb_common::Forward;
use lb_tests::{
    daemon::Daemon,
    holds,
    topology::{Topology, VIP4},
};

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");
const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;
const RISE: u64 = 2;

fn web() -> String {
    format!("{VIP4}:80")
}

/// Health checks of the tests: fast, so failover fits in a test's time.
fn tcp_health() -> String {
    format!(
        "kind = \"tcp\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 150\nrise = {RISE}\nfall = {FALL}\n"
    )
}

/// One TCP VIP over backends given as (address, extra keys).
fn config(backends: &[(&str, &str)], vip_extra: &str) -> String {
    config_with(backends, vip_extra, &tcp_health())
}

fn config_with(backends: &[(&str, &str)], vip_extra: &str, health: &str) -> String {
    let mut c = format!(
        r#"[daemon]
interfaces = ["eth0"]
pin_dir = "@PIN_DIR@"

[dataplane]
flows = 65536
ring_capacity = 262148

[[vip]]
name = "web"
address = "{VIP4}"
port = 80
{vip_extra}

[vip.health]
{health}
"#
    );
    for (addr, extra) in backends {
        c.push_str(&format!(
            "\n[[vip.backend]]\naddress = \"{addr}\"\n{extra}\n"
        ));
    }
    c
}

fn three() -> String {
    config(
        &[
            ("198.18.0.21", ""),
            ("198.18.0.22", ""),
            ("198.18.0.23", ""),
        ],
        "",
    )
}

/// Requests until none reaches `gone` and none fails; returns how long that took.
fn wait_avoided(t: &Topology, gone: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (seen, failed) = t.requests("--tcp", &web(), 30);
        if failed == 0 && !seen.contains_key(gone) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{gone} still gets new flows (or requests fail) after {within:?}: {seen:?}, failed {failed}"
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    ServerStopped,
    BlackHoled,
    LinkDown,
}

fn failover(kind: Failure) {
    let mut t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &three());
    d.wait_served(&t, &web());
    let hold = t.hold(&web(), 30, 4000);
    std::thread::sleep(Duration::from_millis(300));
    let failed_at = Instant::now();
    match kind {
        Failure::ServerStopped => t.stop_server(0),
        Failure::BlackHoled => {
            t.backends[0].ns.exec("nft add table inet lbt && nft add chain inet lbt in '{ type filter hook input priority 0; policy drop; }'");
        }
        Failure::LinkDown => {
            t.backends[0].ns.exec("ip link set eth0 down");
        }
    }
    // Verdict after `fall` failed checks (each up to its timeout), plus jitter and margin.
    let budget =
        Duration::from_millis(FALL * INTERVAL_MS + FALL * 150 + 2 * INTERVAL_MS / 10 + 600);
    d.wait_log("up -> down", 10);
    let verdict = failed_at.elapsed();
    let clean = wait_avoided(&t, "b1", budget + Duration::from_secs(1));
    let held = holds::finish(hold);
    println!(
        "{kind:?}: down verdict {verdict:?} after the failure, no new flows to b1 {clean:?} after that; held {held:?}"
    );
    for line in d.log().lines().filter(|l| l.contains("up -> down")) {
        println!("  {line}");
    }
    assert!(
        verdict < budget,
        "{kind:?}: verdict took {verdict:?}, budget {budget:?}"
    );
    let on_others: u32 = held
        .at
        .iter()
        .filter(|(n, _)| *n != "b1")
        .map(|(_, c)| c)
        .sum();
    assert!(on_others > 0);
    for (name, broken) in &held.broken {
        assert_eq!(
            name, "b1",
            "{broken} long-lived connections to healthy {name} broke: {held:?}"
        );
    }
    // Recovery after `rise` passed checks.
    match kind {
        Failure::ServerStopped => t.start_server(0),
        Failure::BlackHoled => {
            t.backends[0].ns.exec("nft delete table inet lbt");
        }
        Failure::LinkDown => {
            t.backends[0].ns.exec("ip link set eth0 up");
        }
    }
    d.wait_log("down -> up", 10);
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    assert_eq!(failed, 0);
    assert!(
        seen.get("b1").copied().unwrap_or(0) > 5,
        "b1 not back after recovery: {seen:?}"
    );
}

#[test]
fn failover_when_a_server_stops() {
    failover(Failure::ServerStopped);
}

#[test]
fn failover_when_a_backend_is_black_holed() {
    failover(Failure::BlackHoled);
}

#[test]
fn failover_when_a_backend_link_goes_down() {
    failover(Failure::LinkDown);
}

#[test]
fn sigkill_restart_drops_nothing_and_moves_no_flow() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &three());
    d.wait_served(&t, &web());
    let hold = t.hold(&web(), 30, 3000);
    let stream = t.client.ns.spawn(ECHO, &["client", "--tcp", &web(), "400"]);
    std::thread::sleep(Duration::from_millis(500));
    d.restart(); // SIGKILL, then a new process on the same pins
    d.wait_log("took over the pinned XDP link", 10);
    let out = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let held = holds::finish(hold);
    println!(
        "stream during the restart: {}; held {held:?}",
        text.replace('\n', ", ")
    );
    assert!(
        text.contains("failed 0"),
        "requests failed across the restart: {text}"
    );
    assert!(
        held.broken.is_empty(),
        "connections broke or moved across the restart: {held:?}"
    );
    let second = d.last_log();
    assert!(
        second.contains("adopting pinned dataplane state"),
        "{second}"
    );
    assert!(
        !second.contains("ring written"),
        "the restarted daemon rewrote rings it should have adopted:\n{second}"
    );
}

#[test]
fn drain_by_reload_keeps_established_flows() {
    let mut t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &three());
    d.wait_served(&t, &web());
    let hold = t.hold(&web(), 30, 2500);
    std::thread::sleep(Duration::from_millis(300));
    d.write_config(&config(
        &[
            ("198.18.0.21", "drain = true"),
            ("198.18.0.22", ""),
            ("198.18.0.23", ""),
        ],
        "",
    ));
    d.signal("HUP");
    d.wait_log("configuration reloaded", 5);
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    let held = holds::finish(hold);
    println!("after drain: {seen:?}; held {held:?}");
    assert_eq!(failed, 0);
    assert!(
        !seen.contains_key("b1"),
        "drained b1 got new flows: {seen:?}"
    );
    assert!(
        held.at.get("b1").copied().unwrap_or(0) > 0,
        "no held connection on b1 to prove anything: {held:?}"
    );
    assert!(
        held.broken.is_empty(),
        "draining broke established connections: {held:?}"
    );
    // A draining backend that then fails is down for the dataplane: its flows move.
    t.stop_server(0);
    d.wait_log("draining and failing its checks: marked down", 10);
}

#[test]
fn backup_pool_takes_over_and_hands_back() {
    let mut t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(
        &t,
        LBD,
        &config(
            &[
                ("198.18.0.21", ""),
                ("198.18.0.22", ""),
                ("198.18.0.23", "role = \"backup\""),
            ],
            "",
        ),
    );
    d.wait_served(&t, &web());
    let (seen, _) = t.requests("--tcp", &web(), 60);
    assert!(
        !seen.contains_key("b3"),
        "backup served while primaries were up: {seen:?}"
    );
    t.stop_server(0);
    t.stop_server(1);
    d.wait_log("backup pool takes over", 10);
    let m = lb_tests::scrape::scrape(&t.lb_host.ns.name, "127.0.0.1:9469");
    assert_eq!(
        lb_tests::scrape::value(&m, "lb_vip_on_backup", &[("vip", "web")]),
        1.0
    );
    t.wait_served(&web(), 10, 5);
    let (seen, failed) = t.requests("--tcp", &web(), 30);
    assert_eq!(
        (failed, seen.keys().collect::<Vec<_>>()),
        (0, vec![&"b3".to_string()])
    );
    t.start_server(0);
    t.start_server(1);
    d.wait_log("backup pool hands back", 10);
    // The pool hands back when the first primary recovers; the other may rise a check later.
    for addr in ["198.18.0.21", "198.18.0.22"] {
        d.wait_log_line(&[addr, "down -> up"], 10);
    }
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    assert_eq!(failed, 0);
    assert!(
        !seen.contains_key("b3") && seen.len() == 2,
        "after hand-back: {seen:?}"
    );
}

/// A rename is a new VIP on the old one's address, in one apply: removing the old one must
/// not remove the address's entry, which the new one already owns.
#[test]
fn renamed_vip_keeps_serving() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &three());
    d.wait_served(&t, &web());
    d.write_config(&three().replace("name = \"web\"", "name = \"www\""));
    d.signal("HUP");
    d.wait_log("configuration reloaded", 5);
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    assert_eq!(failed, 0, "the renamed VIP stopped serving: {seen:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn bad_reload_is_rejected_with_its_location_and_service_continues() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &three());
    d.wait_served(&t, &web());
    d.write_config(&config(
        &[
            ("198.18.0.21", "weight = 70000"),
            ("198.18.0.22", ""),
            ("198.18.0.23", ""),
        ],
        "",
    ));
    d.signal("HUP");
    d.wait_log("reload rejected", 5);
    let log = d.log();
    let line = log.lines().find(|l| l.contains("reload rejected")).unwrap();
    println!("{line}");
    assert!(
        line.contains("lb.toml:") && line.contains("weight 70000 is out of range"),
        "{line}"
    );
    // The offending line follows, with a caret under the value.
    let after: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("reload rejected"))
        .take(4)
        .collect();
    assert!(
        after.iter().any(|l| l.ends_with(" | weight = 70000"))
            && after.iter().any(|l| l.ends_with(" |          ^^^^^")),
        "{after:#?}"
    );
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    assert_eq!(failed, 0);
    assert_eq!(
        seen.len(),
        3,
        "the old configuration no longer serves: {seen:?}"
    );
}

const ADDRS: [&str; 3] = ["198.18.0.21", "198.18.0.22", "198.18.0.23"];

fn plain(backends: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    backends.iter().map(|a| (*a, "")).collect()
}

#[test]
fn slow_backend_is_degraded_and_keeps_its_flows() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let health = "kind = \"http\"\nport = 8081\npath = \"/healthz\"\ninterval_ms = 400\ntimeout_ms = 400\nrise = 2\nfall = 2\nmax_latency_ms = 100\n";
    let mut d = Daemon::start(&t, LBD, &config_with(&plain(&ADDRS), "", health));
    d.wait_served(&t, &web());
    let hold = t.hold(&web(), 30, 3500);
    std::thread::sleep(Duration::from_millis(300));
    t.control(0, "delay", "300");
    d.wait_log("up -> degraded", 10);
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("up -> degraded"))
        .unwrap()
        .to_string();
    println!("{line}");
    assert!(line.contains("latency"), "{line}");
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    let held = holds::finish(hold);
    println!("degraded: new requests {seen:?}; held {held:?}");
    assert_eq!(failed, 0);
    assert!(
        !seen.contains_key("b1"),
        "degraded b1 got new flows: {seen:?}"
    );
    assert!(
        held.broken.is_empty(),
        "degrading broke established connections: {held:?}"
    );
    t.control(0, "delay", "0");
    d.wait_log("degraded -> up", 10);
}

#[test]
fn agent_check_drains_downs_and_reweights() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let health = format!("{}agent_port = 8082\n", tcp_health());
    let mut d = Daemon::start(&t, LBD, &config_with(&plain(&ADDRS), "", &health));
    d.wait_served(&t, &web());
    t.control(0, "agent", "drain");
    d.wait_log("up -> draining", 5);
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    assert_eq!(failed, 0);
    assert!(
        !seen.contains_key("b1"),
        "agent-drained b1 got new flows: {seen:?}"
    );
    t.control(0, "agent", "ready");
    d.wait_log("draining -> up", 5);
    t.control(0, "agent", "down");
    d.wait_log("up -> down", 5);
    t.control(0, "agent", "up 50%");
    d.wait_log("down -> up: agent: up 50% (weight 100 -> 50)", 5);
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    assert_eq!(failed, 0);
    assert!(
        seen.contains_key("b1"),
        "b1 back at half weight got nothing: {seen:?}"
    );
    for line in d.log().lines().filter(|l| l.contains("agent: ")) {
        println!("{line}");
    }
}

#[test]
fn slow_start_ramps_a_recovered_backend() {
    let mut t = Topology::new(3, Forward::IpIp, ECHO);
    let health = format!("{}slow_start_ms = 3000\n", tcp_health());
    let mut d = Daemon::start(&t, LBD, &config_with(&plain(&ADDRS), "", &health));
    d.wait_served(&t, &web());
    t.stop_server(0);
    d.wait_log("up -> down", 10);
    t.start_server(0);
    d.wait_log("down -> up", 10);
    let (early, failed) = t.requests("--tcp", &web(), 150);
    assert_eq!(failed, 0);
    std::thread::sleep(Duration::from_millis(3200));
    let (late, failed) = t.requests("--tcp", &web(), 150);
    assert_eq!(failed, 0);
    let share = |m: &std::collections::BTreeMap<String, u32>| m.get("b1").copied().unwrap_or(0);
    println!(
        "slow start: b1 got {} of 150 right after recovery, {} of 150 after the ramp",
        share(&early),
        share(&late)
    );
    assert!(share(&early) < 20, "no ramp: {early:?}");
    assert!(share(&late) > 30, "ramp never finished: {late:?}");
}

/// Healthy backends pass `health`'s checks; a stopped server fails them (the reason names
/// the check kind) and recovers.
fn check_kind_works(health: &str, kind: &str) {
    let mut t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config_with(&plain(&ADDRS), "", health));
    d.wait_served(&t, &web());
    std::thread::sleep(Duration::from_millis(4 * INTERVAL_MS));
    assert!(
        !d.log().contains("-> down"),
        "{kind} checks fail against healthy backends:\n{}",
        d.log()
    );
    t.stop_server(0);
    d.wait_log("up -> down", 10);
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("up -> down"))
        .unwrap()
        .to_string();
    assert!(line.contains(kind), "{line}");
    t.start_server(0);
    d.wait_log("down -> up", 10);
}

#[test]
fn https_checks_pass_and_catch_a_failure() {
    check_kind_works(
        &format!(
            "kind = \"https\"\nport = 8443\npath = \"/healthz\"\nhost = \"backend.test\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 150\nrise = {RISE}\nfall = {FALL}\n"
        ),
        "https",
    );
}

#[test]
fn udp_checks_pass_and_catch_a_failure() {
    check_kind_works(
        &format!(
            "kind = \"udp\"\nport = 5353\nsend = \"ping\"\nexpect = \"b\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 150\nrise = {RISE}\nfall = {FALL}\n"
        ),
        "udp",
    );
}

#[test]
fn traffic_spreads_in_proportion_to_weights() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let weights = [
        ("198.18.0.21", "weight = 100"),
        ("198.18.0.22", "weight = 200"),
        ("198.18.0.23", "weight = 300"),
    ];
    let mut d = Daemon::start(&t, LBD, &config(&weights, ""));
    d.wait_served(&t, &web());
    let n = 1200;
    let (seen, failed) = t.requests("--tcp", &web(), n);
    assert_eq!(failed, 0);
    println!("weights 100/200/300 over {n} new connections: {seen:?}");
    for (name, want) in [("b1", 1.0 / 6.0), ("b2", 2.0 / 6.0), ("b3", 3.0 / 6.0)] {
        let got = seen.get(name).copied().unwrap_or(0) as f64 / n as f64;
        // Random ephemeral ports: a binomial spread, about 1.4 points of standard deviation.
        assert!(
            (got - want).abs() < 0.06,
            "{name}: {got:.3} of the requests, weight share {want:.3}"
        );
    }
}

#[test]
fn dataplane_drops_reach_the_daemon_log() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    // A second VIP with no backend: its packets are dropped (drop_no_backend).
    let mut c = three();
    c.push_str(&format!(
        "\n[[vip]]\nname = \"empty\"\naddress = \"{VIP4}\"\nport = 81\n"
    ));
    let mut d = Daemon::start(&t, LBD, &c);
    d.wait_served(&t, &web());
    let (_, failed) = t.requests("--tcp", &format!("{VIP4}:81"), 2);
    assert_eq!(failed, 2);
    d.wait_log("lb_xdp dropped a packet: drop_no_backend", 5);
    let lines = d
        .log()
        .lines()
        .filter(|l| l.contains("lb_xdp dropped a packet"))
        .count();
    // Two refused connections retransmit their SYNs for seconds: still at most one line a
    // second per CPU.
    assert!(lines <= 2 * 8, "{lines} log lines for one kind of drop");
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_to_start() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &three());
    d.wait_served(&t, &web());
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &t.lb_host.ns.name, LBD, "run", "-c"])
        .arg(&d.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another lbd runs"),
        "{err}"
    );
    d.assert_running();
}

#[test]
fn a_second_daemon_on_the_same_pins_refuses_to_start() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &three());
    d.wait_served(&t, &web());
    // Its own state, socket and metrics port: only the pin directory is shared.
    let text = std::fs::read_to_string(&d.config).unwrap();
    let own = d.dir.join("second");
    let text = text
        .replace(
            &d.dir.join("state").display().to_string(),
            &own.join("state").display().to_string(),
        )
        .replace(
            &d.socket().display().to_string(),
            &own.join("lbd.sock").display().to_string(),
        )
        .replacen(
            "[daemon]\n",
            "[daemon]\nmetrics_listen = \"127.0.0.1:9479\"\n",
            1,
        );
    let second = d.dir.join("second.toml");
    std::fs::write(&second, text).unwrap();
    // Bounded: a second daemon that is let in runs until killed.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.lb_host.ns.name,
            "timeout",
            "10",
            LBD,
            "run",
            "-c",
        ])
        .arg(&second)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another lbd uses pin_dir"),
        "{err}"
    );
    // Nor may the pins be purged from under the running daemon.
    let out = std::process::Command::new(LBD)
        .args(["purge", "--pin-dir"])
        .arg(&d.pin_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another lbd uses pin_dir"),
        "{err}"
    );
    d.assert_running();
    // The first still serves all three backends: its VIP was not taken over.
    let (seen, failed) = t.requests("--tcp", &web(), 60);
    assert_eq!(failed, 0);
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn purge_stops_for_good() {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &three());
    d.wait_served(&t, &web());
    d.kill9();
    // Killed, the dataplane still forwards: the link and maps are pinned.
    let (_, failed) = t.requests("--tcp", &web(), 10);
    assert_eq!(failed, 0, "forwarding stopped with the daemon");
    assert!(t.lb_host.ns.exec("ip link show eth0").contains("xdp"));
    let out = std::process::Command::new(LBD)
        .args(["purge", "--pin-dir"])
        .arg(&d.pin_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !t.lb_host.ns.exec("ip link show eth0").contains("xdp"),
        "still attached after purge"
    );
    assert!(!d.pin_dir.exists());
}
