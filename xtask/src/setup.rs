//! `cargo xtask setup`: install what a fresh machine lacks, idempotently.
//!
//! - rust-src for the nightly toolchain (the eBPF crate builds with `-Z build-std=core`);
//! - bpf-linker, built against the nightly's own libLLVM so both use the same LLVM;
//! - the Debian packages the tests use: iproute2, ethtool, nftables, curl, bpftool, man-db,
//!   zsh, fish, bird2, frr, dpkg-dev, lintian, etcd-server, etcd-client, protobuf-compiler.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;

use crate::cmd::{self, Stream, show};

#[derive(Args, Clone, Debug, Default)]
pub struct SetupArgs {
    /// Check everything and print what would be done, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Rebuild bpf-linker even when the installed one works (with --dry-run: show the plan).
    #[arg(long)]
    pub rebuild_bpf_linker: bool,
}

/// Commands the tests run, and the Debian package that provides each.
const DEBIAN: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nft", "nftables"),
    ("curl", "curl"),
    // The docs' troubleshooting commands run in the docs test; the man pages render there.
    ("bpftool", "bpftool"),
    ("man", "man-db"),
    // The install test syntax-checks the zsh and fish completions with the shells themselves.
    ("zsh", "zsh"),
    ("fish", "fish"),
    // The fleet tests: BIRD announces each node's VIPs, FRR (zebra, bgpd, bfdd) routes
    // over the nodes with ECMP and BFD.
    ("bird", "bird2"),
    ("vtysh", "frr"),
    // `cargo xtask deb`: dpkg-shlibdeps computes the package's Depends; the deb test checks
    // the package with lintian.
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("lintian", "lintian"),
    // Fleet mode: lbd's etcd client is generated from etcd's protobuf files at build time
    // (protoc); the fleet-config tests run a real etcd cluster and read it with etcdctl.
    ("protoc", "protobuf-compiler"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
];

const NIGHTLY: &str = "nightly";

fn say(msg: impl AsRef<str>) {
    println!("[setup] {}", msg.as_ref());
}

pub fn run(args: &SetupArgs) -> Result<()> {
    if args.dry_run {
        say("dry run: nothing will be changed");
    }
    let nightly = nightly()?;
    rust_src(args)?;
    bpf_linker(args, &nightly)?;
    debian_packages(args)?;
    say(if args.dry_run {
        "dry run done"
    } else {
        "everything is installed"
    });
    Ok(())
}

/// What `rustc +nightly -vV` says about itself.
#[derive(Debug)]
pub struct Nightly {
    pub release: String,
    pub llvm_version: String,
    pub llvm_major: u32,
}

fn nightly_rustc() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", NIGHTLY, "rustc"]);
    c
}

fn nightly() -> Result<Nightly> {
    say("checking the nightly toolchain (`rustc +nightly -vV`)");
    if !cmd::has_command("rustup") {
        bail!(
            "rustup is not installed. Install it from https://rustup.rs, then run \
             `rustup toolchain install {NIGHTLY} --profile minimal --component rust-src`"
        );
    }
    let out = cmd::output(nightly_rustc().arg("-vV")).map_err(|e| {
        anyhow!(
            "the {NIGHTLY} Rust toolchain is missing or broken (the eBPF crate needs it). \
             Install it with `rustup toolchain install {NIGHTLY} --profile minimal \
             --component rust-src`, then run `cargo xtask setup` again.\n  cause: {e:#}"
        )
    })?;
    let n = parse_rustc_vv(&out)?;
    say(format!(
        "  ok: rustc {}, LLVM {} (major {})",
        n.release, n.llvm_version, n.llvm_major
    ));
    Ok(n)
}

/// Parses `rustc -vV` output: `release: 1.97.0-nightly` and `LLVM version: 22.1.4`.
pub fn parse_rustc_vv(out: &str) -> Result<Nightly> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let release = field("release:").unwrap_or_else(|| "(unknown release)".into());
    let llvm_version =
        field("LLVM version:").ok_or_else(|| anyhow!("no `LLVM version:` line in:\n{out}"))?;
    let llvm_major = llvm_version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the LLVM major version from `{llvm_version}`"))?;
    Ok(Nightly {
        release,
        llvm_version,
        llvm_major,
    })
}

