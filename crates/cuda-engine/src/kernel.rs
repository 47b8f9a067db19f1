//! Kernels: PTX loaded (and JIT-compiled) with `cuModuleLoadData`, a function looked up in
//! it, and a launch of one thread.

use std::ffi::{c_void, CStr};

use crate::driver::Cuda;
use crate::error::Result;
use crate::stream::Stream;

/// A module handle (`CUmodule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module(pub *mut c_void);

/// A kernel handle (`CUfunction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function(pub *mut c_void);

// SAFETY: a CUDA function handle may be launched from any thread with its context current.
unsafe impl Send for Function {}
// SAFETY: as above.
unsafe impl Sync for Function {}

impl Cuda {
    /// `cuModuleLoadData` in the current context: `image` is PTX (compiled by the driver's
    /// JIT) or a cubin.
    pub fn module_load_data(&self, image: &CStr) -> Result<Module> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; a NUL-terminated image.
        self.call(self.t.module_load_data, |f| unsafe { f(&mut raw, image.as_ptr().cast()) })?;
        Ok(Module(raw))
    }

    /// `cuModuleGetFunction`: the kernel `name` of `module`.
    pub fn module_get_function(&self, module: Module, name: &CStr) -> Result<Function> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; a module from the driver; a NUL-terminated name.
        self.call(self.t.module_get_function, |f| unsafe { f(&mut raw, module.0, name.as_ptr()) })?;
        Ok(Function(raw))
    }

    /// `cuLaunchKernel` of a kernel without parameters: one block of one thread, no shared
    /// memory, on `stream`.
    pub fn launch_one_thread(&self, function: Function, stream: Stream) -> Result<()> {
        let null = std::ptr::null_mut();
        // SAFETY: a function from the driver that takes no parameters.
        self.call(self.t.launch_kernel, |f| unsafe { f(function.0, 1, 1, 1, 1, 1, 1, 0, stream.0, null, null) })
    }
}
