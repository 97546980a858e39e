//! Failures seen from the traffic itself (issue 15): a backend whose server dies (its
//! kernel answers SYNs with RST) or is black-holed, while new connections arrive at a few
//! hundred a second. The same failure is run with the active checks alone and with
//! `[vip.passive]` on; each run prints the failed (or, black-holed, stalled) connections
//! and when the last one started after the failure. Passive detection must mark the
//! backend down from its traffic and fail fewer connections than the checks alone; and it
//! must judge nothing while a flood of SYNs that no client completes hits every backend, nor
//! on a VIP with little traffic. The black hole is also run for UDP, where a flow's second
//! datagram is the client's answer.

use std::{
    io::BufRead,
    process::Child,
    time::{Duration, Instant},
};

use lb_common::Forward;
use lb_tests::{
    daemon::Daemon,
    topology::{Topology, VIP4},
};

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");
/// New connections a second during a failure.
const RATE: u64 = 300;
/// A TCP connection this slow waited for its SYN's retransmission: its first SYN was lost.
const STALLED_MS: u64 = 500;
/// A UDP flow this slow resent its request (`lbt-echo rate-udp` resends after 1 s).
const STALLED_UDP_MS: u64 = 1000;
const VERDICT: &str = "backend marked down by its traffic";

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The service under test: TCP on port 80 (checked by TCP connects) or UDP on port 53
/// (checked by datagrams to the backends' port 5353).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Service {
    Tcp,
    Udp,
}

impl Service {
    fn addr(self) -> String {
        match self {
            Service::Tcp => format!("{VIP4}:80"),
            Service::Udp => format!("{VIP4}:53"),
        }
    }

    /// `lbt-echo client`'s flag for one request of this kind.
    fn flag(self) -> &'static str {
        match self {
            Service::Tcp => "--tcp",
            Service::Udp => "--udp",
        }
    }

    fn client(self) -> &'static str {
        match self {
            Service::Tcp => "rate",
            Service::Udp => "rate-udp",
        }
    }

    fn stalled_ms(self) -> u64 {
        match self {
            Service::Tcp => STALLED_MS,
            Service::Udp => STALLED_UDP_MS,
        }
    }
}

fn config(service: Service, passive: bool) -> String {
    let (port, health) = match service {
        Service::Tcp => ("80\n", "kind = \"tcp\""),
        Service::Udp => ("53\nprotocol = \"udp\"\n", "kind = \"udp\"\nport = 5353"),
    };
    let mut c = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\n\n\
         [dataplane]\nflows = 65536\nring_capacity = 65537\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = {port}ring_size = 4093\n\n\
         [vip.health]\n{health}\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n"
    );
    if passive {
        c.push_str("\n[vip.passive]\nenabled = true\n");
        // A UDP flow's answer waits for the server program's reply, not the backend's
        // kernel: a server stalled for 30 ms on this shared VM would be judged.
        if service == Service::Udp {
            c.push_str("handshake_ms = 100\n");
        }
    }
    for b in ["198.18.0.21", "198.18.0.22", "198.18.0.23"] {
        c.push_str(&format!("\n[[vip.backend]]\naddress = \"{b}\"\n"));
    }
    c
}

/// `lbt-echo rate` or `rate-udp` (by `service`) from the client namespace (as `uid`, if
/// given); returns once it has started, with the moment it did.
fn paced(
    t: &Topology,
    service: Service,
    per_second: u64,
    millis: u64,
    uid: Option<u32>,
) -> (Child, Instant) {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &t.client.ns.name]);
    if let Some(uid) = uid {
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ]);
    }
    let mut child = cmd
        .args([
            ECHO,
            service.client(),
            &service.addr(),
            &per_second.to_string(),
            &millis.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rate client");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "start");
    (child, Instant::now())
}

/// Each connection: (started, ms after the client started; took ms; backend or None).
fn outcomes(child: Child) -> Vec<(u64, u64, Option<String>)> {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = (f[2] != "failed").then(|| f[2].to_string());
            (f[0].parse().unwrap(), f[1].parse().unwrap(), name)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Failure {
    /// The server stops: the backend's kernel resets every SYN.
    Reset,
    /// Every packet to the backend is dropped.
    BlackHole,
}

#[derive(Debug)]
struct Figures {
    /// Connections started after the failure that failed or stalled.
    hurt: usize,
    /// When the last of them started, after the failure.
    last_ms: u64,
    started: usize,
    verdict: Option<String>,
}

fn run(service: Service, kind: Failure, passive: bool) -> Figures {
    let mut t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config(service, passive));
    d.wait_served_as(&t, service.flag(), &service.addr());
    let (child, began) = paced(&t, service, RATE, 2500, None);
    std::thread::sleep(Duration::from_millis(800));
    let failed_at = began.elapsed().as_millis() as u64;
    match kind {
        Failure::Reset => t.stop_server(0),
        Failure::BlackHole => {
            t.backends[0].ns.exec(
                "nft add table inet lbt && nft add chain inet lbt in '{ type filter hook input priority 0; policy drop; }'",
            );
        }
    }
    let all = outcomes(child);
    let hurt: Vec<&(u64, u64, Option<String>)> = all
        .iter()
        .filter(|(at, took, name)| {
            *at >= failed_at && (name.is_none() || *took >= service.stalled_ms())
        })
        .collect();
    let before: usize = all
        .iter()
        .filter(|(at, took, name)| {
            *at < failed_at.saturating_sub(50) && (name.is_none() || *took >= service.stalled_ms())
        })
        .count();
    assert_eq!(before, 0, "connections failed before the failure");
    d.assert_running();
    // The verdict's reason is what `lbctl health` shows for the backend.
    let health: serde_json::Value = lb_api::Client::new(d.socket())
        .call_typed(&lb_api::Request::Health { vip: None }, None)
        .unwrap();
    let b1 = health
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == "198.18.0.21")
        .unwrap();
    if passive {
        assert!(
            b1["reason"].as_str().unwrap().starts_with("traffic: "),
            "{b1}"
        );
    } else {
        assert_eq!(b1["state"], "down", "{b1}");
    }
    Figures {
        hurt: hurt.len(),
        last_ms: hurt
            .iter()
            .map(|(at, _, _)| at - failed_at)
            .max()
            .unwrap_or(0),
        started: all.iter().filter(|(at, _, _)| *at >= failed_at).count(),
        verdict: d
            .log()
            .lines()
            .find(|l| l.contains(VERDICT))
            .map(str::to_string),
    }
}

