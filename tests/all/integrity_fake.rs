//! Content integrity through the real CUDA adapter (src/adapters/cuda/fingerprint.rs) and the fake
//! libcuda, which holds content, loads the fingerprint PTX and runs its kernel on the host
//! (tests/fake_cuda/README.md). tests/all/integrity_model.rs covers the core with a model GPU;
//! this file proves the adapter's driver calls and every fault row of the issue against a
//! driver that behaves like the real one: sticky errors, destroyed contexts, refused modules.
//! Each test runs in its own child process (see tests/support).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::integrity::cuda::CudaGpu;
use vram_monitor::integrity::fingerprint::{self, CHUNK_BYTES};
use vram_monitor::integrity::gpu::Gpu;
use vram_monitor::{DriverError, Error, Event, EventKind, IntegrityOptions, Monitor, MonitorOptions, Verdict};

const MIB: u64 = 1 << 20;

/// A monitor whose periodic checks stay out of the way (the tests call check_now).
fn monitor() -> Monitor {
    Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), ..Default::default() }).expect("monitor on the fake driver")
}

/// A monitor with integrity enabled on device 0, whose primary context the test thread lends.
fn lent(options: IntegrityOptions) -> (&'static Fake, Monitor) {
    let fake = Fake::get();
    let m = monitor();
    fake.make_primary_current(0);
    m.enable_integrity(0, options).unwrap();
    (fake, m)
}

type Events = Arc<Mutex<Vec<Event>>>;

fn recorder(m: &Monitor) -> Events {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    m.set_callback(Some(Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone()))));
    events
}

fn find(events: &Events, kind: EventKind) -> Option<Event> {
    events.lock().unwrap().iter().find(|e| e.kind == kind).cloned()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Device memory on `device` holding bytes that differ word by word.
fn weights(fake: &Fake, size: u64, device: i32) -> u64 {
    let ptr = fake.alloc(Kind::Device, size as usize, device);
    let bytes: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    assert!(fake.write(ptr, &bytes));
    ptr
}

/// Background verification as fast as it goes: slices of 1 MiB, no share cap, 1 ms period.
fn eager() -> IntegrityOptions {
    IntegrityOptions { slice_bytes: MIB, max_gpu_share_ppm: 1_000_000, period: Some(Duration::from_millis(1)) }
}

/// Waits until the background's first slice after a seal is done: at the default pacing the
/// next is an hour away, so the launches that follow are the test's own.
fn first_slice_done(m: &Monitor, fake: &Fake) {
    wait_for("the first background slice", || m.integrity().verified_bytes_total > 0 && fake.gpu_counters().launches_in_progress == 0);
}

fn failed_code(result: Result<vram_monitor::VerifySummary, Error>) -> i32 {
    match result {
        Err(Error::IntegrityFailed(DriverError::Call { code, .. })) => code,
        other => panic!("expected INTEGRITY_FAILED with a driver code, got {other:?}"),
    }
}

#[test]
fn the_fake_kernel_computes_the_reference_fingerprint_through_the_adapter() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let _m = monitor(); // loads and initialises the driver
        let gpu = CudaGpu::get().expect("every symbol the adapter needs is in the fake");
        fake.make_primary_current(0);
        let (_, device) = gpu.current_context().unwrap().expect("the primary context is current");
        assert_eq!(device, 0);
        let kernel = gpu.load().unwrap();
        let counters = fake.gpu_counters();
        assert_eq!((counters.modules_live, counters.streams_live, counters.driver_allocations_live), (1, 1, 1));

        let size = 5 * MIB + 4096;
        let ptr = weights(fake, size, 0);
        let bytes = fake.read(ptr, size as usize);
        // Whole, from an odd byte with a ragged end, and a slice at a chunk offset.
        for (at, length, offset) in [(0, size, 0), (3, size - 8, 0), (2 * MIB, 3 * MIB + 1, 2 * MIB)] {
            let mut out = vec![0u64; length.div_ceil(CHUNK_BYTES) as usize];
            gpu.fingerprint(&kernel, ptr + at, length, offset / 4, &mut out).unwrap();
            let expected = fingerprint::fingerprint(&bytes[at as usize..(at + length) as usize], offset);
            assert_eq!(out, expected, "launch at byte {at}, {length} bytes, word {}", offset / 4);
        }
        assert_eq!(fake.gpu_counters().bytes_read, size + (size - 8) + 3 * MIB + 1);

        // Text that is not the monitor's PTX: what a driver says of PTX it cannot compile.
        type LoadFn = unsafe extern "C" fn(*mut *mut std::ffi::c_void, *const std::ffi::c_void) -> i32;
        let load = unsafe { *fake.library().get::<LoadFn>(b"cuModuleLoadData").unwrap() };
        let mut module = std::ptr::null_mut();
        assert_eq!(unsafe { load(&mut module, c".version 7.0\n.entry other(".as_ptr().cast()) }, 218);

        // A read of freed memory: the launch returns, the context keeps CUDA_ERROR_ILLEGAL_ADDRESS.
        assert!(fake.free(ptr));
        let mut out = vec![0u64; 1];
        let error = gpu.fingerprint(&kernel, ptr, MIB, 0, &mut out).unwrap_err();
        assert!(matches!(error, DriverError::Call { function: "cuMemcpyDtoHAsync_v2", code: 700 }), "{error:?}");
        assert_eq!(fake.context_error(0), 700);
        assert!(matches!(gpu.synchronize(), Err(DriverError::Call { code: 700, .. })), "the error is sticky");
        fake.set_primary_context_active(0, false);
        assert_eq!(fake.context_error(0), 0, "destroying the context ends it");
        assert!(fake.gpu_counters().nothing_live(), "and frees what was made in it");
    });
}

