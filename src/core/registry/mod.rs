//! The registrations, and the allocations they live in.
//!
//! Two sharded tables:
//! - registrations by id: the label, device, and each piece with its last verdict;
//! - allocations by query address (the base of an allocation or VMM mapping): the
//!   fingerprint of the driver's last answer there and the registrations inside it.
//!
//! A check asks the driver once per allocation, compares the answer's fingerprint with the
//! last one, and only reclassifies the registrations of allocations whose answer changed: its
//! cost follows allocations, not registrations (a million tensors in ten thousand arenas cost
//! ten thousand queries). Locks are per shard and held only to copy or update a few entries,
//! never while the driver is asked, so registering never waits for a check to finish.
//!
//! Registering writes only its own registration shard (a thread's block of ids stays in one):
//! the joins to the allocation table, which every registering thread would otherwise write,
//! wait in that shard until [`Registry::settle`] makes them, before each check plans its
//! queries. A registration made during a check is asked about from the next one, as it was
//! when the join was immediate (the check's plan was already made).

use crate::core::sync::lock;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::core::driver::{DriverError, PointerInfo};
use crate::core::verdict::{classify_piece, Piece, Verdict};

mod allocations;
mod batches;
mod entries;
mod fingerprint;
mod hasher;
pub(crate) use hasher::IntegerHasher;
mod ids;
mod pending;
mod together;
mod values;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod batch_tests;

use allocations::{AllocationShard, FAILED};
use batches::{Batches, Transition};
pub use allocations::is_mark;
use entries::{verdict_of, RegistrationEntry, RegistrationShard};
pub use fingerprint::fingerprint;
use ids::{drop_block, next_id, next_ids, ID_BLOCK};
pub use ids::is_from_this_copy;
pub use values::{Change, RegistrationFigures, RegistrationInfo, RegistryCounts, Stale, Tally};

/// Identifies a registration. Never 0 and unique in the process, so an id from another
/// monitor is never mistaken for one of this monitor's.
pub type RegistrationId = u64;

const SHARDS: usize = 64;


/// A shard on cache lines of its own: without the padding, neighbouring shards' locks share
/// a line, and threads working on different shards still stall each other.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// All registrations of one monitor.
pub struct Registry {
    registrations: Box<[Padded<Mutex<RegistrationShard>>]>,
    allocations: Box<[Padded<Mutex<AllocationShard>>]>,
    batches: Batches,
    // Changed only by checks and unregistering: rarely contended.
    violating: AtomicU64,
    failing: AtomicU64,
    violating_and_failing: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}


fn shard_of_id(id: RegistrationId) -> usize {
    // A thread's block of ids stays in one shard: consecutive registrations on one thread
    // then find that shard's lock and entries in their own core's cache, and threads
    // registering at once mostly hold different shards.
    ((id / ID_BLOCK) as usize) % SHARDS
}

