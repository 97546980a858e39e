//! The XDP objects built by build.rs, embedded in the binary.

/// The balancer (program `lb_xdp`).
pub static LB_XDP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));
/// Decapsulation for backends (program `lb_decap`).
pub static LB_DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
/// Benchmark wrapper and baselines (programs `lb_bench`, `bench_pass`, `bench_parse`), and
/// the forwarding-rate generator, sink and reflector (`bench_gen`, `bench_sink`,
/// `bench_reflect`).
pub static LB_BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench"));
