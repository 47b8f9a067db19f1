//! Content integrity: sealed registrations are fingerprinted on the GPU when sealed and
//! verified again in the background, in paced slices, with a context the engine lends.
//!
//! The rooms: [`fingerprint`] the function (and its reference), [`gpu`] the port to the
//! driver (its adapter is [`crate::adapters::cuda::fingerprint`]), [`lane`] one device's lent
//! context, kernel and pacing, [`seal`] one sealed registration's fingerprints, [`values`]
//! what integrity looks like from outside. This file ties them into the
//! [`Integrity`] state the monitor owns; the monitor decides when a slice runs and turns
//! what verification finds into verdicts and events.
pub mod fingerprint;
pub mod gpu;
pub mod lane;
pub mod seal;
pub mod values;

pub use values::*;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;

use crate::core::driver::{Driver, DriverError};
use crate::core::error::Error;
use crate::core::registry::{RegistrationId, RegistrationInfo, Registry};
use crate::core::sync::lock;
use crate::core::verdict::Verdict;
use gpu::Gpu;
use lane::Lane;
use seal::Seal;

/// How soon the monitor thread looks again when the integrity state was busy.
const BUSY_RETRY: Duration = Duration::from_millis(1);

#[derive(Default)]
struct State {
    lanes: Vec<Lane>,
    seals: BTreeMap<RegistrationId, Seal>,
    verified_bytes_total: u64,
    passes_completed: u64,
    last_pass_unix_ms: u64,
}

impl State {
    fn lane(&mut self, device: i32) -> Option<&mut Lane> {
        self.lanes.iter_mut().find(|l| l.device == device)
    }

    /// The sealed bytes, and how many seals are MODIFIED, in one pass.
    fn seal_totals(&self) -> (u64, u64) {
        self.seals.values().fold((0, 0), |(bytes, modified), s| (bytes + s.size, modified + u64::from(s.modified_chunks() > 0)))
    }
}

/// The integrity state of one monitor. Every GPU operation runs under its one lock, so that
/// unregistering, unsealing or disabling waits for a slice in progress over that memory
/// (slices are short: 64 MiB at HBM speed is tens of microseconds).
pub struct Integrity {
    gpu: OnceCell<Arc<dyn Gpu>>,
    /// Where the GPU comes from when none was given: the adapter the monitor names (the CUDA
    /// driver), asked when integrity is first enabled.
    default_gpu: fn() -> Result<Arc<dyn Gpu>, DriverError>,
    state: Mutex<State>,
    /// What the health snapshot reads, refreshed whenever the state changes: a `/health`
    /// probe or an unregister must never wait behind a verification holding `state`.
    figures: Mutex<HealthFigures>,
    /// The sealed ids, refreshed with the figures: unregistering what is not sealed looks
    /// here and never waits for a verification.
    sealed_ids: Mutex<std::collections::HashSet<RegistrationId>>,
    /// How many `sealed_ids` holds, written under its lock: with nothing sealed (most
    /// monitors, most of the time) unregistering reads this and takes no lock that every
    /// unregistering thread would share.
    sealed_count: AtomicUsize,
    /// Seals in progress (counted before their registration is looked up): an unregister that
    /// sees one waits for it, since its kernel may be reading the memory being unregistered.
    sealing: AtomicUsize,
}

/// Counts a seal in progress for as long as it lives.
struct Sealing<'a>(&'a AtomicUsize);

impl<'a> Sealing<'a> {
    fn start(count: &'a AtomicUsize) -> Sealing<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Sealing(count)
    }
}

impl Drop for Sealing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The state, locked for a change: the figures are refreshed when it is let go.
struct Changing<'a> {
    figures: &'a Mutex<HealthFigures>,
    sealed_ids: &'a Mutex<std::collections::HashSet<RegistrationId>>,
    sealed_count: &'a AtomicUsize,
    state: std::sync::MutexGuard<'a, State>,
}

impl std::ops::Deref for Changing<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let state = &*self.state;
        let (sealed_bytes, modified) = state.seal_totals();
        *lock(self.figures) = HealthFigures {
            sealed: state.seals.len() as u64,
            sealed_bytes,
            verified_bytes: state.verified_bytes_total,
            passes: state.passes_completed,
            last_pass_unix_ms: state.last_pass_unix_ms,
            failed: state.lanes.iter().any(|l| l.failed.is_some()),
            modified,
        };
        // A change seals or unseals ids (a reseal keeps its id; a moved seal updates them
        // itself): the count tells.
        let mut ids = lock(self.sealed_ids);
        if ids.len() != state.seals.len() {
            *ids = state.seals.keys().copied().collect();
            self.sealed_count.store(ids.len(), Ordering::Release);
        }
    }
}


