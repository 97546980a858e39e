//! The documented install (docs/deployment.md, the blocks marked `install`), run as written
//! with `--destdir` into a temporary directory: binaries that run, the configuration (kept
//! on a second install), units systemd accepts (`lbd.service`, and `lbd-decap@.service` for
//! backends) whose Exec lines name the installed binary, man pages for every command that
//! render, completions for every shell, and an uninstall that removes all of it but the
//! configuration.
//!
//! It adds `--bin-dir` with this test crate's build of the same code (`lbt-lbd`,
//! `lbt-lbctl`), so the suite does not wait for a release build: the build step is
//! `cmd::build_release`, which `cargo xtask demo` runs too.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use lb_tests::{
    docblocks::{self, root, words},
    installed::{files_under, man_pages},
};

/// A directory under the system's temp dir, removed on drop even when the test fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `cmd` printed (stdout, then stderr); it must succeed.
fn run(cmd: &mut Command) -> String {
    let out = lb_tests::cmd::checked(cmd);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The documented `cargo xtask` lines of `install` blocks whose subcommand is `task`, with
/// `--destdir` and `extra` added.
fn documented(task: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for b in docblocks::marked("install") {
        for c in b.commands() {
            let w = words(&c);
            assert!(
                w.len() >= 3 && w[0] == "cargo" && w[1] == "xtask",
                "{}: `{c}`: an `install` block holds only cargo xtask lines (this test runs them)",
                b.at()
            );
            if w[2] == task {
                found.push(w[1..].to_vec());
            }
        }
    }
    assert!(!found.is_empty(), "the docs show no `cargo xtask {task}`");
    found
}

/// Runs a documented `cargo xtask` line; `install` and `uninstall` get `--destdir` (and
/// `install` the `--bin-dir` of `bins`) and `extra`.
fn xtask(args: &[String], tmp: &Path, extra: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args(args);
    if matches!(args[1].as_str(), "install" | "uninstall") {
        cmd.arg("--destdir").arg(tmp.join("dest")).args(extra);
    }
    if args[1] == "install" {
        cmd.arg("--bin-dir").arg(tmp.join("bin"));
    }
    run(&mut cmd)
}

/// Renders every page with `man -l` (groff warnings on) and checks its title line, NAME and
/// SEE ALSO.
fn assert_man_pages(man1: &Path) {
    let want = man_pages();
    for p in [
        "lbd.1",
        "lbd-run.1",
        "lbd-check.1",
        "lbd-purge.1",
        "lbd-decap-attach.1",
        "lbctl.1",
        "lbctl-vip-add.1",
        "lbctl-config-rollback.1",
    ] {
        assert!(want.iter().any(|w| w == p), "no {p} among {want:?}");
    }
    assert!(
        !want.iter().any(|w| w.contains("demo-backend")),
        "a hidden command got a page"
    );
    for name in &want {
        let path = man1.join(name);
        let roff =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let title = name.trim_end_matches(".1");
        assert!(
            roff.lines()
                .any(|l| l.starts_with(&format!(".TH {title} 1 "))),
            "{name}: no `.TH {title} 1` line in:\n{roff}"
        );
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("run man (Debian package man-db; `cargo xtask setup` installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "man -l {name}: {warnings}");
        assert!(
            warnings.trim().is_empty(),
            "man -l {name} warns:\n{warnings}"
        );
        assert!(
            text.contains("NAME") && text.contains("SEE ALSO") && text.contains(title),
            "{name} rendered as:\n{text}"
        );
    }
}

/// Each completion script mentions the subcommands and passes its shell's syntax check
/// (`cargo xtask setup` installs zsh and fish).
fn assert_completions(usr: &Path) {
    for (bin, subs) in [
        ("lbd", &["run", "check", "purge", "decap"][..]),
        ("lbctl", &["vip", "backend", "config", "rollback"][..]),
    ] {
        for (shell, path) in [
            ("bash", format!("share/bash-completion/completions/{bin}")),
            ("zsh", format!("share/zsh/site-functions/_{bin}")),
            (
                "fish",
                format!("share/fish/vendor_completions.d/{bin}.fish"),
            ),
        ] {
            let path = usr.join(path);
            let script = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for s in subs {
                assert!(script.contains(s), "{}: no {s}", path.display());
            }
            assert!(
                Command::new(shell).arg("-c").arg("true").output().is_ok(),
                "{shell} is not installed, so {} cannot be syntax-checked: run `cargo xtask \
                 setup` (it installs zsh and fish)",
                path.display()
            );
            run(Command::new(shell).arg("-n").arg(&path));
        }
    }
}

/// The units' Exec lines name the installed binary, and `systemd-analyze verify` accepts
/// them: run on copies whose paths point into the staged tree (so the binaries it checks are
/// the installed ones), with MANPATH there (so `Documentation=man:` finds the pages).
/// `--root` is no way: systemd-analyze then looks for its own units in the staged tree.
/// The backends' template, `lbd-decap@.service`, is verified as an instance (`@eth0`).
fn assert_unit(dest: &Path, prefix: &str, scratch: &Path) {
    for (unit, exec, instance) in [
        (
            "lbd.service",
            format!("ExecStart={prefix}/bin/lbd run -c /etc/lbd/lb.toml"),
            "lbd.service",
        ),
        (
            "lbd-decap@.service",
            format!("ExecStart={prefix}/bin/lbd decap attach --interface %i "),
            "lbd-decap@eth0.service",
        ),
    ] {
        let path = dest.join("etc/systemd/system").join(unit);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains(&exec), "no `{exec}` in {unit}:\n{text}");
        let staged_bin = dest.join(format!("{}/bin/lbd", prefix.trim_start_matches('/')));
        assert!(
            staged_bin.is_file(),
            "ExecStart names {prefix}/bin/lbd, not installed"
        );
        for line in text.lines().filter(|l| l.starts_with("Exec")) {
            let (_, cmd) = line.split_once('=').unwrap();
            let prog = cmd.split_whitespace().next().unwrap();
            if prog.starts_with(prefix) {
                assert_eq!(prog, format!("{prefix}/bin/lbd"), "{unit}: {line}");
            }
        }
        let staged_prefix = format!("{}{prefix}", dest.display());
        let copy = scratch.join(instance);
        std::fs::create_dir_all(scratch).unwrap();
        std::fs::write(
            &copy,
            text.replace(&format!("{prefix}/bin/"), &format!("{staged_prefix}/bin/")),
        )
        .unwrap();
        let analyze = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .env("MANPATH", format!("{staged_prefix}/share/man"))
            .output();
        match analyze {
            Err(_) => println!(
                "systemd-analyze is not installed: {unit} was checked by its Exec lines only"
            ),
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let name = instance.split('@').next().unwrap();
                assert!(
                    out.status.success() && !err.contains(name),
                    "systemd-analyze verify {instance} ({}):\n{err}",
                    out.status
                );
                println!("systemd-analyze verify accepted {instance}");
            }
        }
    }
}

