//! The one seam to CUDA: the driver library loaded at run time through cudarc's search path,
//! every symbol checked before the first call, every result read as a plain integer.
//!
//! cudarc declares `CUresult` and the attribute enums as Rust enums; a value the bindings do
//! not know (a newer driver's error code) would be undefined behaviour. So this module takes
//! only the *library* from cudarc and looks each symbol up itself with integer-typed
//! signatures.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use once_cell::sync::OnceCell;

/// What the driver says a pointer's memory is (`CU_POINTER_ATTRIBUTE_MEMORY_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryType {
    /// 0: not CUDA memory (freed, never allocated, or unmapped VMM space).
    Unregistered,
    /// 1: host memory (pinned, mapped, registered, host-located VMM).
    Host,
    /// 2: device memory (also what managed memory reports).
    Device,
    /// 3: a CUDA array.
    Array,
    /// 4: unified addressing.
    Unified,
    /// A value this library does not know.
    Other(u32),
}

impl MemoryType {
    /// Maps the driver's integer to a memory type; unknown values are kept, not trusted.
    pub fn from_raw(raw: u32) -> MemoryType {
        match raw {
            0 => MemoryType::Unregistered,
            1 => MemoryType::Host,
            2 => MemoryType::Device,
            3 => MemoryType::Array,
            4 => MemoryType::Unified,
            other => MemoryType::Other(other),
        }
    }
}

/// The attributes of one address, as one `cuPointerGetAttributes` call returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointerInfo {
    /// `MEMORY_TYPE`.
    pub memory_type: MemoryType,
    /// `IS_MANAGED`: the only attribute that reveals unified memory.
    pub is_managed: bool,
    /// `DEVICE_ORDINAL` (-2 when the address is not CUDA memory).
    pub device_ordinal: i32,
    /// `BUFFER_ID`: unique per allocation or mapping; changes when an address is reused.
    pub buffer_id: u64,
    /// `RANGE_START_ADDR`: the allocation, or for VMM the whole address reservation.
    pub range_start: u64,
    /// `RANGE_SIZE`.
    pub range_size: u64,
    /// `MAPPING_BASE_ADDR` (0 where the driver gives none).
    pub mapping_base: u64,
    /// `MAPPING_SIZE` (0 where the driver gives none).
    pub mapping_size: u64,
}

impl PointerInfo {
    /// What the driver reports for an address that is not CUDA memory.
    pub fn unregistered() -> PointerInfo {
        PointerInfo {
            memory_type: MemoryType::Unregistered,
            is_managed: false,
            device_ordinal: -2,
            buffer_id: 0,
            range_start: 0,
            range_size: 0,
            mapping_base: 0,
            mapping_size: 0,
        }
    }

    /// The memory that really backs the address: the intersection of the two extents the
    /// driver names. For an ordinary allocation RANGE_* is the allocation and MAPPING_* the
    /// driver's larger chunk holding it (2 MiB granular, shared by small allocations); for
    /// VMM, RANGE_* is the whole address reservation and MAPPING_* the one mapping. Either
    /// way the intersection is the memory that belongs to the address.
    pub fn extent(&self) -> Option<(u64, u64)> {
        let range = (self.range_size > 0).then(|| (self.range_start, self.range_start.saturating_add(self.range_size)));
        let mapping = (self.mapping_size > 0).then(|| (self.mapping_base, self.mapping_base.saturating_add(self.mapping_size)));
        let (start, end) = match (range, mapping) {
            (Some(r), Some(m)) => (r.0.max(m.0), r.1.min(m.1)),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => return None,
        };
        (end > start).then_some((start, end - start))
    }

    /// Whether the address lies in one VMM mapping of a larger address reservation, so that
    /// a registered range may go on into the reservation's next mapping (as one tensor does
    /// over PyTorch's expandable segments).
    pub fn is_mapping_in_larger_reservation(&self) -> bool {
        self.mapping_size > 0
            && self.range_size > self.mapping_size
            && self.range_start <= self.mapping_base
            && self.mapping_base.saturating_add(self.mapping_size) <= self.range_start.saturating_add(self.range_size)
    }
}

