//! Shared harness for the kernel tests: the real XDP program run with BPF_PROG_TEST_RUN,
//! packet builders, and an independent checker (etherparse) for what comes out.

pub mod harness;
pub mod packets;
