//! The balancer: an XDP program on the gateway's NIC.
//!
//! A packet's path: parse (L2, L3, ports) → connection table (an established flow finds
//! its VIP and backend there), else VIP lookup and the VIP's scheduler → forward (IP-in-IP
//! or L2 DSR, next hop from the FIB) → count.
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
use lb_common::{FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, Reason, VIP_F_NO_BACKEND_PASS, VipMeta};
use lb_ebpf::l2::{self, ETH_P_IP, ETH_P_IPV6, L2, L2Error};

use lb_common::FlowKey;

use crate::{
    flow::Flow,
    maps::{LB_CONFIG, LB_SCRATCH},
    parse::L3,
    stats::count,
    vip::Screen,
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match try_lb_xdp(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            if reason.drops() {
                stats::rare(&ctx, reason);
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
    }
}

/// What the path learns about a packet, handed from stage to stage.
pub struct Packet {
    pub l2: L2,
    pub l3: L3,
    /// For an ICMP error: the client-to-VIP flow it quotes.
    pub quoted: FlowKey,
    /// Flow hash of the client-to-VIP flow (for ICMP errors: of the quoted flow).
    pub hash: u32,
    /// The VIP's `Forward` mode.
    pub forward: u8,
    /// Answer DF packets too big for the encapsulation with ICMP (not for ICMP errors).
    pub check_mtu: bool,
    pub hop: nexthop::NextHop,
    pub fib: nexthop::Fib,
}

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<u32, Reason> {
    let screened = vip::screen(ctx);
    if screened == Screen::NotVip {
        return Err(Reason::PassNotVip);
    }
    let pkt = LB_SCRATCH.get_ptr_mut(0).ok_or(Reason::DropAdjustFailed)?;
    // SAFETY: this CPU's scratch slot; nothing else runs on this CPU until we return.
    let pkt = unsafe { &mut *pkt };
    l2::parse(ctx, &mut pkt.l2).map_err(|e| match e {
        L2Error::Truncated => Reason::PassMalformed,
        L2Error::TooManyTags => Reason::PassVlanDepth,
    })?;
    pkt.l3.tcp_flags = 0;
    match pkt.l2.proto {
        ETH_P_IP => parse::ipv4(ctx, pkt.l2.len, &mut pkt.l3)?,
        ETH_P_IPV6 => parse::ipv6(ctx, pkt.l2.len, &mut pkt.l3)?,
        _ => return Err(Reason::PassNotIp),
    }
    // An ICMP error is placed by the flow it quotes; everything else by its own.
    let l3 = &pkt.l3;
    let icmp = if l3.key.family == FAMILY_V4 {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    };
    let icmp_error = l3.key.proto == icmp && !l3.fragment;
    if icmp_error {
        // SAFETY: a FlowKey is plain bytes.
        unsafe { lb_ebpf::zero::zero(&mut pkt.quoted) };
        icmp::error_flow(ctx, &pkt.l3, &mut pkt.quoted).ok_or(Reason::PassIcmpLocal)?;
    }
    let l3 = &pkt.l3;
    let key = if icmp_error { &pkt.quoted } else { &l3.key };
    let fragment = l3.fragment && !icmp_error;
    let not_ours = if icmp_error {
        Reason::PassIcmpLocal
    } else {
        Reason::PassNotVip
    };
    // One filter read per packet: here only for frames the early look did not screen. The
    // filter only saves lookups, so a screened ICMP error whose quote names another address
    // is still judged right, by the lookups.
    if screened == Screen::Unscreened && !vip::may_be(&key.dst) {
        return Err(not_ours);
    }
    let flow = Flow {
        key,
        tcp_flags: if icmp_error { 0 } else { l3.tcp_flags },
        remember: !fragment && !icmp_error,
    };
    let held = flow::entry(&flow);
    // An established flow reaches its VIP through its table entry (an array read), not a
    // second hash lookup; anything else (a bare SYN is turned away before any map read)
    // takes the VIP lookup and the scheduler.
    // Set when an established flow's packet completes its handshake (see `flow::follow`).
    let mut answered = false;
    let fast = match held {
        Some(entry) if !l3.bad_len => {
            // SAFETY: the entry stays valid during this program run (RCU).
            let entry = unsafe { &mut *entry };
            flow::established(entry, flow.tcp_flags).and_then(|choice| {
                let vip = vip::of_flow(entry.vip_id, key)?;
                answered = flow::follow(entry, flow.tcp_flags);
                Some((vip, choice))
            })
        }
        _ => None,
    };
    let (vip, choice, syn) = match fast {
        Some((vip, choice)) => (vip, choice, false),
        None => {
            let vip = vip::lookup(key, fragment).ok_or(not_ours)?;
            if l3.bad_len {
                return Err(Reason::DropMalformed);
            }
            let choice = flow::choose(vip, &flow, held).ok_or_else(|| no_backend(vip))?;
            let (syn, handshake) = flow::asks_or_answers(&flow, held.is_some(), choice.new_flow);
            answered = handshake;
            (vip, choice, syn)
        }
    };
    let cfg = LB_CONFIG.get(0).ok_or(Reason::DropNoNexthop)?;
    pkt.forward = vip.forward;
    pkt.check_mtu = !icmp_error;
    pkt.hash = choice.hash;
    if fragment {
        count(Reason::Fragment);
    }
    if icmp_error {
        count(Reason::IcmpErrorSteered);
    }
    let bytes = lb_ebpf::ptr::frame_len(ctx) as u64;
    stats::vip(vip.vip_id, bytes, choice.new_flow);
    stats::backend(choice.id, bytes, syn, answered);
    forward::forward(ctx, cfg, pkt, choice.backend)
}

#[inline(always)]
fn no_backend(vip: &VipMeta) -> Reason {
    if vip.flags & VIP_F_NO_BACKEND_PASS != 0 {
        Reason::PassNoBackend
    } else {
        Reason::DropNoBackend
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
