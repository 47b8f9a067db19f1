//! The Markdown report (`VRAM_MONITOR_GPU_RESULTS`): the scenario table and lines, the
//! CHECK_FAILED attempts, process VRAM, the no-context check, the cost of a check and the raw
//! pointer attributes; and the "verdicts produced" line.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use vram_monitor::Verdict;

use crate::engine::Gpu;
use crate::results::{Row, Status, Timing};
use crate::watch::names;
use crate::{KIB, MIB, RESULTS_ENV};

pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

pub fn counts(rows: &[Row]) -> (usize, usize, usize) {
    let count = |s| rows.iter().filter(|r| r.status == s).count();
    (count(Status::Pass), count(Status::Fail), count(Status::Skip))
}

pub fn write_results(text: &str) {
    if let Some(path) = std::env::var_os(RESULTS_ENV).filter(|p| !p.is_empty()) {
        match std::fs::write(&path, text) {
            Ok(()) => println!("results written to {}", path.to_string_lossy()),
            Err(e) => eprintln!("could not write {}: {e}", path.to_string_lossy()),
        }
    }
}
/// "GPU 0: <name>, GPU 1: <name> (N GPUs; the engine uses GPU 0)".
pub fn gpu_list(gpu: &Gpu) -> String {
    let names: Vec<String> = gpu
        .device_names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("GPU {i}: {n}"))
        .collect();
    format!("{} ({} in all; the engine uses GPU 0)", names.join(", "), gpu.device_count)
}

/// Which of the eight verdicts the library reported from real memory in a passing
/// scenario, and for each missing one, the scenarios that aimed at it and what became of
/// them.
pub fn verdicts_produced(rows: &[Row]) -> String {
    let seen: Vec<Verdict> = Verdict::all()
        .into_iter()
        .filter(|v| rows.iter().any(|r| r.status == Status::Pass && r.shows.contains(v)))
        .collect();
    let mut text = format!(
        "produced by real allocations: {} of {} ({})",
        seen.len(),
        Verdict::all().len(),
        names(&seen)
    );
    let missing: Vec<String> = Verdict::all()
        .into_iter()
        .filter(|v| !seen.contains(v))
        .map(|v| {
            let aimed: Vec<String> = rows
                .iter()
                .filter(|r| r.expected.contains(v.name()))
                .map(|r| format!("{} {}", r.name, r.status.word()))
                .collect();
            if aimed.is_empty() {
                format!("{v} (no scenario)")
            } else {
                format!("{v} ({})", aimed.join(", "))
            }
        })
        .collect();
    if !missing.is_empty() {
        let _ = write!(text, "; not produced: {}", missing.join("; "));
    }
    text
}

