//! The one result enum of the C API and its strings.

use std::ffi::c_char;

use vram_monitor::driver::DriverError;
use vram_monitor::error::Error;
use vram_monitor::verdict::Verdict;

/// The result of every fallible function. Values are grouped by range and never reused:
/// 0 success; 1xx bad arguments; 2xx registration refused, by verdict (200 + verdict);
/// 3xx CUDA driver; 4xx threading and state; 5xx internal; 6xx the built-in HTTP endpoint;
/// 7xx content integrity.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VramMonitorResult {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 100,
    /// An argument is out of range: size 0, `ptr + size` wraps, interval 0.
    InvalidArgument = 101,
    /// A label is not valid UTF-8 or is longer than 4096 bytes.
    InvalidLabel = 102,
    /// The output buffer is too small; the length needed (with the NUL) was written to the
    /// length out-parameter.
    BufferTooSmall = 103,
    /// No registration with this id exists in this monitor.
    UnknownRegistration = 104,
    /// The report format is not one of `VramMonitorReportFormat`.
    UnknownFormat = 105,
    /// `vram_monitor_register_many`: the same `[ptr, ptr + size)` appears earlier in the
    /// same call (the earlier entry is judged; this one is not registered).
    DuplicateRange = 106,
    /// `vram_monitor_register_many`: at least one entry failed (each entry's own code is in
    /// `out_results`). As an entry's own code: not registered because another entry of an
    /// all-or-nothing call failed.
    EntriesFailed = 107,
    /// Registration refused: unified (managed) memory.
    RefusedManaged = 201,
    /// Registration refused: host memory.
    RefusedHost = 202,
    /// Registration refused: not mapped (freed, or never CUDA memory).
    RefusedNotMapped = 203,
    /// Registration refused: a different buffer than expected (not produced today; reserved).
    RefusedReplaced = 204,
    /// Registration refused: the range runs past the allocation or mapping.
    RefusedOutOfRange = 205,
    /// Registration refused: spans memory of more than one device.
    RefusedWrongDevice = 206,
    /// No CUDA driver library (libcuda.so) could be loaded.
    DriverNotFound = 300,
    /// The CUDA driver library lacks a function this library needs.
    DriverSymbolMissing = 301,
    /// `cuInit` failed (for example a stub libcuda, or no device).
    DriverInitFailed = 302,
    /// A driver query failed (the code, even one unknown to this library, is logged).
    DriverError = 303,
    /// The function would wait for the monitor thread but was called from a callback, on that
    /// thread: refused instead of deadlocking.
    CalledFromCallback = 400,
    /// The monitor thread could not be started.
    ThreadSpawnFailed = 401,
    /// The monitor thread has stopped.
    Stopped = 402,
    /// Called in a child process forked after the monitor was created: the monitor's thread
    /// does not exist there, so nothing is done (`vram_monitor_free` releases the handle
    /// without waiting; the monitor's memory is leaked in the child).
    Forked = 403,
    /// The monitor is being freed or was freed: `vram_monitor_free` has begun on it (from any
    /// thread). Also the answer to a second `vram_monitor_free`.
    Closed = 404,
    /// An internal error (a caught panic). The monitor is still usable.
    Panic = 500,
    /// The HTTP endpoint could not listen on the address (in use, not permitted, not an
    /// address of this machine; the reason is logged).
    HttpBindFailed = 600,
    /// The HTTP endpoint is already serving: call `vram_monitor_stop_http` first.
    HttpAlreadyServing = 601,
    /// Sealing or verifying a registration on a device without `vram_monitor_enable_integrity`.
    IntegrityNotEnabled = 700,
    /// `vram_monitor_enable_integrity`: no CUDA context is current on the calling thread.
    NoCurrentContext = 701,
    /// `vram_monitor_enable_integrity`: the current context belongs to another device.
    ContextWrongDevice = 702,
    /// `vram_monitor_enable_integrity`: already enabled for this device.
    IntegrityAlreadyEnabled = 703,
    /// `vram_monitor_seal` / `vram_monitor_register_sealed`: already sealed (use reseal).
    AlreadySealed = 704,
    /// `vram_monitor_reseal` / `vram_monitor_unseal`: the registration is not sealed.
    NotSealed = 705,
    /// Sealing a registration whose verdict is not `RESIDENT` (only resident memory is sealed).
    NotResident = 706,
    /// The driver refused the fingerprint kernel (older than the PTX it needs; logged).
    KernelUnavailable = 707,
    /// A launch or copy failed in the lent context (a sticky error, or the context was
    /// destroyed; logged): content unknown, and the monitor is unhealthy until integrity is
    /// disabled for that device.
    IntegrityFailed = 708,
}

