//! The controller's decisions, proved against the in-memory maps: health transitions, the
//! backup pool, ids and windows, ring diffs, adoption of pinned state, capacity refusals,
//! partial failures (every write of a change made to fail in turn), events and the
//! observer. No root, no kernel: every test runs in milliseconds.
//!
//! Helpers live here; the tests are grouped in the submodules below.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_common::{
    BACKEND_F_DOWN, Backend, GlobalConfig, NO_BACKEND, VIP_F_FRAGMENTS_ONLY, VipKey, VipMeta,
};

use crate::{
    BackendState, Config, Controller, MemMaps, Observer, Probe, State, VipState, addr16,
    global_config, parse_mac,
};

mod adoption;
mod announce;
mod backup;
mod capacity;
mod events;
mod faults;
mod fleet;
mod fuzz;
mod health;
mod ids;
mod manifest;
mod passive;
mod rings;

/// One `[[vip]]` table of a test configuration, rendered in the order TOML needs: the
/// VIP's keys, its `[vip.health]`, then its backends.
#[derive(Clone)]
pub(crate) struct Vip {
    head: Vec<String>,
    health: Vec<String>,
    backends: Vec<String>,
}

/// A VIP with no backend yet.
pub(crate) fn vip(name: &str, addr: &str, port: u16, ring_size: u32) -> Vip {
    Vip {
        head: vec![
            format!("name = \"{name}\""),
            format!("address = \"{addr}\""),
            format!("port = {port}"),
            format!("ring_size = {ring_size}"),
        ],
        health: Vec::new(),
        backends: Vec::new(),
    }
}

impl Vip {
    /// Another key of the VIP, e.g. `min_primaries = 2`.
    pub(crate) fn set(mut self, kv: &str) -> Self {
        self.head.push(kv.into());
        self
    }

    /// A key of `[vip.health]`, e.g. `rise = 1`.
    pub(crate) fn health(mut self, kv: &str) -> Self {
        self.health.push(kv.into());
        self
    }

    /// A backend; `extra` holds more of its keys separated by `;` (`weight = 50; drain = true`).
    pub(crate) fn backend(mut self, addr: &str, extra: &str) -> Self {
        let mut t = format!("[[vip.backend]]\naddress = \"{addr}\"\n");
        for kv in extra.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            t.push_str(kv);
            t.push('\n');
        }
        self.backends.push(t);
        self
    }

    pub(crate) fn render(&self) -> String {
        let mut s = String::from("[[vip]]\n");
        for kv in &self.head {
            s.push_str(kv);
            s.push('\n');
        }
        if !self.health.is_empty() {
            s.push_str("[vip.health]\n");
            for kv in &self.health {
                s.push_str(kv);
                s.push('\n');
            }
        }
        for b in &self.backends {
            s.push_str(b);
        }
        s
    }
}

/// A configuration from TOML text (the `[daemon]` table is added).
pub(crate) fn parse(body: &str) -> Config {
    let src = format!("[daemon]\ninterfaces = [\"eth0\"]\n\n{body}");
    Config::parse(&src, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}\n{src}"))
}

/// A configuration of these VIPs, with the default `[dataplane]`.
pub(crate) fn config(vips: &[Vip]) -> Config {
    config_with("", vips)
}

/// A configuration with `[dataplane]` keys `dataplane` (one per line).
pub(crate) fn config_with(dataplane: &str, vips: &[Vip]) -> Config {
    parse(&config_text(dataplane, vips))
}

pub(crate) fn config_text(dataplane: &str, vips: &[Vip]) -> String {
    let mut s = String::new();
    if !dataplane.is_empty() {
        s.push_str("[dataplane]\n");
        s.push_str(dataplane);
        s.push_str("\n\n");
    }
    for v in vips {
        s.push_str(&v.render());
        s.push('\n');
    }
    s
}

/// A controller over empty maps, sized by the config's `ring_capacity`, with `cfg` applied.
pub(crate) fn applied(cfg: &Config) -> Controller<MemMaps> {
    let mut c = Controller::new(MemMaps::new(), cfg.dataplane.ring_capacity).unwrap();
    c.apply(cfg).unwrap();
    c
}

pub(crate) fn vip_of<'a>(c: &'a Controller<MemMaps>, name: &str) -> &'a VipState {
    c.vips
        .iter()
        .find(|v| v.cfg.name == name)
        .unwrap_or_else(|| panic!("no VIP {name}"))
}

