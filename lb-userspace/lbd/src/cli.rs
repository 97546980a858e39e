//! `lbd`: the daemon's command line.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use lb_clidoc::ManArgs;
use lb_control::Config;

mod decap;

#[derive(Parser)]
#[command(name = "lbd", version, about = "XDP L4 load balancer daemon")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the balancer with a configuration file.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// On exit, detach and remove the pins (stop for good) instead of leaving the
        /// dataplane running for the next start to adopt.
        #[arg(long)]
        purge_on_exit: bool,
        /// On exit, withdraw every VIP route ([announce]) before stopping, so that the
        /// router stops sending here first. Without it the routes stay announced through
        /// BIRD for a hitless restart.
        #[arg(long)]
        withdraw_on_exit: bool,
    },
    /// Validate a configuration file and exit (0: valid, 1: invalid).
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Detach the balancer and remove everything pinned under a pin directory.
    Purge {
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        pin_dir: PathBuf,
    },
    /// Decapsulation on a backend: attach the `lb_decap` XDP program to a NIC (pinned, so it
    /// outlives the command), show its allow-list and counters, detach it.
    #[command(subcommand)]
    Decap(DecapCmd),
    /// Shell completions on stdout (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Man pages (roff): the top page on stdout, or every page into a directory.
    Man(ManArgs),
}

#[derive(Subcommand)]
enum DecapCmd {
    /// Attach `lb_decap` to a NIC with an allow-list of outer destinations and pin it; run
    /// again to change the allow-list (in place, the program replaced on its link: no gap).
    Attach {
        /// The NIC that receives the balancer's IP-in-IP (in this network namespace).
        #[arg(short, long, value_name = "IF")]
        interface: String,
        /// An outer destination to decapsulate: an address of this backend that the
        /// balancer sends to. IPv4 or IPv6; several after one --addr, or comma-separated.
        /// IP-in-IP to any other address is passed untouched.
        #[arg(
            long = "addr",
            value_name = "ADDR",
            num_args = 1..,
            value_delimiter = ',',
            required_unless_present = "pass_only"
        )]
        addrs: Vec<IpAddr>,
        /// No allow-list: decapsulate nothing and pass every packet. Gives a veth peer the
        /// XDP program that frames sent into the veth with XDP_TX need.
        #[arg(long, conflicts_with = "addrs")]
        pass_only: bool,
        /// XDP mode, when the link is created: native (driver) or generic (the kernel's skb
        /// path, for NICs without XDP support). A link attached already keeps its mode.
        /// [default: native]
        #[arg(long, value_enum)]
        mode: Option<DecapMode>,
        /// bpffs directory of the pins, one subdirectory per interface (not the balancer's
        /// pin directory).
        #[arg(long, default_value = lb_dataplane::DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Per pinned interface: attached or not, the allow-list, the counters by reason. Exits 1
    /// if one is not attached.
    Status {
        /// Only this interface (an error if nothing is pinned for it).
        #[arg(short, long, value_name = "IF")]
        interface: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// bpffs directory of the pins, one subdirectory per interface (not the balancer's
        /// pin directory).
        #[arg(long, default_value = lb_dataplane::DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach `lb_decap` from a NIC and remove its pins.
    Detach {
        #[arg(short, long, value_name = "IF")]
        interface: String,
        /// bpffs directory of the pins, one subdirectory per interface (not the balancer's
        /// pin directory).
        #[arg(long, default_value = lb_dataplane::DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DecapMode {
    Native,
    Generic,
}

fn init_logging(json: bool) {
    // aya warns at every load that the kernel rejected the object's BTF (Rust emits types
    // the kernel's BTF checker does not take); the program loads and runs without it.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,aya=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

/// `lbd`'s command-line definition (for its man pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Whether `args` (without the program name) is a valid `lbd` command line: lets the docs'
/// commands be checked against the real parser.
pub fn parses(args: &[&str]) -> Result<(), String> {
    Cli::try_parse_from(std::iter::once("lbd").chain(args.iter().copied()))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let res = match cli.cmd {
        Cmd::Run {
            config,
            purge_on_exit,
            withdraw_on_exit,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(crate::run::run(
                    &config,
                    crate::run::OnExit {
                        purge: purge_on_exit,
                        withdraw: withdraw_on_exit,
                    },
                    std::future::pending(),
                ))
            }),
        Cmd::Check { config } => Config::load(&config)
            .map(|c| println!("{}: valid, {} VIPs", config.display(), c.vips.len()))
            .map_err(Into::into),
        // A running daemon holds the directory's lock: purging under it would detach a
        // balancer that still believes it serves.
        Cmd::Purge { pin_dir } => purge(&pin_dir),
        Cmd::Decap(cmd) => decap::run(cmd),
        Cmd::Completions { shell } => {
            print!("{}", lb_clidoc::completions(Cli::command(), shell));
            Ok(())
        }
        Cmd::Man(args) => args
            .run(Cli::command(), "lbctl")
            .map(|out| print!("{out}"))
            .map_err(Into::into),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `lbd purge`: refused while a daemon holds the pin directory, as detaching under it
/// would stop a balancer that still believes it serves.
fn purge(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let _lock = match pin_dir.exists() {
        true => Some(crate::run::lock_pin_dir(pin_dir)?),
        false => None,
    };
    lb_dataplane::purge_pins(pin_dir).map_err(Into::into)
}
