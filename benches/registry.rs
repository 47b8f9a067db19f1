//! CPU benchmarks of the registry and classification, on any machine (no libcuda, no GPU).
//!
//! The monitor runs against a model driver: a sorted table of fake allocations answered like
//! the H100 answers (`RANGE_*` = the allocation, `MAPPING_*` = the 2 MiB driver chunk holding
//! it). The table is evenly spaced, so a lookup is one division and one table entry (binary
//! search is the fallback): what is measured is the registry, the check loop and the
//! classification, not the fake. `model_driver/pointer_info` measures the fake alone (in the
//! random order a check visits allocations), for subtraction.
//!
//!     cargo bench --bench registry                 # full run, about 2 minutes
//!     cargo bench --bench registry -- --quick      # seconds, less precise
//!     cargo bench --bench registry -- check_now    # one group (a name filter)
//!     cargo bench --bench registry -- --save-baseline before   ... then --baseline before
//!
//! Without `--bench` (that is, under `cargo test --all-targets`) criterion runs each routine
//! once as a smoke test; the sizes are then cut to a few thousand so that costs well under a
//! second in a debug build. Results and the machine they came from: docs/performance-cpu.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vram_monitor::verdict::{classify_piece, Piece};
use vram_monitor::{Driver, DriverError, MemoryType, Monitor, MonitorOptions, Pacing, PointerInfo, RegistrationId};

/// The driver's chunk for small allocations, and the alignment of everything here.
const CHUNK: u64 = 2 << 20;
/// Where the model's address space starts (a typical device address).
const BASE: u64 = 0x7f00_0000_0000;
/// A label of a typical length (a tensor name).
const LABEL: &str = "model.layers.17.mlp.up_proj";

/// `cargo bench` passes `--bench`; `cargo test` runs the binary without it.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Sizes: the real ones under `cargo bench`, small ones in test mode.
struct Sizes {
    distinct: [u64; 2],
    arenas: u64,
    per_arena: u64,
    /// Arenas for the case where every answer changes (each check judges every registration
    /// again, a few hundred ms per million here: a tenth of the size keeps the run short).
    changed_arenas: u64,
}

fn sizes() -> Sizes {
    if full_run() {
        Sizes { distinct: [10_000, 100_000], arenas: 10_000, per_arena: 100, changed_arenas: 1_000 }
    } else {
        Sizes { distinct: [1_000, 2_000], arenas: 100, per_arena: 10, changed_arenas: 10 }
    }
}

#[derive(Clone, Copy)]
struct Allocation {
    start: u64,
    size: u64,
    buffer_id: u64,
}

/// A driver that knows a fixed set of device allocations, sorted by address. `generation` is
/// added to every BUFFER_ID, so bumping it makes every allocation look freed and reallocated.
struct ModelDriver {
    allocations: Vec<Allocation>,
    /// The distance between allocations: the table is laid out evenly, so the index of an
    /// address is a division (binary search is the fallback for any other address).
    stride: u64,
    generation: AtomicU64,
}

impl ModelDriver {
    /// `count` allocations of `size` bytes, packed one after another from [`BASE`].
    fn new(count: u64, size: u64) -> ModelDriver {
        let stride = size.next_multiple_of(512);
        let allocations =
            (0..count).map(|i| Allocation { start: BASE + i * stride, size, buffer_id: 1000 + i }).collect();
        ModelDriver { allocations, stride, generation: AtomicU64::new(0) }
    }

    fn start(&self, i: u64) -> u64 {
        self.allocations[i as usize].start
    }

    /// The allocation holding `address`, if any.
    fn find(&self, address: u64) -> Option<&Allocation> {
        let guess = address.checked_sub(BASE).map(|offset| offset / self.stride);
        let a = match guess.and_then(|i| self.allocations.get(usize::try_from(i).ok()?)) {
            Some(a) if a.start <= address => a,
            _ => {
                let i = self.allocations.partition_point(|a| a.start <= address);
                &self.allocations[i.checked_sub(1)?]
            }
        };
        (address < a.start + a.size).then_some(a)
    }
}

impl Driver for ModelDriver {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        let Some(a) = self.find(address) else {
            return Ok(PointerInfo::unregistered());
        };
        Ok(PointerInfo {
            memory_type: MemoryType::Device,
            is_managed: false,
            device_ordinal: 0,
            buffer_id: a.buffer_id + self.generation.load(Ordering::Relaxed),
            range_start: a.start,
            range_size: a.size,
            mapping_base: a.start & !(CHUNK - 1),
            mapping_size: CHUNK,
        })
    }

    fn device_used_memory(&self, _device: i32) -> Option<u64> {
        None
    }

    fn version(&self) -> Option<i32> {
        None
    }
}

