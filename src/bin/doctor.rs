//! `vram-monitor-doctor`: what the monitor sees on this machine, in one command.
//!
//! On any machine it reports the CUDA driver (found or not, where, its version, whether it is
//! the fake driver the tests use), the GPUs (count, names, memory; from NVML where it is
//! present, else from the driver), NVML, and whether this process could be monitored (the
//! driver loads, a monitor starts, a pointer query answers). Where a GPU is present it then
//! plays the engine: it creates GPU 0's primary context (the library itself never does),
//! allocates each kind of memory from the measured facts table, registers it, changes some of
//! it underneath (free, reallocate) and prints what the monitor said next to what it should
//! say. Against the fake driver (tests/fake_cuda) it does the same with the fake's memory and
//! says plainly that the results are the fake's.
//!
//! Exit status:
//! - 0: the process can be monitored, and every kind of memory got the verdict it should;
//! - 1: the monitor misjudged a kind of memory, or a monitor could not be started;
//! - 2: no CUDA driver library (libcuda.so.1) was found: this machine cannot be monitored;
//! - 3: a driver library was found but is unusable (missing symbols, cuInit failed: a stub
//!   library, no device, ...);
//! - 64: bad command-line arguments.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::time::Duration;

use cudarc::driver::sys as cu;
use vram_monitor::{CudaDriver, Driver, DriverError, Error, MemoryType, Monitor, MonitorOptions, RegistrationId, Verdict};

const EXIT_OK: i32 = 0;
const EXIT_MISJUDGED: i32 = 1;
const EXIT_NO_DRIVER: i32 = 2;
const EXIT_DRIVER_UNUSABLE: i32 = 3;
const EXIT_USAGE: i32 = 64;

const MIB: usize = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

const USAGE: &str = "\
usage: vram-monitor-doctor [--no-alloc] [--device N]

