//! `lbd decap attach|status|detach`, the real command (`lbt-lbd`, the same code as `lbd`) in
//! a backend's network namespace: the balancer sends IP-in-IP to backend b1, which has no
//! ipip module (the test machines' kernel has none) and no decap program until the command
//! attaches one. Then requests are answered, the program stays attached after the command
//! has exited, `status` shows the allow-list and the counters, a second attach with another
//! allow-list replaces the program on the same pinned link and takes effect, and `detach`
//! takes the program off the NIC and removes the pins.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use lb_common::{Forward, PROTO_TCP, Scheduler};
use lb_tests::{
    daemon::{BPFFS, ensure_bpffs},
    harness::vip_key,
    netns::Netns,
    topology::{Topology, VIP4, VIP6},
};

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");

/// The pin directory of one backend namespace: detached and removed on drop, also when the
/// test fails (the namespace's deletion alone would leave the pins, holding a severed link
/// and its maps, on the shared bpffs).
struct Pins {
    ns: String,
    dir: PathBuf,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, LBD, "decap", "detach"])
            .args(["--interface", "eth0", "--pin-dir"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `lbd ARGS` in `ns`, as an operator runs it there.
fn lbd(ns: &Netns, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, LBD])
        .args(args)
        .output()
        .expect("run lbt-lbd")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// `lbd ARGS` in `ns`, which must succeed; what it printed.
fn ok(ns: &Netns, args: &[&str]) -> String {
    let o = lbd(ns, args);
    assert!(
        o.status.success(),
        "lbd {} failed ({}):\n{}",
        args.join(" "),
        o.status,
        text(&o)
    );
    text(&o)
}

/// `lbd ARGS` in `ns`, which must fail with a message holding every one of `needles`.
fn refused(ns: &Netns, args: &[&str], needles: &[&str]) {
    let o = lbd(ns, args);
    let t = text(&o);
    assert!(
        !o.status.success(),
        "lbd {} succeeded:\n{t}",
        args.join(" ")
    );
    for n in needles {
        assert!(t.contains(n), "lbd {}: no {n:?} in:\n{t}", args.join(" "));
    }
    println!(
        "refused as it should: lbd {}\n  {}",
        args.join(" "),
        t.trim()
    );
}

/// `lbd decap status --json` for `pin_dir`'s only interface, eth0.
fn status(ns: &Netns, pin_dir: &Path) -> serde_json::Value {
    let o = lbd(
        ns,
        &[
            "decap",
            "status",
            "--json",
            "--pin-dir",
            pin_dir.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}:\n{}", text(&o)));
    let ifs = v["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 1, "{v}");
    assert_eq!(ifs[0]["interface"], "eth0", "{v}");
    ifs[0].clone()
}

fn counter(s: &serde_json::Value, reason: &str) -> u64 {
    s["counters"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {reason} in {s}"))
}

fn allow_list(s: &serde_json::Value) -> Vec<String> {
    s["allow_list"]
        .as_array()
        .expect("allow_list")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// What `ip link show dev eth0` says about XDP in `ns`.
fn xdp_on_eth0(ns: &Netns) -> Option<String> {
    let shown = ns.exec("ip link show dev eth0");
    shown.contains(" xdp ").then(|| {
        shown
            .lines()
            .find(|l| l.contains("prog/xdp"))
            .unwrap_or("")
            .trim()
            .to_string()
    })
}

/// Requests to `addr` from the client: (answered by b1, failed).
fn served(t: &Topology, addr: &str, count: u32) -> (u32, u32) {
    let (seen, failed) = t.requests("--tcp", addr, count);
    let b1 = seen.get("b1").copied().unwrap_or(0);
    assert_eq!(
        b1 + failed,
        count,
        "{addr}: answers from another backend than b1: {seen:?}"
    );
    (b1, failed)
}

#[test]
fn decap_command_attaches_pins_reports_changes_and_detaches() {
    ensure_bpffs();
    // L2 DSR for the topology: no backend gets the library's decap program. The VIPs below
    // are IP-in-IP all the same: decapsulation on b1 is the command's job alone.
    let mut t = Topology::with_balancer(1, Forward::L2Dsr, ECHO);
    let b1 = &t.backends[0];
    let (v4, v6, mac) = (b1.v4.clone(), b1.v6.clone(), b1.mac);
    t.lb().backend(1, &v4, mac);
    t.lb().backend(11, &v6, mac);
    t.lb().vip(
        vip_key(VIP4, 80, PROTO_TCP),
        Scheduler::Maglev,
        Forward::IpIp,
        0,
        &[(1, &v4, 1)],
    );
    t.lb().vip(
        vip_key(VIP6, 80, PROTO_TCP),
        Scheduler::Maglev,
        Forward::IpIp,
        0,
        &[(11, &v6, 1)],
    );
    let web4 = format!("{VIP4}:80");
    let web6 = format!("[{VIP6}]:80");
    let ns = &t.backends[0].ns;
    let pins = Pins {
        ns: ns.name.clone(),
        dir: PathBuf::from(BPFFS).join(&ns.name),
    };
    let dir = pins.dir.to_str().unwrap().to_string();

    // Without a decap program the backend's kernel (no ipip module) cannot take IP-in-IP.
    assert_eq!(xdp_on_eth0(ns), None, "b1 starts without an XDP program");
    assert_eq!(
        served(&t, &web4, 1),
        (0, 1),
        "IP-in-IP answered without decap"
    );

    // Attach as an operator does; the command exits, the program stays.
    let out = ok(
        ns,
        &[
            "decap",
            "attach",
            "--interface",
            "eth0",
            "--addr",
            &v4,
            "--addr",
            &v6,
            "--pin-dir",
            &dir,
        ],
    );
    println!("{out}");
    assert!(out.contains("attached"), "{out}");
    let prog = xdp_on_eth0(ns).expect("no XDP program on eth0 after the command exited");
    assert!(prog.contains("lb_decap"), "{prog}");
    for pin in ["link", "LB_DECAP_ADDRS", "LB_DECAP_STATS"] {
        assert!(
            pins.dir.join("eth0").join(pin).exists(),
            "{dir}/eth0/{pin} not pinned"
        );
    }
    assert_eq!(served(&t, &web4, 20), (20, 0), "IPv4-in-IPv4 after attach");
    assert_eq!(served(&t, &web6, 20), (20, 0), "IPv6-in-IPv6 after attach");

    let s = status(ns, &pins.dir);
    println!("status: {s}");
    assert_eq!(s["state"], "attached", "{s}");
    let mut want = vec![v4.clone(), v6.clone()];
    want.sort();
    assert_eq!(allow_list(&s), want);
    let decapsulated = counter(&s, "decapsulated");
    // At least the SYN, the request and the ACKs of each of the 40 connections.
    assert!(decapsulated >= 120, "decapsulated {decapsulated}: {s}");
    let link_id = s["link"]["link_id"].as_u64().unwrap();
    let program_id = s["link"]["program_id"].as_u64().unwrap();
    // The text form, as an operator reads it.
    let shown = ok(ns, &["decap", "status", "--pin-dir", &dir]);
    println!("{shown}");
    assert!(shown.starts_with("eth0: attached"), "{shown}");
    assert!(
        shown.contains(&format!("allow-list: {}", want.join(" "))),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..2]
                == ["decapsulated", &decapsulated.to_string()]),
        "{shown}"
    );

    // A second attach, with the IPv4 address taken off the allow-list: the program is
    // replaced on the same pinned link, the counters carry on, IPv4-in-IPv4 is no longer
    // decapsulated and IPv6 still is.
    let out = ok(
        ns,
        &[
            "decap",
            "attach",
            "--interface",
            "eth0",
            "--addr",
            &v6,
            "--pin-dir",
            &dir,
        ],
    );
    println!("{out}");
    assert!(out.contains("replaced"), "{out}");
    assert!(out.contains(&format!("removed: {v4}")), "{out}");
    let s = status(ns, &pins.dir);
    assert_eq!(allow_list(&s), std::slice::from_ref(&v6));
    assert_eq!(
        s["link"]["link_id"].as_u64(),
        Some(link_id),
        "a new link, not the pinned one: {s}"
    );
    assert_ne!(
        s["link"]["program_id"].as_u64(),
        Some(program_id),
        "the program was not replaced: {s}"
    );
    assert!(counter(&s, "decapsulated") >= decapsulated, "{s}");
    let not_ours = counter(&s, "pass_not_vip");
    assert_eq!(served(&t, &web6, 10), (10, 0), "IPv6 after the change");
    assert_eq!(
        served(&t, &web4, 1),
        (0, 1),
        "IPv4 off the allow-list served"
    );
    let s = status(ns, &pins.dir);
    assert!(
        counter(&s, "pass_not_vip") > not_ours,
        "IP-in-IP to an address off the allow-list not counted as passed: {s}"
    );

    // And back, comma-separated this time.
    let both = format!("{v4},{v6}");
    ok(
        ns,
        &[
            "decap",
            "attach",
            "--interface",
            "eth0",
            "--addr",
            &both,
            "--pin-dir",
            &dir,
        ],
    );
    assert_eq!(allow_list(&status(ns, &pins.dir)), want);
    assert_eq!(
        served(&t, &web4, 10),
        (10, 0),
        "IPv4 back on the allow-list"
    );

    // What an operator can get wrong, each refused with what to do.
    let other = format!("{dir}-other");
    refused(
        ns,
        &[
            "decap",
            "attach",
            "--interface",
            "eth0",
            "--addr",
            &v4,
            "--pin-dir",
            &other,
        ],
        &["another XDP program", "ip link show dev eth0"],
    );
    assert!(
        !Path::new(&other).exists(),
        "a refused attach left {other} behind"
    );
    refused(
        ns,
        &[
            "decap",
            "attach",
            "--interface",
            "nosuch0",
            "--addr",
            &v4,
            "--pin-dir",
            &dir,
        ],
        &["no interface \"nosuch0\""],
    );
    let not_bpffs = std::env::temp_dir().join(format!("{}-pins", ns.name));
    refused(
        ns,
        &[
            "decap",
            "attach",
            "--interface",
            "eth0",
            "--addr",
            &v4,
            "--pin-dir",
            not_bpffs.to_str().unwrap(),
        ],
        &["not on a bpf filesystem", "mount -t bpf"],
    );
    assert!(!not_bpffs.exists());
    refused(
        ns,
        &["decap", "detach", "--interface", "eth1", "--pin-dir", &dir],
        &["nothing is pinned for eth1"],
    );
    assert_eq!(
        served(&t, &web4, 5),
        (5, 0),
        "a refused command changed something"
    );

    // Detach: the program leaves the NIC now, the pins go, and IP-in-IP is not taken again.
    let out = ok(
        ns,
        &["decap", "detach", "--interface", "eth0", "--pin-dir", &dir],
    );
    println!("{out}");
    assert_eq!(xdp_on_eth0(ns), None, "XDP still on eth0 after detach");
    assert!(!pins.dir.exists(), "{dir} still there after detach");
    let shown = ok(ns, &["decap", "status", "--pin-dir", &dir]);
    assert!(shown.contains("nothing pinned"), "{shown}");
    assert_eq!(
        served(&t, &web4, 1),
        (0, 1),
        "IP-in-IP answered after detach"
    );
}