/// A monitor that never checks on its own (the benchmarks call `check_now`), checking flat out.
fn monitor(driver: &Arc<ModelDriver>) -> Monitor {
    let options = MonitorOptions { interval: Duration::from_secs(24 * 3600), pacing: Pacing::FLAT_OUT };
    Monitor::with_driver(options, driver.clone()).expect("monitor")
}

/// A monitor holding one registration for each of the first `count` allocations.
fn monitor_with_distinct(driver: &Arc<ModelDriver>, count: u64) -> Monitor {
    let monitor = monitor(driver);
    for i in 0..count {
        monitor.register(driver.start(i), driver.allocations[i as usize].size, LABEL).expect("register");
    }
    monitor
}

/// Register and unregister at `existing` registrations: the monitor holds that many, and
/// each measured call registers (or unregisters) one of `POOL` further allocations; after
/// each round of `POOL` calls the pool is undone untimed, so the count stays in
/// [existing, existing + POOL].
fn bench_register(c: &mut Criterion) {
    const POOL: u64 = 1_000;
    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(1));
    for existing in sizes().distinct {
        let driver = Arc::new(ModelDriver::new(existing + POOL, 4096));
        let monitor = monitor_with_distinct(&driver, existing);
        let pool: Vec<u64> = (existing..existing + POOL).map(|i| driver.start(i)).collect();
        let mut ids: Vec<RegistrationId> = Vec::with_capacity(POOL as usize);

        group.bench_function(BenchmarkId::new("register", existing), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(POOL) as usize;
                    let started = Instant::now();
                    for &ptr in &pool[..round] {
                        ids.push(monitor.register(black_box(ptr), 4096, LABEL).expect("register"));
                    }
                    timed += started.elapsed();
                    for id in ids.drain(..) {
                        monitor.unregister(id).expect("unregister");
                    }
                    left -= round as u64;
                }
                timed
            })
        });

        group.bench_function(BenchmarkId::new("unregister", existing), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(POOL) as usize;
                    for &ptr in &pool[..round] {
                        ids.push(monitor.register(ptr, 4096, LABEL).expect("register"));
                    }
                    let started = Instant::now();
                    for id in ids.drain(..) {
                        monitor.unregister(black_box(id)).expect("unregister");
                    }
                    timed += started.elapsed();
                    left -= round as u64;
                }
                timed
            })
        });
        assert_eq!(monitor.health().registrations, existing, "the pool was undone after each round");
    }
    group.finish();
}

/// Full checks, flat out, nothing changed since the last one (the steady state): N
/// registrations in N allocations, and registrations sharing few allocations.
fn bench_check(c: &mut Criterion) {
    let sizes = sizes();
    let mut group = c.benchmark_group("check_now");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    for n in sizes.distinct {
        let driver = Arc::new(ModelDriver::new(n, 4096));
        let monitor = monitor_with_distinct(&driver, n);
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::new("distinct", n), |b| {
            b.iter(|| {
                let summary = monitor.check_now().expect("check");
                assert!(summary.healthy && summary.checked == n);
                summary
            })
        });
    }

    // Registrations inside arenas: `per_arena` disjoint 2 KiB tensors in each 256 KiB arena.
    let (arenas, per_arena) = (sizes.arenas, sizes.per_arena);
    let (driver, monitor, total, id) = arena_monitor(arenas, per_arena);
    group.throughput(Throughput::Elements(total));
    group.bench_function(BenchmarkId::new("shared", &id), |b| {
        b.iter(|| {
            let summary = monitor.check_now().expect("check");
            assert!(summary.healthy && summary.checked == total);
            summary
        })
    });
    drop((driver, monitor));

    // The worst case for sharing: every allocation's answer changes before every check (the
    // model bumps every BUFFER_ID), so every registration is judged again. The first check
    // reports them all REPLACED; later ones judge them all again and find the same verdict.
    let (driver, monitor, total, id) = arena_monitor(sizes.changed_arenas, per_arena);
    group.throughput(Throughput::Elements(total));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("shared_all_changed", &id), |b| {
        b.iter(|| {
            driver.generation.fetch_add(1, Ordering::Relaxed);
            let summary = monitor.check_now().expect("check");
            assert!(summary.violations == total);
            summary
        })
    });
    group.finish();
}

/// `arenas` allocations of 256 KiB holding `per_arena` disjoint 2 KiB registrations each.
fn arena_monitor(arenas: u64, per_arena: u64) -> (Arc<ModelDriver>, Monitor, u64, String) {
    let total = arenas * per_arena;
    let driver = Arc::new(ModelDriver::new(arenas, 256 << 10));
    let monitor = monitor(&driver);
    let started = Instant::now();
    for i in 0..arenas {
        for k in 0..per_arena {
            monitor.register(driver.start(i) + k * 2048, 2048, LABEL).expect("register");
        }
    }
    if full_run() {
        eprintln!("(setup: {total} registrations in {arenas} allocations took {:.2?})", started.elapsed());
    }
    (driver, monitor, total, format!("{total}_in_{arenas}"))
}

