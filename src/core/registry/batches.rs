//! Registrations made together (`register_many`): one record for the whole call instead of
//! one per registration.
//!
//! Registered one by one, each of a model's hundreds of thousands of tensors costs a label
//! allocation, a table slot and a member-set insert. Registered together they are one
//! [`Batch`]: the labels in one string, fixed-size rows indexed by id, and one membership per
//! allocation for all its rows inside it (a [`Group`]). A batch holds registrations of one
//! piece (inside one allocation or mapping, nearly every tensor); one over several VMM
//! mappings, or inside a second extent at an address the batch already has a group for
//! (answers that changed during the call), is stored on its own, under an id from the
//! batch's range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use super::{RegistrationId, RegistrationInfo};
use crate::core::batch::Region;
use crate::core::driver::{DriverError, PointerInfo};
use crate::core::sync::lock;
use crate::core::verdict::{classify_piece, Piece, Verdict};

/// At most this many rows per batch: a bigger call makes several. Keeps label offsets in 32
/// bits (4 KiB labels at most) and bounds what one lock covers. Smaller in unit tests, so that
/// calls of several batches stay small.
pub(super) const MAX_ROWS: usize = if cfg!(test) { 1 << 10 } else { 1 << 19 };

/// [`Row::flags`]: still registered.
const LIVE: u8 = 1;
/// [`Row::flags`]: the last query for its allocation failed.
const FAILING: u8 = 2;
/// [`Row::flags`]: sealed and found modified (see `RegistrationEntry::modified`).
const MODIFIED: u8 = 4;

/// One registration of a batch: 24 bytes, its label in the batch's string. A tensor of 4 GiB
/// or more (its size does not fit 32 bits) is stored on its own.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    start: u64,
    size: u32,
    label_at: u32,
    label_len: u16,
    /// The residency verdict of its one piece (MODIFIED is in `flags`).
    verdict: u8,
    flags: u8,
    group: u32,
}

const _: () = assert!(std::mem::size_of::<Row>() == 24, "a row is 24 bytes");

impl Row {
    fn end(&self) -> u64 {
        self.start + u64::from(self.size)
    }

    fn live(&self) -> bool {
        self.flags & LIVE != 0
    }

    fn failing(&self) -> bool {
        self.flags & FAILING != 0
    }

    /// The verdict as reported: a residency verdict wins over MODIFIED.
    fn judged(&self) -> Verdict {
        match super::entries::verdict_of(self.verdict) {
            Verdict::Resident if self.flags & MODIFIED != 0 => Verdict::Modified,
            residency => residency,
        }
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }
}

/// A batch's rows inside one allocation: where a check asks, and which rows it judges.
#[derive(Debug, Clone, Copy)]
pub(super) struct Group {
    pub(super) query_at: u64,
    /// Fingerprint of the answer its rows were registered by.
    pub(super) seen: u64,
    buffer_id: u64,
    device: i32,
    /// Rows still registered.
    live: u32,
    /// Its rows: `order[from..to]`, or `rows[from..to]` when the batch has no `order`.
    from: u32,
    to: u32,
}

/// A state change of one row, for the registry's counters: (verdict, failing) before and after.
pub(super) type Transition = ((Verdict, bool), (Verdict, bool));

/// The registrations of one `register_many` call (or of a part of a large one).
#[derive(Debug)]
pub(super) struct Batch {
    first: RegistrationId,
    labels: String,
    /// Row `i` is registration `first + i` (rows stored elsewhere are never live).
    rows: Vec<Row>,
    /// One per allocation, in the order their first rows came.
    groups: Vec<Group>,
    /// Group indices sorted by `query_at` (a check finds an allocation's group by address).
    by_address: Vec<u32>,
    /// Row indices, grouped: a group's rows are `order[from..to]`. Empty when each group's
    /// rows are one run of `rows` (entries in model order).
    order: Vec<u32>,
    pub(super) live: u64,
    pub(super) live_bytes: u64,
}

