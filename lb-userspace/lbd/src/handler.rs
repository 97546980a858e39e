//! What the daemon does for a request: reads answered from the controller's state, changes
//! validated, applied, written back to the configuration file and recorded as revisions.
//! Changes and the reads of the controller's state run on the daemon's control loop, one
//! request at a time, so concurrent changes are serialized. Reads that need only the
//! revision store (show, history, diff, export) or the metrics are answered from tokio's
//! blocking pool ([`Handler::serve`]): they read files, diff texts or walk pinned maps, and
//! the loop that owns health verdicts, SIGHUP and SIGTERM must not wait for that.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_api::{self as api, ApiError, Envelope, ErrorCode, Op, Reply, Request, RollbackTarget};
use lb_control::{self as edit, Config, ControlError, Controller, Probe, ago};
use lb_dataplane::Dataplane;
use serde_json::{Map, Value};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    metrics::Metrics,
    server::Call,
    store::{MAX_COMMENT_BYTES, MAX_IMPORT_REVISIONS, MAX_REVISION_BYTES, Meta, Store, StoreError},
};

/// Reads answered at once from the blocking pool (store reads, metrics); more wait for a
/// turn.
const STORE_READS: usize = 4;

pub struct Handler {
    pub ctl: Controller<Dataplane>,
    pub cfg: Config,
    /// The configuration text in force: the newest revision, or a newer text that was
    /// applied but could not be recorded (`unrecorded` says so). Edits start from it.
    pub text: String,
    pub(crate) path: PathBuf,
    pub store: Store,
    /// Set while the configuration in force is not recorded (the store failed after it was
    /// applied): why, for status. Cleared by the next revision recorded.
    unrecorded: Option<String>,
    /// Turns for the reads answered off the loop (store, metrics).
    store_reads: Arc<Semaphore>,
    /// What `metrics` answers (`/metrics`'s registry); set by the run loop once it has it.
    pub metrics: Option<Arc<Metrics>>,
    probes: Vec<JoinHandle<()>>,
    tx: mpsc::Sender<Probe>,
    started: Instant,
    /// What this node announces and what BIRD took, as the run loop last decided.
    pub announced: crate::announce::View,
    /// Fleet mode: the configuration is the fleet's, in etcd. `None`: file mode.
    pub fleet: Option<crate::fleet::Node>,
}

/// Why a request failed: its code and message for the API.
type Failure = ApiError;

pub(crate) fn fail(code: ErrorCode, message: impl std::fmt::Display) -> Failure {
    ApiError::new(code, message)
}

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub(crate) fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn revision_meta(m: &Meta) -> api::RevisionMeta {
    api::RevisionMeta {
        revision: m.id,
        at: rfc3339(m.at_ms),
        source: m.source.clone(),
        comment: m.comment.clone(),
    }
}

// The configuration's words as the API spells them. Exhaustive: a new scheduler, role ...
// does not compile until the API has it too.

pub(crate) fn api_state(s: lb_control::State) -> api::BackendState {
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
        edit::EditError::NoVip(_)
        | edit::EditError::NoBackend { .. }
        | edit::EditError::NoBackendAnywhere(_) => fail(ErrorCode::NotFound, e),
        _ => fail(ErrorCode::Invalid, e),
    }
}

/// `fields` with `key` first set to `value` (for the edits that take the whole table).
fn with(key: &str, value: String, mut fields: Map<String, Value>) -> Map<String, Value> {
    fields.insert(key.to_string(), Value::String(value));
    fields
}

/// A store failure as the API answers it: a revision that is not there is `not_found`, an
/// unusable import `bad_request`, anything else (unreadable, unwritable) `internal`.
fn store_failure(e: StoreError) -> Failure {
    let code = match e {
        StoreError::NoRevision(_) | StoreError::NoneBefore(_) => ErrorCode::NotFound,
        StoreError::Import(_) => ErrorCode::BadRequest,
        StoreError::Io { .. }
        | StoreError::Unreadable { .. }
        | StoreError::IdsExhausted { .. }
        | StoreError::Empty => ErrorCode::Internal,
    };
    fail(code, e)
}

