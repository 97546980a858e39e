//! Passive failure detection: what a VIP's own traffic shows about its backends.
//!
//! The dataplane counts, per backend, the bare SYNs it sends there and the handshakes that
//! follow (the client's next packet, which only comes once the backend answered). The
//! daemon samples the counts every few tens of milliseconds; [`Tracker::judge`] compares
//! each backend with its siblings of the same VIP over a window of SYNs old enough to
//! have been answered (`handshake_ms`):
//!
//! - the backend's SYNs: those sent in `[now - handshake_ms - window_ms, now - handshake_ms]`;
//! - its handshakes: those seen since the start of that window, until now;
//! - down when it has at least `min_syns` SYNs and its answered share is below `ratio`
//!   times its siblings'.
//!
//! Guards against false verdicts: too few SYNs (the backend's, or its siblings' together)
//! is no verdict, so an idle VIP or a VIP with one backend is never judged; a flood of
//! SYNs that no client completes hits every backend alike, so the siblings' share falls
//! too, and below 90% no backend is judged; and the shortfall must be one a healthy
//! backend would show about once in a million windows ([`EVIDENCE_NATS`]), so that a few
//! unanswered SYNs that happen to land on one backend in one short window are not taken
//! for a failure.

use std::collections::{BTreeMap, VecDeque};

use crate::config::PassiveConfig;

/// The siblings' answered share below which nothing is judged (a flood, a network
/// problem in front of every backend). High: at a flood's onset a few unanswered SYNs land
/// unevenly in a short window, and siblings that are anything but clean make no verdict.
const SIBLINGS_HEALTHY: f64 = 0.9;

/// How unlikely a backend's shortfall must be, in nats, before it is judged: the Chernoff
/// bound exp(-n * D(q || p)) on a healthy backend answering only a share `q` of its `n`
/// SYNs when its siblings answer `p`, against e^-14 (about one in a million). A CI run
/// once judged a healthy backend at a flood's onset on 1 of 5 answered beside its
/// siblings' 13 of 14: about e^-7 by this measure. A dead backend's 5 unanswered SYNs beside
/// two clean siblings' 12 are about e^-16.
const EVIDENCE_NATS: f64 = 14.0;

/// The evidence, in nats, that a backend answering `answered` of `syns` SYNs is failing
/// while its siblings answer `sib_answered` of `sib_syns` (0 when it does no worse). The
/// siblings' share is smoothed (half a SYN answered and half not added), so that a handful
/// of clean siblings is not taken for certainty.
fn evidence(syns: u64, answered: u64, sib_syns: u64, sib_answered: u64) -> f64 {
    let p = (sib_answered.min(sib_syns) as f64 + 0.5) / (sib_syns as f64 + 1.0);
    let q = answered.min(syns) as f64 / syns.max(1) as f64;
    if q >= p {
        return 0.0;
    }
    // a * ln(a / b), with 0 * ln 0 = 0.
    let part = |a: f64, b: f64| if a == 0.0 { 0.0 } else { a * (a / b).ln() };
    syns as f64 * (part(q, p) + part(1.0 - q, 1.0 - p))
}

/// A backend's counters at a moment: cumulative, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub syns: u64,
    pub handshakes: u64,
}

/// A verdict: the backend to mark down, and why in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub backend_id: u32,
    pub reason: String,
}

/// The samples of each backend, as long as a window needs them.
#[derive(Debug, Default)]
pub struct Tracker {
    samples: BTreeMap<u32, VecDeque<(u64, Counts)>>,
}

impl Tracker {
    /// Record backend `id`'s counters at `at_ms`; samples older than `keep_ms` go.
    pub fn record(&mut self, id: u32, at_ms: u64, counts: Counts, keep_ms: u64) {
        let q = self.samples.entry(id).or_default();
        q.push_back((at_ms, counts));
        // Keep the newest sample at or before the oldest moment a window asks about.
        while q.len() > 2 && q[1].0 + keep_ms <= at_ms {
            q.pop_front();
        }
    }

    /// Forget backends not in `ids` (removed from the configuration).
    pub fn retain(&mut self, ids: &[u32]) {
        self.samples.retain(|id, _| ids.contains(id));
    }

    /// The counters of `id` at `at_ms`: the newest sample at or before it.
    fn at(&self, id: u32, at_ms: u64) -> Option<Counts> {
        self.samples
            .get(&id)?
            .iter()
            .rev()
            .find(|(t, _)| *t <= at_ms)
            .map(|(_, c)| *c)
    }

    /// (SYNs judged, handshakes since) for `id`, if the samples reach back far enough.
    fn window(&self, id: u32, now_ms: u64, cfg: &PassiveConfig) -> Option<(u64, u64)> {
        let end = now_ms.checked_sub(cfg.handshake_ms)?;
        let start = end.checked_sub(cfg.window_ms)?;
        let (a, b, c) = (self.at(id, start)?, self.at(id, end)?, self.at(id, now_ms)?);
        Some((
            b.syns.saturating_sub(a.syns),
            c.handshakes.saturating_sub(a.handshakes),
        ))
    }

    /// The backends of one VIP to mark down now. `usable`: the ids of its backends that
    /// take new flows (only those are judged, and only those are siblings).
    pub fn judge(&self, usable: &[u32], now_ms: u64, cfg: &PassiveConfig) -> Vec<Verdict> {
        let windows: Vec<(u32, u64, u64)> = usable
            .iter()
            .filter_map(|id| {
                let (syns, hs) = self.window(*id, now_ms, cfg)?;
                Some((*id, syns, hs))
            })
            .collect();
        let share = |syns: u64, hs: u64| (hs as f64 / syns.max(1) as f64).min(1.0);
        let mut out = Vec::new();
        for &(id, syns, hs) in &windows {
            if syns < cfg.min_syns {
                continue;
            }
            let (sib_syns, sib_hs) = windows
                .iter()
                .filter(|w| w.0 != id)
                .fold((0, 0), |(s, h), w| (s + w.1, h + w.2));
            if sib_syns < cfg.min_syns {
                continue;
            }
            let siblings = share(sib_syns, sib_hs);
            if siblings < SIBLINGS_HEALTHY {
                continue;
            }
            let own = share(syns, hs);
            if own < cfg.ratio * siblings && evidence(syns, hs, sib_syns, sib_hs) >= EVIDENCE_NATS {
                out.push(Verdict {
                    backend_id: id,
                    reason: format!(
                        "traffic: {hs} of {syns} new flows answered in {} ms, its siblings {:.0}% of {sib_syns}",
                        cfg.window_ms,
                        siblings * 100.0
                    ),
                });
            }
        }
        out
    }
}
