//! The benchmark driver behind `cargo xtask bench` (issue 6): per-packet cost of the real
//! `lb_xdp` with `BPF_PROG_TEST_RUN`, beside an XDP_PASS floor and a parse-only baseline
//! measured in the same rounds, and the control plane's Maglev build and ring write times
//! beside reference implementations, and its failover time (verdict to maps written). Writes a Markdown table to stdout (and to
//! `--markdown`) and JSON to `--json`. BENCHMARKS.md explains the method.
//!
//! These are benchmarks, not tests: nothing here asserts a time. What is checked, and makes
//! the run fail, is that every measured iteration took the path it is labelled with (the
//! per-reason counters), so that no figure comes from the wrong code path.

mod control;
mod failover;
mod packet;
mod sys;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, bail};

use serde_json::{Value, json};

use lb_bench::cli::{self as bench_cli, Args, write_results};
pub use lb_bench::stats::stats;

pub struct Opts {
    /// Iterations per `BPF_PROG_TEST_RUN` call.
    pub repeat: u32,
    /// Interleaved rounds (every packet case once per round).
    pub rounds: usize,
    /// Timed repetitions of each control-plane figure.
    pub samples: usize,
    /// The smallest run: the failover takes one small case.
    pub tiny: bool,
    pub json: PathBuf,
    pub markdown: Option<PathBuf>,
    pub packet: bool,
    pub control: bool,
    /// Only these per-packet cases (ids), for profiling one path.
    pub cases: Option<Vec<String>>,
}

const USAGE: &str = "usage: lbt-bench [--tiny] [--repeat N] [--rounds N] [--samples N] \
    [--json PATH] [--markdown PATH] [--only packet|control] [--cases ID,ID]\n\
    defaults: --repeat 1000000 --rounds 15 --samples 5 --json target/bench/results.json\n\
    --tiny: --repeat 1000 --rounds 1 --samples 1, failover for 10 backends on a 1009-slot\n\
    ring with 2 samples (what the test suite runs)";

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        repeat: 1_000_000,
        rounds: 15,
        samples: 5,
        tiny: false,
        json: PathBuf::from("target/bench/results.json"),
        markdown: None,
        packet: true,
        control: true,
        cases: None,
    };
    let mut args = Args::new(USAGE);
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--tiny" => {
                o.repeat = 1000;
                o.rounds = 1;
                o.samples = 1;
                o.tiny = true;
            }
            "--repeat" => o.repeat = args.value(&a)?,
            "--rounds" => o.rounds = args.value(&a)?,
            "--samples" => o.samples = args.value(&a)?,
            "--json" => o.json = args.value(&a)?,
            "--markdown" => o.markdown = Some(args.value(&a)?),
            "--cases" => {
                let v: String = args.value(&a)?;
                o.cases = Some(v.split(',').map(String::from).collect());
            }
            "--only" => match args.value::<String>(&a)?.as_str() {
                "packet" => o.control = false,
                "control" => o.packet = false,
                other => bail!("--only {other}: expected packet or control\n{USAGE}"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if o.repeat == 0 || o.rounds == 0 || o.samples == 0 {
        bail!("--repeat, --rounds and --samples must be at least 1");
    }
    Ok(o)
}

/// The machine the figures belong to.
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub mhz: String,
    pub kernel: String,
    pub jit: String,
}

fn machine() -> Machine {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    Machine {
        cpu: format!(
            "{} (family {}, model {})",
            field("model name"),
            field("cpu family"),
            field("model")
        ),
        cpus: info.lines().filter(|l| l.starts_with("processor")).count(),
        mhz: field("cpu MHz"),
        kernel: read("/proc/sys/kernel/osrelease"),
        jit: read("/proc/sys/net/core/bpf_jit_enable"),
    }
}

fn main() -> ExitCode {
    bench_cli::exit("lbt-bench", run())
}

fn run() -> Result<bool> {
    let o = parse_args()?;
    let started = Instant::now();
    let m = machine();
    let mut md = String::new();
    md.push_str(&format!(
        "Machine: {}, {} vCPU at {} MHz; Linux {}; bpf_jit_enable={}\n\
         Per-packet: BPF_PROG_TEST_RUN, repeat {} per run, {} interleaved rounds\n\n",
        m.cpu, m.cpus, m.mhz, m.kernel, m.jit, o.repeat, o.rounds
    ));
    let mut doc = serde_json::Map::new();
    doc.insert(
        "machine".into(),
        json!({
            "cpu": m.cpu,
            "vcpus": m.cpus,
            "mhz": m.mhz,
            "kernel": m.kernel,
            "bpf_jit_enable": m.jit,
        }),
    );
    doc.insert(
        "settings".into(),
        json!({ "repeat": o.repeat, "rounds": o.rounds, "samples": o.samples }),
    );
    let mut ok = true;
    if o.packet {
        let r = packet::run(&o).context("per-packet benchmark")?;
        ok &= r.all_ok();
        md.push_str(&r.markdown());
        doc.insert("packet".into(), r.json());
    }
    if o.control {
        let r = control::run(&o).context("control-plane benchmark")?;
        ok &= r.all_ok();
        md.push_str(&r.markdown());
        doc.insert("control".into(), r.json());
    }
    doc.insert("all_proofs_ok".into(), Value::Bool(ok));
    doc.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
    write_results(
        &md,
        &Value::Object(doc),
        &o.json,
        o.markdown.as_deref(),
        started,
    )?;
    Ok(ok)
}
