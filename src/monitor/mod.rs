//! The monitor: the registrations, one named background thread that checks them every
//! interval, the commands that wake it, and the callback it runs.
//!
//! This file holds [`Monitor`] and the state it shares with its thread; [`options`] what it is
//! created with, `worker` the thread and event delivery, `sweep` one check, [`view`] the read
//! view outputs use. It picks the adapters (the CUDA driver, NVML) and imports no output.

use crate::core::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::adapters::cuda::CudaDriver;
use crate::adapters::nvml::NvmlSource;
use crate::core::device_health::{DeviceHealth, DeviceHealthSource, DeviceHealthTracker, NVML_READ_PERIOD};
use crate::core::driver::Driver;
use crate::core::error::Error;
use crate::core::events::Event;
use crate::core::health::{CheckSummary, Health};
use crate::core::inspect::inspect;
use crate::core::process_vram::ProcessVram;
use crate::core::registry::{RegistrationId, RegistrationInfo, Registry};
use crate::core::verdict::Verdict;
use crate::monitor::watchdog::{StallClock, StallLimits, Watchdog};

#[cfg(feature = "cudarc")]
pub mod cudarc_buffers;
mod integrity;
pub mod options;
pub mod registration_guard;
mod sweep;
pub mod view;
pub mod watchdog;
mod worker;

pub use options::*;
pub use view::MonitorView;
use options::{interval_ms, valid_pacing};
use sweep::SweepPlan;
use worker::{dispatch, run, watch, Command};


#[derive(Debug, Default)]
struct Stats {
    checks_completed: u64,
    checks_failed: u64,
    last_check_failed: bool,
    last_check_unix_ms: u64,
    last_check_duration_us: u64,
    process_vram: Option<ProcessVram>,
    process_vram_read_at: Option<Instant>,
}

struct Shared {
    driver: Arc<dyn Driver>,
    registry: Registry,
    interval_ms: AtomicU64,
    pacing: Mutex<Pacing>,
    /// Used by the monitor thread only (a Mutex to be shareable).
    plan: Mutex<SweepPlan>,
    callback: Mutex<Option<Callback>>,
    /// Held while the callback runs: the monitor thread and the watchdog both deliver events,
    /// and the callback never runs concurrently with itself.
    delivering: Mutex<()>,
    /// The watchdog's events not yet delivered (the callback was running): delivered before
    /// the next event of either thread, so they keep their order.
    watchdog_events: Mutex<Vec<Event>>,
    stats: Mutex<Stats>,
    total_violations: AtomicU64,
    stopping: AtomicBool,
    /// A `Reschedule` is queued and not yet taken: further interval changes need not queue
    /// another (a flood of them must not bury the periodic check under commands).
    reschedule_queued: AtomicBool,
    reported_healthy: AtomicBool,
    /// The GPUs' own memory health (src/core/device_health).
    device_health: DeviceHealthTracker,
    /// The marks the monitor thread leaves for the watchdog (src/monitor/watchdog.rs).
    stall: StallClock,
    /// Content integrity: lent contexts, seals, background verification (src/core/integrity).
    integrity: crate::core::integrity::Integrity,
    /// Events of calls made on other threads, delivered by the monitor thread in order.
    posted: Mutex<Vec<Event>>,
}

/// Watches registered device buffers and reports when they stop being resident in VRAM.
///
/// Dropping the monitor stops and joins its thread; no callback runs after the drop returns.
pub struct Monitor {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
    /// The thread that notices when the monitor thread stalls (src/monitor/watchdog.rs).
    watchdog: Option<Watchdog>,
    watchdog_id: Option<ThreadId>,
    /// The process that created the monitor. After `fork()` the child has a copy of the
    /// monitor but not its thread: see [`Monitor::in_forked_child`].
    origin: crate::adapters::fork::Origin,
}

impl Monitor {
    /// Loads the CUDA driver (once per process) and starts the monitor thread.
    /// Creates no CUDA context.
    pub fn new(options: MonitorOptions) -> Result<Monitor, Error> {
        let driver = CudaDriver::get()?;
        Monitor::with_driver(options, Arc::new(driver))
    }

