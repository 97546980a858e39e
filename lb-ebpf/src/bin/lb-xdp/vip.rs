//! VIP lookup: (address, port, protocol) first, then the all-port entry (address, 0,
//! protocol). Fragments carry no ports and match only the port-0 entry, which userspace
//! installs for every VIP address (a real all-port VIP or a fragments-only alias).

use lb_common::{FlowKey, VIP_F_FRAGMENTS_ONLY, VipKey, VipMeta, vip_filter_bit};

use crate::maps::{LB_VIP_FILTER, LB_VIPS};

/// Not inlined: its temporaries do not add to the forwarding path's stack.
#[inline(never)]
pub fn lookup(key: &FlowKey, fragment: bool) -> Option<VipMeta> {
    // Not a VIP address for sure: one array read instead of two hash lookups.
    let bit = vip_filter_bit(&key.dst);
    let word = LB_VIP_FILTER.get(bit >> 6)?;
    if *word & (1u64 << (bit & 63)) == 0 {
        return None;
    }
    let mut vk = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    if !fragment && vk.port != 0 {
        // SAFETY: values are plain data copied out at once.
        if let Some(meta) = unsafe { LB_VIPS.get(vk) }
            && meta.flags & VIP_F_FRAGMENTS_ONLY == 0
        {
            return Some(*meta);
        }
    }
    vk.port = 0;
    // SAFETY: as above.
    let meta = unsafe { LB_VIPS.get(vk) }?;
    if meta.flags & VIP_F_FRAGMENTS_ONLY != 0 && !fragment {
        return None;
    }
    Some(*meta)
}
