//! The health-check and memory benchmarks run on a tiny size (numbers are not checked:
//! they are `cargo xtask bench`'s business).

/// Run a benchmark binary; its last stdout line, parsed as JSON.
fn run_json(exe: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(exe).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON line")
}

#[test]
fn health_bench_runs() {
    let v = run_json(env!("CARGO_BIN_EXE_lbt-health-bench"), &["20", "1"]);
    assert_eq!(v["backends"], 20);
    assert!(v["probes_ok"].as_u64().unwrap() >= 20, "{v}");
    assert!(v["core_share"].as_f64().unwrap() > 0.0);
}

/// Every map is reported.
#[test]
fn memory_bench_runs() {
    let v = run_json(env!("CARGO_BIN_EXE_lbt-mem-bench"), &["5", "2"]);
    assert_eq!(v["backends"], 10);
    for m in ["LB_FLOWS", "LB_RINGS", "LB_VIPS", "LB_BACKENDS", "LB_STATS"] {
        assert!(
            v["per_map_bytes"][m].as_u64().unwrap_or(0) > 0,
            "{m} missing: {v}"
        );
    }
    assert!(v["daemon_kib"].as_u64().unwrap() > 0);
}
