//! `lbctl`: the operator's command line, a client of the daemon's control API (and, for
//! `top --metrics`, of its `/metrics`).
//!
//! Every request is an `lb_api::Request` and every answer is decoded into the type the
//! operation answers with; one function per subcommand.
//!
//! Exit codes: 0 done; 1 the daemon refused (invalid change, unknown VIP or backend,
//! conflicting revision, bad request); 2 usage error; 3 the daemon cannot be reached (or
//! its answer is not valid); 4 permission denied.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use lb_api::{
    BackendRow, Client, ClientError, ConfigText, Diff, ErrorCode, EventRow, ExportedRevision,
    FleetStatus, Forward, MetricsText, Protocol, Request, RevisionMeta, Role, RollbackTarget,
    Scheduler, Stats, Status, Validity, VipRow,
};
use lb_clidoc::{self as clidoc, ManArgs};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

#[derive(Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Operate the XDP load balancer daemon (lbd)"
)]
struct Cli {
    /// The daemon's control socket ([daemon] api_socket).
    #[arg(
        long,
        global = true,
        env = "LBCTL_SOCKET",
        default_value = "/run/lbd.sock"
    )]
    socket: PathBuf,
    /// Print what the daemon answered as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Revision, VIPs, backends by state, uptime.
    Status,
    /// VIPs.
    Vip {
        #[command(subcommand)]
        cmd: VipCmd,
    },
    /// Backends of VIPs.
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// This balancer node: maintenance withdraws its routes ([announce]).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// The fleet (fleet mode): every node, what it runs and announces.
    Fleet {
        #[command(subcommand)]
        cmd: FleetCmd,
    },
    /// Backend health: state, reason, last check, latency.
    Health { vip: Option<String> },
    /// Dataplane counters: every reason, per VIP, per backend.
    Stats,
    /// Health transitions and configuration changes, oldest first.
    Events {
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Configuration revisions.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Live rates per VIP and backend, backend health, and drops per reason.
    Top {
        /// Read /metrics over HTTP at this address ([daemon] metrics_listen, such as
        /// 127.0.0.1:9469) instead of asking the daemon over its control socket.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print one view (rates over one interval) and exit, for scripts.
        #[arg(long)]
        once: bool,
    },
    /// Shell completions on stdout (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Man pages (roff): the top page on stdout, or every page into a directory.
    Man(ManArgs),
}

#[derive(Subcommand)]
enum VipCmd {
    /// Every VIP: address, port, scheduler, backends, announced.
    List,
    /// One VIP: its settings, backends, and whether its address is announced and why not.
    Show { name: String },
    /// Add a VIP (backends are added with `backend add`).
    Add {
        name: String,
        address: IpAddr,
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// tcp or udp.
        #[arg(long, default_value = "tcp")]
        protocol: Protocol,
        /// maglev, round_robin, random, least_conn or source_hash.
        #[arg(long, default_value = "maglev")]
        scheduler: Scheduler,
        /// ipip or l2dsr.
        #[arg(long, default_value = "ipip")]
        forward: Forward,
    },
    /// Remove a VIP and its backends (a revision).
    Remove { name: String },
    /// Change VIP keys: KEY=VALUE (scheduler, forward, no_backend, min_primaries, ring_size).
    Set {
        name: String,
        #[arg(required = true)]
        settings: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Withdraw every route of this node (a revision); the dataplane keeps forwarding
    /// what still arrives.
    Drain,
    /// Announce again what qualifies (a revision).
    Resume,
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Every live node of the fleet: the revision it runs, what it announces, what it
    /// refused, and the backends the nodes see in different states.
    Status,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Backends of every VIP, or of one: state, weight, reason.
    List { vip: Option<String> },
    /// Add a backend to a VIP (a revision).
    Add {
        vip: String,
        address: IpAddr,
        #[arg(long)]
        weight: Option<u32>,
        /// primary or backup.
        #[arg(long)]
        role: Option<Role>,
        /// Next-hop MAC, for L2 DSR.
        #[arg(long)]
        mac: Option<String>,
    },
    /// Remove a backend; its established flows move (a revision).
    Remove { vip: String, address: IpAddr },
    /// No new flows; established flows stay. `drain VIP ADDRESS`, or `drain --all ADDRESS`
    /// for the backend in every VIP that has it (one revision).
    Drain {
        /// Drain ADDRESS in every VIP that has it.
        #[arg(long)]
        all: bool,
        /// VIP and ADDRESS, or ADDRESS alone with --all.
        #[arg(required = true, num_args = 1..=2, value_names = ["VIP", "ADDRESS"])]
        targets: Vec<String>,
    },
    /// Undo drain and disable.
    Enable { vip: String, address: IpAddr },
    /// Down for the dataplane: its flows move.
    Disable { vip: String, address: IpAddr },
    /// Set the weight (0..=65535).
    Weight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// The configuration in force (or of a revision).
    Show {
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Check a file without applying it.
    Validate { file: PathBuf },
    /// Apply a file as a new revision.
    Apply {
        file: PathBuf,
        #[arg(long, default_value = "")]
        comment: String,
        /// Refuse if the current revision is not this one.
        #[arg(long)]
        base: Option<u64>,
    },
    /// Differences between two revisions (default: FROM to the current one).
    Diff { from: u64, to: Option<u64> },
    /// Every revision: when, where from, comment.
    History,
    /// Go back to a revision, or to the configuration in force at a time (RFC 3339).
    Rollback {
        #[arg(long, conflicts_with = "at", required_unless_present = "at")]
        to: Option<u64>,
        #[arg(long)]
        at: Option<String>,
    },
    /// Write every revision to a file (backup).
    Export { file: PathBuf },
    /// Load revisions exported elsewhere and apply the newest (restore).
    Import { file: PathBuf },
}

/// A failure: what to print, and the exit code.
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        match &e {
            ClientError::Unreachable { socket, source } => Fail::new(
                if e.io_kind() == Some(std::io::ErrorKind::PermissionDenied) {
                    4
                } else {
                    3
                },
                format!(
                    "cannot reach the daemon at {}: {source} (is lbd running? is --socket right? are you root?)",
                    socket.display()
                ),
            ),
            ClientError::Refused(refusal) => Fail::new(
                if refusal.code == ErrorCode::Permission {
                    4
                } else {
                    1
                },
                e.to_string(),
            ),
            ClientError::BadAnswer { .. } => Fail::new(3, e.to_string()),
        }
    }
}