#[test]
fn enable_retains_the_primary_context_and_gives_it_back_on_disable_and_on_drop() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions::default());
        m.check_now().unwrap();
        assert_eq!(fake.primary_context_retains(0), 1, "the lent primary context is retained");
        let counters = fake.gpu_counters();
        assert_eq!((counters.modules_live, counters.streams_live, counters.driver_allocations_live), (1, 1, 1));
        m.disable_integrity(0).unwrap();
        assert_eq!(fake.primary_context_retains(0), 0);
        assert!(fake.gpu_counters().nothing_live(), "{:?}", fake.gpu_counters());
        assert_eq!(fake.gpu_counters().modules_unloaded, 1);

        m.enable_integrity(0, IntegrityOptions::default()).unwrap();
        m.register_sealed(weights(fake, 2 * MIB, 0), 2 * MIB, "w").unwrap();
        drop(m);
        assert_eq!(fake.primary_context_retains(0), 0, "dropping the monitor gives the context back");
        assert!(fake.gpu_counters().nothing_live(), "{:?}", fake.gpu_counters());
        assert_eq!(fake.context_creations(), 0, "the library created no context");
    });
}

#[test]
fn a_written_byte_is_modified_with_its_chunk_and_offset_and_reseal_clears_it() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions::default());
        let events = recorder(&m);
        let size = 5 * MIB + 12;
        let ptr = weights(fake, size, 0);
        let id = m.register_sealed(ptr, size, "layers.0.weight").unwrap();
        assert!(fake.gpu_counters().context_synchronizes >= 1, "a seal waits for the engine's work first");
        first_slice_done(&m, fake);
        let read = fake.gpu_counters().bytes_read;
        assert_eq!(read, size + m.integrity().verified_bytes_total, "the seal read every byte once");

        let clean = m.verify_now().unwrap();
        assert_eq!((clean.registrations, clean.bytes, clean.modified), (1, size, 0));
        assert_eq!(fake.gpu_counters().bytes_read, read + size);
        assert_eq!(m.registration(id).unwrap().verdict, Verdict::Resident);
        assert!(m.health().healthy);

        // The engine writes one byte into the fourth chunk.
        let old = fake.read(ptr + 3 * MIB + 17, 1)[0];
        assert!(fake.write(ptr + 3 * MIB + 17, &[old ^ 0x40]));
        assert_eq!(m.verify_now().unwrap().modified, 1);
        let info = m.registration(id).unwrap();
        assert_eq!(info.verdict, Verdict::Modified);
        let seal = info.seal.unwrap();
        assert_eq!((seal.modified_chunks, seal.first_modified_offset, seal.chunks, seal.failing), (1, 3 * MIB, 6, false));
        let health = m.health();
        assert!(!health.healthy && health.current_violations == 1 && !health.integrity_failed);
        wait_for("the MODIFIED event", || find(&events, EventKind::Modified).is_some());
        let event = find(&events, EventKind::Modified).unwrap();
        assert_eq!((event.registration_id, event.device, event.modified_chunks, event.first_modified_offset), (id, 0, 1, 3 * MIB));
        assert_eq!(event.label, "layers.0.weight");
        assert!(!event.healthy);
        assert_eq!(event.error_kind, "content_modified");
        // The health change it brought names the same cause (not a residency violation).
        wait_for("the health change", || find(&events, EventKind::HealthChanged).is_some());
        assert_eq!(find(&events, EventKind::HealthChanged).unwrap().error_kind, "content_modified");

        // Writing the old byte back does not clear it: the engine may have computed with the wrong one.
        assert!(fake.write(ptr + 3 * MIB + 17, &[old]));
        assert_eq!(m.verify_now().unwrap().modified, 1);
        // An intentional change: reseal takes the bytes as they are and clears MODIFIED.
        assert!(fake.write(ptr + MIB, &[1, 2, 3]));
        m.reseal(id).unwrap();
        assert_eq!(m.registration(id).unwrap().verdict, Verdict::Resident);
        assert_eq!(m.verify_now().unwrap().modified, 0);
        assert!(m.health().healthy);
        wait_for("the RECOVERED event", || find(&events, EventKind::Recovered).is_some_and(|e| e.registration_id == id));
    });
}

