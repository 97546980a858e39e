//! Internet checksums over fixed-size regions. The verifier rejects `bpf_csum_diff` over a
//! variable-length packet pointer when emitted from Rust, so every sum here has a
//! compile-time length.

use aya_ebpf::programs::XdpContext;

use crate::ptr::ptr_at;

/// Fold a 32-bit one's-complement sum into the 16-bit checksum field value.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Add the big-endian 16-bit words of `bytes` to `sum`.
#[inline(always)]
pub fn add_bytes<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Bytes of a packet quoted in an ICMP error we build.
pub const QUOTE: usize = 64;

/// Add the `QUOTE` bytes of the packet at `offset` to `sum`, read straight from the packet.
#[inline(never)]
pub fn sum_quote(ctx: &XdpContext, offset: usize, mut sum: u32) -> Result<u32, ()> {
    let p = ptr_at::<[u16; QUOTE / 2]>(ctx, offset)? as *const u16;
    let mut i = 0;
    while i < QUOTE / 2 {
        // SAFETY: ptr_at checked that QUOTE bytes are inside the packet.
        sum += u16::from_be(unsafe { core::ptr::read_unaligned(p.add(i)) }) as u32;
        i += 1;
    }
    Ok(sum)
}

/// Checksum of an IPv4 header of exactly 20 bytes whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(hdr: &[u8; 20]) -> u16 {
    fold(add_bytes(0, hdr))
}
