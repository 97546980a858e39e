//! lb-control stays free of aya and tokio: its decisions are tested without root, and lbctl
//! and other light users can depend on it without the kernel side.

fn manifest() -> toml::Table {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every dependency table of the manifest that links into the library: `[dependencies]`
/// and `[target.*.dependencies]`.
fn normal_dependencies(m: &toml::Table) -> Vec<(String, toml::Value)> {
    let mut deps: Vec<(String, toml::Value)> = Vec::new();
    let mut take = |t: Option<&toml::Value>| {
        if let Some(t) = t.and_then(toml::Value::as_table) {
            deps.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    };
    take(m.get("dependencies"));
    if let Some(targets) = m.get("target").and_then(toml::Value::as_table) {
        for t in targets.values() {
            take(t.get("dependencies"));
        }
    }
    deps
}

#[test]
fn no_aya_and_no_tokio_among_the_dependencies() {
    let m = manifest();
    let deps = normal_dependencies(&m);
    assert!(
        deps.iter().any(|(k, _)| k == "lb-common"),
        "the manifest was read: {deps:?}"
    );
    for (name, spec) in &deps {
        let package = spec
            .get("package")
            .and_then(toml::Value::as_str)
            .unwrap_or(name);
        for banned in ["aya", "tokio"] {
            assert!(
                !package.starts_with(banned),
                "lb-control depends on {package}: it must stay free of aya and tokio"
            );
        }
    }
}

#[test]
fn no_dependency_feature_pulls_aya() {
    // lb-common's "user" feature is aya's Pod impls: the dataplane's business, not ours.
    let m = manifest();
    for (name, spec) in normal_dependencies(&m) {
        let features: Vec<&str> = spec
            .get("features")
            .and_then(toml::Value::as_array)
            .map(|a| a.iter().filter_map(toml::Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            !(name == "lb-common" && features.contains(&"user")),
            "lb-control enables lb-common's \"user\" feature, which pulls aya"
        );
    }
}
