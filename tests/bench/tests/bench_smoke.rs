//! The benchmark harness (`cargo xtask bench`, binary `lbt-bench`) runs on a tiny size and
//! produces every row, with the counter proof passing for every per-packet case and the
//! read-back proof for every failover sample. Nothing here looks at the times: benchmarks
//! are not tests.

use lb_bench::cli::{TinyRun, run_tiny};
use serde_json::Value;

/// Per-packet cases, control-plane rows: what BENCHMARKS.md's tables are made of.
const PACKET_ROWS: &[&str] = &[
    "parse_only",
    "non_vip_pass",
    "tcp4_established",
    "tcp4_tracker",
    "tcp4_established_fib",
    "tcp4_syn",
    "tcp4_syn_new_flows",
    "tcp4_ack_new_flows",
    "udp4",
    "tcp6_established",
    "tcp4_in_ip6",
    "tcp4_l2dsr",
    "tcp4_65536_flows",
];
const CONTROL_ROWS: &[&str] = &[
    "maglev_m65537_n10",
    "maglev_m65537_n100",
    "maglev_m65537_n1000",
    "maglev_m655373_n10",
    "maglev_m655373_n100",
    "maglev_m655373_n1000",
    "ring_write_m65537",
    "ring_update_m65537_n10",
    "ring_update_m65537_n100",
    "ring_write_m655373",
    "ring_update_m655373_n10",
    "ring_update_m655373_n100",
    "ring_update_m655373_n1000",
];

/// The row of `rows` whose id is `id` (exactly one).
fn row<'a>(rows: &'a Value, id: &str) -> &'a Value {
    let found: Vec<&Value> = rows
        .as_array()
        .expect("an array of rows")
        .iter()
        .filter(|r| r["id"] == id)
        .collect();
    assert_eq!(found.len(), 1, "row {id}: {rows:#}");
    found[0]
}

#[test]
fn bench_harness_runs_on_a_tiny_size() {
    let TinyRun { doc, stdout, .. } = run_tiny(env!("CARGO_BIN_EXE_lbt-bench"));

    assert_eq!(doc["all_proofs_ok"], true, "{doc:#}");
    assert_eq!(doc["settings"]["repeat"], 1000);
    let packet = &doc["packet"];
    for id in PACKET_ROWS {
        let r = row(&packet["rows"], id);
        assert_eq!(r["proof"], "ok", "{id}: {r}");
        assert_eq!(r["failures"], serde_json::json!([]), "{id}: {r}");
        assert!(r["ns_median"].is_number(), "{id}: {r}");
        // Baselines count no balancer reason (the tracker's proof is its own hit counter).
        assert!(
            !r["counters"].as_array().unwrap().is_empty()
                || ["parse_only", "tcp4_tracker"].contains(id)
        );
        // One round: one [F, W0, W] sample.
        assert_eq!(r["samples"].as_array().unwrap().len(), 1, "{id}: {r}");
    }
    assert_eq!(
        packet["rows"].as_array().unwrap().len(),
        PACKET_ROWS.len(),
        "{packet:#}"
    );
    // The floods: the SYN row against established TCP v4, the ACK row's inserts (each an
    // eviction in its full table) within the repeat.
    assert!(
        packet["syn_new_flow_over_established"].is_number(),
        "{packet:#}"
    );
    let ack = row(&packet["rows"], "tcp4_ack_new_flows");
    let inserted = ack["inserted_median_per_run"].as_f64().expect("inserts");
    assert!((0.0..=1000.0).contains(&inserted), "{ack}");
    for key in ["floor_xdp_pass", "wrapper_overhead", "wrapper_plus_pass_w0"] {
        assert!(packet[key]["ns_median"].is_number(), "{key}: {packet:#}");
    }
    // The trap, shown: run directly, the balancer forwards once and passes the rest.
    assert_eq!(packet["repeat_trap"]["counters_grew"]["tx_ipip"], 1);
    assert_eq!(packet["repeat_trap"]["counters_grew"]["pass_not_vip"], 999);

    let control = &doc["control"];
    // --tiny fails one of 10 backends on a 1009-slot ring, twice (restored in between).
    let failover = &control["failover"];
    assert_eq!(failover.as_array().unwrap().len(), 1, "{failover:#}");
    let f = row(failover, "failover_m1009_n10");
    assert_eq!(f["proof"], "ok", "{f:#}");
    assert_eq!(f["failures"], serde_json::json!([]), "{f:#}");
    assert_eq!(f["samples"], 2, "{f:#}");
    // About M/N slots change hands when one of N backends leaves.
    assert!((50..=200).contains(&f["slots"].as_u64().unwrap()), "{f:#}");
    for key in ["ours", "controller_logged", "baseline_maglev_batch"] {
        assert!(f[key]["ms_median"].is_number(), "{key}: {f:#}");
    }
    let mut ids: Vec<&str> = ["maglev", "ring_writes"]
        .iter()
        .flat_map(|k| control[*k].as_array().unwrap())
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = CONTROL_ROWS.to_vec();
    want.sort();
    assert_eq!(ids, want);
    // A ring of 65,537 slots is refused for 1,000 backends (fewer than 100 slots each).
    let refused = &row(&control["maglev"], "maglev_m65537_n1000")["ours"]["refused"];
    assert!(refused.is_string(), "{control:#}");

    // The table on stdout has every per-packet row, each with its proof.
    assert!(
        stdout.contains("| XDP_PASS floor F |"),
        "no table on stdout:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("| ok: ").count(),
        PACKET_ROWS.len() + 1,
        "{stdout}"
    );
    assert!(
        stdout.contains("| one backend down | 1009 | 10 |"),
        "no failover row on stdout:\n{stdout}"
    );
}
