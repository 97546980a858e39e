//! One configuration for the whole fleet, kept in etcd (issue 14): three etcd members and
//! three balancer nodes behind the FRR router of `fleet.rs`, every one a real process in
//! namespaces. A change made through one node runs on all three; two changes on one base
//! cannot both win; a revision one node cannot run is refused there and that node
//! withdraws; the fleet rides out a lost etcd leader, a lost quorum, a node cut off from
//! etcd and a restart without etcd; a rollback gives every node its maps back bit for bit;
//! a node reaches etcd over TLS as a user without ever showing the password.
//! Each scenario asserts what the nodes report, what the router holds, and what a client
//! sees, and prints its figures.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_api::{Client, Request};
use lb_tests::{fleet::Fleet, holds};
use serde_json::Value;

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");
const LBCTL: &str = env!("CARGO_BIN_EXE_lbt-lbctl");
const CHECK_MS: u32 = 200;
/// How long a node may lag behind a peer before it withdraws.
const GRACE_MS: u64 = 1000;
const HELD: u32 = 100;
/// The maps lbd derives from the configuration (not the flow table, counters or the
/// schedulers' running state).
const CONFIG_MAPS: &[&str] = &[
    "LB_CONFIG",
    "LB_VIPS",
    "LB_VIP_BY_ID",
    "LB_VIP_FILTER",
    "LB_BACKENDS",
    "LB_RINGS",
];

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Node `i`'s own file in fleet mode; `ring_capacity` instead of the harness's 131072.
fn node_file(f: &Fleet, i: usize, ring_capacity: Option<u32>) -> String {
    let mut c = f.node_config(i);
    if let Some(cap) = ring_capacity {
        c = c.replace("ring_capacity = 131072", &format!("ring_capacity = {cap}"));
    }
    let endpoints: Vec<String> = f
        .etcd_endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    c + &format!(
        "[daemon.fleet]\nname = \"lbt\"\nnode = \"node{}\"\nendpoints = [{}]\ngrace_ms = {GRACE_MS}\nlease_s = 3\n",
        i + 1,
        endpoints.join(", ")
    )
}

/// The fleet's document: the VIP and its three backends, with a ring every node can hold.
fn document(f: &Fleet) -> String {
    f.vip_config(CHECK_MS)
        .replace("ring_size = 65537", "ring_size = 4093")
}

fn status(f: &Fleet, i: usize) -> Option<Value> {
    let socket = f.nodes[i].lbd.as_ref()?.socket();
    Client::new(socket)
        .call_typed::<Value>(&Request::Status {}, None)
        .ok()
}

/// The fleet revision node `i` runs (0 when it does not answer).
fn running(f: &Fleet, i: usize) -> u64 {
    status(f, i).map_or(0, |s| s["fleet"]["running"].as_u64().unwrap_or(0))
}

