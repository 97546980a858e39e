//! Reading what `lbt-echo hold` reports.

use std::{collections::BTreeMap, process::Child};

/// Where held connections landed and which broke, per backend name.
#[derive(Debug, Default)]
pub struct Held {
    pub at: BTreeMap<String, u32>,
    pub broken: BTreeMap<String, u32>,
    /// Connects that failed and were tried again before the connection was held.
    pub retried: u32,
    /// How each broken connection broke (moved to another backend, reset, timed out)
    /// and when.
    pub why: Vec<String>,
}

pub fn finish(child: Child) -> Held {
    let out = child.wait_with_output().expect("hold client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hold client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut h = Held {
        why: String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains(" broke after "))
            .map(str::to_string)
            .collect(),
        ..Held::default()
    };
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["retried", n] => h.retried = n.parse().unwrap(),
            ["broken", name, n] => {
                h.broken.insert(name.to_string(), n.parse().unwrap());
            }
            [name, n] => {
                h.at.insert(name.to_string(), n.parse().unwrap());
            }
            _ => panic!("hold output {line:?}"),
        }
    }
    h
}
