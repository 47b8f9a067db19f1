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
//! Driver calls: the library is the one cudarc's dynamic loader found
//! (`cudarc::driver::sys::is_culib_present` / `culib`), the VMM structs are cudarc's
//! (`CUmemAllocationProp`, `CUmemAccessDesc`, ...), but every function is looked up once, up
//! front, with an integer return type, as `src/driver.rs` does: a missing symbol is a clean
//! skip rather than cudarc's panic, and a `CUresult` the 12.8 bindings do not know (the GPU
//! machine runs a 13.0 driver) is a number rather than undefined behaviour.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cudarc::driver::sys as cu;
use vram_monitor::{
    Callback, CudaDriver, Driver, Error, Event, EventKind, Monitor, MonitorOptions, PointerInfo, RegistrationId,
    Verdict, VramSource,
};

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

// cuda.h constants used below.
const CU_MEM_ATTACH_GLOBAL: c_uint = 1;
const CU_MEMHOSTALLOC_DEVICEMAP: c_uint = 2;
const CU_STREAM_NON_BLOCKING: c_uint = 1;
const CU_MEM_ALLOC_GRANULARITY_MINIMUM: c_uint = 0;
const ATTR_MEMORY_TYPE: c_int = 2;
const ATTR_BUFFER_ID: c_int = 7;
const ATTR_IS_MANAGED: c_int = 8;
const ATTR_DEVICE_ORDINAL: c_int = 9;
const ATTR_RANGE_START_ADDR: c_int = 11;
const ATTR_RANGE_SIZE: c_int = 12;
const ATTR_MAPPING_SIZE: c_int = 18;
const ATTR_MAPPING_BASE_ADDR: c_int = 19;

type Ptr = *mut c_void;

/// The driver functions this program calls, with integer results.
struct Cuda {
    init: unsafe extern "C" fn(c_uint) -> c_int,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> c_int,
    device_get: unsafe extern "C" fn(*mut c_int, c_int) -> c_int,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int,
    driver_get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_error_name: unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int,
    primary_ctx_retain: unsafe extern "C" fn(*mut Ptr, c_int) -> c_int,
    primary_ctx_release: unsafe extern "C" fn(c_int) -> c_int,
    primary_ctx_get_state: unsafe extern "C" fn(c_int, *mut c_uint, *mut c_int) -> c_int,
    ctx_set_current: unsafe extern "C" fn(Ptr) -> c_int,
    ctx_get_current: unsafe extern "C" fn(*mut Ptr) -> c_int,
    ctx_synchronize: unsafe extern "C" fn() -> c_int,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> c_int,
    mem_free: unsafe extern "C" fn(u64) -> c_int,
    mem_alloc_managed: unsafe extern "C" fn(*mut u64, usize, c_uint) -> c_int,
    mem_alloc_host: unsafe extern "C" fn(*mut Ptr, usize) -> c_int,
    mem_free_host: unsafe extern "C" fn(Ptr) -> c_int,
    mem_host_register: unsafe extern "C" fn(Ptr, usize, c_uint) -> c_int,
    mem_host_unregister: unsafe extern "C" fn(Ptr) -> c_int,
    mem_host_alloc: unsafe extern "C" fn(*mut Ptr, usize, c_uint) -> c_int,
    mem_host_get_device_pointer: unsafe extern "C" fn(*mut u64, Ptr, c_uint) -> c_int,
    stream_create: unsafe extern "C" fn(*mut Ptr, c_uint) -> c_int,
    stream_synchronize: unsafe extern "C" fn(Ptr) -> c_int,
    stream_destroy: unsafe extern "C" fn(Ptr) -> c_int,
    mem_alloc_async: unsafe extern "C" fn(*mut u64, usize, Ptr) -> c_int,
    mem_free_async: unsafe extern "C" fn(u64, Ptr) -> c_int,
    device_get_mem_pool: unsafe extern "C" fn(*mut Ptr, c_int) -> c_int,
    mem_pool_trim_to: unsafe extern "C" fn(Ptr, usize) -> c_int,
    mem_get_allocation_granularity: unsafe extern "C" fn(*mut usize, *const cu::CUmemAllocationProp, c_uint) -> c_int,
    mem_create: unsafe extern "C" fn(*mut u64, usize, *const cu::CUmemAllocationProp, u64) -> c_int,
    mem_release: unsafe extern "C" fn(u64) -> c_int,
    mem_address_reserve: unsafe extern "C" fn(*mut u64, usize, usize, u64, u64) -> c_int,
    mem_address_free: unsafe extern "C" fn(u64, usize) -> c_int,
    mem_map: unsafe extern "C" fn(u64, usize, usize, u64, u64) -> c_int,
    mem_unmap: unsafe extern "C" fn(u64, usize) -> c_int,
    mem_set_access: unsafe extern "C" fn(u64, usize, *const cu::CUmemAccessDesc, usize) -> c_int,
    pointer_get_attribute: unsafe extern "C" fn(Ptr, c_int, u64) -> c_int,
    pointer_get_attributes: unsafe extern "C" fn(c_uint, *mut c_int, *mut Ptr, u64) -> c_int,
    device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int,
    device_can_access_peer: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int,
    ctx_push: unsafe extern "C" fn(Ptr) -> c_int,
    ctx_pop: unsafe extern "C" fn(*mut Ptr) -> c_int,
    /// Used only by the CHECK_FAILED attempts: a missing one disables that attempt alone.
    breakers: Breakers,
}

/// Driver functions that only the attempts to make the pointer query fail call. Each is
/// optional: a driver without it skips that attempt, not the whole program.
#[derive(Clone, Copy)]
struct Breakers {
    module_load_data: Option<unsafe extern "C" fn(*mut Ptr, *const c_void) -> c_int>,
    module_get_function: Option<unsafe extern "C" fn(*mut Ptr, Ptr, *const c_char) -> c_int>,
    #[allow(clippy::type_complexity)]
    launch_kernel: Option<
        unsafe extern "C" fn(Ptr, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Ptr, *mut Ptr, *mut Ptr) -> c_int,
    >,
    primary_ctx_reset: Option<unsafe extern "C" fn(c_int) -> c_int>,
    /// `cuCtxCreate_v2(ctx, flags, dev)`.
    ctx_create_v2: Option<unsafe extern "C" fn(*mut Ptr, c_uint, c_int) -> c_int>,
    /// `cuCtxCreate_v4(ctx, params, flags, dev)` (CUDA 12.5+), with params NULL.
    ctx_create_v4: Option<unsafe extern "C" fn(*mut Ptr, Ptr, c_uint, c_int) -> c_int>,
    ctx_destroy: Option<unsafe extern "C" fn(Ptr) -> c_int>,
}

/// Looks a function up by name. `T` must be its true C signature (enums read as integers).
unsafe fn sym<T: Copy>(lib: &'static libloading::Library, name: &'static str) -> Result<T, String> {
    lib.get::<T>(name)
        .map(|s| *s)
        .map_err(|_| format!("the CUDA driver library has no symbol {name} (a stub or fake libcuda?)"))
}

