//! GPU scenarios: the library against the real CUDA driver on a real GPU.
//!
//! A plain program (`harness = false`). It plays the inference engine: it retains device 0's
//! primary context (the engine may; the library must not), allocates every kind of memory
//! with the driver API, registers it with `vram_monitor::Monitor`, changes it underneath
//! (free, reallocate, unmap, remap from host memory, remap from another GPU's memory) and
//! checks what `check_now`, the periodic thread and the callback report. One line per scenario:
//!
//! ```text
//! PASS|FAIL|SKIP <name>: expected X, saw Y
//! VERDICTS produced by real allocations: K of 8 (...); not produced: ...
//! N passed, M failed, K skipped
//! ```
//!
//! The aim is all eight verdicts from real memory on a real driver:
//! - WRONG_DEVICE needs a second GPU: a VMM address first backed by GPU 0's memory, then by
//!   GPU 1's (`wrong-device-*`). With one GPU these scenarios are skipped ("needs 2 GPUs"),
//!   never passed. The engine is always GPU 0.
//! - CHECK_FAILED needs the driver's own pointer query to fail. `check-failed-real-driver`
//!   tries, each in a child process (this program again, `VRAM_MONITOR_GPU_CHILD=
//!   check-failed:<attempt>`): a sticky context error (a kernel storing to address 0; a kernel
//!   executing `trap`), a reset of the primary context that owns the buffer, the destruction
//!   of a context of its own that owns it, and the process exiting (checks from an atexit
//!   handler that runs after the driver's). It passes when one of them makes the driver fail
//!   the query and both `check_now` and the periodic thread report CHECK_FAILED; it fails if
//!   the driver failed the query and the monitor did not say so, or if none produced it and
//!   an attempt could not run; when the driver answers after every attempt it is skipped as
//!   "not producible on this driver", with what the driver returned for each.
//!
//! Exit status 1 if any scenario failed. Without a CUDA driver or GPU it prints
//! `gpu scenarios: skipped (no CUDA driver / GPU): <reason>` and exits 0, never claiming a
//! pass; with `VRAM_MONITOR_GPU_REQUIRED=1` that skip is a failure (exit 1), so a GPU run that
//! silently finds no GPU cannot look green. `VRAM_MONITOR_GPU_RESULTS=<file>` also writes a
//! Markdown report (scenario table, the CHECK_FAILED attempts, process VRAM, the no-context
//! check, check cost, and the raw pointer attributes the driver reported for each kind of
//! allocation).
//!
//!
//! Driver calls go through the `cuda-engine` crate (crates/cuda-engine), the engine side of
//! CUDA shared with the doctor and the benchmark: the library cudarc's dynamic loader found,
//! every function looked up once with an integer return type, as `src/adapters/cuda/mod.rs` does; the
//! functions the scenarios need are required up front ([`engine::load_cuda`]), so a missing
//! symbol is a clean skip rather than cudarc's panic, and a `CUresult` the 12.8 bindings do not
//! know (the GPU machine runs a 13.0 driver) is a number rather than undefined behaviour.
//!
//! The parts: [`engine`] (the GPU, its context and what the report keeps about it),
//! [`watch`] (monitors, callbacks, and the two ways a change is seen), [`scenarios`] (the
//! table and one module a kind of scenario: device memory, host and managed memory, pools,
//! VMM, a second GPU, no context, process VRAM, CHECK_FAILED), [`timing`] (the cost of a
//! check), [`run`] (running them under a watchdog) and [`report`] (the Markdown report).

mod engine;
mod report;
mod results;
mod run;
mod scenarios;
mod timing;
mod watch;

use std::io::Write as _;
use std::time::Duration;

use cuda_engine::Cuda;

use crate::report::{utc_now, write_results};
use crate::scenarios::SCENARIOS;

/// Names the Markdown report to write.
const RESULTS_ENV: &str = "VRAM_MONITOR_GPU_RESULTS";
/// "1": finding no GPU is a failure, not a skip.
const REQUIRED_ENV: &str = "VRAM_MONITOR_GPU_REQUIRED";
/// Set when this program re-executes itself for the no-context child check.
const CHILD_ENV: &str = "VRAM_MONITOR_GPU_CHILD";

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Interval of the monitor that only `check_now` drives: never due during a scenario.
const NEVER: Duration = Duration::from_secs(3600);
/// Interval of the periodic monitor.
const PERIODIC: Duration = Duration::from_millis(50);
/// How long to wait for the periodic thread's callback.
const PERIODIC_WAIT: Duration = Duration::from_secs(3);
/// A scenario that runs longer than this is taken as hung: the program reports and exits.
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);

fn skip(reason: &str) -> i32 {
    let required = std::env::var(REQUIRED_ENV).is_ok_and(|v| v == "1");
    println!("gpu scenarios: skipped (no CUDA driver / GPU): {reason}");
    println!("0 passed, 0 failed, {} skipped", SCENARIOS.len());
    let mut md = format!(
        "# vram-monitor GPU scenarios\n\n- Date (UTC): {}\n- **Skipped: no CUDA driver / GPU**: {reason}\n",
        utc_now()
    );
    if required {
        println!("FAIL: {REQUIRED_ENV}=1, so finding no GPU is a failure");
        md.push_str(&format!("- {REQUIRED_ENV}=1: this skip counts as a **failure**\n"));
    }
    write_results(&md);
    i32::from(required)
}

/// Loads the driver and finds a device, calling nothing that creates a context.
fn detect() -> Result<&'static Cuda, String> {
    let cuda = engine::load_cuda()?;
    cuda.init()?;
    if cuda.device_count()? < 1 {
        return Err("cuDeviceGetCount found no device".into());
    }
    Ok(cuda)
}

fn main() {
    // `cargo test -- --list` and friends: this program has no libtest interface.
    if std::env::args().skip(1).any(|a| a == "--list") {
        return;
    }
    if let Ok(which) = std::env::var(CHILD_ENV) {
        std::process::exit(match which.as_str() {
            "no-context" => scenarios::no_context::child(),
            other if other.starts_with("check-failed:") => scenarios::check_failed::child::run(&other["check-failed:".len()..]),
            other => {
                eprintln!("unknown {CHILD_ENV}={other}");
                2
            }
        });
    }
    let code = match detect() {
        Err(reason) => skip(&reason),
        Ok(cuda) => run::run_gpu(cuda),
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
