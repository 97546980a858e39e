//! Which backend gets a packet: the connection table first, so established flows stay where
//! they are when the ring changes; on a miss (or when the pinned backend is down) the VIP's
//! scheduler picks from its ring and the choice is remembered, except where the ring gives
//! the same answer again without the table: a bare SYN on a Maglev or source-hash VIP is not
//! remembered (the handshake's next packet is), and new entries above a per-CPU rate are
//! not, whatever the scheduler and protocol (docs/dataplane.md, "SYN and ACK floods").

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use lb_common::{
    BACKEND_F_DOWN, Backend, DEFAULT_NEW_BURST, DEFAULT_NEW_PER_SEC, DEFAULT_SYN_LOOKUP_BURST,
    DEFAULT_SYN_LOOKUP_PER_SEC, FLOW_F_COUNTED, FLOW_F_OPEN, FlowEntry, FlowKey, NEW_RATE_BURST,
    NEW_RATE_PER_SEC, NO_BACKEND, PROTO_TCP, PROTO_UDP, Reason, SYN_LOOKUP_BURST,
    SYN_LOOKUP_PER_SEC, Scheduler, VipMeta, flow_hash, source_hash,
};

use crate::{
    maps::{
        BUDGET_NEW, BUDGET_SYN_LOOKUP, LB_BACKENDS, LB_CONNS, LB_FLOWS, LB_NEW_BUDGET, LB_NEW_RATE,
        LB_RINGS, LB_RR,
    },
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::count,
};

/// Whether a packet of a flow that may be remembered asks for a connection (a bare TCP SYN;
/// the first datagram of a UDP flow, when it is remembered) or, placed without a table
/// entry after its SYN, completes one (the handshake's ACK, on a Maglev or source-hash VIP,
/// which remembers flows at that packet): passive detection's counts. `held`: the flow had
/// a table entry; `remembered`: this packet created one. The answers of flows remembered
/// at their first packet (a TCP SYN on a stateful scheduler, a UDP flow's first datagram:
/// its second is the answer) are counted by `follow`. A UDP datagram over the new-entry
/// rate is not an ask: its flow is not remembered, so its second datagram could never
/// count as the answer, and a busy flow would pile up unanswered asks on its backend.
#[inline(always)]
pub fn asks_or_answers(flow: &Flow, held: bool, remembered: bool) -> (bool, bool) {
    if !flow.remember {
        return (false, false);
    }
    match flow.key.proto {
        PROTO_TCP => {
            let syn = flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            (syn, !syn && !held && flow.tcp_flags & TCP_RST == 0)
        }
        PROTO_UDP => (!held && remembered, false),
        _ => (false, false),
    }
}

/// The flow to place (bundled: a BPF call takes at most five arguments).
pub struct Flow<'a> {
    pub key: &'a FlowKey,
    pub tcp_flags: u8,
    /// False for fragments and ICMP errors, which must not create flows.
    pub remember: bool,
}

/// Values found in maps are handed on as references into the maps, not copied: a copy on the
/// stack may be made with misaligned 8-byte moves (the object allows misaligned access for
/// the packet's sake), which the verifier refuses on the stack.
pub struct Choice {
    pub backend: &'static Backend,
    pub id: u32,
    pub new_flow: bool,
    /// The flow's hash (from the table on a hit).
    pub hash: u32,
}

#[inline(always)]
fn usable(id: u32) -> Option<&'static Backend> {
    if id == NO_BACKEND {
        return None;
    }
    let be = LB_BACKENDS.get(id)?;
    if be.flags & BACKEND_F_DOWN != 0 || be.family == 0 {
        return None;
    }
    Some(be)
}

#[inline(always)]
fn slot(vip: &VipMeta, index: u32) -> u32 {
    if vip.ring_size == 0 {
        return NO_BACKEND;
    }
    let at = vip.ring_offset + index % vip.ring_size;
    LB_RINGS.get(at).copied().unwrap_or(NO_BACKEND)
}

