//! End to end on a two-arm balancer: the client on a "front" bridge, the backends on a
//! "back" bridge in another subnet, the balancer between them with a NIC on each.
//!
//! ```text
//!  client 198.18.0.1 ── front br0 ── eth0 198.18.0.10  [lb]  eth1 198.18.2.10 ── back br0 ─┬─ b1 198.18.2.21
//!         2001:db8::1                     2001:db8::10         2001:db8:2::10              ├─ b2 198.18.2.22
//!                                                                                          └─ b3 198.18.2.23
//! ```
//! The balancer's XDP program runs in native mode on both NICs. A request for a VIP comes in
//! on eth0; `bpf_fib_lookup` says its backend is behind eth1, so the program encapsulates it
//! (IP-in-IP) and redirects it through the `LB_TX_PORTS` devmap out of eth1. Backends strip
//! the tunnel with `lb_decap` and answer from the VIP on their loopback; the answers are
//! routed back through the balancer's own stack (it is the backends' gateway to the client).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::IpAddr,
    process::Child,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use lb_common::{Forward, PROTO_TCP, PROTO_UDP, Reason, Scheduler};
use lb_dataplane::Decap;
use lb_tests::{
    harness::{Harness, vip_key},
    netns::{Netns, sh, sweep_stale},
};

const N: u32 = 40;
const BACKENDS: usize = 3;
const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const VIP4: &str = "198.18.100.1";
const VIP6: &str = "2001:db8:100::1";
const LB_MAC0: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
const LB_MAC1: [u8; 6] = [2, 0, 0, 0, 2, 0x10];

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

struct Backend {
    ns: Netns,
    v4: String,
    v6: String,
    mac: [u8; 6],
}

/// Field order is drop order: servers are killed in `Drop`, then the balancer and the XDP
/// programs are detached, then the namespaces (and with them every veth) are removed.
struct TwoArm {
    servers: Vec<Child>,
    lb: Harness,
    /// [0]: pass-through on the front bridge's port to eth0, [1]: on the back bridge's port
    /// to eth1, then one decap program per backend.
    decaps: Vec<Decap>,
    backends: Vec<Backend>,
    client: Netns,
    lb_ns: Netns,
    _front: Netns,
    _back: Netns,
}

