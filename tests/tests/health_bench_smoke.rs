//! The health-check capacity benchmark runs on a tiny size (numbers are not checked: they
//! are `cargo xtask bench`'s business).

#[test]
fn health_bench_runs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbt-health-bench"))
        .args(["20", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
    assert_eq!(v["backends"], 20);
    assert!(v["probes_ok"].as_u64().unwrap() >= 20, "{v}");
    assert!(v["core_share"].as_f64().unwrap() > 0.0);
}

/// The memory benchmark runs on a tiny size and reports every map.
#[test]
fn memory_bench_runs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbt-mem-bench"))
        .args(["5", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON line");
    assert_eq!(v["backends"], 10);
    for m in ["LB_FLOWS", "LB_RINGS", "LB_VIPS", "LB_BACKENDS", "LB_STATS"] {
        assert!(
            v["per_map_bytes"][m].as_u64().unwrap_or(0) > 0,
            "{m} missing: {v}"
        );
    }
    assert!(v["daemon_kib"].as_u64().unwrap() > 0);
}
