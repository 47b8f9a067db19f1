//! Device, managed and host memory: `cuMemAlloc`, `cuMemAllocManaged`, pinned
//! (`cuMemAllocHost`), mapped (`cuMemHostAlloc` with DEVICEMAP) and registered
//! (`cuMemHostRegister`) host memory, and ordinary heap memory to register.

use std::ffi::{c_uint, c_void};

use crate::driver::Cuda;
use crate::error::Result;
use crate::DevicePtr;

/// `CU_MEM_ATTACH_GLOBAL`: managed memory any stream may reach.
pub const CU_MEM_ATTACH_GLOBAL: c_uint = 1;
/// `CU_MEMHOSTALLOC_DEVICEMAP`: host memory mapped into the device's address space.
pub const CU_MEMHOSTALLOC_DEVICEMAP: c_uint = 2;

/// Device memory (`cuMemAlloc_v2`, or managed memory), freed with `cuMemFree_v2` when dropped
/// unless [`DeviceBuffer::free`] freed it already.
pub struct DeviceBuffer<'a> {
    cuda: &'a Cuda,
    ptr: DevicePtr,
    live: bool,
}

impl DeviceBuffer<'_> {
    /// Its device address.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Frees it now (`cuMemFree_v2`); a second call does nothing.
    pub fn free(&mut self) -> Result<()> {
        if self.live {
            self.live = false;
            self.cuda.mem_free(self.ptr)?;
        }
        Ok(())
    }
}

impl Drop for DeviceBuffer<'_> {
    fn drop(&mut self) {
        let _ = self.free();
    }
}

impl Cuda {
    /// `cuMemAlloc_v2` in the current context: the address, to free with [`Cuda::mem_free`].
    pub fn mem_alloc(&self, size: usize) -> Result<DevicePtr> {
        let mut ptr = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.mem_alloc, |f| unsafe { f(&mut ptr, size) })?;
        Ok(ptr)
    }

    /// `cuMemFree_v2` (device or managed memory).
    pub fn mem_free(&self, ptr: DevicePtr) -> Result<()> {
        // SAFETY: the driver checks the address.
        self.call(self.t.mem_free, |f| unsafe { f(ptr) })
    }

    /// `cuMemAlloc_v2` in the current context, freed when the buffer is dropped.
    pub fn alloc(&self, size: usize) -> Result<DeviceBuffer<'_>> {
        Ok(DeviceBuffer { cuda: self, ptr: self.mem_alloc(size)?, live: true })
    }

    /// `cuMemAllocManaged` (unified memory; `flags` such as [`CU_MEM_ATTACH_GLOBAL`]), freed
    /// when the buffer is dropped.
    pub fn alloc_managed(&self, size: usize, flags: c_uint) -> Result<DeviceBuffer<'_>> {
        let mut ptr = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.mem_alloc_managed, |f| unsafe { f(&mut ptr, size, flags) })?;
        Ok(DeviceBuffer { cuda: self, ptr, live: true })
    }

    /// `cuMemAllocHost_v2`: pinned host memory, to free with [`Cuda::mem_free_host`].
    pub fn mem_alloc_host(&self, size: usize) -> Result<*mut c_void> {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.call(self.t.mem_alloc_host, |f| unsafe { f(&mut ptr, size) })?;
        Ok(ptr)
    }

    /// `cuMemHostAlloc`: pinned host memory with `flags` (such as
    /// [`CU_MEMHOSTALLOC_DEVICEMAP`]), to free with [`Cuda::mem_free_host`].
    pub fn mem_host_alloc(&self, size: usize, flags: c_uint) -> Result<*mut c_void> {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.call(self.t.mem_host_alloc, |f| unsafe { f(&mut ptr, size, flags) })?;
        Ok(ptr)
    }

    /// `cuMemHostGetDevicePointer_v2`: the device's alias of mapped host memory.
    pub fn mem_host_get_device_pointer(&self, host: *mut c_void) -> Result<DevicePtr> {
        let mut device = 0;
        // SAFETY: out-pointer to a local; the driver checks the host address.
        self.call(self.t.mem_host_get_device_pointer, |f| unsafe { f(&mut device, host, 0) })?;
        Ok(device)
    }

    /// `cuMemFreeHost`.
    ///
    /// # Safety
    /// `host` came from [`Cuda::mem_alloc_host`] or [`Cuda::mem_host_alloc`] and nothing uses
    /// it afterwards.
    pub unsafe fn mem_free_host(&self, host: *mut c_void) -> Result<()> {
        // SAFETY: the caller's promise.
        self.call(self.t.mem_free_host, |f| unsafe { f(host) })
    }

    /// `cuMemHostRegister_v2`: pins `size` bytes of ordinary host memory at `host`.
    ///
    /// # Safety
    /// `[host, host + size)` stays allocated until [`Cuda::mem_host_unregister`].
    pub unsafe fn mem_host_register(&self, host: *mut c_void, size: usize, flags: c_uint) -> Result<()> {
        // SAFETY: the caller's promise.
        self.call(self.t.mem_host_register, |f| unsafe { f(host, size, flags) })
    }

    /// `cuMemHostUnregister`.
    pub fn mem_host_unregister(&self, host: *mut c_void) -> Result<()> {
        // SAFETY: the driver checks that the address was registered.
        self.call(self.t.mem_host_unregister, |f| unsafe { f(host) })
    }
}

/// Ordinary host memory from the heap, page-aligned and zeroed, never given to CUDA by this
/// type (plain `malloc` for the monitor to judge, or memory to `cuMemHostRegister`).
pub struct HostBuffer {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl HostBuffer {
    /// `size` bytes aligned to 4 KiB; `None` when `size` is 0 or the heap refuses.
    pub fn new(size: usize) -> Option<HostBuffer> {
        let layout = std::alloc::Layout::from_size_align(size, 4096).ok().filter(|l| l.size() > 0)?;
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(HostBuffer { ptr, layout })
    }

    /// Its address, as a number.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Its address, for the driver.
    pub fn as_mut_ptr(&self) -> *mut c_void {
        self.ptr.cast()
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Never: a buffer has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}
