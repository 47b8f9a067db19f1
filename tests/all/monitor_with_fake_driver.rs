//! The Rust API against the fake libcuda, loaded through the same dynamic-loading path as
//! the real driver. Each test runs in its own child process (see tests/support).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{fake_driver_test, no_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::{DriverError, Error, Event, EventKind, Monitor, MonitorOptions, Verdict, VramSource};

const MIB: usize = 1 << 20;

fn monitor() -> Monitor {
    Monitor::new(MonitorOptions::default()).expect("monitor starts on the fake driver")
}

/// Collects every event the callback receives.
fn recorder(monitor: &Monitor) -> Arc<Mutex<Vec<Event>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    monitor.set_callback(Some(Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone()))));
    events
}

fn take(events: &Arc<Mutex<Vec<Event>>>) -> Vec<Event> {
    std::mem::take(&mut *events.lock().unwrap())
}

fn violations(events: &[Event]) -> Vec<(u64, Verdict)> {
    events.iter().filter(|e| e.kind == EventKind::Violation).map(|e| (e.registration_id, e.verdict)).collect()
}

#[test]
fn registration_refuses_every_kind_of_memory_that_is_not_vram() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let device = fake.alloc(Kind::Device, 4 * MIB, 0);
        let managed = fake.alloc(Kind::Managed, 4 * MIB, 0);
        let host = fake.alloc(Kind::Host, 4 * MIB, 0);
        let freed = fake.alloc(Kind::Device, 4 * MIB, 0);
        fake.free(freed);
        let reservation = fake.reserve(64 * MIB);
        assert!(fake.map(reservation, 2 * MIB, Kind::VmmHost, 0));

        assert!(m.register(device, 4 * MIB as u64, "weights").is_ok());
        assert!(m.register(device + 4096, 4096, "interior").is_ok(), "an interior pointer is fine");
        assert_eq!(m.register(managed, 4096, "m"), Err(Error::Refused(Verdict::Managed)));
        assert_eq!(m.register(host, 4096, "h"), Err(Error::Refused(Verdict::Host)));
        assert_eq!(m.register(freed, 4096, "f"), Err(Error::Refused(Verdict::NotMapped)));
        assert_eq!(m.register(0x1234, 16, "bogus"), Err(Error::Refused(Verdict::NotMapped)));
        assert_eq!(m.register(device + 4 * MIB as u64, 16, "one past the end"), Err(Error::Refused(Verdict::NotMapped)));
        assert_eq!(m.register(device, 4 * MIB as u64 + 1, "too long"), Err(Error::Refused(Verdict::OutOfRange)));
        assert_eq!(m.register(reservation, 4096, "vmm host"), Err(Error::Refused(Verdict::Host)));
        assert_eq!(m.register(reservation + 2 * MIB as u64, 4096, "vmm unmapped"), Err(Error::Refused(Verdict::NotMapped)));
        assert_eq!(m.register(device, 0, "empty"), Err(Error::InvalidArgument("size must be non-zero")));
        assert!(matches!(m.register(u64::MAX - 8, 16, "wraps"), Err(Error::InvalidArgument(_))));
        assert!(matches!(m.register(device, 16, &"x".repeat(4097)), Err(Error::InvalidLabel(_))));
        assert_eq!(m.health().registrations, 2, "refused registrations leave nothing behind");
    });
}

#[test]
fn a_range_that_runs_into_a_neighbouring_allocation_is_out_of_range() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        // Two VMM device mappings back to back are one range; two plain allocations are not,
        // even if they were adjacent.
        let reservation = fake.reserve(64 * MIB);
        for i in 0..3u64 {
            assert!(fake.map(reservation + i * 2 * MIB as u64, 2 * MIB, Kind::VmmDevice, 0));
        }
        let id = m.register(reservation + 4096, 6 * MIB as u64 - 8192, "expandable segment tensor").unwrap();
        assert_eq!(m.registrations()[0].pieces.len(), 3, "one piece per mapping");
        assert_eq!(m.register(reservation, 6 * MIB as u64 + 1, "past the last mapping"), Err(Error::Refused(Verdict::OutOfRange)));

        let events = recorder(&m);
        assert!(fake.unmap(reservation + 2 * MIB as u64), "unmap the middle mapping");
        let summary = m.check_now().unwrap();
        assert_eq!((summary.checked, summary.violations), (1, 1));
        assert_eq!(violations(&take(&events)), vec![(id, Verdict::NotMapped)], "the middle mapping is checked too");
    });
}