    /// Starts a monitor that asks `driver` instead of the CUDA driver (another backend, or a
    /// model in tests).
    pub fn with_driver(options: MonitorOptions, driver: Arc<dyn Driver>) -> Result<Monitor, Error> {
        Monitor::with_backends(options, driver, None)
    }

    /// Starts a monitor that asks `driver`, and runs integrity kernels through `gpu`
    /// (`None`: the CUDA driver, found when integrity is first enabled).
    pub fn with_backends(
        options: MonitorOptions,
        driver: Arc<dyn Driver>,
        gpu: Option<Arc<dyn crate::core::integrity::gpu::Gpu>>,
    ) -> Result<Monitor, Error> {
        let shared = Arc::new(Shared {
            driver,
            registry: Registry::new(),
            interval_ms: AtomicU64::new(interval_ms(options.interval)?),
            pacing: Mutex::new(valid_pacing(options.pacing)?),
            plan: Mutex::new(SweepPlan::default()),
            callback: Mutex::new(None),
            delivering: Mutex::new(()),
            watchdog_events: Mutex::new(Vec::new()),
            stats: Mutex::new(Stats::default()),
            total_violations: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            reschedule_queued: AtomicBool::new(false),
            reported_healthy: AtomicBool::new(true),
            device_health: DeviceHealthTracker::with_source(Box::new(NvmlSource::new()), NVML_READ_PERIOD),
            stall: StallClock::new(),
            integrity: crate::core::integrity::Integrity::new(gpu, crate::adapters::cuda::fingerprint::default_gpu),
            posted: Mutex::new(Vec::new()),
        });
        crate::adapters::process_exit::arm();
        let (commands, inbox) = crossbeam_channel::unbounded();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vram-monitor".into())
            .spawn(move || run(thread_shared, inbox))
            .map_err(|e| Error::ThreadSpawn(e.to_string()))?;
        let thread_id = thread.thread().id();
        let mut monitor = Monitor {
            shared,
            commands,
            thread: Some(thread),
            thread_id,
            watchdog: None,
            watchdog_id: None,
            origin: crate::adapters::fork::Origin::here(),
        };
        // On failure, dropping `monitor` stops and joins the thread started above.
        let (period, watched) = (Arc::clone(&monitor.shared), Arc::clone(&monitor.shared));
        let watchdog = Watchdog::spawn(move || period.stall.watch_period(), move || watch(&watched))?;
        monitor.watchdog_id = Some(watchdog.thread_id());
        monitor.watchdog = Some(watchdog);
        Ok(monitor)
    }

    /// Whether this is a child process forked after the monitor was created. Only the thread
    /// that called `fork()` exists in the child: the monitor thread does not, and any lock it
    /// held at the fork stays held. So in a child, [`Monitor::register`],
    /// [`Monitor::unregister`], [`Monitor::set_interval`] and [`Monitor::check_now`] return
    /// [`Error::Forked`] at once, and dropping the monitor neither joins nor releases anything
    /// (its memory and callback are leaked in the child; the parent's monitor is unaffected).
    /// The other methods take the monitor's locks: do not call them in a forked child.
    pub fn in_forked_child(&self) -> bool {
        self.origin.is_forked_child()
    }

    fn not_forked(&self) -> Result<(), Error> {
        if self.in_forked_child() {
            Err(Error::Forked)
        } else {
            Ok(())
        }
    }

    /// Whether the calling thread is this monitor's thread or its watchdog thread (that is,
    /// inside a callback).
    pub fn is_monitor_thread(&self) -> bool {
        let current = std::thread::current().id();
        current == self.thread_id || Some(current) == self.watchdog_id
    }

    /// Checks `[ptr, ptr + size)` at once and registers it if it is resident; otherwise
    /// refuses with the verdict ([`Error::Refused`]). The label is copied.
    ///
    /// Registering the same memory twice gives two independent registrations.
    pub fn register(&self, ptr: u64, size: u64, label: &str) -> Result<RegistrationId, Error> {
        self.not_forked()?;
        crate::core::batch::validate(ptr, size, label)?;
        let inspection = inspect(&*self.shared.driver, ptr, size)?;
        if inspection.verdict != Verdict::Resident {
            return Err(Error::Refused(inspection.verdict));
        }
        Ok(self.shared.registry.insert(label, inspection.device, inspection.pieces(), inspection.answers()))
    }

