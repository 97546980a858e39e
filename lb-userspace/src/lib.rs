//! The control plane's library: loading the dataplane, building rings, writing maps.

pub mod programs;
