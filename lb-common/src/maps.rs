//! Keys and values of the dataplane's BPF maps.
//!
//! All `#[repr(C)]` with explicit padding fields, so the kernel and userspace agree on every
//! byte (a stray padding byte in a hash key would make lookups miss at random).
//! Addresses are kept in network byte order in a 16-byte field; IPv4 uses the first 4
//! bytes and leaves the rest zero. Ports are host byte order.

use bytemuck::{Pod, Zeroable};

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

/// Map names as an operator sees them in `bpftool map list` (the kernel keeps 15 chars).
pub const MAP_VIPS: &str = "LB_VIPS";
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
pub const MAP_RINGS: &str = "LB_RINGS";
pub const MAP_FLOWS: &str = "LB_FLOWS";
pub const MAP_STATS: &str = "LB_STATS";
pub const MAP_VIP_STATS: &str = "LB_VIP_STATS";
pub const MAP_BACKEND_STATS: &str = "LB_BE_STATS";
pub const MAP_BACKEND_FLOWS: &str = "LB_BE_FLOWS";
pub const MAP_CONFIG: &str = "LB_CONFIG";
pub const MAP_RR: &str = "LB_RR";
pub const MAP_CONNS: &str = "LB_CONNS";
pub const MAP_TX_PORTS: &str = "LB_TX_PORTS";
pub const MAP_DECAP_ADDRS: &str = "LB_DECAP_ADDRS";
pub const MAP_DECAP_STATS: &str = "LB_DECAP_STATS";

/// Capacities fixed at compile time. The flow table and the ring array are sized at load
/// time instead (`EbpfLoader::set_max_entries`), since they dominate memory.
pub const MAX_VIPS: u32 = 1024;
pub const MAX_BACKENDS: u32 = 65536;
pub const MAX_TX_PORTS: u32 = 64;
pub const DEFAULT_FLOWS: u32 = 262_144;
pub const DEFAULT_RING_SIZE: u32 = 65_537;
pub const DEFAULT_RING_CAPACITY: u32 = 16 * DEFAULT_RING_SIZE;

pub const MAP_VIP_FILTER: &str = "LB_VIP_FILTER";
pub const MAP_VIP_BY_ID: &str = "LB_VIP_BY_ID";
/// The new-entry rate of the connection table: `[0]` entries per second per CPU, `[1]` the
/// burst (bucket size) per CPU; `[2]`, `[3]` the same for bare SYNs' table lookups; 0 means
/// the defaults below. Not pinned: lbd writes it at every start and reload from
/// `[dataplane] new_flow_rate`, `new_flow_burst`, `syn_lookup_rate`, `syn_lookup_burst`.
pub const MAP_NEW_RATE: &str = "LB_NEW_RATE";
pub const NEW_RATE_PER_SEC: usize = 0;
pub const NEW_RATE_BURST: usize = 1;
/// `[2]`, `[3]`: bare SYNs per second (and burst) per CPU that look their flow up in the
/// connection table; above it (a SYN flood) a bare SYN is placed without reading the table.
pub const SYN_LOOKUP_PER_SEC: usize = 2;
pub const SYN_LOOKUP_BURST: usize = 3;
/// Connection-table entries each CPU may create per second before new flows are forwarded
/// without being remembered (see docs/dataplane.md, "SYN and ACK floods").
pub const DEFAULT_NEW_PER_SEC: u64 = 65_536;
pub const DEFAULT_NEW_BURST: u64 = 65_536;
/// Bare SYNs each CPU looks up per second before it stops reading the table for them.
pub const DEFAULT_SYN_LOOKUP_PER_SEC: u64 = 65_536;
pub const DEFAULT_SYN_LOOKUP_BURST: u64 = 65_536;

/// Bits of the VIP address filter: one array of u64 words, a bit set for every VIP address.
/// Most packets on a gateway are not for a VIP; a clear bit sends them on with one array
/// read instead of two hash lookups. A set bit only means "look it up".
pub const VIP_FILTER_BITS: u32 = 1 << 16;

