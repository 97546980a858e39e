//! The real daemon (`lbt-lbd`, the same code as `lbd`) as a process in the balancer's
//! namespace, with its config, log and pins owned by the test.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{netns::sh, topology::Topology};

/// bpffs for test pins. Not /sys/fs/bpf: `ip netns exec` remounts /sys, hiding it.
pub const BPFFS: &str = "/run/lbt-bpffs";

pub fn ensure_bpffs() {
    lb_lab::bpffs::mount(BPFFS);
}

pub struct Daemon {
    child: Option<Child>,
    exe: &'static str,
    ns: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    starts: u32,
    run_args: Vec<String>,
}

impl Daemon {
    /// Start `exe run -c <config>` in the topology's balancer namespace.
    pub fn start(t: &Topology, exe: &'static str, config: &str) -> Daemon {
        Daemon::start_in(&t.lb_host.ns.name, exe, config)
    }

    /// Start `exe run -c <config>` in namespace `ns` (files and pins named after it).
    pub fn start_in(ns: &str, exe: &'static str, config: &str) -> Daemon {
        ensure_bpffs();
        let ns = ns.to_string();
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(&dir).unwrap();
        let pin_dir = PathBuf::from(BPFFS).join(&ns);
        let cfg = dir.join("lb.toml");
        let mut d = Daemon {
            child: None,
            exe,
            ns,
            dir,
            config: cfg,
            pin_dir,
            starts: 0,
            run_args: Vec::new(),
        };
        d.write_config(config);
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = File::create(self.dir.join(format!("lbd-{}.log", self.starts))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, self.exe, "run", "-c"])
            .arg(&self.config)
            .args(&self.run_args)
            .env("RUST_LOG", "info,aya=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the daemon");
        self.child = Some(child);
    }

    /// Everything the daemon logged, all runs.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("lbd-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("")
    }

    /// What the latest run logged.
    pub fn last_log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("lbd-{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// Panics with the log if the daemon exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("the daemon exited ({status}):\n{}", self.log());
        }
    }

    /// Wait until `addr` answers every request (the daemon must keep running meanwhile).
    pub fn wait_served(&mut self, t: &Topology, addr: &str) {
        self.wait_served_as(t, "--tcp", addr)
    }

    /// As `wait_served`, with `kind` `--tcp` or `--udp` requests.
    pub fn wait_served_as(&mut self, t: &Topology, kind: &str, addr: &str) {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            self.assert_running();
            if t.requests(kind, addr, 10).1 == 0 {
                return;
            }
            assert!(
                Instant::now() < end,
                "{addr} not served after 15 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until the log shows `needle` (or panic after `secs`).
    pub fn wait_log(&self, needle: &str, secs: u64) {
        self.wait_log_line(&[needle], secs)
    }

    /// Wait until one log line holds every one of `needles` (or panic after `secs`).
    pub fn wait_log_line(&self, needles: &[&str], secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if self
                .log()
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n)))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon never logged a line with {needles:?}:\n{}",
            self.log()
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Extra `lbd run` flags from the next (re)start on, e.g. `--withdraw-on-exit`.
    pub fn set_run_args(&mut self, args: &[&str]) {
        self.run_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Wait (at most `secs`) for the daemon to exit, after a signal; its exit status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(
                std::time::Instant::now() < end,
                "the daemon did not exit within {secs} s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        sh(&format!("kill -{sig} {}", self.pid()));
    }

    /// The daemon's pid (`ip netns exec` execs it, so the child's pid is the daemon's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's control API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("lbd.sock")
    }

    /// Write the config, with this daemon's pins, revision store and socket filled in.
    pub fn write_config(&self, config: &str) {
        let mut text = config.replace("@PIN_DIR@", self.pin_dir.to_str().unwrap());
        if !text.contains("state_dir") {
            let daemon = format!(
                "[daemon]\nstate_dir = \"{}\"\napi_socket = \"{}\"\n",
                self.dir.join("state").display(),
                self.socket().display()
            );
            text = text.replacen("[daemon]\n", &daemon, 1);
        }
        std::fs::write(&self.config, text).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Unpinning the link detaches the program once no process holds it.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
