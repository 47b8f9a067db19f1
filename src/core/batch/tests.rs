//! Tests of judging a `register_many` call (../batch.rs).

use super::*;
use crate::core::driver::MemoryType;
use crate::core::inspect::inspect;
use crate::core::verdict::Piece;

/// Allocations of 64 KiB, each its own extent, counting the queries.
struct Allocations {
    bases: Vec<u64>,
    queries: std::sync::atomic::AtomicU64,
}

impl Driver for Allocations {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(match self.bases.iter().find(|&&b| b <= address && address < b + 0x1_0000) {
            Some(&base) => PointerInfo {
                memory_type: MemoryType::Device,
                is_managed: false,
                device_ordinal: 0,
                buffer_id: base >> 16,
                range_start: base,
                range_size: 0x1_0000,
                mapping_base: 0,
                mapping_size: 0,
            },
            None => PointerInfo::unregistered(),
        })
    }
    fn device_used_memory(&self, _: i32) -> Option<u64> {
        None
    }
    fn version(&self) -> Option<i32> {
        None
    }
}

#[test]
fn entries_in_allocations_handed_out_downwards_are_judged_with_one_query_each_as_directly() {
    // Allocations at falling addresses, as the CUDA allocator hands them out; four
    // tensors in each, in a model's order, with a stray pointer and a repeat among them.
    let driver = Allocations { bases: (0..50u64).map(|i| 0x100_0000 - i * 0x2_0000).collect(), queries: Default::default() };
    let labels: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    let mut regions: Vec<Region<'_>> =
        (0..200).map(|i| Region { ptr: driver.bases[i / 4] + (i % 4) as u64 * 0x1000, size: 0x1000, label: &labels[i] }).collect();
    regions[7].ptr = 0x10; // not CUDA memory
    regions[150] = regions[149]; // the same range twice
    let judged = judge_all(&driver, &regions);
    assert_eq!(judged.queries, 51, "one per allocation, and the stray pointer");
    assert_eq!(driver.queries.load(std::sync::atomic::Ordering::Relaxed), 51);
    let failed: Vec<usize> = judged.failures.iter().map(|&(i, _)| i).collect();
    assert_eq!(failed, [7, 150]);
    assert_eq!(judged.failures[1].1, Error::DuplicateRange);
    assert_eq!(judged.each_passed().count(), 198);
    assert_eq!(judged.passed.len(), 51, "a run per allocation, cut in two where a repeat failed (the stray pointer ends one)");
    let passed_labels: usize = judged.each_passed().map(|(index, _)| regions[index as usize].label.len()).sum();
    assert_eq!(judged.label_bytes, passed_labels, "the failed entries' labels not counted");
    assert!(judged.inspected.is_empty(), "every entry lies inside one allocation");
    for (index, extent) in judged.each_passed() {
        let r = &regions[index as usize];
        let direct = inspect(&driver, r.ptr, r.size).unwrap();
        let (query_at, answer) = judged.extents[extent as usize];
        assert_eq!(direct.verdict, Verdict::Resident);
        assert_eq!(direct.pieces(), [Piece { query_at, start: r.ptr, end: r.ptr + r.size, buffer_id: answer.buffer_id }], "entry {index} judged from the snapshot as directly");
        assert_eq!(direct.answers(), [answer]);
    }
}

#[test]
fn the_same_range_twice_is_found_in_any_order_of_allocations() {
    let driver = Allocations { bases: (0..8u64).map(|i| 0x100_0000 + i * 0x2_0000).collect(), queries: Default::default() };
    let labels: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    // Interleaved: entry i is tensor i / 8 of allocation i % 8 (each allocation's tensors
    // ascend, the entries as a whole do not).
    let interleaved: Vec<Region<'_>> =
        (0..64).map(|i| Region { ptr: driver.bases[i % 8] + (i / 8) as u64 * 0x1000, size: 0x1000, label: &labels[i] }).collect();
    let judged = judge_all(&driver, &interleaved);
    assert!(judged.failures.is_empty(), "{:?}", judged.failures);
    assert_eq!(judged.queries, 8);
    // A repeat far from its first occurrence, one of another size, and one of a range
    // that is refused (size 0): the first occurrence stands, the repeats are duplicates.
    let mut with_repeats = interleaved.clone();
    with_repeats[50] = interleaved[3];
    with_repeats[51] = Region { size: 0x800, ..interleaved[4] };
    with_repeats[10] = Region { size: 0, ..interleaved[10] };
    with_repeats[60] = with_repeats[10];
    let judged = judge_all(&driver, &with_repeats);
    let failed: Vec<(usize, Error)> = judged.failures.clone();
    assert_eq!(failed, [(10, Error::InvalidArgument("size must be non-zero")), (50, Error::DuplicateRange), (60, Error::DuplicateRange)]);
    assert_eq!(judged.each_passed().count(), 61);
}

