//! Registrations made together: stored as batches, and seen by every reader and by checks as
//! registrations made one by one are.

use super::*;
use super::tests::{answer, piece};
use crate::core::batch::{Passed, Region, INSPECTED};
use crate::core::driver::MemoryType;
use crate::core::inspect::inspect_with;

const ARENA: u64 = 0x20_0000;

/// A 2 MiB allocation at [`ARENA`] (its buffer id `buffer_id`).
fn arena(buffer_id: u64) -> PointerInfo {
    PointerInfo {
        memory_type: MemoryType::Device,
        is_managed: false,
        device_ordinal: 0,
        buffer_id,
        range_start: ARENA,
        range_size: 0x20_0000,
        mapping_base: 0,
        mapping_size: 0,
    }
}

/// `count` tensors of 4 KiB in the arena, labelled `t0, t1, ...`.
fn tensors(labels: &[String]) -> Vec<Region<'_>> {
    labels.iter().enumerate().map(|(i, label)| Region { ptr: ARENA + i as u64 * 0x1000, size: 0x1000, label }).collect()
}

fn labels(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("t{i}")).collect()
}

/// Inserts every region as a row of extent 0 (the arena, answer `seen`).
fn insert_all(registry: &Registry, regions: &[Region<'_>], seen: PointerInfo) -> RegistrationId {
    let passed: Vec<Passed> = (0..regions.len() as u32).map(|index| Passed { index, count: 1, extent: 0 }).collect();
    registry.insert_many(regions, &passed, &[(ARENA, seen)], &[], label_bytes(regions))
}

/// The labels' room for `regions`, as the judging counts it.
fn label_bytes(regions: &[Region<'_>]) -> usize {
    regions.iter().map(|r| r.label.len()).sum()
}

/// Unregisters `ids` (each must be registered) and checks that nothing is left.
fn unregister_all(registry: &Registry, ids: std::ops::Range<RegistrationId>) {
    for id in ids {
        registry.remove(id).unwrap();
    }
    assert_eq!(registry.counts(), RegistryCounts::default());
}

#[test]
fn many_registered_together_get_consecutive_ids_and_are_each_found() {
    let registry = Registry::new();
    let alone = registry.insert("alone", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
    // 300 tensors in one 2 MiB allocation: more than four blocks of ids.
    let labels = labels(300);
    let regions = tensors(&labels);
    let first = insert_all(&registry, &regions, arena(7));
    assert!(first != alone && first != 0);
    for i in 0..300u64 {
        let info = registry.get(first + i).unwrap();
        assert_eq!((info.label.as_str(), info.ptr, info.size), (labels[i as usize].as_str(), ARENA + i * 0x1000, 0x1000));
        assert_eq!(info.pieces, [Piece { query_at: ARENA, start: info.ptr, end: info.ptr + 0x1000, buffer_id: 7 }]);
        assert_eq!(registry.verdict(first + i), Some((Verdict::Resident, false)));
    }
    assert!(registry.get(first + 300).is_none(), "one past the batch");
    assert_eq!(registry.counts().registrations, 301);
    assert_eq!(registry.counts().tracked_bytes, 0x1000 + 300 * 0x1000);
    // One allocation holds them all: one entry in the allocation table.
    assert_eq!(registry.counts().allocations, 2);
    let more = insert_all(&registry, &regions[299..], arena(7));
    assert_eq!(registry.get(more).unwrap().label, "t299");
    assert_eq!(registry.snapshot().len(), 302);
    assert_eq!(registry.snapshot().iter().map(|r| r.id).collect::<Vec<_>>(), [alone].into_iter().chain(first..first + 300).chain([more]).collect::<Vec<_>>());
    // Removing them one by one leaves the first; each id only once.
    for id in (first..first + 300).chain([more]) {
        registry.remove(id).unwrap();
        assert!(registry.remove(id).is_none());
        assert!(registry.get(id).is_none());
    }
    assert_eq!(registry.counts().registrations, 1);
    assert_eq!(registry.counts().tracked_bytes, 0x1000);
    assert_eq!(registry.counts().allocations, 1, "the arena leaves the table with its last row");
    assert_eq!(registry.get(alone).unwrap().label, "alone");
    assert!(registry.batches.find(first).is_none(), "an empty batch is dropped");
}

#[test]
fn a_check_judges_the_rows_of_a_batch_with_the_registrations_made_alone() {
    let registry = Registry::new();
    let labels = labels(100);
    let regions = tensors(&labels);
    let first = insert_all(&registry, &regions, arena(7));
    let alone = registry.insert("alone", 0, &[Piece { query_at: ARENA, start: ARENA, end: ARENA + 64, buffer_id: 7 }], &[arena(7)]);
    assert_eq!(registry.counts().allocations, 1);
    registry.remove(first + 10).unwrap();
    // The arena was freed and its address reused: every live registration in it moves.
    let changes = registry.apply(ARENA, &Ok(arena(8)), fingerprint(&arena(7))).unwrap();
    let mut moved: Vec<RegistrationId> = changes
        .iter()
        .map(|c| match c {
            Change::Verdict { registration, from: Verdict::Resident } => {
                assert_eq!(registration.verdict, Verdict::Replaced);
                registration.id
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    moved.sort_unstable();
    assert_eq!(moved, (first..first + 100).filter(|&id| id != first + 10).chain([alone]).collect::<Vec<_>>());
    assert_eq!(registry.counts().violating, 100);
    assert_eq!(registry.verdict(first), Some((Verdict::Replaced, false)));
    // A failed query: each reported once, verdicts kept.
    let failed = Err(DriverError::Call { function: "cuPointerGetAttributes", code: 999 });
    let changes = registry.apply(ARENA, &failed, fingerprint(&arena(8))).unwrap();
    assert_eq!(changes.iter().filter(|c| matches!(c, Change::CheckFailed { .. })).count(), 100);
    assert_eq!(registry.counts().failing, 100);
    assert_eq!(registry.counts().violating_and_failing, 100);
    assert_eq!(registry.verdict(first + 1), Some((Verdict::Replaced, true)));
    assert!(registry.apply(ARENA, &failed, FAILED).unwrap().is_empty(), "still failing: nothing new");
    // Back to the first buffer: resident again, nothing failing.
    let changes = registry.apply(ARENA, &Ok(arena(7)), FAILED).unwrap();
    assert_eq!(changes.len(), 100);
    assert_eq!((registry.counts().violating, registry.counts().failing), (0, 0));
    // Unregistering rows in violation takes them out of the counts.
    registry.apply(ARENA, &Ok(arena(9)), fingerprint(&arena(7))).unwrap();
    for id in first..first + 50 {
        let _ = registry.remove(id);
    }
    assert_eq!(registry.counts().violating, 51);
}

#[test]
fn a_sealed_row_found_modified_is_reported_and_counted() {
    let registry = Registry::new();
    let labels = labels(3);
    let first = insert_all(&registry, &tensors(&labels), arena(7));
    let change = registry.set_modified(first + 1, true).unwrap();
    assert!(matches!(change, Some(Change::Verdict { ref registration, from: Verdict::Resident }) if registration.verdict == Verdict::Modified && registration.label == "t1"));
    assert_eq!(registry.verdict(first + 1), Some((Verdict::Modified, false)));
    assert_eq!(registry.counts().violating, 1);
    assert_eq!(registry.set_modified(first + 1, true), Some(None), "no change the second time");
    // A residency verdict wins over MODIFIED, and MODIFIED is back when it is resident again.
    registry.apply(ARENA, &Ok(arena(8)), fingerprint(&arena(7))).unwrap();
    assert_eq!(registry.verdict(first + 1), Some((Verdict::Replaced, false)));
    registry.apply(ARENA, &Ok(arena(7)), fingerprint(&arena(8))).unwrap();
    assert_eq!(registry.verdict(first + 1), Some((Verdict::Modified, false)));
    registry.set_modified(first + 1, false).unwrap();
    assert_eq!(registry.counts().violating, 0);
    assert_eq!(registry.set_modified(first + 3, true), None, "not registered");
}

#[test]
fn a_range_over_several_mappings_is_stored_alone_under_its_batch_id() {
    let registry = Registry::new();
    // Two 2 MiB mappings of one 4 MiB reservation, as expandable segments lay them out.
    let mapping = |base: u64| PointerInfo { range_start: 0x40_0000, range_size: 0x40_0000, mapping_base: base, mapping_size: 0x20_0000, ..arena(3) };
    let over = inspect_with(|a| Ok(mapping(a & !0x1f_ffff)), 0x5f_f000, 0x2000).unwrap();
    assert_eq!(over.pieces().len(), 2);
    let labels = ["a".to_string(), "over".to_string(), "b".to_string()];
    let regions = [
        Region { ptr: ARENA, size: 0x1000, label: &labels[0] },
        Region { ptr: 0x5f_f000, size: 0x2000, label: &labels[1] },
        Region { ptr: ARENA + 0x1000, size: 0x1000, label: &labels[2] },
    ];
    let passed = [Passed { index: 0, count: 1, extent: 0 }, Passed { index: 1, count: 1, extent: INSPECTED }, Passed { index: 2, count: 1, extent: 0 }];
    let first = registry.insert_many(&regions, &passed, &[(ARENA, arena(7))], &[over], label_bytes(&regions));
    let info = registry.get(first + 1).unwrap();
    assert_eq!((info.label.as_str(), info.pieces.len(), info.size), ("over", 2, 0x2000));
    assert_eq!(registry.get(first + 2).unwrap().label, "b");
    assert_eq!(registry.counts().registrations, 3);
    assert_eq!(registry.counts().allocations, 3, "the arena and the two mappings");
    // The mapping that held its second half was unmapped.
    let changes = registry.apply(0x60_0000, &Ok(PointerInfo::unregistered()), fingerprint(&mapping(0x60_0000))).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(registry.verdict(first + 1).unwrap().0, Verdict::NotMapped);
    unregister_all(&registry, first..first + 3);
}

#[test]
fn tallies_and_devices_count_the_rows_of_batches() {
    let registry = Registry::new();
    let labels = labels(10);
    let regions = tensors(&labels);
    let on_one = PointerInfo { device_ordinal: 1, ..arena(7) };
    let first = insert_all(&registry, &regions, on_one);
    registry.insert("alone", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
    assert_eq!(registry.devices(), [0, 1]);
    registry.set_modified(first, true).unwrap();
    let tally = registry.tally();
    let of = |device, verdict| tally.iter().find(|t| t.device == device && t.verdict == verdict).map(|t| (t.registrations, t.bytes));
    assert_eq!(of(1, Verdict::Resident), Some((9, 9 * 0x1000)));
    assert_eq!(of(1, Verdict::Modified), Some((1, 0x1000)));
    assert_eq!(of(0, Verdict::Resident), Some((1, 0x1000)));
    for id in first..first + 10 {
        registry.remove(id).unwrap();
    }
    assert_eq!(registry.devices(), [0]);
}

#[test]
fn a_batch_joining_an_allocation_judged_by_another_answer_marks_it() {
    let registry = Registry::new();
    registry.insert("alone", 0, &[Piece { query_at: ARENA, start: ARENA, end: ARENA + 64, buffer_id: 7 }], &[arena(7)]);
    registry.settle();
    let labels = labels(2);
    insert_all(&registry, &tensors(&labels), arena(8));
    let mut addresses = Vec::new();
    registry.allocation_addresses(shard_of_address(ARENA), &mut addresses);
    let (_, value) = addresses.iter().find(|(a, _)| *a == ARENA).copied().unwrap();
    assert!(is_mark(value), "the members were judged by different answers: the next check judges them all");
}

#[test]
fn a_check_of_one_allocation_judges_only_its_rows_in_any_entry_order() {
    // Two arenas; their tensors one arena after the other (model order), then alternating.
    let other = PointerInfo { range_start: 0x80_0000, buffer_id: 5, ..arena(5) };
    for alternating in [false, true] {
        let registry = Registry::new();
        let labels = labels(40);
        let place = |i: usize| if alternating { (i % 2, i / 2) } else { (i / 20, i % 20) };
        let regions: Vec<Region<'_>> = (0..40)
            .map(|i| {
                let (a, t) = place(i);
                Region { ptr: [ARENA, 0x80_0000][a] + t as u64 * 0x1000, size: 0x1000, label: &labels[i] }
            })
            .collect();
        let passed: Vec<Passed> = (0..40).map(|i| Passed { index: i as u32, count: 1, extent: place(i).0 as u32 }).collect();
        let first = registry.insert_many(&regions, &passed, &[(ARENA, arena(7)), (0x80_0000, other)], &[], label_bytes(&regions));
        let changes = registry.apply(0x80_0000, &Ok(PointerInfo::unregistered()), fingerprint(&other)).unwrap();
        let mut moved: Vec<u64> = changes.iter().map(|c| match c {
            Change::Verdict { registration, .. } => registration.id,
            other => panic!("unexpected {other:?}"),
        }).collect();
        moved.sort_unstable();
        let want: Vec<u64> = (0..40).filter(|&i| place(i).0 == 1).map(|i| first + i as u64).collect();
        assert_eq!(moved, want, "alternating: {alternating}");
        for i in 0..40 {
            let verdict = registry.verdict(first + i as u64).unwrap().0;
            assert_eq!(verdict, if place(i).0 == 1 { Verdict::NotMapped } else { Verdict::Resident });
            assert_eq!(registry.get(first + i as u64).unwrap().pieces[0].query_at, [ARENA, 0x80_0000][place(i).0]);
        }
    }
}

#[test]
fn rows_of_two_answers_at_one_address_are_all_judged_by_a_check() {
    // The allocation at ARENA was freed and allocated again, larger, while the call asked:
    // two extents with the same address. A batch judges a group by its address, so the rows
    // of the second are stored on their own; a check of ARENA judges all four.
    let registry = Registry::new();
    let labels = labels(4);
    let regions = tensors(&labels);
    let grown = PointerInfo { range_size: 0x40_0000, ..arena(8) };
    let passed: Vec<Passed> = (0..4).map(|i| Passed { index: i, count: 1, extent: i / 2 }).collect();
    let first = registry.insert_many(&regions, &passed, &[(ARENA, arena(7)), (ARENA, grown)], &[], label_bytes(&regions));
    assert_eq!(registry.counts().registrations, 4);
    assert_eq!(registry.get(first + 3).unwrap().pieces[0].buffer_id, 8);
    let mut plan = Vec::new();
    registry.allocation_addresses(shard_of_address(ARENA), &mut plan);
    let (_, value) = plan.iter().find(|(a, _)| *a == ARENA).copied().unwrap();
    assert!(is_mark(value), "judged by two answers: marked");
    let changes = registry.apply(ARENA, &Ok(PointerInfo::unregistered()), value).unwrap();
    assert_eq!(changes.len(), 4, "{changes:?}");
    for id in first..first + 4 {
        assert_eq!(registry.verdict(id).unwrap().0, Verdict::NotMapped);
        registry.remove(id).unwrap();
    }
    assert_eq!(registry.counts(), RegistryCounts::default());
}

#[test]
fn a_tensor_of_4_gib_or_more_is_stored_alone_and_judged_with_its_batch() {
    let registry = Registry::new();
    // A 16 GiB allocation: an embedding of 6 GiB after a small tensor, then another small one.
    let big = PointerInfo { range_size: 16 << 30, ..arena(7) };
    let labels = ["norm".to_string(), "embed".to_string(), "head".to_string()];
    let regions = [
        Region { ptr: ARENA, size: 0x1000, label: &labels[0] },
        Region { ptr: ARENA + 0x1000, size: 6 << 30, label: &labels[1] },
        Region { ptr: ARENA + 0x1000 + (6 << 30), size: 0x1000, label: &labels[2] },
    ];
    let first = insert_all(&registry, &regions, big);
    let infos: Vec<(String, u64, u64)> = (first..first + 3).map(|id| registry.get(id).unwrap()).map(|i| (i.label, i.ptr, i.size)).collect();
    assert_eq!(infos, regions.iter().map(|r| (r.label.to_string(), r.ptr, r.size)).collect::<Vec<_>>());
    assert_eq!(registry.counts().tracked_bytes, (6 << 30) + 0x2000);
    assert_eq!(registry.counts().allocations, 1);
    // The allocation is replaced: all three are judged, the big one with the others.
    registry.settle();
    let changes = registry.apply(ARENA, &Ok(PointerInfo { buffer_id: 8, ..big }), fingerprint(&big)).unwrap();
    assert_eq!(changes.len(), 3);
    assert!((first..first + 3).all(|id| registry.verdict(id) == Some((Verdict::Replaced, false))));
    unregister_all(&registry, first..first + 3);
}

#[test]
fn an_allocation_holding_only_a_tensor_of_4_gib_or_more_is_left_once_it_is_unregistered() {
    let registry = Registry::new();
    // A small tensor in the arena; alone in a second allocation, one of 4 GiB (its own run of
    // the call, stored on its own: the batch has no row, so no group, in that allocation).
    let big = PointerInfo { range_start: 0x1_0000_0000, range_size: 0x2_0000_0000, buffer_id: 9, ..arena(7) };
    let regions = [Region { ptr: ARENA, size: 0x1000, label: "t0" }, Region { ptr: 0x1_0000_0000, size: 0x1_0000_0000, label: "t1" }];
    let passed = [Passed { index: 0, count: 1, extent: 0 }, Passed { index: 1, count: 1, extent: 1 }];
    let first = registry.insert_many(&regions, &passed, &[(ARENA, arena(7)), (0x1_0000_0000, big)], &[], label_bytes(&regions));
    assert_eq!(registry.counts().allocations, 2);
    assert_eq!(registry.get(first + 1).map(|i| (i.ptr, i.size)), Some((0x1_0000_0000, 0x1_0000_0000)));
    unregister_all(&registry, first..first + 2);
}

#[test]
fn a_call_of_more_rows_than_a_batch_holds_is_several_batches_with_consecutive_ids() {
    let registry = Registry::new();
    // Two and a half batches of tensors in one 2 MiB arena, 512 bytes each, with an entry over
    // two mappings at the first boundary (its row is stored alone, its id still in order).
    let count = 2 * super::batches::MAX_ROWS + 500;
    let labels = labels(count);
    let mut regions: Vec<Region<'_>> = labels.iter().enumerate().map(|(i, label)| Region { ptr: ARENA + i as u64 * 512, size: 512, label }).collect();
    let mapping = |base: u64| PointerInfo { range_start: 0x40_0000, range_size: 0x40_0000, mapping_base: base, mapping_size: 0x20_0000, ..arena(3) };
    let over = inspect_with(|a| Ok(mapping(a & !0x1f_ffff)), 0x5f_f000, 0x2000).unwrap();
    let boundary = super::batches::MAX_ROWS;
    regions[boundary] = Region { ptr: 0x5f_f000, size: 0x2000, label: &labels[boundary] };
    // As the judging hands them over: a run before the entry over two mappings and one after
    // it, which the second batch's end cuts.
    let b = boundary as u32;
    let passed = [Passed { index: 0, count: b, extent: 0 }, Passed { index: b, count: 1, extent: INSPECTED }, Passed { index: b + 1, count: count as u32 - b - 1, extent: 0 }];
    let first = registry.insert_many(&regions, &passed, &[(ARENA, arena(7))], &[over], label_bytes(&regions));
    assert_eq!(registry.counts().registrations, count as u64);
    for i in [0, boundary - 1, boundary, boundary + 1, 2 * boundary, count - 1] {
        let info = registry.get(first + i as u64).unwrap();
        assert_eq!((info.label.as_str(), info.ptr, info.size), (labels[i].as_str(), regions[i].ptr, regions[i].size), "entry {i}");
    }
    assert!(registry.get(first + count as u64).is_none());
    assert_eq!(registry.snapshot().iter().map(|r| r.id).collect::<Vec<_>>(), (first..first + count as u64).collect::<Vec<_>>());
    // Three batches of at most MAX_ROWS rows, one after another.
    let spans: Vec<(u64, u64)> = [0, boundary, 2 * boundary]
        .iter()
        .map(|&row| {
            let batch = registry.batches.find(first + row as u64).unwrap();
            let batch = lock(&batch);
            (batch.first(), batch.rows())
        })
        .collect();
    assert_eq!(spans, [(first, boundary as u64), (first + boundary as u64, boundary as u64), (first + 2 * boundary as u64, 500)]);
    // A check of the arena judges the rows of all three batches.
    registry.settle();
    let changes = registry.apply(ARENA, &Ok(arena(8)), fingerprint(&arena(7))).unwrap();
    assert_eq!(changes.len(), count - 1, "every row but the one over the mappings");
    unregister_all(&registry, first..first + count as u64);
    assert!(registry.batches.find(first).is_none() && registry.batches.find(first + 2 * boundary as u64).is_none());
}