impl TwoArm {
    fn new() -> TwoArm {
        sweep_stale();
        let g = Netns::group();
        let front = Netns::new(g, "front");
        let back = Netns::new(g, "back");
        for sw in [&front, &back] {
            sw.exec("ip link add br0 type bridge && ip link set br0 up");
        }
        // A veth `dev` in `ns` with the given MAC, its peer `port` on `sw`'s bridge.
        let plug = |ns: &Netns, dev: &str, mac: &[u8; 6], sw: &Netns, port: &str| {
            sh(&format!(
                "ip link add {dev} netns {} address {} type veth peer name {port} netns {}",
                ns.name,
                mac_str(mac),
                sw.name
            ));
            sw.exec(&format!(
                "ip link set {port} master br0 && ip link set {port} up"
            ));
            ns.exec(&format!("ip link set {dev} up"));
        };
        let addr = |ns: &Netns, dev: &str, v4: &str, v4len: u8, v6: &str| {
            ns.exec(&format!(
                "ip addr add {v4}/{v4len} dev {dev} && ip -6 addr add {v6}/64 dev {dev} nodad"
            ));
        };
        let no_dad = "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0";

        let client = Netns::new(g, "client");
        client.exec(no_dad);
        plug(&client, "eth0", &[2, 0, 0, 0, 0, 1], &front, "p-client");
        addr(&client, "eth0", "198.18.0.1", 24, "2001:db8::1");
        client.exec(
            "ip route add 198.18.100.0/24 via 198.18.0.10 && \
             ip -6 route add 2001:db8:100::/64 via 2001:db8::10",
        );
        // A veth hands over packets with checksums still pending (CHECKSUM_PARTIAL): the
        // client computes them itself, as a real NIC would, since XDP forwards the bytes
        // as they are and the backend verifies them.
        client.exec("ethtool -K eth0 tx off >/dev/null");
        // Every TCP/UDP packet the client sends to a VIP: the requests the balancer must
        // forward. And every answer from a VIP that reached the client.
        client.exec(&format!(
            "nft add table inet lbt && \
             nft add chain inet lbt out \'{{ type filter hook output priority 0; }}\' && \
             nft add rule inet lbt out ip daddr {VIP4} meta l4proto {{ tcp, udp }} counter && \
             nft add rule inet lbt out ip6 daddr {VIP6} meta l4proto {{ tcp, udp }} counter && \
             nft add chain inet lbt in \'{{ type filter hook input priority 0; }}\' && \
             nft add rule inet lbt in ip saddr {VIP4} meta l4proto {{ tcp, udp }} counter && \
             nft add rule inet lbt in ip6 saddr {VIP6} meta l4proto {{ tcp, udp }} counter"
        ));

        let lb_ns = Netns::new(g, "lb");
        lb_ns.exec(no_dad);
        plug(&lb_ns, "eth0", &LB_MAC0, &front, "p-lb0");
        plug(&lb_ns, "eth1", &LB_MAC1, &back, "p-lb1");
        addr(&lb_ns, "eth0", "198.18.0.10", 24, "2001:db8::10");
        addr(&lb_ns, "eth1", "198.18.2.10", 24, "2001:db8:2::10");
        // bpf_fib_lookup answers only where forwarding is on, and the balancer's stack
        // routes the backends' answers to the client. The answers come from the VIPs, for
        // which the balancer has no route: no reverse-path filter.
        lb_ns.exec(
            "sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
             net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.eth1.rp_filter=0",
        );
        // Answers from a VIP coming in on the back arm, to be routed by the balancer's stack.
        lb_ns.exec(&format!(
            "nft add table netdev lbt && \
             nft add chain netdev lbt in \'{{ type filter hook ingress device eth1 priority 0; }}\' && \
             nft add rule netdev lbt in ip saddr {VIP4} meta l4proto {{ tcp, udp }} counter && \
             nft add rule netdev lbt in ip6 saddr {VIP6} meta l4proto {{ tcp, udp }} counter"
        ));

        let mut backends = Vec::new();
        for i in 0..BACKENDS {
            let n = 21 + i as u8;
            let ns = Netns::new(g, &format!("b{}", i + 1));
            let b = Backend {
                v4: format!("198.18.2.{n}"),
                v6: format!("2001:db8:2::{n}"),
                mac: [2, 0, 0, 0, 3, n],
                ns,
            };
            b.ns.exec(no_dad);
            plug(&b.ns, "eth0", &b.mac, &back, &format!("p-b{}", i + 1));
            addr(&b.ns, "eth0", &b.v4, 24, &b.v6);
            b.ns.exec(&format!(
                "ip addr add {VIP4}/32 dev lo && ip -6 addr add {VIP6}/128 dev lo nodad && \
                 sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
                 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 && \
                 ip route add 198.18.0.0/24 via 198.18.2.10 && \
                 ip -6 route add 2001:db8::/64 via 2001:db8:2::10"
            ));
            // The balancer resolves backends through the kernel's neighbour table.
            lb_ns.exec(&format!(
                "ip neigh replace {} lladdr {m} dev eth1 nud permanent && \
                 ip -6 neigh replace {} lladdr {m} dev eth1 nud permanent",
                b.v4,
                b.v6,
                m = mac_str(&b.mac)
            ));
            backends.push(b);
        }

        // XDP_TX or a devmap redirect into a veth needs NAPI on the receiving peer: an XDP
        // program there (lb_decap with no addresses passes everything).
        let mut decaps = vec![
            front.enter(|| Decap::attach("p-lb0", XdpMode::Driver, &[]).expect("attach on p-lb0")),
            back.enter(|| Decap::attach("p-lb1", XdpMode::Driver, &[]).expect("attach on p-lb1")),
        ];
        for b in &backends {
            let addrs: Vec<IpAddr> = vec![b.v4.parse().unwrap(), b.v6.parse().unwrap()];
            decaps.push(b.ns.enter(move || {
                Decap::attach("eth0", XdpMode::Driver, &addrs).expect("attach lb_decap")
            }));
        }

        let dp = lb_ns.enter(|| {
            let mut dp = lb_tests::harness::load();
            for nic in ["eth0", "eth1"] {
                dp.attach(nic, XdpMode::Driver)
                    .unwrap_or_else(|e| panic!("attach lb_xdp on {nic} in native mode: {e}"));
            }
            // SAFETY: a NUL-terminated name; the call only reads it.
            let eth1 = unsafe { libc::if_nametoindex(c"eth1".as_ptr()) };
            assert_ne!(eth1, 0, "no eth1 in the lb namespace");
            dp.add_tx_port(eth1).expect("add eth1 to LB_TX_PORTS");
            dp
        });
        let lb = Harness::with(dp, |c| {
            c.flags = 0; // next hops from the FIB
            c.gateway_mac = [0; 6]; // and no fallback
        });

        let mut t = TwoArm {
            servers: Vec::new(),
            lb,
            decaps,
            backends,
            client,
            lb_ns,
            _front: front,
            _back: back,
        };
        // One by one, so a server that fails to start leaves the others to `Drop`.
        for i in 0..BACKENDS {
            let server = t.serve(i);
            t.servers.push(server);
        }
        t
    }

