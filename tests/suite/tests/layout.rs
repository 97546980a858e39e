//! The workspace's layering, as cargo resolves it: lb-control (the decisions) links neither
//! aya nor tokio; lbctl (the operator's CLI) links none of the kernel side; lbd links none
//! of the lab, benchmark or test crates; and lbctl builds with stable Rust and no eBPF
//! toolchain at all.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use lb_tests::{cmd::stdout as run, docblocks::root};

/// The packages in `package`'s normal (non-dev, non-build) dependency tree, by name.
fn tree(package: &str) -> BTreeSet<String> {
    let out = run(Command::new(env!("CARGO"))
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .current_dir(root()));
    let names: BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        names.contains(package),
        "cargo tree printed no {package}:\n{out}"
    );
    names
}

/// Packages of `names` whose name starts with one of `banned`.
fn offending(names: &BTreeSet<String>, banned: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| banned.iter().any(|b| n.starts_with(b)))
        .cloned()
        .collect()
}

#[test]
fn lb_control_links_neither_aya_nor_tokio() {
    let names = tree("lb-control");
    let bad = offending(&names, &["aya", "tokio"]);
    println!(
        "cargo tree -p lb-control -e normal: {} packages, aya*/tokio*: {bad:?}",
        names.len()
    );
    assert!(bad.is_empty(), "lb-control pulls {bad:?}");
}

#[test]
fn lbctl_links_none_of_the_kernel_side() {
    let names = tree("lbctl");
    let bad = offending(&names, &["aya", "lb-dataplane", "lb-control", "tokio"]);
    println!(
        "cargo tree -p lbctl -e normal: {} packages, aya*/lb-dataplane/lb-control/tokio*: {bad:?}",
        names.len()
    );
    assert!(bad.is_empty(), "lbctl pulls {bad:?}");
}

#[test]
fn lbd_links_no_lab_bench_or_test_crate() {
    let names = tree("lbd");
    let bad: Vec<String> = names
        .iter()
        .filter(|n| ["lb-lab", "lb-bench", "lb-tests"].contains(&n.as_str()))
        .cloned()
        .collect();
    println!(
        "cargo tree -p lbd -e normal: {} packages, lb-lab/lb-bench/lb-tests: {bad:?}",
        names.len()
    );
    assert!(
        names.contains("lb-dataplane"),
        "the tree was read: {names:?}"
    );
    assert!(bad.is_empty(), "lbd pulls {bad:?}");
}

/// `name` as an executable file in one of `path`'s directories.
fn find_in(path: &OsString, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn lbctl_builds_without_the_ebpf_toolchain() {
    let root = root();
    let here = std::env::var_os("PATH").unwrap_or_default();
    // The stable toolchain's own cargo and rustc (not rustup's proxies, which would put
    // ~/.cargo/bin, where bpf-linker usually lives, back on PATH).
    let rustc = find_in(&here, "rustc").expect("rustc on PATH");
    let sysroot = run(Command::new(&rustc)
        .args(["--print", "sysroot"])
        .env("RUSTUP_TOOLCHAIN", "stable"));
    let bin = Path::new(sysroot.trim()).join("bin");
    let bin_dir = root.join("target/lbctl-alone-path");
    let _ = std::fs::remove_dir_all(&bin_dir);
    std::fs::create_dir_all(&bin_dir).unwrap();
    for tool in ["cargo", "rustc"] {
        let real = bin.join(tool);
        assert!(real.is_file(), "{} missing", real.display());
        std::os::unix::fs::symlink(&real, bin_dir.join(tool)).unwrap();
    }
    // PATH: the two links, then every directory of the current PATH but those holding
    // bpf-linker.
    let kept: Vec<PathBuf> = std::env::split_paths(&here)
        .filter(|d| !d.join("bpf-linker").exists())
        .collect();
    let dropped = std::env::split_paths(&here).count() - kept.len();
    let path = std::env::join_paths(std::iter::once(bin_dir.clone()).chain(kept)).unwrap();
    assert_eq!(find_in(&path, "bpf-linker"), None);
    if Path::new("/usr/bin/which").exists() {
        let which = Command::new("/usr/bin/which")
            .arg("bpf-linker")
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(!which.status.success(), "which bpf-linker found one");
    }
    let target = root.join("target/lbctl-alone");
    let out = Command::new(bin_dir.join("cargo"))
        .args(["build", "-p", "lbctl"])
        .current_dir(&root)
        .env("PATH", &path)
        .env("RUSTUP_TOOLCHAIN", "stable")
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo build -p lbctl without bpf-linker failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lbctl = target.join("debug/lbctl");
    let help = run(Command::new(&lbctl).arg("--help"));
    assert!(help.contains("Usage"), "{help}");
    // Nothing of the kernel side was built into that target directory.
    let built: Vec<String> = std::fs::read_dir(target.join("debug/.fingerprint"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            ["aya", "lb-dataplane", "lb-ebpf", "lb-control", "tokio"]
                .iter()
                .any(|b| n.starts_with(b))
        })
        .collect();
    assert!(built.is_empty(), "built for lbctl: {built:?}");
    println!(
        "cargo build -p lbctl with stable {} and PATH without bpf-linker ({dropped} dirs dropped): ok, {} runs; no aya/lb-dataplane/lb-ebpf/lb-control/tokio built",
        sysroot.trim(),
        lbctl.display()
    );
}