pub(crate) fn backend_of<'a>(
    c: &'a Controller<MemMaps>,
    vip: &str,
    addr: &str,
) -> &'a BackendState {
    let a: IpAddr = addr.parse().unwrap();
    vip_of(c, vip)
        .backends
        .iter()
        .find(|b| b.cfg.address == a)
        .unwrap_or_else(|| panic!("no backend {addr} in {vip}"))
}

/// The id of backend `addr` of VIP `vip`.
pub(crate) fn bid(c: &Controller<MemMaps>, vip: &str, addr: &str) -> u32 {
    backend_of(c, vip, addr).id
}

/// How many slots of the VIP's window, as the dataplane sees it, hold backend `id`.
pub(crate) fn slots_of(c: &Controller<MemMaps>, vip: &str, id: u32) -> usize {
    let v = vip_of(c, vip);
    c.maps()
        .ring(v.meta.ring_offset, v.cfg.ring_size)
        .iter()
        .filter(|s| **s == id)
        .count()
}

/// The VIP's window as the dataplane sees it.
pub(crate) fn window(c: &Controller<MemMaps>, vip: &str) -> Vec<u32> {
    let v = vip_of(c, vip);
    c.maps().ring(v.meta.ring_offset, v.cfg.ring_size)
}

fn probe(vip: &str, backend_id: u32, result: Result<Duration, String>) -> Probe {
    Probe {
        vip: vip.into(),
        backend_id,
        result,
        at: Instant::now(),
        agent: None,
    }
}

/// A health check that passed in `ms` milliseconds.
pub(crate) fn ok(vip: &str, backend_id: u32, ms: u64) -> Probe {
    probe(vip, backend_id, Ok(Duration::from_millis(ms)))
}

/// A health check that failed.
pub(crate) fn fail(vip: &str, backend_id: u32) -> Probe {
    probe(vip, backend_id, Err("connection refused".into()))
}

/// An agent-check answer.
pub(crate) fn agent(vip: &str, backend_id: u32, line: &str) -> Probe {
    Probe {
        agent: Some(Ok(line.into())),
        ..probe(vip, backend_id, Ok(Duration::ZERO))
    }
}

/// An agent that could not be reached.
pub(crate) fn agent_unreachable(vip: &str, backend_id: u32) -> Probe {
    Probe {
        agent: Some(Err("connection refused".into())),
        ..probe(vip, backend_id, Ok(Duration::ZERO))
    }
}

/// The LB_BACKENDS entry backend `b` of VIP `vip_id` must have.
pub(crate) fn entry(vip_id: u32, b: &BackendState) -> Backend {
    let (addr, family) = addr16(b.cfg.address);
    Backend {
        addr,
        mac: b.cfg.mac.as_deref().and_then(parse_mac).unwrap_or_default(),
        family,
        flags: if b.dataplane_down() {
            BACKEND_F_DOWN
        } else {
            0
        },
        vip_id,
    }
}

/// What the controller serves, in comparable form: per VIP its name, key, entry, ring, pool
/// and backends (id, address, weight, state).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VipView {
    pub name: String,
    pub key: VipKey,
    pub meta: VipMeta,
    pub ring: Vec<u32>,
    pub on_backup: bool,
    pub backends: Vec<(u32, IpAddr, u32, State)>,
}

pub(crate) fn view(c: &Controller<MemMaps>) -> Vec<VipView> {
    c.vips
        .iter()
        .map(|v| VipView {
            name: v.cfg.name.clone(),
            key: v.key,
            meta: v.meta,
            ring: v.ring.clone(),
            on_backup: v.on_backup,
            backends: v
                .backends
                .iter()
                .map(|b| (b.id, b.cfg.address, b.cfg.weight, b.state()))
                .collect(),
        })
        .collect()
}

/// Everything in the maps, for before/after comparisons (MemMaps has no PartialEq).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub config: GlobalConfig,
    pub vips: BTreeMap<VipKey, VipMeta>,
    pub by_id: BTreeMap<u32, VipKey>,
    pub backends: BTreeMap<u32, Backend>,
    pub rings: BTreeMap<u32, u32>,
    pub writes: usize,
}

pub(crate) fn snapshot(m: &MemMaps) -> Snapshot {
    Snapshot {
        config: m.config,
        vips: m.vips.clone(),
        by_id: m.by_id.clone(),
        backends: m.backends.clone(),
        rings: m.rings.iter().map(|(k, v)| (*k, *v)).collect(),
        writes: m.writes,
    }
}

