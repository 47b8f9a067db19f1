//! The check against the driver's floor, measured in turn, and the engine's launch latency.

use super::*;

/// A floor and a check measured in turn (see [`paired_floor_and_check`]), in microseconds.
pub(crate) struct Paired {
    /// The best pass of the floor's loop on this (the engine's) thread, with its context current.
    pub(crate) floor: f64,
    /// The best pass of the same loop on a thread with no current context, as the monitor's is.
    pub(crate) floor_no_context: f64,
    /// The best full check.
    pub(crate) check: f64,
    /// The median of the rounds' check / floor.
    pub(crate) ratio: f64,
    /// The median of the rounds' check / floor without a context.
    pub(crate) ratio_no_context: f64,
}

/// Floor passes (here, and on a thread with no current context) and full checks in turn, 21
/// rounds, so that a drift of the machine hits all three.
pub(crate) fn paired_floor_and_check(cuda: &Arc<Cuda>, m: &Monitor, pointers: &[u64]) -> Paired {
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
pub(crate) fn best_check_us(m: &Monitor) -> f64 {
    m.check_now().unwrap();
    (0..20).map(|_| m.check_now().unwrap().duration_us as f64).fold(f64::MAX, f64::min)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub(crate) fn engine_latencies(cuda: &Cuda, iterations: usize) -> Vec<f64> {
    for _ in 0..500 {
        cuda.launch_and_sync();
    }
    sorted((0..iterations).map(|_| cuda.launch_and_sync()).collect())
}
