//! The exported functions. Each checks its arguments, calls the core inside the panic guard,
//! and writes out-parameters only on success.
//!
//! Threading: every function may be called from any thread. `vram_monitor_free` may run
//! while other threads are inside calls on the same monitor: it waits for them, and calls
//! that begin once it has begun return `CLOSED` (src/handle.rs).

use std::ffi::{c_char, c_void, CStr};
use std::time::Duration;

use crate::callback::{self, VramMonitorCallback, VramMonitorUserDataFree};
use crate::handle::{on_monitor, VramMonitor};
use crate::panic::guard;
use crate::result::VramMonitorResult;
use crate::types::{VramMonitorCheckSummary, VramMonitorEvent, VramMonitorHealth, VramMonitorStall};
use vram_monitor::monitor::{Monitor, MonitorOptions};
use vram_monitor::report::ReportFormat;
use vram_monitor::verdict::Verdict;

/// The default check interval in milliseconds (60 s).
pub const VRAM_MONITOR_DEFAULT_INTERVAL_MS: u32 = 60_000;
/// Labels longer than this many bytes are refused with `INVALID_LABEL`.
pub const VRAM_MONITOR_MAX_LABEL_BYTES: u32 = 4096;
// cbindgen only writes literal constants into the header; keep the literal honest.
const _: () = assert!(VRAM_MONITOR_MAX_LABEL_BYTES as usize == vram_monitor::monitor::MAX_LABEL_BYTES);
/// Default driver queries per slice of a check (see `vram_monitor_set_pacing`).
pub const VRAM_MONITOR_DEFAULT_SLICE_QUERIES: u32 = 256;
/// Default pause between slices of a check, in microseconds (see `vram_monitor_set_pacing`).
pub const VRAM_MONITOR_DEFAULT_PAUSE_US: u32 = 50;
// The header's literals must match the core's defaults.
const _: () = assert!(VRAM_MONITOR_DEFAULT_SLICE_QUERIES == vram_monitor::monitor::DEFAULT_SLICE_QUERIES);
const _: () = assert!(VRAM_MONITOR_DEFAULT_PAUSE_US as u128 == vram_monitor::monitor::DEFAULT_PAUSE.as_micros());
/// Major version of this header.
pub const VRAM_MONITOR_VERSION_MAJOR: u32 = 0;
/// Minor version of this header.
pub const VRAM_MONITOR_VERSION_MINOR: u32 = 1;
/// Patch version of this header.
pub const VRAM_MONITOR_VERSION_PATCH: u32 = 0;

use crate::result::try_ffi;

/// Creates a monitor and starts its background thread ("vram-monitor"), which checks every
/// registration every `interval_ms` milliseconds (`VRAM_MONITOR_DEFAULT_INTERVAL_MS` is the
/// usual choice). Loads the CUDA driver on first use; creates no CUDA context.
///
/// Returns `NULL_ARGUMENT` if `out_monitor` is NULL, `INVALID_ARGUMENT` if `interval_ms` is
/// 0, `DRIVER_NOT_FOUND` / `DRIVER_SYMBOL_MISSING` / `DRIVER_INIT_FAILED` when the driver is
/// absent or unusable. On success `*out_monitor` receives the monitor, to be released with
/// `vram_monitor_free`.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_new(interval_ms: u32, out_monitor: *mut *mut VramMonitor) -> VramMonitorResult {
    guard(|| {
        if out_monitor.is_null() {
            return VramMonitorResult::NullArgument;
        }
        crate::log_bridge::install();
        let options = MonitorOptions { interval: Duration::from_millis(u64::from(interval_ms)), ..Default::default() };
        let monitor = try_ffi!(Monitor::new(options));
        crate::pin::pin_library();
        // SAFETY: checked non-NULL; the caller provides a writable pointer.
        unsafe { *out_monitor = VramMonitor::create(monitor) };
        VramMonitorResult::Ok
    })
}

