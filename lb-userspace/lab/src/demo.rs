//! `lb-demo` (what `cargo xtask demo` runs): the whole system on network namespaces, in
//! about ten seconds.
//!
//! A client, the balancer (native XDP on a veth, driven by a real `lbd run` process) and
//! three HTTP backends (IPv4 and IPv6, IP-in-IP stripped by our decap program). The demo
//! shows weighted spreading, a backend killed and traffic moved within the health-check
//! window, a drain that keeps a long-lived connection, a configuration change rolled back
//! through the control API, and the dataplane's counters.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lb_dataplane::{Decap, XdpMode, pinned_reasons, purge_pins};

use crate::netns::{Netns, sh, sweep_stale};

#[derive(Parser)]
#[command(
    name = "lb-demo",
    about = "The load balancer's demo on network namespaces: a failover, a drain, a rollback"
)]
struct Cli {
    /// Keep the topology up until Enter is pressed, to explore it.
    #[arg(long)]
    keep: bool,
    /// The lbd binary to run (default: the one beside lb-demo, as cargo builds them).
    #[arg(long)]
    lbd: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The demo's HTTP backend (run by the demo inside a backend namespace).
    #[command(hide = true)]
    Backend {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Some(Cmd::Backend { name, port }) => backend(&name, port),
        None => beside_me("lbd", cli.lbd).and_then(|lbd| run(cli.keep, lbd)),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `args` (without the program name) is a valid `lb-demo` command line: lets the
/// docs' commands be checked against the real parser.
pub fn parses(args: &[&str]) -> std::result::Result<(), String> {
    Cli::try_parse_from(std::iter::once("lb-demo").chain(args.iter().copied()))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `given`, or the program `name` in lb-demo's own directory (cargo puts a workspace's
/// binaries side by side).
fn beside_me(name: &str, given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let me = std::env::current_exe().context("finding lb-demo's own path")?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p lbd) or pass --lbd PATH",
            p.display()
        );
    }
    Ok(p)
}

const VIP4: &str = "198.18.100.1";
const VIP6: &str = "2001:db8:100::1";
const BPFFS: &str = "/run/lbd-demo-bpffs";
const WEIGHTS: [u32; 3] = [100, 200, 300];

fn say(s: impl AsRef<str>) {
    println!("{}", s.as_ref());
}

