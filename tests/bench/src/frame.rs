//! The template that the lb-bench object's wrapper (`lb_bench`) and live-frames generator
//! (`bench_gen`) rebuild every frame from: the value of their per-CPU map `BENCH_FRAME`.

pub use lb_common::bench::{BenchFrame, MAX_FRAME};

#[derive(Debug, thiserror::Error)]
#[error(
    "a benchmark frame of {0} bytes: the template takes even lengths from 14 to {MAX_FRAME} \
     (an untagged TCP frame of IPv4 or IPv6)"
)]
pub struct FrameSize(pub usize);

/// `frame` (untagged IPv4 or IPv6 with TCP) as a template varied by `mask`, continuing from
/// `counter`.
pub fn template(frame: &[u8], mask: u32, counter: u32) -> Result<BenchFrame, FrameSize> {
    BenchFrame::tcp(frame, mask, counter).ok_or(FrameSize(frame.len()))
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
