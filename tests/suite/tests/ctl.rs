//! `lbctl` against a real daemon in namespaces: every command's happy path, errors that
//! change nothing, a peer of another user refused, crash safety of the revision store, and
//! rollback reproducing the dataplane maps bit for bit.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::Forward;
use lb_common::{Backend, VipKey, VipMeta};
use lb_tests::{
    daemon::Daemon,
    topology::{Topology, VIP4},
};
use serde_json::Value;

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");
const LBCTL: &str = env!("CARGO_BIN_EXE_lbt-lbctl");

fn config(weights: [u32; 3]) -> String {
    let mut c = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\n\n[dataplane]\nflows = 65536\nring_capacity = 262148\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\n\n\
         [vip.health]\nkind = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n"
    );
    for (i, w) in weights.iter().enumerate() {
        c.push_str(&format!(
            "\n[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = {w}\n",
            21 + i
        ));
    }
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn lbctl(d: &Daemon, args: &[&str]) -> Out {
    let o = Command::new(LBCTL)
        .arg("--socket")
        .arg(d.socket())
        .args(args)
        .output()
        .expect("run lbctl");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

fn ok(d: &Daemon, args: &[&str]) -> String {
    let o = lbctl(d, args);
    assert_eq!(o.code, 0, "lbctl {args:?} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

fn json(d: &Daemon, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(d, &a)).expect("--json output parses")
}

fn state_of(d: &Daemon, addr: &str) -> String {
    json(d, &["health", "web"])
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The value of `key` in aligned `key  value` lines (`status`, a change's answer).
fn value_of(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .filter(|v| v.starts_with("  "))
            .map(|v| v.trim().to_string())
    })
}

fn revisions(d: &Daemon) -> usize {
    json(d, &["config", "history"]).as_array().unwrap().len()
}

fn start(weights: [u32; 3]) -> (Topology, Daemon) {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config(weights));
    d.wait_served(&t, &format!("{VIP4}:80"));
    (t, d)
}

#[test]
fn every_command_happy_path() {
    let (t, d) = start([100, 100, 100]);
    let status = ok(&d, &["status"]);
    assert_eq!(
        value_of(&status, "revision").as_deref(),
        Some("1"),
        "{status}"
    );
    assert_eq!(
        value_of(&status, "backends").as_deref(),
        Some("3 up"),
        "{status}"
    );
    assert_eq!(
        value_of(&status, "interfaces").as_deref(),
        Some("eth0"),
        "{status}"
    );
    // The human form is words, not JSON.
    for human in [
        status,
        ok(&d, &["vip", "list"]),
        ok(&d, &["health"]),
        ok(&d, &["events"]),
    ] {
        assert!(!human.contains(['{', '[', '"']), "{human}");
    }
    let vips = json(&d, &["vip", "list"]);
    assert_eq!(vips[0]["name"], "web");
    assert!(ok(&d, &["vip", "list"]).contains("198.18.100.1"));
    let list = ok(&d, &["backend", "list", "web"]);
    assert!(
        list.contains("198.18.0.21") && list.contains("up"),
        "{list}"
    );

    let drained = ok(&d, &["backend", "drain", "web", "198.18.0.21"]);
    assert_eq!(
        value_of(&drained, "revision").as_deref(),
        Some("2"),
        "{drained}"
    );
    assert_eq!(
        value_of(&drained, "source").as_deref(),
        Some("api: backend.set web 198.18.0.21"),
        "{drained}"
    );
    assert_eq!(state_of(&d, "198.18.0.21"), "draining");
    let (seen, failed) = t.requests("--tcp", &format!("{VIP4}:80"), 40);
    assert!(failed == 0 && !seen.contains_key("b1"), "{seen:?}");
    ok(&d, &["backend", "enable", "web", "198.18.0.21"]);
    assert_eq!(state_of(&d, "198.18.0.21"), "up");
    ok(&d, &["backend", "disable", "web", "198.18.0.23"]);
    assert_eq!(state_of(&d, "198.18.0.23"), "disabled");
    ok(&d, &["backend", "enable", "web", "198.18.0.23"]);
    ok(&d, &["backend", "weight", "web", "198.18.0.22", "300"]);
    let rev_weight_at = Instant::now();
    std::thread::sleep(Duration::from_millis(50));
    let h = json(&d, &["config", "history"]);
    assert_eq!(h.as_array().unwrap().len(), 6, "{h}");
    let at_weight = h[0]["at"].as_str().unwrap().to_string();
    assert!(ok(&d, &["config", "diff", "5", "6"]).contains("+weight = 300"));
    ok(&d, &["config", "rollback", "--to", "5"]);
    assert!(!ok(&d, &["config", "show"]).contains("weight = 300"));
    ok(&d, &["config", "rollback", "--at", &at_weight]);
    assert!(
        ok(&d, &["config", "show"]).contains("weight = 300"),
        "rollback --at {at_weight} (made {:?} ago)",
        rev_weight_at.elapsed()
    );
    assert!(ok(&d, &["config", "show", "--revision", "1"]).contains("weight = 100"));

    ok(&d, &["vip", "add", "web2", "198.18.100.2", "--port", "80"]);
    ok(
        &d,
        &["backend", "add", "web2", "198.18.0.21", "--weight", "10"],
    );
    ok(&d, &["vip", "set", "web2", "scheduler=round_robin"]);
    assert_eq!(json(&d, &["vip", "list"]).as_array().unwrap().len(), 2);
    ok(&d, &["backend", "remove", "web2", "198.18.0.21"]);
    ok(&d, &["vip", "remove", "web2"]);

    let file = d.dir.join("good.toml");
    std::fs::write(&file, config([100, 200, 100])).unwrap();
    d.write_config(&std::fs::read_to_string(&file).unwrap());
    let file_text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&file, &file_text).unwrap();
    assert!(ok(&d, &["config", "validate", file.to_str().unwrap()]).contains("valid"));
    ok(
        &d,
        &[
            "config",
            "apply",
            file.to_str().unwrap(),
            "--comment",
            "b2 heavier",
        ],
    );
    assert!(ok(&d, &["config", "history"]).contains("b2 heavier"));

    let stats = json(&d, &["stats"]);
    assert!(stats["reasons"]["tx_ipip"].as_u64().unwrap() > 0, "{stats}");
    assert!(ok(&d, &["stats"]).contains("tx_ipip"));
    let events = ok(&d, &["events"]);
    assert!(
        events.contains("draining") && events.contains("disabled"),
        "{events}"
    );

    let export = d.dir.join("export.json");
    ok(&d, &["config", "export", export.to_str().unwrap()]);
    let before = revisions(&d);
    let shown = ok(&d, &["config", "show"]);
    ok(&d, &["config", "import", export.to_str().unwrap()]);
    assert!(revisions(&d) > before);
    assert_eq!(
        ok(&d, &["config", "show"]),
        shown,
        "import restores the newest exported configuration"
    );

    assert!(ok(&d, &["completions", "bash"]).contains("lbctl"));
    assert!(ok(&d, &["man"]).contains(".TH"));
    // The daemon wrote every change back to its file.
    assert_eq!(std::fs::read_to_string(&d.config).unwrap(), shown);
}

