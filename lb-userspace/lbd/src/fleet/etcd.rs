//! The fleet's configuration in etcd: revisions, the head that names the current one, and
//! each node's published status.
//!
//! Keys under `{prefix}/{fleet}/`:
//! - `head`: the current revision's id, in decimal. Every change is one transaction that
//!   compares it with the revision the change was based on, and only then writes the new
//!   revision and moves it: two operators on the same base cannot both win.
//! - `rev/{id:020}`: a revision whole (meta and text; `history_only` for the older
//!   revisions of an import, which are history and never run); `meta/{id:020}`: its meta
//!   alone, for history without the texts. The oldest beyond `revisions_kept` go in the
//!   same transaction.
//! - `node/{node}`: what a node runs and sees ([`lb_api::FleetNode`]), under its lease: a
//!   node that stops renewing it disappears from the fleet's status.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use lb_control::FleetConfig;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::store::Meta;

/// How long one etcd request may take before the fleet counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd's own bound on a request (`--max-request-bytes`, 1.5 MiB by default), less room
/// for the revision's meta: a larger text is refused before it is sent.
pub const MAX_FLEET_REVISION_BYTES: usize = 1_400_000;

#[derive(Debug, Error)]
pub enum FleetError {
    #[error(
        "etcd ({endpoints}): {detail}; the fleet's configuration cannot change now, and this node keeps serving revision {running}"
    )]
    Unavailable {
        endpoints: String,
        detail: String,
        running: u64,
    },
    #[error("based on revision {base}, but the fleet is at revision {current}: read it and retry")]
    Conflict { base: u64, current: u64 },
    #[error("no revision {0} in the fleet (see `lbctl config history`)")]
    NoRevision(u64),
    #[error("etcd holds {key} in a form lbd does not read ({why}); fix or delete the key")]
    Corrupt { key: String, why: String },
    #[error("reading {what} for etcd: {source}")]
    Credentials {
        what: String,
        source: std::io::Error,
    },
}

/// A fleet revision, as kept in `rev/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRevision {
    #[serde(flatten)]
    pub meta: Meta,
    pub config: String,
    /// Recorded by an import as history: the nodes never run it (the import's newest
    /// revision, after it, is what they run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history_only: bool,
}

/// A revision to record ([`Etcd::commit_many`]).
pub struct Entry {
    pub config: String,
    pub source: String,
    pub comment: String,
    pub history_only: bool,
}

/// The most revisions one transaction records: two keys each, the head and two range
/// deletes within etcd's `--max-txn-ops` (128 by default).
pub const MAX_TXN_REVISIONS: usize = 62;

#[derive(Clone)]
pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(prefix: &str, fleet: &str) -> Keys {
        Keys {
            base: format!("{}/{fleet}/", prefix.trim_end_matches('/')),
        }
    }
    pub fn head(&self) -> String {
        format!("{}head", self.base)
    }
    fn rev(&self, id: u64) -> String {
        format!("{}rev/{id:020}", self.base)
    }
    fn meta(&self, id: u64) -> String {
        format!("{}meta/{id:020}", self.base)
    }
    fn metas(&self) -> String {
        format!("{}meta/", self.base)
    }
    fn revs(&self) -> String {
        format!("{}rev/", self.base)
    }
    pub fn node(&self, node: &str) -> String {
        format!("{}node/{node}", self.base)
    }
    fn nodes(&self) -> String {
        format!("{}node/", self.base)
    }
    pub fn describe(&self) -> String {
        self.base.trim_end_matches('/').to_string()
    }
}

/// A handle on the fleet in etcd. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    pub keys: Keys,
    endpoints: String,
    keep: usize,
}

/// Connection options from `[daemon.fleet]`: TLS (CA, client certificate) and the user,
/// whose password is read from its file here and kept nowhere else.
fn options(f: &FleetConfig) -> Result<ConnectOptions, FleetError> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|source| FleetError::Credentials {
            what: format!("{what} {}", p.display()),
            source,
        })
    };
    let mut o = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        // A member cut off from its quorum answers nothing rather than stale data.
        .with_require_leader(true);
    if f.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &f.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read("the CA", ca)?));
        }
        if let (Some(c), Some(k)) = (&f.cert, &f.key) {
            tls = tls.identity(Identity::from_pem(
                read("the client certificate", c)?,
                read("the client key", k)?,
            ));
        }
        o = o.with_tls(tls);
    }
    if let (Some(user), Some(p)) = (&f.user, &f.password_file) {
        let password = String::from_utf8_lossy(&read("the password file", p)?)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        o = o.with_user(user.clone(), password);
    }
    Ok(o)
}

