//! Benchmark programs for `cargo xtask bench` (never attached to a NIC).
//!
//! `BPF_PROG_TEST_RUN` with `repeat = N` runs a program N times on the same buffer without
//! resetting it: once the balancer has encapsulated the frame, iterations 2..N see the
//! encapsulated packet and take another path. `lb_bench` is the wrapper that makes each
//! iteration see the original frame again:
//!
//! 1. it moves `data` back to where the frame started (`bpf_xdp_adjust_head` by the
//!    difference between the current length and the template's; always called, so its cost
//!    is the same whatever the previous iteration did),
//! 2. rewrites the template bytes (`BENCH_FRAME`, per CPU) with fixed-size 8-byte stores,
//! 3. optionally varies the flow per iteration from a per-CPU counter (source port, and the
//!    low 16 bits of the source address), keeping the IP and TCP checksums valid
//!    (RFC 1624 incremental updates),
//! 4. tail-calls the program under test in `BENCH_TARGET[0]`.
//!
//! The wrapper's own cost is measured by tail-calling `bench_pass` with the same template,
//! and subtracted. `bench_pass` (XDP_PASS) is also the floor, and `bench_parse` is the
//! parse-only baseline: the balancer's own L2/L3/L4 parser, then XDP_PASS.
//!
//! The forwarding-rate benchmark (`lbt-rate-bench`) uses three more programs:
//! `bench_gen`, the live-frames generator (`BPF_F_TEST_XDP_LIVE_FRAMES`): the same restore
//! and per-iteration flow as the wrapper, then XDP_TX, which the kernel turns into a
//! transmit on the `ingress_ifindex` it was given; `bench_sink`, attached where the
//! forwarded frames arrive, which counts them by kind and drops them; and two baselines in
//! the balancer's place: `bench_reflect`, which sends every frame back with its MACs
//! swapped, and `bench_track`, the least a balancer with a connection table does (parse,
//! one lookup in a table shaped like the balancer's, the backend's record, IP-in-IP).
#![no_std]
#![no_main]

// The balancer's parser, compiled here unchanged: the parse-only baseline parses exactly
// as `lb_xdp` does.
#[allow(dead_code)]
#[path = "../lb-xdp/parse.rs"]
mod parse;

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, xdp_action},
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    FlowEntry, FlowKey, Reason,
    bench::{BenchFrame, MAX_FRAME, TRACK_HIT, TRACK_MISS},
};
use lb_ebpf::{
    csum,
    l2::{self, ETH_P_IP, ETH_P_IPV6, L2},
    ptr::{adjust_head, frame_len, ptr_at_mut, read, write, write_bytes},
};

use crate::parse::L3;

#[map(name = "BENCH_FRAME")]
static BENCH_FRAME: PerCpuArray<BenchFrame> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: the program under test.
#[map(name = "BENCH_TARGET")]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Parse state of the parse-only baseline: per CPU, as the balancer keeps its own.
pub struct Scratch {
    l2: L2,
    l3: L3,
    /// `bench_track`'s new entry: built here, not on the stack, where LLVM would move it
    /// with misaligned stores the verifier refuses.
    entry: FlowEntry,
}

#[map(name = "BENCH_SCRATCH")]
static BENCH_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn lb_bench(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: tail call into an XDP program on the same context; returns only on failure.
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// The floor: what `BPF_PROG_TEST_RUN` costs around a program that does nothing.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Parse-only baseline: XDP_PASS when L2, L3 and the ports parsed, XDP_DROP otherwise (so
/// the return value proves which path ran).
#[xdp]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    match parse_only(&ctx) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(_) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn parse_only(ctx: &XdpContext) -> Result<(), Reason> {
    let s = BENCH_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Reason::DropAdjustFailed)?;
    // SAFETY: this CPU's slot; nothing else runs on this CPU until we return.
    let s = unsafe { &mut *s };
    l2::parse(ctx, &mut s.l2).map_err(|_| Reason::PassMalformed)?;
    s.l3.tcp_flags = 0;
    match s.l2.proto {
        ETH_P_IP => parse::ipv4(ctx, s.l2.len, &mut s.l3),
        ETH_P_IPV6 => parse::ipv6(ctx, s.l2.len, &mut s.l3),
        _ => Err(Reason::PassNotIp),
    }
}

/// The generator. Live-frames pages are recycled with whatever the last hop left in them
/// (the balancer writes its outer headers over the old Ethernet header), so every frame is
/// rebuilt from the template, as the wrapper does.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    match restore(&ctx) {
        Ok(()) => xdp_action::XDP_TX,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

/// `BENCH_SINK` slots: frames in IP-in-IP (what the balancer sends), everything else (what
/// the reflector sends back).
pub const SINK_TUNNELLED: u32 = 0;
pub const SINK_OTHER: u32 = 1;

