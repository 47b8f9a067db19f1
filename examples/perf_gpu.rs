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

/// The engine, played through the `cuda-engine` crate: GPU 0's primary context (retained and
/// current), an empty kernel, and the driver calls the figures need.
struct Cuda {
    cuda: &'static cuda_engine::Cuda,
    context: cuda_engine::PrimaryContext<'static>,
    kernel: cuda_engine::Function,
    name: String,
}

const EMPTY_KERNEL_PTX: &std::ffi::CStr = c".version 7.0\n.target sm_50\n.address_size 64\n.visible .entry noop()\n{\n  ret;\n}\n";

/// Ends the benchmark when a driver call it needs fails.
fn check<T>(result: cuda_engine::Result<T>) -> T {
    result.unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(1);
    })
}

impl Cuda {
    fn load() -> Cuda {
        let Ok(cuda) = cuda_engine::Cuda::get() else {
            println!("perf_gpu: skipped (no CUDA driver)");
            std::process::exit(0);
        };
        check(cuda.init());
        let context = check(cuda_engine::PrimaryContext::retain_current(cuda, 0));
        let module = check(cuda.module_load_data(EMPTY_KERNEL_PTX));
        let kernel = check(cuda.module_get_function(module, c"noop"));
        let name = cuda.device_name(0).unwrap_or_default();
        Cuda { cuda, context, kernel, name }
    }

    fn make_current(&self) {
        check(self.context.make_current());
    }

    fn alloc(&self, bytes: usize) -> u64 {
        check(self.cuda.mem_alloc(bytes))
    }

    fn free(&self, ptr: u64) {
        let _ = self.cuda.mem_free(ptr);
    }

    /// The floor: the same 8 attributes the library asks, in a tight loop. Best of 20, per query.
    fn floor_us_per_query(&self, pointers: &[u64]) -> f64 {
        (0..20).map(|_| self.floor_pass_us(pointers)).fold(f64::MAX, f64::min) / pointers.len() as f64
    }

    /// One pass of the floor's loop over `pointers`, in microseconds.
    fn floor_pass_us(&self, pointers: &[u64]) -> f64 {
        let started = Instant::now();
        for &p in pointers {
            let _ = std::hint::black_box(self.cuda.pointer_attributes(p));
        }
        started.elapsed().as_secs_f64() * 1e6
    }

    /// One launch of the empty kernel and a synchronisation, in microseconds.
    fn launch_and_sync(&self) -> f64 {
        let started = Instant::now();
        check(self.cuda.launch_one_thread(self.kernel, cuda_engine::Stream::DEFAULT));
        check(self.cuda.stream_synchronize(cuda_engine::Stream::DEFAULT));
        started.elapsed().as_secs_f64() * 1e6
    }
}

fn result(key: &str, value: f64) {
    println!("RESULT vram {key} {value:.3}");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn monitor(pacing: Pacing) -> Monitor {
    Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), pacing }).expect("monitor")
}

/// A floor and a check measured in turn (see [`paired_floor_and_check`]), in microseconds.
struct Paired {
    /// The best pass of the floor's loop on this (the engine's) thread, with its context current.
    floor: f64,
    /// The best pass of the same loop on a thread with no current context, as the monitor's is.
    floor_no_context: f64,
    /// The best full check.
    check: f64,
    /// The median of the rounds' check / floor.
    ratio: f64,
    /// The median of the rounds' check / floor without a context.
    ratio_no_context: f64,
}

/// Floor passes (here, and on a thread with no current context) and full checks in turn, 21
/// rounds, so that a drift of the machine hits all three.
fn paired_floor_and_check(cuda: &Arc<Cuda>, m: &Monitor, pointers: &[u64]) -> Paired {
    let (ask, asked) = std::sync::mpsc::channel::<()>();
    let (tell, told) = std::sync::mpsc::channel::<f64>();
    let contextless = {
        let (cuda, pointers) = (Arc::clone(cuda), pointers.to_vec());
        std::thread::spawn(move || {
            while asked.recv().is_ok() {
                let _ = tell.send(cuda.floor_pass_us(&pointers));
            }
        })
    };
    m.check_now().unwrap();
    let (mut floors, mut bare_floors, mut checks, mut ratios, mut bare_ratios) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..21 {
        let floor = cuda.floor_pass_us(pointers);
        ask.send(()).unwrap();
        let bare_floor = told.recv().unwrap();
        let check = m.check_now().unwrap().duration_us as f64;
        floors.push(floor);
        bare_floors.push(bare_floor);
        checks.push(check);
        ratios.push(check / floor);
        bare_ratios.push(check / bare_floor);
    }
    drop(ask);
    contextless.join().unwrap();
    let best = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    Paired {
        floor: best(&floors),
        floor_no_context: best(&bare_floors),
        check: best(&checks),
        ratio: median(ratios),
        ratio_no_context: median(bare_ratios),
    }
}

