//! A node in fleet mode: how the daemon answers and applies when the configuration is the
//! fleet's. The fleet's revisions arrive from the link, in order, and go through the same
//! validation and the same changed-slots path as a file change; a revision this node
//! cannot run is refused here, reported (log, event, status, its published status), and
//! the node keeps the last good one. Changes made through this node are transactions on
//! the fleet's head in etcd, answered once this node runs them; the reads of revisions come
//! from etcd. `node.drain` and `node.resume` stay this node's own: they edit its file.

use std::{net::SocketAddr, path::Path, time::Duration};

use lb_api::{self as api, ErrorCode, Reply, Request, RollbackTarget};
use lb_control::{Config, FleetConfig, Withheld, check_fleet_text, compose};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::{
    Cache, Entry, Etcd, FleetError, FleetRevision, LinkHandle, MAX_FLEET_REVISION_BYTES,
    MAX_TXN_REVISIONS,
};
use crate::{
    handler::{Handler, bounded, edited, fail, revision_meta, rfc3339, write_atomically},
    store::{DIFF_TIMEOUT, Meta, diff_texts, now_ms},
};

/// How often a change through this node retries when another change moved the head
/// between its read and its write (with no base revision given).
const CONFLICT_RETRIES: usize = 3;

/// A change this node made the fleet's: applied here before its caller is answered.
pub struct Landed {
    revision: FleetRevision,
    reply: oneshot::Sender<Reply>,
}

/// The daemon's fleet-mode state.
pub struct Node {
    pub cfg: FleetConfig,
    pub name: String,
    /// This node's own file (`[daemon]`, `[dataplane]`, `[announce]`).
    pub node_text: String,
    /// The fleet revision this node runs: its meta and text (id 0 and "": none yet).
    pub running: Meta,
    pub fleet_text: String,
    pub refused: Option<api::Refusal>,
    pub link: LinkHandle,
    cache: Cache,
    landed: mpsc::Sender<Landed>,
    pub advertise: Option<SocketAddr>,
}

/// The host's name: a node's name when `[daemon.fleet] node` is not set.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

impl Node {
    pub fn new(
        cfg: FleetConfig,
        name: String,
        node_text: String,
        started: super::Started,
        link: LinkHandle,
        landed: mpsc::Sender<Landed>,
        advertise: Option<SocketAddr>,
    ) -> Node {
        let super::Started {
            running,
            refused,
            cache,
            ..
        } = started;
        let (running, fleet_text) = match running {
            Some(r) => (r.meta, r.config),
            None => (
                Meta {
                    id: 0,
                    at_ms: 0,
                    source: String::new(),
                    comment: String::new(),
                },
                String::new(),
            ),
        };
        Node {
            cfg,
            name,
            node_text,
            running,
            fleet_text,
            refused,
            link,
            cache,
            landed,
            advertise,
        }
    }

    fn etcd(&self) -> Option<Etcd> {
        self.link.etcd.borrow().clone()
    }
}

/// The name a fleet revision's errors are reported under.
fn label(id: u64) -> String {
    format!("fleet revision {id}")
}

fn fleet_failure(e: FleetError) -> api::ApiError {
    let code = match e {
        FleetError::Unavailable { .. } => ErrorCode::Unavailable,
        FleetError::Conflict { .. } => ErrorCode::Conflict,
        FleetError::NoRevision(_) => ErrorCode::NotFound,
        FleetError::Corrupt { .. } | FleetError::Credentials { .. } => ErrorCode::Internal,
    };
    fail(code, e)
}

