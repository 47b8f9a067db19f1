//! Host memory per registration (label excluded), the target of at most 128 bytes,
//! counted exactly by a counting allocator (this test binary's own). Deterministic: the
//! tables grow the same way on every machine, so this is a test, not a benchmark.
//!
//! A test binary of its own, not a module of tests/all: the counting allocator is the whole
//! process's, so any test running beside it there would change its count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use vram_monitor::registry::Registry;
use vram_monitor::verdict::Piece;
use vram_monitor::{MemoryType, PointerInfo};

struct Counting;
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TARGET_BYTES: f64 = 128.0;

/// What the H100 answers for an ordinary allocation: RANGE = the allocation, MAPPING = the
/// 2 MiB driver chunk around it.
fn answer(base: u64, size: u64) -> PointerInfo {
    PointerInfo {
        memory_type: MemoryType::Device,
        is_managed: false,
        device_ordinal: 0,
        buffer_id: base,
        range_start: base,
        range_size: size,
        mapping_base: base & !0x1f_ffff,
        mapping_size: 2 << 20,
    }
}

/// Bytes per registration after `register` has added `count` registrations to a new registry.
fn bytes_per_registration(count: u64, register: impl FnOnce(&Registry)) -> f64 {
    let before = LIVE_BYTES.load(Ordering::SeqCst);
    let registry = Registry::new();
    register(&registry);
    assert_eq!(registry.counts().registrations, count);
    let bytes = (LIVE_BYTES.load(Ordering::SeqCst) - before) as f64 / count as f64;
    drop(registry);
    bytes
}

// One test function: the counter is process-wide, so the sizes are measured one after another.
#[test]
fn a_registration_costs_at_most_128_bytes_alone_or_sharing_an_allocation() {
    for n in [10_000u64, 100_000] {
        let bytes = bytes_per_registration(n, |registry| {
            for i in 0..n {
                let base = 0x7000_0000_0000 + i * 4096;
                let piece = Piece { query_at: base, start: base, end: base + 4096, buffer_id: base };
                registry.insert("", 0, &[piece], &[answer(base, 4096)]);
            }
        });
        println!("{n} registrations in as many allocations: {bytes:.1} bytes each");
        assert!(bytes <= TARGET_BYTES, "{n} distinct: {bytes:.1} bytes per registration");
    }
    let bytes = bytes_per_registration(1_000_000, |registry| {
        for arena in 0..10_000u64 {
            let base = 0x7000_0000_0000 + arena * (256 << 10);
            for i in 0..100 {
                let start = base + i * 2048;
                let piece = Piece { query_at: base, start, end: start + 2048, buffer_id: base };
                registry.insert("", 0, &[piece], &[answer(base, 256 << 10)]);
            }
        }
    });
    println!("1,000,000 registrations in 10,000 allocations: {bytes:.1} bytes each");
    assert!(bytes <= TARGET_BYTES, "1M shared: {bytes:.1} bytes per registration");
}