/// Best of 20 full checks, in microseconds (the check's own duration).
fn best_check_us(m: &Monitor) -> f64 {
    m.check_now().unwrap();
    (0..20).map(|_| m.check_now().unwrap().duration_us as f64).fold(f64::MAX, f64::min)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn engine_latencies(cuda: &Cuda, iterations: usize) -> Vec<f64> {
    for _ in 0..500 {
        cuda.launch_and_sync();
    }
    sorted((0..iterations).map(|_| cuda.launch_and_sync()).collect())
}

/// The registering threads' work: one call on one of the thread's own allocations, returning
/// the latencies (microseconds) of up to two timed steps; NaN for a step it does not time.
type LoadStep = dyn Fn(u64) -> (f64, f64) + Send + Sync;

/// `threads` threads, each with its own 1,000 allocations of 4 KiB, run `step` over them until
/// `seconds` have passed, while `checking` (a monitor with 100k registrations and a 1 ms
/// interval) checks continuously. Returns the sorted latencies of each timed step.
fn under_load(cuda: &Arc<Cuda>, threads: usize, seconds: f64, step: Arc<LoadStep>) -> (Vec<f64>, Vec<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(std::sync::Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, cuda, step, ready) = (Arc::clone(&stop), Arc::clone(cuda), Arc::clone(&step), Arc::clone(&ready));
            std::thread::spawn(move || {
                cuda.make_current();
                let own: Vec<u64> = (0..1000).map(|_| cuda.alloc(4096)).collect();
                let (mut first, mut second) = (Vec::with_capacity(1 << 20), Vec::with_capacity(1 << 20));
                ready.wait();
                'outer: loop {
                    for &p in &own {
                        if stop.load(Ordering::Relaxed) {
                            break 'outer;
                        }
                        let (a, b) = step(p);
                        if !a.is_nan() {
                            first.push(a);
                        }
                        if !b.is_nan() {
                            second.push(b);
                        }
                    }
                }
                for p in own {
                    cuda.free(p);
                }
                (first, second)
            })
        })
        .collect();
    ready.wait();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for w in workers {
        let (a, b) = w.join().unwrap();
        first.extend(a);
        second.extend(b);
    }
    (sorted(first), sorted(second))
}

fn microseconds_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

fn report_latencies(key: &str, sorted: &[f64]) {
    result(&format!("{key}_p50"), percentile(sorted, 0.5));
    result(&format!("{key}_p999"), percentile(sorted, 0.999));
    result(&format!("{key}_max"), *sorted.last().unwrap_or(&f64::NAN));
    result(&format!("{key}_calls"), sorted.len() as f64);
}

