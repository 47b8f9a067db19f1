//! The C surface of observability: the built-in HTTP endpoint and the GPUs' memory health.
//! (Prometheus text goes through `vram_monitor_report` with
//! `VRAM_MONITOR_REPORT_FORMAT_PROMETHEUS`.)

use std::ffi::{c_char, CStr};

use crate::handle::{on_monitor, VramMonitor};
use crate::result::VramMonitorResult;
use vram_monitor::device_health::{DeviceHealth, Signal, SignalStatus};

/// Bytes of `VramMonitorDeviceHealth::uuid` and `::name`, the NUL included (NVML's own
/// buffer size for both).
pub const VRAM_MONITOR_DEVICE_STRING_BYTES: u32 = 96;
const STRING_BYTES: usize = 96;
// cbindgen writes array lengths as they are spelled: the struct spells 96; keep them equal.
const _: () = assert!(VRAM_MONITOR_DEVICE_STRING_BYTES as usize == STRING_BYTES);

/// The memory health of one GPU that holds registrations, as of the last full check; filled
/// by `vram_monitor_device_health`. Each signal has a status: its value is meaningful only
/// when the status is `VRAM_MONITOR_SIGNAL_STATUS_SUPPORTED` (then 0 means zero, not "not
/// known"). NVML is read after a check at most once per second.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramMonitorDeviceHealth {
    /// The CUDA device ordinal.
    pub device: i32,
    /// Whether NVML could read this device at all (false: every status is `UNAVAILABLE`;
    /// the JSON report's `detail` says why).
    pub nvml_available: bool,
    /// Whether the GPU reports a memory fault now: uncorrectable ECC errors, pages pending
    /// retirement, remapped rows pending or failed, or a memory XID (48, 63, 64, 79, 92, 94,
    /// 95) since the monitor started. Any makes the monitor unhealthy.
    pub memory_fault: bool,
    /// Status of `ecc_uncorrected_volatile` (`UNSUPPORTED` without ECC or with ECC off).
    pub ecc_uncorrected_volatile_status: SignalStatus,
    /// Uncorrectable ECC errors since the driver was loaded (NVML's volatile counter).
    pub ecc_uncorrected_volatile: u64,
    /// Status of `retired_pages_pending` (GPUs before Ampere retire pages; later ones remap
    /// rows and say `UNSUPPORTED` here).
    pub retired_pages_pending_status: SignalStatus,
    /// Pages are pending retirement; a GPU reset retires them.
    pub retired_pages_pending: bool,
    /// Status of the `remapped_rows_*` fields (Ampere and newer).
    pub remapped_rows_status: SignalStatus,
    /// A row remapping is pending; a GPU reset applies it.
    pub remapped_rows_pending: bool,
    /// A row remapping failed: no spare rows left, the GPU needs service.
    pub remapped_rows_failed: bool,
    /// Rows remapped because of correctable errors.
    pub remapped_rows_correctable: u64,
    /// Rows remapped because of uncorrectable errors.
    pub remapped_rows_uncorrectable: u64,
    /// Status of `critical_xid_events` and `last_critical_xid`.
    pub critical_xid_status: SignalStatus,
    /// Critical XID events seen since the monitor started watching this GPU.
    pub critical_xid_events: u64,
    /// The last critical XID seen (0: none).
    pub last_critical_xid: u64,
    /// When the monitor took this reading, milliseconds since the Unix epoch.
    pub read_unix_ms: u64,
    /// The GPU's UUID ("GPU-..."), NUL-terminated; empty when unknown.
    pub uuid: [c_char; 96],
    /// The GPU's product name, NUL-terminated; empty when unknown.
    pub name: [c_char; 96],
}

