//! Registering a whole model in one call.
//!
//! A model is hundreds of tensors in a handful of allocations (a caching allocator's segments).
//! Registering them one by one asks the driver about every tensor; registering them together
//! asks once per distinct allocation: each answer is kept for the extent it describes, and
//! every entry inside that extent is judged by it. All entries are judged by answers taken
//! within the one call, one consistent snapshot.

use crate::core::driver::{Driver, DriverError, PointerInfo};
use crate::core::error::Error;
use crate::core::inspect::{inspect_with, Inspection};
use crate::core::registry::RegistrationId;
use crate::core::verdict::Verdict;

/// Labels longer than this are refused (they are copied into every event and report).
pub const MAX_LABEL_BYTES: usize = 4096;

/// One entry of [`crate::Monitor::register_many`]: `[ptr, ptr + size)` under `label`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region<'a> {
    /// First byte.
    pub ptr: u64,
    /// Length in bytes (non-zero).
    pub size: u64,
    /// The engine's name for it (copied).
    pub label: &'a str,
}

/// Answers the driver gave during one call, each reused for every address in its extent:
/// inside one allocation (or one VMM mapping) every address has the same answer.
struct Snapshot<'d> {
    driver: &'d dyn Driver,
    /// `(start, end, answer)` sorted by start: a model's tensors sit in a few hundred
    /// allocations, so a lookup is a short binary search.
    answers: Vec<(u64, u64, PointerInfo)>,
    /// The answer the last lookup used: consecutive entries are mostly in one allocation.
    last: usize,
    queries: u64,
}

impl<'d> Snapshot<'d> {
    fn new(driver: &'d dyn Driver) -> Snapshot<'d> {
        Snapshot { driver, answers: Vec::new(), last: 0, queries: 0 }
    }

    fn holds(&self, i: usize, address: u64) -> bool {
        self.answers.get(i).is_some_and(|&(start, end, _)| start <= address && address < end)
    }

    /// The driver's answer for `address`: one already taken in this call when an extent holds
    /// it, otherwise a new query (kept for its extent).
    fn answer(&mut self, address: u64) -> Result<PointerInfo, DriverError> {
        if self.holds(self.last, address) {
            return Ok(self.answers[self.last].2);
        }
        let after = self.answers.partition_point(|&(start, _, _)| start <= address);
        if after > 0 && self.holds(after - 1, address) {
            self.last = after - 1;
            return Ok(self.answers[self.last].2);
        }
        self.queries += 1;
        let info = self.driver.pointer_info(address)?;
        // Memory with no extent (not CUDA memory) is not kept: nothing else shares its answer.
        if let Some((start, len)) = info.extent() {
            let at = self.answers.partition_point(|&(s, _, _)| s <= start);
            self.answers.insert(at, (start, start.saturating_add(len), info));
            self.last = at;
        }
        Ok(info)
    }
}

/// What [`crate::Monitor::register`] checks before asking the driver.
pub(crate) fn validate(ptr: u64, size: u64, label: &str) -> Result<(), Error> {
    if size == 0 {
        return Err(Error::InvalidArgument("size must be non-zero"));
    }
    if ptr.checked_add(size).is_none() {
        return Err(Error::InvalidArgument("ptr + size wraps the address space"));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(Error::InvalidLabel("longer than 4096 bytes"));
    }
    Ok(())
}

/// Judges every entry of `regions` from one snapshot of the driver's answers; returns, in
/// the entries' order, each one's inspection or why it cannot be registered. The same range
/// twice in one call is [`Error::DuplicateRange`] from its second occurrence on.
pub(crate) fn inspect_all(driver: &dyn Driver, regions: &[Region<'_>]) -> (Vec<Result<Inspection, Error>>, u64) {
    let mut snapshot = Snapshot::new(driver);
    let mut seen = Ranges::default();
    let results = regions
        .iter()
        .map(|r| {
            validate(r.ptr, r.size, r.label)?;
            if !seen.insert(r.ptr, r.size) {
                return Err(Error::DuplicateRange);
            }
            let inspection = inspect_with(|address| snapshot.answer(address), r.ptr, r.size)?;
            if inspection.verdict == Verdict::Resident {
                Ok(inspection)
            } else {
                Err(Error::Refused(inspection.verdict))
            }
        })
        .collect();
    (results, snapshot.queries)
}

/// The ranges an entry of one call has named, to find the same range twice. Entries usually
/// come in address order (a model's parameters as its allocator laid them out): while they
/// do, a range is new when it follows the previous one and no set is kept; at the first that
/// does not, the set is built from those seen so far.
#[derive(Default)]
struct Ranges {
    previous: Option<(u64, u64)>,
    in_order: Vec<(u64, u64)>,
    set: Option<std::collections::HashSet<(u64, u64), std::hash::BuildHasherDefault<crate::core::registry::IntegerHasher>>>,
}

impl Ranges {
    /// Adds `[ptr, ptr + size)`; false when it was named before.
    fn insert(&mut self, ptr: u64, size: u64) -> bool {
        let range = (ptr, size);
        if let Some(set) = &mut self.set {
            return set.insert(range);
        }
        if self.previous.is_none_or(|previous| previous < range) {
            self.previous = Some(range);
            self.in_order.push(range);
            return true;
        }
        let mut set: std::collections::HashSet<_, _> = self.in_order.drain(..).collect();
        let new = set.insert(range);
        self.set = Some(set);
        new
    }
}

/// The result of a whole [`crate::Monitor::register_many`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Per entry, in the order given: its id, or why it was not registered. With
    /// all-or-nothing and any entry failing, the entries that did not fail themselves hold
    /// [`Error::EntriesFailed`] (not registered because another entry failed).
    pub results: Vec<Result<RegistrationId, Error>>,
    /// Driver queries the call made (at most one per distinct allocation or mapping, plus
    /// one per entry that is not CUDA memory).
    pub queries: u64,
}

impl Registered {
    /// How many entries were registered.
    pub fn registered(&self) -> usize {
        self.results.iter().filter(|r| r.is_ok()).count()
    }
}
