//! The table and the JSON: one row per path, medians over the interleaved rounds.

use lb_bench::stats::stats;
use serde_json::{Value, json};

use crate::measure::{Path, Sample};

pub struct Row {
    pub path: Path,
    pub id: String,
    pub label: String,
    pub backends: Option<u32>,
    pub samples: Vec<Sample>,
}

/// A row's figures against the baselines of its flow count. The ratios pair each round's
/// sample with the baseline's sample of the same round (the runs of a round follow each
/// other within seconds), then take the median: drift on this shared machine between
/// rounds cancels out.
pub struct Against<'a> {
    pub reflector: &'a Row,
    pub tracker: &'a Row,
}

impl Against<'_> {
    fn paired(row: &Row, base: &Row) -> f64 {
        let ratios: Vec<f64> = row
            .samples
            .iter()
            .zip(&base.samples)
            .map(|(a, b)| a.mpps / b.mpps)
            .collect();
        stats(&ratios).0
    }
}

impl Row {
    pub fn flows(&self) -> u32 {
        self.path.flows()
    }

    fn mpps(&self) -> (f64, f64, f64) {
        stats(&self.samples.iter().map(|s| s.mpps).collect::<Vec<_>>())
    }

    fn offered(&self) -> f64 {
        stats(
            &self
                .samples
                .iter()
                .map(|s| s.offered_mpps)
                .collect::<Vec<_>>(),
        )
        .0
    }

    pub fn ok(&self) -> bool {
        self.samples.iter().all(|s| s.failures.is_empty())
    }

    fn total(&self, f: impl Fn(&Sample) -> u64) -> u64 {
        self.samples.iter().map(f).sum()
    }

    fn lost(&self) -> u64 {
        self.total(|s| s.generated.saturating_sub(s.sunk))
    }

    fn not_forwarded(&self) -> Option<u64> {
        self.samples.iter().map(|s| s.not_forwarded).sum()
    }

    fn proof(&self) -> String {
        if !self.ok() {
            return "**FAILED**".into();
        }
        match self.path {
            Path::Reflector { .. } => "ok: all plain, balancer counters 0".into(),
            Path::Tracker { .. } => {
                "ok: sink = IP-in-IP only; every frame a table hit, balancer counters 0".into()
            }
            Path::Lb { .. } => {
                "ok: sink = IP-in-IP only; tx_ipip = flow_hit = fib_fallback, others 0".into()
            }
        }
    }

    /// The tracker's ratio, except for the reflector's own rows (where it means nothing).
    fn x_tracker(&self, vs: &Against) -> Option<f64> {
        (!matches!(self.path, Path::Reflector { .. })).then(|| Against::paired(self, vs.tracker))
    }

    pub fn markdown(&self, vs: &Against) -> String {
        let (med, min, max) = self.mpps();
        format!(
            "| {} | {} | {} | {med:.2} | {min:.2}-{max:.2} | {:.2} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} |\n",
            self.label,
            group(self.flows() as u64),
            self.backends.map_or("".into(), |b| b.to_string()),
            Against::paired(self, vs.reflector),
            self.x_tracker(vs).map_or("".into(), |x| format!("{x:.2}")),
            1e3 / med,
            1e3 / med - 1e3 / vs.reflector.median(),
            self.offered(),
            self.lost(),
            self.not_forwarded().map_or("".into(), |n| n.to_string()),
            self.proof(),
        )
    }

    pub fn json(&self, vs: &Against) -> Value {
        let (med, min, max) = self.mpps();
        let counters: serde_json::Map<String, Value> = lb_common::Reason::ALL
            .iter()
            .map(|r| {
                let n: u64 = self
                    .samples
                    .iter()
                    .flat_map(|s| &s.lb)
                    .filter(|(x, _)| x == r)
                    .map(|(_, n)| n)
                    .sum();
                (r.label().to_string(), json!(n))
            })
            .filter(|(_, n)| *n != json!(0))
            .collect();
        json!({
            "id": self.id,
            "label": self.label,
            "flows": self.flows(),
            "backends": self.backends,
            "mpps_median": med,
            "mpps_min": min,
            "mpps_max": max,
            "x_reflector": Against::paired(self, vs.reflector),
            "x_tracker": self.x_tracker(vs),
            "ns_per_frame": 1e3 / med,
            "ns_over_reflector": 1e3 / med - 1e3 / vs.reflector.median(),
            "offered_mpps_median": self.offered(),
            "samples_mpps": self.samples.iter().map(|s| s.mpps).collect::<Vec<_>>(),
            "generated": self.total(|s| s.generated),
            "sunk": self.total(|s| s.sunk),
            "lost": self.lost(),
            "not_forwarded_by_lb": self.not_forwarded(),
            "lb_counters_grew": counters,
            "proof": if self.ok() { "ok" } else { "failed" },
            "failures": self.samples.iter().flat_map(|s| s.failures.clone()).collect::<Vec<_>>(),
        })
    }

    pub fn median(&self) -> f64 {
        self.mpps().0
    }
}

pub const HEADER: &str = "| Path | flows | backends | Mpps | min-max | x reflector (paired) | x tracker (paired) | ns/frame (one core) | ns over the reflector | offered Mpps | lost (generated - sunk) | not forwarded by lb_xdp | proof (every run) |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";

/// 1048576 as 1,048,576.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_grouped() {
        assert_eq!(super::group(1_048_576), "1,048,576");
        assert_eq!(super::group(1024), "1,024");
        assert_eq!(super::group(1), "1");
    }
}