#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn conns(id: u32) -> u64 {
    // An empty slot must never win the comparison.
    if id == NO_BACKEND {
        return u64::MAX;
    }
    LB_CONNS.get(id).copied().unwrap_or(u64::MAX)
}

#[inline(always)]
fn conns_add(id: u32, delta: u64) {
    if let Some(p) = LB_CONNS.get_ptr_mut(id) {
        // SAFETY: the map value is a u64 shared by all CPUs; only touched atomically.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// Takes a least-connections flow off its backend's open count, once.
#[inline(always)]
fn uncount(entry: &mut FlowEntry) {
    if entry.flags & FLOW_F_COUNTED != 0 {
        entry.flags &= !FLOW_F_COUNTED;
        conns_add(entry.backend_id, u64::MAX); // wrapping minus one
    }
}

/// The scheduler's pick for a new flow. `hash` is the flow hash.
#[inline(always)]
fn schedule(vip: &VipMeta, key: &FlowKey, hash: u32) -> u32 {
    match Scheduler::from_u8(vip.scheduler) {
        Some(Scheduler::RoundRobin) => {
            let Some(cursor) = LB_RR.get_ptr_mut(vip.vip_id) else {
                return NO_BACKEND;
            };
            // SAFETY: per-CPU slot.
            let at = unsafe {
                let at = *cursor;
                *cursor = at.wrapping_add(1) % vip.ring_size.max(1);
                at
            };
            slot(vip, at)
        }
        Some(Scheduler::Random) => slot(vip, random()),
        // Power of two choices over the weighted ring: two random draws, the backend with
        // fewer open flows wins. Weights stay in effect through the ring's shares.
        Some(Scheduler::LeastConn) => {
            let a = slot(vip, random());
            let b = slot(vip, random());
            if conns(b) < conns(a) { b } else { a }
        }
        Some(Scheduler::SourceHash) => slot(vip, source_hash(key)),
        _ => slot(vip, hash),
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;
/// See `take`.
const CLOCK_EVERY: u64 = 64;

#[inline(always)]
fn rate_setting(index: usize, default: u64) -> u64 {
    match LB_NEW_RATE.get(index as u32).copied() {
        Some(0) | None => default,
        Some(v) => v,
    }
}

/// Takes one token from this CPU's bucket `slot`; false when it is empty. The clock is read
/// only when the bucket runs dry: then it is refilled with what the time since its last
/// refill earned (at most one second's worth, at most the burst). Over any window of T
/// seconds a CPU takes at most 2 x burst + rate x T tokens. `rate` and `burst` index
/// `LB_NEW_RATE`.
/// With `lazy`, an empty bucket reads the clock only on every `CLOCK_EVERY`th refusal, so a
/// flood that keeps it empty costs no clock read and no division per packet (the refill
/// still counts the whole time since the last one, so the rate holds).
#[inline(always)]
fn take(slot: u32, rate: (usize, u64), burst: (usize, u64), lazy: bool) -> bool {
    let Some(b) = LB_NEW_BUDGET.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: per-CPU slot; nothing else runs on this CPU until we return.
    let b = unsafe { &mut *b };
    if b.tokens == 0 {
        if lazy && b.at != 0 {
            b.refused += 1;
            if b.refused < CLOCK_EVERY {
                return false;
            }
            b.refused = 0;
        }
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let rate = rate_setting(rate.0, rate.1);
        let burst = rate_setting(burst.0, burst.1);
        // A CPU's first refill (`at` still 0) starts with a full bucket.
        let elapsed = now.wrapping_sub(b.at).min(NS_PER_SEC);
        let earned = if b.at == 0 {
            burst
        } else {
            (elapsed * rate.min(NS_PER_SEC) / NS_PER_SEC).min(burst)
        };
        if earned == 0 {
            b.refused_at = now;
            return false;
        }
        b.tokens = earned;
        b.at = now;
    }
    b.tokens -= 1;
    true
}

/// A new connection-table entry within this CPU's rate.
#[inline(always)]
fn may_insert() -> bool {
    take(
        BUDGET_NEW,
        (NEW_RATE_PER_SEC, DEFAULT_NEW_PER_SEC),
        (NEW_RATE_BURST, DEFAULT_NEW_BURST),
        false,
    )
}

/// This CPU refused a new entry within the last second: datagrams of UDP flows that were
/// placed by hash without being remembered may still come. Per CPU, as the bucket is: a
/// flow's datagrams stay on one CPU as long as the NIC's RSS spreads by the 5-tuple and
/// its indirection table does not change.
#[inline(always)]
fn refused_lately() -> bool {
    let Some(b) = LB_NEW_BUDGET.get(BUDGET_NEW) else {
        return false;
    };
    if b.refused_at == 0 {
        return false;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    now.wrapping_sub(b.refused_at) < NS_PER_SEC
}

/// Fragments and ICMP errors never go through a stateful scheduler (round-robin cursor,
/// random draws): every fragment of a datagram must reach the same backend, so they index
/// the ring by hash (ports are zero for fragments; source-hash VIPs use the client address,
/// so there fragments also land with the rest of the client's flows).
#[inline(always)]
fn stateless(vip: &VipMeta, key: &FlowKey, hash: u32) -> u32 {
    if vip.scheduler == Scheduler::SourceHash as u8 {
        slot(vip, source_hash(key))
    } else {
        slot(vip, hash)
    }
}

/// The connection-table entry of a flow that may be remembered (not a fragment or an ICMP
/// error), looked up once per packet. A bare SYN above this CPU's SYN-lookup rate (a SYN
/// flood) is not looked up: a lookup that misses in a full table is most of a flood SYN's
/// cost, and the SYN is placed by the ring without the table anyway, unless its 4-tuple is
/// reused by a new connection (see docs/dataplane.md, "SYN and ACK floods").
#[inline(always)]
pub fn entry(flow: &Flow) -> Option<*mut FlowEntry> {
    if !flow.remember {
        return None;
    }
    if flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && !take(
            BUDGET_SYN_LOOKUP,
            (SYN_LOOKUP_PER_SEC, DEFAULT_SYN_LOOKUP_PER_SEC),
            (SYN_LOOKUP_BURST, DEFAULT_SYN_LOOKUP_BURST),
            true,
        )
    {
        return None;
    }
    LB_FLOWS.get_ptr_mut(flow.key)
}

/// The table's backend for a packet of an established flow; `None` for a bare SYN (a new
/// connection is placed by the current ring, even if it reuses an old one's ports) or when
/// the pinned backend is down. Reads only: the hit is recorded by `follow`, once the caller
/// knows the packet goes there.
#[inline(always)]
pub fn established(entry: &FlowEntry, tcp_flags: u8) -> Option<Choice> {
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return None;
    }
    let id = entry.backend_id;
    Some(Choice {
        id,
        backend: usable(id)?,
        new_flow: false,
        hash: entry.hash,
    })
}

/// The packet follows its flow's entry: counted as a hit, and a least-connections flow that
/// ends (FIN, RST) leaves its backend's count. True for the first packet after the SYN of a
/// flow remembered at its SYN (not a RST): the client completed its handshake.
#[inline(always)]
pub fn follow(entry: &mut FlowEntry, tcp_flags: u8) -> bool {
    count(Reason::FlowHit);
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        uncount(entry);
    }
    if entry.flags & FLOW_F_OPEN != 0 {
        entry.flags &= !FLOW_F_OPEN;
        return tcp_flags & TCP_RST == 0;
    }
    false
}

/// Backend for a packet of a flow of `vip`; `None` when the VIP has no usable backend.
/// `held` is the flow's table entry (from `entry`). Not inlined: its temporaries do not add
/// to the forwarding path's stack.
#[inline(never)]
pub fn choose(vip: &VipMeta, flow: &Flow, held: Option<*mut FlowEntry>) -> Option<Choice> {
    let (key, tcp_flags, remember) = (flow.key, flow.tcp_flags, flow.remember);
    let mut rescheduled = false;
    // What the table holds for a flow that is placed again (a bare SYN, a dead backend).
    let mut before = None;
    if let Some(entry) = held {
        // SAFETY: the entry stays valid during this program run (RCU).
        let entry = unsafe { &mut *entry };
        if let Some(choice) = established(entry, tcp_flags) {
            follow(entry, tcp_flags);
            return Some(choice);
        }
        // Uncount it from its dead backend once, even if no new backend is found.
        uncount(entry);
        rescheduled = tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN;
        before = Some(*entry);
    } else if !remember && let Some(entry) = LB_FLOWS.get_ptr(key) {
        // SAFETY: as above.
        let id = unsafe { (*entry).backend_id };
        if let Some(backend) = usable(id) {
            return Some(Choice {
                id,
                backend,
                new_flow: false,
                // SAFETY: as above.
                hash: unsafe { (*entry).hash },
            });
        }
    }
    // Hashed only here, for a flow the table does not know.
    let hash = flow_hash(key);
    let mut insert = remember;
    let id = if !remember {
        stateless(vip, key, hash)
    } else if held.is_some() {
        schedule(vip, key, hash)
    } else {
        // A flow the table does not know: whether to remember it (see docs/dataplane.md,
        // "SYN and ACK floods").
        let consistent = !matches!(
            Scheduler::from_u8(vip.scheduler),
            Some(Scheduler::RoundRobin | Scheduler::Random | Scheduler::LeastConn)
        );
        let syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let tcp = key.proto == PROTO_TCP;
        if consistent && syn {
            // The ring places the handshake's next packet on the same backend: that packet
            // creates the entry. A spoofed SYN never writes the table.
            insert = false;
            count(Reason::SynStateless);
            schedule(vip, key, hash)
        } else if consistent || tcp {
            if !may_insert() {
                insert = false;
                count(Reason::FlowOverRate);
            }
            if consistent {
                schedule(vip, key, hash)
            } else if syn && insert {
                // Round robin, random, least connections: the choice cannot be computed
                // again, so it is remembered at the SYN.
                schedule(vip, key, hash)
            } else {
                // Not remembered (over the rate), or a TCP packet after a SYN the table does
                // not hold: the flow hash on the VIP's weighted ring, which the SYN (if it
                // was over the rate) and every later packet compute alike.
                stateless(vip, key, hash)
            }
        } else if !may_insert() {
            // UDP (and others) on a stateful scheduler above the rate (a UDP flood, which
            // would otherwise evict every VIP's flows): the flow hash on the VIP's weighted
            // ring, which every datagram of the flow computes alike, and nothing written.
            insert = false;
            count(Reason::FlowOverRate);
            stateless(vip, key, hash)
        } else if refused_lately() {
            // Within the rate again, but flows placed by hash a moment ago may send again:
            // remembered where the hash puts them, so that none of them moves. A flow silent
            // for longer than a second after the flood may still move once.
            stateless(vip, key, hash)
        } else {
            // The first datagram's choice, remembered: the scheduler cannot compute it again.
            schedule(vip, key, hash)
        }
    };
    let backend = usable(id)?;
    if insert {
        let counted =
            vip.scheduler == Scheduler::LeastConn as u8 && tcp_flags & (TCP_FIN | TCP_RST) == 0;
        if counted {
            conns_add(id, 1);
        }
        // Remembered at its SYN, or at a UDP flow's first datagram: the client's next
        // packet is the answer passive detection counts.
        let first = match key.proto {
            PROTO_TCP => tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            PROTO_UDP => held.is_none(),
            _ => false,
        };
        let open = if first { FLOW_F_OPEN } else { 0 };
        let entry = FlowEntry {
            backend_id: id,
            flags: open | if counted { FLOW_F_COUNTED } else { 0 },
            hash,
            vip_id: vip.vip_id,
        };
        // A SYN placed where its flow already is (the ring did not change) leaves the table
        // as it is: an LRU insert is the costliest step of the path.
        if before != Some(entry) {
            let _ = LB_FLOWS.insert(key, entry, 0);
        }
        count(if rescheduled {
            Reason::FlowRescheduled
        } else {
            Reason::FlowNew
        });
    }
    Some(Choice {
        id,
        backend,
        new_flow: insert,
        hash,
    })
}
