//! The library side: monitors and their callbacks, and the two ways a change is seen
//! (`check_now`, and the periodic thread), or a registration refused.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vram_monitor::{Callback, Error, Event, EventKind, Monitor, MonitorOptions, RegistrationId, Verdict};

use crate::results::{Row, Status};
use crate::{NEVER, PERIODIC, PERIODIC_WAIT};

/// Collects a monitor's events for the test to wait on.
#[derive(Default)]
pub struct Collector {
    pub events: Mutex<Vec<Event>>,
    pub arrived: Condvar,
}

impl Collector {
    pub fn callback(self: &Arc<Self>) -> Callback {
        let me = Arc::clone(self);
        Arc::new(move |event: &Event| {
            me.events.lock().unwrap_or_else(|e| e.into_inner()).push(event.clone());
            me.arrived.notify_all();
        })
    }

    /// The verdicts of the violation events about `id`, in order.
    pub fn violations(&self, id: RegistrationId) -> Vec<Verdict> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .filter(|e| e.kind == EventKind::Violation && e.registration_id == id)
            .map(|e| e.verdict)
            .collect()
    }

    /// Every event about `id`, as `kind:VERDICT`, in order ("none" when there is none).
    pub fn about(&self, id: RegistrationId) -> String {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<String> = events
            .iter()
            .filter(|e| e.registration_id == id)
            .map(|e| format!("{}:{}", e.kind.name(), e.verdict.name()))
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(",")
        }
    }

    /// The message of the first CHECK_FAILED event about `id`.
    pub fn check_failed_message(&self, id: RegistrationId) -> Option<String> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .find(|e| e.registration_id == id && e.kind == EventKind::CheckFailed)
            .map(|e| e.message.clone())
    }

    /// Waits until any event about `id` has arrived.
    pub fn wait_about(&self, id: RegistrationId, timeout: Duration) -> bool {
        self.wait_for(timeout, |e| e.registration_id == id)
    }

    /// Waits until a violation event about `id` has arrived.
    pub fn wait_violation(&self, id: RegistrationId, timeout: Duration) -> bool {
        self.wait_for(timeout, |e| e.kind == EventKind::Violation && e.registration_id == id)
    }

    /// Waits until an event for which `wanted` holds has arrived.
    fn wait_for(&self, timeout: Duration, wanted: impl Fn(&Event) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if events.iter().any(&wanted) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            events = self
                .arrived
                .wait_timeout(events, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

pub fn monitor(interval: Duration) -> Result<(Monitor, Arc<Collector>), String> {
    let monitor = Monitor::new(MonitorOptions { interval, ..Default::default() }).map_err(|e| format!("Monitor::new: {e}"))?;
    let collector = Arc::new(Collector::default());
    monitor.set_callback(Some(collector.callback()));
    Ok((monitor, collector))
}

pub fn verdict_of(monitor: &Monitor, id: RegistrationId) -> Option<Verdict> {
    monitor.registrations().iter().find(|r| r.id == id).map(|r| r.verdict())
}

pub fn describe(result: &Result<RegistrationId, Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(Error::Refused(v)) => format!("refused: {v}"),
        Err(e) => format!("error: {e}"),
    }
}

pub fn name_of(v: Option<Verdict>) -> String {
    v.map_or_else(|| "(no registration)".to_string(), |v| v.name().to_string())
}

pub fn names(vs: &[Verdict]) -> String {
    if vs.is_empty() {
        "none".into()
    } else {
        vs.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
    }
}

pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// What a scenario's change did.
pub enum Change {
    /// Done; the scenario's expected verdict stands.
    Done,
    /// Done, but the expected verdict is this one (the reason goes into the notes).
    Expect(Verdict, String),
    /// The driver does not support this change here: the scenario is skipped.
    Unsupported(String),
    /// The change itself failed.
    Failed(String),
}

/// Registers `[ptr, ptr + size)` (expected to be resident) in two monitors, applies
/// `change`, and checks that (a) `check_now` on the first and (b) the periodic thread
/// (50 ms) of the second both find `expected`, each with exactly one violation callback
/// carrying it. The periodic monitor is paused during the change, so it sees only the end
/// state, not a step in between (free-then-reallocate is NOT_MAPPED for a moment).
pub fn watch_change(row: &mut Row, ptr: u64, size: u64, expected: Verdict, change: impl FnOnce() -> Change) {
    let mut change = Some(change);
    let mut run_change = || change.take().map(|f| f());
    let ((a, ea), (b, eb)) = match (monitor(NEVER), monitor(PERIODIC)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            row.fail(e);
            run_change();
            return;
        }
    };
    let ra = a.register(ptr, size, row.name);
    let rb = b.register(ptr, size, row.name);
    row.registration = describe(&ra);
    let (ida, idb) = match (ra, rb) {
        (Ok(ida), Ok(idb)) => (ida, idb),
        (ra, rb) => {
            row.fail(format!(
                "registration {} (periodic monitor: {})",
                describe(&ra),
                describe(&rb)
            ));
            run_change();
            return;
        }
    };

    let mut problems = Vec::new();
    match a.check_now() {
        Ok(s) if s.violations == 0 && s.check_failures == 0 && s.resident == 1 => {}
        Ok(s) => problems.push(format!("before the change, check_now found {s:?}")),
        Err(e) => problems.push(format!("before the change, check_now failed: {e}")),
    }
    // The periodic thread's own cadence: time three checks after the first.
    if wait_until(PERIODIC_WAIT, || b.health().checks_completed >= 1) {
        let (first, from) = (b.health().checks_completed, Instant::now());
        if wait_until(PERIODIC_WAIT, || b.health().checks_completed >= first + 3) {
            let every = from.elapsed().as_millis() / 3;
            row.notes
                .push(format!("periodic thread: a check every ~{every} ms (interval 50 ms)"));
            if !(25..=1000).contains(&every) {
                problems.push(format!(
                    "the periodic thread checked every ~{every} ms with a 50 ms interval"
                ));
            }
        } else {
            problems.push("the periodic thread stopped checking after its first check".into());
        }
    } else {
        problems.push("the periodic thread completed no check within 3 s of a 50 ms interval".into());
    }
    if verdict_of(&b, idb) != Some(Verdict::Resident) || !eb.violations(idb).is_empty() {
        problems.push(format!(
            "before the change, the periodic thread saw {}",
            name_of(verdict_of(&b, idb))
        ));
    }
    // Pause the periodic monitor; let a sweep in progress finish.
    let _ = b.set_interval(NEVER);
    std::thread::sleep(Duration::from_millis(200));

    let mut expected = expected;
    match run_change().unwrap_or(Change::Failed("no change".into())) {
        Change::Done => {}
        Change::Expect(v, why) => {
            expected = v;
            row.expected = format!("RESIDENT, then {v}");
            row.notes.push(why);
        }
        Change::Unsupported(why) => {
            row.status = Status::Skip;
            row.saw = format!("unsupported here: {why}");
            row.check_now = "unsupported".into();
            row.periodic = "unsupported".into();
            row.callback = "unsupported".into();
            return;
        }
        Change::Failed(why) => {
            row.fail(format!("changing the memory failed: {why}"));
            return;
        }
    }

    // (a) check_now: callbacks for what it finds run before it returns.
    let va = match a.check_now() {
        Ok(_) => verdict_of(&a, ida),
        Err(e) => {
            problems.push(format!("check_now failed: {e}"));
            None
        }
    };
    let cba = ea.violations(ida);
    let health = a.health();
    if health.healthy || health.current_violations != 1 {
        problems.push(format!(
            "health after check_now: healthy={} current_violations={}",
            health.healthy, health.current_violations
        ));
    }

    // (b) the periodic thread, resumed: the next check is due at once.
    let resumed = Instant::now();
    let _ = b.set_interval(PERIODIC);
    let heard = eb.wait_violation(idb, PERIODIC_WAIT);
    let waited = resumed.elapsed();
    std::thread::sleep(Duration::from_millis(120)); // two more sweeps: no second event
    let vb = verdict_of(&b, idb);
    let cbb = eb.violations(idb);

    row.check_now = name_of(va);
    row.periodic = if heard {
        format!("{} ({} ms)", name_of(vb), waited.as_millis())
    } else {
        format!("{} (no callback in {} s)", name_of(vb), PERIODIC_WAIT.as_secs())
    };
    row.callback = format!("check_now: {}; periodic: {}", names(&cba), names(&cbb));
    let pass =
        problems.is_empty() && va == Some(expected) && vb == Some(expected) && cba == [expected] && cbb == [expected];
    row.status = if pass { Status::Pass } else { Status::Fail };
    if pass {
        row.shows = vec![Verdict::Resident, expected];
    }
    row.saw = format!(
        "registered; check_now {}, periodic thread {}; callbacks {}",
        row.check_now, row.periodic, row.callback
    );
    row.notes.extend(problems);
}

/// Registers `[ptr, ptr + size)` and expects the refusal `expected`, leaving nothing
/// registered.
pub fn expect_refusal(row: &mut Row, ptr: u64, size: u64, expected: Verdict) {
    let (m, events) = match monitor(NEVER) {
        Ok(m) => m,
        Err(e) => return row.fail(e),
    };
    let result = m.register(ptr, size, row.name);
    row.registration = describe(&result);
    let registered = m.health().registrations;
    let pass = matches!(result, Err(Error::Refused(v)) if v == expected) && registered == 0;
    row.status = if pass { Status::Pass } else { Status::Fail };
    if pass {
        row.shows = vec![expected];
    }
    row.saw = row.registration.clone();
    if registered != 0 {
        row.notes
            .push(format!("{registered} registrations exist after the call"));
    }
    drop(m);
    let heard = events.events.lock().unwrap_or_else(|e| e.into_inner()).len();
    if heard != 0 {
        row.notes
            .push(format!("{heard} callbacks ran for a refused registration"));
    }
}