#[test]
fn the_background_finds_a_change_without_verify_now() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions { period: Some(Duration::from_millis(50)), ..eager() });
        let events = recorder(&m);
        let a = weights(fake, 3 * MIB, 0);
        let b = weights(fake, 2 * MIB, 0);
        let ida = m.register_sealed(a, 3 * MIB, "a").unwrap();
        let idb = m.register_sealed(b, 2 * MIB, "b").unwrap();
        wait_for("two background passes", || m.integrity().passes_completed >= 2);
        assert_eq!(m.registration(idb).unwrap().verdict, Verdict::Resident, "no false MODIFIED");
        assert!(fake.write(b + MIB + 8, &[0xde, 0xad, 0xbe, 0xef]));
        wait_for("MODIFIED from the background", || m.registration(idb).unwrap().verdict == Verdict::Modified);
        assert_eq!(m.seal_info(idb).unwrap().first_modified_offset, MIB);
        assert_eq!(m.registration(ida).unwrap().verdict, Verdict::Resident);
        wait_for("its event", || find(&events, EventKind::Modified).is_some_and(|e| e.registration_id == idb));
        assert!(m.integrity().verified_bytes_total >= 10 * MIB);
    });
}

#[test]
fn unsealed_registrations_are_never_read() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(eager());
        let sealed = weights(fake, 2 * MIB, 0);
        let plain = weights(fake, 8 * MIB, 0);
        m.register_sealed(sealed, 2 * MIB, "weights").unwrap();
        let kv = m.register(plain, 8 * MIB, "kv cache").unwrap();
        let summary = m.verify_now().unwrap();
        assert_eq!((summary.registrations, summary.bytes), (1, 2 * MIB));
        wait_for("background passes", || m.integrity().passes_completed >= 3);
        // The engine writes its KV cache all the time: never read, never MODIFIED.
        assert!(fake.fill(plain, 0xab, 8 * MIB as usize));
        m.verify_now().unwrap();
        assert_eq!(m.registration(kv).unwrap().verdict, Verdict::Resident);
        assert!(m.registration(kv).unwrap().seal.is_none());
        let status = m.integrity();
        assert_eq!(fake.gpu_counters().bytes_read, status.verified_bytes_total + 2 * MIB, "only the sealed bytes were read (and the seal)");
    });
}

