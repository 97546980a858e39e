//! The docs cannot rot: every `lbd` and `lbctl` command line in README.md and docs/*.md is
//! checked against the real command-line parsers and every `cargo xtask` subcommand named
//! there exists; every `lbctl` line and every block marked `daemon` runs against a real
//! daemon; blocks marked `gateway`, `backend` and `client` run in fresh network namespaces, with
//! their effects read back; and every `sh` block says which test runs it, or why none can
//! (see `lb_tests::docblocks`). The `install` blocks run in tests/tests/install.rs.

use lb_tests::docblocks::{self, doc_files, words};

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
                "lbd" => lbd::parses(&args),
                "lbctl" => lbctl::parses(&args),
                "lb-demo" => lb_lab::demo::parses(&args),
                "xtask" => match args.first().copied() {
                    Some("setup" | "test" | "demo" | "bench" | "install" | "uninstall" | "deb") => {
                        Ok(())
                    }
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
/// 198.18.0.21 and .22, as in the docs' examples, which add and remove .23), in the order
/// the docs give them.
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
    for a in ["198.18.0.21", "198.18.0.22"] {
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
            // The docs' files, revisions and times, mapped onto this daemon: a `*.toml` is the
            // configuration in force, `--base N` the current revision, a revision this daemon
            // has not reached yet the current one, and `--at TIME` now (the docs' times are
            // from before it started).
            let now = std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .unwrap();
            let now = String::from_utf8_lossy(&now.stdout).trim().to_string();
            let diff = w.get(1..3) == Some(&["config".to_string(), "diff".to_string()][..]);
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
                } else if args.last().map(String::as_str) == Some("--at") {
                    now.clone()
                } else if (diff
                    || matches!(args.last().map(String::as_str), Some("--to" | "--revision")))
                    && a.parse::<u64>()
                        .is_ok_and(|n| n > current.parse().unwrap_or(0))
                {
                    current.clone()
                } else {
                    a.clone()
                };
                args.push(a);
            }
            if args.first().map(String::as_str) == Some("top")
                && !args.iter().any(|a| a == "--once")
            {
                args.push("--once".into()); // interactive otherwise
            }
            let o = run(&args);
            // Fleet mode's commands need etcd (fleet_config.rs runs them there); on this
            // file-mode daemon they must say so, as docs/daemon.md documents.
            if args.first().map(String::as_str) == Some("fleet") {
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(
                    !o.status.success() && err.contains("file mode"),
                    "{}: `{cmd}` on a file-mode daemon: {err}",
                    f.display()
                );
                ran += 1;
                continue;
            }
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

    // The other commands of `daemon` blocks (curl, bpftool, ip, a reload, the API by hand),
    // in the daemon's namespace, with the documented paths mapped onto this daemon's.
    let pid = d.pid().to_string();
    let mut other = 0;
    for b in docblocks::marked("daemon") {
        for cmd in b.commands() {
            if cmd.starts_with("lbctl ") {
                continue; // run above, with every other lbctl line
            }
            let cmd = cmd
                .replace("/etc/lbd/lb.toml", d.config.to_str().unwrap())
                .replace("/run/lbd.sock", d.socket().to_str().unwrap())
                .replace("/sys/fs/bpf/lb", d.pin_dir.to_str().unwrap())
                .replace("$(pidof lbd)", &pid);
            // The upgrade step runs the freshly built binary; this test's lbd stands in.
            let cmd = cmd.replace("./target/release/lbd ", "lbd ");
            let cmd = match cmd.strip_prefix("lbd ") {
                Some(rest) => format!("{LBD} {rest}"),
                None => cmd,
            };
            let out = t.lb_host.ns.exec(&cmd);
            assert!(
                !out.trim().is_empty(),
                "{}: `{cmd}` printed nothing",
                b.at()
            );
            if cmd.starts_with("ip link show") {
                assert!(out.contains(" xdp"), "{}: no XDP program in: {out}", b.at());
            }
            other += 1;
        }
    }
    println!("{other} other commands of daemon blocks ran");
    d.assert_running();
}

