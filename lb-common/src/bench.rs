//! The benchmark template: the value of the lb-bench object's per-CPU map `BENCH_FRAME`,
//! which its wrapper (`lb_bench`) and live-frames generator (`bench_gen`) rebuild every frame
//! from, and which the bench drivers write.

use bytemuck::{Pod, Zeroable};

/// Largest template (bytes).
pub const MAX_FRAME: usize = 128;

/// The frame every iteration starts from, and how to vary it. The template comes first and
/// the struct is 8-aligned, so the eBPF side copies it with aligned 8-byte loads.
#[repr(C, align(8))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BenchFrame {
    pub bytes: [u8; MAX_FRAME],
    /// Template length: even, 14..=MAX_FRAME.
    pub len: u32,
    /// Counter bits XORed into the flow: 0 (one flow), 0xffff (65,536 source ports),
    /// 0xffff_ffff (source port and the low 16 bits of the source address).
    pub mask: u32,
    /// Iterations this CPU has run (the drivers check it against what they asked for).
    pub counter: u32,
    /// Offset of the TCP/UDP source port.
    pub sport_off: u16,
    /// Offset of the low 16 bits of the source address.
    pub src_off: u16,
    /// Offset of the TCP checksum (covers the port and, through the pseudo-header, the
    /// source address).
    pub l4_csum_off: u16,
    /// Offset of the IPv4 header checksum; 0 for IPv6.
    pub ip_csum_off: u16,
    pub _pad: u32,
}

// bytes, 3 u32, 4 u16, u32: no padding (Pod checks that too), 8-aligned.
const _: () = assert!(core::mem::size_of::<BenchFrame>() == 152);

impl BenchFrame {
    /// No template yet, the counter starting at `counter`.
    pub fn empty(counter: u32) -> Self {
        BenchFrame {
            counter,
            ..Zeroable::zeroed()
        }
    }

    /// `frame` (untagged IPv4 or IPv6 with TCP) varied by `mask`, continuing from `counter`;
    /// `None` if its length is not even or not in 14..=MAX_FRAME.
    pub fn tcp(frame: &[u8], mask: u32, counter: u32) -> Option<Self> {
        let len = frame.len();
        if !(14..=MAX_FRAME).contains(&len) || !len.is_multiple_of(2) {
            return None;
        }
        let mut bytes = [0u8; MAX_FRAME];
        bytes[..len].copy_from_slice(frame);
        let l3 = 14u16;
        let (sport, src, ip_csum) = if frame[12..14] == [0x86, 0xdd] {
            (l3 + 40, l3 + 8 + 14, 0)
        } else {
            (l3 + 20, l3 + 12 + 2, l3 + 10)
        };
        Some(BenchFrame {
            bytes,
            len: len as u32,
            mask,
            counter,
            sport_off: sport,
            src_off: src,
            // The TCP checksum sits 16 bytes into the header.
            l4_csum_off: sport + 16,
            ip_csum_off: ip_csum,
            _pad: 0,
        })
    }
}

/// `BENCH_TRACK` slots: the connection-table baseline's (`bench_track`) hits and misses.
pub const TRACK_HIT: u32 = 0;
pub const TRACK_MISS: u32 = 1;
