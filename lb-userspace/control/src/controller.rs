//! The desired state and the dataplane kept true to it.
//!
//! The controller owns the configuration, every backend's state machine and the ids and
//! ring windows it hands out, and writes the dataplane's maps through [`Maps`]. A change is
//! planned first (ids, windows, rings: nothing written, and refused whole when it cannot
//! fit), then written in an order the dataplane can follow at every step. A write that
//! fails leaves the controller at the revision it served and writes that back; if that
//! fails too, the controller knows its maps are not in step and rewrites them in full at
//! the next chance (`repair`), instead of diffing against what it only believes is there.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use lb_common::{
    BACKEND_F_DOWN, Backend, FAMILY_V4, FAMILY_V6, Forward, GlobalConfig, MAX_BACKENDS, MAX_VIPS,
    NO_BACKEND, PROTO_TCP, PROTO_UDP, Scheduler, VIP_F_FRAGMENTS_ONLY, VIP_F_NO_BACKEND_PASS,
    VipKey, VipMeta,
};
use tracing::{info, warn};

use crate::{
    alloc::{Ids, Windows},
    backend::{BackendState, State, Transition},
    config::{
        CheckKind, Config, ForwardCfg, Health, NoBackend, Protocol, Role, SchedulerCfg, VipConfig,
        parse_mac, parse_prefix,
    },
    maps::{MapError, Maps},
    observer::Observer,
    probe::Probe,
    ring::{RingMember, maglev, round_robin},
};

/// Events kept for `lbctl events`.
const MAX_EVENTS: usize = 10_000;

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A map write failed outside an apply (a health change, a slow-start step).
    #[error("{0}; the maps are rewritten in full at the next repair (every 30 s) or apply")]
    Map(#[from] MapError),
    /// The change does not fit; nothing was written.
    #[error(
        "{what}: this change needs {needed} but {available} are free; {advice}. Nothing was changed"
    )]
    Capacity {
        what: &'static str,
        needed: u64,
        available: u64,
        advice: &'static str,
    },
    /// A write failed part way through an apply.
    #[error("applying failed part way ({source}); {}", if *restored {
        "the previous configuration was written back and keeps serving"
    } else {
        "writing the previous configuration back failed too: the maps are rewritten in full at the next repair (every 30 s) or apply"
    })]
    Partial { source: MapError, restored: bool },
}

#[derive(Debug, Clone)]
pub struct VipState {
    pub cfg: VipConfig,
    pub key: VipKey,
    pub meta: VipMeta,
    /// The ring as written into the VIP's LB_RINGS window.
    pub ring: Vec<u32>,
    pub backends: Vec<BackendState>,
    /// Serving from the backup pool.
    pub on_backup: bool,
}

impl VipState {
    /// Backends that take new flows now: the ring's members (a serving backup pool
    /// included).
    pub fn serving_backends(&self) -> usize {
        members(self).0.len()
    }

    /// The ids of the backends that take new flows now.
    pub fn serving_ids(&self) -> Vec<u32> {
        members(self).0.iter().map(|m| m.id).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub vip: String,
    pub backend: Option<IpAddr>,
    pub what: String,
}

/// A backend to probe (health check or agent), with what to probe it with.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub vip: String,
    pub backend_id: u32,
    pub health: Health,
    pub addr: SocketAddr,
}

/// A backend found in pinned maps by a restarted daemon.
#[derive(Debug, Clone, Copy)]
struct Adopted {
    id: u32,
    down: bool,
}

