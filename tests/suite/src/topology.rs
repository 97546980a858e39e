//! A client, a balancer and backends in network namespaces on one bridge:
//!
//! ```text
//!  client 198.18.0.1 ──┐
//!  lb     198.18.0.10 ─┤ br0 (namespace "sw")
//!  b1..bN 198.18.0.2N ─┘      VIPs 198.18.100.1, 2001:db8:100::1 routed via the lb
//! ```
//! The balancer's XDP program runs in native mode on its veth; backends hold the VIPs on
//! loopback, run `lbt-echo`, and (for IP-in-IP) strip the tunnel with `lb_decap`.

use std::{
    io::{BufRead, BufReader},
    process::Child,
};

use aya::programs::XdpMode;
use lb_common::Forward;
use lb_dataplane::Decap;

use crate::{
    harness::Harness,
    netns::{Netns, sh, sweep_stale},
};

pub const VIP4: &str = "198.18.100.1";
pub const VIP6: &str = "2001:db8:100::1";

pub struct Host {
    pub ns: Netns,
    pub v4: String,
    pub v6: String,
    pub mac: [u8; 6],
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub struct Topology {
    servers: Vec<Child>,
    decaps: Vec<Decap>,
    echo: &'static str,
    /// The balancer attached by the test itself (`with_balancer`); None when a daemon runs it.
    lb: Option<Harness>,
    pub client: Host,
    pub lb_host: Host,
    pub backends: Vec<Host>,
    _sw: Netns,
}

impl Topology {
    /// The hosts, the backends' servers and decap programs, without a balancer.
    /// `forward` decides whether backends get the decap program (IP-in-IP) or not (L2 DSR).
    /// `echo` is the path of the `lbt-echo` binary (`env!("CARGO_BIN_EXE_lbt-echo")` in the
    /// test, which only integration tests can see).
    pub fn new(backends: usize, forward: Forward, echo: &'static str) -> Topology {
        sweep_stale();
        let g = Netns::group();
        let sw = Netns::new(g, "sw");
        sw.exec("ip link add br0 type bridge && ip link set br0 up");
        let host = |role: &str, n: u8, mac: [u8; 6]| {
            let ns = Netns::new(g, role);
            let (v4, v6) = (format!("198.18.0.{n}"), format!("2001:db8::{n}"));
            sh(&format!(
                "ip link add eth0 netns {} address {} type veth peer name p-{role} netns {}",
                ns.name,
                mac_str(&mac),
                sw.name
            ));
            sw.exec(&format!(
                "ip link set p-{role} master br0 && ip link set p-{role} up"
            ));
            ns.exec(&format!(
                "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && \
                 ip link set eth0 up && ip addr add {v4}/24 dev eth0 && ip -6 addr add {v6}/64 dev eth0 nodad"
            ));
            Host { ns, v4, v6, mac }
        };
        let client = host("client", 1, [2, 0, 0, 0, 0, 1]);
        client.ns.exec("ip route add 198.18.100.0/24 via 198.18.0.10 && ip -6 route add 2001:db8:100::/64 via 2001:db8::10");
        // A veth hands over packets with checksums still pending (CHECKSUM_PARTIAL): the
        // client must compute them itself, as a real NIC would, since XDP forwards the bytes
        // as they are and the backend verifies them.
        client.ns.exec("ethtool -K eth0 tx off >/dev/null");
        let lb_host = host("lb", 10, [2, 0, 0, 0, 0, 0x10]);
        // bpf_fib_lookup answers only where forwarding is on.
        lb_host
            .ns
            .exec("sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1");
        // Counts TCP and UDP from a VIP address sent to the balancer's MAC: backends'
        // replies, if they ever came this way instead of straight to the client.
        lb_host.ns.exec(&format!(
            "nft add table netdev lbt && \
             nft add chain netdev lbt in \'{{ type filter hook ingress device eth0 priority 0; }}\' && \
             nft add rule netdev lbt in ether daddr {lbmac} ip saddr {VIP4} meta l4proto {{ tcp, udp }} counter && \
             nft add rule netdev lbt in ether daddr {lbmac} ip6 saddr {VIP6} meta l4proto {{ tcp, udp }} counter",
            lbmac = mac_str(&lb_host.mac)
        ));
        let mut hosts = Vec::new();
        for i in 0..backends {
            let n = 21 + i as u8;
            let b = host(&format!("b{}", i + 1), n, [2, 0, 0, 0, 1, n]);
            b.ns.exec(&format!(
                "ip addr add {VIP4}/32 dev lo && ip -6 addr add {VIP6}/128 dev lo nodad && \
                 sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
                 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0"
            ));
            // The balancer resolves backends through the kernel's neighbour table.
            lb_host.ns.exec(&format!(
                "ip neigh replace {} lladdr {m} dev eth0 nud permanent && ip -6 neigh replace {} lladdr {m} dev eth0 nud permanent",
                b.v4,
                b.v6,
                m = mac_str(&b.mac)
            ));
            hosts.push(b);
        }
        // XDP_TX into a veth needs NAPI on the receiving peer: an XDP program there (our decap
        // program with no addresses passes everything).
        let mut decaps = vec![sw.enter(|| {
            Decap::attach("p-lb", XdpMode::Driver, &[]).expect("attach on the lb's peer")
        })];
        if forward == Forward::IpIp {
            for b in &hosts {
                let addrs = vec![b.v4.parse().unwrap(), b.v6.parse().unwrap()];
                decaps.push(b.ns.enter(move || {
                    Decap::attach("eth0", XdpMode::Driver, &addrs).expect("attach lb_decap")
                }));
            }
        }
        let mut t = Topology {
            servers: Vec::new(),
            decaps,
            echo,
            lb: None,
            client,
            lb_host,
            backends: hosts,
            _sw: sw,
        };
        t.servers = (0..t.backends.len()).map(|i| t.serve(i)).collect();
        t
    }

