//! One device's integrity lane: the context the engine lent, the kernel loaded in it, where
//! background verification has got to, and when its next slice may run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fingerprint::CHUNK_BYTES;
use super::gpu::{ContextHandle, Gpu, Kernel};
use super::seal::{same_buffers, Seal};
use super::{Finding, IntegrityOptions};
use crate::core::driver::{Driver, DriverError};
use crate::core::error::Error;
use crate::core::registry::{RegistrationId, Registry};
use crate::core::verdict::Verdict;

/// What one round of verification on a lane did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Registrations read.
    pub registrations: u64,
    /// Bytes read.
    pub bytes: u64,
    /// A full pass over the lane's sealed bytes ended.
    pub pass_completed: bool,
    /// What it found.
    pub findings: Vec<Finding>,
}

/// One device's lent context and its verification.
pub struct Lane {
    /// The CUDA device.
    pub device: i32,
    /// The pacing in force.
    pub options: IntegrityOptions,
    /// The lent context's error, once a launch or copy in it failed: it stays (a sticky
    /// error does not clear) until integrity is disabled for the device.
    pub failed: Option<DriverError>,
    failure_reported: bool,
    gpu: Arc<dyn Gpu>,
    context: ContextHandle,
    /// We hold a reference to the device's primary context (given back on drop).
    primary: bool,
    kernel: Option<Kernel>,
    next_slice_at: Instant,
    /// The next slice: registration and byte offset in it.
    cursor: (RegistrationId, u64),
    /// Bytes read since the pass began.
    pass_bytes: u64,
}

fn kernel_refused(error: &DriverError) -> bool {
    matches!(error, DriverError::Call { function: "cuModuleLoadData" | "cuModuleGetFunction", .. })
}

impl Lane {
    /// Borrows the context current on the calling thread for `device` and loads the kernel
    /// in it. A primary context gets a reference of ours, so the engine's last release
    /// cannot pull it from under a slice; another context stays the engine's (the header's
    /// contract: disable before destroying it).
    pub fn borrow(gpu: Arc<dyn Gpu>, device: i32, options: IntegrityOptions) -> Result<Lane, Error> {
        let (context, current_device) = gpu.current_context().map_err(Error::Driver)?.ok_or(Error::NoCurrentContext)?;
        if current_device != device {
            return Err(Error::ContextWrongDevice(current_device));
        }
        let primary = gpu.retain_if_primary(device, context).map_err(Error::Driver)?;
        // The context is current here: the kernel, its stream and scratch go into it.
        let kernel = match gpu.load() {
            Ok(kernel) => kernel,
            Err(error) => {
                if primary {
                    gpu.release_primary(device);
                }
                return Err(if kernel_refused(&error) { Error::KernelUnavailable(error) } else { Error::IntegrityFailed(error) });
            }
        };
        Ok(Lane {
            device,
            options,
            failed: None,
            failure_reported: false,
            gpu,
            context,
            primary,
            kernel: Some(kernel),
            next_slice_at: Instant::now(),
            cursor: (0, 0),
            pass_bytes: 0,
        })
    }

    /// The failure, once: the monitor reports it as one event.
    pub fn unreported_failure(&mut self) -> Option<Finding> {
        if self.failure_reported {
            return None;
        }
        let error = self.failed.clone()?;
        self.failure_reported = true;
        Some(Finding::Failed { device: self.device, error })
    }

    /// When the next background slice may run.
    pub fn next_slice_due(&self) -> Instant {
        self.next_slice_at
    }

    /// A failure the monitor has not reported yet.
    pub fn failure_unreported(&self) -> bool {
        self.failed.is_some() && !self.failure_reported
    }

    /// Fingerprints `[ptr, ptr + size)` (a whole registration) for a seal: after the work
    /// the engine already issued in the context (its writes of these bytes may still be in
    /// flight on its streams).
    pub fn fingerprint_all(&mut self, ptr: u64, size: u64) -> Result<Vec<u64>, Error> {
        self.run(ptr, 0, size, true).map_err(Error::IntegrityFailed)
    }

