//! The kernel's maps as the controller's [`Maps`]: the seam through which every decision of
//! lb-control reaches the dataplane.

use lb_common::{Backend, GlobalConfig, VipKey, VipMeta};
use lb_control::{MapError, Maps};

use crate::dataplane::{Dataplane, DataplaneError};

fn to_map_error(op: &'static str, map: &'static str) -> impl FnOnce(DataplaneError) -> MapError {
    move |e| {
        let map = match &e {
            DataplaneError::Map { map, .. } | DataplaneError::MissingMap(map) => map,
            _ => map,
        };
        MapError {
            map,
            op,
            detail: e.to_string(),
        }
    }
}

impl Maps for Dataplane {
    fn set_config(&mut self, cfg: &GlobalConfig) -> Result<(), MapError> {
        Dataplane::set_config(self, cfg).map_err(to_map_error("writing", lb_common::MAP_CONFIG))
    }

    fn set_new_rate(&mut self, rate: &[u64; 4]) -> Result<(), MapError> {
        Dataplane::set_new_rate(self, rate)
            .map_err(to_map_error("writing", lb_common::MAP_NEW_RATE))
    }

    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), MapError> {
        Dataplane::set_vip(self, key, meta).map_err(to_map_error("writing", lb_common::MAP_VIPS))
    }

    fn remove_vip(&mut self, key: &VipKey, vip_id: u32) -> Result<(), MapError> {
        Dataplane::remove_vip(self, key, vip_id)
            .map_err(to_map_error("removing from", lb_common::MAP_VIPS))
    }

    fn vip_entries(&mut self) -> Result<Vec<(VipKey, VipMeta)>, MapError> {
        Dataplane::vip_entries(self).map_err(to_map_error("reading", lb_common::MAP_VIPS))
    }

    fn rebuild_vip_filter(&mut self) -> Result<(), MapError> {
        Dataplane::rebuild_vip_filter(self)
            .map_err(to_map_error("rebuilding", lb_common::MAP_VIP_FILTER))
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError> {
        Dataplane::set_backend(self, id, backend)
            .map_err(to_map_error("writing", lb_common::MAP_BACKENDS))
    }

    fn backend_entries(&mut self) -> Result<Vec<(u32, Backend)>, MapError> {
        Dataplane::backend_entries(self).map_err(to_map_error("reading", lb_common::MAP_BACKENDS))
    }

    fn update_ring(&mut self, offset: u32, old: &[u32], new: &[u32]) -> Result<usize, MapError> {
        Dataplane::update_ring(self, offset, old, new)
            .map_err(to_map_error("writing", lb_common::MAP_RINGS))
    }

    fn read_ring(&mut self, offset: u32, len: usize) -> Result<Vec<u32>, MapError> {
        Dataplane::read_ring(self, offset, len)
            .map_err(to_map_error("reading", lb_common::MAP_RINGS))
    }
}
