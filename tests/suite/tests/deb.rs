//! The Debian package (docs/deployment.md, "The Debian package"): the documented
//! `cargo xtask deb`, run as written (the blocks marked `deb`) with `--bin-dir` (this test
//! crate's builds of the same code, `lbt-lbd` and `lbt-lbctl`, as install.rs does: no
//! release build in the suite) and `--out-dir` a temporary directory. Then:
//!
//! - the control fields, the conffiles, the maintainer scripts (as in packaging/deb/, valid
//!   sh, and no systemd call but a daemon reload and a stop: nothing enabled or started);
//! - every file of the package, with its owner and mode;
//! - lintian: no error and no warning (the package's overrides say why for the rest);
//! - installed into a scratch root with `dpkg --root`, the maintainer scripts run outside
//!   it with DPKG_ROOT set (`--force-script-chrootless`), so this machine's dpkg database
//!   and systemd are never touched: `dpkg --verify`, the installed `lbd check` on the
//!   installed configuration, man pages that render, units that systemd-analyze accepts;
//! - a removal refused while a balancer's or a backend's XDP link is pinned;
//! - removal keeps the edited conffile and the revision store, a reinstall keeps the edited
//!   conffile, purge removes all of it (and an enablement link), leaving dpkg's database.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use lb_tests::{
    docblocks::{self, root, words},
    installed::{files_under, man_pages},
};

const PACKAGE: &str = "lbd";

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
    text(&out)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The documented `cargo xtask` lines of the `deb` blocks (only `setup` and `deb` lines).
fn documented() -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for b in docblocks::marked("deb") {
        for c in b.commands() {
            let w = words(&c);
            assert!(
                w.len() >= 3
                    && w[0] == "cargo"
                    && w[1] == "xtask"
                    && ["setup", "deb"].contains(&w[2].as_str()),
                "{}: `{c}`: a `deb` block holds only `cargo xtask setup` and `cargo xtask deb` \
                 lines (this test runs them)",
                b.at()
            );
            found.push(w[1..].to_vec());
        }
    }
    assert!(
        found.iter().any(|w| w[1] == "deb"),
        "the docs show no `cargo xtask deb`"
    );
    found
}

/// Runs a documented `cargo xtask` line; `deb` gets `--bin-dir` and `--out-dir`.
fn xtask(args: &[String], bins: &Path, out: &Path) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args(args);
    if args[1] == "deb" {
        cmd.arg("--bin-dir").arg(bins).arg("--out-dir").arg(out);
        // The Maintainer field's default source, as Debian's tools take it.
        cmd.env("DEBFULLNAME", "lbd test suite")
            .env("DEBEMAIL", "lbd-tests@example.org");
    }
    run(&mut cmd)
}

/// The package's files and their modes, as `dpkg-deb --contents` must list them.
fn expected_files() -> BTreeMap<String, &'static str> {
    let mut want = BTreeMap::new();
    for f in ["usr/bin/lbd", "usr/bin/lbctl"] {
        want.insert(f.to_string(), "-rwxr-xr-x");
    }
    let mut plain = vec![
        "etc/lbd/lb.toml".to_string(),
        "etc/default/lbd".to_string(),
        "etc/default/lbd-decap".to_string(),
        "usr/lib/systemd/system/lbd.service".to_string(),
        "usr/lib/systemd/system/lbd-decap@.service".to_string(),
        "usr/share/doc/lbd/copyright".to_string(),
        "usr/share/doc/lbd/changelog.Debian.gz".to_string(),
        "usr/share/doc/lbd/examples/lb.example.toml".to_string(),
        "usr/share/doc/lbd/examples/bird.conf".to_string(),
        "usr/share/lintian/overrides/lbd".to_string(),
    ];
    for bin in ["lbd", "lbctl"] {
        plain.push(format!("usr/share/bash-completion/completions/{bin}"));
        plain.push(format!("usr/share/zsh/vendor-completions/_{bin}"));
        plain.push(format!("usr/share/fish/vendor_completions.d/{bin}.fish"));
    }
    for page in man_pages() {
        plain.push(format!("usr/share/man/man1/{page}.gz"));
    }
    for f in plain {
        want.insert(f, "-rw-r--r--");
    }
    want
}

