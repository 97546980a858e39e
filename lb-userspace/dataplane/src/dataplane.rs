//! The loaded XDP balancer and typed access to its maps.
//!
//! Everything the control plane writes into the kernel goes through here, so the daemon,
//! the tests and the benchmarks share one definition of how a VIP, a backend or a ring is
//! laid out in the maps.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
    util::nr_cpus,
};
use lb_common::{
    Backend, BackendFlows, BackendStats, GlobalConfig, MAP_BACKEND_FLOWS, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_CONFIG, MAP_CONNS, MAP_FLOWS, MAP_RINGS, MAP_STATS, MAP_TX_PORTS,
    MAP_VIP_BY_ID, MAP_VIP_STATS, MAP_VIPS, Reason, VIP_F_FRAGMENTS_ONLY, VipKey, VipMeta,
    VipRecord, VipStats,
};
use thiserror::Error;

use crate::{
    pins::{PINNED_MAPS, check_pinned, on_bpffs, purge_advice},
    programs::LB_XDP,
};

pub const PROGRAM: &str = "lb_xdp";

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(
        "loading the XDP program failed: {0}; check that you are root (CAP_BPF, CAP_NET_ADMIN) and that the kernel has BPF and BTF"
    )]
    Load(#[from] aya::EbpfError),
    #[error("program {0} not found in the embedded object: rebuild (lb-dataplane embeds it)")]
    MissingProgram(&'static str),
    #[error("map {0} not found in the embedded object: rebuild (lb-dataplane embeds it)")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("adding ifindex {ifindex} to LB_TX_PORTS: {detail}")]
    TxPort { ifindex: u32, detail: String },
    #[error("no free {0}: raise the limit or remove VIPs/backends")]
    Full(&'static str),
    #[error("pin directory {path}: {source}; is bpffs mounted (mount -t bpf bpf /sys/fs/bpf)?")]
    PinDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "pinned map {map} ({}) has {found}; this build needs {needed}: {remedy}",
        path.display()
    )]
    PinnedMapMismatch {
        map: &'static str,
        path: std::path::PathBuf,
        found: String,
        needed: String,
        remedy: String,
    },
    #[error(
        "reading pinned map {map} ({}): {source}; to start afresh: {}",
        path.display(),
        purge_advice(path.parent().unwrap_or(path))
    )]
    PinnedMapUnreadable {
        map: &'static str,
        path: std::path::PathBuf,
        source: aya::maps::MapError,
    },
    #[error("link pin {path}: {detail}")]
    Link {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error(
        "ring window {offset}+{len} is past LB_RINGS' capacity {capacity}: raise ring_capacity"
    )]
    RingCapacity {
        offset: u32,
        len: usize,
        capacity: u32,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// Sizes fixed when the program is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Connection table entries (shared by all CPUs, per-CPU LRU lists).
    pub flows: u32,
    /// Total slots of all VIPs' rings.
    pub ring_capacity: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flows: lb_common::DEFAULT_FLOWS,
            ring_capacity: lb_common::DEFAULT_RING_CAPACITY,
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    ring_capacity: u32,
    /// The interfaces attached through `attach_pinned`, by name: the ifindex of the NIC
    /// the program was attached to (0 if it could not be read), and whether that NIC is
    /// gone (`interface_lost`) with no NIC of the name attached since.
    interfaces: BTreeMap<String, (u32, bool)>,
    /// Links taken over from their pins, by interface: the program holds an fd of each
    /// (the pin keeps the link; the fd goes when the interface is attached again).
    taken: StdHashMap<String, XdpLinkId>,
}

