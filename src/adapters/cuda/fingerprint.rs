//! The CUDA driver behind [`Gpu`]: symbols looked up in the same driver library the
//! residency checks use, every enum read as an integer, the kernel shipped as PTX.

use std::ffi::{c_char, c_int, c_uint, c_void};

use once_cell::sync::OnceCell;

use crate::core::integrity::gpu::{ContextHandle, Gpu, Kernel};
use super::symbol;
use crate::core::driver::DriverError;

/// The fingerprint kernel (src/adapters/cuda/fingerprint.cu, compiled by scripts/gen-ptx.sh),
/// NUL-terminated as `cuModuleLoadData` wants PTX text. The driver JITs it for the GPU at
/// hand: no nvcc or NVRTC at run time.
static PTX: &str = concat!(include_str!("fingerprint.ptx"), "\0");
/// The kernel's entry point in [`PTX`].
const ENTRY: &[u8] = b"vram_monitor_fingerprint_v1\0";
/// Threads per block (the kernel's reduction assumes it).
const BLOCK_THREADS: c_uint = 512;
/// Chunks one launch may cover: 128 KiB of scratch covers 16 GiB per launch.
pub const SCRATCH_CHUNKS: u64 = 16 * 1024;
const CU_STREAM_NON_BLOCKING: c_uint = 1;

type CtxGetCurrentFn = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
type CtxGetDeviceFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type CtxSynchronizeFn = unsafe extern "C" fn() -> c_int;
type CtxPushFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxPopFn = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
type PrimaryGetStateFn = unsafe extern "C" fn(c_int, *mut c_uint, *mut c_int) -> c_int;
type PrimaryRetainFn = unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int;
type PrimaryReleaseFn = unsafe extern "C" fn(c_int) -> c_int;
type ModuleLoadDataFn = unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> c_int;
type ModuleGetFunctionFn = unsafe extern "C" fn(*mut *mut c_void, *mut c_void, *const c_char) -> c_int;
type ModuleUnloadFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type StreamCreateFn = unsafe extern "C" fn(*mut *mut c_void, c_uint) -> c_int;
type StreamDestroyFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type StreamSynchronizeFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type MemAllocFn = unsafe extern "C" fn(*mut u64, usize) -> c_int;
type MemFreeFn = unsafe extern "C" fn(u64) -> c_int;
type MemcpyDtoHAsyncFn = unsafe extern "C" fn(*mut c_void, u64, usize, *mut c_void) -> c_int;
#[allow(clippy::type_complexity)]
type LaunchKernelFn = unsafe extern "C" fn(
    *mut c_void,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut c_void,
    *mut *mut c_void,
    *mut *mut c_void,
) -> c_int;

/// The driver functions integrity needs, all present or integrity is unavailable (plain
/// function pointers: copied into each monitor that uses them).
#[derive(Clone, Copy)]
pub struct CudaGpu {
    ctx_get_current: CtxGetCurrentFn,
    ctx_get_device: CtxGetDeviceFn,
    ctx_synchronize: CtxSynchronizeFn,
    ctx_push: CtxPushFn,
    ctx_pop: CtxPopFn,
    primary_get_state: PrimaryGetStateFn,
    primary_retain: PrimaryRetainFn,
    primary_release: PrimaryReleaseFn,
    module_load_data: ModuleLoadDataFn,
    module_get_function: ModuleGetFunctionFn,
    module_unload: ModuleUnloadFn,
    stream_create: StreamCreateFn,
    stream_destroy: StreamDestroyFn,
    stream_synchronize: StreamSynchronizeFn,
    mem_alloc: MemAllocFn,
    mem_free: MemFreeFn,
    memcpy_dtoh_async: MemcpyDtoHAsyncFn,
    launch_kernel: LaunchKernelFn,
}

fn call(function: &'static str, code: c_int) -> Result<(), DriverError> {
    if code == 0 {
        Ok(())
    } else {
        Err(DriverError::Call { function, code })
    }
}

