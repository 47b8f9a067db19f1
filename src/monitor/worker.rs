//! The monitor thread: its commands, its loop, the guard around a sweep, the watchdog's look,
//! and the delivery of events to the callback.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::sweep::sweep;
use super::{integrity, Shared};
use crate::core::error::Error;
use crate::core::events::{Event, Unhealthy};
use crate::core::health::CheckSummary;
use crate::core::sync::lock;

pub(super) enum Command {
    CheckNow(Sender<CheckSummary>),
    /// Verify every sealed byte now (src/monitor/integrity.rs).
    VerifyNow(Sender<Result<crate::core::integrity::VerifySummary, Error>>),
    /// Events posted by another thread (a reseal, an unseal) wait in `Shared::posted`.
    Deliver,
    /// The interval changed: recompute when the next check is due.
    Reschedule,
    Stop,
}

pub(super) fn run(shared: Arc<Shared>, inbox: Receiver<Command>) {
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
pub(super) fn guarded_sweep(shared: &Shared) -> CheckSummary {
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

/// One look of the watchdog (on its own thread): sends a `HEALTH_CHANGED` event when the
/// monitor becomes stalled, and another when it progresses again before a check completes
/// (a check that completes after a stall sends it itself; see the end of [`sweep`]). The
/// events are logged at once; the callback gets them as soon as it is not running on the
/// monitor thread (a callback that never returns may be what stalled it): until then they
/// wait in `shared.watchdog_events`, in order.
pub(super) fn watch(shared: &Shared) {
    if shared.stopping.load(Ordering::Acquire) {
        return;
    }
    let event = {
        let mut reported = lock(&shared.stall.reported);
        let state = shared.stall.state(shared.interval_ms.load(Ordering::Acquire));
        if state.stalled && !*reported {
            *reported = true;
            shared.reported_healthy.store(false, Ordering::Release);
            Some(Event::health_changed(0, Some(Unhealthy::Stalled(state.why))))
        } else if !state.stalled && *reported {
            *reported = false;
            let health = shared.health();
            shared.reported_healthy.store(health.healthy, Ordering::Release);
            let mut event = Event::health_changed(health.current_violations, shared.unhealthy_cause(&health));
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
pub(super) fn deliver_watchdog_events(shared: &Shared) {
    let waiting = std::mem::take(&mut *lock(&shared.watchdog_events));
    for event in waiting {
        deliver(shared, &event);
    }
}

pub(super) fn dispatch(shared: &Shared, event: &Event, log: bool) {
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
pub(super) fn deliver(shared: &Shared, event: &Event) {
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