impl From<&Error> for VramMonitorResult {
    fn from(error: &Error) -> Self {
        match error {
            Error::InvalidArgument(_) => VramMonitorResult::InvalidArgument,
            Error::InvalidLabel(_) => VramMonitorResult::InvalidLabel,
            Error::UnknownRegistration(_) => VramMonitorResult::UnknownRegistration,
            Error::Refused(verdict) => match verdict {
                Verdict::Managed => VramMonitorResult::RefusedManaged,
                Verdict::Host => VramMonitorResult::RefusedHost,
                Verdict::NotMapped => VramMonitorResult::RefusedNotMapped,
                Verdict::Replaced => VramMonitorResult::RefusedReplaced,
                Verdict::OutOfRange => VramMonitorResult::RefusedOutOfRange,
                Verdict::WrongDevice => VramMonitorResult::RefusedWrongDevice,
                Verdict::CheckFailed | Verdict::Resident | Verdict::Modified => VramMonitorResult::DriverError,
            },
            Error::Driver(DriverError::NotFound) => VramMonitorResult::DriverNotFound,
            Error::Driver(DriverError::SymbolMissing(_)) => VramMonitorResult::DriverSymbolMissing,
            Error::Driver(DriverError::InitFailed(_)) => VramMonitorResult::DriverInitFailed,
            Error::Driver(DriverError::Call { .. }) => VramMonitorResult::DriverError,
            Error::CalledFromCallback => VramMonitorResult::CalledFromCallback,
            Error::ThreadSpawn(_) => VramMonitorResult::ThreadSpawnFailed,
            Error::Stopped => VramMonitorResult::Stopped,
            Error::Forked => VramMonitorResult::Forked,
            Error::HttpBind(_) => VramMonitorResult::HttpBindFailed,
            Error::AlreadyServing => VramMonitorResult::HttpAlreadyServing,
            Error::DuplicateRange => VramMonitorResult::DuplicateRange,
            Error::EntriesFailed => VramMonitorResult::EntriesFailed,
            Error::IntegrityNotEnabled(_) => VramMonitorResult::IntegrityNotEnabled,
            Error::NoCurrentContext => VramMonitorResult::NoCurrentContext,
            Error::ContextWrongDevice(_) => VramMonitorResult::ContextWrongDevice,
            Error::IntegrityAlreadyEnabled(_) => VramMonitorResult::IntegrityAlreadyEnabled,
            Error::AlreadySealed => VramMonitorResult::AlreadySealed,
            Error::NotSealed => VramMonitorResult::NotSealed,
            Error::NotResident(_) => VramMonitorResult::NotResident,
            Error::KernelUnavailable(_) => VramMonitorResult::KernelUnavailable,
            Error::IntegrityFailed(_) => VramMonitorResult::IntegrityFailed,
        }
    }
}

impl VramMonitorResult {
    /// A static, NUL-terminated description.
    pub(crate) fn description(raw: i32) -> &'static [u8] {
        match raw {
            0 => b"ok\0",
            100 => b"a required pointer argument was NULL\0",
            101 => b"an argument is out of range\0",
            102 => b"the label is not valid UTF-8 or longer than 4096 bytes\0",
            103 => b"the output buffer is too small\0",
            104 => b"no registration with this id\0",
            105 => b"unknown report format\0",
            106 => b"the same range appears earlier in this register_many call\0",
            107 => b"at least one register_many entry failed (or, for an entry: another entry failed)\0",
            201 => b"registration refused: managed (unified) memory\0",
            202 => b"registration refused: host memory\0",
            203 => b"registration refused: not mapped (freed or never CUDA memory)\0",
            204 => b"registration refused: replaced buffer\0",
            205 => b"registration refused: range runs past the allocation\0",
            206 => b"registration refused: range spans another device\0",
            300 => b"no CUDA driver library found\0",
            301 => b"the CUDA driver library lacks a required function\0",
            302 => b"cuInit failed\0",
            303 => b"a CUDA driver query failed\0",
            400 => b"called from a monitor callback, where it would deadlock\0",
            401 => b"could not start the monitor thread\0",
            402 => b"the monitor thread has stopped\0",
            403 => b"called in a forked child process: the monitor belongs to the parent\0",
            404 => b"the monitor is being freed or was freed\0",
            500 => b"internal error (caught panic)\0",
            600 => b"the HTTP endpoint could not listen on the address\0",
            601 => b"the HTTP endpoint is already serving\0",
            700 => b"integrity is not enabled for this registration's device\0",
            701 => b"no CUDA context is current on the calling thread\0",
            702 => b"the current CUDA context belongs to another device\0",
            703 => b"integrity is already enabled for this device\0",
            704 => b"the registration is already sealed\0",
            705 => b"the registration is not sealed\0",
            706 => b"only resident memory can be sealed\0",
            707 => b"the driver refused the fingerprint kernel\0",
            708 => b"verification failed in the lent CUDA context\0",
            _ => b"unknown result code\0",
        }
    }

    /// The description as a C string pointer.
    pub(crate) fn c_description(raw: i32) -> *const c_char {
        Self::description(raw).as_ptr().cast()
    }
}

/// Returns the result code of a core error from the enclosing `extern "C"` function, or gives
/// the value of `Ok`.
macro_rules! try_ffi {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(error) => return $crate::VramMonitorResult::from(&error),
        }
    };
}
pub(crate) use try_ffi;
