//! The docs cannot rot: every `lbd` and `lbctl` command line in README.md and docs/*.md is
//! checked against the real command-line parsers, every `cargo xtask` subcommand named
//! there exists, and the annotated example configuration validates. (What the commands do
//! is exercised by the other tests and the demo.)

use std::path::Path;

fn doc_files() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            files.push(e.path());
        }
    }
    files
}

/// Command lines in fenced code blocks, with leading `$ `/`# ` prompts and `sudo` removed.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        // `a && b` and `a; b` are two commands; pipes, redirections and comments end one.
        let t = t.split(" #").next().unwrap_or("");
        for part in t.split("&&").flat_map(|p| p.split(';')) {
            let p = part
                .trim()
                .trim_start_matches("$ ")
                .trim_start_matches("sudo ");
            let p = p.split(['|', '>', '#']).next().unwrap_or("").trim();
            // A synopsis (`lbctl [--socket PATH] COMMAND ...`) is not a command line.
            if p.contains("[--") || p.ends_with("...") {
                continue;
            }
            if p.starts_with("lbd ")
                || p.starts_with("lbctl ")
                || p.starts_with("cargo xtask ")
                || p.contains("--bin lbctl --")
                || p.contains("--bin lbd --")
            {
                out.push(p.to_string());
            }
        }
    }
    out
}

/// Split like a shell would for these simple lines (quotes kept together).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ' ') => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn every_documented_command_parses() {
    let mut checked = 0;
    let mut bad = Vec::new();
    for f in doc_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        for cmd in commands(&text) {
            let w = words(&cmd);
            let (tool, args): (&str, Vec<&str>) =
                if let Some(i) = w.iter().position(|x| x == "--bin") {
                    // cargo run ... --bin lbctl -- ARGS
                    let tool = w[i + 1].as_str();
                    let rest = w
                        .iter()
                        .position(|x| x == "--")
                        .map(|j| w[j + 1..].iter().map(String::as_str).collect())
                        .unwrap_or_default();
                    (tool, rest)
                } else if w[0] == "cargo" {
                    ("xtask", w[2..].iter().map(String::as_str).collect())
                } else {
                    (w[0].as_str(), w[1..].iter().map(String::as_str).collect())
                };
            let res = match tool {
                "lbd" => lb_userspace::cli::parses(&args),
                "lbctl" => lb_userspace::ctl::parses(&args),
                "xtask" => match args.first().copied() {
                    Some("setup" | "test" | "demo" | "bench") => Ok(()),
                    other => Err(format!("no xtask subcommand {other:?}")),
                },
                _ => Ok(()),
            };
            checked += 1;
            if let Err(e) = res {
                bad.push(format!(
                    "{}: `{cmd}`: {}",
                    f.display(),
                    e.lines().next().unwrap_or("")
                ));
            }
        }
    }
    println!("{checked} documented commands checked");
    assert!(checked >= 10, "only {checked} commands found in the docs");
    assert!(
        bad.is_empty(),
        "documented commands that do not parse:\n{}",
        bad.join("\n")
    );
}

/// Every documented `lbctl` command, run against a real daemon (VIP `web`, backends
/// 198.18.0.21-23, as in the docs' examples), in the order the docs give them.
#[test]
fn documented_lbctl_commands_run() {
    use lb_common::Forward;
    use lb_tests::{
        daemon::Daemon,
        topology::{Topology, VIP4},
    };
    const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
    const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");
    const LBCTL: &str = env!("CARGO_BIN_EXE_lbt-lbctl");
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut cfg = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\n\n[dataplane]\nflows = 65536\nring_capacity = 262148\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\n[vip.health]\nkind = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 150\n"
    );
    for a in ["198.18.0.21", "198.18.0.22", "198.18.0.23"] {
        cfg.push_str(&format!("[[vip.backend]]\naddress = \"{a}\"\n"));
    }
    let mut d = Daemon::start(&t, LBD, &cfg);
    d.wait_served(&t, &format!("{VIP4}:80"));
    let backup = d.dir.join("revisions.json");
    let run = |args: &[String]| {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &t.lb_host.ns.name, LBCTL, "--socket"])
            .arg(d.socket())
            .args(args);
        cmd.output().unwrap()
    };
    // Revisions up to 3 exist before `config rollback --to 3` comes up.
    for w in ["110", "120"] {
        assert!(
            run(&[
                "backend".into(),
                "weight".into(),
                "web".into(),
                "198.18.0.22".into(),
                w.into()
            ])
            .status
            .success()
        );
    }
    let mut ran = 0;
    let mut seen = std::collections::BTreeSet::new();
    for f in doc_files() {
        for cmd in commands(&std::fs::read_to_string(&f).unwrap()) {
            let w = words(&cmd);
            if w[0] != "lbctl" || w.iter().any(|x| x.starts_with('[')) || !seen.insert(cmd.clone())
            {
                continue;
            }
            // The docs' files and revision numbers, mapped onto this daemon: a `*.toml` is the
            // configuration in force, `--base N` the current revision.
            let shown = run(&["--json".into(), "config".into(), "show".into()]);
            let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
            let toml = d.dir.join("doc.toml");
            std::fs::write(&toml, shown["config"].as_str().unwrap()).unwrap();
            let current = shown["revision"].to_string();
            let mut args: Vec<String> = Vec::new();
            for a in &w[1..] {
                let a = if a.ends_with("lbd-revisions.json") {
                    backup.to_str().unwrap().to_string()
                } else if a.ends_with(".toml") {
                    toml.to_str().unwrap().to_string()
                } else if args.last().map(String::as_str) == Some("--base") {
                    current.clone()
                } else {
                    a.clone()
                };
                args.push(a);
            }
            if args.first().map(String::as_str) == Some("top") {
                args.push("--once".into()); // interactive otherwise
            }
            let o = run(&args);
            assert!(
                o.status.success(),
                "{}: `{cmd}` failed: {}{}",
                f.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            ran += 1;
        }
    }
    println!("{ran} documented lbctl commands ran against a daemon");
    assert!(ran >= 10, "only {ran}");
    // `lbd check` as documented, on this daemon's file.
    let o = std::process::Command::new(LBD)
        .args(["check", "-c"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    d.assert_running();
}