fn rust_src(args: &SetupArgs) -> Result<()> {
    say(format!("checking rust-src for the {NIGHTLY} toolchain"));
    let out = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    if has_rust_src(&out) {
        say("  ok: rust-src is installed");
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", NIGHTLY]);
    say("  rust-src is missing");
    if args.dry_run {
        say(format!("  would run: {}", show(&add)));
        return Ok(());
    }
    say(format!("  running: {}", show(&add)));
    cmd::run(&mut add).context(
        "installing rust-src failed: check the network connection (rustup downloads it from \
         static.rust-lang.org), then run `cargo xtask setup` again",
    )?;
    say("  ok: rust-src installed");
    Ok(())
}

pub fn has_rust_src(component_list: &str) -> bool {
    component_list
        .lines()
        .map(str::trim)
        .any(|l| l == "rust-src" || l.starts_with("rust-src-"))
}

fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("HOME is not set"))
}

/// Where `cargo install` puts binaries: `$CARGO_INSTALL_ROOT/bin`, else `$CARGO_HOME/bin`,
/// else `~/.cargo/bin`.
fn install_bin_dir() -> Result<PathBuf> {
    let root = match env::var_os("CARGO_INSTALL_ROOT").filter(|v| !v.is_empty()) {
        Some(r) => PathBuf::from(r),
        None => match env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h),
            None => home()?.join(".cargo"),
        },
    };
    Ok(root.join("bin"))
}

/// `bpf-linker --version`, or why it does not run.
fn linker_version(path: &Path) -> Result<String> {
    Ok(cmd::output(Command::new(path).arg("--version"))?
        .trim()
        .to_string())
}

