//! Fleet mode: the configuration and its revisions in etcd, shared by every node of a
//! fleet; the node's link to it; the local cache of what the node runs.

mod cache;
mod etcd;
mod link;
mod node;
mod start;

pub use cache::Cache;

/// The member a node tries first: spread over the members by the node's name, so that
/// the nodes of a fleet do not all lean on one.
pub fn first_member(f: &lb_control::FleetConfig) -> usize {
    let name = f.node.clone().unwrap_or_else(host_name);
    let h = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    (h % f.endpoints.len() as u64) as usize
}
pub use etcd::{
    Entry, Etcd, FleetError, FleetRevision, MAX_FLEET_REVISION_BYTES, MAX_TXN_REVISIONS,
};
pub use link::{LinkHandle, spawn};
pub use node::{Node, check_here, host_name};
pub use start::{Started, advertise, start};
