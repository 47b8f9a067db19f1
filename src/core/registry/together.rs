//! Registrations made together (`register_many`): how the registry inserts a call as
//! batches and removes a batch's row. (A row's change in a check is reported with the
//! others', by `Registry::changed`.)

use std::sync::Mutex;

use super::batches::BatchBuilder;
use super::entries::RegistrationEntry;
use super::{next_ids, shard_of_address, shard_of_id, RegistrationId, Registry};
use crate::core::batch::{Passed, Region, INSPECTED};
use crate::core::driver::PointerInfo;
use crate::core::inspect::Inspection;
use crate::core::sync::lock;
use crate::core::verdict::{Piece, Verdict};

impl Registry {
    /// Adds many registrations found resident, as [`Registry::insert`] adds one, and returns
    /// the first id: the entries of `passed` (runs of entries of `regions`), in order, get
    /// ids `first, first + 1, ...`.
    ///
    /// Entries inside one extent (`extents[run.extent]`: where a check asks, and the answer
    /// there) become rows of a batch: one record, one membership per allocation. Those with
    /// `extent` [`INSPECTED`] (several pieces) take the next of `inspected` and are stored on
    /// their own. `label_bytes`: the passed entries' label lengths summed (the labels' room; a
    /// wrong sum costs only a reallocation). Crate-only: the caller judged every entry
    /// resident (core/batch.rs).
    pub(crate) fn insert_many(
        &self,
        regions: &[Region<'_>],
        passed: &[Passed],
        extents: &[(u64, PointerInfo)],
        inspected: &[Inspection],
        label_bytes: usize,
    ) -> RegistrationId {
        let total: usize = passed.iter().map(|run| run.count as usize).sum();
        let first = next_ids(total as u64);
        let mut inspected = inspected.iter();
        let (mut runs, mut cut) = (passed.iter().copied(), None);
        let mut id = first;
        while id - first < total as u64 {
            let rows = (total - (id - first) as usize).min(super::batches::MAX_ROWS);
            // The labels' room: exact for a call of one batch, the batch's share otherwise.
            let room = (label_bytes as u128 * rows as u128 / total as u128) as usize;
            let mut builder = BatchBuilder::new(id, rows, room, extents.len());
            // Registrations stored on their own, each with the answers at its pieces: those
            // over several pieces, and rows the batch refuses.
            let mut alone: Vec<(RegistrationId, RegistrationEntry, Vec<PointerInfo>)> = Vec::new();
            let mut k = 0;
            while k < rows {
                // A run the batch's end cut goes on in the next batch.
                let Some(run) = cut.take().or_else(|| runs.next()) else { break };
                let take = (run.count as usize).min(rows - k);
                if take < run.count as usize {
                    cut = Some(Passed { index: run.index + take as u32, count: run.count - take as u32, ..run });
                }
                let entries = &regions[run.index as usize..][..take];
                if run.extent == INSPECTED {
                    for (j, region) in entries.iter().enumerate() {
                        builder.skip();
                        if let Some(found) = inspected.next() {
                            alone.push((id + (k + j) as u64, RegistrationEntry::new(region.label, found.device, found.pieces()), found.answers().to_vec()));
                        }
                    }
                } else {
                    store_run(&mut builder, &mut alone, entries, run.extent as usize, &extents[run.extent as usize], id + k as u64);
                }
                k += take;
            }
            let batch = builder.finish();
            if batch.live > 0 {
                let (batch_first, rows) = (batch.first(), batch.rows());
                let mut joins: Vec<(usize, u64, u64)> = batch.groups().map(|g| (shard_of_address(g.query_at), g.query_at, g.seen)).collect();
                // The batch exists before any allocation names it, as in `insert`, and stays
                // locked until they all do: a thread that found its ids (in a snapshot) and
                // unregisters them waits, so it never leaves an allocation before joining it.
                let batch = std::sync::Arc::new(Mutex::new(batch));
                let _joining = lock(&batch);
                self.batches.add(&batch, batch_first, rows);
                joins.sort_unstable();
                for group in joins.chunk_by(|a, b| a.0 == b.0) {
                    let mut shard = lock(&self.allocations[group[0].0]);
                    for &(_, address, seen) in group {
                        shard.join_batch(address, seen, batch_first);
                    }
                }
            }
            for (id, registration, answers) in alone {
                self.add_pending(&mut lock(&self.registrations[shard_of_id(id)]), id, registration, &answers);
            }
            id += rows as u64;
        }
        first
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

/// Stores `entries`, inside extent `extent` (`(query_at, answer)`), one run of them: rows of
/// one group found once, or on their own (`alone`, from id `id` on) when the batch refuses
/// them.
#[inline]
fn store_run(
    builder: &mut BatchBuilder,
    alone: &mut Vec<(RegistrationId, RegistrationEntry, Vec<PointerInfo>)>,
    entries: &[Region<'_>],
    extent: usize,
    (query_at, answer): &(u64, PointerInfo),
    id: RegistrationId,
) {
    let group = builder.open(extent, (*query_at, answer));
    let mut j = 0;
    while j < entries.len() {
        if let Some(group) = group {
            j += builder.push_rows(group, &entries[j..]);
        }
        // The batch refuses entry `j` (4 GiB or more, or no group): stored on its own.
        let Some(region) = entries.get(j) else { break };
        builder.skip();
        let end = region.ptr + region.size;
        let piece = Piece { query_at: *query_at, start: region.ptr, end, buffer_id: answer.buffer_id };
        alone.push((id + j as u64, RegistrationEntry::new(region.label, answer.device_ordinal, &[piece]), vec![*answer]));
        j += 1;
    }
}