/// What [`Batch::remove`] tells the registry.
pub(super) struct Removed {
    pub(super) verdict: Verdict,
    pub(super) failing: bool,
    /// The allocation this batch no longer has rows in, if that one was its last there.
    pub(super) left: Option<u64>,
    /// Whether no row is left.
    pub(super) empty: bool,
}

/// Builds a [`Batch`] row by row.
pub(super) struct BatchBuilder {
    batch: Batch,
    /// Group of each extent the caller names rows by (`u32::MAX`: none yet).
    group_of_extent: Vec<u32>,
    /// The addresses that have a group.
    addresses: std::collections::HashSet<u64, std::hash::BuildHasherDefault<super::IntegerHasher>>,
    /// The group of the last row pushed, and whether some group's rows are not one run.
    last_group: u32,
    scattered: bool,
}

impl BatchBuilder {
    /// A batch whose `rows` rows will be `first, first + 1, ...`, their labels
    /// `label_bytes` long in all, inside `extents` extents (numbered by the caller).
    pub(super) fn new(first: RegistrationId, rows: usize, label_bytes: usize, extents: usize) -> BatchBuilder {
        BatchBuilder {
            batch: Batch {
                first,
                labels: String::with_capacity(label_bytes),
                rows: Vec::with_capacity(rows),
                groups: Vec::new(),
                by_address: Vec::new(),
                order: Vec::new(),
                live: 0,
                live_bytes: 0,
            },
            group_of_extent: vec![u32::MAX; extents],
            addresses: Default::default(),
            last_group: u32::MAX,
            scattered: false,
        }
    }

    /// The group of the rows inside extent `extent` (`(query_at, answer)`), which come next,
    /// one run of them ([`BatchBuilder::push_rows`]). `None`, and nothing done, when another
    /// extent of this batch has the same address (answers that changed during the call: a
    /// group is judged by its address): its rows must then be stored on their own.
    #[inline]
    pub(super) fn open(&mut self, extent: usize, (query_at, answer): (u64, &PointerInfo)) -> Option<u32> {
        let batch = &mut self.batch;
        let group = match self.group_of_extent[extent] {
            u32::MAX if !self.addresses.insert(query_at) => return None,
            u32::MAX => {
                let g = batch.groups.len() as u32;
                let row = batch.rows.len() as u32;
                batch.groups.push(Group {
                    query_at,
                    seen: super::fingerprint(answer),
                    buffer_id: answer.buffer_id,
                    device: answer.device_ordinal,
                    live: 0,
                    from: row,
                    to: row,
                });
                self.group_of_extent[extent] = g;
                g
            }
            g => {
                self.scattered |= g != self.last_group;
                g
            }
        };
        self.last_group = group;
        Some(group)
    }

    /// Rows for `entries`, in `group` (from [`BatchBuilder::open`]), from the first on up to
    /// one of 4 GiB or more (which must be stored on its own); returns how many were pushed.
    /// (The group and the batch are counted once for them all, not at each row.)
    pub(super) fn push_rows(&mut self, group: u32, entries: &[Region<'_>]) -> usize {
        let Batch { rows, labels, groups, live, live_bytes, .. } = &mut self.batch;
        let (mut pushed, mut bytes) = (0, 0);
        for r in entries {
            let Ok(size) = u32::try_from(r.size) else { break };
            let label_at = labels.len() as u32;
            labels.push_str(r.label);
            rows.push(Row { start: r.ptr, size, label_at, label_len: r.label.len() as u16, verdict: Verdict::Resident as u8, flags: LIVE, group });
            pushed += 1;
            bytes += r.size;
        }
        if pushed > 0 {
            let g = &mut groups[group as usize];
            g.live += pushed as u32;
            g.to = rows.len() as u32;
            *live += pushed as u64;
            *live_bytes += bytes;
        }
        pushed
    }

    /// The next id's row is stored elsewhere (a registration of several pieces).
    pub(super) fn skip(&mut self) {
        self.batch.rows.push(Row { start: 0, size: 0, label_at: 0, label_len: 0, verdict: Verdict::Resident as u8, flags: 0, group: 0 });
    }

    /// The batch, its groups indexed by address and their rows indexed.
    pub(super) fn finish(self) -> Batch {
        let mut batch = self.batch;
        if self.scattered {
            // A counting sort of the rows by group: a check judges one allocation's rows
            // together. (Otherwise each group's rows are already `rows[from..to]`, rows
            // stored elsewhere among them never live.)
            let mut next = 0u32;
            for group in batch.groups.iter_mut() {
                group.from = next;
                group.to = next;
                next += group.live;
            }
            batch.order = vec![0; next as usize];
            for (i, row) in batch.rows.iter().enumerate() {
                if row.live() {
                    let group = &mut batch.groups[row.group as usize];
                    batch.order[group.to as usize] = i as u32;
                    group.to += 1;
                }
            }
        }
        // An index sorted by address for lookups: the rows keep their group numbers (no pass
        // over every row).
        batch.by_address = (0..batch.groups.len() as u32).collect();
        let groups = &batch.groups;
        batch.by_address.sort_unstable_by_key(|&g| groups[g as usize].query_at);
        batch
    }
}

impl Batch {
    /// Its first id.
    pub(super) fn first(&self) -> RegistrationId {
        self.first
    }

