//! The daemon: load (or adopt) the dataplane, attach, keep it true to the configuration,
//! probe backends, reload on SIGHUP, and leave the dataplane running when it stops.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::{error, info, warn};

use lb_control::{Config, Controller, DaemonConfig, XdpModeCfg};
use lb_dataplane::{Dataplane, LoadOptions, XdpMode, link_pin, purge_pins};

use crate::{
    announce::{Announcer, Report},
    handler::Handler,
    metrics::Metrics,
    probe,
};

/// Load and attach per `cfg`, adopting what an earlier run pinned.
pub fn start_dataplane(cfg: &Config) -> Result<Controller<Dataplane>> {
    let d = &cfg.dataplane;
    let pin_dir = &cfg.daemon.pin_dir;
    let mut dp = Dataplane::load(
        LoadOptions {
            flows: d.flows,
            ring_capacity: d.ring_capacity,
        },
        Some(pin_dir),
    )
    .context("loading the dataplane")?;
    for iface in &cfg.daemon.interfaces {
        attach_interface(&mut dp, &cfg.daemon, iface)?;
    }
    let mut ctl = Controller::new(dp, d.ring_capacity).context("reading pinned state")?;
    ctl.apply(cfg)
        .context("writing the configuration into the dataplane")?;
    Ok(ctl)
}

/// Attach the program to `iface` (adopting its pinned link if it has one) in the
/// configured mode: native, or generic when native fails and `generic_fallback` allows it;
/// and let the balancer redirect to it. At start, and when a lost NIC comes back.
pub(crate) fn attach_interface(
    dp: &mut Dataplane,
    daemon: &DaemonConfig,
    iface: &str,
) -> Result<()> {
    let pin = link_pin(&daemon.pin_dir, iface);
    let mode = match daemon.xdp_mode {
        XdpModeCfg::Native => XdpMode::Driver,
        XdpModeCfg::Generic => XdpMode::Skb,
    };
    match dp.attach_pinned(iface, mode, &pin) {
        Ok(true) => {
            info!(%iface, "took over the pinned XDP link: program replaced atomically, maps kept")
        }
        Ok(false) => info!(%iface, ?mode, "attached"),
        Err(e) if mode == XdpMode::Driver && daemon.generic_fallback => {
            warn!(%iface, error = %e, "native XDP attach failed; falling back to generic mode as configured");
            dp.attach_pinned(iface, XdpMode::Skb, &pin)
                .with_context(|| format!("attaching to {iface} in generic mode"))?;
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("attaching to {iface} (set generic_fallback = true to allow generic mode)")
            });
        }
    }
    // Any attached NIC may be the egress toward a backend that another one received for.
    dp.add_tx_port(ifindex(iface)?)?;
    Ok(())
}

pub(crate) fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        bail!("no interface named {iface}");
    }
    Ok(idx)
}

pub fn spawn_probes(
    ctl: &Controller<Dataplane>,
    tx: &mpsc::Sender<lb_control::Probe>,
) -> Vec<JoinHandle<()>> {
    let checks = ctl
        .probes()
        .into_iter()
        .map(|t| probe::spawn(t.vip, t.backend_id, t.health, t.addr, tx.clone()));
    let agents = ctl
        .agents()
        .into_iter()
        .map(|t| probe::spawn_agent(t.vip, t.backend_id, t.health, t.addr, tx.clone()));
    checks.chain(agents).collect()
}

/// What `run` leaves behind when it stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnExit {
    /// Detach and remove the pins: the balancer stops for good.
    pub purge: bool,
    /// Withdraw every route first (the router stops sending before lbd goes).
    pub withdraw: bool,
}

/// Whether the dataplane serves what the controller says: the maps in step and every
/// configured NIC attached. A node that does not serve announces nothing.
fn serving(svc: &Handler) -> Result<(), String> {
    if !svc.ctl.in_step() {
        return Err("its maps are not in step with the configuration (a write failed)".into());
    }
    let lost = svc.ctl.maps().lost_interfaces();
    if !lost.is_empty() {
        return Err(format!("NIC {} lost", lost.join(", ")));
    }
    Ok(())
}

/// Decide the announcements after a change, hand them to BIRD's writer, and report what
/// changed (events, metrics).
fn announce(svc: &mut Handler, announcer: &mut Announcer, metrics: &Metrics) {
    let serving = serving(svc);
    let behind = svc.fleet_behind();
    for v in announcer.update(&svc.cfg, &svc.ctl.vips, serving, behind) {
        metrics
            .vip_announced
            .get_or_create(&vec![("vip", v.vip.clone())])
            .set(v.announced as i64);
        if !svc.cfg.announce.enabled() {
            continue;
        }
        let what = match (&v.wants, v.announced) {
            (Ok(()), _) => format!("announced: {}/32 through BIRD", v.address),
            (Err(why), true) => {
                format!("withheld ({why}); its address stays announced for another VIP")
            }
            (Err(why), false) => format!("withdrawn: {why}"),
        };
        svc.ctl.event(&v.vip, None, what);
    }
    svc.announced = announcer.view();
}

