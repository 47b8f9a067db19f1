//! The monitor's read view: what an output reads of a monitor, never waiting for a check.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Shared;
use crate::core::device_health::DeviceHealth;
use crate::core::events::Unhealthy;
use crate::core::health::Health;
use crate::core::process_vram::ProcessVram;
use crate::core::registry::{RegistrationFigures, RegistrationId, RegistrationInfo};
use crate::core::sync::lock;

/// What an output reads of a monitor: the health snapshot, the GPUs' memory health, and the
/// registrations tallied by device and verdict, each read when asked, never waiting for a
/// check. The HTTP endpoint serves from one (`http::HttpServer::serve`) without holding the
/// monitor, and the monitor knows nothing of it. Cheap to clone, `Send` and
/// `Sync`; it stays readable after the monitor is dropped, showing the state it ended in.
#[derive(Clone)]
pub struct MonitorView {
    pub(super) shared: Arc<Shared>,
}

impl MonitorView {
    /// The health snapshot ([`Monitor::health`]).
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// The memory health of the GPUs that hold registrations ([`Monitor::device_health`]).
    pub fn device_health(&self) -> Vec<DeviceHealth> {
        self.shared.device_health.snapshot()
    }

    /// Registrations and their bytes by device and verdict: counts, no copy of each
    /// registration.
    pub fn tally(&self) -> Vec<RegistrationFigures> {
        self.shared.registry.tally()
    }

    /// One registration as it stands now ([`Monitor::registration`]).
    pub fn registration(&self, id: RegistrationId) -> Option<RegistrationInfo> {
        self.shared.registration(id)
    }

    /// A copy of the registrations, in id order ([`Monitor::registrations`]).
    pub fn registrations(&self) -> Vec<RegistrationInfo> {
        self.shared.registrations()
    }
}

impl Shared {
    pub(super) fn registration(&self, id: RegistrationId) -> Option<RegistrationInfo> {
        let mut info = self.registry.get(id)?;
        info.seal = self.integrity.seal_info(id);
        Some(info)
    }

    pub(super) fn registrations(&self) -> Vec<RegistrationInfo> {
        let mut all = self.registry.snapshot();
        let seals = self.integrity.seal_infos();
        if !seals.is_empty() {
            for r in all.iter_mut() {
                r.seal = seals.get(&r.id).copied();
            }
        }
        all
    }

    /// Why `health` is unhealthy (`None`: it is healthy): what its health change names.
    pub(super) fn unhealthy_cause(&self, health: &Health) -> Option<Unhealthy> {
        if health.healthy {
            return None;
        }
        if health.stalled {
            return Some(Unhealthy::Stalled(self.stall.state(self.interval_ms.load(Ordering::Relaxed)).why));
        }
        let integrity = self.integrity.summary();
        Some(Unhealthy::of(health.last_check_failed, health.integrity_failed, health.current_violations, integrity.modified))
    }

    pub(super) fn health(&self) -> Health {
        let counts = self.registry.counts();
        let device_faults = self.device_health.faulted();
        let interval_ms = self.interval_ms.load(Ordering::Relaxed);
        let stall = self.stall.state(interval_ms);
        let (stall_deadline_ms, stall_grace_ms) = self.stall.limits_ms();
        let integrity = self.integrity.summary();
        let stats = lock(&self.stats);
        Health {
            healthy: counts.violating == 0 && !stats.last_check_failed && device_faults == 0 && !stall.stalled && !integrity.failed,
            registrations: counts.registrations,
            tracked_bytes: counts.tracked_bytes,
            current_violations: counts.violating,
            total_violations: self.total_violations.load(Ordering::Relaxed),
            checks_completed: stats.checks_completed,
            checks_failed: stats.checks_failed,
            last_check_failed: stats.last_check_failed,
            last_check_unix_ms: stats.last_check_unix_ms,
            last_check_duration_us: stats.last_check_duration_us,
            process_vram: stats.process_vram.unwrap_or(ProcessVram::UNKNOWN),
            interval_ms,
            device_faults,
            stalled: stall.stalled,
            last_check_started_unix_ms: self.stall.last_started_unix_ms(),
            check_in_progress_ms: stall.in_progress_ms,
            stall_deadline_ms,
            stall_grace_ms,
            sealed: integrity.sealed,
            sealed_bytes: integrity.sealed_bytes,
            integrity_verified_bytes: integrity.verified_bytes,
            integrity_passes: integrity.passes,
            integrity_last_pass_unix_ms: integrity.last_pass_unix_ms,
            integrity_failed: integrity.failed,
        }
    }
}
