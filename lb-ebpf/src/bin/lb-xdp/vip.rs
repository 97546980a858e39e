//! VIP lookup: (address, port, protocol) first, then the all-port entry (address, 0,
//! protocol). Fragments carry no ports and match only the port-0 entry, which userspace
//! installs for every VIP address (a real all-port VIP or a fragments-only alias).

use lb_common::{FlowKey, VIP_F_FRAGMENTS_ONLY, VipKey, VipMeta};

use crate::maps::LB_VIPS;

/// Not inlined: its temporaries do not add to the forwarding path's stack.
#[inline(never)]
pub fn lookup(key: &FlowKey, fragment: bool) -> Option<VipMeta> {
    let mut vk = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    if !fragment && vk.port != 0 {
        // SAFETY: values are plain data copied out at once.
        if let Some(meta) = unsafe { LB_VIPS.get(&vk) } {
            if meta.flags & VIP_F_FRAGMENTS_ONLY == 0 {
                return Some(*meta);
            }
        }
    }
    vk.port = 0;
    // SAFETY: as above.
    let meta = unsafe { LB_VIPS.get(&vk) }?;
    if meta.flags & VIP_F_FRAGMENTS_ONLY != 0 && !fragment {
        return None;
    }
    Some(*meta)
}
