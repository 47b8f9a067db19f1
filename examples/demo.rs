//! The demo: an "engine" loads weights into VRAM, registers them, and watches the monitor
//! catch each way weights leave VRAM, then seals them and watches it catch a stray write
//! into weights that never left.
//!
//! On a machine with an NVIDIA GPU it allocates real memory through the CUDA driver. Without
//! one, `scripts/demo.sh` runs it against the fake libcuda the tests use, and says so.

use std::sync::Arc;
use std::time::Duration;

use vram_monitor::{Event, EventKind, IntegrityOptions, Monitor, MonitorOptions, ReportFormat};

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
            Ok(lib) if unsafe { lib.get::<unsafe extern "C" fn()>("fake_cuda_alloc") }.is_ok() => {
                Self::engine_context();
                Memory::Fake(lib)
            }
            _ => {
                Self::engine_context();
                Memory::Gpu
            }
        }
    }

    /// The demo plays the engine: it, not the library, makes GPU 0's primary context current
    /// on this thread (the context it lends to integrity in step 6).
    fn engine_context() {
        use cudarc::driver::sys::*;
        unsafe {
            let mut context = std::ptr::null_mut();
            assert_eq!(cuDevicePrimaryCtxRetain(&mut context, 0), CUresult::CUDA_SUCCESS, "no GPU 0");
            cuCtxSetCurrent(context);
        }
    }

    /// Sets `len` bytes at `ptr` to `byte`, as a kernel of the engine's would.
    fn fill(&self, ptr: u64, byte: u8, len: usize) {
        match self {
            Memory::Fake(lib) => unsafe {
                lib.get::<unsafe extern "C" fn(u64, i32, usize) -> i32>("fake_cuda_fill").unwrap()(ptr, byte as i32, len);
            },
            Memory::Gpu => unsafe {
                use cudarc::driver::sys::*;
                cuMemsetD8_v2(ptr, byte, len);
                cuCtxSynchronize();
            },
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
    let mut ids = Vec::new();
    for (i, &ptr) in layers.iter().enumerate() {
        memory.fill(ptr, 0x3c, 64 * MIB); // the weights, loaded
        let id = monitor.register(ptr, 64 * MIB as u64, &format!("layers.{i}.weight")).expect("device memory registers");
        println!("   registered layers.{i}.weight at {ptr:#x} as #{id}");
        ids.push(id);
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

    println!("\n6. What the memory holds: the engine lends its context and seals two layers.");
    while events.try_recv().is_ok() {}
    match monitor.enable_integrity(0, IntegrityOptions::default()) {
        Ok(()) => {
            for (i, id) in [(0, ids[0]), (2, ids[2])] {
                monitor.seal(id).expect("a resident registration seals");
                let seal = monitor.seal_info(id).unwrap();
                println!("   sealed layers.{i}.weight: {} chunks of 1 MiB fingerprinted on the GPU", seal.chunks);
            }
            let clean = monitor.verify_now().unwrap();
            println!("   verify_now: {} registrations, {} bytes, {} modified", clean.registrations, clean.bytes, clean.modified);
            println!("   a kernel writes 64 bytes past its own buffer, into layers.2.weight at +5 MiB...");
            memory.fill(layers[2] + 5 * MIB as u64, 0x5a, 64);
            let found = monitor.verify_now().unwrap();
            println!("   verify_now: {} modified", found.modified);
            if let Ok(e) = events.recv_timeout(Duration::from_secs(5)) {
                println!("   ...the registration is {}: {} chunk(s) differ, the first at +{} bytes", e.verdict, e.modified_chunks, e.first_modified_offset);
            }
            println!("   health: healthy = {}", monitor.health().healthy);
            println!("   the engine reloads the layer's bytes and reseals it:");
            memory.fill(layers[2] + 5 * MIB as u64, 0x3c, 64);
            monitor.reseal(ids[2]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            println!("   health: healthy = {}", monitor.health().healthy);
        }
        Err(e) => println!("   integrity is not available here: {e}"),
    }
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
