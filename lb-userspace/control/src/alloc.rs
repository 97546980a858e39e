//! Ids and LB_RINGS windows: handed out lowest first, never one still in use. Pure, so that
//! a change is planned (and refused when it cannot fit) before anything is written.

use std::collections::BTreeSet;

/// Ring windows in use, as (offset, size), within a capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows {
    used: BTreeSet<(u32, u32)>,
    capacity: u32,
}

impl Windows {
    pub fn new(capacity: u32) -> Self {
        Windows {
            used: BTreeSet::new(),
            capacity,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.used.iter().map(|(_, s)| *s as u64).sum()
    }

    /// Mark a window in use (adopted from pinned maps).
    pub fn take(&mut self, offset: u32, size: u32) {
        self.used.insert((offset, size));
    }

    /// The first gap of `size` slots, marked in use.
    pub fn alloc(&mut self, size: u32) -> Option<u32> {
        let mut at = 0u32;
        for (o, s) in &self.used {
            if *o >= at && o - at >= size {
                break;
            }
            at = at.max(o + s);
        }
        (at as u64 + size as u64 <= self.capacity as u64).then(|| {
            self.used.insert((at, size));
            at
        })
    }

    pub fn free(&mut self, offset: u32) {
        self.used.retain(|(o, _)| *o != offset);
    }
}

/// Ids in 1..limit not in `taken`, lowest first (0 means "none" in the maps).
#[derive(Debug, Clone)]
pub struct Ids {
    taken: BTreeSet<u32>,
    next: u32,
    limit: u32,
}

impl Ids {
    pub fn new(taken: impl IntoIterator<Item = u32>, limit: u32) -> Self {
        Ids {
            taken: taken.into_iter().collect(),
            next: 1,
            limit,
        }
    }

    pub fn alloc(&mut self) -> Option<u32> {
        let id = (self.next..self.limit).find(|id| !self.taken.contains(id))?;
        self.taken.insert(id);
        // Ids below are all taken: scanning them again made large applies quadratic.
        self.next = id + 1;
        Some(id)
    }
}
