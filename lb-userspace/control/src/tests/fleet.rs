//! Fleet mode's rules: what the fleet's document may hold, how a node's configuration is
//! put together, the `[daemon.fleet]` checks, and when a node is left behind.

use super::*;
use crate::{
    FleetTextError, PeerNewest, Withheld, behind, check_fleet_text, check_node_text, compose,
};

const NODE: &str = "# node lb1\n[daemon]\ninterfaces = [\"eth0\"]\n\n[daemon.fleet]\nname = \"edge\"\nendpoints = [\"http://127.0.0.1:2379\"]\n";

const FLEET: &str = "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nring_size = 101\n\n[[vip.backend]]\naddress = \"198.18.0.21\"\n";

#[test]
fn a_node_runs_the_fleets_vips_with_its_own_sections() {
    check_fleet_text(FLEET).unwrap();
    check_node_text(NODE).unwrap();
    let cfg = Config::parse(&compose(FLEET, NODE), Path::new("fleet")).unwrap();
    assert_eq!(cfg.vips.len(), 1);
    assert_eq!(cfg.daemon.interfaces, ["eth0"]);
    let f = cfg.daemon.fleet.as_ref().unwrap();
    assert_eq!(
        (f.name.as_str(), f.prefix.as_str(), f.grace_ms),
        ("edge", "/lbd", 3000)
    );
    // An empty fleet (no revision yet) runs no VIP.
    assert!(
        Config::parse(&compose("", NODE), Path::new("f"))
            .unwrap()
            .vips
            .is_empty()
    );
    // A fleet text without a final newline still ends before the node's first table.
    let no_newline = FLEET.trim_end();
    assert_eq!(
        Config::parse(&compose(no_newline, NODE), Path::new("f"))
            .unwrap()
            .vips
            .len(),
        1
    );
}

#[test]
fn an_error_in_the_fleets_text_is_reported_at_its_own_line() {
    let bad = FLEET.replace("port = 80", "port = 80\nring_size_typo = 3");
    let e = Config::parse(&compose(&bad, NODE), Path::new("fleet revision 4")).unwrap_err();
    let shown = e.to_string();
    assert!(shown.starts_with("fleet revision 4:5:1:"), "{shown}");
}

#[test]
fn the_fleet_holds_only_vips_and_the_node_none() {
    for section in ["daemon", "dataplane", "announce"] {
        let text = format!("{FLEET}\n[{section}]\n");
        assert_eq!(
            check_fleet_text(&text),
            Err(FleetTextError::NodeSection(section.into()))
        );
    }
    assert!(matches!(
        check_fleet_text("[[vip]\n"),
        Err(FleetTextError::Syntax(_))
    ));
    assert_eq!(
        check_node_text(&format!("{NODE}\n{FLEET}")),
        Err(FleetTextError::LocalVips)
    );
    assert_eq!(
        check_node_text("# lb1\ndaemon.interfaces = [\"eth0\"]\n"),
        Err(FleetTextError::LocalBareKey)
    );
}

#[test]
fn fleet_settings_are_checked_at_their_key() {
    let cases = [
        ("name = \"edge\"", "name = \"edge/1\"", "name"),
        ("name = \"edge\"", "name = \"edge\"\nnode = \"\"", "node"),
        (
            "endpoints = [\"http://127.0.0.1:2379\"]",
            "endpoints = []",
            "endpoints",
        ),
        (
            "endpoints = [\"http://127.0.0.1:2379\"]",
            "endpoints = [\"127.0.0.1:2379\"]",
            "endpoint",
        ),
        (
            "endpoints = [\"http://127.0.0.1:2379\"]",
            "endpoints = [\"http://a:2379\", \"https://b:2379\"]",
            "mix",
        ),
        (
            "name = \"edge\"",
            "name = \"edge\"\nprefix = \"lbd\"",
            "prefix",
        ),
        (
            "name = \"edge\"",
            "name = \"edge\"\ngrace_ms = 10",
            "grace_ms 10 is out of range 100..=600000",
        ),
        (
            "name = \"edge\"",
            "name = \"edge\"\nlease_s = 1",
            "lease_s 1 is out of range 2..=3600",
        ),
        (
            "name = \"edge\"",
            "name = \"edge\"\ncert = \"/c.pem\"",
            "cert and key",
        ),
        (
            "name = \"edge\"",
            "name = \"edge\"\nuser = \"lbd\"",
            "password_file",
        ),
        (
            "name = \"edge\"",
            "name = \"edge\"\nca = \"/ca.pem\"",
            "https://",
        ),
        (
            "name = \"edge\"",
            "name = \"edge\"\npassword = \"x\"",
            "unknown field",
        ),
    ];
    for (from, to, needle) in cases {
        let text = NODE.replace(from, to);
        let e = Config::parse(&text, Path::new("lb.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{to}: {e}");
        // The caret line points into [daemon.fleet], not at the file's top.
        assert!(!e.starts_with("lb.toml:1:"), "{to}: {e}");
    }
}

#[test]
fn a_node_is_behind_only_once_a_peer_has_run_a_newer_revision_for_the_grace() {
    let peer = |revision, since_ms| Some(PeerNewest { revision, since_ms });
    // In step, or nobody runs anything newer: not behind.
    assert_eq!(behind(7, None, 10_000, 3000), None);
    assert_eq!(behind(7, peer(7, 0), 10_000, 3000), None);
    // Newer, but within the grace: applying it may be under way.
    assert_eq!(behind(7, peer(8, 8_000), 10_000, 3000), None);
    assert_eq!(
        behind(7, peer(8, 7_000), 10_000, 3000),
        Some(Withheld::Behind {
            running: 7,
            fleet: 8
        })
    );
    // A node ahead of its peers (it applied first) is not behind.
    assert_eq!(behind(9, peer(8, 0), 10_000, 3000), None);
}
