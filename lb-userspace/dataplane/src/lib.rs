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
pub use decap::{
    AttachReport, Attached, DECAP_MAPS, DECAP_REASONS, DEFAULT_PIN_DIR as DECAP_PIN_DIR, Decap,
    DecapError, DecapStatus, LINK_PIN as DECAP_LINK_PIN, LinkState, attach_pinned as decap_attach,
    detach_pinned as decap_detach, status as decap_status,
};
pub use pins::{PINNED_MAPS, link_pin, on_bpffs, purge_pins};
pub use programs::{LB_DECAP, LB_XDP};