/// `dpkg-deb --contents`: every file with its mode; all of it owned by root, directories
/// 0755.
fn assert_contents(deb: &Path) {
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = (f[0], f[1], *f.last().unwrap());
        assert_eq!(owner, "root/root", "{line}");
        let path = path.trim_start_matches("./");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "{line}");
        } else {
            files.insert(path.to_string(), mode.to_string());
        }
    }
    let want = expected_files();
    let have: BTreeSet<&String> = files.keys().collect();
    let wanted: BTreeSet<&String> = want.keys().collect();
    assert_eq!(
        have.difference(&wanted).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "files in the package that should not be"
    );
    assert_eq!(
        wanted.difference(&have).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "files missing from the package"
    );
    for (f, mode) in &want {
        assert_eq!(files[f], *mode, "{f}'s mode");
    }
    println!("{} files in the package, as expected", files.len());
}

/// The control archive: fields, conffiles, md5sums and the maintainer scripts.
fn assert_control(deb: &Path, control: &Path, bins: &Path) {
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb)
        .arg(control));
    let info = run(Command::new("dpkg-deb").arg("--info").arg(deb));
    println!("{info}");
    let field = |name: &str| {
        run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
            .trim()
            .to_string()
    };
    let version = run(Command::new(bins.join("lbd")).arg("--version"));
    let version = version.split_whitespace().nth(1).unwrap();
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Package"), PACKAGE);
    assert_eq!(field("Version"), format!("{version}-1"));
    assert_eq!(field("Architecture"), arch.trim());
    assert_eq!(
        field("Maintainer"),
        "lbd test suite <lbd-tests@example.org>"
    );
    let depends = field("Depends");
    assert!(
        depends.contains("libc6 (>= ") && depends.contains("libgcc-s1"),
        "Depends: {depends}"
    );
    assert!(field("Installed-Size").parse::<u64>().unwrap() > 1000);
    assert!(
        field("Description").contains("load balancer"),
        "{}",
        field("Description")
    );

    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/lbd/lb.toml\n/etc/default/lbd\n/etc/default/lbd-decap\n"
    );
    let sums = std::fs::read_to_string(control.join("md5sums")).unwrap();
    for f in expected_files().keys() {
        assert!(sums.contains(&format!("  {f}\n")), "md5sums has no {f}");
    }

    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let body = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            body,
            std::fs::read_to_string(root().join("packaging/deb").join(script)).unwrap(),
            "{script} is not packaging/deb/{script}"
        );
        assert!(body.starts_with("#!/bin/sh\n"), "{script}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{script}'s mode");
        run(Command::new("sh").arg("-n").arg(&path));
        // Nothing enabled, started or restarted: a reload of systemd's units, and the
        // balancer stopped on removal (after the pinned-link check).
        for line in body.lines().map(str::trim) {
            let call = line.split_whitespace().next().unwrap_or("");
            if ["systemctl", "deb-systemd-invoke", "deb-systemd-helper"].contains(&call) {
                assert!(
                    line == "systemctl --system daemon-reload >/dev/null || true"
                        || (script == "prerm"
                            && line == "deb-systemd-invoke stop lbd.service >/dev/null || true"),
                    "{script}: `{line}`: the package only reloads systemd and stops lbd"
                );
            }
        }
    }
}

/// lintian, required: setup installs it. No error and no warning; each tag that the package
/// overrides has its reason in packaging/deb/lintian-overrides.
fn assert_lintian(deb: &Path) {
    assert!(
        Command::new("lintian").arg("--version").output().is_ok(),
        "lintian is not installed, so the package cannot be checked: run `cargo xtask setup` \
         (it installs lintian)"
    );
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info", "--pedantic"])
        .arg(deb)
        .output()
        .unwrap();
    let said = text(&out);
    println!("lintian:\n{said}");
    let tags: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        out.status.success() && tags.is_empty(),
        "lintian ({}): fix these, or override one in packaging/deb/lintian-overrides with \
         its reason:\n{said}",
        out.status
    );
}