    /// Fingerprints `[ptr + offset, ptr + offset + length)` of a registration starting at
    /// `ptr`, in launches of at most the scratch buffer's chunks, with the lent context
    /// pushed on the calling thread and popped after. A failure marks the lane failed.
    fn run(&mut self, ptr: u64, offset: u64, length: u64, after_engine: bool) -> Result<Vec<u64>, DriverError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let Some(kernel) = self.kernel.as_ref() else {
            return Err(DriverError::Call { function: "cuModuleLoadData", code: 0 });
        };
        let result = (|| {
            self.gpu.push(self.context)?;
            if after_engine {
                if let Err(error) = self.gpu.synchronize() {
                    self.gpu.pop();
                    return Err(error);
                }
            }
            let per_launch = kernel.scratch_chunks * CHUNK_BYTES;
            let mut values = Vec::with_capacity(length.div_ceil(CHUNK_BYTES) as usize);
            let mut done = 0u64;
            let mut outcome = Ok(());
            while done < length {
                let part = (length - done).min(per_launch);
                let mut out = vec![0u64; part.div_ceil(CHUNK_BYTES) as usize];
                let at = offset + done;
                if let Err(error) = self.gpu.fingerprint(kernel, ptr + at, part, at / 4, &mut out) {
                    outcome = Err(error);
                    break;
                }
                values.extend_from_slice(&out);
                done += part;
            }
            self.gpu.pop();
            outcome.map(|()| values)
        })();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            crate::core::integrity::log_failure(self.device, error);
        }
        result
    }

    /// Whether `[seal.ptr + offset, + length)` may be read now: its registration is still
    /// judged resident (or modified) and a fresh driver query finds the sealed buffers
    /// there. Reading memory the engine freed would fault in the engine's own context.
    fn readable(seal: &Seal, id: RegistrationId, driver: &dyn Driver, registry: &Registry, offset: u64, length: u64) -> bool {
        match registry.verdict(id) {
            Some((Verdict::Resident | Verdict::Modified, false)) => {}
            _ => return false,
        }
        match crate::core::inspect::inspect(driver, seal.ptr + offset, length) {
            Ok(now) => now.verdict == Verdict::Resident && same_buffers(&seal.pieces, now.pieces()),
            Err(_) => false,
        }
    }

    /// Verifies the next background slice of this device's seals and sets when the one
    /// after may run: no sooner than the share cap allows, and soon enough that every
    /// sealed byte is read once per period.
    pub fn verify_next_slice(
        &mut self,
        seals: &mut BTreeMap<RegistrationId, Seal>,
        driver: &dyn Driver,
        registry: &Registry,
        sealed_bytes: u64,
        interval: Duration,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let device = self.device;
        let (cursor_id, cursor_offset) = self.cursor;
        let next = seals
            .range(cursor_id..)
            .find(|(id, s)| s.device == device && (**id > cursor_id || cursor_offset < s.size))
            .map(|(id, _)| *id);
        let id = match next {
            Some(id) => id,
            None => {
                // The end of the pass: start the next from the first seal.
                if self.pass_bytes > 0 {
                    outcome.pass_completed = true;
                }
                self.pass_bytes = 0;
                match seals.iter().find(|(_, s)| s.device == device) {
                    Some((id, _)) => {
                        self.cursor = (*id, 0);
                        *id
                    }
                    None => return outcome,
                }
            }
        };
        if registry.verdict(id).is_none() {
            // Unregistered while its seal was being taken: nothing to read, nothing to keep.
            seals.remove(&id);
            self.cursor = (id + 1, 0);
            return outcome;
        }
        let offset = if id == self.cursor.0 { self.cursor.1 } else { 0 };
        let Some(seal) = seals.get_mut(&id) else { return outcome };
        let length = (seal.size - offset).min(self.options.slice_bytes);
        let started = Instant::now();
        let read = Lane::readable(seal, id, driver, registry, offset, length);
        if read {
            match self.run(seal.ptr, offset, length, false) {
                Ok(values) => {
                    outcome.bytes = length;
                    outcome.registrations = 1;
                    if seal.compare(offset / CHUNK_BYTES, &values) {
                        outcome.findings.push(modified(id, seal));
                    }
                }
                Err(_) => {
                    outcome.findings.extend(self.unreported_failure());
                    return outcome;
                }
            }
        }
        seal.note_verified(offset, offset + length, read);
        self.pass_bytes += length;
        self.cursor = if offset + length >= seal.size { (id + 1, 0) } else { (id, offset + length) };
        let cost = started.elapsed();
        self.next_slice_at = Instant::now() + self.gap(cost, sealed_bytes, interval);
        outcome
    }

    /// The pause after a slice that took `cost`.
    fn gap(&self, cost: Duration, sealed_bytes: u64, interval: Duration) -> Duration {
        let ppm = u64::from(self.options.max_gpu_share_ppm.max(1));
        let share_gap = cost.saturating_mul(u32::try_from(1_000_000 / ppm).unwrap_or(u32::MAX)).saturating_sub(cost);
        let period = self.options.period.unwrap_or(interval);
        let slices = sealed_bytes.div_ceil(self.options.slice_bytes).max(1);
        let period_gap = (period / u32::try_from(slices).unwrap_or(u32::MAX)).saturating_sub(cost);
        share_gap.max(period_gap)
    }

    /// Verifies every seal of this device now, whole, at full speed.
    pub fn verify_everything(&mut self, seals: &mut BTreeMap<RegistrationId, Seal>, driver: &dyn Driver, registry: &Registry) -> Outcome {
        let mut outcome = Outcome::default();
        let mut all_read = true;
        let device = self.device;
        for (id, seal) in seals.iter_mut().filter(|(_, s)| s.device == device) {
            if !Lane::readable(seal, *id, driver, registry, 0, seal.size) {
                all_read = false;
                continue;
            }
            match self.run(seal.ptr, 0, seal.size, false) {
                Ok(values) => {
                    outcome.registrations += 1;
                    outcome.bytes += seal.size;
                    if seal.compare(0, &values) {
                        outcome.findings.push(modified(*id, seal));
                    }
                    seal.note_verified(0, seal.size, true);
                }
                Err(_) => return outcome,
            }
        }
        outcome.pass_completed = all_read && outcome.registrations > 0;
        outcome
    }
}

fn modified(id: RegistrationId, seal: &Seal) -> Finding {
    let info = seal.info(false);
    Finding::Modified { id, chunks: info.modified_chunks, first_offset: info.first_modified_offset }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(kernel) = self.kernel.take() {
            // Freed in the context it was made in; if that context is dead, the driver
            // freed it with the context and these calls fail harmlessly.
            if self.gpu.push(self.context).is_ok() {
                self.gpu.unload(kernel);
                self.gpu.pop();
            }
        }
        if self.primary {
            self.gpu.release_primary(self.device);
        }
    }
}
