//! A NIC deleted and created again under the same name: the daemon reports it lost (log,
//! event, status, metric), attaches the program to the new one, and serves again; a NIC
//! renamed away and back gets its own link back; and a daemon restarted after the NIC came
//! back replaces the severed pinned link and starts.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use lb_common::Forward;
use lb_tests::{
    daemon::Daemon,
    scrape::{scrape, value},
    topology::{Topology, VIP4},
};
use serde_json::Value;

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");
const LBCTL: &str = env!("CARGO_BIN_EXE_lbt-lbctl");
const METRICS: &str = "127.0.0.1:9469";

fn web() -> String {
    format!("{VIP4}:80")
}

fn config() -> String {
    format!(
        "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\nmetrics_listen = \"{METRICS}\"\n\n\
         [dataplane]\nflows = 65536\nring_capacity = 262148\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\n\n\
         [vip.health]\nkind = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n\n\
         [[vip.backend]]\naddress = \"198.18.0.21\"\n\n\
         [[vip.backend]]\naddress = \"198.18.0.22\"\n"
    )
}

/// `lbctl --json status`'s data.
fn status(d: &Daemon) -> Value {
    let o = Command::new(LBCTL)
        .arg("--socket")
        .arg(d.socket())
        .args(["--json", "status"])
        .output()
        .expect("run lbctl");
    assert!(
        o.status.success(),
        "lbctl status failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("--json output parses")
}

fn lost(d: &Daemon) -> Vec<String> {
    status(d)["interfaces_lost"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// `lb_interface_attached{interface="eth0"}`, or None if the daemon does not export it.
fn attached_metric(t: &Topology) -> Option<f64> {
    let s = scrape(&t.lb_host.ns.name, METRICS);
    s.samples
        .iter()
        .any(|x| x.metric == "lb_interface_attached" && x.labels.get("interface") == Some("eth0"))
        .then(|| value(&s, "lb_interface_attached", &[("interface", "eth0")]))
}

/// Whether `ip link show eth0` in the balancer's namespace shows an XDP program.
fn xdp_on_eth0(t: &Topology) -> bool {
    let out = t.lb_host.ns.exec("ip link show eth0");
    out.contains("xdp")
}

/// Poll `f` until it holds (or panic with `what` and the daemon's log after `secs`).
fn wait_until(d: &mut Daemon, secs: u64, what: &str, mut f: impl FnMut(&Daemon) -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        d.assert_running();
        if f(d) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what} not seen after {secs} s:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nic_deleted_and_recreated_while_serving() {
    let mut t = Topology::new(2, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config());
    d.wait_served(&t, &web());
    assert!(xdp_on_eth0(&t), "no XDP program on eth0 at start");
    assert!(lost(&d).is_empty(), "{}", status(&d));
    assert_eq!(attached_metric(&t), Some(1.0));

    t.remove_lb_uplink();
    d.wait_log_line(&["interface eth0 lost"], 10);
    wait_until(&mut d, 10, "eth0 in status' interfaces_lost", |d| {
        lost(d) == ["eth0"]
    });
    // The configured list stays as it is (compatibility); the lost list says what is gone.
    assert_eq!(status(&d)["interfaces"], serde_json::json!(["eth0"]));
    assert_eq!(attached_metric(&t), Some(0.0));
    let events = String::from_utf8_lossy(
        &Command::new(LBCTL)
            .arg("--socket")
            .arg(d.socket())
            .args(["events"])
            .output()
            .expect("run lbctl")
            .stdout,
    )
    .into_owned();
    assert!(events.contains("interface eth0 lost"), "{events}");

    t.add_lb_uplink();
    d.wait_log_line(&["interface eth0 back"], 10);
    wait_until(&mut d, 10, "an empty interfaces_lost", |d| {
        lost(d).is_empty()
    });
    assert!(
        xdp_on_eth0(&t),
        "no XDP program on the new eth0: {}",
        t.lb_host.ns.exec("ip link show eth0")
    );
    assert_eq!(attached_metric(&t), Some(1.0));
    d.wait_served(&t, &web());
    let (_, failed) = t.requests("--tcp", &web(), 50);
    assert_eq!(failed, 0, "requests failed after the NIC came back");

    // And once more: the link pinned by the re-attach is the one replaced the next time.
    t.remove_lb_uplink();
    t.add_lb_uplink();
    wait_until(&mut d, 10, "a second return of eth0", |d| {
        d.log().matches("interface eth0 back").count() >= 2
    });
    d.wait_served(&t, &web());
    assert!(xdp_on_eth0(&t));
    for line in d.log().lines().filter(|l| l.contains("interface")) {
        println!("  {line}");
    }
}

#[test]
fn restart_after_the_nic_was_recreated_replaces_the_severed_link() {
    let mut t = Topology::new(2, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config());
    d.wait_served(&t, &web());
    d.kill9();
    t.remove_lb_uplink();
    t.add_lb_uplink();
    // The pinned link outlived its NIC: severed, so it cannot be taken over.
    d.restart();
    d.wait_served(&t, &web());
    d.wait_log_line(&["severed"], 5);
    assert!(
        xdp_on_eth0(&t),
        "no XDP program on the new eth0: {}",
        t.lb_host.ns.exec("ip link show eth0")
    );
    assert!(lost(&d).is_empty(), "{}", status(&d));
    assert_eq!(attached_metric(&t), Some(1.0));
    // And the link pinned now is adopted by the next restart as usual.
    d.restart();
    d.wait_served(&t, &web());
    d.wait_log("took over the pinned XDP link", 5);
    for line in d.log().lines().filter(|l| l.contains("eth0")) {
        println!("  {line}");
    }
}

#[test]
fn nic_renamed_away_and_back_keeps_its_link() {
    let t = Topology::new(2, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config());
    d.wait_served(&t, &web());
    // A veth is renamed only while down.
    t.lb_host
        .ns
        .exec("ip link set eth0 down && ip link set eth0 name lbold");
    d.wait_log_line(&["interface eth0 lost"], 10);
    wait_until(&mut d, 10, "eth0 in status' interfaces_lost", |d| {
        lost(d) == ["eth0"]
    });
    t.lb_host
        .ns
        .exec("ip link set lbold name eth0 && ip link set eth0 up");
    d.wait_log_line(&["interface eth0 back"], 10);
    // The same NIC: its pinned link (not severed) is taken over, not replaced.
    d.wait_log("took over the pinned XDP link", 5);
    assert!(!d.log().contains("severed"), "{}", d.log());
    wait_until(&mut d, 10, "an empty interfaces_lost", |d| {
        lost(d).is_empty()
    });
    assert!(xdp_on_eth0(&t));
    assert_eq!(attached_metric(&t), Some(1.0));
    t.set_lb_neighbours();
    d.wait_served(&t, &web());
}