impl Cuda {
    /// Finds the driver library the way the library does and resolves every symbol. Calls
    /// nothing.
    fn load() -> Result<Cuda, String> {
        // SAFETY: dlopen of the driver library. cudarc panics when it is missing: ask first.
        if !unsafe { cu::is_culib_present() } {
            return Err("no CUDA driver library (libcuda.so) could be loaded".into());
        }
        let lib = catch_unwind(|| unsafe { cu::culib() })
            .map_err(|_| "cudarc could not load the CUDA driver library".to_string())?;
        // SAFETY: the signatures match cuda.h with every enum and CUresult read as int.
        unsafe {
            Ok(Cuda {
                init: sym(lib, "cuInit")?,
                device_get_count: sym(lib, "cuDeviceGetCount")?,
                device_get: sym(lib, "cuDeviceGet")?,
                device_get_name: sym(lib, "cuDeviceGetName")?,
                driver_get_version: sym(lib, "cuDriverGetVersion")?,
                get_error_name: sym(lib, "cuGetErrorName")?,
                primary_ctx_retain: sym(lib, "cuDevicePrimaryCtxRetain")?,
                primary_ctx_release: sym(lib, "cuDevicePrimaryCtxRelease_v2")?,
                primary_ctx_get_state: sym(lib, "cuDevicePrimaryCtxGetState")?,
                ctx_set_current: sym(lib, "cuCtxSetCurrent")?,
                ctx_get_current: sym(lib, "cuCtxGetCurrent")?,
                ctx_synchronize: sym(lib, "cuCtxSynchronize")?,
                mem_alloc: sym(lib, "cuMemAlloc_v2")?,
                mem_free: sym(lib, "cuMemFree_v2")?,
                mem_alloc_managed: sym(lib, "cuMemAllocManaged")?,
                mem_alloc_host: sym(lib, "cuMemAllocHost_v2")?,
                mem_free_host: sym(lib, "cuMemFreeHost")?,
                mem_host_register: sym(lib, "cuMemHostRegister_v2")?,
                mem_host_unregister: sym(lib, "cuMemHostUnregister")?,
                mem_host_alloc: sym(lib, "cuMemHostAlloc")?,
                mem_host_get_device_pointer: sym(lib, "cuMemHostGetDevicePointer_v2")?,
                stream_create: sym(lib, "cuStreamCreate")?,
                stream_synchronize: sym(lib, "cuStreamSynchronize")?,
                stream_destroy: sym(lib, "cuStreamDestroy_v2")?,
                mem_alloc_async: sym(lib, "cuMemAllocAsync")?,
                mem_free_async: sym(lib, "cuMemFreeAsync")?,
                device_get_mem_pool: sym(lib, "cuDeviceGetMemPool")?,
                mem_pool_trim_to: sym(lib, "cuMemPoolTrimTo")?,
                mem_get_allocation_granularity: sym(lib, "cuMemGetAllocationGranularity")?,
                mem_create: sym(lib, "cuMemCreate")?,
                mem_release: sym(lib, "cuMemRelease")?,
                mem_address_reserve: sym(lib, "cuMemAddressReserve")?,
                mem_address_free: sym(lib, "cuMemAddressFree")?,
                mem_map: sym(lib, "cuMemMap")?,
                mem_unmap: sym(lib, "cuMemUnmap")?,
                mem_set_access: sym(lib, "cuMemSetAccess")?,
                pointer_get_attribute: sym(lib, "cuPointerGetAttribute")?,
                pointer_get_attributes: sym(lib, "cuPointerGetAttributes")?,
                device_get_attribute: sym(lib, "cuDeviceGetAttribute")?,
                device_can_access_peer: sym(lib, "cuDeviceCanAccessPeer")?,
                ctx_push: sym(lib, "cuCtxPushCurrent_v2")?,
                ctx_pop: sym(lib, "cuCtxPopCurrent_v2")?,
                breakers: Breakers {
                    module_load_data: sym(lib, "cuModuleLoadData").ok(),
                    module_get_function: sym(lib, "cuModuleGetFunction").ok(),
                    launch_kernel: sym(lib, "cuLaunchKernel").ok(),
                    primary_ctx_reset: sym(lib, "cuDevicePrimaryCtxReset_v2").ok(),
                    ctx_create_v2: sym(lib, "cuCtxCreate_v2").ok(),
                    ctx_create_v4: sym(lib, "cuCtxCreate_v4").ok(),
                    ctx_destroy: sym(lib, "cuCtxDestroy_v2").ok(),
                },
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

    fn device_name(&self, dev: c_int) -> Result<String, String> {
        let mut name = [0 as c_char; 256];
        self.check(
            unsafe { (self.device_get_name)(name.as_mut_ptr(), name.len() as c_int, dev) },
            "cuDeviceGetName",
        )?;
        Ok(unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned())
    }

    fn check(&self, code: c_int, what: &str) -> Result<(), String> {
        if code == 0 {
            Ok(())
        } else {
            Err(format!("{what} failed with {}", self.error_name(code)))
        }
    }

    /// A VMM allocation property for `location` (`id` is the device or NUMA node).
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
        self.check(
            unsafe { (self.mem_get_allocation_granularity)(&mut g, prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) },
            "cuMemGetAllocationGranularity",
        )?;
        if g == 0 {
            return Err("cuMemGetAllocationGranularity returned 0".into());
        }
        Ok(g)
    }
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One scenario's outcome: a line of output and a row of the report's table.
struct Row {
    name: &'static str,
    allocation: String,
    expected: String,
    registration: String,
    check_now: String,
    periodic: String,
    callback: String,
    status: Status,
    saw: String,
    notes: Vec<String>,
    /// The verdicts this scenario saw the library report from real memory, when it passed
    /// (for the "verdicts produced" line).
    shows: Vec<Verdict>,
}

impl Row {
    fn new(name: &'static str, allocation: &str, expected: &str) -> Row {
        Row {
            name,
            allocation: allocation.into(),
            expected: expected.into(),
            registration: "—".into(),
            check_now: "—".into(),
            periodic: "—".into(),
            callback: "—".into(),
            status: Status::Fail,
            saw: "nothing (the scenario did not finish)".into(),
            notes: Vec::new(),
            shows: Vec::new(),
        }
    }

    fn fail(&mut self, why: impl Into<String>) {
        self.status = Status::Fail;
        self.saw = why.into();
    }

    fn line(&self) -> String {
        let mut line = format!(
            "{} {}: expected {}, saw {}",
            self.status.word(),
            self.name,
            self.expected,
            self.saw
        );
        for note in &self.notes {
            let _ = write!(line, "\n     note: {note}");
        }
        line
    }
}

/// What the driver reported for one address, through the library and directly.
struct Probe {
    what: String,
    address: u64,
    library: Result<PointerInfo, String>,
    /// Result of `cuPointerGetAttributes` with the library's 8 attributes, asked directly.
    direct_all: c_int,
    /// `cuPointerGetAttribute(MAPPING_SIZE)` alone: result and value.
    mapping_size: (c_int, u64),
    /// `cuPointerGetAttribute(MAPPING_BASE_ADDR)` alone: result and value.
    mapping_base: (c_int, u64),
}

#[derive(Default)]
struct NoContext {
    /// NVML's figure for this process before and after the monitor ran (bytes; None: not
    /// listed).
    before: Option<Option<u64>>,
    after: Option<Option<u64>>,
    health_source: Option<String>,
    /// The child's report line.
    child: Option<String>,
}

#[derive(Default)]
struct ProcessVramResult {
    monitor_bytes: u64,
    monitor_source: String,
    nvml_bytes: Option<Option<u64>>,
}

struct Timing {
    registrations: usize,
    register_us_each: f64,
    check_min_us: u64,
    check_median_us: u64,
    wall_min_us: u64,
    empty_min_us: u64,
    nvml_min_us: u64,
    resident: u64,
    passes: usize,
}

// ---------------------------------------------------------------------------------------------
// The engine side: the GPU, its context, and the memory it allocates

struct Gpu {
    cu: Cuda,
    dev: c_int,
    name: String,
    /// `cuDeviceGetCount`, and every device's name (index = ordinal).
    device_count: c_int,
    device_names: Vec<String>,
    driver_version: c_int,
    /// VMM chunk: a multiple of the device (and, where supported, host) granularity.
    chunk: usize,
    host_vmm: Result<(), String>,
    nvml: Result<nvml_wrapper::Nvml, String>,
    probes: RefCell<Vec<Probe>>,
    no_context: RefCell<NoContext>,
    process_vram: RefCell<Option<ProcessVramResult>>,
    /// What each attempt to make the driver's pointer query fail did.
    check_failed: RefCell<Vec<Attempt>>,
}

impl Gpu {
    fn call(&self, code: c_int, what: &str) -> Result<(), String> {
        self.cu.check(code, what)
    }

    fn alloc(&self, size: usize) -> Result<DevMem<'_>, String> {
        let mut ptr = 0u64;
        self.call(unsafe { (self.cu.mem_alloc)(&mut ptr, size) }, "cuMemAlloc_v2")?;
        Ok(DevMem {
            gpu: self,
            ptr,
            live: true,
        })
    }

    /// Records what the driver says about `address`, through the library's `Driver` and
    /// with direct calls, for the report's raw-attribute table.
    fn probe(&self, what: impl Into<String>, address: u64) {
        let library = CudaDriver::get()
            .map_err(|e| e.to_string())
            .and_then(|driver| driver.pointer_info(address).map_err(|e| e.to_string()));

        let (mut t, mut m, mut o, mut b, mut rs, mut rz, mut ms, mut mb) =
            (0u32, 0u32, -2i32, 0u64, 0u64, 0usize, 0usize, 0u64);
        let mut attributes = [
            ATTR_MEMORY_TYPE,
            ATTR_IS_MANAGED,
            ATTR_DEVICE_ORDINAL,
            ATTR_BUFFER_ID,
            ATTR_RANGE_START_ADDR,
            ATTR_RANGE_SIZE,
            ATTR_MAPPING_SIZE,
            ATTR_MAPPING_BASE_ADDR,
        ];
        let mut data: [Ptr; 8] = [
            (&mut t as *mut u32).cast(),
            (&mut m as *mut u32).cast(),
            (&mut o as *mut i32).cast(),
            (&mut b as *mut u64).cast(),
            (&mut rs as *mut u64).cast(),
            (&mut rz as *mut usize).cast(),
            (&mut ms as *mut usize).cast(),
            (&mut mb as *mut u64).cast(),
        ];
        // SAFETY: each slot points at a live local of the attribute's C type.
        let direct_all =
            unsafe { (self.cu.pointer_get_attributes)(8, attributes.as_mut_ptr(), data.as_mut_ptr(), address) };
        let mut size_alone: usize = 0;
        let size_code = unsafe {
            (self.cu.pointer_get_attribute)((&mut size_alone as *mut usize).cast(), ATTR_MAPPING_SIZE, address)
        };
        let mut base_alone: u64 = 0;
        let base_code = unsafe {
            (self.cu.pointer_get_attribute)((&mut base_alone as *mut u64).cast(), ATTR_MAPPING_BASE_ADDR, address)
        };
        self.probes.borrow_mut().push(Probe {
            what: what.into(),
            address,
            library,
            direct_all,
            mapping_size: (size_code, size_alone as u64),
            mapping_base: (base_code, base_alone),
        });
    }

    /// NVML's figure for this process, summed over every GPU: Ok(None) when NVML does not
    /// list it on any.
    fn nvml_process_bytes(&self) -> Result<Option<u64>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        nvml_bytes_for(nvml, std::process::id())
    }
}

/// NVML's figure for `pid` summed over every GPU (NVML's index order need not be CUDA's, so
/// on a machine with several GPUs "device 0" in one is not device 0 in the other; the library
/// sums the same way).
fn nvml_bytes_for(nvml: &nvml_wrapper::Nvml, pid: u32) -> Result<Option<u64>, String> {
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML device_count: {e}"))?;
    let mut total = None;
    for index in 0..count {
        let device = nvml
            .device_by_index(index)
            .map_err(|e| format!("NVML device_by_index({index}): {e}"))?;
        let processes = device
            .running_compute_processes()
            .map_err(|e| format!("NVML running_compute_processes (device {index}): {e}"))?;
        for process in processes.iter().filter(|p| p.pid == pid) {
            match process.used_gpu_memory {
                nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) => *total.get_or_insert(0) += bytes,
                nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => {
                    return Err("NVML lists this process but not its memory".into())
                }
            }
        }
    }
    Ok(total)
}

fn init_nvml() -> Result<nvml_wrapper::Nvml, String> {
    match catch_unwind(nvml_wrapper::Nvml::init) {
        Ok(Ok(nvml)) => Ok(nvml),
        Ok(Err(e)) => Err(format!("NVML init failed: {e}")),
        Err(_) => Err("NVML init panicked".into()),
    }
}

/// A `cuMemAlloc` allocation, freed on drop unless freed already.
struct DevMem<'a> {
    gpu: &'a Gpu,
    ptr: u64,
    live: bool,
}

impl DevMem<'_> {
    fn free(&mut self) -> Result<(), String> {
        if self.live {
            self.live = false;
            self.gpu
                .call(unsafe { (self.gpu.cu.mem_free)(self.ptr) }, "cuMemFree_v2")?;
        }
        Ok(())
    }
}

impl Drop for DevMem<'_> {
    fn drop(&mut self) {
        let _ = self.free();
    }
}

/// One VMM address reservation of `slots` chunks, each of which may hold a mapping. Unmaps,
/// releases and frees everything on drop.
struct Vmm<'a> {
    gpu: &'a Gpu,
    base: u64,
    chunk: usize,
    handles: Vec<Option<u64>>,
}

impl<'a> Vmm<'a> {
    fn reserve(gpu: &'a Gpu, slots: usize) -> Result<Vmm<'a>, String> {
        let chunk = gpu.chunk;
        let mut base = 0u64;
        gpu.call(
            unsafe { (gpu.cu.mem_address_reserve)(&mut base, chunk * slots, 0, 0, 0) },
            "cuMemAddressReserve",
        )?;
        Ok(Vmm {
            gpu,
            base,
            chunk,
            handles: vec![None; slots],
        })
    }

    fn addr(&self, slot: usize) -> u64 {
        self.base + (slot * self.chunk) as u64
    }

    /// Creates physical memory at `location` (one chunk). Err carries the raw code.
    fn create(&self, location: cu::CUmemLocationType, id: c_int) -> Result<u64, c_int> {
        let prop = Cuda::prop(location, id);
        let mut handle = 0u64;
        match unsafe { (self.gpu.cu.mem_create)(&mut handle, self.chunk, &prop, 0) } {
            0 => Ok(handle),
            code => Err(code),
        }
    }

    fn create_device(&self) -> Result<u64, String> {
        self.create(cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, self.gpu.dev)
            .map_err(|code| {
                format!(
                    "cuMemCreate(location DEVICE) failed with {}",
                    self.gpu.cu.error_name(code)
                )
            })
    }

    /// Host-located physical memory: location HOST, else HOST_NUMA node 0. Returns the
    /// handle and the location used; Err says why neither worked.
    fn create_host(&self) -> Result<(u64, &'static str), String> {
        match self.create(cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST, 0) {
            Ok(h) => Ok((h, "HOST")),
            Err(host) => match self.create(cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA, 0) {
                Ok(h) => Ok((h, "HOST_NUMA node 0")),
                Err(numa) => Err(format!(
                    "cuMemCreate(location HOST) failed with {}, (location HOST_NUMA 0) with {}",
                    self.gpu.cu.error_name(host),
                    self.gpu.cu.error_name(numa)
                )),
            },
        }
    }

    /// Maps `handle` at `slot` and gives the device read/write access. Takes the handle
    /// (released on failure).
    fn map(&mut self, slot: usize, handle: u64) -> Result<(), String> {
        self.map_only(slot, handle)?;
        self.set_access(slot, &[self.gpu.dev])
    }

    /// Maps `handle` at `slot`, giving no access yet. Takes the handle (released on failure).
    fn map_only(&mut self, slot: usize, handle: u64) -> Result<(), String> {
        let cu = &self.gpu.cu;
        let addr = self.addr(slot);
        if let Err(e) = self
            .gpu
            .call(unsafe { (cu.mem_map)(addr, self.chunk, 0, handle, 0) }, "cuMemMap")
        {
            unsafe { (cu.mem_release)(handle) };
            return Err(e);
        }
        self.handles[slot] = Some(handle);
        Ok(())
    }

    /// Gives each of `devices` read/write access to the mapping at `slot`, in one call.
    fn set_access(&self, slot: usize, devices: &[c_int]) -> Result<(), String> {
        let access: Vec<cu::CUmemAccessDesc> = devices
            .iter()
            .map(|&id| cu::CUmemAccessDesc {
                location: cu::CUmemLocation {
                    type_: cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                    id,
                },
                flags: cu::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            })
            .collect();
        self.gpu.call(
            unsafe { (self.gpu.cu.mem_set_access)(self.addr(slot), self.chunk, access.as_ptr(), access.len()) },
            "cuMemSetAccess",
        )
    }

    /// Physical memory on device `dev` (one chunk). If the driver refuses without a context
    /// of that device, tries again with `dev`'s primary context pushed, and returns it
    /// retained (release it after the memory is gone). The string says how it was made.
    fn create_on(&self, dev: c_int) -> Result<(u64, Option<Retained<'a>>, String), String> {
        let location = cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        let first = match self.create(location, dev) {
            Ok(handle) => return Ok((handle, None, format!("cuMemCreate(location DEVICE {dev})"))),
            Err(code) => code,
        };
        let cu = &self.gpu.cu;
        let retained = Retained::primary(self.gpu, dev).map_err(|e| {
            format!(
                "cuMemCreate(location DEVICE {dev}) failed with {}; {e}",
                cu.error_name(first)
            )
        })?;
        self.gpu
            .call(unsafe { (cu.ctx_push)(retained.ctx) }, "cuCtxPushCurrent_v2")?;
        let second = self.create(location, dev);
        let mut popped: Ptr = std::ptr::null_mut();
        unsafe { (cu.ctx_pop)(&mut popped) };
        match second {
            Ok(handle) => Ok((
                handle,
                Some(retained),
                format!(
                    "cuMemCreate(location DEVICE {dev}) with GPU {dev}'s primary context pushed (without: {})",
                    cu.error_name(first)
                ),
            )),
            Err(code) => Err(format!(
                "cuMemCreate(location DEVICE {dev}) failed with {}, and with GPU {dev}'s primary context pushed with {}",
                cu.error_name(first),
                cu.error_name(code)
            )),
        }
    }

    fn map_device(&mut self, slot: usize) -> Result<(), String> {
        let handle = self.create_device()?;
        self.map(slot, handle)
    }

    /// Unmaps `slot` and releases its memory.
    fn unmap(&mut self, slot: usize) -> Result<(), String> {
        if let Some(handle) = self.handles[slot].take() {
            let cu = &self.gpu.cu;
            self.gpu
                .call(unsafe { (cu.mem_unmap)(self.addr(slot), self.chunk) }, "cuMemUnmap")?;
            self.gpu.call(unsafe { (cu.mem_release)(handle) }, "cuMemRelease")?;
        }
        Ok(())
    }
}

/// A device's primary context, retained by this program; released on drop.
struct Retained<'a> {
    gpu: &'a Gpu,
    dev: c_int,
    ctx: Ptr,
}