Reports what vram-monitor sees on this machine: the CUDA driver, the GPUs, NVML, whether
this process can be monitored; then, where a GPU (or the test suite's fake driver) is
present, allocates each kind of memory and prints the monitor's verdict for each.

  --no-alloc   report only: create no CUDA context and allocate nothing
  --device N   the GPU to allocate on (default 0)

Exit status: 0 everything as expected; 1 the monitor misjudged a kind of memory (or could
not start); 2 no CUDA driver found; 3 driver found but unusable; 64 bad arguments.";

struct Options {
    allocate: bool,
    device: c_int,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options { allocate: true, device: 0 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-alloc" => options.allocate = false,
            "--device" => {
                let value = args.next().ok_or("--device needs a number")?;
                options.device = value.parse().map_err(|_| format!("--device: not a number: {value}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(EXIT_OK);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(why) => {
            eprintln!("vram-monitor-doctor: {why}\n\n{USAGE}");
            std::process::exit(EXIT_USAGE);
        }
    };
    std::process::exit(run(&options));
}

fn run(options: &Options) -> i32 {
    println!("vram-monitor doctor {} (library {})", env!("CARGO_PKG_VERSION"), vram_monitor::VERSION);
    println!();

    // ---- the driver ------------------------------------------------------------------------
    println!("CUDA driver");
    let driver = CudaDriver::get();
    let library = loaded_library_path("libcuda");
    let fake = driver.is_ok() && is_fake_driver();
    match &driver {
        Ok(d) => {
            println!("  library:        found: {}", library.as_deref().unwrap_or("(path unknown)"));
            println!("  API version:    {}", d.version().map(api_version).unwrap_or_else(|| "unknown".into()));
            if fake {
                println!("  kind:           THE FAKE DRIVER from tests/fake_cuda (it exports fake_cuda_*): no GPU is");
                println!("                  involved; everything below describes the fake, not real hardware");
            } else {
                println!("  kind:           the NVIDIA driver");
            }
        }
        Err(DriverError::NotFound) => {
            println!("  library:        NOT FOUND: no libcuda.so.1 on the loader path (LD_LIBRARY_PATH,");
            println!("                  ldconfig cache); this machine has no NVIDIA driver usable here");
        }
        Err(error) => {
            println!("  library:        found, but UNUSABLE: {error}");
            if let Some(path) = &library {
                println!("                  ({path})");
            }
            if let DriverError::InitFailed(34) = error {
                println!("                  (34 is the CUDA toolkit's stub libcuda: the real driver is not installed)");
            }
        }
    }
    println!();

    // ---- NVML --------------------------------------------------------------------------------
    println!("NVML");
    let nvml = nvml_report();
    match &nvml {
        Ok(n) => {
            println!("  library:        found ({})", loaded_library_path("libnvidia-ml").as_deref().unwrap_or("libnvidia-ml.so.1"));
            println!("  driver version: {}", n.driver_version);
            println!("  CUDA version:   {}", n.cuda_version);
        }
        Err(why) => println!("  library:        not usable: {why}"),
    }
    println!();

    // ---- GPUs --------------------------------------------------------------------------------
    println!("GPUs");
    let driver_gpus = if driver.is_ok() { DriverGpus::load() } else { None };
    match (&nvml, &driver_gpus) {
        (Ok(n), _) if !n.gpus.is_empty() => {
            println!("  count:          {} (NVML)", n.gpus.len());
            for gpu in &n.gpus {
                println!("  {gpu}");
            }
        }
        (_, Some(gpus)) => {
            let count = gpus.count();
            match count {
                Ok(count) => {
                    println!("  count:          {count} (cuDeviceGetCount){}", if fake { " [fake]" } else { "" });
                    for ordinal in 0..count {
                        println!("  GPU{ordinal}: {}", gpus.describe(ordinal));
                    }
                }
                Err(why) => println!("  count:          unknown: {why}"),
            }
        }
        _ => println!("  none found (no driver, and NVML is not usable)"),
    }
    println!();

    // ---- can this process be monitored? ------------------------------------------------------
    println!("Monitoring this process");
    let driver = match driver {
        Ok(driver) => driver,
        Err(DriverError::NotFound) => {
            println!("  NO: there is no CUDA driver, so there is no GPU memory to watch.");
            println!("  (exit status {EXIT_NO_DRIVER}: no driver)");
            return EXIT_NO_DRIVER;
        }
        Err(error) => {
            println!("  NO: the driver library is unusable: {error}");
            println!("  (exit status {EXIT_DRIVER_UNUSABLE}: driver unusable)");
            return EXIT_DRIVER_UNUSABLE;
        }
    };
    let probe = 0u64;
    let host_address = &probe as *const u64 as u64;
    match driver.pointer_info(host_address) {
        Ok(info) if info.memory_type == MemoryType::Unregistered => {
            println!("  pointer query:  works (cuPointerGetAttributes on a stack address: not CUDA memory, as it should)")
        }
        Ok(info) => println!("  pointer query:  answers, but oddly: a stack address reported as {:?}", info.memory_type),
        Err(error) => {
            println!("  pointer query:  FAILS: {error}");
            println!("  NO: the monitor cannot check anything with this driver.");
            return EXIT_DRIVER_UNUSABLE;
        }
    }
    let monitor = match Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), ..MonitorOptions::default() }) {
        Ok(monitor) => monitor,
        Err(error) => {
            println!("  monitor:        could NOT start: {error}");
            return EXIT_MISJUDGED;
        }
    };
    println!("  monitor:        starts (its thread runs; it created no CUDA context)");
    println!("  verdict:        YES, this process can be monitored{}", if fake { " (by the fake driver)" } else { "" });
    println!();

    if !options.allocate {
        println!("(--no-alloc: no memory allocated, no context created)");
        return EXIT_OK;
    }

    // ---- what the monitor sees, kind by kind -------------------------------------------------
    let engine = if fake {
        match FakeEngine::load() {
            Ok(engine) => Engine::Fake(engine),
            Err(why) => {
                println!("What the monitor sees: not run: {why}");
                return EXIT_MISJUDGED;
            }
        }
    } else {
        match Gpu::load().and_then(|gpu| gpu.start(options.device)) {
            Ok(gpu) => Engine::Gpu(Box::new(gpu)),
            Err(why) => {
                println!("What the monitor sees: not run: {why}");
                println!("(the process could still be monitored; only the allocation table was skipped)");
                return EXIT_OK;
            }
        }
    };
    println!("What the monitor sees, per kind of memory ({})", engine.describe(options.device));
    println!();
    let rows = engine.scenarios(&monitor, options.device);
    print_table(&rows);
    let misjudged = rows.iter().filter(|r| r.ok == Some(false)).count();
    let not_run = rows.iter().filter(|r| r.ok.is_none()).count();
    let health = monitor.health();
    println!();
    println!(
        "process VRAM after the checks: {} ({})",
        if health.process_vram.bytes > 0 {
            format!("{:.1} MiB", health.process_vram.bytes as f64 / MIB as f64)
        } else {
            "unknown".into()
        },
        health.process_vram.source.name()
    );
    println!(
        "summary: {} kinds of memory, {} as expected, {} misjudged, {} not available here{}",
        rows.len(),
        rows.len() - misjudged - not_run,
        misjudged,
        not_run,
        if fake { " (fake driver)" } else { "" }
    );
    drop(monitor);
    engine.finish();
    if misjudged > 0 {
        EXIT_MISJUDGED
    } else {
        EXIT_OK
    }
}

fn api_version(v: i32) -> String {
    format!("{}.{} ({v})", v / 1000, (v % 1000) / 10)
}

/// The path of the first mapped file whose name contains `name`, from /proc/self/maps.
fn loaded_library_path(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.rsplit('/').next().is_some_and(|file| file.starts_with(name)))
        .map(str::to_owned)
}

/// Whether the loaded libcuda is the test suite's fake (it exports `fake_cuda_alloc`).
fn is_fake_driver() -> bool {
    // SAFETY: the driver library is already loaded (CudaDriver::get succeeded); culib()
    // returns it and panics only when it is missing, which the catch_unwind covers.
    let Ok(lib) = std::panic::catch_unwind(|| unsafe { cu::culib() }) else {
        return false;
    };
    unsafe { lib.get::<unsafe extern "C" fn()>(b"fake_cuda_alloc") }.is_ok()
}

struct NvmlReport {
    driver_version: String,
    cuda_version: String,
    gpus: Vec<String>,
}

