//! The allocations table's rows: the fingerprint a check compares an answer with, and the
//! registrations inside ([`Allocation`], [`AllocationShard`]); the marks that force a new
//! judgement.

use super::hasher::{IntegerMap, IntegerSet};
use super::RegistrationId;

/// One shard of the allocation table. `generation` changes whenever an address is added or
/// removed or marked for a new judgement, so a check can keep its sorted list of addresses
/// until then.
#[derive(Debug, Default)]
pub(super) struct AllocationShard {
    pub(super) map: IntegerMap<Allocation>,
    /// The members of the allocations that hold several registrations (an arena of tensors,
    /// a pool of KV blocks), by address: a set, so that unregistering one of a million
    /// tensors in one arena is O(1). Kept apart so that the common allocation of one
    /// registration is 24 bytes in `map`.
    pub(super) several: IntegerMap<IntegerSet>,
    /// The batches (by first id) with registrations inside each allocation that has any: a
    /// batch is one member however many of its registrations an allocation holds.
    pub(super) batched: IntegerMap<Vec<RegistrationId>>,
    pub(super) generation: u64,
    /// Marks handed out (see [`is_mark`]).
    pub(super) marks: u64,
}

impl AllocationShard {
    /// Records that registration `id` lies in the allocation at `address`, whose answer had
    /// fingerprint `seen` when the registration was judged.
    pub(super) fn join(&mut self, address: u64, seen: u64, id: RegistrationId) {
        let several = &mut self.several;
        let allocation = Self::allocation(&mut self.map, &mut self.generation, &mut self.marks, address, seen);
        if allocation.member == NO_MEMBER {
            allocation.member = id;
        } else if allocation.member == SEVERAL {
            several.entry(address).or_default().insert(id);
        } else if allocation.member != id {
            several.insert(address, [allocation.member, id].into_iter().collect());
            allocation.member = SEVERAL;
        }
    }

    /// Records that the batch starting at `first` has registrations in the allocation at
    /// `address`, judged by an answer with fingerprint `seen`.
    pub(super) fn join_batch(&mut self, address: u64, seen: u64, first: RegistrationId) {
        Self::allocation(&mut self.map, &mut self.generation, &mut self.marks, address, seen);
        self.batched.entry(address).or_default().push(first);
    }

    /// The allocation at `address`, new (with no member) if there is none. A member joining
    /// with answer `seen` marks an existing one for a new judgement if its members were judged
    /// by another answer: the memory changed meanwhile.
    fn allocation<'m>(map: &'m mut IntegerMap<Allocation>, generation: &mut u64, marks: &mut u64, address: u64, seen: u64) -> &'m mut Allocation {
        let allocation = map.entry(address).or_insert_with(|| {
            *generation += 1;
            Allocation { fingerprint: seen, member: NO_MEMBER }
        });
        if allocation.fingerprint != seen {
            allocation.fingerprint = next_mark(marks);
            *generation += 1;
        }
        allocation
    }

    /// Forgets registration `id` (not of a batch) in the allocation at `address`, and the
    /// allocation once nothing is left in it.
    pub(super) fn leave(&mut self, address: u64, id: RegistrationId) {
        let AllocationShard { map, several, .. } = self;
        let Some(allocation) = map.get_mut(&address) else { return };
        if allocation.member == SEVERAL {
            let left = several.get_mut(&address).map(|ids| {
                ids.remove(&id);
                ids.len()
            });
            match left {
                Some(0) | None => {
                    several.remove(&address);
                    allocation.member = NO_MEMBER;
                }
                Some(1) => {
                    // Back to the common case: the last one moves into the entry.
                    let last = several.remove(&address).and_then(|ids| ids.into_iter().next());
                    allocation.member = last.unwrap_or(NO_MEMBER);
                }
                Some(_) => {}
            }
        } else if allocation.member == id {
            allocation.member = NO_MEMBER;
        }
        self.drop_if_empty(address);
    }

    /// Forgets the batch starting at `first` in the allocation at `address`, and the
    /// allocation once nothing is left in it.
    pub(super) fn leave_batch(&mut self, address: u64, first: RegistrationId) {
        if let Some(batches) = self.batched.get_mut(&address) {
            batches.retain(|&b| b != first);
            if batches.is_empty() {
                self.batched.remove(&address);
            }
        }
        self.drop_if_empty(address);
    }

    fn drop_if_empty(&mut self, address: u64) {
        let empty = self.map.get(&address).is_some_and(|a| a.member == NO_MEMBER) && !self.batched.contains_key(&address);
        if empty {
            self.map.remove(&address);
            self.generation += 1;
        }
    }

    /// The members of the allocation at `address`: registrations on their own, in id order,
    /// and batches (by first id).
    pub(super) fn members(&self, address: u64) -> (Vec<RegistrationId>, Vec<RegistrationId>) {
        let Some(allocation) = self.map.get(&address) else { return Default::default() };
        let ids = match allocation.member {
            NO_MEMBER => Vec::new(),
            SEVERAL => {
                let mut ids: Vec<RegistrationId> = self.several.get(&address).map(|ids| ids.iter().copied().collect()).unwrap_or_default();
                ids.sort_unstable();
                ids
            }
            one => vec![one],
        };
        (ids, self.batched.get(&address).cloned().unwrap_or_default())
    }
}

/// A new mark from a shard's counter (2 to 2^63 - 1, then round again).
pub(super) fn next_mark(marks: &mut u64) -> u64 {
    *marks = marks.wrapping_add(1);
    2 + *marks % (ANSWER_BIT - 2)
}

#[derive(Debug)]
pub(super) struct Allocation {
    /// Fingerprint of the driver's last answer at this address that the members were judged
    /// by, [`FAILED`], or a mark (see [`is_mark`]) that forces the next check to judge them
    /// again. A check judges only when this is still what its plan held when it asked.
    pub(super) fingerprint: u64,
    /// The one registration inside, [`SEVERAL`] (then they are in the shard's `several`), or
    /// [`NO_MEMBER`]. Batches inside are in the shard's `batched`.
    pub(super) member: RegistrationId,
}

/// In [`Allocation::member`]: more than one registration; ids are never 0.
pub(super) const SEVERAL: RegistrationId = 0;
/// In [`Allocation::member`]: no registration on its own (only batches, or for a moment
/// none); ids stay below 2^53.
pub(super) const NO_MEMBER: RegistrationId = u64::MAX;

/// Fingerprints of answers have this bit set; below it are [`FAILED`] and the marks.
pub(super) const ANSWER_BIT: u64 = 1 << 63;
/// The fingerprint recorded for a failed query.
pub(super) const FAILED: u64 = 1;

/// Whether `fingerprint` is a mark: the value an allocation gets when a registration joins it
/// having seen a different answer, so that the next check judges its members again. Each
/// marking takes a new mark from its shard's counter, so a check that asked before a join
/// never finds its plan's value still there afterwards.
pub fn is_mark(fingerprint: u64) -> bool {
    fingerprint < ANSWER_BIT && fingerprint != FAILED
}