impl<'a> Retained<'a> {
    fn primary(gpu: &'a Gpu, dev: c_int) -> Result<Retained<'a>, String> {
        let mut ctx: Ptr = std::ptr::null_mut();
        gpu.call(
            unsafe { (gpu.cu.primary_ctx_retain)(&mut ctx, dev) },
            "cuDevicePrimaryCtxRetain",
        )?;
        Ok(Retained { gpu, dev, ctx })
    }
}

impl Drop for Retained<'_> {
    fn drop(&mut self) {
        unsafe { (self.gpu.cu.primary_ctx_release)(self.dev) };
    }
}

impl Drop for Vmm<'_> {
    fn drop(&mut self) {
        for slot in 0..self.handles.len() {
            let _ = self.unmap(slot);
        }
        unsafe { (self.gpu.cu.mem_address_free)(self.base, self.chunk * self.handles.len()) };
    }
}

// ---------------------------------------------------------------------------------------------
// The library side: monitors, callbacks, and the two ways a change is seen

/// Collects a monitor's events for the test to wait on.
#[derive(Default)]
struct Collector {
    events: Mutex<Vec<Event>>,
    arrived: Condvar,
}

impl Collector {
    fn callback(self: &Arc<Self>) -> Callback {
        let me = Arc::clone(self);
        Arc::new(move |event: &Event| {
            me.events.lock().unwrap_or_else(|e| e.into_inner()).push(event.clone());
            me.arrived.notify_all();
        })
    }

