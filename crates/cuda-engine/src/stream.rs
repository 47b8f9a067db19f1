//! Streams and stream-ordered allocation: `cuMemAllocAsync` / `cuMemFreeAsync` from the
//! device's default memory pool, and trimming that pool.

use std::ffi::{c_uint, c_void};

use crate::driver::Cuda;
use crate::error::Result;
use crate::{Device, DevicePtr};

/// `CU_STREAM_NON_BLOCKING`: a stream that does not synchronise with the legacy default one.
pub const CU_STREAM_NON_BLOCKING: c_uint = 1;

/// A stream handle (`CUstream`); [`Stream::DEFAULT`] is the legacy default stream (NULL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream(pub *mut c_void);

impl Stream {
    /// The legacy default stream.
    pub const DEFAULT: Stream = Stream(std::ptr::null_mut());
}

/// A memory pool handle (`CUmemoryPool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemPool(pub *mut c_void);

impl Cuda {
    /// `cuStreamCreate` with `flags` (such as [`CU_STREAM_NON_BLOCKING`]).
    pub fn stream_create(&self, flags: c_uint) -> Result<Stream> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.call(self.t.stream_create, |f| unsafe { f(&mut raw, flags) })?;
        Ok(Stream(raw))
    }

    /// `cuStreamSynchronize`.
    pub fn stream_synchronize(&self, stream: Stream) -> Result<()> {
        // SAFETY: a stream handle from the driver, or the default stream.
        self.call(self.t.stream_synchronize, |f| unsafe { f(stream.0) })
    }

    /// `cuStreamDestroy_v2`.
    pub fn stream_destroy(&self, stream: Stream) -> Result<()> {
        // SAFETY: a stream handle from the driver.
        self.call(self.t.stream_destroy, |f| unsafe { f(stream.0) })
    }

    /// `cuMemAllocAsync` on `stream` (from the device's current pool): usable once the stream
    /// has reached it.
    pub fn mem_alloc_async(&self, size: usize, stream: Stream) -> Result<DevicePtr> {
        let mut ptr = 0;
        // SAFETY: out-pointer to a local.
        self.call(self.t.mem_alloc_async, |f| unsafe { f(&mut ptr, size, stream.0) })?;
        Ok(ptr)
    }

    /// `cuMemFreeAsync` on `stream`: the memory goes back to its pool, not to the device.
    pub fn mem_free_async(&self, ptr: DevicePtr, stream: Stream) -> Result<()> {
        // SAFETY: the driver checks the address.
        self.call(self.t.mem_free_async, |f| unsafe { f(ptr, stream.0) })
    }

    /// `cuDeviceGetMemPool`: the device's current memory pool.
    pub fn device_mem_pool(&self, device: Device) -> Result<MemPool> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.call(self.t.device_get_mem_pool, |f| unsafe { f(&mut raw, device) })?;
        Ok(MemPool(raw))
    }

    /// `cuMemPoolTrimTo`: gives the pool's unused memory back to the device, keeping at most
    /// `keep` bytes.
    pub fn mem_pool_trim_to(&self, pool: MemPool, keep: usize) -> Result<()> {
        // SAFETY: a pool handle from the driver.
        self.call(self.t.mem_pool_trim_to, |f| unsafe { f(pool.0, keep) })
    }
}