#[test]
fn bad_seals_and_enables_get_their_codes_and_leave_nothing() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = monitor();
        let ptr = weights(fake, 2 * MIB, 0);
        let id = m.register(ptr, 2 * MIB, "w").unwrap();

        assert_eq!(m.seal(id), Err(Error::IntegrityNotEnabled(0)));
        assert_eq!(m.verify_now(), Err(Error::IntegrityNotEnabled(-1)));
        assert_eq!(m.enable_integrity(0, IntegrityOptions::default()), Err(Error::NoCurrentContext));
        fake.make_primary_current(1);
        assert_eq!(m.enable_integrity(0, IntegrityOptions::default()), Err(Error::ContextWrongDevice(1)));
        assert_eq!(fake.primary_context_retains(1), 0);

        // A driver older than the PTX.
        fake.make_primary_current(0);
        fake.set_module_load_result(222);
        assert!(matches!(
            m.enable_integrity(0, IntegrityOptions::default()),
            Err(Error::KernelUnavailable(DriverError::Call { function: "cuModuleLoadData", code: 222 }))
        ));
        assert_eq!(fake.primary_context_retains(0), 0, "a refused enable keeps no reference");
        assert!(fake.gpu_counters().nothing_live(), "{:?}", fake.gpu_counters());
        fake.set_module_load_result(0);

        m.enable_integrity(0, IntegrityOptions::default()).unwrap();
        assert_eq!(m.enable_integrity(0, IntegrityOptions::default()), Err(Error::IntegrityAlreadyEnabled(0)));
        assert_eq!(fake.primary_context_retains(0), 1, "enabling twice takes one reference");
        assert_eq!(fake.gpu_counters().modules_live, 1);

        assert_eq!(m.seal(424242), Err(Error::UnknownRegistration(424242)));
        assert_eq!(m.reseal(id), Err(Error::NotSealed));
        assert_eq!(m.unseal(id), Err(Error::NotSealed));
        m.seal(id).unwrap();
        assert_eq!(m.seal(id), Err(Error::AlreadySealed));
        m.unseal(id).unwrap();

        // Registrations in violation are not sealed, and no kernel reads them.
        let launches = fake.gpu_counters().launches;
        assert!(fake.set_kind(ptr, Kind::Host));
        m.check_now().unwrap();
        assert_eq!(m.seal(id), Err(Error::NotResident(Verdict::Host)));
        let gone = weights(fake, MIB, 0);
        let gone_id = m.register(gone, MIB, "freed").unwrap();
        assert!(fake.free(gone));
        m.check_now().unwrap();
        assert_eq!(m.seal(gone_id), Err(Error::NotResident(Verdict::NotMapped)));
        // register_sealed does both or neither.
        let count = m.registrations().len();
        let other = weights(fake, MIB, 1);
        assert_eq!(m.register_sealed(other, MIB, "on GPU1"), Err(Error::IntegrityNotEnabled(1)));
        assert_eq!(m.registrations().len(), count);
        assert_eq!(fake.gpu_counters().launches, launches, "a refused seal launches nothing");
        assert_eq!(fake.context_error(0), 0);
        assert_eq!(m.integrity().sealed, 0);
    });
}

#[test]
fn disable_during_a_verification_waits_for_it_and_leaves_nothing() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions::default());
        let m = Arc::new(m);
        let ptr = weights(fake, 4 * MIB, 0);
        let id = m.register_sealed(ptr, 4 * MIB, "w").unwrap();
        first_slice_done(&m, fake);
        fake.set_launch_delay_us(300_000);
        let verifier = Arc::clone(&m);
        let verifying = std::thread::spawn(move || verifier.verify_now());
        wait_for("the verification's launch", || fake.gpu_counters().launches_in_progress == 1);
        m.disable_integrity(0).unwrap();
        let after = fake.gpu_counters();
        assert_eq!(after.launches_in_progress, 0, "disable returned before the launch ended");
        assert!(after.nothing_live(), "{after:?}");
        assert_eq!(fake.primary_context_retains(0), 0);
        let summary = verifying.join().unwrap().expect("the verification in progress completed");
        assert_eq!((summary.registrations, summary.modified), (1, 0));
        assert!(m.seal_info(id).is_none() && m.registration(id).is_some(), "the registration stays, residency only");
        assert_eq!(m.verify_now(), Err(Error::IntegrityNotEnabled(-1)));
        assert_eq!(fake.gpu_counters().launches, after.launches, "nothing launched after disable");
        assert_eq!(fake.context_error(0), 0);
    });
}

#[test]
fn dropping_the_monitor_during_a_background_slice_waits_and_nothing_runs_after() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(eager());
        let late_calls = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicBool::new(false));
        let (late, after_drop) = (Arc::clone(&late_calls), Arc::clone(&dropped));
        m.set_callback(Some(Arc::new(move |_: &Event| {
            if after_drop.load(Ordering::SeqCst) {
                late.fetch_add(1, Ordering::SeqCst);
            }
        })));
        let ptr = weights(fake, 4 * MIB, 0);
        m.register_sealed(ptr, 4 * MIB, "w").unwrap();
        // An event to deliver, so a late callback would show.
        assert!(fake.write(ptr + 2 * MIB, &[0x55; 8]));
        fake.set_launch_delay_us(200_000);
        wait_for("a background launch", || fake.gpu_counters().launches_in_progress == 1);
        drop(m);
        dropped.store(true, Ordering::SeqCst);
        let after = fake.gpu_counters();
        assert_eq!(after.launches_in_progress, 0, "the drop returned before the slice ended");
        assert!(after.nothing_live(), "{after:?}");
        assert_eq!(fake.primary_context_retains(0), 0);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fake.gpu_counters().launches, after.launches, "no launch after the drop");
        assert_eq!(late_calls.load(Ordering::SeqCst), 0, "no callback after the drop");
    });
}

