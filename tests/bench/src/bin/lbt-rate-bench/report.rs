//! The table and the JSON: one row per path, medians over the interleaved rounds.

use lb_bench::stats::stats;
use serde_json::{Value, json};

use crate::measure::Sample;

pub struct Row {
    pub id: String,
    pub label: String,
    pub flows: u32,
    pub backends: Option<u32>,
    pub samples: Vec<Sample>,
}

impl Row {
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

    fn not_forwarded(&self) -> Option<u64> {
        self.samples.iter().map(|s| s.not_forwarded).sum()
    }

    fn proof(&self) -> String {
        if !self.ok() {
            return "**FAILED**".into();
        }
        match self.backends {
            None if self.id.starts_with("tracker") => {
                "ok: sink = IP-in-IP only; every frame a table hit, balancer counters 0".into()
            }
            None => "ok: all plain, balancer counters 0".into(),
            Some(_) => {
                "ok: sink = IP-in-IP only; tx_ipip = flow_hit = fib_fallback, others 0".into()
            }
        }
    }

    /// `(reflector, tracker)`: the baselines' median Mpps at this row's flow count.
    pub fn markdown(&self, (reflector, tracker): (f64, f64)) -> String {
        let (med, min, max) = self.mpps();
        let lost = self.total(|s| s.generated - s.sunk);
        format!(
            "| {} | {} | {} | {med:.2} | {min:.2}-{max:.2} | {:.2} | {} | {:.0} | {:.0} | {:.2} | {lost} | {} | {} |\n",
            self.label,
            group(self.flows as u64),
            self.backends.map_or("".into(), |b| b.to_string()),
            med / reflector,
            if self.id.starts_with("reflector") {
                String::new()
            } else {
                format!("{:.2}", med / tracker)
            },
            1e3 / med,
            1e3 / med - 1e3 / reflector,
            self.offered(),
            self.not_forwarded().map_or("".into(), |n| n.to_string()),
            self.proof(),
        )
    }

    pub fn json(&self, (reflector, tracker): (f64, f64)) -> Value {
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
            "flows": self.flows,
            "backends": self.backends,
            "mpps_median": med,
            "mpps_min": min,
            "mpps_max": max,
            "x_baseline": med / reflector,
            "x_tracker": med / tracker,
            "ns_per_frame": 1e3 / med,
            "ns_over_baseline": 1e3 / med - 1e3 / reflector,
            "offered_mpps_median": self.offered(),
            "samples_mpps": self.samples.iter().map(|s| s.mpps).collect::<Vec<_>>(),
            "generated": self.total(|s| s.generated),
            "sunk": self.total(|s| s.sunk),
            "lost": self.total(|s| s.generated - s.sunk),
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

pub const HEADER: &str = "| Path | flows | backends | Mpps | min-max | x reflector | x tracker | ns/frame (one core) | ns over the reflector | offered Mpps | lost (generated - sunk) | not forwarded by lb_xdp | proof (every run) |\n\
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