/// Why the driver could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// No CUDA driver library could be loaded.
    NotFound,
    /// The driver library lacks a symbol this library needs.
    SymbolMissing(&'static str),
    /// `cuInit` failed (for example CUDA_ERROR_STUB_LIBRARY = 34, or no device = 100).
    InitFailed(i32),
    /// A driver call returned an error code (possibly one no binding knows).
    Call {
        /// The driver function.
        function: &'static str,
        /// The raw `CUresult`.
        code: i32,
    },
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverError::NotFound => f.write_str("no CUDA driver library (libcuda) could be loaded"),
            DriverError::SymbolMissing(name) => write!(f, "the CUDA driver library has no symbol {name}"),
            DriverError::InitFailed(code) => {
                write!(f, "cuInit failed with {} ({code})", cuda_error_name(*code))
            }
            DriverError::Call { function, code } => {
                write!(f, "{function} failed with {} ({code})", cuda_error_name(*code))
            }
        }
    }
}

impl std::error::Error for DriverError {}

/// Names of the `CUresult` codes a residency check can plausibly meet. Anything else is
/// reported by number: an unknown code is an answer, not a crash.
pub fn cuda_error_name(code: i32) -> &'static str {
    match code {
        0 => "CUDA_SUCCESS",
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        4 => "CUDA_ERROR_DEINITIALIZED",
        34 => "CUDA_ERROR_STUB_LIBRARY",
        35 => "CUDA_ERROR_INSUFFICIENT_DRIVER",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        201 => "CUDA_ERROR_INVALID_CONTEXT",
        304 => "CUDA_ERROR_OPERATING_SYSTEM",
        46 => "CUDA_ERROR_DEVICE_UNAVAILABLE",
        400 => "CUDA_ERROR_INVALID_HANDLE",
        700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
        709 => "CUDA_ERROR_CONTEXT_IS_DESTROYED",
        710 => "CUDA_ERROR_ASSERT",
        714 => "CUDA_ERROR_HARDWARE_STACK_ERROR",
        715 => "CUDA_ERROR_ILLEGAL_INSTRUCTION",
        719 => "CUDA_ERROR_LAUNCH_FAILED",
        802 => "CUDA_ERROR_SYSTEM_NOT_READY",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => "an unknown CUDA error code",
    }
}

/// The questions the monitor asks the driver. Production uses [`CudaDriver`]; tests reach the
/// same implementation through a fake `libcuda`, or implement this for a model.
pub trait Driver: Send + Sync {
    /// The attributes of the memory at `address`. A freed or bogus address is not an error:
    /// it comes back as [`MemoryType::Unregistered`].
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError>;

    /// Bytes of device memory in use on `device` (all processes), if the driver can say so
    /// without creating a context.
    fn device_used_memory(&self, device: i32) -> Option<u64>;

    /// The driver's API version (for example 13000), if known.
    fn version(&self) -> Option<i32>;

    /// The PCI bus id of CUDA device `device` ("0000:18:00.0"), if the driver can say; it is
    /// how the device-health readings find the same GPU in NVML, whose numbering differs
    /// from CUDA's. The default says nothing.
    fn pci_bus_id(&self, device: i32) -> Option<String> {
        let _ = device;
        None
    }
}

type InitFn = unsafe extern "C" fn(c_uint) -> c_int;
type DriverGetVersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type PointerGetAttributesFn = unsafe extern "C" fn(c_uint, *mut c_int, *mut *mut c_void, u64) -> c_int;
type PrimaryCtxGetStateFn = unsafe extern "C" fn(c_int, *mut c_uint, *mut c_int) -> c_int;
type PrimaryCtxRetainFn = unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int;
type PrimaryCtxReleaseFn = unsafe extern "C" fn(c_int) -> c_int;
type CtxPushFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxPopFn = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
type MemGetInfoFn = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
type DeviceGetFn = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type DeviceGetPciBusIdFn = unsafe extern "C" fn(*mut std::ffi::c_char, c_int, c_int) -> c_int;

/// The functions needed to read device memory use through the engine's primary context.
/// Optional: without them the monitor falls back to "unknown".
#[derive(Clone, Copy)]
struct MemoryInfoFns {
    primary_ctx_get_state: PrimaryCtxGetStateFn,
    primary_ctx_retain: PrimaryCtxRetainFn,
    primary_ctx_release: PrimaryCtxReleaseFn,
    ctx_push: CtxPushFn,
    ctx_pop: CtxPopFn,
    mem_get_info: MemGetInfoFn,
}