fn compare(service: Service, kind: Failure) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let active = run(service, kind, false);
    let passive = run(service, kind, true);
    for (what, f) in [
        ("active checks alone", &active),
        ("with passive detection", &passive),
    ] {
        println!(
            "{service:?} {kind:?}, {RATE} new flows a second, {what}: {} of {} flows after the failure failed or stalled, the last started {} ms after it",
            f.hurt, f.started, f.last_ms
        );
    }
    println!(
        "  verdict: {}",
        passive.verdict.as_deref().unwrap_or("none")
    );
    assert!(active.verdict.is_none(), "{active:?}");
    let verdict = passive
        .verdict
        .as_deref()
        .expect("passive detection judged the backend");
    assert!(
        verdict.contains("traffic:") && verdict.contains("198.18.0.21"),
        "{verdict}"
    );
    assert!(
        active.hurt > 0,
        "the failure hurt no connection: {active:?}"
    );
    assert!(
        passive.hurt < active.hurt,
        "passive detection failed as many connections as the checks alone: {passive:?} vs {active:?}"
    );
}

#[test]
fn a_dead_server_is_seen_from_its_resets() {
    compare(Service::Tcp, Failure::Reset);
}

#[test]
fn a_black_holed_backend_is_seen_from_its_silence() {
    compare(Service::Tcp, Failure::BlackHole);
}

/// UDP: the flow's second datagram, sent once the request is answered, is the client's
/// answer; a black-holed backend's flows never send it.
#[test]
fn a_black_holed_udp_backend_is_seen_from_its_silence() {
    compare(Service::Udp, Failure::BlackHole);
}

/// No verdict on healthy backends: while a flood of SYNs that no client completes (a
/// client whose packets after the SYN are all dropped) hits every backend alike beside
/// real clients, nor with only a trickle of connections.
#[test]
fn no_verdict_under_a_flood_of_unfinished_handshakes_nor_on_a_quiet_vip() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config(Service::Tcp, true));
    d.wait_served(&t, &Service::Tcp.addr());
    // The flooder runs as nobody; only its packets after the SYN are dropped.
    t.client.ns.exec(
        "nft add table inet flood && \
         nft add chain inet flood out '{ type filter hook output priority 0; }' && \
         nft add rule inet flood out meta skuid 65534 tcp flags \\& syn == 0 drop",
    );
    let (flood, _) = paced(&t, Service::Tcp, 400, 2500, Some(65534));
    let (real, _) = paced(&t, Service::Tcp, 60, 2500, None);
    let real = outcomes(real);
    let flooded = outcomes(flood);
    let completed = flooded.iter().filter(|(_, _, n)| n.is_some()).count();
    let served = real.iter().filter(|(_, _, n)| n.is_some()).count();
    println!(
        "flood: {} unfinished handshakes ({completed} answered), beside {served} of {} real connections served",
        flooded.len(),
        real.len()
    );
    assert_eq!(
        completed, 0,
        "the flood's handshakes were to stay unfinished"
    );
    assert_eq!(
        served,
        real.len(),
        "real connections failed during the flood"
    );
    // A quiet VIP: a few connections a second.
    let (quiet, _) = paced(&t, Service::Tcp, 10, 1500, None);
    let quiet = outcomes(quiet);
    assert!(quiet.iter().all(|(_, _, n)| n.is_some()));
    d.assert_running();
    let log = d.log();
    assert!(!log.contains(VERDICT), "a false verdict:\n{log}");
    assert!(!log.contains("up -> down"), "a backend went down:\n{log}");
}
