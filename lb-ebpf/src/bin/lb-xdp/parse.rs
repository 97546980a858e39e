//! IPv4 (with options) and IPv6 (with a bounded walk over extension headers), then the
//! ports of TCP and UDP. What we cannot parse is a reason, never an abort.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};
use lb_ebpf::ptr::{ptr_at, read};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

/// IPv6 extension headers walked before giving up (hop-by-hop, routing, fragment,
/// destination options, AH: real traffic rarely carries more than two).
const MAX_EXT_HEADERS: usize = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub struct L3 {
    /// Client to VIP; ports zero for fragments and port-less protocols.
    pub key: FlowKey,
    /// Offset of the L4 header.
    pub l4: usize,
    /// Length of the IP packet (header included) according to the header.
    pub ip_len: usize,
    /// The header claims more bytes than the frame has, or less than itself.
    pub bad_len: bool,
    pub fragment: bool,
    /// IPv4 DF; IPv6 never fragments in flight, so always set.
    pub dont_fragment: bool,
    pub tcp_flags: u8,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub tos: u8,
}

impl L3 {
    pub const fn new() -> Self {
        L3 {
            key: FlowKey {
                src: [0; 16],
                dst: [0; 16],
                sport: 0,
                dport: 0,
                proto: 0,
                family: 0,
                _pad: [0; 2],
            },
            l4: 0,
            ip_len: 0,
            bad_len: false,
            fragment: false,
            dont_fragment: false,
            tcp_flags: 0,
            tos: 0,
        }
    }
}

/// An IPv6 address read from the packet as four words (misaligned loads are allowed there).
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let p = a.as_ptr() as *const u32;
    // SAFETY: four words inside the 16-byte array.
    unsafe { [0, 1, 2, 3].map(|i| p.add(i).read_unaligned()) }
}

/// Writes the whole key, ports zero, one word at a time. Volatile: LLVM would otherwise merge
/// the zero words into a `memset` call, which the BPF backend emits as a one-byte loop.
#[inline(always)]
fn set_key(key: &mut FlowKey, src: [u32; 4], dst: [u32; 4], proto: u8, family: u8) {
    let w = key as *mut FlowKey as *mut u32;
    let last = u32::from_ne_bytes([proto, family, 0, 0]);
    let all = [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, last,
    ];
    let mut i = 0;
    while i < all.len() {
        // SAFETY: FlowKey is 40 bytes, aligned to 4, all plain bytes: ten aligned words.
        unsafe { w.add(i).write_volatile(all[i]) };
        i += 1;
    }
}

/// Inlined: a BPF-to-BPF call costs its argument moves and register saves on every
/// packet, and the parser's few temporaries fit the 512-byte stack.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, off: usize, l3: &mut L3) -> Result<(), Reason> {
    let h: *const Ipv4Hdr = ptr_at(ctx, off).map_err(|_| Reason::PassMalformed)?;
    // SAFETY: ptr_at checked that the fixed header is inside the packet.
    let h = unsafe { &*h };
    let ihl = ((h.vihl & 0x0f) as usize) * 4;
    if h.vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::PassMalformed);
    }
    let (src, dst) = (
        u32::from_ne_bytes(h.src_addr),
        u32::from_ne_bytes(h.dst_addr),
    );
    set_key(
        &mut l3.key,
        [src, 0, 0, 0],
        [dst, 0, 0, 0],
        h.proto,
        FAMILY_V4,
    );
    l3.ip_len = u16::from_be_bytes(h.tot_len) as usize;
    let frame = lb_ebpf::ptr::frame_len(ctx);
    let frag = u16::from_be_bytes(h.frags);
    l3.l4 = off + ihl;
    l3.bad_len = l3.ip_len < ihl || off + l3.ip_len > frame;
    // MF set or a non-zero offset.
    l3.fragment = frag & 0x3fff != 0;
    l3.dont_fragment = frag & 0x4000 != 0;
    l3.tos = h.tos;
    ports(ctx, l3)
}

#[inline(always)]
pub fn ipv6(ctx: &XdpContext, off: usize, l3: &mut L3) -> Result<(), Reason> {
    let h: *const Ipv6Hdr = ptr_at(ctx, off).map_err(|_| Reason::PassMalformed)?;
    // SAFETY: ptr_at checked that the fixed header is inside the packet.
    let h = unsafe { &*h };
    if h.vcf[0] >> 4 != 6 {
        return Err(Reason::PassMalformed);
    }
    let (src, dst) = (words(&h.src_addr), words(&h.dst_addr));
    set_key(&mut l3.key, src, dst, 0, FAMILY_V6);
    let ip_len = 40 + u16::from_be_bytes(h.payload_len) as usize;
    let frame = lb_ebpf::ptr::frame_len(ctx);
    let tos = ((h.vcf[0] & 0x0f) << 4) | (h.vcf[1] >> 4);
    let mut next = h.next_hdr;
    let mut l4 = off + 40;
    let mut fragment = false;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units past the first 8.
            0 | 43 | 60 => {
                let e: [u8; 2] = read(ctx, l4).map_err(|_| Reason::PassMalformed)?;
                next = e[0];
                l4 += (e[1] as usize + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                let e: [u8; 4] = read(ctx, l4).map_err(|_| Reason::PassMalformed)?;
                next = e[0];
                fragment = true;
                l4 += 8;
            }
            // AH: length in 4-byte units past the first 8.
            51 => {
                let e: [u8; 2] = read(ctx, l4).map_err(|_| Reason::PassMalformed)?;
                next = e[0];
                l4 += (e[1] as usize + 2) * 4;
            }
            _ => break,
        }
        i += 1;
    }
    if matches!(next, 0 | 43 | 44 | 51 | 60) {
        return Err(Reason::PassExtHeaders);
    }
    l3.key.proto = next;
    l3.l4 = l4;
    l3.ip_len = ip_len;
    l3.bad_len = off + ip_len > frame || l4 > off + ip_len;
    l3.fragment = fragment;
    l3.dont_fragment = true;
    l3.tos = tos;
    ports(ctx, l3)
}

/// Ports (and TCP flags) of the first L4 header. Fragments keep ports zero: only the first
/// fragment carries them, and all fragments of a datagram must hash alike.
#[inline(always)]
fn ports(ctx: &XdpContext, l3: &mut L3) -> Result<(), Reason> {
    if l3.fragment || (l3.key.proto != PROTO_TCP && l3.key.proto != PROTO_UDP) {
        return Ok(());
    }
    let p: [u8; 4] = read(ctx, l3.l4).map_err(|_| Reason::PassMalformed)?;
    l3.key.sport = u16::from_be_bytes([p[0], p[1]]);
    l3.key.dport = u16::from_be_bytes([p[2], p[3]]);
    if l3.key.proto == PROTO_TCP {
        // A header cut before the flags still has usable ports.
        if let Ok(flags) = read::<u8>(ctx, l3.l4 + 13) {
            l3.tcp_flags = flags;
        }
    }
    Ok(())
}
