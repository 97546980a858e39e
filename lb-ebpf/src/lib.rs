//! Pieces shared by the XDP programs: packet access, checksums, L2 parsing, zeroing.
//!
//! The programs themselves are the binaries (`lb-xdp` for the balancer, `lb-decap` for
//! backends); maps are declared there so each object carries only its own maps.
#![no_std]
// The aya idiom: packet accessors fail with `()` (out of bounds), and every caller maps that
// to its own reason.
#![allow(clippy::result_unit_err)]

#[cfg(target_arch = "bpf")]
pub mod csum;
#[cfg(target_arch = "bpf")]
pub mod l2;
#[cfg(target_arch = "bpf")]
pub mod ptr;
pub mod zero;