/// The pure classification function, on its longest path (resident: every test passes) and
/// on an early exit.
fn bench_classify(c: &mut Criterion) {
    let piece = Piece { query_at: BASE, start: BASE + 4096, end: BASE + 8192, buffer_id: 7 };
    let resident = PointerInfo {
        memory_type: MemoryType::Device,
        is_managed: false,
        device_ordinal: 0,
        buffer_id: 7,
        range_start: BASE,
        range_size: 1 << 20,
        mapping_base: BASE,
        mapping_size: CHUNK,
    };
    let managed = PointerInfo { is_managed: true, ..resident };
    let replaced = PointerInfo { buffer_id: 8, ..resident };
    let mut group = c.benchmark_group("classify_piece");
    for (name, info) in [("resident", resident), ("managed", managed), ("replaced", replaced)] {
        group.bench_function(name, |b| b.iter(|| classify_piece(black_box(&piece), black_box(0), black_box(&info))));
    }
    group.finish();
}

/// A model in one call against a loop of register: `entries` 4 KiB tensors in `allocations`
/// 2 MiB allocations, in model order (an allocation's tensors one after another) and
/// interleaved (entry i in allocation i % allocations). Each round registers them all (timed)
/// and unregisters them (untimed).
fn bench_register_many(c: &mut Criterion) {
    let (entries, allocations) = if full_run() { (100_000usize, 1_000usize) } else { (100, 10) };
    let per = entries / allocations;
    let driver = Arc::new(ModelDriver::new(allocations as u64, CHUNK));
    let monitor = monitor(&driver);
    let mut group = c.benchmark_group("register_many");
    group.throughput(Throughput::Elements(entries as u64));
    group.sample_size(10);
    for (order, place) in [("model", (|i, per, _| (i / per, i % per)) as fn(usize, usize, usize) -> (usize, usize)), ("interleaved", |i, _, n| (i % n, i / n))] {
        let labels: Vec<String> = (0..entries).map(|i| format!("model.layers.{}.w{}", place(i, per, allocations).0, place(i, per, allocations).1)).collect();
        let regions: Vec<vram_monitor::Region<'_>> = (0..entries)
            .map(|i| {
                let (a, t) = place(i, per, allocations);
                vram_monitor::Region { ptr: driver.start(a as u64) + t as u64 * 4096, size: 4096, label: &labels[i] }
            })
            .collect();
        let id = format!("{entries}_in_{allocations}_{order}");
        group.bench_function(BenchmarkId::new("loop_of_register", &id), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let ids: Vec<RegistrationId> = regions.iter().map(|r| monitor.register(r.ptr, r.size, r.label).expect("register")).collect();
                    timed += started.elapsed();
                    for id in ids {
                        monitor.unregister(id).expect("unregister");
                    }
                }
                timed
            })
        });
        group.bench_function(BenchmarkId::new("register_many", &id), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let done = monitor.register_many(black_box(&regions), true).expect("register_many");
                    timed += started.elapsed();
                    assert_eq!((done.registered(), done.queries), (entries, allocations as u64));
                    for id in done.ids() {
                        monitor.unregister(id).expect("unregister");
                    }
                }
                timed
            })
        });
    }
    assert_eq!(monitor.health().registrations, 0, "every round undone");
    group.finish();
}

/// What the fake itself costs per query, to subtract from the figures above.
fn bench_model(c: &mut Criterion) {
    let n = sizes().distinct[1];
    let driver = ModelDriver::new(n, 4096);
    // The model answers like the driver: inside an allocation, its extent; elsewhere, nothing.
    let inside = driver.pointer_info(driver.start(5) + 100).expect("query");
    assert_eq!((inside.buffer_id, inside.range_start, inside.range_size), (1005, driver.start(5), 4096));
    assert_eq!(driver.pointer_info(BASE - 1), Ok(PointerInfo::unregistered()));
    assert_eq!(driver.pointer_info(driver.start(n - 1) + 4096), Ok(PointerInfo::unregistered()));
    let sparse = ModelDriver::new(4, 1000); // stride 1024: gaps between allocations
    assert_eq!(sparse.pointer_info(sparse.start(1) + 1000), Ok(PointerInfo::unregistered()));
    assert_eq!(sparse.pointer_info(sparse.start(1) + 999).map(|i| i.buffer_id), Ok(1001));
    let addresses: Vec<u64> = (0..n).map(|i| driver.start((i * 7919) % n)).collect();
    let mut next = 0usize;
    c.bench_function("model_driver/pointer_info", |b| {
        b.iter(|| {
            next = if next + 1 == addresses.len() { 0 } else { next + 1 };
            driver.pointer_info(black_box(addresses[next]))
        })
    });
}

criterion_group!(benches, bench_classify, bench_model, bench_register, bench_register_many, bench_check);
criterion_main!(benches);
