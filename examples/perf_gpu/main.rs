//! The GPU benchmark (run on a GPU machine by scripts/gpu-suites/40-performance.sh, which
//! turns its `RESULT vram <key> <value>` lines into docs/performance.md).
//!
//! Plays the engine: retains the primary context of GPU 0, allocates with the driver API,
//! launches an empty kernel (JIT-compiled PTX) for the engine-latency figures. All times in
//! microseconds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vram_monitor::{Monitor, MonitorOptions, Pacing};

/// Counts live heap bytes, for the memory-per-registration figure.
/// Counts only while COUNTING is set, so that the latency figures (8 threads) do not pay for
/// a shared counter.
struct Counting;
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
#[global_allocator]
static ALLOCATOR: Counting = Counting;

mod engine;
mod load;
mod many;
mod paired;
mod stats;

use engine::*;
use load::*;
use many::*;
use paired::*;
use stats::*;

/// register_many against the loop at 1k entries in 10 allocations and 100k in 1k, in a
/// model's order and interleaved.
fn register_many_all(cuda: &Cuda) {
    for order in [many::Order::Model, many::Order::Interleaved] {
        register_many_vs_loop(cuda, 1_000, 10, order);
        register_many_vs_loop(cuda, 100_000, 1_000, order);
    }
}