    /// How many ids its rows cover (live or not).
    pub(super) fn rows(&self) -> u64 {
        self.rows.len() as u64
    }

    /// The allocations it has rows in. (A group can have none: opened for a run whose every
    /// row went elsewhere, 4 GiB or more. Such a group must not join its allocation: only its
    /// last row leaving would leave it.)
    pub(super) fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|g| g.live > 0)
    }

    fn row(&self, id: RegistrationId) -> Option<(usize, &Row)> {
        let i = usize::try_from(id.checked_sub(self.first)?).ok()?;
        self.rows.get(i).filter(|r| r.live()).map(|r| (i, r))
    }

    fn info_of(&self, i: usize) -> RegistrationInfo {
        let row = &self.rows[i];
        let group = &self.groups[row.group as usize];
        let label = &self.labels[row.label_at as usize..row.label_at as usize + row.label_len as usize];
        RegistrationInfo {
            id: self.first + i as u64,
            ptr: row.start,
            size: u64::from(row.size),
            label: label.to_owned(),
            device: group.device,
            verdict: row.judged(),
            check_failing: row.failing(),
            pieces: vec![Piece { query_at: group.query_at, start: row.start, end: row.end(), buffer_id: group.buffer_id }],
            seal: None,
        }
    }

    /// A copy of registration `id`, if this batch holds it.
    pub(super) fn get(&self, id: RegistrationId) -> Option<RegistrationInfo> {
        self.row(id).map(|(i, _)| self.info_of(i))
    }

    /// Registration `id`'s verdict and whether its query is failing.
    pub(super) fn verdict(&self, id: RegistrationId) -> Option<(Verdict, bool)> {
        self.row(id).map(|(_, r)| (r.judged(), r.failing()))
    }

    /// Copies of every registration it holds, appended to `out`.
    pub(super) fn snapshot(&self, out: &mut Vec<RegistrationInfo>) {
        out.extend((0..self.rows.len()).filter(|&i| self.rows[i].live()).map(|i| self.info_of(i)));
    }

    /// Each live row's device, verdict and size, for tallies.
    pub(super) fn each(&self, mut f: impl FnMut(i32, Verdict, u64)) {
        for row in self.rows.iter().filter(|r| r.live()) {
            f(self.groups[row.group as usize].device, row.judged(), u64::from(row.size));
        }
    }

    /// The devices it has registrations on.
    pub(super) fn devices(&self, out: &mut Vec<i32>) {
        for group in self.groups.iter().filter(|g| g.live > 0) {
            if !out.contains(&group.device) {
                out.push(group.device);
            }
        }
    }

    /// Removes registration `id`; `None` if this batch does not hold it (any more).
    pub(super) fn remove(&mut self, id: RegistrationId) -> Option<Removed> {
        let (i, row) = self.row(id)?;
        let row = *row;
        self.rows[i].flags &= !LIVE;
        self.live -= 1;
        self.live_bytes -= u64::from(row.size);
        let group = &mut self.groups[row.group as usize];
        group.live -= 1;
        let left = (group.live == 0).then_some(group.query_at);
        Some(Removed { verdict: row.judged(), failing: row.failing(), left, empty: self.live == 0 })
    }

    /// Marks registration `id`'s content as modified or not; its change of state, if it is
    /// here.
    pub(super) fn set_modified(&mut self, id: RegistrationId, modified: bool) -> Option<(Transition, RegistrationInfo)> {
        let (i, row) = self.row(id)?;
        let before = (row.judged(), row.failing());
        self.rows[i].set(MODIFIED, modified);
        let row = &self.rows[i];
        Some(((before, (row.judged(), row.failing())), self.info_of(i)))
    }

    /// Judges again its rows inside the allocation at `address` by `answer`; calls `changed`
    /// with each row's transition and copy when its verdict or failing state changed.
    pub(super) fn judge(
        &mut self,
        address: u64,
        answer: &Result<PointerInfo, DriverError>,
        mut changed: impl FnMut(Transition, RegistrationInfo),
    ) {
        let Ok(k) = self.by_address.binary_search_by_key(&address, |&g| self.groups[g as usize].query_at) else { return };
        let group = self.groups[self.by_address[k] as usize];
        for k in group.from..group.to {
            let i = if self.order.is_empty() { k as usize } else { self.order[k as usize] as usize };
            let row = &mut self.rows[i];
            if !row.live() {
                continue;
            }
            let before = (row.judged(), row.failing());
            match answer {
                Ok(info) => {
                    let piece = Piece { query_at: group.query_at, start: row.start, end: row.end(), buffer_id: group.buffer_id };
                    row.verdict = classify_piece(&piece, group.device, info) as u8;
                    row.set(FAILING, false);
                }
                // The last verdict stays: a failed query says nothing about the memory.
                Err(_) => row.set(FAILING, true),
            }
            let after = (row.judged(), row.failing());
            if before != after {
                changed((before, after), self.info_of(i));
            }
        }
    }
}

