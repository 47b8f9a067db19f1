//! The Rust API with cudarc buffers on a real GPU (cargo feature `cudarc`): `CudaSlice`,
//! `CudaView`, `CudaViewMut` and `UnifiedSlice` registered without raw pointers, the
//! `Registration` guard (owned and borrowed), and a freed slice caught by a check.
//!
//! A plain program (`harness = false`). One line per scenario, `PASS|FAIL <name>: ...`, then
//! `N passed, M failed`. Without a GPU (no driver, the fake driver, no device) it prints
//! `cudarc gpu: skipped (...)` and exits 0, claiming no pass; with `VRAM_MONITOR_GPU_REQUIRED=1`
//! that skip is a failure (exit 1). `VRAM_MONITOR_CUDARC_RESULTS=<file>` also writes a Markdown
//! section. Run on the GPU machine by scripts/gpu-suites/15-rust-cudarc.sh.

use std::ffi::{c_int, c_void};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cudarc::driver::{CudaContext, DevicePtr};
use vram_monitor::{Error, Event, EventKind, Monitor, MonitorOptions, Registration, RegistrationId, Verdict};

const MIB: usize = 1 << 20;

struct Results {
    lines: Vec<(bool, String, String)>,
}

impl Results {
    fn record(&mut self, name: &str, outcome: Result<String, String>) {
        let (ok, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        println!("{} {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        self.lines.push((ok, name.to_string(), detail));
    }
}

fn skip(why: &str) -> ! {
    println!("cudarc gpu: skipped ({why})");
    if std::env::var("VRAM_MONITOR_GPU_REQUIRED").as_deref() == Ok("1") {
        eprintln!("VRAM_MONITOR_GPU_REQUIRED=1: a skip is a failure here");
        std::process::exit(1);
    }
    std::process::exit(0);
}

fn verdict_of(monitor: &Monitor, id: RegistrationId) -> Option<Verdict> {
    monitor.registrations().into_iter().find(|r| r.id == id).map(|r| r.verdict())
}

fn expect(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn main() {
    // Ask before cudarc's safe API, which panics when the library or a symbol is missing.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        skip("no CUDA driver library");
    }
    let lib = std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::culib() })
        .unwrap_or_else(|_| skip("the CUDA driver library could not be loaded"));
    if unsafe { lib.get::<unsafe extern "C" fn()>(b"fake_cuda_alloc") }.is_ok() {
        skip("the loaded libcuda is the test suite's fake driver, which has no cudarc context support");
    }
    let ctx = match std::panic::catch_unwind(|| CudaContext::new(0)) {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => skip(&format!("CudaContext::new(0) failed: {e:?}")),
        Err(_) => skip("CudaContext::new(0) panicked (driver symbols missing?)"),
    };
    let stream = ctx.default_stream();
    let monitor = Arc::new(
        Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), ..MonitorOptions::default() })
            .unwrap_or_else(|e| {
                println!("FAIL monitor: {e}");
                std::process::exit(1)
            }),
    );
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    {
        let events = Arc::clone(&events);
        monitor.set_callback(Some(Arc::new(move |e: &Event| events.lock().unwrap().push(e.clone()))));
    }
    let mut results = Results { lines: Vec::new() };

    // A CudaSlice: registered by reference, resident after a check.
    let weights = stream.alloc_zeros::<f32>(MIB).expect("alloc_zeros");
    let (base, _sync) = weights.device_ptr(&stream);
    drop(_sync);
    results.record(
        "CudaSlice<f32> registers RESIDENT",
        (|| {
            let id = monitor.register_cuda(&weights, "weights").map_err(|e| format!("register_cuda: {e}"))?;
            monitor.check_now().map_err(|e| e.to_string())?;
            let info = monitor.registrations().into_iter().find(|r| r.id == id).ok_or("not registered")?;
            expect(info.ptr == base && info.size == 4 * MIB as u64, format!("range {:#x}+{}", info.ptr, info.size))?;
            expect(info.verdict() == Verdict::Resident, format!("verdict {}", info.verdict()))?;
            monitor.unregister(id).map_err(|e| e.to_string())?;
            Ok(format!("{:#x} + {} bytes, RESIDENT after check_now", info.ptr, info.size))
        })(),
    );

    // A CudaView: the part of the slice it covers.
    results.record(
        "CudaView registers its own sub-range",
        (|| {
            let view = weights.slice(1024..2048);
            let id = monitor.register_cuda(&view, "weights[1024..2048]").map_err(|e| e.to_string())?;
            let info = monitor.registrations().into_iter().find(|r| r.id == id).ok_or("not registered")?;
            monitor.unregister(id).map_err(|e| e.to_string())?;
            expect(info.ptr == base + 4096 && info.size == 4096, format!("range {:#x}+{}", info.ptr, info.size))?;
            Ok(format!("{:#x} + {} bytes (base + 4096)", info.ptr, info.size))
        })(),
    );

    // A CudaViewMut and the owned guard.
    let mut scratch = stream.alloc_zeros::<u8>(2 * MIB).expect("alloc_zeros");
    results.record(
        "CudaViewMut and Registration::new_cuda (Arc) unregister on drop",
        (|| {
            let before = monitor.health().registrations;
            let view = scratch.slice_mut(0..MIB);
            let guard = Registration::new_cuda(Arc::clone(&monitor), &view, "scratch[..1MiB]").map_err(|e| e.to_string())?;
            expect(monitor.health().registrations == before + 1, "guard registered")?;
            drop(guard);
            expect(monitor.health().registrations == before, "drop unregistered")?;
            let borrowed = monitor.register_cuda_guard(&scratch, "scratch").map_err(|e| e.to_string())?;
            expect(verdict_of(&monitor, borrowed.id()) == Some(Verdict::Resident), "borrowed guard registered")?;
            drop(borrowed);
            expect(monitor.health().registrations == before, "borrowed guard unregistered")?;
            Ok("registered and unregistered by the guards".into())
        })(),
    );

    // Unified memory through cudarc: refused MANAGED.
    results.record(
        "UnifiedSlice (cudarc managed memory) is refused MANAGED",
        (|| {
            // SAFETY: the memory is only registered, never read uninitialised.
            let unified = unsafe { ctx.alloc_unified::<f32>(MIB, true) }.map_err(|e| format!("alloc_unified: {e:?}"))?;
            match monitor.register_cuda(&unified, "unified") {
                Err(Error::Refused(Verdict::Managed)) => Ok("refused MANAGED".into()),
                other => Err(format!("expected refused MANAGED, got {other:?}")),
            }
        })(),
    );

    // A slice dropped while registered: caught by the next check.
    results.record(
        "a CudaSlice dropped while registered is caught",
        (|| {
            let doomed = stream.alloc_zeros::<u8>(8 * MIB).map_err(|e| format!("{e:?}"))?;
            let id = monitor.register_cuda(&doomed, "doomed").map_err(|e| e.to_string())?;
            drop(doomed);
            stream.synchronize().map_err(|e| format!("{e:?}"))?;
            let trimmed = trim_default_pool(lib);
            monitor.check_now().map_err(|e| e.to_string())?;
            let verdict = verdict_of(&monitor, id);
            let event = events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.kind == EventKind::Violation && e.registration_id == id);
            monitor.unregister(id).map_err(|e| e.to_string())?;
            match verdict {
                Some(v @ (Verdict::NotMapped | Verdict::Replaced)) if event => {
                    Ok(format!("{} after the free ({trimmed}); the callback got the violation", v.name()))
                }
                other => Err(format!("verdict {other:?}, callback event {event} ({trimmed})")),
            }
        })(),
    );
    drop(scratch);
    drop(weights);

    let passed = results.lines.iter().filter(|l| l.0).count();
    let failed = results.lines.len() - passed;
    println!("{passed} passed, {failed} failed");
    if let Ok(path) = std::env::var("VRAM_MONITOR_CUDARC_RESULTS") {
        let mut md = String::from("## Rust API with cudarc buffers (tests/cudarc_gpu.rs)\n\n| scenario | result | detail |\n|---|---|---|\n");
        for (ok, name, detail) in &results.lines {
            let _ = writeln!(md, "| {name} | {} | {} |", if *ok { "PASS" } else { "**FAIL**" }, detail.replace('|', "/"));
        }
        let _ = writeln!(md, "\n{passed} passed, {failed} failed");
        if let Err(e) = std::fs::write(&path, md) {
            eprintln!("writing {path}: {e}");
        }
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Returns the freed block of the device's default memory pool to the driver (cudarc frees
/// with cuMemFreeAsync into that pool, which may keep it). Says what it did.
fn trim_default_pool(lib: &libloading::Library) -> String {
    type GetMemPool = unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int;
    type TrimTo = unsafe extern "C" fn(*mut c_void, usize) -> c_int;
    // SAFETY: cuda.h signatures with CUresult read as int; out-pointer to a local.
    unsafe {
        let (Ok(get), Ok(trim)) = (lib.get::<GetMemPool>(b"cuDeviceGetMemPool"), lib.get::<TrimTo>(b"cuMemPoolTrimTo")) else {
            return "no memory pool API".into();
        };
        let mut pool = std::ptr::null_mut();
        match get(&mut pool, 0) {
            0 => match trim(pool, 0) {
                0 => "pool trimmed to 0".into(),
                code => format!("cuMemPoolTrimTo failed with {code}"),
            },
            code => format!("cuDeviceGetMemPool failed with {code}"),
        }
    }
}
