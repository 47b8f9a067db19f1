//! The monitor: the registrations, one named background thread that checks them every
//! interval, the commands that wake it, and the callback it runs.

use crate::core::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::adapters::cuda::CudaDriver;
use crate::core::driver::Driver;
use crate::adapters::nvml::NvmlSource;
use crate::core::device_health::{DeviceHealth, DeviceHealthSource, DeviceHealthTracker, NVML_READ_PERIOD};
use crate::core::error::Error;
use crate::core::events::{Event, EventKind};
use crate::core::health::{CheckSummary, Health};
use crate::core::inspect::inspect;
use crate::core::process_vram::ProcessVram;
use crate::adapters::nvml::process_vram;
use crate::core::registry::{Change, RegistrationFigures, RegistrationId, RegistrationInfo, Registry};
use crate::core::verdict::Verdict;
use crate::monitor::watchdog::{StallClock, StallLimits, Watchdog, PROGRESS_QUERIES};

#[cfg(feature = "cudarc")]
pub mod cudarc_buffers;
mod integrity;
pub mod registration_guard;
pub mod watchdog;

/// The default check interval: 60 seconds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Process VRAM is read after a check at most this often.
pub const PROCESS_VRAM_PERIOD: Duration = Duration::from_secs(1);

pub use crate::core::batch::MAX_LABEL_BYTES;

/// A function that receives events, on the monitor thread.
pub type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

/// How a check shares the driver with the engine. The driver serialises pointer queries with
/// the engine's own calls (kernel launches, synchronisation): a check that queries flat out
/// adds tail latency to every launch meanwhile. So a check asks in slices and pauses between
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Driver queries per slice (at least 1). Default [`DEFAULT_SLICE_QUERIES`].
    pub slice_queries: u32,
    /// Pause after each slice. Zero yields the processor instead of sleeping.
    /// Default [`DEFAULT_PAUSE`].
    pub pause: Duration,
}

/// Default driver queries per slice of a check (the C header has it as
/// `VRAM_MONITOR_DEFAULT_SLICE_QUERIES`).
pub const DEFAULT_SLICE_QUERIES: u32 = 256;
/// Default pause between slices of a check.
pub const DEFAULT_PAUSE: Duration = Duration::from_micros(50);

impl Pacing {
    /// No pacing: every query back to back (for measurements).
    pub const FLAT_OUT: Pacing = Pacing { slice_queries: u32::MAX, pause: Duration::ZERO };

    fn pause(&self) {
        if self.pause.is_zero() {
            std::thread::yield_now();
        } else {
            std::thread::sleep(self.pause);
        }
    }
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing { slice_queries: DEFAULT_SLICE_QUERIES, pause: DEFAULT_PAUSE }
    }
}

/// Settings given at creation; the interval and the pacing can be changed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorOptions {
    /// Time between full checks (at least 1 ms). Default [`DEFAULT_INTERVAL`].
    pub interval: Duration,
    /// How a check paces its driver queries. Default [`Pacing::default`].
    pub pacing: Pacing,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions { interval: DEFAULT_INTERVAL, pacing: Pacing::default() }
    }
}

enum Command {
    CheckNow(Sender<CheckSummary>),
    /// Verify every sealed byte now (src/monitor/integrity.rs).
    VerifyNow(Sender<Result<crate::core::integrity::VerifySummary, Error>>),
    /// Events posted by another thread (a reseal, an unseal) wait in `Shared::posted`.
    Deliver,
    /// The interval changed: recompute when the next check is due.
    Reschedule,
    Stop,
}

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