/// Check a fleet text as this node would run it: the fleet's sections only, within
/// etcd's request size, valid together with `node_text`.
pub fn check_here(text: &str, node_text: &str, id: u64) -> Result<Config, api::ApiError> {
    check_fleet_text(text).map_err(|e| fail(ErrorCode::Invalid, e))?;
    if text.len() > MAX_FLEET_REVISION_BYTES {
        return Err(fail(
            ErrorCode::Invalid,
            format!(
                "the fleet's configuration would be {} bytes, more than the {MAX_FLEET_REVISION_BYTES} etcd takes in one request (its --max-request-bytes is 1.5 MiB by default)",
                text.len()
            ),
        ));
    }
    Config::parse(&compose(text, node_text), Path::new(&label(id)))
        .map_err(|e| fail(ErrorCode::Invalid, e))
}

impl Handler {
    fn node(&self) -> &Node {
        self.fleet.as_ref().expect("fleet mode")
    }

    fn node_mut(&mut self) -> &mut Node {
        self.fleet.as_mut().expect("fleet mode")
    }

    /// Apply a fleet revision (from the link, or landed through this node). One this
    /// node already runs or has passed is a no-op.
    pub fn apply_fleet(&mut self, rev: FleetRevision) -> Result<Meta, api::ApiError> {
        let n = self.node();
        if rev.meta.id <= n.running.id {
            return Ok(rev.meta);
        }
        let text = compose(&rev.config, &n.node_text);
        let checked = check_fleet_text(&rev.config).map_err(|e| fail(ErrorCode::Invalid, e));
        let applied = checked.and_then(|()| self.install(&text, Path::new(&label(rev.meta.id))));
        let id = rev.meta.id;
        if let Err(e) = applied {
            let running = self.node().running.id;
            error!(revision = id, running, error = %e.message, "fleet revision refused on this node; it keeps serving the revision it runs");
            self.ctl.event(
                "*",
                None,
                format!(
                    "fleet revision {id} refused on this node (it keeps running {running}): {}",
                    e.message
                ),
            );
            self.node_mut().refused = Some(api::Refusal {
                revision: id,
                error: e.message.clone(),
            });
            return Err(e);
        }
        let n = self.node_mut();
        if let Err(e) = n.cache.store(&rev) {
            error!(error = %e, path = %n.cache.path().display(), "could not cache the fleet revision; a restart without etcd would start from an older one");
        }
        n.running = rev.meta.clone();
        n.fleet_text = rev.config;
        n.refused = None;
        n.link.running.send_replace(id);
        let source = rev.meta.source.clone();
        self.ctl
            .event("*", None, format!("fleet revision {id} applied ({source})"));
        info!(revision = id, source, "fleet revision applied");
        Ok(rev.meta)
    }

    /// A revision from the link: applied or refused, logged either way.
    pub fn apply_incoming(&mut self, rev: FleetRevision) {
        let _ = self.apply_fleet(rev);
    }

    /// A change this node committed: apply it, then answer its caller.
    pub fn landed(&mut self, l: Landed) {
        let id = l.revision.meta.id;
        let answer = match self.apply_fleet(l.revision) {
            Ok(meta) => Reply::revision(&revision_meta(&meta)),
            Err(e) => Reply::error(
                e.code,
                format!(
                    "revision {id} is the fleet's now, but this node refused it: {}",
                    e.message
                ),
            ),
        };
        let _ = l.reply.send(answer);
    }