/// Stops the monitor thread, waits for it (see the bound below), releases the callback's
/// user data, and frees the monitor. No callback runs after this returns. `NULL` is a no-op
/// returning `OK`.
///
/// Concurrent calls: free may be called while other threads are inside calls on the same
/// monitor. From the moment free begins, every call on this monitor that begins returns
/// `CLOSED` (a callback still running during the free included), and free waits for the
/// calls already in progress to return (each is bounded: a register by its driver queries,
/// a `check_now` by one check, a report by its rendering). After free returns, a call with
/// the same handle returns `CLOSED`, also a second free: the handle is never deallocated
/// (a tombstone of about 2 KiB stays per freed monitor), so it never reads freed memory.
///
/// From inside a callback (or from a user-data finaliser that runs inside a call on this
/// monitor) it returns `CALLED_FROM_CALLBACK` and frees nothing.
///
/// Bound: the thread checks a stop flag before every driver query and before each event, so
/// this waits for at most the driver query in progress plus the callback call in progress
/// (and the HTTP endpoint's threads, if one was started), after the calls in progress on
/// other threads. The watchdog thread is woken and joined too; it waits on nothing, so this
/// adds at most the callback call it may be running. Events not yet delivered are dropped.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` at once: the monitor
/// thread does not exist there, so nothing is joined, the user data's finaliser does not run
/// and the monitor's memory is leaked in the child. The handle is gone either way.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_free(monitor: *mut VramMonitor) -> VramMonitorResult {
    guard(|| {
        if monitor.is_null() {
            return VramMonitorResult::Ok;
        }
        // SAFETY: a pointer from vram_monitor_new; handles are never deallocated.
        unsafe { &*monitor }.close()
    })
}

/// Checks `[ptr, ptr + size)` at once and, if every byte is resident device memory,
/// registers it for periodic checks and writes its id (never 0, unique in the process) to
/// `*out_id`.
///
/// Memory that is not resident is refused with `REFUSED_<VERDICT>` (managed, host, not
/// mapped, out of range, wrong device): the VRAM-only policy starts at load time. The label
/// (UTF-8, at most 4096 bytes) is copied; the caller may free it at once. Registering the
/// same memory twice gives two independent registrations. Returns `NULL_ARGUMENT` for a NULL
/// monitor, ptr, label or out_id; `INVALID_ARGUMENT` for size 0 or a range that wraps;
/// `INVALID_LABEL`; `DRIVER_ERROR` if the driver query failed.
///
/// May be called from any thread, also from a callback. Never waits for a check in progress.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_register(
    monitor: *mut VramMonitor,
    ptr: *const c_void,
    size: usize,
    label: *const c_char,
    out_id: *mut u64,
) -> VramMonitorResult {
    // SAFETY: the contract above is register_with's.
    unsafe { register_with(monitor, ptr, size, label, out_id, Monitor::register) }
}

/// The arguments of `vram_monitor_register` and `vram_monitor_register_sealed`, checked and
/// converted in one place: `register` (plain or sealed) runs with them and its id is written.
///
/// # Safety
/// `monitor` NULL or a handle; `label` NULL or NUL-terminated; `out_id` NULL or writable.
pub(crate) unsafe fn register_with(
    monitor: *mut VramMonitor,
    ptr: *const c_void,
    size: usize,
    label: *const c_char,
    out_id: *mut u64,
    register: impl FnOnce(&Monitor, u64, u64, &str) -> Result<u64, vram_monitor::Error>,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if ptr.is_null() || label.is_null() || out_id.is_null() {
            return VramMonitorResult::NullArgument;
        }
        // SAFETY: non-NULL, NUL-terminated per the contract.
        let Ok(label) = unsafe { CStr::from_ptr(label) }.to_str() else {
            return VramMonitorResult::InvalidLabel;
        };
        let id = try_ffi!(register(monitor, ptr as u64, size as u64, label));
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { *out_id = id };
        VramMonitorResult::Ok
    })
}

/// Stops watching registration `id`. Returns `UNKNOWN_REGISTRATION` for an id this monitor
/// never gave (another monitor's included) or already removed. May be called from a callback (also for the registration
/// the event is about). An event already being delivered may still name it.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_unregister(monitor: *mut VramMonitor, id: u64) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        try_ffi!(monitor.unregister(id));
        VramMonitorResult::Ok
    })
}

/// Sets the function that receives events (see `VramMonitorCallback` for the thread it runs
/// on and what it may call), replacing any previous one. `user_data` is passed to every
/// call; `free_user_data` (may be NULL) releases it once this callback can no longer run.
/// A NULL `callback` removes the callback; then `user_data` and `free_user_data` are ignored.
/// The previous callback's `free_user_data` runs after any call of it in progress returns.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_set_callback(
    monitor: *mut VramMonitor,
    callback: VramMonitorCallback,
    user_data: *mut c_void,
    free_user_data: VramMonitorUserDataFree,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        monitor.set_callback(callback.map(|f| callback::wrap(f, user_data, free_user_data)));
        VramMonitorResult::Ok
    })
}

