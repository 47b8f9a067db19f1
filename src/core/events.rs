//! Events: what the engine hears when something changes, and the log record for each.

use crate::core::registry::{RegistrationId, RegistrationInfo};
use crate::core::verdict::Verdict;

/// What an event reports. The numbers are part of the C ABI.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A registration stopped being resident (or moved from one violation to another).
    Violation = 1,
    /// A registration that was in violation is resident again.
    Recovered = 2,
    /// The monitor's overall health flipped (see the event's `healthy` field).
    HealthChanged = 3,
    /// The driver query for a registration failed: residency is unknown, not moved.
    CheckFailed = 4,
    /// A GPU that holds registrations reports a memory fault (uncorrectable ECC errors, pages
    /// pending retirement, remapped rows pending or failed, a memory XID) or a critical XID
    /// event. Not about one registration: `device` names the GPU, the message says what.
    DeviceFault = 5,
    /// A sealed registration's bytes differ from its fingerprint (verdict MODIFIED; the
    /// message gives the differing chunks and the first one's offset).
    Modified = 6,
    /// Integrity verification failed in a device's lent context (a sticky error, or the
    /// context was destroyed): content unknown, the monitor unhealthy. `device` names it.
    IntegrityFailed = 7,
}

impl EventKind {
    /// The stable lower-case name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Violation => "violation",
            EventKind::Recovered => "recovered",
            EventKind::HealthChanged => "health_changed",
            EventKind::CheckFailed => "check_failed",
            EventKind::DeviceFault => "device_fault",
            EventKind::Modified => "modified",
            EventKind::IntegrityFailed => "integrity_failed",
        }
    }
}

/// One thing the monitor noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The registration concerned (0 for [`EventKind::HealthChanged`] and
    /// [`EventKind::DeviceFault`]).
    pub registration_id: RegistrationId,
    /// Its label (empty for health changes and device faults).
    pub label: String,
    /// Its first byte.
    pub ptr: u64,
    /// Its size.
    pub size: u64,
    /// The device it was registered on (-1 for health changes; the faulty GPU for device
    /// faults).
    pub device: i32,
    /// The verdict now.
    pub verdict: Verdict,
    /// The verdict before.
    pub previous_verdict: Verdict,
    /// The monitor's health after this event.
    pub healthy: bool,
    /// A sentence for people.
    pub message: String,
    /// When it was noticed, in milliseconds since the Unix epoch.
    pub timestamp_unix_ms: u64,
    /// [`EventKind::Modified`]: chunks (of 1 MiB) found different from the seal so far.
    pub modified_chunks: u64,
    /// [`EventKind::Modified`]: byte offset of the first differing chunk in the registration.
    pub first_modified_offset: u64,
    /// What went wrong, as the log's `error_kind` field names it (empty when nothing did: a
    /// recovery, health regained): `residency_violation`, `check_failed`, `content_modified`,
    /// `integrity_failed`, `device_memory_fault`, or, for a health change only, `stalled`.
    /// Log searches and alerts key on it, so a health change names its own cause.
    pub error_kind: &'static str,
}

/// Why the monitor is unhealthy: a health change's message and `error_kind` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unhealthy {
    /// No check has completed in time (the watchdog's reason).
    Stalled(String),
    /// The last check's driver queries failed.
    CheckFailed,
    /// A lent context failed during integrity verification.
    IntegrityFailed,
    /// Registrations are not resident (freed, moved, replaced, ...).
    NotResident,
    /// Every registration in violation is a sealed one found MODIFIED.
    Modified,
    /// Nothing in violation: a GPU that holds registrations reports a memory fault.
    DeviceFault,
}

impl Unhealthy {
    /// The cause of an unhealthy monitor that is not stalled, by precedence, from what it
    /// knows: `violating` registrations in violation, `modified` of them sealed and MODIFIED.
    pub(crate) fn of(check_failed: bool, integrity_failed: bool, violating: u64, modified: u64) -> Unhealthy {
        if check_failed {
            Unhealthy::CheckFailed
        } else if integrity_failed {
            Unhealthy::IntegrityFailed
        } else if violating > modified {
            Unhealthy::NotResident
        } else if violating > 0 {
            Unhealthy::Modified
        } else {
            Unhealthy::DeviceFault
        }
    }
}

