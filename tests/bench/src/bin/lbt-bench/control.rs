//! Control-plane figures: Maglev build time (`lb_control::maglev`) beside the
//! paper's plain algorithm, and the time to write a ring, or a one-backend change to it,
//! into `LB_RINGS` (`Dataplane::write_ring` / `update_ring`, one syscall per slot) beside
//! one `BPF_MAP_UPDATE_BATCH` of the same slots; then the failover path through the daemon's
//! controller (failover.rs).

use std::{hint::black_box, time::Instant};

use anyhow::{Context as _, Result};
use lb_control::{RingMember, maglev};
use lb_dataplane::{Dataplane, LoadOptions};

use serde_json::{Value, json};

use crate::{Opts, failover, stats, sys::U32Array};

const SIZES: [u32; 2] = [65_537, 655_373];
const BACKENDS: [usize; 3] = [10, 100, 1000];
/// Backends of the ring written whole (a full write does not depend on their number).
const FULL_WRITE_BACKENDS: usize = 100;

fn members(n: usize) -> Vec<RingMember> {
    (0..n)
        .map(|i| RingMember {
            id: i as u32 + 1,
            identity: format!("198.18.{}.{}", 1 + i / 250, 1 + i % 250).into_bytes(),
            weight: 1,
        })
        .collect()
}

/// FNV-1a then SplitMix64's finalizer, as ring.rs derives permutations.
fn hash(id: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in id {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The baseline: Maglev's population loop as the paper gives it (Eisenbud et al., NSDI
/// 2016, Pseudocode 1): equal weights, backends in list order, no checks.
fn reference_maglev(ids: &[Vec<u8>], m: u32) -> Vec<u32> {
    let m64 = m as u64;
    let perms: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| (hash(id, 1) % m64, hash(id, 2) % (m64 - 1) + 1))
        .collect();
    let mut next = vec![0u64; ids.len()];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = ((offset + next[i] * skip) % m64) as usize;
            while entry[c] != u32::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m64) as usize;
            }
            entry[c] = i as u32 + 1;
            next[i] += 1;
            filled += 1;
            if filled == m64 {
                return entry;
            }
        }
    }
}

/// The slots where `new` differs from `old`, and their new values.
pub fn changed_slots(old: &[u32], new: &[u32]) -> (Vec<u32>, Vec<u32>) {
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (_, b))| (i as u32, *b))
        .unzip()
}

