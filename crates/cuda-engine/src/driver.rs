//! The driver table: the library cudarc's loader finds, and every function this crate calls,
//! looked up once by name.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::catch_unwind;
use std::sync::OnceLock;

use cudarc::driver::sys as cu;

use crate::error::{Error, Result};

type Ptr = *mut c_void;
type Prop = cu::CUmemAllocationProp;
type AccessDesc = cu::CUmemAccessDesc;

/// One function of the table: its name, and its address where the driver has it.
#[derive(Clone, Copy)]
pub(crate) struct Sym<F> {
    name: &'static str,
    f: Option<F>,
}

impl<F: Copy> Sym<F> {
    /// Looks `name` up. `F` must be its C signature with every enum and `CUresult` read as int.
    unsafe fn find(library: &libloading::Library, name: &'static str) -> Sym<F> {
        // SAFETY: the caller gives the true signature.
        let f = unsafe { library.get::<F>(name.as_bytes()) }.ok().map(|s| *s);
        Sym { name, f }
    }

    /// The function, or [`Error::MissingSymbol`] naming it.
    pub(crate) fn get(self) -> Result<F> {
        self.f.ok_or(Error::MissingSymbol(self.name))
    }

    /// The function's name in the driver.
    pub(crate) fn name(self) -> &'static str {
        self.name
    }
}

/// Declares the table: `field: "symbol" => fn(argument types);`, every one returning `CUresult`
/// read as an int.
macro_rules! table {
    ($($field:ident: $symbol:literal => fn($($arg:ty),* $(,)?);)*) => {
        pub(crate) struct Table {
            $(pub(crate) $field: Sym<unsafe extern "C" fn($($arg),*) -> c_int>,)*
        }

        impl Table {
            /// Looks every function up; one the driver lacks stays absent.
            unsafe fn load(library: &libloading::Library) -> Table {
                // SAFETY: the signatures above are cuda.h's, enums and results read as int.
                unsafe { Table { $($field: Sym::find(library, $symbol),)* } }
            }
        }
    };
}

table! {
    init: "cuInit" => fn(c_uint);
    driver_get_version: "cuDriverGetVersion" => fn(*mut c_int);
    get_error_name: "cuGetErrorName" => fn(c_int, *mut *const c_char);
    device_get_count: "cuDeviceGetCount" => fn(*mut c_int);
    device_get: "cuDeviceGet" => fn(*mut c_int, c_int);
    device_get_name: "cuDeviceGetName" => fn(*mut c_char, c_int, c_int);
    device_total_mem: "cuDeviceTotalMem_v2" => fn(*mut usize, c_int);
    device_get_attribute: "cuDeviceGetAttribute" => fn(*mut c_int, c_int, c_int);
    device_can_access_peer: "cuDeviceCanAccessPeer" => fn(*mut c_int, c_int, c_int);
    primary_ctx_retain: "cuDevicePrimaryCtxRetain" => fn(*mut Ptr, c_int);
    primary_ctx_release: "cuDevicePrimaryCtxRelease_v2" => fn(c_int);
    primary_ctx_get_state: "cuDevicePrimaryCtxGetState" => fn(c_int, *mut c_uint, *mut c_int);
    primary_ctx_reset: "cuDevicePrimaryCtxReset_v2" => fn(c_int);
    ctx_create_v2: "cuCtxCreate_v2" => fn(*mut Ptr, c_uint, c_int);
    ctx_create_v4: "cuCtxCreate_v4" => fn(*mut Ptr, Ptr, c_uint, c_int);
    ctx_destroy: "cuCtxDestroy_v2" => fn(Ptr);
    ctx_set_current: "cuCtxSetCurrent" => fn(Ptr);
    ctx_get_current: "cuCtxGetCurrent" => fn(*mut Ptr);
    ctx_push: "cuCtxPushCurrent_v2" => fn(Ptr);
    ctx_pop: "cuCtxPopCurrent_v2" => fn(*mut Ptr);
    ctx_synchronize: "cuCtxSynchronize" => fn();
    mem_alloc: "cuMemAlloc_v2" => fn(*mut u64, usize);
    mem_free: "cuMemFree_v2" => fn(u64);
    mem_alloc_managed: "cuMemAllocManaged" => fn(*mut u64, usize, c_uint);
    mem_alloc_host: "cuMemAllocHost_v2" => fn(*mut Ptr, usize);
    mem_free_host: "cuMemFreeHost" => fn(Ptr);
    mem_host_alloc: "cuMemHostAlloc" => fn(*mut Ptr, usize, c_uint);
    mem_host_get_device_pointer: "cuMemHostGetDevicePointer_v2" => fn(*mut u64, Ptr, c_uint);
    mem_host_register: "cuMemHostRegister_v2" => fn(Ptr, usize, c_uint);
    mem_host_unregister: "cuMemHostUnregister" => fn(Ptr);
    stream_create: "cuStreamCreate" => fn(*mut Ptr, c_uint);
    stream_synchronize: "cuStreamSynchronize" => fn(Ptr);
    stream_destroy: "cuStreamDestroy_v2" => fn(Ptr);
    mem_alloc_async: "cuMemAllocAsync" => fn(*mut u64, usize, Ptr);
    mem_free_async: "cuMemFreeAsync" => fn(u64, Ptr);
    device_get_mem_pool: "cuDeviceGetMemPool" => fn(*mut Ptr, c_int);
    mem_pool_trim_to: "cuMemPoolTrimTo" => fn(Ptr, usize);
    mem_get_allocation_granularity: "cuMemGetAllocationGranularity" => fn(*mut usize, *const Prop, c_uint);
    mem_create: "cuMemCreate" => fn(*mut u64, usize, *const Prop, u64);
    mem_release: "cuMemRelease" => fn(u64);
    mem_address_reserve: "cuMemAddressReserve" => fn(*mut u64, usize, usize, u64, u64);
    mem_address_free: "cuMemAddressFree" => fn(u64, usize);
    mem_map: "cuMemMap" => fn(u64, usize, usize, u64, u64);
    mem_unmap: "cuMemUnmap" => fn(u64, usize);
    mem_set_access: "cuMemSetAccess" => fn(u64, usize, *const AccessDesc, usize);
    pointer_get_attribute: "cuPointerGetAttribute" => fn(Ptr, c_int, u64);
    pointer_get_attributes: "cuPointerGetAttributes" => fn(c_uint, *mut c_int, *mut Ptr, u64);
    module_load_data: "cuModuleLoadData" => fn(*mut Ptr, *const c_void);
    module_get_function: "cuModuleGetFunction" => fn(*mut Ptr, Ptr, *const c_char);
    launch_kernel: "cuLaunchKernel" => fn(Ptr, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Ptr, *mut Ptr, *mut Ptr);
}