/// What an output reads of a monitor: the health snapshot, the GPUs' memory health, and the
/// registrations tallied by device and verdict, each read when asked, never waiting for a
/// check. The HTTP endpoint serves from one (`http::HttpServer::serve`) without holding the
/// monitor, and the monitor knows nothing of it. Cheap to clone, `Send` and
/// `Sync`; it stays readable after the monitor is dropped, showing the state it ended in.
#[derive(Clone)]
pub struct MonitorView {
    shared: Arc<Shared>,
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


fn interval_ms(interval: Duration) -> Result<u64, Error> {
    let ms = interval.as_millis();
    if ms == 0 {
        return Err(Error::InvalidArgument("the interval must be at least 1 ms"));
    }
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn valid_pacing(pacing: Pacing) -> Result<Pacing, Error> {
    if pacing.slice_queries == 0 {
        return Err(Error::InvalidArgument("a slice must allow at least one query"));
    }
    if pacing.pause > Duration::from_secs(1) {
        return Err(Error::InvalidArgument("the pause between slices must be at most 1 s"));
    }
    Ok(pacing)
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
        let (inspections, queries) = crate::core::batch::inspect_all(&*self.shared.driver, regions);
        let any_failed = inspections.iter().any(Result::is_err);
        let results = if any_failed && all_or_nothing {
            inspections.into_iter().map(|r| Err(r.err().unwrap_or(Error::EntriesFailed))).collect()
        } else {
            inspections
                .into_iter()
                .zip(regions)
                .map(|(r, region)| {
                    r.map(|found| self.shared.registry.insert(region.label, found.device, found.pieces(), found.answers()))
                })
                .collect()
        };
        Ok(crate::core::batch::Registered { results, queries })
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

impl Shared {
    fn registration(&self, id: RegistrationId) -> Option<RegistrationInfo> {
        let mut info = self.registry.get(id)?;
        info.seal = self.integrity.seal_info(id);
        Some(info)
    }

    fn registrations(&self) -> Vec<RegistrationInfo> {
        let mut all = self.registry.snapshot();
        let seals = self.integrity.seal_infos();
        if !seals.is_empty() {
            for r in all.iter_mut() {
                r.seal = seals.get(&r.id).copied();
            }
        }
        all
    }

    fn health(&self) -> Health {
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

fn run(shared: Arc<Shared>, inbox: Receiver<Command>) {
    let mut last_check = Instant::now();
    loop {
        let interval = Duration::from_millis(shared.interval_ms.load(Ordering::Acquire));
        let check_due = last_check.checked_add(interval);
        let next = match (check_due, shared.integrity.next_due()) {
            (Some(check), Some(slice)) => Some(check.min(slice)),
            (check, slice) => check.or(slice),
        };
        let wait = next.map(|d| d.saturating_duration_since(Instant::now()));
        let command = match wait {
            // Due already: do the due work before taking another command, so that commands
            // arriving faster than they are handled can never postpone the periodic check.
            Some(wait) if wait.is_zero() => Err(RecvTimeoutError::Timeout),
            Some(wait) => inbox.recv_timeout(wait),
            // An interval so long that it overflows the clock: wait for a command only.
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let command = match command {
            Err(RecvTimeoutError::Timeout) => {
                if check_due.is_some_and(|due| Instant::now() >= due) {
                    last_check = Instant::now();
                    guarded_sweep(&shared);
                }
                integrity::background_step(&shared, interval);
                // Then at most one command, so that slices due back to back (a share cap
                // of 100%) cannot starve the commands either.
                match inbox.try_recv() {
                    Ok(command) => Ok(command),
                    Err(crossbeam_channel::TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                    Err(crossbeam_channel::TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                }
            }
            other => other,
        };
        match command {
            Ok(Command::CheckNow(reply)) => {
                last_check = Instant::now();
                let summary = guarded_sweep(&shared);
                let _ = reply.send(summary);
            }
            Ok(Command::VerifyNow(reply)) => {
                let _ = reply.send(integrity::verify_now_here(&shared));
            }
            Ok(Command::Deliver) => integrity::deliver_posted(&shared),
            Ok(Command::Reschedule) => shared.reschedule_queued.store(false, Ordering::Release),
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
    }
}

/// A panic in a sweep (a bug, or a Rust callback that panicked) must not kill the thread or
/// reach the host: it counts as a failed check.
fn guarded_sweep(shared: &Shared) -> CheckSummary {
    shared.stall.begin();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sweep(shared)));
    // A check that ended early (freeing, a panic) ends here; a complete one already did.
    shared.stall.end();
    match result {
        Ok(summary) => summary,
        Err(_) => {
            // Logging may be what panicked: guard it too.
            let _ = std::panic::catch_unwind(|| {
                log::error!(target: "vram_monitor", "internal error during a check; counted as a failed check")
            });
            let mut stats = lock(&shared.stats);
            stats.last_check_failed = true;
            stats.checks_failed += 1;
            CheckSummary { healthy: false, ..Default::default() }
        }
    }
}

/// The addresses a check asks about, sorted (the driver answers neighbouring addresses
/// faster), kept between checks until the allocation table changes.
#[derive(Default)]
struct SweepPlan {
    addresses: Vec<(u64, u64)>,
    generations: Vec<u64>,
    current: Vec<u64>,
}

impl SweepPlan {
    fn refresh(&mut self, registry: &Registry) {
        registry.allocation_generations(&mut self.current);
        if self.current == self.generations && !self.generations.is_empty() {
            return;
        }
        self.addresses.clear();
        self.generations.clear();
        for shard in 0..registry.allocation_shards() {
            let generation = registry.allocation_addresses(shard, &mut self.addresses);
            self.generations.push(generation);
        }
        self.addresses.sort_unstable_by_key(|&(address, _)| address);
    }
}

fn sweep(shared: &Shared) -> CheckSummary {
    let started = Instant::now();
    let pacing = *lock(&shared.pacing);
    let mut queries_in_slice = 0u32;
    let mut since_mark = 0u32;
    let mut changed: HashMap<RegistrationId, Merged> = HashMap::new();
    let mut plan = lock(&shared.plan);
    plan.refresh(&shared.registry);
    for i in 0..plan.addresses.len() {
        let (address, last_fingerprint) = plan.addresses[i];
        {
            // Checked before every query (one relaxed load), so that freeing waits for at
            // most the query in progress, however slow the driver is.
            if shared.stopping.load(Ordering::Acquire) {
                // Shutting down: a partial check is not a result.
                return CheckSummary::default();
            }
            if queries_in_slice >= pacing.slice_queries {
                queries_in_slice = 0;
                since_mark = 0;
                // A slice completed: progress (the watchdog's rule; see src/monitor/watchdog.rs).
                shared.stall.progress();
                pacing.pause();
            } else if since_mark >= PROGRESS_QUERIES {
                since_mark = 0;
                shared.stall.progress();
            }
            queries_in_slice += 1;
            since_mark += 1;
            let answer = shared.driver.pointer_info(address);
            if Registry::is_unchanged(last_fingerprint, &answer) {
                continue;
            }
            match shared.registry.apply(address, &answer, last_fingerprint) {
                Ok(changes) => {
                    plan.addresses[i].1 = Registry::fingerprint_of(&answer);
                    for change in changes {
                        merge_change(&mut changed, change);
                    }
                }
                // The allocation changed after this plan was made (a registration joined with
                // another answer, or it was registered anew at this address): our answer may
                // be older than theirs. The next check asks again.
                Err(stale) => plan.addresses[i].1 = stale.current,
            }
        }
    }
    drop(plan);
    let duration_us = started.elapsed().as_micros() as u64;
    if shared.stopping.load(Ordering::Acquire) {
        // Freeing: skip the NVML reads below (slow on a sick GPU) and deliver nothing.
        return CheckSummary::default();
    }
    let mut events = merged_events(shared, changed);
    // The NVML reads below can hang on a sick GPU: measured from here.
    shared.stall.progress();
    // Process VRAM costs an NVML call per GPU (about 30 us): at most once per
    // PROCESS_VRAM_PERIOD, not on every check of a 1 ms interval. Not part of the check's time.
    let read_vram = lock(&shared.stats).process_vram_read_at.is_none_or(|at| at.elapsed() >= PROCESS_VRAM_PERIOD);
    let process_vram = read_vram.then(|| process_vram::read(&*shared.driver, &shared.registry.devices()));
    let device_faults = shared.device_health.refresh(&*shared.driver, || shared.registry.devices(), &mut events);
    // The check's results are in: it ends here, where the health it reports is judged, with
    // the watchdog kept out (src/monitor/watchdog.rs) so that a stall reported by it is ended by
    // exactly one event.
    let reported = lock(&shared.stall.reported);
    shared.stall.end();
    let counts = shared.registry.counts();
    let check_failed = counts.failing > 0;
    let healthy = counts.violating == 0 && !check_failed && device_faults == 0 && !shared.integrity.failed();
    {
        let mut stats = lock(&shared.stats);
        stats.checks_completed += 1;
        if check_failed {
            stats.checks_failed += 1;
        }
        stats.last_check_failed = check_failed;
        stats.last_check_unix_ms = crate::core::clock::unix_ms();
        stats.last_check_duration_us = duration_us;
        if let Some(process_vram) = process_vram {
            stats.process_vram = Some(process_vram);
            stats.process_vram_read_at = Some(Instant::now());
        }
    }
    let summary = CheckSummary {
        checked: counts.registrations,
        // A registration both in violation and failing its query is one, not two. The three
        // counters are read one after another while others may change them: saturate.
        resident: counts
            .registrations
            .saturating_sub((counts.violating + counts.failing).saturating_sub(counts.violating_and_failing)),
        violations: counts.violating,
        check_failures: counts.failing,
        duration_us,
        healthy,
    };
    if healthy {
        log::debug!(
            target: "vram_monitor",
            actor = "vram-residency", action = "verify";
            "check passed: {} registrations resident in {} allocations ({} us)", counts.registrations, counts.allocations, duration_us
        );
    }
    let mut reported = reported;
    let was_stalled = std::mem::replace(&mut *reported, false);
    if shared.reported_healthy.swap(healthy, Ordering::AcqRel) != healthy || was_stalled {
        let mut event = Event::health_changed(healthy, counts.violating, check_failed);
        if was_stalled {
            event.message.push_str(" (no longer stalled: a check completed)");
        }
        events.push(event);
    }
    drop(reported);
    let mut logged = 0usize;
    let total = events.len();
    for mut event in events {
        event.healthy = healthy;
        // A freed arena can hold a million registrations: every one reaches the callback,
        // but the log gets the first LOGGED_EVENTS_PER_CHECK and one line for the rest.
        let log = logged < LOGGED_EVENTS_PER_CHECK;
        logged += 1;
        dispatch(shared, &event, log);
    }
    if total > LOGGED_EVENTS_PER_CHECK {
        let _ = std::panic::catch_unwind(|| {
            log::error!(
                target: "vram_monitor",
                actor = "vram-residency", action = "verify";
                "{} more events in this check were delivered to the callback but not logged", total - LOGGED_EVENTS_PER_CHECK
            )
        });
    }
    summary
}

/// One look of the watchdog (on its own thread): sends a `HEALTH_CHANGED` event when the
/// monitor becomes stalled, and another when it progresses again before a check completes
/// (a check that completes after a stall sends it itself; see the end of [`sweep`]). The
/// events are logged at once; the callback gets them as soon as it is not running on the
/// monitor thread (a callback that never returns may be what stalled it): until then they
/// wait in `shared.watchdog_events`, in order.
fn watch(shared: &Shared) {
    if shared.stopping.load(Ordering::Acquire) {
        return;
    }
    let event = {
        let mut reported = lock(&shared.stall.reported);
        let state = shared.stall.state(shared.interval_ms.load(Ordering::Acquire));
        if state.stalled && !*reported {
            *reported = true;
            shared.reported_healthy.store(false, Ordering::Release);
            let mut event = Event::health_changed(false, 0, false);
            event.message = format!("unhealthy: stalled: {}", state.why);
            Some(event)
        } else if !state.stalled && *reported {
            *reported = false;
            let health = shared.health();
            shared.reported_healthy.store(health.healthy, Ordering::Release);
            let mut event = Event::health_changed(health.healthy, health.current_violations, health.last_check_failed);
            event.message.push_str(" (no longer stalled: checks progress again)");
            Some(event)
        } else {
            None
        }
    };
    if let Some(event) = event {
        let _ = std::panic::catch_unwind(|| event.log());
        lock(&shared.watchdog_events).push(event);
    }
    if lock(&shared.watchdog_events).is_empty() {
        return;
    }
    let one_at_a_time = match shared.delivering.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        // The monitor thread is in the callback: try again at the next look.
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    deliver_watchdog_events(shared);
    drop(one_at_a_time);
}

/// Delivers the watchdog's waiting events; the caller holds `shared.delivering`.
fn deliver_watchdog_events(shared: &Shared) {
    let waiting = std::mem::take(&mut *lock(&shared.watchdog_events));
    for event in waiting {
        deliver(shared, &event);
    }
}

/// Log records per check, at most (events beyond are delivered, not logged one by one).
const LOGGED_EVENTS_PER_CHECK: usize = 100;

/// What one check found for one registration, over all its pieces.
struct Merged {
    /// Its verdict before this check.
    from: Verdict,
    /// Its state after the last change in this check.
    now: RegistrationInfo,
    /// A query for it started failing in this check.
    failed: Option<crate::core::driver::DriverError>,
}

/// A registration spanning several mappings can change in several of them in one check: it
/// gets one event, from its verdict before the check to its verdict after.
fn merge_change(changed: &mut HashMap<RegistrationId, Merged>, change: Change) {
    match change {
        Change::Verdict { registration, from } => match changed.get_mut(&registration.id) {
            Some(merged) => merged.now = registration,
            None => {
                changed.insert(registration.id, Merged { from, now: registration, failed: None });
            }
        },
        Change::CheckFailed { registration, error } => match changed.get_mut(&registration.id) {
            Some(merged) => {
                merged.failed = Some(error);
                merged.now = registration;
            }
            None => {
                let from = registration.verdict;
                changed.insert(registration.id, Merged { from, now: registration, failed: Some(error) });
            }
        },
    }
}

fn merged_events(shared: &Shared, changed: HashMap<RegistrationId, Merged>) -> Vec<Event> {
    let mut merged: Vec<Merged> = changed.into_values().collect();
    // Allocations are visited in address order; report in registration order.
    merged.sort_unstable_by_key(|m| m.now.id);
    let mut events = Vec::with_capacity(merged.len());
    for m in merged {
        if let Some(error) = &m.failed {
            let detail = error.to_string();
            events.push(Event::about(EventKind::CheckFailed, &m.now, m.now.verdict, Verdict::CheckFailed, Some(&detail)));
        }
        if m.now.verdict != m.from {
            let kind = if m.now.verdict.is_violation() { EventKind::Violation } else { EventKind::Recovered };
            if kind == EventKind::Violation {
                shared.total_violations.fetch_add(1, Ordering::Relaxed);
            }
            events.push(Event::about(kind, &m.now, m.from, m.now.verdict, None));
        }
    }
    events
}

fn dispatch(shared: &Shared, event: &Event, log: bool) {
    if shared.stopping.load(Ordering::Acquire) {
        // The monitor is being freed: deliver nothing more, so that `free` waits for at most
        // the callback already running, not for every event of the sweep.
        return;
    }
    // A host's logger that panics must not cost the event its callback.
    if log && std::panic::catch_unwind(|| event.log()).is_err() {
        // Nothing more to say: logging itself failed.
    }
    let _one_at_a_time = lock(&shared.delivering);
    deliver_watchdog_events(shared);
    deliver(shared, event);
}

/// Runs the callback on `event`; the caller holds `shared.delivering`.
fn deliver(shared: &Shared, event: &Event) {
    if shared.stopping.load(Ordering::Acquire) {
        return;
    }
    let callback = lock(&shared.callback).clone();
    if let Some(callback) = callback {
        // Nothing reaches the host once it has begun to exit (src/adapters/process_exit.rs).
        let delivered = crate::adapters::process_exit::deliver(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(event))));
        if let Some(Err(_)) = delivered {
            log::error!(target: "vram_monitor", "an event callback panicked; the monitor goes on");
        }
    }
}
