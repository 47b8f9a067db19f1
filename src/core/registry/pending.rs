//! Joins to the allocation table that registering leaves pending, and [`Registry::settle`],
//! which makes them.
//!
//! Registering writes only its own registration shard (a thread's block of ids stays in
//! one); the allocation table is shared by every registering thread, and writing it on each
//! register moved its cache lines between cores (16 threads registering at once paid more in
//! our tables than in the driver's query). So a registration's joins wait in its shard until
//! the next check plans its queries, or until the shard holds [`PENDING_LIMIT`] of them.

use super::entries::RegistrationEntry;
use super::{shard_of_address, RegistrationId, Registry, RegistrationShard};
use crate::core::driver::PointerInfo;
use crate::core::sync::lock;

/// Joins a registration shard keeps pending before it makes them itself.
pub(super) const PENDING_LIMIT: usize = 1024;

impl Registry {
    /// Adds a registration to its shard with its joins pending; a shard past
    /// [`PENDING_LIMIT`] makes them at once.
    pub(super) fn add_pending(&self, shard: &mut RegistrationShard, id: RegistrationId, registration: RegistrationEntry, answers: &[PointerInfo]) {
        shard.add_pending(id, registration, answers);
        if shard.pending.len() >= PENDING_LIMIT {
            // Between checks far apart (or with none), pending joins would pile up: a
            // thousand are made at once, one lock per allocation shard they touch.
            self.settle_shard(shard);
        }
    }

    /// Makes the joins that registering left pending (see `RegistrationShard::pending`):
    /// before a check plans its queries, so that it asks about every allocation registered
    /// before it began.
    pub fn settle(&self) {
        for shard in self.registrations.iter() {
            self.settle_shard(&mut lock(shard));
        }
    }

    pub(super) fn settle_shard(&self, shard: &mut RegistrationShard) {
        if shard.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut shard.pending);
        // Registrations removed meanwhile are skipped (ids are never reused); the others are
        // joined now, under this shard's lock, so that an unregister sees `joined` and the
        // allocations' members agree.
        pending.retain(|&(_, _, id)| shard.get_mut(id).map(|r| r.joined = true).is_some());
        pending.sort_unstable_by_key(|&(address, ..)| shard_of_address(address));
        for group in pending.chunk_by(|a, b| shard_of_address(a.0) == shard_of_address(b.0)) {
            let mut allocations = lock(&self.allocations[shard_of_address(group[0].0)]);
            for &(address, seen, id) in group {
                allocations.join(address, seen, id);
            }
        }
        // Its room is given back (not kept for the next ones): a registry's memory per
        // registration is measured with no check running.
    }

}
