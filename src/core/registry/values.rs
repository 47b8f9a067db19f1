//! What the registry reports: a registration's copy ([`RegistrationInfo`]), a change a check
//! found ([`Change`]), figures per device and verdict ([`RegistrationFigures`]), the counters
//! ([`RegistryCounts`]), and [`Stale`].

use super::RegistrationId;
use crate::core::driver::DriverError;
use crate::core::verdict::{Piece, Verdict};

/// A registration as reported: a copy, taken at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationInfo {
    /// Its id.
    pub id: RegistrationId,
    /// First byte.
    pub ptr: u64,
    /// Length in bytes.
    pub size: u64,
    /// The engine's name for it (for example a tensor name).
    pub label: String,
    /// The device that held it when registered.
    pub device: i32,
    /// The verdict of the last check that could judge it (a failed query leaves it).
    pub verdict: Verdict,
    /// Whether the driver query for it failed in the last check.
    pub check_failing: bool,
    /// The allocations or mappings that held it when registered.
    pub pieces: Vec<Piece>,
    /// Its content-integrity state when sealed (`None`: not sealed, residency only).
    pub seal: Option<crate::core::integrity::SealInfo>,
}

impl RegistrationInfo {
    /// The verdict of the last check that could judge it.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }
}

/// A change of a registration's state, found by a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The verdict changed.
    Verdict {
        /// The registration after the change.
        registration: RegistrationInfo,
        /// Verdict before.
        from: Verdict,
    },
    /// A query for it started failing.
    CheckFailed {
        /// The registration.
        registration: RegistrationInfo,
        /// Why.
        error: DriverError,
    },
}

/// [`Registry::apply`] judged nothing: the allocation changed after the caller's plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// The value the plan should hold for the address from now on.
    pub current: u64,
}

/// Registrations and their bytes for one device and verdict: how many, and how many bytes
/// (one entry may stand for one registration or for many). What the Prometheus output needs
/// of the registrations, with no copy of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationFigures {
    /// Device ordinal.
    pub device: i32,
    /// Verdict.
    pub verdict: Verdict,
    /// Registrations.
    pub registrations: u64,
    /// Sum of their sizes.
    pub bytes: u64,
}

/// The name [`RegistrationFigures`] had in the registry.
pub type Tally = RegistrationFigures;

/// Counts kept in step with the registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryCounts {
    /// Registrations.
    pub registrations: u64,
    /// Sum of their sizes.
    pub tracked_bytes: u64,
    /// Registrations whose last verdict is a violation.
    pub violating: u64,
    /// Registrations whose driver query is failing.
    pub failing: u64,
    /// Registrations both in violation (by their last verdict) and failing their query.
    pub violating_and_failing: u64,
    /// Distinct allocations and mappings a check asks about.
    pub allocations: u64,
}