fn main() {
    let cuda = Arc::new(Cuda::load());
    println!("perf_gpu on {} (GPU 0), vram-monitor {}", cuda.name, vram_monitor::VERSION);
    println!("default pacing: {} queries per slice, {:?} pause", vram_monitor::monitor::DEFAULT_SLICE_QUERIES, vram_monitor::monitor::DEFAULT_PAUSE);
    // What one timed step adds to the latencies below: the two clock reads around it.
    {
        let started = Instant::now();
        for _ in 0..1_000_000 {
            std::hint::black_box(Instant::now());
        }
        result("clock_read_ns", started.elapsed().as_secs_f64() * 1e9 / 1e6);
    }
    // `perf_gpu driver-load`: how the driver's answer time under many threads depends on the
    // number of threads and on what the monitor's checks do meanwhile.
    if std::env::args().nth(1).as_deref() == Some("driver-load") {
        let distinct_100k: Vec<u64> = (0..100_000).map(|_| cuda.alloc(4096)).collect();
        driver_under_load(&cuda, &distinct_100k);
        for p in distinct_100k {
            cuda.free(p);
        }
        println!("perf_gpu: done");
        return;
    }
    // `perf_gpu register-many`: a whole model in one call against a loop of register.
    if std::env::args().nth(1).as_deref() == Some("register-many") {
        register_many_all(&cuda);
        println!("perf_gpu: done");
        return;
    }
    // `perf_gpu register-load`: only the registration-under-load figures and their breakdown.
    if std::env::args().nth(1).as_deref() == Some("register-load") {
        let distinct_100k: Vec<u64> = (0..100_000).map(|_| cuda.alloc(4096)).collect();
        registration_under_load(&cuda, &distinct_100k, false);
        for p in distinct_100k {
            cuda.free(p);
        }
        println!("perf_gpu: done");
        return;
    }

    // ---- a whole model in one call ----------------------------------------------------------
    register_many_all(&cuda);

    // ---- sweep vs floor, N distinct allocations ------------------------------------------
    let mut distinct_100k = Vec::new();
    for n in [10_000usize, 100_000] {
        let pointers: Vec<u64> = (0..n).map(|_| cuda.alloc(4096)).collect();
        let m = monitor(Pacing::FLAT_OUT);
        COUNTING.store(true, Ordering::SeqCst);
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let started = Instant::now();
        for &p in &pointers {
            m.register(p, 4096, "").unwrap();
        }
        let register_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        let bytes = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / n as f64;
        COUNTING.store(false, Ordering::SeqCst);
        let paired = paired_floor_and_check(&cuda, &m, &pointers);
        let (floor, sweep) = (paired.floor, paired.check);
        result(&format!("floor_us_{n}"), floor);
        result(&format!("sweep_us_{n}"), sweep);
        result(&format!("sweep_ratio_paired_{n}"), paired.ratio);
        // What the floor depends on: a thread with no current context (as the monitor's thread
        // is), and the order of the addresses.
        result(&format!("floor_no_context_us_{n}"), paired.floor_no_context);
        result(&format!("sweep_ratio_no_context_{n}"), sweep / paired.floor_no_context);
        result(&format!("sweep_ratio_no_context_paired_{n}"), paired.ratio_no_context);
        let mut shuffled = pointers.clone();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        result(&format!("floor_shuffled_us_{n}"), cuda.floor_us_per_query(&shuffled) * n as f64);
        result(&format!("sweep_ratio_{n}"), sweep / floor);
        result(&format!("register_mean_us_{n}"), register_us);
        result(&format!("memory_bytes_per_registration_distinct_{n}"), bytes);
        m.set_pacing(Pacing::default()).unwrap();
        result(&format!("sweep_paced_us_{n}"), best_check_us(&m));
        if n == 100_000 {
            distinct_100k = pointers;
        } else {
            drop(m);
            for p in pointers {
                cuda.free(p);
            }
        }
    }

    // ---- sharing: 1,000,000 registrations inside 10,000 allocations -----------------------
    {
        let arenas: Vec<u64> = (0..10_000).map(|_| cuda.alloc(256 << 10)).collect();
        let m = monitor(Pacing::FLAT_OUT);
        COUNTING.store(true, Ordering::SeqCst);
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        for &a in &arenas {
            for i in 0..100u64 {
                m.register(a + i * 2048, 2048, "").unwrap();
            }
        }
        let bytes = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / 1e6;
        COUNTING.store(false, Ordering::SeqCst);
        let paired = paired_floor_and_check(&cuda, &m, &arenas);
        let (floor, sweep) = (paired.floor, paired.check);
        result("sharing_ratio_paired", paired.ratio);
        result("sharing_ratio_no_context_paired", paired.ratio_no_context);
        result("sharing_floor_us_10000", floor);
        result("sharing_sweep_us_1000000", sweep);
        result("sharing_ratio", sweep / floor);
        result("memory_bytes_per_registration_shared_1000000", bytes);
        // Still catches a change to any one of them.
        let victim = arenas[7_777];
        cuda.free(victim);
        let summary = m.check_now().unwrap();
        result("sharing_violations_after_freeing_one_arena", summary.violations as f64);
        drop(m);
        for a in arenas {
            if a != victim {
                cuda.free(a);
            }
        }
    }

    // ---- engine impact: launch + sync while 100k registrations are checked continuously ----
    // Alone and with the monitor checking alternate, seven rounds each of 50,000 launches, so
    // drift of the machine hits both; the medians of the rounds' percentiles are reported.
    let pacings: [(&str, Pacing); 4] = [
        ("default", Pacing::default()),
        ("flat_out", Pacing::FLAT_OUT),
        ("slice64_pause50", Pacing { slice_queries: 64, pause: Duration::from_micros(50) }),
        ("slice1024_pause100", Pacing { slice_queries: 1024, pause: Duration::from_micros(100) }),
    ];
    let (mut alone_p50, mut alone_p999) = (Vec::new(), Vec::new());
    for (name, pacing) in pacings {
        let m = Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), pacing }).unwrap();
        for &p in &distinct_100k {
            m.register(p, 4096, "").unwrap();
        }
        let (mut with_p50, mut with_p999, mut checks) = (Vec::new(), Vec::new(), 0);
        for _round in 0..7 {
            m.set_interval(Duration::from_secs(3600)).unwrap();
            m.check_now().unwrap(); // waits for any check in progress
            let alone = engine_latencies(&cuda, 50_000);
            alone_p50.push(percentile(&alone, 0.5));
            alone_p999.push(percentile(&alone, 0.999));
            m.set_interval(Duration::from_millis(1)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let before = m.health().checks_completed;
            let with = engine_latencies(&cuda, 50_000);
            checks += m.health().checks_completed - before;
            with_p50.push(percentile(&with, 0.5));
            with_p999.push(percentile(&with, 0.999));
        }
        result(&format!("engine_p50_with_{name}"), median(with_p50));
        result(&format!("engine_p999_with_{name}"), median(with_p999));
        result(&format!("engine_checks_during_{name}"), checks as f64);
        result(&format!("engine_check_us_{name}"), m.health().last_check_duration_us as f64);
    }
    result("engine_p50_alone", median(alone_p50));
    result("engine_p999_alone", median(alone_p999));

    registration_under_load(&cuda, &distinct_100k, true);
    driver_under_load(&cuda, &distinct_100k);
    for p in distinct_100k {
        cuda.free(p);
    }
    println!("perf_gpu: done");
}
