//! Integrity's values: how verification is paced ([`IntegrityOptions`]), what a seal and a
//! device's integrity look like from outside ([`SealInfo`], [`IntegrityStatus`]), what a
//! verification found ([`VerifySummary`], [`Finding`]) and the figures the health reads.

use std::time::Duration;

use super::fingerprint;

use crate::core::driver::DriverError;
use crate::core::error::Error;
use crate::core::registry::RegistrationId;

/// Default bytes per background slice.
pub const DEFAULT_SLICE_BYTES: u64 = 64 << 20;
/// Default share of GPU time verification may take, in parts per million (1%).
pub const DEFAULT_MAX_GPU_SHARE_PPM: u32 = 10_000;

/// How background verification is paced on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegrityOptions {
    /// Bytes one background slice verifies (rounded up to whole chunks).
    pub slice_bytes: u64,
    /// The most GPU time verification may take, in parts per million of wall time: after a
    /// slice that took `t`, the next waits at least `t * (1e6 / ppm - 1)`.
    pub max_gpu_share_ppm: u32,
    /// Every sealed byte is verified at least once per period, unless the share cap forbids
    /// it (the cap wins). `None`: the monitor's check interval.
    pub period: Option<Duration>,
}

impl Default for IntegrityOptions {
    fn default() -> Self {
        IntegrityOptions { slice_bytes: DEFAULT_SLICE_BYTES, max_gpu_share_ppm: DEFAULT_MAX_GPU_SHARE_PPM, period: None }
    }
}

impl IntegrityOptions {
    /// Checks the ranges: a slice of at least one byte and at most 1 TiB, a share in
    /// (0, 1e6], a period of at least 1 ms when given.
    pub fn validated(self) -> Result<IntegrityOptions, Error> {
        if self.slice_bytes == 0 || self.slice_bytes > 1 << 40 {
            return Err(Error::InvalidArgument("the integrity slice must be between 1 byte and 1 TiB"));
        }
        if self.max_gpu_share_ppm == 0 || self.max_gpu_share_ppm > 1_000_000 {
            return Err(Error::InvalidArgument("the GPU share must be between 1 and 1000000 ppm"));
        }
        if self.period.is_some_and(|p| p < Duration::from_millis(1)) {
            return Err(Error::InvalidArgument("the integrity period must be at least 1 ms"));
        }
        let slice_bytes = self.slice_bytes.div_ceil(fingerprint::CHUNK_BYTES) * fingerprint::CHUNK_BYTES;
        Ok(IntegrityOptions { slice_bytes, ..self })
    }
}

/// One sealed registration's integrity state, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealInfo {
    /// Chunks fingerprinted (one per MiB, the last partial).
    pub chunks: u64,
    /// When every chunk was last verified (ms since the Unix epoch; the seal's time until
    /// a first full verification).
    pub last_verified_unix_ms: u64,
    /// Chunks found different from their fingerprint since the seal (0: unchanged).
    pub modified_chunks: u64,
    /// Byte offset of the first differing chunk, from the registration's first byte.
    pub first_modified_offset: u64,
    /// Verification on its device has failed (the lent context has a sticky error): its
    /// content is unknown, not modified.
    pub failing: bool,
}

/// The monitor-wide integrity state, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityStatus {
    /// Devices with integrity enabled.
    pub devices_enabled: u32,
    /// Sealed registrations.
    pub sealed: u64,
    /// Their bytes.
    pub sealed_bytes: u64,
    /// Sealed registrations found modified.
    pub modified: u64,
    /// Bytes verified since the monitor was created (background and `verify_now`).
    pub verified_bytes_total: u64,
    /// Full passes over every sealed byte of a device completed.
    pub passes_completed: u64,
    /// When the last full pass completed (ms since the Unix epoch; 0: none yet).
    pub last_pass_unix_ms: u64,
    /// The first device whose lent context failed, with the driver's error, if any.
    pub failed: Option<(i32, DriverError)>,
}

/// What `verify_now` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifySummary {
    /// Sealed registrations verified.
    pub registrations: u64,
    /// Bytes verified.
    pub bytes: u64,
    /// Registrations found modified (now or before).
    pub modified: u64,
    /// Wall time, microseconds.
    pub duration_us: u64,
}

/// What a verification found that the monitor must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A sealed registration's bytes differ (first found now).
    Modified {
        /// The registration.
        id: RegistrationId,
        /// Chunks differing so far.
        chunks: u64,
        /// Offset of the first differing chunk.
        first_offset: u64,
    },
    /// A device's lent context failed (first seen now).
    Failed {
        /// The device.
        device: i32,
        /// The driver's error.
        error: DriverError,
    },
}

/// The integrity figures of the health snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthFigures {
    /// Sealed registrations.
    pub sealed: u64,
    /// Their bytes.
    pub sealed_bytes: u64,
    /// Bytes verified since the monitor started.
    pub verified_bytes: u64,
    /// Full passes completed.
    pub passes: u64,
    /// When the last one completed (ms since the Unix epoch; 0: none yet).
    pub last_pass_unix_ms: u64,
    /// A lent context failed.
    pub failed: bool,
    /// Sealed registrations found MODIFIED (what makes their verdict a violation).
    pub modified: u64,
}
