//! The monitor's side of content integrity: the public calls (enable, seal, verify), the
//! background step the monitor thread runs between checks, and the turning of what
//! verification finds into verdicts, events and health.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{dispatch, Command, Monitor, Shared};
use crate::core::error::Error;
use crate::core::events::Event;
use crate::core::integrity::{Finding, IntegrityOptions, IntegrityStatus, SealInfo, VerifySummary};
use crate::core::registry::{Change, RegistrationId};
use crate::core::sync::lock;

impl Monitor {
    /// Enables content integrity for CUDA device `device`, borrowing the context current
    /// on the calling thread (the library creates none). Call it on a thread where the
    /// engine's context for that device is current. A primary context gets a reference of
    /// the monitor's (given back by [`Monitor::disable_integrity`] or the drop); a context
    /// the engine created itself must outlive this: disable before destroying it.
    ///
    /// Loads the fingerprint kernel into that context and allocates its scratch buffer
    /// (128 KiB of VRAM) and one stream: nothing else.
    pub fn enable_integrity(&self, device: i32, options: IntegrityOptions) -> Result<(), Error> {
        self.not_forked()?;
        self.shared.integrity.enable(device, options)?;
        self.wake();
        Ok(())
    }

    /// Disables integrity for `device`: its seals are dropped (the registrations stay,
    /// residency only; a MODIFIED one returns to its residency verdict), the kernel is
    /// unloaded and the context given back. Waits for a slice in progress.
    pub fn disable_integrity(&self, device: i32) -> Result<(), Error> {
        self.not_forked()?;
        let dropped = self.shared.integrity.disable(device)?;
        self.post_cleared(&dropped);
        Ok(())
    }

    /// Changes the pacing of background verification on every enabled device.
    pub fn set_integrity_options(&self, options: IntegrityOptions) -> Result<(), Error> {
        self.not_forked()?;
        self.shared.integrity.set_options(options)?;
        self.wake();
        Ok(())
    }

    /// Seals registration `id`: fingerprints its bytes on its GPU now (at full speed, on
    /// the calling thread, with the lent context pushed) and keeps the values; from now on
    /// the monitor verifies them in the background. Seal only bytes that are final
    /// (weights), never a KV cache or activations.
    pub fn seal(&self, id: RegistrationId) -> Result<(), Error> {
        self.not_forked()?;
        self.shared.integrity.seal(&*self.shared.driver, &self.shared.registry, id, false)?;
        self.wake();
        Ok(())
    }

    /// Takes a new fingerprint of a sealed registration after an intentional change (a
    /// LoRA swap, a weight sync, a wake from sleep) and clears MODIFIED.
    pub fn reseal(&self, id: RegistrationId) -> Result<(), Error> {
        self.not_forked()?;
        self.shared.integrity.seal(&*self.shared.driver, &self.shared.registry, id, true)?;
        self.post_cleared(&[id]);
        Ok(())
    }

    /// Stops verifying a registration's content (it stays registered) and clears MODIFIED.
    pub fn unseal(&self, id: RegistrationId) -> Result<(), Error> {
        self.not_forked()?;
        if self.shared.registry.verdict(id).is_none() {
            return Err(Error::UnknownRegistration(id));
        }
        self.shared.integrity.unseal(id)?;
        self.post_cleared(&[id]);
        Ok(())
    }

    /// Registers `[ptr, ptr + size)` and seals it, or does neither.
    pub fn register_sealed(&self, ptr: u64, size: u64, label: &str) -> Result<RegistrationId, Error> {
        let id = self.register(ptr, size, label)?;
        if let Err(error) = self.seal(id) {
            let _ = self.unregister(id);
            return Err(error);
        }
        Ok(id)
    }

    /// Takes back registration `id` after the engine unmapped and remapped its range on
    /// purpose (a wake from sleep, an expandable segment released and grown again): the
    /// memory mapped there now is inspected and registered afresh under a new id (same range,
    /// same label), `id` is unregistered, and a seal moves to the new id with the
    /// fingerprints taken before, so that [`Monitor::verify_now`] (or the background pass)
    /// compares the reloaded bytes with the bytes sealed then: a reload that put back the
    /// wrong bytes reads MODIFIED. Without it the remapped memory reads REPLACED (residency
    /// wins) and a reseal would seal whatever was reloaded. Returns the new id; on an error
    /// nothing changed (memory not resident now is refused as by `register`; a seal whose
    /// memory came back on another device is `NotResident(WrongDevice)`).
    pub fn rebind(&self, id: RegistrationId) -> Result<RegistrationId, Error> {
        self.not_forked()?;
        let old = self.shared.registry.get(id).ok_or(Error::UnknownRegistration(id))?;
        let new_id = self.register(old.ptr, old.size, &old.label)?;
        let moved = match self.shared.registry.get(new_id) {
            Some(new) => self.shared.integrity.move_seal(id, &new),
            None => Err(Error::UnknownRegistration(new_id)),
        };
        match moved {
            Ok(Some(true)) => {
                // Found modified before and not resealed: still so under the new id (the
                // event was sent for the old one).
                let _ = self.shared.registry.set_modified(new_id, true);
            }
            Ok(_) => {}
            Err(error) => {
                let _ = self.unregister(new_id);
                return Err(error);
            }
        }
        let _ = self.unregister(id);
        self.wake();
        Ok(new_id)
    }