/// `samples` timings of `f`, in milliseconds.
pub fn time_ms(samples: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

struct MaglevRow {
    m: u32,
    n: usize,
    /// Ours, or why the ring refused the size.
    ours: Result<Vec<f64>, String>,
    reference: Vec<f64>,
}

struct WriteRow {
    what: &'static str,
    m: u32,
    n: usize,
    slots: usize,
    ours: Vec<f64>,
    batch: Vec<f64>,
}

pub struct Report {
    samples: usize,
    maglev: Vec<MaglevRow>,
    writes: Vec<WriteRow>,
    failover: Vec<failover::Row>,
}

pub fn run(o: &Opts) -> Result<Report> {
    eprintln!("[bench] control plane: Maglev builds and ring writes");
    let mut rows = Vec::new();
    for m in SIZES {
        for n in BACKENDS {
            let mem = members(n);
            let ids: Vec<Vec<u8>> = mem.iter().map(|b| b.identity.clone()).collect();
            let ours = match maglev(&mem, m) {
                Err(e) => Err(e.to_string()),
                Ok(_) => Ok(time_ms(o.samples, || {
                    black_box(maglev(black_box(&mem), m)?);
                    Ok(())
                })?),
            };
            let reference = time_ms(o.samples, || {
                black_box(reference_maglev(black_box(&ids), m));
                Ok(())
            })?;
            rows.push(MaglevRow {
                m,
                n,
                ours,
                reference,
            });
        }
    }

    let mut dp = Dataplane::load(
        LoadOptions {
            flows: 1024,
            ring_capacity: SIZES[1],
        },
        None,
    )
    .context("loading lb_xdp for the ring writes (run as root)")?;
    let mut writes = Vec::new();
    for m in SIZES {
        let ring = maglev(&members(FULL_WRITE_BACKENDS), m)?;
        let keys: Vec<u32> = (0..m).collect();
        let array = U32Array::new(m)?;
        let ours = time_ms(o.samples, || {
            dp.write_ring(0, &ring)?;
            Ok(())
        })?;
        let batch = time_ms(o.samples, || array.update_batch(&keys, &ring))?;
        writes.push(WriteRow {
            what: "full ring",
            m,
            n: FULL_WRITE_BACKENDS,
            slots: ring.len(),
            ours,
            batch,
        });
        for n in BACKENDS {
            let all = members(n);
            let Ok(old) = maglev(&all, m) else { continue };
            let mut fewer = all.clone();
            fewer.remove(n / 2);
            let new = maglev(&fewer, m)?;
            dp.write_ring(0, &old)?;
            let (ck, cv) = changed_slots(&old, &new);
            let mut slots = 0;
            let ours = time_ms(o.samples, || {
                slots = dp.update_ring(0, &old, &new)?;
                Ok(())
            })?;
            let batch = time_ms(o.samples, || array.update_batch(&ck, &cv))?;
            writes.push(WriteRow {
                what: "one backend removed",
                m,
                n,
                slots,
                ours,
                batch,
            });
        }
    }
    Ok(Report {
        samples: o.samples,
        maglev: rows,
        writes,
        failover: failover::run(o)?,
    })
}

pub fn ms(v: &[f64]) -> String {
    let (m, lo, hi) = stats(v);
    format!("{m:.2} ({lo:.2}-{hi:.2})")
}

pub fn ms_json(v: &[f64]) -> Value {
    let (m, lo, hi) = stats(v);
    json!({ "ms_median": m, "ms_min": lo, "ms_max": hi })
}

impl Report {
    /// Every failover sample proven to have taken the backend out of the ring.
    pub fn all_ok(&self) -> bool {
        self.failover.iter().all(|r| r.ok())
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### Control plane ({} samples each; ms, median (min-max))\n\n\
             | Maglev build | M | backends | ours (ring.rs) | baseline: paper's algorithm | ours / baseline |\n\
             |---|---:|---:|---:|---:|---:|\n",
            self.samples
        );
        for r in &self.maglev {
            let (ours, ratio) = match &r.ours {
                Ok(v) => (ms(v), format!("{:.2}", stats(v).0 / stats(&r.reference).0)),
                Err(e) => (format!("refused: {e}"), String::new()),
            };
            s.push_str(&format!(
                "| weighted, identity-ordered | {} | {} | {ours} | {} | {ratio} |\n",
                r.m,
                r.n,
                ms(&r.reference)
            ));
        }
        s.push_str(
            "\n| Ring write into LB_RINGS | M | backends | slots written | ours (write_ring / \
             update_ring) | baseline: one BPF_MAP_UPDATE_BATCH | ours / baseline |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for w in &self.writes {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.1} |\n",
                w.what,
                w.m,
                w.n,
                w.slots,
                ms(&w.ours),
                ms(&w.batch),
                stats(&w.ours).0 / stats(&w.batch).0
            ));
        }
        if !self.failover.is_empty() {
            s.push_str(failover::TABLE_HEAD);
            for r in &self.failover {
                s.push_str(&r.markdown());
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        let maglev: Vec<Value> = self
            .maglev
            .iter()
            .map(|r| {
                json!({
                    "id": format!("maglev_m{}_n{}", r.m, r.n),
                    "m": r.m,
                    "backends": r.n,
                    "ours": match &r.ours {
                        Ok(v) => ms_json(v),
                        Err(e) => json!({ "refused": e }),
                    },
                    "baseline_paper": ms_json(&r.reference),
                })
            })
            .collect();
        let writes: Vec<Value> = self
            .writes
            .iter()
            .map(|w| {
                let id = if w.what == "full ring" {
                    format!("ring_write_m{}", w.m)
                } else {
                    format!("ring_update_m{}_n{}", w.m, w.n)
                };
                json!({
                    "id": id,
                    "what": w.what,
                    "m": w.m,
                    "backends": w.n,
                    "slots": w.slots,
                    "ours": ms_json(&w.ours),
                    "baseline_batch": ms_json(&w.batch),
                })
            })
            .collect();
        let failover: Vec<Value> = self.failover.iter().map(failover::Row::json).collect();
        json!({
            "samples": self.samples,
            "maglev": maglev,
            "ring_writes": writes,
            "failover": failover,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_maglev_fills_every_slot_evenly() {
        let ids: Vec<Vec<u8>> = members(10).into_iter().map(|m| m.identity).collect();
        let t = reference_maglev(&ids, 1009);
        assert!(t.iter().all(|&b| (1..=10).contains(&b)));
        for b in 1..=10 {
            let n = t.iter().filter(|&&x| x == b).count();
            assert!((100..=101).contains(&n), "backend {b}: {n} slots");
        }
    }
}