/// The maps hold exactly what the controller serves: every VIP entry (and its by-id
/// record), every backend entry, every ring window; no entry that is not the controller's;
/// and no ring slot names a backend that may not take new flows or belongs to another VIP.
pub(crate) fn assert_maps_match_view(c: &Controller<MemMaps>) {
    let m = c.maps();
    let mut ids = BTreeSet::new();
    let mut ours: BTreeMap<VipKey, u32> = BTreeMap::new();
    for v in &c.vips {
        let name = &v.cfg.name;
        assert_ne!(v.meta.vip_id, 0, "VIP {name} has id 0");
        assert_eq!(m.vips.get(&v.key), Some(&v.meta), "LB_VIPS entry of {name}");
        assert_eq!(
            m.by_id.get(&v.meta.vip_id),
            Some(&v.key),
            "LB_VIP_BY_ID of {name}"
        );
        assert_eq!(
            m.ring(v.meta.ring_offset, v.ring.len() as u32),
            v.ring,
            "ring window of {name} at {}",
            v.meta.ring_offset
        );
        for b in &v.backends {
            assert_ne!(b.id, 0, "backend {} of {name} has id 0", b.cfg.address);
            assert!(ids.insert(b.id), "backend id {} used twice", b.id);
            assert_eq!(
                m.backends.get(&b.id),
                Some(&entry(v.meta.vip_id, b)),
                "LB_BACKENDS entry of {} ({name})",
                b.cfg.address
            );
            if !b.usable() {
                assert!(
                    !v.ring.contains(&b.id),
                    "{name}: backend {} is {} but holds ring slots",
                    b.cfg.address,
                    b.state()
                );
            }
        }
        for s in &v.ring {
            assert!(
                *s == NO_BACKEND || v.backends.iter().any(|b| b.id == *s),
                "{name}: ring slot names backend {s}, not one of this VIP's"
            );
        }
        ours.insert(v.key, v.meta.vip_id);
    }
    assert_eq!(
        m.backends.keys().copied().collect::<BTreeSet<_>>(),
        ids,
        "LB_BACKENDS holds exactly the controller's backends"
    );
    for (k, meta) in &m.vips {
        if meta.flags & VIP_F_FRAGMENTS_ONLY != 0 {
            assert_eq!(k.port, 0, "fragment alias with a port: {k:?}");
            assert!(
                c.vips.iter().any(|v| v.meta.vip_id == meta.vip_id
                    && v.key.addr == k.addr
                    && v.key.proto == k.proto),
                "fragment alias {k:?} points at no VIP of that address"
            );
        } else {
            assert_eq!(ours.get(k), Some(&meta.vip_id), "stray LB_VIPS entry {k:?}");
        }
    }
    assert_eq!(
        m.by_id.keys().copied().collect::<BTreeSet<_>>(),
        ours.values().copied().collect::<BTreeSet<_>>(),
        "LB_VIP_BY_ID holds exactly the controller's VIPs"
    );
}

/// The maps match the view and the node-wide config of `cfg`.
pub(crate) fn assert_serves(c: &Controller<MemMaps>, cfg: &Config) {
    assert!(c.in_step(), "the controller says it is out of step");
    assert_maps_match_view(c);
    assert_eq!(c.maps().config, global_config(cfg), "LB_CONFIG");
    let names: Vec<&str> = c.vips.iter().map(|v| v.cfg.name.as_str()).collect();
    let want: Vec<&str> = cfg.vips.iter().map(|v| v.get_ref().name.as_str()).collect();
    assert_eq!(names, want, "VIPs served");
}

/// A VIP in the maps with ids and offsets replaced by what they stand for: comparable
/// between two map sets that gave out different ids.
#[derive(Debug, PartialEq)]
pub(crate) struct CanonVip {
    pub scheduler: u8,
    pub forward: u8,
    pub flags: u8,
    pub ring_size: u32,
    /// Each slot as the backend address it sends to.
    pub ring: Vec<Option<IpAddr>>,
    /// Backend address -> (flags, mac, family).
    pub backends: BTreeMap<IpAddr, (u8, [u8; 6], u8)>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct Canon {
    pub config: GlobalConfig,
    pub vips: BTreeMap<VipKey, CanonVip>,
    /// Fragment alias -> the key of the VIP it stands for.
    pub aliases: BTreeMap<VipKey, VipKey>,
}

fn ip(b: &Backend) -> IpAddr {
    if b.family == lb_common::FAMILY_V4 {
        IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]])
    } else {
        IpAddr::from(b.addr)
    }
}

