//! The kernel side of the balancer: the XDP objects built by build.rs and embedded here,
//! loading and adopting pinned maps, attaching, typed map writes (the controller's [`Maps`]
//! through [`Dataplane`]), batched ring writes, counters, and the backends' decapsulation
//! program.
//!
//! [`Maps`]: lb_control::Maps

mod batch;
mod counters;
mod dataplane;
mod decap;
mod kernel_maps;
mod pins;
mod programs;

pub use aya::programs::XdpMode;
pub use batch::update_u32;
pub use counters::{Counters, pinned_reasons};
pub use dataplane::{Dataplane, DataplaneError, LoadOptions, PROGRAM};
pub use decap::Decap;
pub use pins::{PINNED_MAPS, link_pin, on_bpffs, purge_pins};
pub use programs::{LB_DECAP, LB_XDP};
