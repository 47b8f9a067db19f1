//! Registering under load: many threads registering while checks run, taken apart step by step.

use super::*;

/// The registering threads' work: one call on one of the thread's own allocations, returning
/// the latencies (microseconds) of up to two timed steps; NaN for a step it does not time.
pub(crate) type LoadStep = dyn Fn(u64) -> (f64, f64) + Send + Sync;

/// `threads` threads, each with its own 1,000 allocations of 4 KiB, run `step` over them until
/// `seconds` have passed, while `checking` (a monitor with 100k registrations and a 1 ms
/// interval) checks continuously. Returns the sorted latencies of each timed step.
pub(crate) fn under_load(cuda: &Arc<Cuda>, threads: usize, seconds: f64, step: Arc<LoadStep>) -> (Vec<f64>, Vec<f64>) {
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

/// The registry's insert and remove timed apart from the driver: the inspection is taken
/// untimed before them.
fn registry_alone(driver: &'static vram_monitor::CudaDriver, table: Arc<vram_monitor::registry::Registry>) -> Arc<LoadStep> {
    Arc::new(move |p| {
        let found = vram_monitor::inspect::inspect(driver, p, 4096).unwrap();
        let t = Instant::now();
        let id = table.insert("kv", found.device, found.pieces(), found.answers());
        let inserted = microseconds_since(t);
        let t = Instant::now();
        table.remove(id).unwrap();
        (inserted, microseconds_since(t))
    })
}

pub(crate) fn microseconds_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

pub(crate) fn report_latencies(key: &str, sorted: &[f64]) {
    result(&format!("{key}_p50"), percentile(sorted, 0.5));
    result(&format!("{key}_p999"), percentile(sorted, 0.999));
    result(&format!("{key}_max"), *sorted.last().unwrap_or(&f64::NAN));
    result(&format!("{key}_calls"), sorted.len() as f64);
}

/// Registration under load (8 threads registering and unregistering while 100k registrations
/// are checked every 1 ms), and the same load taken apart: the bare registration-time query,
/// the whole registration-time inspection, and the registry alone, so that the cost of each
/// step under contention can be read off. `all_pacings` adds the flat-out pacing.
pub(crate) fn registration_under_load(cuda: &Arc<Cuda>, distinct_100k: &[u64], all_pacings: bool) {
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
    let (insert, remove) = under_load(cuda, 8, 2.0, registry_alone(driver, Arc::new(Registry::new())));
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
pub(crate) fn driver_under_load(cuda: &Arc<Cuda>, distinct_100k: &[u64]) {
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
    // 16 threads, alternating rounds of the bare query and of register (7 pairs of 1 s): the
    // driver's answer time at 16 threads moves from run to run (0.5 to 10 us p50 seen), so
    // the ratio is taken pair by pair, each register round against the query round next to it.
    let (mut ratios, mut query_p50s, mut register_p50s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        let (q, _) = under_load(cuda, 16, 1.0, bare_query());
        let (r, _) = under_load(cuda, 16, 1.0, register(&idle));
        let (q50, r50) = (percentile(&q, 0.5), percentile(&r, 0.5));
        query_p50s.push(q50);
        register_p50s.push(r50);
        ratios.push(r50 / q50);
    }
    result("paired_16_threads_query_p50", median(query_p50s));
    result("paired_16_threads_register_p50", median(register_p50s));
    result("paired_16_threads_register_over_query_p50", median(ratios));
    drop(idle);
    // Our part alone: the registry's insert and remove (no driver call in the timed step; the
    // inspection is taken untimed before it), on 1 and 16 threads, no checks: what 16
    // threads cost each other in our own tables.
    for threads in [1usize, 16] {
        let table = Arc::new(vram_monitor::registry::Registry::new());
        let (insert, remove) = under_load(cuda, threads, 1.5, registry_alone(driver, table));
        report_latencies(&format!("no_checks_registry_insert_{threads}_threads"), &insert);
        report_latencies(&format!("no_checks_registry_remove_{threads}_threads"), &remove);
    }
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
