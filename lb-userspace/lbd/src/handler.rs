//! What the daemon does for a request: reads answered from the controller's state, changes
//! validated, applied, written back to the configuration file and recorded as revisions.
//! Everything runs on the daemon's control loop, one request at a time, so concurrent
//! changes are serialized.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_api::{self as api, ApiError, Envelope, ErrorCode, Op, Reply, Request, RollbackTarget};
use lb_control::{self as edit, Config, ControlError, Controller, Probe, ago};
use lb_dataplane::Dataplane;
use serde_json::{Map, Value};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info};

use crate::store::{Meta, Store};

pub struct Handler {
    pub ctl: Controller<Dataplane>,
    pub cfg: Config,
    /// The configuration text in force (the newest revision).
    pub text: String,
    path: PathBuf,
    pub store: Store,
    probes: Vec<JoinHandle<()>>,
    tx: mpsc::Sender<Probe>,
    started: Instant,
}

/// Why a request failed: its code and message for the API.
type Failure = ApiError;

fn fail(code: ErrorCode, message: impl std::fmt::Display) -> Failure {
    ApiError::new(code, message)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn revision_meta(m: &Meta) -> api::RevisionMeta {
    api::RevisionMeta {
        revision: m.id,
        at: rfc3339(m.at_ms),
        source: m.source.clone(),
        comment: m.comment.clone(),
    }
}

// The configuration's words as the API spells them. Exhaustive: a new scheduler, role ...
// does not compile until the API has it too.

fn api_state(s: lb_control::State) -> api::BackendState {
    use lb_control::State;
    match s {
        State::Up => api::BackendState::Up,
        State::Down => api::BackendState::Down,
        State::Degraded => api::BackendState::Degraded,
        State::Draining => api::BackendState::Draining,
        State::Disabled => api::BackendState::Disabled,
    }
}

fn api_role(r: lb_control::Role) -> api::Role {
    match r {
        lb_control::Role::Primary => api::Role::Primary,
        lb_control::Role::Backup => api::Role::Backup,
    }
}

fn api_protocol(p: lb_control::Protocol) -> api::Protocol {
    match p {
        lb_control::Protocol::Tcp => api::Protocol::Tcp,
        lb_control::Protocol::Udp => api::Protocol::Udp,
    }
}

fn api_scheduler(s: lb_control::SchedulerCfg) -> api::Scheduler {
    use lb_control::SchedulerCfg as S;
    match s {
        S::Maglev => api::Scheduler::Maglev,
        S::RoundRobin => api::Scheduler::RoundRobin,
        S::Random => api::Scheduler::Random,
        S::LeastConn => api::Scheduler::LeastConn,
        S::SourceHash => api::Scheduler::SourceHash,
    }
}

fn api_forward(f: lb_control::ForwardCfg) -> api::Forward {
    match f {
        lb_control::ForwardCfg::Ipip => api::Forward::Ipip,
        lb_control::ForwardCfg::L2dsr => api::Forward::L2dsr,
    }
}

/// An edit's failure: an unknown VIP or backend is `not_found`, anything else `invalid`.
fn edit_failure(e: edit::EditError) -> Failure {
    match e {
        edit::EditError::NoVip(_) | edit::EditError::NoBackend { .. } => {
            fail(ErrorCode::NotFound, e)
        }
        _ => fail(ErrorCode::Invalid, e),
    }
}

/// `fields` with `key` first set to `value` (for the edits that take the whole table).
fn with(key: &str, value: String, mut fields: Map<String, Value>) -> Map<String, Value> {
    fields.insert(key.to_string(), Value::String(value));
    fields
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-lbd");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Handler {
    /// Wrap a started controller; the file's text becomes a revision if it is not the
    /// newest one already.
    pub fn new(
        ctl: Controller<Dataplane>,
        cfg: Config,
        text: String,
        path: &Path,
        tx: mpsc::Sender<Probe>,
    ) -> anyhow::Result<Handler> {
        let store = Store::open(&cfg.daemon.state_dir, cfg.daemon.revisions_kept)?;
        if store.latest()?.map(|r| r.config) != Some(text.clone()) {
            let m = store.commit(&text, "file", "")?;
            info!(revision = m.id, "configuration recorded");
        }
        let mut s = Handler {
            ctl,
            cfg,
            text,
            path: path.to_path_buf(),
            store,
            probes: Vec::new(),
            tx,
            started: Instant::now(),
        };
        s.respawn_probes();
        Ok(s)
    }

    fn respawn_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
        self.probes = crate::run::spawn_probes(&self.ctl, &self.tx);
    }

    pub fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }

    fn revision(&self) -> u64 {
        self.store
            .latest()
            .ok()
            .flatten()
            .map(|r| r.meta.id)
            .unwrap_or(0)
    }

    /// Validate, apply, write the file, record the revision.
    pub fn apply_text(
        &mut self,
        text: String,
        source: &str,
        comment: &str,
    ) -> Result<Meta, Failure> {
        let new = Config::parse(&text, &self.path).map_err(|e| fail(ErrorCode::Invalid, e))?;
        if new.daemon != self.cfg.daemon {
            return Err(fail(
                ErrorCode::Invalid,
                "[daemon] settings (interfaces, pin_dir, sockets, state_dir) change only with a restart",
            ));
        }
        // The controller plans before it writes: a change that cannot fit is refused whole
        // (invalid), and a write that fails leaves the running revision serving.
        if let Err(e) = self.ctl.apply(&new) {
            let code = match e {
                ControlError::Capacity { .. } => ErrorCode::Invalid,
                ControlError::Map(_) | ControlError::Partial { .. } => ErrorCode::Internal,
            };
            error!(error = %e, "configuration not applied");
            return Err(fail(code, e.to_string()));
        }
        self.respawn_probes();
        if std::fs::read_to_string(&self.path).ok().as_deref() != Some(text.as_str())
            && let Err(e) = write_atomically(&self.path, &text)
        {
            error!(error = %e, path = %self.path.display(), "could not write the configuration file back");
        }
        // The dataplane is in the new state now: so is our view, even if recording fails.
        self.cfg = new;
        self.text = text.clone();
        let meta = self.store.commit(&text, source, comment).map_err(|e| {
            fail(
                ErrorCode::Internal,
                format!("applied, but recording the revision failed: {e}"),
            )
        })?;
        self.ctl.event(
            "*",
            None,
            format!(
                "configuration revision {} applied ({source}){}",
                meta.id,
                if comment.is_empty() {
                    String::new()
                } else {
                    format!(": {comment}")
                }
            ),
        );
        info!(revision = meta.id, source, "configuration applied");
        Ok(meta)
    }

    /// SIGHUP: the file as it is now.
    pub fn reload(&mut self) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                return error!(
                    "reload rejected, the running configuration stays: cannot read {}: {e}",
                    self.path.display()
                );
            }
        };
        if text == self.text {
            return info!("configuration reloaded: the file is unchanged, nothing to do");
        }
        match self.apply_text(text, "reload", "") {
            Ok(m) => info!(
                revision = m.id,
                vips = self.ctl.vips.len(),
                "configuration reloaded"
            ),
            Err(e) => error!(
                "reload rejected, the running configuration stays: {}",
                e.message
            ),
        }
    }

    /// Answer one request. Every operation is an arm of the one match below: an operation
    /// added to or removed from `lb_api::Request` does not compile until it is handled here.
    pub fn handle(&mut self, envelope: Envelope) -> Reply {
        let Envelope {
            request,
            base_revision,
        } = envelope;
        if request.is_mutation()
            && let Some(base) = base_revision
            && base != self.revision()
        {
            return Reply::error(
                ErrorCode::Conflict,
                format!(
                    "based on revision {base}, but revision {} landed since: read it and retry",
                    self.revision()
                ),
            );
        }
        let op = request.op();
        let answer = match request {
            // Reads.
            Request::Status {} => Ok(Reply::data(&self.status())),
            Request::VipList { vip } => self.vip_list(vip.as_deref()).map(|d| Reply::data(&d)),
            Request::BackendList { vip } | Request::Health { vip } => {
                self.backend_list(vip.as_deref()).map(|d| Reply::data(&d))
            }
            Request::Stats {} => self.stats().map(|d| Reply::data(&d)),
            Request::Events { limit } => Ok(Reply::data(&self.events(limit))),
            Request::ConfigShow { revision } => self.config_show(revision).map(|d| Reply::data(&d)),
            Request::ConfigValidate { config, name } => {
                Config::parse(&config, Path::new(name.as_deref().unwrap_or("config")))
                    .map(|_| Reply::data(&api::Validity { valid: true }))
                    .map_err(|e| fail(ErrorCode::Invalid, e))
            }
            Request::ConfigHistory {} => self
                .store
                .history()
                .map(|h| Reply::data(&h.iter().map(revision_meta).collect::<Vec<_>>()))
                .map_err(|e| fail(ErrorCode::Internal, e)),
            Request::ConfigDiff { from, to } => self
                .store
                .diff(from, to.unwrap_or(self.revision()))
                .map(|diff| Reply::data(&api::Diff { diff }))
                .map_err(|e| fail(ErrorCode::NotFound, e)),
            Request::ConfigExport {} => self.export().map(|d| Reply::data(&d)),
            // Mutations: each makes a revision.
            Request::ConfigApply { config, comment } => {
                self.change(config, &format!("api: {op}"), &comment)
            }
            Request::ConfigRollback { target, comment } => self.rollback(target, &comment),
            Request::ConfigImport { revisions, comment } => self.import(revisions, &comment),
            Request::BackendSet {
                vip,
                address,
                comment,
                fields,
            } => self.edit(
                edit::set_backend(&self.text, &vip, &address, &fields),
                format!("api: {op} {vip} {address}"),
                &comment,
            ),
            Request::BackendAdd {
                vip,
                address,
                comment,
                fields,
            } => self.edit(
                edit::add_backend(&self.text, &vip, &with("address", address, fields)),
                format!("api: {op} {vip}"),
                &comment,
            ),
            Request::BackendRemove {
                vip,
                address,
                comment,
            } => self.edit(
                edit::remove_backend(&self.text, &vip, &address),
                format!("api: {op} {vip} {address}"),
                &comment,
            ),
            Request::VipAdd {
                name,
                address,
                comment,
                fields,
            } => self.edit(
                edit::add_vip(
                    &self.text,
                    &with("name", name, with("address", address, fields)),
                ),
                format!("api: {op}"),
                &comment,
            ),
            Request::VipSet {
                name,
                comment,
                fields,
            } => self.edit(
                edit::set_vip(&self.text, &name, &fields),
                format!("api: {op} {name}"),
                &comment,
            ),
            Request::VipRemove { name, comment } => self.edit(
                edit::remove_vip(&self.text, &name),
                format!("api: {op} {name}"),
                &comment,
            ),
        };
        answer.unwrap_or_else(Reply::Err)
    }

    /// Apply an edit of the current text (made by `lb_control`'s edits) as a new revision.
    fn edit(
        &mut self,
        edited: Result<String, edit::EditError>,
        source: String,
        comment: &str,
    ) -> Result<Reply, Failure> {
        self.change(edited.map_err(edit_failure)?, &source, comment)
    }

    /// Apply `text` as a new revision: the answer to a mutation.
    fn change(&mut self, text: String, source: &str, comment: &str) -> Result<Reply, Failure> {
        let meta = self.apply_text(text, source, comment)?;
        Ok(Reply::revision(&revision_meta(&meta)))
    }

    fn status(&self) -> api::Status {
        let mut backends = std::collections::BTreeMap::new();
        for v in &self.ctl.vips {
            for b in &v.backends {
                *backends.entry(api_state(b.state())).or_default() += 1;
            }
        }
        api::Status {
            revision: self.revision(),
            vips: self.ctl.vips.len() as u64,
            backends,
            uptime_s: self.started.elapsed().as_secs(),
            interfaces: self.cfg.daemon.interfaces.clone(),
            pin_dir: self.cfg.daemon.pin_dir.clone(),
            interfaces_lost: self.ctl.maps().lost_interfaces(),
        }
    }

    /// Refuse a VIP filter that names no VIP.
    fn known_vip(&self, filter: Option<&str>) -> Result<(), Failure> {
        match filter {
            Some(f) if !self.ctl.vips.iter().any(|v| v.cfg.name == f) => Err(fail(
                ErrorCode::NotFound,
                format!("unknown VIP {f:?} (`lbctl vip list` shows them)"),
            )),
            _ => Ok(()),
        }
    }

    fn vip_list(&self, filter: Option<&str>) -> Result<Vec<api::VipRow>, Failure> {
        self.known_vip(filter)?;
        Ok(self
            .ctl
            .vips
            .iter()
            .filter(|v| filter.is_none_or(|f| f == v.cfg.name))
            .map(|v| api::VipRow {
                name: v.cfg.name.clone(),
                address: v.cfg.address,
                port: v.cfg.port,
                protocol: api_protocol(v.cfg.protocol),
                scheduler: api_scheduler(v.cfg.scheduler),
                forward: api_forward(v.cfg.forward),
                ring_size: v.cfg.ring_size,
                backends: v.backends.len() as u64,
                usable: v
                    .backends
                    .iter()
                    .filter(|b| api_state(b.state()) == api::BackendState::Up)
                    .count() as u64,
                on_backup: v.on_backup,
            })
            .collect())
    }

    fn backend_list(&self, filter: Option<&str>) -> Result<Vec<api::BackendRow>, Failure> {
        self.known_vip(filter)?;
        Ok(self
            .ctl
            .vips
            .iter()
            .filter(|v| filter.is_none_or(|f| f == v.cfg.name))
            .flat_map(|v| {
                v.backends.iter().map(|b| api::BackendRow {
                    vip: v.cfg.name.clone(),
                    address: b.cfg.address,
                    weight: b.cfg.weight,
                    effective_weight: b.weight(),
                    role: api_role(b.cfg.role),
                    state: api_state(b.state()),
                    reason: b.reason.clone(),
                    since_s: ago(b.since).as_secs(),
                    latency_ms: b.latency_ms,
                    error_rate: b.error_rate(),
                    last_check_s: b.last_check.map(|t| ago(t).as_secs_f64()),
                })
            })
            .collect())
    }

    fn stats(&self) -> Result<api::Stats, Failure> {
        let internal = |e: lb_dataplane::DataplaneError| fail(ErrorCode::Internal, e);
        let reasons = self
            .ctl
            .maps()
            .reasons()
            .map_err(internal)?
            .into_iter()
            .map(|(r, n)| (r.label().to_string(), n))
            .collect();
        let mut vips = Vec::new();
        let mut backends = Vec::new();
        for v in &self.ctl.vips {
            let s = self.ctl.maps().vip_stats(v.meta.vip_id).map_err(internal)?;
            vips.push(api::VipCounters {
                vip: v.cfg.name.clone(),
                packets: s.packets,
                bytes: s.bytes,
                new_flows: s.new_flows,
            });
            for b in &v.backends {
                let s = self.ctl.maps().backend_stats(b.id).map_err(internal)?;
                backends.push(api::BackendCounters {
                    vip: v.cfg.name.clone(),
                    address: b.cfg.address,
                    packets: s.packets,
                    bytes: s.bytes,
                });
            }
        }
        Ok(api::Stats {
            reasons,
            vips,
            backends,
        })
    }

    /// The newest `limit` events, oldest first.
    fn events(&self, limit: u64) -> Vec<api::EventRow> {
        let skip = (self.ctl.events.len() as u64).saturating_sub(limit) as usize;
        self.ctl
            .events
            .iter()
            .skip(skip)
            .map(|e| api::EventRow {
                at: rfc3339(ms_since_epoch(e.at)),
                vip: e.vip.clone(),
                backend: e.backend,
                what: e.what.clone(),
            })
            .collect()
    }

    fn config_show(&self, revision: Option<u64>) -> Result<api::ConfigText, Failure> {
        let rev = match revision {
            Some(id) => self
                .store
                .get(id)
                .map_err(|e| fail(ErrorCode::NotFound, e))?,
            None => self
                .store
                .latest()
                .ok()
                .flatten()
                .ok_or_else(|| fail(ErrorCode::Internal, "no revision recorded"))?,
        };
        Ok(api::ConfigText {
            revision: rev.meta.id,
            config: rev.config,
        })
    }

    fn export(&self) -> Result<Vec<api::ExportedRevision>, Failure> {
        let text = self
            .store
            .export()
            .map_err(|e| fail(ErrorCode::Internal, e))?;
        serde_json::from_str(&text).map_err(|e| {
            fail(
                ErrorCode::Internal,
                format!(
                    "the revision store's export does not read back ({e}); please report this bug"
                ),
            )
        })
    }

    fn rollback(&mut self, target: RollbackTarget, comment: &str) -> Result<Reply, Failure> {
        let rev = match target {
            RollbackTarget::Revision(id) => self
                .store
                .get(id)
                .map_err(|e| fail(ErrorCode::NotFound, e))?,
            RollbackTarget::Time(at) => {
                let when = humantime::parse_rfc3339_weak(&at).map_err(|e| {
                    fail(
                        ErrorCode::BadRequest,
                        format!("--at {at:?}: {e}; use RFC 3339 like 2026-11-26T09:30:00Z"),
                    )
                })?;
                self.store
                    .at(ms_since_epoch(when))
                    .map_err(|e| fail(ErrorCode::NotFound, e))?
            }
        };
        self.change(rev.config, &format!("rollback to {}", rev.meta.id), comment)
    }

    /// Record the older revisions as history, then apply the newest.
    fn import(
        &mut self,
        revisions: Vec<api::ExportedRevision>,
        comment: &str,
    ) -> Result<Reply, Failure> {
        let Some((last, older)) = revisions.split_last() else {
            return Err(fail(
                ErrorCode::BadRequest,
                format!(
                    "no revisions to import: args.revisions of {} is empty",
                    Op::ConfigImport
                ),
            ));
        };
        let newest = Config::parse(&last.config, &self.path).map_err(|e| {
            fail(
                ErrorCode::Invalid,
                format!("the newest imported revision does not validate: {e}"),
            )
        })?;
        // Nothing is recorded unless the newest can be applied here.
        if newest.daemon != self.cfg.daemon {
            return Err(fail(
                ErrorCode::Invalid,
                "the newest imported revision has other [daemon] settings than this node: make them match first",
            ));
        }
        for r in older {
            self.store
                .commit(
                    &r.config,
                    &format!("import (was revision {})", r.meta.id),
                    &r.meta.comment,
                )
                .map_err(|e| fail(ErrorCode::Internal, e))?;
        }
        self.change(
            last.config.clone(),
            &format!("import (was revision {})", last.meta.id),
            comment,
        )
    }
}