pub fn addr16(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

fn ip_of(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

pub fn vip_key(v: &VipConfig) -> VipKey {
    let (addr, family) = addr16(v.address);
    let proto = match v.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    VipKey {
        addr,
        port: v.port,
        proto,
        family,
    }
}

fn scheduler(s: SchedulerCfg) -> Scheduler {
    match s {
        SchedulerCfg::Maglev => Scheduler::Maglev,
        SchedulerCfg::RoundRobin => Scheduler::RoundRobin,
        SchedulerCfg::Random => Scheduler::Random,
        SchedulerCfg::LeastConn => Scheduler::LeastConn,
        SchedulerCfg::SourceHash => Scheduler::SourceHash,
    }
}

/// Node-wide dataplane settings from the config.
pub fn global_config(cfg: &Config) -> GlobalConfig {
    let d = &cfg.dataplane;
    let mut g = GlobalConfig {
        mtu: d.mtu,
        ..GlobalConfig::default()
    };
    if let Some(mac) = d.gateway_mac.as_deref().and_then(parse_mac) {
        g.gateway_mac = mac;
    }
    if !d.fib {
        g.flags |= lb_common::CFG_F_NO_FIB;
    }
    if let Some((IpAddr::V4(a), len)) = parse_prefix(&d.encap_source_v4) {
        g.encap_src_v4 = a.octets();
        g.encap_v4_hash_bits = 32 - len;
    }
    if let Some((IpAddr::V6(a), len)) = parse_prefix(&d.encap_source_v6) {
        g.encap_src_v6 = a.octets();
        g.encap_v6_hash_bits = (128 - len as u32).min(32) as u8;
    }
    g
}

fn backend_entry(vip_id: u32, b: &BackendState) -> Backend {
    let (addr, family) = addr16(b.cfg.address);
    let mac = b.cfg.mac.as_deref().and_then(parse_mac).unwrap_or_default();
    Backend {
        addr,
        mac,
        family,
        flags: if b.dataplane_down() {
            BACKEND_F_DOWN
        } else {
            0
        },
        vip_id,
    }
}

/// The VIP's ring members now: usable primaries, and the usable backups while fewer than
/// `min_primaries` primaries are usable. Also whether the backup pool serves.
fn members(v: &VipState) -> (Vec<RingMember>, bool) {
    let usable = |role: Role| {
        v.backends
            .iter()
            .filter(move |b| b.cfg.role == role && b.usable())
    };
    let member = |b: &BackendState| RingMember {
        id: b.id,
        identity: b.cfg.address.to_string().into_bytes(),
        weight: b.weight(),
    };
    let primaries = usable(Role::Primary).count() as u32;
    let on_backup = primaries < v.cfg.min_primaries && usable(Role::Backup).count() > 0;
    let mut m: Vec<RingMember> = usable(Role::Primary).map(member).collect();
    if on_backup {
        m.extend(usable(Role::Backup).map(member));
    }
    (m, on_backup)
}

/// The ring `v` should have now, whether it serves from its backups, and the length the
/// dataplane walks (round-robin uses only the filled prefix).
fn desired_ring(v: &VipState) -> (Vec<u32>, bool, u32) {
    let (members, on_backup) = members(v);
    let size = v.cfg.ring_size;
    let ring = match v.cfg.scheduler {
        SchedulerCfg::RoundRobin => {
            let mut r = round_robin(&members, size);
            r.resize(size as usize, NO_BACKEND);
            r
        }
        // Validation guarantees a prime size with room for every member.
        _ => maglev(&members, size).unwrap_or_else(|_| vec![NO_BACKEND; size as usize]),
    };
    let len = if v.cfg.scheduler == SchedulerCfg::RoundRobin {
        ring.iter()
            .position(|s| *s == NO_BACKEND)
            .unwrap_or(ring.len())
            .max(1) as u32
    } else {
        size
    };
    (ring, on_backup, len)
}

/// Every VIP address gets an (address, 0, proto) entry so its fragments find a VIP: the
/// all-port VIP if there is one, else an alias of the first VIP declared for that address
/// and protocol.
fn fragment_aliases(vips: &[VipState]) -> HashMap<VipKey, VipMeta> {
    let mut want: HashMap<VipKey, VipMeta> = HashMap::new();
    for v in vips {
        let alias = VipKey { port: 0, ..v.key };
        if v.key.port != 0 && !vips.iter().any(|o| o.key == alias) {
            want.entry(alias).or_insert(VipMeta {
                flags: v.meta.flags | VIP_F_FRAGMENTS_ONLY,
                ..v.meta
            });
        }
    }
    want
}

/// A change worked out in full before anything is written.
struct Plan {
    global: GlobalConfig,
    new_rate: [u64; 4],
    vips: Vec<VipState>,
    /// For each of `vips`, what its window holds now (the base of the slot diff).
    written: Vec<Vec<u32>>,
    /// For each of `vips`, how long its ring took to compute.
    built: Vec<Duration>,
    windows: Windows,
    /// Same name, new address, port, protocol or ring size: removed before the new entry is
    /// written, as they may give it their window.
    replaced: Vec<VipState>,
    /// No longer configured: removed after everything else, so a rename never leaves a gap.
    gone: Vec<VipState>,
    /// Backends that left a VIP that stays.
    left: Vec<(String, BackendState)>,
    transitions: Vec<(String, IpAddr, Transition)>,
}

pub struct Controller<M> {
    maps: M,
    observer: Option<Arc<dyn Observer>>,
    pub vips: Vec<VipState>,
    windows: Windows,
    pub events: VecDeque<Event>,
    adopted_backends: HashMap<(u32, IpAddr), Adopted>,
    adopted_vips: HashMap<VipKey, VipMeta>,
    global: Option<GlobalConfig>,
    new_rate: [u64; 4],
    /// The maps may not hold what `vips` says (a write failed): rewrite them in full.
    out_of_step: bool,
}

impl<M: Maps> Controller<M> {
    /// A controller over `maps`, adopting whatever VIPs, rings and backends they already
    /// hold (pinned by an earlier run) so that applying the same config rewrites nothing.
    pub fn new(mut maps: M, ring_capacity: u32) -> Result<Self, ControlError> {
        let mut adopted_vips = HashMap::new();
        for (k, m) in maps.vip_entries()? {
            if m.flags & VIP_F_FRAGMENTS_ONLY == 0 {
                adopted_vips.insert(k, m);
            }
        }
        let mut adopted_backends = HashMap::new();
        if !adopted_vips.is_empty() {
            for (id, be) in maps.backend_entries()? {
                if be.family != 0 {
                    adopted_backends.insert(
                        (be.vip_id, ip_of(&be.addr, be.family)),
                        Adopted {
                            id,
                            down: be.flags & BACKEND_F_DOWN != 0,
                        },
                    );
                }
            }
            info!(
                vips = adopted_vips.len(),
                backends = adopted_backends.len(),
                "adopting pinned dataplane state"
            );
        }
        Ok(Controller {
            maps,
            observer: None,
            vips: Vec::new(),
            windows: Windows::new(ring_capacity),
            events: VecDeque::new(),
            adopted_backends,
            adopted_vips,
            global: None,
            new_rate: [0; 4],
            out_of_step: false,
        })
    }

    /// The maps written through (the kernel's, or a fake in tests).
    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Whether the maps hold what the controller serves. False after a write failed, until
    /// a repair or an apply has rewritten them.
    pub fn in_step(&self) -> bool {
        !self.out_of_step
    }

    /// Report transitions, timings and the current state to `o` from now on.
    pub fn set_observer(&mut self, o: Arc<dyn Observer>) {
        self.observer = Some(o);
        self.publish();
    }

    fn publish(&self) {
        if let Some(o) = &self.observer {
            o.state(&self.vips);
        }
    }

    /// Record an event (logged, and kept for `lbctl events`).
    pub fn event(&mut self, vip: &str, backend: Option<IpAddr>, what: String) {
        match backend {
            Some(b) => info!(vip, backend = %b, "{what}"),
            None => info!(vip, "{what}"),
        }
        self.events.push_back(Event {
            at: SystemTime::now(),
            vip: vip.to_string(),
            backend,
            what,
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Make the dataplane match `cfg`: all of it, or (on an error) none of it as far as the
    /// controller can help it. Health and admin state of backends that stay are kept.
    pub fn apply(&mut self, cfg: &Config) -> Result<(), ControlError> {
        let plan = self.plan(cfg)?;
        if let Err(source) = self.write(&plan) {
            warn!(error = %source, "applying failed part way; writing the previous configuration back");
            self.out_of_step = true;
            // Before a first apply the controller serves nothing of its own: writing "the
            // previous revision" back would wipe what a pinned dataplane still forwards with.
            let restored = self.global.is_some() && self.repair().is_ok();
            return Err(ControlError::Partial { source, restored });
        }
        self.commit(plan);
        Ok(())
    }

    /// Rewrite the maps in full from what the controller serves (after a failed write):
    /// every entry, every ring slot that differs from what is read back, every entry that
    /// is not ours removed.
    pub fn repair(&mut self) -> Result<(), ControlError> {
        let global = self.global.unwrap_or_default();
        let new_rate = self.new_rate;
        // Rings as the backends' states make them now: a write that failed during a health
        // change left the state changed and its ring not rebuilt.
        let mut vips = self.vips.clone();
        for v in &mut vips {
            let (ring, on_backup, len) = desired_ring(v);
            v.ring = ring;
            v.on_backup = on_backup;
            v.meta.ring_size = len;
        }
        let plan = Plan {
            global,
            new_rate,
            vips,
            written: Vec::new(),
            built: Vec::new(),
            windows: self.windows.clone(),
            replaced: Vec::new(),
            gone: Vec::new(),
            left: Vec::new(),
            transitions: Vec::new(),
        };
        let res = self.write(&plan);
        if res.is_ok() {
            let changes: Vec<(String, bool)> = plan
                .vips
                .iter()
                .zip(&self.vips)
                .filter(|(new, old)| new.on_backup != old.on_backup)
                .map(|(new, _)| (new.cfg.name.clone(), new.on_backup))
                .collect();
            self.vips = plan.vips;
            for (name, on_backup) in changes {
                self.backup_event(&name, on_backup);
            }
            if self.out_of_step {
                self.out_of_step = false;
                info!("the dataplane's maps are in step with the configuration again");
            }
        }
        res.map_err(ControlError::Map)
    }

    /// Work out `cfg` in full: ids, windows, rings, what leaves. Reads the maps (adopted
    /// rings) but writes nothing, and changes nothing of `self`.
    fn plan(&mut self, cfg: &Config) -> Result<Plan, ControlError> {
        // Ids in use or pinned: none is handed out again in this apply (removed ones are
        // cleared only at its end, when nothing refers to them any more).
        let mut vip_ids = Ids::new(
            self.vips
                .iter()
                .map(|v| v.meta.vip_id)
                .chain(self.adopted_vips.values().map(|m| m.vip_id)),
            MAX_VIPS,
        );
        let mut backend_ids = Ids::new(
            self.vips
                .iter()
                .flat_map(|v| v.backends.iter().map(|b| b.id))
                .chain(self.adopted_backends.values().map(|a| a.id)),
            MAX_BACKENDS,
        );
        let mut windows = self.windows.clone();
        let mut adopted_vips = self.adopted_vips.clone();
        let mut adopted_backends = self.adopted_backends.clone();
        let names: std::collections::HashSet<&str> =
            cfg.vips.iter().map(|v| v.get_ref().name.as_str()).collect();
        let mut old: Vec<Option<VipState>> = self.vips.iter().cloned().map(Some).collect();
        let mut plan = Plan {
            global: global_config(cfg),
            new_rate: cfg.dataplane.new_rate(),
            vips: Vec::new(),
            written: Vec::new(),
            built: Vec::new(),
            windows: Windows::default(),
            replaced: Vec::new(),
            gone: Vec::new(),
            left: Vec::new(),
            transitions: Vec::new(),
        };
        let mut fresh: Vec<usize> = Vec::new();
        for sv in &cfg.vips {
            let vc = sv.get_ref().clone();
            let key = vip_key(&vc);
            // The same VIP: by name, or by key when its old name is gone (a rename keeps
            // its id, window, ring and backends' states).
            let found = old
                .iter()
                .position(|o| o.as_ref().is_some_and(|o| o.cfg.name == vc.name))
                .or_else(|| {
                    old.iter().position(|o| {
                        o.as_ref()
                            .is_some_and(|o| o.key == key && !names.contains(o.cfg.name.as_str()))
                    })
                })
                .and_then(|i| old[i].take());
            let prev = match found {
                Some(p) if p.key == key && p.cfg.ring_size == vc.ring_size => Some(p),
                Some(p) => {
                    windows.free(p.meta.ring_offset);
                    plan.replaced.push(p);
                    None
                }
                None => None,
            };
            let (mut meta, written, mut prev_backends) = match prev {
                Some(p) => {
                    let written = if self.out_of_step {
                        self.maps.read_ring(p.meta.ring_offset, p.ring.len())?
                    } else {
                        p.ring.clone()
                    };
                    (p.meta, written, p.backends)
                }
                None => match adopted_vips.remove(&key) {
                    Some(m)
                        if m.ring_size == vc.ring_size
                            || vc.scheduler == SchedulerCfg::RoundRobin =>
                    {
                        windows.take(m.ring_offset, vc.ring_size);
                        let ring = self.maps.read_ring(m.ring_offset, vc.ring_size as usize)?;
                        (m, ring, Vec::new())
                    }
                    _ => {
                        let vip_id = vip_ids.alloc().ok_or(ControlError::Capacity {
                            what: "VIP ids",
                            needed: 1,
                            available: 0,
                            advice: "remove VIPs first, in a change of their own",
                        })?;
                        fresh.push(plan.vips.len());
                        let meta = VipMeta {
                            vip_id,
                            ring_size: vc.ring_size,
                            ..VipMeta::default()
                        };
                        (meta, vec![NO_BACKEND; vc.ring_size as usize], Vec::new())
                    }
                },
            };
            meta.scheduler = scheduler(vc.scheduler) as u8;
            meta.forward = match vc.forward {
                ForwardCfg::Ipip => Forward::IpIp,
                ForwardCfg::L2dsr => Forward::L2Dsr,
            } as u8;
            meta.flags = if vc.no_backend == NoBackend::Pass {
                VIP_F_NO_BACKEND_PASS
            } else {
                0
            };
            let mut backends = Vec::new();
            for sb in &vc.backends {
                let bc = sb.get_ref().clone();
                let health = bc.health.over(&vc.health).resolve(vc.port);
                let kept = prev_backends
                    .iter()
                    .position(|b| b.cfg.address == bc.address)
                    .map(|i| prev_backends.remove(i));
                let b = match kept {
                    Some(mut b) => {
                        let addr = bc.address;
                        if let Some(t) = b.reconfigure(bc, health) {
                            plan.transitions.push((vc.name.clone(), addr, t));
                        }
                        b
                    }
                    None => {
                        let adopted = adopted_backends.remove(&(meta.vip_id, bc.address));
                        let id = match adopted {
                            Some(a) => a.id,
                            None => backend_ids.alloc().ok_or(ControlError::Capacity {
                                what: "backend ids",
                                needed: 1,
                                available: 0,
                                advice: "remove backends first, in a change of their own",
                            })?,
                        };
                        let down =
                            adopted.is_some_and(|a| a.down) && health.kind != CheckKind::None;
                        BackendState::new(bc, id, health, down)
                    }
                };
                backends.push(b);
            }
            plan.left
                .extend(prev_backends.into_iter().map(|b| (vc.name.clone(), b)));
            let mut v = VipState {
                cfg: vc,
                key,
                meta,
                ring: Vec::new(),
                backends,
                on_backup: false,
            };
            let started = Instant::now();
            let (ring, on_backup, len) = desired_ring(&v);
            plan.built.push(started.elapsed());
            v.ring = ring;
            v.on_backup = on_backup;
            v.meta.ring_size = len;
            plan.vips.push(v);
            plan.written.push(written);
        }
        // Windows for new VIPs last, once the replaced ones have given theirs back.
        let needed: u64 = fresh
            .iter()
            .map(|i| plan.vips[*i].cfg.ring_size as u64)
            .sum();
        let available = windows.capacity() as u64 - windows.used();
        for i in fresh {
            let size = plan.vips[i].cfg.ring_size;
            let offset = windows.alloc(size).ok_or(ControlError::Capacity {
                what: "LB_RINGS slots ([dataplane] ring_capacity)",
                needed,
                available,
                advice: "VIPs this change removes free their windows only once it is applied: apply the removal first, or raise ring_capacity (lbd purge and a restart)",
            })?;
            plan.vips[i].meta.ring_offset = offset;
            // A window given back keeps the slots of the VIP that had it: write every slot
            // (one batch), or a slot the new ring leaves empty would keep naming an old
            // backend id (which another backend may hold by now). Reading the window back
            // instead costs a syscall per slot, a minute at start with 1,000 VIPs.
            plan.written[i] = Vec::new();
        }
        plan.gone = old.into_iter().flatten().collect();
        for g in &plan.gone {
            windows.free(g.meta.ring_offset);
        }
        plan.windows = windows;
        Ok(plan)
    }

    /// Write `plan` in the order the dataplane can follow at every step: backends, then the
    /// ring, then the VIP entry, so no VIP leads to an unfilled ring and no ring to an
    /// unknown backend; what leaves goes last.
    fn write(&mut self, plan: &Plan) -> Result<(), MapError> {
        let repairing = self.out_of_step;
        self.maps.set_config(&plan.global)?;
        self.maps.set_new_rate(&plan.new_rate)?;
        for r in &plan.replaced {
            self.maps.remove_vip(&r.key, r.meta.vip_id)?;
            for b in &r.backends {
                self.maps.set_backend(b.id, &Backend::default())?;
            }
        }
        for (i, v) in plan.vips.iter().enumerate() {
            for b in &v.backends {
                self.maps
                    .set_backend(b.id, &backend_entry(v.meta.vip_id, b))?;
            }
            let read;
            let base = match plan.written.get(i) {
                Some(w) if !repairing => w,
                _ => {
                    read = self.maps.read_ring(v.meta.ring_offset, v.ring.len())?;
                    &read
                }
            };
            let started = Instant::now();
            let slots = self.maps.update_ring(v.meta.ring_offset, base, &v.ring)?;
            if slots > 0 {
                if let Some(o) = &self.observer {
                    let built = plan.built.get(i).copied().unwrap_or_default();
                    o.ring_written(built, started.elapsed());
                }
                info!(vip = %v.cfg.name, slots, "ring written");
            }
            self.maps.set_vip(&v.key, &v.meta)?;
        }
        for (_, b) in &plan.left {
            self.maps.set_backend(b.id, &Backend::default())?;
        }
        for g in &plan.gone {
            self.maps.remove_vip(&g.key, g.meta.vip_id)?;
            for b in &g.backends {
                self.maps.set_backend(b.id, &Backend::default())?;
            }
        }
        // Whatever the maps hold that is not ours: pinned by an earlier run and no longer
        // configured, or left by a write that failed.
        let ours: HashMap<VipKey, u32> = plan.vips.iter().map(|v| (v.key, v.meta.vip_id)).collect();
        let aliases = fragment_aliases(&plan.vips);
        for (k, m) in self.maps.vip_entries()? {
            let keep = if m.flags & VIP_F_FRAGMENTS_ONLY != 0 {
                aliases.contains_key(&k)
            } else {
                ours.get(&k) == Some(&m.vip_id)
            };
            if !keep {
                self.maps.remove_vip(&k, m.vip_id)?;
            }
        }
        // Backends: every id the controller stops using is cleared above, so the full walk
        // of LB_BACKENDS (a read per slot) is needed only where the maps may hold what the
        // controller does not know: pinned by an earlier run (the first apply) or left by a
        // failed write.
        if repairing || self.global.is_none() {
            let backend_ids: std::collections::HashSet<u32> = plan
                .vips
                .iter()
                .flat_map(|v| v.backends.iter().map(|b| b.id))
                .collect();
            for (id, _) in self.maps.backend_entries()? {
                if !backend_ids.contains(&id) {
                    self.maps.set_backend(id, &Backend::default())?;
                }
            }
        }
        for (k, m) in aliases {
            self.maps.set_vip(&k, &m)?;
        }
        self.maps.rebuild_vip_filter()
    }

    /// The plan is in the maps: make it what the controller serves.
    fn commit(&mut self, plan: Plan) {
        let was_backup: HashMap<String, bool> = self
            .vips
            .iter()
            .map(|v| (v.cfg.name.clone(), v.on_backup))
            .collect();
        if !self.adopted_vips.is_empty() {
            info!("pinned VIPs and backends that are not in the configuration were removed");
        }
        self.adopted_vips.clear();
        self.adopted_backends.clear();
        self.global = Some(plan.global);
        self.new_rate = plan.new_rate;
        self.windows = plan.windows;
        self.vips = plan.vips;
        self.out_of_step = false;
        for r in plan.replaced.iter().chain(&plan.gone) {
            self.event(&r.cfg.name, None, "VIP removed".into());
        }
        for (vip, b) in plan.left {
            self.event(&vip, Some(b.cfg.address), "backend removed".into());
        }
        for (vip, addr, t) in plan.transitions {
            self.count_transition(&vip, addr, t.to);
            self.event(
                &vip,
                Some(addr),
                format!("{} -> {} by {}", t.from, t.to, t.reason),
            );
        }
        let changes: Vec<(String, bool)> = self
            .vips
            .iter()
            .filter(|v| was_backup.get(&v.cfg.name).copied().unwrap_or(false) != v.on_backup)
            .map(|v| (v.cfg.name.clone(), v.on_backup))
            .collect();
        for (name, on_backup) in changes {
            self.backup_event(&name, on_backup);
        }
        self.publish();
    }

    fn backup_event(&mut self, vip: &str, on_backup: bool) {
        let what = if on_backup {
            "backup pool takes over: too few primaries usable"
        } else {
            "primaries recovered: backup pool hands back"
        };
        self.event(vip, None, what.into());
    }

    fn count_transition(&self, vip: &str, addr: IpAddr, to: State) {
        if let Some(o) = &self.observer {
            o.transition(vip, addr, to);
        }
    }

    /// Rebuild VIP `i`'s ring and write what changed. Returns slots written.
    fn sync_ring(&mut self, i: usize) -> Result<usize, MapError> {
        let started = Instant::now();
        let (ring, on_backup, len) = desired_ring(&self.vips[i]);
        let built = started.elapsed();
        let v = &self.vips[i];
        let written = self.maps.update_ring(v.meta.ring_offset, &v.ring, &ring);
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                self.out_of_step = true;
                return Err(e);
            }
        };
        if let Some(o) = &self.observer {
            o.ring_written(built, started.elapsed() - built);
        }
        let v = &mut self.vips[i];
        let was_backup = v.on_backup;
        v.ring = ring;
        v.on_backup = on_backup;
        if v.meta.ring_size != len {
            v.meta.ring_size = len;
            let (k, m) = (v.key, v.meta);
            if let Err(e) = self.maps.set_vip(&k, &m) {
                self.out_of_step = true;
                return Err(e);
            }
        }
        if was_backup != on_backup {
            let name = self.vips[i].cfg.name.clone();
            self.backup_event(&name, on_backup);
        }
        Ok(written)
    }

    fn find(&self, vip: &str, backend_id: u32) -> Option<(usize, usize)> {
        let i = self.vips.iter().position(|v| v.cfg.name == vip)?;
        let j = self.vips[i]
            .backends
            .iter()
            .position(|b| b.id == backend_id)?;
        Some((i, j))
    }

    /// After a backend's state changed: its flags, then the ring, so its flows leave a dead
    /// backend at once. Returns slots written.
    fn sync_backend(&mut self, i: usize, j: usize) -> Result<usize, MapError> {
        let v = &self.vips[i];
        let b = &v.backends[j];
        let entry = backend_entry(v.meta.vip_id, b);
        if let Err(e) = self.maps.set_backend(b.id, &entry) {
            self.out_of_step = true;
            return Err(e);
        }
        self.sync_ring(i)
    }

    /// A probe result (health check or agent answer): the backend's state machine decides,
    /// and a change is written at once. Returns the new state when the state shown changed.
    pub fn on_probe(&mut self, p: &Probe) -> Result<Option<State>, ControlError> {
        let Some((i, j)) = self.find(&p.vip, p.backend_id) else {
            return Ok(None);
        };
        let b = &mut self.vips[i].backends[j];
        let addr = b.cfg.address;
        let t = match &p.agent {
            Some(Ok(line)) => b.observe_agent(line),
            // As in HAProxy, an unreachable agent changes nothing: the health checks decide.
            Some(Err(e)) => {
                tracing::debug!(error = %e, "agent check failed");
                None
            }
            None => {
                if let (Ok(lat), Some(o)) = (&p.result, &self.observer) {
                    o.check_passed(&p.vip, addr, *lat);
                }
                b.observe(&p.result, Instant::now())
            }
        };
        let Some(t) = t else { return Ok(None) };
        self.settled(i, j, t, p.at)
    }

    /// A passive verdict (`passive::judge`): backend `backend_id` of `vip` marked down at
    /// once, with `reason`; its flows leave it as after a failed check.
    pub fn on_traffic(
        &mut self,
        vip: &str,
        backend_id: u32,
        reason: String,
    ) -> Result<Option<State>, ControlError> {
        let Some((i, j)) = self.find(vip, backend_id) else {
            return Ok(None);
        };
        let at = Instant::now();
        match self.vips[i].backends[j].observe_traffic(reason) {
            Some(t) => self.settled(i, j, t, at),
            None => Ok(None),
        }
    }

    /// A backend's transition into the dataplane, an event and the observer.
    fn settled(
        &mut self,
        i: usize,
        j: usize,
        t: Transition,
        at: Instant,
    ) -> Result<Option<State>, ControlError> {
        let addr = self.vips[i].backends[j].cfg.address;
        let name = self.vips[i].cfg.name.clone();
        let written = self.sync_backend(i, j)?;
        let took = at.elapsed().as_secs_f64() * 1000.0;
        let what = if t.visible() {
            self.count_transition(&name, addr, t.to);
            format!(
                "{} -> {}: {}; {written} ring slots written {took:.2} ms after the verdict",
                t.from, t.to, t.reason
            )
        } else if t.was_down != t.now_down {
            format!(
                "{} and {}",
                t.from,
                if t.now_down {
                    "failing its checks: marked down"
                } else {
                    "passing its checks again"
                }
            )
        } else {
            format!(
                "{}; {written} ring slots written {took:.2} ms after the answer",
                t.reason
            )
        };
        self.event(&name, Some(addr), what);
        self.publish();
        Ok(t.visible().then_some(t.to))
    }

    /// Advance slow-start ramps: rebuild the rings of VIPs with a backend still ramping
    /// (and once more when a ramp ends). Returns slots written.
    pub fn ramp(&mut self) -> Result<usize, ControlError> {
        let now = Instant::now();
        let mut written = 0;
        for i in 0..self.vips.len() {
            let mut any = false;
            for b in &mut self.vips[i].backends {
                if b.up_since.is_some() {
                    any = true;
                    if !b.ramping(now) {
                        b.up_since = None;
                    }
                }
            }
            if any {
                written += self.sync_ring(i)?;
            }
        }
        Ok(written)
    }

    fn targets(&self, port: impl Fn(&BackendState) -> Option<u16>) -> Vec<ProbeTarget> {
        self.vips
            .iter()
            .flat_map(|v| {
                v.backends.iter().filter_map(|b| {
                    port(b).map(|p| ProbeTarget {
                        vip: v.cfg.name.clone(),
                        backend_id: b.id,
                        health: b.health.clone(),
                        addr: SocketAddr::new(b.cfg.address, p),
                    })
                })
            })
            .collect()
    }

    /// Every backend with an agent to ask.
    pub fn agents(&self) -> Vec<ProbeTarget> {
        self.targets(|b| b.health.agent_port)
    }

    /// Every backend that needs health checks.
    pub fn probes(&self) -> Vec<ProbeTarget> {
        self.targets(|b| (b.health.kind != CheckKind::None).then_some(b.health.port))
    }

    /// Warn about VIPs that have no usable backend, so an operator notices before clients
    /// do.
    pub fn warn_unserved(&self) {
        for v in &self.vips {
            if v.ring.iter().all(|s| *s == NO_BACKEND) {
                warn!(vip = %v.cfg.name, "no usable backend: packets are {}", if v.cfg.no_backend == NoBackend::Pass { "passed to the kernel" } else { "dropped" });
            }
        }
    }
}

/// The time since `t` (zero if the clock went back).
pub fn ago(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}
