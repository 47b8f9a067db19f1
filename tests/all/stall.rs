//! Stall detection (src/monitor/watchdog.rs) against the fake libcuda: a driver query that never
//! returns until the test releases it, one that blocks for seconds, a callback that never
//! returns, and a long check that keeps progressing. Each test runs in its own child
//! process (see tests/support).
//!
//! No timing assertions: the tests wait (with generous bounds) for states to be reached.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::{Error, Event, EventKind, Monitor, MonitorOptions, Pacing, ReportFormat, StallLimits};

const MIB: usize = 1 << 20;

fn hold_queries(fake: &Fake, hold: bool) {
    // SAFETY: the fake's control function, `void fake_cuda_hold_queries(int)`.
    unsafe { fake.library().get::<unsafe extern "C" fn(i32)>(b"fake_cuda_hold_queries").unwrap()(i32::from(hold)) }
}

fn held_queries(fake: &Fake) -> u32 {
    // SAFETY: the fake's control function, `unsigned fake_cuda_held_queries(void)`.
    unsafe { fake.library().get::<unsafe extern "C" fn() -> u32>(b"fake_cuda_held_queries").unwrap()() }
}

/// Waits up to a minute for `what`; panics with `description` if it never holds.
fn wait_for(description: &str, mut what: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !what() {
        assert!(Instant::now() < until, "never happened: {description}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every event with the name of the thread that delivered it.
type Log = Arc<Mutex<Vec<(Event, String)>>>;

fn recorder(m: &Monitor) -> Log {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    m.set_callback(Some(Arc::new(move |e: &Event| {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        sink.lock().unwrap().push((e.clone(), thread));
    })));
    log
}

fn health_changes(log: &Log) -> Vec<(bool, String, String)> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(e, _)| e.kind == EventKind::HealthChanged)
        .map(|(e, thread)| (e.healthy, e.message.clone(), thread.clone()))
        .collect()
}

fn limits(deadline_ms: u64, grace_ms: u64) -> StallLimits {
    StallLimits { deadline: Duration::from_millis(deadline_ms), grace: Duration::from_millis(grace_ms) }
}

#[test]
fn a_query_that_never_returns_is_a_stall_reported_by_the_watchdog_and_its_release_ends_it() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Arc::new(Monitor::new(MonitorOptions::default()).unwrap());
        m.register(fake.alloc(Kind::Device, MIB, 0), MIB as u64, "w").unwrap();
        let log = recorder(&m);
        m.set_stall_limits(limits(200, 60_000)).unwrap();
        assert!(m.check_now().unwrap().healthy);
        let before = m.health();
        assert!(!before.stalled && before.healthy && before.check_in_progress_ms.is_none());
        assert!(before.last_check_started_unix_ms > 0 && before.last_check_started_unix_ms <= before.last_check_unix_ms);

        hold_queries(fake, true);
        let checker = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.check_now())
        };
        wait_for("the check's query is held in the driver", || held_queries(fake) == 1);
        wait_for("the health says stalled", || m.health().stalled);
        let stalled = m.health();
        assert!(!stalled.healthy, "a stalled monitor is unhealthy");
        assert!(stalled.check_in_progress_ms.is_some());
        wait_for("the watchdog's event", || health_changes(&log).iter().any(|(healthy, _, _)| !healthy));
        let changes = health_changes(&log);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (_, message, thread) = &changes[0];
        assert!(message.starts_with("unhealthy: stalled:"), "{message}");
        assert_eq!(thread, "vram-monitor-watchdog", "sent by the watchdog, not the stuck thread");
        // Its error_kind (the log field alerts key on) names the stall, not a violation.
        let kinds: Vec<&str> =
            log.lock().unwrap().iter().filter(|(e, _)| e.kind == EventKind::HealthChanged).map(|(e, _)| e.error_kind).collect();
        assert_eq!(kinds, ["stalled"]);

        let json: serde_json::Value = serde_json::from_str(&m.report(ReportFormat::Json)).unwrap();
        assert_eq!(json["health"]["stalled"], true);
        assert_eq!(json["health"]["healthy"], false);
        assert!(json["health"]["check_in_progress_ms"].as_u64().is_some());
        assert_eq!(json["health"]["stall_deadline_ms"], 200);
        let metrics = m.report(ReportFormat::Prometheus);
        assert!(metrics.lines().any(|l| l == "vram_monitor_stalled 1"), "{metrics}");
        assert!(metrics.lines().any(|l| l == "vram_monitor_healthy 0"));
        assert!(m.report(ReportFormat::Text).contains("STALLED"));

        // Released: the check completes, and the stall ends by itself.
        hold_queries(fake, false);
        assert!(checker.join().unwrap().unwrap().healthy);
        let after = m.health();
        assert!(!after.stalled && after.healthy, "{after:?}");
        assert_eq!(after.check_in_progress_ms, None);
        let changes = health_changes(&log);
        assert_eq!(changes.len(), 2, "one event for the stall, one for its end: {changes:?}");
        assert!(changes[1].0, "healthy again: {changes:?}");
        assert!(changes[1].1.contains("no longer stalled"), "{changes:?}");
        assert!(m.report(ReportFormat::Prometheus).lines().any(|l| l == "vram_monitor_stalled 0"));
    });
}

