//! The template that the lb-bench object's wrapper (`lb_bench`) and live-frames generator
//! (`bench_gen`) rebuild every frame from: the value of their per-CPU map `BENCH_FRAME`.

/// Largest template (bytes); the eBPF side refuses bigger ones.
pub const MAX_FRAME: usize = 128;

/// Same layout as `BenchFrame` in lb-ebpf/src/bin/lb-bench/main.rs.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct BenchFrame {
    pub bytes: [u8; MAX_FRAME],
    pub len: u32,
    /// Counter bits XORed into the flow: source port (low 16), low 16 bits of the source
    /// address (high 16).
    pub mask: u32,
    /// Iterations this CPU has run.
    pub counter: u32,
    pub sport_off: u16,
    pub src_off: u16,
    pub l4_csum_off: u16,
    pub ip_csum_off: u16,
    pub _pad: u32,
}

// SAFETY: repr(C) plain data without padding (bytes, 3 u32, 4 u16, u32: 152 bytes, align 8).
unsafe impl aya::Pod for BenchFrame {}
const _: () = assert!(std::mem::size_of::<BenchFrame>() == 152);

#[derive(Debug, thiserror::Error)]
#[error(
    "a benchmark frame of {0} bytes: the template takes even lengths from 14 to {MAX_FRAME} \
     (an untagged TCP frame of IPv4 or IPv6)"
)]
pub struct FrameSize(pub usize);

impl BenchFrame {
    /// `frame` (untagged IPv4 or IPv6 with TCP) varied by `mask`, continuing from `counter`.
    pub fn tcp(frame: &[u8], mask: u32, counter: u32) -> Result<Self, FrameSize> {
        let len = frame.len();
        if !(14..=MAX_FRAME).contains(&len) || !len.is_multiple_of(2) {
            return Err(FrameSize(len));
        }
        let mut bytes = [0u8; MAX_FRAME];
        bytes[..len].copy_from_slice(frame);
        let l3 = 14u16;
        let (sport, src, ip_csum) = if frame[12..14] == [0x86, 0xdd] {
            (l3 + 40, l3 + 8 + 14, 0)
        } else {
            (l3 + 20, l3 + 12 + 2, l3 + 10)
        };
        Ok(BenchFrame {
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

/// `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it in `ctx_in`: the frame spans the whole
/// buffer and arrives on `ingress_ifindex`, queue 0 (where live frames leave, and what
/// `bpf_fib_lookup` takes as the ingress).
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    for (i, v) in [0, len as u32, 0, ingress_ifindex, 0, 0].iter().enumerate() {
        md[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    md
}