/// What every subcommand that talks to the daemon needs.
struct Ctx {
    client: Client,
    /// Print the answer's data as JSON instead of for people.
    json: bool,
}

impl Ctx {
    /// A read: its data as `T`, rendered by `human` (or as JSON).
    fn read<T: Serialize + DeserializeOwned>(
        &self,
        request: Request,
        human: impl FnOnce(T) -> String,
    ) -> Result<String, Fail> {
        let data: T = self.client.call_typed(&request, None)?;
        Ok(if self.json {
            pretty(&data)
        } else {
            human(data)
        })
    }

    /// A mutation (refused unless `base` is still current, if given): the revision it made.
    fn change(&self, request: Request, base: Option<u64>) -> Result<String, Fail> {
        let meta: RevisionMeta = self.client.call_typed(&request, base)?;
        Ok(if self.json {
            pretty(&meta)
        } else {
            revision_text(&meta)
        })
    }

    /// `backend.set` of `fields` on one backend.
    fn set_backend(
        &self,
        vip: &str,
        address: &IpAddr,
        fields: Map<String, Value>,
    ) -> Result<String, Fail> {
        self.change(
            Request::BackendSet {
                vip: vip.to_string(),
                address: address.to_string(),
                comment: String::new(),
                fields,
            },
            None,
        )
    }
}

/// JSON for scripts, keys in alphabetical order as the daemon writes them.
fn pretty(data: &impl Serialize) -> String {
    let value = serde_json::to_value(data).unwrap_or(Value::Null);
    format!(
        "{}\n",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    )
}

/// A local file the command names (exit 2 when unusable: it is the command line's fault).
fn read_file(path: &Path) -> Result<String, Fail> {
    std::fs::read_to_string(path)
        .map_err(|e| Fail::new(2, format!("cannot read {}: {e}", path.display())))
}

/// Columns under `headers`, each as wide as its widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (cell, w) in cells.zip(&widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        format!("{}\n", out.trim_end())
    };
    let mut out = line(&mut headers.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// `key  value` lines, the values aligned in one column.
fn aligned(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}", k).trim_end().to_string() + "\n")
        .collect()
}

