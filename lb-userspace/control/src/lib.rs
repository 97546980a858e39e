//! The balancer's decisions, without the kernel: the configuration (schema, validation,
//! edits), Maglev and round-robin rings, the backend state machine, and the reconciliation
//! of the desired state into the dataplane's maps through the [`Maps`] trait.
//!
//! No aya and no tokio: everything here is unit-tested without root, against [`MemMaps`]
//! (feature `fake`), which can fail any write on demand.

mod alloc;
mod announce;
mod backend;
mod config;
mod controller;
mod edit;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod fleet;
mod maps;
mod model;
mod observer;
mod passive;
mod probe;
mod ring;
#[cfg(test)]
mod tests;

pub use alloc::{Ids, Windows};
pub use announce::{Routes, VipAnnouncement, Withheld, decide, render, settle_ms};
pub use backend::{Admin, BackendState, ERROR_WINDOW, Liveness, State, Transition};
pub use config::*;
pub use controller::*;
pub use edit::*;
#[cfg(any(test, feature = "fake"))]
pub use fake::{Fault, MemMaps};
pub use fleet::{FleetTextError, PeerNewest, behind, check_fleet_text, check_node_text, compose};
pub use maps::{MapError, Maps};
pub use model::predict;
pub use observer::Observer;
pub use passive::{Counts, Tracker, Verdict};
pub use probe::{AgentSays, Probe, parse_agent};
pub use ring::{RingError, RingMember, is_prime, maglev, round_robin};
