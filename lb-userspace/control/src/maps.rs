//! The map writes and reads the controller makes, as a trait: the kernel's maps implement it
//! (lb-dataplane), and so does an in-memory set that can fail on demand (`MemMaps`), so that
//! every decision and every partial failure is testable without root.

use lb_common::{Backend, GlobalConfig, VipKey, VipMeta};
use thiserror::Error;

/// A map operation that failed: which map, what was being done, and the cause.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{op} {map} failed: {detail}")]
pub struct MapError {
    pub map: &'static str,
    pub op: &'static str,
    pub detail: String,
}

/// What the controller needs of the dataplane's maps. Writes are single-entry or, for ring
/// windows, the changed slots only; reads serve adoption of pinned state.
pub trait Maps {
    /// Node-wide settings (LB_CONFIG).
    fn set_config(&mut self, cfg: &GlobalConfig) -> Result<(), MapError>;
    /// The connection table's new-entry and SYN-lookup rates (LB_NEW_RATE; 0: default).
    fn set_new_rate(&mut self, rate: &[u64; 4]) -> Result<(), MapError>;
    /// Insert or replace a VIP entry (LB_VIPS, and its LB_VIP_BY_ID record).
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), MapError>;
    /// Remove a VIP entry if it still belongs to `vip_id` (a rename in one apply may have
    /// given the key to another VIP already).
    fn remove_vip(&mut self, key: &VipKey, vip_id: u32) -> Result<(), MapError>;
    /// Every VIP entry, fragment aliases included.
    fn vip_entries(&mut self) -> Result<Vec<(VipKey, VipMeta)>, MapError>;
    /// Recompute the address filter from LB_VIPS.
    fn rebuild_vip_filter(&mut self) -> Result<(), MapError>;
    /// Write backend `id` (a default `Backend` clears it).
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError>;
    /// Every backend slot in use (family set).
    fn backend_entries(&mut self) -> Result<Vec<(u32, Backend)>, MapError>;
    /// Write the slots of the ring window at `offset` where `new` differs from `old`;
    /// returns how many were written.
    fn update_ring(&mut self, offset: u32, old: &[u32], new: &[u32]) -> Result<usize, MapError>;
    /// Read `len` slots of the ring window at `offset`.
    fn read_ring(&mut self, offset: u32, len: usize) -> Result<Vec<u32>, MapError>;
}
