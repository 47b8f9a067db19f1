//! The registrations table's rows: a registration's pieces with their last verdicts
//! ([`RegistrationEntry`]), and one shard of the table ([`RegistrationShard`]).

use super::{RegistrationId, RegistrationInfo};
use crate::core::verdict::{Piece, Verdict};

// Verdicts are kept as bytes here (they are i32 in the C ABI): a million registrations.
#[derive(Debug, Clone, Copy)]
pub(super) struct TrackedPiece {
    pub(super) piece: Piece,
    pub(super) verdict: u8,
    pub(super) failing: bool,
}

pub(super) fn verdict_of(raw: u8) -> Verdict {
    Verdict::from_raw(i32::from(raw)).unwrap_or(Verdict::CheckFailed)
}

/// Most registrations are one piece (one allocation); VMM ranges have several.
#[derive(Debug)]
pub(super) enum Pieces {
    One(TrackedPiece),
    Many(Box<[TrackedPiece]>),
}

impl Pieces {
    pub(super) fn as_slice(&self) -> &[TrackedPiece] {
        match self {
            Pieces::One(p) => std::slice::from_ref(p),
            Pieces::Many(ps) => ps,
        }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [TrackedPiece] {
        match self {
            Pieces::One(p) => std::slice::from_mut(p),
            Pieces::Many(ps) => ps,
        }
    }
}

#[derive(Debug)]
pub(super) struct RegistrationEntry {
    pub(super) label: Box<str>,
    pub(super) pieces: Pieces,
    pub(super) device: i32,
    pub(super) verdict: u8,
    pub(super) failing: bool,
    /// Sealed and found with bytes that differ from the fingerprint (src/core/integrity): the
    /// verdict is MODIFIED while the memory is otherwise resident.
    pub(super) modified: bool,
    /// Whether its allocations name it yet (see [`RegistrationShard::pending`]).
    pub(super) joined: bool,
}

impl RegistrationEntry {
    /// A registration just found resident in `pieces`.
    pub(super) fn new(label: &str, device: i32, pieces: &[Piece]) -> RegistrationEntry {
        let track = |piece: &Piece| TrackedPiece { piece: *piece, verdict: Verdict::Resident as u8, failing: false };
        // One piece, the common case, without a heap allocation.
        let pieces = match pieces {
            [one] => Pieces::One(track(one)),
            _ => Pieces::Many(pieces.iter().map(track).collect()),
        };
        RegistrationEntry { label: label.into(), device, verdict: Verdict::Resident as u8, failing: false, modified: false, joined: false, pieces }
    }

    /// The verdict its pieces and its content give: a residency verdict wins over MODIFIED.
    pub(super) fn judged(&self) -> Verdict {
        let residency = self.pieces.as_slice().iter().fold(Verdict::Resident, |v, t| v.worst(verdict_of(t.verdict)));
        if residency == Verdict::Resident && self.modified {
            Verdict::Modified
        } else {
            residency
        }
    }
}

impl RegistrationEntry {
    pub(super) fn info(&self, id: RegistrationId) -> RegistrationInfo {
        let pieces: Vec<Piece> = self.pieces.as_slice().iter().map(|p| p.piece).collect();
        let ptr = pieces.first().map_or(0, |p| p.start);
        let end = pieces.last().map_or(0, |p| p.end);
        RegistrationInfo {
            id,
            ptr,
            size: end - ptr,
            label: self.label.to_string(),
            device: self.device,
            verdict: verdict_of(self.verdict),
            check_failing: self.failing,
            pieces,
            seal: None,
        }
    }

    pub(super) fn size(&self) -> u64 {
        let pieces = self.pieces.as_slice();
        match (pieces.first(), pieces.last()) {
            (Some(first), Some(last)) => last.piece.end - first.piece.start,
            _ => 0,
        }
    }
}

/// Registrations of one shard, in id order (ids only grow, so inserting is a push), with
/// removed ones left as holes until they are many. The ids are kept apart from the
/// registrations, so that finding one (a binary search) reads a dense array of ids rather than
/// one cache line per step.
#[derive(Debug, Default)]
pub(super) struct RegistrationShard {
    pub(super) ids: Vec<RegistrationId>,
    /// `slots[i]` is the registration `ids[i]`, or `None` once it is removed.
    pub(super) slots: Vec<Option<RegistrationEntry>>,
    pub(super) holes: usize,
    // Counted per shard, under its lock: global atomics would bounce one cache line between
    // every thread that registers.
    pub(super) count: u64,
    pub(super) tracked_bytes: u64,
    /// Registrations per device ordinal in this shard (a handful of entries).
    pub(super) per_device: Vec<(i32, u64)>,
    /// Joins not made yet: (allocation address, fingerprint of the answer seen, id). A
    /// registering thread only appends here, in its own shard; the allocation table, which
    /// every registering thread would otherwise write, is updated from here before each check
    /// (`Registry::settle`).
    pub(super) pending: Vec<(u64, u64, RegistrationId)>,
}

impl RegistrationShard {
    pub(super) fn get(&self, id: RegistrationId) -> Option<&RegistrationEntry> {
        let i = self.ids.binary_search(&id).ok()?;
        self.slots[i].as_ref()
    }