/// The CUDA driver as an engine uses it: the library and every function this crate calls.
///
/// Obtained with [`Cuda::get`]; the helpers are methods here and in the types this crate
/// exports. Every method that calls the driver answers [`Error::MissingSymbol`] when the driver
/// lacks the function and [`Error::Call`] when it returns anything but `CUDA_SUCCESS`.
pub struct Cuda {
    library: &'static libloading::Library,
    pub(crate) t: Table,
}

impl Cuda {
    /// The driver library cudarc's loader finds, with every function looked up: loaded on
    /// first use, the same answer afterwards. Calls nothing in the driver (not even `cuInit`),
    /// so it creates no context; never panics.
    pub fn get() -> Result<&'static Cuda> {
        static CUDA: OnceLock<Result<Cuda>> = OnceLock::new();
        CUDA.get_or_init(Cuda::load).as_ref().map_err(Clone::clone)
    }

    fn load() -> Result<Cuda> {
        // SAFETY: dlopen of the driver library. cudarc panics when it is missing: ask first,
        // and guard anyway.
        if !unsafe { cu::is_culib_present() } {
            return Err(Error::NoLibrary("no CUDA driver library (libcuda.so) could be loaded".into()));
        }
        let library = catch_unwind(|| unsafe { cu::culib() })
            .map_err(|_| Error::NoLibrary("cudarc could not load the CUDA driver library".into()))?;
        // SAFETY: the table's signatures are cuda.h's.
        let t = unsafe { Table::load(library) };
        Ok(Cuda { library, t })
    }

    /// The loaded driver library, for looking up what this crate does not know (the fake
    /// driver's `fake_cuda_*` control functions).
    pub fn library(&self) -> &'static libloading::Library {
        self.library
    }

    /// Whether the driver library exports `symbol`.
    pub fn has(&self, symbol: &str) -> bool {
        // SAFETY: only the address is looked up; nothing is called.
        unsafe { self.library.get::<unsafe extern "C" fn()>(symbol.as_bytes()) }.is_ok()
    }

    /// Checks that the driver exports every function of every group (see [`crate::symbols`]):
    /// the first missing one, in the order given, as [`Error::MissingSymbol`]. For a program
    /// that wants all it will call up front, as one that looked every function up at start did.
    pub fn require(&self, groups: &[&[&'static str]]) -> Result<()> {
        match groups.iter().flat_map(|group| group.iter()).find(|s| !self.has(s)) {
            Some(missing) => Err(Error::MissingSymbol(missing)),
            None => Ok(()),
        }
    }

    /// Looks up a function this crate does not know.
    ///
    /// # Safety
    /// `T` must be the function's true C signature.
    pub unsafe fn symbol<T: Copy>(&self, name: &'static str) -> Result<T> {
        // SAFETY: the caller gives the true signature.
        unsafe { self.library.get::<T>(name.as_bytes()) }.map(|s| *s).map_err(|_| Error::MissingSymbol(name))
    }

    /// The driver's name for `code` with the number, `CUDA_ERROR_INVALID_VALUE (1)`, or
    /// `CUresult 1` where the driver has no name for it (or no `cuGetErrorName`).
    pub fn error_name(&self, code: c_int) -> String {
        let mut name: *const c_char = std::ptr::null();
        let named = self.t.get_error_name.get().is_ok_and(|f| {
            // SAFETY: out-pointer to a local; the driver returns a static string.
            unsafe { f(code, &mut name) == 0 && !name.is_null() }
        });
        if named {
            // SAFETY: a NUL-terminated static string from the driver.
            format!("{} ({code})", unsafe { CStr::from_ptr(name) }.to_string_lossy())
        } else {
            format!("CUresult {code}")
        }
    }

    /// `Ok` for `CUDA_SUCCESS`, else [`Error::Call`] for `call`.
    pub fn check(&self, code: c_int, call: impl Into<String>) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(Error::Call { call: call.into(), code, name: self.error_name(code) })
        }
    }

    /// Calls `sym` through `invoke` and checks the result under the function's own name.
    pub(crate) fn call<F: Copy>(&self, sym: Sym<F>, invoke: impl FnOnce(F) -> c_int) -> Result<()> {
        let f = sym.get()?;
        self.check(invoke(f), sym.name())
    }

    /// `cuInit(0)`: idempotent, creates no context.
    pub fn init(&self) -> Result<()> {
        // SAFETY: a plain call.
        self.call(self.t.init, |f| unsafe { f(0) })
    }

    /// `cuDriverGetVersion`: the API version, 12080 for CUDA 12.8.
    pub fn driver_version(&self) -> Result<c_int> {
        let mut version = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.driver_get_version, |f| unsafe { f(&mut version) })?;
        Ok(version)
    }
}
