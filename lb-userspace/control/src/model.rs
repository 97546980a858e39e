//! The dataplane's choice of backend, computed in userspace: the same hash and the same
//! ring index as the XDP program, so tests (and operators, `lbctl explain` style) can
//! predict which backend a flow reaches.

use lb_common::{FlowKey, NO_BACKEND, Scheduler, VipMeta, flow_hash, source_hash};

/// Backend id a new flow of `key` gets from a VIP with ring `ring` (the VIP's window),
/// for the hash-based schedulers; `None` for schedulers that are not a function of the flow
/// (round-robin, random, least-connections).
pub fn predict(meta: &VipMeta, ring: &[u32], key: &FlowKey) -> Option<u32> {
    let hash = match Scheduler::from_u8(meta.scheduler)? {
        Scheduler::Maglev => flow_hash(key),
        Scheduler::SourceHash => source_hash(key),
        _ => return None,
    };
    if meta.ring_size == 0 {
        return Some(NO_BACKEND);
    }
    ring.get((hash % meta.ring_size) as usize).copied()
}
