//! The desired state and the dataplane kept true to it.
//!
//! The controller owns the configuration, every backend's health and admin state, and the
//! dataplane's maps. A change (a health verdict, a reload) rebuilds the affected VIP's ring
//! and writes only the slots that changed; a backend that fails is marked down so that its
//! established flows are rescheduled, while a drained or degraded one only leaves the ring
//! and keeps its flows.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
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
    config::{
        BackendConfig, CheckKind, Config, ForwardCfg, Health, NoBackend, Protocol, Role,
        SchedulerCfg, VipConfig, parse_mac, parse_prefix,
    },
    maps::{MapError, Maps},
    observer::Observer,
    probe::{AgentSays, Probe, parse_agent},
    ring::{RingMember, maglev, round_robin},
};

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("no free {0}")]
    Full(&'static str),
}

/// How many probe results the error rate looks back over.
const ERROR_WINDOW: usize = 20;
const MAX_EVENTS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Enabled,
    /// No new flows; established flows stay.
    Draining,
    /// Down for the dataplane: established flows are rescheduled.
    Disabled,
}

/// The state an operator sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Degraded,
    Draining,
    Disabled,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Up,
        State::Down,
        State::Degraded,
        State::Draining,
        State::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Degraded => "degraded",
            State::Draining => "draining",
            State::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendState {
    pub cfg: BackendConfig,
    pub id: u32,
    pub health: Health,
    pub live: Liveness,
    pub admin: Admin,
    pub degraded: bool,
    /// Consecutive successes / failures toward rise / fall.
    pub ok_streak: u32,
    pub fail_streak: u32,
    pub latency_ms: Option<f64>,
    pub recent: VecDeque<bool>,
    pub since: SystemTime,
    pub reason: String,
    pub last_check: Option<SystemTime>,
    /// The backend's own word (agent-check), sticky until it says otherwise.
    pub agent: AgentSays,
    /// When it last came up, for slow start.
    pub up_since: Option<Instant>,
}

impl BackendState {
    /// The operator's word first, then the backend's agent, then the health checks.
    pub fn state(&self) -> State {
        if self.admin == Admin::Disabled || self.agent.maint {
            State::Disabled
        } else if self.admin == Admin::Draining || self.agent.drain {
            State::Draining
        } else if self.live == Liveness::Down || self.agent.down {
            State::Down
        } else if self.degraded {
            State::Degraded
        } else {
            State::Up
        }
    }

    /// Weight in the ring now: configured, scaled by the agent's percentage and by the
    /// slow-start ramp after a recovery.
    pub fn weight(&self) -> u32 {
        let mut w = self.cfg.weight as u64 * self.agent.weight_pct.unwrap_or(100) as u64 / 100;
        if let (Some(since), Some(ramp)) = (self.up_since, self.health.slow_start_ms) {
            let done = since.elapsed().as_millis() as u64;
            if done < ramp && w > 0 {
                w = (w * done / ramp).max(1);
            }
        }
        w.min(crate::config::MAX_WEIGHT as u64) as u32
    }

    /// Still ramping up after a recovery.
    fn ramping(&self) -> bool {
        matches!((self.up_since, self.health.slow_start_ms), (Some(t), Some(r)) if t.elapsed().as_millis() < r as u128)
    }

    /// May take new flows.
    fn usable(&self) -> bool {
        self.state() == State::Up && self.weight() > 0
    }

    /// Marked down in the dataplane: its flows move.
    /// Independent of the state shown: a draining backend that fails its checks is down
    /// for the dataplane too, so its flows move.
    fn dataplane_down(&self) -> bool {
        self.admin == Admin::Disabled
            || self.agent.maint
            || self.live == Liveness::Down
            || self.agent.down
    }

    pub fn error_rate(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        self.recent.iter().filter(|ok| !**ok).count() as f64 / self.recent.len() as f64
    }
}

