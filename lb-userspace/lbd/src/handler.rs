//! What the daemon does for a request: reads answered from the controller's state, changes
//! validated, applied, written back to the configuration file and recorded as revisions.
//! Everything runs on the daemon's control loop, one request at a time, so concurrent
//! changes are serialized.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info};

use lb_api::{Request, err, ok};
use lb_control::{self as edit, Config, Controller, Probe, ago};
use lb_dataplane::Dataplane;

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

/// (error code, message) for the API.
type Failure = (&'static str, String);

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn meta_json(m: &Meta) -> Value {
    json!({"revision": m.id, "at": rfc3339(m.at_ms), "source": m.source, "comment": m.comment})
}

/// `RoundRobin` -> `round_robin`: the spelling of the config file.
fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
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
        let new = Config::parse(&text, &self.path).map_err(|e| ("invalid", e.to_string()))?;
        if new.daemon != self.cfg.daemon {
            return Err(("invalid", "[daemon] settings (interfaces, pin_dir, sockets, state_dir) change only with a restart".into()));
        }
        if let Err(e) = self.ctl.apply(&new) {
            error!(error = %e, "applying a configuration failed part way");
            return Err((
                "internal",
                format!(
                    "applying failed part way ({e}); the dataplane may be partly updated: apply a good configuration again"
                ),
            ));
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
            (
                "internal",
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
            Err((_, msg)) => error!("reload rejected, the running configuration stays: {msg}"),
        }
    }

    pub fn handle(&mut self, req: Request) -> Value {
        let args = req.args.as_object().cloned().unwrap_or_default();
        let mutation = matches!(
            req.op.as_str(),
            "config.apply"
                | "config.rollback"
                | "config.import"
                | "backend.set"
                | "backend.add"
                | "backend.remove"
                | "vip.add"
                | "vip.set"
                | "vip.remove"
        );
        if mutation
            && let Some(base) = req.base_revision
            && base != self.revision()
        {
            return err(
                "conflict",
                format!(
                    "based on revision {base}, but revision {} landed since: read it and retry",
                    self.revision()
                ),
            );
        }
        let res = if mutation {
            self.mutate(&req.op, &args).map(|(d, m)| (d, Some(m.id)))
        } else {
            self.read(&req.op, &args).map(|d| (d, None))
        };
        match res {
            Ok((data, rev)) => ok(data, rev),
            Err((code, msg)) => err(code, msg),
        }
    }

    fn read(&self, op: &str, args: &Map<String, Value>) -> Result<Value, Failure> {
        let vip_filter = args.get("vip").and_then(Value::as_str);
        match op {
            "status" => {
                let mut states: std::collections::BTreeMap<&str, u32> = Default::default();
                for v in &self.ctl.vips {
                    for b in &v.backends {
                        *states.entry(b.state().as_str()).or_default() += 1;
                    }
                }
                Ok(json!({
                    "revision": self.revision(),
                    "vips": self.ctl.vips.len(),
                    "backends": states,
                    "uptime_s": self.started.elapsed().as_secs(),
                    "interfaces": self.cfg.daemon.interfaces,
                    "pin_dir": self.cfg.daemon.pin_dir,
                }))
            }
            "vip.list"
                if vip_filter.is_some_and(|f| !self.ctl.vips.iter().any(|v| v.cfg.name == f)) =>
            {
                Err(("not_found", format!("unknown VIP {:?} (`lbctl vip list` shows them)", vip_filter.unwrap_or_default())))
            }
            "vip.list" => Ok(Value::Array(
                self.ctl
                    .vips
                    .iter()
                    .filter(|v| vip_filter.is_none_or(|f| f == v.cfg.name))
                    .map(|v| {
                        json!({
                            "name": v.cfg.name, "address": v.cfg.address, "port": v.cfg.port,
                            "protocol": format!("{:?}", v.cfg.protocol).to_lowercase(),
                            "scheduler": snake(&format!("{:?}", v.cfg.scheduler)), "forward": format!("{:?}", v.cfg.forward).to_lowercase(),
                            "ring_size": v.cfg.ring_size, "backends": v.backends.len(),
                            "usable": v.backends.iter().filter(|b| b.state().as_str() == "up").count(),
                            "on_backup": v.on_backup,
                        })
                    })
                    .collect(),
            )),
            "backend.list" | "health" => {
                if let Some(f) = vip_filter
                    && !self.ctl.vips.iter().any(|v| v.cfg.name == f)
                {
                    return Err(("not_found", format!("unknown VIP {f:?} (`lbctl vip list` shows them)")));
                }
                Ok(Value::Array(
                    self.ctl
                        .vips
                        .iter()
                        .filter(|v| vip_filter.is_none_or(|f| f == v.cfg.name))
                        .flat_map(|v| {
                            v.backends.iter().map(|b| {
                                json!({
                                    "vip": v.cfg.name, "address": b.cfg.address, "weight": b.cfg.weight,
                                    "effective_weight": b.weight(), "role": format!("{:?}", b.cfg.role).to_lowercase(),
                                    "state": b.state().as_str(), "reason": b.reason, "since_s": ago(b.since).as_secs(),
                                    "latency_ms": b.latency_ms, "error_rate": b.error_rate(),
                                    "last_check_s": b.last_check.map(|t| ago(t).as_secs_f64()),
                                })
                            })
                        })
                        .collect(),
                ))
            }
            "stats" => {
                let reasons: Map<String, Value> = self.ctl.maps().reasons()
                    .map_err(|e| ("internal", e.to_string()))?
                    .into_iter()
                    .map(|(r, n)| (r.label().to_string(), json!(n)))
                    .collect();
                let mut vips = Vec::new();
                let mut backends = Vec::new();
                for v in &self.ctl.vips {
                    let s = self.ctl.maps().vip_stats(v.meta.vip_id).map_err(|e| ("internal", e.to_string()))?;
                    vips.push(json!({"vip": v.cfg.name, "packets": s.packets, "bytes": s.bytes, "new_flows": s.new_flows}));
                    for b in &v.backends {
                        let s = self.ctl.maps().backend_stats(b.id).map_err(|e| ("internal", e.to_string()))?;
                        backends.push(json!({"vip": v.cfg.name, "address": b.cfg.address, "packets": s.packets, "bytes": s.bytes}));
                    }
                }
                Ok(json!({"reasons": reasons, "vips": vips, "backends": backends}))
            }
            "events" => {
                let limit = args.get("limit").and_then(Value::as_u64).unwrap_or(100) as usize;
                let n = self.ctl.events.len();
                Ok(Value::Array(
                    self.ctl
                        .events
                        .iter()
                        .skip(n.saturating_sub(limit))
                        .map(|e| {
                            let ms = e.at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                            json!({"at": rfc3339(ms), "vip": e.vip, "backend": e.backend, "what": e.what})
                        })
                        .collect(),
                ))
            }
            "config.show" => {
                let rev = match args.get("revision").and_then(Value::as_u64) {
                    Some(id) => self.store.get(id).map_err(|e| ("not_found", e.to_string()))?,
                    None => self.store.latest().ok().flatten().ok_or(("internal", "no revision recorded".to_string()))?,
                };
                Ok(json!({"revision": rev.meta.id, "config": rev.config}))
            }
            "config.validate" => {
                let text = args.get("config").and_then(Value::as_str).ok_or(("bad_request", "config.validate needs args.config".to_string()))?;
                let name = args.get("name").and_then(Value::as_str).unwrap_or("config");
                Config::parse(text, Path::new(name)).map_err(|e| ("invalid", e.to_string()))?;
                Ok(json!({"valid": true}))
            }
            "config.history" => Ok(Value::Array(
                self.store.history().map_err(|e| ("internal", e.to_string()))?.iter().map(meta_json).collect(),
            )),
            "config.diff" => {
                let cur = self.revision();
                let from = args.get("from").and_then(Value::as_u64).ok_or(("bad_request", "config.diff needs args.from".to_string()))?;
                let to = args.get("to").and_then(Value::as_u64).unwrap_or(cur);
                Ok(json!({"diff": self.store.diff(from, to).map_err(|e| ("not_found", e.to_string()))?}))
            }
            "config.export" => {
                let text = self.store.export().map_err(|e| ("internal", e.to_string()))?;
                Ok(serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
            }
            other => Err(("bad_request", format!("unknown operation {other:?}"))),
        }
    }

    fn mutate(&mut self, op: &str, args: &Map<String, Value>) -> Result<(Value, Meta), Failure> {
        let s = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(("bad_request", format!("{op} needs args.{k}")))
        };
        let comment = args
            .get("comment")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let edit_err = |e: edit::EditError| match e {
            edit::EditError::NoVip(_) | edit::EditError::NoBackend { .. } => {
                ("not_found", e.to_string())
            }
            _ => ("invalid", e.to_string()),
        };
        let fields = |skip: &[&str]| -> Map<String, Value> {
            args.iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let (text, source) = match op {
            "config.apply" => (s("config")?, "api: config.apply".to_string()),
            "config.rollback" => {
                let rev = if let Some(id) = args.get("to").and_then(Value::as_u64) {
                    self.store
                        .get(id)
                        .map_err(|e| ("not_found", e.to_string()))?
                } else if let Some(at) = args.get("at").and_then(Value::as_str) {
                    let when = humantime::parse_rfc3339_weak(at).map_err(|e| {
                        (
                            "bad_request",
                            format!("--at {at:?}: {e}; use RFC 3339 like 2026-11-26T09:30:00Z"),
                        )
                    })?;
                    let ms = when
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    self.store
                        .at(ms)
                        .map_err(|e| ("not_found", e.to_string()))?
                } else {
                    return Err((
                        "bad_request",
                        "config.rollback needs args.to (a revision) or args.at (a time)".into(),
                    ));
                };
                (rev.config, format!("rollback to {}", rev.meta.id))
            }
            "config.import" => {
                let revs: Vec<crate::store::Revision> =
                    serde_json::from_value(args.get("revisions").cloned().unwrap_or(Value::Null))
                        .map_err(|e| {
                        (
                            "bad_request",
                            format!("config.import needs args.revisions as exported: {e}"),
                        )
                    })?;
                let last = revs
                    .last()
                    .ok_or(("bad_request", "no revisions to import".to_string()))?;
                let newest = Config::parse(&last.config, &self.path).map_err(|e| {
                    (
                        "invalid",
                        format!("the newest imported revision does not validate: {e}"),
                    )
                })?;
                // Nothing is recorded unless the newest can be applied here.
                if newest.daemon != self.cfg.daemon {
                    return Err((
                        "invalid",
                        "the newest imported revision has other [daemon] settings than this node: make them match first".into(),
                    ));
                }
                for r in &revs[..revs.len() - 1] {
                    self.store
                        .commit(
                            &r.config,
                            &format!("import (was revision {})", r.meta.id),
                            &r.meta.comment,
                        )
                        .map_err(|e| ("internal", e.to_string()))?;
                }
                (
                    last.config.clone(),
                    format!("import (was revision {})", last.meta.id),
                )
            }
            "backend.set" => {
                let (vip, addr) = (s("vip")?, s("address")?);
                (
                    edit::set_backend(
                        &self.text,
                        &vip,
                        &addr,
                        &fields(&["vip", "address", "comment"]),
                    )
                    .map_err(edit_err)?,
                    format!("api: backend.set {vip} {addr}"),
                )
            }
            "backend.add" => {
                let vip = s("vip")?;
                (
                    edit::add_backend(&self.text, &vip, &fields(&["vip", "comment"]))
                        .map_err(edit_err)?,
                    format!("api: backend.add {vip}"),
                )
            }
            "backend.remove" => {
                let (vip, addr) = (s("vip")?, s("address")?);
                (
                    edit::remove_backend(&self.text, &vip, &addr).map_err(edit_err)?,
                    format!("api: backend.remove {vip} {addr}"),
                )
            }
            "vip.add" => (
                edit::add_vip(&self.text, &fields(&["comment"])).map_err(edit_err)?,
                "api: vip.add".to_string(),
            ),
            "vip.set" => {
                let name = s("name")?;
                (
                    edit::set_vip(&self.text, &name, &fields(&["name", "comment"]))
                        .map_err(edit_err)?,
                    format!("api: vip.set {name}"),
                )
            }
            "vip.remove" => {
                let name = s("name")?;
                (
                    edit::remove_vip(&self.text, &name).map_err(edit_err)?,
                    format!("api: vip.remove {name}"),
                )
            }
            other => return Err(("bad_request", format!("unknown operation {other:?}"))),
        };
        let meta = self.apply_text(text, &source, &comment)?;
        Ok((meta_json(&meta), meta))
    }
}