    /// Verifies every sealed byte now at full speed, on the monitor thread (events are
    /// delivered there), and waits for it: after loading, after a wake from sleep. Refused
    /// from inside a callback; [`Error::IntegrityNotEnabled`] when no device has integrity
    /// enabled; [`Error::IntegrityFailed`] when a lent context has failed (the others
    /// are verified all the same).
    pub fn verify_now(&self) -> Result<VerifySummary, Error> {
        self.not_forked()?;
        if self.is_monitor_thread() {
            return Err(Error::CalledFromCallback);
        }
        let (reply, result) = crossbeam_channel::bounded(1);
        self.commands.send(Command::VerifyNow(reply)).map_err(|_| Error::Stopped)?;
        result.recv().map_err(|_| Error::Stopped)?
    }

    /// The integrity state of registration `id` (`None`: not sealed, or unknown).
    pub fn seal_info(&self, id: RegistrationId) -> Option<SealInfo> {
        self.shared.integrity.seal_info(id)
    }

    /// The monitor-wide integrity state.
    pub fn integrity(&self) -> IntegrityStatus {
        self.shared.integrity.status()
    }

    /// Wakes the monitor thread so that it recomputes when the next slice is due.
    fn wake(&self) {
        if !self.shared.reschedule_queued.swap(true, Ordering::AcqRel) {
            let _ = self.commands.send(Command::Reschedule);
        }
    }

    /// Clears MODIFIED on registrations no longer sealed (or resealed) and posts the
    /// events that makes, for the monitor thread to deliver.
    fn post_cleared(&self, ids: &[RegistrationId]) {
        let mut events = Vec::new();
        for &id in ids {
            if let Some(Some(Change::Verdict { registration, from })) = self.shared.registry.set_modified(id, false) {
                events.push(Event::about(crate::core::events::EventKind::Recovered, &registration, from, registration.verdict, None));
            }
        }
        if !events.is_empty() {
            lock(&self.shared.posted).extend(events);
        }
        let _ = self.commands.send(Command::Deliver);
    }
}

/// One round of background verification (the monitor thread, between checks).
pub(super) fn background_step(shared: &Shared, interval: Duration) {
    let findings = shared.integrity.step(&*shared.driver, &shared.registry, interval);
    publish(shared, findings, Vec::new());
}

/// `verify_now` on the monitor thread.
pub(super) fn verify_now_here(shared: &Shared) -> Result<VerifySummary, Error> {
    let status = shared.integrity.status();
    if status.devices_enabled == 0 {
        return Err(Error::IntegrityNotEnabled(-1));
    }
    let (summary, findings) = shared.integrity.verify_all(&*shared.driver, &shared.registry);
    publish(shared, findings, Vec::new());
    match shared.integrity.status().failed {
        Some((_, error)) => Err(Error::IntegrityFailed(error)),
        None => Ok(summary),
    }
}

/// Delivers what other threads posted.
pub(super) fn deliver_posted(shared: &Shared) {
    let posted = std::mem::take(&mut *lock(&shared.posted));
    publish(shared, Vec::new(), posted);
}

/// Turns findings into verdicts and events, adds a health change if the health flipped,
/// and delivers them all (logged, then the callback).
fn publish(shared: &Shared, findings: Vec<Finding>, mut events: Vec<Event>) {
    for finding in findings {
        match finding {
            Finding::Modified { id, chunks, first_offset } => {
                if let Some(Some(Change::Verdict { registration, from })) = shared.registry.set_modified(id, true) {
                    shared.total_violations.fetch_add(1, Ordering::Relaxed);
                    events.push(Event::modified(&registration, from, chunks, first_offset));
                }
            }
            Finding::Failed { device, error } => events.push(Event::integrity_failed(device, &error)),
        }
    }
    if events.is_empty() {
        return;
    }
    let health = shared.health();
    if shared.reported_healthy.swap(health.healthy, Ordering::AcqRel) != health.healthy {
        events.push(Event::health_changed(health.current_violations, shared.unhealthy_cause(&health)));
    }
    for mut event in events {
        event.healthy = health.healthy;
        dispatch(shared, &event, true);
    }
}