/// A driver answering with a function of the address.
struct Answers<F>(F);

impl<F: Fn(u64) -> Result<PointerInfo, DriverError> + Send + Sync> Driver for Answers<F> {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        (self.0)(address)
    }
    fn device_used_memory(&self, _: i32) -> Option<u64> {
        None
    }
    fn version(&self) -> Option<i32> {
        None
    }
}

/// Device memory on device 0: `range` (start, size) and `mapping` (base, size; 0 for none).
fn device_memory(buffer_id: u64, (range_start, range_size): (u64, u64), (mapping_base, mapping_size): (u64, u64)) -> PointerInfo {
    PointerInfo { memory_type: MemoryType::Device, is_managed: false, device_ordinal: 0, buffer_id, range_start, range_size, mapping_base, mapping_size }
}

#[test]
fn a_range_repeated_after_its_first_query_failed_is_still_a_duplicate() {
    // The allocations above, the first query failing.
    let allocations = Allocations { bases: vec![0x100_0000], queries: Default::default() };
    let failed = std::sync::atomic::AtomicBool::new(false);
    let driver = Answers(|address| {
        if !failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Err(DriverError::Call { function: "cuPointerGetAttributes", code: 999 });
        }
        allocations.pointer_info(address)
    });
    let regions = [
        Region { ptr: 0x100_0000, size: 0x1000, label: "first" },
        Region { ptr: 0x100_0000, size: 0x1000, label: "again" },
        Region { ptr: 0x100_1000, size: 0x1000, label: "other" },
    ];
    let judged = judge_all(&driver, &regions);
    assert!(matches!(judged.failures[0], (0, Error::Driver(_))), "{:?}", judged.failures);
    assert_eq!(judged.failures[1], (1, Error::DuplicateRange), "the first occurrence failed, the repeat is still a repeat");
    assert_eq!(judged.each_passed().count(), 1);
}

#[test]
fn a_range_repeated_across_overlapping_extents_is_still_a_duplicate() {
    // The first answer: a 4 KiB allocation at 0x2000; then, freed and allocated again
    // larger, 12 KiB from 0x1000 (so the two extents overlap).
    let asked = std::sync::atomic::AtomicU32::new(0);
    let reallocated = Answers(|_| {
        Ok(match asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => device_memory(1, (0x2000, 0x1000), (0, 0)),
            _ => device_memory(2, (0x1000, 0x3000), (0, 0)),
        })
    });
    let regions = [
        Region { ptr: 0x2000, size: 0x100, label: "p" },
        Region { ptr: 0x1000, size: 0x100, label: "q" },
        Region { ptr: 0x2000, size: 0x100, label: "p again" },
    ];
    let judged = judge_all(&reallocated, &regions);
    assert_eq!(judged.queries, 2);
    assert_eq!(judged.failures, [(2, Error::DuplicateRange)]);
}

#[test]
fn a_range_over_several_mappings_is_inspected_piece_by_piece() {
    // One 4 MiB reservation of two 2 MiB mappings, as expandable segments lay it out.
    let mappings = Answers(|address| Ok(device_memory(9, (0x40_0000, 0x40_0000), (address & !0x1f_ffff, 0x20_0000))));
    let regions = [
        Region { ptr: 0x40_0000, size: 0x1000, label: "inside" },
        Region { ptr: 0x5f_f000, size: 0x2000, label: "over" },
        Region { ptr: 0x60_1000, size: 0x1000, label: "second" },
    ];
    let judged = judge_all(&mappings, &regions);
    assert!(judged.failures.is_empty());
    assert_eq!(judged.each_passed().map(|(_, extent)| extent == INSPECTED).collect::<Vec<_>>(), [false, true, false]);
    assert_eq!(judged.inspected, [inspect(&mappings, 0x5f_f000, 0x2000).unwrap()]);
    assert_eq!(judged.inspected[0].pieces().len(), 2);
    assert_eq!(judged.queries, 2, "one per mapping");
}
