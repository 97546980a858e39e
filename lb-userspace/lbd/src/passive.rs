//! Passive failure detection in the daemon: sample the dataplane's per-backend SYN and
//! handshake counters of every VIP that has `[vip.passive] enabled`, and mark down the
//! backends `lb_control::Tracker::judge` finds failing. Only backends with active checks
//! are judged: a verdict is undone by the checks' rise, which a backend without checks
//! would never see.

use std::time::{Duration, Instant};

use lb_control::{CheckKind, Counts, Tracker};
use tracing::warn;

use crate::handler::Handler;

/// How often the counters are sampled while any VIP has passive detection on.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

pub struct Passive {
    tracker: Tracker,
    epoch: Instant,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            tracker: Tracker::default(),
            epoch: Instant::now(),
        }
    }
}

/// Whether any VIP of the configuration in force has passive detection on.
pub fn wanted(svc: &Handler) -> bool {
    svc.ctl.vips.iter().any(|v| v.cfg.passive.enabled)
}

impl Passive {
    /// Sample, judge, and mark down; true when a backend was marked down.
    pub fn tick(&mut self, svc: &mut Handler) -> bool {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let mut verdicts = Vec::new();
        let mut seen = Vec::new();
        for v in svc.ctl.vips.iter().filter(|v| v.cfg.passive.enabled) {
            let cfg = v.cfg.passive;
            let keep = cfg.window_ms + cfg.handshake_ms + 2 * SAMPLE_EVERY.as_millis() as u64;
            for b in &v.backends {
                seen.push(b.id);
                if let Ok(s) = svc.ctl.maps().backend_flows(b.id) {
                    let counts = Counts {
                        syns: s.syns,
                        handshakes: s.handshakes,
                    };
                    self.tracker.record(b.id, now_ms, counts, keep);
                }
            }
            let judged: Vec<u32> = v
                .serving_ids()
                .into_iter()
                .filter(|id| {
                    v.backends
                        .iter()
                        .any(|b| b.id == *id && b.health.kind != CheckKind::None)
                })
                .collect();
            for verdict in self.tracker.judge(&judged, now_ms, &cfg) {
                let addr = v
                    .backends
                    .iter()
                    .find(|b| b.id == verdict.backend_id)
                    .map(|b| b.cfg.address);
                verdicts.push((v.cfg.name.clone(), addr, verdict));
            }
        }
        self.tracker.retain(&seen);
        let mut changed = false;
        for (vip, addr, v) in verdicts {
            let backend = addr.map(|a| a.to_string()).unwrap_or_default();
            warn!(%vip, %backend, reason = %v.reason, "backend marked down by its traffic; its checks bring it back");
            match svc.ctl.on_traffic(&vip, v.backend_id, v.reason) {
                Ok(state) => changed |= state.is_some(),
                Err(e) => {
                    tracing::error!(error = %e, "writing a passive verdict into the dataplane failed")
                }
            }
        }
        changed
    }
}
