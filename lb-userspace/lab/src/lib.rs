//! Labs in network namespaces: the demo (`lb-demo`), its HTTP backend, and the namespace
//! helpers the tests and benchmarks build their topologies with. Never linked into lbd.

pub mod bpffs;
pub mod demo;
pub mod netns;
