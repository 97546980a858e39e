//! One timed run of one path, and the proof that its frames went the way it is labelled.
//!
//! Before each run the counters are read (generator's per-CPU iteration counter, sink, the
//! balancer's per-reason counters); the generator then sends for a fixed time, and after a
//! short settle (frames still in the veths' rings land) the counters are read again.

use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_common::Reason;
use lb_tests::packets::{Frame, TCP_ACK};

use crate::{
    progs::{Sunk, pin_to},
    rig::Rig,
};

impl Path {
    pub fn flows(self) -> u32 {
        match self {
            Path::Reflector { flows } | Path::Tracker { flows } | Path::Lb { flows, .. } => flows,
        }
    }
}

/// The clients: 198.19.0.1 with the low 16 bits of the address varied by the generator
/// stays inside 198.18.0.0/15.
const CLIENT: &str = "198.19.0.1";
const SPORT: u16 = 40_000;
/// Time for frames still queued in the veths when the generator stops to reach the sink.
const SETTLE: Duration = Duration::from_millis(50);
/// Warming 1M flows takes about a second; this only bounds a stuck run.
const WARM_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Path {
    /// The baseline: `bench_reflect` in the balancer's place, fed the same `flows` as the
    /// balancer's rows it is compared with (the generator's flow variation is part of
    /// every frame's cost).
    Reflector { flows: u32 },
    /// The second baseline: `bench_track` in the balancer's place (a lookup in a table of
    /// the balancer's shape, IP-in-IP), `flows` flows in turn, all in its table.
    Tracker { flows: u32 },
    /// `lb_xdp` on VIP `vip` of the rig, `flows` flows in turn (a power of two).
    Lb { vip: usize, flows: u32 },
}

pub struct Settings {
    pub seconds: f64,
    pub cpu: usize,
    pub batch: u32,
}

pub struct Sample {
    /// Frames counted by the sink per second of generation.
    pub mpps: f64,
    /// Frames generated per second.
    pub offered_mpps: f64,
    pub generated: u64,
    pub sunk: u64,
    /// For the balancer: generated frames that it did not count as sent (lost on the way
    /// in, or counted under another reason).
    pub not_forwarded: Option<u64>,
    /// Growth of every balancer reason counter (all zero for the baselines).
    pub lb: Vec<(Reason, u64)>,
    pub failures: Vec<String>,
}

/// The generator's template: a 60-byte TCP ACK with DF, as established traffic is.
pub fn frame(vip: &str) -> Vec<u8> {
    let mut f = Frame::tcp(CLIENT, SPORT, vip, 80, TCP_ACK);
    f.payload = vec![0; 6];
    f.dont_fragment = true;
    f.bytes()
}

struct Snapshot {
    generated: Vec<u32>,
    sunk: Sunk,
    lb: Vec<(Reason, u64)>,
    tracked: (u64, u64),
}

fn snapshot(rig: &Rig) -> Result<Snapshot> {
    Ok(Snapshot {
        generated: rig.progs.generated()?,
        sunk: rig.progs.sunk()?,
        lb: rig.lb.dp.reasons()?,
        tracked: rig.progs.tracked()?,
    })
}

/// Live frames from the generator's namespace, on `cpu`: (frames sent, seconds).
fn generate(
    rig: &Rig,
    s: &Settings,
    frame: &[u8],
    ifindex: u32,
    frames: u64,
    until: Duration,
) -> Result<(u64, f64)> {
    let (sent, took) = rig.gen_ns.enter(|| {
        pin_to(s.cpu)?;
        rig.progs.generate(frame, ifindex, s.batch, frames, until)
    })?;
    std::thread::sleep(SETTLE);
    Ok((sent, took.as_secs_f64()))
}

/// Every one of the point's `flows` into the balancer's table before the clock starts: the
/// run measures established traffic, and the proof requires no new flow during it. The
/// warm-up is itself a flood of new flows, so the per-CPU new-entry rate is lifted for it
/// (a million flows at the default 65,536/s would mostly go by the ring unwritten), then
/// set back to the defaults the harness runs with. Its own proof: every flow was put in
/// the table or found there, none went by the ring unwritten.
fn warm_lb(
    rig: &mut Rig,
    s: &Settings,
    frame: &[u8],
    ifindex: u32,
    flows: u32,
    failures: &mut Vec<String>,
) -> Result<()> {
    let mut lifted = [0; 4];
    lifted[lb_common::NEW_RATE_PER_SEC] = 1_000_000_000;
    lifted[lb_common::NEW_RATE_BURST] = flows as u64;
    let before = rig.lb.dp.reasons()?;
    rig.lb
        .dp
        .set_new_rate(&lifted)
        .context("lifting the balancer's new-entry rate (LB_NEW_RATE) for the warm-up")?;
    let warmed = generate(rig, s, frame, ifindex, flows as u64, WARM_LIMIT);
    let restored = rig.lb.dp.set_new_rate(&[0; 4]);
    warmed.context("the warm-up's live-frames run")?;
    restored.context(
        "setting the balancer's new-entry rate (LB_NEW_RATE) back to the defaults after \
         the warm-up",
    )?;
    let after = rig.lb.dp.reasons()?;
    let grew = |r: Reason| {
        let at = |v: &[(Reason, u64)]| v.iter().find(|(x, _)| *x == r).map_or(0, |(_, n)| *n);
        at(&after) - at(&before)
    };
    let (new, hit, over) = (
        grew(Reason::FlowNew),
        grew(Reason::FlowHit),
        grew(Reason::FlowOverRate),
    );
    if over != 0 || new + hit != flows as u64 {
        failures.push(format!(
            "warm-up of {flows} flows: {new} put in the table, {hit} found there, {over} \
             over the new-entry rate (expected none over it)"
        ));
    }
    Ok(())
}

