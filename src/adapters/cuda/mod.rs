//! The CUDA driver adapter: the driver library loaded at run time through cudarc's search path,
//! every symbol checked before the first call, every result read as a plain integer.
//!
//! cudarc declares `CUresult` and the attribute enums as Rust enums; a value the bindings do
//! not know (a newer driver's error code) would be undefined behaviour. So this module takes
//! only the *library* from cudarc and looks each symbol up itself with integer-typed
//! signatures. It implements the port [`crate::core::driver::Driver`].

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use once_cell::sync::OnceCell;

use crate::core::driver::{Driver, DriverError, MemoryType, PointerInfo};

pub mod fingerprint;

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