    /// With the balancer loaded and attached by the test, in native mode on the lb's eth0.
    pub fn with_balancer(backends: usize, forward: Forward, echo: &'static str) -> Topology {
        let mut t = Topology::new(backends, forward, echo);
        let dp = t.lb_host.ns.enter(|| {
            let mut dp = crate::harness::load();
            dp.attach("eth0", XdpMode::Driver)
                .expect("attach lb_xdp in native mode");
            dp
        });
        t.lb = Some(Harness::with(dp, |c| {
            c.flags = 0;
            c.gateway_mac = [0; 6];
        }));
        t
    }

    pub fn lb(&mut self) -> &mut Harness {
        self.lb.as_mut().expect("topology built with_balancer")
    }

    fn serve(&self, i: usize) -> Child {
        let name = format!("b{}", i + 1);
        let mut child = self.backends[i].ns.spawn(
            self.echo,
            &[
                "serve",
                &name,
                "--tcp",
                "[::]:80",
                "--tcp",
                "[::]:8080",
                "--udp",
                &format!("{VIP4}:53"),
                "--udp",
                &format!("[{VIP6}]:53"),
                "--http",
                "[::]:8081",
                "--https",
                "[::]:8443",
                "--udp",
                "[::]:5353",
                "--agent",
                "[::]:8082",
                "--control",
                self.control_dir(i).to_str().unwrap(),
            ],
        );
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "backend server {name} did not start");
        child
    }