#[derive(Debug, Clone)]
pub struct VipState {
    pub cfg: VipConfig,
    pub key: VipKey,
    pub meta: VipMeta,
    pub ring: Vec<u32>,
    pub backends: Vec<BackendState>,
    /// Serving from the backup pool.
    pub on_backup: bool,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub vip: String,
    pub backend: Option<IpAddr>,
    pub what: String,
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

fn vip_key(v: &VipConfig) -> VipKey {
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

pub struct Controller<M> {
    maps: M,
    observer: Option<Arc<dyn Observer>>,
    pub vips: Vec<VipState>,
    /// (offset, size) windows of LB_RINGS in use.
    windows: BTreeSet<(u32, u32)>,
    ring_capacity: u32,
    pub events: VecDeque<Event>,
    /// (vip id, backend address) -> backend id found pinned by a restarted daemon.
    adopted_backends: HashMap<(u32, IpAddr), (u32, bool)>,
    adopted_vips: HashMap<VipKey, VipMeta>,
}

impl<M: Maps> Controller<M> {
    /// A controller over `dp`, adopting whatever VIPs, rings and backends the maps already
    /// hold (pinned by an earlier run) so that applying the same config rewrites nothing.
    pub fn new(mut dp: M, ring_capacity: u32) -> Result<Self, ControlError> {
        let mut adopted_vips = HashMap::new();
        for (k, m) in dp.vip_entries()? {
            if m.flags & VIP_F_FRAGMENTS_ONLY == 0 {
                adopted_vips.insert(k, m);
            }
        }
        let mut adopted_backends = HashMap::new();
        if !adopted_vips.is_empty() {
            for (id, be) in dp.backend_entries()? {
                if be.family != 0 {
                    adopted_backends.insert(
                        (be.vip_id, ip_of(&be.addr, be.family)),
                        (id, be.flags & BACKEND_F_DOWN != 0),
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
            maps: dp,
            observer: None,
            vips: Vec::new(),
            windows: BTreeSet::new(),
            ring_capacity,
            events: VecDeque::new(),
            adopted_backends,
            adopted_vips,
        })
    }

    /// The maps written through (the kernel's, or a fake in tests).
    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
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

    fn count_transition(&self, vip: &str, addr: IpAddr, to: State) {
        if let Some(o) = &self.observer {
            o.transition(vip, addr, to);
        }
        self.publish();
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

    fn alloc_window(&mut self, size: u32) -> Option<u32> {
        let mut at = 0u32;
        for (o, s) in &self.windows {
            if *o >= at && o - at >= size {
                break;
            }
            at = at.max(o + s);
        }
        (at as u64 + size as u64 <= self.ring_capacity as u64).then(|| {
            self.windows.insert((at, size));
            at
        })
    }

    fn used_vip_ids(&self) -> BTreeSet<u32> {
        self.vips
            .iter()
            .map(|v| v.meta.vip_id)
            .chain(self.adopted_vips.values().map(|m| m.vip_id))
            .collect()
    }

    fn used_backend_ids(&self) -> BTreeSet<u32> {
        self.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .chain(self.adopted_backends.values().map(|(id, _)| *id))
            .collect()
    }

    fn backend_entry(&self, vip_id: u32, b: &BackendState) -> Backend {
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

    /// Members of the VIP's ring now: usable primaries, and the usable backups while fewer
    /// than `min_primaries` primaries are usable.
    fn members(v: &VipState) -> (Vec<RingMember>, bool) {
        let usable = |role: Role| {
            v.backends
                .iter()
                .filter(move |b| b.cfg.role == role && b.usable())
        };
        let primaries = usable(Role::Primary).count() as u32;
        let on_backup = primaries < v.cfg.min_primaries && usable(Role::Backup).count() > 0;
        let mut m: Vec<RingMember> = usable(Role::Primary)
            .map(|b| RingMember {
                id: b.id,
                identity: b.cfg.address.to_string().into_bytes(),
                weight: b.weight(),
            })
            .collect();
        if on_backup {
            m.extend(usable(Role::Backup).map(|b| RingMember {
                id: b.id,
                identity: b.cfg.address.to_string().into_bytes(),
                weight: b.weight(),
            }));
        }
        (m, on_backup)
    }

    /// Rebuild VIP `i`'s ring and write what changed. Returns slots written.
    fn sync_ring(&mut self, i: usize) -> Result<usize, ControlError> {
        let started = Instant::now();
        let (members, on_backup) = Self::members(&self.vips[i]);
        let v = &self.vips[i];
        let ring = match v.cfg.scheduler {
            SchedulerCfg::RoundRobin => {
                let mut r = round_robin(&members, v.cfg.ring_size);
                r.resize(v.cfg.ring_size as usize, NO_BACKEND);
                r
            }
            // Validation guarantees a prime size with room for every member.
            _ => maglev(&members, v.cfg.ring_size)
                .unwrap_or_else(|_| vec![NO_BACKEND; v.cfg.ring_size as usize]),
        };
        let rr_len = if v.cfg.scheduler == SchedulerCfg::RoundRobin {
            ring.iter()
                .position(|s| *s == NO_BACKEND)
                .unwrap_or(ring.len())
                .max(1) as u32
        } else {
            v.cfg.ring_size
        };
        let built = started.elapsed();
        let written = self.maps.update_ring(v.meta.ring_offset, &v.ring, &ring)?;
        if let Some(o) = &self.observer {
            o.ring_written(built, started.elapsed() - built);
        }
        let name = v.cfg.name.clone();
        let was_backup = v.on_backup;
        let v = &mut self.vips[i];
        v.ring = ring;
        v.on_backup = on_backup;
        if v.meta.ring_size != rr_len {
            v.meta.ring_size = rr_len;
            let (k, m) = (v.key, v.meta);
            self.maps.set_vip(&k, &m)?;
        }
        if was_backup != on_backup {
            let what = if on_backup {
                "backup pool takes over: too few primaries usable"
            } else {
                "primaries recovered: backup pool hands back"
            };
            self.event(&name, None, what.into());
            self.publish();
        }
        Ok(written)
    }

    /// Make the dataplane match `cfg`. Health and admin state of backends that stay are kept.
    pub fn apply(&mut self, cfg: &Config) -> Result<(), ControlError> {
        self.maps.set_config(&global_config(cfg))?;
        // Ids in use or pinned: none is handed out again in this apply (removed backends are
        // cleared only at its end). Computed once: per-allocation scans made large
        // configurations quadratic.
        let mut taken_vips = self.used_vip_ids();
        let mut taken_backends = self.used_backend_ids();
        let mut next_backend = 1u32;
        let old: HashMap<String, VipState> = self
            .vips
            .drain(..)
            .map(|v| (v.cfg.name.clone(), v))
            .collect();
        let mut old = old;
        let mut new_vips: Vec<VipState> = Vec::new();
        let mut to_clear: Vec<u32> = Vec::new();
        let mut changed: Vec<(String, IpAddr, State, State)> = Vec::new();
        for sv in &cfg.vips {
            let vc = sv.get_ref().clone();
            let key = vip_key(&vc);
            // A VIP that keeps its name but changes address, port, protocol or ring size is
            // a new VIP: the old entry and its ring window go first.
            let prev = match old.remove(&vc.name) {
                Some(p) if p.key == key && p.cfg.ring_size == vc.ring_size => Some(p),
                Some(p) => {
                    self.remove_vip(p)?;
                    None
                }
                None => None,
            };
            let (meta, ring, mut prev_backends) = match prev {
                Some(p) => (p.meta, p.ring, p.backends),
                None => match self.adopted_vips.remove(&key) {
                    Some(m)
                        if m.ring_size == vc.ring_size
                            || vc.scheduler == SchedulerCfg::RoundRobin =>
                    {
                        let size = vc.ring_size;
                        self.windows.insert((m.ring_offset, size));
                        let ring = self.maps.read_ring(m.ring_offset, size as usize)?;
                        (m, ring, Vec::new())
                    }
                    _ => {
                        let vip_id = (1..MAX_VIPS)
                            .find(|id| !taken_vips.contains(id))
                            .ok_or(ControlError::Full("VIP ids"))?;
                        taken_vips.insert(vip_id);
                        let offset = self
                            .alloc_window(vc.ring_size)
                            .ok_or(ControlError::Full("LB_RINGS windows"))?;
                        let meta = VipMeta {
                            vip_id,
                            ring_offset: offset,
                            ring_size: vc.ring_size,
                            ..VipMeta::default()
                        };
                        (meta, vec![NO_BACKEND; vc.ring_size as usize], Vec::new())
                    }
                },
            };
            let mut meta = meta;
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
                        // The file is the source of truth for admin state: a reload that
                        // drains, disables or enables a backend takes effect.
                        let before = b.state();
                        b.admin = admin_of(&bc);
                        b.cfg = bc;
                        b.health = health;
                        if b.state() != before {
                            b.since = SystemTime::now();
                            b.reason = "configuration".into();
                            changed.push((vc.name.clone(), b.cfg.address, before, b.state()));
                        }
                        b
                    }
                    None => {
                        let adopted = self.adopted_backends.remove(&(meta.vip_id, bc.address));
                        let id = match adopted {
                            Some((id, _)) => id,
                            None => {
                                let id = (next_backend..MAX_BACKENDS)
                                    .find(|id| !taken_backends.contains(id))
                                    .ok_or(ControlError::Full("backend ids"))?;
                                taken_backends.insert(id);
                                next_backend = id + 1;
                                id
                            }
                        };
                        let down = adopted.map(|(_, down)| down).unwrap_or(false)
                            && health.kind != CheckKind::None;
                        BackendState {
                            admin: admin_of(&bc),
                            cfg: bc,
                            id,
                            health,
                            live: if down { Liveness::Down } else { Liveness::Up },
                            degraded: false,
                            ok_streak: 0,
                            fail_streak: 0,
                            latency_ms: None,
                            recent: VecDeque::new(),
                            since: SystemTime::now(),
                            reason: "configured".into(),
                            last_check: None,
                            agent: AgentSays::default(),
                            up_since: None,
                        }
                    }
                };
                backends.push(b);
            }
            // Backends that left this VIP: forgotten in the dataplane once the ring stops
            // naming them (below).
            for gone in prev_backends {
                self.event(&vc.name, Some(gone.cfg.address), "backend removed".into());
                to_clear.push(gone.id);
            }
            new_vips.push(VipState {
                cfg: vc,
                key,
                meta,
                ring,
                backends,
                on_backup: false,
            });
        }
        self.vips = new_vips;
        // Order matters: backends, then the ring, then the VIP entry, so the dataplane never
        // follows a VIP to an unfilled ring or a ring to an unknown backend.
        for i in 0..self.vips.len() {
            let v = &self.vips[i];
            let entries: Vec<(u32, Backend)> = v
                .backends
                .iter()
                .map(|b| (b.id, self.backend_entry(v.meta.vip_id, b)))
                .collect();
            for (id, e) in entries {
                self.maps.set_backend(id, &e)?;
            }
            let written = self.sync_ring(i)?;
            let v = &self.vips[i];
            let (k, m) = (v.key, v.meta);
            self.maps.set_vip(&k, &m)?;
            if written > 0 {
                info!(vip = %v.cfg.name, slots = written, "ring written");
            }
        }
        for id in to_clear {
            self.maps.set_backend(id, &Backend::default())?;
        }
        for (_, gone) in old {
            self.remove_vip(gone)?;
        }
        // Whatever was pinned but is not in the config any more.
        let stale: Vec<(VipKey, VipMeta)> = self.adopted_vips.drain().collect();
        for (k, m) in stale {
            self.maps.remove_vip(&k, m.vip_id)?;
            info!(
                vip_id = m.vip_id,
                "removed a pinned VIP that is not in the config"
            );
        }
        for ((_, _), (id, _)) in self.adopted_backends.drain().collect::<Vec<_>>() {
            self.maps.set_backend(id, &Backend::default())?;
        }
        self.sync_fragment_aliases()?;
        self.maps.rebuild_vip_filter()?;
        for (vip, addr, before, after) in changed {
            self.count_transition(&vip, addr, after);
            self.event(
                &vip,
                Some(addr),
                format!("{} -> {} by configuration", before.as_str(), after.as_str()),
            );
        }
        self.publish();
        Ok(())
    }

    fn remove_vip(&mut self, v: VipState) -> Result<(), ControlError> {
        self.maps.remove_vip(&v.key, v.meta.vip_id)?;
        self.windows.retain(|(o, _)| *o != v.meta.ring_offset);
        for b in &v.backends {
            self.maps.set_backend(b.id, &Backend::default())?;
        }
        self.event(&v.cfg.name, None, "VIP removed".into());
        Ok(())
    }

    /// Every VIP address gets an (address, 0, proto) entry so its fragments find a VIP:
    /// the all-port VIP if there is one, else an alias of the first VIP declared for that
    /// address and protocol.
    fn sync_fragment_aliases(&mut self) -> Result<(), ControlError> {
        let mut want: HashMap<VipKey, VipMeta> = HashMap::new();
        for v in &self.vips {
            let alias = VipKey { port: 0, ..v.key };
            if v.key.port != 0 && !self.vips.iter().any(|o| o.key == alias) {
                want.entry(alias).or_insert(VipMeta {
                    flags: v.meta.flags | VIP_F_FRAGMENTS_ONLY,
                    ..v.meta
                });
            }
        }
        for (k, m) in self.maps.vip_entries()? {
            if m.flags & VIP_F_FRAGMENTS_ONLY != 0 && !want.contains_key(&k) {
                self.maps.remove_vip(&k, m.vip_id)?;
            }
        }
        for (k, m) in want {
            self.maps.set_vip(&k, &m)?;
        }
        Ok(())
    }

    fn find(&self, vip: &str, backend_id: u32) -> Option<(usize, usize)> {
        let i = self.vips.iter().position(|v| v.cfg.name == vip)?;
        let j = self.vips[i]
            .backends
            .iter()
            .position(|b| b.id == backend_id)?;
        Some((i, j))
    }

    /// After a backend's state may have changed: flags and ring. Returns slots written.
    fn sync_backend(&mut self, i: usize, j: usize) -> Result<usize, ControlError> {
        let v = &self.vips[i];
        let b = &v.backends[j];
        let entry = self.backend_entry(v.meta.vip_id, b);
        let id = b.id;
        // Down first, then the ring: flows leave a dead backend at once.
        self.maps.set_backend(id, &entry)?;
        self.sync_ring(i)
    }

    /// A probe result: count it, and when rise/fall or a threshold is crossed, change the
    /// backend's state and the dataplane. Returns the new state on a change.
    pub fn on_probe(&mut self, p: &Probe) -> Result<Option<State>, ControlError> {
        let Some((i, j)) = self.find(&p.vip, p.backend_id) else {
            return Ok(None);
        };
        if let Some(answer) = &p.agent {
            return self.on_agent(i, j, answer, p.at);
        }
        let b = &mut self.vips[i].backends[j];
        let before = b.state();
        let was_down = b.dataplane_down();
        b.last_check = Some(SystemTime::now());
        b.recent.push_back(p.result.is_ok());
        while b.recent.len() > ERROR_WINDOW {
            b.recent.pop_front();
        }
        let mut reason = None;
        match &p.result {
            Ok(lat) => {
                if let Some(o) = &self.observer {
                    o.check_passed(&p.vip, b.cfg.address, *lat);
                }
                let ms = lat.as_secs_f64() * 1000.0;
                b.latency_ms = Some(b.latency_ms.map_or(ms, |avg| 0.7 * avg + 0.3 * ms));
                b.ok_streak += 1;
                b.fail_streak = 0;
                if b.live == Liveness::Down && b.ok_streak >= b.health.rise {
                    b.live = Liveness::Up;
                    b.up_since = b.health.slow_start_ms.map(|_| Instant::now());
                    reason = Some(format!("{} checks passed", b.ok_streak));
                }
            }
            Err(e) => {
                b.fail_streak += 1;
                b.ok_streak = 0;
                if b.live == Liveness::Up && b.fail_streak >= b.health.fall {
                    b.live = Liveness::Down;
                    reason = Some(format!("{} checks failed, last: {e}", b.fail_streak));
                }
            }
        }
        let slow = matches!((b.health.max_latency_ms, b.latency_ms), (Some(max), Some(avg)) if avg > max as f64);
        let failing = b
            .health
            .max_error_rate
            .is_some_and(|max| b.recent.len() >= 5 && b.error_rate() > max);
        if b.degraded != (slow || failing) {
            b.degraded = slow || failing;
            reason.get_or_insert_with(|| {
                if slow {
                    format!(
                        "latency {:.1} ms above {} ms",
                        b.latency_ms.unwrap_or(0.0),
                        b.health.max_latency_ms.unwrap_or(0)
                    )
                } else if failing {
                    format!(
                        "error rate {:.0}% above {:.0}%",
                        b.error_rate() * 100.0,
                        b.health.max_error_rate.unwrap_or(0.0) * 100.0
                    )
                } else {
                    "back within thresholds".into()
                }
            });
        }
        let after = b.state();
        if before == after {
            // A draining (or disabled) backend that fails or recovers keeps the state shown,
            // but the dataplane must still learn it is down (its flows move) or back.
            if b.dataplane_down() != was_down {
                let (addr, down) = (b.cfg.address, b.dataplane_down());
                let name = self.vips[i].cfg.name.clone();
                self.sync_backend(i, j)?;
                self.event(
                    &name,
                    Some(addr),
                    format!(
                        "{} and {}",
                        before.as_str(),
                        if down {
                            "failing its checks: marked down"
                        } else {
                            "passing its checks again"
                        }
                    ),
                );
            }
            return Ok(None);
        }
        let reason = reason.unwrap_or_default();
        b.since = SystemTime::now();
        b.reason = reason.clone();
        let addr = b.cfg.address;
        let name = self.vips[i].cfg.name.clone();
        let written = self.sync_backend(i, j)?;
        let took = p.at.elapsed();
        self.count_transition(&name, addr, after);
        self.event(
            &name,
            Some(addr),
            format!(
                "{} -> {}: {reason}; {written} ring slots written {:.2} ms after the verdict",
                before.as_str(),
                after.as_str(),
                took.as_secs_f64() * 1000.0
            ),
        );
        Ok(Some(after))
    }

    /// An agent-check answer: the backend's own view of its state and weight.
    fn on_agent(
        &mut self,
        i: usize,
        j: usize,
        answer: &Result<String, String>,
        at: Instant,
    ) -> Result<Option<State>, ControlError> {
        let line = match answer {
            Ok(line) => line,
            // As in HAProxy, an unreachable agent changes nothing: the health checks decide.
            Err(e) => {
                tracing::debug!(error = %e, "agent check failed");
                return Ok(None);
            }
        };
        let says = parse_agent(line);
        let b = &mut self.vips[i].backends[j];
        let (before, weight_before) = (b.state(), b.weight());
        if says.up {
            b.agent.down = false;
            b.agent.drain = false;
            b.agent.maint = false;
        }
        b.agent.down |= says.down;
        b.agent.drain |= says.drain;
        b.agent.maint |= says.maint;
        if says.weight_pct.is_some() {
            b.agent.weight_pct = says.weight_pct;
        }
        let (after, weight_after) = (b.state(), b.weight());
        if before == after && weight_before == weight_after {
            return Ok(None);
        }
        if before != after {
            b.since = SystemTime::now();
            b.reason = format!("agent: {line}");
        }
        let addr = b.cfg.address;
        let name = self.vips[i].cfg.name.clone();
        let written = self.sync_backend(i, j)?;
        if before != after {
            self.count_transition(&name, addr, after);
        }
        self.event(
            &name,
            Some(addr),
            format!(
                "{} -> {} (weight {weight_before} -> {weight_after}) by agent {line:?}; {written} ring slots written {:.2} ms after the answer",
                before.as_str(),
                after.as_str(),
                at.elapsed().as_secs_f64() * 1000.0
            ),
        );
        Ok((before != after).then_some(after))
    }

    /// Advance slow-start ramps: rebuild the rings of VIPs with a backend still ramping
    /// (and once more when a ramp ends). Returns slots written.
    pub fn ramp(&mut self) -> Result<usize, ControlError> {
        let mut written = 0;
        for i in 0..self.vips.len() {
            let v = &mut self.vips[i];
            let mut any = false;
            for b in &mut v.backends {
                if b.up_since.is_some() {
                    any = true;
                    if !b.ramping() {
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

    /// Every (VIP, backend id, check settings, agent address) with an agent to ask.
    pub fn agents(&self) -> Vec<(String, u32, Health, SocketAddr)> {
        let mut out = Vec::new();
        for v in &self.vips {
            for b in &v.backends {
                if let Some(port) = b.health.agent_port {
                    out.push((
                        v.cfg.name.clone(),
                        b.id,
                        b.health.clone(),
                        SocketAddr::new(b.cfg.address, port),
                    ));
                }
            }
        }
        out
    }

    /// Every (VIP, backend id, health settings, address to probe) that needs probing.
    pub fn probes(&self) -> Vec<(String, u32, Health, SocketAddr)> {
        let mut out = Vec::new();
        for v in &self.vips {
            for b in &v.backends {
                if b.health.kind != CheckKind::None {
                    out.push((
                        v.cfg.name.clone(),
                        b.id,
                        b.health.clone(),
                        SocketAddr::new(b.cfg.address, b.health.port),
                    ));
                }
            }
        }
        out
    }

    /// Pass a grace period with no probe results: nothing to do, but warn about VIPs that
    /// have no usable backend so an operator notices before clients do.
    pub fn warn_unserved(&self) {
        for v in &self.vips {
            if v.ring.iter().all(|s| *s == NO_BACKEND) {
                warn!(vip = %v.cfg.name, "no usable backend: packets are {}", if v.cfg.no_backend == NoBackend::Pass { "passed to the kernel" } else { "dropped" });
            }
        }
    }
}

fn admin_of(b: &BackendConfig) -> Admin {
    if b.disabled {
        Admin::Disabled
    } else if b.drain {
        Admin::Draining
    } else {
        Admin::Enabled
    }
}

/// A short, stable description of the time since `t`.
pub fn ago(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}
