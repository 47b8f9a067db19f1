//! The C ABI: every `extern "C"` function, the result codes, and the `#[repr(C)]` mirrors of
//! the core's types. This layer checks arguments, converts, and guards against panics; the
//! logic lives in the core.

mod callback;
mod functions;
mod handle;
mod log_bridge;
mod observability;
mod panic;
mod pin;
mod result;
mod types;

pub use callback::{VramMonitorCallback, VramMonitorUserDataFree};
pub use functions::*;
pub use handle::VramMonitor;
pub use observability::*;
pub use log_bridge::{vram_monitor_set_log_callback, VramMonitorLogCallback, VramMonitorLogLevel};
pub use result::VramMonitorResult;
pub use types::{VramMonitorCheckSummary, VramMonitorEvent, VramMonitorHealth, VramMonitorStall};

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here leaves its data consistent, so a poisoned lock is usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
