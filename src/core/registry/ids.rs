//! Registration ids: unique in the process, never 0, handed to threads in blocks, tagged with
//! the library copy that gave them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::RegistrationId;

/// Ids are handed to threads in blocks of this many.
pub(super) const ID_BLOCK: u64 = 64;

/// The counter blocks of ids are taken from (per copy of the library).
static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's block of ids: the next one and the end.
    static IDS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A new registration id: unique in the process, never 0. Threads take ids in blocks, so
/// registering on many threads does not contend on one counter: taking an id reads nothing
/// another thread writes.
pub(super) fn next_id() -> RegistrationId {
    IDS.with(|ids| {
        let (mut next, mut end) = ids.get();
        if next == end {
            // Counter 0 is skipped: ids are never 0, in any copy.
            let block = NEXT_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed).max(1);
            next = copy_tag() + block;
            end = copy_tag() + (block | (ID_BLOCK - 1)) + 1;
        }
        ids.set((next + 1, end));
        next
    })
}

/// Drops the calling thread's block: its next id starts a new one. For a thread that
/// registers rarely, whose block is old: its ids would go far from the end of their shard
/// (a search and a shift of many entries under the lock), so the registry asks for a new
/// one when it finds an id older than its shard's newest.
pub(super) fn drop_block() {
    IDS.with(|ids| ids.set((0, 0)));
}

/// The first of `count` consecutive new ids (unique in the process, never 0), starting a
/// block of their own: for a batch, which then fills whole blocks, one shard each.
pub(super) fn next_ids(count: u64) -> RegistrationId {
    // One more than asked, so that skipping counter 0 still leaves `count`.
    let blocks = (count + 1).div_ceil(ID_BLOCK);
    let block = NEXT_BLOCK.fetch_add(blocks * ID_BLOCK, Ordering::Relaxed).max(1);
    copy_tag() + block
}

/// Bits of an id below the tag of the library copy that gave it: 2^42 (4.4 trillion)
/// registrations per copy, and every id stays below 2^53, exact in JSON readers that use
/// doubles.
pub(super) const ID_COUNTER_BITS: u32 = 42;

/// This copy of the library's tag, in the id bits above the counter.
///
/// A process can hold two copies of the library (a Python wheel beside an engine's own), each
/// with its own counter: without a tag both hand out id 1, and one copy's id would name the
/// other's registration. The tag is one more than a POSIX thread-specific-data key that this
/// copy creates and never deletes: keys are unique in the process by construction, so two
/// copies never share a tag. (If no key can be created, PTHREAD_KEYS_MAX used up, the tag is
/// taken from the address of this copy's code, above the range keys use.)
pub(super) fn copy_tag() -> u64 {
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
