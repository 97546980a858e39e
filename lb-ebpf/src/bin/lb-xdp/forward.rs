//! Sending a packet to its backend: IP-in-IP for direct server return across routed
//! networks, or L2 DSR (MAC rewrite) for backends on the same segment.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Backend, FAMILY_V4, Forward, GlobalConfig, PROTO_IPIP, PROTO_IPV6, Reason};
use lb_ebpf::{
    csum,
    l2::{self, ETH_P_IP, ETH_P_IPV6},
    ptr::{adjust_head, write_bytes},
};

use crate::{Packet, flow::random, icmp, nexthop, stats::count};

const TTL: u8 = 64;

/// Send `pkt` to backend `be`. The stages are called one after another from here rather
/// than nested, so the BPF stack holds at most one of their frames at a time.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    cfg: &GlobalConfig,
    pkt: &mut Packet,
    be: &Backend,
) -> Result<u32, Reason> {
    if pkt.forward == Forward::L2Dsr as u8 {
        let l2 = &pkt.l2;
        l2::write(ctx, l2, &be.mac, &l2.dst, l2.proto).map_err(|_| Reason::DropMalformed)?;
        count(Reason::TxL2Dsr);
        return Ok(xdp_action::XDP_TX);
    }
    let outer_v4 = be.family == FAMILY_V4;
    if outer_v4 && pkt.l3.key.family != FAMILY_V4 {
        // IPv6 in IPv4 is refused by config validation (lb-control config.rs); a map
        // written by other means must not make us emit it.
        return Err(Reason::DropNoBackend);
    }
    let overhead: usize = if outer_v4 { 20 } else { 40 };
    if pkt.check_mtu && cfg.mtu as usize > overhead && pkt.l3.ip_len + overhead > cfg.mtu as usize {
        if pkt.l3.dont_fragment {
            icmp::too_big(ctx, pkt, cfg.mtu - overhead as u16)?;
            return Ok(xdp_action::XDP_TX);
        }
        count(Reason::OverMtuForwarded);
    }
    nexthop::resolve(ctx, cfg, be, pkt)?;
    ipip(ctx, cfg, pkt, be)?;
    nexthop::send(&pkt.hop, Reason::TxIpip)
}

/// Low `bits` bits of `base` replaced by the flow hash: one outer source per flow bucket,
/// so the backend's NIC (RSS over the outer header) spreads flows over its queues.
#[inline(always)]
fn spread(base: u32, bits: u8, hash: u32) -> u32 {
    let mask = if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    (base & !mask) | (hash & mask)
}

/// Prepend the outer header (and the L2 header, moved to the new head; MACs are set by
/// the caller's next hop).
#[inline(always)]
fn ipip(ctx: &XdpContext, cfg: &GlobalConfig, pkt: &Packet, be: &Backend) -> Result<(), Reason> {
    let (l2, l3, hash) = (&pkt.l2, &pkt.l3, pkt.hash);
    let inner_v4 = l3.key.family == FAMILY_V4;
    let outer_v4 = be.family == FAMILY_V4;
    let overhead: usize = if outer_v4 { 20 } else { 40 };
    adjust_head(ctx, -(overhead as i32)).map_err(|_| Reason::DropAdjustFailed)?;
    let ethertype = if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 };
    l2::write(ctx, l2, &pkt.hop.dst_mac, &pkt.hop.src_mac, ethertype)
        .map_err(|_| Reason::DropAdjustFailed)?;
    let inner_proto = if inner_v4 { PROTO_IPIP } else { PROTO_IPV6 };
    let res = if outer_v4 {
        let total = ((l3.ip_len + 20) as u16).to_be_bytes();
        let src = spread(
            u32::from_be_bytes(cfg.encap_src_v4),
            cfg.encap_v4_hash_bits,
            hash,
        )
        .to_be_bytes();
        let df = if l3.dont_fragment { 0x40 } else { 0 };
        // A packet that may be fragmented on the way needs an identification of its own.
        let id = if l3.dont_fragment {
            [0, 0]
        } else {
            (random() as u16).to_be_bytes()
        };
        let mut h: [u8; 20] = [
            0x45,
            l3.tos,
            total[0],
            total[1],
            id[0],
            id[1],
            df,
            0,
            TTL,
            inner_proto,
            0,
            0,
            src[0],
            src[1],
            src[2],
            src[3],
            be.addr[0],
            be.addr[1],
            be.addr[2],
            be.addr[3],
        ];
        let c = csum::ipv4_header(&h).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
        write_bytes(ctx, l2.len, &h)
    } else {
        let plen = (l3.ip_len as u16).to_be_bytes();
        // The source is written from the config (map memory) and its low word from the hash:
        // no stack copy of the address.
        let src = &cfg.encap_src_v6;
        // SAFETY: the first 12 of the address's 16 bytes.
        let src_high = unsafe { &*(src.as_ptr() as *const [u8; 12]) };
        let low = u32::from_be_bytes([src[12], src[13], src[14], src[15]]);
        let low = spread(low, cfg.encap_v6_hash_bits, hash).to_be_bytes();
        let flow = hash & 0x000f_ffff;
        let h: [u8; 8] = [
            0x60 | (l3.tos >> 4),
            (l3.tos << 4) | (flow >> 16) as u8,
            (flow >> 8) as u8,
            flow as u8,
            plen[0],
            plen[1],
            inner_proto,
            TTL,
        ];
        write_bytes(ctx, l2.len, &h)
            .and_then(|_| write_bytes(ctx, l2.len + 8, src_high))
            .and_then(|_| write_bytes(ctx, l2.len + 20, &low))
            .and_then(|_| write_bytes(ctx, l2.len + 24, &be.addr))
    };
    res.map_err(|_| Reason::DropAdjustFailed)
}
