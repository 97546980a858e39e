//! ICMP in both directions.
//!
//! Outbound: a DF packet that will not fit once encapsulated is answered with ICMP
//! fragmentation-needed / packet-too-big, so the client lowers its path MTU instead of
//! black-holing. Inbound: ICMP errors about a VIP flow (a router between a backend and the
//! client could not deliver the backend's reply) carry the flow in their quoted header;
//! they are steered to the backend that owns that flow, so path-MTU discovery works through
//! direct server return.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FlowKey, PROTO_TCP, PROTO_UDP, Reason};
use lb_ebpf::{
    csum, l2,
    ptr::{adjust_head, adjust_tail, ptr_at, read, write},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{Packet, parse::L3, stats::count};

/// Bytes of the offending packet quoted back: its IP header and the start of L4, enough
/// for the client's stack to find the socket (RFC 792 asks for header + 8 bytes).
use lb_ebpf::csum::QUOTE;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;

/// Turns the packet into an ICMP error for its sender, to go back out with XDP_TX.
/// Returns a single word (`Result<(), Reason>`): a pair such as `Result<u32, Reason>` comes
/// back through a 4-aligned stack slot that LLVM may fill with one 8-byte store, which the
/// verifier refuses.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Result<(), Reason> {
    let (l2, l3) = (&pkt.l2, &pkt.l3);
    let frame = lb_ebpf::ptr::frame_len(ctx);
    let keep = l2.len + QUOTE;
    if frame < keep {
        return Err(Reason::DropMalformed);
    }
    adjust_tail(ctx, keep as i32 - frame as i32).map_err(|_| Reason::DropAdjustFailed)?;
    let v4 = l3.key.family == FAMILY_V4;
    let grow: usize = if v4 { 28 } else { 48 };
    adjust_head(ctx, -(grow as i32)).map_err(|_| Reason::DropAdjustFailed)?;
    l2::write(ctx, l2, &l2.src, &l2.dst, l2.proto).map_err(|_| Reason::DropAdjustFailed)?;
    let res = if v4 {
        frag_needed_v4(ctx, pkt, mtu)
    } else {
        packet_too_big_v6(ctx, pkt, mtu)
    };
    res.map_err(|_| Reason::DropAdjustFailed)?;
    count(Reason::TxIcmpTooBig);
    Ok(())
}

/// IPv4 header and ICMP fragmentation-needed in front of the quote at `l2.len + 28`.
#[inline(never)]
fn frag_needed_v4(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Result<(), ()> {
    let at = pkt.l2.len;
    let (vip, client) = (&pkt.l3.key.dst, &pkt.l3.key.src);
    let total = ((20 + 8 + QUOTE) as u16).to_be_bytes();
    let mut ip: [u8; 20] = [
        0x45, 0, total[0], total[1], 0, 0, 0, 0, 64, 1, 0, 0, vip[0], vip[1], vip[2], vip[3],
        client[0], client[1], client[2], client[3],
    ];
    let c = csum::ipv4_header(&ip).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    write(ctx, at, ip)?;
    let m = mtu.to_be_bytes();
    let mut hdr: [u8; 8] = [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, m[0], m[1]];
    let sum = csum::sum_quote(ctx, at + 28, csum::add_bytes(0, &hdr))?;
    let c = csum::fold(sum).to_be_bytes();
    hdr[2] = c[0];
    hdr[3] = c[1];
    write(ctx, at + 20, hdr)
}

/// IPv6 header and ICMPv6 packet-too-big in front of the quote at `l2.len + 48`.
#[inline(never)]
fn packet_too_big_v6(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Result<(), ()> {
    let at = pkt.l2.len;
    let (vip, client) = (&pkt.l3.key.dst, &pkt.l3.key.src);
    let plen = ((8 + QUOTE) as u16).to_be_bytes();
    write(ctx, at, [0x60u8, 0, 0, 0, plen[0], plen[1], 58, 64])?;
    write(ctx, at + 8, *vip)?;
    write(ctx, at + 24, *client)?;
    let m = (mtu as u32).to_be_bytes();
    let mut hdr: [u8; 8] = [ICMPV6_PKT_TOOBIG, 0, 0, 0, m[0], m[1], m[2], m[3]];
    // Pseudo-header: source, destination, upper-layer length, next header.
    let mut sum = csum::add_bytes(0, vip);
    sum = csum::add_bytes(sum, client);
    sum += (8 + QUOTE) as u32 + 58;
    sum = csum::add_bytes(sum, &hdr);
    let sum = csum::sum_quote(ctx, at + 48, sum)?;
    let c = csum::fold(sum).to_be_bytes();
    hdr[2] = c[0];
    hdr[3] = c[1];
    write(ctx, at + 40, hdr)
}

/// The client-to-VIP flow an ICMP error is about, read from the quoted packet (which went
/// VIP to client, so source and destination swap back). `None`: not an error we steer.
#[inline(never)]
pub fn error_flow(ctx: &XdpContext, l3: &L3, key: &mut FlowKey) -> Option<()> {
    let icmp: [u8; 2] = read(ctx, l3.l4).ok()?;
    let v4 = l3.key.family == FAMILY_V4;
    let is_error = if v4 {
        matches!(icmp[0], 3 | 11 | 12) // unreachable, time exceeded, parameter problem
    } else {
        matches!(icmp[0], 1..=4) // unreachable, too big, time exceeded, parameter problem
    };
    if !is_error {
        return None;
    }
    let inner = l3.l4 + 8;
    key.family = l3.key.family;
    let l4 = if v4 {
        let h: *const Ipv4Hdr = ptr_at(ctx, inner).ok()?;
        // SAFETY: ptr_at checked the bounds.
        let h = unsafe { &*h };
        if h.vihl & 0x0f < 5 {
            return None;
        }
        key.proto = h.proto;
        key.dst[..4].copy_from_slice(&h.src_addr);
        key.src[..4].copy_from_slice(&h.dst_addr);
        inner + ((h.vihl & 0x0f) as usize) * 4
    } else {
        let h: *const Ipv6Hdr = ptr_at(ctx, inner).ok()?;
        // SAFETY: ptr_at checked the bounds.
        let h = unsafe { &*h };
        key.proto = h.next_hdr;
        key.dst = h.src_addr;
        key.src = h.dst_addr;
        inner + 40
    };
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return None;
    }
    let p: [u8; 4] = read(ctx, l4).ok()?;
    key.dport = u16::from_be_bytes([p[0], p[1]]);
    key.sport = u16::from_be_bytes([p[2], p[3]]);
    Some(())
}
