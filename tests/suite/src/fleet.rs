//! Several balancer nodes behind an ECMP router, in network namespaces (../shared/FLEET-LAB.md):
//!
//! ```text
//!   client 198.18.1.2 ── router (FRR: zebra, bgpd, bfdd; AS 65000; 5-tuple multipath)
//!                        │  198.18.1N.1 ── nodeN 198.18.1N.2 (lbd + lb_xdp on eth0, BIRD AS 65001)
//!                        │  198.18.2M.1 ── bM    198.18.2M.2 (lb_decap, VIP on lo, lbt-echo)
//! ```
//! Each node announces the VIP 198.18.100.1/32 through its BIRD when its lbd says so; the
//! router spreads flows over the nodes that announce it. Nodes encapsulate (IP-in-IP) back
//! out of their uplink to the router, which routes the outer packet to the backend; replies
//! go from the backend through the router straight to the client.
//!
//! Everything runs as real processes in namespaces of this test process (`lbt-<pid>-...`),
//! removed with their processes when the `Fleet` is dropped, also when a test fails.

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use crate::{
    daemon::Daemon,
    netns::{Netns, sh, sweep_stale},
    topology::client_requests,
};

pub const VIP: &str = "198.18.100.1";
const ROUTER_AS: u32 = 65000;
const NODE_AS: u32 = 65001;

/// Where a Debian package put a daemon (sbin may be off a test runner's PATH).
pub fn program(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/lib/frr", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{name} is not installed: run `cargo xtask setup` (it installs bird2 and frr)");
}

pub struct Node {
    pub ns: Netns,
    /// The node's uplink address; the router's side is `gateway`.
    pub addr: String,
    pub gateway: String,
    pub dir: PathBuf,
    pub lbd: Option<Daemon>,
}

impl Node {
    pub fn bird_socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    pub fn routes_file(&self) -> PathBuf {
        self.dir.join("routes4.conf")
    }

    /// `birdc` against this node's BIRD.
    pub fn birdc(&self, cmd: &str) -> String {
        self.ns.exec(&format!(
            "{} -s {} {cmd}",
            program("birdc"),
            self.bird_socket().display()
        ))
    }

    pub fn lbd(&mut self) -> &mut Daemon {
        self.lbd.as_mut().expect("lbd started")
    }
}

pub struct Backend {
    pub ns: Netns,
    pub addr: String,
}

pub struct Fleet {
    pub client: Netns,
    pub router: Netns,
    pub nodes: Vec<Node>,
    pub backends: Vec<Backend>,
    router_dir: PathBuf,
    echo: &'static str,
    servers: Vec<Child>,
    /// Where `lbd decap attach` pinned the decap programs: on the backends, and pass-only on
    /// the router's node-facing veths (XDP_TX into a veth needs NAPI on the peer:
    /// ../shared/PLATFORM.md).
    decap_pins: Vec<PathBuf>,
    /// etcd members in the router's namespace (`start_etcd`); `None` while one is down.
    pub etcd: Vec<Option<Child>>,
    etcd_cluster: String,
    etcd_tls: Option<crate::pki::Pki>,
    /// etcd's authentication is on: the harness's etcdctl runs as root.
    etcd_root: bool,
}

