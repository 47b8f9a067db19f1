//! The child side of CHECK_FAILED (`VRAM_MONITOR_GPU_CHILD=check-failed:<attempt>`): the
//! engine's context and a registered buffer, the driver broken underneath as the attempt says,
//! then what the driver and both monitors report, as `CHILD-FIELD` lines.

use std::ffi::{c_int, CStr, CString};
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cuda_engine::{Context, Cuda, Error, PrimaryContext, Stream};
use vram_monitor::{CudaDriver, Driver, Monitor, RegistrationId, Verdict};

use crate::engine::{answer_of, code_of, load_cuda};
use crate::watch::{monitor, name_of, verdict_of, wait_until, Collector};
use crate::{MIB, NEVER, PERIODIC, PERIODIC_WAIT};

/// Two kernels for the sticky-error attempts; the `.version`/`.target` header is put in front.
pub const BAD_KERNELS_PTX: &str = "
.visible .entry vram_monitor_store_to_null()
{
\t.reg .b32 %r<2>;
\t.reg .b64 %rd<2>;
\tmov.u64 %rd1, 0;
\tmov.u32 %r1, 1;
\tst.volatile.global.u32 [%rd1], %r1;
\tret;
}

.visible .entry vram_monitor_trap()
{
\ttrap;
\tret;
}
";

/// A PTX ISA version that knows `sm_<cc>` (the JIT rejects a target newer than the ISA).
pub fn ptx_isa_for(cc: c_int) -> &'static str {
    match cc {
        100.. => "8.8",
        90.. => "7.8",
        89 => "7.8",
        86..=88 => "7.1",
        80..=85 => "7.0",
        _ => "6.0",
    }
}

extern "C" {
    fn atexit(function: extern "C" fn()) -> c_int;
    fn _exit(status: c_int) -> !;
}

/// What the child set up, kept until the checks; a static so that the atexit handler of
/// `driver-shutting-down` can reach it.
pub struct Staged {
    pub cuda: &'static Cuda,
    pub ptr: u64,
    pub a: Monitor,
    pub ea: Arc<Collector>,
    pub ida: RegistrationId,
    pub b: Monitor,
    pub eb: Arc<Collector>,
    pub idb: RegistrationId,
}

pub static STAGED: Mutex<Option<Staged>> = Mutex::new(None);

pub fn child_field(key: &str, value: impl std::fmt::Display) {
    println!("CHILD-FIELD {key} {}", value.to_string().replace('\n', " "));
}

pub fn child_step(text: &str) {
    println!("CHILD-STEP {text}");
    let _ = std::io::stdout().flush();
}

/// The child of one CHECK_FAILED attempt. Prints `CHILD-STEP`s, `CHILD-FIELD`s and, when it
/// got through, `CHILD-RESULT done`.
pub fn run(attempt: &str) -> i32 {
    match steps(attempt) {
        Ok(()) => 0,
        Err(e) => {
            child_field("error", e);
            println!("CHILD-RESULT done");
            let _ = std::io::stdout().flush();
            1
        }
    }
}