pub fn report(
    gpu: &Gpu,
    nvml_driver: &str,
    rows: &[Row],
    timing: &Result<Timing, String>,
    verdicts: &str,
    summary: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# vram-monitor GPU scenarios\n");
    let _ = writeln!(md, "- Date (UTC): {}", utc_now());
    let _ = writeln!(md, "- GPUs (cuDeviceGetName): {}", gpu_list(gpu));
    let _ = writeln!(
        md,
        "- Driver: cuDriverGetVersion {}; NVML sys_driver_version {}",
        gpu.driver_version, nvml_driver
    );
    let _ = writeln!(
        md,
        "- vram-monitor {}; VMM chunk {} KiB; host-located VMM: {}",
        vram_monitor::VERSION,
        gpu.chunk / KIB,
        match &gpu.host_vmm {
            Ok(()) => "supported".to_string(),
            Err(e) => format!("unsupported ({e})"),
        }
    );
    let _ = writeln!(md, "- Verdicts {verdicts}");
    let _ = writeln!(md, "- **Result: {summary}**\n");

    let _ = writeln!(md, "## Scenarios\n");
    let _ = writeln!(
        md,
        "| scenario | allocation | expected | registration | check_now | periodic thread | callback | result |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(r.name),
            cell(&r.allocation),
            cell(&r.expected),
            cell(&r.registration),
            cell(&r.check_now),
            cell(&r.periodic),
            cell(&r.callback),
            r.status.word()
        );
    }
    let _ = writeln!(md, "\nPeriodic thread: a second monitor with a 50 ms interval, paused (interval 1 h) while the memory is changed and resumed after; the time is from resuming to its callback.\n");
    let _ = writeln!(md, "### Lines and notes\n\n```text");
    for r in rows {
        let _ = writeln!(md, "{}", r.line());
    }
    let _ = writeln!(md, "VERDICTS {verdicts}\n{summary}\n```\n");

    let _ = writeln!(md, "## CHECK_FAILED from the real driver\n");
    let attempts = gpu.check_failed.borrow();
    if attempts.is_empty() {
        let _ = writeln!(md, "Not attempted (see the scenario `check-failed-real-driver`).\n");
    } else {
        let _ = writeln!(md, "Each attempt ran in a child process of its own: GPU 0's context current, `cuMemAlloc_v2` 2 MiB registered in two monitors (one driven by `check_now`, one periodic at 50 ms, paused during the change) and found RESIDENT; then the driver was broken as described; then `cuPointerGetAttributes` with the library's 8 attributes was called on the buffer from the thread that broke it and from a new thread with no context (as the monitor's thread is), then `check_now`, then the periodic thread resumed. CHECK_FAILED counts as produced only when both monitors reported it (a `check_failed` event and an unhealthy snapshot whose last check failed; during exit, after the library's exit hook, the snapshot and the summary with no callback, as the exit contract says).\n");
        let _ = writeln!(md, "| attempt | what was done | the driver's answers to it | cuPointerGetAttributes on the buffer afterwards | library `pointer_info` | check_now | periodic thread | outcome |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for a in attempts.iter() {
            let outcome = if a.detail.is_empty() {
                a.outcome.words().to_string()
            } else {
                format!("{} ({})", a.outcome.words(), a.detail)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | **{}** |",
                cell(a.name),
                cell(a.what),
                cell(&a.trigger),
                cell(&a.query),
                cell(&a.library),
                cell(&a.check_now),
                cell(&a.periodic),
                cell(&outcome)
            );
        }
        let _ = writeln!(md);
    }
    drop(attempts);

    let _ = writeln!(md, "## Process VRAM (health snapshot)\n");
    match &*gpu.process_vram.borrow() {
        Some(p) => {
            let _ = writeln!(
                md,
                "- `health().process_vram`: {} bytes ({} MiB), source **{}**",
                p.monitor_bytes,
                p.monitor_bytes / MIB as u64,
                p.monitor_source
            );
            let _ = writeln!(
                md,
                "- NVML read by the test at the same time: {}",
                match p.nvml_bytes {
                    Some(Some(b)) => format!("{b} bytes ({} MiB)", b / MIB as u64),
                    Some(None) => "this process not listed".into(),
                    None => "NVML unavailable".into(),
                }
            );
        }
        None => {
            let _ = writeln!(md, "- not measured (see the scenario `process-vram-from-nvml`)");
        }
    }

    let _ = writeln!(md, "\n## No context created by the library\n");
    {
        let nc = gpu.no_context.borrow();
        let show = |v: &Option<Option<u64>>| match v {
            Some(Some(b)) => format!("{b} bytes ({} MiB)", b / MIB as u64),
            Some(None) => "not listed".into(),
            None => "not read".into(),
        };
        let _ = writeln!(
            md,
            "In this process (engine context current, 64 MiB allocated), NVML's figure for this pid:\n"
        );
        let _ = writeln!(
            md,
            "- before `Monitor::new` + `register` + `check_now`: {}",
            show(&nc.before)
        );
        let _ = writeln!(md, "- after: {}", show(&nc.after));
        let _ = writeln!(
            md,
            "- the monitor's own health snapshot then: {}",
            nc.health_source.as_deref().unwrap_or("—")
        );
        let _ = writeln!(md, "\nIn a child process that never creates a context (the library alone, 300 ms of 50 ms sweeps):\n\n```text\n{}\n```", nc.child.as_deref().unwrap_or("(no result)"));
    }

    let _ = writeln!(md, "\n## Cost of a check (measurement)\n");
    match timing {
        Ok(t) => {
            let _ = writeln!(
                md,
                "{} live 4 KiB `cuMemAlloc_v2` allocations, each registered; {} `check_now` passes.\n",
                t.registrations, t.passes
            );
            let _ = writeln!(md, "| measure | value |\n|---|---|");
            let _ = writeln!(
                md,
                "| full check, best (`CheckSummary.duration_us`) | {} us |",
                t.check_min_us
            );
            let _ = writeln!(md, "| full check, median | {} us |", t.check_median_us);
            let _ = writeln!(
                md,
                "| **per registration** (best / {}) | **{:.3} us** |",
                t.registrations,
                t.check_min_us as f64 / t.registrations as f64
            );
            let _ = writeln!(
                md,
                "| per registration, less the empty monitor's check | {:.3} us |",
                t.check_min_us.saturating_sub(t.empty_min_us) as f64 / t.registrations as f64
            );
            let _ = writeln!(
                md,
                "| check of an empty monitor (NVML read and bookkeeping) | {} us |",
                t.empty_min_us
            );
            let _ = writeln!(
                md,
                "| one NVML process read (`process_vram::nvml_process_bytes`) | {} us |",
                t.nvml_min_us
            );
            let _ = writeln!(
                md,
                "| `check_now` round trip, best (wall clock) | {} us |",
                t.wall_min_us
            );
            let _ = writeln!(md, "| `register`, each | {:.2} us |", t.register_us_each);
            let _ = writeln!(
                md,
                "| resident in the last pass | {} of {} |",
                t.resident, t.registrations
            );
        }
        Err(e) => {
            let _ = writeln!(md, "Not measured: {e}");
        }
    }

    let _ = writeln!(md, "\n## Raw pointer attributes\n");
    let _ = writeln!(md, "Through the library (`CudaDriver::get()?.pointer_info(addr)`, the `Driver` trait), then asked directly: the result of `cuPointerGetAttributes` with the library's 8 attributes, and `cuPointerGetAttribute` for MAPPING_SIZE (18) and MAPPING_BASE_ADDR (19) alone (result code: value). MEMORY_TYPE 0 = unregistered, 1 = host, 2 = device.\n");
    let _ = writeln!(md, "| allocation | address | MEMORY_TYPE | IS_MANAGED | ordinal | BUFFER_ID | RANGE_START | RANGE_SIZE | MAPPING_BASE | MAPPING_SIZE | 8 attributes | MAPPING_SIZE alone | MAPPING_BASE alone |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in gpu.probes.borrow().iter() {
        let lib = match &p.library {
            Ok(i) => format!(
                "{:?} | {} | {} | {} | {:#x} | {} | {:#x} | {}",
                i.memory_type,
                i.is_managed,
                i.device_ordinal,
                i.buffer_id,
                i.range_start,
                i.range_size,
                i.mapping_base,
                i.mapping_size
            ),
            Err(e) => format!("error: {} | | | | | | |", cell(e)),
        };
        let _ = writeln!(
            md,
            "| {} | {:#x} | {} | {} | {}: {} | {}: {:#x} |",
            cell(&p.what),
            p.address,
            lib,
            gpu.cuda.error_name(p.direct_all),
            gpu.cuda.error_name(p.mapping_size.0),
            p.mapping_size.1,
            gpu.cuda.error_name(p.mapping_base.0),
            p.mapping_base.1
        );
    }
    md
}