/// Registration under load (8 threads registering and unregistering while 100k registrations
/// are checked every 1 ms), and the same load taken apart: the bare registration-time query,
/// the whole registration-time inspection, and the registry alone, so that the cost of each
/// step under contention can be read off. `all_pacings` adds the flat-out pacing.
fn registration_under_load(cuda: &Arc<Cuda>, distinct_100k: &[u64], all_pacings: bool) {
    use vram_monitor::registry::Registry;
    let mut pacings = vec![("default", Pacing::default())];
    if all_pacings {
        pacings.push(("flat_out", Pacing::FLAT_OUT));
    }
    let checking = |pacing: Pacing| {
        let m = Arc::new(Monitor::new(MonitorOptions { interval: Duration::from_millis(1), pacing }).unwrap());
        for &p in distinct_100k {
            m.register(p, 4096, "").unwrap();
        }
        m
    };
    for (name, pacing) in pacings {
        let m = checking(pacing);
        let engine = Arc::clone(&m);
        let (reg, unreg) = under_load(
            cuda,
            8,
            3.0,
            Arc::new(move |p| {
                let t = Instant::now();
                let id = engine.register(p, 4096, "kv").unwrap();
                let registered = microseconds_since(t);
                let t = Instant::now();
                engine.unregister(id).unwrap();
                (registered, microseconds_since(t))
            }),
        );
        report_latencies(&format!("register_{name}"), &reg);
        report_latencies(&format!("unregister_{name}"), &unreg);
        result(&format!("register_checks_during_{name}"), m.health().checks_completed as f64);
    }
    // The same, taken apart, under the same checking load (default pacing).
    let m = checking(Pacing::default());
    let driver: &'static vram_monitor::CudaDriver = vram_monitor::CudaDriver::get().unwrap();
    // 1. the bare query: the driver's own floor for a registration under this load.
    let (query, _) = under_load(
        cuda,
        8,
        2.0,
        Arc::new(move |p| {
            let t = Instant::now();
            let _ = std::hint::black_box(vram_monitor::Driver::pointer_info(driver, p));
            (microseconds_since(t), f64::NAN)
        }),
    );
    report_latencies("query_only_8_threads", &query);
    // 2. the registration-time inspection (the query and what register builds from it).
    let (inspect, _) = under_load(
        cuda,
        8,
        2.0,
        Arc::new(move |p| {
            let t = Instant::now();
            let _ = std::hint::black_box(vram_monitor::inspect::inspect(driver, p, 4096));
            (microseconds_since(t), f64::NAN)
        }),
    );
    report_latencies("inspect_only_8_threads", &inspect);
    // 3. the registry alone (a second registry nobody checks), from a ready inspection.
    let registry = Arc::new(Registry::new());
    let table = Arc::clone(&registry);
    let (insert, remove) = under_load(
        cuda,
        8,
        2.0,
        Arc::new(move |p| {
            let found = vram_monitor::inspect::inspect(driver, p, 4096).unwrap();
            let t = Instant::now();
            let id = table.insert("kv", found.device, found.pieces(), found.answers());
            let inserted = microseconds_since(t);
            let t = Instant::now();
            table.remove(id).unwrap();
            (inserted, microseconds_since(t))
        }),
    );
    report_latencies("registry_insert_8_threads", &insert);
    report_latencies("registry_remove_8_threads", &remove);
    // 4. one registering thread: the same call without contention between registering threads.
    let engine = Arc::clone(&m);
    let (single, _) = under_load(
        cuda,
        1,
        2.0,
        Arc::new(move |p| {
            let t = Instant::now();
            let id = engine.register(p, 4096, "kv").unwrap();
            let registered = microseconds_since(t);
            engine.unregister(id).unwrap();
            (registered, f64::NAN)
        }),
    );
    report_latencies("register_1_thread", &single);
    result("load_checks_during_breakdown", m.health().checks_completed as f64);
}

/// The bare query and a whole register on 1 to 16 threads, with no check running, and on 8
/// threads while 100k registrations are checked every 1 ms at several pacings: what part of
/// a registration's latency under load is the driver's, and what part our checks cause.
fn driver_under_load(cuda: &Arc<Cuda>, distinct_100k: &[u64]) {
    let driver: &'static vram_monitor::CudaDriver = vram_monitor::CudaDriver::get().unwrap();
    let bare_query = || -> Arc<LoadStep> {
        Arc::new(move |p| {
            let t = Instant::now();
            let _ = std::hint::black_box(vram_monitor::Driver::pointer_info(driver, p));
            (microseconds_since(t), f64::NAN)
        })
    };
    let register = |m: &Arc<Monitor>| -> Arc<LoadStep> {
        let m = Arc::clone(m);
        Arc::new(move |p| {
            let t = Instant::now();
            let id = m.register(p, 4096, "kv").unwrap();
            let registered = microseconds_since(t);
            m.unregister(id).unwrap();
            (registered, f64::NAN)
        })
    };
    let idle = Arc::new(Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), pacing: Pacing::default() }).unwrap());
    for &p in distinct_100k {
        idle.register(p, 4096, "").unwrap();
    }
    for threads in [1usize, 2, 4, 8, 16] {
        let (q, _) = under_load(cuda, threads, 1.5, bare_query());
        report_latencies(&format!("no_checks_query_{threads}_threads"), &q);
        let (r, _) = under_load(cuda, threads, 1.5, register(&idle));
        report_latencies(&format!("no_checks_register_{threads}_threads"), &r);
    }
    drop(idle);
    // The bare query again on 8 threads, each doing some CPU work of its own (no locks, no
    // driver) between queries, as a registering thread does in the registry: how the driver's
    // answer time depends on how the callers arrive, not only on how many there are.
    for gap_ns in [250u64, 500, 1000] {
        let (q, _) = under_load(
            cuda,
            8,
            1.5,
            Arc::new(move |p| {
                let spin = Instant::now();
                while spin.elapsed() < Duration::from_nanos(gap_ns) {
                    std::hint::spin_loop();
                }
                let t = Instant::now();
                let _ = std::hint::black_box(vram_monitor::Driver::pointer_info(driver, p));
                (microseconds_since(t), f64::NAN)
            }),
        );
        report_latencies(&format!("no_checks_query_after_{gap_ns}ns_of_work_8_threads"), &q);
    }
    // The bare query on 8 threads, but let into the driver one at a time by a lock of our
    // own (a spin lock; std's futex mutex): whether queueing outside the driver answers
    // faster than queueing inside it.
    {
        static SPIN: AtomicBool = AtomicBool::new(false);
        let (q, _) = under_load(
            cuda,
            8,
            1.5,
            Arc::new(move |p| {
                let t = Instant::now();
                while SPIN.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    std::hint::spin_loop();
                }
                let _ = std::hint::black_box(vram_monitor::Driver::pointer_info(driver, p));
                SPIN.store(false, Ordering::Release);
                (microseconds_since(t), f64::NAN)
            }),
        );
        report_latencies("no_checks_query_behind_spin_lock_8_threads", &q);
        let gate = Arc::new(std::sync::Mutex::new(()));
        let (q, _) = under_load(
            cuda,
            8,
            1.5,
            Arc::new(move |p| {
                let t = Instant::now();
                let _held = gate.lock().unwrap();
                let _ = std::hint::black_box(vram_monitor::Driver::pointer_info(driver, p));
                (microseconds_since(t), f64::NAN)
            }),
        );
        report_latencies("no_checks_query_behind_mutex_8_threads", &q);
    }
    let pacings: [(&str, Pacing); 4] = [
        ("default", Pacing::default()),
        ("flat_out", Pacing::FLAT_OUT),
        ("slice64_pause50", Pacing { slice_queries: 64, pause: Duration::from_micros(50) }),
        ("slice16_pause20", Pacing { slice_queries: 16, pause: Duration::from_micros(20) }),
    ];
    for (name, pacing) in pacings {
        let m = Arc::new(Monitor::new(MonitorOptions { interval: Duration::from_millis(1), pacing }).unwrap());
        for &p in distinct_100k {
            m.register(p, 4096, "").unwrap();
        }
        let (q, _) = under_load(cuda, 8, 1.5, bare_query());
        report_latencies(&format!("checks_{name}_query_8_threads"), &q);
        let (r, _) = under_load(cuda, 8, 1.5, register(&m));
        report_latencies(&format!("checks_{name}_register_8_threads"), &r);
        result(&format!("checks_{name}_check_us"), m.health().last_check_duration_us as f64);
    }
}

