//! Announcing VIPs through the node's BIRD. lbd owns only the include files of static routes
//! (`[announce] routes_v4`, `routes_v6`); bird.conf (peers, ASN, BFD, timers) is the
//! operator's. The control loop decides (`lb_control::decide`) after every change and hands
//! the route set to a task of its own, which writes the files atomically and runs
//! `birdc configure`. So a slow or dead BIRD never holds up health verdicts, and a failed
//! configure is retried until BIRD takes the files.
//!
//! What outlives what: BIRD keeps announcing the files' routes while lbd is stopped or
//! crashed (the pinned dataplane keeps forwarding them), and withdraws them when BIRD itself
//! stops. `lbd run --withdraw-on-exit` empties the files before lbd exits.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_control::{
    AnnounceConfig, Config, Routes, VipAnnouncement, VipState, Withheld, decide, render, settle_ms,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// birdc gets this long to answer; BIRD answers a configure in ~70 ms.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);
/// A failed write or configure is tried again after this long.
const RETRY: Duration = Duration::from_secs(2);
/// How often an idle writer checks that BIRD still answers on its socket: a BIRD that died
/// took the routes with it, and lbd must say so and announce again once it is back.
const LIVENESS: Duration = Duration::from_secs(2);

/// Two verdicts that are both "settling" (with a different time left) are one for events.
fn settling_both(a: &Result<(), Withheld>, b: &Result<(), Withheld>) -> bool {
    matches!(
        (a, b),
        (
            Err(Withheld::Settling { .. }),
            Err(Withheld::Settling { .. })
        )
    )
}

/// Routes for the writer task: the files' paths and contents' source.
#[derive(Debug, Clone, PartialEq, Default)]
struct Want {
    cfg: AnnounceConfig,
    routes: Routes,
}

/// What BIRD holds, as far as lbd knows: for status, metrics and events.
#[derive(Debug, Clone, Default)]
pub struct BirdState {
    /// The routes BIRD last took (`birdc configure` succeeded with files holding them).
    pub applied: Option<Routes>,
    /// The last failure, until a configure succeeds again.
    pub error: Option<String>,
    /// Failed writes or configures so far.
    pub errors: u64,
}

/// What the writer task reports to the control loop (as events).
#[derive(Debug)]
pub enum Report {
    Applied { v4: usize, v6: usize },
    Failed(String),
}

pub struct Announcer {
    want: watch::Sender<Want>,
    pub bird: Arc<Mutex<BirdState>>,
    /// The last verdict per VIP, for status and events.
    pub verdicts: Vec<VipAnnouncement>,
    /// VIPs that came back from too few backends, and since when: withheld until their
    /// checks have settled (`Withheld::Settling`).
    settling: Vec<(String, std::time::Instant)>,
}

/// What status and `vip.list` show: the verdicts and what BIRD holds.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub verdicts: Vec<VipAnnouncement>,
    pub bird: BirdState,
}

impl Announcer {
    pub fn view(&self) -> View {
        View {
            verdicts: self.verdicts.clone(),
            bird: self.bird.lock().map(|b| b.clone()).unwrap_or_default(),
        }
    }
}

impl Announcer {
    /// Start the writer task; it reports through `reports`.
    pub fn start(reports: mpsc::Sender<Report>) -> Announcer {
        let (want, rx) = watch::channel(Want::default());
        let bird = Arc::new(Mutex::new(BirdState::default()));
        tokio::spawn(writer(rx, bird.clone(), reports));
        Announcer {
            want,
            bird,
            verdicts: Vec::new(),
            settling: Vec::new(),
        }
    }

    /// Decide what to announce now and hand it to the writer when it changed. Returns the
    /// VIPs whose announcement changed, with the new verdict, for events.
    pub fn update(
        &mut self,
        cfg: &Config,
        vips: &[VipState],
        serving: Result<(), String>,
        behind: Option<lb_control::Withheld>,
    ) -> Vec<VipAnnouncement> {
        // A VIP whose backends come back from too few is held until the rest of them had
        // time to rise: first decide without holding anything, to see which qualify.
        let now = std::time::Instant::now();
        let (_, raw) = decide(cfg, vips, serving.clone(), behind.clone(), &[]);
        let before = std::mem::take(&mut self.settling);
        for r in raw.iter().filter(|r| r.wants.is_ok()) {
            let recovering = self.verdicts.iter().any(|o| {
                o.vip == r.vip
                    && matches!(
                        o.wants,
                        Err(Withheld::TooFewBackends { .. } | Withheld::Settling { .. })
                    )
            });
            let since = before.iter().find(|(n, _)| *n == r.vip).map(|(_, t)| *t);
            if let Some(since) = since.or(recovering.then_some(now)) {
                self.settling.push((r.vip.clone(), since));
            }
        }
        let held: Vec<(String, u64)> = self
            .settling
            .iter()
            .filter_map(|(name, since)| {
                let v = vips.iter().find(|v| v.cfg.name == *name)?;
                let waited = now.duration_since(*since).as_millis() as u64;
                let left = settle_ms(v).checked_sub(waited).filter(|l| *l > 0)?;
                Some((name.clone(), left))
            })
            .collect();
        self.settling
            .retain(|(n, _)| held.iter().any(|(h, _)| h == n));
        let (routes, verdicts) = decide(cfg, vips, serving, behind, &held);
        let want = Want {
            cfg: cfg.announce.clone(),
            routes,
        };
        self.want.send_if_modified(|w| {
            let changed = *w != want;
            *w = want;
            changed
        });
        let changed = verdicts
            .iter()
            .filter(|v| {
                !self.verdicts.iter().any(|o| {
                    o.vip == v.vip
                        && o.announced == v.announced
                        && (o.wants == v.wants || settling_both(&o.wants, &v.wants))
                })
            })
            .cloned()
            .collect();
        self.verdicts = verdicts;
        changed
    }

