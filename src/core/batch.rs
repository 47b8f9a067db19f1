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
use crate::core::verdict::{classify_kind, Verdict};

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

/// An extent the driver described during one call: inside one allocation (or one VMM
/// mapping) every address has the same answer.
struct Extent {
    start: u64,
    end: u64,
    info: PointerInfo,
    /// Whether the answer is of memory that can be registered (device memory, not managed).
    resident: bool,
}

/// What [`Snapshot::lookup`] found for an address.
enum Answer {
    /// An answer kept for its extent (an index into [`Snapshot::extents`]).
    Extent(u32),
    /// An answer with no extent (not CUDA memory): nothing else shares it.
    Alone(PointerInfo),
}

/// Answers the driver gave during one call, each reused for every address in its extent.
struct Snapshot<'d> {
    driver: &'d dyn Driver,
    extents: Vec<Extent>,
    /// Extents by start. A tree, since allocations come in any address order (the CUDA
    /// allocator hands them out downwards).
    by_start: std::collections::BTreeMap<u64, u32>,
    /// The extent the last lookup used: consecutive entries are mostly in one allocation.
    last: u32,
    /// Whether two extents overlap (memory freed and allocated again while the call asked):
    /// then an address's extent depends on which was found first.
    overlap: bool,
    /// The extent last found for each 1 MiB of addresses (hashed into [`GRANULES`] slots):
    /// entries that alternate between allocations mostly find theirs here, not in the tree.
    granules: Vec<u32>,
    queries: u64,
}

/// Slots of [`Snapshot::granules`].
const GRANULES: usize = 4096;

