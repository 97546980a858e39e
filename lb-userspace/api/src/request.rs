//! Requests: every operation with its typed arguments, and the envelope around one.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::{VERSION, data::ExportedRevision};

/// `events` without `limit`.
pub const DEFAULT_EVENT_LIMIT: u64 = 100;

fn default_event_limit() -> u64 {
    DEFAULT_EVENT_LIMIT
}

/// `config.import`'s revisions, with an error that names them: a field missing inside
/// is not a missing argument.
fn exported_revisions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ExportedRevision>, D::Error> {
    Vec::<ExportedRevision>::deserialize(d).map_err(|e| {
        serde::de::Error::custom(format_args!(
            "args.revisions is not what config.export answers: {e}"
        ))
    })
}

/// One operation and its arguments; on the wire `"op": NAME, "args": {...}`.
///
/// Reads are the variants without `comment`; mutations carry an optional `comment`,
/// stored with the revision they make. Variants without arguments are empty struct
/// variants (`Status {}`) so that `args` may be `{}`, missing, or hold keys the operation
/// ignores, as version 1 allows.
///
/// The `fields` of `BackendSet`, `BackendAdd`, `VipAdd` and `VipSet` are the other keys of
/// `args`, passed to the configuration file as they are (string, number, boolean; `null`
/// removes the key). They must not repeat a named argument (`vip`, `address`, `name`,
/// `comment`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "args")]
pub enum Request {
    /// Revision, VIP count, backends by state, uptime: [`crate::Status`].
    #[serde(rename = "status")]
    Status {},
    /// VIPs, or the one named: [`crate::VipRow`]s (an unknown name is `not_found`).
    #[serde(rename = "vip.list")]
    VipList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip: Option<String>,
    },
    /// Backends of every VIP, or of the one named: [`crate::BackendRow`]s.
    #[serde(rename = "backend.list")]
    BackendList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip: Option<String>,
    },
    /// The same as `BackendList`.
    #[serde(rename = "health")]
    Health {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip: Option<String>,
    },
    /// Dataplane counters: [`crate::Stats`].
    #[serde(rename = "stats")]
    Stats {},
    /// Every metric of `/metrics`, in the Prometheus text format: [`crate::MetricsText`].
    /// For clients that cannot reach `[daemon] metrics_listen` (`lbctl top`).
    #[serde(rename = "metrics")]
    Metrics {},
    /// The newest `limit` events, oldest first: [`crate::EventRow`]s.
    #[serde(rename = "events")]
    Events {
        #[serde(default = "default_event_limit")]
        limit: u64,
    },
    /// A revision's text (default: the current one): [`crate::ConfigText`].
    #[serde(rename = "config.show")]
    ConfigShow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<u64>,
    },
    /// Validate a configuration text without applying it: [`crate::Validity`]. `name` is
    /// the file name its error messages give (default `config`).
    #[serde(rename = "config.validate")]
    ConfigValidate {
        config: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Revisions, newest first: [`crate::RevisionMeta`]s.
    #[serde(rename = "config.history")]
    ConfigHistory {},
    /// Unified diff between two revisions (`to` defaults to the current one):
    /// [`crate::Diff`].
    #[serde(rename = "config.diff")]
    ConfigDiff {
        from: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<u64>,
    },
    /// Every revision, oldest first: [`crate::ExportedRevision`]s.
    #[serde(rename = "config.export")]
    ConfigExport {},
    /// Fleet mode: every node of the fleet, what it runs and announces, and where nodes
    /// disagree about a backend: [`crate::FleetStatus`]. `invalid` in file mode.
    #[serde(rename = "fleet.status")]
    FleetStatus {},
    /// Apply a whole configuration text.
    #[serde(rename = "config.apply")]
    ConfigApply {
        config: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
    },
    /// Apply an earlier revision's text again, as a new revision.
    #[serde(rename = "config.rollback")]
    ConfigRollback {
        #[serde(flatten)]
        target: RollbackTarget,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
    },
    /// Record exported revisions and apply the newest.
    #[serde(rename = "config.import")]
    ConfigImport {
        #[serde(deserialize_with = "exported_revisions")]
        revisions: Vec<ExportedRevision>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
    },
    /// Set keys of a backend (`weight`, `role`, `mac`, `drain`, `disabled`).
    #[serde(rename = "backend.set")]
    BackendSet {
        vip: String,
        /// As written in the configuration file.
        address: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
        #[serde(flatten)]
        fields: Map<String, Value>,
    },
    /// Append a backend to a VIP.
    #[serde(rename = "backend.add")]
    BackendAdd {
        vip: String,
        address: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
        #[serde(flatten)]
        fields: Map<String, Value>,
    },
    /// Remove a backend; its established flows move.
    #[serde(rename = "backend.remove")]
    BackendRemove {
        vip: String,
        address: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
    },
    /// Set keys of backend `address` in every VIP that has it (one revision): `lbctl
    /// backend drain --all ADDR` drains a host that serves several VIPs.
    #[serde(rename = "backend.set_all")]
    BackendSetAll {
        address: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
        #[serde(flatten)]
        fields: Map<String, Value>,
    },
    /// Node maintenance: withdraw every route of this node (`[announce] maintenance =
    /// true`); the dataplane keeps forwarding what still arrives.
    #[serde(rename = "node.drain")]
    NodeDrain {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
    },
    /// The end of maintenance: announce again what qualifies.
    #[serde(rename = "node.resume")]
    NodeResume {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
    },
    /// Append a VIP without backends.
    #[serde(rename = "vip.add")]
    VipAdd {
        name: String,
        address: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
        #[serde(flatten)]
        fields: Map<String, Value>,
    },
    /// Set scalar keys of a VIP (not `name`, `backend` or `health`).
    #[serde(rename = "vip.set")]
    VipSet {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
        #[serde(flatten)]
        fields: Map<String, Value>,
    },
    /// Remove a VIP and its backends.
    #[serde(rename = "vip.remove")]
    VipRemove {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
    },
}

