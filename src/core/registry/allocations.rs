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
    pub(super) generation: u64,
    /// Marks handed out (see [`is_mark`]).
    pub(super) marks: u64,
}

impl AllocationShard {
    /// Records that registration `id` lies in the allocation at `address`, whose answer had
    /// fingerprint `seen` when the registration was judged.
    pub(super) fn join(&mut self, address: u64, seen: u64, id: RegistrationId) {
        let AllocationShard { map, several, generation, marks } = self;
        match map.get_mut(&address) {
            Some(allocation) => {
                // The others were judged by an older answer: if it differs from what this
                // registration saw, the memory changed meanwhile; judge them all again.
                if allocation.fingerprint != seen {
                    allocation.fingerprint = next_mark(marks);
                    *generation += 1;
                }
                if allocation.member == SEVERAL {
                    several.entry(address).or_default().insert(id);
                } else if allocation.member != id {
                    several.insert(address, [allocation.member, id].into_iter().collect());
                    allocation.member = SEVERAL;
                }
            }
            None => {
                map.insert(address, Allocation { fingerprint: seen, member: id });
                *generation += 1;
            }
        }
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
    /// The one registration inside, or [`SEVERAL`]: then they are in the shard's `several`.
    pub(super) member: RegistrationId,
}

/// In [`Allocation::member`]: more than one registration; ids are never 0.
pub(super) const SEVERAL: RegistrationId = 0;

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