    /// Registers many ranges in one call (a whole model): each entry is checked as
    /// [`Monitor::register`] checks one, but the driver is asked once per distinct allocation
    /// or mapping, not once per entry, and every entry is judged from the answers of this one
    /// call. The same range twice is [`Error::DuplicateRange`] from its second occurrence.
    ///
    /// A failed entry fails only itself, unless `all_or_nothing`: then nothing is registered
    /// when any entry fails, and the entries that did not fail themselves hold
    /// [`Error::EntriesFailed`].
    pub fn register_many(&self, regions: &[crate::core::batch::Region<'_>], all_or_nothing: bool) -> Result<crate::core::batch::Registered, Error> {
        self.not_forked()?;
        if u32::try_from(regions.len()).is_err() {
            return Err(Error::InvalidArgument("more than 2^32 - 1 entries in one call"));
        }
        let judged = crate::core::batch::judge_all(&*self.shared.driver, regions);
        let none = all_or_nothing && !judged.failures.is_empty();
        let first = if none || judged.passed.is_empty() {
            0
        } else {
            self.shared.registry.insert_many(regions, &judged.passed, &judged.extents, &judged.inspected, judged.label_bytes)
        };
        Ok(crate::core::batch::Registered::new(regions.len(), first, judged.failures, none, judged.queries))
    }

    /// One registration as it stands now (its verdict, pieces and label), or `None` for an
    /// id this monitor does not hold.
    pub fn registration(&self, id: RegistrationId) -> Option<RegistrationInfo> {
        self.shared.registration(id)
    }

    /// Stops watching a registration.
    pub fn unregister(&self, id: RegistrationId) -> Result<(), Error> {
        self.not_forked()?;
        self.shared.registry.remove(id).ok_or(Error::UnknownRegistration(id))?;
        // Then: waits for a verification slice reading this memory (a slice reads only
        // what is still registered), so that once this returns the engine may free it.
        self.shared.integrity.forget(id);
        Ok(())
    }

    /// Sets (or with `None` removes) the function that receives events. It runs on the
    /// monitor thread, one event at a time. A callback already running finishes its event
    /// with the old function, which is dropped once no event uses it.
    pub fn set_callback(&self, callback: Option<Callback>) {
        if callback.is_some() {
            crate::adapters::process_exit::arm();
        }
        let old = std::mem::replace(&mut *lock(&self.shared.callback), callback);
        // Dropped here, outside the lock: its destructor may call back into the monitor.
        drop(old);
    }

    /// Changes the interval between full checks; the thread wakes at once and the next
    /// check is due one new interval after the last one.
    pub fn set_interval(&self, interval: Duration) -> Result<(), Error> {
        self.not_forked()?;
        self.shared.interval_ms.store(interval_ms(interval)?, Ordering::Release);
        if self.shared.reschedule_queued.swap(true, Ordering::AcqRel) {
            // The queued one will read the interval just stored.
            return Ok(());
        }
        self.commands.send(Command::Reschedule).map_err(|_| Error::Stopped)
    }

    /// Changes how checks pace their driver queries (from the next check on). A pause not
    /// shorter than the stall deadline is refused ([`Monitor::set_stall_limits`]).
    pub fn set_pacing(&self, pacing: Pacing) -> Result<(), Error> {
        self.not_forked()?;
        let mut current = lock(&self.shared.pacing);
        let pacing = valid_pacing(pacing)?;
        if Duration::from_millis(self.shared.stall.limits_ms().0) <= pacing.pause {
            return Err(Error::InvalidArgument("the pause between slices must be shorter than the stall deadline"));
        }
        *current = pacing;
        Ok(())
    }

    /// Changes when the monitor counts as stalled (see [`crate::watchdog`]); effective at
    /// once. Refused with [`Error::InvalidArgument`], changing nothing, when a limit is
    /// under 1 ms or over [`crate::watchdog::MAX_STALL_LIMIT`], or the deadline is not
    /// longer than the pacing's pause.
    pub fn set_stall_limits(&self, limits: StallLimits) -> Result<(), Error> {
        self.not_forked()?;
        // The pacing's lock keeps set_pacing from slipping a longer pause in meanwhile.
        let pacing = lock(&self.shared.pacing);
        let (deadline_ms, grace_ms) = crate::monitor::watchdog::validate(limits, pacing.pause)?;
        self.shared.stall.set_limits(deadline_ms, grace_ms);
        Ok(())
    }

    /// The stall limits in force.
    pub fn stall_limits(&self) -> StallLimits {
        let (deadline, grace) = self.shared.stall.limits_ms();
        StallLimits { deadline: Duration::from_millis(deadline), grace: Duration::from_millis(grace) }
    }

    /// The current pacing.
    pub fn pacing(&self) -> Pacing {
        *lock(&self.shared.pacing)
    }

    /// The current interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.shared.interval_ms.load(Ordering::Acquire))
    }

