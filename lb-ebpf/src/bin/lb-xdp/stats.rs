//! Per-CPU counters: no atomics, userspace sums over CPUs.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::Reason;

use crate::maps::{LB_BE_FLOWS, LB_BE_STATS, LB_LOG_AT, LB_STATS, LB_VIP_STATS};

/// A drop worth an operator's attention, logged through aya-log to the daemon's log: at
/// most once a second per reason and CPU, so a flood of bad packets cannot flood the log
/// (the counters have the full numbers).
#[inline(never)]
pub fn rare(ctx: &XdpContext, reason: Reason) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(last) = LB_LOG_AT.get_ptr_mut(reason as u32) else {
        return;
    };
    // SAFETY: per-CPU slot.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < 1_000_000_000 {
            return;
        }
        *last = now;
    }
    warn!(
        ctx,
        "lb_xdp dropped a packet: {} (counter LB_STATS[{}]); at most one such line per second per CPU",
        reason.label(),
        reason as u32
    );
}

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = LB_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn vip(vip_id: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = LB_VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    }
}

/// A packet to a backend; `syn` for a bare SYN, `handshake` for the first packet after a
/// flow's SYN (see `flow::Choice`).
#[inline(always)]
pub fn backend(backend_id: u32, bytes: u64, syn: bool, handshake: bool) {
    if let Some(s) = LB_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
        }
    }
    // One packet in a connection's life does this: no lookup for the others.
    if (syn || handshake)
        && let Some(f) = LB_BE_FLOWS.get_ptr_mut(backend_id)
    {
        // SAFETY: per-CPU slot.
        unsafe {
            if syn {
                (*f).syns += 1;
            } else {
                (*f).handshakes += 1;
            }
        }
    }
}