/// `dpkg` on the scratch root `r` only: its own database (`--root`), maintainer scripts
/// outside it with DPKG_ROOT set, its own log. libc6 and libgcc-s1 are not in that database:
/// `--force-depends`.
fn dpkg(r: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", r.display()))
        .arg(format!("--log={}", r.join("dpkg.log").display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .stdin(std::process::Stdio::null());
    c
}

/// What dpkg's database in `r` says of the package (`installed`, `config-files`, or
/// `not-installed`).
fn status(r: &Path) -> String {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", r.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${db:Status-Status}", PACKAGE])
        .output()
        .unwrap();
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        "not-installed".to_string()
    }
}

/// The installed units name /usr/bin/lbd, read /etc/default/lbd, and
/// `systemd-analyze verify` accepts copies pointed into the scratch root (as install.rs
/// does: `--root` would make it look for its own units there).
fn assert_units(r: &Path, scratch: &Path) {
    std::fs::create_dir_all(scratch).unwrap();
    for (unit, instance, needs) in [
        (
            "lbd.service",
            "lbd.service",
            &[
                "EnvironmentFile=-/etc/default/lbd\n",
                "ExecStart=/usr/bin/lbd run -c /etc/lbd/lb.toml $LBD_OPTS\n",
            ][..],
        ),
        (
            "lbd-decap@.service",
            "lbd-decap@eth0.service",
            &["ExecStart=/usr/bin/lbd decap attach --interface %i "][..],
        ),
    ] {
        let text = std::fs::read_to_string(r.join("usr/lib/systemd/system").join(unit)).unwrap();
        for n in needs {
            assert!(text.contains(n), "no `{}` in {unit}:\n{text}", n.trim());
        }
        assert!(
            !text.contains("/usr/local/bin/"),
            "{unit} names /usr/local/bin"
        );
        let copy = scratch.join(instance);
        let usr = format!("{}/usr/", r.display());
        std::fs::write(&copy, text.replace("/usr/bin/", &format!("{usr}bin/"))).unwrap();
        match Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .env("MANPATH", format!("{usr}share/man"))
            .output()
        {
            Err(_) => {
                println!("systemd-analyze is not installed: {unit} checked by its lines only")
            }
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let name = instance.split('@').next().unwrap();
                assert!(
                    out.status.success() && !err.contains(name),
                    "systemd-analyze verify {instance} ({}):\n{err}",
                    out.status
                );
                println!("systemd-analyze verify accepted the installed {instance}");
            }
        }
    }
}

/// The compressed pages render with `man -l`, without warnings.
fn assert_man_pages(man1: &Path) {
    for page in [
        "lbd.1.gz",
        "lbd-run.1.gz",
        "lbd-decap-attach.1.gz",
        "lbctl.1.gz",
    ] {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(man1.join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("run man (Debian package man-db; `cargo xtask setup` installs it)");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "man -l {page}: {warnings}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("NAME"),
            "{page}"
        );
    }
}

/// The host's dpkg database, to show that the scratch installs never touched it.
fn host_dpkg_status() -> Vec<u8> {
    std::fs::read("/var/lib/dpkg/status").unwrap_or_default()
}

