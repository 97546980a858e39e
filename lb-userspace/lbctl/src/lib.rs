//! `lbctl`: the operator's command line, a client of the daemon's control API (and of
//! its `/metrics` for `top`).
//!
//! Exit codes: 0 done; 1 the daemon refused (invalid change, unknown VIP or backend,
//! conflicting revision, bad request); 2 usage error; 3 the daemon cannot be reached;
//! 4 permission denied.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{Map, Value, json};

use lb_api::{Request, VERSION, call};
use lb_clidoc::{self as clidoc, ManArgs};

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
        /// The daemon's metrics address ([daemon] metrics_listen).
        #[arg(long, default_value = "127.0.0.1:9469")]
        metrics: String,
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
    List,
    /// Add a VIP (backends are added with `backend add`).
    Add {
        name: String,
        address: IpAddr,
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, default_value = "tcp")]
        protocol: String,
        #[arg(long, default_value = "maglev")]
        scheduler: String,
        #[arg(long, default_value = "ipip")]
        forward: String,
    },
    Remove {
        name: String,
    },
    /// Change VIP keys: KEY=VALUE (scheduler, forward, no_backend, min_primaries, ring_size).
    Set {
        name: String,
        #[arg(required = true)]
        settings: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BackendCmd {
    List {
        vip: Option<String>,
    },
    Add {
        vip: String,
        address: IpAddr,
        #[arg(long)]
        weight: Option<u32>,
        /// primary or backup.
        #[arg(long)]
        role: Option<String>,
        /// Next-hop MAC, for L2 DSR.
        #[arg(long)]
        mac: Option<String>,
    },
    Remove {
        vip: String,
        address: IpAddr,
    },
    /// No new flows; established flows stay.
    Drain {
        vip: String,
        address: IpAddr,
    },
    /// Undo drain and disable.
    Enable {
        vip: String,
        address: IpAddr,
    },
    /// Down for the dataplane: its flows move.
    Disable {
        vip: String,
        address: IpAddr,
    },
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
    Validate {
        file: PathBuf,
    },
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
    Diff {
        from: u64,
        to: Option<u64>,
    },
    History,
    /// Go back to a revision, or to the configuration in force at a time (RFC 3339).
    Rollback {
        #[arg(long, conflicts_with = "at", required_unless_present = "at")]
        to: Option<u64>,
        #[arg(long)]
        at: Option<String>,
    },
    /// Write every revision to a file (backup).
    Export {
        file: PathBuf,
    },
    /// Load revisions exported elsewhere and apply the newest (restore).
    Import {
        file: PathBuf,
    },
}

/// A failure with its exit code.
struct Fail(u8, String);

fn request(cli: &Cli, op: &str, args: Value, base: Option<u64>) -> Result<Value, Fail> {
    let req = Request {
        v: VERSION,
        op: op.into(),
        args,
        base_revision: base,
    };
    let answer = call(&cli.socket, &req).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::PermissionDenied { 4 } else { 3 };
        Fail(code, format!("cannot reach the daemon at {}: {e} (is lbd running? is --socket right? are you root?)", cli.socket.display()))
    })?;
    if answer["ok"] == json!(true) {
        return Ok(answer);
    }
    let code = answer["error"]["code"].as_str().unwrap_or("internal");
    let msg = answer["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_string();
    Err(Fail(
        if code == "permission" { 4 } else { 1 },
        format!("{code}: {msg}"),
    ))
}

/// A local file the command names (exit 2 when unusable: it is the command line's fault).
fn read_file(path: &PathBuf) -> Result<String, Fail> {
    std::fs::read_to_string(path)
        .map_err(|e| Fail(2, format!("cannot read {}: {e}", path.display())))
}