    /// Fleet mode's share of the requests: changes and revision reads go to etcd off the
    /// loop; `node.*` edit this node's file. `None`: answer it as in file mode.
    pub fn fleet_serve(&mut self, call: crate::server::Call) -> Option<crate::server::Call> {
        let crate::server::Call { envelope, reply } = call;
        let request = envelope.request;
        let n = self.node();
        let (etcd, running) = (n.etcd(), n.running.id);
        match request {
            Request::NodeDrain { .. } | Request::NodeResume { .. } => {
                let _ = reply.send(self.node_change(&request));
                None
            }
            // A fleet document is checked as this node would run it.
            Request::ConfigValidate { config, .. } => {
                let answer = check_here(&config, &n.node_text, n.running.id + 1)
                    .map(|_| Reply::data(&api::Validity { valid: true }))
                    .unwrap_or_else(Reply::Err);
                let _ = reply.send(answer);
                None
            }
            Request::ConfigShow { .. }
            | Request::ConfigHistory {}
            | Request::ConfigDiff { .. }
            | Request::ConfigExport {}
            | Request::FleetStatus {} => {
                let local = (running, n.fleet_text.clone(), n.cfg.name.clone());
                tokio::spawn(async move {
                    let answer = read(etcd, request, local).await.unwrap_or_else(Reply::Err);
                    let _ = reply.send(answer);
                });
                None
            }
            r if r.is_mutation() => {
                let job = Mutation {
                    etcd,
                    running,
                    node_text: n.node_text.clone(),
                    node: n.name.clone(),
                    base: envelope.base_revision,
                    landed: n.landed.clone(),
                };
                tokio::spawn(async move {
                    if let Err(e) = job.run(r, reply).await {
                        warn!(error = %e.message, "a change to the fleet was refused");
                    }
                });
                None
            }
            request => Some(crate::server::Call {
                envelope: api::Envelope {
                    request,
                    base_revision: envelope.base_revision,
                },
                reply,
            }),
        }
    }

    /// `node.drain` / `node.resume` in fleet mode: this node's file, not a fleet revision.
    fn node_change(&mut self, request: &Request) -> Reply {
        let n = self.node();
        let Some(Ok((node_text, source))) = edited(request, &n.node_text) else {
            return Reply::error(ErrorCode::Internal, "node.* edits the node's file");
        };
        let text = compose(&n.fleet_text, &node_text);
        let path = self.path.clone();
        if let Err(e) = self.install(&text, &path) {
            return Reply::Err(e);
        }
        if let Err(e) = write_atomically(&self.path, &node_text) {
            error!(error = %e, path = %self.path.display(), "could not write the node's file back");
        }
        self.node_mut().node_text = node_text;
        self.ctl
            .event("*", None, format!("{source} (this node's file)"));
        let mut meta = revision_meta(&self.node().running);
        meta.source = format!(
            "{source} (this node's file; the fleet stays at revision {})",
            meta.revision
        );
        Reply::revision(&meta)
    }

    /// SIGHUP in fleet mode: this node's file again, with the fleet's revision it runs.
    pub fn reload_node(&mut self) {
        let node_text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                return error!(
                    "reload rejected, the running configuration stays: cannot read {}: {e}",
                    self.path.display()
                );
            }
        };
        if let Err(e) = lb_control::check_node_text(&node_text) {
            return error!(
                "reload rejected, the running configuration stays: {}: {e}",
                self.path.display()
            );
        }
        let text = compose(&self.node().fleet_text, &node_text);
        let path = self.path.clone();
        match self.install(&text, &path) {
            Ok(()) => {
                self.node_mut().node_text = node_text;
                info!("node file reloaded");
            }
            Err(e) => error!(
                "reload rejected, the running configuration stays: {}",
                e.message
            ),
        }
    }

    /// Whether this node is left behind by its fleet (announcements are withheld).
    pub fn fleet_behind(&self) -> Option<Withheld> {
        let n = self.fleet.as_ref()?;
        let state = n.link.state.borrow();
        lb_control::behind(n.running.id, state.peer_newest, now_ms(), n.cfg.grace_ms)
    }

    /// This node's place in the fleet, for `status`.
    pub fn membership(&self) -> Option<api::Membership> {
        let n = self.fleet.as_ref()?;
        let s = n.link.state.borrow();
        Some(api::Membership {
            fleet: n.cfg.name.clone(),
            node: n.name.clone(),
            running: n.running.id,
            head: s.head,
            connected: s.connected,
            error: s.error.clone(),
            refused: n.refused.clone(),
            behind: self.fleet_behind().map(|w| w.to_string()),
        })
    }

    /// Hand the link this node's status to publish, if it changed, and set the fleet's
    /// metrics.
    pub fn refresh_report(&self) {
        let Some(n) = &self.fleet else { return };
        if let Some(m) = &self.metrics {
            let s = n.link.state.borrow();
            m.fleet_running.set(n.running.id as i64);
            m.fleet_head.set(s.head.unwrap_or(0) as i64);
            m.fleet_connected.set(s.connected as i64);
            m.fleet_behind.set(self.fleet_behind().is_some() as i64);
        }
        let mut node = api::FleetNode {
            node: n.name.clone(),
            running: n.running.id,
            refused: n.refused.clone(),
            announced: self
                .announced
                .verdicts
                .iter()
                .filter(|v| v.announced)
                .map(|v| v.vip.clone())
                .collect(),
            withheld: self.fleet_behind().map(|w| w.to_string()).or_else(|| {
                self.cfg
                    .announce
                    .maintenance
                    .then(|| Withheld::Maintenance.to_string())
            }),
            backends: self
                .ctl
                .vips
                .iter()
                .flat_map(|v| {
                    v.backends.iter().map(|b| api::FleetBackend {
                        vip: v.cfg.name.clone(),
                        address: b.cfg.address,
                        state: crate::handler::api_state(b.state()),
                    })
                })
                .collect(),
            advertise: n.advertise,
            at: rfc3339(now_ms()),
        };
        n.link.report.send_if_modified(|old| {
            if let Some(o) = old {
                node.at = o.at.clone();
                if *o == node {
                    return false;
                }
                node.at = rfc3339(now_ms());
            }
            *old = Some(node);
            true
        });
    }
}