impl CudaGpu {
    /// The process's adapter, made once the driver has loaded (never creates a context).
    pub fn get() -> Result<&'static CudaGpu, DriverError> {
        static GPU: OnceCell<CudaGpu> = OnceCell::new();
        GPU.get_or_try_init(|| {
            crate::adapters::cuda::CudaDriver::get()?;
            // The driver loaded above, so cudarc's library is present; guard the panic anyway.
            let library: &'static libloading::Library =
                std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::culib() }).map_err(|_| DriverError::NotFound)?;
            // SAFETY: each signature matches cuda.h with enums read as int.
            unsafe {
                Ok(CudaGpu {
                    ctx_get_current: symbol(library, "cuCtxGetCurrent")?,
                    ctx_get_device: symbol(library, "cuCtxGetDevice")?,
                    ctx_synchronize: symbol(library, "cuCtxSynchronize")?,
                    ctx_push: symbol(library, "cuCtxPushCurrent_v2")?,
                    ctx_pop: symbol(library, "cuCtxPopCurrent_v2")?,
                    primary_get_state: symbol(library, "cuDevicePrimaryCtxGetState")?,
                    primary_retain: symbol(library, "cuDevicePrimaryCtxRetain")?,
                    primary_release: symbol(library, "cuDevicePrimaryCtxRelease_v2")?,
                    module_load_data: symbol(library, "cuModuleLoadData")?,
                    module_get_function: symbol(library, "cuModuleGetFunction")?,
                    module_unload: symbol(library, "cuModuleUnload")?,
                    stream_create: symbol(library, "cuStreamCreate")?,
                    stream_destroy: symbol(library, "cuStreamDestroy_v2")?,
                    stream_synchronize: symbol(library, "cuStreamSynchronize")?,
                    mem_alloc: symbol(library, "cuMemAlloc_v2")?,
                    mem_free: symbol(library, "cuMemFree_v2")?,
                    memcpy_dtoh_async: symbol(library, "cuMemcpyDtoHAsync_v2")?,
                    launch_kernel: symbol(library, "cuLaunchKernel")?,
                })
            }
        })
    }
}


impl Gpu for CudaGpu {
    fn current_context(&self) -> Result<Option<(ContextHandle, i32)>, DriverError> {
        let mut context: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointers to locals.
        call("cuCtxGetCurrent", unsafe { (self.ctx_get_current)(&mut context) })?;
        if context.is_null() {
            return Ok(None);
        }
        let mut device: c_int = -1;
        call("cuCtxGetDevice", unsafe { (self.ctx_get_device)(&mut device) })?;
        Ok(Some((ContextHandle(context as usize), device)))
    }

    fn retain_if_primary(&self, device: i32, context: ContextHandle) -> Result<bool, DriverError> {
        let (mut flags, mut active): (c_uint, c_int) = (0, 0);
        // SAFETY: out-pointers to locals.
        call("cuDevicePrimaryCtxGetState", unsafe { (self.primary_get_state)(device, &mut flags, &mut active) })?;
        if active == 0 {
            // Retaining would create it: the current context is the engine's own.
            return Ok(false);
        }
        let mut primary: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; the primary context is active, so nothing is created.
        call("cuDevicePrimaryCtxRetain", unsafe { (self.primary_retain)(&mut primary, device) })?;
        if primary as usize == context.0 {
            return Ok(true);
        }
        self.release_primary(device);
        Ok(false)
    }

    fn release_primary(&self, device: i32) {
        // SAFETY: gives back one reference we took.
        unsafe { (self.primary_release)(device) };
    }

    fn push(&self, context: ContextHandle) -> Result<(), DriverError> {
        // SAFETY: a context the engine lent (the header's contract keeps it alive).
        call("cuCtxPushCurrent_v2", unsafe { (self.ctx_push)(context.0 as *mut c_void) })
    }

    fn pop(&self) {
        let mut popped: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; undoes our own push.
        unsafe { (self.ctx_pop)(&mut popped) };
    }