fn shard_of_address(address: u64) -> usize {
    // Allocations are at least 512-byte aligned, often 2 MiB: mix the bits before picking.
    ((address.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize) % SHARDS
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry {
            registrations: (0..SHARDS).map(|_| Padded(Mutex::new(RegistrationShard::default()))).collect(),
            allocations: (0..SHARDS).map(|_| Padded(Mutex::new(AllocationShard::default()))).collect(),
            batches: Batches::default(),
            violating: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            violating_and_failing: AtomicU64::new(0),
        }
    }

    /// Adds a registration that was found resident. `answers` are the driver's answers at
    /// each piece's `query_at`, as seen during registration, in piece order.
    pub fn insert(&self, label: &str, device: i32, pieces: &[Piece], answers: &[PointerInfo]) -> RegistrationId {
        let mut id = next_id();
        let registration = RegistrationEntry::new(label, device, pieces);
        // The registration exists before any allocation names it, so a check that finds it
        // through an allocation can always read it.
        {
            let mut shard = lock(&self.registrations[shard_of_id(id)]);
            if shard.ids.last().is_some_and(|&newest| newest > id) {
                // This thread's block is older than ids that went to the shard since: a new
                // block, whose ids are newer than any handed out, goes at the end of its shard.
                drop(shard);
                drop_block();
                id = next_id();
                shard = lock(&self.registrations[shard_of_id(id)]);
            }
            self.add_pending(&mut shard, id, registration, answers);
        }
        id
    }

    /// Removes a registration; `None` if the id is not registered (any more). Returns nothing
    /// of it: unregistering is on the engine's hot path, and a copy of the label would cost an
    /// allocation per call.
    pub fn remove(&self, id: RegistrationId) -> Option<()> {
        let registration = {
            let mut shard = lock(&self.registrations[shard_of_id(id)]);
            let Some(registration) = shard.remove(id) else {
                drop(shard);
                return self.remove_batched(id);
            };
            shard.count -= 1;
            shard.tracked_bytes -= registration.size();
            shard.count_device(registration.device, false);
            if !registration.joined {
                // Registered and unregistered between two checks (a buffer per request):
                // its joins are the newest pending ones, and go with it.
                while shard.pending.last().is_some_and(|&(_, _, pending)| pending == id) {
                    shard.pending.pop();
                }
            }
            registration
        };
        self.recount(verdict_of(registration.verdict), registration.failing, Verdict::Resident, false);
        // Not joined yet: no allocation names it, and its pending joins will be skipped.
        let joined = if registration.joined { registration.pieces.as_slice() } else { &[] };
        for tracked in joined {
            let address = tracked.piece.query_at;
            lock(&self.allocations[shard_of_address(address)]).leave(address, id);
        }
        Some(())
    }

    /// The registration with this id, if registered.
    pub fn get(&self, id: RegistrationId) -> Option<RegistrationInfo> {
        let found = lock(&self.registrations[shard_of_id(id)]).get(id).map(|r| r.info(id));
        found.or_else(|| self.batches.find(id).and_then(|batch| lock(&batch).get(id)))
    }

    /// A copy of every registration, in id order.
    pub fn snapshot(&self) -> Vec<RegistrationInfo> {
        let mut all = Vec::new();
        for shard in self.registrations.iter() {
            let shard = lock(shard);
            all.extend(shard.iter().map(|(id, r)| r.info(id)));
        }
        self.batches.each(|batch| batch.snapshot(&mut all));
        all.sort_unstable_by_key(|r| r.id);
        all
    }

    /// The devices that hold registrations now, in ordinal order.
    pub fn devices(&self) -> Vec<i32> {
        let mut devices: Vec<i32> = Vec::new();
        for shard in self.registrations.iter() {
            for &(device, _) in lock(shard).per_device.iter() {
                if !devices.contains(&device) {
                    devices.push(device);
                }
            }
        }
        self.batches.each(|batch| batch.devices(&mut devices));
        devices.sort_unstable();
        devices
    }

    /// Registrations and bytes per (device, verdict), for metrics: counted under each shard's
    /// lock in turn, without copying labels or pieces.
    pub fn tally(&self) -> Vec<RegistrationFigures> {
        let mut tallies: Vec<RegistrationFigures> = Vec::new();
        let mut count = |device: i32, verdict: Verdict, size: u64| match tallies.iter_mut().find(|t| t.device == device && t.verdict == verdict) {
            Some(t) => {
                t.registrations += 1;
                t.bytes += size;
            }
            None => tallies.push(RegistrationFigures { device, verdict, registrations: 1, bytes: size }),
        };
        for shard in self.registrations.iter() {
            let shard = lock(shard);
            for (_, registration) in shard.iter() {
                count(registration.device, verdict_of(registration.verdict), registration.size());
            }
        }
        self.batches.each(|batch| batch.each(&mut count));
        tallies.sort_unstable_by_key(|t| (t.device, t.verdict as i32));
        tallies
    }

    /// The counts.
    pub fn counts(&self) -> RegistryCounts {
        let mut counts = RegistryCounts {
            violating: self.violating.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed),
            violating_and_failing: self.violating_and_failing.load(Ordering::Relaxed),
            ..Default::default()
        };
        for shard in self.registrations.iter() {
            let mut shard = lock(shard);
            // The allocations are counted below: with every registration in them.
            self.settle_shard(&mut shard);
            counts.registrations += shard.count;
            counts.tracked_bytes += shard.tracked_bytes;
        }
        self.batches.each(|batch| {
            counts.registrations += batch.live;
            counts.tracked_bytes += batch.live_bytes;
        });
        for shard in self.allocations.iter() {
            counts.allocations += lock(shard).map.len() as u64;
        }
        counts
    }

    /// Number of allocation shards (a check walks them one by one).
    pub fn allocation_shards(&self) -> usize {
        self.allocations.len()
    }

    /// The addresses of allocation shard `shard` with their last fingerprints, appended to
    /// `out`; returns the shard's generation. The lock is held only for the copy.
    pub fn allocation_addresses(&self, shard: usize, out: &mut Vec<(u64, u64)>) -> u64 {
        let shard = lock(&self.allocations[shard]);
        out.extend(shard.map.iter().map(|(&address, a)| (address, a.fingerprint)));
        shard.generation
    }

    /// The generation of each allocation shard, in shard order.
    pub fn allocation_generations(&self, out: &mut Vec<u64>) {
        out.clear();
        out.extend(self.allocations.iter().map(|shard| lock(shard).generation));
    }

    /// Whether an answer at `address` differs from the one its members were judged by.
    pub fn is_unchanged(last_fingerprint: u64, answer: &Result<PointerInfo, DriverError>) -> bool {
        match answer {
            Ok(info) => last_fingerprint == fingerprint(info),
            Err(_) => last_fingerprint == FAILED,
        }
    }

    /// The fingerprint [`Registry::apply`] records for an answer.
    pub fn fingerprint_of(answer: &Result<PointerInfo, DriverError>) -> u64 {
        match answer {
            Ok(info) => fingerprint(info),
            Err(_) => FAILED,
        }
    }

    /// Judges again every registration inside the allocation at `address` by `answer`, and
    /// records the answer as the one they were judged by. Returns what changed.
    ///
    /// `judged_by` is the fingerprint the caller's plan had for this address when it asked.
    /// If the allocation holds another value now, it changed after the plan was made — a
    /// registration joined having seen another answer (perhaps newer than `answer`), or the
    /// allocation was unregistered and registered again at the same address — so `answer` may
    /// be older than what its members were registered against: nothing is judged, and
    /// [`Stale`] tells the value to plan with, so that the next check asks again.
    pub fn apply(&self, address: u64, answer: &Result<PointerInfo, DriverError>, judged_by: u64) -> Result<Vec<Change>, Stale> {
        let (members, batches) = {
            let mut guard = lock(&self.allocations[shard_of_address(address)]);
            let Some(allocation) = guard.map.get_mut(&address) else { return Ok(Vec::new()) };
            if allocation.fingerprint != judged_by {
                return Err(Stale { current: allocation.fingerprint });
            }
            allocation.fingerprint = Registry::fingerprint_of(answer);
            guard.members(address)
        };
        let mut changes = Vec::new();
        for id in members {
            let mut shard = lock(&self.registrations[shard_of_id(id)]);
            let Some(registration) = shard.get_mut(id) else { continue };
            let device = registration.device;
            for tracked in registration.pieces.as_mut_slice().iter_mut().filter(|t| t.piece.query_at == address) {
                match answer {
                    Ok(info) => {
                        tracked.verdict = classify_piece(&tracked.piece, device, info) as u8;
                        tracked.failing = false;
                    }
                    // The last verdict stays: a failed query says nothing about the memory.
                    Err(_) => tracked.failing = true,
                }
            }
            let verdict = registration.judged();
            let failing = registration.pieces.as_slice().iter().any(|t| t.failing);
            let before = (verdict_of(registration.verdict), registration.failing);
            registration.verdict = verdict as u8;
            registration.failing = failing;
            if before != (verdict, failing) {
                self.changed((before, (verdict, failing)), registration.info(id), answer, &mut changes);
            }
        }
        for first in batches {
            let Some(batch) = self.batches.find(first) else { continue };
            lock(&batch).judge(address, answer, |transition, registration| self.changed(transition, registration, answer, &mut changes));
        }
        Ok(changes)
    }

    /// Counts a registration's change of state in a check (under the lock that holds it, so
    /// that counts follow the order of changes) and reports it: a query that started failing,
    /// a verdict that changed.
    fn changed(&self, ((from, was_failing), (verdict, failing)): Transition, registration: RegistrationInfo, answer: &Result<PointerInfo, DriverError>, changes: &mut Vec<Change>) {
        self.recount(from, was_failing, verdict, failing);
        if let (false, true, Err(error)) = (was_failing, failing, answer) {
            changes.push(Change::CheckFailed { registration: registration.clone(), error: error.clone() });
        }
        if from != verdict {
            changes.push(Change::Verdict { registration, from });
        }
    }

    /// Marks a sealed registration's content as modified (or, at reseal, as matching again)
    /// and returns the change of verdict it makes, if any; `None` for an unknown id.
    pub fn set_modified(&self, id: RegistrationId, modified: bool) -> Option<Option<Change>> {
        let mut shard = lock(&self.registrations[shard_of_id(id)]);
        let Some(registration) = shard.get_mut(id) else {
            drop(shard);
            let batch = self.batches.find(id)?;
            let mut batch = lock(&batch);
            let (((from, was_failing), (verdict, failing)), registration) = batch.set_modified(id, modified)?;
            // Counted under the batch's lock, as a check counts its judgements: a check in
            // between would count from the state before this one.
            self.recount(from, was_failing, verdict, failing);
            return Some((from != verdict).then_some(Change::Verdict { registration, from }));
        };
        registration.modified = modified;
        let old_verdict = verdict_of(registration.verdict);
        let verdict = registration.judged();
        registration.verdict = verdict as u8;
        let failing = registration.failing;
        self.recount(old_verdict, failing, verdict, failing);
        Some((old_verdict != verdict).then(|| Change::Verdict { registration: registration.info(id), from: old_verdict }))
    }

    /// One registration's verdict and whether its query is failing, without copying it.
    pub fn verdict(&self, id: RegistrationId) -> Option<(Verdict, bool)> {
        let found = lock(&self.registrations[shard_of_id(id)]).get(id).map(|r| (verdict_of(r.verdict), r.failing));
        found.or_else(|| self.batches.find(id).and_then(|batch| lock(&batch).verdict(id)))
    }

    /// Keeps the three counters true when one registration goes from one state to another.
    fn recount(&self, old_verdict: Verdict, old_failing: bool, verdict: Verdict, failing: bool) {
            match (old_verdict.is_violation(), verdict.is_violation()) {
                (false, true) => {
                    self.violating.fetch_add(1, Ordering::Relaxed);
                }
                (true, false) => {
                    self.violating.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
            match (old_failing, failing) {
                (false, true) => {
                    self.failing.fetch_add(1, Ordering::Relaxed);
                }
                (true, false) => {
                    self.failing.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
            match (old_failing && old_verdict.is_violation(), failing && verdict.is_violation()) {
                (false, true) => {
                    self.violating_and_failing.fetch_add(1, Ordering::Relaxed);
                }
                (true, false) => {
                    self.violating_and_failing.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
    }
}