fn c_string(s: Option<&str>) -> [c_char; STRING_BYTES] {
    let mut out = [0 as c_char; STRING_BYTES];
    let bytes = s.unwrap_or("").as_bytes();
    // Truncate at a character boundary, keeping room for the NUL.
    let mut len = bytes.len().min(STRING_BYTES - 1);
    while len > 0 && !s.unwrap_or("").is_char_boundary(len) {
        len -= 1;
    }
    for (o, b) in out.iter_mut().zip(&bytes[..len]) {
        *o = *b as c_char;
    }
    out
}

impl From<&DeviceHealth> for VramMonitorDeviceHealth {
    fn from(d: &DeviceHealth) -> Self {
        let rows = d.remapped_rows.value().copied().unwrap_or_default();
        VramMonitorDeviceHealth {
            device: d.device,
            nvml_available: d.available,
            memory_fault: d.memory_fault,
            ecc_uncorrected_volatile_status: d.ecc_uncorrected_volatile.status(),
            ecc_uncorrected_volatile: d.ecc_uncorrected_volatile.value().copied().unwrap_or(0),
            retired_pages_pending_status: d.retired_pages_pending.status(),
            retired_pages_pending: d.retired_pages_pending == Signal::Value(true),
            remapped_rows_status: d.remapped_rows.status(),
            remapped_rows_pending: rows.pending,
            remapped_rows_failed: rows.failed,
            remapped_rows_correctable: rows.correctable,
            remapped_rows_uncorrectable: rows.uncorrectable,
            critical_xid_status: d.critical_xid_events.status(),
            critical_xid_events: d.critical_xid_events.value().copied().unwrap_or(0),
            last_critical_xid: d.last_critical_xid.unwrap_or(0),
            read_unix_ms: d.read_unix_ms,
            uuid: c_string(d.uuid.as_deref()),
            name: c_string(d.name.as_deref()),
        }
    }
}

/// Fills `out[0..count)` with the memory health of the GPUs that hold registrations (one
/// entry per GPU, by ordinal) and writes `count` to `*out_count`. Cheap: no NVML call (the
/// monitor thread reads NVML after its checks).
///
/// If `capacity` is smaller than the count, nothing is written to `out`, `*out_count` is the
/// count needed and the result is `BUFFER_TOO_SMALL` (call with `out = NULL, capacity = 0` to
/// ask; the count can change between two calls). No entries before the first full check or
/// without registrations. `out_count` must not be NULL; `out` may be NULL only when
/// `capacity` is 0. Callable from any thread, also from a callback.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_device_health(
    monitor: *const VramMonitor,
    out: *mut VramMonitorDeviceHealth,
    capacity: usize,
    out_count: *mut usize,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        // FORKED in a forked child: its locks may be held by a thread that does not exist there.
        if out_count.is_null() || (out.is_null() && capacity > 0) {
            return VramMonitorResult::NullArgument;
        }
        let devices = monitor.device_health();
        if capacity < devices.len() {
            unsafe { *out_count = devices.len() };
            return VramMonitorResult::BufferTooSmall;
        }
        for (i, d) in devices.iter().enumerate() {
            // SAFETY: out has at least capacity >= devices.len() writable entries.
            unsafe { out.add(i).write(VramMonitorDeviceHealth::from(d)) };
        }
        unsafe { *out_count = devices.len() };
        VramMonitorResult::Ok
    })
}

