//! Stall detection: when the monitor thread stops checking (the driver hangs inside a query,
//! as it does for minutes when a GPU falls off the bus; a callback that never returns; an
//! NVML call that hangs), the health must stop saying "healthy". The monitor thread cannot
//! say so itself, being the stuck one: it only leaves marks in a [`StallClock`] (check
//! started, progress, check ended), and a small watchdog thread per monitor reads them.
//!
//! The rule (docs/health-schema.md says the same):
//! - **During a check**, the monitor is stalled when the check has made no progress for
//!   longer than the *deadline*. Progress is a mark the check leaves when it starts, after
//!   every slice of driver queries (see [`crate::Pacing`]) and at least every
//!   [`PROGRESS_QUERIES`] queries, and before each NVML reading. So a long check that keeps
//!   completing slices is never stalled, however long it runs; one whose driver query (or
//!   NVML call) does not return is stalled one deadline after its last mark.
//! - **Between checks**, the monitor is stalled when no check has completed for longer than
//!   the interval plus the *grace* (counted from the monitor's creation before the first
//!   check). This catches a thread that stopped checking outside a check, for example in a
//!   callback that never returns.
//!
//! Between two marks a check pauses once (the pacing's pause): a deadline no longer than that
//! pause would call every paced check stalled, so it is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::core::error::Error;

/// The default stall deadline: a check that makes no progress for 30 s is stalled.
pub const DEFAULT_STALL_DEADLINE: Duration = Duration::from_secs(30);
/// The default grace: no completed check for the interval plus 30 s is a stall.
pub const DEFAULT_STALL_GRACE: Duration = Duration::from_secs(30);
/// The largest deadline or grace accepted: 30 days (longer is as good as never, and the sum
/// with any interval stays far from overflowing).
pub const MAX_STALL_LIMIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// A check leaves a progress mark at least every this many driver queries (and after every
/// slice), so an unpaced check ([`crate::Pacing::FLAT_OUT`]) progresses too.
pub const PROGRESS_QUERIES: u32 = 256;

/// When the monitor counts as stalled (see the module documentation for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallLimits {
    /// A check in progress with no progress for longer than this is stalled. At least 1 ms,
    /// longer than the pacing's pause, at most [`MAX_STALL_LIMIT`]. Default
    /// [`DEFAULT_STALL_DEADLINE`].
    pub deadline: Duration,
    /// No completed check for longer than the interval plus this is a stall. At least 1 ms,
    /// at most [`MAX_STALL_LIMIT`]. Default [`DEFAULT_STALL_GRACE`].
    pub grace: Duration,
}

impl Default for StallLimits {
    fn default() -> Self {
        StallLimits { deadline: DEFAULT_STALL_DEADLINE, grace: DEFAULT_STALL_GRACE }
    }
}

/// Checks `limits` against the pacing's `pause`; returns them in milliseconds.
pub(crate) fn validate(limits: StallLimits, pause: Duration) -> Result<(u64, u64), Error> {
    if limits.deadline.as_millis() == 0 || limits.grace.as_millis() == 0 {
        return Err(Error::InvalidArgument("the stall deadline and grace must be at least 1 ms"));
    }
    if limits.deadline > MAX_STALL_LIMIT || limits.grace > MAX_STALL_LIMIT {
        return Err(Error::InvalidArgument("the stall deadline and grace must be at most 30 days"));
    }
    if limits.deadline <= pause {
        return Err(Error::InvalidArgument(
            "the stall deadline must be longer than the pause between slices (a progressing check pauses that long between progress marks)",
        ));
    }
    Ok((limits.deadline.as_millis() as u64, limits.grace.as_millis() as u64))
}

/// What the marks say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StallState {
    pub stalled: bool,
    /// How long the check in progress has run, in ms (`None`: none in progress).
    pub in_progress_ms: Option<u64>,
    /// A sentence saying why it is stalled (empty when it is not).
    pub why: String,
}

