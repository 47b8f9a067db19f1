//! `#[repr(C)]` mirrors of the core's values, as C sees them.

use std::ffi::{c_char, c_void};

use vram_monitor::events::EventKind;
use vram_monitor::health::{CheckSummary, Health};
use vram_monitor::process_vram::VramSource;
use vram_monitor::verdict::Verdict;

/// The health snapshot, filled by `vram_monitor_health`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramMonitorHealth {
    /// True when no registration is in violation, the last check did not fail, no GPU that
    /// holds registrations reports a memory fault, and the monitor is not stalled
    /// (`vram_monitor_stall`).
    pub healthy: bool,
    /// True when a driver query failed in the last full check.
    pub last_check_failed: bool,
    /// Number of registrations.
    pub registrations: u64,
    /// Sum of their sizes in bytes.
    pub tracked_bytes: u64,
    /// Registrations whose last verdict is a violation.
    pub current_violations: u64,
    /// Violation events since the monitor was created.
    pub total_violations: u64,
    /// Full checks completed.
    pub checks_completed: u64,
    /// Full checks in which a driver query failed.
    pub checks_failed: u64,
    /// End of the last full check, milliseconds since the Unix epoch (0: none yet).
    pub last_check_unix_ms: u64,
    /// Duration of the last full check in microseconds.
    pub last_check_duration_us: u64,
    /// This process's VRAM use in bytes, read after a check, at most once per second.
    pub process_vram_bytes: u64,
    /// Where `process_vram_bytes` came from.
    pub process_vram_source: VramSource,
    /// The check interval in milliseconds.
    pub interval_ms: u64,
    /// GPUs holding registrations that report a memory fault (uncorrectable ECC errors,
    /// pages pending retirement, remapped rows pending or failed, a memory XID); any makes
    /// `healthy` false. Details: `vram_monitor_device_health`.
    pub device_faults: u64,
}

impl From<&Health> for VramMonitorHealth {
    fn from(h: &Health) -> Self {
        VramMonitorHealth {
            healthy: h.healthy,
            last_check_failed: h.last_check_failed,
            registrations: h.registrations,
            tracked_bytes: h.tracked_bytes,
            current_violations: h.current_violations,
            total_violations: h.total_violations,
            checks_completed: h.checks_completed,
            checks_failed: h.checks_failed,
            last_check_unix_ms: h.last_check_unix_ms,
            last_check_duration_us: h.last_check_duration_us,
            process_vram_bytes: h.process_vram.bytes,
            process_vram_source: h.process_vram.source,
            interval_ms: h.interval_ms,
            device_faults: h.device_faults,
        }
    }
}

/// The stall state, filled by `vram_monitor_stall` (a struct of its own: `VramMonitorHealth`
/// is part of the ABI and does not grow). docs/health-schema.md, "Stalls", gives the rule.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramMonitorStall {
    /// True when the monitor stopped checking: the check in progress made no progress for
    /// longer than `deadline_ms`, or no check completed for longer than the interval plus
    /// `grace_ms`. A stalled monitor's `VramMonitorHealth.healthy` is false.
    pub stalled: bool,
    /// True while a full check is in progress.
    pub check_in_progress: bool,
    /// How long the check in progress has run, in milliseconds (0 when none is).
    pub check_in_progress_ms: u64,
    /// When the last full check started, milliseconds since the Unix epoch (0: none yet).
    pub last_check_started_unix_ms: u64,
    /// The stall deadline in force, in milliseconds.
    pub deadline_ms: u64,
    /// The stall grace in force, in milliseconds.
    pub grace_ms: u64,
}

impl From<&Health> for VramMonitorStall {
    fn from(h: &Health) -> Self {
        VramMonitorStall {
            stalled: h.stalled,
            check_in_progress: h.check_in_progress_ms.is_some(),
            check_in_progress_ms: h.check_in_progress_ms.unwrap_or(0),
            last_check_started_unix_ms: h.last_check_started_unix_ms,
            deadline_ms: h.stall_deadline_ms,
            grace_ms: h.stall_grace_ms,
        }
    }
}

/// The result of one full check, filled by `vram_monitor_check_now`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramMonitorCheckSummary {
    /// Registrations checked.
    pub checked: u64,
    /// Of those, resident (not in violation and not failing their query).
    pub resident: u64,
    /// Of those, in violation (by their last verdict).
    pub violations: u64,
    /// Of those, whose driver query is failing. A registration can be both in violation (from
    /// an earlier check) and failing now: it is counted in both, and once in neither
    /// `resident`.
    pub check_failures: u64,
    /// Duration of the check in microseconds.
    pub duration_us: u64,
    /// Health after the check.
    pub healthy: bool,
}

impl From<&CheckSummary> for VramMonitorCheckSummary {
    fn from(s: &CheckSummary) -> Self {
        VramMonitorCheckSummary {
            checked: s.checked,
            resident: s.resident,
            violations: s.violations,
            check_failures: s.check_failures,
            duration_us: s.duration_us,
            healthy: s.healthy,
        }
    }
}

/// An event, passed to the callback. Valid only during the callback: copy what you keep
/// (the strings included).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramMonitorEvent {
    /// What happened.
    pub kind: EventKind,
    /// The registration concerned (0 for `VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED` and
    /// `VRAM_MONITOR_EVENT_KIND_DEVICE_FAULT`).
    pub registration_id: u64,
    /// Its label, NUL-terminated UTF-8 (empty for health changes and device faults).
    pub label: *const c_char,
    /// Its first byte.
    pub ptr: *const c_void,
    /// Its size in bytes.
    pub size: usize,
    /// The device it was registered on (-1 for health changes; the GPU at fault for device
    /// faults).
    pub device: i32,
    /// The verdict now (`VRAM_MONITOR_VERDICT_CHECK_FAILED` for a failed query;
    /// `VRAM_MONITOR_VERDICT_RESIDENT` for device faults, which change no verdict).
    pub verdict: Verdict,
    /// The verdict before.
    pub previous_verdict: Verdict,
    /// The monitor's health after this event.
    pub healthy: bool,
    /// A sentence for people, NUL-terminated UTF-8.
    pub message: *const c_char,
    /// When it was noticed, milliseconds since the Unix epoch.
    pub timestamp_unix_ms: u64,
    /// `VRAM_MONITOR_EVENT_KIND_MODIFIED`: 1 MiB chunks found different from the seal so far
    /// (0 for other kinds). Fields appended at the end: hosts built against an older header
    /// read the event as before.
    pub modified_chunks: u64,
    /// `VRAM_MONITOR_EVENT_KIND_MODIFIED`: byte offset of the first differing chunk from the
    /// registration's first byte (0 for other kinds).
    pub first_modified_offset: u64,
    /// What went wrong, NUL-terminated, as the log records' `error_kind` field names it:
    /// "residency_violation", "check_failed", "content_modified", "integrity_failed",
    /// "device_memory_fault", or for a health change to unhealthy its cause (also "stalled");
    /// "" for a recovery or health regained. Appended: hosts built against an older header
    /// read the event as before.
    pub error_kind: *const c_char,
}
