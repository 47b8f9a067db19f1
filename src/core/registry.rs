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

use crate::core::sync::lock;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::core::driver::{DriverError, PointerInfo};
use crate::core::verdict::{classify_piece, Piece, Verdict};

/// Identifies a registration. Never 0 and unique in the process, so an id from another
/// monitor is never mistaken for one of this monitor's.
pub type RegistrationId = u64;

const SHARDS: usize = 64;

/// Ids are handed to threads in blocks of this many.
const ID_BLOCK: u64 = 64;

/// A new registration id: unique in the process, never 0. Threads take ids in blocks, so
/// registering on many threads does not contend on one counter.
fn next_id() -> RegistrationId {
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static IDS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    IDS.with(|ids| {
        let (mut next, mut end) = ids.get();
        // A thread that registers rarely would insert ids of an old block far from the end of
        // its shard (a search and a shift of many entries under the lock): once a shard's worth
        // of newer blocks has gone out, its block is dropped for a new one.
        let newest = NEXT_BLOCK.load(Ordering::Relaxed) + copy_tag();
        if next == end || newest > end + SHARDS as u64 * ID_BLOCK {
            // Counter 0 is skipped: ids are never 0, in any copy.
            let block = NEXT_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed).max(1);
            next = copy_tag() + block;
            end = copy_tag() + (block | (ID_BLOCK - 1)) + 1;
        }
        ids.set((next + 1, end));
        next
    })
}

/// Bits of an id below the tag of the library copy that gave it: 2^42 (4.4 trillion)
/// registrations per copy, and every id stays below 2^53, exact in JSON readers that use
/// doubles.
const ID_COUNTER_BITS: u32 = 42;

/// This copy of the library's tag, in the id bits above the counter.
///
/// A process can hold two copies of the library (a Python wheel beside an engine's own), each
/// with its own counter: without a tag both hand out id 1, and one copy's id would name the
/// other's registration. The tag is one more than a POSIX thread-specific-data key that this
/// copy creates and never deletes: keys are unique in the process by construction, so two
/// copies never share a tag. (If no key can be created, PTHREAD_KEYS_MAX used up, the tag is
/// taken from the address of this copy's code, above the range keys use.)
fn copy_tag() -> u64 {
    static TAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TAG.get_or_init(|| {
        extern "C" {
            fn pthread_key_create(key: *mut std::ffi::c_uint, destructor: Option<unsafe extern "C" fn(*mut std::ffi::c_void)>) -> std::ffi::c_int;
        }
        const TAG_LIMIT: u64 = 1 << (53 - ID_COUNTER_BITS);
        let mut key: std::ffi::c_uint = 0;
        // SAFETY: writes one key; no destructor.
        let tag = if unsafe { pthread_key_create(&mut key, None) } == 0 && u64::from(key) + 1 < TAG_LIMIT / 2 {
            u64::from(key) + 1
        } else {
            TAG_LIMIT / 2 + (copy_tag as fn() -> u64 as usize as u64 >> 12) % (TAG_LIMIT / 2)
        };
        tag << ID_COUNTER_BITS
    })
}

/// Whether `id` was given by this copy of the library (see [`copy_tag`]).
pub fn is_from_this_copy(id: RegistrationId) -> bool {
    id >> ID_COUNTER_BITS << ID_COUNTER_BITS == copy_tag()
}

/// A registration as reported: a copy, taken at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationInfo {
    /// Its id.
    pub id: RegistrationId,
    /// First byte.
    pub ptr: u64,
    /// Length in bytes.
    pub size: u64,
    /// The engine's name for it (for example a tensor name).
    pub label: String,
    /// The device that held it when registered.
    pub device: i32,
    /// The verdict of the last check that could judge it (a failed query leaves it).
    pub verdict: Verdict,
    /// Whether the driver query for it failed in the last check.
    pub check_failing: bool,
    /// The allocations or mappings that held it when registered.
    pub pieces: Vec<Piece>,
    /// Its content-integrity state when sealed (`None`: not sealed, residency only).
    pub seal: Option<crate::core::integrity::SealInfo>,
}

impl RegistrationInfo {
    /// The verdict of the last check that could judge it.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }
}