/// A change through this node, off the loop.
struct Mutation {
    etcd: Option<Etcd>,
    running: u64,
    node_text: String,
    node: String,
    base: Option<u64>,
    landed: mpsc::Sender<Landed>,
}

impl Mutation {
    /// A revision made through this node: its source names the node.
    fn entry(&self, config: String, source: String, comment: &str, history_only: bool) -> Entry {
        Entry {
            config,
            source: format!("{}: {source}", self.node),
            comment: comment.to_string(),
            history_only,
        }
    }

    /// `config.import` in fleet mode: the older revisions recorded as the fleet's history
    /// (never run), the newest as the revision every node runs; one transaction, so within
    /// etcd's bounds on one (revisions, bytes).
    fn import(
        &self,
        revisions: &[api::ExportedRevision],
        comment: &str,
    ) -> Result<Vec<Entry>, api::ApiError> {
        crate::handler::check_import(revisions, comment)?;
        let Some((newest, older)) = revisions.split_last() else {
            return Err(fail(
                ErrorCode::BadRequest,
                "no revisions to import: args.revisions is empty",
            ));
        };
        if revisions.len() > MAX_TXN_REVISIONS {
            return Err(fail(
                ErrorCode::BadRequest,
                format!(
                    "in fleet mode an import is one etcd transaction, of at most {MAX_TXN_REVISIONS} revisions (etcd's --max-txn-ops is 128 by default); this one has {}: import the newest {MAX_TXN_REVISIONS}",
                    revisions.len()
                ),
            ));
        }
        let bytes: usize = revisions
            .iter()
            .map(|r| r.config.len() + r.meta.comment.len())
            .sum();
        if bytes > MAX_FLEET_REVISION_BYTES {
            return Err(fail(
                ErrorCode::BadRequest,
                format!(
                    "the import holds {bytes} bytes of revisions, more than the {MAX_FLEET_REVISION_BYTES} etcd takes in one request: import fewer"
                ),
            ));
        }
        let mut out: Vec<Entry> = older
            .iter()
            .map(|r| {
                self.entry(
                    r.config.clone(),
                    format!("import (was revision {})", r.meta.id),
                    &r.meta.comment,
                    true,
                )
            })
            .collect();
        out.push(self.entry(
            newest.config.clone(),
            format!("import (was revision {})", newest.meta.id),
            comment,
            false,
        ));
        Ok(out)
    }

