//! Fuzzing of the configuration parser and validator (proptest): the annotated example,
//! mutated by random edits, is parsed. Every input gets an answer (never a panic), and a
//! configuration that validates can be applied: validation owns every limit the apply
//! would otherwise hit later (ids, ring windows, map sizes).
//!
//! The suite runs a few hundred cases; a longer run is
//! `PROPTEST_CASES=20000 cargo test -p lb-control --release fuzz` (docs/daemon.md).

use proptest::prelude::*;

use super::*;

const EXAMPLE: &str = include_str!("../../../../config/lb.example.toml");

/// Pieces an edit inserts: TOML syntax, keys, and values at and past every limit.
const PIECES: &[&str] = &[
    "\n",
    "\r\n",
    "\0",
    "\"",
    "'",
    "[",
    "]",
    "[[vip]]\n",
    "[[vip.backend]]\n",
    "=",
    ".",
    ",",
    "#",
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "4294967295",
    "18446744073709551616",
    "101",
    "65537",
    "1000003",
    "1e9",
    "true",
    "nan",
    "inf",
    "\"\"",
    "\"0.0.0.0\"",
    "\"::\"",
    "\"224.0.0.1\"",
    "\"198.18.100.1\"",
    "\"2001:db8::1\"",
    "\"eth0\"",
    "\"../x\"",
    "weight = ",
    "ring_size = ",
    "port = ",
    "flows = ",
    "ring_capacity = ",
    "name = ",
    "address = ",
    "kind = ",
    "\"http\"",
    "\"udp\"",
    "min_primaries = ",
    "role = \"backup\"",
    "scheduler = \"round_robin\"",
    "é",
    "\u{202e}",
    "interval_ms = ",
    "timeout_ms = ",
    "expect_status = ",
    "path = \"/\r\nX: 1\"",
];

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, usize),
    Delete(usize, usize),
    DuplicateLine(usize),
    DeleteLine(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0..PIECES.len()).prop_map(|(at, p)| Edit::Insert(at, p)),
        (any::<usize>(), 1usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::DeleteLine),
    ]
}

/// The nearest char boundary at or before `at % len`.
fn boundary(text: &str, at: usize) -> usize {
    let mut i = at % (text.len() + 1);
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(edits: &[Edit]) -> String {
    let mut text = EXAMPLE.to_string();
    for e in edits {
        match *e {
            Edit::Insert(at, p) => {
                let i = boundary(&text, at);
                text.insert_str(i, PIECES[p]);
            }
            Edit::Delete(at, n) => {
                let i = boundary(&text, at);
                let j = boundary(&text, i + n.min(text.len() - i));
                text.replace_range(i..j.max(i), "");
            }
            Edit::DuplicateLine(at) | Edit::DeleteLine(at) => {
                let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
                if lines.is_empty() {
                    continue;
                }
                let k = at % lines.len();
                if matches!(e, Edit::DuplicateLine(_)) {
                    lines.insert(k, lines[k]);
                } else {
                    lines.remove(k);
                }
                text = lines.concat();
            }
        }
    }
    text
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300)
}

#[test]
fn fuzz_mutated_configs_get_an_answer_and_what_validates_applies() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let validated = std::cell::Cell::new(0u32);
    let strategy = proptest::collection::vec(edit(), 1..12);
    let outcome = runner.run(&strategy, |edits| {
        let text = mutate(&edits);
        if let Ok(cfg) = Config::parse(&text, std::path::Path::new("lb.toml")) {
            validated.set(validated.get() + 1);
            let mut c = Controller::new(MemMaps::new(), cfg.dataplane.ring_capacity).unwrap();
            let applied = c.apply(&cfg);
            prop_assert!(
                applied.is_ok(),
                "validated but not applied: {:?}\n{text}",
                applied.err()
            );
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    println!(
        "{} of {} mutated configurations validated and applied",
        validated.get(),
        cases()
    );
    // Otherwise the apply half of the property was never exercised.
    assert!(
        validated.get() * 50 >= cases(),
        "only {} validated",
        validated.get()
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_arbitrary_text_gets_an_answer(text in "\\PC{0,400}") {
        let _ = Config::parse(&text, std::path::Path::new("lb.toml"));
    }
}

#[test]
fn the_unmutated_example_is_the_fuzzers_starting_point() {
    // A fuzzer whose every case fails to parse would test only the parser's errors.
    assert!(Config::parse(&mutate(&[]), std::path::Path::new("lb.toml")).is_ok());
}