pub fn sample(rig: &mut Rig, path: Path, s: &Settings) -> Result<Sample> {
    let (frame, mask, ifindex) = match path {
        Path::Reflector { flows } => (frame(&rig.vips[0].addr), flows - 1, rig.to_rf),
        Path::Tracker { flows } => (frame(&rig.vips[0].addr), flows - 1, rig.to_tk),
        Path::Lb { vip, flows } => (frame(&rig.vips[vip].addr), flows - 1, rig.to_lb),
    };
    rig.progs.set_frame(&frame, mask)?;
    let mut failures = Vec::new();
    match path {
        Path::Lb { flows, .. } => warm_lb(rig, s, &frame, ifindex, flows, &mut failures)?,
        Path::Tracker { flows } => {
            generate(rig, s, &frame, ifindex, flows as u64, WARM_LIMIT)?;
        }
        Path::Reflector { .. } => {}
    }
    let before = snapshot(rig)?;
    let until = Duration::from_secs_f64(s.seconds);
    let (sent, secs) = generate(rig, s, &frame, ifindex, u64::MAX, until)?;
    let after = snapshot(rig)?;

    let generated: u64 = before
        .generated
        .iter()
        .zip(&after.generated)
        .map(|(b, a)| a.wrapping_sub(*b) as u64)
        .sum();
    let sunk = after.sunk.since(before.sunk);
    let lb: Vec<(Reason, u64)> = before
        .lb
        .iter()
        .zip(&after.lb)
        .map(|((r, b), (_, a))| (*r, a - b))
        .collect();
    let grew = |r: Reason| lb.iter().find(|(x, _)| *x == r).map_or(0, |(_, n)| *n);
    if sunk.tunnelled + sunk.other > generated {
        failures.push(format!(
            "the sink counted {} frames, more than the {generated} generated",
            sunk.tunnelled + sunk.other
        ));
    }
    let tracked = (
        after.tracked.0 - before.tracked.0,
        after.tracked.1 - before.tracked.1,
    );
    if generated != sent {
        failures.push(format!(
            "the generator built {generated} frames; {sent} were asked of the kernel"
        ));
    }
    let (counted, stray, not_forwarded, expect): (u64, u64, Option<u64>, Vec<(Reason, u64)>) =
        match path {
            Path::Reflector { .. } => (sunk.other, sunk.tunnelled, None, vec![]),
            Path::Tracker { .. } => {
                // Every frame found its flow in the table (the warm-up put them there).
                if tracked != (generated, 0) {
                    failures.push(format!(
                        "the connection-table baseline hit {} and missed {} of {generated} \
                         frames",
                        tracked.0, tracked.1
                    ));
                }
                (sunk.tunnelled, sunk.other, None, vec![])
            }
            Path::Lb { .. } => {
                let tx = grew(Reason::TxIpip);
                if tx > generated {
                    failures.push(format!("tx_ipip grew by {tx}, more than generated"));
                }
                if sunk.tunnelled > tx {
                    failures.push(format!(
                        "the sink counted {} IP-in-IP frames, more than tx_ipip {tx}",
                        sunk.tunnelled
                    ));
                }
                let expect = [Reason::TxIpip, Reason::FlowHit, Reason::FibFallback];
                (
                    sunk.tunnelled,
                    sunk.other,
                    Some(generated.saturating_sub(tx)),
                    expect.iter().map(|r| (*r, tx)).collect(),
                )
            }
        };
    if counted == 0 {
        failures.push("the sink counted no forwarded frame".into());
    }
    if stray != 0 {
        failures.push(format!(
            "the sink counted {stray} frames of the other kind (IP-in-IP from the reflector, \
             or plain frames from the balancer)"
        ));
    }
    for (r, n) in &lb {
        let want = expect.iter().find(|(x, _)| x == r).map_or(0, |(_, n)| *n);
        if *n != want {
            failures.push(format!("{} grew by {n}, expected {want}", r.label()));
        }
    }
    Ok(Sample {
        mpps: counted as f64 / secs / 1e6,
        offered_mpps: generated as f64 / secs / 1e6,
        generated,
        sunk: counted,
        not_forwarded,
        lb,
        failures,
    })
}