#[test]
fn a_query_that_blocks_for_seconds_stalls_the_monitor_until_it_returns() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Arc::new(Monitor::new(MonitorOptions::default()).unwrap());
        m.register(fake.alloc(Kind::Device, MIB, 0), MIB as u64, "w").unwrap();
        let log = recorder(&m);
        m.set_stall_limits(limits(100, 60_000)).unwrap();
        fake.set_query_delay_us(3_000_000);
        let checker = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.check_now())
        };
        wait_for("the health says stalled", || m.health().stalled);
        // Nobody releases anything: the query returns after its 3 s and the check completes.
        assert!(checker.join().unwrap().unwrap().healthy);
        fake.set_query_delay_us(0);
        // The recovery is the watchdog's to see and announce, on its own thread: under a loaded
        // machine it may come a moment after check_now returned.
        wait_for("the stall is over", || !m.health().stalled);
        assert!(m.health().healthy);
        wait_for("the recovery's HEALTH_CHANGED", || health_changes(&log).last().map(|c| c.0) == Some(true));
        let changes = health_changes(&log);
        assert_eq!(changes.first().map(|c| c.0), Some(false), "{changes:?}");
    });
}

#[test]
fn a_long_check_that_keeps_completing_slices_is_not_stalled() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Arc::new(Monitor::new(MonitorOptions::default()).unwrap());
        // 3000 allocations, a query each, 1 ms per query: the check runs at least 3 s, twice
        // the deadline; its slices of 8 queries each complete long within it.
        for i in 0..3000 {
            m.register(fake.alloc(Kind::Device, 4096, 0), 4096, &format!("w{i}")).unwrap();
        }
        let log = recorder(&m);
        m.set_pacing(Pacing { slice_queries: 8, pause: Duration::ZERO }).unwrap();
        m.set_stall_limits(limits(1500, 60_000)).unwrap();
        fake.set_query_delay_us(1000);
        let checker = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.check_now())
        };
        let mut longest_seen = 0;
        while !checker.is_finished() {
            let h = m.health();
            assert!(!h.stalled, "a progressing check was called stalled: {h:?}");
            longest_seen = longest_seen.max(h.check_in_progress_ms.unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        fake.set_query_delay_us(0);
        assert!(checker.join().unwrap().unwrap().healthy);
        assert!(longest_seen > 1500, "the check ran longer than the deadline while watched ({longest_seen} ms)");
        assert!(health_changes(&log).is_empty(), "no stall event: {:?}", health_changes(&log));
    });
}