    fn unavailable(&self) -> api::ApiError {
        fail(
            ErrorCode::Unavailable,
            format!(
                "not connected to the fleet's etcd yet; the fleet's configuration cannot change now, and this node keeps serving revision {}",
                self.running
            ),
        )
    }

    async fn run(
        self,
        request: Request,
        reply: oneshot::Sender<Reply>,
    ) -> Result<(), api::ApiError> {
        match self.commit(&request).await {
            Ok(revision) => {
                let landed = Landed { revision, reply };
                if let Err(mpsc::error::SendError(l)) = self.landed.send(landed).await {
                    let _ = l
                        .reply
                        .send(Reply::error(ErrorCode::Internal, "the daemon is stopping"));
                }
                Ok(())
            }
            Err(e) => {
                let _ = reply.send(Reply::Err(e.clone()));
                Err(e)
            }
        }
    }

    /// Read the head, make the new text from it, check it here, write it if the head has
    /// not moved. Without a base revision, a head that moved meanwhile is read again.
    async fn commit(&self, request: &Request) -> Result<FleetRevision, api::ApiError> {
        let etcd = self.etcd.clone().ok_or_else(|| self.unavailable())?;
        let op = request.op();
        bounded("the change", "", request.comment())?;
        for _ in 0..CONFLICT_RETRIES {
            let head = etcd.head(self.running).await.map_err(fleet_failure)?;
            if let Some(base) = self.base
                && base != head
            {
                return Err(fleet_failure(FleetError::Conflict {
                    base,
                    current: head,
                }));
            }
            let current = match head {
                0 => String::new(),
                id => {
                    etcd.get(id, self.running)
                        .await
                        .map_err(fleet_failure)?
                        .config
                }
            };
            let entries = match request {
                Request::ConfigRollback { target, .. } => {
                    let rev = find(&etcd, target, self.running).await?;
                    vec![self.entry(
                        rev.config,
                        format!("rollback to {}", rev.meta.id),
                        request.comment(),
                        false,
                    )]
                }
                Request::ConfigImport { revisions, comment } => self.import(revisions, comment)?,
                r => {
                    let (text, source) = edited(r, &current).unwrap_or_else(|| {
                        Err(fail(ErrorCode::Internal, format!("{op} is not a change")))
                    })?;
                    vec![self.entry(text, source, request.comment(), false)]
                }
            };
            let last = entries.last().expect("a change records a revision");
            let (text, id) = (last.config.clone(), head + entries.len() as u64);
            check_here(&text, &self.node_text, id)?;
            match etcd.commit_many(head, entries, self.running).await {
                Ok(mut metas) => {
                    let meta = metas.pop().expect("the newest revision");
                    return Ok(FleetRevision {
                        meta,
                        config: text,
                        history_only: false,
                    });
                }
                Err(FleetError::Conflict { .. }) if self.base.is_none() => continue,
                Err(e) => return Err(fleet_failure(e)),
            }
        }
        Err(fail(
            ErrorCode::Conflict,
            format!(
                "the fleet's head moved {CONFLICT_RETRIES} times while this change was made: retry"
            ),
        ))
    }
}

/// The revision a rollback goes to.
async fn find(
    etcd: &Etcd,
    target: &RollbackTarget,
    running: u64,
) -> Result<FleetRevision, api::ApiError> {
    match target {
        RollbackTarget::Revision(id) => etcd.get(*id, running).await.map_err(fleet_failure),
        RollbackTarget::Time(at) => {
            let when = humantime::parse_rfc3339_weak(at).map_err(|e| {
                fail(
                    ErrorCode::BadRequest,
                    format!("--at {at:?}: {e}; use RFC 3339 like 2026-11-26T09:30:00Z"),
                )
            })?;
            let at_ms = crate::handler::ms_since_epoch(when);
            let history = etcd.history(running).await.map_err(fleet_failure)?;
            let m = history
                .iter()
                .rev()
                .find(|m| m.at_ms <= at_ms)
                .ok_or_else(|| {
                    fail(
                        ErrorCode::NotFound,
                        format!("no fleet revision at or before {at}"),
                    )
                })?;
            etcd.get(m.id, running).await.map_err(fleet_failure)
        }
    }
}

