//! Fleet mode: the configuration and its revisions in etcd, shared by every node of a
//! fleet; the node's link to it; the local cache of what the node runs.

mod cache;
mod etcd;
mod link;
mod node;
mod start;

pub use cache::Cache;
pub use etcd::{Etcd, FleetError, FleetRevision, MAX_FLEET_REVISION_BYTES};
pub use link::{LinkHandle, spawn};
pub use node::{Node, check_here, host_name};
pub use start::{Started, advertise, start};