/// An etcd failure in a line an operator reads: gRPC's message and the cause beneath it
/// ("tcp connect error: Connection refused"), not the whole chain of wrappers.
pub trait Brief {
    fn brief(&self) -> String;
}

impl Brief for etcd_client::Error {
    fn brief(&self) -> String {
        let mut out = match self {
            etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
            e => e.to_string(),
        };
        // The causes beneath, each once, without the wrappers that repeat them all
        // ("grpc request error: code: ..., source: tonic::transport::Error(...)").
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            let s = e.to_string();
            if s.len() < 100 && !s.contains("grpc request error") && !out.contains(&s) {
                out = format!("{out}: {s}");
            }
            next = e.source();
        }
        out
    }
}

impl Brief for &str {
    fn brief(&self) -> String {
        self.to_string()
    }
}

impl Brief for String {
    fn brief(&self) -> String {
        self.clone()
    }
}

impl FleetError {
    /// What failed, without the endpoints (for a list of several).
    fn detail(&self) -> String {
        match self {
            FleetError::Unavailable { detail, .. } => detail.clone(),
            e => e.to_string(),
        }
    }
}

fn corrupt(key: &[u8], why: impl std::fmt::Display) -> FleetError {
    FleetError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why: why.to_string(),
    }
}

fn parse_id(key: &[u8], value: &[u8]) -> Result<u64, FleetError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| corrupt(key, "not a revision id"))
}