/// A change of a registration's state, found by a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The verdict changed.
    Verdict {
        /// The registration after the change.
        registration: RegistrationInfo,
        /// Verdict before.
        from: Verdict,
    },
    /// A query for it started failing.
    CheckFailed {
        /// The registration.
        registration: RegistrationInfo,
        /// Why.
        error: DriverError,
    },
}

// Verdicts are kept as bytes here (they are i32 in the C ABI): a million registrations.
#[derive(Debug, Clone, Copy)]
struct TrackedPiece {
    piece: Piece,
    verdict: u8,
    failing: bool,
}

fn verdict_of(raw: u8) -> Verdict {
    Verdict::from_raw(i32::from(raw)).unwrap_or(Verdict::CheckFailed)
}

/// Most registrations are one piece (one allocation); VMM ranges have several.
#[derive(Debug)]
enum Pieces {
    One(TrackedPiece),
    Many(Box<[TrackedPiece]>),
}

impl Pieces {
    fn as_slice(&self) -> &[TrackedPiece] {
        match self {
            Pieces::One(p) => std::slice::from_ref(p),
            Pieces::Many(ps) => ps,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [TrackedPiece] {
        match self {
            Pieces::One(p) => std::slice::from_mut(p),
            Pieces::Many(ps) => ps,
        }
    }
}

#[derive(Debug)]
struct Registration {
    label: Box<str>,
    pieces: Pieces,
    device: i32,
    verdict: u8,
    failing: bool,
    /// Sealed and found with bytes that differ from the fingerprint (src/core/integrity): the
    /// verdict is MODIFIED while the memory is otherwise resident.
    modified: bool,
}

impl Registration {
    /// The verdict its pieces and its content give: a residency verdict wins over MODIFIED.
    fn judged(&self) -> Verdict {
        let residency = self.pieces.as_slice().iter().fold(Verdict::Resident, |v, t| v.worst(verdict_of(t.verdict)));
        if residency == Verdict::Resident && self.modified {
            Verdict::Modified
        } else {
            residency
        }
    }
}

impl Registration {
    fn info(&self, id: RegistrationId) -> RegistrationInfo {
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

    fn size(&self) -> u64 {
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
struct RegistrationShard {
    ids: Vec<RegistrationId>,
    /// `slots[i]` is the registration `ids[i]`, or `None` once it is removed.
    slots: Vec<Option<Registration>>,
    holes: usize,
    // Counted per shard, under its lock: global atomics would bounce one cache line between
    // every thread that registers.
    count: u64,
    tracked_bytes: u64,
    /// Registrations per device ordinal in this shard (a handful of entries).
    per_device: Vec<(i32, u64)>,
}

impl RegistrationShard {
    fn get(&self, id: RegistrationId) -> Option<&Registration> {
        let i = self.ids.binary_search(&id).ok()?;
        self.slots[i].as_ref()
    }

    fn get_mut(&mut self, id: RegistrationId) -> Option<&mut Registration> {
        let i = self.ids.binary_search(&id).ok()?;
        self.slots[i].as_mut()
    }

    /// The registrations, in id order.
    fn iter(&self) -> impl Iterator<Item = (RegistrationId, &Registration)> {
        self.ids.iter().zip(&self.slots).filter_map(|(&id, r)| r.as_ref().map(|r| (id, r)))
    }

    fn push(&mut self, id: RegistrationId, registration: Registration) {
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

    fn count_device(&mut self, device: i32, added: bool) {
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

    fn remove(&mut self, id: RegistrationId) -> Option<Registration> {
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
    fn compact(&mut self) {
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

/// Hashes the keys of the allocation table and the member sets (device addresses and
/// registration ids: integers the engine's allocator and our counter hand out, not chosen by
/// an attacker) with one mixing step instead of SipHash: registering, unregistering and every
/// changed answer in a check hash once per allocation.
#[derive(Debug, Default, Clone, Copy)]
struct IntegerHasher(u64);

impl Hasher for IntegerHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only integers are hashed here; this is for completeness. Each byte goes through
        // the mixing step, so every byte and its position count.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        // MurmurHash3's 64-bit finaliser: every input bit reaches both the high bits (the
        // table's tags) and the low bits (its bucket index). Addresses differ mostly in the
        // middle bits (512-byte to 2 MiB alignment), ids in the low ones.
        let mut h = self.0 ^ x;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IntegerMap<V> = HashMap<u64, V, BuildHasherDefault<IntegerHasher>>;
// Generic like IntegerMap (cbindgen, which reads this crate for the C ABI's enums, passes over
// generic aliases; a plain one it tries to declare, and fails on std's three-parameter HashSet).
type IntegerSet<K = u64> = HashSet<K, BuildHasherDefault<IntegerHasher>>;

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

/// One shard of the allocation table. `generation` changes whenever an address is added or
/// removed or marked for a new judgement, so a check can keep its sorted list of addresses
/// until then.
#[derive(Debug, Default)]
struct AllocationShard {
    map: IntegerMap<Allocation>,
    /// The members of the allocations that hold several registrations (an arena of tensors,
    /// a pool of KV blocks), by address: a set, so that unregistering one of a million
    /// tensors in one arena is O(1). Kept apart so that the common allocation of one
    /// registration is 24 bytes in `map`.
    several: IntegerMap<IntegerSet>,
    generation: u64,
    /// Marks handed out (see [`is_mark`]).
    marks: u64,
}

/// A new mark from a shard's counter (2 to 2^63 - 1, then round again).
fn next_mark(marks: &mut u64) -> u64 {
    *marks = marks.wrapping_add(1);
    2 + *marks % (ANSWER_BIT - 2)
}

#[derive(Debug)]
struct Allocation {
    /// Fingerprint of the driver's last answer at this address that the members were judged
    /// by, [`FAILED`], or a mark (see [`is_mark`]) that forces the next check to judge them
    /// again. A check judges only when this is still what its plan held when it asked.
    fingerprint: u64,
    /// The one registration inside, or [`SEVERAL`]: then they are in the shard's `several`.
    member: RegistrationId,
}

/// In [`Allocation::member`]: more than one registration; ids are never 0.
const SEVERAL: RegistrationId = 0;

/// Fingerprints of answers have this bit set; below it are [`FAILED`] and the marks.
const ANSWER_BIT: u64 = 1 << 63;
/// The fingerprint recorded for a failed query.
const FAILED: u64 = 1;

/// Whether `fingerprint` is a mark: the value an allocation gets when a registration joins it
/// having seen a different answer, so that the next check judges its members again. Each
/// marking takes a new mark from its shard's counter, so a check that asked before a join
/// never finds its plan's value still there afterwards.
pub fn is_mark(fingerprint: u64) -> bool {
    fingerprint < ANSWER_BIT && fingerprint != FAILED
}

/// A fingerprint of everything the verdicts depend on in an answer (never FAILED or a mark).
pub fn fingerprint(info: &PointerInfo) -> u64 {
    let raw_type = match info.memory_type {
        crate::core::driver::MemoryType::Unregistered => 0,
        crate::core::driver::MemoryType::Host => 1,
        crate::core::driver::MemoryType::Device => 2,
        crate::core::driver::MemoryType::Array => 3,
        crate::core::driver::MemoryType::Unified => 4,
        crate::core::driver::MemoryType::Other(x) => u64::from(x),
    };
    let words = [
        raw_type | (u64::from(info.is_managed) << 32),
        info.device_ordinal as u32 as u64,
        info.buffer_id,
        info.range_start,
        info.range_size,
        info.mapping_base,
        info.mapping_size,
    ];
    // Each word times its own odd constant, summed. The products are independent of each
    // other, so this is a few cycles where a chained hash was about 35 (a check runs it once
    // per query, next to a driver call of about 120 ns). Multiplying by an odd constant is a
    // bijection on u64, so two answers that differ in one word share a fingerprint only if the
    // sums differ in the top bit alone (which ANSWER_BIT hides): a difference of exactly 2^63
    // in that word. Differing in several, the differences would have to cancel exactly.
    const FACTORS: [u64; 7] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0xd6e8_feb8_6659_fd93,
        0xa076_1d64_78bd_642f,
        0xe703_7ed1_a0b4_28db,
        0x8ebc_6af0_9c88_c6e3,
    ];
    words.iter().zip(FACTORS).fold(0u64, |h, (&w, k)| h.wrapping_add(w.wrapping_mul(k))) | ANSWER_BIT
}

/// [`Registry::apply`] judged nothing: the allocation changed after the caller's plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// The value the plan should hold for the address from now on.
    pub current: u64,
}

/// Registrations and their bytes for one device and verdict: how many, and how many bytes
/// (one entry may stand for one registration or for many). What the Prometheus output needs
/// of the registrations, with no copy of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationFigures {
    /// Device ordinal.
    pub device: i32,
    /// Verdict.
    pub verdict: Verdict,
    /// Registrations.
    pub registrations: u64,
    /// Sum of their sizes.
    pub bytes: u64,
}

/// The name [`RegistrationFigures`] had in the registry.
pub type Tally = RegistrationFigures;

/// Counts kept in step with the registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryCounts {
    /// Registrations.
    pub registrations: u64,
    /// Sum of their sizes.
    pub tracked_bytes: u64,
    /// Registrations whose last verdict is a violation.
    pub violating: u64,
    /// Registrations whose driver query is failing.
    pub failing: u64,
    /// Registrations both in violation (by their last verdict) and failing their query.
    pub violating_and_failing: u64,
    /// Distinct allocations and mappings a check asks about.
    pub allocations: u64,
}

/// All registrations of one monitor.
pub struct Registry {
    registrations: Box<[Padded<Mutex<RegistrationShard>>]>,
    allocations: Box<[Padded<Mutex<AllocationShard>>]>,
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
            violating: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            violating_and_failing: AtomicU64::new(0),
        }
    }

    /// Adds a registration that was found resident. `answers` are the driver's answers at
    /// each piece's `query_at`, as seen during registration, in piece order.
    pub fn insert(&self, label: &str, device: i32, pieces: &[Piece], answers: &[PointerInfo]) -> RegistrationId {
        let id = next_id();
        let track = |piece: &Piece| TrackedPiece { piece: *piece, verdict: Verdict::Resident as u8, failing: false };
        // One piece, the common case, without a heap allocation.
        let pieces_field = match pieces {
            [one] => Pieces::One(track(one)),
            _ => Pieces::Many(pieces.iter().map(track).collect()),
        };
        let registration =
            Registration { label: label.into(), device, verdict: Verdict::Resident as u8, failing: false, modified: false, pieces: pieces_field };
        let size = registration.size();
        // The registration exists before any allocation names it, so a check that finds it
        // through an allocation can always read it.
        {
            let mut shard = lock(&self.registrations[shard_of_id(id)]);
            shard.push(id, registration);
            shard.count += 1;
            shard.tracked_bytes += size;
            shard.count_device(device, true);
        }
        for (piece, answer) in pieces.iter().zip(answers) {
            let seen = fingerprint(answer);
            let address = piece.query_at;
            let mut guard = lock(&self.allocations[shard_of_address(address)]);
            let AllocationShard { map, several, generation, marks } = &mut *guard;
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
        id
    }

    /// Removes a registration; `None` if the id is not registered (any more). Returns nothing
    /// of it: unregistering is on the engine's hot path, and a copy of the label would cost an
    /// allocation per call.
    pub fn remove(&self, id: RegistrationId) -> Option<()> {
        let registration = {
            let mut shard = lock(&self.registrations[shard_of_id(id)]);
            let registration = shard.remove(id)?;
            shard.count -= 1;
            shard.tracked_bytes -= registration.size();
            shard.count_device(registration.device, false);
            registration
        };
        if verdict_of(registration.verdict).is_violation() {
            self.violating.fetch_sub(1, Ordering::Relaxed);
        }
        if registration.failing {
            self.failing.fetch_sub(1, Ordering::Relaxed);
        }
        if registration.failing && verdict_of(registration.verdict).is_violation() {
            self.violating_and_failing.fetch_sub(1, Ordering::Relaxed);
        }
        for tracked in registration.pieces.as_slice() {
            let address = tracked.piece.query_at;
            let mut guard = lock(&self.allocations[shard_of_address(address)]);
            let AllocationShard { map, several, generation, .. } = &mut *guard;
            let Some(allocation) = map.get_mut(&address) else { continue };
            let empty = if allocation.member == SEVERAL {
                let left = several.get_mut(&address).map(|ids| {
                    ids.remove(&id);
                    ids.len()
                });
                match left {
                    Some(0) | None => {
                        several.remove(&address);
                        true
                    }
                    Some(1) => {
                        // Back to the common case: the last one moves into the entry.
                        let last = several.remove(&address).and_then(|ids| ids.into_iter().next());
                        allocation.member = last.unwrap_or(SEVERAL);
                        last.is_none()
                    }
                    Some(_) => false,
                }
            } else {
                allocation.member == id
            };
            if empty {
                map.remove(&address);
                *generation += 1;
            }
        }
        Some(())
    }

    /// The registration with this id, if registered.
    pub fn get(&self, id: RegistrationId) -> Option<RegistrationInfo> {
        let shard = lock(&self.registrations[shard_of_id(id)]);
        shard.get(id).map(|r| r.info(id))
    }

    /// A copy of every registration, in id order.
    pub fn snapshot(&self) -> Vec<RegistrationInfo> {
        let mut all = Vec::new();
        for shard in self.registrations.iter() {
            let shard = lock(shard);
            all.extend(shard.iter().map(|(id, r)| r.info(id)));
        }
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
        devices.sort_unstable();
        devices
    }

    /// Registrations and bytes per (device, verdict), for metrics: counted under each shard's
    /// lock in turn, without copying labels or pieces.
    pub fn tally(&self) -> Vec<RegistrationFigures> {
        let mut tallies: Vec<RegistrationFigures> = Vec::new();
        for shard in self.registrations.iter() {
            let shard = lock(shard);
            for (_, registration) in shard.iter() {
                let verdict = verdict_of(registration.verdict);
                let size = registration.size();
                match tallies.iter_mut().find(|t| t.device == registration.device && t.verdict == verdict) {
                    Some(t) => {
                        t.registrations += 1;
                        t.bytes += size;
                    }
                    None => tallies.push(RegistrationFigures { device: registration.device, verdict, registrations: 1, bytes: size }),
                }
            }
        }
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
            let shard = lock(shard);
            counts.registrations += shard.count;
            counts.tracked_bytes += shard.tracked_bytes;
        }
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
        let members: Vec<RegistrationId> = {
            let mut guard = lock(&self.allocations[shard_of_address(address)]);
            let AllocationShard { map, several, .. } = &mut *guard;
            let Some(allocation) = map.get_mut(&address) else { return Ok(Vec::new()) };
            if allocation.fingerprint != judged_by {
                return Err(Stale { current: allocation.fingerprint });
            }
            allocation.fingerprint = Registry::fingerprint_of(answer);
            if allocation.member == SEVERAL {
                let mut ids: Vec<RegistrationId> = several.get(&address).map(|ids| ids.iter().copied().collect()).unwrap_or_default();
                ids.sort_unstable();
                ids
            } else {
                vec![allocation.member]
            }
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
            let (old_verdict, old_failing) = (verdict_of(registration.verdict), registration.failing);
            registration.verdict = verdict as u8;
            registration.failing = failing;
            self.recount(old_verdict, old_failing, verdict, failing);
            if !old_failing && failing {
                if let Err(error) = answer {
                    changes.push(Change::CheckFailed { registration: registration.info(id), error: error.clone() });
                }
            }
            if old_verdict != verdict {
                changes.push(Change::Verdict { registration: registration.info(id), from: old_verdict });
            }
        }
        Ok(changes)
    }

    /// Marks a sealed registration's content as modified (or, at reseal, as matching again)
    /// and returns the change of verdict it makes, if any; `None` for an unknown id.
    pub fn set_modified(&self, id: RegistrationId, modified: bool) -> Option<Option<Change>> {
        let mut shard = lock(&self.registrations[shard_of_id(id)]);
        let registration = shard.get_mut(id)?;
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
        let shard = lock(&self.registrations[shard_of_id(id)]);
        shard.get(id).map(|r| (verdict_of(r.verdict), r.failing))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::driver::MemoryType;

    fn answer(buffer_id: u64) -> PointerInfo {
        PointerInfo {
            memory_type: MemoryType::Device,
            is_managed: false,
            device_ordinal: 0,
            buffer_id,
            range_start: 0x1000,
            range_size: 0x1000,
            mapping_base: 0,
            mapping_size: 0,
        }
    }

    fn piece(start: u64, end: u64) -> Piece {
        Piece { query_at: 0x1000, start, end, buffer_id: 1 }
    }

    #[test]
    fn ids_are_never_zero_and_never_reused_across_registries() {
        let registry = Registry::new();
        let other = Registry::new();
        let a = registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        assert_ne!(a, 0);
        registry.remove(a).unwrap();
        let b = registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        let c = other.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        assert!(a != b && b != c && a != c);
        assert!(other.remove(b).is_none(), "an id from another registry is unknown here");
    }

    #[test]
    fn registrations_in_one_allocation_share_one_query_address() {
        let registry = Registry::new();
        let a = registry.insert("a", 0, &[piece(0x1000, 0x1800)], &[answer(1)]);
        let b = registry.insert("b", 0, &[piece(0x1800, 0x2000)], &[answer(1)]);
        assert_eq!(registry.counts().allocations, 1);
        assert_eq!(registry.counts().registrations, 2);
        assert_eq!(registry.counts().tracked_bytes, 0x1000);

        let changes = registry.apply(0x1000, &Ok(answer(2)), fingerprint(&answer(1))).unwrap();
        let changed: Vec<(u64, Verdict)> = changes
            .iter()
            .map(|c| match c {
                Change::Verdict { registration, .. } => (registration.id, registration.verdict),
                Change::CheckFailed { .. } => panic!("no failure"),
            })
            .collect();
        assert_eq!(changed, vec![(a, Verdict::Replaced), (b, Verdict::Replaced)]);
        assert_eq!(registry.counts().violating, 2);
        assert!(Registry::is_unchanged(fingerprint(&answer(2)), &Ok(answer(2))));

        registry.remove(a).unwrap();
        assert_eq!(registry.counts().allocations, 1);
        assert_eq!(registry.counts().violating, 1);
        registry.remove(b).unwrap();
        assert_eq!(registry.counts(), RegistryCounts::default());
    }

    #[test]
    fn a_failed_query_keeps_the_verdict_and_is_reported_once() {
        let registry = Registry::new();
        let a = registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        let mut managed = answer(1);
        managed.is_managed = true;
        assert_eq!(registry.apply(0x1000, &Ok(managed), fingerprint(&answer(1))).unwrap().len(), 1);
        let error = Err(DriverError::Call { function: "cuPointerGetAttributes", code: 999 });
        let changes = registry.apply(0x1000, &error, fingerprint(&managed)).unwrap();
        assert!(matches!(&changes[..], [Change::CheckFailed { .. }]));
        assert_eq!(registry.get(a).unwrap().verdict, Verdict::Managed);
        assert!(registry.get(a).unwrap().check_failing);
        assert_eq!((registry.counts().violating, registry.counts().failing), (1, 1));
        assert!(Registry::is_unchanged(FAILED, &error), "a persisting failure is no change");
        registry.apply(0x1000, &Ok(answer(1)), FAILED).unwrap();
        assert_eq!((registry.counts().violating, registry.counts().failing), (0, 0));
    }

    #[test]
    fn joining_an_allocation_with_a_different_answer_marks_it_for_a_new_judgement() {
        let registry = Registry::new();
        registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        registry.insert("b", 0, &[Piece { buffer_id: 2, ..piece(0x1000, 0x2000) }], &[answer(2)]);
        let mut addresses = Vec::new();
        for shard in 0..registry.allocation_shards() {
            registry.allocation_addresses(shard, &mut addresses);
        }
        assert_eq!(addresses.len(), 1);
        assert!(is_mark(addresses[0].1), "marked for a new judgement: {:#x}", addresses[0].1);
    }

    #[test]
    fn devices_are_those_that_hold_registrations_now() {
        let registry = Registry::new();
        let on_1 = registry.insert("a", 1, &[piece(0x1000, 0x2000)], &[answer(1)]);
        let on_0 = registry.insert("b", 0, &[Piece { query_at: 0x9000, ..piece(0x9000, 0xa000) }], &[answer(1)]);
        assert_eq!(registry.devices(), vec![0, 1]);
        registry.remove(on_1).unwrap();
        assert_eq!(registry.devices(), vec![0], "a GPU without registrations is no longer watched");
        registry.remove(on_0).unwrap();
        assert!(registry.devices().is_empty());
    }

    #[test]
    fn an_answer_older_than_a_new_members_marks_nothing_judged() {
        let registry = Registry::new();
        registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        // The check's plan saw fingerprint(answer(1)) and asked; meanwhile a registration
        // joined having seen answer(2), marking the allocation dirty.
        registry.insert("b", 0, &[Piece { buffer_id: 2, ..piece(0x1000, 0x2000) }], &[answer(2)]);
        let stale = registry.apply(0x1000, &Ok(answer(1)), fingerprint(&answer(1))).unwrap_err();
        assert!(is_mark(stale.current));
        assert_eq!(registry.counts().violating, 0, "stale answer: judge nothing");
        let changes = registry.apply(0x1000, &Ok(answer(2)), stale.current).unwrap();
        assert_eq!(changes.len(), 1, "the next check, planned with the mark, judges both");
    }

    #[test]
    fn a_join_after_the_query_of_a_check_that_planned_with_a_mark_judges_nothing() {
        let registry = Registry::new();
        registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        registry.insert("b", 0, &[Piece { buffer_id: 2, ..piece(0x1000, 0x2000) }], &[answer(2)]);
        let planned = registry.apply(0x1000, &Ok(answer(1)), 0).unwrap_err().current;
        assert!(is_mark(planned));
        // The check asks (answer 2) ... and before it applies, c joins having seen answer 3.
        let c = registry.insert("c", 0, &[Piece { buffer_id: 3, ..piece(0x1000, 0x2000) }], &[answer(3)]);
        let stale = registry.apply(0x1000, &Ok(answer(2)), planned).unwrap_err();
        assert_ne!(stale.current, planned, "a new mark for each join");
        assert_eq!(registry.get(c).unwrap().verdict, Verdict::Resident, "c not judged by an answer older than its own");
    }

    #[test]
    fn an_answer_from_before_the_address_was_registered_anew_judges_nothing() {
        let registry = Registry::new();
        let a = registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        let planned = fingerprint(&answer(1));
        // The check asks and finds the memory freed; then the engine unregisters a, allocates
        // again at the same address, and registers b; then the check applies its answer.
        let freed: Result<PointerInfo, DriverError> = Ok(PointerInfo::unregistered());
        registry.remove(a).unwrap();
        let b = registry.insert("b", 0, &[Piece { buffer_id: 2, ..piece(0x1000, 0x2000) }], &[answer(2)]);
        let stale = registry.apply(0x1000, &freed, planned).unwrap_err();
        assert_eq!(stale.current, fingerprint(&answer(2)), "plan with what b was registered against");
        assert_eq!(registry.get(b).unwrap().verdict, Verdict::Resident, "b not judged by the older answer");
        assert_eq!(registry.counts().violating, 0);
        // The next check, with the answer b saw, finds nothing changed; a later free is seen.
        assert!(Registry::is_unchanged(stale.current, &Ok(answer(2))));
        let changes = registry.apply(0x1000, &freed, stale.current).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(registry.get(b).unwrap().verdict, Verdict::NotMapped);
    }

    #[test]
    fn a_thread_that_registers_rarely_does_not_keep_an_old_block_of_ids() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel::<u64>();
        let rare = std::thread::spawn(move || {
            tell.send(next_id()).unwrap();
            wait.recv().unwrap();
            tell.send(next_id()).unwrap();
        });
        let first = told.recv().unwrap();
        let newest = (0..(SHARDS as u64 + 2) * ID_BLOCK).map(|_| next_id()).max().unwrap();
        go.send(()).unwrap();
        let second = told.recv().unwrap();
        rare.join().unwrap();
        assert!(first < newest);
        assert!(second > newest, "the rare thread went on with its old block: {second} after {newest}");
    }

    #[test]
    fn the_integer_hasher_uses_every_byte_it_is_given() {
        let hash = |bytes: &[u8]| {
            let mut h = IntegerHasher::default();
            h.write(bytes);
            h.finish()
        };
        assert_ne!(hash(&[1, 2, 3]), hash(&[9, 9, 3]));
        assert_ne!(hash(&[1, 2]), hash(&[2, 1]));
    }

    #[test]
    fn unregistering_one_of_many_members_keeps_the_others() {
        let registry = Registry::new();
        let ids: Vec<u64> = (0..1000u64)
            .map(|i| registry.insert("t", 0, &[piece(0x1000 + i, 0x1001 + i)], &[answer(1)]))
            .collect();
        assert_eq!(registry.counts().allocations, 1);
        for id in &ids[..999] {
            registry.remove(*id).unwrap();
        }
        assert_eq!(registry.counts().allocations, 1);
        let changes = registry.apply(0x1000, &Ok(answer(9)), fingerprint(&answer(1))).unwrap();
        assert_eq!(changes.len(), 1, "the last member is still judged");
        registry.remove(ids[999]).unwrap();
        assert_eq!(registry.counts().allocations, 0);
    }

    #[test]
    fn answers_that_differ_in_any_one_field_have_different_fingerprints() {
        let base = answer(0x51);
        let base_print = fingerprint(&base);
        assert!(!is_mark(base_print) && base_print != FAILED);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut variants = vec![
                PointerInfo { buffer_id: base.buffer_id ^ x, ..base },
                PointerInfo { range_start: base.range_start ^ x, ..base },
                PointerInfo { range_size: base.range_size ^ x, ..base },
                PointerInfo { mapping_base: base.mapping_base ^ x, ..base },
                PointerInfo { mapping_size: base.mapping_size ^ x, ..base },
                PointerInfo { device_ordinal: base.device_ordinal ^ (x as i32 | 1), ..base },
            ];
            if x & 1 == 1 {
                variants.push(PointerInfo { is_managed: !base.is_managed, ..base });
                variants.push(PointerInfo { memory_type: crate::core::driver::MemoryType::Host, ..base });
                variants.push(PointerInfo { memory_type: crate::core::driver::MemoryType::Other(x as u32 | 8), ..base });
            }
            for v in variants {
                assert_ne!(fingerprint(&v), base_print, "{v:?}");
                assert!(!is_mark(fingerprint(&v)) && fingerprint(&v) != FAILED);
            }
        }
    }

    #[test]
    fn holes_are_compacted_and_lookups_still_work() {
        let registry = Registry::new();
        let ids: Vec<u64> =
            (0..10_000u64).map(|i| registry.insert("x", 0, &[piece(0x1000 + i, 0x1001 + i)], &[answer(1)])).collect();
        for id in ids.iter().step_by(3).copied().collect::<Vec<_>>() {
            registry.remove(id).unwrap();
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(registry.get(*id).is_some(), i % 3 != 0);
        }
        assert_eq!(registry.counts().registrations, 10_000 - 3334);
        assert_eq!(registry.snapshot().len(), 10_000 - 3334);
    }

    #[test]
    fn steady_registering_and_unregistering_reuses_room_and_keeps_lookups_right() {
        let registry = Registry::new();
        let mut live: std::collections::VecDeque<u64> =
            (0..5_000u64).map(|i| registry.insert("x", 0, &[piece(0x1000 + i, 0x1001 + i)], &[answer(1)])).collect();
        let room = |registry: &Registry| -> usize { registry.registrations.iter().map(|s| lock(s).ids.capacity()).sum() };
        let room_before = room(&registry);
        let mut gone = Vec::new();
        for i in 0..200_000u64 {
            // Unregister an old one from the middle of the queue as well as the oldest, so
            // that holes land everywhere.
            let old = live.pop_front().unwrap();
            registry.remove(old).unwrap();
            if i % 1000 == 0 {
                gone.push(old);
            }
            let back = live.pop_back().unwrap();
            let middle = live.len() / 2;
            live.insert(middle, back);
            live.push_back(registry.insert("x", 0, &[piece(0x100_0000 + i, 0x100_0001 + i)], &[answer(1)]));
        }
        for id in &live {
            assert!(registry.get(*id).is_some(), "registration {id} lost");
        }
        for id in &gone {
            assert!(registry.get(*id).is_none(), "registration {id} came back");
        }
        assert_eq!(registry.counts().registrations, 5_000);
        assert_eq!(registry.snapshot().iter().map(|r| r.id).collect::<Vec<_>>(), {
            let mut ids: Vec<u64> = live.iter().copied().collect();
            ids.sort_unstable();
            ids
        });
        // Churn at a constant count must not keep growing the shards.
        // (A shard may hold up to its live count in holes before they are compacted away.)
        assert!(room(&registry) <= 2 * 5_000 + 64 * 16, "room grew from {room_before} to {}", room(&registry));
    }
}