fn table(rows: &[Value], cols: &[(&str, &str)]) -> String {
    let cell = |v: &Value, k: &str| match &v[k] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|(k, h)| {
            rows.iter()
                .map(|r| cell(r, k).len())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let mut out = String::new();
    for ((_, h), w) in cols.iter().zip(&widths) {
        out.push_str(&format!("{h:<w$}  "));
    }
    out = out.trim_end().to_string() + "\n";
    for r in rows {
        let mut line = String::new();
        for ((k, _), w) in cols.iter().zip(&widths) {
            line.push_str(&format!("{:<w$}  ", cell(r, k)));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn backend_change(cli: &Cli, vip: &str, address: &IpAddr, fields: Value) -> Result<Value, Fail> {
    let mut args = json!({"vip": vip, "address": address.to_string()});
    for (k, v) in fields.as_object().cloned().unwrap_or_default() {
        args[k] = v;
    }
    request(cli, "backend.set", args, None)
}

fn changed(answer: &Value, json_out: bool) -> String {
    let d = &answer["data"];
    if json_out {
        return format!("{}\n", serde_json::to_string_pretty(d).unwrap_or_default());
    }
    format!(
        "revision {} ({})\n",
        d["revision"],
        d["source"].as_str().unwrap_or("")
    )
}

fn run(cli: &Cli) -> Result<String, Fail> {
    let show = |answer: Value, human: &dyn Fn(&Value) -> String| -> String {
        if cli.json {
            format!(
                "{}\n",
                serde_json::to_string_pretty(&answer["data"]).unwrap_or_default()
            )
        } else {
            human(&answer["data"])
        }
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    Ok(match &cli.cmd {
        Cmd::Status => show(request(cli, "status", json!({}), None)?, &|d| {
            format!(
                "revision {}\nVIPs {}\nbackends {}\ninterfaces {}\nuptime {} s\n",
                d["revision"], d["vips"], d["backends"], d["interfaces"], d["uptime_s"]
            )
        }),
        Cmd::Vip { cmd: VipCmd::List } => show(request(cli, "vip.list", json!({}), None)?, &|d| {
            table(
                &list(d),
                &[
                    ("name", "NAME"),
                    ("address", "ADDRESS"),
                    ("port", "PORT"),
                    ("protocol", "PROTO"),
                    ("scheduler", "SCHEDULER"),
                    ("forward", "FORWARD"),
                    ("backends", "BACKENDS"),
                    ("usable", "USABLE"),
                    ("on_backup", "ON BACKUP"),
                ],
            )
        }),
        Cmd::Vip {
            cmd:
                VipCmd::Add {
                    name,
                    address,
                    port,
                    protocol,
                    scheduler,
                    forward,
                },
        } => {
            let args = json!({"name": name, "address": address.to_string(), "port": port, "protocol": protocol, "scheduler": scheduler, "forward": forward});
            changed(&request(cli, "vip.add", args, None)?, cli.json)
        }
        Cmd::Vip {
            cmd: VipCmd::Remove { name },
        } => changed(
            &request(cli, "vip.remove", json!({"name": name}), None)?,
            cli.json,
        ),
        Cmd::Vip {
            cmd: VipCmd::Set { name, settings },
        } => {
            let mut args = Map::new();
            args.insert("name".into(), json!(name));
            for kv in settings {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| Fail(2, format!("{kv:?}: write KEY=VALUE")))?;
                let v = v
                    .parse::<i64>()
                    .map(Value::from)
                    .or_else(|_| v.parse::<bool>().map(Value::from))
                    .unwrap_or_else(|_| json!(v));
                args.insert(k.into(), v);
            }
            changed(
                &request(cli, "vip.set", Value::Object(args), None)?,
                cli.json,
            )
        }
        Cmd::Backend {
            cmd: BackendCmd::List { vip },
        }
        | Cmd::Health { vip } => {
            let args = vip.as_ref().map(|v| json!({"vip": v})).unwrap_or(json!({}));
            show(request(cli, "backend.list", args, None)?, &|d| {
                table(
                    &list(d),
                    &[
                        ("vip", "VIP"),
                        ("address", "BACKEND"),
                        ("role", "ROLE"),
                        ("weight", "WEIGHT"),
                        ("effective_weight", "NOW"),
                        ("state", "STATE"),
                        ("since_s", "FOR (s)"),
                        ("last_check_s", "CHECKED (s ago)"),
                        ("latency_ms", "LATENCY (ms)"),
                        ("reason", "REASON"),
                    ],
                )
            })
        }
        Cmd::Backend {
            cmd:
                BackendCmd::Add {
                    vip,
                    address,
                    weight,
                    role,
                    mac,
                },
        } => {
            let mut args = json!({"vip": vip, "address": address.to_string()});
            if let Some(w) = weight {
                args["weight"] = json!(w);
            }
            if let Some(r) = role {
                args["role"] = json!(r);
            }
            if let Some(m) = mac {
                args["mac"] = json!(m);
            }
            changed(&request(cli, "backend.add", args, None)?, cli.json)
        }
        Cmd::Backend {
            cmd: BackendCmd::Remove { vip, address },
        } => changed(
            &request(
                cli,
                "backend.remove",
                json!({"vip": vip, "address": address.to_string()}),
                None,
            )?,
            cli.json,
        ),
        Cmd::Backend {
            cmd: BackendCmd::Drain { vip, address },
        } => changed(
            &backend_change(cli, vip, address, json!({"drain": true}))?,
            cli.json,
        ),
        Cmd::Backend {
            cmd: BackendCmd::Enable { vip, address },
        } => changed(
            &backend_change(cli, vip, address, json!({"drain": null, "disabled": null}))?,
            cli.json,
        ),
        Cmd::Backend {
            cmd: BackendCmd::Disable { vip, address },
        } => changed(
            &backend_change(cli, vip, address, json!({"disabled": true}))?,
            cli.json,
        ),
        Cmd::Backend {
            cmd:
                BackendCmd::Weight {
                    vip,
                    address,
                    weight,
                },
        } => changed(
            &backend_change(cli, vip, address, json!({"weight": weight}))?,
            cli.json,
        ),
        Cmd::Stats => show(request(cli, "stats", json!({}), None)?, &|d| {
            let mut out = String::from("REASON                  PACKETS\n");
            for (k, v) in d["reasons"].as_object().cloned().unwrap_or_default() {
                if v != json!(0) {
                    out.push_str(&format!("{k:<22}  {v}\n"));
                }
            }
            out.push('\n');
            out.push_str(&table(
                &list(&d["vips"]),
                &[
                    ("vip", "VIP"),
                    ("packets", "PACKETS"),
                    ("bytes", "BYTES"),
                    ("new_flows", "NEW FLOWS"),
                ],
            ));
            out.push('\n');
            out.push_str(&table(
                &list(&d["backends"]),
                &[
                    ("vip", "VIP"),
                    ("address", "BACKEND"),
                    ("packets", "PACKETS"),
                    ("bytes", "BYTES"),
                ],
            ));
            out
        }),
        Cmd::Events { limit } => show(
            request(cli, "events", json!({"limit": limit}), None)?,
            &|d| {
                list(d)
                    .iter()
                    .map(|e| {
                        format!(
                            "{}  {}  {}  {}\n",
                            e["at"].as_str().unwrap_or(""),
                            e["vip"].as_str().unwrap_or(""),
                            e["backend"].as_str().unwrap_or("-"),
                            e["what"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            },
        ),
        Cmd::Config { cmd } => match cmd {
            ConfigCmd::Show { revision } => {
                let args = revision
                    .map(|r| json!({"revision": r}))
                    .unwrap_or(json!({}));
                show(request(cli, "config.show", args, None)?, &|d| {
                    d["config"].as_str().unwrap_or("").to_string()
                })
            }
            ConfigCmd::Validate { file } => {
                request(
                    cli,
                    "config.validate",
                    json!({"config": read_file(file)?, "name": file.display().to_string()}),
                    None,
                )?;
                format!("{}: valid\n", file.display())
            }
            ConfigCmd::Apply {
                file,
                comment,
                base,
            } => changed(
                &request(
                    cli,
                    "config.apply",
                    json!({"config": read_file(file)?, "comment": comment}),
                    *base,
                )?,
                cli.json,
            ),
            ConfigCmd::Diff { from, to } => {
                let mut args = json!({"from": from});
                if let Some(t) = to {
                    args["to"] = json!(t);
                }
                show(request(cli, "config.diff", args, None)?, &|d| {
                    d["diff"].as_str().unwrap_or("").to_string()
                })
            }
            ConfigCmd::History => show(request(cli, "config.history", json!({}), None)?, &|d| {
                table(
                    &list(d),
                    &[
                        ("revision", "REVISION"),
                        ("at", "AT"),
                        ("source", "SOURCE"),
                        ("comment", "COMMENT"),
                    ],
                )
            }),
            ConfigCmd::Rollback { to, at } => {
                let args = match (to, at) {
                    (Some(t), _) => json!({"to": t}),
                    (None, Some(a)) => json!({"at": a}),
                    (None, None) => return Err(Fail(2, "give --to REVISION or --at TIME".into())),
                };
                changed(&request(cli, "config.rollback", args, None)?, cli.json)
            }
            ConfigCmd::Export { file } => {
                let answer = request(cli, "config.export", json!({}), None)?;
                let text = serde_json::to_string_pretty(&answer["data"]).unwrap_or_default();
                std::fs::write(file, text)
                    .map_err(|e| Fail(1, format!("cannot write {}: {e}", file.display())))?;
                format!(
                    "{} revisions written to {}\n",
                    answer["data"].as_array().map(Vec::len).unwrap_or(0),
                    file.display()
                )
            }
            ConfigCmd::Import { file } => {
                let revisions: Value = serde_json::from_str(&read_file(file)?)
                    .map_err(|e| Fail(1, format!("{} is not an export: {e}", file.display())))?;
                changed(
                    &request(cli, "config.import", json!({"revisions": revisions}), None)?,
                    cli.json,
                )
            }
        },
        Cmd::Top {
            metrics,
            interval,
            once,
        } => {
            top(metrics, *interval, *once).map_err(|e| Fail(3, format!("{e:#}")))?;
            String::new()
        }
        Cmd::Completions { shell } => clidoc::completions(Cli::command(), *shell),
        Cmd::Man(args) => args
            .run(Cli::command(), "lbd")
            .map_err(|e| Fail(1, e.to_string()))?,
    })
}

/// Samples of one scrape: (metric, sorted labels) -> value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

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

fn top(metrics: &str, interval: f64, once: bool) -> Result<()> {
    let period = Duration::from_secs_f64(interval.max(0.1));
    let mut prev = fetch(metrics)?;
    let mut at = Instant::now();
    loop {
        std::thread::sleep(period);
        let now = fetch(metrics)?;
        let secs = at.elapsed().as_secs_f64();
        let frame = view(&prev, &now, secs);
        if once {
            print!("{frame}");
            return Ok(());
        }
        // Redraw in place.
        print!("\x1b[H\x1b[2J{frame}");
        std::io::stdout().flush()?;
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
        Err(Fail(code, msg)) => {
            eprintln!("lbctl: {msg}");
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
}
