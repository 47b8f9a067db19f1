//! A C callback and its user data, turned into a core callback.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use crate::types::VramMonitorEvent;
use vram_monitor::events::Event;
use vram_monitor::monitor::Callback;

/// Receives events. Runs on the monitor's thread ("vram-monitor"), except the
/// `HEALTH_CHANGED` events of a stall, which the watchdog thread ("vram-monitor-watchdog")
/// delivers when the monitor thread is stuck outside the callback (when it is stuck inside,
/// they wait until it returns); one event at a time, never concurrently with itself. `event` and its strings are valid only during the call.
/// It may call any function of the monitor: `vram_monitor_check_now` and `vram_monitor_free`
/// return `VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK` there instead of deadlocking. A slow
/// callback delays the next check. It must not throw a C++ exception or `longjmp` out: nothing
/// may unwind through the library (the C++ wrapper `vram_monitor.hpp` catches for you).
pub type VramMonitorCallback = Option<unsafe extern "C" fn(event: *const VramMonitorEvent, user_data: *mut c_void)>;

/// Releases a callback's user data once the callback will never run again: when it is
/// replaced (after any call in progress returns) or when the monitor is freed. Runs on the
/// thread that replaced it, the monitor thread, or the thread calling `vram_monitor_free`.
pub type VramMonitorUserDataFree = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

struct UserData {
    pointer: *mut c_void,
    free: VramMonitorUserDataFree,
}

// SAFETY: the header tells the caller that user data travels to the monitor thread.
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

impl UserData {
    // A method, so that the closure below captures the whole `UserData` (and its Drop),
    // not just the raw pointer field.
    fn pointer(&self) -> *mut c_void {
        self.pointer
    }
}

impl Drop for UserData {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // A panic cannot start in C; nothing to guard.
            unsafe { free(self.pointer) };
        }
    }
}

/// Wraps a C callback as a core callback.
pub(crate) fn wrap(
    callback: unsafe extern "C" fn(*const VramMonitorEvent, *mut c_void),
    user_data: *mut c_void,
    free: VramMonitorUserDataFree,
) -> Callback {
    let user_data = UserData { pointer: user_data, free };
    Arc::new(move |event: &Event| {
        // Interior NULs cannot occur in labels (they came from C strings) or messages; fall
        // back to empty strings rather than failing the event.
        let label = CString::new(event.label.as_str()).unwrap_or_default();
        let message = CString::new(event.message.as_str()).unwrap_or_default();
        let error_kind = CString::new(event.error_kind).unwrap_or_default();
        let c_event = VramMonitorEvent {
            kind: event.kind,
            registration_id: event.registration_id,
            label: label.as_ptr(),
            ptr: event.ptr as *const c_void,
            size: event.size as usize,
            device: event.device,
            verdict: event.verdict,
            previous_verdict: event.previous_verdict,
            healthy: event.healthy,
            message: message.as_ptr(),
            timestamp_unix_ms: event.timestamp_unix_ms,
            modified_chunks: event.modified_chunks,
            first_modified_offset: event.first_modified_offset,
            error_kind: error_kind.as_ptr(),
        };
        // SAFETY: the host promised a valid function; the event outlives the call.
        unsafe { callback(&c_event, user_data.pointer()) };
    })
}