impl Dataplane {
    /// Load (but do not attach) the balancer, with maps pinned under `pin_dir` if given.
    pub fn load(opts: LoadOptions, pin_dir: Option<&Path>) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(MAP_FLOWS, opts.flows)
            .map_max_entries(MAP_RINGS, opts.ring_capacity);
        let mut paths = Vec::new();
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
                path: dir.to_path_buf(),
                source,
            })?;
            if !on_bpffs(dir) {
                return Err(DataplaneError::PinDir {
                    path: dir.to_path_buf(),
                    source: std::io::Error::other(
                        "not on a bpf filesystem, so nothing would survive a restart",
                    ),
                });
            }
            paths = PINNED_MAPS.iter().map(|m| (*m, dir.join(m))).collect();
            check_pinned(dir, &opts)?;
        }
        // A map already pinned at its path is reused as it is (flows, rings, counters): the
        // check above made sure it is the map this build and `opts` would create.
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(LB_XDP)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()?;
        prog.load()?;
        Ok(Dataplane {
            ebpf,
            ring_capacity: opts.ring_capacity,
            interfaces: BTreeMap::new(),
            taken: StdHashMap::new(),
        })
    }

    pub fn program(&self) -> Result<&Xdp, DataplaneError> {
        Ok(self
            .ebpf
            .program(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()?)
    }

    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId, DataplaneError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()?;
        Ok(prog.attach(iface, mode)?)
    }

    /// Attach to `iface` through a bpf_link pinned at `link_pin`, so the program keeps
    /// forwarding when the daemon exits or dies. If a link is already pinned there (an
    /// earlier run), the program on it is replaced atomically: no packet sees an interface
    /// without a program. Returns whether an existing link was taken over.
    ///
    /// A pinned link whose NIC was deleted is severed: the kernel keeps it (the pin holds
    /// it) but it is attached to nothing and cannot be updated (ENOLINK). Then the stale
    /// pin is removed, with a warning, and the program is attached afresh to the NIC now
    /// named `iface` and pinned: a NIC deleted and created again does not keep the daemon
    /// from starting, or from attaching to it again while running.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: XdpMode,
        link_pin: &Path,
    ) -> Result<bool, DataplaneError> {
        let link_err = |detail: String| DataplaneError::Link {
            path: link_pin.to_path_buf(),
            detail,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()?;
        let mut took_over = false;
        if link_pin.exists() {
            let pinned = PinnedLink::from_pin(link_pin).map_err(|e| link_err(e.to_string()))?;
            let link =
                XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(e.to_string()))?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    if let Some(old) = self.taken.insert(iface.to_string(), id) {
                        // An fd of a link taken over earlier: the pin keeps the link.
                        let _ = prog.detach(old);
                    }
                    took_over = true;
                }
                Err(aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                    io_error,
                    ..
                })) if io_error.raw_os_error() == Some(libc::ENOLINK) => {
                    log::warn!(
                        "the XDP link pinned at {} was severed (its interface {iface} was deleted): removing the stale pin and attaching afresh",
                        link_pin.display()
                    );
                    std::fs::remove_file(link_pin).map_err(|e| {
                        link_err(format!("removing the pin of a severed link: {e}"))
                    })?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !took_over {
            let id = prog.attach(iface, mode)?;
            let link = prog.take_link(id)?;
            let fd = FdLink::try_from(link).map_err(|e| {
                link_err(format!(
                    "{e}: the kernel attached without a bpf_link (too old for a hitless restart)"
                ))
            })?;
            fd.pin(link_pin).map_err(|e| link_err(e.to_string()))?;
            if let Some(old) = self.taken.remove(iface) {
                // The fd of a link taken over before, severed since: let it go.
                let _ = prog.detach(old);
            }
        }
        self.interfaces
            .insert(iface.to_string(), (if_index(iface).unwrap_or(0), false));
        Ok(took_over)
    }

    /// The interfaces attached through `attach_pinned`, by name: the ifindex of the NIC
    /// each was attached to, and whether that NIC is lost (`interface_lost`).
    pub fn interfaces(&self) -> impl Iterator<Item = (&str, u32, bool)> {
        self.interfaces
            .iter()
            .map(|(n, (i, lost))| (n.as_str(), *i, *lost))
    }

    /// The interfaces whose NIC is lost and that have not been attached since.
    pub fn lost_interfaces(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .filter(|(_, (_, lost))| *lost)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Record that `iface`'s NIC is gone (deleted, renamed, moved to another namespace).
    /// `attach_pinned` clears the mark.
    pub fn interface_lost(&mut self, iface: &str) {
        if let Some((_, lost)) = self.interfaces.get_mut(iface) {
            *lost = true;
        }
    }

    /// Let go of `iface`'s pinned link: remove the pin at `link_pin` and the program's fd of
    /// it, so that the kernel frees it (and, if the NIC it is on still exists under another
    /// name or in another namespace, detaches the program there). For a NIC of the name
    /// that is not the one the link was made for: `attach_pinned` then attaches afresh
    /// instead of taking the old link over.
    pub fn release_link(&mut self, iface: &str, link_pin: &Path) -> Result<(), DataplaneError> {
        match std::fs::remove_file(link_pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DataplaneError::Link {
                    path: link_pin.to_path_buf(),
                    detail: format!("removing the pin: {e}"),
                });
            }
            _ => {}
        }
        if let Some(old) = self.taken.remove(iface) {
            let prog: &mut Xdp = self
                .ebpf
                .program_mut(PROGRAM)
                .ok_or(DataplaneError::MissingProgram(PROGRAM))?
                .try_into()?;
            let _ = prog.detach(old);
        }
        Ok(())
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        Array::try_from(map).map_err(map_err(name))
    }

    fn per_cpu<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<PerCpuArray<&MapData, V>, DataplaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        PerCpuArray::try_from(map).map_err(map_err(name))
    }

    fn vips(&mut self) -> Result<HashMap<&mut MapData, VipKey, VipMeta>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_VIPS)
            .ok_or(DataplaneError::MissingMap(MAP_VIPS))?;
        HashMap::try_from(map).map_err(map_err(MAP_VIPS))
    }

    pub fn set_config(&mut self, cfg: &GlobalConfig) -> Result<(), DataplaneError> {
        self.array::<GlobalConfig>(MAP_CONFIG)?
            .set(0, cfg, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// The connection table's rates (`LB_NEW_RATE`, in its index order; 0: default). The
    /// map is not pinned, so every start writes it.
    pub fn set_new_rate(&mut self, rate: &[u64; 4]) -> Result<(), DataplaneError> {
        let mut a = self.array::<u64>(lb_common::MAP_NEW_RATE)?;
        for (i, v) in rate.iter().enumerate() {
            a.set(i as u32, v, 0)
                .map_err(map_err(lb_common::MAP_NEW_RATE))?;
        }
        Ok(())
    }

    /// The filter bit first, then the entry: the dataplane never skips an installed VIP.
    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        let bit = lb_common::vip_filter_bit(&key.addr);
        let mut filter = self.array::<u64>(lb_common::MAP_VIP_FILTER)?;
        let word = filter
            .get(&(bit >> 6), 0)
            .map_err(map_err(lb_common::MAP_VIP_FILTER))?;
        filter
            .set(bit >> 6, word | (1u64 << (bit & 63)), 0)
            .map_err(map_err(lb_common::MAP_VIP_FILTER))?;
        let before = self.vips()?.get(key, 0).ok();
        self.vips()?
            .insert(key, meta, 0)
            .map_err(map_err(MAP_VIPS))?;
        // The key under a new id: its record at the old id must not keep serving old flows.
        if let Some(old) = before.filter(|b| b.vip_id != meta.vip_id) {
            self.clear_record(old.vip_id, key)?;
        }
        if meta.flags & VIP_F_FRAGMENTS_ONLY == 0 {
            self.array::<VipRecord>(MAP_VIP_BY_ID)?
                .set(
                    meta.vip_id,
                    VipRecord {
                        key: *key,
                        _pad: [0; 4],
                        meta: *meta,
                    },
                    0,
                )
                .map_err(map_err(MAP_VIP_BY_ID))?;
        }
        Ok(())
    }

    /// Clear the record at `vip_id` if it is `key`'s: an alias or a reused id must not clear
    /// another VIP's.
    fn clear_record(&mut self, vip_id: u32, key: &VipKey) -> Result<(), DataplaneError> {
        let mut by_id = self.array::<VipRecord>(MAP_VIP_BY_ID)?;
        let rec = by_id.get(&vip_id, 0).map_err(map_err(MAP_VIP_BY_ID))?;
        if rec.key == *key {
            by_id
                .set(vip_id, VipRecord::default(), 0)
                .map_err(map_err(MAP_VIP_BY_ID))?;
        }
        Ok(())
    }

    /// Recompute the VIP address filter from LB_VIPS (clears the bits of removed VIPs), and
    /// clear every `LB_VIP_BY_ID` record that LB_VIPS no longer backs (records are pinned:
    /// one left by a crash between two writes would otherwise outlive every restart).
    pub fn rebuild_vip_filter(&mut self) -> Result<(), DataplaneError> {
        let mut words = vec![0u64; (lb_common::VIP_FILTER_BITS / 64) as usize];
        let entries = self.vip_entries()?;
        for (k, _) in &entries {
            let bit = lb_common::vip_filter_bit(&k.addr);
            words[(bit >> 6) as usize] |= 1u64 << (bit & 63);
        }
        let backed: std::collections::HashSet<(u32, VipKey)> = entries
            .iter()
            .filter(|(_, m)| m.flags & VIP_F_FRAGMENTS_ONLY == 0)
            .map(|(k, m)| (m.vip_id, *k))
            .collect();
        let mut by_id = self.array::<VipRecord>(MAP_VIP_BY_ID)?;
        for id in 0..by_id.len() {
            let rec = by_id.get(&id, 0).map_err(map_err(MAP_VIP_BY_ID))?;
            if rec != VipRecord::default() && !backed.contains(&(id, rec.key)) {
                by_id
                    .set(id, VipRecord::default(), 0)
                    .map_err(map_err(MAP_VIP_BY_ID))?;
            }
        }
        let mut filter = self.array::<u64>(lb_common::MAP_VIP_FILTER)?;
        for (i, w) in words.iter().enumerate() {
            if filter
                .get(&(i as u32), 0)
                .map_err(map_err(lb_common::MAP_VIP_FILTER))?
                != *w
            {
                filter
                    .set(i as u32, w, 0)
                    .map_err(map_err(lb_common::MAP_VIP_FILTER))?;
            }
        }
        Ok(())
    }

    /// Remove `key`'s entry if it still belongs to VIP `vip_id`: when one apply gives the key
    /// to another VIP (a rename), removing the old VIP must not take the new one's entry.
    /// The record first: established flows stop finding the VIP before its entry goes.
    pub fn remove_vip(&mut self, key: &VipKey, vip_id: u32) -> Result<(), DataplaneError> {
        match self.vips()?.get(key, 0) {
            Ok(meta) if meta.vip_id == vip_id => {}
            _ => return Ok(()),
        }
        self.clear_record(vip_id, key)?;
        self.vips()?.remove(key).map_err(map_err(MAP_VIPS))
    }

    pub fn vip_entries(&mut self) -> Result<Vec<(VipKey, VipMeta)>, DataplaneError> {
        self.vips()?
            .iter()
            .map(|r| r.map_err(map_err(MAP_VIPS)))
            .collect()
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.array::<Backend>(MAP_BACKENDS)?
            .set(id, backend, 0)
            .map_err(map_err(MAP_BACKENDS))
    }

    /// The reader of the program's aya-log records (rare dataplane events), forwarded to
    /// the `log` facade (and from there to tracing). Taken once.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Let the balancer redirect to `ifindex` (a NIC other than the one a packet came in on,
    /// when the FIB says the backend is behind it).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_TX_PORTS)
            .ok_or(DataplaneError::MissingMap(MAP_TX_PORTS))?;
        let mut ports: DevMapHash<_> = DevMapHash::try_from(map).map_err(map_err(MAP_TX_PORTS))?;
        ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::TxPort {
                ifindex,
                detail: e.to_string(),
            })
    }

    /// Every backend entry in use (non-zero family), by id.
    pub fn backend_entries(&mut self) -> Result<Vec<(u32, Backend)>, DataplaneError> {
        let arr = self.array::<Backend>(MAP_BACKENDS)?;
        let mut out = Vec::new();
        for (i, b) in arr.iter().enumerate() {
            let b = b.map_err(map_err(MAP_BACKENDS))?;
            if b.family != 0 {
                out.push((i as u32, b));
            }
        }
        Ok(out)
    }

    pub fn backend(&mut self, id: u32) -> Result<Backend, DataplaneError> {
        self.array(MAP_BACKENDS)?
            .get(&id, 0)
            .map_err(map_err(MAP_BACKENDS))
    }

    fn check_window(&self, offset: u32, len: usize) -> Result<(), DataplaneError> {
        if offset as u64 + len as u64 > self.ring_capacity as u64 {
            return Err(DataplaneError::RingCapacity {
                offset,
                len,
                capacity: self.ring_capacity,
            });
        }
        Ok(())
    }

    /// Write a whole ring window. Returns the number of slots written.
    /// Write a whole ring window. Returns the number of slots written.
    pub fn write_ring(&mut self, offset: u32, slots: &[u32]) -> Result<usize, DataplaneError> {
        self.check_window(offset, slots.len())?;
        let keys: Vec<u32> = (0..slots.len() as u32).map(|i| offset + i).collect();
        self.write_slots(&keys, slots)?;
        Ok(slots.len())
    }

    /// Write only the slots where `new` differs from `old` (same window): a one-backend
    /// change to a Maglev ring touches about 1/N of it. Returns the number written.
    pub fn update_ring(
        &mut self,
        offset: u32,
        old: &[u32],
        new: &[u32],
    ) -> Result<usize, DataplaneError> {
        self.check_window(offset, new.len())?;
        let (keys, values): (Vec<u32>, Vec<u32>) = new
            .iter()
            .enumerate()
            .filter(|(i, s)| old.get(*i) != Some(*s))
            .map(|(i, s)| (offset + i as u32, *s))
            .unzip();
        self.write_slots(&keys, &values)?;
        Ok(keys.len())
    }

    /// One BPF_MAP_UPDATE_BATCH; slot by slot where the kernel refuses batches.
    fn write_slots(&mut self, keys: &[u32], values: &[u32]) -> Result<(), DataplaneError> {
        use std::os::fd::AsFd;
        let map = self
            .ebpf
            .map(MAP_RINGS)
            .ok_or(DataplaneError::MissingMap(MAP_RINGS))?;
        let aya::maps::Map::Array(data) = map else {
            return Err(DataplaneError::MissingMap(MAP_RINGS));
        };
        if crate::batch::update_u32(data.fd().as_fd(), keys, values).is_ok() {
            return Ok(());
        }
        let mut rings = self.array::<u32>(MAP_RINGS)?;
        for (k, v) in keys.iter().zip(values) {
            rings.set(*k, v, 0).map_err(map_err(MAP_RINGS))?;
        }
        Ok(())
    }

    pub fn read_ring(&mut self, offset: u32, len: usize) -> Result<Vec<u32>, DataplaneError> {
        self.check_window(offset, len)?;
        let rings = self.array::<u32>(MAP_RINGS)?;
        (0..len as u32)
            .map(|i| rings.get(&(offset + i), 0).map_err(map_err(MAP_RINGS)))
            .collect()
    }

    /// Open flows counted for least-connections.
    pub fn connections(&mut self, id: u32) -> Result<u64, DataplaneError> {
        self.array::<u64>(MAP_CONNS)?
            .get(&id, 0)
            .map_err(map_err(MAP_CONNS))
    }

    /// Every reason counter, summed over CPUs.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, DataplaneError> {
        let stats = self.per_cpu::<u64>(MAP_STATS)?;
        Reason::ALL
            .iter()
            .map(|r| {
                let v: PerCpuValues<u64> =
                    stats.get(&(*r as u32), 0).map_err(map_err(MAP_STATS))?;
                Ok((*r, v.iter().sum()))
            })
            .collect()
    }

    pub fn reason(&self, reason: Reason) -> Result<u64, DataplaneError> {
        let stats = self.per_cpu::<u64>(MAP_STATS)?;
        let v = stats.get(&(reason as u32), 0).map_err(map_err(MAP_STATS))?;
        Ok(v.iter().sum())
    }

    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats, DataplaneError> {
        let v = self
            .per_cpu::<VipStats>(MAP_VIP_STATS)?
            .get(&vip_id, 0)
            .map_err(map_err(MAP_VIP_STATS))?;
        Ok(v.iter().fold(VipStats::default(), |a, s| VipStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
        }))
    }

    /// Per-CPU map `name`'s value at `index`, summed over CPUs.
    fn summed<V>(&self, name: &'static str, index: u32) -> Result<V, DataplaneError>
    where
        V: aya::Pod + Default + core::ops::Add<Output = V>,
    {
        let v = self
            .per_cpu::<V>(name)?
            .get(&index, 0)
            .map_err(map_err(name))?;
        Ok(v.iter().fold(V::default(), |a, s| a + *s))
    }

    /// SYNs and handshakes of backend `id`, summed over CPUs (passive detection).
    pub fn backend_flows(&self, id: u32) -> Result<BackendFlows, DataplaneError> {
        self.summed(MAP_BACKEND_FLOWS, id)
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats, DataplaneError> {
        self.summed(MAP_BACKEND_STATS, id)
    }

    pub fn cpus() -> usize {
        nr_cpus().unwrap_or(1)
    }
}

/// The ifindex of the NIC named `iface` in this network namespace, if there is one.
fn if_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}
