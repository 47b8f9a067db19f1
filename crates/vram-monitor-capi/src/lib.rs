//! The C ABI of vram-monitor: every `extern "C"` function, the result codes, and the
//! `#[repr(C)]` mirrors of the core's types (header `include/vram_monitor.h`, generated from
//! this crate by cbindgen: `tests/header.rs`). This layer checks arguments, converts, and
//! guards against panics; the logic lives in the core, the `vram-monitor` crate.
//!
//! An rlib: crates/libvram-monitor links it into `libvram_monitor.so` and `libvram_monitor.a`.
//! Rust code that drives the C functions directly (the tests) links this crate; a Rust
//! engine uses the core and gets none of these symbols.
#![deny(missing_docs)]

mod batch;
mod callback;
mod functions;
mod handle;
mod integrity;
mod log_bridge;
mod observability;
mod panic;
mod pin;
mod result;
mod types;

pub use batch::{vram_monitor_register_many, vram_monitor_registration, VramMonitorRegion, VramMonitorRegistrationInfo, VRAM_MONITOR_REGISTER_ALL_OR_NOTHING};
pub use callback::{VramMonitorCallback, VramMonitorUserDataFree};
pub use functions::*;
pub use handle::VramMonitor;
pub use integrity::*;
pub use observability::*;
pub use log_bridge::{vram_monitor_set_log_callback, VramMonitorLogCallback, VramMonitorLogLevel};
pub use result::VramMonitorResult;
pub use types::{VramMonitorCheckSummary, VramMonitorEvent, VramMonitorHealth, VramMonitorStall};

