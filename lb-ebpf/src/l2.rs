//! Ethernet with up to two VLAN tags (802.1Q, 802.1ad).

use aya_ebpf::programs::XdpContext;

use crate::ptr::read;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;

/// The frame's L2 header as we found it: forwarded frames go back out with the same tags.
#[derive(Clone, Copy)]
pub struct L2 {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Length of Ethernet plus tags: the L3 header starts here (14, 18 or 22).
    pub len: usize,
    /// Tag control fields (TPID and TCI) of up to two tags, outermost first.
    pub tags: [[u8; 4]; 2],
    /// The innermost ethertype: what the L3 header is.
    pub proto: u16,
}

impl Default for L2 {
    fn default() -> Self {
        Self::new()
    }
}

impl L2 {
    pub const fn new() -> Self {
        L2 {
            dst: [0; 6],
            src: [0; 6],
            len: ETH_HLEN,
            tags: [[0; 4]; 2],
            proto: 0,
        }
    }
}

pub enum L2Error {
    Truncated,
    TooManyTags,
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}

/// Parse into `l2` (an out-parameter so that callers can keep it off the stack).
#[inline(always)]
pub fn parse(ctx: &XdpContext, l2: &mut L2) -> Result<(), L2Error> {
    let hdr: [u8; 14] = read(ctx, 0).map_err(|_| L2Error::Truncated)?;
    l2.dst = [hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5]];
    l2.src = [hdr[6], hdr[7], hdr[8], hdr[9], hdr[10], hdr[11]];
    l2.len = ETH_HLEN;
    l2.tags = [[0; 4]; 2];
    l2.proto = u16::from_be_bytes([hdr[12], hdr[13]]);
    if is_vlan(l2.proto) {
        let tag: [u8; 6] = read(ctx, 12).map_err(|_| L2Error::Truncated)?;
        l2.tags[0] = [tag[0], tag[1], tag[2], tag[3]];
        l2.proto = u16::from_be_bytes([tag[4], tag[5]]);
        l2.len += VLAN_HLEN;
        if is_vlan(l2.proto) {
            let tag: [u8; 6] = read(ctx, 16).map_err(|_| L2Error::Truncated)?;
            l2.tags[1] = [tag[0], tag[1], tag[2], tag[3]];
            l2.proto = u16::from_be_bytes([tag[4], tag[5]]);
            l2.len += VLAN_HLEN;
            if is_vlan(l2.proto) {
                return Err(L2Error::TooManyTags);
            }
        }
    }
    Ok(())
}

/// Write `l2` at the head of the packet with new MACs and innermost ethertype `proto`.
/// The tags are written as found, so the frame stays in its VLAN.
#[inline(always)]
pub fn write(
    ctx: &XdpContext,
    l2: &L2,
    dst: &[u8; 6],
    src: &[u8; 6],
    proto: u16,
) -> Result<(), ()> {
    use crate::ptr::write_bytes as put;
    put(ctx, 0, dst)?;
    put(ctx, 6, src)?;
    if l2.len >= ETH_HLEN + VLAN_HLEN {
        put(ctx, 12, &l2.tags[0])?;
    }
    if l2.len >= ETH_HLEN + 2 * VLAN_HLEN {
        put(ctx, 16, &l2.tags[1])?;
    }
    // A constant offset per tag count: the verifier then proves the store in bounds
    // whatever order LLVM computes the pointer and its bound in.
    let proto = proto.to_be_bytes();
    match l2.len {
        ETH_HLEN => put(ctx, ETH_HLEN - 2, &proto),
        18 => put(ctx, 16, &proto),
        _ => put(ctx, 20, &proto),
    }
}