#[test]
fn a_callback_that_never_returns_is_a_stall_after_the_interval_and_grace() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Monitor::new(MonitorOptions { interval: Duration::from_millis(20), ..Default::default() }).unwrap();
        m.set_stall_limits(limits(60_000, 100)).unwrap();
        let gone = fake.alloc(Kind::Device, MIB, 0);
        m.register(gone, MIB as u64, "w").unwrap();
        // The monitor thread's callback blocks (on its violation event) until released. Every
        // event is recorded, and how many callbacks ran at once.
        let (release, released) = crossbeam_channel::bounded::<()>(1);
        let log: Log = Arc::default();
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most_at_once = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (sink, now, most) = (Arc::clone(&log), Arc::clone(&running), Arc::clone(&most_at_once));
        m.set_callback(Some(Arc::new(move |e: &Event| {
            use std::sync::atomic::Ordering::SeqCst;
            most.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
            let thread = std::thread::current().name().unwrap_or("").to_string();
            sink.lock().unwrap().push((e.clone(), thread));
            if e.kind == EventKind::Violation {
                let _ = released.recv();
            }
            now.fetch_sub(1, SeqCst);
        })));
        fake.free(gone);
        wait_for("the health says stalled", || m.health().stalled);
        let h = m.health();
        assert_eq!(h.check_in_progress_ms, None, "stalled between checks, not in one");
        assert!(!h.healthy);
        // Give the watchdog many looks (its period is 25 ms here): it must not run the
        // callback while the monitor thread is inside it.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !health_changes(&log).iter().any(|(_, message, _)| message.contains("stalled")),
            "the watchdog's event waits for the callback in progress: {:?}",
            health_changes(&log)
        );
        release.send(()).unwrap();
        wait_for("the watchdog's event, once the callback returned", || {
            health_changes(&log).iter().any(|(_, message, _)| message.contains("stalled:"))
        });
        wait_for("the end of the stall is reported", || {
            health_changes(&log).iter().any(|(_, message, _)| message.contains("no longer stalled"))
        });
        wait_for("checks complete again", || !m.health().stalled);
        let changes = health_changes(&log);
        let stall = changes.iter().position(|(_, message, _)| message.contains("stalled:")).unwrap();
        let end = changes.iter().position(|(_, message, _)| message.contains("no longer stalled")).unwrap();
        assert!(stall < end, "{changes:?}");
        assert!(changes[stall].1.contains("no check has completed"), "{changes:?}");
        // Made by the watchdog (the stuck thread could not notice), delivered by whichever of
        // the two threads reached the callback first once it was free.
        assert!(["vram-monitor", "vram-monitor-watchdog"].contains(&changes[stall].2.as_str()), "{changes:?}");
        assert_eq!(most_at_once.load(std::sync::atomic::Ordering::SeqCst), 1, "the callback never ran concurrently with itself");
        assert!(!m.health().healthy, "still unhealthy: the buffer is gone");
        m.set_callback(None);
    });
}

#[test]
fn stall_limits_out_of_range_are_refused_and_change_nothing() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let m = Monitor::new(MonitorOptions::default()).unwrap();
        let defaults = m.stall_limits();
        assert_eq!(defaults, StallLimits::default());
        assert_eq!(defaults.deadline, Duration::from_secs(30));
        assert_eq!(defaults.grace, Duration::from_secs(30));
        let refused = [
            limits(0, 1000),
            limits(1000, 0),
            StallLimits { deadline: Duration::from_secs(31 * 24 * 3600), grace: Duration::from_secs(1) },
            StallLimits { deadline: Duration::from_secs(1), grace: Duration::MAX },
        ];
        for l in refused {
            assert!(matches!(m.set_stall_limits(l), Err(Error::InvalidArgument(_))), "{l:?}");
            assert_eq!(m.stall_limits(), defaults);
        }
        // A deadline not longer than the pacing's pause is one no paced check could meet.
        m.set_pacing(Pacing { slice_queries: 256, pause: Duration::from_millis(100) }).unwrap();
        assert!(matches!(m.set_stall_limits(limits(100, 1000)), Err(Error::InvalidArgument(_))));
        assert_eq!(m.stall_limits(), defaults);
        m.set_stall_limits(limits(101, 5)).unwrap();
        assert_eq!(m.stall_limits(), limits(101, 5));
        let h = m.health();
        assert_eq!((h.stall_deadline_ms, h.stall_grace_ms), (101, 5));
        // ...and the other way round: no pause as long as the deadline.
        let pacing = m.pacing();
        assert!(matches!(m.set_pacing(Pacing { slice_queries: 1, pause: Duration::from_millis(101) }), Err(Error::InvalidArgument(_))));
        assert_eq!(m.pacing(), pacing);
    });
}

#[test]
fn freeing_a_monitor_joins_its_watchdog_at_once() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Monitor::new(MonitorOptions::default()).unwrap();
        m.register(fake.alloc(Kind::Device, MIB, 0), MIB as u64, "w").unwrap();
        m.check_now().unwrap();
        let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
        let with = threads();
        // The default limits make the watchdog sleep 250 ms at a time: freeing wakes it.
        drop(m);
        assert_eq!(threads(), with - 2, "the monitor thread and the watchdog are both gone");
    });
}
