//! `lbctl`: the operator's command line. For now: `top`, a live view of rates and health
//! built from the daemon's `/metrics` (the control API and configuration revisions come
//! with issue 4).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Operate the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Top {
            metrics,
            interval,
            once,
        } => top(&metrics, interval, once),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            // 3: the daemon could not be reached (scripts can tell it from a bad request).
            ExitCode::from(3)
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