/// Changes the interval between full checks (milliseconds, at least 1). The thread wakes at
/// once; the next check is due one new interval after the previous one. May be called from a
/// callback. `INVALID_ARGUMENT` for 0.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_set_interval_ms(monitor: *mut VramMonitor, interval_ms: u32) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        try_ffi!(monitor.set_interval(Duration::from_millis(u64::from(interval_ms))));
        VramMonitorResult::Ok
    })
}

/// Changes how a check paces its driver queries: after every `slice_queries` queries it
/// pauses `pause_us` microseconds (0: it only yields the processor). The driver serialises
/// pointer queries with the engine's kernel launches, so an unpaced check adds tail latency
/// to the engine; the defaults (`VRAM_MONITOR_DEFAULT_SLICE_QUERIES` queries, then
/// `VRAM_MONITOR_DEFAULT_PAUSE_US` µs) keep that small (docs/performance.md has the
/// measurements). Takes effect from the next check. `INVALID_ARGUMENT` for `slice_queries`
/// 0, a pause over 1 s, or a pause not shorter than the stall deadline
/// (`vram_monitor_set_stall_limits`). Callable from any thread, also from a callback.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
pub unsafe extern "C" fn vram_monitor_set_pacing(monitor: *mut VramMonitor, slice_queries: u32, pause_us: u32) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        let pacing = vram_monitor::monitor::Pacing { slice_queries, pause: Duration::from_micros(u64::from(pause_us)) };
        try_ffi!(monitor.set_pacing(pacing));
        VramMonitorResult::Ok
    })
}

/// Runs a full check now on the monitor thread (callbacks for what it finds run there before
/// this returns) and waits for it. `out_summary` may be NULL; if not, it receives the result.
/// `OK` means the check ran: read the summary for violations and failed queries. From inside
/// a callback returns `CALLED_FROM_CALLBACK`.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_check_now(
    monitor: *mut VramMonitor,
    out_summary: *mut VramMonitorCheckSummary,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        let summary = try_ffi!(monitor.check_now());
        if !out_summary.is_null() {
            unsafe { *out_summary = VramMonitorCheckSummary::from(&summary) };
        }
        VramMonitorResult::Ok
    })
}

/// Fills `*out_health` with the health snapshot. Cheap (no driver query); callable from any
/// thread, also from a callback.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_health(monitor: *const VramMonitor, out_health: *mut VramMonitorHealth) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if out_health.is_null() {
            return VramMonitorResult::NullArgument;
        }
        let health = monitor.health();
        unsafe { *out_health = VramMonitorHealth::from(&health) };
        VramMonitorResult::Ok
    })
}

/// The default stall deadline in milliseconds (30 s; see `vram_monitor_set_stall_limits`).
pub const VRAM_MONITOR_DEFAULT_STALL_DEADLINE_MS: u32 = 30_000;
/// The default stall grace in milliseconds (30 s; see `vram_monitor_set_stall_limits`).
pub const VRAM_MONITOR_DEFAULT_STALL_GRACE_MS: u32 = 30_000;
const _: () = assert!(VRAM_MONITOR_DEFAULT_STALL_DEADLINE_MS as u128 == vram_monitor::watchdog::DEFAULT_STALL_DEADLINE.as_millis());
const _: () = assert!(VRAM_MONITOR_DEFAULT_STALL_GRACE_MS as u128 == vram_monitor::watchdog::DEFAULT_STALL_GRACE.as_millis());

/// Fills `*out_stall` with the stall state: whether the monitor stopped checking, whether a
/// check is in progress and for how long, when the last one started, and the limits in
/// force. Cheap (no driver query); callable from any thread, also from a callback.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_stall(monitor: *const VramMonitor, out_stall: *mut VramMonitorStall) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if out_stall.is_null() {
            return VramMonitorResult::NullArgument;
        }
        let health = monitor.health();
        unsafe { *out_stall = VramMonitorStall::from(&health) };
        VramMonitorResult::Ok
    })
}