fn nvml_report() -> Result<NvmlReport, String> {
    let nvml = std::panic::catch_unwind(nvml_wrapper::Nvml::init)
        .map_err(|_| "NVML panicked while loading".to_string())?
        .map_err(|e| format!("{e} (libnvidia-ml.so.1)"))?;
    let driver_version = nvml.sys_driver_version().unwrap_or_else(|e| format!("unknown ({e})"));
    let cuda_version = nvml
        .sys_cuda_driver_version()
        .map(api_version)
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let count = nvml.device_count().map_err(|e| format!("device count: {e}"))?;
    let mut gpus = Vec::new();
    for i in 0..count {
        let line = match nvml.device_by_index(i) {
            Ok(device) => {
                let name = device.name().unwrap_or_else(|e| format!("(name unknown: {e})"));
                let memory = match device.memory_info() {
                    Ok(m) => format!("{:.1} GiB total, {:.1} GiB used", m.total as f64 / GIB, m.used as f64 / GIB),
                    Err(e) => format!("memory unknown ({e})"),
                };
                format!("GPU{i}: {name}, {memory}")
            }
            Err(e) => format!("GPU{i}: unavailable ({e})"),
        };
        gpus.push(line);
    }
    Ok(NvmlReport { driver_version, cuda_version, gpus })
}

/// Looks a function up by name. `T` must be its C signature with every enum read as int.
unsafe fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    lib.get::<T>(name.as_bytes()).map(|s| *s).map_err(|_| format!("the driver has no {name}"))
}

fn culib() -> Result<&'static libloading::Library, String> {
    // SAFETY: only called after CudaDriver::get succeeded, so the library is present.
    std::panic::catch_unwind(|| unsafe { cu::culib() }).map_err(|_| "the CUDA driver library could not be loaded".to_string())
}

/// Device listing through the driver, for machines without NVML (and the fake driver).
struct DriverGpus {
    get_count: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_name: Option<unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int>,
    total_mem: Option<unsafe extern "C" fn(*mut usize, c_int) -> c_int>,
}

impl DriverGpus {
    fn load() -> Option<DriverGpus> {
        let lib = culib().ok()?;
        // SAFETY: cuda.h signatures, enums and results as int.
        unsafe {
            Some(DriverGpus {
                get_count: sym(lib, "cuDeviceGetCount").ok()?,
                get_name: sym(lib, "cuDeviceGetName").ok(),
                total_mem: sym(lib, "cuDeviceTotalMem_v2").ok(),
            })
        }
    }

    fn count(&self) -> Result<c_int, String> {
        let mut n = 0;
        // SAFETY: out-pointer to a local.
        match unsafe { (self.get_count)(&mut n) } {
            0 => Ok(n),
            code => Err(format!("cuDeviceGetCount failed with {code}")),
        }
    }

