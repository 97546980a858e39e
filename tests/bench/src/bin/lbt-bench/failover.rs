//! Failover time, verdict to maps written: the daemon's own `Controller` over a loaded (never
//! attached) `lb_xdp`, one VIP of N backends, handed a failing probe for one backend through
//! `Controller::on_probe`, the call the daemon's health loop makes. Timed from the call to its
//! return, by which the backend is marked down and the changed ring slots are in `LB_RINGS`.
//!
//! Beside it, a lower bound measured in the same run: `ring::maglev` for the N − 1 survivors,
//! the diff against the ring in place, and one `BPF_MAP_UPDATE_BATCH` of the changed slots
//! into a plain array. Any failover that rebuilds the ring whole has to do that much.
//!
//! Every sample is proven: the verdict turned the backend down, its entry carries the down
//! flag, and the VIP's window read back from `LB_RINGS` no longer names it and equals the
//! baseline's ring. Between samples the backend is brought back up (untimed) and the window
//! is checked to be the full ring again, so each sample starts from the same state.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};
use lb_common::BACKEND_F_DOWN;
use lb_control::{Config, Controller, Probe, RingMember, State, maglev};
use lb_dataplane::{Dataplane, LoadOptions};
use serde_json::{Value, json};

use crate::{
    Opts,
    control::{changed_slots, ms, ms_json, time_ms},
    stats,
    sys::U32Array,
};

const SIZES: [u32; 2] = [65_537, 655_373];
const BACKENDS: [usize; 3] = [10, 100, 1000];
/// `--tiny`: the smallest prime ring that holds 100 slots for each of 10 backends.
const TINY: (u32, usize) = (1009, 10);
/// `--tiny` still takes two samples, so the restore between samples is exercised.
const TINY_SAMPLES: usize = 2;
const VIP: &str = "failover";

pub struct Row {
    pub m: u32,
    pub n: usize,
    /// Slots the controller wrote for the failover (as its event reports).
    slots: usize,
    /// Call to return of `on_probe`, ms.
    ours: Vec<f64>,
    /// The controller's own "ms after the verdict" from its event.
    logged: Vec<f64>,
    baseline: Vec<f64>,
    failures: Vec<String>,
}

impl Row {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn markdown(&self) -> String {
        format!(
            "| one backend down | {} | {} | {} | {} | {} | {} | {:.2} | {} |\n",
            self.m,
            self.n,
            self.slots,
            ms(&self.ours),
            ms(&self.logged),
            ms(&self.baseline),
            stats(&self.ours).0 / stats(&self.baseline).0,
            if self.ok() {
                format!("ok: {} samples", self.ours.len())
            } else {
                format!("FAILED: {}", self.failures.join("; "))
            }
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "id": format!("failover_m{}_n{}", self.m, self.n),
            "m": self.m,
            "backends": self.n,
            "slots": self.slots,
            "samples": self.ours.len(),
            "ours": ms_json(&self.ours),
            "controller_logged": ms_json(&self.logged),
            "baseline_maglev_batch": ms_json(&self.baseline),
            "proof": if self.ok() { "ok" } else { "failed" },
            "failures": self.failures,
        })
    }
}

pub const TABLE_HEAD: &str = "\n| Failover: verdict to maps written | M | backends | slots written | \
    ours (Controller::on_probe) | controller's log | baseline: maglev + one batch | \
    ours / baseline | proof |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n";

pub fn run(o: &Opts) -> Result<Vec<Row>> {
    eprintln!("[bench] control plane: failover through Controller::on_probe");
    let (cases, samples): (Vec<(u32, usize)>, usize) = if o.tiny {
        (vec![TINY], TINY_SAMPLES)
    } else {
        let cases = SIZES
            .iter()
            .flat_map(|m| BACKENDS.iter().map(move |n| (*m, *n)))
            // The configuration refuses rings with fewer than 100 slots per backend.
            .filter(|(m, n)| *m as usize >= 100 * n)
            .collect();
        (cases, o.samples)
    };
    cases
        .into_iter()
        .map(|(m, n)| {
            measure(m, n, samples)
                .with_context(|| format!("failover with {n} backends, ring size {m}"))
        })
        .collect()
}

/// One VIP of `n` backends with a ring of `m`, checks that flip on a single result.
fn config(m: u32, n: usize) -> Result<Config> {
    // The interface is only named, never attached: the controller writes maps, and
    // validation wants one.
    let mut toml = format!(
        "[daemon]\ninterfaces = [\"lo\"]\n\n[dataplane]\nring_capacity = {m}\n\n\
         [[vip]]\nname = \"{VIP}\"\naddress = \"198.51.100.1\"\nport = 80\nring_size = {m}\n\
         health = {{ kind = \"tcp\", rise = 1, fall = 1 }}\n"
    );
    for i in 0..n {
        toml.push_str(&format!(
            "\n[[vip.backend]]\naddress = \"198.18.{}.{}\"\n",
            1 + i / 250,
            1 + i % 250
        ));
    }
    Config::parse(&toml, Path::new("failover-bench.toml"))
        .map_err(|e| anyhow::anyhow!("the generated configuration does not validate: {e}"))
}