impl Integrity {
    /// Integrity through `gpu`, or for `None` through `default_gpu` (asked when first
    /// enabled; the monitor passes the CUDA adapter's).
    pub fn new(gpu: Option<Arc<dyn Gpu>>, default_gpu: fn() -> Result<Arc<dyn Gpu>, DriverError>) -> Integrity {
        let cell = OnceCell::new();
        if let Some(gpu) = gpu {
            let _ = cell.set(gpu);
        }
        Integrity { gpu: cell, default_gpu, state: Mutex::new(State::default()), figures: Mutex::new(HealthFigures::default()), sealed_ids: Mutex::default(), sealed_count: AtomicUsize::new(0), sealing: AtomicUsize::new(0) }
    }

    /// The state locked for a change (see [`Changing`]).
    fn change(&self) -> Changing<'_> {
        Changing { figures: &self.figures, sealed_ids: &self.sealed_ids, sealed_count: &self.sealed_count, state: lock(&self.state) }
    }

    fn gpu(&self) -> Result<&Arc<dyn Gpu>, Error> {
        self.gpu
            .get_or_try_init(self.default_gpu)
            .map_err(Error::Driver)
    }

    /// Enables integrity for `device` with the context current on the calling thread.
    pub fn enable(&self, device: i32, options: IntegrityOptions) -> Result<(), Error> {
        let options = options.validated()?;
        let gpu = Arc::clone(self.gpu()?);
        let mut state = self.change();
        if state.lane(device).is_some() {
            return Err(Error::IntegrityAlreadyEnabled(device));
        }
        let lane = Lane::borrow(gpu, device, options)?;
        state.lanes.push(lane);
        Ok(())
    }

    /// Disables integrity for `device`: its seals are dropped (their registrations stay,
    /// residency-only), its kernel unloaded, the primary context reference given back.
    /// Returns the ids that were sealed there (a MODIFIED one goes back to its residency
    /// verdict).
    pub fn disable(&self, device: i32) -> Result<Vec<RegistrationId>, Error> {
        let mut state = self.change();
        let at = state.lanes.iter().position(|l| l.device == device).ok_or(Error::IntegrityNotEnabled(device))?;
        let lane = state.lanes.remove(at);
        let dropped: Vec<RegistrationId> = state.seals.iter().filter(|(_, s)| s.device == device).map(|(id, _)| *id).collect();
        for id in &dropped {
            state.seals.remove(id);
        }
        drop(lane);
        Ok(dropped)
    }

    /// Changes the pacing of every enabled device (a device enabled later uses the options
    /// its own enable call gives).
    pub fn set_options(&self, options: IntegrityOptions) -> Result<(), Error> {
        let options = options.validated()?;
        for lane in self.change().lanes.iter_mut() {
            lane.options = options;
        }
        Ok(())
    }

    /// Seals registration `id`: checks it is resident now (a fresh driver query: the kernel
    /// must never read memory that is gone), fingerprints it on its device, keeps the values.
    pub fn seal(&self, driver: &dyn Driver, registry: &Registry, id: RegistrationId, reseal: bool) -> Result<(), Error> {
        // Counted before the registration is looked up: an unregister that removes it after
        // this lookup then sees the count and waits for the fingerprinting (see `forget`).
        let _sealing = Sealing::start(&self.sealing);
        let info = registry.get(id).ok_or(Error::UnknownRegistration(id))?;
        let mut state = self.change();
        // Unregistered between the lookup and the lock: its `forget` has run (it waits for
        // this lock while a seal is counted), so nothing would wait for the kernel below.
        if registry.verdict(id).is_none() {
            return Err(Error::UnknownRegistration(id));
        }
        match (state.seals.contains_key(&id), reseal) {
            (true, false) => return Err(Error::AlreadySealed),
            (false, true) => return Err(Error::NotSealed),
            _ => {}
        }
        if info.check_failing || !matches!(info.verdict, Verdict::Resident | Verdict::Modified) {
            let verdict = if info.check_failing { Verdict::CheckFailed } else { info.verdict };
            return Err(Error::NotResident(verdict));
        }
        let now = crate::core::inspect::inspect(driver, info.ptr, info.size)?;
        if now.verdict != Verdict::Resident || !seal::same_buffers(&info.pieces, now.pieces()) {
            let verdict = if now.verdict == Verdict::Resident { Verdict::Replaced } else { now.verdict };
            return Err(Error::NotResident(verdict));
        }
        let lane = state.lane(info.device).ok_or(Error::IntegrityNotEnabled(info.device))?;
        let values = lane.fingerprint_all(info.ptr, info.size)?;
        let sealed = Seal::new(&info, values);
        state.seals.insert(id, sealed);
        // Unregistered while we fingerprinted: its unregister may have looked before this
        // seal existed, so the seal goes here.
        if registry.verdict(id).is_none() {
            state.seals.remove(&id);
            return Err(Error::UnknownRegistration(id));
        }
        Ok(())
    }

    /// Unseals `id` (it stays registered, residency-only).
    pub fn unseal(&self, id: RegistrationId) -> Result<(), Error> {
        self.change().seals.remove(&id).map(|_| ()).ok_or(Error::NotSealed)
    }

    /// Moves the seal of `from` (if it has one) to `to`, a new registration of the same range
    /// made after the engine remapped it on purpose: the fingerprints taken before stay, the
    /// pieces become the new ones, so the next verification compares the bytes mapped now
    /// with the bytes sealed then. Returns whether a seal moved and whether it had modified
    /// chunks. Memory now on another device is refused (`WRONG_DEVICE`): its lane is not
    /// the seal's. Waits for a slice in progress over the old memory.
    pub fn move_seal(&self, from: RegistrationId, to: &RegistrationInfo) -> Result<Option<bool>, Error> {
        if !lock(&self.sealed_ids).contains(&from) {
            return Ok(None);
        }
        let mut state = self.change();
        let Some(seal) = state.seals.get(&from) else { return Ok(None) };
        if seal.device != to.device || seal.ptr != to.ptr || seal.size != to.size {
            return Err(Error::NotResident(Verdict::WrongDevice));
        }
        let mut seal = state.seals.remove(&from).expect("looked up under the same lock");
        seal.pieces = to.pieces.clone();
        let modified = seal.modified_chunks() > 0;
        state.seals.insert(to.id, seal);
        // The count is unchanged, so the refresh when `state` is let go would keep the old id:
        // an unregister of the new one would then not wait for a slice over its memory.
        let mut ids = lock(&self.sealed_ids);
        ids.remove(&from);
        ids.insert(to.id);
        Ok(Some(modified))
    }

    /// Forgets `id` (unregistered from the registry just before). Waits for a slice in
    /// progress over it, and for a seal in progress (of any registration: it may be this
    /// one's, whose kernel reads the memory the engine frees next); an id that is not sealed
    /// costs one short lock, or none while nothing is sealed or being sealed. (A seal taken
    /// meanwhile is dropped by the seal itself: it finds its registration gone.)
    pub fn forget(&self, id: RegistrationId) {
        if self.sealing.load(Ordering::SeqCst) > 0 {
            self.change().seals.remove(&id);
            return;
        }
        if self.sealed_count.load(Ordering::Acquire) == 0 || !lock(&self.sealed_ids).contains(&id) {
            return;
        }
        self.change().seals.remove(&id);
    }

    /// Whether `id` is sealed, and its state.
    pub fn seal_info(&self, id: RegistrationId) -> Option<SealInfo> {
        let state = lock(&self.state);
        let seal = state.seals.get(&id)?;
        let failing = state.lanes.iter().any(|l| l.device == seal.device && l.failed.is_some());
        Some(seal.info(failing))
    }

    /// Every sealed registration's state, by id.
    pub fn seal_infos(&self) -> BTreeMap<RegistrationId, SealInfo> {
        let state = lock(&self.state);
        state
            .seals
            .iter()
            .map(|(id, seal)| (*id, seal.info(state.lanes.iter().any(|l| l.device == seal.device && l.failed.is_some()))))
            .collect()
    }

    /// The monitor-wide state.
    pub fn status(&self) -> IntegrityStatus {
        let state = lock(&self.state);
        let (sealed_bytes, modified) = state.seal_totals();
        IntegrityStatus {
            devices_enabled: state.lanes.len() as u32,
            sealed: state.seals.len() as u64,
            sealed_bytes,
            modified,
            verified_bytes_total: state.verified_bytes_total,
            passes_completed: state.passes_completed,
            last_pass_unix_ms: state.last_pass_unix_ms,
            failed: state.lanes.iter().find_map(|l| l.failed.clone().map(|e| (l.device, e))),
        }
    }

    /// Whether a lent context has failed (the monitor is unhealthy while one has).
    pub fn failed(&self) -> bool {
        lock(&self.figures).failed
    }

    /// What the health snapshot needs, without waiting for a verification in progress.
    pub fn summary(&self) -> HealthFigures {
        *lock(&self.figures)
    }

    /// When the next background slice is due (`None`: nothing sealed, or all failed; a
    /// failure not yet reported is due at once).
    pub fn next_due(&self) -> Option<Instant> {
        let state = match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Another thread is sealing (its fingerprint, after the engine's work): the
            // monitor thread must not wait for it, its checks are due on time. Look again soon.
            Err(std::sync::TryLockError::WouldBlock) => return Some(Instant::now() + BUSY_RETRY),
        };
        state
            .lanes
            .iter()
            .filter_map(|l| {
                if l.failed.is_some() {
                    l.failure_unreported().then(Instant::now)
                } else {
                    state.seals.values().any(|s| s.device == l.device).then(|| l.next_slice_due())
                }
            })
            .min()
    }

    /// Runs the background slices that are due (at most one per device), then returns what
    /// they found. A slice reads a registration only while it is still judged resident and a
    /// fresh driver query finds its sealed buffers (see `Lane::verify_next_slice`).
    pub fn step(&self, driver: &dyn Driver, registry: &Registry, interval: Duration) -> Vec<Finding> {
        let mut findings = Vec::new();
        let state = match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Busy elsewhere (see `next_due`): this round's slices wait for the next look.
            Err(std::sync::TryLockError::WouldBlock) => return findings,
        };
        let mut guard = Changing { figures: &self.figures, sealed_ids: &self.sealed_ids, sealed_count: &self.sealed_count, state };
        let state = &mut *guard;
        let now = Instant::now();
        for lane in state.lanes.iter_mut() {
            if lane.failed.is_some() {
                findings.extend(lane.unreported_failure());
                continue;
            }
            if lane.next_slice_due() > now {
                continue;
            }
            let sealed_bytes: u64 = state.seals.values().filter(|s| s.device == lane.device).map(|s| s.size).sum();
            if sealed_bytes == 0 {
                continue;
            }
            let outcome = lane.verify_next_slice(&mut state.seals, driver, registry, sealed_bytes, interval);
            state.verified_bytes_total += outcome.bytes;
            if outcome.pass_completed {
                state.passes_completed += 1;
                state.last_pass_unix_ms = crate::core::clock::unix_ms();
            }
            findings.extend(outcome.findings);
        }
        findings
    }

    /// Verifies every sealed byte now, at full speed (launches of up to 16 GiB).
    pub fn verify_all(&self, driver: &dyn Driver, registry: &Registry) -> (VerifySummary, Vec<Finding>) {
        let started = Instant::now();
        let mut summary = VerifySummary::default();
        let mut findings = Vec::new();
        let mut guard = self.change();
        let state = &mut *guard;
        for lane in state.lanes.iter_mut() {
            if lane.failed.is_some() {
                findings.extend(lane.unreported_failure());
                continue;
            }
            let outcome = lane.verify_everything(&mut state.seals, driver, registry);
            summary.registrations += outcome.registrations;
            summary.bytes += outcome.bytes;
            state.verified_bytes_total += outcome.bytes;
            if outcome.pass_completed {
                state.passes_completed += 1;
                state.last_pass_unix_ms = crate::core::clock::unix_ms();
            }
            findings.extend(outcome.findings);
            findings.extend(lane.unreported_failure());
        }
        summary.modified = state.seals.values().filter(|s| s.modified_chunks() > 0).count() as u64;
        summary.duration_us = started.elapsed().as_micros() as u64;
        (summary, findings)
    }
}

/// The error-level record of a lent context that failed (once per failure: the lane keeps
/// the error and runs nothing more).
pub(crate) fn log_failure(device: i32, error: &DriverError) {
    let _ = std::panic::catch_unwind(|| {
        log::error!(
            target: "vram_monitor",
            actor = "vram-integrity", action = "verify", device = device;
            "integrity verification on GPU{device} failed: {error}; content unknown until integrity is disabled and enabled again"
        )
    });
}
