//! The XDP objects built by build.rs, embedded in the binary.

/// The balancer (program `lb_xdp`).
pub static LB_XDP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));
/// Decapsulation for backends (program `lb_decap`).
pub static LB_DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