/// Etcd member `m`'s address (1-based), on the router's loopback.
fn etcd_addr(m: usize) -> String {
    format!("198.18.0.{m}")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

impl Fleet {
    /// The router, `nodes` balancer nodes with BIRD (not yet lbd: `start_lbd`), and
    /// `backends` backends serving with lbt-echo behind the decap program.
    pub fn new(
        nodes: usize,
        backends: usize,
        echo: &'static str,
        lbd: &'static str,
        bfd: bool,
    ) -> Fleet {
        sweep_stale();
        crate::daemon::ensure_bpffs();
        // The operator's command, run where it would be: on each backend and router port.
        let decap = |ns: &Netns, iface: &str, allow: &str| -> PathBuf {
            let pins = PathBuf::from(crate::daemon::BPFFS).join(format!("{}-decap", ns.name));
            let out = ns.exec(&format!(
                "{lbd} decap attach --interface {iface} {allow} --pin-dir {}",
                pins.display()
            ));
            assert!(
                out.contains("attached") || out.contains("replaced"),
                "{out}"
            );
            pins
        };
        let g = Netns::group();
        let router = Netns::new(g, "router");
        let client = Netns::new(g, "client");
        let link = |ns: &Netns, peer: &str, ours: &str, theirs: &str| {
            sh(&format!(
                "ip link add eth0 netns {} type veth peer name {peer} netns {}",
                ns.name, router.name
            ));
            ns.exec(&format!(
                "ip link set eth0 up && ip addr add {ours}/24 dev eth0"
            ));
            router.exec(&format!(
                "ip link set {peer} up && ip addr add {theirs}/24 dev {peer}"
            ));
        };
        router.exec(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 \
             net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
        );
        link(&client, "c0", "198.18.1.2", "198.18.1.1");
        client.exec("ip route add default via 198.18.1.1");
        // A connection keeps its path until the router's next hops change (FLEET-LAB:
        // otherwise a retransmission timeout rehashes it onto another node).
        client.exec("sysctl -qw net.core.txrehash=0");
        client.exec("ethtool -K eth0 tx off >/dev/null");

        let router_dir = std::env::temp_dir().join(format!("{}-frr", router.name));
        std::fs::create_dir_all(&router_dir).unwrap();
        sh(&format!("chmod 777 {}", router_dir.display()));

        let mut decap_pins = Vec::new();
        let mut all_nodes = Vec::new();
        for i in 1..=nodes {
            let ns = Netns::new(g, &format!("node{i}"));
            let (addr, gateway) = (format!("198.18.1{i}.2"), format!("198.18.1{i}.1"));
            link(&ns, &format!("n{i}"), &addr, &gateway);
            ns.exec(&format!(
                "ip route add default via {gateway} && sysctl -qw net.ipv4.conf.all.forwarding=1"
            ));
            // Counts replies from the VIP that reach the node: DSR sends them from the
            // backends straight to the client, so this stays 0.
            ns.exec(&format!(
                "nft add table netdev replies && \
                 nft add chain netdev replies in '{{ type filter hook ingress device eth0 priority 0; }}' && \
                 nft add rule netdev replies in ip saddr {VIP} tcp sport 80 counter"
            ));
            // One pin directory for the router's ports: one subdirectory per interface.
            let pins = decap(&router, &format!("n{i}"), "--pass-only");
            if i == 1 {
                decap_pins.push(pins);
            }
            // BIRD's files; lbd's (the Daemon's) are in a directory named after the namespace.
            let dir = std::env::temp_dir().join(format!("{}-bird", ns.name));
            std::fs::create_dir_all(&dir).unwrap();
            all_nodes.push(Node {
                ns,
                addr,
                gateway,
                dir,
                lbd: None,
            });
        }
        let mut all_backends = Vec::new();
        for j in 1..=backends {
            let ns = Netns::new(g, &format!("b{j}"));
            let addr = format!("198.18.2{j}.2");
            link(&ns, &format!("b{j}"), &addr, &format!("198.18.2{j}.1"));
            ns.exec(&format!(
                "ip route add default via 198.18.2{j}.1 && ip addr add {VIP}/32 dev lo && \
                 sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.lo.rp_filter=0"
            ));
            decap_pins.push(decap(&ns, "eth0", &format!("--addr {addr}")));
            all_backends.push(Backend { ns, addr });
        }
        let mut f = Fleet {
            client,
            router,
            nodes: all_nodes,
            backends: all_backends,
            router_dir,
            echo,
            servers: Vec::new(),
            decap_pins,
            etcd: Vec::new(),
            etcd_cluster: String::new(),
            etcd_tls: None,
            etcd_root: false,
        };
        f.start_frr(bfd);
        for i in 0..f.nodes.len() {
            f.start_bird(i, bfd);
        }
        f.servers = (0..f.backends.len()).map(|j| f.serve(j)).collect();
        f
    }

    fn start_frr(&self, bfd: bool) {
        let d = self.router_dir.display().to_string();
        write(
            &self.router_dir.join("zebra.conf"),
            "hostname router\nno zebra nexthop kernel enable\n",
        );
        write(
            &self.router_dir.join("bfdd.conf"),
            "bfd\n profile fast\n  detect-multiplier 3\n  receive-interval 100\n  transmit-interval 100\n",
        );
        let mut bgp = format!(
            "router bgp {ROUTER_AS}\n no bgp ebgp-requires-policy\n neighbor nodes peer-group\n \
             neighbor nodes remote-as {NODE_AS}\n neighbor nodes timers 1 3\n neighbor nodes timers connect 1\n"
        );
        if bfd {
            bgp.push_str(" neighbor nodes bfd profile fast\n");
        }
        for n in &self.nodes {
            bgp.push_str(&format!(" neighbor {} peer-group nodes\n", n.addr));
        }
        bgp.push_str(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n");
        write(&self.router_dir.join("bgpd.conf"), &bgp);
        let common = format!("-d -z {d}/zserv.api --vty_socket {d} -P 0");
        self.router.exec(&format!(
            "{} {common} -f {d}/zebra.conf -i {d}/zebra.pid",
            program("zebra")
        ));
        // zebra's socket must exist before the others connect.
        wait_for(
            || Path::new(&format!("{d}/zserv.api")).exists(),
            10,
            "zebra's socket",
        );
        self.router.exec(&format!(
            "{} {common} -f {d}/bfdd.conf -i {d}/bfdd.pid --bfdctl {d}/bfdd.sock",
            program("bfdd")
        ));
        self.router.exec(&format!(
            "{} {common} -f {d}/bgpd.conf -i {d}/bgpd.pid",
            program("bgpd")
        ));
    }

    fn start_bird(&self, i: usize, bfd: bool) {
        let n = &self.nodes[i];
        if !n.routes_file().exists() {
            write(&n.routes_file(), "");
        }
        let bfd_proto = if bfd {
            "protocol bfd {\n  interface \"eth0\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\n"
        } else {
            ""
        };
        let conf = format!(
            "router id {addr};\nprotocol device {{}}\nprotocol static vips4 {{\n  ipv4;\ninclude \"{routes}\";\n}}\n{bfd_proto}\
             protocol bgp uplink {{\n  local {addr} as {NODE_AS};\n  neighbor {gw} as {ROUTER_AS};\n  hold time 3;\n  keepalive time 1;\n  \
             connect retry time 1;\n  error wait time 1, 2;\n  bfd {bfd_on};\n  ipv4 {{ import none; export where proto = \"vips4\"; }};\n}}\n",
            addr = n.addr,
            gw = n.gateway,
            routes = n.routes_file().display(),
            bfd_on = if bfd { "on" } else { "off" },
        );
        write(&n.dir.join("bird.conf"), &conf);
        n.ns.exec(&format!(
            "{} -c {d}/bird.conf -s {d}/bird.ctl -P {d}/bird.pid",
            program("bird"),
            d = n.dir.display()
        ));
        wait_for(|| n.bird_socket().exists(), 10, "BIRD's control socket");
    }

    /// Stop node `i`'s BIRD (its routes are withdrawn at once).
    pub fn stop_bird(&self, i: usize) {
        let pid = std::fs::read_to_string(self.nodes[i].dir.join("bird.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: plain kill(2) on the pid BIRD wrote.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let sock = self.nodes[i].bird_socket();
        wait_for(|| !sock.exists(), 10, "BIRD to stop");
    }

    pub fn restart_bird(&self, i: usize, bfd: bool) {
        self.start_bird(i, bfd);
    }

    /// The `[daemon]`, `[dataplane]` and `[announce]` tables and the VIP for node `i`,
    /// with health checks every `interval_ms` on port 80.
    pub fn lbd_config(&self, i: usize, interval_ms: u32) -> String {
        self.node_config(i) + &self.vip_config(interval_ms)
    }

    /// Node `i`'s own tables: `[daemon]` (its metrics on its address, where peers reach
    /// its `/fleet`), `[dataplane]` and `[announce]`.
    pub fn node_config(&self, i: usize) -> String {
        let n = &self.nodes[i];
        format!(
            "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\nmetrics_listen = \"{}:9469\"\n\n\
             [dataplane]\nflows = 65536\nring_capacity = 131072\n\n\
             [announce]\nroutes_v4 = \"{}\"\nbird_socket = \"{}\"\nbirdc = \"{}\"\n\n",
            n.addr,
            n.routes_file().display(),
            n.bird_socket().display(),
            program("birdc"),
        )
    }

    /// The VIP with every backend, health checks every `interval_ms` on port 80.
    pub fn vip_config(&self, interval_ms: u32) -> String {
        let mut c = format!(
            "[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nring_size = 65537\n\n\
             [vip.health]\nkind = \"tcp\"\ninterval_ms = {interval_ms}\ntimeout_ms = {t}\nrise = 2\nfall = 2\n",
            t = interval_ms * 3 / 4,
        );
        for b in &self.backends {
            c.push_str(&format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr));
        }
        c
    }

    /// Start a cluster of `members` etcd members in the router's namespace, on addresses
    /// of its own (198.18.0.M) that every node reaches through its uplink. Elections are
    /// quick (heartbeat 50 ms, election timeout 500 ms) so that the tests of a lost leader
    /// do not wait on etcd's defaults.
    pub fn start_etcd(&mut self, members: usize) {
        self.start_etcd_with(members, None);
    }

    /// [`Fleet::start_etcd`] with TLS on the client URLs (`https://`, client certificates
    /// required) and etcd's authentication on: user `root` (for the harness's etcdctl) and
    /// user `user` with `password`, allowed to read and write `/lbd/`.
    pub fn start_etcd_secure(
        &mut self,
        members: usize,
        user: &str,
        password: &str,
    ) -> crate::pki::Pki {
        let names: Vec<String> = (1..=members).map(etcd_addr).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let pki = crate::pki::make(&self.router_dir.join("pki"), &names, "lbd");
        self.start_etcd_with(members, Some(pki.clone()));
        for cmd in [
            "user add root --new-user-password=rootpw".to_string(),
            "user grant-role root root".to_string(),
            format!("user add {user} --new-user-password={password}"),
            format!("role add {user}"),
            format!("role grant-permission {user} --prefix=true readwrite /lbd/"),
            format!("user grant-role {user} {user}"),
            "auth enable".to_string(),
        ] {
            let out = self.etcdctl(&cmd);
            assert!(!out.contains("Error"), "etcdctl {cmd}: {out}");
        }
        self.etcd_root = true;
        pki
    }

    fn start_etcd_with(&mut self, members: usize, tls: Option<crate::pki::Pki>) {
        self.etcd_tls = tls;
        let cluster: Vec<String> = (1..=members)
            .map(|m| format!("e{m}=http://{}:2380", etcd_addr(m)))
            .collect();
        for m in 1..=members {
            self.router
                .exec(&format!("ip addr add {}/32 dev lo", etcd_addr(m)));
        }
        self.router.exec("ip link set lo up");
        self.etcd_cluster = cluster.join(",");
        for m in 1..=members {
            self.etcd.push(None);
            self.start_etcd_member(m - 1);
        }
        let end = Instant::now() + Duration::from_secs(30);
        while !self.etcd_healthy() {
            assert!(
                Instant::now() < end,
                "etcd never became healthy: {}",
                self.etcd_log(0)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start (again) etcd member `m` (0-based).
    pub fn start_etcd_member(&mut self, m: usize) {
        let addr = etcd_addr(m + 1);
        let dir = self.router_dir.join(format!("etcd{}", m + 1));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.router_dir.join(format!("etcd{}.log", m + 1)))
            .unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.router.name, "etcd"])
            .arg(format!("--name=e{}", m + 1))
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!(
                "--listen-client-urls={}://{addr}:2379",
                self.etcd_scheme()
            ))
            .arg(format!(
                "--advertise-client-urls={}://{addr}:2379",
                self.etcd_scheme()
            ))
            .args(self.etcd_tls.iter().flat_map(|p| {
                [
                    format!("--cert-file={}", p.server_cert.display()),
                    format!("--key-file={}", p.server_key.display()),
                    format!("--trusted-ca-file={}", p.ca.display()),
                    "--client-cert-auth".to_string(),
                ]
            }))
            .arg(format!("--listen-peer-urls=http://{addr}:2380"))
            .arg(format!("--initial-advertise-peer-urls=http://{addr}:2380"))
            .arg(format!("--initial-cluster={}", self.etcd_cluster))
            .args([
                "--initial-cluster-state=new",
                "--initial-cluster-token=lbt",
                "--heartbeat-interval=50",
                "--election-timeout=500",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.etcd[m] = Some(child);
    }

    /// Kill etcd member `m` (SIGKILL: no goodbye to its peers).
    pub fn kill_etcd_member(&mut self, m: usize) {
        if let Some(mut c) = self.etcd[m].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn etcd_scheme(&self) -> &'static str {
        if self.etcd_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The etcd client URLs, for `[daemon.fleet] endpoints`.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        (1..=self.etcd.len())
            .map(|m| format!("{}://{}:2379", self.etcd_scheme(), etcd_addr(m)))
            .collect()
    }

    /// etcdctl against the cluster (with the client certificate, and as root once
    /// authentication is on).
    pub fn etcdctl(&self, args: &str) -> String {
        let tls = self
            .etcd_tls
            .as_ref()
            .map(|p| {
                format!(
                    "--cacert={} --cert={} --key={}",
                    p.ca.display(),
                    p.client_cert.display(),
                    p.client_key.display()
                )
            })
            .unwrap_or_default();
        let user = if self.etcd_root {
            "--user=root:rootpw"
        } else {
            ""
        };
        self.router.exec(&format!(
            "etcdctl --dial-timeout=1s --command-timeout=2s --endpoints={} {tls} {user} {args} 2>&1 || true",
            self.etcd_endpoints().join(",")
        ))
    }

    /// Whether every running member is healthy (and so the cluster has quorum).
    pub fn etcd_healthy(&self) -> bool {
        let out = self.etcdctl("endpoint health");
        let running = self.etcd.iter().filter(|c| c.is_some()).count();
        out.matches("is healthy").count() >= running && running > 0
    }

    /// The member that leads now (0-based), if one does.
    pub fn etcd_leader(&self) -> Option<usize> {
        let out = self.etcdctl("endpoint status -w json");
        let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
        v.as_array()?.iter().find_map(|e| {
            let s = &e["Status"];
            (s["leader"] == s["header"]["member_id"] && !s["leader"].is_null()).then(|| {
                let ep = e["Endpoint"].as_str().unwrap_or_default();
                self.etcd_endpoints().iter().position(|x| x == ep)
            })?
        })
    }

    /// Everything etcd member `m` logged.
    pub fn etcd_log(&self, m: usize) -> String {
        std::fs::read_to_string(self.router_dir.join(format!("etcd{}.log", m + 1)))
            .unwrap_or_default()
    }

    /// Node `i` loses its way to etcd (the router drops its packets to the client port);
    /// it still reaches the client, the backends and its peers.
    pub fn cut_etcd(&self, i: usize) {
        let table = format!("etcdcut{i}");
        self.router.exec(&format!(
            "nft add table inet {table} && \
             nft add chain inet {table} in \"{{ type filter hook input priority 0; }}\" && \
             nft add rule inet {table} in ip saddr {} tcp dport 2379 drop",
            self.nodes[i].addr
        ));
    }

    pub fn mend_etcd(&self, i: usize) {
        self.router
            .exec(&format!("nft delete table inet etcdcut{i}"));
    }

    /// Run `lbctl` (`exe`) against node `i`'s lbd: whether it succeeded, and what it
    /// printed (stdout, then stderr).
    pub fn lbctl(&self, exe: &str, i: usize, args: &[&str]) -> (bool, String) {
        let o = std::process::Command::new(exe)
            .arg("--socket")
            .arg(self.nodes[i].lbd.as_ref().expect("lbd").socket())
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    }

    /// `lbctl --json ARGS` on node `i`, which must succeed.
    pub fn lbctl_json(&self, exe: &str, i: usize, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let (ok, out) = self.lbctl(exe, i, &a);
        assert!(ok, "lbctl {args:?} on node {i}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Start lbd on node `i` with `config`, and wait until it serves.
    pub fn start_lbd(&mut self, i: usize, lbd: &'static str, config: &str) {
        let d = Daemon::start_in(&self.nodes[i].ns.name, lbd, config);
        self.nodes[i].lbd = Some(d);
    }

    fn serve(&self, j: usize) -> Child {
        use std::io::BufRead;
        let name = format!("b{}", j + 1);
        let mut child = self.backends[j]
            .ns
            .spawn(self.echo, &["serve", &name, "--tcp", "[::]:80"]);
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "backend server {name} did not start");
        child
    }

    /// Stop backend `j`'s server (its connections are reset).
    pub fn stop_server(&mut self, j: usize) {
        let _ = self.servers[j].kill();
        let _ = self.servers[j].wait();
    }

    pub fn start_server(&mut self, j: usize) {
        self.servers[j] = self.serve(j);
    }

    /// Node `i` fails silently: the router's port to it drops everything, both ways (as a
    /// hung host or a dead link would; XDP on the node would forward past a drop there).
    pub fn cut_link(&self, i: usize) {
        let port = format!("n{}", i + 1);
        self.router.exec(&format!(
            "nft add table inet cut_{port} && \
             nft add chain inet cut_{port} through '{{ type filter hook forward priority 0; }}' && \
             nft add chain inet cut_{port} from_router '{{ type filter hook output priority 0; }}' && \
             nft add chain inet cut_{port} to_router '{{ type filter hook input priority 0; }}' && \
             nft add rule inet cut_{port} through iifname {port} drop && \
             nft add rule inet cut_{port} through oifname {port} drop && \
             nft add rule inet cut_{port} from_router oifname {port} drop && \
             nft add rule inet cut_{port} to_router iifname {port} drop"
        ));
    }

    pub fn mend_link(&self, i: usize) {
        self.router
            .exec(&format!("nft delete table inet cut_n{}", i + 1));
    }

    /// Replies from the VIP that reached node `i` (0 with direct server return).
    pub fn replies_through(&self, i: usize) -> u64 {
        let out = self.nodes[i].ns.exec("nft list chain netdev replies in");
        out.split("counter packets ")
            .skip(1)
            .map(|r| {
                r.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// The router's next hops for the VIP now (node addresses).
    pub fn next_hops(&self) -> Vec<String> {
        let out = self.router.exec(&format!("ip route show {VIP}/32 || true"));
        let mut hops: Vec<String> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect();
        hops.sort();
        hops.dedup();
        hops
    }

    /// Wait until the router's BFD session with every node is up: until then a silent
    /// failure is caught by BGP's hold timer (3 s), not by BFD.
    /// The router's `show bfd peers brief`, for a test to print when routes move unexpectedly.
    pub fn bfd_peers(&self) -> String {
        let d = self.router_dir.display().to_string();
        self.router.exec(&format!(
            "vtysh --vty_socket {d} -c \"show bfd peers brief\" 2>&1 || true"
        ))
    }

    pub fn wait_bfd_up(&self, secs: u64) -> Duration {
        let t = Instant::now();
        let up = || {
            let out = self.bfd_peers();
            self.nodes.iter().all(|n| {
                out.lines()
                    .any(|l| l.contains(&n.addr) && l.split_whitespace().last() == Some("up"))
            })
        };
        wait_for(up, secs, "BFD sessions up with every node");
        t.elapsed()
    }

    /// Wait until the router's next hops for the VIP are exactly `want` (node indices);
    /// returns how long that took.
    pub fn wait_next_hops(&self, want: &[usize], secs: u64) -> Duration {
        let mut want: Vec<String> = want.iter().map(|i| self.nodes[*i].addr.clone()).collect();
        want.sort();
        let start = Instant::now();
        loop {
            if self.next_hops() == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "the router's next hops for {VIP} are {:?}, not {want:?}, after {secs} s; \
                 its BFD peers:\n{}",
                self.next_hops(),
                self.bfd_peers()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `count` new connections from the client: answers per backend, and failures.
    pub fn requests(&self, count: u32) -> (std::collections::BTreeMap<String, u32>, u32) {
        client_requests(
            &self.client,
            self.echo,
            "--tcp",
            &format!("{VIP}:80"),
            count,
        )
    }

    /// Hold `conns` connections, each asking every 100 ms, for `millis` ms.
    pub fn hold(&self, conns: u32, millis: u64) -> Child {
        self.client.spawn(
            self.echo,
            &[
                "hold",
                &format!("{VIP}:80"),
                &conns.to_string(),
                &millis.to_string(),
            ],
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for m in 0..self.etcd.len() {
            self.kill_etcd_member(m);
        }
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for n in &mut self.nodes {
            n.lbd = None;
            let _ = std::fs::remove_dir_all(&n.dir);
        }
        let _ = std::fs::remove_dir_all(&self.router_dir);
        // Unpinned, the decap programs go with their veths and namespaces.
        for p in &self.decap_pins {
            let _ = std::fs::remove_dir_all(p);
        }
        // The namespaces go with their fields, killing BIRD, FRR and whatever else runs there.
    }
}

fn wait_for(ok: impl Fn() -> bool, secs: u64, what: &str) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < end, "no {what} after {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