/// A list in words: `a, b, c`, or `none`.
fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    match items.is_empty() {
        true => "none".into(),
        false => items.join(", "),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// A duration as an operator reads it: `42 s`, `3 min 5 s`, `2 h 7 min`, `3 d 4 h`.
fn duration(s: u64) -> String {
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{m} min {} s", s % 60),
        3600..86_400 => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

/// What a change made: its revision, what made it, when, and the comment (if any).
fn revision_text(m: &RevisionMeta) -> String {
    let mut pairs = vec![
        ("revision", m.revision.to_string()),
        ("source", m.source.clone()),
        ("at", m.at.clone()),
    ];
    if !m.comment.is_empty() {
        pairs.push(("comment", m.comment.clone()));
    }
    aligned(&pairs)
}

/// A cell for a value that may be missing.
fn or_dash<T>(v: Option<T>, show: impl Fn(T) -> String) -> String {
    v.map(show).unwrap_or_else(|| "-".into())
}

fn two_places(x: f64) -> String {
    format!("{x:.2}")
}

/// Fields of a table from pairs of a key and a JSON value.
fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn run(cli: &Cli) -> Result<String, Fail> {
    let ctx = Ctx {
        client: Client::new(&cli.socket),
        json: cli.json,
    };
    match &cli.cmd {
        Cmd::Status => status(&ctx),
        Cmd::Vip { cmd } => match cmd {
            VipCmd::List => vip_list(&ctx),
            VipCmd::Show { name } => vip_show(&ctx, name),
            VipCmd::Add {
                name,
                address,
                port,
                protocol,
                scheduler,
                forward,
            } => vip_add(&ctx, name, address, *port, *protocol, *scheduler, *forward),
            VipCmd::Remove { name } => vip_remove(&ctx, name),
            VipCmd::Set { name, settings } => vip_set(&ctx, name, settings),
        },
        Cmd::Backend { cmd } => match cmd {
            BackendCmd::List { vip } => backend_list(&ctx, vip.as_deref()),
            BackendCmd::Add {
                vip,
                address,
                weight,
                role,
                mac,
            } => backend_add(&ctx, vip, address, *weight, *role, mac.as_deref()),
            BackendCmd::Remove { vip, address } => backend_remove(&ctx, vip, address),
            BackendCmd::Drain { all, targets } => backend_drain(&ctx, *all, targets),
            BackendCmd::Enable { vip, address } => backend_enable(&ctx, vip, address),
            BackendCmd::Disable { vip, address } => backend_disable(&ctx, vip, address),
            BackendCmd::Weight {
                vip,
                address,
                weight,
            } => backend_weight(&ctx, vip, address, *weight),
        },
        Cmd::Node { cmd } => match cmd {
            NodeCmd::Drain => node_drain(&ctx),
            NodeCmd::Resume => node_resume(&ctx),
        },
        Cmd::Fleet { cmd } => match cmd {
            FleetCmd::Status => fleet_status(&ctx),
        },
        Cmd::Health { vip } => backend_list(&ctx, vip.as_deref()),
        Cmd::Stats => stats(&ctx),
        Cmd::Events { limit } => events(&ctx, *limit),
        Cmd::Config { cmd } => match cmd {
            ConfigCmd::Show { revision } => config_show(&ctx, *revision),
            ConfigCmd::Validate { file } => config_validate(&ctx, file),
            ConfigCmd::Apply {
                file,
                comment,
                base,
            } => config_apply(&ctx, file, comment, *base),
            ConfigCmd::Diff { from, to } => config_diff(&ctx, *from, *to),
            ConfigCmd::History => config_history(&ctx),
            ConfigCmd::Rollback { to, at } => config_rollback(&ctx, *to, at.as_deref()),
            ConfigCmd::Export { file } => config_export(&ctx, file),
            ConfigCmd::Import { file } => config_import(&ctx, file),
        },
        Cmd::Top {
            metrics,
            interval,
            once,
        } => {
            let source = match metrics {
                Some(addr) => Source::Http(addr),
                None => Source::Socket(&ctx.client),
            };
            top(&source, *interval, *once)?;
            Ok(String::new())
        }
        Cmd::Completions { shell } => Ok(clidoc::completions(Cli::command(), *shell)),
        Cmd::Man(args) => args
            .run(Cli::command(), "lbd")
            .map_err(|e| Fail::new(1, e.to_string())),
    }
}

fn status(ctx: &Ctx) -> Result<String, Fail> {
    ctx.read(Request::Status {}, |s: Status| status_text(&s))
}

/// `status` for people: one aligned `key  value` line per fact; the optional ones only
/// when they apply.
fn status_text(s: &Status) -> String {
    let mut pairs = vec![
        ("revision", s.revision.to_string()),
        ("VIPs", s.vips.to_string()),
        (
            "backends",
            list(s.backends.iter().map(|(state, n)| format!("{n} {state}"))),
        ),
        ("interfaces", list(&s.interfaces)),
    ];
    if !s.interfaces_lost.is_empty() {
        pairs.push((
            "interfaces lost",
            format!(
                "{} (the NIC is gone; attached again when it returns)",
                list(&s.interfaces_lost)
            ),
        ));
    }
    if let Some(a) = &s.announce {
        pairs.push(("announced", list(&a.routes)));
        if a.maintenance {
            pairs.push((
                "node",
                "drained: every route withdrawn (lbctl node resume)".into(),
            ));
        }
        if let Some(e) = &a.error {
            pairs.push(("BIRD error", e.clone()));
        }
    }
    if let Some(f) = &s.fleet {
        pairs.push(("fleet", format!("{} (this node: {})", f.fleet, f.node)));
        pairs.push((
            "fleet revision",
            match f.head {
                Some(h) if h != f.running => format!("runs {}, the fleet is at {h}", f.running),
                _ => format!("runs {}", f.running),
            },
        ));
        pairs.push((
            "etcd",
            match (&f.connected, &f.error) {
                (true, _) => "connected".to_string(),
                (false, Some(e)) => format!("not connected: {e}"),
                (false, None) => "not connected".to_string(),
            },
        ));
        if let Some(r) = &f.refused {
            pairs.push((
                "refused",
                format!("revision {}: {}", r.revision, first_line(&r.error)),
            ));
        }
        if let Some(b) = &f.behind {
            pairs.push(("left behind", format!("routes withdrawn: {b}")));
        }
    }
    for p in &s.store_problems {
        pairs.push(("revision store", p.clone()));
    }
    pairs.push(("pin dir", s.pin_dir.display().to_string()));
    pairs.push(("uptime", duration(s.uptime_s)));
    aligned(&pairs)
}

fn fleet_status(ctx: &Ctx) -> Result<String, Fail> {
    ctx.read(Request::FleetStatus {}, |f: FleetStatus| fleet_text(&f))
}

/// `fleet status` for people: the fleet, a table of nodes, and the disagreements.
fn fleet_text(f: &FleetStatus) -> String {
    let mut out = aligned(&[
        ("fleet", f.fleet.clone()),
        ("revision", f.head.to_string()),
        ("nodes", f.nodes.len().to_string()),
    ]);
    let rows: Vec<Vec<String>> = f
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                match n.running == f.head {
                    true => n.running.to_string(),
                    false => format!("{} (behind)", n.running),
                },
                list(&n.announced),
                n.withheld.clone().unwrap_or_else(|| "-".into()),
                n.refused.as_ref().map_or("-".into(), |r| {
                    format!("{}: {}", r.revision, first_line(&r.error))
                }),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["NODE", "RUNS", "ANNOUNCED", "WITHHELD", "REFUSED"],
        &rows,
    ));
    out.push('\n');
    if f.disagreements.is_empty() {
        out.push_str("every node sees every backend in the same state\n");
    } else {
        let rows: Vec<Vec<String>> = f
            .disagreements
            .iter()
            .map(|d| {
                vec![
                    d.vip.clone(),
                    d.address.to_string(),
                    list(d.states.iter().map(|(node, s)| format!("{node} {s}"))),
                ]
            })
            .collect();
        out.push_str("the nodes disagree about these backends:\n");
        out.push_str(&table(&["VIP", "BACKEND", "STATE BY NODE"], &rows));
    }
    out
}

/// The first line of a message (a configuration error goes on with its excerpt).
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn vip_list(ctx: &Ctx) -> Result<String, Fail> {
    ctx.read(Request::VipList { vip: None }, |vips: Vec<VipRow>| {
        vip_table(&vips)
    })
}

fn vip_show(ctx: &Ctx, name: &str) -> Result<String, Fail> {
    ctx.read(
        Request::VipList {
            vip: Some(name.to_string()),
        },
        |vips: Vec<VipRow>| vips.iter().map(vip_lines).collect::<Vec<_>>().join("\n"),
    )
}

/// One VIP as aligned lines.
fn vip_lines(v: &VipRow) -> String {
    aligned(&[
        ("name", v.name.clone()),
        ("address", v.address.to_string()),
        (
            "port",
            match v.port {
                0 => "all".to_string(),
                p => p.to_string(),
            },
        ),
        ("protocol", v.protocol.to_string()),
        ("scheduler", v.scheduler.to_string()),
        ("forward", v.forward.to_string()),
        ("ring size", v.ring_size.to_string()),
        ("backends", format!("{} ({} up)", v.backends, v.usable)),
        ("backup pool", yes_no(v.on_backup)),
        (
            "announced",
            match (v.announced, &v.withheld) {
                (None, _) => "announcements are off on this node".to_string(),
                (Some(true), None) => "yes".to_string(),
                (Some(true), Some(why)) => format!("yes, for another VIP on the address ({why})"),
                (Some(false), Some(why)) => format!("no: {why}"),
                (Some(false), None) => "no".to_string(),
            },
        ),
    ])
}