/// Every `sh` block says which test runs it, or why none can; a `cli` block holds only
/// lines the parser test and the lbctl test cover.
#[test]
fn every_command_block_is_run_or_says_why() {
    let mut bad = Vec::new();
    let mut kinds = std::collections::BTreeMap::<String, u32>::new();
    for b in docblocks::blocks() {
        if b.lang != "sh" {
            // `log` blocks are doc_logs.rs's.
            if let Some(m) = b.mark.as_deref().filter(|m| *m != "log") {
                bad.push(format!("{}: `{m}` on a block that is not `sh`", b.at()));
            }
            continue;
        }
        let Some(mark) = b.mark.as_deref() else {
            bad.push(format!(
                "{}: no `{} KIND -->` line before this block: say which test runs it \
                 (tests/src/docblocks.rs lists the kinds) or `not run: WHY`",
                b.at(),
                docblocks::MARK
            ));
            continue;
        };
        let kind = match mark {
            "cli" => {
                for c in b.commands() {
                    if !["lbd ", "lbctl ", "lb-demo ", "cargo xtask "]
                        .iter()
                        .any(|p| c.starts_with(p))
                    {
                        bad.push(format!(
                            "{}: `{c}` in a `cli` block is neither lbd, lbctl, lb-demo nor cargo xtask",
                            b.at()
                        ));
                    }
                }
                "cli"
            }
            "daemon" | "gateway" | "backend" | "client" | "install" | "deb" => mark,
            m if m.starts_with("not run:") => {
                if m["not run:".len()..].trim().len() < 20 {
                    bad.push(format!("{}: `{m}`: say why no test can run it", b.at()));
                }
                "not run"
            }
            m => {
                bad.push(format!("{}: unknown kind `{m}`", b.at()));
                continue;
            }
        };
        *kinds.entry(kind.to_string()).or_default() += 1;
    }
    println!("sh blocks by kind: {kinds:?}");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// What a documented host-setup command changed, read back in the namespace; panics for a
/// command it does not know, so that a new command gets a check.
fn assert_effect(ns: &lb_tests::netns::Netns, at: &str, cmd: &str) {
    let w = words(cmd);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["sysctl", "-w", settings @ ..] => {
            for s in settings {
                let (key, want) = s.split_once('=').expect("sysctl -w KEY=VALUE");
                let got = ns.exec(&format!("sysctl -n {key}"));
                assert_eq!(got.trim(), want, "{at}: `{cmd}`: {key}");
            }
        }
        ["ip", "addr", "add", addr, "dev", dev, ..]
        | ["ip", "-6", "addr", "add", addr, "dev", dev, ..] => {
            let shown = ns.exec(&format!("ip addr show dev {dev}"));
            assert!(
                shown.contains(&format!("inet {addr} "))
                    || shown.contains(&format!("inet6 {addr} ")),
                "{at}: `{cmd}`: {addr} not on {dev}: {shown}"
            );
        }
        [
            "ip",
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ] => {
            let shown = ns.exec(&format!("ip neigh show {addr} dev {dev}"));
            assert!(
                shown.contains(mac) && shown.contains("PERMANENT"),
                "{at}: `{cmd}`: {shown}"
            );
        }
        ["ethtool", "-K", dev, feature, state] => {
            // `ethtool -k` names features by their long names.
            let long = match *feature {
                "tx" => "tx-checksumming",
                "lro" => "large-receive-offload",
                f => panic!("{at}: `{cmd}`: teach assert_effect the long name of {f}"),
            };
            let shown = ns.exec(&format!("ethtool -k {dev}"));
            assert!(
                shown
                    .lines()
                    .any(|l| l.trim().starts_with(&format!("{long}: {state}"))),
                "{at}: `{cmd}`: {shown}"
            );
        }
        ["ip", "route", "add", "blackhole", prefix] => {
            let shown = ns.exec("ip route show type blackhole");
            assert!(
                shown.contains(&format!("blackhole {}", prefix.trim_end_matches("/32"))),
                "{at}: `{cmd}`: {shown}"
            );
        }
        [
            "ip",
            "route",
            "change",
            "default",
            "via",
            gw,
            "dev",
            dev,
            "advmss",
            mss,
        ] => {
            let shown = ns.exec("ip route show default");
            assert!(
                shown.contains(&format!("default via {gw} dev {dev}"))
                    && shown.contains(&format!("advmss {mss}")),
                "{at}: `{cmd}`: {shown}"
            );
        }
        _ => panic!(
            "{at}: `{cmd}`: documented_host_setup_runs_in_namespaces does not know what this \
             command changes: teach assert_effect to read it back"
        ),
    }
}

