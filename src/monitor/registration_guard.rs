//! [`Registration`]: a registration that ends when it is dropped, the way a Rust engine holds
//! a resource.
//!
//! A Rust engine keeps its weights in values it owns (a `Vec` of tensors, a model struct) and
//! frees them by dropping them. The guard lets the registration live and die with them: store
//! it next to the buffer it watches, and dropping the model unregisters the buffer before its
//! memory goes, so a deliberate free is never reported as a violation.
//!
//! The guard holds its monitor through any pointer to one (`M: Deref<Target = Monitor>`):
//! - `Arc<Monitor>` (the default type): the guard owns a share of the monitor, so it can be
//!   stored in long-lived structs next to the buffer, moved across threads, and outlive the
//!   code that created the monitor. This is what an engine usually wants.
//! - `&Monitor` ([`Monitor::register_guard`]): scoped, for code that registers and unregisters
//!   within one function, or with a `static` monitor (`&'static Monitor`).
//!
//! ```
//! # use std::sync::Arc;
//! # use vram_monitor::{Driver, DriverError, MemoryType, Monitor, MonitorOptions, PointerInfo, Registration};
//! # /// A driver for which every address below 1 GiB is one device allocation.
//! # struct AllDevice;
//! # impl Driver for AllDevice {
//! #     fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
//! #         let mut info = PointerInfo::unregistered();
//! #         if address < 1 << 30 {
//! #             info.memory_type = MemoryType::Device;
//! #             info.device_ordinal = 0;
//! #             info.buffer_id = 1;
//! #             info.range_start = 0;
//! #             info.range_size = 1 << 30;
//! #         }
//! #         Ok(info)
//! #     }
//! #     fn device_used_memory(&self, _device: i32) -> Option<u64> { None }
//! #     fn version(&self) -> Option<i32> { Some(13000) }
//! # }
//! # let monitor = Arc::new(Monitor::with_driver(MonitorOptions::default(), Arc::new(AllDevice))?);
//! // In an engine: `let monitor = Arc::new(Monitor::new(MonitorOptions::default())?);`
//! struct Layer {
//!     weights_ptr: u64,
//!     weights_bytes: u64,
//!     _watch: Registration, // Registration<Arc<Monitor>>
//! }
//!
//! let layer = Layer {
//!     weights_ptr: 0x1000,
//!     weights_bytes: 4096,
//!     _watch: Registration::new(Arc::clone(&monitor), 0x1000, 4096, "layers.0.weight")?,
//! };
//! assert_eq!(monitor.health().registrations, 1);
//! drop(layer); // unregisters before the engine frees the memory
//! assert_eq!(monitor.health().registrations, 0);
//!
//! // Scoped, borrowing the monitor:
//! {
//!     let guard = monitor.register_guard(0x2000, 4096, "scratch")?;
//!     assert_ne!(guard.id(), 0);
//!     assert_eq!(monitor.health().registrations, 1);
//! }
//! assert_eq!(monitor.health().registrations, 0);
//! # Ok::<(), vram_monitor::Error>(())
//! ```

use std::ops::Deref;
use std::sync::Arc;

use crate::core::error::Error;
use crate::monitor::Monitor;
use crate::core::registry::RegistrationId;

/// A registration that unregisters itself when dropped.
///
/// Created by [`Registration::new`] (any pointer to a monitor; `Arc<Monitor>` by default) or
/// [`Monitor::register_guard`] (borrowing). Dropping it unregisters; an error there (the
/// registration was already removed with [`Monitor::unregister`], or the process forked) is
/// ignored, since there is nothing left to undo. Use [`Registration::unregister`] to see the
/// result, or [`Registration::leak`] to keep watching without the guard.
///
/// If the guard holds the last `Arc<Monitor>` and is dropped inside a callback (on the monitor
/// thread), the monitor is stopped without joining its own thread, as documented on
/// [`Monitor`]'s `Drop`.
#[must_use = "dropping the guard unregisters at once"]
pub struct Registration<M: Deref<Target = Monitor> = Arc<Monitor>> {
    monitor: M,
    id: RegistrationId,
    active: bool,
}

impl<M: Deref<Target = Monitor>> Registration<M> {
    /// Checks `[ptr, ptr + size)` and registers it, as [`Monitor::register`] does (memory that
    /// is not resident is refused with [`Error::Refused`]), and returns the guard.
    pub fn new(monitor: M, ptr: u64, size: u64, label: &str) -> Result<Self, Error> {
        let id = monitor.register(ptr, size, label)?;
        Ok(Registration { monitor, id, active: true })
    }

    /// Takes over a registration made with [`Monitor::register`]: dropping the guard
    /// unregisters `id`. The id must belong to `monitor` (otherwise the drop does nothing).
    pub fn from_id(monitor: M, id: RegistrationId) -> Self {
        Registration { monitor, id, active: true }
    }

    /// The registration's id, as in events and reports.
    pub fn id(&self) -> RegistrationId {
        self.id
    }

    /// The monitor it is registered with.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Unregisters now and says whether it worked ([`Error::UnknownRegistration`] if it was
    /// already removed through [`Monitor::unregister`]).
    pub fn unregister(mut self) -> Result<(), Error> {
        self.active = false;
        self.monitor.unregister(self.id)
    }

    /// Gives up the guard and keeps the registration: it stays watched until
    /// [`Monitor::unregister`] with the returned id, or until the monitor is dropped.
    pub fn leak(mut self) -> RegistrationId {
        self.active = false;
        self.id
    }
}

impl<M: Deref<Target = Monitor>> Drop for Registration<M> {
    fn drop(&mut self) {
        if self.active {
            let _ = self.monitor.unregister(self.id);
        }
    }
}

impl<M: Deref<Target = Monitor>> std::fmt::Debug for Registration<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("id", &self.id).field("active", &self.active).finish()
    }
}

impl Monitor {
    /// Registers `[ptr, ptr + size)` like [`Monitor::register`] and returns a guard that
    /// unregisters it when dropped, borrowing this monitor. For a guard that can be stored
    /// anywhere, use [`Registration::new`] with an `Arc<Monitor>`.
    pub fn register_guard(&self, ptr: u64, size: u64, label: &str) -> Result<Registration<&Monitor>, Error> {
        Registration::new(self, ptr, size, label)
    }
}