impl Etcd {
    /// Connect to one member of `f.endpoints`, trying each from `first` on (wrapping
    /// round) until one answers with a leader behind it. One member at a time, not a
    /// balanced channel over all: a request the balancer sends to a dead member fails, and
    /// a session must fail only when its own member does. Returns the handle and the
    /// index of the member it reached.
    pub async fn connect(
        f: &FleetConfig,
        keep: usize,
        running: u64,
        first: usize,
    ) -> Result<(Etcd, usize), FleetError> {
        let n = f.endpoints.len();
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            match Etcd::connect_one(f, i, keep, running).await {
                Ok(e) => return Ok((e, i)),
                // Each member's failure, named when there are several.
                Err(e) if n > 1 => failures.push(format!("{}: {}", f.endpoints[i], e.detail())),
                Err(e) => failures.push(e.detail()),
            }
        }
        Err(FleetError::Unavailable {
            endpoints: f.endpoints.join(", "),
            detail: failures.join("; "),
            running,
        })
    }

    async fn connect_one(
        f: &FleetConfig,
        i: usize,
        keep: usize,
        running: u64,
    ) -> Result<Etcd, FleetError> {
        let endpoint = f.endpoints[i].clone();
        let opts = options(f)?;
        let client = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect([endpoint.clone()], Some(opts)),
        )
        .await
        .map_err(|_| "connecting timed out".to_string())
        .and_then(|r| r.map_err(|e| e.brief()))
        .map_err(|detail| FleetError::Unavailable {
            endpoints: endpoint.clone(),
            detail,
            running,
        })?;
        let e = Etcd {
            client,
            keys: Keys::new(&f.prefix, &f.name),
            endpoints: endpoint,
            keep: keep.max(1),
        };
        e.head(running).await?;
        Ok(e)
    }

    /// The member this handle talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoints
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn unavailable(&self, e: impl Brief, running: u64) -> FleetError {
        FleetError::Unavailable {
            endpoints: self.endpoints.clone(),
            detail: e.brief(),
            running,
        }
    }

    /// The value at `key`, if there is one.
    async fn value(&self, key: String, running: u64) -> Result<Option<KeyValue>, FleetError> {
        let r = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(|e| self.unavailable(e, running))?;
        Ok(r.kvs().first().cloned())
    }

    /// The current revision's id (0: the fleet has none yet).
    pub async fn head(&self, running: u64) -> Result<u64, FleetError> {
        match self.value(self.keys.head(), running).await? {
            Some(kv) => parse_id(kv.key(), kv.value()),
            None => Ok(0),
        }
    }

    pub async fn get(&self, id: u64, running: u64) -> Result<FleetRevision, FleetError> {
        let kv = self
            .value(self.keys.rev(id), running)
            .await?
            .ok_or(FleetError::NoRevision(id))?;
        serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))
    }

    /// Every value under `prefix`, in key order, as `T`.
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        prefix: String,
        running: u64,
    ) -> Result<Vec<T>, FleetError> {
        let r = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.unavailable(e, running))?;
        r.kvs()
            .iter()
            .map(|kv| serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e)))
            .collect()
    }

    /// Every revision's meta, oldest first.
    pub async fn history(&self, running: u64) -> Result<Vec<Meta>, FleetError> {
        self.list(self.keys.metas(), running).await
    }

    /// Every revision whole, oldest first.
    pub async fn all(&self, running: u64) -> Result<Vec<FleetRevision>, FleetError> {
        self.list(self.keys.revs(), running).await
    }

    /// Record `entries` as the revisions after `base`, if `base` is still the head: the
    /// revisions, their metas and the head (moved to the last) in one transaction, with the
    /// revisions past `revisions_kept` removed. A head that moved is a
    /// [`FleetError::Conflict`]. One entry for a change; an import's history
    /// (`history_only`) and its newest revision for an import.
    pub async fn commit_many(
        &self,
        base: u64,
        entries: Vec<Entry>,
        running: u64,
    ) -> Result<Vec<Meta>, FleetError> {
        let at_ms = crate::store::now_ms();
        let head = self.keys.head();
        let unchanged = if base == 0 {
            Compare::version(head.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(head.clone(), CompareOp::Equal, base.to_string())
        };
        let mut ops = Vec::new();
        let mut metas = Vec::new();
        for (k, e) in entries.into_iter().enumerate() {
            let meta = Meta {
                id: base + 1 + k as u64,
                at_ms,
                source: e.source,
                comment: e.comment,
            };
            let rev = FleetRevision {
                meta: meta.clone(),
                config: e.config,
                history_only: e.history_only,
            };
            ops.push(TxnOp::put(
                self.keys.rev(meta.id),
                serde_json::to_vec(&rev).expect("a revision serializes"),
                None,
            ));
            ops.push(TxnOp::put(
                self.keys.meta(meta.id),
                serde_json::to_vec(&meta).expect("a meta serializes"),
                None,
            ));
            metas.push(meta);
        }
        let id = metas.last().map_or(base, |m| m.id);
        ops.push(TxnOp::put(head.clone(), id.to_string(), None));
        if let Some(first_kept) = (id + 1).checked_sub(self.keep as u64).filter(|f| *f > 1) {
            for (from, to) in [
                (self.keys.revs(), self.keys.rev(first_kept)),
                (self.keys.metas(), self.keys.meta(first_kept)),
            ] {
                ops.push(TxnOp::delete(
                    from,
                    Some(DeleteOptions::new().with_range(to)),
                ));
            }
        }
        let txn = Txn::new()
            .when([unchanged])
            .and_then(ops)
            .or_else([TxnOp::get(head, None)]);
        let r = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.unavailable(e, running))?;
        if r.succeeded() {
            return Ok(metas);
        }
        let current = match r.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(g)) => match g.kvs().first() {
                Some(kv) => parse_id(kv.key(), kv.value())?,
                None => 0,
            },
            _ => 0,
        };
        Err(FleetError::Conflict { base, current })
    }

    /// Every node's published status, by name.
    pub async fn nodes(&self, running: u64) -> Result<Vec<lb_api::FleetNode>, FleetError> {
        self.list(self.keys.nodes(), running).await
    }

    /// Publish this node's status under `lease`.
    pub async fn publish(
        &self,
        node: &lb_api::FleetNode,
        lease: i64,
        running: u64,
    ) -> Result<(), FleetError> {
        self.client
            .kv_client()
            .put(
                self.keys.node(&node.node),
                serde_json::to_vec(node).expect("a node serializes"),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map(drop)
            .map_err(|e| self.unavailable(e, running))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_revisions_by_number_under_the_fleets_prefix() {
        let k = Keys::new("/lbd/", "edge");
        assert_eq!(k.head(), "/lbd/edge/head");
        assert_eq!(k.node("lb1"), "/lbd/edge/node/lb1");
        // Zero-padded: etcd's byte order is the numbers' order, so a range delete of
        // the oldest and a prefix read oldest-first both hold.
        assert!(k.rev(9) < k.rev(10) && k.rev(10) < k.rev(100));
        assert!(k.rev(7).starts_with(&k.revs()) && k.meta(7).starts_with(&k.metas()));
        assert_eq!(k.describe(), "/lbd/edge");
    }

    #[test]
    fn a_password_file_that_cannot_be_read_is_named() {
        let f = FleetConfig {
            name: "edge".into(),
            node: None,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/lbd".into(),
            grace_ms: 3000,
            lease_s: 10,
            ca: None,
            cert: None,
            key: None,
            user: Some("lbd".into()),
            password_file: Some("/nonexistent/lbd-password".into()),
            advertise: None,
        };
        let e = options(&f).map(drop).unwrap_err().to_string();
        assert!(
            e.contains("the password file /nonexistent/lbd-password"),
            "{e}"
        );
    }
}
