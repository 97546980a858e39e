//! `cargo xtask test`: setup, sweep what a crashed earlier run left behind, run the test
//! suite, and sum up cargo's `test result:` lines.

use std::{fs, path::Path, process::Command};

use anyhow::Result;

use crate::{
    cmd::{self, Stream, show},
    setup::{self, SetupArgs},
};

/// Network namespaces and bpffs pins made by the tests start with this.
pub const PREFIX: &str = "lbt-";
const BPFFS: &str = "/sys/fs/bpf";
/// Where the namespace tests pin (a bpffs of their own: `ip netns exec` remounts /sys).
const TEST_BPFFS: &str = "/run/lbt-bpffs";

/// Every crate with tests; not lb-ebpf, which only builds for bpfel-unknown-none (it is
/// built, and tested through the kernel, by lb-dataplane's build script and lb-tests).
const PACKAGES: &[&str] = &[
    "lb-common",
    "lb-control",
    "lb-dataplane",
    "lb-api",
    "lb-clidoc",
    "lbd",
    "lbctl",
    "lb-lab",
    "lb-tests",
    "lb-bench",
    "xtask",
];

fn say(msg: impl AsRef<str>) {
    println!("[test] {}", msg.as_ref());
}

/// Returns the process exit code: 0 when cargo test succeeded.
pub fn run(extra: &[String]) -> Result<i32> {
    setup::run(&SetupArgs::default())?;
    sweep();

    let mut test = cmd::cargo();
    test.arg("test");
    for p in PACKAGES {
        test.args(["-p", p]);
    }
    test.arg("--no-fail-fast").args(extra);
    say(format!("running: {}", show(&test)));
    let (st, out) = cmd::tee(&mut test, Stream::Stdout)?;
    release_test_bpffs();
    let (passed, failed) = summarize(&out);
    if !st.success() {
        say(format!("cargo test failed ({st})"));
    }
    println!("{passed} passed, {failed} failed");
    Ok(if st.success() {
        0
    } else {
        st.code().filter(|&c| c != 0).unwrap_or(1)
    })
}

/// Whether `name` (`lbt-<pid>-...`) belongs to a process that is still running: the tests
/// put their pid in the names, and another test run may be going on at the same time.
/// Names without a pid count as stale.
pub fn owner_alive(name: &str, alive: impl Fn(u32) -> bool) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(alive)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the network namespaces and bpffs pins named `lbt-*` left by a crashed run (not
/// those of a test process that is still running). Failures are reported, not fatal: the
/// tests name their namespaces per run.
fn sweep() {
    say(format!(
        "removing stale network namespaces and {BPFFS} pins named {PREFIX}*"
    ));
    match cmd::output(Command::new("ip").args(["netns", "list"])) {
        Err(e) => say(format!("  warning: cannot list network namespaces: {e:#}")),
        Ok(list) => {
            for ns in stale_netns(&list) {
                if owner_alive(ns, pid_alive) {
                    say(format!("  kept {ns}: its test process is still running"));
                    continue;
                }
                match cmd::output(Command::new("ip").args(["netns", "del", ns])) {
                    Ok(_) => say(format!("  deleted network namespace {ns}")),
                    Err(e) => say(format!("  warning: {e:#}")),
                }
            }
        }
    }
    sweep_pins(Path::new(BPFFS));
    sweep_pins(Path::new(TEST_BPFFS));
}

/// Unmounts the tests' bpffs once nothing is pinned there (the tests share one mount while
/// they run, so none of them can take it away), so a run leaves no mount behind. Stale pins
/// of crashed runs are swept first.
pub fn release_test_bpffs() {
    let dir = Path::new(TEST_BPFFS);
    if !dir.exists() {
        return;
    }
    sweep_pins(dir);
    // The kernel's own entries (bpf_preload's iterators) are in every bpffs mount.
    let ours = |name: &str| !["maps.debug", "progs.debug"].contains(&name);
    if fs::read_dir(dir).is_ok_and(|d| d.flatten().any(|e| ours(&e.file_name().to_string_lossy())))
    {
        say(format!(
            "kept {TEST_BPFFS}: pins of a running test are still there"
        ));
        return;
    }
    let unmounted = cmd::output(Command::new("umount").arg(dir)).is_ok();
    if unmounted && fs::remove_dir(dir).is_ok() {
        say(format!("unmounted and removed {TEST_BPFFS}"));
    }
}

/// Removes the `lbt-*` entries (pins, or directories of pins) of `dir` whose test process is
/// gone.
fn sweep_pins(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        say(format!(
            "  {} is not readable; no pins to sweep",
            dir.display()
        ));
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        let path = e.path();
        if owner_alive(&name, pid_alive) {
            say(format!(
                "  kept {}: its test process is still running",
                path.display()
            ));
            continue;
        }
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match r {
            Ok(()) => say(format!("  removed {}", path.display())),
            Err(err) => say(format!(
                "  warning: cannot remove {}: {err}",
                path.display()
            )),
        }
    }
}

/// Names in `ip netns list` output (`name` or `name (id: 3)`) that start with `lbt-`.
pub fn stale_netns(list: &str) -> Vec<&str> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .collect()
}

/// Sums `N passed` and `M failed` over cargo's `test result: ...` lines.
pub fn summarize(out: &str) -> (u64, u64) {
    let (mut passed, mut failed) = (0, 0);
    for line in out.lines() {
        let Some(pos) = line.find("test result: ") else {
            continue;
        };
        for part in line[pos..].split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            // `test result: ok. 3 passed` ends in "3 passed"; the others are "1 failed" etc.
            if let [.., n, what] = words[..] {
                match (what, n.parse::<u64>()) {
                    ("passed", Ok(n)) => passed += n,
                    ("failed", Ok(n)) => failed += n,
                    _ => {}
                }
            }
        }
    }
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_test_result_lines() {
        let out = "running 3 tests\ntest a ... ok\n\
            test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            \n   Doc-tests lb_common\n\
            test result: FAILED. 5 passed; 2 failed; 1 ignored; 0 measured; 4 filtered out; finished in 1.20s\n\
            test passed_something ... ok\n";
        assert_eq!(summarize(out), (8, 2));
        assert_eq!(summarize("error: could not compile `x`\n"), (0, 0));
    }

    #[test]
    fn keeps_what_a_running_test_owns() {
        let alive = |pid| pid == 42;
        assert!(owner_alive("lbt-42-0-client", alive));
        assert!(!owner_alive("lbt-43-0-client", alive));
        assert!(!owner_alive("lbt-maps", alive));
        assert!(!owner_alive("other-42", alive));
    }

    #[test]
    fn sweeps_stale_pins_only() {
        let dir = std::env::temp_dir().join(format!("xtask-pins-{}", std::process::id()));
        let mine = format!("lbt-{}-maps", std::process::id());
        for d in ["lbt-99999999-0/maps", "other/x", &mine] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("lbt-prog"), "").unwrap();
        sweep_pins(&dir);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, [mine, "other".to_string()]);
    }

    #[test]
    fn picks_stale_namespaces() {
        let list = "lbt-123-a (id: 4)\nother\nlbt-9\nnotlbt-1 (id: 2)\n";
        assert_eq!(stale_netns(list), ["lbt-123-a", "lbt-9"]);
    }
}