fn steps(attempt: &str) -> Result<(), String> {
    let at_exit = attempt == "driver-shutting-down";
    if at_exit {
        // Before the driver library is loaded: handlers run in the reverse order of their
        // registration, so this one runs after every one the driver registers.
        if unsafe { atexit(check_at_exit) } != 0 {
            return Err("atexit refused the handler".into());
        }
    }
    let cuda = load_cuda()?;
    cuda.init()?;
    let dev = cuda.device(0)?;
    // `context-destroyed` allocates in a context of its own; where none can be made, it runs
    // on the primary context and reports itself not triggered.
    let own = if attempt == "context-destroyed" {
        Some(create_context(cuda, dev))
    } else {
        None
    };
    if !matches!(own, Some(Ok(_))) {
        // Held until the process ends, as an engine holds it.
        std::mem::forget(PrimaryContext::retain_current(cuda, dev)?);
    }
    let ptr = cuda.mem_alloc(2 * MIB)?;
    child_step("allocated 2 MiB");

    let (a, ea) = monitor(NEVER)?;
    let (b, eb) = monitor(PERIODIC)?;
    let ida = a
        .register(ptr, (2 * MIB) as u64, "weights")
        .map_err(|e| format!("register: {e}"))?;
    let idb = b
        .register(ptr, (2 * MIB) as u64, "weights")
        .map_err(|e| format!("register (periodic monitor): {e}"))?;
    let mut before = Vec::new();
    match a.check_now() {
        Ok(s) if s.resident == 1 && s.violations == 0 && s.check_failures == 0 => {}
        Ok(s) => before.push(format!("check_now found {s:?}")),
        Err(e) => before.push(format!("check_now failed: {e}")),
    }
    if !wait_until(PERIODIC_WAIT, || b.health().checks_completed >= 1) {
        before.push("the periodic thread completed no check in 3 s".into());
    }
    if verdict_of(&b, idb) != Some(Verdict::Resident) {
        before.push(format!("the periodic thread saw {}", name_of(verdict_of(&b, idb))));
    }
    child_field("before", if before.is_empty() { "ok".to_string() } else { before.join("; ") });
    // Pause the periodic monitor; let a sweep in progress finish.
    let _ = b.set_interval(NEVER);
    std::thread::sleep(Duration::from_millis(200));
    child_step("registered; breaking the driver");

    let (trigger, triggered) = match (attempt, own) {
        ("sticky-illegal-address", _) => sticky_error(cuda, dev, c"vram_monitor_store_to_null"),
        ("sticky-trap", _) => sticky_error(cuda, dev, c"vram_monitor_trap"),
        ("primary-context-reset", _) => match cuda.has("cuDevicePrimaryCtxReset_v2") {
            true => {
                let reset = cuda.primary_context_reset(dev);
                (format!("cuDevicePrimaryCtxReset_v2: {}", answer_of(cuda, &reset)), reset.is_ok())
            }
            false => ("the driver has no cuDevicePrimaryCtxReset_v2".to_string(), false),
        },
        ("context-destroyed", Some(Err(why))) => (format!("no context of its own: {why}"), false),
        ("context-destroyed", Some(Ok((ctx, how)))) => match cuda.has("cuCtxDestroy_v2") {
            true => {
                let destroyed = cuda.destroy_context(ctx);
                (
                    format!("{how}: CUDA_SUCCESS; cuCtxDestroy_v2: {}", answer_of(cuda, &destroyed)),
                    destroyed.is_ok(),
                )
            }
            false => ("the driver has no cuCtxDestroy_v2".to_string(), false),
        },
        ("driver-shutting-down", _) => (
            "exit(0): the checks ran in an atexit handler, after the driver's own".to_string(),
            true,
        ),
        (other, _) => return Err(format!("unknown attempt {other}")),
    };
    child_field("trigger", trigger);
    child_field("triggered", if triggered { "yes" } else { "no" });
    let staged = Staged {
        cuda,
        ptr,
        a,
        ea,
        ida,
        b,
        eb,
        idb,
    };
    if at_exit {
        *STAGED.lock().unwrap_or_else(|e| e.into_inner()) = Some(staged);
        child_step("exiting");
        std::process::exit(0);
    }
    observe(&staged);
    // Done: skip the teardown of a context that may hold a sticky error (it can be slow, and
    // nothing in it is reported).
    let _ = std::io::stdout().flush();
    unsafe { _exit(0) }
}

/// The atexit handler of `driver-shutting-down`: the checks, then `_exit` (what is left of
/// exit would only tear down what the checks reported on).
pub extern "C" fn check_at_exit() {
    let staged = STAGED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(staged) = staged {
        child_step("in the atexit handler");
        if catch_unwind(AssertUnwindSafe(|| observe(&staged))).is_err() {
            child_field("error", "the checks panicked in the atexit handler");
            println!("CHILD-RESULT done");
        }
        let _ = std::io::stdout().flush();
        unsafe { _exit(0) };
    }
}