/// The LLVM major of the libLLVM the binary is dynamically linked against, from `ldd`
/// (`None` when statically linked or when ldd is unavailable).
fn linked_llvm_major(path: &Path) -> Option<u32> {
    let out = cmd::output(Command::new("ldd").arg(path)).ok()?;
    out.lines().find_map(|l| llvm_major_of_soname(l.trim()))
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22, `libLLVM-21.so` -> 21, `libLLVM.so.20.1` -> 20.
pub fn llvm_major_of_soname(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("libLLVM")?;
    let rest = rest
        .strip_prefix(".so.")
        .or_else(|| rest.strip_prefix('-'))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// How bpf-linker gets built against the nightly's libLLVM.
#[derive(Debug)]
struct LinkerPlan {
    /// The toolchain's `libLLVM.so.<ver>-rust-<ver>` file.
    libllvm: PathBuf,
    /// `LLVM_PREFIX` for the build; the binary's rpath points at `prefix/lib`.
    prefix: PathBuf,
    install: Command,
}

fn plan_bpf_linker(n: &Nightly) -> Result<LinkerPlan> {
    let sysroot = cmd::output(nightly_rustc().args(["--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let names: Vec<String> = fs::read_dir(&lib)
        .with_context(|| format!("listing the nightly's libraries in {}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let file = pick_libllvm(&names, n.llvm_major).ok_or_else(|| {
        anyhow!(
            "no libLLVM.so.{}*-rust-* in {}: this nightly does not ship the shared LLVM \
             library bpf-linker is built against. Reinstall the toolchain \
             (`rustup toolchain uninstall {NIGHTLY} && rustup toolchain install {NIGHTLY} \
             --profile minimal --component rust-src`) or install an LLVM {} development \
             package and build bpf-linker by hand",
            n.llvm_major,
            lib.display(),
            n.llvm_major
        )
    })?;
    let prefix = home()?
        .join(".local/share")
        .join(format!("lb-llvm-{}", n.llvm_major));
    let mut install = cmd::cargo();
    install
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{}", n.llvm_major))
        .env("LLVM_PREFIX", &prefix);
    Ok(LinkerPlan {
        libllvm: lib.join(file),
        prefix,
        install,
    })
}

/// The toolchain's versioned shared LLVM library among `names`, e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly` (not `libLLVM-22-rust-1.97.0-nightly.so`).
pub fn pick_libllvm(names: &[String], major: u32) -> Option<&str> {
    let mut found: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .filter(|n| llvm_major_of_soname(n) == Some(major))
        .collect();
    found.sort();
    found.pop()
}

fn bpf_linker(args: &SetupArgs, n: &Nightly) -> Result<()> {
    say("checking bpf-linker (`bpf-linker --version`)");
    let bin_dir = install_bin_dir()?;
    let installed = bin_dir.join("bpf-linker");
    let found = cmd::find_on_path("bpf-linker")
        .or_else(|| cmd::is_executable(&installed).then(|| installed.clone()));
    match &found {
        None => say("  bpf-linker is not installed"),
        Some(path) => match linker_version(path) {
            Err(e) => say(format!(
                "  {} does not run, it will be rebuilt: {e:#}",
                path.display()
            )),
            Ok(v) => match linked_llvm_major(path) {
                Some(m) if m != n.llvm_major => say(format!(
                    "  {} ({v}) is linked against LLVM {m} but the nightly uses LLVM {}: \
                     it will be rebuilt",
                    path.display(),
                    n.llvm_major
                )),
                _ if args.rebuild_bpf_linker => say(format!(
                    "  ok: {} ({v}); rebuilding it as asked",
                    path.display()
                )),
                _ => {
                    say(format!("  ok: {} ({v})", path.display()));
                    return Ok(());
                }
            },
        },
    }

    let plan = plan_bpf_linker(n)?;
    let lib_dir = plan.prefix.join("lib");
    let file_name = plan.libllvm.file_name().expect("a file name");
    say(format!("  nightly libLLVM: {}", plan.libllvm.display()));
    say(format!(
        "  LLVM prefix: {} (libLLVM.so and {} -> that file)",
        plan.prefix.display(),
        file_name.to_string_lossy()
    ));
    if args.dry_run {
        say(format!("  would link {}/libLLVM.so", lib_dir.display()));
        say(format!("  would run: {}", show(&plan.install)));
        return Ok(());
    }

    fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = lib_dir.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing old {}", link.display()))?;
        }
        symlink(&plan.libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), plan.libllvm.display()))?;
    }
    let mut install = plan.install;
    say(format!("  running (about a minute): {}", show(&install)));
    let (st, stderr) = cmd::tee(&mut install, Stream::Stderr)?;
    if !st.success() {
        bail!(
            "building bpf-linker failed ({st}): {}",
            diagnose_install(&stderr, n.llvm_major, &plan.prefix)
        );
    }

    let version = linker_version(&installed).with_context(|| {
        format!(
            "bpf-linker was built but `{} --version` fails; check that {} points at {}",
            installed.display(),
            lib_dir.join("libLLVM.so").display(),
            plan.libllvm.display()
        )
    })?;
    say(format!("  ok: {} ({version})", installed.display()));
    match cmd::find_on_path("bpf-linker") {
        Some(p) if p != installed => say(format!(
            "  warning: PATH finds {} first, not the new {}: remove it or put {} first in PATH",
            p.display(),
            installed.display(),
            bin_dir.display()
        )),
        None => say(format!(
            "  warning: {} is not in PATH; add it, the eBPF build runs `bpf-linker` from PATH",
            bin_dir.display()
        )),
        _ => {}
    }
    Ok(())
}

/// A hint for a failed `cargo install bpf-linker`, from what cargo printed.
pub fn diagnose_install(stderr: &str, major: u32, prefix: &Path) -> String {
    let s = stderr.to_lowercase();
    if s.contains("does not contain this feature") || s.contains("does not have the feature") {
        format!(
            "the newest bpf-linker on crates.io has no `llvm-{major}` feature, so it cannot be \
             built against this nightly's LLVM {major}. Install a nightly whose LLVM major \
             bpf-linker supports (see the `llvm-*` features in `cargo info bpf-linker`), then \
             run `cargo xtask setup` again"
        )
    } else if [
        "could not resolve host",
        "couldn't resolve host",
        "failed to download",
        "failed to query replaced source",
        "failed to update registry",
        "failed to get",
        "spurious network error",
        "network failure",
        "timed out",
        "failed to connect",
    ]
    .iter()
    .any(|p| s.contains(p))
    {
        "cargo could not download bpf-linker or its dependencies from crates.io: check the \
         network connection (and proxy settings), then run `cargo xtask setup` again"
            .to_string()
    } else if s.contains("llvm") || s.contains("linking with") {
        format!(
            "building or linking against LLVM failed (see cargo's errors above). Check that \
             {0}/lib/libLLVM.so points at the nightly's libLLVM file, or delete {0} and run \
             `cargo xtask setup` again",
            prefix.display()
        )
    } else {
        "see cargo's errors above, fix the cause, then run `cargo xtask setup` again".into()
    }
}

fn is_root() -> bool {
    cmd::output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

fn debian_packages(args: &SetupArgs) -> Result<()> {
    say(format!(
        "checking the commands the tests use: {}",
        DEBIAN
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let missing: Vec<(&str, &str)> = DEBIAN
        .iter()
        .copied()
        .filter(|(c, _)| !cmd::has_command(c))
        .collect();
    if missing.is_empty() {
        say("  ok: all found");
        return Ok(());
    }
    let pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    say(format!(
        "  missing: {}",
        missing
            .iter()
            .map(|(c, p)| format!("{c} (package {p})"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut update = Command::new("apt-get");
    update.arg("update");
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive");
    if args.dry_run {
        say(format!("  would run (as root): {}", show(&update)));
        say(format!("  would run (as root): {}", show(&install)));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {}: run `cargo xtask setup` as root, or install them with \
             `sudo apt-get update && sudo apt-get install -y {}`",
            pkgs.join(" "),
            pkgs.join(" ")
        );
    }
    if !cmd::has_command("apt-get") {
        bail!(
            "missing packages {} and there is no apt-get: install them with this system's \
             package manager",
            pkgs.join(" ")
        );
    }
    for c in [&mut update, &mut install] {
        say(format!("  running: {}", show(c)));
        cmd::run(c).context(
            "apt-get failed: check the network connection and the apt sources, then run \
             `cargo xtask setup` again",
        )?;
    }
    let still: Vec<&str> = missing
        .iter()
        .filter(|(c, _)| !cmd::has_command(c))
        .map(|(c, _)| *c)
        .collect();
    if !still.is_empty() {
        bail!(
            "installed {} but still cannot find {} in PATH ({})",
            pkgs.join(" "),
            still.join(", "),
            env::var("PATH").unwrap_or_default()
        );
    }
    say("  ok: installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major_from_rustc_vv() {
        let out = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                   commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\n\
                   commit-date: 2026-05-19\nhost: x86_64-unknown-linux-gnu\n\
                   release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        let n = parse_rustc_vv(out).unwrap();
        assert_eq!(n.llvm_major, 22);
        assert_eq!(n.llvm_version, "22.1.4");
        assert_eq!(n.release, "1.97.0-nightly");
        assert!(parse_rustc_vv("release: 1.0\n").is_err());
    }

    #[test]
    fn finds_rust_src_in_component_list() {
        assert!(has_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn picks_the_versioned_libllvm() {
        let names: Vec<String> = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
            "rustlib",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            pick_libllvm(&names, 22),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(pick_libllvm(&names, 21), None);
    }

    #[test]
    fn reads_llvm_major_from_sonames() {
        assert_eq!(
            llvm_major_of_soname("libLLVM.so.22.1-rust-1.97.0-nightly => /x (0x1)"),
            Some(22)
        );
        assert_eq!(llvm_major_of_soname("libLLVM-21.so"), Some(21));
        assert_eq!(llvm_major_of_soname("libLLVM.so.20.1"), Some(20));
        assert_eq!(llvm_major_of_soname("libc.so.6 => /lib/libc.so.6"), None);
    }

    #[test]
    fn diagnoses_install_failures() {
        let p = Path::new("/p");
        assert!(
            diagnose_install(
                "error: failed to compile `bpf-linker v0.13.0`\n\nCaused by:\n  the package \
                 'bpf-linker' does not contain this feature: llvm-99",
                99,
                p
            )
            .contains("no `llvm-99` feature")
        );
        assert!(
            diagnose_install(
                "warning: spurious network error (3 tries remaining): [6] Couldn't resolve \
                 host name",
                22,
                p
            )
            .contains("network")
        );
    }
}