    /// Withdraw every route and wait (a bounded time) until BIRD took the empty files.
    pub async fn withdraw_all(&mut self) -> bool {
        let mut empty = self.want.borrow().clone();
        if !empty.cfg.enabled() {
            return true;
        }
        empty.routes = Routes::default();
        self.want.send_replace(empty);
        for _ in 0..(BIRDC_TIMEOUT.as_millis() / 50) {
            let done = self
                .bird
                .lock()
                .map(|b| b.applied.as_ref() == Some(&Routes::default()))
                .unwrap_or(false);
            if done {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Write `text` to `path` atomically: a reader (BIRD) sees the old file or the new one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp: PathBuf = path.with_extension("tmp-lbd");
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn not_answering(socket: &Path) -> String {
    format!(
        "BIRD does not answer on {}: no routes are announced until it runs there again (is bird running? is [announce] bird_socket right?)",
        socket.display()
    )
}

/// Write both files and have BIRD read them.
async fn apply(want: &Want) -> Result<(), String> {
    let cfg = &want.cfg;
    for (path, text) in [
        (&cfg.routes_v4, render(&want.routes.v4, 32)),
        (&cfg.routes_v6, render(&want.routes.v6, 128)),
    ] {
        if let Some(path) = path {
            write_atomically(path, &text)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
    }
    if std::os::unix::net::UnixStream::connect(&cfg.bird_socket).is_err() {
        return Err(not_answering(&cfg.bird_socket));
    }
    let run = tokio::process::Command::new(&cfg.birdc)
        .arg("-s")
        .arg(&cfg.bird_socket)
        .arg("configure")
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(BIRDC_TIMEOUT, run).await {
        Err(_) => {
            return Err(format!(
                "birdc -s {} configure did not answer within {} s: is BIRD hung?",
                cfg.bird_socket.display(),
                BIRDC_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => {
            return Err(format!(
                "running {}: {e}: install BIRD 2 (Debian: bird2) or set [announce] birdc",
                cfg.birdc.display()
            ));
        }
        Ok(Ok(out)) => out,
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // birdc exits 0 even when BIRD refuses the configuration: read what it said.
    if !out.status.success()
        || !text.contains("Reconfigured") && !text.contains("Reconfiguration in progress")
    {
        return Err(format!(
            "birdc -s {} configure: {}: check that BIRD runs there and that bird.conf parses (birdc configure check)",
            cfg.bird_socket.display(),
            text.trim().replace('\n', "; ")
        ));
    }
    Ok(())
}

async fn writer(
    mut rx: watch::Receiver<Want>,
    bird: Arc<Mutex<BirdState>>,
    reports: mpsc::Sender<Report>,
) {
    // Report a failure once, not at every retry.
    let fail = |e: String| {
        warn!(error = %e, "announcing through BIRD failed; retrying");
        let mut b = bird.lock().ok()?;
        b.errors += 1;
        (b.error.as_deref() != Some(&e)).then(|| {
            b.error = Some(e.clone());
            Report::Failed(e)
        })
    };
    loop {
        let want = rx.borrow_and_update().clone();
        let already = bird
            .lock()
            .map(|b| b.applied.as_ref() == Some(&want.routes) && b.error.is_none())
            .unwrap_or(false);
        if want.cfg.enabled() && !already {
            match apply(&want).await {
                Ok(()) => {
                    if let Ok(mut b) = bird.lock() {
                        b.applied = Some(want.routes.clone());
                        b.error = None;
                    }
                    info!(
                        v4 = want.routes.v4.len(),
                        v6 = want.routes.v6.len(),
                        "announcements written and BIRD reconfigured"
                    );
                    let _ = reports
                        .send(Report::Applied {
                            v4: want.routes.v4.len(),
                            v6: want.routes.v6.len(),
                        })
                        .await;
                }
                Err(e) => {
                    if let Some(r) = fail(e) {
                        let _ = reports.send(r).await;
                    }
                    // Retry, or take a newer set as soon as there is one.
                    let _ = tokio::time::timeout(RETRY, rx.changed()).await;
                    continue;
                }
            }
        }
        match tokio::time::timeout(LIVENESS, rx.changed()).await {
            Ok(Err(_)) => return,
            Ok(Ok(())) => {}
            Err(_) if want.cfg.enabled() => {
                // Idle: is BIRD still there? Its routes die with it.
                let sock = &want.cfg.bird_socket;
                if std::os::unix::net::UnixStream::connect(sock).is_err() {
                    if let Ok(mut b) = bird.lock() {
                        b.applied = None;
                    }
                    if let Some(r) = fail(not_answering(sock)) {
                        let _ = reports.send(r).await;
                    }
                }
            }
            Err(_) => {}
        }
    }
}