/// Wait until every node runs revision `rev`; returns when the last one did.
fn wait_running(f: &Fleet, rev: u64, secs: u64) -> Instant {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if (0..f.nodes.len()).all(|i| running(f, i) >= rev) {
            return Instant::now();
        }
        assert!(
            Instant::now() < end,
            "not every node runs revision {rev} after {secs} s: {:?}",
            (0..f.nodes.len()).map(|i| status(f, i)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_until(what: &str, secs: u64, ok: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "no {what} after {secs} s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

fn write_doc(f: &Fleet, name: &str, text: &str) -> PathBuf {
    let p = f.nodes[0].dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `lbctl config apply` through node `i`: the revision it made.
fn apply(f: &Fleet, i: usize, doc: &std::path::Path) -> u64 {
    let v = f.lbctl_json(LBCTL, i, &["config", "apply", doc.to_str().unwrap()]);
    v["revision"].as_u64().unwrap()
}

/// A change through node `i`: backend 1's weight. The revision it made.
fn reweigh(f: &Fleet, i: usize, weight: u32) -> u64 {
    let b = f.backends[0].addr.clone();
    let v = f.lbctl_json(
        LBCTL,
        i,
        &["backend", "weight", "web", &b, &weight.to_string()],
    );
    v["revision"].as_u64().unwrap()
}

/// [`reweigh`] through node `i`, tried again every 50 ms while the fleet refuses changes
/// (`unavailable`), for up to `secs`: the revision, and how many tries were refused.
fn reweigh_when_writable(f: &Fleet, i: usize, weight: u32, secs: u64) -> (u64, u32) {
    let t = Instant::now();
    let b = f.backends[0].addr.clone();
    let w = weight.to_string();
    let mut refused = 0;
    loop {
        let (ok, out) = f.lbctl(LBCTL, i, &["--json", "backend", "weight", "web", &b, &w]);
        if ok {
            let v: Value = serde_json::from_str(&out).unwrap();
            return (v["revision"].as_u64().unwrap(), refused);
        }
        refused += 1;
        assert!(out.contains("unavailable"), "{out}");
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "no change written in {secs} s: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every backend up on every node (the rings agree only then).
fn wait_all_up(f: &Fleet) {
    wait_until("every backend up on every node", 30, || {
        (0..f.nodes.len())
            .all(|i| status(f, i).is_some_and(|s| s["backends"]["up"] == f.backends.len() as u64))
    });
}

/// The router, three nodes (nodes 1 and 2 with `ring_capacity` if given, node 3 with the
/// harness's 131072), three backends, three etcd members, and the document applied
/// through node 1 as the fleet's first revision.
fn start(ring_capacity: Option<u32>) -> (std::sync::MutexGuard<'static, ()>, Fleet) {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = Fleet::new(3, 3, ECHO, LBD, true);
    f.start_etcd(3);
    for i in 0..3 {
        let cap = if i == 2 { None } else { ring_capacity };
        let c = node_file(&f, i, cap);
        f.start_lbd(i, LBD, &c);
    }
    wait_until("every node connected to etcd", 30, || {
        (0..3).all(|i| status(&f, i).is_some_and(|s| s["fleet"]["connected"] == true))
    });
    // A new fleet: no revision, no VIP, nothing announced.
    for i in 0..3 {
        let s = status(&f, i).unwrap();
        assert_eq!(
            (s["fleet"]["running"].as_u64(), s["vips"].as_u64()),
            (Some(0), Some(0)),
            "{s}"
        );
    }
    let doc = write_doc(&f, "fleet.toml", &document(&f));
    let rev = apply(&f, 0, &doc);
    assert_eq!(rev, 1);
    wait_running(&f, 1, 10);
    f.wait_next_hops(&[0, 1, 2], 30);
    wait_all_up(&f);
    (turn, f)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `n` changes through node 1, one after the other: the time from the command to the
/// moment the last node runs it, p50 and max.
fn propagation(f: &Fleet, n: u32) -> (Duration, Duration) {
    let mut took = Vec::new();
    for k in 0..n {
        let t = Instant::now();
        let rev = reweigh(f, 0, 100 + k % 2);
        took.push(wait_running(f, rev, 10) - t);
    }
    took.sort();
    (percentile(&took, 0.5), *took.last().unwrap())
}

/// The configuration's maps of node `i`, as bpftool dumps them.
fn config_maps(f: &Fleet, i: usize) -> Vec<String> {
    let pins = &f.nodes[i].lbd.as_ref().unwrap().pin_dir;
    CONFIG_MAPS
        .iter()
        .map(|m| {
            let o = std::process::Command::new("bpftool")
                .args(["map", "dump", "pinned"])
                .arg(pins.join(m))
                .output()
                .unwrap();
            assert!(o.status.success(), "bpftool dump of {m}: {o:?}");
            String::from_utf8(o.stdout).unwrap()
        })
        .collect()
}

/// A thousand VIPs: the fleet's VIP and 999 more (no checks, not announced).
fn thousand_vips(f: &Fleet) -> String {
    let mut doc = document(f);
    for k in 0..999u32 {
        doc.push_str(&format!(
            "\n[[vip]]\nname = \"bulk{k}\"\naddress = \"198.19.{}.{}\"\nport = 80\nring_size = 101\nannounce = false\n\n[vip.health]\nkind = \"none\"\n\n[[vip.backend]]\naddress = \"{}\"\n",
            k / 250,
            k % 250 + 1,
            f.backends[k as usize % 3].addr
        ));
    }
    doc
}

#[test]
fn a_change_through_one_node_runs_on_every_node() {
    let (_turn, f) = start(Some(262144));
    let (_, failed) = f.requests(100);
    assert_eq!(failed, 0, "the fleet's first revision serves");

    // 1. Propagation: 20 changes through node 1; time until the last node runs each.
    let (p50, max) = propagation(&f, 20);
    println!(
        "20 changes through node 1, one VIP: the last node ran each after p50 {:.1} ms, max {:.1} ms",
        ms(p50),
        ms(max)
    );
    // The same with a thousand VIPs in the fleet's configuration.
    let big = write_doc(&f, "big.toml", &thousand_vips(&f));
    let t = Instant::now();
    let rev = apply(&f, 0, &big);
    let all = wait_running(&f, rev, 60) - t;
    assert_eq!(status(&f, 2).unwrap()["vips"], 1000);
    let (p50k, maxk) = propagation(&f, 20);
    println!(
        "1,000 VIPs: applied on every node {:.0} ms after the command; 20 changes: p50 {:.1} ms, max {:.1} ms",
        ms(all),
        ms(p50k),
        ms(maxk)
    );
    let doc = write_doc(&f, "fleet.toml", &document(&f));
    let rev = apply(&f, 0, &doc);
    wait_running(&f, rev, 30);

    // 2. Two changes on the same base, through two nodes at once: exactly one wins.
    let base = running(&f, 0);
    let (a, b) = (
        write_doc(&f, "a.toml", &document(&f).replace("rise = 2", "rise = 3")),
        write_doc(&f, "b.toml", &document(&f).replace("fall = 2", "fall = 3")),
    );
    let base_s = base.to_string();
    let (ra, rb) = std::thread::scope(|s| {
        let one = |i: usize, doc: &PathBuf| {
            let doc = doc.to_str().unwrap().to_string();
            let base = base_s.clone();
            let f = &f;
            s.spawn(move || f.lbctl(LBCTL, i, &["config", "apply", &doc, "--base", &base]))
        };
        let (ja, jb) = (one(0, &a), one(1, &b));
        (ja.join().unwrap(), jb.join().unwrap())
    });
    println!("two applies on base {base}: node 1 {ra:?}, node 2 {rb:?}");
    assert!(ra.0 != rb.0, "exactly one wins: {ra:?} {rb:?}");
    let loser = if ra.0 { &rb.1 } else { &ra.1 };
    assert!(
        loser.contains("conflict")
            && loser.contains(&format!("the fleet is at revision {}", base + 1)),
        "{loser}"
    );
    wait_running(&f, base + 1, 10);

    // 3. A revision node 3 cannot run: two more VIPs of 65,537 ring slots each, 135,167
    // slots in all, past node 3's ring capacity of 131,072 (its peers have 262,144).
    // Refused there and reported; the others run it; node 3 withdraws once the grace is
    // over, and comes back with the next revision it can run. The VIP that carries the
    // traffic keeps its ring all along, so no held connection breaks when the router
    // moves flows between the nodes.
    let hold = f.hold(HELD, 6000);
    let mut wide = document(&f);
    for (k, addr) in ["198.18.100.2", "198.18.100.3"].iter().enumerate() {
        wide.push_str(&format!(
            "\n[[vip]]\nname = \"wide{k}\"\naddress = \"{addr}\"\nport = 80\nring_size = 65537\nannounce = false\n\n[vip.health]\nkind = \"none\"\n\n[[vip.backend]]\naddress = \"{}\"\n",
            f.backends[0].addr
        ));
    }
    let too_big = write_doc(&f, "too-big.toml", &wide);
    let t = Instant::now();
    let bad = apply(&f, 0, &too_big);
    wait_until("node 3's refusal", 10, || {
        status(&f, 2).is_some_and(|s| s["fleet"]["refused"]["revision"] == bad)
    });
    let s3 = status(&f, 2).unwrap();
    println!(
        "node 3 refused revision {bad}: {}",
        s3["fleet"]["refused"]["error"]
    );
    assert!(
        s3["fleet"]["refused"]["error"]
            .as_str()
            .unwrap()
            .contains("ring_capacity"),
        "{s3}"
    );
    assert_eq!(running(&f, 0), bad);
    assert_eq!(running(&f, 1), bad);
    let gone = f.wait_next_hops(&[0, 1], 15);
    let withdrawn = t.elapsed();
    let s3 = status(&f, 2).unwrap();
    assert!(s3["fleet"]["behind"].is_string(), "{s3}");
    let fs = f.lbctl_json(LBCTL, 0, &["fleet", "status"]);
    assert_eq!(fs["head"], bad, "{fs}");
    let n3 = &fs["nodes"][2];
    assert_eq!(
        (n3["node"].as_str(), n3["refused"]["revision"].as_u64()),
        (Some("node3"), Some(bad)),
        "{fs}"
    );
    let (_, human) = f.lbctl(LBCTL, 1, &["fleet", "status"]);
    println!("{human}");
    assert!(human.contains("(behind)"), "{human}");
    let (_, failed) = f.requests(100);
    println!(
        "node 3 left the router's next hops {:.0} ms after the change (grace {GRACE_MS} ms; wait {:.0} ms); 100 new connections, {failed} failed",
        ms(withdrawn),
        ms(gone)
    );
    assert_eq!(failed, 0);
    let doc = write_doc(&f, "fleet.toml", &document(&f));
    let good = apply(&f, 1, &doc);
    wait_running(&f, good, 10);
    let back = f.wait_next_hops(&[0, 1, 2], 15);
    let held = holds::finish(hold);
    println!(
        "node 3 runs revision {good} and is back in {:.0} ms; held {:?}, broken {:?}",
        ms(back),
        held.at,
        held.broken
    );
    assert!(held.broken.is_empty(), "{:?}: {:?}", held.broken, held.why);
    assert!(status(&f, 2).unwrap()["fleet"]["refused"].is_null());

    // 4. History and rollback of the fleet: every node's maps back bit for bit.
    wait_all_up(&f);
    let k = running(&f, 0);
    let before: Vec<Vec<String>> = (0..3).map(|i| config_maps(&f, i)).collect();
    let b2 = f.backends[1].addr.clone();
    reweigh(&f, 2, 7);
    let (ok, out) = f.lbctl(LBCTL, 1, &["backend", "drain", "web", &b2]);
    assert!(ok, "{out}");
    let changed = running(&f, 1);
    wait_running(&f, changed, 10);
    assert_ne!(
        config_maps(&f, 0),
        before[0],
        "the changes changed the maps"
    );
    let v = f.lbctl_json(LBCTL, 2, &["config", "rollback", "--to", &k.to_string()]);
    let rolled = v["revision"].as_u64().unwrap();
    wait_running(&f, rolled, 10);
    wait_all_up(&f);
    for (i, maps) in before.iter().enumerate() {
        let after = config_maps(&f, i);
        for (m, (a, b)) in CONFIG_MAPS.iter().zip(maps.iter().zip(&after)) {
            assert!(a == b, "node {}: {m} differs after the rollback", i + 1);
        }
    }
    let history = f.lbctl_json(LBCTL, 0, &["config", "history"]);
    assert_eq!(history[0]["revision"], rolled);
    assert!(
        history[0]["source"]
            .as_str()
            .unwrap()
            .ends_with(&format!("rollback to {k}")),
        "{history}"
    );
    let (ok, diff) = f.lbctl(
        LBCTL,
        1,
        &["config", "diff", &k.to_string(), &changed.to_string()],
    );
    assert!(ok && diff.contains("+drain = true"), "{diff}");
    // And by time: `--at` the moment revision `changed` was made gives its text back.
    let at = history
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["revision"] == changed)
        .unwrap()["at"]
        .as_str()
        .unwrap()
        .to_string();
    let v = f.lbctl_json(LBCTL, 0, &["config", "rollback", "--at", &at]);
    let by_time = v["revision"].as_u64().unwrap();
    wait_running(&f, by_time, 10);
    let text = |rev: u64| {
        f.lbctl_json(
            LBCTL,
            2,
            &["config", "show", "--revision", &rev.to_string()],
        )["config"]
            .clone()
    };
    assert_eq!(text(by_time), text(changed));
    println!(
        "rollback to revision {k} (as revision {rolled}): the {} configuration maps of all three nodes are bit for bit what they were",
        CONFIG_MAPS.len()
    );

    // 5. Export and import, fleet-wide: the whole history (with its 1,000-VIP revisions)
    // is more than etcd takes at once and is refused, clearly; its newest five are
    // recorded, the four older as history that no node runs, the newest run by all.
    let export = f.nodes[0].dir.join("export.json");
    let (ok, out) = f.lbctl(LBCTL, 0, &["config", "export", export.to_str().unwrap()]);
    assert!(ok, "{out}");
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    let (ok, out) = f.lbctl(LBCTL, 1, &["config", "import", export.to_str().unwrap()]);
    assert!(
        !ok && out.contains("more than") && out.contains("import fewer"),
        "{out}"
    );
    let newest = &all[all.len() - 5..];
    std::fs::write(&export, serde_json::to_string(newest).unwrap()).unwrap();
    let head = running(&f, 0);
    let v = f.lbctl_json(LBCTL, 1, &["config", "import", export.to_str().unwrap()]);
    let imported = v["revision"].as_u64().unwrap();
    assert_eq!(imported, head + 5, "{v}");
    wait_running(&f, imported, 10);
    assert_eq!(text(imported), newest[4]["config"]);
    for (i, n) in f.nodes.iter().enumerate() {
        let log = n.lbd.as_ref().unwrap().log();
        for history in head + 1..imported {
            assert!(
                !log.contains(&format!("fleet revision applied revision={history} ")),
                "node {} ran imported history {history}",
                i + 1
            );
        }
    }
    let history = f.lbctl_json(LBCTL, 2, &["config", "history"]);
    assert!(
        history[1]["source"]
            .as_str()
            .unwrap()
            .contains("import (was revision"),
        "{history}"
    );
    println!(
        "import of {} revisions refused (too big for one etcd transaction); the newest 5 imported as revisions {}..={imported}, run by every node",
        all.len(),
        head + 1
    );

    // 6. Where nodes disagree: node 3's checks of backend 1 fail (its probes are dropped on
    // their way out; the traffic it forwards is not, XDP sends it past the firewall), so
    // `fleet status` names that backend with each node's view.
    let b1 = f.backends[0].addr.clone();
    f.nodes[2].ns.exec(&format!(
        "nft add table inet probes && \
         nft add chain inet probes out '{{ type filter hook output priority 0; }}' && \
         nft add rule inet probes out ip daddr {b1} tcp dport 80 drop"
    ));
    let t = Instant::now();
    wait_until("fleet status showing the disagreement", 20, || {
        let fs = f.lbctl_json(LBCTL, 0, &["fleet", "status"]);
        fs["disagreements"].as_array().is_some_and(|d| {
            d.iter().any(|x| {
                x["address"] == b1.as_str()
                    && x["states"]["node3"] == "down"
                    && x["states"]["node1"] == "up"
            })
        })
    });
    let (_, human) = f.lbctl(LBCTL, 1, &["fleet", "status"]);
    assert!(
        human.contains("the nodes disagree about these backends:"),
        "{human}"
    );
    println!(
        "node 3 alone losing backend 1: fleet status names the disagreement after {:.0} ms",
        ms(t.elapsed())
    );

    // 7. A node that stops leaves the fleet's status once its lease runs out (3 s).
    let pid = f.nodes[2].lbd.as_ref().unwrap().pid();
    // SAFETY: plain kill(2) on the daemon's pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let t = Instant::now();
    wait_until("node 3 gone from fleet status", 15, || {
        let fs = f.lbctl_json(LBCTL, 0, &["fleet", "status"]);
        fs["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|x| x["node"] != "node3"))
    });
    println!(
        "node 3 killed: gone from fleet status after {:.0} ms (lease 3 s)",
        ms(t.elapsed())
    );
}

#[test]
fn the_fleet_rides_out_etcd_failures() {
    let (_turn, mut f) = start(None);

    // 1. The etcd leader is killed: changes go on once a new leader is elected.
    let leader = f.etcd_leader().expect("a leader");
    let t = Instant::now();
    f.kill_etcd_member(leader);
    let (rev, refused) = reweigh_when_writable(&f, 0, 90, 20);
    let written = t.elapsed();
    let everywhere = wait_running(&f, rev, 20) - t;
    println!(
        "etcd leader (member {}) killed: the next change landed {:.0} ms later ({refused} refused meanwhile), ran on every node after {:.0} ms",
        leader + 1,
        ms(written),
        ms(everywhere)
    );
    f.start_etcd_member(leader);
    wait_until("etcd healthy again", 30, || f.etcd_healthy());

    // 2. Quorum lost: every node keeps serving and announcing its revision; changes are
    // refused, clearly; once quorum is back a change lands and every node runs it.
    let hold = f.hold(HELD, 8000);
    let before = running(&f, 0);
    f.kill_etcd_member(0);
    f.kill_etcd_member(1);
    let t = Instant::now();
    let (ok, out) = f.lbctl(
        LBCTL,
        1,
        &["backend", "weight", "web", &f.backends[0].addr, "80"],
    );
    let answered = t.elapsed();
    println!(
        "quorum lost: a change was answered in {:.0} ms: {}",
        ms(answered),
        out.trim()
    );
    assert!(!ok && out.contains("unavailable"), "{out}");
    assert!(
        out.contains(&format!("keeps serving revision {before}")),
        "{out}"
    );
    let cut_off = wait_until("every node reporting etcd out of reach", 20, || {
        (0..3).all(|i| status(&f, i).is_some_and(|s| s["fleet"]["connected"] == false))
    });
    // Well past the grace: nobody runs anything newer, so nobody withdraws.
    std::thread::sleep(Duration::from_millis(2 * GRACE_MS));
    assert_eq!(f.next_hops().len(), 3, "{:?}", f.next_hops());
    let (_, failed) = f.requests(100);
    for i in 0..3 {
        let s = status(&f, i).unwrap();
        assert_eq!(s["fleet"]["running"], before, "{s}");
        assert!(s["fleet"]["behind"].is_null(), "{s}");
    }
    println!(
        "all nodes cut off after {:.0} ms; after {GRACE_MS}x2 ms more: 3 next hops, 100 new connections, {failed} failed",
        ms(cut_off)
    );
    assert_eq!(failed, 0);
    let t = Instant::now();
    f.start_etcd_member(0);
    f.start_etcd_member(1);
    let (rev, _) = reweigh_when_writable(&f, 1, 80, 30);
    let caught_up = wait_running(&f, rev, 20) - t;
    println!(
        "quorum back: revision {rev} written and run by every node {:.0} ms after the members restarted",
        ms(caught_up)
    );
    let held = holds::finish(hold);
    assert!(
        held.broken.is_empty(),
        "quorum loss broke {:?}",
        held.broken
    );

    // 3. Node 3 cut off from etcd while a change lands: it withdraws after the grace (its
    // peers tell it they run newer) and announces again once it has caught up. The change
    // leaves the VIP's ring as it is (no backup pool to take over), so the flows the router moves
    // between nodes keep their backends: what this measures is the withdrawal itself.
    let hold = f.hold(HELD, 15000);
    f.cut_etcd(2);
    let lost = wait_until("node 3 noticing it is cut off", 20, || {
        status(&f, 2).is_some_and(|s| s["fleet"]["connected"] == false)
    });
    let t = Instant::now();
    let v = f.lbctl_json(LBCTL, 0, &["vip", "set", "web", "min_primaries=2"]);
    let first = v["revision"].as_u64().unwrap();
    // Two changes land while it is cut off: it catches up on both, in order.
    let v = f.lbctl_json(LBCTL, 1, &["vip", "set", "web", "min_primaries=3"]);
    let rev = v["revision"].as_u64().unwrap();
    f.wait_next_hops(&[0, 1], 20);
    let s3 = status(&f, 2).unwrap();
    println!(
        "node 3 cut off from etcd (noticed after {:.0} ms); a change landed; node 3 left the next hops {:.0} ms later: {}",
        ms(lost),
        ms(t.elapsed()),
        s3["fleet"]["behind"]
    );
    assert!(s3["fleet"]["behind"].is_string(), "{s3}");
    assert!(running(&f, 2) < rev);
    let t = Instant::now();
    f.mend_etcd(2);
    wait_running(&f, rev, 30);
    let ran = t.elapsed();
    let log = f.nodes[2].lbd().log();
    let applied = |r: u64| {
        log.find(&format!("fleet revision applied revision={r} "))
            .unwrap_or_else(|| panic!("node 3 never applied revision {r}:\n{log}"))
    };
    assert!(
        applied(first) < applied(rev),
        "caught up out of order:\n{log}"
    );
    f.wait_next_hops(&[0, 1, 2], 20);
    println!(
        "node 3 reconnected: ran revision {rev} {:.0} ms after the path came back, announced again after {:.0} ms",
        ms(ran),
        ms(t.elapsed())
    );
    let held = holds::finish(hold);
    assert!(
        held.broken.is_empty(),
        "the cut broke {:?}: {:?}",
        held.broken,
        held.why
    );

    // 4. A node restarted while etcd is down starts from its cached revision.
    for m in 0..3 {
        f.kill_etcd_member(m);
    }
    let last = running(&f, 1);
    f.nodes[1].lbd().kill9();
    f.nodes[1].lbd().restart();
    wait_until("node 2 serving again", 20, || status(&f, 1).is_some());
    let s = status(&f, 1).unwrap();
    println!("node 2 restarted with etcd down: {}", s["fleet"]);
    assert_eq!(s["fleet"]["running"], last, "{s}");
    assert_eq!(s["fleet"]["connected"], false, "{s}");
    assert_eq!(s["vips"], 1, "{s}");
    assert!(
        f.nodes[1]
            .lbd()
            .log()
            .contains("starting from the cached fleet revision"),
        "{}",
        f.nodes[1].lbd().log()
    );
    f.wait_next_hops(&[0, 1, 2], 20);
    let (_, failed) = f.requests(100);
    assert_eq!(failed, 0);
    for m in 0..3 {
        f.start_etcd_member(m);
    }
    wait_until("node 2 connected again", 30, || {
        status(&f, 1).is_some_and(|s| s["fleet"]["connected"] == true)
    });
}

/// etcd over TLS with client certificates and a user: the node connects with what
/// `[daemon.fleet]` names, never logs or shows the password, and says clearly when the
/// password is wrong (while serving its cached revision).
#[test]
fn a_node_reaches_etcd_over_tls_as_a_user_and_never_shows_the_password() {
    const PASSWORD: &str = "s3cret-Pa55word-lbt";
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = Fleet::new(1, 1, ECHO, LBD, false);
    let pki = f.start_etcd_secure(1, "lbd", PASSWORD);
    let password_file = f.nodes[0].dir.join("etcd-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let node = node_file(&f, 0, None).replace(
        "lease_s = 3\n",
        &format!(
            "lease_s = 3\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nuser = \"lbd\"\npassword_file = \"{}\"\n",
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display(),
            password_file.display()
        ),
    );
    assert!(node.contains("https://"), "{node}");
    f.start_lbd(0, LBD, &node);
    wait_until("the node connected over TLS", 30, || {
        status(&f, 0).is_some_and(|s| s["fleet"]["connected"] == true)
    });
    let doc = write_doc(&f, "fleet.toml", &document(&f));
    assert_eq!(apply(&f, 0, &doc), 1);
    wait_running(&f, 1, 10);
    f.wait_next_hops(&[0], 30);
    // What the node published is in etcd, readable with the same credentials.
    let keys = f.etcdctl("get --prefix --keys-only /lbd/lbt/");
    assert!(
        keys.contains("/lbd/lbt/node/node1") && keys.contains("/lbd/lbt/head"),
        "{keys}"
    );

    // A wrong password: the node serves its cached revision and says why it cannot reach
    // etcd, naming neither password.
    std::fs::write(&password_file, "wrong-Pa55word\n").unwrap();
    f.nodes[0].lbd().kill9();
    f.nodes[0].lbd().restart();
    wait_until("the node up again", 20, || status(&f, 0).is_some());
    let s = status(&f, 0).unwrap();
    println!("wrong password: {}", s["fleet"]);
    assert_eq!(s["fleet"]["running"], 1, "{s}");
    assert_eq!(s["fleet"]["connected"], false, "{s}");
    let error = s["fleet"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("authentication failed"), "{s}");
    let (ok, out) = f.lbctl(
        LBCTL,
        0,
        &["backend", "weight", "web", &f.backends[0].addr, "5"],
    );
    assert!(!ok && out.contains("unavailable"), "{out}");
    let shown = [
        f.nodes[0].lbd().log(),
        s.to_string(),
        out,
        f.lbctl(LBCTL, 0, &["status"]).1,
    ];
    for text in shown {
        assert!(
            !text.contains(PASSWORD) && !text.contains("wrong-Pa55word"),
            "a password shows: {text}"
        );
    }
}