fn probe(backend_id: u32, result: Result<std::time::Duration, String>) -> Probe {
    Probe {
        vip: VIP.into(),
        backend_id,
        result,
        at: std::time::Instant::now(),
        agent: None,
    }
}

/// Slots written and milliseconds, from the controller's event
/// "... -> down: ...; N ring slots written X ms after the verdict".
fn logged(what: &str) -> Option<(usize, f64)> {
    let tail = what.rsplit("; ").next()?;
    let (slots, rest) = tail.split_once(" ring slots written ")?;
    let ms = rest.strip_suffix(" ms after the verdict")?;
    Some((slots.parse().ok()?, ms.parse().ok()?))
}

fn measure(m: u32, n: usize, samples: usize) -> Result<Row> {
    let dp = Dataplane::load(
        LoadOptions {
            flows: 1024,
            ring_capacity: m,
        },
        None,
    )
    .context("loading lb_xdp for the failover (run as root)")?;
    let mut ctl = Controller::new(dp, m).context("starting the controller")?;
    ctl.apply(&config(m, n)?)
        .context("applying the generated configuration")?;
    let v = &ctl.vips[0];
    let offset = v.meta.ring_offset;
    let failed = v.backends[n / 2].id;
    // As the controller builds its ring: every backend, identity its address, its weight.
    let all: Vec<RingMember> = v
        .backends
        .iter()
        .map(|b| RingMember {
            id: b.id,
            identity: b.cfg.address.to_string().into_bytes(),
            weight: b.weight(),
        })
        .collect();
    let full = maglev(&all, m)?;
    let survivors: Vec<RingMember> = all.iter().filter(|b| b.id != failed).cloned().collect();
    let after = maglev(&survivors, m)?;
    if ctl.maps_mut().read_ring(offset, m as usize)? != full {
        bail!("the ring the controller wrote differs from ring::maglev of the same backends");
    }

    let mut row = Row {
        m,
        n,
        slots: 0,
        ours: Vec::new(),
        logged: Vec::new(),
        baseline: Vec::new(),
        failures: Vec::new(),
    };
    for s in 0..samples {
        let down = probe(failed, Err("injected by lbt-bench".into()));
        let t = Instant::now();
        let state = ctl.on_probe(&down).context("the down verdict")?;
        row.ours.push(t.elapsed().as_secs_f64() * 1e3);

        let mut wrong = Vec::new();
        let mut fail = |what: String| wrong.push(format!("sample {s}: {what}"));
        if state != Some(State::Down) {
            fail(format!("the verdict gave {state:?}, not Down"));
        }
        match ctl.events.back().and_then(|e| logged(&e.what)) {
            Some((slots, ms)) => {
                row.slots = slots;
                row.logged.push(ms);
            }
            None => fail("no \"ring slots written ... after the verdict\" event".into()),
        }
        if ctl.maps_mut().backend(failed)?.flags & BACKEND_F_DOWN == 0 {
            fail(format!("backend {failed} is not flagged down"));
        }
        let window = ctl.maps_mut().read_ring(offset, m as usize)?;
        if window.contains(&failed) {
            let left = window.iter().filter(|s| **s == failed).count();
            fail(format!("backend {failed} still holds {left} slots"));
        } else if window != after {
            fail("the window differs from ring::maglev of the survivors".into());
        }

        let up = probe(failed, Ok(std::time::Duration::from_millis(1)));
        if ctl.on_probe(&up).context("the up verdict")? != Some(State::Up)
            || ctl.maps_mut().read_ring(offset, m as usize)? != full
        {
            fail("bringing the backend back up did not restore the full ring".into());
        }
        row.failures.append(&mut wrong);
    }
    let changed = changed_slots(&full, &after).0.len();
    if row.slots != changed {
        row.failures.push(format!(
            "the controller reports {} slots written, the rings differ in {changed}",
            row.slots
        ));
    }

    let array = U32Array::new(m)?;
    row.baseline = time_ms(samples, || {
        let new = maglev(&survivors, m)?;
        let (keys, values) = changed_slots(&full, &new);
        array.update_batch(&keys, &values)
    })?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::logged;

    #[test]
    fn reads_the_controllers_event() {
        let what = "up -> down: 1 checks failed, last: x; 6787 ring slots written 2.61 ms after the verdict";
        assert_eq!(logged(what), Some((6787, 2.61)));
        assert_eq!(logged("up -> down by configuration"), None);
    }
}
