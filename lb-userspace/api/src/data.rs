//! The `data` of each operation's answer, field for field as docs/api.md gives it.
//!
//! Mutations answer a [`RevisionMeta`]; the reads' types are named in the docs of their
//! [`crate::Request`] variants.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{display_as_serialized, parse_as_deserialized};

/// A backend's state as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    Up,
    Down,
    Degraded,
    Draining,
    Disabled,
}

/// Whether a backend serves always or only while the primaries are short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Backup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How a VIP picks a backend for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    Maglev,
    RoundRobin,
    Random,
    LeastConn,
    SourceHash,
}

/// How a VIP's packets reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forward {
    /// IP-in-IP encapsulation.
    Ipip,
    /// L2 direct server return (MAC rewrite).
    L2dsr,
}

display_as_serialized!(BackendState, Role, Protocol, Scheduler, Forward);
parse_as_deserialized!(BackendState, Role, Protocol, Scheduler, Forward);

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The current revision (0 before the first).
    pub revision: u64,
    /// How many VIPs.
    pub vips: u64,
    /// How many backends are in each state (only states that occur).
    pub backends: BTreeMap<BackendState, u64>,
    /// Seconds since the daemon started serving.
    pub uptime_s: u64,
    pub interfaces: Vec<String>,
    pub pin_dir: PathBuf,
    /// Configured interfaces whose NIC went away (deleted, or renamed), so the program no
    /// longer runs there; each is attached again when a NIC of its name appears. Left out
    /// of the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces_lost: Vec<String>,
    /// What is wrong with the revision store, one message each: a revision file that does
    /// not read back whole, a file name lbd does not write, a name at the last id, and the
    /// configuration in force when it could not be recorded. Left out of the JSON when
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub store_problems: Vec<String>,
    /// Route announcements through BIRD; left out while `[announce]` is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    /// Fleet mode: this node's place in its fleet; left out in file mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Membership>,
}

/// A node's place in its fleet, as it knows it (`status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub fleet: String,
    pub node: String,
    /// The fleet revision this node runs (0: none yet).
    pub running: u64,
    /// The fleet's current revision, as last read from etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    /// Whether the node reaches etcd now.
    pub connected: bool,
    /// Why it does not, while it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last fleet revision this node refused, and why (until it runs a newer one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
    /// Set while the node withholds its routes as one left behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<String>,
}

/// A fleet revision a node did not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub revision: u64,
    pub error: String,
}

/// What a node publishes in etcd while it lives (under a lease) and `fleet.status` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetNode {
    pub node: String,
    /// The fleet revision it runs.
    pub running: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
    /// The VIPs whose address it announces.
    pub announced: Vec<String>,
    /// Why it announces none, when it is left behind or drained (one reason for all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    /// Every backend and its state as this node's checks see it.
    pub backends: Vec<FleetBackend>,
    /// Where peers reach its `/fleet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<std::net::SocketAddr>,
    /// When it published this (RFC 3339).
    pub at: String,
}

/// A backend as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetBackend {
    pub vip: String,
    pub address: IpAddr,
    pub state: BackendState,
}

/// `fleet.status`: every live node of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub fleet: String,
    /// The fleet's current revision (0: none yet).
    pub head: u64,
    pub nodes: Vec<FleetNode>,
    /// Backends whose state is not the same on every node that has them.
    pub disagreements: Vec<Disagreement>,
}

/// A backend the nodes see in different states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    pub vip: String,
    pub address: IpAddr,
    /// Each node's view, by node name.
    pub states: BTreeMap<String, BackendState>,
}

/// The backends that `nodes` do not all see in the same state.
pub fn disagreements(nodes: &[FleetNode]) -> Vec<Disagreement> {
    let mut seen: BTreeMap<(String, IpAddr), BTreeMap<String, BackendState>> = BTreeMap::new();
    for n in nodes {
        for b in &n.backends {
            seen.entry((b.vip.clone(), b.address))
                .or_default()
                .insert(n.node.clone(), b.state);
        }
    }
    seen.into_iter()
        .filter(|(_, states)| {
            let mut s = states.values();
            let first = s.next();
            s.any(|x| Some(x) != first)
        })
        .map(|((vip, address), states)| Disagreement {
            vip,
            address,
            states,
        })
        .collect()
}

/// What a node announces (`[announce]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announce {
    /// `lbctl node drain`: every route withdrawn.
    pub maintenance: bool,
    /// The VIP addresses BIRD holds (as lbd last wrote them and BIRD took them).
    pub routes: Vec<IpAddr>,
    /// The last failure to write the routes or reconfigure BIRD, while it lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A row of `vip.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipRow {
    pub name: String,
    pub address: IpAddr,
    /// 0: every port.
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forward: Forward,
    pub ring_size: u32,
    /// How many backends.
    pub backends: u64,
    /// How many backends are `up`.
    pub usable: u64,
    /// The backup pool serves.
    pub on_backup: bool,
    /// Its address is announced (left out while `[announce]` is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<bool>,
    /// Why this VIP does not want its address announced (left out when it does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
}

/// A row of `backend.list` and `health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRow {
    pub vip: String,
    pub address: IpAddr,
    /// As configured.
    pub weight: u32,
    /// In the ring now (agent percentage, slow start).
    pub effective_weight: u32,
    pub role: Role,
    pub state: BackendState,
    /// The last state change's cause.
    pub reason: String,
    /// Seconds in this state.
    pub since_s: u64,
    /// Moving average of check latency; none before the first success.
    pub latency_ms: Option<f64>,
    /// Share of the last checks that failed.
    pub error_rate: f64,
    /// Seconds since the last check; none before the first.
    pub last_check_s: Option<f64>,
}

/// `stats`: dataplane counters, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Packets per reason label (docs/dataplane.md §5).
    pub reasons: BTreeMap<String, u64>,
    pub vips: Vec<VipCounters>,
    pub backends: Vec<BackendCounters>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipCounters {
    pub vip: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounters {
    pub vip: String,
    pub address: IpAddr,
    pub packets: u64,
    pub bytes: u64,
}

/// `metrics`: what `/metrics` serves, for clients that cannot reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsText {
    /// The Prometheus text exposition format (version 0.0.4), as `/metrics` answers it:
    /// the dataplane's counters read from the pinned maps now, and the daemon's own.
    pub text: String,
}

/// A row of `events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// RFC 3339 UTC.
    pub at: String,
    /// `*` for configuration revisions.
    pub vip: String,
    /// None for VIP-wide events.
    pub backend: Option<IpAddr>,
    pub what: String,
}

/// `config.show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigText {
    pub revision: u64,
    /// The TOML text exactly as applied.
    pub config: String,
}

/// `config.validate` (an invalid text is an `invalid` error instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    pub valid: bool,
}

/// `config.diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// Unified, with headers `--- revision FROM` / `+++ revision TO`; empty when equal.
    pub diff: String,
}

/// A revision: a row of `config.history`, and what every mutation answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionMeta {
    pub revision: u64,
    /// RFC 3339 UTC, milliseconds.
    pub at: String,
    /// What made it: `file`, `reload`, `api: OP ...`, `rollback to N`, `import (was revision N)`.
    pub source: String,
    pub comment: String,
}

/// An entry of `config.export`, and of `config.import`'s `revisions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRevision {
    pub meta: ExportedMeta,
    pub config: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedMeta {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub source: String,
    #[serde(default)]
    pub comment: String,
}
