//! Types and pure logic shared by the XDP dataplane and the userspace control plane.
//!
//! Everything that crosses the kernel/userspace boundary lives here so that both sides agree
//! on layout (map keys and values) and on behaviour (the flow hash): the control plane can
//! predict exactly which backend the dataplane picks for a flow.
#![no_std]

pub mod bench;
pub mod hash;
pub mod maps;
pub mod reason;

pub use hash::{flow_hash, source_hash};
pub use maps::*;
pub use reason::Reason;