/// Refuse a revision larger than the store takes: a configuration text past
/// `MAX_REVISION_BYTES` (`invalid`), a comment past `MAX_COMMENT_BYTES` (`bad_request`).
/// `what` names it in the message.
pub(crate) fn bounded(what: &str, text: &str, comment: &str) -> Result<(), Failure> {
    if text.len() > MAX_REVISION_BYTES {
        return Err(fail(
            ErrorCode::Invalid,
            format!(
                "{what} is {} bytes, more than the {MAX_REVISION_BYTES} (4 MiB) a revision may hold",
                text.len()
            ),
        ));
    }
    if comment.len() > MAX_COMMENT_BYTES {
        return Err(fail(
            ErrorCode::BadRequest,
            format!(
                "the comment of {what} is {} bytes, more than the {MAX_COMMENT_BYTES} a revision may carry",
                comment.len()
            ),
        ));
    }
    Ok(())
}

/// Refuse an import past the bounds before anything of it is recorded: more than
/// `MAX_IMPORT_REVISIONS` entries (`bad_request`), or any entry (or the import's comment)
/// larger than a revision may be.
pub(crate) fn check_import(
    revisions: &[api::ExportedRevision],
    comment: &str,
) -> Result<(), Failure> {
    if revisions.len() > MAX_IMPORT_REVISIONS {
        return Err(fail(
            ErrorCode::BadRequest,
            format!(
                "args.revisions holds {} revisions, more than the {MAX_IMPORT_REVISIONS} one {} may carry: import the newest {MAX_IMPORT_REVISIONS}",
                revisions.len(),
                Op::ConfigImport
            ),
        ));
    }
    let n = revisions.len();
    for (i, r) in revisions.iter().enumerate() {
        bounded(
            &format!("imported revision {} (entry {} of {n})", r.meta.id, i + 1),
            &r.config,
            &r.meta.comment,
        )?;
    }
    bounded("the import", "", comment)
}

/// The text `request` makes of `text`, and the revision's source, for the mutations that
/// edit the configuration (`None` for every other request). Pure: file mode edits the text
/// it runs, fleet mode the fleet's current one (and the node's own file for `node.*`).
pub(crate) fn edited(request: &Request, text: &str) -> Option<Result<(String, String), Failure>> {
    let op = request.op();
    let edit = |r: Result<String, edit::EditError>, source: String| {
        Some(r.map(|t| (t, source)).map_err(edit_failure))
    };
    match request {
        Request::ConfigApply { config, .. } => Some(Ok((config.clone(), format!("api: {op}")))),
        Request::BackendSet {
            vip,
            address,
            fields,
            ..
        } => edit(
            edit::set_backend(text, vip, address, fields),
            format!("api: {op} {vip} {address}"),
        ),
        Request::BackendAdd {
            vip,
            address,
            fields,
            ..
        } => edit(
            edit::add_backend(text, vip, &with("address", address.clone(), fields.clone())),
            format!("api: {op} {vip}"),
        ),
        Request::BackendRemove { vip, address, .. } => edit(
            edit::remove_backend(text, vip, address),
            format!("api: {op} {vip} {address}"),
        ),
        Request::BackendSetAll {
            address, fields, ..
        } => Some(
            edit::set_backend_everywhere(text, address, fields)
                .map(|(t, vips)| (t, format!("api: {op} {address} ({})", vips.join(", "))))
                .map_err(edit_failure),
        ),
        Request::NodeDrain { .. } => edit(edit::set_maintenance(text, true), format!("api: {op}")),
        Request::NodeResume { .. } => {
            edit(edit::set_maintenance(text, false), format!("api: {op}"))
        }
        Request::VipAdd {
            name,
            address,
            fields,
            ..
        } => edit(
            edit::add_vip(
                text,
                &with(
                    "name",
                    name.clone(),
                    with("address", address.clone(), fields.clone()),
                ),
            ),
            format!("api: {op}"),
        ),
        Request::VipSet { name, fields, .. } => edit(
            edit::set_vip(text, name, fields),
            format!("api: {op} {name}"),
        ),
        Request::VipRemove { name, .. } => {
            edit(edit::remove_vip(text, name), format!("api: {op} {name}"))
        }
        _ => None,
    }
}