/// The real CUDA driver, loaded once per process.
pub struct CudaDriver {
    pointer_get_attributes: PointerGetAttributesFn,
    memory_info: Option<MemoryInfoFns>,
    version: Option<i32>,
    /// `cuDeviceGet` and `cuDeviceGetPCIBusId`, for [`Driver::pci_bus_id`]; optional.
    pci_bus_id: Option<(DeviceGetFn, DeviceGetPciBusIdFn)>,
    /// Drivers older than CUDA 11.3 reject MAPPING_BASE_ADDR/MAPPING_SIZE; then only
    /// RANGE_* is asked for. Decided once, when the driver is loaded.
    mapping_attributes_supported: AtomicBool,
}

// Attribute numbers from cuda.h (`CUpointer_attribute`); stable across driver versions.
const ATTR_MEMORY_TYPE: c_int = 2;
const ATTR_BUFFER_ID: c_int = 7;
const ATTR_IS_MANAGED: c_int = 8;
const ATTR_DEVICE_ORDINAL: c_int = 9;
const ATTR_RANGE_START_ADDR: c_int = 11;
const ATTR_RANGE_SIZE: c_int = 12;
const ATTR_MAPPING_SIZE: c_int = 18;
const ATTR_MAPPING_BASE_ADDR: c_int = 19;
const CUDA_ERROR_INVALID_VALUE: c_int = 1;

impl CudaDriver {
    /// The process's driver: loaded and initialised on first use, the same answer afterwards.
    /// Never panics and never creates a CUDA context.
    ///
    /// Only success is kept: a driver that failed (say `cuInit` answered
    /// CUDA_ERROR_SYSTEM_NOT_READY before the fabric manager was up) is tried again next time.
    pub fn get() -> Result<&'static CudaDriver, DriverError> {
        static DRIVER: OnceCell<CudaDriver> = OnceCell::new();
        DRIVER.get_or_try_init(load)
    }
}

fn load() -> Result<CudaDriver, DriverError> {
    // cudarc panics when the library is missing; ask first, and guard anyway.
    // SAFETY: dlopen of the driver library; its initialisers are the vendor's.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DriverError::NotFound);
    }
    let library: &'static libloading::Library =
        std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::culib() })
            .map_err(|_| DriverError::NotFound)?;

    // SAFETY: the signatures below match cuda.h with every enum read as int.
    unsafe {
        let init: InitFn = symbol(library, "cuInit")?;
        let pointer_get_attributes: PointerGetAttributesFn = symbol(library, "cuPointerGetAttributes")?;
        let driver_get_version: Option<DriverGetVersionFn> = symbol(library, "cuDriverGetVersion").ok();
        let pci_bus_id = symbol::<DeviceGetFn>(library, "cuDeviceGet")
            .and_then(|get| Ok((get, symbol::<DeviceGetPciBusIdFn>(library, "cuDeviceGetPCIBusId")?)))
            .ok();
        let memory_info = (|| -> Result<MemoryInfoFns, DriverError> {
            Ok(MemoryInfoFns {
                primary_ctx_get_state: symbol(library, "cuDevicePrimaryCtxGetState")?,
                primary_ctx_retain: symbol(library, "cuDevicePrimaryCtxRetain")?,
                primary_ctx_release: symbol(library, "cuDevicePrimaryCtxRelease_v2")?,
                ctx_push: symbol(library, "cuCtxPushCurrent_v2")?,
                ctx_pop: symbol(library, "cuCtxPopCurrent_v2")?,
                mem_get_info: symbol(library, "cuMemGetInfo_v2")?,
            })
        })()
        .ok();

        // cuInit creates no context; it is idempotent and the engine has usually called it.
        let code = init(0);
        if code != 0 {
            return Err(DriverError::InitFailed(code));
        }
        let version = driver_get_version.and_then(|f| {
            let mut v: c_int = 0;
            (f(&mut v) == 0).then_some(v)
        });
        let driver = CudaDriver {
            pointer_get_attributes,
            memory_info,
            version,
            pci_bus_id,
            mapping_attributes_supported: AtomicBool::new(true),
        };
        // Drivers before CUDA 11.3 reject the mapping attributes. Ask once, about address 0
        // (never CUDA memory, so any answer but "invalid value" means they are understood),
        // rather than guessing from a failure on some later, real pointer.
        if let Err(DriverError::Call { code: CUDA_ERROR_INVALID_VALUE, .. }) = driver.pointer_info(0) {
            driver.mapping_attributes_supported.store(false, Ordering::Relaxed);
            if let Err(error) = driver.pointer_info(0) {
                log::warn!(target: "vram_monitor", "the driver rejects pointer queries: {error}");
            }
        }
        Ok(driver)
    }
}

