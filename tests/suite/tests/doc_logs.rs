//! The docs' log lines are the daemon's: every block marked `<!-- docs-test: log -->` in
//! README.md and docs/*.md is a list of log lines, and each must equal a line a real daemon
//! wrote here, once the parts that vary from run to run are masked on both sides (see
//! [`mask`]). A block that looks like a log but carries no marker fails too, so a quoted log
//! line cannot escape the comparison.
//!
//! One daemon, in the test topology, does what the quoted lines are about: an agent drains a
//! backend; a backend's server stops and comes back (the failover lines, and the backup pool
//! taking over and handing back); a packet for a VIP without backends is dropped (the
//! dataplane's aya-log line). Then a second run with `--log-json` adopts the pinned state
//! (the JSON example). A new quoted line that none of this produces fails the test, naming the
//! line: extend the run below until the daemon writes it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_common::Forward;
use lb_tests::{
    daemon::Daemon,
    docblocks,
    topology::{Topology, VIP4},
};
use serde_json::Value;

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");

const MARK: &str = "log";

/// `web` as the docs' examples have it (backends 198.18.0.21 and .22, a backup .23; HTTP
/// checks and an agent), with `min_primaries = 2` so that one primary down brings the backup
/// pool in; and `empty`, a VIP without backends, whose packets the dataplane drops.
fn config() -> String {
    let mut c = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\n\n\
         [dataplane]\nflows = 65536\nring_capacity = 262148\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\nmin_primaries = 2\n\n\
         [vip.health]\nkind = \"http\"\nport = 8081\npath = \"/healthz\"\ninterval_ms = 200\n\
         timeout_ms = 150\nrise = 2\nfall = 2\nagent_port = 8082\n"
    );
    for (a, extra) in [
        ("198.18.0.21", ""),
        ("198.18.0.22", ""),
        ("198.18.0.23", "role = \"backup\"\n"),
    ] {
        c.push_str(&format!("\n[[vip.backend]]\naddress = \"{a}\"\n{extra}"));
    }
    c.push_str(&format!(
        "\n[[vip]]\nname = \"empty\"\naddress = \"{VIP4}\"\nport = 81\n"
    ));
    c
}