/// Waits until a kernel launched after `launches` is running, then does as an engine does:
/// unregisters `id` and frees its memory at once. The kernel (`what`) must never read it.
fn unregister_and_free_mid_kernel(fake: &Fake, m: &Monitor, id: u64, ptr: u64, launches: u64, what: &str) {
    wait_for(&format!("{what}: a kernel in progress"), || {
        let c = fake.gpu_counters();
        c.launches > launches && c.launches_in_progress == 1
    });
    m.unregister(id).unwrap();
    assert!(fake.free(ptr));
    assert_eq!(fake.context_error(0), 0, "{what} read freed memory");
}

#[test]
fn unregister_mid_slice_waits_so_the_engine_may_free_at_once() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions { slice_bytes: 4 * MIB, ..eager() });
        fake.set_launch_delay_us(20_000);
        for round in 0..5 {
            let ptr = weights(fake, 4 * MIB, 0);
            let id = m.register_sealed(ptr, 4 * MIB, "w").unwrap();
            let launches = fake.gpu_counters().launches;
            unregister_and_free_mid_kernel(fake, &m, id, ptr, launches, &format!("round {round}: a background slice"));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(fake.context_error(0), 0);
        assert!(m.integrity().failed.is_none() && m.health().healthy);
        assert_eq!(m.integrity().sealed, 0);
    });
}

#[test]
fn unregister_during_a_seal_on_another_thread_waits_for_its_kernel() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions { slice_bytes: 4 * MIB, ..IntegrityOptions::default() });
        let m = Arc::new(m);
        fake.set_launch_delay_us(20_000);
        for round in 0..5 {
            let ptr = weights(fake, 4 * MIB, 0);
            let id = m.register(ptr, 4 * MIB, "w").unwrap();
            let launches = fake.gpu_counters().launches;
            let sealer = {
                let m = Arc::clone(&m);
                std::thread::spawn(move || m.seal(id))
            };
            unregister_and_free_mid_kernel(fake, &m, id, ptr, launches, &format!("round {round}: the seal"));
            let sealed = sealer.join().unwrap();
            assert!(sealed.is_err() || m.seal_info(id).is_none(), "round {round}: no seal outlives its registration: {sealed:?}");
        }
        assert_eq!(fake.context_error(0), 0);
        assert_eq!(m.integrity().sealed, 0);
        assert!(m.integrity().failed.is_none());
    });
}

#[test]
fn the_engine_writing_while_a_buffer_is_hashed_is_modified_or_clean_never_a_crash() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(eager());
        let size = 16 * MIB;
        let ptr = weights(fake, size, 0);
        let id = m.register_sealed(ptr, size, "w").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let fake = Fake::get();
                let mut x = 0x9e37_79b9_u64;
                let mut writes = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    assert!(fake.write(ptr + x % (size - 8), &x.to_le_bytes()));
                    writes += 1;
                }
                writes
            })
        };
        for _ in 0..10 {
            m.verify_now().expect("a verification racing the engine's writes");
            let verdict = m.registration(id).unwrap().verdict;
            assert!(matches!(verdict, Verdict::Resident | Verdict::Modified), "{verdict:?}");
        }
        stop.store(true, Ordering::SeqCst);
        assert!(writer.join().unwrap() > 0);
        assert_eq!(m.verify_now().unwrap().modified, 1, "the writes are found once they stop");
        assert!(m.integrity().failed.is_none() && fake.context_error(0) == 0);
        m.reseal(id).unwrap();
        assert_eq!(m.verify_now().unwrap().modified, 0);
    });
}