#[test]
fn errors_are_clear_and_change_nothing() {
    let (_t, d) = start([100, 100, 100]);
    let before = ok(&d, &["config", "show"]);
    let e = lbctl(&d, &["backend", "drain", "nope", "198.18.0.21"]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("unknown VIP \"nope\""), "{}", e.stderr);
    let e = lbctl(&d, &["backend", "drain", "web", "198.18.0.99"]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("no backend 198.18.0.99"), "{}", e.stderr);
    let e = lbctl(&d, &["backend", "drain", "web", "not-an-ip"]);
    assert_eq!(e.code, 2);
    assert!(e.stderr.contains("invalid"), "{}", e.stderr);
    let e = lbctl(&d, &["backend", "weight", "web", "198.18.0.21", "70000"]);
    assert_eq!(e.code, 1);
    assert!(
        e.stderr.contains("weight 70000 is out of range"),
        "{}",
        e.stderr
    );
    // At the value, with the line shown and a caret under it.
    assert!(
        e.stderr.contains(" | weight = 70000\n") && e.stderr.contains(" |          ^^^^^"),
        "{}",
        e.stderr
    );
    let file = d.dir.join("x.toml");
    std::fs::write(&file, config([1, 2, 3])).unwrap();
    let e = lbctl(
        &d,
        &["config", "apply", file.to_str().unwrap(), "--base", "7"],
    );
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("conflict"), "{}", e.stderr);
    std::fs::write(&file, "[daemon]\ninterfaces = []\n").unwrap();
    let e = lbctl(&d, &["config", "validate", file.to_str().unwrap()]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("interfaces is empty"), "{}", e.stderr);
    assert!(
        e.stderr.contains("x.toml:2:14: ")
            && e.stderr
                .contains("2 | interfaces = []\n  |              ^^"),
        "{}",
        e.stderr
    );

    // Malformed requests on the socket itself.
    for (line, want) in [
        ("hello", "bad_request"),
        ("{\"v\":2,\"op\":\"status\"}", "version 2"),
        ("{\"v\":1,\"op\":\"nope\"}", "unknown operation"),
    ] {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        assert!(
            answer.contains("\"ok\":false") && answer.contains(want),
            "{line} -> {answer}"
        );
    }

    // Another user: the socket is owner-only, and the daemon checks peer credentials too.
    // Refused with exit 4 and a message naming why.
    let refused_as_nobody = |d: &Daemon, why: &str| {
        let o = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                LBCTL,
                "--socket",
            ])
            .arg(d.socket())
            .arg("status")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{stderr}");
        assert!(stderr.contains(why), "want {why:?} in: {stderr}");
    };
    // The socket file's mode stops it first...
    refused_as_nobody(&d, "Permission denied");
    Command::new("chmod")
        .arg("666")
        .arg(d.socket())
        .status()
        .unwrap();
    // ...and with the mode opened, the daemon's peer-credential check does.
    refused_as_nobody(&d, "permission: the control API serves root");

    assert_eq!(revisions(&d), 1, "a refused change left a revision");
    assert_eq!(ok(&d, &["config", "show"]), before);
}