    fn synchronize(&self) -> Result<(), DriverError> {
        // SAFETY: a plain driver call in the context pushed by the caller.
        call("cuCtxSynchronize", unsafe { (self.ctx_synchronize)() })
    }

    fn load(&self) -> Result<Kernel, DriverError> {
        let mut module: *mut c_void = std::ptr::null_mut();
        // SAFETY: PTX is NUL-terminated text; out-pointers to locals.
        unsafe {
            call("cuModuleLoadData", (self.module_load_data)(&mut module, PTX.as_ptr().cast()))?;
            let mut function: *mut c_void = std::ptr::null_mut();
            let mut stream: *mut c_void = std::ptr::null_mut();
            let mut scratch: u64 = 0;
            let made = call("cuModuleGetFunction", (self.module_get_function)(&mut function, module, ENTRY.as_ptr().cast()))
                .and_then(|()| call("cuStreamCreate", (self.stream_create)(&mut stream, CU_STREAM_NON_BLOCKING)))
                .and_then(|()| call("cuMemAlloc_v2", (self.mem_alloc)(&mut scratch, (SCRATCH_CHUNKS * 8) as usize)));
            let kernel = Kernel {
                module: module as usize,
                function: function as usize,
                stream: stream as usize,
                scratch,
                scratch_chunks: SCRATCH_CHUNKS,
            };
            match made {
                Ok(()) => Ok(kernel),
                Err(error) => {
                    self.unload(kernel);
                    Err(error)
                }
            }
        }
    }

    fn unload(&self, kernel: Kernel) {
        // SAFETY: each handle was made by `load` in the current context (or is null/0 and skipped).
        unsafe {
            if kernel.stream != 0 {
                // Waits for our own work only; the stream is ours.
                (self.stream_synchronize)(kernel.stream as *mut c_void);
                (self.stream_destroy)(kernel.stream as *mut c_void);
            }
            if kernel.scratch != 0 {
                (self.mem_free)(kernel.scratch);
            }
            if kernel.module != 0 {
                (self.module_unload)(kernel.module as *mut c_void);
            }
        }
    }

    fn fingerprint(&self, kernel: &Kernel, base: u64, length: u64, first_word: u64, out: &mut [u64]) -> Result<(), DriverError> {
        let chunks = length.div_ceil(crate::core::integrity::fingerprint::CHUNK_BYTES);
        if chunks == 0 || chunks > kernel.scratch_chunks || out.len() as u64 != chunks {
            return Err(DriverError::Call { function: "cuLaunchKernel", code: 1 });
        }
        let (mut base, mut length, mut first_word, mut scratch) = (base, length, first_word, kernel.scratch);
        let mut params: [*mut c_void; 4] = [
            (&mut base as *mut u64).cast(),
            (&mut length as *mut u64).cast(),
            (&mut first_word as *mut u64).cast(),
            (&mut scratch as *mut u64).cast(),
        ];
        let stream = kernel.stream as *mut c_void;
        // SAFETY: the parameters match the kernel's four u64 arguments and outlive the launch
        // call (the driver copies them); the copy's destination is `out`, of `chunks` values.
        unsafe {
            call(
                "cuLaunchKernel",
                (self.launch_kernel)(
                    kernel.function as *mut c_void,
                    chunks as c_uint,
                    1,
                    1,
                    BLOCK_THREADS,
                    1,
                    1,
                    0,
                    stream,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                ),
            )?;
            call("cuMemcpyDtoHAsync_v2", (self.memcpy_dtoh_async)(out.as_mut_ptr().cast(), kernel.scratch, out.len() * 8, stream))?;
            call("cuStreamSynchronize", (self.stream_synchronize)(stream))
        }
    }
}

/// The CUDA adapter as the integrity port: what the monitor gives [`Integrity`] to find the
/// GPU when integrity is first enabled.
///
/// [`Integrity`]: crate::core::integrity::Integrity
pub fn default_gpu() -> Result<std::sync::Arc<dyn Gpu>, DriverError> {
    CudaGpu::get().map(|g| std::sync::Arc::new(*g) as std::sync::Arc<dyn Gpu>)
}