#[test]
fn every_change_underneath_gives_its_verdict_and_exactly_one_event() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let events = recorder(&m);
        let mut cases = Vec::new();
        for (label, expected) in [
            ("to managed", Verdict::Managed),
            ("to host", Verdict::Host),
            ("freed", Verdict::NotMapped),
            ("reallocated", Verdict::Replaced),
            ("moved device", Verdict::WrongDevice),
            ("untouched", Verdict::Resident),
        ] {
            let ptr = fake.alloc(Kind::Device, 2 * MIB, 0);
            let id = m.register(ptr, 2 * MIB as u64, label).unwrap();
            cases.push((ptr, id, expected));
        }
        let reservation = fake.reserve(16 * MIB);
        assert!(fake.map(reservation, 2 * MIB, Kind::VmmDevice, 0));
        let vmm_id = m.register(reservation, 2 * MIB as u64, "vmm to host").unwrap();

        let first = m.check_now().unwrap();
        assert!(first.healthy && first.violations == 0 && first.checked == 7);
        assert!(take(&events).is_empty(), "nothing changed, nothing reported");

        fake.set_kind(cases[0].0, Kind::Managed);
        fake.set_kind(cases[1].0, Kind::Host);
        fake.free(cases[2].0);
        fake.reallocate(cases[3].0);
        fake.set_device(cases[4].0, 1);
        assert!(fake.unmap(reservation));
        assert!(fake.map(reservation, 2 * MIB, Kind::VmmHost, 0));

        let summary = m.check_now().unwrap();
        assert_eq!((summary.checked, summary.violations, summary.resident), (7, 6, 1));
        assert!(!summary.healthy);
        let seen = take(&events);
        let mut expected: Vec<(u64, Verdict)> = cases.iter().filter(|c| c.2 != Verdict::Resident).map(|c| (c.1, c.2)).collect();
        expected.push((vmm_id, Verdict::Host));
        assert_eq!(violations(&seen), expected);
        let health_events: Vec<&Event> = seen.iter().filter(|e| e.kind == EventKind::HealthChanged).collect();
        assert_eq!(health_events.len(), 1);
        assert!(!health_events[0].healthy);
        let first_violation = seen.iter().find(|e| e.kind == EventKind::Violation).unwrap();
        assert_eq!(first_violation.label, "to managed");
        assert_eq!(first_violation.ptr, cases[0].0);
        assert_eq!(first_violation.size, 2 * MIB as u64);
        assert_eq!(first_violation.previous_verdict, Verdict::Resident);
        assert!(first_violation.message.contains("MANAGED"), "{}", first_violation.message);

        let health = m.health();
        assert_eq!((health.current_violations, health.total_violations, health.checks_completed), (6, 6, 2));
        assert!(!health.healthy);

        m.check_now().unwrap();
        assert!(take(&events).is_empty(), "a violation is reported once, not every check");

        // The engine fixes one (the managed buffer goes back to device memory) and drops the rest.
        fake.set_kind(cases[0].0, Kind::Device);
        for (_, id, verdict) in &cases[1..] {
            if *verdict != Verdict::Resident {
                m.unregister(*id).unwrap();
            }
        }
        m.unregister(vmm_id).unwrap();
        assert_eq!(m.health().current_violations, 1, "unregistering drops a violation at once");
        let summary = m.check_now().unwrap();
        assert!(summary.healthy);
        let seen = take(&events);
        assert!(seen.iter().any(|e| e.kind == EventKind::Recovered && e.registration_id == cases[0].1 && e.previous_verdict == Verdict::Managed));
        assert!(seen.iter().any(|e| e.kind == EventKind::HealthChanged && e.healthy));
        let health = m.health();
        assert!(health.healthy);
        assert_eq!((health.registrations, health.current_violations, health.total_violations), (2, 0, 6));
    });
}

#[test]
fn a_failed_query_is_check_failed_not_a_movement_and_the_rest_are_still_checked() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let events = recorder(&m);
        let ptrs: Vec<u64> = (0..3).map(|_| fake.alloc(Kind::Device, MIB, 0)).collect();
        let ids: Vec<u64> = ptrs.iter().map(|&p| m.register(p, MIB as u64, "w").unwrap()).collect();
        fake.fail_query_at(ptrs[1], 987_654);
        fake.free(ptrs[2]);
        let summary = m.check_now().unwrap();
        assert_eq!((summary.checked, summary.check_failures, summary.violations, summary.resident), (3, 1, 1, 1));
        let seen = take(&events);
        let failed: Vec<&Event> = seen.iter().filter(|e| e.kind == EventKind::CheckFailed).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].registration_id, failed[0].verdict), (ids[1], Verdict::CheckFailed));
        assert!(failed[0].message.contains("987654"), "an unknown driver code is reported by number: {}", failed[0].message);
        assert_eq!(violations(&seen), vec![(ids[2], Verdict::NotMapped)]);
        let health = m.health();
        assert!(health.last_check_failed && !health.healthy);
        assert_eq!(health.current_violations, 1, "the failed one is not counted as moved");

        m.check_now().unwrap();
        assert!(take(&events).iter().all(|e| e.kind != EventKind::CheckFailed), "a persisting failure is reported once");

        fake.fail_query_at(ptrs[1], 0);
        m.unregister(ids[2]).unwrap();
        assert!(m.check_now().unwrap().healthy);
        assert!(m.health().healthy);
    });
}

