//! `lbt-rate-bench`: the forwarding rate of the real `lb_xdp` (issue 6), part of
//! `cargo xtask bench`. A live-frames generator (`BPF_F_TEST_XDP_LIVE_FRAMES`) sends
//! 60-byte TCP frames over a veth into the balancer, loaded with its real tables, which
//! forwards them in IP-in-IP back over the same veth to a sink that counts them (rig.rs
//! draws the network). The baseline is the same network with an XDP_TX reflector in the
//! balancer's place. Flow count and backend count vary; rounds interleave every path and
//! figures are medians over rounds. BENCHMARKS.md ("Forwarding rate") explains the method.
//!
//! These are benchmarks, not tests: nothing asserts a rate. What makes the run fail is a
//! failed proof: frames that did not take the path their row is labelled with.

mod measure;
mod progs;
mod report;
mod rig;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, bail};
use lb_bench::cli::{self as bench_cli, Args, write_results};
use serde_json::json;

use crate::{
    measure::{Path, Settings, sample},
    report::{Against, HEADER, Row},
    rig::Rig,
};

struct Opts {
    settings: Settings,
    rounds: usize,
    flows: Vec<u32>,
    backends: Vec<u32>,
    json: PathBuf,
    markdown: Option<PathBuf>,
}

const USAGE: &str = "usage: lbt-rate-bench [--tiny] [--seconds S] [--rounds N] [--flows N,N] \
    [--backends N,N] [--cpu N] [--batch N] [--json PATH] [--markdown PATH]\n\
    defaults: --seconds 2 --rounds 3 --flows 1,1024,1048576 --backends 1,10,100 --cpu 0 \
    --batch 64 --json target/bench/rate.json\n\
    --tiny: --seconds 0.2 --rounds 1 --flows 1,1024,131072 --backends 1,10 (what the test suite runs)\n\
    Every flow count is measured at the middle backend count, and every backend count at the\n\
    middle flow count. Flow counts are powers of two up to 2^20; backend counts 1 to 250";

fn list(v: &str, name: &str) -> Result<Vec<u32>> {
    v.split(',')
        .map(|x| {
            x.parse()
                .with_context(|| format!("{name}: {x} is not a count\n{USAGE}"))
        })
        .collect()
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        settings: Settings {
            seconds: 2.0,
            cpu: 0,
            batch: 64,
        },
        rounds: 3,
        flows: vec![1, 1 << 10, 1 << 20],
        backends: vec![1, 10, 100],
        json: PathBuf::from("target/bench/rate.json"),
        markdown: None,
    };
    let mut args = Args::new(USAGE);
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--tiny" => {
                o.settings.seconds = 0.2;
                o.rounds = 1;
                o.flows = vec![1, 1 << 10, 1 << 17];
                o.backends = vec![1, 10];
            }
            "--seconds" => o.settings.seconds = args.value(&a)?,
            "--rounds" => o.rounds = args.value(&a)?,
            "--flows" => o.flows = list(&args.value::<String>(&a)?, &a)?,
            "--backends" => o.backends = list(&args.value::<String>(&a)?, &a)?,
            "--cpu" => o.settings.cpu = args.value(&a)?,
            "--batch" => o.settings.batch = args.value(&a)?,
            "--json" => o.json = args.value(&a)?,
            "--markdown" => o.markdown = Some(args.value(&a)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if o.rounds == 0 || o.settings.seconds <= 0.0 {
        bail!("--rounds and --seconds must be positive\n{USAGE}");
    }
    for v in [&mut o.flows, &mut o.backends] {
        v.sort_unstable();
        v.dedup();
    }
    if o.flows.is_empty() || o.flows.iter().any(|f| !f.is_power_of_two() || *f > 1 << 20) {
        bail!("--flows takes powers of two up to 1048576 (the generator masks a counter)");
    }
    if o.backends.is_empty() || o.backends.iter().any(|b| !(1..=250).contains(b)) {
        bail!("--backends takes counts from 1 to 250 (one /24 of addresses per VIP)");
    }
    // The kernel's limit for live-frames batches (TEST_XDP_MAX_BATCH).
    if !(1..=256).contains(&o.settings.batch) {
        bail!("--batch takes 1 to 256");
    }
    Ok(o)
}

fn main() -> ExitCode {
    bench_cli::exit("lbt-rate-bench", run())
}

/// The points measured: every flow count at the middle backend count, and every backend
/// count at the middle flow count (a full grid would need a connection table holding a
/// million flows per VIP). Returns (flows, backends) pairs, flow sweep first.
fn points(flows: &[u32], backends: &[u32]) -> Vec<(u32, u32)> {
    let (f0, b0) = (flows[flows.len() / 2], backends[backends.len() / 2]);
    let mut p: Vec<(u32, u32)> = flows.iter().map(|&f| (f, b0)).collect();
    p.extend(backends.iter().filter(|&&b| b != b0).map(|&b| (f0, b)));
    p
}