/// Why a change is not a new revision.
pub enum ChangeError {
    /// Refused: nothing changed, the running configuration stays.
    Refused(Failure),
    /// Applied (the dataplane, and the file if it could be written, have it) but not
    /// recorded: the store failed.
    Unrecorded(Failure),
}

impl From<ChangeError> for Failure {
    fn from(e: ChangeError) -> Failure {
        match e {
            ChangeError::Refused(f) | ChangeError::Unrecorded(f) => f,
        }
    }
}

/// A read that needs only the revision store, with its defaults resolved on the loop.
enum StoreRead {
    Show(Option<u64>),
    History,
    Diff { from: u64, to: u64 },
    Export,
}

/// A read answered off the loop: from the revision store, or the metrics rendered (which
/// reads the pinned maps, walking the whole connection table for `lb_flows`).
enum OffLoop {
    Store(StoreRead, Store),
    Metrics(Arc<Metrics>),
}

impl OffLoop {
    fn answer(self) -> Reply {
        match self {
            OffLoop::Store(read, store) => read.answer(&store),
            OffLoop::Metrics(m) => metrics_answer(&m),
        }
    }
}

/// `metrics`: the text `/metrics` serves.
fn metrics_answer(m: &Metrics) -> Reply {
    Reply::data(&api::MetricsText { text: m.encode() })
}

/// `metrics` before the run loop handed the registry over (not in a running daemon).
fn no_metrics() -> Reply {
    Reply::error(ErrorCode::Internal, "the metrics are not available yet")
}

impl StoreRead {
    fn answer(self, store: &Store) -> Reply {
        let answer = match self {
            StoreRead::Show(revision) => config_show(store, revision).map(|d| Reply::data(&d)),
            StoreRead::History => store
                .history()
                .map(|h| Reply::data(&h.iter().map(revision_meta).collect::<Vec<_>>()))
                .map_err(store_failure),
            StoreRead::Diff { from, to } => store
                .diff(from, to)
                .map(|diff| Reply::data(&api::Diff { diff }))
                .map_err(store_failure),
            StoreRead::Export => export(store).map(|d| Reply::data(&d)),
        };
        answer.unwrap_or_else(Reply::Err)
    }
}

fn config_show(store: &Store, revision: Option<u64>) -> Result<api::ConfigText, Failure> {
    let rev = match revision {
        Some(id) => store.get(id).map_err(store_failure)?,
        None => store
            .latest()
            .map_err(store_failure)?
            .ok_or_else(|| fail(ErrorCode::Internal, "no revision recorded"))?,
    };
    Ok(api::ConfigText {
        revision: rev.meta.id,
        config: rev.config,
    })
}

fn export(store: &Store) -> Result<Vec<api::ExportedRevision>, Failure> {
    let text = store.export().map_err(store_failure)?;
    serde_json::from_str(&text).map_err(|e| {
        fail(
            ErrorCode::Internal,
            format!("the revision store's export does not read back ({e}); please report this bug"),
        )
    })
}

