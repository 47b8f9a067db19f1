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
    /// Answers by the start of their extent: `start -> (end, answer)`. A tree, since
    /// allocations come in any address order (the CUDA allocator hands them out downwards).
    extents: std::collections::BTreeMap<u64, (u64, PointerInfo)>,
    /// The extent the last lookup used: consecutive entries are mostly in one allocation.
    last: Option<(u64, u64, PointerInfo)>,
    queries: u64,
}

impl<'d> Snapshot<'d> {
    fn new(driver: &'d dyn Driver) -> Snapshot<'d> {
        Snapshot { driver, extents: std::collections::BTreeMap::new(), last: None, queries: 0 }
    }

    /// The driver's answer for `address`: one already taken in this call when an extent
    /// holds the address, otherwise a new query (kept for its extent).
    fn answer(&mut self, address: u64) -> Result<PointerInfo, DriverError> {
        let holds = |&(start, end, info): &(u64, u64, PointerInfo)| (start <= address && address < end).then_some(info);
        if let Some(info) = self.last.as_ref().and_then(holds) {
            return Ok(info);
        }
        let below = self.extents.range(..=address).next_back().map(|(&start, &(end, info))| (start, end, info));
        if let Some(info) = below.as_ref().and_then(holds) {
            self.last = below;
            return Ok(info);
        }
        self.queries += 1;
        let info = self.driver.pointer_info(address)?;
        // Memory with no extent (not CUDA memory) is not kept: nothing else shares its answer.
        if let Some((start, len)) = info.extent() {
            let end = start.saturating_add(len);
            self.extents.insert(start, (end, info));
            self.last = Some((start, end, info));
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

/// Every entry of one call judged from one snapshot of the driver's answers.
pub(crate) struct Judged {
    /// The entries that can be registered (index in the call, inspection), in order.
    pub(crate) passed: Vec<(usize, Inspection)>,
    /// The entries that cannot (index in the call, why), in order.
    pub(crate) failures: Vec<(usize, Error)>,
    /// Driver queries made.
    pub(crate) queries: u64,
}

/// Judges every entry of `regions` from one snapshot of the driver's answers. The same range
/// twice in one call is [`Error::DuplicateRange`] from its second occurrence on.
pub(crate) fn judge_all(driver: &dyn Driver, regions: &[Region<'_>]) -> Judged {
    let mut snapshot = Snapshot::new(driver);
    let mut seen = Ranges::default();
    let (mut passed, mut failures) = (Vec::new(), Vec::new());
    for (i, r) in regions.iter().enumerate() {
        let judged = (|| {
            if !seen.insert(r.ptr, r.size, &regions[..i]) {
                return Err(Error::DuplicateRange);
            }
            validate(r.ptr, r.size, r.label)?;
            let inspection = inspect_with(|address| snapshot.answer(address), r.ptr, r.size)?;
            match inspection.verdict {
                Verdict::Resident => Ok(inspection),
                refused => Err(Error::Refused(refused)),
            }
        })();
        match judged {
            Ok(inspection) => passed.push((i, inspection)),
            Err(e) => failures.push((i, e)),
        }
    }
    Judged { passed, failures, queries: snapshot.queries }
}

/// The ranges the entries of one call have named, to find the same range twice. Entries
/// usually come in address order (a model's parameters as its allocator laid them out): while
/// they do, a range is new when it follows the previous one, and nothing is kept; at the first
/// that does not, a set is built from the entries before it.
#[derive(Default)]
struct Ranges {
    previous: Option<(u64, u64)>,
    set: Option<std::collections::HashSet<(u64, u64), std::hash::BuildHasherDefault<crate::core::registry::IntegerHasher>>>,
}

impl Ranges {
    /// Adds `[ptr, ptr + size)`, which follows `before` in the call; false when it was named
    /// before, whether or not that entry could be registered.
    fn insert(&mut self, ptr: u64, size: u64, before: &[Region<'_>]) -> bool {
        let range = (ptr, size);
        if let Some(set) = &mut self.set {
            return set.insert(range);
        }
        if self.previous.is_none_or(|previous| previous < range) {
            self.previous = Some(range);
            return true;
        }
        let mut set: std::collections::HashSet<_, _> = before.iter().map(|r| (r.ptr, r.size)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::driver::MemoryType;
    use crate::core::inspect::inspect;

    /// Allocations of 64 KiB, each its own extent, counting the queries.
    struct Allocations {
        bases: Vec<u64>,
        queries: std::sync::atomic::AtomicU64,
    }

    impl Driver for Allocations {
        fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
            self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(match self.bases.iter().find(|&&b| b <= address && address < b + 0x1_0000) {
                Some(&base) => PointerInfo {
                    memory_type: MemoryType::Device,
                    is_managed: false,
                    device_ordinal: 0,
                    buffer_id: base >> 16,
                    range_start: base,
                    range_size: 0x1_0000,
                    mapping_base: 0,
                    mapping_size: 0,
                },
                None => PointerInfo::unregistered(),
            })
        }
        fn device_used_memory(&self, _: i32) -> Option<u64> {
            None
        }
        fn version(&self) -> Option<i32> {
            None
        }
    }

    #[test]
    fn entries_in_allocations_handed_out_downwards_are_judged_with_one_query_each_as_directly() {
        // Allocations at falling addresses, as the CUDA allocator hands them out; four
        // tensors in each, in a model's order, with a stray pointer and a repeat among them.
        let driver = Allocations { bases: (0..50u64).map(|i| 0x100_0000 - i * 0x2_0000).collect(), queries: Default::default() };
        let labels: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let mut regions: Vec<Region<'_>> =
            (0..200).map(|i| Region { ptr: driver.bases[i / 4] + (i % 4) as u64 * 0x1000, size: 0x1000, label: &labels[i] }).collect();
        regions[7].ptr = 0x10; // not CUDA memory
        regions[150] = regions[149]; // the same range twice
        let judged = judge_all(&driver, &regions);
        assert_eq!(judged.queries, 51, "one per allocation, and the stray pointer");
        assert_eq!(driver.queries.load(std::sync::atomic::Ordering::Relaxed), 51);
        let failed: Vec<usize> = judged.failures.iter().map(|&(i, _)| i).collect();
        assert_eq!(failed, [7, 150]);
        assert_eq!(judged.failures[1].1, Error::DuplicateRange);
        assert_eq!(judged.passed.len(), 198);
        for (i, found) in judged.passed {
            assert_eq!(found, inspect(&driver, regions[i].ptr, regions[i].size).unwrap(), "entry {i} judged from the snapshot as directly");
        }
    }
}
