//! Fleet mode's rules, without etcd: which parts of a configuration are the fleet's and
//! which the node's own, how a node's effective configuration is put together from both,
//! and when a node counts as left behind by its fleet.
//!
//! The fleet's document holds only `[[vip]]` tables (with their backends and checks): what
//! every node must agree on for a flow to keep its backend when the router moves it. The
//! node's file keeps `[daemon]`, `[dataplane]` and `[announce]`: its NICs, pins, table
//! sizes and BIRD, which differ from node to node. A node runs the fleet's text followed by
//! its own: the fleet's text comes first, so an error in it is reported at its own lines.

use thiserror::Error;

use crate::announce::Withheld;

/// The top-level keys a fleet document may hold.
const FLEET_KEYS: &[&str] = &["vip"];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FleetTextError {
    #[error(
        "the fleet's configuration holds [{0}], which is each node's own (set it in the node's file): the fleet's holds only [[vip]] tables"
    )]
    NodeSection(String),
    #[error("the fleet's configuration is not TOML: {0}")]
    Syntax(String),
    #[error(
        "in fleet mode the VIPs live in etcd, not in this file: remove its [[vip]] tables (`lbctl config apply` them to the fleet once)"
    )]
    LocalVips,
    #[error(
        "in fleet mode this file must begin with a table header such as [daemon], before any key: the fleet's [[vip]] tables are read ahead of it"
    )]
    LocalBareKey,
}

fn top_keys(text: &str) -> Result<Vec<String>, String> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| e.message().to_string())?;
    Ok(doc
        .get_ref()
        .keys()
        .map(|k| k.get_ref().to_string())
        .collect())
}

/// Check that `text` is a fleet document: TOML whose top-level keys are only `vip`.
pub fn check_fleet_text(text: &str) -> Result<(), FleetTextError> {
    let keys = top_keys(text).map_err(FleetTextError::Syntax)?;
    match keys.into_iter().find(|k| !FLEET_KEYS.contains(&k.as_str())) {
        Some(k) => Err(FleetTextError::NodeSection(k)),
        None => Ok(()),
    }
}

/// Check that `text` is fit to be a node's own file in fleet mode: no VIPs, and nothing
/// before its first table header (a bare key there would land in the fleet's last table).
pub fn check_node_text(text: &str) -> Result<(), FleetTextError> {
    if top_keys(text).is_ok_and(|k| k.iter().any(|k| k == "vip")) {
        return Err(FleetTextError::LocalVips);
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    match first {
        Some(l) if !l.starts_with('[') => Err(FleetTextError::LocalBareKey),
        _ => Ok(()),
    }
}

/// The configuration a node runs: the fleet's text, then the node's own.
pub fn compose(fleet: &str, node: &str) -> String {
    let mut text = String::with_capacity(fleet.len() + node.len() + 1);
    text.push_str(fleet);
    if !fleet.is_empty() && !fleet.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(node);
    text
}

/// The newest revision a peer runs, as this node knows it: from the peers' status in etcd,
/// or, cut off from etcd, from the peers themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNewest {
    pub revision: u64,
    /// When this node first learned that a peer runs it (ms since the epoch).
    pub since_ms: u64,
}

/// Whether a node that runs `running` is left behind: a peer has run a newer revision for
/// at least `grace_ms`. A revision that no peer runs leaves nobody behind, so a fleet that
/// is behind as a whole (etcd unreachable from all, a revision every node refuses) keeps
/// serving what it runs.
pub fn behind(
    running: u64,
    newest: Option<PeerNewest>,
    now_ms: u64,
    grace_ms: u64,
) -> Option<Withheld> {
    let n = newest?;
    (n.revision > running && now_ms.saturating_sub(n.since_ms) >= grace_ms).then_some(
        Withheld::Behind {
            running,
            fleet: n.revision,
        },
    )
}