/// The filter bit of a destination address (network byte order, IPv4 in the first 4 bytes).
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16]) -> u32 {
    let lo = u32::from_le_bytes([addr[0], addr[1], addr[2], addr[3]]);
    let hi = u32::from_le_bytes([addr[12], addr[13], addr[14], addr[15]]);
    vip_filter_bit_of(lo, hi)
}

/// The same bit from the address's first and last four bytes, each read as a little-endian
/// `u32` (an IPv4 address: `hi` = 0): the dataplane's early exit reads just these.
#[inline(always)]
pub fn vip_filter_bit_of(lo: u32, hi: u32) -> u32 {
    (lo ^ hi.rotate_left(16)).wrapping_mul(0x9e37_79b1) >> 16
}

/// Backend id 0 never names a backend: an unfilled ring slot holds 0.
pub const NO_BACKEND: u32 = 0;

/// (address, port, protocol) of a VIP; port 0 is an all-port VIP.
///
/// Alignment of the map types: the XDP object is built with misaligned access allowed (one
/// load per packet field), which also lets LLVM copy these values with 8-byte moves. The
/// verifier refuses a misaligned stack access, so every type whose size allows it is aligned
/// to 8, and the others (this one: 20 bytes; `Backend`: 28) to 4. None of this adds padding: sizes, and so
/// pinned maps, are unchanged.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// How a VIP picks a backend for a new flow. The ring's content depends on it (see
/// lb-control's `ring` module): Maglev, random and least-connections share a Maglev ring;
/// round-robin walks a smooth weighted sequence; source-hash indexes the Maglev ring with
/// the client address only.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    Maglev = 0,
    RoundRobin = 1,
    Random = 2,
    LeastConn = 3,
    SourceHash = 4,
}

impl Scheduler {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Maglev,
            1 => Self::RoundRobin,
            2 => Self::Random,
            3 => Self::LeastConn,
            4 => Self::SourceHash,
            _ => return None,
        })
    }
}

/// How a VIP's packets reach the backend.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// IP-in-IP (IPv4-in-IPv4, IPv6-in-IPv6, IPv4-in-IPv6): backends may be anywhere.
    IpIp = 0,
    /// Rewrite MACs only: backends share the segment and hold the VIP on loopback.
    L2Dsr = 1,
}

/// With no usable backend, hand the packet to the kernel instead of dropping it.
pub const VIP_F_NO_BACKEND_PASS: u8 = 1 << 0;
/// A (address, 0, proto) entry that exists only to steer fragments to the VIP that owns
/// them; ordinary packets never match it.
pub const VIP_F_FRAGMENTS_ONLY: u8 = 1 << 1;

#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipMeta {
    /// Index into the per-VIP counters and the round-robin cursor.
    pub vip_id: u32,
    /// This VIP's slots are `LB_RINGS[ring_offset .. ring_offset + ring_size]`.
    pub ring_offset: u32,
    pub ring_size: u32,
    pub scheduler: u8,
    pub forward: u8,
    pub flags: u8,
    pub _pad: u8,
}

/// The backend is failed: flows pinned to it are rescheduled. A draining backend is not
/// marked down: it is only left out of the ring, so it keeps its established flows.
pub const BACKEND_F_DOWN: u8 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Next-hop MAC for L2 DSR.
    pub mac: [u8; 6],
    pub family: u8,
    pub flags: u8,
    /// The VIP this backend entry belongs to: lets a restarted daemon adopt the ids it
    /// finds pinned. The dataplane does not read it.
    pub vip_id: u32,
}

/// One connection as the dataplane sees it (client to VIP).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The flow was counted in `LB_CONNS` for least-connections and must be uncounted once.
pub const FLOW_F_COUNTED: u32 = 1 << 0;
/// The entry was made at the SYN (a round-robin, random or least-connections VIP) and the
/// client's handshake has not been seen yet: its next packet counts a handshake.
pub const FLOW_F_OPEN: u32 = 1 << 1;

