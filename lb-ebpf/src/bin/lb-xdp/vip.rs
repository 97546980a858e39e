//! VIP lookup: (address, port, protocol) first, then the all-port entry (address, 0,
//! protocol). Fragments carry no ports and match only the port-0 entry, which userspace
//! installs for every VIP address (a real all-port VIP or a fragments-only alias).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowKey, VIP_F_FRAGMENTS_ONLY, VipKey, VipMeta, vip_filter_bit, vip_filter_bit_of,
};
use lb_ebpf::{
    l2::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    ptr::read,
};

use crate::maps::{LB_VIP_FILTER, LB_VIPS};

#[inline(always)]
fn may_be_vip(bit: u32) -> bool {
    LB_VIP_FILTER
        .get(bit >> 6)
        .is_some_and(|word| *word & (1u64 << (bit & 63)) != 0)
}

/// An untagged IPv4 or IPv6 frame to an address the filter rules out: passed before any
/// parsing, so traffic that is not ours costs little more than XDP_PASS. Anything else
/// (tags, short frames) takes the full path and meets the same filter in `lookup`.
#[inline(always)]
pub fn ruled_out(ctx: &XdpContext) -> bool {
    let Ok(ethertype) = read::<u16>(ctx, 12) else {
        return false;
    };
    // Read as little-endian words, as `vip_filter_bit` reads the address bytes.
    let (lo, hi) = match u16::from_be(ethertype) {
        ETH_P_IP => match read::<u32>(ctx, ETH_HLEN + 16) {
            Ok(dst) => (dst, 0),
            Err(_) => return false,
        },
        ETH_P_IPV6 => match read::<[u32; 4]>(ctx, ETH_HLEN + 24) {
            Ok(dst) => (dst[0], dst[3]),
            Err(_) => return false,
        },
        _ => return false,
    };
    !may_be_vip(vip_filter_bit_of(lo, hi))
}

/// Inlined, as the parser is (see `parse::ipv4`).
#[inline(always)]
pub fn lookup(key: &FlowKey, fragment: bool) -> Option<VipMeta> {
    // Not a VIP address for sure: one array read instead of two hash lookups.
    if !may_be_vip(vip_filter_bit(&key.dst)) {
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