/// The maps' content in id-free form. Panics on a dangling reference (a slot naming a
/// missing backend or another VIP's, a backend of no VIP, an alias of no VIP).
pub(crate) fn canon(m: &MemMaps) -> Canon {
    let mut out = Canon {
        config: m.config,
        vips: BTreeMap::new(),
        aliases: BTreeMap::new(),
    };
    let mut owned = BTreeSet::new();
    for (k, meta) in &m.vips {
        if meta.flags & VIP_F_FRAGMENTS_ONLY != 0 {
            continue;
        }
        let ring = m
            .ring(meta.ring_offset, meta.ring_size)
            .into_iter()
            .map(|s| {
                (s != NO_BACKEND).then(|| {
                    let b = m
                        .backends
                        .get(&s)
                        .unwrap_or_else(|| panic!("{k:?}: slot names missing backend {s}"));
                    assert_eq!(
                        b.vip_id, meta.vip_id,
                        "{k:?}: slot names backend {s} of another VIP"
                    );
                    ip(b)
                })
            })
            .collect();
        let backends = m
            .backends
            .iter()
            .filter(|(_, b)| b.vip_id == meta.vip_id)
            .map(|(id, b)| {
                owned.insert(*id);
                (ip(b), (b.flags, b.mac, b.family))
            })
            .collect();
        out.vips.insert(
            *k,
            CanonVip {
                scheduler: meta.scheduler,
                forward: meta.forward,
                flags: meta.flags,
                ring_size: meta.ring_size,
                ring,
                backends,
            },
        );
    }
    for (k, meta) in &m.vips {
        if meta.flags & VIP_F_FRAGMENTS_ONLY != 0 {
            let target = m
                .by_id
                .get(&meta.vip_id)
                .unwrap_or_else(|| panic!("alias {k:?} of unknown VIP id {}", meta.vip_id));
            out.aliases.insert(*k, *target);
        }
    }
    for id in m.backends.keys() {
        assert!(owned.contains(id), "backend {id} belongs to no VIP");
    }
    out
}

/// One `Observer::state` call: every VIP's name and its backends' states.
pub(crate) type StateSeen = Vec<(String, Vec<(IpAddr, State)>)>;

/// Records what the controller reports.
#[derive(Default)]
pub(crate) struct Recorder {
    pub transitions: Mutex<Vec<(String, IpAddr, State)>>,
    /// Each state() call: (VIP name, [(backend, state)]) for every VIP.
    pub states: Mutex<Vec<StateSeen>>,
    pub checks: Mutex<Vec<(String, IpAddr, Duration)>>,
    pub rings: Mutex<usize>,
}

impl Observer for Recorder {
    fn check_passed(&self, vip: &str, backend: IpAddr, latency: Duration) {
        self.checks
            .lock()
            .unwrap()
            .push((vip.into(), backend, latency));
    }
    fn transition(&self, vip: &str, backend: IpAddr, to: State) {
        self.transitions
            .lock()
            .unwrap()
            .push((vip.into(), backend, to));
    }
    fn ring_written(&self, _build: Duration, _write: Duration) {
        *self.rings.lock().unwrap() += 1;
    }
    fn state(&self, vips: &[VipState]) {
        self.states.lock().unwrap().push(
            vips.iter()
                .map(|v| {
                    (
                        v.cfg.name.clone(),
                        v.backends
                            .iter()
                            .map(|b| (b.cfg.address, b.state()))
                            .collect(),
                    )
                })
                .collect(),
        );
    }
}

pub(crate) fn recorder(c: &mut Controller<MemMaps>) -> Arc<Recorder> {
    let r = Arc::new(Recorder::default());
    c.set_observer(r.clone());
    r
}

/// The events' texts, oldest first, as "vip[/backend]: what".
pub(crate) fn events(c: &Controller<MemMaps>) -> Vec<String> {
    c.events
        .iter()
        .map(|e| match e.backend {
            Some(b) => format!("{}/{}: {}", e.vip, b, e.what),
            None => format!("{}: {}", e.vip, e.what),
        })
        .collect()
}