    fn describe(&self, ordinal: c_int) -> String {
        let name = self.get_name.and_then(|f| {
            let mut buf = [0 as c_char; 256];
            // SAFETY: the buffer and its length; the driver NUL-terminates.
            (unsafe { f(buf.as_mut_ptr(), buf.len() as c_int, ordinal) } == 0)
                .then(|| unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
        });
        let memory = self.total_mem.and_then(|f| {
            let mut bytes = 0usize;
            // SAFETY: out-pointer to a local.
            (unsafe { f(&mut bytes, ordinal) } == 0).then(|| format!("{:.1} GiB", bytes as f64 / GIB))
        });
        format!(
            "{}, {} (from the driver; NVML not available)",
            name.unwrap_or_else(|| "name unknown".into()),
            memory.unwrap_or_else(|| "memory unknown".into())
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The verdict table

/// One kind of memory and what the monitor said about it.
struct Row {
    memory: String,
    expected: String,
    registration: String,
    after_check: String,
    /// Some(true) as expected, Some(false) misjudged, None not available here.
    ok: Option<bool>,
    note: String,
}

impl Row {
    fn unavailable(memory: &str, expected: &str, why: String) -> Row {
        Row {
            memory: memory.into(),
            expected: expected.into(),
            registration: "—".into(),
            after_check: "—".into(),
            ok: None,
            note: why,
        }
    }
}

fn print_table(rows: &[Row]) {
    println!("| memory | expected | at registration | after check_now | result |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let result = match r.ok {
            Some(true) => "as expected".to_string(),
            Some(false) => "**MISJUDGED**".to_string(),
            None => "not available here".to_string(),
        };
        let result = if r.note.is_empty() { result } else { format!("{result}: {}", r.note) };
        println!("| {} | {} | {} | {} | {} |", r.memory, r.expected, r.registration, r.after_check, result);
    }
}

fn registration_word(result: &Result<RegistrationId, Error>) -> String {
    match result {
        Ok(_) => "registered (RESIDENT)".into(),
        Err(Error::Refused(v)) => format!("refused {}", v.name()),
        Err(other) => format!("error: {other}"),
    }
}

fn verdict_of(monitor: &Monitor, id: RegistrationId) -> Option<Verdict> {
    monitor.registrations().into_iter().find(|r| r.id == id).map(|r| r.verdict())
}

/// Registers `[ptr, ptr + size)` and compares with `expected` (RESIDENT: registered, and a
/// check keeps it resident; anything else: refused with that verdict). Unregisters after.
fn judge(monitor: &Monitor, memory: &str, ptr: u64, size: usize, expected: Verdict) -> Row {
    let result = monitor.register(ptr, size as u64, memory);
    let mut row = Row {
        memory: memory.into(),
        expected: if expected == Verdict::Resident { "RESIDENT".into() } else { format!("refused {}", expected.name()) },
        registration: registration_word(&result),
        after_check: "—".into(),
        ok: Some(false),
        note: String::new(),
    };
    match result {
        Ok(id) => {
            let after = monitor.check_now().ok().and_then(|_| verdict_of(monitor, id));
            row.after_check = after.map_or("unknown".into(), |v| v.name().to_string());
            row.ok = Some(expected == Verdict::Resident && after == Some(Verdict::Resident));
            let _ = monitor.unregister(id);
        }
        Err(Error::Refused(v)) => row.ok = Some(v == expected),
        Err(_) => {}
    }
    row
}

/// Registers resident memory, runs `change` (which frees or reallocates it underneath and says
/// which verdicts are right now), checks, and compares.
fn judge_change(
    monitor: &Monitor,
    memory: &str,
    ptr: u64,
    size: usize,
    change: impl FnOnce() -> Result<(Vec<Verdict>, String), String>,
) -> Row {
    let result = monitor.register(ptr, size as u64, memory);
    let mut row = Row {
        memory: memory.into(),
        expected: "registered, then a violation".into(),
        registration: registration_word(&result),
        after_check: "—".into(),
        ok: Some(false),
        note: String::new(),
    };
    let Ok(id) = result else {
        return row;
    };
    match change() {
        Ok((expected, note)) => {
            row.expected = format!(
                "RESIDENT, then {}",
                expected.iter().map(|v| v.name()).collect::<Vec<_>>().join(" or ")
            );
            row.note = note;
            let after = monitor.check_now().ok().and_then(|_| verdict_of(monitor, id));
            row.after_check = after.map_or("unknown".into(), |v| v.name().to_string());
            row.ok = Some(after.is_some_and(|v| expected.contains(&v)));
        }
        Err(why) => {
            row.ok = None;
            row.note = why;
        }
    }
    let _ = monitor.unregister(id);
    row
}

/// Ordinary host memory (the heap), page-aligned, never given to CUDA.
struct HostBuffer {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl HostBuffer {
    fn new(size: usize) -> HostBuffer {
        let layout = std::alloc::Layout::from_size_align(size, 4096).expect("a valid layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of host memory");
        HostBuffer { ptr, layout }
    }
    fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

enum Engine {
    Fake(FakeEngine),
    Gpu(Box<Gpu>),
}

impl Engine {
    fn describe(&self, device: c_int) -> String {
        match self {
            Engine::Fake(_) => "the FAKE driver's memory: a model of the H100 measurements, not a GPU".into(),
            Engine::Gpu(gpu) => format!(
                "GPU{device}{}; the doctor plays the engine and made GPU{device}'s primary context current",
                gpu.device_name(device).map(|n| format!(" ({n})")).unwrap_or_default()
            ),
        }
    }

    fn scenarios(&self, monitor: &Monitor, device: c_int) -> Vec<Row> {
        match self {
            Engine::Fake(fake) => fake.scenarios(monitor),
            Engine::Gpu(gpu) => gpu.scenarios(monitor, device),
        }
    }

    fn finish(self) {
        if let Engine::Gpu(gpu) = self {
            gpu.finish();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake driver's memory (tests/fake_cuda/fake_cuda_control.h)

const FAKE_DEVICE: c_int = 1;
const FAKE_MANAGED: c_int = 2;
const FAKE_HOST: c_int = 3;
const FAKE_VMM_DEVICE: c_int = 4;
const FAKE_VMM_HOST: c_int = 5;

struct FakeEngine {
    alloc: unsafe extern "C" fn(c_int, usize, c_int) -> u64,
    free: unsafe extern "C" fn(u64) -> c_int,
    reallocate: unsafe extern "C" fn(u64) -> c_int,
    reserve: unsafe extern "C" fn(usize) -> u64,
    map: unsafe extern "C" fn(u64, usize, c_int, c_int) -> c_int,
}

impl FakeEngine {
    fn load() -> Result<FakeEngine, String> {
        let lib = culib()?;
        // SAFETY: the signatures of fake_cuda_control.h.
        unsafe {
            Ok(FakeEngine {
                alloc: sym(lib, "fake_cuda_alloc")?,
                free: sym(lib, "fake_cuda_free")?,
                reallocate: sym(lib, "fake_cuda_reallocate")?,
                reserve: sym(lib, "fake_cuda_reserve")?,
                map: sym(lib, "fake_cuda_map")?,
            })
        }
    }

    fn alloc(&self, kind: c_int, size: usize) -> u64 {
        // SAFETY: plain call; 0 means refused.
        unsafe { (self.alloc)(kind, size, 0) }
    }

    fn scenarios(&self, monitor: &Monitor) -> Vec<Row> {
        let size = 4 * MIB;
        let mut rows = Vec::new();
        let device = self.alloc(FAKE_DEVICE, size);
        rows.push(judge(monitor, "cudaMalloc / cuMemAlloc", device, size, Verdict::Resident));
        rows.push(judge(monitor, "interior range of a cuMemAlloc", device + MIB as u64, 2 * MIB, Verdict::Resident));
        rows.push(judge(monitor, "range one byte past a cuMemAlloc", device, size + 1, Verdict::OutOfRange));
        rows.push(judge(monitor, "cudaMallocManaged", self.alloc(FAKE_MANAGED, size), size, Verdict::Managed));
        rows.push(judge(monitor, "pinned host memory (cuMemAllocHost)", self.alloc(FAKE_HOST, size), size, Verdict::Host));
        let heap = HostBuffer::new(size);
        rows.push(judge(monitor, "plain malloc (never CUDA memory)", heap.addr(), size, Verdict::NotMapped));
        let freed = self.alloc(FAKE_DEVICE, size);
        rows.push(judge_change(monitor, "cuMemAlloc freed while registered", freed, size, || {
            // SAFETY: plain call.
            (unsafe { (self.free)(freed) } == 0)
                .then(|| (vec![Verdict::NotMapped], String::new()))
                .ok_or_else(|| "fake_cuda_free refused".to_string())
        }));
        let replaced = self.alloc(FAKE_DEVICE, size);
        rows.push(judge_change(monitor, "freed and reallocated at the same address", replaced, size, || {
            // SAFETY: plain call.
            (unsafe { (self.reallocate)(replaced) } == 0)
                .then(|| (vec![Verdict::Replaced], "new BUFFER_ID".to_string()))
                .ok_or_else(|| "fake_cuda_reallocate refused".to_string())
        }));
        // VMM: one reservation, two device mappings side by side, one host mapping, a hole.
        let chunk = 2 * MIB;
        // SAFETY: plain calls.
        let base = unsafe { (self.reserve)(8 * chunk) };
        let mapped = |offset: usize, kind: c_int| unsafe { (self.map)(base + offset as u64, chunk, kind, 0) } == 0;
        if base != 0 && mapped(0, FAKE_VMM_DEVICE) && mapped(chunk, FAKE_VMM_DEVICE) && mapped(4 * chunk, FAKE_VMM_HOST) {
            rows.push(judge(monitor, "VMM device mapping (cuMemCreate DEVICE + cuMemMap)", base, chunk, Verdict::Resident));
            rows.push(judge(
                monitor,
                "range over two VMM device mappings (expandable segments)",
                base,
                2 * chunk,
                Verdict::Resident,
            ));
            rows.push(judge(monitor, "VMM host-located mapping (cuMemCreate HOST)", base + 4 * chunk as u64, chunk, Verdict::Host));
            rows.push(judge(monitor, "VMM address reserved, nothing mapped", base + 6 * chunk as u64, chunk, Verdict::NotMapped));
        } else {
            rows.push(Row::unavailable("VMM", "—", "the fake refused to reserve or map".into()));
        }
        rows
    }
}

// ---------------------------------------------------------------------------------------------
// A real GPU, through the driver API

type Ptr = *mut c_void;
const CU_MEM_ATTACH_GLOBAL: c_uint = 1;
const CU_MEMHOSTALLOC_DEVICEMAP: c_uint = 2;
const CU_MEM_ALLOC_GRANULARITY_MINIMUM: c_uint = 0;

struct Gpu {
    get_error_name: unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int,
    primary_ctx_retain: unsafe extern "C" fn(*mut Ptr, c_int) -> c_int,
    primary_ctx_release: unsafe extern "C" fn(c_int) -> c_int,
    ctx_set_current: unsafe extern "C" fn(Ptr) -> c_int,
    ctx_synchronize: unsafe extern "C" fn() -> c_int,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> c_int,
    mem_free: unsafe extern "C" fn(u64) -> c_int,
    mem_alloc_managed: unsafe extern "C" fn(*mut u64, usize, c_uint) -> c_int,
    mem_alloc_host: unsafe extern "C" fn(*mut Ptr, usize) -> c_int,
    mem_free_host: unsafe extern "C" fn(Ptr) -> c_int,
    mem_host_alloc: unsafe extern "C" fn(*mut Ptr, usize, c_uint) -> c_int,
    mem_host_get_device_pointer: unsafe extern "C" fn(*mut u64, Ptr, c_uint) -> c_int,
    mem_host_register: unsafe extern "C" fn(Ptr, usize, c_uint) -> c_int,
    mem_host_unregister: unsafe extern "C" fn(Ptr) -> c_int,
    mem_alloc_async: Option<unsafe extern "C" fn(*mut u64, usize, Ptr) -> c_int>,
    mem_free_async: Option<unsafe extern "C" fn(u64, Ptr) -> c_int>,
    stream_synchronize: unsafe extern "C" fn(Ptr) -> c_int,
    mem_get_allocation_granularity: unsafe extern "C" fn(*mut usize, *const cu::CUmemAllocationProp, c_uint) -> c_int,
    mem_create: unsafe extern "C" fn(*mut u64, usize, *const cu::CUmemAllocationProp, u64) -> c_int,
    mem_release: unsafe extern "C" fn(u64) -> c_int,
    mem_address_reserve: unsafe extern "C" fn(*mut u64, usize, usize, u64, u64) -> c_int,
    mem_address_free: unsafe extern "C" fn(u64, usize) -> c_int,
    mem_map: unsafe extern "C" fn(u64, usize, usize, u64, u64) -> c_int,
    mem_unmap: unsafe extern "C" fn(u64, usize) -> c_int,
    mem_set_access: unsafe extern "C" fn(u64, usize, *const cu::CUmemAccessDesc, usize) -> c_int,
    /// The device whose primary context is retained, once started.
    device: Option<c_int>,
    /// What to undo at the end, in reverse order.
    cleanup: std::cell::RefCell<Vec<Box<dyn FnOnce()>>>,
}

impl Gpu {
    fn load() -> Result<Gpu, String> {
        let lib = culib()?;
        // SAFETY: cuda.h signatures with enums and CUresult read as int.
        unsafe {
            Ok(Gpu {
                get_error_name: sym(lib, "cuGetErrorName")?,
                device_get_name: sym(lib, "cuDeviceGetName")?,
                primary_ctx_retain: sym(lib, "cuDevicePrimaryCtxRetain")?,
                primary_ctx_release: sym(lib, "cuDevicePrimaryCtxRelease_v2")?,
                ctx_set_current: sym(lib, "cuCtxSetCurrent")?,
                ctx_synchronize: sym(lib, "cuCtxSynchronize")?,
                mem_alloc: sym(lib, "cuMemAlloc_v2")?,
                mem_free: sym(lib, "cuMemFree_v2")?,
                mem_alloc_managed: sym(lib, "cuMemAllocManaged")?,
                mem_alloc_host: sym(lib, "cuMemAllocHost_v2")?,
                mem_free_host: sym(lib, "cuMemFreeHost")?,
                mem_host_alloc: sym(lib, "cuMemHostAlloc")?,
                mem_host_get_device_pointer: sym(lib, "cuMemHostGetDevicePointer_v2")?,
                mem_host_register: sym(lib, "cuMemHostRegister_v2")?,
                mem_host_unregister: sym(lib, "cuMemHostUnregister")?,
                mem_alloc_async: sym(lib, "cuMemAllocAsync").ok(),
                mem_free_async: sym(lib, "cuMemFreeAsync").ok(),
                stream_synchronize: sym(lib, "cuStreamSynchronize")?,
                mem_get_allocation_granularity: sym(lib, "cuMemGetAllocationGranularity")?,
                mem_create: sym(lib, "cuMemCreate")?,
                mem_release: sym(lib, "cuMemRelease")?,
                mem_address_reserve: sym(lib, "cuMemAddressReserve")?,
                mem_address_free: sym(lib, "cuMemAddressFree")?,
                mem_map: sym(lib, "cuMemMap")?,
                mem_unmap: sym(lib, "cuMemUnmap")?,
                mem_set_access: sym(lib, "cuMemSetAccess")?,
                device: None,
                cleanup: Default::default(),
            })
        }
    }

    fn error_name(&self, code: c_int) -> String {
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: out-pointer to a local; the driver returns a static string.
        if unsafe { (self.get_error_name)(code, &mut name) } == 0 && !name.is_null() {
            format!("{} ({code})", unsafe { CStr::from_ptr(name) }.to_string_lossy())
        } else {
            format!("CUresult {code}")
        }
    }

    fn call(&self, code: c_int, what: &str) -> Result<(), String> {
        if code == 0 {
            Ok(())
        } else {
            Err(format!("{what} failed with {}", self.error_name(code)))
        }
    }

    fn device_name(&self, device: c_int) -> Option<String> {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer and its length.
        (unsafe { (self.device_get_name)(buf.as_mut_ptr(), buf.len() as c_int, device) } == 0)
            .then(|| unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// Retains `device`'s primary context and makes it current: what an engine does first.
    fn start(mut self, device: c_int) -> Result<Gpu, String> {
        let mut context: Ptr = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.call(unsafe { (self.primary_ctx_retain)(&mut context, device) }, "cuDevicePrimaryCtxRetain")?;
        self.device = Some(device);
        self.call(unsafe { (self.ctx_set_current)(context) }, "cuCtxSetCurrent")?;
        Ok(self)
    }

    fn later(&self, undo: impl FnOnce() + 'static) {
        self.cleanup.borrow_mut().push(Box::new(undo));
    }

    fn finish(self) {
        // SAFETY: waits for the device; frees what the scenarios left, then releases the context.
        unsafe { (self.ctx_synchronize)() };
        let undo: Vec<_> = self.cleanup.borrow_mut().drain(..).collect();
        for f in undo.into_iter().rev() {
            f();
        }
        if let Some(device) = self.device {
            unsafe { (self.primary_ctx_release)(device) };
        }
    }

    fn alloc(&self, size: usize) -> Result<u64, String> {
        let mut ptr = 0u64;
        // SAFETY: out-pointer to a local; a context is current.
        self.call(unsafe { (self.mem_alloc)(&mut ptr, size) }, "cuMemAlloc")?;
        let free = self.mem_free;
        self.later(move || unsafe {
            free(ptr);
        });
        Ok(ptr)
    }

    fn prop(location: cu::CUmemLocationType, id: c_int) -> cu::CUmemAllocationProp {
        cu::CUmemAllocationProp {
            type_: cu::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
            requestedHandleTypes: cu::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE,
            location: cu::CUmemLocation { type_: location, id },
            win32HandleMetaData: std::ptr::null_mut(),
            allocFlags: cu::CUmemAllocationProp_st__bindgen_ty_1 {
                compressionType: 0,
                gpuDirectRDMACapable: 0,
                usage: 0,
                reserved: [0; 4],
            },
        }
    }

    fn granularity(&self, prop: &cu::CUmemAllocationProp) -> Result<usize, String> {
        let mut g = 0usize;
        // SAFETY: out-pointer and a valid property.
        self.call(
            unsafe { (self.mem_get_allocation_granularity)(&mut g, prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) },
            "cuMemGetAllocationGranularity",
        )?;
        if g == 0 {
            return Err("cuMemGetAllocationGranularity returned 0".into());
        }
        Ok(g)
    }

    /// Creates `size` bytes of physical memory at `prop`'s location and maps it at `addr` with
    /// read/write access for `device`.
    fn map(&self, addr: u64, size: usize, prop: &cu::CUmemAllocationProp, device: c_int) -> Result<(), String> {
        let mut handle = 0u64;
        // SAFETY: out-pointer and a valid property; the address lies in a reservation.
        self.call(unsafe { (self.mem_create)(&mut handle, size, prop, 0) }, "cuMemCreate")?;
        if let Err(e) = self.call(unsafe { (self.mem_map)(addr, size, 0, handle, 0) }, "cuMemMap") {
            unsafe { (self.mem_release)(handle) };
            return Err(e);
        }
        let (unmap, release) = (self.mem_unmap, self.mem_release);
        self.later(move || unsafe {
            unmap(addr, size);
            release(handle);
        });
        let access = cu::CUmemAccessDesc {
            location: cu::CUmemLocation { type_: cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: device },
            flags: cu::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        self.call(unsafe { (self.mem_set_access)(addr, size, &access, 1) }, "cuMemSetAccess")
    }

    fn reserve(&self, size: usize, alignment: usize) -> Result<u64, String> {
        let mut base = 0u64;
        // SAFETY: out-pointer to a local.
        self.call(unsafe { (self.mem_address_reserve)(&mut base, size, alignment, 0, 0) }, "cuMemAddressReserve")?;
        let free = self.mem_address_free;
        self.later(move || unsafe {
            free(base, size);
        });
        Ok(base)
    }

    fn scenarios(&self, monitor: &Monitor, device: c_int) -> Vec<Row> {
        let size = 4 * MIB;
        let mut rows = Vec::new();
        fn unavailable(rows: &mut Vec<Row>, memory: &str, expected: &str, why: String) {
            rows.push(Row::unavailable(memory, expected, why));
        }

        match self.alloc(size) {
            Ok(ptr) => {
                rows.push(judge(monitor, "cudaMalloc / cuMemAlloc", ptr, size, Verdict::Resident));
                rows.push(judge(monitor, "interior range of a cuMemAlloc", ptr + MIB as u64, 2 * MIB, Verdict::Resident));
                rows.push(judge(monitor, "range one byte past a cuMemAlloc", ptr, size + 1, Verdict::OutOfRange));
            }
            Err(why) => unavailable(&mut rows, "cudaMalloc / cuMemAlloc", "RESIDENT", why),
        }

        let mut managed = 0u64;
        // SAFETY: out-pointer to a local; a context is current.
        match self.call(unsafe { (self.mem_alloc_managed)(&mut managed, size, CU_MEM_ATTACH_GLOBAL) }, "cuMemAllocManaged") {
            Ok(()) => {
                let free = self.mem_free;
                self.later(move || unsafe {
                    free(managed);
                });
                rows.push(judge(monitor, "cudaMallocManaged (unified memory)", managed, size, Verdict::Managed));
            }
            Err(why) => unavailable(&mut rows, "cudaMallocManaged", "refused MANAGED", why),
        }

        let mut pinned: Ptr = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        match self.call(unsafe { (self.mem_alloc_host)(&mut pinned, size) }, "cuMemAllocHost") {
            Ok(()) => {
                let free = self.mem_free_host;
                let p = pinned as usize;
                self.later(move || unsafe {
                    free(p as Ptr);
                });
                rows.push(judge(monitor, "pinned host memory (cuMemAllocHost)", pinned as u64, size, Verdict::Host));
            }
            Err(why) => unavailable(&mut rows, "pinned host memory", "refused HOST", why),
        }

        let mut mapped: Ptr = std::ptr::null_mut();
        // SAFETY: out-pointers to locals.
        match self
            .call(unsafe { (self.mem_host_alloc)(&mut mapped, size, CU_MEMHOSTALLOC_DEVICEMAP) }, "cuMemHostAlloc")
            .and_then(|()| {
                let free = self.mem_free_host;
                let p = mapped as usize;
                self.later(move || unsafe {
                    free(p as Ptr);
                });
                let mut alias = 0u64;
                self.call(unsafe { (self.mem_host_get_device_pointer)(&mut alias, mapped, 0) }, "cuMemHostGetDevicePointer")
                    .map(|()| alias)
            }) {
            Ok(alias) => rows.push(judge(
                monitor,
                "mapped host memory, device alias (cuMemHostGetDevicePointer)",
                alias,
                size,
                Verdict::Host,
            )),
            Err(why) => unavailable(&mut rows, "mapped host memory (device alias)", "refused HOST", why),
        }

        let registered = HostBuffer::new(size);
        // SAFETY: a live, page-aligned host buffer of `size` bytes, unregistered before it is freed.
        match self.call(unsafe { (self.mem_host_register)(registered.ptr.cast(), size, 0) }, "cuMemHostRegister") {
            Ok(()) => {
                rows.push(judge(monitor, "malloc + cuMemHostRegister", registered.addr(), size, Verdict::Host));
                unsafe { (self.mem_host_unregister)(registered.ptr.cast()) };
            }
            Err(why) => unavailable(&mut rows, "malloc + cuMemHostRegister", "refused HOST", why),
        }
        drop(registered);

        let heap = HostBuffer::new(size);
        rows.push(judge(monitor, "plain malloc (never CUDA memory)", heap.addr(), size, Verdict::NotMapped));
        drop(heap);

        let mut doomed = 0u64;
        // SAFETY: out-pointer to a local.
        match self.call(unsafe { (self.mem_alloc)(&mut doomed, size) }, "cuMemAlloc") {
            Ok(()) => rows.push(judge_change(monitor, "cuMemAlloc freed while registered", doomed, size, || {
                self.call(unsafe { (self.mem_free)(doomed) }, "cuMemFree").map(|()| (vec![Verdict::NotMapped], String::new()))
            })),
            Err(why) => unavailable(&mut rows, "cuMemAlloc freed while registered", "NOT_MAPPED", why),
        }

        let mut first = 0u64;
        // SAFETY: out-pointers to locals.
        match self.call(unsafe { (self.mem_alloc)(&mut first, size) }, "cuMemAlloc") {
            Ok(()) => rows.push(judge_change(monitor, "freed, then cuMemAlloc of the same size", first, size, || {
                self.call(unsafe { (self.mem_free)(first) }, "cuMemFree")?;
                let second = self.alloc(size)?;
                Ok(if second == first {
                    (vec![Verdict::Replaced], "the driver reused the address (new BUFFER_ID)".into())
                } else {
                    (vec![Verdict::NotMapped], format!("the driver chose another address ({second:#x})"))
                })
            })),
            Err(why) => unavailable(&mut rows, "freed and reallocated", "REPLACED", why),
        }

        match (self.mem_alloc_async, self.mem_free_async) {
            (Some(alloc_async), Some(free_async)) => {
                let mut ptr = 0u64;
                // SAFETY: out-pointer; the legacy default stream (NULL).
                match self.call(unsafe { alloc_async(&mut ptr, size, std::ptr::null_mut()) }, "cuMemAllocAsync").and_then(
                    |()| self.call(unsafe { (self.stream_synchronize)(std::ptr::null_mut()) }, "cuStreamSynchronize"),
                ) {
                    Ok(()) => {
                        let sync = self.stream_synchronize;
                        self.later(move || unsafe {
                            free_async(ptr, std::ptr::null_mut());
                            sync(std::ptr::null_mut());
                        });
                        rows.push(judge(monitor, "cudaMallocAsync (stream-ordered pool)", ptr, size, Verdict::Resident));
                    }
                    Err(why) => unavailable(&mut rows, "cudaMallocAsync", "RESIDENT", why),
                }
            }
            _ => unavailable(&mut rows, "cudaMallocAsync", "RESIDENT", "the driver has no cuMemAllocAsync".into()),
        }

        // VMM: device mappings, a host-located one, and reserved space with nothing mapped.
        let device_prop = Gpu::prop(cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, device);
        let vmm = self.granularity(&device_prop).and_then(|g| {
            let chunk = g.max(2 * MIB).div_ceil(g) * g;
            let base = self.reserve(8 * chunk, g)?;
            Ok((base, chunk))
        });
        match vmm {
            Ok((base, chunk)) => {
                match self.map(base, chunk, &device_prop, device).and_then(|()| self.map(base + chunk as u64, chunk, &device_prop, device)) {
                    Ok(()) => {
                        rows.push(judge(monitor, "VMM device mapping (cuMemCreate DEVICE + cuMemMap)", base, chunk, Verdict::Resident));
                        rows.push(judge(
                            monitor,
                            "range over two VMM device mappings (expandable segments)",
                            base,
                            2 * chunk,
                            Verdict::Resident,
                        ));
                    }
                    Err(why) => unavailable(&mut rows, "VMM device mapping", "RESIDENT", why),
                }
                let host_at = base + 4 * chunk as u64;
                let host = [cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST, cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA]
                    .into_iter()
                    .map(|location| {
                        let prop = Gpu::prop(location, 0);
                        let g = self.granularity(&prop)?;
                        if chunk % g != 0 {
                            return Err(format!("host granularity {g} does not divide {chunk}"));
                        }
                        self.map(host_at, chunk, &prop, device)
                    })
                    .try_fold(String::new(), |errors, attempt| match attempt {
                        Ok(()) => Err(()),
                        Err(why) => Ok(if errors.is_empty() { why } else { format!("{errors}; {why}") }),
                    });
                match host {
                    Err(()) => rows.push(judge(monitor, "VMM host-located mapping (cuMemCreate HOST)", host_at, chunk, Verdict::Host)),
                    Ok(why) => unavailable(&mut rows, "VMM host-located mapping", "refused HOST", why),
                }
                rows.push(judge(monitor, "VMM address reserved, nothing mapped", base + 6 * chunk as u64, chunk, Verdict::NotMapped));
            }
            Err(why) => unavailable(&mut rows, "VMM (cuMemCreate + cuMemMap)", "RESIDENT", why),
        }
        rows
    }
}
