//! Network namespaces for test hosts: created per test run with names unique to the process
//! (`lbt-<pid>-<n>-<role>`), removed on Drop even when a test fails, and swept when a
//! crashed earlier run left some behind.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

pub const PREFIX: &str = "lbt-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Run a command, panicking with its output when it fails: a test network that cannot be
/// built is a failed test, never a silent skip.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        eprintln!("`{cmd}`: {err}");
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Remove namespaces of ours whose process is gone.
pub fn sweep_stale() {
    let list = sh("ip netns list");
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Tests sweep concurrently: another may have removed it first.
            remove(name);
        }
    }
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A group id shared by the namespaces of one topology.
    pub fn group() -> u32 {
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    pub fn new(group: u32, role: &str) -> Netns {
        let name = format!("{PREFIX}{}-{group}-{role}", std::process::id());
        sh(&format!("ip netns add {name}"));
        let ns = Netns { name };
        ns.exec("ip link set lo up");
        ns
    }

    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn in namespace")
    }

    /// Run `f` on a thread that has entered this namespace (for netlink and BPF attach).
    /// The thread is scoped, so `f` may borrow from the caller.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let fd = File::open(&path).expect("open netns");
                // SAFETY: setns on this thread only, with a namespace fd we own.
                let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Kill what still runs inside `name` (a server whose owner panicked goes with its host),
/// then delete the namespace.
fn remove(name: &str) {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) on a pid the namespace reported.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}