#[test]
fn package_builds_installs_into_a_scratch_root_keeps_conffiles_and_purges() {
    let tmp = TempDir(std::env::temp_dir().join(format!("lbt-deb-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    let bins = tmp.0.join("bin");
    let out = tmp.0.join("out");
    std::fs::create_dir_all(&bins).unwrap();
    // Links, not copies: the debug lbd is large, and the package build copies it anyway.
    for (from, to) in [
        (env!("CARGO_BIN_EXE_lbt-lbd"), "lbd"),
        (env!("CARGO_BIN_EXE_lbt-lbctl"), "lbctl"),
    ] {
        std::os::unix::fs::symlink(from, bins.join(to)).unwrap();
    }

    for args in documented() {
        println!("{}", xtask(&args, &bins, &out));
    }
    // The package and nothing else (the build's staging tree is gone).
    let built: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(built.len(), 1, "{built:?}");
    let deb = &built[0];
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let version = run(Command::new(bins.join("lbd")).arg("--version"));
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!(
            "{PACKAGE}_{}-1_{}.deb",
            version.split_whitespace().nth(1).unwrap(),
            arch.trim()
        )
    );

    assert_control(deb, &tmp.0.join("control"), &bins);
    assert_contents(deb);
    assert_lintian(deb);

    // The scratch root: an empty dpkg database of its own.
    let host_before = host_dpkg_status();
    let r = &tmp.0.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();

    let said = run(dpkg(r).arg("--install").arg(deb));
    println!("{said}");
    assert!(said.contains("installed, not enabled"), "{said}");
    assert_eq!(status(r), "installed");
    run(dpkg(r).args(["--verify", PACKAGE]));
    let config = r.join("etc/lbd/lb.toml");
    let example = std::fs::read_to_string(root().join("config/lb.example.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), example);
    // The installed lbd validates the installed configuration.
    let checked = run(Command::new(r.join("usr/bin/lbd"))
        .args(["check", "-c"])
        .arg(&config));
    println!("installed lbd check: {checked}");
    let v = run(Command::new(r.join("usr/bin/lbctl")).arg("--version"));
    assert!(v.starts_with("lbctl "), "{v}");
    for (file, var) in [
        ("etc/default/lbd", "LBD_OPTS=\"\"\n"),
        ("etc/default/lbd-decap", "LBD_DECAP_ADDRS=\"\"\n"),
    ] {
        let text = std::fs::read_to_string(r.join(file)).unwrap();
        assert!(text.contains(var), "{file} does not set {}", var.trim());
    }
    assert_man_pages(&r.join("usr/share/man/man1"));
    assert_units(r, &tmp.0.join("units"));

    // Refused while an XDP program is pinned, on a balancer or a backend: the package stays.
    for pin in ["sys/fs/bpf/lb/link-eth0", "sys/fs/bpf/lb-decap/eth0/link"] {
        let pin = r.join(pin);
        std::fs::create_dir_all(pin.parent().unwrap()).unwrap();
        std::fs::write(&pin, "").unwrap();
        let refused = dpkg(r).args(["--remove", PACKAGE]).output().unwrap();
        let said = text(&refused);
        assert!(
            !refused.status.success(),
            "removed with {} pinned",
            pin.display()
        );
        assert!(
            said.contains(&pin.display().to_string()) && said.contains("lbd purge"),
            "{said}"
        );
        assert_eq!(status(r), "installed", "{said}");
        assert!(r.join("usr/bin/lbd").is_file());
        std::fs::remove_dir_all(r.join("sys")).unwrap();
    }

    // The operator's edit, the daemon's revision store and an enablement link.
    let edited = format!("# edited on the gateway\n{example}");
    std::fs::write(&config, &edited).unwrap();
    let store = r.join("var/lib/lbd/revisions/1.toml");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::write(&store, &example).unwrap();
    let wants = r.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/lbd.service",
        wants.join("lbd.service"),
    )
    .unwrap();

    // Remove: the configuration and the state stay, the rest goes.
    println!("{}", run(dpkg(r).args(["--remove", PACKAGE])));
    assert_eq!(status(r), "config-files");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    let left = files_under(r, &["var/lib/dpkg", "dpkg.log"]);
    let kept: BTreeSet<String> = [
        "etc/lbd/lb.toml",
        "etc/default/lbd",
        "etc/default/lbd-decap",
        "var/lib/lbd/revisions/1.toml",
        "etc/systemd/system/multi-user.target.wants/lbd.service",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(left, kept, "after removal");

    // Installed again: the edited conffile is kept, without a question (stdin is null).
    run(dpkg(r).arg("--install").arg(deb));
    assert_eq!(status(r), "installed");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);

    // Purge: nothing of the package is left, only dpkg's database.
    println!("{}", run(dpkg(r).args(["--purge", PACKAGE])));
    assert_eq!(status(r), "not-installed");
    assert_eq!(
        files_under(r, &["var/lib/dpkg", "dpkg.log"]),
        BTreeSet::new(),
        "after purge"
    );
    for gone in ["etc/lbd", "var/lib/lbd", "usr/share/doc/lbd"] {
        assert!(!r.join(gone).exists(), "{gone} is left after purge");
    }

    assert!(
        host_dpkg_status() == host_before,
        "this machine's /var/lib/dpkg/status changed during the scratch-root installs"
    );
}