/// Sets when the monitor counts as stalled, effective at once: a check in progress that
/// makes no progress (a completed slice of queries) for longer than `deadline_ms`, or no
/// completed check for longer than the interval plus `grace_ms` (defaults
/// `VRAM_MONITOR_DEFAULT_STALL_DEADLINE_MS` and `VRAM_MONITOR_DEFAULT_STALL_GRACE_MS`).
/// A stall makes the health unhealthy, and a watchdog thread ("vram-monitor-watchdog") sends
/// `HEALTH_CHANGED` when it begins and when it ends: that event's callback may run on the
/// watchdog thread (never concurrently with another callback call).
///
/// `INVALID_ARGUMENT`, changing nothing, for a value of 0 or over 30 days (2592000000), or a
/// deadline not longer than the pacing's pause (`vram_monitor_set_pacing`). Callable from any
/// thread, also from a callback.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_set_stall_limits(monitor: *mut VramMonitor, deadline_ms: u64, grace_ms: u64) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        // Out of Duration's range is out of ours too: from_millis takes any u64.
        let limits = vram_monitor::watchdog::StallLimits { deadline: Duration::from_millis(deadline_ms), grace: Duration::from_millis(grace_ms) };
        try_ffi!(monitor.set_stall_limits(limits));
        VramMonitorResult::Ok
    })
}

/// Writes a report (`format`: `VRAM_MONITOR_REPORT_FORMAT_TEXT` or `..._JSON`) into `buf`,
/// NUL-terminated. The JSON is `{"health": {...}, "registrations": [{"id", "label", "ptr",
/// "size", "device", "verdict"}, ...]}`.
///
/// On `OK`, `*out_len` is the report's length without the NUL. If `buf_len` is too small,
/// nothing is written to `buf`, `*out_len` is the size needed *including* the NUL, and the
/// result is `BUFFER_TOO_SMALL` (call with `buf = NULL, buf_len = 0` to ask for the size; the
/// report can grow between the two calls). `out_len` must not be NULL; `buf` may be NULL only
/// when `buf_len` is 0.
///
/// In a child process forked after `vram_monitor_new`, returns `FORKED` and does nothing.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_report(
    monitor: *const VramMonitor,
    format: i32,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        if out_len.is_null() || (buf.is_null() && buf_len > 0) {
            return VramMonitorResult::NullArgument;
        }
        let Some(format) = ReportFormat::from_raw(format) else {
            return VramMonitorResult::UnknownFormat;
        };
        let report = monitor.report(format);
        let needed = report.len() + 1;
        if buf_len < needed {
            unsafe { *out_len = needed };
            return VramMonitorResult::BufferTooSmall;
        }
        // SAFETY: buf has at least buf_len >= needed writable bytes (caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(report.as_ptr(), buf.cast::<u8>(), report.len());
            *buf.add(report.len()) = 0;
            *out_len = report.len();
        }
        VramMonitorResult::Ok
    })
}

/// A static, NUL-terminated description of a result code ("unknown result code" for values
/// this library does not define). Never NULL; do not free.
#[no_mangle]
pub extern "C" fn vram_monitor_result_str(result: i32) -> *const c_char {
    VramMonitorResult::c_description(result)
}

/// The static name of a verdict ("RESIDENT", "MANAGED", ...; "UNKNOWN" for other values).
/// Never NULL; do not free.
#[no_mangle]
pub extern "C" fn vram_monitor_verdict_str(verdict: i32) -> *const c_char {
    let name: &'static [u8] = match Verdict::from_raw(verdict) {
        Some(Verdict::Resident) => b"RESIDENT\0",
        Some(Verdict::Managed) => b"MANAGED\0",
        Some(Verdict::Host) => b"HOST\0",
        Some(Verdict::NotMapped) => b"NOT_MAPPED\0",
        Some(Verdict::Replaced) => b"REPLACED\0",
        Some(Verdict::OutOfRange) => b"OUT_OF_RANGE\0",
        Some(Verdict::WrongDevice) => b"WRONG_DEVICE\0",
        Some(Verdict::CheckFailed) => b"CHECK_FAILED\0",
        Some(Verdict::Modified) => b"MODIFIED\0",
        None => b"UNKNOWN\0",
    };
    name.as_ptr().cast()
}

/// The version of the library actually loaded, as "MAJOR.MINOR.PATCH" (compare with the
/// `VRAM_MONITOR_VERSION_*` macros of the header you compiled against). Static; do not free.
#[no_mangle]
pub extern "C" fn vram_monitor_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

// Exported since the first release, once to keep the event type in the header (cbindgen.toml's
// `include` does that now). The symbol stays, as every exported symbol does; C never calls it,
// so the header does not declare it.
/// cbindgen:ignore
#[doc(hidden)]
#[no_mangle]
pub extern "C" fn vram_monitor_event_layout_anchor(_event: *const VramMonitorEvent) {}
