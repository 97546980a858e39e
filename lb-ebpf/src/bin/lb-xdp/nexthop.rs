//! Where the forwarded frame goes next: `bpf_fib_lookup` for the backend (or the outer
//! destination), with the configured gateway MAC when the kernel has no answer.

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{Backend, CFG_F_NO_FIB, FAMILY_V4, GlobalConfig, Reason};

use crate::{Packet, maps::LB_TX_PORTS, stats::count};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

pub use aya_ebpf::bindings::bpf_fib_lookup as Fib;

#[derive(Clone, Copy)]
pub struct NextHop {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// 0: back out the ingress NIC (XDP_TX); otherwise the egress ifindex to redirect to.
    pub redirect_ifindex: u32,
}

/// Next hop toward backend `be`, into `pkt.hop`. Without a FIB answer the source MAC is
/// the one the frame came in on: our own address on a one-arm balancer.
#[inline(always)]
pub fn resolve(
    ctx: &XdpContext,
    cfg: &GlobalConfig,
    be: &Backend,
    pkt: &mut Packet,
) -> Result<(), Reason> {
    if cfg.flags & CFG_F_NO_FIB == 0 {
        // The parameters live in the per-CPU scratch slot: 64 bytes the stack cannot spare.
        let p = &mut pkt.fib;
        // SAFETY: all-zero is a valid bpf_fib_lookup.
        unsafe { lb_ebpf::zero::zero(p) };
        let ingress = ctx.ingress_ifindex() as u32;
        p.ifindex = ingress;
        if be.family == FAMILY_V4 {
            p.family = AF_INET;
            p.__bindgen_anon_4.ipv4_dst =
                u32::from_ne_bytes([be.addr[0], be.addr[1], be.addr[2], be.addr[3]]);
        } else {
            p.family = AF_INET6;
            // SAFETY: [u8; 16] and [u32; 4] have the same size; bytes keep network order.
            p.__bindgen_anon_4.ipv6_dst =
                unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(be.addr) };
        }
        // SAFETY: p points to a bpf_fib_lookup of the size we pass.
        let rc =
            unsafe { bpf_fib_lookup(ctx.as_ptr(), p, core::mem::size_of::<FibParams>() as i32, 0) };
        if rc == BPF_FIB_LKUP_RET_SUCCESS {
            pkt.hop = NextHop {
                src_mac: p.smac,
                dst_mac: p.dmac,
                redirect_ifindex: if p.ifindex == ingress { 0 } else { p.ifindex },
            };
            return Ok(());
        }
    }
    if cfg.gateway_mac == [0; 6] {
        return Err(Reason::DropNoNexthop);
    }
    count(Reason::FibFallback);
    pkt.hop = NextHop {
        src_mac: pkt.l2.dst,
        dst_mac: cfg.gateway_mac,
        redirect_ifindex: 0,
    };
    Ok(())
}

/// The XDP verdict that sends the rewritten frame toward `hop`.
#[inline(always)]
/// A failed redirect is an error like the other drops: counted and logged by the caller.
pub fn send(hop: &NextHop, tx_reason: Reason) -> Result<u32, Reason> {
    if hop.redirect_ifindex == 0 {
        count(tx_reason);
        return Ok(xdp_action::XDP_TX);
    }
    match LB_TX_PORTS.redirect(hop.redirect_ifindex, 0) {
        Ok(action) => {
            count(Reason::Redirect);
            Ok(action)
        }
        Err(_) => Err(Reason::DropRedirect),
    }
}