/// Looks a function up by name. `T` must be the function's true C signature.
pub(crate) unsafe fn symbol<T: Copy>(library: &libloading::Library, name: &'static str) -> Result<T, DriverError> {
    library
        .get::<T>(name)
        .map(|s| *s)
        .map_err(|_| DriverError::SymbolMissing(name))
}

impl Driver for CudaDriver {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        let mut memory_type: u32 = 0;
        let mut is_managed: u32 = 0;
        let mut device_ordinal: i32 = -2;
        let mut buffer_id: u64 = 0;
        let mut range_start: u64 = 0;
        let mut range_size: usize = 0;
        let mut mapping_size: usize = 0;
        let mut mapping_base: u64 = 0;
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
        let mut data: [*mut c_void; 8] = [
            (&mut memory_type as *mut u32).cast(),
            (&mut is_managed as *mut u32).cast(),
            (&mut device_ordinal as *mut i32).cast(),
            (&mut buffer_id as *mut u64).cast(),
            (&mut range_start as *mut u64).cast(),
            (&mut range_size as *mut usize).cast(),
            (&mut mapping_size as *mut usize).cast(),
            (&mut mapping_base as *mut u64).cast(),
        ];
        let count: c_uint = if self.mapping_attributes_supported.load(Ordering::Relaxed) { 8 } else { 6 };
        // SAFETY: each data slot points at a live local of the attribute's C type.
        let code = unsafe { (self.pointer_get_attributes)(count, attributes.as_mut_ptr(), data.as_mut_ptr(), address) };
        if code != 0 {
            return Err(DriverError::Call { function: "cuPointerGetAttributes", code });
        }
        Ok(PointerInfo {
            memory_type: MemoryType::from_raw(memory_type),
            // IS_MANAGED is documented as a bool; read any non-zero byte as true.
            is_managed: is_managed != 0,
            device_ordinal,
            buffer_id,
            range_start,
            range_size: range_size as u64,
            mapping_base,
            mapping_size: mapping_size as u64,
        })
    }

    fn device_used_memory(&self, device: i32) -> Option<u64> {
        let f = self.memory_info?;
        // SAFETY: plain driver calls with out-pointers to locals. The primary context is only
        // retained when it is already active, so no context (and no VRAM) is created here.
        unsafe {
            let mut flags: c_uint = 0;
            let mut active: c_int = 0;
            if (f.primary_ctx_get_state)(device, &mut flags, &mut active) != 0 || active == 0 {
                return None;
            }
            let mut context: *mut c_void = std::ptr::null_mut();
            if (f.primary_ctx_retain)(&mut context, device) != 0 {
                return None;
            }
            let mut used = None;
            if (f.ctx_push)(context) == 0 {
                let (mut free, mut total) = (0usize, 0usize);
                if (f.mem_get_info)(&mut free, &mut total) == 0 {
                    used = Some(total.saturating_sub(free) as u64);
                }
                let mut popped: *mut c_void = std::ptr::null_mut();
                (f.ctx_pop)(&mut popped);
            }
            (f.primary_ctx_release)(device);
            used
        }
    }

    fn version(&self) -> Option<i32> {
        self.version
    }

    fn pci_bus_id(&self, device: i32) -> Option<String> {
        let (device_get, get_pci_bus_id) = self.pci_bus_id?;
        let mut handle: c_int = 0;
        let mut buf = [0 as std::ffi::c_char; 32];
        // SAFETY: plain driver calls (no context needed) with out-pointers to locals; the
        // buffer length passed is the buffer's.
        unsafe {
            if device_get(&mut handle, device) != 0 || get_pci_bus_id(buf.as_mut_ptr(), buf.len() as c_int, handle) != 0 {
                return None;
            }
        }
        buf[buf.len() - 1] = 0;
        // SAFETY: NUL-terminated within the buffer (forced above).
        let id = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_str().ok()?.to_owned();
        (!id.is_empty()).then_some(id)
    }
}

impl<T: Driver + ?Sized> Driver for &T {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        (**self).pointer_info(address)
    }
    fn device_used_memory(&self, device: i32) -> Option<u64> {
        (**self).device_used_memory(device)
    }
    fn version(&self) -> Option<i32> {
        (**self).version()
    }
    fn pci_bus_id(&self, device: i32) -> Option<String> {
        (**self).pci_bus_id(device)
    }
}
