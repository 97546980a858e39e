//! `cargo xtask bench`: setup, build the benchmark driver (`lbt-bench` in the test crate,
//! which embeds the XDP programs) in release mode, and run it. The driver prints the
//! tables and writes `target/bench/results.json` and `target/bench/results.md`; the
//! health-check, memory and forwarding-rate drivers follow (`health.jsonl`, `memory.json`,
//! `rate.json` and `rate.md`). BENCHMARKS.md explains the method.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    cmd::{self, show},
    setup::{self, SetupArgs},
};

const PACKAGE: &str = "lb-bench";
const BIN: &str = "lbt-bench";

fn say(msg: impl AsRef<str>) {
    println!("[bench] {}", msg.as_ref());
}

/// Arguments after `--` go to the driver (`-- --help` lists them).
pub fn run(extra: &[String]) -> Result<()> {
    setup::run(&SetupArgs::default())?;
    if !cmd::output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0") {
        say(
            "warning: not root; loading the XDP programs needs CAP_BPF, CAP_NET_ADMIN and \
             CAP_SYS_ADMIN, so the run will likely fail",
        );
    }
    let exe = cmd::build_release("bench", PACKAGE, BIN)?;
    let out = cmd::workspace_root().join("target").join("bench");
    let mut run = Command::new(exe);
    run.arg("--json")
        .arg(out.join("results.json"))
        .arg("--markdown")
        .arg(out.join("results.md"))
        .args(extra);
    say(format!("running: {}", show(&run)));
    let st = cmd::status(&mut run)?;
    if !st.success() {
        bail!("the benchmark failed ({st}); see its output above");
    }
    let done = health_checks(&out);
    // The memory driver pins under the tests' bpffs: take it away, whatever happened.
    crate::suite::release_test_bpffs();
    done
}

/// Health-check capacity: CPU share of one core for 1,000 and 10,000 backends probed at a
/// 1 s interval (each beside a baseline of the same tasks only sleeping).
fn health_checks(out: &std::path::Path) -> Result<()> {
    const HEALTH: &str = "lbt-health-bench";
    let exe = cmd::build_release("bench", PACKAGE, HEALTH)?;
    let mut lines = Vec::new();
    for n in ["1000", "10000"] {
        let line = cmd::output(Command::new(&exe).args([n, "5"]))?;
        say(format!("health checks: {}", line.trim()));
        lines.push(line.trim().to_string());
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("health.jsonl"), lines.join("\n") + "\n")?;
    memory(out)
}

/// Map memory at the default sizes and daemon RSS with 1,000 VIPs and 10,000 backends.
fn memory(out: &std::path::Path) -> Result<()> {
    const MEM: &str = "lbt-mem-bench";
    let exe = cmd::build_release("bench", PACKAGE, MEM)?;
    let line = cmd::output(Command::new(exe).args(["1000", "10"]))?;
    let line = line.lines().last().unwrap_or("").to_string();
    say(format!("memory: {line}"));
    std::fs::write(out.join("memory.json"), line + "\n")?;
    forwarding_rate(out)
}

/// Forwarding rate of the balancer with a live-frames generator, beside an XDP_TX
/// reflector and a connection-table-only forwarder; the driver prints its table and
/// writes rate.json and rate.md.
fn forwarding_rate(out: &std::path::Path) -> Result<()> {
    const RATE: &str = "lbt-rate-bench";
    let exe = cmd::build_release("bench", PACKAGE, RATE)?;
    let mut run = Command::new(exe);
    run.arg("--json")
        .arg(out.join("rate.json"))
        .arg("--markdown")
        .arg(out.join("rate.md"));
    say(format!("running: {}", show(&run)));
    let st = cmd::status(&mut run)?;
    if !st.success() {
        bail!("the forwarding-rate benchmark failed ({st}); see its output above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::{Cli, Task};

    #[test]
    fn passes_what_follows_the_double_dash_to_the_driver() {
        match Cli::try_parse_from(["xtask", "bench", "--", "--rounds", "3"])
            .unwrap()
            .task
        {
            Task::Bench { args } => assert_eq!(args, ["--rounds", "3"]),
            _ => panic!("not the bench task"),
        }
        assert!(matches!(
            Cli::try_parse_from(["xtask", "bench"]).unwrap().task,
            Task::Bench { args } if args.is_empty()
        ));
    }
}
