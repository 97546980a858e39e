//! The balancer's maps. Names are what `bpftool map list` shows an operator.

use crate::Packet;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, BackendFlows, BackendStats, DEFAULT_FLOWS, DEFAULT_RING_CAPACITY, FlowEntry, FlowKey,
    GlobalConfig, MAX_BACKENDS, MAX_TX_PORTS, MAX_VIPS, VIP_FILTER_BITS, VipKey, VipMeta,
    VipRecord, VipStats, reason::REASON_COUNT,
};

/// Per-CPU LRU lists (BPF_F_NO_COMMON_LRU) over one shared table: evictions never take a
/// global lock, yet a flow that RSS moves to another CPU still finds its backend.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Entries allocated on insert and freed after an RCU grace period (BPF_F_NO_PREALLOC): the
/// program keeps a reference to the value (`&'static VipMeta`) through scheduling, and a
/// preallocated map would hand a replaced entry to the very next insert, under that
/// reference, with another VIP's values.
const BPF_F_NO_PREALLOC: u32 = 1 << 0;

#[map(name = "LB_VIPS")]
pub static LB_VIPS: HashMap<VipKey, VipMeta> =
    HashMap::with_max_entries(MAX_VIPS * 2, BPF_F_NO_PREALLOC);

/// Every VIP by id: established flows reach their VIP with an array read.
#[map(name = "LB_VIP_BY_ID")]
pub static LB_VIP_BY_ID: Array<VipRecord> = Array::with_max_entries(MAX_VIPS, 0);

#[map(name = "LB_BACKENDS")]
pub static LB_BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Every VIP's slot table, one flat array (Katran's layout): a VIP owns a window of it.
#[map(name = "LB_RINGS")]
pub static LB_RINGS: Array<u32> = Array::with_max_entries(DEFAULT_RING_CAPACITY, 0);

#[map(name = "LB_FLOWS")]
pub static LB_FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_FLOWS, BPF_F_NO_COMMON_LRU);

#[map(name = "LB_CONFIG")]
pub static LB_CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);

#[map(name = "LB_STATS")]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[map(name = "LB_VIP_STATS")]
pub static LB_VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "LB_BE_STATS")]
pub static LB_BE_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// SYNs and handshakes per backend, for passive detection (not pinned).
#[map(name = "LB_BE_FLOWS")]
pub static LB_BE_FLOWS: PerCpuArray<BackendFlows> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// A bit per VIP address hash (see `lb_common::vip_filter_bit`).
#[map(name = "LB_VIP_FILTER")]
pub static LB_VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_BITS / 64, 0);

/// Round-robin cursor per VIP, per CPU: no cross-CPU cache line bouncing.
#[map(name = "LB_RR")]
pub static LB_RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Open connections per backend for least-connections (shared, updated atomically).
#[map(name = "LB_CONNS")]
pub static LB_CONNS: Array<u64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The packet being processed, per CPU: keeps the parse results off the 512-byte stack
/// (XDP runs to completion on a CPU, so one slot per CPU is never shared).
#[map(name = "LB_SCRATCH")]
pub static LB_SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// When each reason was last logged (per CPU), for `stats::rare`.
#[map(name = "LB_LOG_AT")]
pub static LB_LOG_AT: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Egress NICs other than the ingress one, keyed by ifindex.
#[map(name = "LB_TX_PORTS")]
pub static LB_TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// The new-entry and SYN-lookup rates, as set by an operator (`lb_common::MAP_NEW_RATE`):
/// per second and burst, per CPU; zeros take the defaults.
#[map(name = "LB_NEW_RATE")]
pub static LB_NEW_RATE: Array<u64> = Array::with_max_entries(4, 0);

/// Each CPU's token bucket for new connection-table entries.
#[repr(C)]
pub struct NewBudget {
    pub tokens: u64,
    /// When the bucket was last refilled (bpf_ktime_get_ns).
    pub at: u64,
    /// Refusals since the clock was last read, for buckets that read it only every
    /// `CLOCK_EVERY` refusals.
    pub refused: u64,
    /// When the bucket last refused for want of tokens, as the clock was read then (0:
    /// never). Buckets that read the clock lazily update it only when they read it.
    pub refused_at: u64,
}

/// Slot `BUDGET_NEW`: new entries; slot `BUDGET_SYN_LOOKUP`: bare SYNs' table lookups.
#[map(name = "LB_NEW_BUDGET")]
pub static LB_NEW_BUDGET: PerCpuArray<NewBudget> = PerCpuArray::with_max_entries(2, 0);
pub const BUDGET_NEW: u32 = 0;
pub const BUDGET_SYN_LOOKUP: u32 = 1;