#[test]
fn a_refused_launch_is_integrity_failed_never_modified() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions::default());
        let events = recorder(&m);
        let ptr = weights(fake, 2 * MIB, 0);
        let id = m.register_sealed(ptr, 2 * MIB, "w").unwrap();
        fake.fail_launches(1, 701);
        assert_eq!(failed_code(m.verify_now()), 701);
        assert_eq!(m.registration(id).unwrap().verdict, Verdict::Resident, "a failure is not MODIFIED");
        assert!(m.seal_info(id).unwrap().failing);
        let health = m.health();
        assert!(!health.healthy && health.integrity_failed);
        wait_for("the INTEGRITY_FAILED event", || find(&events, EventKind::IntegrityFailed).is_some_and(|e| e.device == 0 && !e.healthy));
        assert!(find(&events, EventKind::Modified).is_none());
        let launches = fake.gpu_counters().launches;
        assert_eq!(failed_code(m.verify_now()), 701);
        assert_eq!(fake.gpu_counters().launches, launches, "nothing more runs in a failed lane");

        // The context itself is fine (the launch was refused): disabling frees everything.
        m.disable_integrity(0).unwrap();
        assert!(m.health().healthy, "disabling ends the failure");
        assert!(fake.gpu_counters().nothing_live(), "{:?}", fake.gpu_counters());
        assert_eq!(fake.primary_context_retains(0), 0);
        m.enable_integrity(0, IntegrityOptions::default()).unwrap();
        m.seal(id).unwrap();
        assert_eq!(m.verify_now().unwrap().modified, 0, "enabled again, it verifies");
    });
}

#[test]
fn a_sticky_error_mid_verification_is_integrity_failed_never_modified() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions::default());
        let events = recorder(&m);
        let a = weights(fake, 2 * MIB, 0);
        let b = weights(fake, 2 * MIB, 0);
        let ida = m.register_sealed(a, 2 * MIB, "a").unwrap();
        let idb = m.register_sealed(b, 2 * MIB, "b").unwrap();
        first_slice_done(&m, fake);
        // The first registration verifies; the kernel over the second faults.
        fake.sticky_error_after_launches(1, 719);
        assert_eq!(failed_code(m.verify_now()), 719);
        assert_eq!(fake.context_error(0), 719);
        for id in [ida, idb] {
            assert_eq!(m.registration(id).unwrap().verdict, Verdict::Resident, "a failure is not MODIFIED");
            assert!(m.seal_info(id).unwrap().failing);
        }
        assert_eq!(m.integrity().failed.map(|(device, _)| device), Some(0));
        wait_for("the INTEGRITY_FAILED event", || find(&events, EventKind::IntegrityFailed).is_some_and(|e| e.device == 0));
        assert!(find(&events, EventKind::Modified).is_none());
        // Whichever thread reports the change to unhealthy (this verification, or a check that
        // sees the failed lane first), it names the cause: not a residency violation, not a
        // device fault.
        m.check_now().unwrap();
        wait_for("the health change", || find(&events, EventKind::HealthChanged).is_some());
        let change = find(&events, EventKind::HealthChanged).unwrap();
        assert!(!change.healthy);
        assert_eq!(change.error_kind, "integrity_failed", "{change:?}");
        let launches = fake.gpu_counters().launches;
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(failed_code(m.verify_now()), 719);
        assert_eq!(fake.gpu_counters().launches, launches, "nothing more runs in a failed context");

        m.disable_integrity(0).unwrap();
        assert!(m.health().healthy);
        assert_eq!(fake.primary_context_retains(0), 0);
        // As on the real driver, nothing can be freed in a context with a sticky error: the
        // module, stream and scratch go when the engine destroys the context.
        assert_eq!(fake.gpu_counters().modules_live, 1);
        fake.set_primary_context_active(0, false);
        assert!(fake.gpu_counters().nothing_live(), "{:?}", fake.gpu_counters());
    });
}

#[test]
fn the_engines_context_destroyed_is_integrity_failed() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions { period: Some(Duration::from_millis(20)), ..eager() });
        let events = recorder(&m);
        let ptr = weights(fake, 2 * MIB, 0);
        let id = m.register_sealed(ptr, 2 * MIB, "w").unwrap();
        wait_for("a background pass", || m.integrity().passes_completed >= 1);
        fake.set_primary_context_active(0, false);
        wait_for("the background finds the context gone", || find(&events, EventKind::IntegrityFailed).is_some());
        assert_eq!(find(&events, EventKind::IntegrityFailed).unwrap().device, 0);
        assert!(m.health().integrity_failed && !m.health().healthy);
        assert_eq!(failed_code(m.verify_now()), 709);
        assert_eq!(m.registration(id).unwrap().verdict, Verdict::Resident, "content unknown, not MODIFIED");
        assert!(find(&events, EventKind::Modified).is_none());
        assert!(fake.gpu_counters().nothing_live(), "gone with the context");
        m.disable_integrity(0).unwrap();
        assert!(m.health().healthy);
        assert_eq!(fake.primary_context_retains(0), 0, "no release went below zero");
        assert_eq!(fake.context_creations(), 0, "the library never brought the context back");
    });
}