    /// The verdicts of the violation events about `id`, in order.
    fn violations(&self, id: RegistrationId) -> Vec<Verdict> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .filter(|e| e.kind == EventKind::Violation && e.registration_id == id)
            .map(|e| e.verdict)
            .collect()
    }

    /// Every event about `id`, as `kind:VERDICT`, in order ("none" when there is none).
    fn about(&self, id: RegistrationId) -> String {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<String> = events
            .iter()
            .filter(|e| e.registration_id == id)
            .map(|e| format!("{}:{}", e.kind.name(), e.verdict.name()))
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(",")
        }
    }

    /// The message of the first CHECK_FAILED event about `id`.
    fn check_failed_message(&self, id: RegistrationId) -> Option<String> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .find(|e| e.registration_id == id && e.kind == EventKind::CheckFailed)
            .map(|e| e.message.clone())
    }

    /// Waits until any event about `id` has arrived.
    fn wait_about(&self, id: RegistrationId, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if events.iter().any(|e| e.registration_id == id) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            events = self
                .arrived
                .wait_timeout(events, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until a violation event about `id` has arrived.
    fn wait_violation(&self, id: RegistrationId, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if events
                .iter()
                .any(|e| e.kind == EventKind::Violation && e.registration_id == id)
            {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            events = self
                .arrived
                .wait_timeout(events, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn monitor(interval: Duration) -> Result<(Monitor, Arc<Collector>), String> {
    let monitor = Monitor::new(MonitorOptions { interval, ..Default::default() }).map_err(|e| format!("Monitor::new: {e}"))?;
    let collector = Arc::new(Collector::default());
    monitor.set_callback(Some(collector.callback()));
    Ok((monitor, collector))
}

fn verdict_of(monitor: &Monitor, id: RegistrationId) -> Option<Verdict> {
    monitor.registrations().iter().find(|r| r.id == id).map(|r| r.verdict())
}

fn describe(result: &Result<RegistrationId, Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(Error::Refused(v)) => format!("refused: {v}"),
        Err(e) => format!("error: {e}"),
    }
}

fn name_of(v: Option<Verdict>) -> String {
    v.map_or_else(|| "(no registration)".to_string(), |v| v.name().to_string())
}

fn names(vs: &[Verdict]) -> String {
    if vs.is_empty() {
        "none".into()
    } else {
        vs.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// What a scenario's change did.
enum Change {
    /// Done; the scenario's expected verdict stands.
    Done,
    /// Done, but the expected verdict is this one (the reason goes into the notes).
    Expect(Verdict, String),
    /// The driver does not support this change here: the scenario is skipped.
    Unsupported(String),
    /// The change itself failed.
    Failed(String),
}

/// Registers `[ptr, ptr + size)` (expected to be resident) in two monitors, applies
/// `change`, and checks that (a) `check_now` on the first and (b) the periodic thread
/// (50 ms) of the second both find `expected`, each with exactly one violation callback
/// carrying it. The periodic monitor is paused during the change, so it sees only the end
/// state, not a step in between (free-then-reallocate is NOT_MAPPED for a moment).
fn watch_change(row: &mut Row, ptr: u64, size: u64, expected: Verdict, change: impl FnOnce() -> Change) {
    let mut change = Some(change);
    let mut run_change = || change.take().map(|f| f());
    let ((a, ea), (b, eb)) = match (monitor(NEVER), monitor(PERIODIC)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            row.fail(e);
            run_change();
            return;
        }
    };
    let ra = a.register(ptr, size, row.name);
    let rb = b.register(ptr, size, row.name);
    row.registration = describe(&ra);
    let (ida, idb) = match (ra, rb) {
        (Ok(ida), Ok(idb)) => (ida, idb),
        (ra, rb) => {
            row.fail(format!(
                "registration {} (periodic monitor: {})",
                describe(&ra),
                describe(&rb)
            ));
            run_change();
            return;
        }
    };

    let mut problems = Vec::new();
    match a.check_now() {
        Ok(s) if s.violations == 0 && s.check_failures == 0 && s.resident == 1 => {}
        Ok(s) => problems.push(format!("before the change, check_now found {s:?}")),
        Err(e) => problems.push(format!("before the change, check_now failed: {e}")),
    }
    // The periodic thread's own cadence: time three checks after the first.
    if wait_until(PERIODIC_WAIT, || b.health().checks_completed >= 1) {
        let (first, from) = (b.health().checks_completed, Instant::now());
        if wait_until(PERIODIC_WAIT, || b.health().checks_completed >= first + 3) {
            let every = from.elapsed().as_millis() / 3;
            row.notes
                .push(format!("periodic thread: a check every ~{every} ms (interval 50 ms)"));
            if !(25..=1000).contains(&every) {
                problems.push(format!(
                    "the periodic thread checked every ~{every} ms with a 50 ms interval"
                ));
            }
        } else {
            problems.push("the periodic thread stopped checking after its first check".into());
        }
    } else {
        problems.push("the periodic thread completed no check within 3 s of a 50 ms interval".into());
    }
    if verdict_of(&b, idb) != Some(Verdict::Resident) || !eb.violations(idb).is_empty() {
        problems.push(format!(
            "before the change, the periodic thread saw {}",
            name_of(verdict_of(&b, idb))
        ));
    }
    // Pause the periodic monitor; let a sweep in progress finish.
    let _ = b.set_interval(NEVER);
    std::thread::sleep(Duration::from_millis(200));

    let mut expected = expected;
    match run_change().unwrap_or(Change::Failed("no change".into())) {
        Change::Done => {}
        Change::Expect(v, why) => {
            expected = v;
            row.expected = format!("RESIDENT, then {v}");
            row.notes.push(why);
        }
        Change::Unsupported(why) => {
            row.status = Status::Skip;
            row.saw = format!("unsupported here: {why}");
            row.check_now = "unsupported".into();
            row.periodic = "unsupported".into();
            row.callback = "unsupported".into();
            return;
        }
        Change::Failed(why) => {
            row.fail(format!("changing the memory failed: {why}"));
            return;
        }
    }

    // (a) check_now: callbacks for what it finds run before it returns.
    let va = match a.check_now() {
        Ok(_) => verdict_of(&a, ida),
        Err(e) => {
            problems.push(format!("check_now failed: {e}"));
            None
        }
    };
    let cba = ea.violations(ida);
    let health = a.health();
    if health.healthy || health.current_violations != 1 {
        problems.push(format!(
            "health after check_now: healthy={} current_violations={}",
            health.healthy, health.current_violations
        ));
    }

    // (b) the periodic thread, resumed: the next check is due at once.
    let resumed = Instant::now();
    let _ = b.set_interval(PERIODIC);
    let heard = eb.wait_violation(idb, PERIODIC_WAIT);
    let waited = resumed.elapsed();
    std::thread::sleep(Duration::from_millis(120)); // two more sweeps: no second event
    let vb = verdict_of(&b, idb);
    let cbb = eb.violations(idb);

    row.check_now = name_of(va);
    row.periodic = if heard {
        format!("{} ({} ms)", name_of(vb), waited.as_millis())
    } else {
        format!("{} (no callback in {} s)", name_of(vb), PERIODIC_WAIT.as_secs())
    };
    row.callback = format!("check_now: {}; periodic: {}", names(&cba), names(&cbb));
    let pass =
        problems.is_empty() && va == Some(expected) && vb == Some(expected) && cba == [expected] && cbb == [expected];
    row.status = if pass { Status::Pass } else { Status::Fail };
    if pass {
        row.shows = vec![Verdict::Resident, expected];
    }
    row.saw = format!(
        "registered; check_now {}, periodic thread {}; callbacks {}",
        row.check_now, row.periodic, row.callback
    );
    row.notes.extend(problems);
}

/// Registers `[ptr, ptr + size)` and expects the refusal `expected`, leaving nothing
/// registered.
fn expect_refusal(row: &mut Row, ptr: u64, size: u64, expected: Verdict) {
    let (m, events) = match monitor(NEVER) {
        Ok(m) => m,
        Err(e) => return row.fail(e),
    };
    let result = m.register(ptr, size, row.name);
    row.registration = describe(&result);
    let registered = m.health().registrations;
    let pass = matches!(result, Err(Error::Refused(v)) if v == expected) && registered == 0;
    row.status = if pass { Status::Pass } else { Status::Fail };
    if pass {
        row.shows = vec![expected];
    }
    row.saw = row.registration.clone();
    if registered != 0 {
        row.notes
            .push(format!("{registered} registrations exist after the call"));
    }
    drop(m);
    let heard = events.events.lock().unwrap_or_else(|e| e.into_inner()).len();
    if heard != 0 {
        row.notes
            .push(format!("{heard} callbacks ran for a refused registration"));
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios

type Scenario = fn(&Gpu, &mut Row) -> Result<(), String>;

/// Every scenario, in the order it runs: (name, allocation, expected, function). The
/// no-context check runs first, so it sees the first monitor this process creates.
const SCENARIOS: &[(&str, &str, &str, Scenario)] = &[
    (
        "no-context-created",
        "cuMemAlloc 64 MiB; engine's primary context current",
        "NVML figure unchanged by the monitor",
        s_no_context_created,
    ),
    (
        "no-context-child",
        "child process without a context: Monitor::new, register, check_now",
        "no primary context, no current context, NVML does not list the child",
        s_no_context_child,
    ),
    (
        "device-freed",
        "cuMemAlloc_v2 2 MiB, then cuMemFree_v2",
        "RESIDENT, then NOT_MAPPED",
        s_device_freed,
    ),
    (
        "device-realloc-same-size",
        "cuMemAlloc_v2 2 MiB, free, cuMemAlloc_v2 2 MiB again",
        "RESIDENT, then REPLACED (NOT_MAPPED if the address is not reused)",
        s_device_realloc,
    ),
    (
        "interior-pointer-freed",
        "cuMemAlloc_v2 2 MiB, register [+4096, +8192), then free",
        "RESIDENT, then NOT_MAPPED",
        s_interior_freed,
    ),
    (
        "past-the-end",
        "cuMemAlloc_v2 2 MiB, register 2 MiB + 4 KiB",
        "refused: OUT_OF_RANGE",
        s_past_the_end,
    ),
    (
        "past-the-end-small",
        "cuMemAlloc_v2 4 KiB, register 8 KiB",
        "refused: OUT_OF_RANGE",
        s_past_the_end_small,
    ),
    (
        "spans-two-adjacent-allocations",
        "two cuMemAlloc_v2 2 MiB allocations that happen to be adjacent, register both as one range",
        "refused: OUT_OF_RANGE",
        s_adjacent_2mib,
    ),
    (
        "spans-two-adjacent-small-allocations",
        "two cuMemAlloc_v2 4 KiB allocations that happen to be adjacent, register both as one range",
        "refused: OUT_OF_RANGE",
        s_adjacent_4kib,
    ),
    (
        "freed-pointer",
        "cuMemAlloc_v2 2 MiB, freed before registering",
        "refused: NOT_MAPPED",
        s_freed_pointer,
    ),
    (
        "managed",
        "cuMemAllocManaged 2 MiB (ATTACH_GLOBAL)",
        "refused: MANAGED",
        s_managed,
    ),
    ("pinned-host", "cuMemAllocHost_v2 2 MiB", "refused: HOST", s_pinned_host),
    (
        "host-registered",
        "malloc (std::alloc, 4 KiB aligned) 2 MiB + cuMemHostRegister_v2",
        "refused: HOST",
        s_host_registered,
    ),
    (
        "host-alloc-devicemap-host-pointer",
        "cuMemHostAlloc(DEVICEMAP) 2 MiB, host pointer",
        "refused: HOST",
        s_hostalloc_host,
    ),
    (
        "host-alloc-devicemap-device-pointer",
        "cuMemHostAlloc(DEVICEMAP) 2 MiB, cuMemHostGetDevicePointer_v2",
        "refused: HOST",
        s_hostalloc_device,
    ),
    (
        "async-freed-and-trimmed",
        "cuMemAllocAsync 2 MiB + stream sync; cuMemFreeAsync, sync, cuMemPoolTrimTo(0)",
        "RESIDENT, then NOT_MAPPED",
        s_async_freed,
    ),
    (
        "vmm-device-unmapped",
        "VMM cuMemCreate(DEVICE) + cuMemMap, then cuMemUnmap + cuMemRelease",
        "RESIDENT, then NOT_MAPPED",
        s_vmm_unmapped,
    ),
    (
        "vmm-device-remapped",
        "VMM DEVICE mapping replaced by a new DEVICE mapping at the same address",
        "RESIDENT, then REPLACED",
        s_vmm_remapped,
    ),
    (
        "vmm-device-replaced-by-host",
        "VMM DEVICE mapping replaced by a HOST-located mapping at the same address",
        "RESIDENT, then HOST",
        s_vmm_to_host,
    ),
    (
        "vmm-host",
        "VMM cuMemCreate(location HOST) + cuMemMap + cuMemSetAccess(device)",
        "refused: HOST",
        s_vmm_host,
    ),
    (
        "vmm-reserved-unmapped",
        "cuMemAddressReserve, nothing mapped",
        "refused: NOT_MAPPED",
        s_vmm_reserved,
    ),
    (
        "vmm-three-mappings-middle-unmapped",
        "one reservation, 3 adjacent DEVICE mappings; register all 3, unmap the middle",
        "RESIDENT, then NOT_MAPPED",
        s_vmm_three,
    ),
    (
        "vmm-range-over-a-hole",
        "one reservation, mappings 1 and 3 of 3; register all 3",
        "refused: OUT_OF_RANGE",
        s_vmm_hole,
    ),
    (
        "wrong-device-vmm-remapped",
        "VMM DEVICE mapping on GPU 0 (registered), replaced at the same address by memory created on GPU 1 (cuMemCreate location DEVICE 1; cuMemSetAccess for GPUs 0 and 1)",
        "RESIDENT, then WRONG_DEVICE",
        s_wrong_device_remapped,
    ),
    (
        "wrong-device-range-spans-two-gpus",
        "one reservation: mapping 1 on GPU 0, mapping 2 on GPU 1; register both",
        "refused: WRONG_DEVICE",
        s_wrong_device_span,
    ),
    (
        "check-failed-real-driver",
        "child processes: cuMemAlloc_v2 2 MiB registered, then the driver broken underneath (attempts in order: sticky illegal address, sticky trap, primary context reset, own context destroyed, process exit)",
        "CHECK_FAILED from check_now and the periodic thread (cuPointerGetAttributes itself fails)",
        s_check_failed,
    ),
    (
        "process-vram-from-nvml",
        "cuMemAlloc_v2 32 MiB registered; health().process_vram",
        "source nvml_process",
        s_process_vram,
    ),
];

fn s_no_context_created(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut engine = g.alloc(64 * MIB)?;
    unsafe { (g.cu.ctx_synchronize)() };
    let before = g.nvml_process_bytes()?;
    let (m, _events) = monitor(NEVER)?;
    let result = m.register(engine.ptr, (64 * MIB) as u64, "engine weights");
    row.registration = describe(&result);
    let summary = m.check_now().map_err(|e| format!("check_now: {e}"))?;
    row.check_now = if summary.violations == 0 && summary.check_failures == 0 {
        "RESIDENT".into()
    } else {
        format!("{summary:?}")
    };
    let health = m.health();
    std::thread::sleep(Duration::from_millis(100));
    let after = g.nvml_process_bytes()?;
    {
        let mut nc = g.no_context.borrow_mut();
        nc.before = Some(before);
        nc.after = Some(after);
        nc.health_source = Some(format!(
            "{} bytes ({})",
            health.process_vram.bytes,
            health.process_vram.source.name()
        ));
    }
    drop(m);
    engine.free()?;
    let show = |v: Option<u64>| {
        v.map_or_else(
            || "not listed".to_string(),
            |b| format!("{} MiB ({b} bytes)", b / MIB as u64),
        )
    };
    row.saw = format!("NVML before {}, after {}", show(before), show(after));
    row.status = if before.is_some() && before == after && result.is_ok() {
        Status::Pass
    } else {
        Status::Fail
    };
    if before.is_none() {
        row.notes
            .push("NVML does not list this process although it holds a context: the check proves nothing".into());
    }
    Ok(())
}

fn s_no_context_child(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, "no-context")
        .env_remove(RESULTS_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the child ran for more than 60 s; killed".into());
            }
            Err(e) => return Err(format!("waiting for the child: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("CHILD-RESULT "))
        .map(|l| l.trim_start_matches("CHILD-RESULT ").to_string());
    g.no_context.borrow_mut().child = line.clone();
    let Some(line) = line else {
        return Err(format!("the child ({status}) printed no result: {out:?}"));
    };
    let field = |key: &str| {
        line.split_whitespace().find_map(|kv| {
            kv.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_string)
        })
    };
    row.registration = field("register").unwrap_or_default();
    row.check_now = field("check_now").unwrap_or_default();
    row.saw = line.clone();
    let pass = status.success()
        && field("primary_active").as_deref() == Some("0")
        && field("current_context").as_deref() == Some("null")
        && field("nvml_listed").as_deref() == Some("no");
    row.status = if pass { Status::Pass } else { Status::Fail };
    Ok(())
}

/// A value without spaces, for the child's `key=value` line.
fn token(s: &str) -> String {
    s.replace(": ", ":").replace(' ', "_")
}

/// The child of `no-context-child`: the library alone, in a process that never made a
/// context. Prints one `CHILD-RESULT key=value ...` line.
fn child_no_context() -> i32 {
    let cuda = match Cuda::load() {
        Ok(c) => c,
        Err(e) => {
            println!("CHILD-RESULT error={}", token(&e));
            return 1;
        }
    };
    let m = match Monitor::new(MonitorOptions { interval: PERIODIC, ..Default::default() }) {
        Ok(m) => m,
        Err(e) => {
            println!("CHILD-RESULT error=Monitor::new:{}", token(&e.to_string()));
            return 1;
        }
    };
    // Host heap memory the driver has never seen: refused, but the driver was asked.
    let host = vec![0u8; 64 * KIB];
    let result = m.register(host.as_ptr() as u64, host.len() as u64, "host heap");
    let check = match m.check_now() {
        Ok(s) => format!("ok({}_checked)", s.checked),
        Err(e) => format!("error:{}", token(&e.to_string())),
    };
    std::thread::sleep(Duration::from_millis(300)); // several periodic sweeps
    let health = m.health();
    drop(m);
    // Every device's primary context: on a machine with several GPUs the library must not
    // have made one on any. `active` counts the active ones; `state` is the first error.
    let mut count: c_int = 0;
    let mut state = unsafe { (cuda.device_get_count)(&mut count) };
    let mut active = 0;
    for ordinal in 0..count {
        let (mut dev, mut flags, mut on) = (0, 0u32, 0i32);
        let code = unsafe { (cuda.device_get)(&mut dev, ordinal) };
        let code = if code == 0 {
            unsafe { (cuda.primary_ctx_get_state)(dev, &mut flags, &mut on) }
        } else {
            code
        };
        if state == 0 {
            state = code;
        }
        active += i32::from(code == 0 && on != 0);
    }
    let mut current: Ptr = std::ptr::null_mut();
    let current_code = unsafe { (cuda.ctx_get_current)(&mut current) };
    let listed = match init_nvml().and_then(|nvml| nvml_bytes_for(&nvml, std::process::id())) {
        Ok(Some(b)) => format!("yes nvml_bytes={b}"),
        Ok(None) => "no".to_string(),
        Err(e) => format!("unknown nvml_error={}", token(&e)),
    };
    println!(
        "CHILD-RESULT register={} check_now={} checks_completed={} process_vram_source={} primary_state_call={} primary_active={} devices={count} current_context={} nvml_listed={}",
        token(&describe(&result)),
        check,
        health.checks_completed,
        health.process_vram.source.name(),
        state,
        active,
        if current_code != 0 { format!("error{current_code}") } else if current.is_null() { "null".into() } else { "SET".into() },
        listed
    );
    0
}

fn s_device_freed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut mem = g.alloc(2 * MIB)?;
    let ptr = mem.ptr;
    g.probe("cuMemAlloc_v2 (2 MiB)", ptr);
    watch_change(row, ptr, (2 * MIB) as u64, Verdict::NotMapped, || match mem.free() {
        Ok(()) => Change::Done,
        Err(e) => Change::Failed(e),
    });
    g.probe("cuMemAlloc_v2, after cuMemFree_v2", ptr);
    Ok(())
}

fn s_device_realloc(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut first = g.alloc(2 * MIB)?;
    let ptr = first.ptr;
    g.probe("cuMemAlloc_v2 (2 MiB), before free and reallocation", ptr);
    let mut second = None;
    watch_change(row, ptr, (2 * MIB) as u64, Verdict::Replaced, || {
        if let Err(e) = first.free() {
            return Change::Failed(e);
        }
        match g.alloc(2 * MIB) {
            Ok(mem) => {
                let same = mem.ptr == ptr;
                let at = mem.ptr;
                second = Some(mem);
                if same {
                    Change::Expect(Verdict::Replaced, format!("address reused: yes ({ptr:#x})"))
                } else {
                    Change::Expect(
                        Verdict::NotMapped,
                        format!("address reused: no (first {ptr:#x}, second {at:#x}); the old address is unmapped"),
                    )
                }
            }
            Err(e) => Change::Failed(e),
        }
    });
    g.probe("cuMemAlloc_v2, freed and reallocated (same size)", ptr);
    drop(second);
    Ok(())
}

fn s_interior_freed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut mem = g.alloc(2 * MIB)?;
    let inner = mem.ptr + 4096;
    g.probe("cuMemAlloc_v2 + 4096 (interior)", inner);
    watch_change(row, inner, 4096, Verdict::NotMapped, || match mem.free() {
        Ok(()) => Change::Done,
        Err(e) => Change::Failed(e),
    });
    Ok(())
}

fn s_past_the_end(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mem = g.alloc(2 * MIB)?;
    g.probe(
        "cuMemAlloc_v2 (2 MiB) + 2 MiB (one past the end)",
        mem.ptr + (2 * MIB) as u64,
    );
    expect_refusal(row, mem.ptr, (2 * MIB + 4 * KIB) as u64, Verdict::OutOfRange);
    Ok(())
}

fn s_past_the_end_small(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mem = g.alloc(4 * KIB)?;
    g.probe("cuMemAlloc_v2 (4 KiB)", mem.ptr);
    g.probe(
        "cuMemAlloc_v2 (4 KiB) + 4 KiB (one past the end)",
        mem.ptr + (4 * KIB) as u64,
    );
    expect_refusal(row, mem.ptr, (8 * KIB) as u64, Verdict::OutOfRange);
    Ok(())
}

/// Allocates `size` bytes up to 64 times until one allocation starts where an earlier one
/// ends, then registers the two as one range: running from one ordinary allocation into the
/// next must be refused, whatever MAPPING_* the driver reports for ordinary memory.
fn adjacent(g: &Gpu, row: &mut Row, size: usize) -> Result<(), String> {
    let mut held: Vec<DevMem<'_>> = Vec::new();
    for _ in 0..64 {
        let mem = g.alloc(size)?;
        let low = if let Some(h) = held.iter().find(|h| h.ptr + size as u64 == mem.ptr) {
            Some(h.ptr)
        } else if held.iter().any(|h| mem.ptr + size as u64 == h.ptr) {
            Some(mem.ptr)
        } else {
            None
        };
        held.push(mem);
        if let Some(low) = low {
            let high = low + size as u64;
            row.notes.push(format!(
                "adjacent allocations at {low:#x} and {high:#x} after {} tries",
                held.len()
            ));
            g.probe(
                format!("cuMemAlloc_v2 ({} KiB), first of two adjacent", size / KIB),
                low,
            );
            g.probe(
                format!("cuMemAlloc_v2 ({} KiB), second of two adjacent", size / KIB),
                high,
            );
            expect_refusal(row, low, 2 * size as u64, Verdict::OutOfRange);
            return Ok(());
        }
    }
    row.status = Status::Skip;
    row.saw = format!("no two adjacent {} KiB allocations in 64 tries", size / KIB);
    Ok(())
}

fn s_adjacent_2mib(g: &Gpu, row: &mut Row) -> Result<(), String> {
    adjacent(g, row, 2 * MIB)
}

fn s_adjacent_4kib(g: &Gpu, row: &mut Row) -> Result<(), String> {
    adjacent(g, row, 4 * KIB)
}

fn s_freed_pointer(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut mem = g.alloc(2 * MIB)?;
    mem.free()?;
    g.probe("freed cuMemAlloc_v2 pointer", mem.ptr);
    expect_refusal(row, mem.ptr, (2 * MIB) as u64, Verdict::NotMapped);
    Ok(())
}

fn s_managed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut ptr = 0u64;
    g.call(
        unsafe { (g.cu.mem_alloc_managed)(&mut ptr, 2 * MIB, CU_MEM_ATTACH_GLOBAL) },
        "cuMemAllocManaged",
    )?;
    let _free = DevMem {
        gpu: g,
        ptr,
        live: true,
    };
    g.probe("cuMemAllocManaged", ptr);
    expect_refusal(row, ptr, (2 * MIB) as u64, Verdict::Managed);
    Ok(())
}

fn s_pinned_host(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut host: Ptr = std::ptr::null_mut();
    g.call(
        unsafe { (g.cu.mem_alloc_host)(&mut host, 2 * MIB) },
        "cuMemAllocHost_v2",
    )?;
    g.probe("cuMemAllocHost_v2", host as u64);
    expect_refusal(row, host as u64, (2 * MIB) as u64, Verdict::Host);
    g.call(unsafe { (g.cu.mem_free_host)(host) }, "cuMemFreeHost")
}

fn s_host_registered(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let layout = std::alloc::Layout::from_size_align(2 * MIB, 4096).map_err(|e| e.to_string())?;
    // SAFETY: non-zero size; freed below with the same layout.
    let host = unsafe { std::alloc::alloc_zeroed(layout) };
    if host.is_null() {
        return Err("host allocation failed".into());
    }
    let registered = g.call(
        unsafe { (g.cu.mem_host_register)(host.cast(), 2 * MIB, 0) },
        "cuMemHostRegister_v2",
    );
    if registered.is_ok() {
        g.probe("malloc + cuMemHostRegister_v2", host as u64);
        expect_refusal(row, host as u64, (2 * MIB) as u64, Verdict::Host);
        unsafe { (g.cu.mem_host_unregister)(host.cast()) };
    }
    unsafe { std::alloc::dealloc(host, layout) };
    registered
}

fn host_alloc_devicemap(g: &Gpu, row: &mut Row, use_device_pointer: bool) -> Result<(), String> {
    let mut host: Ptr = std::ptr::null_mut();
    g.call(
        unsafe { (g.cu.mem_host_alloc)(&mut host, 2 * MIB, CU_MEMHOSTALLOC_DEVICEMAP) },
        "cuMemHostAlloc",
    )?;
    let mut device = 0u64;
    let alias = g.call(
        unsafe { (g.cu.mem_host_get_device_pointer)(&mut device, host, 0) },
        "cuMemHostGetDevicePointer_v2",
    );
    if alias.is_ok() {
        row.notes.push(format!(
            "host pointer {:#x}, device pointer {device:#x} ({})",
            host as u64,
            if device == host as u64 {
                "the same address"
            } else {
                "different addresses"
            }
        ));
        let ptr = if use_device_pointer { device } else { host as u64 };
        g.probe(
            if use_device_pointer {
                "cuMemHostAlloc(DEVICEMAP), device pointer"
            } else {
                "cuMemHostAlloc(DEVICEMAP), host pointer"
            },
            ptr,
        );
        expect_refusal(row, ptr, (2 * MIB) as u64, Verdict::Host);
    }
    g.call(unsafe { (g.cu.mem_free_host)(host) }, "cuMemFreeHost")?;
    alias
}

fn s_hostalloc_host(g: &Gpu, row: &mut Row) -> Result<(), String> {
    host_alloc_devicemap(g, row, false)
}

fn s_hostalloc_device(g: &Gpu, row: &mut Row) -> Result<(), String> {
    host_alloc_devicemap(g, row, true)
}

fn s_async_freed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let cu = &g.cu;
    let mut stream: Ptr = std::ptr::null_mut();
    g.call(
        unsafe { (cu.stream_create)(&mut stream, CU_STREAM_NON_BLOCKING) },
        "cuStreamCreate",
    )?;
    let mut ptr = 0u64;
    let allocated = g
        .call(
            unsafe { (cu.mem_alloc_async)(&mut ptr, 2 * MIB, stream) },
            "cuMemAllocAsync",
        )
        .and_then(|()| g.call(unsafe { (cu.stream_synchronize)(stream) }, "cuStreamSynchronize"));
    if allocated.is_ok() {
        g.probe("cuMemAllocAsync (default pool)", ptr);
        watch_change(row, ptr, (2 * MIB) as u64, Verdict::NotMapped, || {
            let freed = g
                .call(unsafe { (cu.mem_free_async)(ptr, stream) }, "cuMemFreeAsync")
                .and_then(|()| g.call(unsafe { (cu.stream_synchronize)(stream) }, "cuStreamSynchronize"));
            if let Err(e) = freed {
                return Change::Failed(e);
            }
            g.probe(
                "cuMemAllocAsync, after cuMemFreeAsync + stream sync (pool not trimmed)",
                ptr,
            );
            let mut pool: Ptr = std::ptr::null_mut();
            let trimmed = g
                .call(
                    unsafe { (cu.device_get_mem_pool)(&mut pool, g.dev) },
                    "cuDeviceGetMemPool",
                )
                .and_then(|()| g.call(unsafe { (cu.mem_pool_trim_to)(pool, 0) }, "cuMemPoolTrimTo"))
                .and_then(|()| g.call(unsafe { (cu.ctx_synchronize)() }, "cuCtxSynchronize"));
            match trimmed {
                Ok(()) => Change::Done,
                Err(e) => Change::Failed(e),
            }
        });
        g.probe("cuMemAllocAsync, after cuMemPoolTrimTo(0)", ptr);
    }
    unsafe { (cu.stream_destroy)(stream) };
    allocated
}

fn s_vmm_unmapped(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = Vmm::reserve(g, 1)?;
    vmm.map_device(0)?;
    let ptr = vmm.addr(0);
    g.probe("VMM cuMemCreate(DEVICE) + cuMemMap", ptr);
    watch_change(row, ptr, g.chunk as u64, Verdict::NotMapped, || match vmm.unmap(0) {
        Ok(()) => Change::Done,
        Err(e) => Change::Failed(e),
    });
    g.probe("VMM DEVICE mapping, after cuMemUnmap (reservation kept)", ptr);
    Ok(())
}

fn s_vmm_remapped(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = Vmm::reserve(g, 1)?;
    vmm.map_device(0)?;
    let ptr = vmm.addr(0);
    watch_change(row, ptr, g.chunk as u64, Verdict::Replaced, || {
        match vmm.unmap(0).and_then(|()| vmm.map_device(0)) {
            Ok(()) => Change::Done,
            Err(e) => Change::Failed(e),
        }
    });
    g.probe("VMM DEVICE mapping replaced by a new DEVICE mapping", ptr);
    Ok(())
}

fn s_vmm_to_host(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = Vmm::reserve(g, 1)?;
    vmm.map_device(0)?;
    let ptr = vmm.addr(0);
    let chunk = g.chunk as u64;
    watch_change(row, ptr, chunk, Verdict::Host, || {
        if let Err(why) = &g.host_vmm {
            return Change::Unsupported(why.clone());
        }
        // Create the host memory first: if that is unsupported, nothing has changed yet.
        let (handle, location) = match vmm.create_host() {
            Ok(h) => h,
            Err(why) => return Change::Unsupported(why),
        };
        if let Err(e) = vmm.unmap(0) {
            unsafe { (g.cu.mem_release)(handle) };
            return Change::Failed(e);
        }
        match vmm.map(0, handle) {
            Ok(()) => Change::Expect(Verdict::Host, format!("host memory created with location {location}")),
            Err(e) => Change::Failed(format!("mapping the {location} memory: {e}")),
        }
    });
    if row.status != Status::Skip {
        g.probe("VMM DEVICE mapping replaced by a HOST-located mapping", ptr);
    }
    Ok(())
}

fn s_vmm_host(g: &Gpu, row: &mut Row) -> Result<(), String> {
    if let Err(why) = &g.host_vmm {
        row.status = Status::Skip;
        row.saw = format!("unsupported here: {why}");
        return Ok(());
    }
    let mut vmm = Vmm::reserve(g, 1)?;
    let (handle, location) = match vmm.create_host() {
        Ok(h) => h,
        Err(why) => {
            row.status = Status::Skip;
            row.saw = format!("unsupported here: {why}");
            return Ok(());
        }
    };
    vmm.map(0, handle)?;
    row.notes.push(format!("host memory created with location {location}"));
    g.probe(format!("VMM cuMemCreate({location}) + cuMemMap"), vmm.addr(0));
    expect_refusal(row, vmm.addr(0), g.chunk as u64, Verdict::Host);
    Ok(())
}

fn s_vmm_reserved(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let vmm = Vmm::reserve(g, 1)?;
    g.probe("VMM cuMemAddressReserve, nothing mapped", vmm.addr(0));
    expect_refusal(row, vmm.addr(0), g.chunk as u64, Verdict::NotMapped);
    Ok(())
}

fn s_vmm_three(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = Vmm::reserve(g, 3)?;
    for slot in 0..3 {
        vmm.map_device(slot)?;
    }
    let (base, size) = (vmm.addr(0), 3 * g.chunk as u64);
    g.probe("VMM 3 DEVICE mappings: first", base);
    g.probe("VMM 3 DEVICE mappings: middle", vmm.addr(1));
    match CudaDriver::get()
        .map_err(|e| e.to_string())
        .and_then(|d| vram_monitor::inspect::inspect(d, base, size).map_err(|e| e.to_string()))
    {
        Ok(inspection) => row.notes.push(format!(
            "inspect before registering: {} with {} pieces (3 expected)",
            inspection.verdict,
            inspection.pieces().len()
        )),
        Err(e) => row.notes.push(format!("inspect failed: {e}")),
    }
    watch_change(row, base, size, Verdict::NotMapped, || match vmm.unmap(1) {
        Ok(()) => Change::Done,
        Err(e) => Change::Failed(e),
    });
    g.probe("VMM 3 DEVICE mappings: middle, after cuMemUnmap", vmm.addr(1));
    Ok(())
}

fn s_vmm_hole(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut vmm = Vmm::reserve(g, 3)?;
    vmm.map_device(0)?;
    vmm.map_device(2)?;
    expect_refusal(row, vmm.addr(0), 3 * g.chunk as u64, Verdict::OutOfRange);
    Ok(())
}

/// The second GPU, or `None` after marking the row skipped when this machine has one.
fn second_device(g: &Gpu, row: &mut Row) -> Result<Option<c_int>, String> {
    if g.device_count < 2 {
        let why = format!("needs 2 GPUs; this machine has {}", g.device_count);
        row.status = Status::Skip;
        row.saw = format!("nothing ({why})");
        for cell in [&mut row.registration, &mut row.check_now, &mut row.periodic, &mut row.callback] {
            *cell = format!("skipped ({why})");
        }
        return Ok(None);
    }
    let mut dev: c_int = 0;
    g.call(unsafe { (g.cu.device_get)(&mut dev, 1) }, "cuDeviceGet(1)")?;
    // The mapping chunk was sized for GPU 0; GPU 1's memory must fit it exactly.
    let granularity = g
        .cu
        .granularity(&Cuda::prop(cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, dev))?;
    if g.chunk % granularity != 0 {
        return Err(format!(
            "GPU 1's VMM granularity ({} KiB) does not divide the chunk ({} KiB)",
            granularity / KIB,
            g.chunk / KIB
        ));
    }
    let mut can: c_int = 0;
    let code = unsafe { (g.cu.device_can_access_peer)(&mut can, g.dev, dev) };
    row.notes.push(format!(
        "GPU 0 {} / GPU 1 {}; cuDeviceCanAccessPeer(0, 1): {}",
        g.device_names.first().map_or("?", String::as_str),
        g.device_names.get(1).map_or("?", String::as_str),
        if code != 0 {
            g.cu.error_name(code)
        } else if can != 0 {
            "yes".into()
        } else {
            "no".into()
        }
    ));
    Ok(Some(dev))
}

/// Gives GPU 0 (the engine's) and `other` access to the mapping at `slot`; where the driver
/// refuses GPU 0 access to another GPU's memory (no peer access), `other` alone.
fn grant_access(g: &Gpu, vmm: &Vmm<'_>, slot: usize, other: c_int) -> Result<String, String> {
    match vmm.set_access(slot, &[g.dev, other]) {
        Ok(()) => Ok("cuMemSetAccess for GPUs 0 and 1".into()),
        Err(both) => match vmm.set_access(slot, &[other]) {
            Ok(()) => Ok(format!("cuMemSetAccess for GPU 1 only (for GPUs 0 and 1: {both})")),
            Err(one) => Err(format!("cuMemSetAccess for GPUs 0 and 1: {both}; for GPU 1 alone: {one}")),
        },
    }
}

fn s_wrong_device_remapped(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let Some(other) = second_device(g, row)? else {
        return Ok(());
    };
    // Declared before the reservation, so dropped after it.
    let mut retained: Option<Retained<'_>> = None;
    let mut vmm = Vmm::reserve(g, 1)?;
    vmm.map_device(0)?;
    let ptr = vmm.addr(0);
    watch_change(row, ptr, g.chunk as u64, Verdict::WrongDevice, || {
        // GPU 1's memory first: if it cannot be made, nothing has changed yet.
        let (handle, context, how) = match vmm.create_on(other) {
            Ok(v) => v,
            Err(e) => return Change::Failed(e),
        };
        retained = context;
        if let Err(e) = vmm.unmap(0) {
            unsafe { (g.cu.mem_release)(handle) };
            return Change::Failed(e);
        }
        if let Err(e) = vmm.map_only(0, handle) {
            return Change::Failed(format!("mapping GPU 1's memory: {e}"));
        }
        match grant_access(g, &vmm, 0, other) {
            Ok(access) => Change::Expect(Verdict::WrongDevice, format!("GPU 1's memory: {how}; {access}")),
            Err(e) => Change::Failed(e),
        }
    });
    if row.status != Status::Skip {
        g.probe("VMM mapping on GPU 0 replaced by memory created on GPU 1", ptr);
    }
    drop(vmm);
    drop(retained);
    Ok(())
}

fn s_wrong_device_span(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let Some(other) = second_device(g, row)? else {
        return Ok(());
    };
    let mut vmm = Vmm::reserve(g, 2)?;
    vmm.map_device(0)?;
    let (handle, retained, how) = vmm.create_on(other)?;
    vmm.map_only(1, handle)?;
    let access = grant_access(g, &vmm, 1, other)?;
    row.notes.push(format!("second mapping: {how}; {access}"));
    g.probe("VMM 2 mappings: first, on GPU 0", vmm.addr(0));
    g.probe("VMM 2 mappings: second, memory created on GPU 1", vmm.addr(1));
    expect_refusal(row, vmm.addr(0), 2 * g.chunk as u64, Verdict::WrongDevice);
    drop(vmm);
    drop(retained);
    Ok(())
}

fn s_process_vram(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mem = g.alloc(32 * MIB)?;
    let (m, _events) = monitor(NEVER)?;
    let result = m.register(mem.ptr, (32 * MIB) as u64, "process vram");
    row.registration = describe(&result);
    m.check_now().map_err(|e| format!("check_now: {e}"))?;
    let vram = m.health().process_vram;
    let nvml = g.nvml_process_bytes();
    row.check_now = format!("{} bytes ({})", vram.bytes, vram.source.name());
    row.saw = format!(
        "source {}, {} MiB; NVML read by the test: {}",
        vram.source.name(),
        vram.bytes / MIB as u64,
        match &nvml {
            Ok(Some(b)) => format!("{} MiB", b / MIB as u64),
            Ok(None) => "not listed".into(),
            Err(e) => e.clone(),
        }
    );
    *g.process_vram.borrow_mut() = Some(ProcessVramResult {
        monitor_bytes: vram.bytes,
        monitor_source: vram.source.name().into(),
        nvml_bytes: nvml.ok(),
    });
    row.status = if vram.source == VramSource::NvmlProcess && vram.bytes > 0 {
        Status::Pass
    } else {
        Status::Fail
    };
    Ok(())
}

/// Times full checks of ~1000 registrations (a measurement, not an assertion).
fn measure(g: &Gpu) -> Result<Timing, String> {
    const N: usize = 1000;
    const PASSES: usize = 7;
    let mut memory = Vec::with_capacity(N);
    for _ in 0..N {
        memory.push(g.alloc(4 * KIB)?);
    }
    let (m, _events) = monitor(NEVER)?;
    let started = Instant::now();
    for (i, mem) in memory.iter().enumerate() {
        m.register(mem.ptr, (4 * KIB) as u64, &format!("tensor.{i}"))
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

// ---------------------------------------------------------------------------------------------
// CHECK_FAILED from the real driver: break the driver under a registered buffer, in a child

/// The ways tried to make the real driver fail `cuPointerGetAttributes` on a registered
/// buffer, in order: (name, what is done after the buffer is registered). Each runs in a child
/// process of its own (this program again, with `VRAM_MONITOR_GPU_CHILD=check-failed:<name>`),
/// so the engine process is unaffected.
const ATTEMPTS: &[(&str, &str)] = &[
    (
        "sticky-illegal-address",
        "a kernel stores to address 0 (PTX, cuModuleLoadData + cuLaunchKernel), then cuCtxSynchronize: a sticky error in the context that owns the buffer",
    ),
    (
        "sticky-trap",
        "a kernel executes `trap`, then cuCtxSynchronize: a sticky launch failure in the context that owns the buffer",
    ),
    (
        "primary-context-reset",
        "cuDevicePrimaryCtxReset_v2 on the engine's primary context, which owns the buffer",
    ),
    (
        "context-destroyed",
        "the buffer allocated in a context of its own (cuCtxCreate), then cuCtxDestroy_v2 of that context",
    ),
    (
        "driver-shutting-down",
        "the process exits; the checks run in an atexit handler registered before the driver was loaded, so after the driver's own exit-time handlers",
    ),
];

/// How long one attempt's child may run (all of them together stay within the 90 s limit).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(15);

/// Two kernels for the sticky-error attempts; the `.version`/`.target` header is put in front.
const BAD_KERNELS_PTX: &str = "
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

const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// A PTX ISA version that knows `sm_<cc>` (the JIT rejects a target newer than the ISA).
fn ptx_isa_for(cc: c_int) -> &'static str {
    match cc {
        100.. => "8.8",
        90.. => "7.8",
        89 => "7.8",
        86..=88 => "7.1",
        80..=85 => "7.0",
        _ => "6.0",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The driver failed the query and both `check_now` and the periodic thread reported
    /// CHECK_FAILED.
    Produced,
    /// The driver failed the query, but the monitor did not report CHECK_FAILED: a library bug.
    Missed,
    /// The driver answered the query: this way does not make it fail.
    Answered,
    /// What was to break the driver did not happen (the kernel ran cleanly, a symbol is
    /// missing, ...).
    NotTriggered,
    /// The attempt itself could not run (the child failed, crashed or hung).
    Broken,
}

impl Outcome {
    fn words(self) -> &'static str {
        match self {
            Outcome::Produced => "CHECK_FAILED produced",
            Outcome::Missed => "the driver failed the query but the monitor did NOT report CHECK_FAILED",
            Outcome::Answered => "the driver answered the query (no failure)",
            Outcome::NotTriggered => "not triggered",
            Outcome::Broken => "could not run",
        }
    }
}

/// What one attempt did and saw.
struct Attempt {
    name: &'static str,
    what: &'static str,
    outcome: Outcome,
    /// The driver's answers to the calls that were to break it.
    trigger: String,
    /// `cuPointerGetAttributes` (the library's 8 attributes) on the buffer afterwards.
    query: String,
    /// `CudaDriver::pointer_info` on the buffer afterwards.
    library: String,
    check_now: String,
    periodic: String,
    /// Why it could not run, or anything else worth saying.
    detail: String,
}

impl Attempt {
    fn new(name: &'static str, what: &'static str) -> Attempt {
        Attempt {
            name,
            what,
            outcome: Outcome::Broken,
            trigger: "—".into(),
            query: "—".into(),
            library: "—".into(),
            check_now: "—".into(),
            periodic: "—".into(),
            detail: String::new(),
        }
    }

    fn note(&self) -> String {
        let mut note = format!(
            "attempt {}: {}; trigger: {}; cuPointerGetAttributes: {}; check_now: {}; periodic: {}",
            self.name,
            self.outcome.words(),
            self.trigger,
            self.query,
            self.check_now,
            self.periodic
        );
        if !self.detail.is_empty() {
            let _ = write!(note, "; {}", self.detail);
        }
        note
    }
}

/// A child process's run: its exit status (None: killed after the limit) and output.
struct ChildRun {
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
}

impl ChildRun {
    /// The `CHILD-FIELD key value` lines, if the child got as far as `CHILD-RESULT done`.
    fn fields(&self) -> Option<Vec<(String, String)>> {
        if !self.stdout.lines().any(|l| l == "CHILD-RESULT done") {
            return None;
        }
        Some(
            self.stdout
                .lines()
                .filter_map(|l| l.strip_prefix("CHILD-FIELD "))
                .map(|l| match l.split_once(' ') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (l.to_string(), String::new()),
                })
                .collect(),
        )
    }

    /// Exit status, the last step the child reported, and the end of its stderr.
    fn describe(&self) -> String {
        let status = match &self.status {
            Some(s) => format!("child {s}"),
            None => format!("child killed after {} s", ATTEMPT_LIMIT.as_secs()),
        };
        let step = self
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("CHILD-STEP "))
            .next_back()
            .unwrap_or("none");
        let err: Vec<&str> = self.stderr.lines().rev().take(3).collect();
        let mut text = format!("{status}; last step: {step}");
        if !err.is_empty() {
            let err: Vec<&str> = err.into_iter().rev().collect();
            let _ = write!(text, "; stderr: {}", err.join(" / "));
        }
        text
    }
}

/// Runs this program as the child `which`, for at most `limit`.
fn run_child(which: &str, limit: Duration) -> Result<ChildRun, String> {
    use std::io::Read;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, which)
        .env_remove(RESULTS_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for the child: {e}"));
            }
        }
    };
    Ok(ChildRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads one attempt's child output into an [`Attempt`].
fn judge_attempt(name: &'static str, what: &'static str, run: &ChildRun) -> Attempt {
    let mut attempt = Attempt::new(name, what);
    let Some(fields) = run.fields() else {
        attempt.detail = format!("no result: {}", run.describe());
        return attempt;
    };
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(error) = get("error") {
        attempt.detail = format!("{error} ({})", run.describe());
        return attempt;
    }
    attempt.trigger = get("trigger").unwrap_or("—").to_string();
    if let Some(before) = get("before").filter(|b| *b != "ok") {
        attempt.detail = format!("before the change: {before}");
        return attempt;
    }
    let code = |key: &str| get(key).and_then(|v| v.parse::<c_int>().ok());
    let (Some(here), Some(thread)) = (code("query_here"), code("query_thread")) else {
        attempt.detail = format!("the child reported no query result ({})", run.describe());
        return attempt;
    };
    attempt.query = format!(
        "{} on the thread that broke it; {} on a thread without a context",
        get("query_here_name").unwrap_or("?"),
        get("query_thread_name").unwrap_or("?")
    );
    attempt.library = get("library").unwrap_or("—").to_string();
    attempt.check_now = format!(
        "{}; events {}; {}; registration's verdict {}",
        get("check_now").unwrap_or("?"),
        get("a_events").unwrap_or("?"),
        get("a_health").unwrap_or("?"),
        get("a_verdict").unwrap_or("?")
    );
    attempt.periodic = format!(
        "events {} ({}); {}; registration's verdict {}",
        get("b_events").unwrap_or("?"),
        get("b_waited").unwrap_or("?"),
        get("b_health").unwrap_or("?"),
        get("b_verdict").unwrap_or("?")
    );
    if let Some(message) = get("a_message").filter(|m| *m != "—") {
        attempt.detail = format!("callback message: {message}");
    }
    let failed_health = "healthy false, last_check_failed true";
    // Once the library's exit hook has run (the process is exiting), no callback may run:
    // there CHECK_FAILED must reach the summary and the snapshots, and no event the host.
    let exiting = get("exiting") == Some("yes");
    let reported_to = |events: Option<&str>| {
        if exiting {
            events == Some("none")
        } else {
            events.is_some_and(|e| e.split(',').any(|x| x == "check_failed:CHECK_FAILED"))
        }
    };
    let check_now_reported =
        code("check_failures").unwrap_or(0) >= 1 && reported_to(get("a_events")) && get("a_health") == Some(failed_health);
    let periodic_reported = reported_to(get("b_events")) && get("b_health") == Some(failed_health);
    if exiting {
        let _ = write!(
            attempt.detail,
            "{}during exit, after the library's exit hook: reported by the summary and both snapshots, no callback (the exit contract)",
            if attempt.detail.is_empty() { "" } else { "; " }
        );
    }
    // The monitor thread has no context current: the query that matters is the one from a
    // thread without one.
    let driver_failed = thread != 0;
    attempt.outcome = if check_now_reported && periodic_reported {
        Outcome::Produced
    } else if driver_failed {
        Outcome::Missed
    } else if get("triggered") == Some("yes") {
        if here != 0 {
            let _ = write!(
                attempt.detail,
                "{}the query fails only with the broken context current; the monitor's thread has none",
                if attempt.detail.is_empty() { "" } else { "; " }
            );
        }
        Outcome::Answered
    } else {
        Outcome::NotTriggered
    };
    attempt
}

fn s_check_failed(g: &Gpu, row: &mut Row) -> Result<(), String> {
    let mut attempts = Vec::new();
    for &(name, what) in ATTEMPTS {
        let attempt = match run_child(&format!("check-failed:{name}"), ATTEMPT_LIMIT) {
            Ok(run) => judge_attempt(name, what, &run),
            Err(e) => {
                let mut a = Attempt::new(name, what);
                a.detail = e;
                a
            }
        };
        row.notes.push(attempt.note());
        attempts.push(attempt);
    }
    let with = |o: Outcome| attempts.iter().filter(|a| a.outcome == o).map(|a| a.name).collect::<Vec<_>>();
    let (produced, missed, broken) = (with(Outcome::Produced), with(Outcome::Missed), with(Outcome::Broken));
    row.registration = if attempts.iter().any(|a| a.outcome != Outcome::Broken) {
        "ok (in each child)".into()
    } else {
        "—".into()
    };
    if !missed.is_empty() {
        row.status = Status::Fail;
        row.saw = format!(
            "the driver failed the query after {} but the monitor did not report CHECK_FAILED (library bug; see the attempts)",
            missed.join(", ")
        );
        row.check_now = "no CHECK_FAILED".into();
        row.periodic = "no CHECK_FAILED".into();
    } else if !produced.is_empty() {
        row.status = Status::Pass;
        row.shows = vec![Verdict::CheckFailed];
        row.saw = format!(
            "CHECK_FAILED from check_now and the periodic thread after {}",
            produced.join(", ")
        );
        row.check_now = format!("CHECK_FAILED ({})", produced.join(", "));
        row.periodic = row.check_now.clone();
        row.callback = "check_now: check_failed; periodic: check_failed".into();
    } else if !broken.is_empty() {
        row.status = Status::Fail;
        row.saw = format!(
            "no attempt produced CHECK_FAILED, and {} could not run (see the attempts)",
            broken.join(", ")
        );
    } else {
        row.status = Status::Skip;
        let answers: Vec<String> = attempts
            .iter()
            .map(|a| format!("{}: {}", a.name, a.outcome.words()))
            .collect();
        row.saw = format!(
            "not producible on this driver: it answered cuPointerGetAttributes after every attempt ({})",
            answers.join("; ")
        );
        row.check_now = "not producible on this driver".into();
        row.periodic = row.check_now.clone();
    }
    *g.check_failed.borrow_mut() = attempts;
    Ok(())
}

// The child side.

extern "C" {
    fn atexit(function: extern "C" fn()) -> c_int;
    fn _exit(status: c_int) -> !;
}

/// What the child set up, kept until the checks; a static so that the atexit handler of
/// `driver-shutting-down` can reach it.
struct Staged {
    cuda: Cuda,
    ptr: u64,
    a: Monitor,
    ea: Arc<Collector>,
    ida: RegistrationId,
    b: Monitor,
    eb: Arc<Collector>,
    idb: RegistrationId,
}

static STAGED: Mutex<Option<Staged>> = Mutex::new(None);

fn child_field(key: &str, value: impl std::fmt::Display) {
    println!("CHILD-FIELD {key} {}", value.to_string().replace('\n', " "));
}

fn child_step(text: &str) {
    println!("CHILD-STEP {text}");
    let _ = std::io::stdout().flush();
}

/// `cuPointerGetAttributes` with the library's 8 attributes: the result code alone.
fn query_code(f: unsafe extern "C" fn(c_uint, *mut c_int, *mut Ptr, u64) -> c_int, address: u64) -> c_int {
    let mut slots = [0u64; 8];
    let mut attributes = [
        ATTR_MEMORY_TYPE,
        ATTR_IS_MANAGED,
        ATTR_DEVICE_ORDINAL,
        ATTR_BUFFER_ID,
        ATTR_RANGE_START_ADDR,
        ATTR_RANGE_SIZE,
        ATTR_MAPPING_SIZE,
        ATTR_MAPPING_BASE_ADDR,
    ];
    // Each attribute is at most 8 bytes: one zeroed u64 slot each is large enough.
    let mut data: [Ptr; 8] = std::array::from_fn(|i| (&mut slots[i] as *mut u64).cast());
    unsafe { f(8, attributes.as_mut_ptr(), data.as_mut_ptr(), address) }
}

/// The child of one CHECK_FAILED attempt. Prints `CHILD-STEP`s, `CHILD-FIELD`s and, when it
/// got through, `CHILD-RESULT done`.
fn child_check_failed(attempt: &str) -> i32 {
    match child_check_failed_steps(attempt) {
        Ok(()) => 0,
        Err(e) => {
            child_field("error", e);
            println!("CHILD-RESULT done");
            let _ = std::io::stdout().flush();
            1
        }
    }
}

fn child_check_failed_steps(attempt: &str) -> Result<(), String> {
    let at_exit = attempt == "driver-shutting-down";
    if at_exit {
        // Before the driver library is loaded: handlers run in the reverse order of their
        // registration, so this one runs after every one the driver registers.
        if unsafe { atexit(check_at_exit) } != 0 {
            return Err("atexit refused the handler".into());
        }
    }
    let cuda = Cuda::load()?;
    cuda.check(unsafe { (cuda.init)(0) }, "cuInit")?;
    let mut dev: c_int = 0;
    cuda.check(unsafe { (cuda.device_get)(&mut dev, 0) }, "cuDeviceGet")?;
    // `context-destroyed` allocates in a context of its own; where none can be made, it runs
    // on the primary context and reports itself not triggered.
    let own = if attempt == "context-destroyed" {
        Some(create_context(&cuda, dev))
    } else {
        None
    };
    if !matches!(own, Some(Ok(_))) {
        let mut ctx: Ptr = std::ptr::null_mut();
        cuda.check(
            unsafe { (cuda.primary_ctx_retain)(&mut ctx, dev) },
            "cuDevicePrimaryCtxRetain",
        )?;
        cuda.check(unsafe { (cuda.ctx_set_current)(ctx) }, "cuCtxSetCurrent")?;
    }
    let mut ptr = 0u64;
    cuda.check(unsafe { (cuda.mem_alloc)(&mut ptr, 2 * MIB) }, "cuMemAlloc_v2")?;
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
        ("sticky-illegal-address", _) => sticky_error(&cuda, dev, "vram_monitor_store_to_null"),
        ("sticky-trap", _) => sticky_error(&cuda, dev, "vram_monitor_trap"),
        ("primary-context-reset", _) => match cuda.breakers.primary_ctx_reset {
            Some(reset) => {
                let code = unsafe { reset(dev) };
                (format!("cuDevicePrimaryCtxReset_v2: {}", cuda.error_name(code)), code == 0)
            }
            None => ("the driver has no cuDevicePrimaryCtxReset_v2".to_string(), false),
        },
        ("context-destroyed", Some(Err(why))) => (format!("no context of its own: {why}"), false),
        ("context-destroyed", Some(Ok((ctx, how)))) => match cuda.breakers.ctx_destroy {
            Some(destroy) => {
                let code = unsafe { destroy(ctx) };
                (
                    format!("{how}: CUDA_SUCCESS; cuCtxDestroy_v2: {}", cuda.error_name(code)),
                    code == 0,
                )
            }
            None => ("the driver has no cuCtxDestroy_v2".to_string(), false),
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
extern "C" fn check_at_exit() {
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
fn create_context(cuda: &Cuda, dev: c_int) -> Result<(Ptr, String), String> {
    let mut ctx: Ptr = std::ptr::null_mut();
    let mut said = Vec::new();
    if let Some(create) = cuda.breakers.ctx_create_v2 {
        match unsafe { create(&mut ctx, 0, dev) } {
            0 => return Ok((ctx, "cuCtxCreate_v2".into())),
            code => said.push(format!("cuCtxCreate_v2: {}", cuda.error_name(code))),
        }
    }
    if let Some(create) = cuda.breakers.ctx_create_v4 {
        match unsafe { create(&mut ctx, std::ptr::null_mut(), 0, dev) } {
            0 => return Ok((ctx, "cuCtxCreate_v4".into())),
            code => said.push(format!("cuCtxCreate_v4: {}", cuda.error_name(code))),
        }
    }
    if said.is_empty() {
        said.push("the driver has neither cuCtxCreate_v2 nor cuCtxCreate_v4".into());
    }
    Err(said.join("; "))
}

/// Launches the kernel `entry` of [`BAD_KERNELS_PTX`] and synchronises: what the driver said
/// to each call, and whether the context now holds an error.
fn sticky_error(cuda: &Cuda, dev: c_int, entry: &str) -> (String, bool) {
    let b = cuda.breakers;
    let (Some(load), Some(get), Some(launch)) = (b.module_load_data, b.module_get_function, b.launch_kernel) else {
        return (
            "the driver lacks cuModuleLoadData, cuModuleGetFunction or cuLaunchKernel".into(),
            false,
        );
    };
    let (mut major, mut minor) = (0, 0);
    unsafe {
        (cuda.device_get_attribute)(&mut major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
        (cuda.device_get_attribute)(&mut minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
    }
    let cc = major * 10 + minor;
    let mut targets = vec![(ptx_isa_for(cc), format!("sm_{cc}"))];
    for fallback in [("7.0", "sm_70".to_string()), ("6.0", "sm_50".to_string())] {
        if !targets.contains(&fallback) {
            targets.push(fallback);
        }
    }
    let mut said = Vec::new();
    let mut module: Ptr = std::ptr::null_mut();
    for (isa, target) in &targets {
        let ptx = format!(".version {isa}\n.target {target}\n.address_size 64\n{BAD_KERNELS_PTX}\0");
        let code = unsafe { load(&mut module, ptx.as_ptr().cast()) };
        said.push(format!(
            "cuModuleLoadData(.version {isa} .target {target}): {}",
            cuda.error_name(code)
        ));
        if code == 0 {
            break;
        }
        module = std::ptr::null_mut();
    }
    if module.is_null() {
        return (said.join("; "), false);
    }
    let Ok(name) = std::ffi::CString::new(entry) else {
        return (format!("bad kernel name {entry}"), false);
    };
    let mut function: Ptr = std::ptr::null_mut();
    let code = unsafe { get(&mut function, module, name.as_ptr()) };
    said.push(format!("cuModuleGetFunction({entry}): {}", cuda.error_name(code)));
    if code != 0 {
        return (said.join("; "), false);
    }
    let null = std::ptr::null_mut();
    let code = unsafe { launch(function, 1, 1, 1, 1, 1, 1, 0, null, null.cast(), null.cast()) };
    said.push(format!("cuLaunchKernel: {}", cuda.error_name(code)));
    let sync = unsafe { (cuda.ctx_synchronize)() };
    said.push(format!("cuCtxSynchronize: {}", cuda.error_name(sync)));
    let again = unsafe { (cuda.ctx_synchronize)() };
    said.push(format!("cuCtxSynchronize again: {}", cuda.error_name(again)));
    (said.join("; "), sync != 0)
}

/// After the driver was broken: ask the driver directly (on this thread, and on a thread
/// with no context, like the monitor's), then `check_now` on one monitor and the resumed
/// periodic thread of the other. Prints the fields and `CHILD-RESULT done`.
fn observe(s: &Staged) {
    let here = query_code(s.cuda.pointer_get_attributes, s.ptr);
    let (f, ptr) = (s.cuda.pointer_get_attributes, s.ptr);
    let thread = std::thread::spawn(move || query_code(f, ptr))
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

// ---------------------------------------------------------------------------------------------
// Running and reporting

fn utc_now() -> String {
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

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

fn counts(rows: &[Row]) -> (usize, usize, usize) {
    let count = |s| rows.iter().filter(|r| r.status == s).count();
    (count(Status::Pass), count(Status::Fail), count(Status::Skip))
}

fn write_results(text: &str) {
    if let Some(path) = std::env::var_os(RESULTS_ENV).filter(|p| !p.is_empty()) {
        match std::fs::write(&path, text) {
            Ok(()) => println!("results written to {}", path.to_string_lossy()),
            Err(e) => eprintln!("could not write {}: {e}", path.to_string_lossy()),
        }
    }
}

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
fn detect() -> Result<Cuda, String> {
    let cuda = Cuda::load()?;
    let code = unsafe { (cuda.init)(0) };
    if code != 0 {
        return Err(format!("cuInit failed with {}", cuda.error_name(code)));
    }
    let mut count: c_int = 0;
    let code = unsafe { (cuda.device_get_count)(&mut count) };
    if code != 0 {
        return Err(format!("cuDeviceGetCount failed with {}", cuda.error_name(code)));
    }
    if count < 1 {
        return Err("cuDeviceGetCount found no device".into());
    }
    Ok(cuda)
}

/// Plays the engine's start-up: device 0, its primary context retained and current.
fn engine_start(cu: Cuda) -> Result<(Gpu, Ptr), String> {
    let mut dev: c_int = 0;
    cu.check(unsafe { (cu.device_get)(&mut dev, 0) }, "cuDeviceGet")?;
    let mut device_count: c_int = 0;
    cu.check(unsafe { (cu.device_get_count)(&mut device_count) }, "cuDeviceGetCount")?;
    let mut device_names = Vec::new();
    for ordinal in 0..device_count.max(1) {
        let mut handle: c_int = 0;
        cu.check(unsafe { (cu.device_get)(&mut handle, ordinal) }, "cuDeviceGet")?;
        device_names.push(cu.device_name(handle)?);
    }
    let name = device_names[0].clone();
    let mut driver_version: c_int = 0;
    cu.check(
        unsafe { (cu.driver_get_version)(&mut driver_version) },
        "cuDriverGetVersion",
    )?;
    let mut ctx: Ptr = std::ptr::null_mut();
    cu.check(
        unsafe { (cu.primary_ctx_retain)(&mut ctx, dev) },
        "cuDevicePrimaryCtxRetain",
    )?;
    cu.check(unsafe { (cu.ctx_set_current)(ctx) }, "cuCtxSetCurrent")?;

    let device_gran = cu.granularity(&Cuda::prop(cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, dev))?;
    let host_gran = cu
        .granularity(&Cuda::prop(cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST, 0))
        .or_else(|_| cu.granularity(&Cuda::prop(cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA, 0)));
    let chunk = match &host_gran {
        Ok(h) if device_gran % h == 0 => device_gran,
        Ok(h) if h % device_gran == 0 => *h,
        Ok(h) => device_gran * h,
        Err(_) => device_gran,
    };
    let host_vmm = host_gran.map(|_| ()).map_err(|e| format!("host-located VMM: {e}"));
    let gpu = Gpu {
        cu,
        dev,
        name,
        device_count,
        device_names,
        driver_version,
        chunk,
        host_vmm,
        nvml: init_nvml(),
        probes: RefCell::new(Vec::new()),
        no_context: RefCell::new(NoContext::default()),
        process_vram: RefCell::new(None),
        check_failed: RefCell::new(Vec::new()),
    };
    Ok((gpu, ctx))
}

/// What the watchdog needs: the lines printed so far and the scenario running now.
struct Progress {
    lines: Vec<String>,
    current: Option<(&'static str, Instant)>,
    header: String,
}

static PROGRESS: Mutex<Progress> = Mutex::new(Progress {
    lines: Vec::new(),
    current: None,
    header: String::new(),
});

fn progress() -> std::sync::MutexGuard<'static, Progress> {
    PROGRESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends the program if one scenario hangs (a deadlock in the library, a driver call that
/// never returns), with a report of what ran, instead of being killed with nothing written.
fn start_watchdog() {
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

fn run_gpu(cuda: Cuda) -> i32 {
    let (gpu, _ctx) = match engine_start(cuda) {
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
    unsafe { (gpu.cu.ctx_set_current)(std::ptr::null_mut()) };
    unsafe { (gpu.cu.primary_ctx_release)(gpu.dev) };
    i32::from(failed > 0)
}

/// "GPU 0: <name>, GPU 1: <name> (N GPUs; the engine uses GPU 0)".
fn gpu_list(gpu: &Gpu) -> String {
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
fn verdicts_produced(rows: &[Row]) -> String {
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

fn report(
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
            gpu.cu.error_name(p.direct_all),
            gpu.cu.error_name(p.mapping_size.0),
            p.mapping_size.1,
            gpu.cu.error_name(p.mapping_base.0),
            p.mapping_base.1
        );
    }
    md
}

fn main() {
    // `cargo test -- --list` and friends: this program has no libtest interface.
    if std::env::args().skip(1).any(|a| a == "--list") {
        return;
    }
    if let Ok(which) = std::env::var(CHILD_ENV) {
        std::process::exit(match which.as_str() {
            "no-context" => child_no_context(),
            other if other.starts_with("check-failed:") => child_check_failed(&other["check-failed:".len()..]),
            other => {
                eprintln!("unknown {CHILD_ENV}={other}");
                2
            }
        });
    }
    let code = match detect() {
        Err(reason) => skip(&reason),
        Ok(cuda) => run_gpu(cuda),
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