/// Gateway, backend and client setup as documented, each block in a fresh namespace with an
/// `eth0` (a veth whose peer stays in the same namespace) and a default route, as a host has:
/// every command succeeds and its effect reads back. The root namespace is never touched.
/// A mount cannot be read back from another `ip netns exec` (each has its own mount
/// namespace), so it runs and is read back in one private mount namespace, gone with it.
#[test]
fn documented_host_setup_runs_in_namespaces() {
    use lb_tests::{
        netns::{Netns, sweep_stale},
        topology::{VIP4, VIP6},
    };
    sweep_stale();
    let mut ran = 0;
    for (kind, eth0) in [
        ("gateway", "198.18.0.10/24"),
        ("backend", "198.18.0.21/24"),
        ("client", "198.18.0.5/24"),
    ] {
        for b in docblocks::marked(kind) {
            let ns = Netns::new(Netns::group(), kind);
            ns.exec(&format!(
                "ip link add eth0 type veth peer name eth1 && ip link set eth0 up && \
                 ip link set eth1 up && ip addr add {eth0} dev eth0 && \
                 ip route add default via 198.18.0.1 dev eth0"
            ));
            for cmd in b.commands() {
                // dataplane.md writes the VIPs as placeholders.
                let cmd = cmd.replace("<VIP4>", VIP4).replace("<VIP6>", VIP6);
                let w = words(&cmd);
                let w: Vec<&str> = w.iter().map(String::as_str).collect();
                if let ["mount", "-t", fstype, _, dir] = w.as_slice() {
                    let magic = ns.exec(&format!(
                        "unshare --mount --propagation private sh -c \"{cmd} && stat -f -c %T {dir}\""
                    ));
                    assert_eq!(magic.trim(), format!("{fstype}_fs"), "{}: `{cmd}`", b.at());
                } else {
                    ns.exec(&cmd);
                    assert_effect(&ns, &b.at(), &cmd);
                }
                ran += 1;
            }
        }
    }
    println!("{ran} documented host-setup commands ran and were read back");
}

/// A command written inline in prose is not run by anything, so it could rot unseen: every
/// code span that starts with a program an operator types (`docblocks::PROGRAMS`) and has an
/// argument must also be spelled out in a fenced `sh` block, whose marker says what runs it.
#[test]
fn every_inline_command_is_in_a_marked_block() {
    let fenced: Vec<String> = docblocks::blocks()
        .into_iter()
        .filter(|b| b.lang == "sh")
        .flat_map(|b| b.commands())
        .flat_map(|c| {
            c.split(['|', ';'])
                .flat_map(|p| p.split("&&"))
                .map(|p| p.trim().trim_start_matches("sudo ").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let inline = docblocks::inline_commands();
    let bad: Vec<String> = inline
        .iter()
        .filter(|i| !fenced.iter().any(|c| docblocks::spells(&i.text, c)))
        .map(|i| format!("{}:{}: `{}`", i.file.display(), i.line, i.text))
        .collect();
    println!(
        "{} inline commands, each also in a fenced block",
        inline.len()
    );
    assert!(
        bad.is_empty(),
        "commands written inline in prose that no fenced `sh` block spells out, so no test \
         runs them. Put each into a ```sh block with a `{} KIND -->` marker (the kinds are in \
         tests/src/docblocks.rs; `not run: WHY` if no test can run it), or, if the span is a \
         name rather than something to type, drop the arguments. A word in capitals (`FILE`) \
         matches any word; `[...]` is optional.\n{}",
        docblocks::MARK,
        bad.join("\n")
    )
}