/// What `config.rollback` goes back to: `args.to` (a revision) or `args.at` (a time); `to`
/// wins when both are given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RollbackArgs", into = "RollbackArgs")]
pub enum RollbackTarget {
    /// A revision id.
    Revision(u64),
    /// The newest revision made at or before this time: RFC 3339 UTC, such as
    /// `2026-11-26T09:30:00Z` (the daemon parses it).
    Time(String),
}

/// `RollbackTarget` on the wire.
#[derive(Serialize, Deserialize)]
struct RollbackArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<String>,
}

impl TryFrom<RollbackArgs> for RollbackTarget {
    type Error = &'static str;
    fn try_from(a: RollbackArgs) -> Result<Self, Self::Error> {
        match (a.to, a.at) {
            (Some(id), _) => Ok(RollbackTarget::Revision(id)),
            (None, Some(at)) => Ok(RollbackTarget::Time(at)),
            (None, None) => Err("needs args.to (a revision) or args.at (a time)"),
        }
    }
}

impl From<RollbackTarget> for RollbackArgs {
    fn from(t: RollbackTarget) -> Self {
        match t {
            RollbackTarget::Revision(id) => RollbackArgs {
                to: Some(id),
                at: None,
            },
            RollbackTarget::Time(at) => RollbackArgs {
                to: None,
                at: Some(at),
            },
        }
    }
}

/// An operation's name, without its arguments. [`Request::op`] maps every request to its
/// own; the names are those of the wire (`"backend.set"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Status,
    VipList,
    BackendList,
    Health,
    Stats,
    Metrics,
    FleetStatus,
    Events,
    ConfigShow,
    ConfigValidate,
    ConfigHistory,
    ConfigDiff,
    ConfigExport,
    ConfigApply,
    ConfigRollback,
    ConfigImport,
    BackendSet,
    BackendAdd,
    BackendRemove,
    BackendSetAll,
    NodeDrain,
    NodeResume,
    VipAdd,
    VipSet,
    VipRemove,
}

impl Op {
    /// Every operation, in the order of docs/api.md.
    pub const ALL: [Op; 25] = [
        Op::Status,
        Op::VipList,
        Op::BackendList,
        Op::Health,
        Op::Stats,
        Op::Metrics,
        Op::FleetStatus,
        Op::Events,
        Op::ConfigShow,
        Op::ConfigValidate,
        Op::ConfigHistory,
        Op::ConfigDiff,
        Op::ConfigExport,
        Op::ConfigApply,
        Op::ConfigRollback,
        Op::ConfigImport,
        Op::BackendSet,
        Op::BackendAdd,
        Op::BackendRemove,
        Op::BackendSetAll,
        Op::NodeDrain,
        Op::NodeResume,
        Op::VipAdd,
        Op::VipSet,
        Op::VipRemove,
    ];

