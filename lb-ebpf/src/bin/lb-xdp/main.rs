//! The balancer: an XDP program on the gateway's NIC.
//!
//! A packet's path: parse (L2, L3, ports) → VIP lookup → backend (connection table, then
//! the VIP's scheduler) → forward (IP-in-IP or L2 DSR, next hop from the FIB) → count.
//! Anything not for a VIP leaves with XDP_PASS, byte for byte as it came.
#![no_std]
#![no_main]
// Atomic add on a map value (least-connections counts): core's atomics lack fetch_add on
// the BPF target, the intrinsic lowers to BPF's atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod flow;
mod forward;
mod icmp;
mod maps;
mod nexthop;
mod parse;
mod stats;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, Reason, VIP_F_NO_BACKEND_PASS, VipMeta, flow_hash,
};
use lb_ebpf::l2::{self, ETH_P_IP, ETH_P_IPV6, L2, L2Error};

use crate::{maps::LB_CONFIG, parse::L3, stats::count};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match try_lb_xdp(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            if reason.drops() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
        }
    }
}

/// What the path learns about a packet, handed from stage to stage.
pub struct Packet {
    pub l2: L2,
    pub l3: L3,
    /// Flow hash of the client-to-VIP flow (for ICMP errors: of the quoted flow).
    pub hash: u32,
    /// The VIP's `Forward` mode.
    pub forward: u8,
    /// Answer DF packets too big for the encapsulation with ICMP (not for ICMP errors).
    pub check_mtu: bool,
}

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<u32, Reason> {
    let l2 = l2::parse(ctx).map_err(|e| match e {
        L2Error::Truncated => Reason::PassMalformed,
        L2Error::TooManyTags => Reason::PassVlanDepth,
    })?;
    let mut pkt = Packet { l2, l3: L3::new(), hash: 0, forward: 0, check_mtu: true };
    match pkt.l2.proto {
        ETH_P_IP => parse::ipv4(ctx, pkt.l2.len, &mut pkt.l3)?,
        ETH_P_IPV6 => parse::ipv6(ctx, pkt.l2.len, &mut pkt.l3)?,
        _ => return Err(Reason::PassNotIp),
    }
    let l3 = &pkt.l3;
    let icmp = if l3.key.family == FAMILY_V4 { PROTO_ICMP } else { PROTO_ICMPV6 };
    if l3.key.proto == icmp && !l3.fragment {
        return icmp_error(ctx, &mut pkt);
    }
    let vip = vip::lookup(&l3.key, l3.fragment).ok_or(Reason::PassNotVip)?;
    if l3.bad_len {
        return Err(Reason::DropMalformed);
    }
    if l3.fragment {
        count(Reason::Fragment);
    }
    let cfg = LB_CONFIG.get(0).ok_or(Reason::DropNoNexthop)?;
    pkt.hash = flow_hash(&l3.key);
    pkt.forward = vip.forward;
    let choice = flow::choose(&vip, &l3.key, pkt.hash, l3.tcp_flags, !l3.fragment)
        .ok_or_else(|| no_backend(&vip))?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    stats::vip(vip.vip_id, bytes, choice.new_flow);
    stats::backend(choice.id, bytes);
    forward::forward(ctx, cfg, &pkt, &choice.backend)
}

#[inline(always)]
fn no_backend(vip: &VipMeta) -> Reason {
    if vip.flags & VIP_F_NO_BACKEND_PASS != 0 { Reason::PassNoBackend } else { Reason::DropNoBackend }
}

/// An ICMP error quoting a VIP flow goes to that flow's backend; other ICMP is the host's.
#[inline(never)]
fn icmp_error(ctx: &XdpContext, pkt: &mut Packet) -> Result<u32, Reason> {
    let mut key = L3::new().key;
    icmp::error_flow(ctx, &pkt.l3, &mut key).ok_or(Reason::PassIcmpLocal)?;
    let vip = vip::lookup(&key, false).ok_or(Reason::PassIcmpLocal)?;
    let cfg = LB_CONFIG.get(0).ok_or(Reason::DropNoNexthop)?;
    pkt.hash = flow_hash(&key);
    pkt.forward = vip.forward;
    pkt.check_mtu = false;
    let choice = flow::choose(&vip, &key, pkt.hash, 0, false).ok_or_else(|| no_backend(&vip))?;
    count(Reason::IcmpErrorSteered);
    forward::forward(ctx, cfg, pkt, &choice.backend)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
