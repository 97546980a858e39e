//! The dataplane's counters, read from the maps pinned by a running (or stopped) daemon and
//! summed over CPUs: the one reader that metrics, `lbctl stats` and the demo share.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    BackendStats, FlowEntry, FlowKey, MAP_BACKEND_STATS, MAP_FLOWS, MAP_STATS, MAP_VIP_STATS,
    Reason, VipStats,
};

use crate::dataplane::DataplaneError;

/// Counter maps opened from their pins; a map that cannot be opened reads as absent.
pub struct Counters {
    reasons: Option<PerCpuArray<MapData, u64>>,
    vips: Option<PerCpuArray<MapData, VipStats>>,
    backends: Option<PerCpuArray<MapData, BackendStats>>,
    flows: Option<HashMap<MapData, FlowKey, FlowEntry>>,
}

fn pinned(pin_dir: &Path, name: &str) -> Option<MapData> {
    MapData::from_pin(pin_dir.join(name)).ok()
}

impl Counters {
    pub fn open(pin_dir: &Path) -> Counters {
        Counters {
            reasons: pinned(pin_dir, MAP_STATS)
                .and_then(|d| PerCpuArray::try_from(Map::PerCpuArray(d)).ok()),
            vips: pinned(pin_dir, MAP_VIP_STATS)
                .and_then(|d| PerCpuArray::try_from(Map::PerCpuArray(d)).ok()),
            backends: pinned(pin_dir, MAP_BACKEND_STATS)
                .and_then(|d| PerCpuArray::try_from(Map::PerCpuArray(d)).ok()),
            flows: pinned(pin_dir, MAP_FLOWS)
                .and_then(|d| HashMap::try_from(Map::LruHashMap(d)).ok()),
        }
    }

    /// Every reason's count, or None when LB_STATS is not pinned there.
    pub fn reasons(&self) -> Option<Vec<(Reason, u64)>> {
        let m = self.reasons.as_ref()?;
        Some(
            Reason::ALL
                .iter()
                .map(|r| {
                    let v = m.get(&(*r as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
                    (*r, v)
                })
                .collect(),
        )
    }

    pub fn vip(&self, vip_id: u32) -> Option<VipStats> {
        let s = self.vips.as_ref()?.get(&vip_id, 0).ok()?;
        Some(s.iter().fold(VipStats::default(), |a, x| VipStats {
            packets: a.packets + x.packets,
            bytes: a.bytes + x.bytes,
            new_flows: a.new_flows + x.new_flows,
        }))
    }

    pub fn backend(&self, id: u32) -> Option<BackendStats> {
        let s = self.backends.as_ref()?.get(&id, 0).ok()?;
        Some(s.iter().fold(BackendStats::default(), |a, x| a + *x))
    }

    /// Entries in the connection table (a walk of LB_FLOWS: costs with its size).
    pub fn flows(&self) -> Option<u64> {
        Some(self.flows.as_ref()?.keys().filter(|k| k.is_ok()).count() as u64)
    }
}

/// Every reason's count from the maps pinned under `pin_dir`.
pub fn pinned_reasons(pin_dir: &Path) -> Result<Vec<(Reason, u64)>, DataplaneError> {
    Counters::open(pin_dir)
        .reasons()
        .ok_or_else(|| DataplaneError::PinDir {
            path: pin_dir.join(MAP_STATS),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "LB_STATS is not pinned there",
            ),
        })
}
