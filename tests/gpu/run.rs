//! Running the scenarios: the engine's start-up, each scenario in turn (a panic is a failure
//! of that scenario), the timing, the summary and the report, under a watchdog that ends the
//! program with a report if one scenario hangs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cuda_engine::{Context, Cuda};

use crate::engine::engine_start;
use crate::report::{counts, gpu_list, panic_text, report, utc_now, verdicts_produced, write_results};
use crate::results::Row;
use crate::scenarios::SCENARIOS;
use crate::timing::measure;
use crate::{KIB, SCENARIO_LIMIT};

/// What the watchdog needs: the lines printed so far and the scenario running now.
pub struct Progress {
    pub lines: Vec<String>,
    pub current: Option<(&'static str, Instant)>,
    pub header: String,
}

pub static PROGRESS: Mutex<Progress> = Mutex::new(Progress {
    lines: Vec::new(),
    current: None,
    header: String::new(),
});

pub fn progress() -> std::sync::MutexGuard<'static, Progress> {
    PROGRESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends the program if one scenario hangs (a deadlock in the library, a driver call that
/// never returns), with a report of what ran, instead of being killed with nothing written.
pub fn start_watchdog() {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_secs(1));
        let p = progress();
        if let Some((name, since)) = p.current {
            if since.elapsed() > SCENARIO_LIMIT {
                let line = format!(
                    "FAIL {name}: did not finish within {} s (hung); giving up",
                    SCENARIO_LIMIT.as_secs()
                );
                println!("{line}");
                println!("the scenarios after {name} did not run");
                let mut md = p.header.clone();
                let _ = writeln!(
                    md,
                    "- **Aborted: `{name}` hung for more than {} s**\n",
                    SCENARIO_LIMIT.as_secs()
                );
                let _ = writeln!(md, "```text\n{}\n{line}\n```", p.lines.join("\n"));
                write_results(&md);
                let _ = std::io::stdout().flush();
                std::process::exit(1);
            }
        }
    });
}

pub fn run_gpu(cuda: &'static Cuda) -> i32 {
    let (gpu, context) = match engine_start(cuda) {
        Ok(v) => v,
        Err(e) => {
            println!("FAIL engine start-up: {e}");
            println!("0 passed, 1 failed, 0 skipped");
            write_results(&format!(
                "# vram-monitor GPU scenarios\n\n- Date (UTC): {}\n- **FAIL** engine start-up: {e}\n",
                utc_now()
            ));
            return 1;
        }
    };
    let nvml_driver = gpu
        .nvml
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|n| n.sys_driver_version().map_err(|e| e.to_string()))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    println!(
        "gpu scenarios on {} (GPU 0 of {}; cuDriverGetVersion {}, NVML driver {}, VMM chunk {} KiB)",
        gpu.name,
        gpu.device_count,
        gpu.driver_version,
        nvml_driver,
        gpu.chunk / KIB
    );

    progress().header = format!(
        "# vram-monitor GPU scenarios\n\n- Date (UTC): {}\n- GPUs (cuDeviceGetName): {}\n- Driver: cuDriverGetVersion {}; NVML {}\n",
        utc_now(),
        gpu_list(&gpu),
        gpu.driver_version,
        nvml_driver
    );
    start_watchdog();
    let mut rows = Vec::new();
    for &(name, allocation, expected, scenario) in SCENARIOS {
        progress().current = Some((name, Instant::now()));
        let mut row = Row::new(name, allocation, expected);
        match catch_unwind(AssertUnwindSafe(|| scenario(&gpu, &mut row))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => row.fail(format!("setup failed: {e}")),
            Err(p) => row.fail(format!("panicked: {}", panic_text(&*p))),
        }
        println!("{}", row.line());
        let _ = std::io::stdout().flush();
        {
            let mut p = progress();
            p.lines.push(row.line());
            p.current = None;
        }
        rows.push(row);
    }

    progress().current = Some(("timing (1000 registrations)", Instant::now()));
    let timing = catch_unwind(AssertUnwindSafe(|| measure(&gpu)))
        .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&*p))));
    match &timing {
        Ok(t) => println!(
            "TIME full check of {} registrations: {:.3} us/registration (best {} us, median {} us of {}; empty monitor {} us; NVML read {} us); register {:.2} us each",
            t.registrations,
            t.check_min_us as f64 / t.registrations as f64,
            t.check_min_us,
            t.check_median_us,
            t.passes,
            t.empty_min_us,
            t.nvml_min_us,
            t.register_us_each
        ),
        Err(e) => println!("TIME not measured: {e}"),
    }

    progress().current = None;
    let verdicts = verdicts_produced(&rows);
    println!("VERDICTS {verdicts}");
    let (passed, failed, skipped) = counts(&rows);
    let summary = format!("{passed} passed, {failed} failed, {skipped} skipped");
    println!("{summary}");
    write_results(&report(&gpu, &nvml_driver, &rows, &timing, &verdicts, &summary));
    // The engine shuts down: every monitor is gone, so is the memory.
    let _ = gpu.cuda.set_current(Context::NULL);
    drop(context);
    i32::from(failed > 0)
}
