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

use crate::maps::{LB_VIP_BY_ID, LB_VIP_FILTER, LB_VIPS};

#[inline(always)]
fn filter_bit_set(bit: u32) -> bool {
    LB_VIP_FILTER
        .get(bit >> 6)
        .is_some_and(|word| *word & (1u64 << (bit & 63)) != 0)
}

/// What the early look at a frame's destination found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// The filter rules the address out: passed before any parsing, so traffic that is not
    /// ours costs little more than XDP_PASS.
    NotVip,
    /// The filter bit is set: it need not be read again.
    MaybeVip,
    /// Not screened (tags, short frames, not IP): the full path reads the filter (`may_be`).
    Unscreened,
}

/// The VIP filter bit of an untagged IPv4 or IPv6 frame's destination, read straight from
/// the packet.
#[inline(always)]
pub fn screen(ctx: &XdpContext) -> Screen {
    let Ok(ethertype) = read::<u16>(ctx, 12) else {
        return Screen::Unscreened;
    };
    // Read as little-endian words, as `vip_filter_bit` reads the address bytes.
    let (lo, hi) = match u16::from_be(ethertype) {
        ETH_P_IP => match read::<u32>(ctx, ETH_HLEN + 16) {
            Ok(dst) => (dst, 0),
            Err(_) => return Screen::Unscreened,
        },
        ETH_P_IPV6 => match read::<[u32; 4]>(ctx, ETH_HLEN + 24) {
            Ok(dst) => (dst[0], dst[3]),
            Err(_) => return Screen::Unscreened,
        },
        _ => return Screen::Unscreened,
    };
    if filter_bit_set(vip_filter_bit_of(lo, hi)) {
        Screen::MaybeVip
    } else {
        Screen::NotVip
    }
}

/// False when `dst` is not a VIP address for sure (one array read).
#[inline(always)]
pub fn may_be(dst: &[u8; 16]) -> bool {
    filter_bit_set(vip_filter_bit(dst))
}

/// Equal 16-byte addresses, compared a word at a time (both arrays start 4-aligned in
/// their structs; a slice comparison would be a call to a byte loop).
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_ptr() as *const u32, b.as_ptr() as *const u32);
    // SAFETY: four aligned words inside each array.
    unsafe {
        *a == *b && *a.add(1) == *b.add(1) && *a.add(2) == *b.add(2) && *a.add(3) == *b.add(3)
    }
}

/// The VIP an established flow was placed for, if it still serves the flow's destination:
/// a removed VIP's record is zero, and a reused id names a VIP with another key.
#[inline(always)]
pub fn of_flow(vip_id: u32, key: &FlowKey) -> Option<&'static VipMeta> {
    let rec = LB_VIP_BY_ID.get(vip_id)?;
    let k = &rec.key;
    let serves = k.family == key.family
        && k.proto == key.proto
        && (k.port == key.dport || k.port == 0)
        && same_addr(&k.addr, &key.dst);
    serves.then_some(&rec.meta)
}

/// Inlined, as the parser is (see `parse::ipv4`). The caller has read the filter bit once
/// (`screen` or `may_be`).
#[inline(always)]
pub fn lookup(key: &FlowKey, fragment: bool) -> Option<&'static VipMeta> {
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
            return Some(meta);
        }
    }
    vk.port = 0;
    // SAFETY: as above.
    let meta = unsafe { LB_VIPS.get(vk) }?;
    if meta.flags & VIP_F_FRAGMENTS_ONLY != 0 && !fragment {
        return None;
    }
    Some(meta)
}
