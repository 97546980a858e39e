//! Decapsulation for backends: strips the balancer's IP-in-IP (IPv4-in-IPv4,
//! IPv6-in-IPv6, IPv4-in-IPv6) in XDP and hands the inner packet to the stack, which
//! answers the client directly from the VIP held on loopback. For backends whose kernel has
//! no ipip/ip6tnl module, and cheaper than a tunnel device where it has one.
//!
//! Only packets whose outer destination is listed in `LB_DECAP_ADDRS` are touched, so a
//! backend never unwraps tunnels that are not ours.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    DecapAddr, FAMILY_V4, FAMILY_V6, PROTO_IPIP, PROTO_IPV6, Reason, reason::REASON_COUNT,
};
use lb_ebpf::{
    l2::{self, ETH_P_IP, ETH_P_IPV6},
    ptr::{adjust_head, read},
};

#[map(name = "LB_DECAP_ADDRS")]
static LB_DECAP_ADDRS: HashMap<DecapAddr, u8> = HashMap::with_max_entries(64, 0);

#[map(name = "LB_DECAP_STATS")]
static LB_DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[inline(always)]
fn count(reason: Reason) {
    if let Some(c) = LB_DECAP_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    match try_decap(&ctx) {
        Ok(()) => count(Reason::Decapsulated),
        Err(reason) => count(reason),
    }
    // Decapsulated or not ours: the stack takes it from here.
    xdp_action::XDP_PASS
}

#[inline(always)]
fn ours(addr: [u8; 16], family: u8) -> bool {
    let key = DecapAddr {
        addr,
        family,
        _pad: [0; 3],
    };
    // SAFETY: presence check only.
    unsafe { LB_DECAP_ADDRS.get(key) }.is_some()
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<(), Reason> {
    let mut l2 = l2::L2::new();
    l2::parse(ctx, &mut l2).map_err(|_| Reason::PassMalformed)?;
    let (outer_len, inner_proto) = match l2.proto {
        ETH_P_IP => {
            let h: [u8; 20] = read(ctx, l2.len).map_err(|_| Reason::PassMalformed)?;
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&h[16..20]);
            if h[0] >> 4 != 4
                || ihl < 20
                || !matches!(h[9], PROTO_IPIP | PROTO_IPV6)
                || !ours(dst, FAMILY_V4)
            {
                return Err(Reason::PassNotVip);
            }
            (ihl, h[9])
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = read(ctx, l2.len).map_err(|_| Reason::PassMalformed)?;
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&h[24..40]);
            if h[0] >> 4 != 6 || !matches!(h[6], PROTO_IPIP | PROTO_IPV6) || !ours(dst, FAMILY_V6) {
                return Err(Reason::PassNotVip);
            }
            (40, h[6])
        }
        _ => return Err(Reason::PassNotIp),
    };
    // The inner header must be there before we commit to stripping.
    read::<[u8; 20]>(ctx, l2.len + outer_len).map_err(|_| Reason::PassMalformed)?;
    adjust_head(ctx, outer_len as i32).map_err(|_| Reason::DropAdjustFailed)?;
    let ethertype = if inner_proto == PROTO_IPIP {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    l2::write(ctx, &l2, &l2.dst, &l2.src, ethertype).map_err(|_| Reason::DropAdjustFailed)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