    fn serve(&self, i: usize) -> Child {
        let name = format!("b{}", i + 1);
        let mut child = self.backends[i].ns.spawn(
            ECHO,
            &[
                "serve",
                &name,
                "--tcp",
                "[::]:80",
                "--udp",
                &format!("{VIP4}:53"),
                "--udp",
                &format!("[{VIP6}]:53"),
            ],
        );
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            panic!("backend server {name} did not start: {line:?}");
        }
        child
    }

    /// Backends 1..=3 by IPv4 address, 11..=13 by IPv6 address; TCP and UDP VIPs on both
    /// families, tunnelled in IP-in-IP.
    fn vips(&mut self) {
        let v4: Vec<(u32, String)> = (0..BACKENDS)
            .map(|i| (i as u32 + 1, self.backends[i].v4.clone()))
            .collect();
        let v6: Vec<(u32, String)> = (0..BACKENDS)
            .map(|i| (i as u32 + 11, self.backends[i].v6.clone()))
            .collect();
        for (i, b) in self.backends.iter().enumerate() {
            self.lb.backend(v4[i].0, &v4[i].1, b.mac);
            self.lb.backend(v6[i].0, &v6[i].1, b.mac);
        }
        let weighted = |set: &[(u32, String)]| -> Vec<(u32, String, u32)> {
            set.iter().map(|(id, a)| (*id, a.clone(), 1)).collect()
        };
        for (addr, proto, port, set) in [
            (VIP4, PROTO_TCP, 80, weighted(&v4)),
            (VIP4, PROTO_UDP, 53, weighted(&v4)),
            (VIP6, PROTO_TCP, 80, weighted(&v6)),
            (VIP6, PROTO_UDP, 53, weighted(&v6)),
        ] {
            let set: Vec<(u32, &str, u32)> =
                set.iter().map(|(id, a, w)| (*id, a.as_str(), *w)).collect();
            self.lb.vip(
                vip_key(addr, port, proto),
                Scheduler::Maglev,
                Forward::IpIp,
                0,
                &set,
            );
        }
    }

    /// `count` requests from the client: answers per backend name, and the number that failed.
    fn requests(&self, kind: &str, addr: &str, count: u32) -> (BTreeMap<String, u32>, u32) {
        lb_tests::topology::client_requests(&self.client, ECHO, kind, addr, count)
    }

    fn assert_served(&self, kind: &str, addr: &str) {
        let (seen, failed) = self.requests(kind, addr, N);
        println!("{kind} {addr}: {seen:?}, failed {failed}");
        assert_eq!(failed, 0, "{kind} {addr}: {failed} of {N} requests failed");
        assert_eq!(seen.values().sum::<u32>(), N);
        assert!(seen.len() >= 2, "{kind} {addr}: only {seen:?} answered");
    }

    fn decapsulated(&self) -> u64 {
        self.decaps[2..]
            .iter()
            .map(|d| d.decapsulated().unwrap())
            .sum()
    }

    fn reason(&self, r: Reason) -> u64 {
        self.lb.dp.reason(r).unwrap()
    }
}

