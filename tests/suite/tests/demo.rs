//! The README's first command, `cargo xtask demo`, is `lb-demo`: run it (same code, built
//! here as lbt-demo, driving lbt-lbd) and check that it shows every step and leaves nothing
//! behind.

use std::process::{Command, Stdio};

#[test]
fn the_demo_runs_every_step_and_cleans_up() {
    let child = Command::new(env!("CARGO_BIN_EXE_lbt-demo"))
        .args(["--lbd", env!("CARGO_BIN_EXE_lbt-lbd")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "1. Daemon up",
        "2. Kill backend b2",
        "3. Drain b3",
        "4. A configuration change",
        "5. Dataplane counters",
        "Everything the demo created is removed",
    ] {
        assert!(text.contains(step), "no {step:?} in:\n{text}");
    }
    assert!(
        text.contains("0 to b2, 0 failed"),
        "requests failed or reached b2 after the failover:\n{text}"
    );
    assert!(text.contains("still answers from b3: yes"), "{text}");
    // Its namespaces and pins are named after its pid.
    let mine = format!("lbt-{pid}-");
    let namespaces = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !namespaces.contains(&mine),
        "the demo left namespaces: {namespaces}"
    );
    let pins: Vec<String> = std::fs::read_dir("/run/lbd-demo-bpffs")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&mine))
                .collect()
        })
        .unwrap_or_default();
    assert!(pins.is_empty(), "the demo left pins: {pins:?}");
    // Nor its bpffs mount (only the demo pins there; another demo running now would keep it).
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(" /run/lbd-demo-bpffs "),
        "the demo left its bpffs mounted:\n{mounts}"
    );
}
