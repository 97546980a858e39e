//! Memory: the dataplane's maps at the default sizes, and the daemon's resident memory with
//! many VIPs and backends.
//!
//! `lbt-mem-bench VIPS BACKENDS_PER_VIP`: runs the real daemon (`lbd::run`,
//! in this process, on a veth in a namespace of its own, health checks off) with a generated
//! configuration, then prints one JSON line: the maps' memlock (from /proc/self/fdinfo, the
//! kernel's own accounting, per map name), the process's RSS before the daemon started
//! (baseline) and while it serves, and purges everything on the way out.

use std::{collections::BTreeMap, time::Duration};

use lb_lab::netns::Netns;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// memlock of every BPF map this process holds, by map name (the kernel's accounting).
fn map_memory() -> BTreeMap<String, u64> {
    let names: BTreeMap<String, String> = aya::maps::loaded_maps()
        .flatten()
        .map(|m| {
            (
                m.id().to_string(),
                m.name_as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/fdinfo")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_string)
        };
        let (Some(mem), Some(id)) = (field("memlock:"), field("map_id:")) else {
            continue;
        };
        let name = names.get(&id).cloned().unwrap_or(id);
        out.insert(name, mem.parse().unwrap_or(0));
    }
    out
}

fn config(vips: u32, per: u32, pin_dir: &str, state: &str) -> String {
    let mut c = format!(
        "[daemon]\ninterfaces = [\"m0\"]\npin_dir = \"{pin_dir}\"\nstate_dir = \"{state}\"\napi_socket = \"{state}/lbd.sock\"\nmetrics_listen = \"127.0.0.1:0\"\n\n\
         [dataplane]\nring_capacity = {}\n",
        vips as u64 * 1009 + 1009
    );
    for v in 0..vips {
        c.push_str(&format!(
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"198.19.{}.{}\"\nport = 80\nring_size = 1009\n[vip.health]\nkind = \"none\"\n",
            v / 250,
            1 + v % 250
        ));
        for b in 0..per {
            let n = v * per + b;
            c.push_str(&format!(
                "[[vip.backend]]\naddress = \"10.{}.{}.{}\"\n",
                n >> 16,
                (n >> 8) & 255,
                n & 255
            ));
        }
    }
    c
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let vips: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let per: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    lb_lab::netns::sweep_stale();
    let ns = Netns::new(Netns::group(), "mem");
    ns.exec("ip link add m0 type veth peer name m1 && ip link set m0 up && ip link set m1 up");
    lb_tests::daemon::ensure_bpffs();
    let pin_dir = format!("{}/{}", lb_tests::daemon::BPFFS, ns.name);
    let state = std::env::temp_dir().join(&ns.name);
    std::fs::create_dir_all(&state).unwrap();
    let cfg_path = state.join("lb.toml");
    std::fs::write(
        &cfg_path,
        config(vips, per, &pin_dir, state.to_str().unwrap()),
    )
    .unwrap();
    let baseline = rss_kib();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let name = ns.name.clone();
    let cfg = cfg_path.clone();
    let daemon = std::thread::spawn(move || {
        Netns { name }.enter(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let on_exit = lbd::OnExit {
                purge: true,
                ..Default::default()
            };
            rt.block_on(lbd::run(&cfg, on_exit, async {
                let _ = stop_rx.await;
            }))
            .map_err(|e| format!("{e:#}"))
        })
    });
    // Serving: the controller has written every VIP once the API answers.
    let sock = state.join("lbd.sock");
    let api = lb_api::Client::new(&sock);
    let mut up = false;
    for _ in 0..600 {
        if api.call(&lb_api::Request::Status {}, None).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let serving = rss_kib();
    let maps = map_memory();
    let _ = stop_tx.send(());
    let res = daemon.join().unwrap();
    let _ = std::fs::remove_dir_all(&state);
    assert!(up, "the daemon never answered: {res:?}");
    let total: u64 = maps.values().sum();
    println!(
        "{{\"vips\": {vips}, \"backends\": {}, \"maps\": {}, \"map_memlock_bytes\": {total}, \"rss_baseline_kib\": {baseline}, \"rss_serving_kib\": {serving}, \"daemon_kib\": {}, \"per_map_bytes\": {}}}",
        vips * per,
        maps.len(),
        serving.saturating_sub(baseline),
        serde_json::to_string(&maps).unwrap()
    );
    drop(ns);
}
