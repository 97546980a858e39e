//! The benchmark harness (`cargo xtask bench`, binary `lbt-bench`) runs on a tiny size and
//! produces every row, with the counter proof passing for every per-packet case. Nothing
//! here looks at the times: benchmarks are not tests.

use std::process::Command;

/// Per-packet cases, control-plane rows: what BENCHMARKS.md's tables are made of.
const PACKET_ROWS: &[&str] = &[
    "parse_only",
    "non_vip_pass",
    "tcp4_established",
    "tcp4_syn",
    "tcp4_syn_new_flows",
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

/// The line of the results file that holds row `id` (rows are one line each).
fn row<'a>(json: &'a str, id: &str) -> &'a str {
    let key = format!("\"id\": \"{id}\"");
    let mut lines = json.lines().filter(|l| l.contains(&key));
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("no row {id} in the results:\n{json}"));
    assert!(lines.next().is_none(), "row {id} appears twice");
    line
}

#[test]
fn bench_harness_runs_on_a_tiny_size() {
    let dir = std::env::temp_dir().join(format!("lbt-{}-bench", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lbt-bench"))
        .arg("--tiny")
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("run lbt-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = std::fs::read_to_string(&json_path).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "lbt-bench --tiny failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    assert!(json.contains("\"all_proofs_ok\": true"), "{json}");
    for id in PACKET_ROWS {
        let line = row(&json, id);
        assert!(line.contains("\"proof\": \"ok\""), "{id}: {line}");
        assert!(line.contains("\"failures\": []"), "{id}: {line}");
        assert!(line.contains("\"ns_median\": "), "{id}: {line}");
        // One round: one [F, W0, W] sample.
        assert!(line.contains("\"samples\": [ [ "), "{id}: {line}");
    }
    for id in CONTROL_ROWS {
        row(&json, id);
    }
    // A ring of 65,537 slots is refused for 1,000 backends (fewer than 100 slots each).
    assert!(row(&json, "maglev_m65537_n1000").contains("\"refused\""));
    assert!(!json.contains("\"id\": \"ring_update_m65537_n1000\""));
    for key in [
        "\"floor_xdp_pass\"",
        "\"wrapper_overhead\"",
        "\"repeat_trap\"",
    ] {
        assert!(json.contains(key), "{key} missing");
    }
    // The table on stdout has every per-packet row.
    assert!(
        stdout.contains("| XDP_PASS floor F |"),
        "no table on stdout:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("| ok: ").count(),
        PACKET_ROWS.len(),
        "{stdout}"
    );
}