/// The reads of fleet mode. The revision this node runs is answered from its own copy
/// when etcd cannot be reached.
async fn read(
    etcd: Option<Etcd>,
    request: Request,
    (running, text, fleet): (u64, String, String),
) -> Result<Reply, api::ApiError> {
    let offline = || {
        fail(
            ErrorCode::Unavailable,
            format!(
                "not connected to the fleet's etcd; this node runs revision {running} (`lbctl config show` shows it)"
            ),
        )
    };
    let own = || {
        Reply::data(&api::ConfigText {
            revision: running,
            config: text.clone(),
        })
    };
    let Some(etcd) = etcd else {
        return match request {
            Request::ConfigShow { revision } if revision.is_none_or(|r| r == running) => Ok(own()),
            _ => Err(offline()),
        };
    };
    let op = request.op();
    let within = |d| tokio::time::timeout(Duration::from_secs(10), d);
    let answer = async {
        match request {
            Request::ConfigShow { revision } => {
                let id = match revision {
                    Some(id) => id,
                    None => etcd.head(running).await.map_err(fleet_failure)?,
                };
                if id == 0 {
                    return Err(fail(
                        ErrorCode::NotFound,
                        "the fleet has no revision yet: `lbctl config apply` one",
                    ));
                }
                let r = etcd.get(id, running).await.map_err(fleet_failure)?;
                Ok(Reply::data(&api::ConfigText {
                    revision: id,
                    config: r.config,
                }))
            }
            Request::ConfigHistory {} => {
                let mut h = etcd.history(running).await.map_err(fleet_failure)?;
                h.reverse();
                Ok(Reply::data(
                    &h.iter().map(revision_meta).collect::<Vec<_>>(),
                ))
            }
            Request::ConfigDiff { from, to } => {
                let to = match to {
                    Some(to) => to,
                    None => etcd.head(running).await.map_err(fleet_failure)?,
                };
                let a = etcd.get(from, running).await.map_err(fleet_failure)?;
                let b = etcd.get(to, running).await.map_err(fleet_failure)?;
                let diff = tokio::task::spawn_blocking(move || {
                    diff_texts(
                        &a.config,
                        &b.config,
                        &format!("revision {from}"),
                        &format!("revision {to}"),
                        DIFF_TIMEOUT,
                    )
                })
                .await
                .map_err(|e| fail(ErrorCode::Internal, format!("the diff failed: {e}")))?;
                Ok(Reply::data(&api::Diff { diff }))
            }
            Request::ConfigExport {} => {
                let all = etcd.all(running).await.map_err(fleet_failure)?;
                let out: Vec<api::ExportedRevision> = all
                    .into_iter()
                    .map(|r| api::ExportedRevision {
                        meta: api::ExportedMeta {
                            id: r.meta.id,
                            at_ms: r.meta.at_ms,
                            source: r.meta.source,
                            comment: r.meta.comment,
                        },
                        config: r.config,
                    })
                    .collect();
                Ok(Reply::data(&out))
            }
            Request::FleetStatus {} => {
                let head = etcd.head(running).await.map_err(fleet_failure)?;
                let mut nodes = etcd.nodes(running).await.map_err(fleet_failure)?;
                nodes.sort_by(|a, b| a.node.cmp(&b.node));
                let disagreements = api::disagreements(&nodes);
                Ok(Reply::data(&api::FleetStatus {
                    fleet,
                    head,
                    nodes,
                    disagreements,
                }))
            }
            other => Err(fail(
                ErrorCode::Internal,
                format!("{} is not a fleet read", other.op()),
            )),
        }
    };
    match within(answer).await {
        Ok(r) => r,
        Err(_) => Err(fail(
            ErrorCode::Unavailable,
            format!("etcd did not answer {op} within 10 s"),
        )),
    }
}
