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
    /// the first id: `passed[k]` (entry `regions[passed[k].index]`) gets id `first + k`.
    ///
    /// Entries inside one extent (`extents[passed[k].extent]`: where a check asks, and the
    /// answer there) become rows of a batch: one record, one membership per allocation. Those
    /// with `extent` [`INSPECTED`] (several pieces) take the next of `inspected` and are stored
    /// on their own. `label_bytes`: the passed entries' label lengths summed, when the caller
    /// counted them (otherwise counted here). Crate-only: the caller judged every entry
    /// resident (core/batch.rs).
    pub(crate) fn insert_many(
        &self,
        regions: &[Region<'_>],
        passed: &[Passed],
        extents: &[(u64, PointerInfo)],
        inspected: &[Inspection],
        label_bytes: Option<usize>,
    ) -> RegistrationId {
        let first = next_ids(passed.len() as u64);
        let mut inspected = inspected.iter();
        let mut id = first;
        for part in passed.chunks(super::batches::MAX_ROWS) {
            let label_bytes = match label_bytes {
                Some(all) if part.len() == passed.len() => all,
                _ => part.iter().map(|p| regions[p.index as usize].label.len()).sum(),
            };
            let mut builder = BatchBuilder::new(id, part.len(), label_bytes, extents.len());
            // Registrations stored on their own, each with the answers at its pieces: those
            // over several pieces, and rows the batch refuses.
            let mut alone: Vec<(RegistrationId, RegistrationEntry, Vec<PointerInfo>)> = Vec::new();
            let mut k = 0;
            while k < part.len() {
                let p = part[k];
                if p.extent == INSPECTED {
                    builder.skip();
                    if let Some(found) = inspected.next() {
                        let region = &regions[p.index as usize];
                        alone.push((id + k as u64, RegistrationEntry::new(region.label, found.device, found.pieces()), found.answers().to_vec()));
                    }
                    k += 1;
                    continue;
                }
                // The entries of one extent that come together (in model order, an
                // allocation's tensors): one group found for all of them.
                let (query_at, answer) = &extents[p.extent as usize];
                let group = builder.open(p.extent as usize, (*query_at, answer));
                let (mut pushed, mut last) = (0, 0);
                while let Some(q) = part.get(k).filter(|q| q.extent == p.extent) {
                    let region = &regions[q.index as usize];
                    let end = region.ptr + region.size;
                    let row = builder.next_row();
                    if group.is_some_and(|group| builder.push(group, region.label, region.ptr, end)) {
                        (pushed, last) = (pushed + 1, row);
                    } else {
                        builder.skip();
                        let piece = Piece { query_at: *query_at, start: region.ptr, end, buffer_id: answer.buffer_id };
                        alone.push((id + k as u64, RegistrationEntry::new(region.label, answer.device_ordinal, &[piece]), vec![*answer]));
                    }
                    k += 1;
                }
                if let Some(group) = group {
                    builder.close(group, pushed, last);
                }
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
            id += part.len() as u64;
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
