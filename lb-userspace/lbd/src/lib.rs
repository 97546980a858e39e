//! `lbd`, the balancer daemon: loads (or adopts) the dataplane, keeps it true to the
//! configuration through the controller, probes backends, serves the control API and the
//! metrics, records every change as a revision.
//!
//! A library as well as a binary so that the test suite runs the same code as a process
//! and checks the documented commands against the real parser.

mod announce;
mod cli;
mod fleet;
mod handler;
mod links;
mod metrics;
mod passive;
mod probe;
mod run;
mod server;
mod store;

pub use cli::{command, main, parses};
pub use probe::{spawn as spawn_check, spawn_agent};
pub use run::{OnExit, run};
pub use store::{Revision, Store};
