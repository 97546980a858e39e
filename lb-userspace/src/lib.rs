//! The control plane's library: loading the dataplane, building rings, writing maps.

pub mod dataplane;
pub mod decap;
pub mod model;
pub mod programs;
pub mod ring;