impl Event {
    /// An event about one registration.
    pub(crate) fn about(
        kind: EventKind,
        registration: &RegistrationInfo,
        previous_verdict: Verdict,
        verdict: Verdict,
        detail: Option<&str>,
    ) -> Event {
        let message = match kind {
            EventKind::Violation => format!(
                "'{}' ({} bytes at {:#x}, GPU{}) is {}: {}",
                registration.label,
                registration.size,
                registration.ptr,
                registration.device,
                verdict.name(),
                verdict.explanation()
            ),
            EventKind::Recovered => format!(
                "'{}' ({} bytes at {:#x}, GPU{}) is resident again (was {})",
                registration.label, registration.size, registration.ptr, registration.device, previous_verdict.name()
            ),
            EventKind::Modified => format!(
                "'{}' ({} bytes at {:#x}, GPU{}) is MODIFIED: {}",
                registration.label,
                registration.size,
                registration.ptr,
                registration.device,
                detail.unwrap_or("its bytes differ from the sealed fingerprint")
            ),
            EventKind::CheckFailed | EventKind::HealthChanged | EventKind::DeviceFault | EventKind::IntegrityFailed => format!(
                "could not check '{}' ({} bytes at {:#x}, GPU{}): {}",
                registration.label,
                registration.size,
                registration.ptr,
                registration.device,
                detail.unwrap_or("driver query failed")
            ),
        };
        Event {
            kind,
            registration_id: registration.id,
            label: registration.label.clone(),
            ptr: registration.ptr,
            size: registration.size,
            device: registration.device,
            verdict,
            previous_verdict,
            // Filled in by the monitor once the check's health is known.
            healthy: false,
            message,
            timestamp_unix_ms: crate::core::clock::unix_ms(),
            modified_chunks: 0,
            first_modified_offset: 0,
            error_kind: match kind {
                // Back in place but still MODIFIED (a violation of content, not residency).
                EventKind::Violation if verdict == Verdict::Modified => "content_modified",
                EventKind::Violation => "residency_violation",
                EventKind::Modified => "content_modified",
                EventKind::Recovered => "",
                _ => "check_failed",
            },
        }
    }

    /// The event for a change of overall health: healthy again when `cause` is `None`.
    pub(crate) fn health_changed(violating: u64, cause: Option<Unhealthy>) -> Event {
        let (message, error_kind) = match &cause {
            None => ("healthy: every registration is resident".to_string(), ""),
            Some(Unhealthy::Stalled(why)) => (format!("unhealthy: stalled: {why}"), "stalled"),
            Some(Unhealthy::CheckFailed) => {
                (format!("unhealthy: the last check failed ({violating} registrations in violation)"), "check_failed")
            }
            Some(Unhealthy::IntegrityFailed) => {
                ("unhealthy: integrity verification failed in a lent context (content unknown)".to_string(), "integrity_failed")
            }
            Some(Unhealthy::NotResident) => (format!("unhealthy: {violating} registrations are not resident"), "residency_violation"),
            Some(Unhealthy::Modified) => {
                (format!("unhealthy: {violating} registrations in violation (a sealed one MODIFIED)"), "content_modified")
            }
            Some(Unhealthy::DeviceFault) => {
                ("unhealthy: a GPU that holds registrations reports a memory fault".to_string(), "device_memory_fault")
            }
        };
        let healthy = cause.is_none();
        Event {
            kind: EventKind::HealthChanged,
            registration_id: 0,
            label: String::new(),
            ptr: 0,
            size: 0,
            device: -1,
            verdict: match cause {
                Some(Unhealthy::CheckFailed) => Verdict::CheckFailed,
                Some(Unhealthy::NotResident) => Verdict::NotMapped,
                Some(Unhealthy::Modified) => Verdict::Modified,
                // Healthy, or unhealthy without a verdict that moved.
                _ => Verdict::Resident,
            },
            previous_verdict: if healthy { Verdict::NotMapped } else { Verdict::Resident },
            healthy,
            message,
            timestamp_unix_ms: crate::core::clock::unix_ms(),
            modified_chunks: 0,
            first_modified_offset: 0,
            error_kind,
        }
    }

    /// The event for a GPU's memory fault or critical XID (see [`EventKind::DeviceFault`]).
    /// The verdict fields say `RESIDENT`: a device fault does not change a verdict.
    pub(crate) fn device_fault(device: i32, message: String, healthy: bool) -> Event {
        Event {
            kind: EventKind::DeviceFault,
            registration_id: 0,
            label: String::new(),
            ptr: 0,
            size: 0,
            device,
            verdict: Verdict::Resident,
            previous_verdict: Verdict::Resident,
            healthy,
            message,
            timestamp_unix_ms: crate::core::clock::unix_ms(),
            modified_chunks: 0,
            first_modified_offset: 0,
            error_kind: "device_memory_fault",
        }
    }

    /// The event for a sealed registration whose bytes differ from the seal.
    pub(crate) fn modified(registration: &RegistrationInfo, previous_verdict: Verdict, chunks: u64, first_offset: u64) -> Event {
        let detail = format!(
            "{chunks} of its 1 MiB chunks differ from the sealed fingerprint, the first at byte offset {first_offset} ({:#x})",
            registration.ptr.wrapping_add(first_offset)
        );
        let mut event = Event::about(EventKind::Modified, registration, previous_verdict, Verdict::Modified, Some(&detail));
        event.modified_chunks = chunks;
        event.first_modified_offset = first_offset;
        event
    }