fn vip_table(vips: &[VipRow]) -> String {
    let rows: Vec<Vec<String>> = vips
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.address.to_string(),
                match v.port {
                    0 => "all".to_string(),
                    p => p.to_string(),
                },
                v.protocol.to_string(),
                v.scheduler.to_string(),
                v.forward.to_string(),
                v.backends.to_string(),
                v.usable.to_string(),
                yes_no(v.on_backup),
                match (v.announced, &v.withheld) {
                    (None, _) => "-".to_string(),
                    (Some(true), _) => "yes".to_string(),
                    (Some(false), Some(why)) => format!("no: {why}"),
                    (Some(false), None) => "no".to_string(),
                },
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "PORT",
            "PROTO",
            "SCHEDULER",
            "FORWARD",
            "BACKENDS",
            "USABLE",
            "ON BACKUP",
            "ANNOUNCED",
        ],
        &rows,
    )
}

fn vip_add(
    ctx: &Ctx,
    name: &str,
    address: &IpAddr,
    port: u16,
    protocol: Protocol,
    scheduler: Scheduler,
    forward: Forward,
) -> Result<String, Fail> {
    let word = |v: &dyn std::fmt::Display| Value::String(v.to_string());
    ctx.change(
        Request::VipAdd {
            name: name.to_string(),
            address: address.to_string(),
            comment: String::new(),
            fields: fields([
                ("port", Value::from(port)),
                ("protocol", word(&protocol)),
                ("scheduler", word(&scheduler)),
                ("forward", word(&forward)),
            ]),
        },
        None,
    )
}

fn vip_remove(ctx: &Ctx, name: &str) -> Result<String, Fail> {
    ctx.change(
        Request::VipRemove {
            name: name.to_string(),
            comment: String::new(),
        },
        None,
    )
}

/// `KEY=VALUE`s: a value that parses as an integer is a number, `true`/`false` a boolean,
/// anything else a string.
fn vip_set(ctx: &Ctx, name: &str, settings: &[String]) -> Result<String, Fail> {
    let mut fields = Map::new();
    for kv in settings {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Fail::new(2, format!("{kv:?}: write KEY=VALUE")))?;
        let v = v
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| v.parse::<bool>().map(Value::from))
            .unwrap_or_else(|_| Value::from(v));
        fields.insert(k.into(), v);
    }
    ctx.change(
        Request::VipSet {
            name: name.to_string(),
            comment: String::new(),
            fields,
        },
        None,
    )
}

/// `backend list` and `health`: one table.
fn backend_list(ctx: &Ctx, vip: Option<&str>) -> Result<String, Fail> {
    let request = Request::BackendList {
        vip: vip.map(str::to_string),
    };
    ctx.read(request, |backends: Vec<BackendRow>| {
        backend_table(&backends)
    })
}

fn backend_table(backends: &[BackendRow]) -> String {
    let rows: Vec<Vec<String>> = backends
        .iter()
        .map(|b| {
            vec![
                b.vip.clone(),
                b.address.to_string(),
                b.role.to_string(),
                b.weight.to_string(),
                b.effective_weight.to_string(),
                b.state.to_string(),
                b.since_s.to_string(),
                or_dash(b.last_check_s, two_places),
                or_dash(b.latency_ms, two_places),
                b.reason.clone(),
            ]
        })
        .collect();
    table(
        &[
            "VIP",
            "BACKEND",
            "ROLE",
            "WEIGHT",
            "NOW",
            "STATE",
            "FOR (s)",
            "CHECKED (s ago)",
            "LATENCY (ms)",
            "REASON",
        ],
        &rows,
    )
}

fn backend_add(
    ctx: &Ctx,
    vip: &str,
    address: &IpAddr,
    weight: Option<u32>,
    role: Option<Role>,
    mac: Option<&str>,
) -> Result<String, Fail> {
    let mut fields = Map::new();
    if let Some(w) = weight {
        fields.insert("weight".into(), Value::from(w));
    }
    if let Some(r) = role {
        fields.insert("role".into(), Value::String(r.to_string()));
    }
    if let Some(m) = mac {
        fields.insert("mac".into(), Value::from(m));
    }
    ctx.change(
        Request::BackendAdd {
            vip: vip.to_string(),
            address: address.to_string(),
            comment: String::new(),
            fields,
        },
        None,
    )
}

fn backend_remove(ctx: &Ctx, vip: &str, address: &IpAddr) -> Result<String, Fail> {
    ctx.change(
        Request::BackendRemove {
            vip: vip.to_string(),
            address: address.to_string(),
            comment: String::new(),
        },
        None,
    )
}

fn backend_drain(ctx: &Ctx, all: bool, targets: &[String]) -> Result<String, Fail> {
    let drain = fields([("drain", Value::Bool(true))]);
    let address = |a: &str| {
        a.parse::<IpAddr>()
            .map_err(|e| Fail::new(2, format!("{a:?} is not an IP address: {e}")))
    };
    match (all, targets) {
        (false, [vip, a]) => ctx.set_backend(vip, &address(a)?, drain),
        (true, [a]) => ctx.change(
            Request::BackendSetAll {
                address: address(a)?.to_string(),
                comment: String::new(),
                fields: drain,
            },
            None,
        ),
        (false, _) => Err(Fail::new(
            2,
            "backend drain takes VIP ADDRESS (or --all ADDRESS for every VIP)",
        )),
        (true, _) => Err(Fail::new(
            2,
            "backend drain --all takes one ADDRESS: the backend in every VIP",
        )),
    }
}

fn node_drain(ctx: &Ctx) -> Result<String, Fail> {
    ctx.change(
        Request::NodeDrain {
            comment: String::new(),
        },
        None,
    )
}

fn node_resume(ctx: &Ctx) -> Result<String, Fail> {
    ctx.change(
        Request::NodeResume {
            comment: String::new(),
        },
        None,
    )
}

/// `null` removes a key: back to the default, enabled.
fn backend_enable(ctx: &Ctx, vip: &str, address: &IpAddr) -> Result<String, Fail> {
    ctx.set_backend(
        vip,
        address,
        fields([("drain", Value::Null), ("disabled", Value::Null)]),
    )
}

