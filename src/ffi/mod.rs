//! The C ABI: every `extern "C"` function, the result codes, and the `#[repr(C)]` mirrors of
//! the core's types. This layer checks arguments, converts, and guards against panics; the
//! logic lives in the core.

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