    /// Runs a full check now, on the monitor thread (so callbacks still run there), and
    /// waits for its result. Refused from inside a callback.
    pub fn check_now(&self) -> Result<CheckSummary, Error> {
        self.not_forked()?;
        if self.is_monitor_thread() {
            return Err(Error::CalledFromCallback);
        }
        let (reply, result) = crossbeam_channel::bounded(1);
        self.commands.send(Command::CheckNow(reply)).map_err(|_| Error::Stopped)?;
        result.recv().map_err(|_| Error::Stopped)
    }

    /// The health snapshot.
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// The memory health of the GPUs that hold registrations, as of the last full check
    /// (read from NVML; see [`crate::device_health`]).
    pub fn device_health(&self) -> Vec<DeviceHealth> {
        self.shared.device_health.snapshot()
    }

    /// Replaces where device health is read from (NVML by default): another backend, or a
    /// model in tests. A source set here is read after every full check.
    pub fn set_device_health_source(&self, source: Box<dyn DeviceHealthSource>) {
        self.shared.device_health.set_source(source);
    }

    /// A read view of this monitor, for outputs that serve its state ([`MonitorView`]).
    pub fn view(&self) -> MonitorView {
        MonitorView { shared: Arc::clone(&self.shared) }
    }
}

impl Monitor {

    /// A copy of the registrations, in id order.
    pub fn registrations(&self) -> Vec<RegistrationInfo> {
        self.shared.registrations()
    }

    /// Stops the thread and waits for it. Returns [`Error::CalledFromCallback`] (and stops
    /// nothing) when called on the monitor thread, and [`Error::Forked`] in a forked child
    /// (where dropping the returned monitor leaks it).
    pub fn shutdown(mut self) -> Result<(), (Monitor, Error)> {
        if self.in_forked_child() {
            return Err((self, Error::Forked));
        }
        if self.is_monitor_thread() {
            return Err((self, Error::CalledFromCallback));
        }
        self.stop_and_join();
        Ok(())
    }

    fn stop_and_join(&mut self) {
        if self.in_forked_child() {
            // No monitor thread to stop or join here, and its locks may be held forever: leak
            // the state (extra references keep the shared state and the channel alive, so
            // dropping the fields only decrements counts) and run no finaliser.
            std::mem::forget(Arc::clone(&self.shared));
            std::mem::forget(self.commands.clone());
            std::mem::forget(self.thread.take());
            std::mem::forget(self.watchdog.take());
            return;
        }
        // Stop the check in progress first (it looks at this flag between slices).
        self.shared.stopping.store(true, Ordering::Release);
        // The watchdog first: it waits on nothing the monitor thread holds, so this waits for
        // at most the callback it may be running.
        drop(self.watchdog.take());
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            if std::thread::current().id() != self.thread_id {
                let _ = thread.join();
            }
        }
        // The thread is gone: drop the callback here, so its user data is released now.
        self.set_callback(None);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