fn backend_disable(ctx: &Ctx, vip: &str, address: &IpAddr) -> Result<String, Fail> {
    ctx.set_backend(vip, address, fields([("disabled", Value::Bool(true))]))
}

fn backend_weight(ctx: &Ctx, vip: &str, address: &IpAddr, weight: u32) -> Result<String, Fail> {
    ctx.set_backend(vip, address, fields([("weight", Value::from(weight))]))
}

fn stats(ctx: &Ctx) -> Result<String, Fail> {
    ctx.read(Request::Stats {}, |s: Stats| stats_text(&s))
}

/// Three tables: packets per reason (those not zero), per VIP, per backend.
fn stats_text(s: &Stats) -> String {
    let reasons: Vec<Vec<String>> = s
        .reasons
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(reason, packets)| vec![reason.clone(), packets.to_string()])
        .collect();
    let vips: Vec<Vec<String>> = s
        .vips
        .iter()
        .map(|v| {
            vec![
                v.vip.clone(),
                v.packets.to_string(),
                v.bytes.to_string(),
                v.new_flows.to_string(),
            ]
        })
        .collect();
    let backends: Vec<Vec<String>> = s
        .backends
        .iter()
        .map(|b| {
            vec![
                b.vip.clone(),
                b.address.to_string(),
                b.packets.to_string(),
                b.bytes.to_string(),
            ]
        })
        .collect();
    [
        table(&["REASON", "PACKETS"], &reasons),
        table(&["VIP", "PACKETS", "BYTES", "NEW FLOWS"], &vips),
        table(&["VIP", "BACKEND", "PACKETS", "BYTES"], &backends),
    ]
    .join("\n")
}

fn events(ctx: &Ctx, limit: u64) -> Result<String, Fail> {
    ctx.read(Request::Events { limit }, |events: Vec<EventRow>| {
        events_table(&events)
    })
}

/// Node-wide events (configuration revisions, announcements) have no VIP: `-`, as for no
/// backend.
fn events_table(events: &[EventRow]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                match e.vip.as_str() {
                    "*" => "-".to_string(),
                    v => v.to_string(),
                },
                or_dash(e.backend, |b| b.to_string()),
                e.what.clone(),
            ]
        })
        .collect();
    table(&["AT", "VIP", "BACKEND", "EVENT"], &rows)
}

fn config_show(ctx: &Ctx, revision: Option<u64>) -> Result<String, Fail> {
    ctx.read(Request::ConfigShow { revision }, |c: ConfigText| c.config)
}

fn config_validate(ctx: &Ctx, file: &Path) -> Result<String, Fail> {
    let request = Request::ConfigValidate {
        config: read_file(file)?,
        name: Some(file.display().to_string()),
    };
    let _: Validity = ctx.client.call_typed(&request, None)?;
    Ok(format!("{}: valid\n", file.display()))
}

fn config_apply(ctx: &Ctx, file: &Path, comment: &str, base: Option<u64>) -> Result<String, Fail> {
    let request = Request::ConfigApply {
        config: read_file(file)?,
        comment: comment.to_string(),
    };
    ctx.change(request, base)
}

fn config_diff(ctx: &Ctx, from: u64, to: Option<u64>) -> Result<String, Fail> {
    ctx.read(Request::ConfigDiff { from, to }, |d: Diff| d.diff)
}

fn config_history(ctx: &Ctx) -> Result<String, Fail> {
    ctx.read(Request::ConfigHistory {}, |revisions: Vec<RevisionMeta>| {
        history_table(&revisions)
    })
}

fn history_table(revisions: &[RevisionMeta]) -> String {
    let rows: Vec<Vec<String>> = revisions
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                r.at.clone(),
                r.source.clone(),
                r.comment.clone(),
            ]
        })
        .collect();
    table(&["REVISION", "AT", "SOURCE", "COMMENT"], &rows)
}

#[cfg(test)]
mod human_tests {
    //! The human forms: tables and aligned lines in words, never JSON.

    use super::*;

    fn meta(revision: u64, source: &str, comment: &str) -> RevisionMeta {
        RevisionMeta {
            revision,
            at: "2026-11-26T10:02:30.414Z".into(),
            source: source.into(),
            comment: comment.into(),
        }
    }

