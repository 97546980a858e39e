//! The forwarding-rate benchmark (`lbt-rate-bench`, part of `cargo xtask bench`) runs at
//! its tiny size: every point forwards real frames through the balancer to the sink, and
//! the counters prove it. Nothing here looks at the rates: benchmarks are not tests.

use std::process::Command;

use lb_bench::cli::{TinyRun, run_tiny};
use serde_json::Value;

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn rate_bench_forwards_through_the_balancer_at_a_tiny_size() {
    let TinyRun { doc, stdout, pid } = run_tiny(env!("CARGO_BIN_EXE_lbt-rate-bench"));
    assert_eq!(doc["all_proofs_ok"], true, "{doc:#}");

    // The baselines, each at every flow count: the reflector sent plain frames back, the
    // connection-table baseline IP-in-IP (its own proof: every frame a table hit); the
    // balancer saw none of their frames.
    let bases = doc["baselines"].as_array().unwrap();
    let ids: Vec<&str> = bases.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "reflector_f1",
            "reflector_f1024",
            "reflector_f131072",
            "tracker_f1",
            "tracker_f1024",
            "tracker_f131072"
        ]
    );
    for base in bases {
        assert_eq!(base["proof"], "ok", "{base:#}");
        assert!(n(&base["sunk"]) > 0, "{base:#}");
        assert!(n(&base["sunk"]) <= n(&base["generated"]), "{base:#}");
        assert_eq!(base["lb_counters_grew"], serde_json::json!({}), "{base:#}");
    }

    // Flow sweep at 10 backends, backend sweep at 1,024 flows. 131,072 flows are more than
    // the connection table's default new-entry burst: the warm-up must still put every
    // one of them in the table.
    let rows = doc["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["lb_f1_b10", "lb_f1024_b10", "lb_f131072_b10", "lb_f1024_b1"]
    );
    for r in rows {
        assert_eq!(r["proof"], "ok", "{r:#}");
        let c = &r["lb_counters_grew"];
        let tx = n(&c["tx_ipip"]);
        // Every frame the sink counted was encapsulated by the balancer, each on an
        // established flow, and no frame was counted under any other reason.
        assert!(n(&r["sunk"]) > 0, "{r:#}");
        assert!(n(&r["sunk"]) <= tx && tx <= n(&r["generated"]), "{r:#}");
        assert_eq!(n(&c["flow_hit"]), tx, "{r:#}");
        assert_eq!(
            c.as_object().unwrap().len(),
            3,
            "only tx_ipip, flow_hit, fib_fallback: {r:#}"
        );
        assert!(r["mpps_median"].as_f64().unwrap() > 0.0, "{r:#}");
    }
    assert_eq!(stdout.matches("| ok: ").count(), 10, "{stdout}");

    // Its namespaces (and the veths in them) are gone.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&list.stdout);
    assert!(
        !left.contains(&format!("lbt-{pid}-")),
        "left behind:\n{left}"
    );
}
