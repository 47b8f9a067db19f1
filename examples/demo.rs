//! The demo: an "engine" loads weights into VRAM, registers them, and watches the monitor
//! catch each way weights leave VRAM.
//!
//! On a machine with an NVIDIA GPU it allocates real memory through the CUDA driver. Without
//! one, `scripts/demo.sh` runs it against the fake libcuda the tests use, and says so.

use std::sync::Arc;
use std::time::Duration;

use vram_monitor::{Event, EventKind, Monitor, MonitorOptions, ReportFormat};

const MIB: usize = 1 << 20;

/// Where the demo gets its memory: the real driver, or the test driver's control functions.
enum Memory {
    Gpu,
    Fake(libloading::Library),
}

#[derive(Clone, Copy)]
enum Kind {
    Device = 1,
    Managed = 2,
    Host = 3,
}

impl Memory {
    fn detect() -> Memory {
        // The monitor has loaded libcuda already; opening it again returns the same library.
        match unsafe { libloading::Library::new("libcuda.so.1") } {
            Ok(lib) if unsafe { lib.get::<unsafe extern "C" fn()>("fake_cuda_alloc") }.is_ok() => Memory::Fake(lib),
            _ => {
                use cudarc::driver::sys::*;
                // The demo plays the engine: it, not the library, creates the context.
                unsafe {
                    let mut context = std::ptr::null_mut();
                    assert_eq!(cuDevicePrimaryCtxRetain(&mut context, 0), CUresult::CUDA_SUCCESS, "no GPU 0");
                    cuCtxSetCurrent(context);
                }
                Memory::Gpu
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Memory::Gpu => "the real CUDA driver (GPU 0)",
            Memory::Fake(_) => "the fake CUDA driver used by the tests (no GPU found)",
        }
    }

    fn alloc(&self, kind: Kind, size: usize) -> u64 {
        match self {
            Memory::Fake(lib) => unsafe {
                let f = lib.get::<unsafe extern "C" fn(i32, usize, i32) -> u64>("fake_cuda_alloc").unwrap();
                f(kind as i32, size, 0)
            },
            Memory::Gpu => unsafe {
                use cudarc::driver::sys::*;
                let mut ptr: CUdeviceptr = 0;
                match kind {
                    Kind::Device => {
                        cuMemAlloc_v2(&mut ptr, size);
                    }
                    Kind::Managed => {
                        cuMemAllocManaged(&mut ptr, size, 1);
                    }
                    Kind::Host => {
                        let mut host = std::ptr::null_mut();
                        cuMemAllocHost_v2(&mut host, size);
                        ptr = host as u64;
                    }
                }
                ptr
            },
        }
    }

    fn free(&self, ptr: u64) {
        match self {
            Memory::Fake(lib) => unsafe {
                lib.get::<unsafe extern "C" fn(u64) -> i32>("fake_cuda_free").unwrap()(ptr);
            },
            Memory::Gpu => unsafe {
                cudarc::driver::sys::cuMemFree_v2(ptr);
            },
        }
    }
}

fn main() {
    env_logger_free_setup();
    let monitor = match Monitor::new(MonitorOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vram-monitor could not start: {e}");
            std::process::exit(2);
        }
    };
    let memory = Memory::detect();
    println!("== vram-monitor {} demo, on {}", vram_monitor::VERSION, memory.name());

    let (events_tx, events) = crossbeam_channel::unbounded::<Event>();
    monitor.set_callback(Some(Arc::new(move |event: &Event| {
        println!("   callback [{}] {}", event.kind.name(), event.message);
        let _ = events_tx.send(event.clone());
    })));

    println!("\n1. The engine loads three weight tensors into VRAM and registers them.");
    let layers: Vec<u64> = (0..3).map(|_| memory.alloc(Kind::Device, 64 * MIB)).collect();
    for (i, &ptr) in layers.iter().enumerate() {
        let id = monitor.register(ptr, 64 * MIB as u64, &format!("layers.{i}.weight")).expect("device memory registers");
        println!("   registered layers.{i}.weight at {ptr:#x} as #{id}");
    }

    println!("\n2. Memory that is not VRAM is refused at load time.");
    let managed = memory.alloc(Kind::Managed, 64 * MIB);
    let pinned = memory.alloc(Kind::Host, 64 * MIB);
    for (what, ptr) in [("unified (managed) memory", managed), ("pinned host memory", pinned)] {
        match monitor.register(ptr, 64 * MIB as u64, what) {
            Ok(_) => println!("   {what}: accepted (unexpected!)"),
            Err(e) => println!("   {what}: {e}"),
        }
    }

    println!("\n3. The periodic check (every 100 ms here; 60 s by default) runs in the background.");
    monitor.set_interval(Duration::from_millis(100)).unwrap();
    println!("   layers.1.weight is freed behind the engine's back...");
    memory.free(layers[1]);
    match events.recv_timeout(Duration::from_secs(5)) {
        Ok(e) if e.kind == EventKind::Violation => println!("   ...and the monitor thread caught it: {}", e.verdict),
        other => println!("   ...no violation reported: {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(50));

    println!("\n4. What the engine's health endpoint would serve:");
    println!("{}", monitor.report(ReportFormat::Text));
    println!("{}", monitor.report(ReportFormat::Json));

    println!("\n5. The engine reloads the layer and replaces the registration: healthy again.");
    let bad = monitor.registrations().into_iter().find(|r| r.ptr == layers[1]).unwrap();
    monitor.unregister(bad.id).unwrap();
    let reloaded = memory.alloc(Kind::Device, 64 * MIB);
    monitor.register(reloaded, 64 * MIB as u64, "layers.1.weight").unwrap();
    let summary = monitor.check_now().unwrap();
    println!("   check_now: {} checked, {} violations, healthy = {}", summary.checked, summary.violations, summary.healthy);
    drop(monitor);
    println!("\n== done");
}

/// Sends the library's log records to stderr at warning level and above, without pulling in a
/// logging crate for the demo.
fn env_logger_free_setup() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("   log {} {}: {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    let _ = log::set_boxed_logger(Box::new(Stderr));
    log::set_max_level(log::LevelFilter::Warn);
}