    /// Every human form of a busy node: a status with every optional line, VIPs, backends
    /// in every state, counters, events and revisions.
    fn samples() -> Vec<(&'static str, String)> {
        use lb_api::{Announce, BackendCounters, BackendState, VipCounters};
        let status = Status {
            revision: 14,
            vips: 2,
            backends: [(BackendState::Up, 6), (BackendState::Draining, 1)].into(),
            uptime_s: 93_784,
            interfaces: vec!["eth0".into(), "eth1".into()],
            pin_dir: "/sys/fs/bpf/lb".into(),
            interfaces_lost: vec!["eth1".into()],
            store_problems: vec!["revision 12 does not read back whole: kept aside".into()],
            announce: Some(Announce {
                maintenance: true,
                routes: vec![
                    "198.18.100.1".parse().unwrap(),
                    "2001:db8::1".parse().unwrap(),
                ],
                error: Some("birdc configure failed: no such file".into()),
            }),
            fleet: Some(lb_api::Membership {
                fleet: "edge".into(),
                node: "lb1".into(),
                running: 14,
                head: Some(15),
                connected: true,
                error: None,
                refused: Some(lb_api::Refusal {
                    revision: 15,
                    error: "fleet revision 15:3:13: ring_capacity is too small\n  |".into(),
                }),
                behind: Some("the node runs revision 14, its peers run 15".into()),
            }),
        };
        let vip = |name: &str, port, announced, withheld: Option<&str>| VipRow {
            name: name.into(),
            address: "198.18.100.1".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::RoundRobin,
            forward: Forward::Ipip,
            ring_size: 65537,
            backends: 3,
            usable: 2,
            on_backup: port == 0,
            announced,
            withheld: withheld.map(Into::into),
        };
        let vips = vec![
            vip("web", 80, Some(true), None),
            vip(
                "all-ports",
                0,
                Some(false),
                Some("1 usable backend, below 2"),
            ),
            vip("dns", 53, None, None),
        ];
        let backend = |state, reason: &str, checked: Option<f64>| BackendRow {
            vip: "web".into(),
            address: "198.18.0.21".parse().unwrap(),
            weight: 100,
            effective_weight: 50,
            role: Role::Backup,
            state,
            reason: reason.into(),
            since_s: 12,
            latency_ms: checked.map(|c| c * 2.0),
            error_rate: 0.25,
            last_check_s: checked,
        };
        let backends = vec![
            backend(BackendState::Up, "configuration", None),
            backend(
                BackendState::Down,
                "3 checks failed, last: connect: Connection refused (os error 111)",
                Some(0.5),
            ),
            backend(
                BackendState::Degraded,
                "latency 120.5 ms above 100 ms",
                Some(1.25),
            ),
            backend(
                BackendState::Draining,
                "agent: drain (weight 100 -> 50)",
                Some(0.1),
            ),
            backend(BackendState::Disabled, "configuration", None),
        ];
        let stats = Stats {
            reasons: [
                ("tx_ipip".to_string(), 1200),
                ("drop_no_backend".to_string(), 0),
            ]
            .into(),
            vips: vec![VipCounters {
                vip: "web".into(),
                packets: 1200,
                bytes: 96_000,
                new_flows: 40,
            }],
            backends: vec![BackendCounters {
                vip: "web".into(),
                address: "198.18.0.21".parse().unwrap(),
                packets: 1200,
                bytes: 96_000,
            }],
        };
        let events = vec![
            EventRow {
                at: "2026-11-26T10:02:30.403Z".into(),
                vip: "web".into(),
                backend: Some("198.18.0.21".parse().unwrap()),
                what: "up -> draining by configuration".into(),
            },
            EventRow {
                at: "2026-11-26T10:02:30.418Z".into(),
                vip: "*".into(),
                backend: None,
                what: "configuration revision 2 applied (api: backend.set web 198.18.0.21)".into(),
            },
        ];
        let history = vec![
            meta(
                2,
                "api: backend.set web 198.18.0.21",
                "kernel upgrade on b1",
            ),
            meta(1, "file", ""),
        ];
        vec![
            ("status", status_text(&status)),
            (
                "status of a quiet node",
                status_text(&Status {
                    backends: Default::default(),
                    interfaces_lost: vec![],
                    store_problems: vec![],
                    announce: None,
                    fleet: None,
                    ..status.clone()
                }),
            ),
            ("vip list", vip_table(&vips)),
            ("health", backend_table(&backends)),
            ("stats", stats_text(&stats)),
            ("events", events_table(&events)),
            ("config history", history_table(&history)),
            ("a change", revision_text(&history[0])),
            ("fleet status", fleet_text(&fleet_sample())),
        ]
    }

    fn fleet_sample() -> FleetStatus {
        use lb_api::{BackendState, FleetBackend, FleetNode, Refusal};
        let node = |name: &str, running, state| FleetNode {
            node: name.into(),
            running,
            refused: (running < 15).then(|| Refusal {
                revision: 15,
                error: "fleet revision 15:3:13: too big\n  | ring_size = 70001".into(),
            }),
            announced: if running == 15 {
                vec!["web".into()]
            } else {
                vec![]
            },
            withheld: (running < 15).then(|| "the node runs revision 14, its peers run 15".into()),
            backends: vec![FleetBackend {
                vip: "web".into(),
                address: "198.18.0.21".parse().unwrap(),
                state,
            }],
            advertise: None,
            at: "2026-11-29T10:00:00Z".into(),
        };
        let nodes = vec![
            node("lb1", 15, BackendState::Up),
            node("lb2", 15, BackendState::Up),
            node("lb3", 14, BackendState::Down),
        ];
        FleetStatus {
            fleet: "edge".into(),
            head: 15,
            disagreements: lb_api::disagreements(&nodes),
            nodes,
        }
    }

    #[test]
    fn fleet_status_shows_who_is_behind_and_where_nodes_disagree() {
        let text = fleet_text(&fleet_sample());
        println!("{text}");
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_string()
        };
        assert!(row("lb1").contains(" 15 "), "{text}");
        assert!(row("lb3").contains("14 (behind)"), "{text}");
        assert!(
            row("lb3").contains("15: fleet revision 15:3:13: too big"),
            "{text}"
        );
        assert!(
            !text.contains("ring_size = 70001"),
            "only the first line: {text}"
        );
        assert!(
            text.contains("the nodes disagree about these backends:"),
            "{text}"
        );
        let d = row("web");
        assert!(
            d.contains("198.18.0.21") && d.contains("lb1 up, lb2 up, lb3 down"),
            "{text}"
        );
    }

    #[test]
    fn human_output_holds_no_json() {
        for (what, text) in samples() {
            println!("$ lbctl {what}\n{text}");
            for c in ['{', '}', '[', ']', '"'] {
                assert!(!text.contains(c), "{what} shows {c:?}:\n{text}");
            }
        }
    }

    #[test]
    fn status_reads_as_aligned_lines() {
        let (_, text) = &samples()[0];
        let lines: Vec<&str> = text.lines().collect();
        // Every value starts in the same column.
        let column = |l: &str| {
            let key_end = l.find("  ").unwrap();
            key_end + l[key_end..].len() - l[key_end..].trim_start().len()
        };
        assert!(
            lines.iter().all(|l| column(l) == column(lines[0])),
            "{text}"
        );
        for want in [
            "revision         14",
            "backends         6 up, 1 draining",
            "interfaces       eth0, eth1",
            "interfaces lost  eth1 (the NIC is gone; attached again when it returns)",
            "announced        198.18.100.1, 2001:db8::1",
            "node             drained: every route withdrawn (lbctl node resume)",
            "BIRD error       birdc configure failed: no such file",
            "revision store   revision 12 does not read back whole: kept aside",
            "fleet            edge (this node: lb1)",
            "fleet revision   runs 14, the fleet is at 15",
            "etcd             connected",
            "refused          revision 15: fleet revision 15:3:13: ring_capacity is too small",
            "left behind      routes withdrawn: the node runs revision 14, its peers run 15",
            "uptime           1 d 2 h",
        ] {
            assert!(lines.contains(&want), "no {want:?} in:\n{text}");
        }
        let (_, quiet) = &samples()[1];
        assert!(quiet.contains("backends    none\n"), "{quiet}");
        assert!(
            !quiet.contains("announced") && !quiet.contains("lost"),
            "{quiet}"
        );
    }

    #[test]
    fn tables_say_yes_no_and_all() {
        let (_, vips) = &samples()[2];
        let row = |name: &str| {
            vips.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            row("web"),
            "web 198.18.100.1 80 tcp round_robin ipip 3 2 no yes"
        );
        assert_eq!(
            row("all-ports"),
            "all-ports 198.18.100.1 all tcp round_robin ipip 3 2 yes no: 1 usable backend, below 2"
        );
        let (_, events) = &samples()[5];
        assert!(events.starts_with("AT "), "{events}");
        // A node-wide event: no VIP, no backend.
        let node_wide: Vec<&str> = events.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(node_wide[1..4], ["-", "-", "configuration"], "{events}");
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(185), "3 min 5 s");
        assert_eq!(duration(7_620), "2 h 7 min");
        assert_eq!(duration(273_600), "3 d 4 h");
    }

    #[test]
    fn a_change_names_its_revision() {
        assert_eq!(
            revision_text(&meta(3, "api: config.apply", "b2 heavier")),
            "revision  3\nsource    api: config.apply\nat        2026-11-26T10:02:30.414Z\ncomment   b2 heavier\n"
        );
        assert!(!revision_text(&meta(3, "file", "")).contains("comment"));
    }
}

