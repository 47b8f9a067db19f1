//! Registrations made together (`register_many`): how the registry stores a call's entries
//! as judging hands them over and adds them as batches at the commit, and removes a batch's
//! row.

use std::sync::Mutex;

use super::batches::{Batch, BatchBuilder, MAX_ROWS};
use super::entries::RegistrationEntry;
use super::{next_ids, shard_of_address, shard_of_id, RegistrationId, Registry};
use crate::core::batch::{Accept, Region};
use crate::core::driver::PointerInfo;
use crate::core::inspect::Inspection;
use crate::core::sync::lock;
use crate::core::verdict::{Piece, Verdict};

/// The registrations of one `register_many` call, stored as judging finds them (see
/// [`Accept`]) and added to the registry by [`Insertion::commit`]; dropped uncommitted, it
/// leaves the registry as it was.
///
/// Entries inside one extent become rows of a batch: one record, one membership per
/// allocation. Those over several pieces, of 4 GiB or more, or inside a second extent at an
/// address the batch already has a group for are stored on their own, under an id from the
/// batch's range. Rows are numbered as they come; ids are taken at the commit.
pub(crate) struct Insertion<'r, 'a> {
    registry: &'r Registry,
    regions: &'a [Region<'a>],
    builder: BatchBuilder<'a>,
    /// Batches of [`MAX_ROWS`] rows already full, finished (their building tables gone),
    /// numbered from their first row's number until the commit gives them ids.
    full: Vec<Batch>,
    /// Where the builder's rows start.
    base: u64,
    alone: Vec<Alone<'a>>,
}

/// A registration of an [`Insertion`] stored on its own.
struct Alone<'a> {
    row: u64,
    label: &'a str,
    device: i32,
    pieces: Vec<Piece>,
    /// The driver's answer at each piece's query address.
    answers: Vec<PointerInfo>,
}

impl<'r, 'a> Insertion<'r, 'a> {
    /// An insertion of entries of `regions` into `registry`.
    pub(crate) fn new(registry: &'r Registry, regions: &'a [Region<'a>]) -> Insertion<'r, 'a> {
        let rows = regions.len().min(MAX_ROWS);
        // Labels before sharing: a sample's average, for the capacity only.
        let sample = &regions[..rows.min(64)];
        let average = sample.iter().map(|r| r.label.len()).sum::<usize>() / sample.len().max(1);
        // A guess: capped, and the batch gives back what it did not use when finished.
        let average = average.min(256);
        Insertion { registry, regions, builder: BatchBuilder::new(rows, rows * average), full: Vec::new(), base: 0, alone: Vec::new() }
    }

    /// The number of the next row, starting a new batch when this one is full.
    #[inline]
    fn next_row(&mut self) -> u64 {
        if self.builder.len() == MAX_ROWS {
            self.next_batch();
        }
        self.base + self.builder.len() as u64
    }

    /// Finishes the full batch and starts the next.
    #[cold]
    fn next_batch(&mut self) {
        self.base += MAX_ROWS as u64;
        // At most the entries not yet judged (the capacity only).
        let rows = self.regions.len().saturating_sub(self.base as usize).min(MAX_ROWS);
        let full = std::mem::replace(&mut self.builder, BatchBuilder::new(rows, 0));
        self.full.push(full.finish(self.base - MAX_ROWS as u64));
    }

    /// Adds every registration and returns the first id: the `k`th entry accepted (in
    /// order) has id `first + k`. 0 when none was accepted.
    pub(crate) fn commit(mut self) -> RegistrationId {
        let count = self.base + self.builder.len() as u64;
        if count == 0 {
            return 0;
        }
        let first = next_ids(count);
        let last = std::mem::replace(&mut self.builder, BatchBuilder::new(0, 0));
        self.full.push(last.finish(self.base));
        for mut batch in std::mem::take(&mut self.full) {
            batch.shift_ids(first);
            self.registry.add_batch(batch);
        }
        for alone in std::mem::take(&mut self.alone) {
            let id = first + alone.row;
            let registration = RegistrationEntry::new(alone.label, alone.device, &alone.pieces);
            self.registry.add_pending(&mut lock(&self.registry.registrations[shard_of_id(id)]), id, registration, &alone.answers);
        }
        first
    }
}

impl<'a> Accept for Insertion<'_, 'a> {
    fn within(&mut self, index: usize, extent: u32, (query_at, answer): (u64, &PointerInfo)) {
        let row = self.next_row();
        let region: &Region<'a> = &self.regions[index];
        let end = region.ptr + region.size;
        if !self.builder.push(region.label, region.ptr, end, extent as usize, (query_at, answer)) {
            self.builder.skip();
            let piece = Piece { query_at, start: region.ptr, end, buffer_id: answer.buffer_id };
            self.alone.push(Alone { row, label: region.label, device: answer.device_ordinal, pieces: vec![piece], answers: vec![*answer] });
        }
    }

    fn inspected(&mut self, index: usize, inspection: Inspection) {
        let row = self.next_row();
        self.builder.skip();
        let label = self.regions[index].label;
        let (pieces, answers) = (inspection.pieces().to_vec(), inspection.answers().to_vec());
        self.alone.push(Alone { row, label, device: inspection.device, pieces, answers });
    }
}

impl Registry {
    /// Adds a finished batch: the batch first, locked until every allocation it has rows
    /// in names it, so that a thread that found its ids (in a snapshot) and unregisters them
    /// waits, and never leaves an allocation before joining it (as in `insert`).
    fn add_batch(&self, batch: Batch) {
        if batch.live == 0 {
            return;
        }
        let (first, rows) = (batch.first(), batch.rows());
        let mut joins: Vec<(usize, u64, u64)> = batch.groups().map(|g| (shard_of_address(g.query_at), g.query_at, g.seen)).collect();
        let batch = std::sync::Arc::new(Mutex::new(batch));
        let _joining = lock(&batch);
        self.batches.add(&batch, first, rows);
        joins.sort_unstable();
        for group in joins.chunk_by(|a, b| a.0 == b.0) {
            let mut shard = lock(&self.allocations[group[0].0]);
            for &(_, address, seen) in group {
                shard.join_batch(address, seen, first);
            }
        }
    }

    /// Inserts `passed` as [`Insertion`] would store them when judging hands them over.
    #[cfg(test)]
    pub(crate) fn insert_many(
        &self,
        regions: &[Region<'_>],
        passed: &[crate::core::batch::collected::Passed],
        extents: &[(u64, PointerInfo)],
        inspected: &[Inspection],
    ) -> RegistrationId {
        let mut insertion = Insertion::new(self, regions);
        crate::core::batch::collected::hand_over(&mut insertion, passed, extents, inspected);
        insertion.commit()
    }

    /// [`Registry::remove`] of a registration made in a batch.
    pub(super) fn remove_batched(&self, id: RegistrationId) -> Option<()> {
        let batch = self.batches.find(id)?;
        let (removed, first) = {
            let mut batch = lock(&batch);
            (batch.remove(id)?, batch.first())
        };
        self.recount(removed.verdict, removed.failing, Verdict::Resident, false);
        if let Some(address) = removed.left {
            lock(&self.allocations[shard_of_address(address)]).leave_batch(address, first);
        }
        if removed.empty {
            self.batches.drop_if_empty(first);
        }
        Some(())
    }
}
