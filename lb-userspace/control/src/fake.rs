//! An in-memory map set for tests: the same contract as the kernel's maps, and a switch that
//! makes the Nth write (or every write to one map) fail, so that tests can prove what a
//! partial failure leaves behind.

use std::collections::{BTreeMap, HashMap};

use lb_common::{Backend, GlobalConfig, VipKey, VipMeta};

use crate::maps::{MapError, Maps};

/// When writes fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Writes succeed until this many have been made, then every write fails.
    AfterWrites(usize),
    /// Every write to this map fails.
    Map(&'static str),
}

#[derive(Debug, Clone, Default)]
pub struct MemMaps {
    pub config: GlobalConfig,
    pub new_rate: [u64; 4],
    pub vips: BTreeMap<VipKey, VipMeta>,
    /// LB_VIP_BY_ID: id -> the key it serves.
    pub by_id: BTreeMap<u32, VipKey>,
    pub backends: BTreeMap<u32, Backend>,
    /// LB_RINGS: sparse, unset slots read as 0 as in the kernel's array.
    pub rings: HashMap<u32, u32>,
    /// Successful writes so far (each entry, each ring slot written).
    pub writes: usize,
    pub fault: Fault,
}

impl MemMaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fail from the write after the next `n` on.
    pub fn fail_after(&mut self, n: usize) {
        self.fault = Fault::AfterWrites(self.writes + n);
    }

    pub fn heal(&mut self) {
        self.fault = Fault::None;
    }

    /// The slots of a ring window as the dataplane sees them.
    pub fn ring(&self, offset: u32, len: u32) -> Vec<u32> {
        (offset..offset + len)
            .map(|i| self.rings.get(&i).copied().unwrap_or(0))
            .collect()
    }

    fn write(&mut self, map: &'static str, op: &'static str) -> Result<(), MapError> {
        let fails = match self.fault {
            Fault::None => false,
            Fault::AfterWrites(n) => self.writes >= n,
            Fault::Map(m) => m == map,
        };
        if fails {
            return Err(MapError {
                map,
                op,
                detail: "injected fault".into(),
            });
        }
        self.writes += 1;
        Ok(())
    }
}

impl Maps for MemMaps {
    fn set_config(&mut self, cfg: &GlobalConfig) -> Result<(), MapError> {
        self.write(lb_common::MAP_CONFIG, "writing")?;
        self.config = *cfg;
        Ok(())
    }

    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), MapError> {
        self.write(lb_common::MAP_VIPS, "writing")?;
        if let Some(old) = self.vips.insert(*key, *meta)
            && old.vip_id != meta.vip_id
            && self.by_id.get(&old.vip_id) == Some(key)
        {
            self.by_id.remove(&old.vip_id);
        }
        if meta.flags & lb_common::VIP_F_FRAGMENTS_ONLY == 0 {
            self.by_id.insert(meta.vip_id, *key);
        }
        Ok(())
    }

    fn remove_vip(&mut self, key: &VipKey, vip_id: u32) -> Result<(), MapError> {
        if self.vips.get(key).is_none_or(|m| m.vip_id != vip_id) {
            return Ok(());
        }
        self.write(lb_common::MAP_VIPS, "removing from")?;
        if self.by_id.get(&vip_id) == Some(key) {
            self.by_id.remove(&vip_id);
        }
        self.vips.remove(key);
        Ok(())
    }

    fn set_new_rate(&mut self, rate: &[u64; 4]) -> Result<(), MapError> {
        self.write(lb_common::MAP_NEW_RATE, "writing")?;
        self.new_rate = *rate;
        Ok(())
    }

    fn vip_entries(&mut self) -> Result<Vec<(VipKey, VipMeta)>, MapError> {
        Ok(self.vips.iter().map(|(k, m)| (*k, *m)).collect())
    }

    fn rebuild_vip_filter(&mut self) -> Result<(), MapError> {
        let backed: Vec<(u32, VipKey)> = self
            .vips
            .iter()
            .filter(|(_, m)| m.flags & lb_common::VIP_F_FRAGMENTS_ONLY == 0)
            .map(|(k, m)| (m.vip_id, *k))
            .collect();
        self.by_id.retain(|id, k| backed.contains(&(*id, *k)));
        Ok(())
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError> {
        self.write(lb_common::MAP_BACKENDS, "writing")?;
        if backend.family == 0 {
            self.backends.remove(&id);
        } else {
            self.backends.insert(id, *backend);
        }
        Ok(())
    }

    fn backend_entries(&mut self) -> Result<Vec<(u32, Backend)>, MapError> {
        Ok(self.backends.iter().map(|(id, b)| (*id, *b)).collect())
    }

    fn update_ring(&mut self, offset: u32, old: &[u32], new: &[u32]) -> Result<usize, MapError> {
        let mut written = 0;
        for (i, slot) in new.iter().enumerate() {
            if old.get(i) != Some(slot) {
                self.write(lb_common::MAP_RINGS, "writing")?;
                self.rings.insert(offset + i as u32, *slot);
                written += 1;
            }
        }
        Ok(written)
    }

    fn read_ring(&mut self, offset: u32, len: usize) -> Result<Vec<u32>, MapError> {
        Ok(self.ring(offset, len as u32))
    }
}