#[test]
fn multi_gpu_integrity_on_two_devices_from_two_threads_names_the_changed_device() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let m = Arc::new(monitor());
        let events = recorder(&m);
        // Each device's engine thread lends its own context and seals its own weights.
        let lanes: Vec<_> = (0..2)
            .map(|device| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    let fake = Fake::get();
                    let ptr = weights(fake, 3 * MIB, device);
                    fake.make_primary_current(device);
                    m.enable_integrity(device, eager()).unwrap();
                    (ptr, m.register_sealed(ptr, 3 * MIB, &format!("gpu{device}.weight")).unwrap())
                })
            })
            .collect();
        let sealed: Vec<(u64, u64)> = lanes.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(m.integrity().devices_enabled, 2);
        assert_eq!((fake.primary_context_retains(0), fake.primary_context_retains(1)), (1, 1));
        assert_eq!(m.verify_now().unwrap().registrations, 2);

        assert!(fake.write(sealed[1].0 + 2 * MIB + 5, &[0xff]));
        let summary = m.verify_now().unwrap();
        assert_eq!((summary.registrations, summary.modified), (2, 1));
        wait_for("the MODIFIED event", || find(&events, EventKind::Modified).is_some());
        let event = find(&events, EventKind::Modified).unwrap();
        assert_eq!((event.device, event.registration_id, event.first_modified_offset), (1, sealed[1].1, 2 * MIB));
        assert_eq!(m.registration(sealed[0].1).unwrap().verdict, Verdict::Resident, "nothing on device 0");
        assert_eq!(m.seal_info(sealed[0].1).unwrap().modified_chunks, 0);
        assert_eq!(events.lock().unwrap().iter().filter(|e| e.kind == EventKind::Modified).count(), 1);
        assert!(m.integrity().failed.is_none());

        let m = Arc::try_unwrap(m).ok().expect("the lane threads are done");
        drop(m);
        assert_eq!((fake.primary_context_retains(0), fake.primary_context_retains(1)), (0, 0));
        assert!(fake.gpu_counters().nothing_live(), "{:?}", fake.gpu_counters());
    });
}

#[test]
fn a_rebind_after_a_remap_verifies_the_reload_against_the_old_seal() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let (fake, m) = lent(IntegrityOptions::default());
        let size = 3 * MIB;
        let ptr = weights(fake, size, 0);
        let original = fake.read(ptr, size as usize);
        let id = m.register_sealed(ptr, size, "w").unwrap();

        // Sleep and wake with the right bytes put back: clean under the new id.
        assert!(fake.reallocate(ptr));
        assert!(fake.write(ptr, &original));
        let id = m.rebind(id).unwrap();
        assert_eq!(m.verify_now().unwrap().modified, 0);
        assert_eq!(m.registration(id).unwrap().verdict, Verdict::Resident);

        // A reload that left the second chunk zeroed: MODIFIED at 1 MiB, never resealed.
        assert!(fake.reallocate(ptr));
        assert!(fake.write(ptr, &original[..MIB as usize]));
        assert!(fake.write(ptr + 2 * MIB, &original[2 * MIB as usize..]));
        m.check_now().unwrap();
        assert_eq!(m.registration(id).unwrap().verdict, Verdict::Replaced, "before rebind the remap reads REPLACED");
        let id = m.rebind(id).unwrap();
        assert_eq!(m.verify_now().unwrap().modified, 1, "a seal moved twice is still verified");
        let seal = m.seal_info(id).unwrap();
        assert_eq!((seal.modified_chunks, seal.first_modified_offset), (1, MIB));
        assert!(m.integrity().failed.is_none() && fake.context_error(0) == 0);
        // Unregistering the id the seal moved to forgets the seal there and then.
        m.unregister(id).unwrap();
        assert_eq!(m.integrity().sealed, 0);
    });
}