#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEntry {
    pub backend_id: u32,
    pub flags: u32,
    /// `flow_hash` of the key, kept so established packets need not hash again.
    pub hash: u32,
    /// The VIP the flow was placed for: an established packet finds its VIP through
    /// `LB_VIP_BY_ID` (an array read) instead of a second hash lookup.
    pub vip_id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
}

impl core::ops::Add for BackendStats {
    type Output = BackendStats;
    /// Two CPUs' counters together.
    fn add(self, o: BackendStats) -> BackendStats {
        BackendStats {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
        }
    }
}

/// What a backend's new connections became, for passive failure detection. A map of its
/// own (`LB_BE_FLOWS`, not pinned: the counts matter only over the last moments), so that
/// `LB_BE_STATS`' pinned layout, and with it a hitless upgrade, stays as it was.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendFlows {
    /// Bare TCP SYNs sent to the backend (retransmissions too): connections asked for.
    pub syns: u64,
    /// TCP flows whose client sent its first packet after the SYN through us (its
    /// handshake's ACK): connections the backend answered.
    pub handshakes: u64,
}

impl core::ops::Add for BackendFlows {
    type Output = BackendFlows;
    /// Two CPUs' counters together.
    fn add(self, o: BackendFlows) -> BackendFlows {
        BackendFlows {
            syns: self.syns + o.syns,
            handshakes: self.handshakes + o.handshakes,
        }
    }
}

/// Skip `bpf_fib_lookup` and always use the gateway MAC (for hosts with a static next hop).
pub const CFG_F_NO_FIB: u16 = 1 << 0;

/// Node-wide settings, one entry in `LB_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GlobalConfig {
    /// Next hop when `bpf_fib_lookup` has no answer (all zero: drop instead).
    pub gateway_mac: [u8; 6],
    /// Largest IP packet the egress link carries; bigger DF packets after encapsulation
    /// get ICMP fragmentation-needed / packet-too-big.
    pub mtu: u16,
    pub flags: u16,
    /// IP-in-IP outer sources: `encap_src_v4` with its low `encap_v4_hash_bits` bits
    /// taken from the flow hash, so that backends' NICs spread flows over receive queues.
    pub encap_v4_hash_bits: u8,
    pub encap_v6_hash_bits: u8,
    pub encap_src_v4: [u8; 4],
    pub encap_src_v6: [u8; 16],
}

/// A VIP by its id (`LB_VIP_BY_ID`), written and cleared with its `LB_VIPS` entry. An
/// all-zero record is no VIP.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipRecord {
    pub key: VipKey,
    pub _pad: [u8; 4],
    pub meta: VipMeta,
}

/// Key of `LB_DECAP_ADDRS`: an outer destination the backend's decap program accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DecapAddr {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    /// aya's Pod for types that are bytemuck's Pod (the bound is checked here).
    macro_rules! aya_pod {
        ($($t:ty),* $(,)?) => {$(
            const _: fn() = || {
                fn is_pod<T: bytemuck::Pod>() {}
                is_pod::<$t>();
            };
            // SAFETY: the type is bytemuck::Pod (checked above): repr(C), explicit padding,
            // no uninitialized bytes, every bit pattern valid, as aya::Pod requires.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    aya_pod!(
        VipKey,
        VipMeta,
        VipRecord,
        Backend,
        FlowKey,
        FlowEntry,
        VipStats,
        BackendStats,
        BackendFlows,
        GlobalConfig,
        DecapAddr,
        crate::bench::BenchFrame,
    );
}

// The kernel reads these with the same layout: a size that moves is a map that no longer
// matches its pinned twin (the pin check compares sizes) or the program's view of it.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<VipKey>() == 20);
    assert!(size_of::<VipMeta>() == 16);
    assert!(size_of::<Backend>() == 28);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<FlowEntry>() == 16);
    assert!(size_of::<VipStats>() == 24);
    assert!(size_of::<BackendStats>() == 16);
    assert!(size_of::<BackendFlows>() == 16);
    assert!(size_of::<GlobalConfig>() == 32);
    assert!(size_of::<VipRecord>() == 40);
    assert!(size_of::<DecapAddr>() == 20);
};
