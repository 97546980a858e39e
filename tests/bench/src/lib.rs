//! Shared pieces of the benchmark drivers: the command line and results files, the frame
//! templates, statistics, and the embedded wrapper object.

pub mod cli;
pub mod frame;
pub mod stats;

/// The benchmark wrapper and baselines (programs `lb_bench`, `bench_pass`, `bench_parse`),
/// and the forwarding-rate generator, sink and reflector (`bench_gen`, `bench_sink`,
/// `bench_reflect`).
pub static LB_BENCH: &[u8] = aya::include_bytes_aligned!(env!("LB_BENCH_OBJECT"));
