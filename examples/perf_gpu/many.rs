//! A whole model in one call (`register_many`) against a loop of `register`.

use super::*;

/// The order of the entries handed to `register_many` (and to the loop).
#[derive(Clone, Copy)]
pub(crate) enum Order {
    /// As a model's parameters come: the tensors of one allocation one after another (a
    /// caching allocator's segment holds consecutive parameters).
    Model,
    /// Each entry in another allocation than the one before (entry i in allocation
    /// i % allocations): the worst order for the one-call path.
    Interleaved,
}

/// A whole model in one call against a loop of `register`: `entries` tensors of 4 KiB in
/// `allocations` allocations, in `order`, alternating rounds (median of paired ratios); the
/// queries register_many made, counted by the call itself.
pub(crate) fn register_many_vs_loop(cuda: &Cuda, entries: usize, allocations: usize, order: Order) {
    let per = entries / allocations;
    let bases: Vec<u64> = (0..allocations).map(|_| cuda.alloc(per * 4096)).collect();
    // Entry i: allocation a, tensor t of that allocation.
    let place = |i: usize| match order {
        Order::Model => (i / per, i % per),
        Order::Interleaved => (i % allocations, i / allocations),
    };
    let labels: Vec<String> = (0..entries).map(|i| format!("model.layers.{}.w{}", place(i).0, place(i).1)).collect();
    let regions: Vec<vram_monitor::Region<'_>> = (0..entries)
        .map(|i| vram_monitor::Region { ptr: bases[place(i).0] + place(i).1 as u64 * 4096, size: 4096, label: &labels[i] })
        .collect();
    let tag = match order {
        Order::Model => "",
        Order::Interleaved => "_interleaved",
    };
    let m = monitor(Pacing::default());
    // The queries register_many cannot avoid: one per allocation, at its first entry, in the
    // entries' order (the driver alone, nothing registered).
    let firsts: Vec<u64> = {
        let mut seen = std::collections::HashSet::new();
        (0..entries).map(|i| bases[place(i).0]).filter(|&b| seen.insert(b)).collect()
    };
    // The same call with one bad entry at the end, all-or-nothing: every entry judged (the
    // driver asked once per allocation), nothing stored. What storing costs is the difference.
    let judge_only: Vec<vram_monitor::Region<'_>> =
        regions.iter().copied().chain([vram_monitor::Region { ptr: bases[0], size: 0, label: "" }]).collect();
    let (mut loop_us, mut many_us, mut ratios, mut queries, mut floor_us) = (Vec::new(), Vec::new(), Vec::new(), 0, Vec::new());
    let (mut judge_us, mut loop_faults, mut many_faults) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        floor_us.push(cuda.floor_pass_us(&firsts));
        let faults = minor_faults();
        let started = Instant::now();
        let ids: Vec<_> = regions.iter().map(|r| m.register(r.ptr, r.size, r.label).unwrap()).collect();
        let one_by_one = microseconds_since(started);
        loop_faults.push((minor_faults() - faults) as f64);
        for id in ids {
            m.unregister(id).unwrap();
        }
        let faults = minor_faults();
        let started = Instant::now();
        let done = m.register_many(&regions, true).unwrap();
        let together = microseconds_since(started);
        many_faults.push((minor_faults() - faults) as f64);
        assert_eq!(done.registered(), entries, "register_many registered every entry");
        queries = done.queries;
        for id in done.ids() {
            m.unregister(id).unwrap();
        }
        loop_us.push(one_by_one);
        many_us.push(together);
        ratios.push(one_by_one / together);
    }
    // After the paired rounds, not among them: its freed memory would change which of their
    // calls get fresh pages.
    for _ in 0..7 {
        let started = Instant::now();
        let refused = m.register_many(&judge_only, true).unwrap();
        judge_us.push(microseconds_since(started));
        assert_eq!(refused.registered(), 0, "one bad entry, all-or-nothing: nothing registered");
    }
    // The first round apart: each side's first call of this size in the process, on memory
    // the allocator hands out fresh, as when an engine registers its model once.
    result(&format!("register_loop_us_first_round_{entries}_in_{allocations}{tag}"), loop_us[0]);
    result(&format!("register_many_us_first_round_{entries}_in_{allocations}{tag}"), many_us[0]);
    result(&format!("register_many_minor_faults_first_round_{entries}_in_{allocations}{tag}"), many_faults[0]);
    result(&format!("register_loop_us_{entries}_in_{allocations}{tag}"), median(loop_us));
    result(&format!("register_many_us_{entries}_in_{allocations}{tag}"), median(many_us));
    result(&format!("register_many_speedup_paired_{entries}_in_{allocations}{tag}"), median(ratios));
    result(&format!("register_many_queries_{entries}_in_{allocations}{tag}"), queries as f64);
    result(&format!("register_many_query_floor_us_{entries}_in_{allocations}{tag}"), median(floor_us));
    result(&format!("register_many_judge_only_us_{entries}_in_{allocations}{tag}"), median(judge_us));
    result(&format!("register_loop_minor_faults_{entries}_in_{allocations}{tag}"), median(loop_faults));
    result(&format!("register_many_minor_faults_{entries}_in_{allocations}{tag}"), median(many_faults));
    drop(m);
    for b in bases {
        cuda.free(b);
    }
}

/// Minor page faults of this thread so far (first touches of memory: what a call that stores
/// megabytes pays when the allocator hands it fresh pages).
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given; zeroes are a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    usage.ru_minflt
}