    /// Files that steer backend `i`'s health endpoint (`delay`, in ms) and agent (`agent`).
    pub fn control_dir(&self, i: usize) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("{}-control", self.backends[i].ns.name));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn control(&self, i: usize, file: &str, content: &str) {
        std::fs::write(self.control_dir(i).join(file), content).unwrap();
    }

    /// Stop backend `i`'s server (its open connections are reset).
    pub fn stop_server(&mut self, i: usize) {
        let _ = self.servers[i].kill();
        let _ = self.servers[i].wait();
    }

    pub fn start_server(&mut self, i: usize) {
        self.servers[i] = self.serve(i);
    }

    /// `count` requests from the client to `addr` (`--tcp` or `--udp`): answers per backend
    /// name, and the number that failed.
    pub fn requests(
        &self,
        kind: &str,
        addr: &str,
        count: u32,
    ) -> (std::collections::BTreeMap<String, u32>, u32) {
        client_requests(&self.client.ns, self.echo, kind, addr, count)
    }

    /// Packets from a VIP address that reached the balancer's stack.
    pub fn replies_through_lb(&self) -> u64 {
        let out = self.lb_host.ns.exec("nft list chain netdev lbt in");
        out.split("counter packets ")
            .skip(1)
            .map(|r| r.split_whitespace().next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// Hold `conns` TCP connections to `addr` for `millis` ms in the background.
    pub fn hold(&self, addr: &str, conns: u32, millis: u64) -> Child {
        self.client.ns.spawn(
            self.echo,
            &["hold", addr, &conns.to_string(), &millis.to_string()],
        )
    }

    /// Requests until every one of `count` succeeds (or panic after `secs`).
    pub fn wait_served(&self, addr: &str, count: u32, secs: u64) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let (_, failed) = self.requests("--tcp", addr, count);
            if failed == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "{addr} not served after {secs} s"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Delete the balancer's uplink, as when its NIC goes away: the veth pair (`eth0` in the
    /// balancer's namespace and `p-lb` on the switch) with its addresses and neighbours.
    pub fn remove_lb_uplink(&self) {
        self.lb_host.ns.exec("ip link del eth0");
    }

    /// Create the balancer's uplink again as `new` built it: the same name, MAC and
    /// addresses, its neighbour entries for the backends, and an XDP program on the
    /// switch's new peer (XDP_TX into a veth needs one there). It gets a new ifindex. The
    /// ingress counters of `replies_through_lb` are not rebuilt.
    pub fn add_lb_uplink(&mut self) {
        let lb = &self.lb_host;
        sh(&format!(
            "ip link add eth0 netns {} address {} type veth peer name p-lb netns {}",
            lb.ns.name,
            mac_str(&lb.mac),
            self._sw.name
        ));
        self._sw
            .exec("ip link set p-lb master br0 && ip link set p-lb up");
        lb.ns.exec(&format!(
            "ip link set eth0 up && ip addr add {}/24 dev eth0 && ip -6 addr add {}/64 dev eth0 nodad",
            lb.v4, lb.v6
        ));
        self.set_lb_neighbours();
        self.decaps[0] = self._sw.enter(|| {
            Decap::attach("p-lb", XdpMode::Driver, &[]).expect("attach on the lb's new peer")
        });
    }

    /// The balancer's permanent neighbour entries for the backends on its `eth0`, as `new`
    /// sets them (gone with the NIC, or when it goes down).
    pub fn set_lb_neighbours(&self) {
        for b in &self.backends {
            self.lb_host.ns.exec(&format!(
                "ip neigh replace {} lladdr {m} dev eth0 nud permanent && ip -6 neigh replace {} lladdr {m} dev eth0 nud permanent",
                b.v4,
                b.v6,
                m = mac_str(&b.mac)
            ));
        }
    }

    pub fn decapsulated(&self, backend: usize) -> u64 {
        self.decaps[backend + 1].decapsulated().unwrap()
    }
}

/// Run `lbt-echo client` in `ns`: answers per backend name, and the number that failed.
pub fn client_requests(
    ns: &Netns,
    echo: &str,
    kind: &str,
    addr: &str,
    count: u32,
) -> (std::collections::BTreeMap<String, u32>, u32) {
    let out = ns.exec(&format!("{echo} client {kind} {addr} {count}"));
    let mut seen = std::collections::BTreeMap::new();
    let mut failed = 0;
    for line in out.lines() {
        let (k, v) = line.split_once(' ').expect("client output");
        let v: u32 = v.parse().unwrap();
        if k == "failed" {
            failed = v;
        } else {
            seen.insert(k.to_string(), v);
        }
    }
    (seen, failed)
}

impl Drop for Topology {
    fn drop(&mut self) {
        for i in 0..self.backends.len() {
            let _ = std::fs::remove_dir_all(self.control_dir(i));
        }
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