#[test]
fn sigkill_during_applies_keeps_the_store_intact() {
    let (_t, mut d) = start([100, 100, 100]);
    let files: Vec<_> = [[100, 200, 300], [300, 200, 100]]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let f = d.dir.join(format!("v{i}.toml"));
            d.write_config(&config(*w));
            std::fs::copy(&d.config, &f).unwrap();
            f
        })
        .collect();
    let (sock, f0, f1) = (d.socket(), files[0].clone(), files[1].clone());
    let looper = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_millis(1500);
        let mut n = 0;
        while Instant::now() < end {
            let f = if n % 2 == 0 { &f0 } else { &f1 };
            let _ = Command::new(LBCTL)
                .arg("--socket")
                .arg(&sock)
                .args(["config", "apply", f.to_str().unwrap()])
                .output();
            n += 1;
        }
        n
    });
    std::thread::sleep(Duration::from_millis(700));
    d.kill9();
    let applied = looper.join().unwrap();
    d.restart();
    let end = Instant::now() + Duration::from_secs(10);
    while lbctl(&d, &["status"]).code != 0 {
        assert!(
            Instant::now() < end,
            "restarted daemon never answered:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shown = ok(&d, &["config", "show"]);
    let variants: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    println!(
        "{applied} applies attempted; {} revisions after the crash",
        revisions(&d)
    );
    assert!(
        variants.contains(&shown),
        "the store's newest revision is not one that was applied:\n{shown}"
    );
    assert!(revisions(&d) >= 2);
}

/// Everything the dataplane reads, from the pinned maps.
/// LB_VIPS entries, LB_BACKENDS entries in use, and the VIPs' ring slots in order.
type Maps = (Vec<(VipKey, VipMeta)>, Vec<(u32, Backend)>, Vec<u32>);

fn dump(d: &Daemon) -> Maps {
    let open = |n: &str| MapData::from_pin(d.pin_dir.join(n)).unwrap();
    let vips: HashMap<_, VipKey, VipMeta> =
        HashMap::try_from(Map::HashMap(open("LB_VIPS"))).unwrap();
    let mut v: Vec<(VipKey, VipMeta)> = vips.iter().map(|r| r.unwrap()).collect();
    v.sort_by_key(|(k, _)| *k);
    let bes: Array<_, Backend> = Array::try_from(Map::Array(open("LB_BACKENDS"))).unwrap();
    let b: Vec<(u32, Backend)> = (0..1024u32)
        .map(|i| (i, bes.get(&i, 0).unwrap()))
        .filter(|(_, b)| b.family != 0)
        .collect();
    let rings: Array<_, u32> = Array::try_from(Map::Array(open("LB_RINGS"))).unwrap();
    let r: Vec<u32> = v
        .iter()
        .flat_map(|(_, m)| {
            (m.ring_offset..m.ring_offset + m.ring_size)
                .map(|i| rings.get(&i, 0).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    (v, b, r)
}

#[test]
fn rollback_reproduces_the_maps_bit_for_bit() {
    let (_t, d) = start([100, 200, 300]);
    let before = dump(&d);
    ok(&d, &["backend", "weight", "web", "198.18.0.21", "500"]);
    ok(&d, &["backend", "drain", "web", "198.18.0.22"]);
    ok(
        &d,
        &[
            "vip",
            "add",
            "dns",
            "198.18.100.2",
            "--port",
            "53",
            "--protocol",
            "udp",
        ],
    );
    ok(&d, &["backend", "add", "dns", "198.18.0.23"]);
    assert_ne!(dump(&d), before);
    ok(&d, &["config", "rollback", "--to", "1"]);
    let after = dump(&d);
    assert_eq!(after.0, before.0, "LB_VIPS differ after rollback");
    assert_eq!(after.1, before.1, "LB_BACKENDS differ after rollback");
    assert!(after.2 == before.2, "LB_RINGS differ after rollback");
    // Restore from a backup (export, change, import) reproduces them too.
    let backup = d.dir.join("backup.json");
    ok(&d, &["config", "export", backup.to_str().unwrap()]);
    ok(&d, &["backend", "weight", "web", "198.18.0.23", "7"]);
    assert_ne!(dump(&d), before);
    ok(&d, &["config", "import", backup.to_str().unwrap()]);
    assert!(dump(&d) == before, "maps differ after restoring the backup");
    println!(
        "rollback: {} VIP entries, {} backends, {} ring slots identical",
        after.0.len(),
        after.1.len(),
        after.2.len()
    );
}

#[test]
fn changing_a_vips_port_replaces_its_entry() {
    let (t, d) = start([100, 100, 100]);
    ok(&d, &["vip", "set", "web", "port=8080"]);
    let (vips, _, _) = dump(&d);
    let ports: Vec<u16> = vips.iter().map(|(k, _)| k.port).collect();
    assert!(
        !ports.contains(&80),
        "the old :80 entry is still in LB_VIPS: {ports:?}"
    );
    let ids: std::collections::BTreeSet<u32> = vips.iter().map(|(_, m)| m.vip_id).collect();
    assert_eq!(ids.len(), 1, "{vips:?}");
    let (_, failed) = t.requests("--tcp", &format!("{VIP4}:8080"), 20);
    assert_eq!(failed, 0);
}