#[test]
fn an_unknown_result_code_from_the_driver_is_a_clean_error() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        fake.set_query_result(0x7fff_fff0);
        match m.register(ptr, MIB as u64, "w") {
            Err(Error::Driver(DriverError::Call { function, code })) => {
                assert_eq!(function, "cuPointerGetAttributes");
                assert_eq!(code, 0x7fff_fff0);
            }
            other => panic!("expected a driver error, got {other:?}"),
        }
        fake.set_query_result(0);
        m.register(ptr, MIB as u64, "w").unwrap();
        fake.set_query_result(4); // CUDA_ERROR_DEINITIALIZED, as while the process exits
        let summary = m.check_now().unwrap();
        assert_eq!(summary.check_failures, 1);
        assert!(!m.health().healthy);
    });
}

#[test]
fn the_periodic_thread_finds_violations_and_a_new_interval_takes_effect_at_once() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        assert_eq!(m.interval(), Duration::from_secs(60));
        let (tx, rx) = crossbeam_channel::unbounded();
        let callback_thread = Arc::new(Mutex::new(None));
        let seen_thread = Arc::clone(&callback_thread);
        m.set_callback(Some(Arc::new(move |e: &Event| {
            *seen_thread.lock().unwrap() = std::thread::current().name().map(str::to_owned);
            let _ = tx.send(e.clone());
        })));
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        let id = m.register(ptr, MIB as u64, "w").unwrap();
        fake.set_kind(ptr, Kind::Host);
        // Nothing happens within the 60 s interval...
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        // ...until the interval is shortened: the thread wakes and checks without check_now.
        m.set_interval(Duration::from_millis(20)).unwrap();
        let event = rx.recv_timeout(Duration::from_secs(5)).expect("the periodic check reports the violation");
        assert_eq!((event.kind, event.registration_id, event.verdict), (EventKind::Violation, id, Verdict::Host));
        assert_eq!(callback_thread.lock().unwrap().as_deref(), Some("vram-monitor"), "callbacks run on the monitor thread");
        let before = m.health().checks_completed;
        std::thread::sleep(Duration::from_millis(200));
        assert!(m.health().checks_completed >= before + 3, "checks keep coming every 20 ms");
        assert!(m.set_interval(Duration::ZERO).is_err());
    });
}

#[test]
fn drop_returns_promptly_in_the_middle_of_a_long_wait_and_no_callback_runs_after_it() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let calls = Arc::new(Mutex::new(0u32));
        let counter = Arc::clone(&calls);
        m.set_callback(Some(Arc::new(move |_: &Event| *counter.lock().unwrap() += 1)));
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        m.register(ptr, MIB as u64, "w").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        drop(m);
        assert!(started.elapsed() < Duration::from_secs(1), "drop took {:?}", started.elapsed());
        fake.free(ptr);
        let after = *calls.lock().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*calls.lock().unwrap(), after);
        assert_eq!(Arc::strong_count(&calls), 1, "the callback was released by drop");
    });
}

#[test]
fn check_now_from_a_callback_is_refused_instead_of_deadlocking() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Arc::new(monitor());
        let inner = Arc::downgrade(&m);
        let (tx, rx) = crossbeam_channel::unbounded();
        m.set_callback(Some(Arc::new(move |e: &Event| {
            if let Some(m) = inner.upgrade() {
                let nested = m.check_now();
                // Unregistering and registering from a callback is allowed.
                let unregister = m.unregister(e.registration_id);
                let _ = tx.send((nested, unregister));
            }
        })));
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        let id = m.register(ptr, MIB as u64, "w").unwrap();
        fake.free(ptr);
        m.check_now().unwrap();
        let (nested, unregister) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(nested, Err(Error::CalledFromCallback));
        assert_eq!(unregister, Ok(()));
        assert!(m.registrations().iter().all(|r| r.id != id));
    });
}