/// Connection table entries. All generation, and so all of the balancer's work, happens on
/// one CPU, and with per-CPU LRU lists that CPU holds only its share of the table: the
/// share must hold every point's flows at once (new entries are the first the LRU evicts,
/// so a point whose flows did not fit would lose them during its own warm-up), with room
/// to spare. Points on one VIP share flows: a smaller count is a subset of a larger one.
fn table_size(points: &[(u32, u32)]) -> Result<u32> {
    let mut per_vip: std::collections::BTreeMap<u32, u32> = Default::default();
    for &(f, b) in points {
        let e = per_vip.entry(b).or_default();
        *e = (*e).max(f);
    }
    let need: u32 = per_vip.values().sum();
    let cpus = progs::cpus()? as u32;
    Ok((cpus * (need + need / 2)).max(65_536))
}

fn run() -> Result<bool> {
    let o = parse_args()?;
    let started = Instant::now();
    let points = points(&o.flows, &o.backends);
    let table = table_size(&points)?;
    let mut rig = Rig::new(table, &o.backends).context("building the benchmark network")?;

    // Each baseline at every flow count of the balancer's rows, fed the very same frames.
    let mut flow_counts: Vec<u32> = points.iter().map(|&(f, _)| f).collect();
    flow_counts.sort_unstable();
    flow_counts.dedup();
    let mut rows: Vec<Row> = Vec::new();
    for (id, label, path) in [
        (
            "reflector",
            "baseline: reflector (MACs swapped, XDP_TX)",
            (|flows| Path::Reflector { flows }) as fn(u32) -> Path,
        ),
        (
            "tracker",
            "baseline: connection table only (parse, lookup, backend, IP-in-IP, XDP_TX)",
            |flows| Path::Tracker { flows },
        ),
    ] {
        for &flows in &flow_counts {
            rows.push(Row {
                path: path(flows),
                id: format!("{id}_f{flows}"),
                label: label.into(),
                backends: None,
                samples: vec![],
            });
        }
    }
    for &(flows, backends) in &points {
        let vip = rig
            .vips
            .iter()
            .position(|v| v.backends == backends)
            .context("a point without its VIP")?;
        rows.push(Row {
            path: Path::Lb { vip, flows },
            id: format!("lb_f{flows}_b{backends}"),
            label: "lb_xdp, IP-in-IP, established".into(),
            backends: Some(backends),
            samples: vec![],
        });
    }
    // Each round starts at another path, so that no path always runs first or last in its
    // round: drift within a round (the machine is shared) then falls on every path alike.
    let n = rows.len();
    for round in 0..o.rounds {
        eprintln!("round {}/{}", round + 1, o.rounds);
        for i in 0..n {
            let row = &mut rows[(i + round * n / o.rounds) % n];
            let s = sample(&mut rig, row.path, &o.settings)
                .with_context(|| format!("run of {}", row.id))?;
            row.samples.push(s);
        }
    }
    drop(rig);

    let baseline = |want: Path| rows.iter().find(|r| r.path == want);
    let against = |r: &Row| -> Result<Against> {
        let flows = r.flows();
        Ok(Against {
            reflector: baseline(Path::Reflector { flows }).context("a reflector row")?,
            tracker: baseline(Path::Tracker { flows }).context("a tracker row")?,
        })
    };
    let mut md = format!(
        "Forwarding rate: live frames of {} bytes, generator on CPU {} (the veths' NAPI runs \
         there too), batch {}; {} s per run, {} interleaved rounds; connection table {} \
         entries\n\n{HEADER}",
        measure::frame("198.18.0.10").len(),
        o.settings.cpu,
        o.settings.batch,
        o.settings.seconds,
        o.rounds,
        table
    );
    let mut baselines = Vec::new();
    let mut lb_rows = Vec::new();
    for r in &rows {
        let vs = against(r)?;
        md.push_str(&r.markdown(&vs));
        if matches!(r.path, Path::Lb { .. }) {
            lb_rows.push(r.json(&vs));
        } else {
            baselines.push(r.json(&vs));
        }
    }
    let ok = rows.iter().all(Row::ok);
    let doc = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        "settings": {
            "seconds": o.settings.seconds,
            "rounds": o.rounds,
            "cpu": o.settings.cpu,
            "batch": o.settings.batch,
            "flow_table": table,
        },
        "baselines": baselines,
        "rows": lb_rows,
        "all_proofs_ok": ok,
        "seconds": started.elapsed().as_secs_f64(),
    });
    write_results(&md, &doc, &o.json, o.markdown.as_deref(), started)?;
    Ok(ok)
}
