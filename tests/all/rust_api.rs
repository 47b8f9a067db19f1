//! The Rust API as a Rust engine uses it, against the fake libcuda: the `Registration` guard
//! (borrowed and `Arc`-owned), closures as callbacks, and guards stored in the engine's own
//! structs. (cudarc buffers need a GPU: tests/cudarc_gpu.rs.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::{Error, Event, EventKind, Monitor, MonitorOptions, Registration, Verdict};

const MIB: usize = 1 << 20;

fn quiet_monitor() -> Monitor {
    Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), ..MonitorOptions::default() }).expect("monitor")
}

#[test]
fn a_borrowed_guard_unregisters_when_dropped() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let monitor = quiet_monitor();
        let fake = Fake::get();
        let ptr = fake.alloc(Kind::Device, 4 * MIB, 0);
        {
            let guard = monitor.register_guard(ptr, 4 * MIB as u64, "layers.0").unwrap();
            assert_ne!(guard.id(), 0);
            assert_eq!(monitor.health().registrations, 1);
            assert_eq!(monitor.registrations()[0].id, guard.id());
            assert!(std::ptr::eq(guard.monitor(), &monitor));
        }
        assert_eq!(monitor.health().registrations, 0, "the drop unregistered");

        // Explicit unregister reports; a second unregister of the same id is unknown.
        let guard = monitor.register_guard(ptr, MIB as u64, "explicit").unwrap();
        let id = guard.id();
        assert_eq!(guard.unregister(), Ok(()));
        assert_eq!(monitor.unregister(id), Err(Error::UnknownRegistration(id)));

        // Removed behind the guard's back: its drop has nothing to do and does not panic.
        let guard = monitor.register_guard(ptr, MIB as u64, "removed").unwrap();
        let id = guard.id();
        monitor.unregister(id).unwrap();
        assert_eq!(guard.unregister(), Err(Error::UnknownRegistration(id)));
        let guard = monitor.register_guard(ptr, MIB as u64, "removed, then dropped").unwrap();
        monitor.unregister(guard.id()).unwrap();
        drop(guard);
        assert_eq!(monitor.health().registrations, 0);
    });
}

#[test]
fn a_refused_registration_gives_no_guard() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let monitor = Arc::new(quiet_monitor());
        let fake = Fake::get();
        let host = fake.alloc(Kind::Host, MIB, 0);
        let managed = fake.alloc(Kind::Managed, MIB, 0);
        assert!(matches!(Registration::new(Arc::clone(&monitor), host, MIB as u64, "pinned"), Err(Error::Refused(Verdict::Host))));
        assert!(matches!(monitor.register_guard(managed, MIB as u64, "managed"), Err(Error::Refused(Verdict::Managed))));
        assert!(matches!(monitor.register_guard(host, 0, "empty"), Err(Error::InvalidArgument(_))));
        assert_eq!(monitor.health().registrations, 0);
    });
}

/// What an engine stores: the weights' handle and its guard side by side.
struct Tensor {
    ptr: u64,
    _watch: Registration,
}

struct Model {
    layers: Vec<Tensor>,
}

#[test]
fn owned_guards_live_and_die_with_the_engines_structs() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let monitor = Arc::new(quiet_monitor());
        let model = Model {
            layers: (0..4)
                .map(|i| {
                    let ptr = fake.alloc(Kind::Device, 2 * MIB, 0);
                    let watch = Registration::new(Arc::clone(&monitor), ptr, 2 * MIB as u64, &format!("layers.{i}")).unwrap();
                    Tensor { ptr, _watch: watch }
                })
                .collect(),
        };
        assert_eq!(monitor.health().registrations, 4);
        assert_eq!(monitor.health().tracked_bytes, 8 * MIB as u64);

        // The guards move to another thread with the model and die there.
        let handle = std::thread::spawn(move || {
            let ptrs: Vec<u64> = model.layers.iter().map(|t| t.ptr).collect();
            drop(model);
            ptrs
        });
        let ptrs = handle.join().unwrap();
        assert_eq!(monitor.health().registrations, 0, "dropping the model unregistered every layer");
        // The engine frees its memory after the model is gone: no violation is reported.
        for ptr in ptrs {
            assert!(fake.free(ptr));
        }
        let summary = monitor.check_now().unwrap();
        assert_eq!((summary.checked, summary.violations), (0, 0));
        assert_eq!(Arc::strong_count(&monitor), 1, "the guards gave their shares back");
    });
}

#[test]
fn a_guard_keeps_its_monitor_alive_and_leak_keeps_watching() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        let guard = {
            let monitor = Arc::new(quiet_monitor());
            Registration::new(monitor, ptr, MIB as u64, "outlives the creator").unwrap()
        };
        assert_eq!(guard.monitor().health().registrations, 1, "the guard's Arc keeps the monitor running");
        assert!(fake.free(ptr));
        let summary = guard.monitor().check_now().unwrap();
        assert_eq!(summary.violations, 1, "still watched: the free is caught");
        drop(guard); // the last Arc: unregisters, then stops and joins the monitor thread

        let monitor = quiet_monitor();
        let kept = fake.alloc(Kind::Device, MIB, 0);
        let id = monitor.register_guard(kept, MIB as u64, "leaked").unwrap().leak();
        assert_eq!(monitor.health().registrations, 1, "leak() keeps the registration");
        monitor.unregister(id).unwrap();

        let adopted = monitor.register(kept, MIB as u64, "adopted").unwrap();
        drop(Registration::from_id(&monitor, adopted));
        assert_eq!(monitor.health().registrations, 0, "from_id() guards an id registered without a guard");
    });
}

#[test]
fn closures_are_callbacks() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let monitor = quiet_monitor();
        let seen: Arc<Mutex<Vec<(EventKind, String, Verdict)>>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        {
            let seen = Arc::clone(&seen);
            let calls = Arc::clone(&calls);
            monitor.set_callback(Some(Arc::new(move |e: &Event| {
                calls.fetch_add(1, Ordering::SeqCst);
                seen.lock().unwrap().push((e.kind, e.label.clone(), e.verdict));
            })));
        }
        let ptr = fake.alloc(Kind::Device, MIB, 0);
        let guard = monitor.register_guard(ptr, MIB as u64, "embed").unwrap();
        assert!(fake.set_kind(ptr, Kind::Host), "the fake moves the memory to host in place");
        monitor.check_now().unwrap();
        assert!(fake.set_kind(ptr, Kind::Device));
        monitor.check_now().unwrap();
        drop(guard);
        let seen = seen.lock().unwrap().clone();
        assert!(seen.contains(&(EventKind::Violation, "embed".into(), Verdict::Host)), "{seen:?}");
        assert!(seen.contains(&(EventKind::Recovered, "embed".into(), Verdict::Resident)), "{seen:?}");
        assert!(calls.load(Ordering::SeqCst) >= 2);

        // Replacing the closure drops the old one (and what it captured).
        let token = Arc::new(());
        let captured = Arc::clone(&token);
        monitor.set_callback(Some(Arc::new(move |_: &Event| {
            let _ = &captured;
        })));
        assert_eq!(Arc::strong_count(&token), 2);
        monitor.set_callback(None);
        assert_eq!(Arc::strong_count(&token), 1, "the replaced closure was dropped");
    });
}
