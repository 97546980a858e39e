//! Per-CPU counters: no atomics, userspace sums over CPUs.

use lb_common::Reason;

use crate::maps::{LB_BE_STATS, LB_STATS, LB_VIP_STATS};

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

#[inline(always)]
pub fn backend(backend_id: u32, bytes: u64) {
    if let Some(s) = LB_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
        }
    }
}