/// A context of the child's own on `dev`, current on this thread: the context and how it
/// was made.
fn create_context(cuda: &Cuda, dev: c_int) -> Result<(Context, String), String> {
    match cuda.create_context(dev) {
        Ok((ctx, how)) => Ok((ctx, how.into())),
        Err(said) if said.is_empty() => Err("the driver has neither cuCtxCreate_v2 nor cuCtxCreate_v4".into()),
        Err(said) => Err(said
            .iter()
            .map(|e| match e {
                Error::Call { call, name, .. } => format!("{call}: {name}"),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// Launches the kernel `entry` of [`BAD_KERNELS_PTX`] and synchronises: what the driver said
/// to each call, and whether the context now holds an error.
fn sticky_error(cuda: &Cuda, dev: c_int, entry: &CStr) -> (String, bool) {
    if !["cuModuleLoadData", "cuModuleGetFunction", "cuLaunchKernel"].iter().all(|f| cuda.has(f)) {
        return (
            "the driver lacks cuModuleLoadData, cuModuleGetFunction or cuLaunchKernel".into(),
            false,
        );
    }
    let cc = cuda.compute_capability(dev);
    let mut targets = vec![(ptx_isa_for(cc), format!("sm_{cc}"))];
    for fallback in [("7.0", "sm_70".to_string()), ("6.0", "sm_50".to_string())] {
        if !targets.contains(&fallback) {
            targets.push(fallback);
        }
    }
    let mut said = Vec::new();
    let mut module = None;
    for (isa, target) in &targets {
        let Ok(ptx) = CString::new(format!(".version {isa}\n.target {target}\n.address_size 64\n{BAD_KERNELS_PTX}")) else {
            continue;
        };
        let loaded = cuda.module_load_data(&ptx);
        said.push(format!(
            "cuModuleLoadData(.version {isa} .target {target}): {}",
            answer_of(cuda, &loaded)
        ));
        if let Ok(m) = loaded {
            module = Some(m);
            break;
        }
    }
    let Some(module) = module else {
        return (said.join("; "), false);
    };
    let name = entry.to_string_lossy();
    let function = cuda.module_get_function(module, entry);
    said.push(format!("cuModuleGetFunction({name}): {}", answer_of(cuda, &function)));
    let Ok(function) = function else {
        return (said.join("; "), false);
    };
    let launched = cuda.launch_one_thread(function, Stream::DEFAULT);
    said.push(format!("cuLaunchKernel: {}", answer_of(cuda, &launched)));
    let sync = cuda.synchronize();
    said.push(format!("cuCtxSynchronize: {}", answer_of(cuda, &sync)));
    let again = cuda.synchronize();
    said.push(format!("cuCtxSynchronize again: {}", answer_of(cuda, &again)));
    (said.join("; "), sync.is_err())
}

/// After the driver was broken: ask the driver directly (on this thread, and on a thread
/// with no context, like the monitor's), then `check_now` on one monitor and the resumed
/// periodic thread of the other. Prints the fields and `CHILD-RESULT done`.
pub fn observe(s: &Staged) {
    let here = code_of(&s.cuda.pointer_attributes(s.ptr));
    let (cuda, ptr) = (s.cuda, s.ptr);
    let thread = std::thread::spawn(move || code_of(&cuda.pointer_attributes(ptr)))
        .join()
        .unwrap_or(c_int::MIN);
    child_field("query_here", here);
    child_field("query_here_name", s.cuda.error_name(here));
    child_field("query_thread", thread);
    child_field("query_thread_name", s.cuda.error_name(thread));
    child_field(
        "library",
        match CudaDriver::get().map_err(|e| e.to_string()).and_then(|d| d.pointer_info(s.ptr).map_err(|e| e.to_string())) {
            Ok(i) => format!(
                "ok: {:?}, managed {}, ordinal {}, buffer id {}",
                i.memory_type, i.is_managed, i.device_ordinal, i.buffer_id
            ),
            Err(e) => format!("error: {e}"),
        },
    );
    let _ = std::io::stdout().flush();

    match s.a.check_now() {
        Ok(sum) => {
            child_field("check_failures", sum.check_failures);
            child_field(
                "check_now",
                format!(
                    "checked {}, resident {}, violations {}, check failures {}",
                    sum.checked, sum.resident, sum.violations, sum.check_failures
                ),
            );
        }
        Err(e) => child_field("check_now", format!("error: {e}")),
    }
    child_field("a_events", s.ea.about(s.ida));
    child_field("a_message", s.ea.check_failed_message(s.ida).unwrap_or_else(|| "—".into()));
    let h = s.a.health();
    child_field("a_health", format!("healthy {}, last_check_failed {}", h.healthy, h.last_check_failed));
    child_field("a_verdict", name_of(verdict_of(&s.a, s.ida)));

    let resumed = Instant::now();
    let _ = s.b.set_interval(PERIODIC);
    let heard = s.eb.wait_about(s.idb, PERIODIC_WAIT);
    child_field(
        "b_waited",
        if heard {
            format!("first event {} ms after resuming", resumed.elapsed().as_millis())
        } else {
            format!("no event within {} s", PERIODIC_WAIT.as_secs())
        },
    );
    std::thread::sleep(Duration::from_millis(120)); // two more sweeps
    child_field("b_events", s.eb.about(s.idb));
    let h = s.b.health();
    child_field("b_health", format!("healthy {}, last_check_failed {}", h.healthy, h.last_check_failed));
    child_field("b_verdict", name_of(verdict_of(&s.b, s.idb)));
    child_field("exiting", if vram_monitor::process_exit::exiting() { "yes" } else { "no" });
    println!("CHILD-RESULT done");
    let _ = std::io::stdout().flush();
}