    pub(super) fn get_mut(&mut self, id: RegistrationId) -> Option<&mut RegistrationEntry> {
        let i = self.ids.binary_search(&id).ok()?;
        self.slots[i].as_mut()
    }

    /// The registrations, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (RegistrationId, &RegistrationEntry)> {
        self.ids.iter().zip(&self.slots).filter_map(|(&id, r)| r.as_ref().map(|r| (id, r)))
    }

    /// Adds a registration found resident with `answers` (one per piece), its joins to
    /// their allocations left pending.
    pub(super) fn add_pending(&mut self, id: RegistrationId, registration: RegistrationEntry, answers: &[crate::core::driver::PointerInfo]) {
        for (tracked, answer) in registration.pieces.as_slice().iter().zip(answers) {
            self.pending.push((tracked.piece.query_at, super::fingerprint(answer), id));
        }
        self.add(id, registration);
    }

    /// Adds a registration and counts it.
    pub(super) fn add(&mut self, id: RegistrationId, registration: RegistrationEntry) {
        self.count += 1;
        self.tracked_bytes += registration.size();
        self.count_device(registration.device, true);
        self.push(id, registration);
    }

    fn push(&mut self, id: RegistrationId, registration: RegistrationEntry) {
        if self.ids.len() == self.ids.capacity() {
            if self.holes * 4 >= self.ids.len() && self.holes > 0 {
                // Registering and unregistering at a steady rate: reuse the holes' room
                // rather than growing (a reallocation copies the whole shard under its lock).
                self.compact();
            } else {
                // Grow by a quarter, not double: a million registrations should not carry a
                // million empty slots.
                let more = (self.ids.len() / 4).max(16);
                self.ids.reserve_exact(more);
                self.slots.reserve_exact(more);
            }
        }
        // Ids come from per-thread blocks, so they arrive nearly but not exactly in order:
        // the place is at or near the end.
        let at = self.ids.iter().rposition(|&other| other < id).map_or(0, |i| i + 1);
        self.ids.insert(at, id);
        self.slots.insert(at, Some(registration));
    }

    pub(super) fn count_device(&mut self, device: i32, added: bool) {
        match self.per_device.iter_mut().position(|(d, _)| *d == device) {
            Some(i) if added => self.per_device[i].1 += 1,
            Some(i) => {
                self.per_device[i].1 -= 1;
                if self.per_device[i].1 == 0 {
                    self.per_device.swap_remove(i);
                }
            }
            None if added => self.per_device.push((device, 1)),
            None => {}
        }
    }

    pub(super) fn remove(&mut self, id: RegistrationId) -> Option<RegistrationEntry> {
        let i = self.ids.binary_search(&id).ok()?;
        let removed = self.slots[i].take()?;
        self.holes += 1;
        // The newest registration is the one most often unregistered first (a buffer
        // registered for one request and dropped after it): holes at the end go at once, so
        // that this pattern never needs a compaction.
        while let Some(None) = self.slots.last() {
            self.slots.pop();
            self.ids.pop();
            self.holes -= 1;
        }
        if self.holes > 64 && self.holes * 2 > self.ids.len() {
            self.compact();
        }
        Some(removed)
    }

    /// Drops the holes in place, keeping the order. Gives memory back only when most of the
    /// room is unused: shrinking and growing again would copy the shard each time.
    pub(super) fn compact(&mut self) {
        let mut kept = 0;
        for i in 0..self.ids.len() {
            if self.slots[i].is_some() {
                self.ids.swap(kept, i);
                self.slots.swap(kept, i);
                kept += 1;
            }
        }
        self.ids.truncate(kept);
        self.slots.truncate(kept);
        if self.ids.capacity() > 2 * kept + 64 {
            self.ids.shrink_to(kept + kept / 4);
            self.slots.shrink_to(kept + kept / 4);
        }
        self.holes = 0;
    }
}
