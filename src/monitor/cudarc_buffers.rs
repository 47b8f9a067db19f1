//! Registering cudarc device buffers without raw pointers (cargo feature `cudarc`, on by
//! default).
//!
//! Rust engines built on cudarc (candle, mistral.rs and others) hold their weights as
//! [`CudaSlice<T>`](cudarc::driver::CudaSlice) and pass views of them
//! ([`CudaView`](cudarc::driver::CudaView), [`CudaViewMut`](cudarc::driver::CudaViewMut)).
//! Anything that implements cudarc's [`DevicePtr`] can be registered as it is: the address
//! and length in bytes come from the buffer, so user code never handles a `CUdeviceptr`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cudarc::driver::CudaContext;
//! use vram_monitor::{Monitor, MonitorOptions, Registration};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = CudaContext::new(0)?; // the engine's context (the monitor creates none)
//! let stream = ctx.default_stream();
//! let weights = stream.alloc_zeros::<f32>(1 << 20)?;
//!
//! let monitor = Arc::new(Monitor::new(MonitorOptions::default())?);
//! // A guard stored next to the weights; dropping it unregisters them.
//! let watch = Registration::new_cuda(Arc::clone(&monitor), &weights, "model.embed_tokens")?;
//! // A view registers the part of the buffer it covers.
//! let id = monitor.register_cuda(&weights.slice(1024..2048), "embed_tokens[1024..2048]")?;
//!
//! let summary = monitor.check_now()?;
//! assert_eq!(summary.violations, 0);
//! monitor.unregister(id)?;
//! drop(watch);
//! # Ok(())
//! # }
//! ```
//!
//! Reading the address goes through [`DevicePtr::device_ptr`] on the buffer's own stream,
//! which in cudarc's multi-stream mode enqueues a wait for the buffer's last write and
//! records a read event: asynchronous, the host never blocks. No memory is read.

use std::ops::Deref;

use cudarc::driver::{DevicePtr, DeviceSlice};

use crate::core::error::Error;
use crate::monitor::Monitor;
use crate::monitor::registration_guard::Registration;
use crate::core::registry::RegistrationId;

/// The device address and length in bytes of a cudarc buffer or view.
pub fn device_range<T, B: DevicePtr<T> + ?Sized>(buffer: &B) -> (u64, u64) {
    let stream = DeviceSlice::stream(buffer);
    let (ptr, sync) = buffer.device_ptr(stream);
    drop(sync);
    (ptr, DeviceSlice::num_bytes(buffer) as u64)
}

impl Monitor {
    /// Registers a cudarc buffer or view (`&CudaSlice<T>`, `&CudaView<T>`, `&CudaViewMut<T>`)
    /// like [`Monitor::register`]: refused with [`Error::Refused`] unless resident, and
    /// [`Error::InvalidArgument`] for an empty one.
    pub fn register_cuda<T, B: DevicePtr<T> + ?Sized>(&self, buffer: &B, label: &str) -> Result<RegistrationId, Error> {
        let (ptr, bytes) = device_range(buffer);
        self.register(ptr, bytes, label)
    }

    /// [`Monitor::register_cuda`], returning a guard that unregisters when dropped (borrowing
    /// this monitor; see [`Registration::new_cuda`] for an owned one).
    pub fn register_cuda_guard<T, B: DevicePtr<T> + ?Sized>(
        &self,
        buffer: &B,
        label: &str,
    ) -> Result<Registration<&Monitor>, Error> {
        Registration::new_cuda(self, buffer, label)
    }
}

impl<M: Deref<Target = Monitor>> Registration<M> {
    /// Registers a cudarc buffer or view with `monitor` (any pointer to it, usually an
    /// `Arc<Monitor>`) and returns the guard. See [`Monitor::register_cuda`].
    pub fn new_cuda<T, B: DevicePtr<T> + ?Sized>(monitor: M, buffer: &B, label: &str) -> Result<Self, Error> {
        let (ptr, bytes) = device_range(buffer);
        Registration::new(monitor, ptr, bytes, label)
    }
}