/// The marks the monitor thread leaves, read by any thread. Times are milliseconds since
/// the monitor was created (monotonic), so the wall clock jumping cannot fake or hide a stall.
pub(crate) struct StallClock {
    origin: Instant,
    /// When the check in progress started, plus 1 (0: no check in progress).
    started: AtomicU64,
    /// The last progress mark of the check in progress.
    progress: AtomicU64,
    /// When the last check ended (0, the creation, before the first).
    ended: AtomicU64,
    /// When the last check started, ms since the Unix epoch (0: none yet).
    started_unix_ms: AtomicU64,
    deadline_ms: AtomicU64,
    grace_ms: AtomicU64,
    /// Whether a stall was reported (an event sent) and its end not yet. Held while the
    /// health is judged and the event chosen, by the watchdog and by the end of a check, so
    /// that each stall gives exactly one event and its end one more.
    pub reported: Mutex<bool>,
}

impl StallClock {
    pub(crate) fn new() -> StallClock {
        StallClock {
            origin: Instant::now(),
            started: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            started_unix_ms: AtomicU64::new(0),
            deadline_ms: AtomicU64::new(DEFAULT_STALL_DEADLINE.as_millis() as u64),
            grace_ms: AtomicU64::new(DEFAULT_STALL_GRACE.as_millis() as u64),
            reported: Mutex::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A check starts.
    pub(crate) fn begin(&self) {
        let now = self.now();
        // Progress first: a reader that sees the check started must not see an old mark.
        self.progress.store(now, Ordering::Release);
        self.started_unix_ms.store(crate::core::clock::unix_ms(), Ordering::Relaxed);
        self.started.store(now + 1, Ordering::Release);
    }

    /// The check in progress made progress.
    pub(crate) fn progress(&self) {
        self.progress.store(self.now(), Ordering::Release);
    }

    /// The check in progress ended (no-op when none is).
    pub(crate) fn end(&self) {
        if self.started.load(Ordering::Acquire) != 0 {
            self.ended.store(self.now(), Ordering::Release);
            self.started.store(0, Ordering::Release);
        }
    }

    pub(crate) fn set_limits(&self, deadline_ms: u64, grace_ms: u64) {
        self.deadline_ms.store(deadline_ms, Ordering::Release);
        self.grace_ms.store(grace_ms, Ordering::Release);
    }

    /// The limits in force, in ms.
    pub(crate) fn limits_ms(&self) -> (u64, u64) {
        (self.deadline_ms.load(Ordering::Acquire), self.grace_ms.load(Ordering::Acquire))
    }

    /// When the last check started, ms since the Unix epoch (0: none yet).
    pub(crate) fn last_started_unix_ms(&self) -> u64 {
        self.started_unix_ms.load(Ordering::Relaxed)
    }

    /// The state now, for a monitor checking every `interval_ms`.
    pub(crate) fn state(&self, interval_ms: u64) -> StallState {
        let (deadline, grace) = self.limits_ms();
        let started = self.started.load(Ordering::Acquire);
        let now = self.now();
        if started != 0 {
            let since_progress = now.saturating_sub(self.progress.load(Ordering::Acquire));
            let stalled = since_progress > deadline;
            StallState {
                stalled,
                in_progress_ms: Some(now.saturating_sub(started - 1)),
                why: if stalled {
                    format!("the check in progress has made no progress for {since_progress} ms (deadline {deadline} ms): a driver or NVML call or a callback does not return")
                } else {
                    String::new()
                },
            }
        } else {
            let since_end = now.saturating_sub(self.ended.load(Ordering::Acquire));
            let allowed = interval_ms.saturating_add(grace);
            let stalled = since_end > allowed;
            StallState {
                stalled,
                in_progress_ms: None,
                why: if stalled {
                    format!("no check has completed for {since_end} ms (interval {interval_ms} ms + grace {grace} ms)")
                } else {
                    String::new()
                },
            }
        }
    }

    /// How often the watchdog looks: a quarter of the shorter limit, between 1 ms and 250 ms.
    pub(crate) fn watch_period(&self) -> Duration {
        let (deadline, grace) = self.limits_ms();
        Duration::from_millis((deadline.min(grace) / 4).clamp(1, 250))
    }
}

/// The watchdog thread ("vram-monitor-watchdog"): calls `tick` every `period()` until
/// stopped. Stopping wakes it at once; joining waits for at most the tick in progress.
pub(crate) struct Watchdog {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    id: ThreadId,
}

impl Watchdog {
    pub(crate) fn spawn(
        period: impl Fn() -> Duration + Send + 'static,
        mut tick: impl FnMut() + Send + 'static,
    ) -> Result<Watchdog, Error> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("vram-monitor-watchdog".into())
            .spawn(move || loop {
                match stopped.recv_timeout(period()) {
                    Err(RecvTimeoutError::Timeout) => {
                        // A bug here must not kill the watchdog or reach the host.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut tick));
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| Error::ThreadSpawn(e.to_string()))?;
        let id = thread.thread().id();
        Ok(Watchdog { stop: Some(stop), thread: Some(thread), id })
    }

    pub(crate) fn thread_id(&self) -> ThreadId {
        self.id
    }

    /// Wakes the thread, which then ends, and joins it (unless called on it).
    pub(crate) fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if std::thread::current().id() != self.id {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_out_of_range_are_refused() {
        let ms = Duration::from_millis;
        let pause = ms(50);
        assert!(validate(StallLimits::default(), pause).is_ok());
        assert!(validate(StallLimits { deadline: Duration::ZERO, grace: ms(1) }, pause).is_err());
        assert!(validate(StallLimits { deadline: ms(100), grace: Duration::ZERO }, pause).is_err());
        assert!(validate(StallLimits { deadline: Duration::from_micros(900), grace: ms(1) }, Duration::ZERO).is_err(), "rounds to 0 ms");
        assert!(validate(StallLimits { deadline: MAX_STALL_LIMIT + ms(1), grace: ms(1) }, pause).is_err());
        assert!(validate(StallLimits { deadline: ms(100), grace: Duration::MAX }, pause).is_err());
        assert!(validate(StallLimits { deadline: ms(50), grace: ms(1) }, pause).is_err(), "not longer than the pause");
        assert_eq!(validate(StallLimits { deadline: ms(51), grace: ms(7) }, pause).unwrap(), (51, 7));
        assert!(validate(StallLimits { deadline: MAX_STALL_LIMIT, grace: MAX_STALL_LIMIT }, pause).is_ok());
    }

    #[test]
    fn a_fresh_clock_is_not_stalled_and_an_old_idle_one_is() {
        let clock = StallClock::new();
        clock.set_limits(1000, 1000);
        assert!(!clock.state(60_000).stalled);
        // No completed check for longer than interval + grace (here 0 + 1 ms).
        clock.set_limits(1000, 1);
        std::thread::sleep(Duration::from_millis(5));
        let state = clock.state(0);
        assert!(state.stalled, "{state:?}");
        assert!(state.why.contains("no check has completed"), "{}", state.why);
        assert_eq!(state.in_progress_ms, None);
        // A huge interval never overflows into a stall.
        assert!(!clock.state(u64::MAX).stalled);
    }

    #[test]
    fn a_check_without_progress_is_stalled_and_a_mark_clears_it() {
        let clock = StallClock::new();
        clock.set_limits(1, 1_000_000);
        clock.begin();
        std::thread::sleep(Duration::from_millis(5));
        let state = clock.state(60_000);
        assert!(state.stalled, "{state:?}");
        assert!(state.in_progress_ms.is_some());
        clock.set_limits(1_000_000, 1_000_000);
        clock.progress();
        assert!(!clock.state(60_000).stalled);
        clock.end();
        assert_eq!(clock.state(60_000).in_progress_ms, None);
        assert!(clock.last_started_unix_ms() > 0);
    }
}