impl Drop for TwoArm {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of the `counter packets N` of an nft listing.
fn nft_packets(listing: &str) -> u64 {
    listing
        .split("counter packets ")
        .skip(1)
        .map(|r| r.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Counts {
    /// TCP/UDP packets the client sent to a VIP.
    requests: u64,
    /// TCP/UDP packets from a VIP the client received.
    answers: u64,
    /// TCP/UDP packets from a VIP that came in on the balancer's back arm.
    answers_via_lb: u64,
    redirect: u64,
    drop_redirect: u64,
    decapsulated: u64,
}

impl Counts {
    fn read(t: &TwoArm) -> Counts {
        Counts {
            requests: nft_packets(&t.client.exec("nft list chain inet lbt out")),
            answers: nft_packets(&t.client.exec("nft list chain inet lbt in")),
            answers_via_lb: nft_packets(&t.lb_ns.exec("nft list chain netdev lbt in")),
            redirect: t.reason(Reason::Redirect),
            drop_redirect: t.reason(Reason::DropRedirect),
            decapsulated: t.decapsulated(),
        }
    }

    /// Once the last packets of closed connections (FIN, final ACK) are through: two reads
    /// 100 ms apart that agree, with every redirected packet stripped by a backend.
    fn settled(t: &TwoArm) -> Counts {
        let end = Instant::now() + Duration::from_secs(2);
        let mut last = Counts::read(t);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = Counts::read(t);
            if (now == last && now.decapsulated == now.redirect) || Instant::now() > end {
                return now;
            }
            last = now;
        }
    }
}

#[test]
fn two_arm_redirects_to_backends_on_the_other_nic() {
    let mut t = TwoArm::new();
    t.vips();
    let before = Counts::read(&t);
    assert_eq!(before.redirect, 0);

    t.assert_served("--tcp", &format!("{VIP4}:80"));
    t.assert_served("--udp", &format!("{VIP4}:53"));
    t.assert_served("--tcp", &format!("[{VIP6}]:80"));
    t.assert_served("--udp", &format!("[{VIP6}]:53"));

    let c = Counts::settled(&t);
    let reasons: Vec<(Reason, u64)> =
        t.lb.dp
            .reasons()
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .collect();
    println!("{c:?}");
    println!("balancer reasons: {reasons:?}");
    let per_backend: Vec<u64> = t.decaps[2..]
        .iter()
        .map(|d| d.decapsulated().unwrap())
        .collect();
    println!("decapsulated per backend: {per_backend:?}");

    // At least one packet per request each way (UDP) and more for TCP.
    assert!(c.requests >= (4 * N) as u64, "requests {}", c.requests);
    assert_eq!(c.drop_redirect, 0, "redirects to eth1 failed (LB_TX_PORTS)");
    assert!(
        c.redirect >= c.requests,
        "redirect {} < {} request packets the client sent to the VIPs",
        c.redirect,
        c.requests
    );
    assert_eq!(
        c.decapsulated, c.redirect,
        "every packet redirected through eth1 was stripped by a backend"
    );
    assert!(
        per_backend.iter().all(|n| *n > 0),
        "every backend received traffic: {per_backend:?}"
    );
    // Nothing went back out of the ingress NIC, and every next hop came from the FIB.
    for r in [
        Reason::TxIpip,
        Reason::FibFallback,
        Reason::DropNoNexthop,
        Reason::DropAdjustFailed,
    ] {
        assert_eq!(t.reason(r), 0, "{}", r.label());
    }
    // The answers were routed by the balancer's stack: in on eth1, out on eth0.
    assert!(c.answers >= (4 * N) as u64, "answers {}", c.answers);
    assert!(
        c.answers_via_lb >= c.answers,
        "answers through the balancer {} < answers received {}",
        c.answers_via_lb,
        c.answers
    );
}