#[test]
fn no_context_is_created_and_process_vram_comes_from_the_engines_context() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let ptr = fake.alloc(Kind::Device, 64 * MIB, 0);
        m.register(ptr, 64 * MIB as u64, "w").unwrap();
        m.check_now().unwrap();
        let health = m.health();
        // No NVML here: the figure is the device's used memory, read through the engine's
        // already-active primary context.
        assert_eq!(health.process_vram.source, VramSource::DeviceUsed);
        assert_eq!(health.process_vram.bytes, 512 * MIB as u64 + 64 * MIB as u64);
        fake.set_primary_context_active(0, false);
        // Process VRAM is read at most once per PROCESS_VRAM_PERIOD.
        std::thread::sleep(vram_monitor::monitor::PROCESS_VRAM_PERIOD + Duration::from_millis(50));
        m.check_now().unwrap();
        assert_eq!(m.health().process_vram.source, VramSource::Unknown, "without the engine's context, no figure rather than a new context");
        assert_eq!(fake.context_creations(), 0);
    });
}

#[test]
fn a_driver_without_the_pointer_query_is_a_result_not_a_panic() {
    fake_driver_test(&test_name!(), FakeDriverVariant::WithoutPointerQuery, &[], || {
        match Monitor::new(MonitorOptions::default()) {
            Err(Error::Driver(DriverError::SymbolMissing(name))) => assert_eq!(name, "cuPointerGetAttributes"),
            Err(other) => panic!("expected SymbolMissing, got {other:?}"),
            Ok(_) => panic!("expected SymbolMissing, got a monitor"),
        }
    });
}

#[test]
fn a_stub_libcuda_is_a_result_not_a_panic() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[("FAKE_CUDA_INIT_RESULT", "34")], || {
        match Monitor::new(MonitorOptions::default()) {
            Err(Error::Driver(DriverError::InitFailed(34))) => {}
            Err(other) => panic!("expected InitFailed(34), got {other:?}"),
            Ok(_) => panic!("expected InitFailed(34), got a monitor"),
        }
    });
}

#[test]
fn no_driver_is_a_result_not_a_panic() {
    no_driver_test(&test_name!(), || {
        match Monitor::new(MonitorOptions::default()) {
            Err(Error::Driver(DriverError::NotFound)) => {}
            Err(other) => panic!("expected NotFound, got {other:?}"),
            Ok(_) => panic!("expected NotFound, got a monitor"),
        }
    });
}

#[test]
fn the_json_report_lists_every_registration_with_its_verdict() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let a = fake.alloc(Kind::Device, MIB, 0);
        let b = fake.alloc(Kind::Device, MIB, 0);
        let id_a = m.register(a, MIB as u64, "layer.0 \"q\"\nproj").unwrap();
        let id_b = m.register(b, 4096, "layer.1").unwrap();
        fake.free(b);
        m.check_now().unwrap();
        let json = vram_monitor::ReportFormat::Json;
        let report = m.report(json);
        assert!(report.starts_with("{\"health\":{\"version\":"), "{report}");
        assert!(report.contains(&format!("{{\"id\":{id_a},\"label\":\"layer.0 \\\"q\\\"\\nproj\",\"ptr\":\"{a:#x}\",\"size\":1048576,\"device\":0,\"verdict\":\"RESIDENT\",\"sealed\":false}}")), "{report}");
        assert!(report.contains(&format!("{{\"id\":{id_b},\"label\":\"layer.1\",\"ptr\":\"{b:#x}\",\"size\":4096,\"device\":0,\"verdict\":\"NOT_MAPPED\",\"sealed\":false}}")), "{report}");
        assert!(report.contains("\"healthy\":false"));
        let text = m.report(vram_monitor::ReportFormat::Text);
        assert!(text.contains("UNHEALTHY") && text.contains("NOT_MAPPED") && text.contains("layer.1"), "{text}");
    });
}

#[test]
fn a_registration_over_several_mappings_gets_one_event_per_check() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let events = recorder(&m);
        let reservation = fake.reserve(16 * MIB);
        assert!(fake.map(reservation, 2 * MIB, Kind::VmmDevice, 0));
        assert!(fake.map(reservation + 2 * MIB as u64, 2 * MIB, Kind::VmmDevice, 0));
        let id = m.register(reservation, 4 * MIB as u64, "two mappings").unwrap();
        // Both mappings change before the next check: one replaced, one host-backed.
        assert!(fake.unmap(reservation));
        assert!(fake.map(reservation, 2 * MIB, Kind::VmmDevice, 0));
        assert!(fake.unmap(reservation + 2 * MIB as u64));
        assert!(fake.map(reservation + 2 * MIB as u64, 2 * MIB, Kind::VmmHost, 0));
        m.check_now().unwrap();
        let seen = violations(&take(&events));
        assert_eq!(seen, vec![(id, Verdict::Host)], "one event, with the registration's verdict after the check");
        assert_eq!(m.health().total_violations, 1);
    });
}

