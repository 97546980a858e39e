//! Shared harness for the kernel tests: the real XDP program run with BPF_PROG_TEST_RUN,
//! packet builders, an independent checker (etherparse) for what comes out, and test hosts
//! in network namespaces.

pub mod cmd;
pub mod daemon;
pub mod docblocks;
pub mod fleet;
pub mod harness;
pub mod holds;
pub mod installed;
pub mod netns;
pub mod packets;
pub mod pki;
pub mod scrape;
pub mod topology;
