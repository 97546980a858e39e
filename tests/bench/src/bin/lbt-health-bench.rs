//! Health-check capacity: how much of one core `lbd`'s probes use for N backends at a 1 s
//! interval, against local servers in namespaces, bounded in time.
//!
//! `lbt-health-bench N SECONDS`: a server namespace answers TCP on every address of
//! 198.18.64.0/18 (AnyIP route); a prober namespace runs N probe tasks (the daemon's own
//! `lbd::spawn_check`) on one current-thread runtime for SECONDS, and prints one JSON line:
//! backends, probes answered, probes per second, CPU seconds, CPU share of one core, and the
//! same for the baseline (N tasks that only sleep on the same timer schedule).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_control::{CheckKind, HealthConfig};
use lb_lab::netns::{Netns, sh};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut r);
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    }
}

fn addr(i: u32) -> SocketAddr {
    let base = u32::from(Ipv4Addr::new(198, 18, 64, 1));
    SocketAddr::from((Ipv4Addr::from(base + i), 80))
}

/// (probes answered, CPU seconds) for `n` probers (or sleepers) over `secs`.
fn run(n: u32, secs: u64, probe: bool) -> (u64, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let h = HealthConfig {
            kind: Some(CheckKind::Tcp),
            interval_ms: Some(1000),
            timeout_ms: Some(500),
            ..Default::default()
        }
        .resolve(80);
        let (tx, mut rx) = tokio::sync::mpsc::channel(65536);
        let start_cpu = cpu_seconds();
        let mut tasks = Vec::new();
        for i in 0..n {
            if probe {
                tasks.push(lbd::spawn_check(
                    "bench".into(),
                    i,
                    h.clone(),
                    addr(i),
                    tx.clone(),
                ));
            } else {
                // Baseline: the same wake-ups, no network.
                let tx = tx.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let p = lb_control::Probe {
                            vip: "bench".into(),
                            backend_id: i,
                            result: Ok(Duration::ZERO),
                            at: std::time::Instant::now(),
                            agent: None,
                        };
                        if tx.send(p).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(
                            1000 + rand::random_range(0..=100),
                        ))
                        .await;
                    }
                }));
            }
        }
        let end = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut ok = 0u64;
        while let Ok(Some(p)) = tokio::time::timeout_at(end, rx.recv()).await {
            ok += p.result.is_ok() as u64;
        }
        for t in tasks {
            t.abort();
        }
        (ok, cpu_seconds() - start_cpu)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    lb_lab::netns::sweep_stale();
    let g = Netns::group();
    let prober = Netns::new(g, "hprobe");
    let server = Netns::new(g, "hserve");
    sh(&format!(
        "ip link add p0 netns {} type veth peer name s0 netns {}",
        prober.name, server.name
    ));
    prober.exec("ip link set p0 up && ip addr add 198.18.63.1/30 dev p0 && ip route add 198.18.64.0/18 via 198.18.63.2");
    server.exec("ip link set s0 up && ip addr add 198.18.63.2/30 dev s0 && ip route add local 198.18.64.0/18 dev lo && sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535");
    // The server: accept and close, on every address of the prefix.
    let server_name = server.name.clone();
    std::thread::spawn(move || {
        let ns = Netns { name: server_name };
        ns.enter(|| {
            let l = std::net::TcpListener::bind("0.0.0.0:80").unwrap();
            for s in l.incoming() {
                drop(s);
            }
        });
    });
    std::thread::sleep(Duration::from_millis(200));
    let pname = prober.name.clone();
    let (base, probe) = Netns {
        name: pname.clone(),
    }
    .enter(move || {
        let wall = Instant::now();
        let base = run(n, secs, false);
        let base_wall = wall.elapsed().as_secs_f64();
        let wall = Instant::now();
        let probe = run(n, secs, true);
        let probe_wall = wall.elapsed().as_secs_f64();
        ((base.0, base.1, base_wall), (probe.0, probe.1, probe_wall))
    });
    println!(
        "{{\"backends\": {n}, \"interval_ms\": 1000, \"seconds\": {secs}, \"probes_ok\": {}, \"probes_per_s\": {:.1}, \"cpu_s\": {:.3}, \"core_share\": {:.4}, \"baseline_cpu_s\": {:.3}, \"baseline_core_share\": {:.4}}}",
        probe.0,
        probe.0 as f64 / probe.2,
        probe.1,
        probe.1 / probe.2,
        base.1,
        base.1 / base.2
    );
    drop(prober);
    drop(server);
}
