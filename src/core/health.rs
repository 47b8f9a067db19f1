//! The health snapshot an engine serves from its own health endpoint, and the summary of one
//! full check.

use crate::core::process_vram::ProcessVram;

/// The monitor's state, read at once. The default is a monitor that has seen nothing: no
/// registration, no check, every figure zero (a test's or a stand-in snapshot's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// No registration is in violation (MODIFIED included), the last check did not fail, no
    /// GPU that holds registrations reports a memory fault, the monitor is not stalled, and
    /// no lent context failed integrity verification.
    pub healthy: bool,
    /// Number of registrations.
    pub registrations: u64,
    /// Sum of their sizes in bytes.
    pub tracked_bytes: u64,
    /// Registrations whose last verdict is a violation.
    pub current_violations: u64,
    /// Violation events since the monitor started.
    pub total_violations: u64,
    /// Full checks completed since the monitor started.
    pub checks_completed: u64,
    /// Full checks in which at least one driver query failed.
    pub checks_failed: u64,
    /// Whether a driver query failed in the last full check.
    pub last_check_failed: bool,
    /// When the last full check ended, ms since the Unix epoch (0: none yet).
    pub last_check_unix_ms: u64,
    /// How long the last full check took, in microseconds.
    pub last_check_duration_us: u64,
    /// This process's VRAM use, read after a check, at most once per second.
    pub process_vram: ProcessVram,
    /// The check interval in milliseconds.
    pub interval_ms: u64,
    /// GPUs holding registrations that report a memory fault (see
    /// [`crate::Monitor::device_health`]).
    pub device_faults: u64,
    /// The monitor stopped checking: the check in progress made no progress for longer than
    /// the stall deadline, or no check completed for longer than the interval plus the grace
    /// (see [`crate::watchdog`]). Cleared as soon as checks progress again.
    pub stalled: bool,
    /// When the last full check started, ms since the Unix epoch (0: none yet).
    pub last_check_started_unix_ms: u64,
    /// How long the check in progress has run, in ms (`None`: no check in progress).
    pub check_in_progress_ms: Option<u64>,
    /// The stall deadline in force, in ms (see [`crate::watchdog::StallLimits`]).
    pub stall_deadline_ms: u64,
    /// The stall grace in force, in ms.
    pub stall_grace_ms: u64,
    /// Sealed registrations (content integrity; see [`crate::Monitor::seal`]).
    pub sealed: u64,
    /// Their bytes.
    pub sealed_bytes: u64,
    /// Bytes integrity verification has read since the monitor started.
    pub integrity_verified_bytes: u64,
    /// Full verification passes over a device's sealed bytes completed.
    pub integrity_passes: u64,
    /// When the last full pass completed, ms since the Unix epoch (0: none yet).
    pub integrity_last_pass_unix_ms: u64,
    /// Integrity verification failed in a device's lent context (a sticky error, or the
    /// context destroyed): content unknown. Unhealthy until integrity is disabled there.
    pub integrity_failed: bool,
}

/// The result of one full check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckSummary {
    /// Registrations checked.
    pub checked: u64,
    /// Of those, resident.
    pub resident: u64,
    /// Of those, in violation.
    pub violations: u64,
    /// Of those, whose driver query failed.
    pub check_failures: u64,
    /// Duration of the check in microseconds.
    pub duration_us: u64,
    /// Health after the check.
    pub healthy: bool,
}