fn config_rollback(ctx: &Ctx, to: Option<u64>, at: Option<&str>) -> Result<String, Fail> {
    let target = match (to, at) {
        (Some(id), _) => RollbackTarget::Revision(id),
        (None, Some(at)) => RollbackTarget::Time(at.to_string()),
        (None, None) => return Err(Fail::new(2, "give --to REVISION or --at TIME")),
    };
    ctx.change(
        Request::ConfigRollback {
            target,
            comment: String::new(),
        },
        None,
    )
}

fn config_export(ctx: &Ctx, file: &Path) -> Result<String, Fail> {
    let revisions: Vec<ExportedRevision> =
        ctx.client.call_typed(&Request::ConfigExport {}, None)?;
    std::fs::write(file, pretty(&revisions))
        .map_err(|e| Fail::new(1, format!("cannot write {}: {e}", file.display())))?;
    Ok(format!(
        "{} revisions written to {}\n",
        revisions.len(),
        file.display()
    ))
}

fn config_import(ctx: &Ctx, file: &Path) -> Result<String, Fail> {
    let revisions: Vec<ExportedRevision> =
        serde_json::from_str(&read_file(file)?).map_err(|e| {
            Fail::new(
                1,
                format!(
                    "{} is not an export (`lbctl config export` writes one): {e}",
                    file.display()
                ),
            )
        })?;
    ctx.change(
        Request::ConfigImport {
            revisions,
            comment: String::new(),
        },
        None,
    )
}

/// Samples of one scrape: (metric, sorted labels) -> value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Where `top` reads the metrics.
enum Source<'a> {
    /// The `metrics` operation on the control socket: works wherever the other commands
    /// do, whatever address (or namespace) `/metrics` listens on.
    Socket(&'a Client),
    /// `/metrics` over HTTP at this address (`--metrics`).
    Http(&'a str),
}

impl Source<'_> {
    fn fetch(&self) -> Result<Samples, Fail> {
        match self {
            Source::Socket(client) => fetch_socket(client),
            Source::Http(addr) => fetch(addr).map_err(|e| Fail::new(3, format!("top: {e:#}"))),
        }
    }
}

/// The metrics through the `metrics` operation; a failure says what failed and that
/// `--metrics ADDR` reads the HTTP endpoint instead.
fn fetch_socket(client: &Client) -> Result<Samples, Fail> {
    const INSTEAD: &str = "or read the daemon's /metrics over HTTP instead: lbctl top --metrics ADDR (its [daemon] metrics_listen, 127.0.0.1:9469 by default)";
    match client.call_typed::<MetricsText>(&Request::Metrics {}, None) {
        Ok(m) => Ok(parse(&m.text)),
        // A daemon older than the `metrics` operation.
        Err(ClientError::Refused(e))
            if e.code == ErrorCode::BadRequest && e.message.contains("unknown operation") =>
        {
            Err(Fail::new(
                3,
                format!(
                    "top: the daemon at {} does not serve metrics on its control socket (an lbd older than this lbctl); {INSTEAD}",
                    client.socket().display()
                ),
            ))
        }
        Err(e) => {
            let Fail { code, message } = Fail::from(e);
            Err(Fail::new(code, format!("top: {message}; {INSTEAD}")))
        }
    }
}

fn fetch(addr: &str) -> Result<Samples> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to the daemon's metrics at {addr}; is lbd running, and is [daemon] metrics_listen {addr}?"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lbctl\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no HTTP response from the metrics address")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "metrics answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(parse(body))
}

/// The Prometheus text format's sample lines (comments skipped).
fn parse(body: &str) -> Samples {
    let mut out = Samples::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut l: Vec<(String, String)> = labels
            .split("\",")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim_matches(',').to_string(),
                    v.trim_matches('"').to_string(),
                )
            })
            .collect();
        l.sort();
        out.insert((name.to_string(), l), value);
    }
    out
}

fn label<'a>(labels: &'a [(String, String)], k: &str) -> &'a str {
    labels
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn rate(a: &Samples, b: &Samples, key: &(String, Vec<(String, String)>), secs: f64) -> f64 {
    (b.get(key).copied().unwrap_or(0.0) - a.get(key).copied().unwrap_or(0.0)).max(0.0) / secs
}