/// A whole model in one call against a loop of `register`: `entries` tensors of 4 KiB in
/// `allocations` allocations, alternating rounds (median of paired ratios); the queries
/// register_many made, counted by the call itself.
fn register_many_vs_loop(cuda: &Cuda, entries: usize, allocations: usize) {
    let per = entries / allocations;
    let bases: Vec<u64> = (0..allocations).map(|_| cuda.alloc(per * 4096)).collect();
    let labels: Vec<String> = (0..entries).map(|i| format!("model.layers.{}.w{}", i % allocations, i / allocations)).collect();
    let regions: Vec<vram_monitor::Region<'_>> = (0..entries)
        .map(|i| vram_monitor::Region { ptr: bases[i % allocations] + (i / allocations) as u64 * 4096, size: 4096, label: &labels[i] })
        .collect();
    let m = monitor(Pacing::default());
    let (mut loop_us, mut many_us, mut ratios, mut queries) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..5 {
        let started = Instant::now();
        let ids: Vec<_> = regions.iter().map(|r| m.register(r.ptr, r.size, r.label).unwrap()).collect();
        let one_by_one = microseconds_since(started);
        for id in ids {
            m.unregister(id).unwrap();
        }
        let started = Instant::now();
        let done = m.register_many(&regions, true).unwrap();
        let together = microseconds_since(started);
        assert_eq!(done.registered(), entries, "register_many registered every entry");
        queries = done.queries;
        for id in done.results.into_iter().flatten() {
            m.unregister(id).unwrap();
        }
        loop_us.push(one_by_one);
        many_us.push(together);
        ratios.push(one_by_one / together);
    }
    result(&format!("register_loop_us_{entries}_in_{allocations}"), median(loop_us));
    result(&format!("register_many_us_{entries}_in_{allocations}"), median(many_us));
    result(&format!("register_many_speedup_paired_{entries}_in_{allocations}"), median(ratios));
    result(&format!("register_many_queries_{entries}_in_{allocations}"), queries as f64);
    drop(m);
    for b in bases {
        cuda.free(b);
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
        register_many_vs_loop(&cuda, 1_000, 10);
        register_many_vs_loop(&cuda, 100_000, 1_000);
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
    register_many_vs_loop(&cuda, 1_000, 10);
    register_many_vs_loop(&cuda, 100_000, 1_000);

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
