//! Project tasks: `cargo xtask setup | test | demo | bench | install | uninstall | deb` (the
//! alias is in .cargo/config.toml).

mod bench;
mod cmd;
mod deb;
mod install;
mod setup;
mod suite;

use std::process::{Command, ExitCode};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    deb::DebArgs,
    install::{InstallArgs, Location},
    setup::SetupArgs,
};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test and demo tasks for the XDP load balancer"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: nightly rust-src, bpf-linker built against the
    /// nightly's LLVM, and the Debian packages the tests use (idempotent).
    Setup(SetupArgs),
    /// Run setup, then the whole test suite (needs root: the tests load BPF programs and
    /// create network namespaces). Arguments after `--` go to `cargo test`.
    Test {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run setup, then the demo (`lb-demo`). Arguments after `--` go to `lb-demo`.
    Demo {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run setup, then the benchmarks (needs root): per-packet cost with BPF_PROG_TEST_RUN
    /// and control-plane times, each beside a baseline of the same run. Writes
    /// target/bench/results.json and results.md. Arguments after `--` go to the benchmark
    /// driver (`-- --help`).
    Bench {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build lbd and lbctl (release) and install them with the example configuration (never
    /// over an existing /etc/lbd/lb.toml), the systemd unit, man pages for every command
    /// and bash, zsh and fish completions. Run `setup` first on a fresh machine.
    Install(InstallArgs),
    /// Remove what `install` installed (its list is in PREFIX/share/lbd/installed-files);
    /// keeps /etc/lbd/lb.toml and the daemon's state.
    Uninstall(Location),
    /// Build lbd and lbctl (release) and package them as a Debian package, for gateways and
    /// backends that install packages rather than a build toolchain: binaries, systemd
    /// units, man pages, completions, the configuration and /etc/default files as conffiles.
    /// Writes target/debian/lbd_VERSION_ARCH.deb. Run `setup` first on a fresh machine.
    Deb(DebArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.task {
        Task::Setup(a) => setup::run(&a).map(|()| 0),
        Task::Test { args } => suite::run(&args),
        Task::Demo { args } => demo(&args).map(|()| 0),
        Task::Bench { args } => bench::run(&args).map(|()| 0),
        Task::Install(a) => install::install(&a).map(|()| 0),
        Task::Uninstall(a) => install::uninstall(&a).map(|()| 0),
        Task::Deb(a) => deb::run(&a).map(|()| 0),
    };
    match r {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A thin launcher: builds `lbd` and `lb-demo` in release mode and runs `lb-demo`, which
/// finds `lbd` beside itself.
fn demo(extra: &[String]) -> Result<()> {
    setup::run(&SetupArgs::default())?;
    // Run what was just built: `cargo run` would check the whole build again.
    cmd::build_release("demo", "lbd", "lbd")?;
    let exe = cmd::build_release("demo", "lb-lab", "lb-demo")?;
    let mut run = Command::new(exe);
    run.args(extra);
    println!("[demo] running: {}", cmd::show(&run));
    let st = cmd::status(&mut run)?;
    if !st.success() {
        bail!("the demo failed ({st})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_everything_after_the_double_dash() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "ipv4", "--", "--nocapture"]);
        match cli.unwrap().task {
            Task::Test { args } => assert_eq!(args, ["ipv4", "--", "--nocapture"]),
            _ => panic!("not the test task"),
        }
        match Cli::try_parse_from(["xtask", "setup", "--dry-run"])
            .unwrap()
            .task
        {
            Task::Setup(a) => assert!(a.dry_run && !a.rebuild_bpf_linker),
            _ => panic!("not the setup task"),
        }
    }
}