fn view(a: &Samples, b: &Samples, secs: f64) -> String {
    let mut out = String::new();
    let series = |name: &str| {
        b.keys()
            .filter(move |(n, _)| n == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    out.push_str(&format!(
        "{:<16} {:>12} {:>12} {:>12}\n",
        "VIP", "packets/s", "Mbit/s", "new flows/s"
    ));
    for k in series("lb_vip_packets_total") {
        let vip = label(&k.1, "vip").to_string();
        let bytes = ("lb_vip_bytes_total".to_string(), k.1.clone());
        let flows = ("lb_vip_new_flows_total".to_string(), k.1.clone());
        out.push_str(&format!(
            "{vip:<16} {:>12.1} {:>12.3} {:>12.1}\n",
            rate(a, b, &k, secs),
            rate(a, b, &bytes, secs) * 8.0 / 1e6,
            rate(a, b, &flows, secs)
        ));
    }
    out.push_str(&format!(
        "\n{:<16} {:<40} {:>10} {:>12}\n",
        "VIP", "backend", "state", "packets/s"
    ));
    let mut states: BTreeMap<(String, String), String> = BTreeMap::new();
    for (k, v) in b
        .iter()
        .filter(|((n, _), v)| n == "lb_backend_state" && **v == 1.0)
    {
        let _ = v;
        states.insert(
            (label(&k.1, "vip").into(), label(&k.1, "backend").into()),
            label(&k.1, "state").into(),
        );
    }
    for k in series("lb_backend_packets_total") {
        let (vip, be) = (
            label(&k.1, "vip").to_string(),
            label(&k.1, "backend").to_string(),
        );
        let state = states
            .get(&(vip.clone(), be.clone()))
            .cloned()
            .unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "{vip:<16} {be:<40} {state:>10} {:>12.1}\n",
            rate(a, b, &k, secs)
        ));
    }
    out.push_str(&format!("\n{:<24} {:>12}\n", "reason", "packets/s"));
    for k in series("lb_dataplane_packets_total") {
        let r = rate(a, b, &k, secs);
        if r > 0.0 {
            out.push_str(&format!("{:<24} {r:>12.1}\n", label(&k.1, "reason")));
        }
    }
    out
}

fn top(source: &Source, interval: f64, once: bool) -> Result<(), Fail> {
    let period = Duration::from_secs_f64(interval.max(0.1));
    let mut prev = source.fetch()?;
    let mut at = Instant::now();
    loop {
        std::thread::sleep(period);
        let now = source.fetch()?;
        let secs = at.elapsed().as_secs_f64();
        let frame = view(&prev, &now, secs);
        if once {
            print!("{frame}");
            return Ok(());
        }
        // Redraw in place.
        print!("\x1b[H\x1b[2J{frame}");
        std::io::stdout()
            .flush()
            .map_err(|e| Fail::new(1, format!("writing to stdout: {e}")))?;
        (prev, at) = (now, Instant::now());
    }
}

/// `lbctl`'s command-line definition (for its man pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Whether `args` (without the program name) is a valid `lbctl` command line.
pub fn parses(args: &[&str]) -> Result<(), String> {
    Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Fail { code, message }) => {
            eprintln!("lbctl: {message}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_computes_rates() {
        let a = parse(
            "# HELP x\nlb_vip_packets_total{vip=\"web\"} 100\nlb_backend_state{vip=\"web\",backend=\"10.0.0.1\",state=\"up\"} 1\n",
        );
        let b = parse(
            "lb_vip_packets_total{vip=\"web\"} 300\nlb_backend_state{vip=\"web\",backend=\"10.0.0.1\",state=\"up\"} 1\nlb_backend_packets_total{vip=\"web\",backend=\"10.0.0.1\"} 5\n",
        );
        let v = view(&a, &b, 2.0);
        assert!(v.contains("web") && v.contains("100.0"), "{v}");
        assert!(v.contains("10.0.0.1") && v.contains("up"), "{v}");
    }

    /// A daemon on a socket in a fresh directory that answers one request with `answer`;
    /// the request line comes back through the handle.
    fn fake_daemon(name: &str, answer: &'static str) -> (Client, std::thread::JoinHandle<String>) {
        use std::{io::BufRead, os::unix::net::UnixListener};
        let dir = std::env::temp_dir().join(format!("lbctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lbd.sock");
        let l = UnixListener::bind(&path).unwrap();
        let served = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            line
        });
        (Client::new(path), served)
    }

    #[test]
    fn top_reads_the_metrics_over_the_socket() {
        let (client, served) = fake_daemon(
            "metrics",
            "{\"data\":{\"text\":\"# TYPE lb_vip_packets counter\\nlb_vip_packets_total{vip=\\\"web\\\"} 42\\n\"},\"ok\":true,\"v\":1}\n",
        );
        let samples = Source::Socket(&client)
            .fetch()
            .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(
            served.join().unwrap(),
            "{\"v\":1,\"op\":\"metrics\",\"args\":{}}\n"
        );
        let key = (
            "lb_vip_packets_total".to_string(),
            vec![("vip".to_string(), "web".to_string())],
        );
        assert_eq!(samples.get(&key), Some(&42.0), "{samples:?}");
    }

    #[test]
    fn top_says_what_failed_and_how_to_read_the_endpoint_instead() {
        // No daemon.
        let gone = Client::new("/nonexistent/lbd.sock");
        let Err(f) = Source::Socket(&gone).fetch() else {
            panic!("no daemon, yet an answer")
        };
        assert_eq!(f.code, 3);
        assert!(
            f.message
                .contains("cannot reach the daemon at /nonexistent/lbd.sock")
                && f.message.contains("lbctl top --metrics ADDR"),
            "{}",
            f.message
        );
        // A daemon older than the operation.
        let (old, served) = fake_daemon(
            "old",
            "{\"error\":{\"code\":\"bad_request\",\"message\":\"unknown operation \\\"metrics\\\"; the operations are status\"},\"ok\":false,\"v\":1}\n",
        );
        let Err(f) = Source::Socket(&old).fetch() else {
            panic!("an old daemon, yet an answer")
        };
        served.join().unwrap();
        assert_eq!(f.code, 3);
        assert!(
            f.message
                .contains("does not serve metrics on its control socket")
                && f.message.contains("lbctl top --metrics ADDR"),
            "{}",
            f.message
        );
    }
}