/// Starts the built-in HTTP endpoint on `address` and, if `out_port` is not NULL, writes the
/// port it listens on there (useful with port 0, which lets the system choose).
///
/// Off unless called. `address` (NUL-terminated) is `"PORT"` or `"localhost:PORT"` (both
/// loopback), or an IP literal with a port (`"127.0.0.1:9464"`, `"0.0.0.0:9464"` for every
/// interface, `"[::1]:9464"`); NULL or `""` means `"127.0.0.1:9464"`. Host names are not
/// resolved. Serves, read-only, one request per connection:
///  - `GET /health` and `GET /readyz`: the JSON `{"health": {...}, "devices": [...]}`
///    (docs/health-schema.md), status 200 when healthy and 503 when not;
///  - `GET /livez`: 200 while the monitor is alive and checking, 503 when it has stalled;
///  - `GET /metrics`: the Prometheus text format (version 0.0.4);
///  - `HEAD` of these; other methods 405, other paths 404, malformed requests 400, a
///    request head over 8 KiB 431, no first byte within 1 s or no whole head within 5 s
///    408. Absolute-form targets (`http://host/health`) route by their path.
///
/// Load never turns into a 503 (which means "unhealthy"): beyond 128 connections, or when
/// the process is out of file descriptors, the oldest connection that has sent nothing is
/// closed to make room, and new connections are still accepted and answered.
///
/// Runs on one thread of its own ("vram-monitor-http") that no client can hold up, never on
/// the monitor thread; a request reads a snapshot and never waits for a check. Stops when
/// `vram_monitor_stop_http` or `vram_monitor_free` is called (both join its thread, also
/// when the process is out of file descriptors). Returns `INVALID_ARGUMENT` for an
/// address that does not parse, `HTTP_BIND_FAILED` when it cannot listen there (the reason
/// is logged), `HTTP_ALREADY_SERVING` if it is already serving, `FORKED` in a forked child.
/// Callable from any thread, also from a callback.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_serve_http(
    monitor: *mut VramMonitor,
    address: *const c_char,
    out_port: *mut u16,
) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        let address = if address.is_null() {
            None
        } else {
            // SAFETY: NUL-terminated per the contract.
            match unsafe { CStr::from_ptr(address) }.to_str() {
                Ok(s) => Some(s),
                Err(_) => return VramMonitorResult::InvalidArgument,
            }
        };
        match monitor.serve_http(address) {
            Ok(bound) => {
                if !out_port.is_null() {
                    unsafe { *out_port = bound.port() };
                }
                VramMonitorResult::Ok
            }
            Err(error) => {
                log::warn!(target: "vram_monitor", "vram_monitor_serve_http: {error}");
                VramMonitorResult::from(&error)
            }
        }
    })
}

/// Stops the built-in HTTP endpoint, if it is serving, and joins its thread (which waits
/// for no client: at most a quarter of a second); when it returns, the port is closed.
/// `OK` whether or not it was serving. Callable from any thread, also from a callback.
#[no_mangle]
///
/// # Safety
/// Pointer arguments must be NULL or valid as documented above.
pub unsafe extern "C" fn vram_monitor_stop_http(monitor: *mut VramMonitor) -> VramMonitorResult {
    on_monitor(monitor, |monitor| {
        monitor.stop_http();
        VramMonitorResult::Ok
    })
}

/// The static name of a signal status ("supported", "unsupported", "unavailable"; "unknown"
/// for other values). Never NULL; do not free.
#[no_mangle]
pub extern "C" fn vram_monitor_signal_status_str(status: i32) -> *const c_char {
    let name: &'static [u8] = match status {
        s if s == SignalStatus::Supported as i32 => b"supported\0",
        s if s == SignalStatus::Unsupported as i32 => b"unsupported\0",
        s if s == SignalStatus::Unavailable as i32 => b"unavailable\0",
        _ => b"unknown\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings_are_truncated_at_a_character_boundary_and_terminated() {
        let long = "é".repeat(60); // 120 bytes
        let c = c_string(Some(&long));
        let bytes: Vec<u8> = c.iter().map(|&b| b as u8).take_while(|&b| b != 0).collect();
        assert!(bytes.len() < STRING_BYTES);
        assert!(bytes.len() >= STRING_BYTES - 2, "as much as fits");
        assert!(std::str::from_utf8(&bytes).is_ok());
        assert_eq!(c_string(None)[0], 0);
        let short = c_string(Some("GPU-1"));
        assert_eq!(&short[..6].iter().map(|&b| b as u8).collect::<Vec<_>>(), b"GPU-1\0");
    }
}