/// Write `text` to `path` through a temporary file next to it, fsync'd and renamed over
/// it; the temporary file is removed if any step fails.
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-lbd");
    let mut created = false;
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        created = true;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        if created {
            let _ = std::fs::remove_file(&tmp);
        }
        return Err(e);
    }
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
        fleet: Option<crate::fleet::Node>,
    ) -> anyhow::Result<Handler> {
        let store = Store::open(&cfg.daemon.state_dir, cfg.daemon.revisions_kept)?;
        // In fleet mode the revisions are the fleet's, in etcd: the local store records
        // nothing.
        let recorded = fleet.is_some()
            || match store.latest() {
                Ok(latest) => latest.is_some_and(|r| r.config == text),
                // An unreadable newest revision is not taken for the file's: the file (what
                // runs) is recorded past it, and the unreadable one stays among the problems.
                Err(e @ StoreError::Unreadable { .. }) => {
                    warn!(error = %e, "the newest revision is unreadable; recording the configuration file as a new one");
                    false
                }
                Err(e) => return Err(e.into()),
            };
        if !recorded {
            let m = store.commit(&text, "file", "")?;
            info!(revision = m.id, "configuration recorded");
        }
        let mut s = Handler {
            ctl,
            cfg,
            text,
            path: path.to_path_buf(),
            store,
            unrecorded: None,
            store_reads: Arc::new(Semaphore::new(STORE_READS)),
            metrics: None,
            probes: Vec::new(),
            announced: Default::default(),
            tx,
            started: Instant::now(),
            fleet,
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

    /// The current revision: the newest in the store, readable or not (an unreadable one
    /// is among the store's problems).
    fn revision(&self) -> u64 {
        if let Some(n) = &self.fleet {
            return n.running.id;
        }
        self.store.current().unwrap_or(0)
    }

    /// What status reports as wrong with the revisions: the store's problems, and a
    /// configuration in force that is not recorded.
    pub fn store_problems(&self) -> Vec<String> {
        let mut p = self.store.problems();
        p.extend(self.unrecorded.clone());
        p
    }

    /// Validate `text` (its errors named after `path`) and apply it: the dataplane, the
    /// probes and our view of the configuration in force. Nothing changes on a refusal.
    pub(crate) fn install(&mut self, text: &str, path: &Path) -> Result<(), Failure> {
        let new = Config::parse(text, path).map_err(|e| fail(ErrorCode::Invalid, e))?;
        if new.daemon != self.cfg.daemon {
            return Err(fail(
                ErrorCode::Invalid,
                "[daemon] settings (interfaces, pin_dir, sockets, state_dir, fleet) change only with a restart",
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
        self.cfg = new;
        self.text = text.to_string();
        Ok(())
    }

    /// Validate, apply, write the file, record the revision.
    pub fn apply_text(
        &mut self,
        text: String,
        source: &str,
        comment: &str,
    ) -> Result<Meta, ChangeError> {
        use ChangeError::Refused;
        bounded("the configuration", &text, comment).map_err(Refused)?;
        // A store that cannot take the revision (no id left) refuses the change before
        // anything is written; a store that fails at the write is known only after.
        self.store
            .next_id()
            .map_err(|e| Refused(store_failure(e)))?;
        let path = self.path.clone();
        self.install(&text, &path).map_err(Refused)?;
        if std::fs::read_to_string(&self.path).ok().as_deref() != Some(text.as_str())
            && let Err(e) = write_atomically(&self.path, &text)
        {
            error!(error = %e, path = %self.path.display(), "could not write the configuration file back");
        }
        // The dataplane is in the new state now: so is our view, even if recording fails,
        // and the next change builds on this text.
        let meta = match self.store.commit(&text, source, comment) {
            Ok(meta) => meta,
            Err(e) => {
                let current = self.revision();
                error!(error = %e, current, "configuration applied, but not recorded as a revision");
                self.ctl.event(
                    "*",
                    None,
                    format!(
                        "configuration applied ({source}), but not recorded as a revision: {e}"
                    ),
                );
                self.unrecorded = Some(format!(
                    "the configuration in force ({source}) is not recorded: the store failed ({e}); revision {current} is not what runs; the next change that is recorded records it"
                ));
                return Err(ChangeError::Unrecorded(fail(
                    ErrorCode::Internal,
                    format!("applied, but recording the revision failed: {e}"),
                )));
            }
        };
        self.unrecorded = None;
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
        if self.fleet.is_some() {
            return self.reload_node();
        }
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
            Err(ChangeError::Refused(e)) => error!(
                "reload rejected, the running configuration stays: {}",
                e.message
            ),
            Err(ChangeError::Unrecorded(e)) => error!(
                "reload applied, but not recorded as a revision (the file's configuration runs; status lists it until a change is recorded): {}",
                e.message
            ),
        }
    }

    /// The read `request` is, if it is one to answer off the loop. `config.diff`'s default
    /// `to` is the current revision when the request arrives.
    fn off_loop(&self, request: &Request) -> Option<OffLoop> {
        let store = |read| Some(OffLoop::Store(read, self.store.clone()));
        match request {
            Request::ConfigShow { revision } => store(StoreRead::Show(*revision)),
            Request::ConfigHistory {} => store(StoreRead::History),
            Request::ConfigDiff { from, to } => store(StoreRead::Diff {
                from: *from,
                to: to.unwrap_or(self.revision()),
            }),
            Request::ConfigExport {} => store(StoreRead::Export),
            Request::Metrics {} => self.metrics.clone().map(OffLoop::Metrics),
            _ => None,
        }
    }

    /// Answer a call from the API. Reads that need only the revision store or the metrics
    /// go to tokio's blocking pool (`STORE_READS` at a time) with a handle on what they
    /// read, so that reading and diffing revisions or walking the pinned maps never holds
    /// up health verdicts, other requests, SIGHUP or SIGTERM; everything else is answered
    /// here, on the loop, by [`Handler::handle`].
    pub fn serve(&mut self, call: Call) {
        let call = match self.fleet {
            Some(_) => match self.fleet_serve(call) {
                Some(c) => c,
                None => return,
            },
            None => call,
        };
        let Call { envelope, reply } = call;
        let Some(read) = self.off_loop(&envelope.request) else {
            let _ = reply.send(self.handle(envelope));
            return;
        };
        let turns = self.store_reads.clone();
        tokio::spawn(async move {
            let Ok(_turn) = turns.acquire_owned().await else {
                return;
            };
            let answer = tokio::task::spawn_blocking(move || read.answer())
                .await
                .unwrap_or_else(|e| {
                    Reply::error(
                        ErrorCode::Internal,
                        format!("answering the read failed: {e}"),
                    )
                });
            let _ = reply.send(answer);
        });
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
            Request::Metrics {} => Ok(self
                .metrics
                .as_deref()
                .map_or_else(no_metrics, metrics_answer)),
            Request::Events { limit } => Ok(Reply::data(&self.events(limit))),
            Request::ConfigShow { revision } => Ok(StoreRead::Show(revision).answer(&self.store)),
            Request::ConfigValidate { config, name } => {
                Config::parse(&config, Path::new(name.as_deref().unwrap_or("config")))
                    .map(|_| Reply::data(&api::Validity { valid: true }))
                    .map_err(|e| fail(ErrorCode::Invalid, e))
            }
            Request::ConfigHistory {} => Ok(StoreRead::History.answer(&self.store)),
            Request::ConfigDiff { from, to } => Ok(StoreRead::Diff {
                from,
                to: to.unwrap_or(self.revision()),
            }
            .answer(&self.store)),
            Request::ConfigExport {} => Ok(StoreRead::Export.answer(&self.store)),
            Request::FleetStatus {} => Err(fail(
                ErrorCode::Invalid,
                "this node runs in file mode: set [daemon.fleet] to share one configuration with a fleet",
            )),
            // Mutations: each makes a revision.
            Request::ConfigRollback { target, comment } => self.rollback(target, &comment),
            Request::ConfigImport { revisions, comment } => self.import(revisions, &comment),
            r @ (Request::ConfigApply { .. }
            | Request::BackendSet { .. }
            | Request::BackendAdd { .. }
            | Request::BackendRemove { .. }
            | Request::BackendSetAll { .. }
            | Request::NodeDrain { .. }
            | Request::NodeResume { .. }
            | Request::VipAdd { .. }
            | Request::VipSet { .. }
            | Request::VipRemove { .. }) => match edited(&r, &self.text) {
                Some(Ok((text, source))) => self.change(text, &source, r.comment()),
                Some(Err(e)) => Err(e),
                None => unreachable!("{op} is an edit"),
            },
        };
        answer.unwrap_or_else(Reply::Err)
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
            store_problems: self.store_problems(),
            announce: self.cfg.announce.enabled().then(|| {
                let bird = &self.announced.bird;
                let routes = bird.applied.clone().unwrap_or_default();
                api::Announce {
                    maintenance: self.cfg.announce.maintenance,
                    routes: routes
                        .v4
                        .iter()
                        .map(|a| IpAddr::V4(*a))
                        .chain(routes.v6.iter().map(|a| IpAddr::V6(*a)))
                        .collect(),
                    error: bird.error.clone(),
                }
            }),
            fleet: self.membership(),
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
                announced: None,
                withheld: None,
            })
            .map(|mut row| {
                if self.cfg.announce.enabled()
                    && let Some(a) = self.announced.verdicts.iter().find(|a| a.vip == row.name)
                {
                    row.announced = Some(a.announced);
                    row.withheld = a.wants.as_ref().err().map(ToString::to_string);
                }
                row
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

    fn rollback(&mut self, target: RollbackTarget, comment: &str) -> Result<Reply, Failure> {
        let rev = match target {
            RollbackTarget::Revision(id) => self.store.get(id).map_err(store_failure)?,
            RollbackTarget::Time(at) => {
                let when = humantime::parse_rfc3339_weak(&at).map_err(|e| {
                    fail(
                        ErrorCode::BadRequest,
                        format!("--at {at:?}: {e}; use RFC 3339 like 2026-11-26T09:30:00Z"),
                    )
                })?;
                self.store.at(ms_since_epoch(when)).map_err(store_failure)?
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
        check_import(&revisions, comment)?;
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
        // Nor unless the store has an id for every one of them.
        self.store
            .room(revisions.len() as u64)
            .map_err(store_failure)?;
        for r in older {
            self.store
                .commit(
                    &r.config,
                    &format!("import (was revision {})", r.meta.id),
                    &r.meta.comment,
                )
                .map_err(store_failure)?;
        }
        self.change(
            last.config.clone(),
            &format!("import (was revision {})", last.meta.id),
            comment,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "lbd-handler-test-{name}-{}-{}",
            std::process::id(),
            crate::store::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_failed_write_back_leaves_no_temporary_file() {
        let d = tmp("write-back");
        // The rename fails: a non-empty directory stands where the file goes.
        let path = d.join("lb.toml");
        std::fs::create_dir_all(path.join("x")).unwrap();
        assert!(write_atomically(&path, "x = 1\n").is_err());
        assert!(
            !d.join("lb.tmp-lbd").exists(),
            "the failed write left lb.tmp-lbd behind"
        );
        // And a write that works leaves none either.
        let path = d.join("ok.toml");
        write_atomically(&path, "x = 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x = 1\n");
        assert!(!d.join("ok.tmp-lbd").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn revision(id: u64, config: String, comment: &str) -> api::ExportedRevision {
        api::ExportedRevision {
            meta: api::ExportedMeta {
                id,
                at_ms: 0,
                source: "file".into(),
                comment: comment.into(),
            },
            config,
        }
    }

    #[test]
    fn revisions_and_imports_are_bounded() {
        let at = "#".repeat(MAX_REVISION_BYTES);
        let over = "#".repeat(MAX_REVISION_BYTES + 1);
        assert!(bounded("the configuration", &at, "").is_ok());
        let e = bounded("the configuration", &over, "").unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains(&MAX_REVISION_BYTES.to_string()), "{e}");
        let e = bounded("the configuration", "", &"c".repeat(MAX_COMMENT_BYTES + 1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(bounded("the configuration", "", &"c".repeat(MAX_COMMENT_BYTES)).is_ok());

        let small = |id| revision(id, "x = 1\n".into(), "");
        let most: Vec<_> = (1..=MAX_IMPORT_REVISIONS as u64).map(small).collect();
        assert!(check_import(&most, "").is_ok());
        let too_many: Vec<_> = (0..=MAX_IMPORT_REVISIONS as u64).map(small).collect();
        let e = check_import(&too_many, "").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains(&MAX_IMPORT_REVISIONS.to_string()), "{e}");
        // An older entry past the limit names itself.
        let e = check_import(&[revision(7, over, ""), small(8)], "").unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(
            e.message.contains("imported revision 7 (entry 1 of 2)"),
            "{e}"
        );
        let e = check_import(&[small(8)], &"c".repeat(MAX_COMMENT_BYTES + 1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
