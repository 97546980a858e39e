//! Bounds-checked packet access: the one place where the verifier's demand for an explicit
//! check before every packet access is met.

use core::mem;

use aya_ebpf::programs::XdpContext;

/// (data, data_end) of the packet. Volatile reads: in a function that is not inlined,
/// LLVM would otherwise hoist the context loads into the caller and pass packet pointers
/// as plain integers, which the verifier rejects ("pointer arithmetic with <<=").
#[inline(always)]
pub fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: ctx.ctx is the program's context pointer, valid for the whole run.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

/// Length of the frame in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    let (start, end) = bounds(ctx);
    end - start
}

/// Offsets past this are refused outright. The check also gives the verifier an upper
/// bound for offsets that went through memory (the per-CPU scratch slot), which it
/// otherwise treats as unbounded.
pub const MAX_OFFSET: usize = 0x3fff;

/// Pointer to a `T` at `offset` from the start of the packet, if the packet holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    if offset > MAX_OFFSET {
        return Err(());
    }
    let (start, end) = bounds(ctx);
    if start + offset + mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    Ok(ptr_at::<T>(ctx, offset)? as *mut T)
}

/// Copy of the `T` at `offset`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    // SAFETY: ptr_at checked the bounds; T is plain bytes (alignment 1 or read unaligned).
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<T>(ctx, offset)?) })
}

#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, offset: usize, value: T) -> Result<(), ()> {
    // SAFETY: as for read.
    unsafe { core::ptr::write_unaligned(ptr_at_mut::<T>(ctx, offset)?, value) };
    Ok(())
}

/// Store `bytes` at `offset` with the widest scalar stores that fit (4, 2, then 1 bytes).
/// A plain copy of a byte array into the packet is expanded one byte at a time; scalar
/// stores are single instructions (the object is built with misaligned access allowed).
/// The source is read in the same 4-byte words: it may be a stack copy of a 4-aligned
/// value, and the verifier refuses misaligned stack reads (so no 8-byte words).
#[inline(always)]
pub fn write_bytes<const N: usize>(
    ctx: &XdpContext,
    offset: usize,
    bytes: &[u8; N],
) -> Result<(), ()> {
    let p = ptr_at_mut::<[u8; N]>(ctx, offset)? as *mut u8;
    let b = bytes;
    let mut i = 0;
    // SAFETY (every store below): ptr_at checked that N bytes from p are in the packet,
    // and each store ends at or before p + N.
    while i + 4 <= N {
        let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        unsafe { (p.add(i) as *mut u32).write_unaligned(u32::from_ne_bytes(w)) };
        i += 4;
    }
    if i + 2 <= N {
        let w = [b[i], b[i + 1]];
        unsafe { (p.add(i) as *mut u16).write_unaligned(u16::from_ne_bytes(w)) };
        i += 2;
    }
    if i < N {
        unsafe { p.add(i).write(b[i]) };
    }
    Ok(())
}

/// Grow (negative `delta`) or shrink the packet at its head. Every pointer taken before
/// is invalid afterwards: callers re-derive offsets through `ptr_at`.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Result<(), ()> {
    // SAFETY: the helper checks its arguments; ctx is the program's context.
    let rc = unsafe { aya_ebpf::helpers::generated::bpf_xdp_adjust_head(ctx.ctx, delta) };
    if rc == 0 { Ok(()) } else { Err(()) }
}

#[inline(always)]
pub fn adjust_tail(ctx: &XdpContext, delta: i32) -> Result<(), ()> {
    // SAFETY: as for adjust_head.
    let rc = unsafe { aya_ebpf::helpers::generated::bpf_xdp_adjust_tail(ctx.ctx, delta) };
    if rc == 0 { Ok(()) } else { Err(()) }
}
