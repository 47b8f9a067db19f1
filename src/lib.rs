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

pub mod batch;
pub mod clock;
pub mod device_health;
pub mod driver;
pub mod error;
pub mod events;
pub mod fork;
pub mod health;
pub mod http;
pub mod inspect;
pub mod integrity;
pub mod monitor;
pub mod process_exit;
pub mod process_vram;
pub mod prometheus;
pub mod registration_guard;
pub mod registry;
pub mod report;
pub mod sync;
#[cfg(feature = "cudarc")]
pub mod cudarc_buffers;
pub mod verdict;
pub mod watchdog;

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
