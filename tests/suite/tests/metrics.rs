//! `/metrics` during real traffic in namespaces: counters move by what was sent, a failed
//! backend's state flips, and the output parses as Prometheus text. `lbctl top` shows it,
//! over HTTP and over the control socket from outside the daemon's namespace.

use std::time::Duration;

use lb_common::Forward;
use lb_tests::{
    daemon::Daemon,
    scrape::{scrape, value},
    topology::{Topology, VIP4},
};

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");
const LBCTL: &str = env!("CARGO_BIN_EXE_lbt-lbctl");
const METRICS: &str = "127.0.0.1:9469";

/// A frame of `lbctl top` during traffic: the VIP's packets/s above zero, a backend up.
fn assert_top_shows_traffic(top: &str) {
    let web_line = top
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no VIP line: {top}"));
    let pps: f64 = web_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(pps > 0.0, "lbctl top shows no traffic: {top}");
    assert!(top.contains("198.18.0.21") && top.contains(" up "), "{top}");
}

fn config() -> String {
    let mut c = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\nmetrics_listen = \"{METRICS}\"\n\n\
         [dataplane]\nflows = 65536\nring_capacity = 262148\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\n\n\
         [vip.health]\nkind = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n"
    );
    for a in ["198.18.0.21", "198.18.0.22", "198.18.0.23"] {
        c.push_str(&format!("\n[[vip.backend]]\naddress = \"{a}\"\n"));
    }
    c
}

#[test]
fn counters_move_with_traffic_and_states_flip() {
    let mut t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config());
    let web = format!("{VIP4}:80");
    d.wait_served(&t, &web);
    let ns = t.lb_host.ns.name.clone();
    let before = scrape(&ns, METRICS);
    let n = 200u32;
    let (_, failed) = t.requests("--tcp", &web, n);
    assert_eq!(failed, 0);
    std::thread::sleep(Duration::from_millis(300));
    let after = scrape(&ns, METRICS);
    let delta = |m: &str, l: &[(&str, &str)]| value(&after, m, l) - value(&before, m, l);
    let new_flows = delta("lb_vip_new_flows_total", &[("vip", "web")]);
    let vip_packets = delta("lb_vip_packets_total", &[("vip", "web")]);
    let backend_packets = delta("lb_backend_packets_total", &[("vip", "web")]);
    let tx = delta("lb_dataplane_packets_total", &[("reason", "tx_ipip")]);
    println!(
        "{n} requests: new flows +{new_flows}, VIP packets +{vip_packets}, backend packets +{backend_packets}, tx_ipip +{tx}"
    );
    // One new flow per request (a retransmitted SYN would add one: allow a few).
    assert!(
        new_flows >= n as f64 && new_flows <= n as f64 * 1.05,
        "new flows +{new_flows} for {n} requests"
    );
    // Every request is at least SYN, request, FIN, ACK from the client.
    assert!(vip_packets >= 4.0 * n as f64, "VIP packets +{vip_packets}");
    assert_eq!(
        vip_packets, backend_packets,
        "per-VIP and per-backend counters disagree"
    );
    assert!(
        tx >= vip_packets,
        "tx_ipip +{tx} below VIP packets +{vip_packets}"
    );
    assert_eq!(
        value(
            &after,
            "lb_backend_state",
            &[("backend", "198.18.0.21"), ("state", "up")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "lb_health_check_duration_seconds",
            &[("backend", "198.18.0.21")]
        ) > 0.0,
        "no check latencies recorded"
    );
    assert!(value(&after, "lb_flows", &[]) > 0.0);

    // lbctl top over a stream of requests: rates and states, one frame.
    let stream = t.client.ns.spawn(ECHO, &["client", "--tcp", &web, "300"]);
    let top = t.lb_host.ns.exec(&format!(
        "{LBCTL} top --once --interval 1 --metrics {METRICS}"
    ));
    let _ = stream.wait_with_output();
    println!("{top}");
    assert_top_shows_traffic(&top);

    // The same from another namespace (as in `cargo xtask demo -- --keep`), where the
    // daemon's metrics address is another namespace's loopback: over the control socket.
    let lbctl = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &t.client.ns.name, LBCTL, "--socket"])
            .arg(d.socket())
            .args(["top", "--once", "--interval", "1"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            err,
        )
    };
    let (code, _, err) = lbctl(&["--metrics", METRICS]);
    assert_eq!(
        code,
        Some(3),
        "/metrics is reachable from the client: {err}"
    );
    assert!(err.contains("connecting to the daemon's metrics"), "{err}");
    let stream = t.client.ns.spawn(ECHO, &["client", "--tcp", &web, "300"]);
    let (code, top, err) = lbctl(&[]);
    let _ = stream.wait_with_output();
    println!("{top}");
    assert_eq!(code, Some(0), "lbctl top over the socket: {err}");
    assert_top_shows_traffic(&top);

    t.stop_server(0);
    d.wait_log("up -> down", 10);
    let down = scrape(&ns, METRICS);
    assert_eq!(
        value(
            &down,
            "lb_backend_state",
            &[("backend", "198.18.0.21"), ("state", "down")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &down,
            "lb_backend_state",
            &[("backend", "198.18.0.21"), ("state", "up")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &down,
            "lb_backend_transitions_total",
            &[("backend", "198.18.0.21"), ("state", "down")]
        ),
        1.0
    );
    assert!(value(&down, "lb_ring_build_duration_seconds", &[]) > 0.0);
}
