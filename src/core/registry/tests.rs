use super::*;
use super::hasher::IntegerHasher;
use std::hash::Hasher;
use crate::core::driver::MemoryType;

pub(super) fn answer(buffer_id: u64) -> PointerInfo {
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

pub(super) fn piece(start: u64, end: u64) -> Piece {
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
    registry.settle();
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
    registry.settle();
    let mut addresses = Vec::new();
    for shard in 0..registry.allocation_shards() {
        registry.allocation_addresses(shard, &mut addresses);
    }
    assert_eq!(addresses.len(), 1);
    assert!(is_mark(addresses[0].1), "marked for a new judgement: {:#x}", addresses[0].1);
}

#[test]
fn a_registration_joins_its_allocation_when_settled_and_one_removed_before_never_does() {
    let registry = Registry::new();
    let a = registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
    let gone = registry.insert("gone", 0, &[Piece { query_at: 0x9000, ..piece(0x9000, 0xa000) }], &[answer(1)]);
    let addresses = |registry: &Registry| {
        let mut all = Vec::new();
        for shard in 0..registry.allocation_shards() {
            registry.allocation_addresses(shard, &mut all);
        }
        all.into_iter().map(|(address, _)| address).collect::<Vec<_>>()
    };
    assert!(addresses(&registry).is_empty(), "registering wrote nothing to the allocation table");
    assert!(registry.apply(0x1000, &Ok(answer(2)), fingerprint(&answer(1))).unwrap().is_empty(), "not joined: nothing to judge");
    registry.remove(gone).unwrap();
    registry.settle();
    assert_eq!(addresses(&registry), [0x1000], "the one removed before settling is skipped");
    let changes = registry.apply(0x1000, &Ok(answer(2)), fingerprint(&answer(1))).unwrap();
    assert_eq!(changes.len(), 1);
    registry.remove(a).unwrap();
    assert!(addresses(&registry).is_empty(), "a joined registration leaves its allocation");
    assert_eq!(registry.counts(), RegistryCounts::default());
}

#[test]
fn pending_joins_stay_bounded_without_checks() {
    let registry = Registry::new();
    // A buffer per request, registered and unregistered with no check between: nothing
    // stays pending.
    for _ in 0..10_000 {
        let id = registry.insert("request", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
        registry.remove(id).unwrap();
    }
    let pending = |registry: &Registry| registry.registrations.iter().map(|s| lock(s).pending.len()).sum::<usize>();
    assert_eq!(pending(&registry), 0);
    // Many kept, none checked: each shard makes its joins itself past the limit.
    let ids: Vec<u64> = (0..100_000u64)
        .map(|i| registry.insert("kept", 0, &[Piece { query_at: 0x10_0000 + i * 0x1000, ..piece(0x10_0000 + i * 0x1000, 0x10_1000 + i * 0x1000) }], &[answer(1)]))
        .collect();
    // About 1,560 per shard (ids go to shards in blocks of 64).
    assert!(registry.registrations.iter().all(|s| lock(s).pending.len() < super::pending::PENDING_LIMIT));
    assert!(pending(&registry) < 100_000, "some joins made without a check");
    // Removed out of order, not joined yet: skipped when settled, nothing left behind.
    for id in ids.iter().rev().step_by(2) {
        registry.remove(*id).unwrap();
    }
    assert_eq!(registry.counts().allocations, 50_000);
    for id in ids.iter().rev().skip(1).step_by(2) {
        registry.remove(*id).unwrap();
    }
    assert_eq!(registry.counts(), RegistryCounts::default());
    assert_eq!(pending(&registry), 0);
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
    registry.settle();
    // The check's plan saw fingerprint(answer(1)) and asked; meanwhile a registration
    // joined having seen answer(2) (its join made by another thread's settle: a health
    // snapshot counting allocations), marking the allocation dirty.
    registry.insert("b", 0, &[Piece { buffer_id: 2, ..piece(0x1000, 0x2000) }], &[answer(2)]);
    registry.settle();
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
    registry.settle();
    let planned = registry.apply(0x1000, &Ok(answer(1)), 0).unwrap_err().current;
    assert!(is_mark(planned));
    // The check asks (answer 2) ... and before it applies, c joins having seen answer 3.
    let c = registry.insert("c", 0, &[Piece { buffer_id: 3, ..piece(0x1000, 0x2000) }], &[answer(3)]);
    registry.settle();
    let stale = registry.apply(0x1000, &Ok(answer(2)), planned).unwrap_err();
    assert_ne!(stale.current, planned, "a new mark for each join");
    assert_eq!(registry.get(c).unwrap().verdict, Verdict::Resident, "c not judged by an answer older than its own");
}

#[test]
fn an_answer_from_before_the_address_was_registered_anew_judges_nothing() {
    let registry = Registry::new();
    let a = registry.insert("a", 0, &[piece(0x1000, 0x2000)], &[answer(1)]);
    registry.settle();
    let planned = fingerprint(&answer(1));
    // The check asks and finds the memory freed; then the engine unregisters a, allocates
    // again at the same address, and registers b; then the check applies its answer.
    let freed: Result<PointerInfo, DriverError> = Ok(PointerInfo::unregistered());
    registry.remove(a).unwrap();
    let b = registry.insert("b", 0, &[Piece { buffer_id: 2, ..piece(0x1000, 0x2000) }], &[answer(2)]);
    registry.settle();
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
    let registry = std::sync::Arc::new(Registry::new());
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (tell, told) = std::sync::mpsc::channel::<u64>();
    let rare = {
        let registry = std::sync::Arc::clone(&registry);
        std::thread::spawn(move || {
            tell.send(registry.insert("rare", 0, &[piece(0x1000, 0x2000)], &[answer(1)])).unwrap();
            wait.recv().unwrap();
            tell.send(registry.insert("rare", 0, &[piece(0x1000, 0x2000)], &[answer(1)])).unwrap();
        })
    };
    let first = told.recv().unwrap();
    // Enough newer blocks that one of them lands in the rare thread's shard.
    let newest = (0..(SHARDS as u64 + 2) * ID_BLOCK)
        .map(|_| registry.insert("busy", 0, &[piece(0x3000, 0x4000)], &[answer(2)]))
        .max()
        .unwrap();
    go.send(()).unwrap();
    let second = told.recv().unwrap();
    rare.join().unwrap();
    assert!(first < newest);
    assert!(second > newest, "the rare thread went on with its old block: {second} after {newest}");
    // Every registration is still found under its id.
    assert_eq!(registry.get(first).unwrap().label, "rare");
    assert_eq!(registry.get(second).unwrap().label, "rare");
    assert_eq!(registry.counts().registrations, (SHARDS as u64 + 2) * ID_BLOCK + 2);
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
    // (A shard may hold up to its live count in holes before they are compacted away; and
    // threads of other tests taking ids meanwhile spread this thread's blocks unevenly over
    // the shards, so some hold more than their share.) Growth with the churn would be
    // hundreds of thousands.
    assert!(room(&registry) <= 3 * 5_000 + 64 * 16, "room grew from {room_before} to {}", room(&registry));
}
