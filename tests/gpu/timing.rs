//! The cost of a check (a measurement, not an assertion): full checks of 1,000 registrations,
//! an empty monitor's check and one NVML read.

use std::time::Instant;

use crate::engine::Gpu;
use crate::results::Timing;
use crate::watch::monitor;
use crate::{KIB, NEVER};

/// Times full checks of ~1000 registrations (a measurement, not an assertion).
pub fn measure(g: &Gpu) -> Result<Timing, String> {
    const N: usize = 1000;
    const PASSES: usize = 7;
    let mut memory = Vec::with_capacity(N);
    for _ in 0..N {
        memory.push(g.alloc(4 * KIB)?);
    }
    let (m, _events) = monitor(NEVER)?;
    let started = Instant::now();
    for (i, mem) in memory.iter().enumerate() {
        m.register(mem.ptr(), (4 * KIB) as u64, &format!("tensor.{i}"))
            .map_err(|e| format!("registering #{i}: {e}"))?;
    }
    let register_us_each = started.elapsed().as_secs_f64() * 1e6 / N as f64;
    let (mut durations, mut walls) = (Vec::new(), Vec::new());
    let mut resident = 0;
    for _ in 0..PASSES {
        let t = Instant::now();
        let s = m.check_now().map_err(|e| format!("check_now: {e}"))?;
        walls.push(t.elapsed().as_micros() as u64);
        durations.push(s.duration_us);
        resident = s.resident;
    }
    let (empty, _) = monitor(NEVER)?;
    let mut empty_durations = Vec::new();
    for _ in 0..PASSES {
        empty_durations.push(empty.check_now().map_err(|e| format!("check_now: {e}"))?.duration_us);
    }
    let mut nvml = Vec::new();
    for _ in 0..PASSES {
        let t = Instant::now();
        let _ = vram_monitor::process_vram::nvml_process_bytes();
        nvml.push(t.elapsed().as_micros() as u64);
    }
    durations.sort_unstable();
    Ok(Timing {
        registrations: N,
        register_us_each,
        check_min_us: durations[0],
        check_median_us: durations[PASSES / 2],
        wall_min_us: walls.iter().copied().min().unwrap_or(0),
        empty_min_us: empty_durations.iter().copied().min().unwrap_or(0),
        nvml_min_us: nvml.iter().copied().min().unwrap_or(0),
        resident,
        passes: PASSES,
    })
}