/// The HTTP backend the demo runs in each backend namespace (`lb-demo backend`): answers
/// every request, keep-alive included, with its name.
pub fn backend(name: &str, port: u16) -> Result<()> {
    let l = TcpListener::bind(("::", port)).with_context(|| format!("binding [::]:{port}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    for s in l.incoming().flatten() {
        let name = name.to_string();
        std::thread::spawn(move || {
            let mut w = match s.try_clone() {
                Ok(w) => w,
                Err(_) => return,
            };
            let mut r = BufReader::new(s);
            loop {
                let mut line = String::new();
                let mut close = false;
                // Request line and headers up to the blank line.
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" || line == "\n" => break,
                        Ok(_) => {
                            close |= line.to_ascii_lowercase().starts_with("connection: close")
                        }
                    }
                }
                let body = format!("{name}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                    body.len()
                );
                if w.write_all(resp.as_bytes()).is_err() || close {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// One HTTP GET on a new connection: the answering backend's name.
fn get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|l| l.starts_with('b'))
}

fn spread(results: &[Option<String>]) -> (BTreeMap<String, u32>, u32) {
    let mut m = BTreeMap::new();
    let mut failed = 0;
    for r in results {
        match r {
            Some(n) => *m.entry(n.clone()).or_default() += 1,
            None => failed += 1,
        }
    }
    (m, failed)
}

struct Lab {
    client: Netns,
    lb: Netns,
    backends: Vec<Netns>,
    servers: Vec<Option<Child>>,
    daemon: Option<Child>,
    _decaps: Vec<Decap>,
    dir: PathBuf,
    pin_dir: PathBuf,
    lbd: PathBuf,
    _sw: Netns,
}

impl Lab {
    fn build(lbd: PathBuf) -> Result<Lab> {
        sweep_stale();
        let g = Netns::group();
        let sw = Netns::new(g, "sw");
        sw.exec("ip link add br0 type bridge && ip link set br0 up");
        let host = |role: &str, n: u8| -> Netns {
            let ns = Netns::new(g, role);
            sh(&format!(
                "ip link add eth0 netns {} address 02:00:00:00:01:{n:02x} type veth peer name p-{role} netns {}",
                ns.name, sw.name
            ));
            sw.exec(&format!(
                "ip link set p-{role} master br0 && ip link set p-{role} up"
            ));
            ns.exec(&format!(
                "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && ip link set eth0 up && \
                 ip addr add 198.18.0.{n}/24 dev eth0 && ip -6 addr add 2001:db8::{n}/64 dev eth0 nodad"
            ));
            ns
        };
        let client = host("client", 1);
        // Veths hand over packets with checksums pending; a real NIC computes them.
        client.exec(&format!(
            "ethtool -K eth0 tx off >/dev/null && ip route add {VIP4}/32 via 198.18.0.10 && ip -6 route add {VIP6}/128 via 2001:db8::10"
        ));
        let lb = host("lb", 10);
        lb.exec("sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1");
        let mut backends = Vec::new();
        for i in 0..3u8 {
            let b = host(&format!("b{}", i + 1), 0x21 + i);
            b.exec(&format!(
                "ip addr add {VIP4}/32 dev lo && ip -6 addr add {VIP6}/128 dev lo nodad && \
                 sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.all.rp_filter=0"
            ));
            backends.push(b);
        }
        // XDP_TX into a veth needs NAPI on the peer: a pass-through XDP program there.
        let mut decaps = vec![sw.enter(|| Decap::attach("p-lb", XdpMode::Driver, &[]))?];
        for (i, b) in backends.iter().enumerate() {
            let addrs = vec![
                format!("198.18.0.{}", 0x21 + i).parse()?,
                format!("2001:db8::{}", 0x21 + i).parse()?,
            ];
            decaps.push(b.enter(move || Decap::attach("eth0", XdpMode::Driver, &addrs))?);
        }
        crate::bpffs::mount(BPFFS);
        // An earlier demo killed mid-way (Ctrl-C) left its pins and files: take them now.
        for e in std::fs::read_dir(BPFFS)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("lbt-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                let _ = purge_pins(&e.path());
                let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&name));
            }
        }
        let dir = std::env::temp_dir().join(&lb.name);
        std::fs::create_dir_all(&dir)?;
        let pin_dir = PathBuf::from(BPFFS).join(&lb.name);
        let mut lab = Lab {
            client,
            lb,
            backends,
            servers: Vec::new(),
            daemon: None,
            _decaps: decaps,
            dir,
            pin_dir,
            lbd,
            _sw: sw,
        };
        for i in 0..3 {
            let s = lab.serve(i)?;
            lab.servers.push(Some(s));
        }
        Ok(lab)
    }

    fn serve(&self, i: usize) -> Result<Child> {
        let exe = std::env::current_exe()?;
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.backends[i].name])
            .arg(&exe)
            .args(["backend", "--name", &format!("b{}", i + 1), "--port", "80"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().context("backend stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("backend b{} did not start", i + 1);
        }
        Ok(c)
    }

    fn config(&self, weights: [u32; 3]) -> String {
        let mut c = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"{}\"\nstate_dir = \"{}\"\napi_socket = \"{}\"\n\n[dataplane]\nflows = 65536\nring_capacity = 262148\n",
            self.pin_dir.display(),
            self.dir.join("state").display(),
            self.dir.join("lbd.sock").display()
        );
        for (name, vip, fam) in [("web4", VIP4.to_string(), 4), ("web6", VIP6.to_string(), 6)] {
            c.push_str(&format!(
                "\n[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = 80\n\n[vip.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 500\ntimeout_ms = 300\nrise = 2\nfall = 2\n"
            ));
            for (i, w) in weights.iter().enumerate() {
                let addr = if fam == 4 {
                    format!("198.18.0.{}", 0x21 + i)
                } else {
                    format!("2001:db8::{}", 0x21 + i)
                };
                c.push_str(&format!(
                    "\n[[vip.backend]]\naddress = \"{addr}\"\nweight = {w}\n"
                ));
            }
        }
        c
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("lb.toml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lbd.log")).unwrap_or_default()
    }

    fn start_daemon(&mut self) -> Result<()> {
        std::fs::write(self.config_path(), self.config(WEIGHTS))?;
        let log = std::fs::File::create(self.dir.join("lbd.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.lb.name])
            .arg(&self.lbd)
            .args(["run", "-c"])
            .arg(self.config_path())
            .env("RUST_LOG", "info,aya=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.daemon = Some(child);
        Ok(())
    }

    /// The daemon's control API, as `lbctl` calls it.
    fn api(&self) -> lb_api::Client {
        lb_api::Client::new(self.dir.join("lbd.sock"))
    }

    /// One change through the control API: the revision it made.
    fn change(&self, request: lb_api::Request) -> Result<lb_api::RevisionMeta> {
        let op = request.op();
        self.api()
            .call_typed(&request, None)
            .with_context(|| format!("{op} through the control API"))
    }

    /// `backend.set` of `fields` on one backend of `web4`.
    fn set_backend(
        &self,
        address: &str,
        fields: serde_json::Value,
    ) -> Result<lb_api::RevisionMeta> {
        self.change(lb_api::Request::BackendSet {
            vip: "web4".into(),
            address: address.into(),
            comment: String::new(),
            fields: match fields {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
        })
    }

    /// `n` GETs from the client, in its namespace.
    fn requests(&self, addr: SocketAddr, n: usize) -> Vec<Option<String>> {
        self.client
            .enter(move || (0..n).map(|_| get(addr)).collect())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for s in self.servers.iter_mut().flatten() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = purge_pins(&self.pin_dir);
        crate::bpffs::release(BPFFS);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pct(n: u32, total: u32) -> f64 {
    100.0 * n as f64 / total.max(1) as f64
}

fn show_spread(title: &str, m: &BTreeMap<String, u32>, failed: u32, weights: [u32; 3]) {
    let total: u32 = m.values().sum::<u32>() + failed;
    let wsum: u32 = weights.iter().sum();
    say(format!("  {title}: {total} requests, {failed} failed"));
    for (i, w) in weights.iter().enumerate() {
        let name = format!("b{}", i + 1);
        let n = m.get(&name).copied().unwrap_or(0);
        say(format!(
            "    {name}  weight {w:>3}  expected {:>5.1}%  got {n:>4} = {:>5.1}%",
            pct(*w, wsum),
            pct(n, total)
        ));
    }
}

fn run(keep: bool, lbd: PathBuf) -> Result<()> {
    let started = Instant::now();
    say("lbd demo: an XDP load balancer on network namespaces");
    say(
        "  client 198.18.0.1 -> VIPs 198.18.100.1:80 and [2001:db8:100::1]:80 -> backends b1 b2 b3 (198.18.0.33-35)",
    );
    say(
        "  the balancer runs in native XDP mode on a veth; backends strip IP-in-IP with our decap program\n",
    );
    let mut lab = Lab::build(lbd)?;
    lab.start_daemon()?;
    let v4: SocketAddr = format!("{VIP4}:80").parse()?;
    let v6: SocketAddr = format!("[{VIP6}]:80").parse()?;
    let end = Instant::now() + Duration::from_secs(15);
    while lab.requests(v4, 5).iter().any(Option::is_none) {
        if Instant::now() > end {
            bail!("the VIP never answered; daemon log:\n{}", lab.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    say(format!(
        "1. Daemon up and serving after {:.1} s (lbd run, config {})",
        started.elapsed().as_secs_f64(),
        lab.config_path().display()
    ));

    let (m, f) = spread(&lab.requests(v4, 600));
    show_spread("IPv4, Maglev over weights 100/200/300", &m, f, WEIGHTS);
    let (m, f) = spread(&lab.requests(v6, 300));
    show_spread("IPv6", &m, f, WEIGHTS);

    say("\n2. Kill backend b2 while a client keeps sending requests");
    let client = lab.client.name.clone();
    let stream = std::thread::spawn(move || {
        let ns = Netns { name: client };
        let out = ns.enter(move || {
            let mut v = Vec::new();
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                v.push((Instant::now(), get(v4)));
            }
            v
        });
        std::mem::forget(ns); // not ours to delete
        out
    });
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    if let Some(mut s) = lab.servers[1].take() {
        let _ = s.kill();
        let _ = s.wait();
    }
    let results = stream
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    let event = lab
        .log()
        .lines()
        .find(|l| l.contains("web4") && l.contains("up -> down"))
        .map(str::to_string);
    let failed: Vec<Duration> = results
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(t, _)| t.saturating_duration_since(killed_at))
        .collect();
    let last_fail = failed.iter().max().copied().unwrap_or_default();
    let after: Vec<&Option<String>> = results
        .iter()
        .filter(|(t, _)| *t > killed_at + last_fail)
        .map(|(_, r)| r)
        .collect();
    say(format!(
        "  {} requests in 4 s; {} failed, all within {:.0} ms of the kill (health checks: every 500 ms, down after 2 failures)",
        results.len(),
        failed.len(),
        last_fail.as_secs_f64() * 1000.0
    ));
    say(format!(
        "  after that: {} requests, {} to b2, {} failed",
        after.len(),
        after.iter().filter(|r| r.as_deref() == Some("b2")).count(),
        after.iter().filter(|r| r.is_none()).count()
    ));
    if let Some(e) = event {
        say(format!(
            "  daemon event: {}",
            e.split("INFO").last().unwrap_or(&e).trim()
        ));
    }
    let s = lab.serve(1)?;
    lab.servers[1] = Some(s);

    say(
        "\n3. Drain b3 (lbctl backend drain web4 198.18.0.35) while a long-lived connection to it stays open",
    );
    // b2 is back: wait for its health checks to pass again.
    let end = Instant::now() + Duration::from_secs(10);
    while !lab
        .log()
        .lines()
        .any(|l| l.contains("web4") && l.contains("down -> up"))
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = Netns {
        name: lab.client.name.clone(),
    };
    let held = client.enter(move || -> Option<TcpStream> {
        for _ in 0..50 {
            let mut s = TcpStream::connect_timeout(&v4, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n").ok()?;
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).ok()?;
            if String::from_utf8_lossy(&buf[..n])
                .trim_end()
                .ends_with("b3")
            {
                return Some(s);
            }
        }
        None
    });
    std::mem::forget(client);
    let r = lab.set_backend("198.18.0.35", serde_json::json!({"drain": true}))?;
    say(format!(
        "  configuration revision {} ({})",
        r.revision, r.source
    ));
    let (m, f) = spread(&lab.requests(v4, 300));
    say(format!("  new requests after the drain: {m:?}, {f} failed"));
    if let Some(mut s) = held {
        let ok = s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n").is_ok() && {
            let mut buf = [0u8; 256];
            s.read(&mut buf)
                .map(|n| {
                    String::from_utf8_lossy(&buf[..n])
                        .trim_end()
                        .ends_with("b3")
                })
                .unwrap_or(false)
        };
        say(format!(
            "  the connection opened to b3 before the drain still answers from b3: {}",
            if ok { "yes" } else { "NO" }
        ));
    }

    say(
        "\n4. A configuration change, then rolled back (lbctl backend weight / lbctl config rollback)",
    );
    lab.set_backend("198.18.0.35", serde_json::json!({"drain": null}))?;
    let good = lab.set_backend("198.18.0.33", serde_json::json!({"weight": 100}))?;
    lab.set_backend("198.18.0.33", serde_json::json!({"weight": 600}))?;
    let (m, f) = spread(&lab.requests(v4, 550));
    show_spread("with b1's weight raised to 600", &m, f, [600, 200, 300]);
    let r = lab.change(lb_api::Request::ConfigRollback {
        target: lb_api::RollbackTarget::Revision(good.revision),
        comment: String::new(),
    })?;
    say(format!(
        "  rolled back to revision {}: now revision {}",
        good.revision, r.revision
    ));
    let (m, f) = spread(&lab.requests(v4, 600));
    show_spread("after the rollback", &m, f, WEIGHTS);
    say("  history (lbctl config history):");
    let history: Vec<lb_api::RevisionMeta> = lab
        .api()
        .call_typed(&lb_api::Request::ConfigHistory {}, None)
        .context("config.history through the control API")?;
    for h in history.iter().take(6) {
        say(format!("    {:>3}  {}  {}", h.revision, h.at, h.source));
    }

    say("\n5. Dataplane counters (LB_STATS, summed over CPUs)");
    for (reason, n) in pinned_reasons(&lab.pin_dir)?
        .into_iter()
        .filter(|(_, n)| *n > 0)
    {
        say(format!("  {:<22} {n}", reason.label()));
    }
    say(format!(
        "\nDone in {:.0} s.",
        started.elapsed().as_secs_f64()
    ));
    if keep {
        say("The topology is up (--keep). In another terminal, for example:");
        say(format!(
            "  ip netns exec {} curl -s http://{VIP4}/",
            lab.client.name
        ));
        say(format!(
            "  bpftool map dump pinned {}/LB_STATS",
            lab.pin_dir.display()
        ));
        say(format!("  less {}", lab.dir.join("lbd.log").display()));
        say(format!(
            "  cargo run --release -p lbctl -- --socket {} health",
            lab.dir.join("lbd.sock").display()
        ));
        say(
            "  (also: status, stats, events, backend drain web4 198.18.0.34, config history, config rollback --to 1)",
        );
        say("Press Enter to remove it.");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    drop(lab);
    say("Everything the demo created is removed (namespaces, processes, pins).");
    if !keep {
        say("Run `cargo xtask demo -- --keep` to keep the topology up and explore it.");
    }
    Ok(())
}