/// A leading RFC 3339 time (`2026-11-26T09:41:07.518873Z`), if `s` starts with one: its
/// length.
fn leading_time(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let shape = digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && at(10, b'T')
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut i = 19;
    if at(i, b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    at(i, b'Z').then_some(i + 1)
}

/// Replace every number (digits, perhaps with a fraction) that is directly followed by
/// `unit` with `N`.
fn mask_before(s: &str, unit: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(unit) {
        let head = &rest[..i];
        let start = head
            .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map_or(0, |j| j + 1);
        let number = &head[start..];
        if number.chars().any(|c| c.is_ascii_digit()) {
            out.push_str(&head[..start]);
            out.push('N');
        } else {
            out.push_str(head);
        }
        out.push_str(unit);
        rest = &rest[i + unit.len()..];
    }
    out.push_str(rest);
    out
}

/// What varies from one run to the next, masked: the time a line starts with, durations
/// (`8.44 ms`), ring slot counts (`21859 ring slots`); in a JSON line, its `timestamp` and
/// the numbers among its fields (counts of what the run had). Everything else (level,
/// target, message, field names and values) is compared as written.
fn mask(line: &str) -> String {
    let line = line.trim();
    if line.starts_with('{') {
        let Ok(mut v) = serde_json::from_str::<Value>(line) else {
            return line.to_string();
        };
        if let Some(t) = v.get_mut("timestamp") {
            *t = Value::from("TIME");
        }
        if let Some(Value::Object(fields)) = v.get_mut("fields") {
            for x in fields.values_mut().filter(|x| x.is_number()) {
                *x = Value::from("N");
            }
        }
        return v.to_string();
    }
    let line = match leading_time(line) {
        Some(n) => format!("TIME{}", &line[n..]),
        None => line.to_string(),
    };
    [" ms", " ring slots"]
        .iter()
        .fold(line, |l, unit| mask_before(&l, unit))
}

/// Whether `line` is a log line as the daemon writes them: text (`TIME  LEVEL target: ...`,
/// the time perhaps left out) or a JSON object with `level`, `target` and `fields`.
fn is_log_line(line: &str) -> bool {
    let line = line.trim();
    if line.starts_with('{') {
        return serde_json::from_str::<Value>(line).is_ok_and(|v| {
            v.get("level").is_some() && v.get("target").is_some() && v.get("fields").is_some()
        });
    }
    let rest = match leading_time(line) {
        Some(n) => line[n..].trim_start(),
        None => line,
    };
    let mut words = rest.split(' ');
    matches!(
        words.next(),
        Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR")
    ) && words.next().is_some_and(|target| {
        target.ends_with(':')
            && target[..target.len() - 1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    })
}

/// The lines of the `log` blocks, each with where it is.
fn quoted() -> Vec<(String, String)> {
    docblocks::marked(MARK)
        .iter()
        .flat_map(|b| {
            b.lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    (
                        format!("{}:{}", b.file.display(), b.line + 1 + i),
                        l.trim().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every log block is marked, and a marked block holds log lines only.
#[test]
fn every_quoted_log_block_is_marked() {
    let mut bad = Vec::new();
    let mut marked = 0;
    for b in docblocks::blocks() {
        if b.lang == "sh" {
            continue;
        }
        let lines = || b.lines.iter().filter(|l| !l.trim().is_empty());
        if b.is_mark(MARK) {
            marked += 1;
            bad.extend(
                lines()
                    .filter(|l| !is_log_line(l))
                    .map(|l| format!("{}: not a log line in a `{MARK}` block: {l}", b.at())),
            );
        } else if let Some(l) = lines().find(|l| is_log_line(l)) {
            bad.push(format!(
                "{}: a log line in a block without `{} {MARK} -->` before it, so no test \
                 compares it with what the daemon writes: {l}",
                b.at(),
                docblocks::MARK
            ));
        }
    }
    println!("{marked} log blocks");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // The shapes this relies on.
    assert!(is_log_line(
        "2026-11-26T09:59:13.383749Z  WARN lb_xdp::stats: dropped"
    ));
    assert!(is_log_line(
        "INFO lb_control::controller: up -> down: x vip=\"web\""
    ));
    assert!(!is_log_line("up -> draining: agent: drain"));
    assert!(!is_log_line("$ lbctl status"));
}

#[test]
fn masks_what_varies_and_nothing_else() {
    assert_eq!(
        mask(
            "2026-11-26T09:41:07.518873Z  INFO lb_control::controller: up -> down: 2 checks failed; 21846 ring slots written 0.61 ms after the verdict vip=\"web\" backend=198.18.0.21"
        ),
        "TIME  INFO lb_control::controller: up -> down: 2 checks failed; N ring slots written N ms after the verdict vip=\"web\" backend=198.18.0.21"
    );
    assert_eq!(
        mask(
            r#"{"timestamp":"2026-11-26T09:34:28.729056Z","level":"INFO","fields":{"message":"m","vips":1},"target":"t"}"#
        ),
        mask(r#"{"level":"INFO","fields":{"vips":7,"message":"m"},"target":"t","timestamp":"x"}"#),
    );
    assert_ne!(
        mask("backend=Some(198.18.0.21)"),
        mask("backend=198.18.0.21")
    );
}

/// Wait until `path` holds a line with `needle`; the file's text.
fn wait_file(path: &PathBuf, needle: &str, secs: u64) -> String {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < end,
            "{} never held {needle:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lbd run --log-json` on the daemon's configuration, in the balancer's namespace.
fn json_daemon(t: &Topology, d: &Daemon, log: &PathBuf) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.lb_host.ns.name,
            LBD,
            "--log-json",
            "run",
            "-c",
        ])
        .arg(&d.config)
        .env("RUST_LOG", "info,aya=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn the daemon with --log-json")
}

#[test]
fn every_quoted_log_line_is_what_the_daemon_writes() {
    let quoted = quoted();
    let mut t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config());
    let web = format!("{VIP4}:80");
    d.wait_served(&t, &web);

    // The agent drains b2, then takes it back.
    t.control(1, "agent", "drain");
    d.wait_log_line(&["198.18.0.22", "up -> draining: agent: drain"], 10);
    t.control(1, "agent", "ready");
    d.wait_log_line(&["198.18.0.22", "draining -> up"], 10);
    // b1's server stops: down, and the backup pool serves; then it comes back.
    d.wait_log("primaries recovered", 10);
    t.stop_server(0);
    d.wait_log_line(&["198.18.0.21", "up -> down"], 10);
    t.start_server(0);
    d.wait_log_line(&["198.18.0.21", "down -> up"], 10);
    // A packet for the VIP without backends: dropped, and logged through aya-log.
    let (_, failed) = t.requests("--tcp", &format!("{VIP4}:81"), 1);
    assert_eq!(failed, 1);
    d.wait_log("lb_xdp dropped a packet", 10);
    d.assert_running();
    let mut produced: Vec<String> = d.log().lines().map(str::to_string).collect();

    // A second run, logging JSON, adopts what the first pinned.
    d.kill9();
    let json_log = d.dir.join("lbd-json.log");
    let mut json = json_daemon(&t, &d, &json_log);
    let text = wait_file(&json_log, "\"serving\"", 15);
    let _ = json.kill();
    let _ = json.wait();
    produced.extend(text.lines().map(str::to_string));

    let masked: Vec<String> = produced.iter().map(|l| mask(l)).collect();
    let mut missing = Vec::new();
    for (at, line) in &quoted {
        let want = mask(line);
        if let Some(i) = masked.iter().position(|l| *l == want) {
            println!("{at}: written as\n  {}", produced[i]);
            continue;
        }
        // The produced lines most like it: the longest common start after the time.
        let body = |l: &str| l.trim_start_matches("TIME").trim_start().to_string();
        let common = |l: &String| {
            body(&want)
                .chars()
                .zip(body(l).chars())
                .take_while(|(a, b)| a == b)
                .count()
        };
        let mut near: Vec<&String> = masked.iter().collect();
        near.sort_by_key(|l| std::cmp::Reverse(common(l)));
        missing.push(format!(
            "{at}: no log line of the daemon matches\n  docs:     {want}\n{}",
            near.iter()
                .take(3)
                .map(|l| format!("  produced: {l}\n"))
                .collect::<String>()
        ));
    }
    println!(
        "{} quoted log lines, each written by the daemon (of {} lines logged)",
        quoted.len(),
        produced.len()
    );
    assert!(
        missing.is_empty(),
        "log lines in the docs that the daemon does not write (masked: TIME, N). Fix the docs \
         to what it writes, or the daemon if the docs are right; a line nothing here \
         produces needs a step in this test:\n{}",
        missing.join("\n")
    );
}