    /// The name on the wire. (Each must be the `rename` of its [`Request`] variant: the
    /// tests check every one.)
    pub fn name(self) -> &'static str {
        match self {
            Op::Status => "status",
            Op::VipList => "vip.list",
            Op::BackendList => "backend.list",
            Op::Health => "health",
            Op::Stats => "stats",
            Op::Metrics => "metrics",
            Op::FleetStatus => "fleet.status",
            Op::Events => "events",
            Op::ConfigShow => "config.show",
            Op::ConfigValidate => "config.validate",
            Op::ConfigHistory => "config.history",
            Op::ConfigDiff => "config.diff",
            Op::ConfigExport => "config.export",
            Op::ConfigApply => "config.apply",
            Op::ConfigRollback => "config.rollback",
            Op::ConfigImport => "config.import",
            Op::BackendSet => "backend.set",
            Op::BackendAdd => "backend.add",
            Op::BackendRemove => "backend.remove",
            Op::BackendSetAll => "backend.set_all",
            Op::NodeDrain => "node.drain",
            Op::NodeResume => "node.resume",
            Op::VipAdd => "vip.add",
            Op::VipSet => "vip.set",
            Op::VipRemove => "vip.remove",
        }
    }

    /// The operation named `name` on the wire.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Request {
    /// This request's operation.
    pub fn op(&self) -> Op {
        match self {
            Request::Status {} => Op::Status,
            Request::VipList { .. } => Op::VipList,
            Request::BackendList { .. } => Op::BackendList,
            Request::Health { .. } => Op::Health,
            Request::Stats {} => Op::Stats,
            Request::Metrics {} => Op::Metrics,
            Request::FleetStatus {} => Op::FleetStatus,
            Request::Events { .. } => Op::Events,
            Request::ConfigShow { .. } => Op::ConfigShow,
            Request::ConfigValidate { .. } => Op::ConfigValidate,
            Request::ConfigHistory {} => Op::ConfigHistory,
            Request::ConfigDiff { .. } => Op::ConfigDiff,
            Request::ConfigExport {} => Op::ConfigExport,
            Request::ConfigApply { .. } => Op::ConfigApply,
            Request::ConfigRollback { .. } => Op::ConfigRollback,
            Request::ConfigImport { .. } => Op::ConfigImport,
            Request::BackendSet { .. } => Op::BackendSet,
            Request::BackendAdd { .. } => Op::BackendAdd,
            Request::BackendRemove { .. } => Op::BackendRemove,
            Request::BackendSetAll { .. } => Op::BackendSetAll,
            Request::NodeDrain { .. } => Op::NodeDrain,
            Request::NodeResume { .. } => Op::NodeResume,
            Request::VipAdd { .. } => Op::VipAdd,
            Request::VipSet { .. } => Op::VipSet,
            Request::VipRemove { .. } => Op::VipRemove,
        }
    }

    /// Whether it changes the configuration (and so makes a revision, and is refused with
    /// `conflict` when `base_revision` is stale). Every other operation only reads.
    pub fn is_mutation(&self) -> bool {
        self.mutation_comment().is_some()
    }

    /// The comment a mutation carries (empty for reads and for none).
    pub fn comment(&self) -> &str {
        self.mutation_comment().unwrap_or_default()
    }

    /// The one list of mutations: each carries a comment, no read does.
    fn mutation_comment(&self) -> Option<&str> {
        match self {
            Request::ConfigApply { comment, .. }
            | Request::ConfigRollback { comment, .. }
            | Request::ConfigImport { comment, .. }
            | Request::BackendSet { comment, .. }
            | Request::BackendAdd { comment, .. }
            | Request::BackendRemove { comment, .. }
            | Request::BackendSetAll { comment, .. }
            | Request::NodeDrain { comment }
            | Request::NodeResume { comment }
            | Request::VipAdd { comment, .. }
            | Request::VipSet { comment, .. }
            | Request::VipRemove { comment, .. } => Some(comment),
            Request::Status {}
            | Request::VipList { .. }
            | Request::BackendList { .. }
            | Request::Health { .. }
            | Request::Stats {}
            | Request::Metrics {}
            | Request::FleetStatus {}
            | Request::Events { .. }
            | Request::ConfigShow { .. }
            | Request::ConfigValidate { .. }
            | Request::ConfigHistory {}
            | Request::ConfigDiff { .. }
            | Request::ConfigExport {} => None,
        }
    }

    /// The request for `op` with `args` (a JSON object).
    fn from_args(op: Op, args: Map<String, Value>) -> Result<Request, DecodeError> {
        serde_json::from_value(json!({"op": op.name(), "args": args}))
            .map_err(|e| DecodeError::args(op, &e))
    }
}