/// Run until SIGTERM/SIGINT (or `stop` resolves). The dataplane stays attached and pinned
/// afterwards unless `purge` is set: a restarted daemon adopts it without dropping a packet.
pub async fn run(
    config_path: &Path,
    on_exit: OnExit,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let cfg = Config::parse(&text, config_path)?;
    let _state_lock = lock(&cfg.daemon.state_dir)?;
    let _pin_lock = lock_pin_dir(&cfg.daemon.pin_dir)?;
    // Fleet mode: the file is the node's own; the VIPs come from the fleet's revision.
    let (node_text, (text, cfg, fleet_start)) = match cfg.daemon.fleet.is_some() {
        true => {
            let s = crate::fleet::start(&text, &cfg, config_path).await?;
            (text, (s.text.clone(), s.cfg.clone(), Some(s)))
        }
        false => (String::new(), (text, cfg, None)),
    };
    let mut ctl = start_dataplane(&cfg)?;
    let metrics = Metrics::new(cfg.daemon.pin_dir.clone(), cfg.dataplane.flows);
    ctl.set_observer(metrics.clone());
    let svc_metrics = metrics.clone();
    for (iface, _, lost) in ctl.maps().interfaces() {
        metrics.set_interface_attached(iface, !lost);
    }
    // A NIC deleted (and perhaps created again) wakes the loop to report and re-attach.
    let (link_tx, mut link_rx) = mpsc::channel(1);
    let link_watch = crate::links::spawn(link_tx);
    let link_metrics = metrics.clone();
    // Rare dataplane events (aya-log) into our log.
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd holds it.
    let dp_logs = ctl
        .maps_mut()
        .take_logger()
        .and_then(|l| unsafe { tokio::io::unix::AsyncFd::register(l) }.ok());
    let dp_logs = tokio::spawn(async move {
        let Some(mut fd) = dp_logs else {
            warn!("dataplane log records are not available");
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    let (landed_tx, mut landed) = mpsc::channel(16);
    let node = fleet_start.map(|mut s| {
        let f = cfg.daemon.fleet.clone().expect("fleet mode");
        let name = f.node.clone().unwrap_or_else(crate::fleet::host_name);
        let advertise = crate::fleet::advertise(&f, cfg.daemon.metrics_listen);
        let running = s.running.as_ref().map_or(0, |r| r.meta.id);
        let etcd = s.etcd.take();
        info!(fleet = %f.name, node = %name, revision = running, "fleet mode");
        let link = crate::fleet::spawn(
            f.clone(),
            name.clone(),
            cfg.daemon.revisions_kept,
            running,
            etcd,
            s.etcd_error.take(),
        );
        crate::fleet::Node::new(f, name, node_text, s, link, landed_tx, advertise)
    });
    let fleet_view = node.as_ref().map(|n| n.link.view.clone());
    let listen = cfg.daemon.metrics_listen;
    let exporter = tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve(listen, metrics, fleet_view).await {
            error!("{e:#}; no metrics are served (set [daemon] metrics_listen to a free address)");
        }
    });
    let (api_tx, mut api_rx) = mpsc::channel(64);
    let socket = cfg.daemon.api_socket.clone();
    let bound = crate::server::Bound::default();
    let bound_by_api = bound.clone();
    let api = tokio::spawn(async move {
        if let Err(e) = crate::server::serve(socket, api_tx, bound_by_api).await {
            error!("{e:#}; the control API is not available");
        }
    });
    info!(vips = ctl.vips.len(), config = %config_path.display(), "serving");
    let (tx, mut rx) = mpsc::channel(4096);
    let mut svc = Handler::new(ctl, cfg, text, config_path, tx, node)?;
    let mut incoming = svc.fleet.as_mut().and_then(|n| n.link.incoming.take());
    svc.metrics = Some(svc_metrics.clone());
    // Announced only now: the program is attached and the maps are written.
    let (announce_tx, mut announce_rx) = mpsc::channel(16);
    let mut announcer = Announcer::start(announce_tx);
    let loop_metrics = svc_metrics.clone();
    announce(&mut svc, &mut announcer, &loop_metrics);
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    // Slow-start ramps advance in steps this long.
    let mut ramp = tokio::time::interval(Duration::from_millis(500));
    // Passive detection samples the counters this often, while a VIP has it on.
    let mut passive = crate::passive::Passive::default();
    let mut sample = tokio::time::interval(crate::passive::SAMPLE_EVERY);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut passive_on = crate::passive::wanted(&svc);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some(p) = rx.recv() => {
                if let Err(e) = svc.ctl.on_probe(&p) {
                    error!(error = %e, "writing a health change into the dataplane failed");
                }
            }
            // Store reads are answered off the loop; the rest here.
            Some(call) = api_rx.recv() => {
                svc.serve(call);
                loop_metrics.store_problems.set(svc.store_problems().len() as i64);
            }
            Some(()) = link_rx.recv() => crate::links::reconcile(&mut svc, &link_metrics),
            _ = hup.recv() => {
                svc.reload();
                // Also the way to retry attaching to a NIC that came back.
                crate::links::reconcile(&mut svc, &link_metrics);
            }
            _ = tick.tick() => {
                loop_metrics.store_problems.set(svc.store_problems().len() as i64);
                crate::links::reconcile(&mut svc, &link_metrics);
                svc.ctl.warn_unserved();
                // A write that failed left the maps out of step: rewrite them in full.
                if !svc.ctl.in_step() && let Err(e) = svc.ctl.repair() {
                    error!(error = %e, "repairing the dataplane's maps failed; retrying in 30 s");
                }
            }
            _ = ramp.tick() => {
                if let Err(e) = svc.ctl.ramp() {
                    error!(error = %e, "writing a slow-start step into the dataplane failed");
                }
                svc.refresh_report();
            }
            _ = sample.tick(), if passive_on => {
                // Announcements change only with a verdict.
                if !passive.tick(&mut svc) {
                    continue;
                }
            }
            Some(rev) = next(&mut incoming) => svc.apply_incoming(rev),
            Some(l) = landed.recv() => svc.landed(l),
            Some(r) = announce_rx.recv() => {
                match r {
                    Report::Applied { v4, v6 } => svc.ctl.event(
                        "*",
                        None,
                        format!("BIRD took the announcements: {v4} IPv4 and {v6} IPv6 routes"),
                    ),
                    Report::Failed(e) => {
                        loop_metrics.announce_errors.inc();
                        svc.ctl.event("*", None, format!("announcing failed (retrying): {e}"));
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = &mut stop => break,
        }
        announce(&mut svc, &mut announcer, &loop_metrics);
        passive_on = crate::passive::wanted(&svc);
    }
    if on_exit.withdraw && svc.cfg.announce.enabled() {
        if announcer.withdraw_all().await {
            info!("every route withdrawn before stopping (--withdraw-on-exit)");
        } else {
            error!("withdrawing the routes before stopping failed: BIRD keeps announcing them");
        }
    }
    svc.stop_probes();
    exporter.abort();
    dp_logs.abort();
    link_watch.abort();
    api.abort();
    // The listener is closed once the aborted task is gone: then a socket that still answers
    // is another daemon's.
    let _ = api.await;
    crate::server::remove_own_socket(&svc.cfg.daemon.api_socket, &bound);
    let pin_dir = svc.cfg.daemon.pin_dir.clone();
    if on_exit.purge {
        drop(svc);
        purge_pins(&pin_dir)?;
        info!("stopped for good: XDP detached, pins removed");
    } else {
        info!(pin_dir = %pin_dir.display(), "stopping: the dataplane keeps forwarding; a restart adopts it");
    }
    Ok(())
}

/// The next item of a receiver the loop may not have (file mode): never, without one.
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Hold an exclusive lock on `f` for as long as it is open (with the process, even on
/// SIGKILL); false if another process holds it.
fn try_flock(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own and keep open; it touches no memory.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// One daemon per pin directory: a second one (with its own state, socket and metrics
/// port) would take over the pinned XDP link and rewrite the first one's maps. The lock is
/// on the directory itself, as bpffs holds no regular files.
pub fn lock_pin_dir(pin_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(pin_dir).with_context(|| {
        format!(
            "creating the pin directory {}; is bpffs mounted there?",
            pin_dir.display()
        )
    })?;
    let f = std::fs::File::open(pin_dir)
        .with_context(|| format!("opening the pin directory {}", pin_dir.display()))?;
    if !try_flock(&f) {
        bail!(
            "another lbd uses pin_dir {}: a second one would take over its XDP link and rewrite its maps; stop it first, or give this one a pin_dir of its own",
            pin_dir.display()
        );
    }
    Ok(f)
}

/// One daemon per state directory (and so per socket and revision store): a second one
/// would fight the first over the same files. The lock goes with the process, even on
/// SIGKILL.
fn lock(state_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join("lbd.lock");
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if !try_flock(&f) {
        bail!(
            "another lbd runs with state_dir {} (it holds {}): stop it first",
            state_dir.display(),
            path.display()
        );
    }
    Ok(f)
}
