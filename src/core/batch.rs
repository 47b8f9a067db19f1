//! Registering a whole model in one call.
//!
//! A model is hundreds of tensors in a handful of allocations (a caching allocator's segments).
//! Registering them one by one asks the driver about every tensor; registering them together
//! asks once per distinct allocation: each answer is kept for the extent it describes, and
//! every entry inside that extent is judged by it. All entries are judged by answers taken
//! within the one call, one consistent snapshot.

use crate::core::sync::lock;
use std::sync::Mutex;

use crate::core::driver::{Driver, DriverError, PointerInfo};
use crate::core::error::Error;
use crate::core::inspect::{inspect, Inspection};
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
pub(crate) struct Snapshot<'d> {
    driver: &'d dyn Driver,
    // A Mutex only because the Driver trait is Sync: one thread uses a snapshot.
    answers: Mutex<Vec<(u64, u64, PointerInfo)>>,
    queries: Mutex<u64>,
}

impl<'d> Snapshot<'d> {
    pub(crate) fn new(driver: &'d dyn Driver) -> Snapshot<'d> {
        Snapshot { driver, answers: Mutex::new(Vec::new()), queries: Mutex::new(0) }
    }

    /// Driver queries made through this snapshot.
    pub(crate) fn queries(&self) -> u64 {
        *lock(&self.queries)
    }

    fn cached(&self, address: u64) -> Option<PointerInfo> {
        let answers = lock(&self.answers);
        // Entries are visited in address order: the answer wanted is nearly always the last.
        answers.iter().rev().find(|&&(start, end, _)| start <= address && address < end).map(|&(_, _, info)| info)
    }
}

impl Driver for Snapshot<'_> {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        if let Some(info) = self.cached(address) {
            return Ok(info);
        }
        *lock(&self.queries) += 1;
        let info = self.driver.pointer_info(address)?;
        // Memory with no extent (not CUDA memory) is not kept: nothing else shares its answer.
        if let Some((start, len)) = info.extent() {
            lock(&self.answers).push((start, start.saturating_add(len), info));
        }
        Ok(info)
    }
    fn device_used_memory(&self, device: i32) -> Option<u64> {
        self.driver.device_used_memory(device)
    }
    fn version(&self) -> Option<i32> {
        self.driver.version()
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
    let mut results: Vec<Option<Result<Inspection, Error>>> = regions.iter().map(|_| None).collect();
    // Address order: the driver answers neighbours faster, and the snapshot's last answer is
    // the one the next entry needs. Stable, so the first of two equal ranges comes first.
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_by_key(|&i| (regions[i].ptr, regions[i].size));
    let snapshot = Snapshot::new(driver);
    let mut previous: Option<(u64, u64)> = None;
    for i in order {
        let r = regions[i];
        let result = if previous == Some((r.ptr, r.size)) {
            Err(Error::DuplicateRange)
        } else {
            validate(r.ptr, r.size, r.label).and_then(|()| inspect(&snapshot, r.ptr, r.size).map_err(Error::from))
        };
        previous = Some((r.ptr, r.size));
        results[i] = Some(result.and_then(|inspection| {
            if inspection.verdict == Verdict::Resident {
                Ok(inspection)
            } else {
                Err(Error::Refused(inspection.verdict))
            }
        }));
    }
    (results.into_iter().map(|r| r.unwrap_or(Err(Error::InvalidArgument("not judged")))).collect(), snapshot.queries())
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