    /// The event for a device whose lent context failed during verification.
    pub(crate) fn integrity_failed(device: i32, error: &crate::core::driver::DriverError) -> Event {
        Event {
            kind: EventKind::IntegrityFailed,
            registration_id: 0,
            label: String::new(),
            ptr: 0,
            size: 0,
            device,
            verdict: Verdict::CheckFailed,
            previous_verdict: Verdict::Resident,
            healthy: false,
            message: format!("integrity verification on GPU{device} failed in the lent context: {error}; content unknown"),
            timestamp_unix_ms: crate::core::clock::unix_ms(),
            modified_chunks: 0,
            first_modified_offset: 0,
            error_kind: "integrity_failed",
        }
    }

    /// Writes the event to the `log` crate with the structured fields operators search by.
    pub fn log(&self) {
        let device = format!("GPU{}", self.device);
        let device = device.as_str();
        let label = self.label.as_str();
        let verdict = self.verdict.name();
        let error_kind = self.error_kind;
        match self.kind {
            EventKind::Violation => log::error!(
                target: "vram_monitor",
                actor = "vram-residency", action = "verify", target = label, device = device,
                error_kind = error_kind, verdict = verdict;
                "CRITICAL: {}", self.message
            ),
            EventKind::CheckFailed => log::error!(
                target: "vram_monitor",
                actor = "vram-residency", action = "verify", target = label, device = device,
                error_kind = error_kind, verdict = verdict;
                "{}", self.message
            ),
            EventKind::Modified => {
                let (chunks, offset) = (self.modified_chunks, self.first_modified_offset);
                log::error!(
                    target: "vram_monitor",
                    actor = "vram-integrity", action = "verify", target = label, device = device,
                    error_kind = error_kind, verdict = verdict, modified_chunks = chunks, first_modified_offset = offset;
                    "CRITICAL: {}", self.message
                )
            }
            EventKind::IntegrityFailed => log::error!(
                target: "vram_monitor",
                actor = "vram-integrity", action = "verify", device = device,
                error_kind = error_kind;
                "{}", self.message
            ),
            EventKind::DeviceFault => log::error!(
                target: "vram_monitor",
                actor = "vram-residency", action = "device_health", device = device,
                error_kind = error_kind;
                "{}", self.message
            ),
            EventKind::Recovered => log::warn!(
                target: "vram_monitor",
                actor = "vram-residency", action = "verify", target = label, device = device, verdict = verdict;
                "{}", self.message
            ),
            EventKind::HealthChanged => {
                if self.healthy {
                    log::info!(target: "vram_monitor", actor = "vram-residency", action = "verify"; "{}", self.message)
                } else {
                    // The cause's own kind: a stall or a MODIFIED seal is not a residency
                    // violation, and alerts keyed on the field must not read it as one.
                    log::error!(
                        target: "vram_monitor",
                        actor = "vram-residency", action = "verify", error_kind = error_kind;
                        "{}", self.message
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unhealthy_monitor_names_its_cause_by_precedence() {
        // (check failed, integrity failed, violating, modified) -> cause
        assert_eq!(Unhealthy::of(true, true, 3, 3), Unhealthy::CheckFailed);
        assert_eq!(Unhealthy::of(false, true, 3, 0), Unhealthy::IntegrityFailed);
        assert_eq!(Unhealthy::of(false, false, 3, 2), Unhealthy::NotResident, "one not resident among MODIFIED");
        assert_eq!(Unhealthy::of(false, false, 2, 2), Unhealthy::Modified);
        assert_eq!(Unhealthy::of(false, false, 0, 0), Unhealthy::DeviceFault);
    }

    #[test]
    fn each_health_change_carries_its_causes_error_kind() {
        let kind = |cause: Option<Unhealthy>| {
            let e = Event::health_changed(2, cause);
            (e.healthy, e.error_kind)
        };
        assert_eq!(kind(None), (true, ""));
        assert_eq!(kind(Some(Unhealthy::Stalled("no check for 90 s".into()))), (false, "stalled"));
        assert_eq!(kind(Some(Unhealthy::CheckFailed)), (false, "check_failed"));
        assert_eq!(kind(Some(Unhealthy::IntegrityFailed)), (false, "integrity_failed"));
        assert_eq!(kind(Some(Unhealthy::NotResident)), (false, "residency_violation"));
        assert_eq!(kind(Some(Unhealthy::Modified)), (false, "content_modified"));
        assert_eq!(kind(Some(Unhealthy::DeviceFault)), (false, "device_memory_fault"));
        assert!(Event::health_changed(0, Some(Unhealthy::Stalled("no check for 90 s".into()))).message.ends_with("no check for 90 s"));
    }
}
