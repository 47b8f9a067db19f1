//! vram-monitor: proves an inference engine's model weights stay in GPU memory.
//!
//! The engine registers its device buffers; a background thread checks them with the CUDA
//! driver's pointer attributes and reports, through a callback, a health snapshot, reports and
//! log records, when one stops being resident: paged to host (managed memory), mapped from
//! host RAM, freed, or replaced by another buffer at the same address.
//!
//! The Rust API is [`Monitor`]. The C API (header `include/vram_monitor.h`, the library
//! `libvram_monitor.so` / `.a`) is a thin skin over it in a crate of its own,
//! `crates/vram-monitor-capi`: this crate exports no C symbol.
#![deny(missing_docs)]

// The rooms (docs/architecture.md): dependencies point inward, output -> monitor -> adapters
// -> core, never back (scripts/check-architecture.sh).
pub mod adapters;
pub mod core;
pub mod monitor;
pub mod output;

// The paths of the flat layout this crate had before the rooms, kept so that
// `vram_monitor::registry::RegistrationId` and the like still name the same items.
pub use self::adapters::{fork, process_exit};
pub use self::core::{batch, clock, error, events, health, inspect, registry, sync, verdict};
#[cfg(feature = "http")]
pub use self::output::http;
pub use self::output::{prometheus, report};
#[cfg(feature = "cudarc")]
pub use self::monitor::cudarc_buffers;
pub use self::monitor::{registration_guard, watchdog};
/// The driver port ([`core::driver`]) and its CUDA adapter ([`adapters::cuda::CudaDriver`]).
pub mod driver {
    pub use crate::adapters::cuda::CudaDriver;
    pub use crate::core::driver::*;
}
/// Content integrity ([`core::integrity`]) and its CUDA adapter, as `integrity::cuda`.
pub mod integrity {
    pub use crate::adapters::cuda::fingerprint as cuda;
    pub use crate::core::integrity::*;
}
/// Device health: the values and their fold ([`core::device_health`]) and the NVML source
/// ([`adapters::nvml::NvmlSource`]).
pub mod device_health {
    pub use crate::adapters::nvml::NvmlSource;
    pub use crate::core::device_health::*;
}
/// Process VRAM: the values ([`core::process_vram`]) and the NVML reading
/// ([`adapters::nvml::process_vram`]).
pub mod process_vram {
    pub use crate::adapters::nvml::process_vram::*;
    pub use crate::core::process_vram::*;
}

pub use batch::{Region, Registered};
pub use device_health::{DeviceHealth, DeviceHealthSource, DeviceReading, RemappedRows, Signal, SignalStatus};
pub use driver::{CudaDriver, Driver, DriverError, MemoryType, PointerInfo};
pub use error::Error;
pub use events::{Event, EventKind};
pub use health::{CheckSummary, Health};
pub use integrity::{IntegrityOptions, IntegrityStatus, SealInfo, VerifySummary};
pub use monitor::{Callback, Monitor, MonitorOptions, MonitorView, Pacing, DEFAULT_INTERVAL};
pub use process_vram::{ProcessVram, VramSource};
pub use registration_guard::Registration;
pub use registry::{RegistrationId, RegistrationInfo};
pub use report::ReportFormat;
pub use verdict::Verdict;
pub use watchdog::StallLimits;

/// This library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