#[map(name = "BENCH_SINK")]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

/// Counts and drops. It also gives the veth it sits on the NAPI that frames sent to it with
/// XDP_TX need (without it the sender's veth drops them).
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let slot = if tunnelled(&ctx) {
        SINK_TUNNELLED
    } else {
        SINK_OTHER
    };
    if let Some(n) = BENCH_SINK.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; nothing else runs on this CPU until we return.
        unsafe { *n += 1 };
    }
    xdp_action::XDP_DROP
}

/// Outer header IPv4 or IPv6 carrying IPv4 or IPv6, untagged (the balancer's outer header).
#[inline(always)]
fn tunnelled(ctx: &XdpContext) -> bool {
    let Ok(proto) = read::<[u8; 2]>(ctx, 12) else {
        return false;
    };
    let next = match u16::from_be_bytes(proto) {
        ETH_P_IP => read::<u8>(ctx, l2::ETH_HLEN + 9),
        ETH_P_IPV6 => read::<u8>(ctx, l2::ETH_HLEN + 6),
        _ => return false,
    };
    matches!(next, Ok(IPPROTO_IPIP | IPPROTO_IPV6))
}

/// The baseline in the balancer's place: the least a forwarder does (touch the frame, send
/// it back out of the interface it came in on).
#[xdp]
pub fn bench_reflect(ctx: XdpContext) -> u32 {
    let Ok(m) = read::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    let swapped = [
        m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5],
    ];
    if write(&ctx, 0, swapped).is_err() {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

/// `bench_track`'s connection table: the balancer's key, value, map type and flags
/// (`LB_FLOWS`). The rate benchmark sizes it as the balancer's; the small default keeps
/// other loaders of this object from preallocating a table they never use.
#[map(name = "BENCH_FLOWS")]
static BENCH_FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(1024, BPF_F_NO_COMMON_LRU);

/// `bench_track`'s backends: IPv4 addresses by id (all zero: the sink does not look).
#[map(name = "BENCH_BACKENDS")]
static BENCH_BACKENDS: Array<[u8; 4]> = Array::with_max_entries(256, 0);

/// `bench_track`'s table hits and misses (`lb_common::bench::TRACK_*`), per CPU: the proof
/// that a measured run only hit.
#[map(name = "BENCH_TRACK")]
static BENCH_TRACK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The second baseline in the balancer's place: the least a balancer with a connection
/// table does for an established IPv4 flow. The balancer's parser fills the balancer's
/// 40-byte key; one lookup in a table of the balancer's shape (a miss inserts, for the
/// warm-up); the backend's record; IP-in-IP with a computed header checksum; XDP_TX back
/// out. No VIP check, no scheduler, no counters beyond the proof's, no MTU or next-hop
/// logic.
#[xdp]
pub fn bench_track(ctx: XdpContext) -> u32 {
    match track(&ctx) {
        Ok(()) => xdp_action::XDP_TX,
        Err(()) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn track(ctx: &XdpContext) -> Result<(), ()> {
    let s = BENCH_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's slot; nothing else runs on this CPU until we return.
    let s = unsafe { &mut *s };
    l2::parse(ctx, &mut s.l2).map_err(|_| ())?;
    if s.l2.proto != ETH_P_IP {
        return Err(());
    }
    parse::ipv4(ctx, s.l2.len, &mut s.l3).map_err(|_| ())?;
    let key = &s.l3.key;
    let id = match BENCH_FLOWS.get_ptr(key) {
        Some(e) => {
            tally(TRACK_HIT);
            // SAFETY: the entry stays valid during this program run (RCU).
            unsafe { (*e).backend_id }
        }
        None => {
            tally(TRACK_MISS);
            // Any id within BENCH_BACKENDS' 256 entries: the sink does not look.
            let id = key.sport as u32 & 0xff;
            s.entry = FlowEntry {
                backend_id: id,
                ..FlowEntry::default()
            };
            // By reference: a by-value argument is copied to the stack first.
            #[allow(clippy::needless_borrows_for_generic_args)]
            BENCH_FLOWS.insert(key, &s.entry, 0).map_err(|_| ())?;
            id
        }
    };
    let be = BENCH_BACKENDS.get(id).ok_or(())?;
    let macs = read::<[u8; 12]>(ctx, 0)?;
    let total = ((s.l3.ip_len + 20) as u16).to_be_bytes();
    adjust_head(ctx, -20)?;
    let mut h: [u8; 20] = [
        0x45,
        0,
        total[0],
        total[1],
        0,
        0,
        0x40,
        0,
        64,
        IPPROTO_IPIP,
        0,
        0,
        198,
        18,
        0,
        1,
        be[0],
        be[1],
        be[2],
        be[3],
    ];
    let c = csum::ipv4_header(&h).to_be_bytes();
    h[10] = c[0];
    h[11] = c[1];
    let swapped = [
        macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3],
        macs[4], macs[5],
    ];
    write(ctx, 0, swapped)?;
    write(ctx, 12, ETH_P_IP.to_be_bytes())?;
    write_bytes(ctx, l2::ETH_HLEN, &h)
}

#[inline(always)]
fn tally(slot: u32) {
    if let Some(n) = BENCH_TRACK.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; nothing else runs on this CPU until we return.
        unsafe { *n += 1 };
    }
}

/// One's-complement sum folded to 16 bits.
#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3: the checksum `hc` after 16-bit words `old` became `new`.
#[inline(always)]
fn csum_replace(hc: u16, old: u16, new: u16) -> u16 {
    !fold(!hc as u32 + !old as u32 + new as u32)
}

/// Store `v` at `off` in the packet (`T` is u64, u32 or u16).
#[inline(always)]
fn put<T>(ctx: &XdpContext, off: usize, v: T) -> Result<(), ()> {
    // SAFETY: ptr_at checked the bounds. The frame starts 8-aligned (XDP headroom) and the
    // callers' offsets are multiples of size_of::<T>(), so the store is aligned.
    unsafe { core::ptr::write(ptr_at_mut::<T>(ctx, off)?, v) };
    Ok(())
}

/// The template's `T` at `off` (aligned, as for `put`).
#[inline(always)]
fn tmpl<T: Copy>(f: &BenchFrame, off: usize) -> T {
    // SAFETY: callers keep off + size_of::<T>() <= MAX_FRAME; `bytes` is at offset 0 of an
    // 8-aligned struct.
    unsafe { core::ptr::read(f.bytes.as_ptr().add(off) as *const T) }
}

#[inline(always)]
fn restore(ctx: &XdpContext) -> Result<(), ()> {
    let f = BENCH_FRAME.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's slot.
    let f = unsafe { &mut *f };
    let len = f.len as usize;
    // Even lengths only: a 1-byte tail store is a form of bounds check the verifier
    // refuses after LLVM rewrites it (`pkt_end > pkt`).
    if !(l2::ETH_HLEN..=MAX_FRAME).contains(&len) || len & 1 != 0 {
        return Err(());
    }
    // data_end never moves (the balancer only grows the head): shrink back to `len`.
    adjust_head(ctx, frame_len(ctx) as i32 - len as i32)?;
    let words = len / 8;
    let mut i = 0;
    while i < MAX_FRAME / 8 {
        if i >= words {
            break;
        }
        put::<u64>(ctx, i * 8, tmpl(f, i * 8))?;
        i += 1;
    }
    // The last len % 8 bytes. The mask restates off < MAX_FRAME for the verifier, which
    // loses the bound on `len` once LLVM spills it.
    let mut off = (words * 8) & (MAX_FRAME - 1);
    let rest = len & 7;
    if rest & 4 != 0 {
        put::<u32>(ctx, off, tmpl(f, off))?;
        off += 4;
    }
    if rest & 2 != 0 {
        put::<u16>(ctx, off, tmpl(f, off))?;
    }

    let c = f.counter;
    f.counter = c.wrapping_add(1);
    if f.mask != 0 {
        vary(ctx, f, c & f.mask)?;
    }
    Ok(())
}

/// Give this iteration its own flow: XOR the counter into the source port (low 16 bits)
/// and the low 16 bits of the source address (high 16 bits), fixing the checksums.
#[inline(always)]
fn vary(ctx: &XdpContext, f: &BenchFrame, v: u32) -> Result<(), ()> {
    let (po, so, lo, io) = (
        f.sport_off as usize,
        f.src_off as usize,
        f.l4_csum_off as usize,
        f.ip_csum_off as usize,
    );
    let port = u16::from_be_bytes(read::<[u8; 2]>(ctx, po)?);
    let src = u16::from_be_bytes(read::<[u8; 2]>(ctx, so)?);
    let new_port = port ^ v as u16;
    let new_src = src ^ (v >> 16) as u16;
    write(ctx, po, new_port.to_be_bytes())?;
    write(ctx, so, new_src.to_be_bytes())?;
    let l4 = u16::from_be_bytes(read::<[u8; 2]>(ctx, lo)?);
    let l4 = csum_replace(csum_replace(l4, port, new_port), src, new_src);
    write(ctx, lo, l4.to_be_bytes())?;
    if io != 0 {
        let ip = u16::from_be_bytes(read::<[u8; 2]>(ctx, io)?);
        write(ctx, io, csum_replace(ip, src, new_src).to_be_bytes())?;
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