fn granule(address: u64) -> usize {
    ((address >> 20).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize % GRANULES
}

/// No extent (in [`Snapshot::last`], and the duplicate check's bucket of entries in none).
const NO_EXTENT: u32 = u32::MAX;

impl<'d> Snapshot<'d> {
    fn new(driver: &'d dyn Driver) -> Snapshot<'d> {
        Snapshot {
            driver,
            extents: Vec::new(),
            by_start: std::collections::BTreeMap::new(),
            last: NO_EXTENT,
            overlap: false,
            granules: vec![NO_EXTENT; GRANULES],
            queries: 0,
        }
    }

    /// The driver's answer for `address`: one already taken in this call when an extent
    /// holds the address, otherwise a new query (kept for its extent).
    fn lookup(&mut self, address: u64) -> Result<Answer, DriverError> {
        if let Some(i) = self.known(address) {
            return Ok(Answer::Extent(i));
        }
        let holds = |e: &Extent| e.start <= address && address < e.end;
        let slot = granule(address);
        if let Some((_, &i)) = self.by_start.range(..=address).next_back() {
            if holds(&self.extents[i as usize]) {
                self.last = i;
                self.granules[slot] = i;
                return Ok(Answer::Extent(i));
            }
        }
        self.queries += 1;
        let info = self.driver.pointer_info(address)?;
        // An extent that does not hold the address it was asked about is not trusted (the
        // inspection finds it out of range), nor kept: it could hide the right one.
        let Some((start, len)) = info.extent().filter(|&(start, len)| start <= address && address - start < len) else {
            return Ok(Answer::Alone(info));
        };
        let i = self.extents.len() as u32;
        let resident = classify_kind(&info) == Verdict::Resident;
        let end = start.saturating_add(len);
        let below = self.by_start.range(..=start).next_back().map(|(_, &e)| self.extents[e as usize].end > start);
        let above = self.by_start.range(start..).next().map(|(&next, _)| next < end);
        self.overlap |= below == Some(true) || above == Some(true);
        self.extents.push(Extent { start, end, info, resident });
        self.by_start.insert(start, i);
        self.last = i;
        self.granules[slot] = i;
        Ok(Answer::Extent(i))
    }

    /// The extent holding `address` in the two places [`Snapshot::lookup`] looks first, with
    /// no search and no query: the one the last lookup found (consecutive entries are mostly
    /// in one allocation), or the one last found in its MiB (entries that alternate between
    /// allocations); that one then becomes the last.
    fn known(&mut self, address: u64) -> Option<u32> {
        let holds = |e: &Extent| e.start <= address && address < e.end;
        if self.extents.get(self.last as usize).is_some_and(holds) {
            return Some(self.last);
        }
        let cached = self.granules[granule(address)];
        if self.extents.get(cached as usize).is_some_and(holds) {
            self.last = cached;
            return Some(cached);
        }
        None
    }

    /// [`Snapshot::lookup`]'s answer itself.
    fn answer(&mut self, address: u64) -> Result<PointerInfo, DriverError> {
        Ok(match self.lookup(address)? {
            Answer::Extent(i) => self.extents[i as usize].info,
            Answer::Alone(info) => info,
        })
    }
}

/// What [`crate::Monitor::register`] checks before asking the driver.
pub(crate) fn validate(ptr: u64, size: u64, label: &str) -> Result<(), Error> {
    range_end(ptr, size)?;
    check_label(label)
}

/// One past the last byte of `[ptr, ptr + size)`, if that is a range that can be registered.
fn range_end(ptr: u64, size: u64) -> Result<u64, Error> {
    if size == 0 {
        return Err(Error::InvalidArgument("size must be non-zero"));
    }
    ptr.checked_add(size).ok_or(Error::InvalidArgument("ptr + size wraps the address space"))
}

fn check_label(label: &str) -> Result<(), Error> {
    if label.len() > MAX_LABEL_BYTES {
        return Err(Error::InvalidLabel("longer than 4096 bytes"));
    }
    Ok(())
}

/// Entries judged resident: `count` consecutive entries of the call from `index` on, all
/// inside one extent ([`Judged::extents`]); or one entry ([`INSPECTED`], count 1). Kept as
/// runs: in model order a whole allocation's entries are one, so the list is short (a call
/// of 100k entries in 1k allocations wrote 800 KB of it, one element per entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Passed {
    pub(crate) index: u32,
    pub(crate) count: u32,
    pub(crate) extent: u32,
}

impl Passed {
    /// Adds `count` entries from `index` on, inside `extent`, to the runs of `passed`.
    fn add(passed: &mut Vec<Passed>, index: u32, count: u32, extent: u32) {
        match passed.last_mut() {
            Some(run) if run.extent == extent && extent != INSPECTED && run.index + run.count == index => run.count += count,
            _ => passed.push(Passed { index, count, extent }),
        }
    }
}

/// [`Passed::extent`] of an entry over several pieces: its inspection is the next of
/// [`Judged::inspected`].
pub(crate) const INSPECTED: u32 = u32::MAX;

/// Every entry of one call judged from one snapshot of the driver's answers.
pub(crate) struct Judged {
    /// The entries that can be registered, in order, as runs.
    pub(crate) passed: Vec<Passed>,
    /// The inspections of the passed entries over several pieces, in order.
    pub(crate) inspected: Vec<Inspection>,
    /// The extents the passed entries lie in: where a check asks, and the answer there.
    pub(crate) extents: Vec<(u64, PointerInfo)>,
    /// The entries that cannot be registered (index in the call, why), in order.
    pub(crate) failures: Vec<(usize, Error)>,
    /// Driver queries made.
    pub(crate) queries: u64,
    /// The passed entries' labels, their lengths summed (counted while judging, which reads
    /// them anyway: storing them then needs no pass of its own to size its string).
    pub(crate) label_bytes: usize,
}

#[cfg(test)]
impl Judged {
    /// Each passed entry's index and extent, in order.
    pub(crate) fn each_passed(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.passed.iter().flat_map(|run| (run.index..run.index + run.count).map(move |i| (i, run.extent)))
    }
}

/// How one entry was found resident.
enum Found {
    /// Wholly inside one extent: one piece, judged by the extent's answer.
    Within(u32),
    /// Inspected piece by piece (a range over several VMM mappings).
    Inspected(Inspection),
}

/// Judges every entry of `regions` from one snapshot of the driver's answers. The same range
/// twice in one call is [`Error::DuplicateRange`] from its second occurrence on. At most
/// 2^32 - 1 entries (the caller checks).
pub(crate) fn judge_all(driver: &dyn Driver, regions: &[Region<'_>]) -> Judged {
    let mut snapshot = Snapshot::new(driver);
    let mut seen = Ranges::default();
    let (mut passed, mut inspected, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let mut label_bytes = 0;
    let mut i = 0;
    while i < regions.len() {
        // Most entries lie in the extent the entry before them was found in: a run of them.
        let (count, extent, bytes) = within_known(&mut snapshot, &mut seen, &regions[i..]);
        if count > 0 {
            label_bytes += bytes;
            Passed::add(&mut passed, i as u32, count as u32, extent);
            i += count;
            continue;
        }
        match judge_one(&mut snapshot, &mut seen, regions, i) {
            Err(e) => failures.push((i, e)),
            Ok(found) => {
                label_bytes += regions[i].label.len();
                match found {
                    Found::Within(extent) => Passed::add(&mut passed, i as u32, 1, extent),
                    Found::Inspected(inspection) => {
                        Passed::add(&mut passed, i as u32, 1, INSPECTED);
                        inspected.push(inspection);
                    }
                }
            }
        }
        i += 1;
    }
    let extents = snapshot.extents.iter().map(|e| (e.start, e.info)).collect();
    Judged { passed, inspected, extents, failures, queries: snapshot.queries, label_bytes }
}

/// How many entries from the first of `regions` on lie wholly inside the extent
/// [`Snapshot::known`] finds for the first, in memory that can be registered, each valid and
/// new (then added to `seen`): what [`judge_one`] would find for each (`Found::Within`),
/// without its calls. With the extent and their labels' bytes. None (0) when the first is not
/// such an entry: then nothing was changed but what `known` changes as `judge_one`'s lookup
/// would, and `judge_one` judges it.
fn within_known(snapshot: &mut Snapshot<'_>, seen: &mut Ranges, regions: &[Region<'_>]) -> (usize, u32, usize) {
    const NONE: (usize, u32, usize) = (0, NO_EXTENT, 0);
    let Some(first) = regions.first() else { return NONE };
    if snapshot.overlap || seen.set.is_some() {
        return NONE;
    }
    let Some(e) = snapshot.known(first.ptr) else { return NONE };
    let Some(extent) = snapshot.extents.get(e as usize).filter(|extent| extent.resident) else { return NONE };
    let Some(last) = seen.last.get_mut(e as usize) else { return NONE };
    // The run's checks with the extent and the bucket's last range held here, written back
    // once: in model order a run is a whole allocation's entries.
    let (start, end) = (extent.start, extent.end);
    let (mut previous, mut count, mut bytes) = (*last, 0, 0);
    for r in regions {
        let inside = r.size != 0 && start <= r.ptr && r.ptr.checked_add(r.size).is_some_and(|r_end| r_end <= end);
        if !inside || r.label.len() > MAX_LABEL_BYTES || previous.is_some_and(|p| p >= (r.ptr, r.size)) {
            break;
        }
        previous = Some((r.ptr, r.size));
        count += 1;
        bytes += r.label.len();
    }
    if count == 0 {
        return NONE;
    }
    *last = previous;
    (count, e, bytes)
}

/// Judges entry `i`, as [`crate::Monitor::register`] would.
fn judge_one(snapshot: &mut Snapshot<'_>, seen: &mut Ranges, regions: &[Region<'_>], i: usize) -> Result<Found, Error> {
    let r = &regions[i];
    // The answer for the first byte comes first: it is the duplicate check's bucket.
    let looked_up = range_end(r.ptr, r.size).map(|end| (end, snapshot.lookup(r.ptr)));
    if snapshot.overlap {
        // Two extents hold some addresses: the same range could fall in either bucket.
        seen.check_all(&regions[..i]);
    }
    let bucket = match looked_up {
        Ok((_, Ok(Answer::Extent(e)))) => e,
        Ok(_) => {
            // No extent for a valid range (a failed query, memory that is not CUDA's): the
            // same range may find one later in the call, in another bucket; from here on every
            // range is checked against all before it.
            seen.check_all(&regions[..i]);
            NO_EXTENT
        }
        Err(_) => NO_EXTENT,
    };
    if !seen.insert(r.ptr, r.size, bucket, &regions[..i]) {
        return Err(Error::DuplicateRange);
    }
    let (end, first) = looked_up?;
    check_label(r.label)?;
    let first = match first? {
        Answer::Extent(e) => {
            let extent = &snapshot.extents[e as usize];
            // Wholly inside one extent of memory that can be registered: what inspecting it
            // would find, without building the inspection.
            if extent.resident && extent.start <= r.ptr && end <= extent.end {
                return Ok(Found::Within(e));
            }
            extent.info
        }
        Answer::Alone(info) => info,
    };
    let mut first = Some(first);
    let inspection = inspect_with(|address| match first.take() {
        Some(info) if address == r.ptr => Ok(info),
        _ => snapshot.answer(address),
    }, r.ptr, r.size)?;
    match inspection.verdict {
        Verdict::Resident => Ok(Found::Inspected(inspection)),
        refused => Err(Error::Refused(refused)),
    }
}

/// The ranges the entries of one call have named, to find the same range twice.
///
/// Each entry falls in the bucket of the extent its first byte lies in (or of no extent, for a
/// range that cannot be registered): the same range twice falls in the same bucket, since an
/// answer is kept for its extent all through the call. A valid range with no extent (a failed
/// query, not CUDA memory) could find one later: from then on, every range is checked against
/// all (`check_all`), as from the first pair of overlapping extents (memory freed and allocated
/// again while the call asked). Entries usually come in address order within an allocation (a model's
/// parameters as its allocator laid them out, allocations in any order or interleaved):
/// while each bucket's ranges ascend, every range is new and nothing is kept but the last of
/// each bucket; at the first that does not, a set is built from the entries before it.
#[derive(Default)]
struct Ranges {
    /// The last range of each extent's bucket, by extent index.
    last: Vec<Option<(u64, u64)>>,
    /// The last range of the entries in no extent.
    stray: Option<(u64, u64)>,
    set: Option<std::collections::HashSet<(u64, u64), std::hash::BuildHasherDefault<crate::core::registry::IntegerHasher>>>,
}

impl Ranges {
    /// From now on, checks every range against all the ranges of `before` and after.
    fn check_all(&mut self, before: &[Region<'_>]) {
        if self.set.is_none() {
            self.set = Some(before.iter().map(|r| (r.ptr, r.size)).collect());
        }
    }

    /// Adds `[ptr, ptr + size)`, which follows `before` in the call and falls in `bucket`;
    /// false when it was named before, whether or not that entry could be registered.
    fn insert(&mut self, ptr: u64, size: u64, bucket: u32, before: &[Region<'_>]) -> bool {
        let range = (ptr, size);
        if let Some(set) = &mut self.set {
            return set.insert(range);
        }
        let last = if bucket == NO_EXTENT {
            &mut self.stray
        } else {
            let b = bucket as usize;
            if self.last.len() <= b {
                self.last.resize(b + 1, None);
            }
            &mut self.last[b]
        };
        if last.is_none_or(|last| last < range) {
            *last = Some(range);
            return true;
        }
        let mut set: std::collections::HashSet<_, _> = before.iter().map(|r| (r.ptr, r.size)).collect();
        let new = set.insert(range);
        self.set = Some(set);
        new
    }
}

/// The result of a whole [`crate::Monitor::register_many`] call: per entry, in the order
/// given, its id or why it was not registered. Kept compact (the first id and the failures):
/// the registered entries' ids are consecutive, in entry order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    entries: usize,
    /// The first registered entry's id.
    first: RegistrationId,
    /// The entries that failed themselves (index, why), in order.
    failures: Vec<(usize, Error)>,
    /// All-or-nothing and some entry failed: nothing was registered.
    none: bool,
    /// Driver queries the call made (at most one per distinct allocation or mapping, plus
    /// one per entry that is not CUDA memory).
    pub queries: u64,
}

impl Registered {
    /// The result of a call with `entries` entries: `failures` (in order) were not
    /// registered, and the others got `first, first + 1, ...` unless `none`.
    pub(crate) fn new(entries: usize, first: RegistrationId, failures: Vec<(usize, Error)>, none: bool, queries: u64) -> Registered {
        Registered { entries, first, failures, none, queries }
    }

    /// How many entries were registered.
    pub fn registered(&self) -> usize {
        if self.none {
            0
        } else {
            self.entries - self.failures.len()
        }
    }

    /// How many entries the call had.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the call had no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Entry `i`'s id, or why it was not registered. With all-or-nothing and any entry
    /// failing, the entries that did not fail themselves hold [`Error::EntriesFailed`] (not
    /// registered because another entry failed). `None` past the last entry.
    pub fn result(&self, i: usize) -> Option<Result<RegistrationId, Error>> {
        if i >= self.entries {
            return None;
        }
        Some(match self.failures.binary_search_by_key(&i, |&(failed, _)| failed) {
            Ok(k) => Err(self.failures[k].1.clone()),
            Err(_) if self.none => Err(Error::EntriesFailed),
            Err(before) => Ok(self.first + (i - before) as u64),
        })
    }

    /// Every entry's [`Registered::result`], in order.
    pub fn results(&self) -> impl Iterator<Item = Result<RegistrationId, Error>> + '_ {
        let mut failures = self.failures.iter().peekable();
        let mut next = self.first;
        (0..self.entries).map(move |i| match failures.next_if(|(failed, _)| *failed == i) {
            Some((_, e)) => Err(e.clone()),
            None if self.none => Err(Error::EntriesFailed),
            None => {
                next += 1;
                Ok(next - 1)
            }
        })
    }

    /// The ids of the registered entries, in entry order.
    pub fn ids(&self) -> impl Iterator<Item = RegistrationId> {
        self.first..self.first + self.registered() as u64
    }

    /// The entries that failed themselves (index, why), in order.
    pub fn failures(&self) -> &[(usize, Error)] {
        &self.failures
    }
}

#[cfg(test)]
#[path = "batch/tests.rs"]
mod tests;
