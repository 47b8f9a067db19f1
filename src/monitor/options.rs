//! What a monitor is created with and can change later: the interval, the pacing of a
//! check, the callback's type, and the limits on what it is given.

use std::sync::Arc;
use std::time::Duration;

use crate::core::error::Error;
use crate::core::events::Event;

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

    pub(super) fn pause(&self) {
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

pub(super) fn interval_ms(interval: Duration) -> Result<u64, Error> {
    let ms = interval.as_millis();
    if ms == 0 {
        return Err(Error::InvalidArgument("the interval must be at least 1 ms"));
    }
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

pub(super) fn valid_pacing(pacing: Pacing) -> Result<Pacing, Error> {
    if pacing.slice_queries == 0 {
        return Err(Error::InvalidArgument("a slice must allow at least one query"));
    }
    if pacing.pause > Duration::from_secs(1) {
        return Err(Error::InvalidArgument("the pause between slices must be at most 1 s"));
    }
    Ok(pacing)
}