#[test]
fn documented_install_puts_everything_in_place_and_uninstall_removes_it() {
    let tmp = TempDir(std::env::temp_dir().join(format!("lbt-install-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    let dest = &tmp.0.join("dest");
    std::fs::create_dir_all(dest).unwrap();
    let bins = tmp.0.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for (from, to) in [
        (env!("CARGO_BIN_EXE_lbt-lbd"), "lbd"),
        (env!("CARGO_BIN_EXE_lbt-lbctl"), "lbctl"),
    ] {
        std::fs::copy(from, bins.join(to)).unwrap();
    }

    for args in documented("setup") {
        xtask(&args, &tmp.0, &[]);
    }
    let install = documented("install");
    let out = xtask(&install[0], &tmp.0, &[]);
    println!("{out}");
    let usr = dest.join("usr/local");

    for bin in ["lbd", "lbctl"] {
        let v = run(Command::new(usr.join("bin").join(bin)).arg("--version"));
        assert!(v.starts_with(bin), "{bin} --version: {v}");
    }
    let example = std::fs::read_to_string(root().join("config/lb.example.toml")).unwrap();
    let config = dest.join("etc/lbd/lb.toml");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), example);
    assert_eq!(
        std::fs::read_to_string(usr.join("share/doc/lbd/lb.example.toml")).unwrap(),
        example
    );
    // The installed lbd validates the installed configuration.
    run(Command::new(usr.join("bin/lbd"))
        .args(["check", "-c"])
        .arg(&config));
    assert_man_pages(&usr.join("share/man/man1"));
    assert_completions(&usr);
    assert_unit(dest, "/usr/local", &tmp.0.join("unit"));

    // A second install, elsewhere: the operator's configuration stays, the unit follows.
    std::fs::write(&config, format!("# edited\n{example}")).unwrap();
    let out = xtask(&install[0], &tmp.0, &["--prefix", "/opt/lb"]);
    assert!(out.contains("kept"), "{out}");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .starts_with("# edited\n")
    );
    assert_unit(dest, "/opt/lb", &tmp.0.join("unit"));

    for args in documented("uninstall") {
        xtask(&args, &tmp.0, &["--prefix", "/opt/lb"]);
        xtask(&args, &tmp.0, &[]);
    }
    let left = files_under(dest, &[]);
    assert_eq!(
        left,
        BTreeSet::from(["etc/lbd/lb.toml".to_string()]),
        "uninstall left more than the configuration"
    );
}