/// The batches of one registry, by first id.
#[derive(Debug, Default)]
pub(super) struct Batches {
    // A read lock to find a batch; written only when a batch comes or goes.
    table: RwLock<BTreeMap<RegistrationId, (u64, Arc<Mutex<Batch>>)>>,
}

impl Batches {
    /// Adds a batch (its first id and how many ids its rows cover). The caller may hold its
    /// lock meanwhile, so that nothing reads or removes its rows until the allocations name it.
    pub(super) fn add(&self, batch: &Arc<Mutex<Batch>>, first: RegistrationId, rows: u64) {
        self.table.write().unwrap_or_else(|e| e.into_inner()).insert(first, (rows, batch.clone()));
    }

    /// The batch whose range holds `id`.
    pub(super) fn find(&self, id: RegistrationId) -> Option<Arc<Mutex<Batch>>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let (&first, (rows, batch)) = table.range(..=id).next_back()?;
        (id - first < *rows).then(|| batch.clone())
    }

    /// Drops the batch that starts at `first` if no row of it is left.
    pub(super) fn drop_if_empty(&self, first: RegistrationId) {
        // A batch's rows never come back, so one found empty stays empty: no lock of the
        // batch is held while the table is written (a new batch is locked while it is added).
        let Some(batch) = self.find(first) else { return };
        if lock(&batch).live == 0 {
            self.table.write().unwrap_or_else(|e| e.into_inner()).remove(&first);
        }
    }

    /// Every batch, one at a time, under its lock.
    pub(super) fn each(&self, mut f: impl FnMut(&Batch)) {
        let batches: Vec<Arc<Mutex<Batch>>> =
            self.table.read().unwrap_or_else(|e| e.into_inner()).values().map(|(_, b)| b.clone()).collect();
        for batch in batches {
            f(&lock(&batch));
        }
    }
}