#[test]
fn a_driver_that_failed_to_initialise_is_tried_again() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        fake.set_init_result(802); // CUDA_ERROR_SYSTEM_NOT_READY: the fabric manager is not up yet
        match Monitor::new(MonitorOptions::default()) {
            Err(Error::Driver(DriverError::InitFailed(802))) => {}
            Err(other) => panic!("expected InitFailed(802), got {other:?}"),
            Ok(_) => panic!("expected InitFailed(802), got a monitor"),
        }
        fake.set_init_result(0);
        assert!(Monitor::new(MonitorOptions::default()).is_ok(), "a later attempt loads the driver");
    });
}

#[test]
fn register_many_asks_once_per_allocation_and_reads_back_one_registration() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let bases: Vec<u64> = (0..10).map(|_| fake.alloc(Kind::Device, 100 * 4096, 0)).collect();
        let labels: Vec<String> = (0..1000).map(|i| format!("layers.{}.w{}", i % 10, i / 10)).collect();
        let regions: Vec<vram_monitor::Region<'_>> = (0..1000)
            .map(|i| vram_monitor::Region { ptr: bases[i % 10] + (i / 10) as u64 * 4096, size: 4096, label: &labels[i] })
            .collect();
        let before = fake.pointer_queries();
        let done = m.register_many(&regions, false).unwrap();
        assert_eq!(fake.pointer_queries() - before, 10, "one query per distinct allocation");
        assert_eq!(done.queries, 10);
        assert_eq!(done.registered(), 1000);
        let id = done.result(123).unwrap().unwrap();
        let info = m.registration(id).expect("registered");
        assert_eq!((info.ptr, info.size, info.label.as_str(), info.verdict), (regions[123].ptr, 4096, "layers.3.w12", Verdict::Resident));
        assert!(m.registration(0).is_none());

        // All or nothing: one managed entry, nothing registered; the others say why not.
        let managed = fake.alloc(Kind::Managed, 4096, 0);
        let mixed = [
            vram_monitor::Region { ptr: bases[0], size: 8, label: "a" },
            vram_monitor::Region { ptr: managed, size: 4096, label: "m" },
            vram_monitor::Region { ptr: bases[0], size: 8, label: "dup" },
        ];
        let done = m.register_many(&mixed, true).unwrap();
        assert_eq!(done.registered(), 0);
        assert_eq!(done.results().collect::<Vec<_>>(), vec![Err(Error::EntriesFailed), Err(Error::Refused(Verdict::Managed)), Err(Error::DuplicateRange)]);
        assert_eq!(m.health().registrations, 1000);
        // Each alone: the good one registered, the others refused.
        let done = m.register_many(&mixed, false).unwrap();
        assert_eq!(done.registered(), 1);
        assert_eq!(m.health().registrations, 1001);
        assert_eq!(m.registration(done.result(0).unwrap().unwrap()).unwrap().label, "a");
        assert_eq!(done.results().skip(1).collect::<Vec<_>>(), [Err(Error::Refused(Verdict::Managed)), Err(Error::DuplicateRange)]);
        // Failures between good entries: each good one's id names it (ids of a call are
        // handed out in order, skipping the failed entries).
        let spread = [
            vram_monitor::Region { ptr: bases[1], size: 16, label: "g0" },
            vram_monitor::Region { ptr: managed, size: 4096, label: "m" },
            vram_monitor::Region { ptr: bases[1] + 16, size: 16, label: "g1" },
            vram_monitor::Region { ptr: bases[1] + 16, size: 16, label: "again" },
            vram_monitor::Region { ptr: 0, size: 16, label: "null" },
            vram_monitor::Region { ptr: bases[2], size: 16, label: "g2" },
        ];
        let done = m.register_many(&spread, false).unwrap();
        assert_eq!(done.registered(), 3);
        for (i, want) in [(0, "g0"), (2, "g1"), (5, "g2")] {
            let info = m.registration(done.result(i).unwrap().unwrap()).unwrap();
            assert_eq!((info.label.as_str(), info.ptr), (want, spread[i].ptr));
        }
        assert_eq!(done.result(3), Some(Err(Error::DuplicateRange)));
        assert!(matches!(done.result(4), Some(Err(Error::Refused(_)))));
        assert_eq!(done.result(6), None);
        assert_eq!(done.ids().collect::<Vec<_>>(), [0, 2, 5].map(|i| done.result(i).unwrap().unwrap()));
    });
}