/// Why a request line was refused before it reached the daemon's control loop. Every one
/// is answered with `bad_request` and this message.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error(
        "not a version {VERSION} request: {0}; send one JSON object per line, such as {{\"v\":{VERSION},\"op\":\"status\"}}"
    )]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not an object with an integer `v`, a string `op` and, if given, an
    /// integer `base_revision`.
    #[error(
        "not a version {VERSION} request: {0}; a request is {{\"v\":{VERSION},\"op\":NAME,\"args\":{{...}}}}"
    )]
    NotAnEnvelope(#[source] serde_json::Error),
    #[error("API version {0} is not served; this daemon speaks {VERSION}")]
    Version(u64),
    #[error("unknown operation {0:?}; the operations are {ops}", ops = op_list())]
    UnknownOp(String),
    #[error("{op} needs args.{arg}")]
    MissingArg { op: Op, arg: String },
    #[error("{op}: {detail} (docs/api.md lists each operation's args)")]
    BadArgs { op: Op, detail: String },
}

fn op_list() -> String {
    Op::ALL.map(Op::name).join(", ")
}

impl DecodeError {
    /// The arguments of `op` did not decode.
    fn args(op: Op, e: &serde_json::Error) -> DecodeError {
        let detail = e.to_string();
        // serde's wording for a missing field (`de::Error::missing_field`).
        match detail
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            Some(arg) => DecodeError::MissingArg {
                op,
                arg: arg.to_string(),
            },
            None => DecodeError::BadArgs { op, detail },
        }
    }
}

/// A request as sent: the [`Request`], and the revision a mutation is based on.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub request: Request,
    /// Refuse the mutation (`conflict`) unless this is still the current revision. Reads
    /// ignore it.
    pub base_revision: Option<u64>,
}

/// The first decoding step: the envelope's own fields, `args` left as it came.
#[derive(Deserialize)]
struct WireEnvelope {
    v: u64,
    op: String,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    base_revision: Option<u64>,
}

impl Envelope {
    pub fn new(request: Request, base_revision: Option<u64>) -> Envelope {
        Envelope {
            request,
            base_revision,
        }
    }

    /// Decode one request line (without or with its `\n`).
    pub fn from_line(line: &str) -> Result<Envelope, DecodeError> {
        Envelope::from_value(serde_json::from_str(line).map_err(DecodeError::NotJson)?)
    }

    /// Decode a request: version first, then the operation, then its arguments. `args`
    /// that is missing or not an object counts as `{}`; other top-level keys are ignored.
    pub fn from_value(value: Value) -> Result<Envelope, DecodeError> {
        let wire: WireEnvelope =
            serde_json::from_value(value).map_err(DecodeError::NotAnEnvelope)?;
        if wire.v != u64::from(VERSION) {
            return Err(DecodeError::Version(wire.v));
        }
        let op = Op::from_name(&wire.op).ok_or(DecodeError::UnknownOp(wire.op))?;
        let args = match wire.args {
            Value::Object(args) => args,
            _ => Map::new(),
        };
        Ok(Envelope {
            request: Request::from_args(op, args)?,
            base_revision: wire.base_revision,
        })
    }

    /// The request line, `\n` included.
    pub fn to_line(&self) -> String {
        request_line(&self.request, self.base_revision)
    }
}

/// The line of an envelope around `request`, `\n` included (without cloning the request).
pub(crate) fn request_line(request: &Request, base_revision: Option<u64>) -> String {
    let mut line = serde_json::to_string(&WireOut {
        v: VERSION,
        request,
        base_revision,
    })
    .expect("a request serializes: its maps have string keys only");
    line.push('\n');
    line
}

/// An envelope as written.
#[derive(Serialize)]
struct WireOut<'a> {
    v: u32,
    #[serde(flatten)]
    request: &'a Request,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_revision: Option<u64>,
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            v: VERSION,
            request: &self.request,
            base_revision: self.base_revision,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Envelope::from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
