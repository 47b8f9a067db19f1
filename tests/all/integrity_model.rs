//! Content integrity through the Rust API with a model GPU: memory that holds bytes, a
//! per-thread context stack, the fingerprint kernel computed by the reference function, and
//! injectable faults. (The same paths through the C ABI and the fake libcuda are in
//! tests/c/test_integrity.c.) Each test asserts what a user of the API would see: verdicts,
//! events, health, result errors and what is given back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use vram_monitor::integrity::fingerprint;
use vram_monitor::integrity::gpu::{ContextHandle, Gpu, Kernel};
use vram_monitor::{
    Driver, DriverError, Error, Event, EventKind, IntegrityOptions, MemoryType, Monitor, MonitorOptions, PointerInfo, Verdict,
};

const MIB: u64 = 1 << 20;

/// Device memory with content: base -> (buffer id, device, bytes).
#[derive(Default)]
struct Memory {
    allocations: Mutex<HashMap<u64, (u64, i32, Vec<u8>)>>,
    next: AtomicU64,
}

impl Memory {
    fn alloc(&self, size: usize, device: i32, fill: u8) -> u64 {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let base = 0x7f00_0000_0000 + n * (1 << 32);
        self.allocations.lock().unwrap().insert(base, (1000 + n, device, vec![fill; size]));
        base
    }
    fn write(&self, addr: u64, bytes: &[u8]) {
        let mut all = self.allocations.lock().unwrap();
        let (base, (_, _, data)) = all.iter_mut().find(|(b, (_, _, d))| **b <= addr && addr < **b + d.len() as u64).unwrap();
        let at = (addr - base) as usize;
        data[at..at + bytes.len()].copy_from_slice(bytes);
    }
    fn free(&self, base: u64) {
        self.allocations.lock().unwrap().remove(&base);
    }
    /// The bytes of `[addr, addr + len)`, or None when they are not inside one allocation.
    fn read(&self, addr: u64, len: u64) -> Option<Vec<u8>> {
        let all = self.allocations.lock().unwrap();
        let (base, (_, _, data)) = all.iter().find(|(b, (_, _, d))| **b <= addr && addr < **b + d.len() as u64)?;
        let at = (addr - base) as usize;
        (at as u64 + len <= data.len() as u64).then(|| data[at..at + len as usize].to_vec())
    }
}

struct ModelDriver(Arc<Memory>);

impl Driver for ModelDriver {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        let all = self.0.allocations.lock().unwrap();
        Ok(all
            .iter()
            .find(|(b, (_, _, d))| **b <= address && address < **b + d.len() as u64)
            .map(|(base, (id, device, data))| PointerInfo {
                memory_type: MemoryType::Device,
                is_managed: false,
                device_ordinal: *device,
                buffer_id: *id,
                range_start: *base,
                range_size: data.len() as u64,
                mapping_base: 0,
                mapping_size: 0,
            })
            .unwrap_or_else(PointerInfo::unregistered))
    }
    fn device_used_memory(&self, _device: i32) -> Option<u64> {
        None
    }
    fn version(&self) -> Option<i32> {
        Some(13000)
    }
}

/// Contexts are `0x100 + device` (primary) or `0x200 + device` (created by the engine).
struct ModelGpu {
    memory: Arc<Memory>,
    stacks: Mutex<HashMap<ThreadId, Vec<usize>>>,
    retains: Mutex<HashMap<i32, i32>>,
    loaded: AtomicI32,
    launches: AtomicU64,
    /// The next launch fails with this code (and the context stays failed).
    fail_launch: AtomicI32,
    sticky: AtomicI32,
    refuse_module: AtomicBool,
    launch_delay: Mutex<Duration>,
    /// A launch is in progress (inside its delay).
    in_launch: AtomicBool,
    /// cuCtxSynchronize calls.
    synchronized: AtomicU64,
}

impl ModelGpu {
    fn new(memory: Arc<Memory>) -> Arc<ModelGpu> {
        Arc::new(ModelGpu {
            memory,
            stacks: Mutex::default(),
            retains: Mutex::default(),
            loaded: AtomicI32::new(0),
            launches: AtomicU64::new(0),
            fail_launch: AtomicI32::new(0),
            sticky: AtomicI32::new(0),
            refuse_module: AtomicBool::new(false),
            launch_delay: Mutex::new(Duration::ZERO),
            in_launch: AtomicBool::new(false),
            synchronized: AtomicU64::new(0),
        })
    }
    /// What the engine's runtime does on its thread: makes a context current.
    fn make_current(&self, context: usize) {
        self.stacks.lock().unwrap().entry(std::thread::current().id()).or_default().push(context);
    }
    fn retains(&self, device: i32) -> i32 {
        *self.retains.lock().unwrap().get(&device).unwrap_or(&0)
    }
    fn sticky(&self) -> Result<(), DriverError> {
        match self.sticky.load(Ordering::SeqCst) {
            0 => Ok(()),
            code => Err(DriverError::Call { function: "cuLaunchKernel", code }),
        }
    }
}

impl Gpu for ModelGpu {
    fn current_context(&self) -> Result<Option<(ContextHandle, i32)>, DriverError> {
        let stacks = self.stacks.lock().unwrap();
        Ok(stacks.get(&std::thread::current().id()).and_then(|s| s.last()).map(|&c| (ContextHandle(c), (c & 0xff) as i32)))
    }
    fn retain_if_primary(&self, device: i32, context: ContextHandle) -> Result<bool, DriverError> {
        if context.0 == 0x100 + device as usize {
            *self.retains.lock().unwrap().entry(device).or_default() += 1;
            return Ok(true);
        }
        Ok(false)
    }
    fn release_primary(&self, device: i32) {
        *self.retains.lock().unwrap().entry(device).or_default() -= 1;
    }
    fn push(&self, context: ContextHandle) -> Result<(), DriverError> {
        self.make_current(context.0);
        Ok(())
    }
    fn pop(&self) {
        self.stacks.lock().unwrap().get_mut(&std::thread::current().id()).and_then(|s| s.pop());
    }
    fn synchronize(&self) -> Result<(), DriverError> {
        self.synchronized.fetch_add(1, Ordering::SeqCst);
        self.sticky()
    }
    fn load(&self) -> Result<Kernel, DriverError> {
        if self.refuse_module.load(Ordering::SeqCst) {
            return Err(DriverError::Call { function: "cuModuleLoadData", code: 222 });
        }
        self.loaded.fetch_add(1, Ordering::SeqCst);
        Ok(Kernel { module: 1, function: 2, stream: 3, scratch: 4, scratch_chunks: 16 })
    }
    fn unload(&self, _kernel: Kernel) {
        self.loaded.fetch_sub(1, Ordering::SeqCst);
    }
    fn fingerprint(&self, _kernel: &Kernel, base: u64, length: u64, first_word: u64, out: &mut [u64]) -> Result<(), DriverError> {
        assert!(self.current_context().unwrap().is_some(), "a launch with no context current");
        self.sticky()?;
        let delay = *self.launch_delay.lock().unwrap();
        self.in_launch.store(true, Ordering::SeqCst);
        std::thread::sleep(delay);
        self.in_launch.store(false, Ordering::SeqCst);
        self.launches.fetch_add(1, Ordering::SeqCst);
        let code = self.fail_launch.swap(0, Ordering::SeqCst);
        if code != 0 {
            self.sticky.store(code, Ordering::SeqCst);
            return Err(DriverError::Call { function: "cuLaunchKernel", code });
        }
        let Some(bytes) = self.memory.read(base, length) else {
            // Reading memory that is gone: the real driver's sticky illegal address.
            self.sticky.store(700, Ordering::SeqCst);
            return Err(DriverError::Call { function: "cuStreamSynchronize", code: 700 });
        };
        out.copy_from_slice(&fingerprint::fingerprint(&bytes, first_word * 4));
        Ok(())
    }
}

struct Setup {
    memory: Arc<Memory>,
    gpu: Arc<ModelGpu>,
    monitor: Monitor,
    events: Arc<Mutex<Vec<Event>>>,
}

fn setup(interval: Duration) -> Setup {
    let memory = Arc::new(Memory::default());
    let gpu = ModelGpu::new(Arc::clone(&memory));
    let monitor = Monitor::with_backends(
        MonitorOptions { interval, ..Default::default() },
        Arc::new(ModelDriver(Arc::clone(&memory))),
        Some(Arc::clone(&gpu) as Arc<dyn Gpu>),
    )
    .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    monitor.set_callback(Some(Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone()))));
    Setup { memory, gpu, monitor, events }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_sealed_change_is_modified_with_its_offset_and_reseal_clears_it() {
    let s = setup(Duration::from_secs(3600));
    let weights = s.memory.alloc((5 * MIB + 12) as usize, 0, 0x3c);
    s.gpu.make_current(0x100);
    s.monitor.enable_integrity(0, IntegrityOptions::default()).unwrap();
    assert_eq!(s.gpu.retains(0), 1, "the primary context lent is retained");
    let id = s.monitor.register_sealed(weights, 5 * MIB + 12, "layers.0.weight").unwrap();
    assert_eq!(s.gpu.synchronized.load(Ordering::SeqCst), 1, "a seal waits for the engine's work in the context first");
    let clean = s.monitor.verify_now().unwrap();
    assert_eq!((clean.registrations, clean.bytes, clean.modified), (1, 5 * MIB + 12, 0));
    assert_eq!(s.monitor.registration(id).unwrap().verdict, Verdict::Resident);
    assert!(s.monitor.health().healthy);

    // One byte in the fourth chunk.
    s.memory.write(weights + 3 * MIB + 17, &[0x3d]);
    let found = s.monitor.verify_now().unwrap();
    assert_eq!(found.modified, 1);
    let info = s.monitor.registration(id).unwrap();
    assert_eq!(info.verdict, Verdict::Modified);
    let seal = info.seal.unwrap();
    assert_eq!((seal.modified_chunks, seal.first_modified_offset, seal.chunks), (1, 3 * MIB, 6));
    let health = s.monitor.health();
    assert!(!health.healthy && health.current_violations == 1 && health.sealed == 1);
    wait_for("the MODIFIED event", || s.events.lock().unwrap().iter().any(|e| e.kind == EventKind::Modified));
    let event = s.events.lock().unwrap().iter().find(|e| e.kind == EventKind::Modified).cloned().unwrap();
    assert_eq!((event.registration_id, event.label.as_str(), event.first_modified_offset), (id, "layers.0.weight", 3 * MIB));
    assert!(event.message.contains("offset 3145728"), "{}", event.message);
    let json = s.monitor.report(vram_monitor::ReportFormat::Json);
    assert!(json.contains("\"verdict\":\"MODIFIED\",\"sealed\":true,\"chunks\":6"), "{json}");
    let metrics = s.monitor.report(vram_monitor::ReportFormat::Prometheus);
    assert!(metrics.contains("verdict=\"MODIFIED\""), "{metrics}");

    // An intentional change: reseal takes the new bytes and clears MODIFIED.
    s.monitor.reseal(id).unwrap();
    assert_eq!(s.monitor.registration(id).unwrap().verdict, Verdict::Resident);
    assert_eq!(s.monitor.verify_now().unwrap().modified, 0);
    assert!(s.monitor.health().healthy);
    wait_for("the RECOVERED event", || s.events.lock().unwrap().iter().any(|e| e.kind == EventKind::Recovered && e.registration_id == id));

    s.monitor.disable_integrity(0).unwrap();
    assert_eq!((s.gpu.retains(0), s.gpu.loaded.load(Ordering::SeqCst)), (0, 0), "disable gives everything back");
    assert!(s.monitor.seal_info(id).is_none());
}

#[test]
fn the_background_finds_a_change_without_verify_now_within_its_period() {
    let s = setup(Duration::from_secs(3600));
    let a = s.memory.alloc((3 * MIB) as usize, 0, 1);
    let b = s.memory.alloc((2 * MIB) as usize, 0, 2);
    s.gpu.make_current(0x100);
    let options = IntegrityOptions { slice_bytes: MIB, max_gpu_share_ppm: 1_000_000, period: Some(Duration::from_millis(50)) };
    s.monitor.enable_integrity(0, options).unwrap();
    let _ida = s.monitor.register_sealed(a, 3 * MIB, "a").unwrap();
    let idb = s.monitor.register_sealed(b, 2 * MIB, "b").unwrap();
    wait_for("a full background pass", || s.monitor.integrity().passes_completed >= 2);
    assert_eq!(s.monitor.registration(idb).unwrap().verdict, Verdict::Resident, "no false MODIFIED");
    s.memory.write(b + MIB + 8, &[9, 9, 9, 9]);
    wait_for("MODIFIED from the background", || s.monitor.registration(idb).unwrap().verdict == Verdict::Modified);
    assert_eq!(s.monitor.seal_info(idb).unwrap().first_modified_offset, MIB);
    assert!(s.monitor.integrity().verified_bytes_total >= 10 * MIB);
}

#[test]
fn bad_calls_get_their_own_errors_and_change_nothing() {
    let s = setup(Duration::from_secs(3600));
    let weights = s.memory.alloc(MIB as usize, 0, 7);
    let other = s.memory.alloc(MIB as usize, 1, 7);
    let id = s.monitor.register(weights, MIB, "w").unwrap();
    let id1 = s.monitor.register(other, MIB, "on GPU1").unwrap();
    assert_eq!(s.monitor.seal(id), Err(Error::IntegrityNotEnabled(0)));
    assert_eq!(s.monitor.verify_now(), Err(Error::IntegrityNotEnabled(-1)));
    assert_eq!(s.monitor.enable_integrity(0, IntegrityOptions::default()), Err(Error::NoCurrentContext));
    s.gpu.make_current(0x101);
    assert_eq!(s.monitor.enable_integrity(0, IntegrityOptions::default()), Err(Error::ContextWrongDevice(1)));
    assert!(matches!(
        s.monitor.enable_integrity(1, IntegrityOptions { max_gpu_share_ppm: 0, ..Default::default() }),
        Err(Error::InvalidArgument(_))
    ));
    s.gpu.refuse_module.store(true, Ordering::SeqCst);
    assert!(matches!(s.monitor.enable_integrity(1, IntegrityOptions::default()), Err(Error::KernelUnavailable(_))));
    assert_eq!(s.gpu.retains(1), 0, "a refused enable keeps no reference");
    s.gpu.refuse_module.store(false, Ordering::SeqCst);
    s.monitor.enable_integrity(1, IntegrityOptions::default()).unwrap();
    assert_eq!(s.monitor.enable_integrity(1, IntegrityOptions::default()), Err(Error::IntegrityAlreadyEnabled(1)));
    assert_eq!(s.monitor.seal(id), Err(Error::IntegrityNotEnabled(0)), "GPU0 is not enabled: GPU1 is");
    s.monitor.seal(id1).unwrap();
    assert_eq!(s.monitor.seal(id1), Err(Error::AlreadySealed));
    assert_eq!(s.monitor.seal(424242), Err(Error::UnknownRegistration(424242)));
    assert_eq!(s.monitor.reseal(id), Err(Error::NotSealed));
    assert_eq!(s.monitor.unseal(id), Err(Error::NotSealed));
    // A registration in violation is not sealed.
    s.monitor.unseal(id1).unwrap();
    s.memory.free(other);
    s.monitor.check_now().unwrap();
    assert_eq!(s.monitor.seal(id1), Err(Error::NotResident(Verdict::NotMapped)));
    // register_sealed does both or neither.
    let registrations = s.monitor.registrations().len();
    let launches = s.gpu.launches.load(Ordering::SeqCst);
    assert_eq!(s.monitor.register_sealed(weights, MIB, "w again"), Err(Error::IntegrityNotEnabled(0)));
    assert_eq!(s.monitor.registrations().len(), registrations);
    assert_eq!(s.gpu.launches.load(Ordering::SeqCst), launches, "a refused seal launches nothing");
}

#[test]
fn a_failed_context_is_unhealthy_with_its_event_never_modified() {
    let s = setup(Duration::from_secs(3600));
    let weights = s.memory.alloc((2 * MIB) as usize, 0, 5);
    s.gpu.make_current(0x200);
    s.monitor.enable_integrity(0, IntegrityOptions::default()).unwrap();
    assert_eq!(s.gpu.retains(0), 0, "an engine-created context is borrowed, not retained");
    let id = s.monitor.register_sealed(weights, 2 * MIB, "w").unwrap();
    s.gpu.fail_launch.store(719, Ordering::SeqCst);
    assert!(matches!(s.monitor.verify_now(), Err(Error::IntegrityFailed(DriverError::Call { code: 719, .. }))));
    assert_eq!(s.monitor.registration(id).unwrap().verdict, Verdict::Resident, "a failure is not MODIFIED");
    assert!(s.monitor.seal_info(id).unwrap().failing);
    let health = s.monitor.health();
    assert!(!health.healthy && health.integrity_failed);
    wait_for("the INTEGRITY_FAILED event", || {
        s.events.lock().unwrap().iter().any(|e| e.kind == EventKind::IntegrityFailed && e.device == 0 && !e.healthy)
    });
    let launches = s.gpu.launches.load(Ordering::SeqCst);
    assert!(s.monitor.verify_now().is_err());
    assert_eq!(s.gpu.launches.load(Ordering::SeqCst), launches, "nothing more runs in a failed context");
    s.monitor.disable_integrity(0).unwrap();
    assert!(s.monitor.health().healthy, "disabling ends the failure");
}

#[test]
fn unregister_waits_for_the_slice_reading_its_memory() {
    let s = setup(Duration::from_secs(3600));
    let weights = s.memory.alloc((4 * MIB) as usize, 0, 5);
    s.gpu.make_current(0x100);
    let options = IntegrityOptions { slice_bytes: 4 * MIB, max_gpu_share_ppm: 1_000_000, period: Some(Duration::from_millis(1)) };
    s.monitor.enable_integrity(0, options).unwrap();
    let id = s.monitor.register_sealed(weights, 4 * MIB, "w").unwrap();
    *s.gpu.launch_delay.lock().unwrap() = Duration::from_millis(30);
    let launches = s.gpu.launches.load(Ordering::SeqCst);
    wait_for("a background slice", || s.gpu.launches.load(Ordering::SeqCst) > launches);
    for _ in 0..5 {
        // Unregister, then free at once, as an engine does: the kernel must never read it.
        let id = if s.monitor.registration(id).is_some() { id } else { s.monitor.register_sealed(weights, 4 * MIB, "w").unwrap() };
        s.monitor.unregister(id).unwrap();
        assert!(s.monitor.integrity().failed.is_none(), "no slice read after unregister returned");
    }
    s.memory.free(weights);
    std::thread::sleep(Duration::from_millis(100));
    assert!(s.monitor.integrity().failed.is_none(), "no illegal address: nothing read freed memory");
    assert_eq!(s.monitor.integrity().sealed, 0);
}

#[test]
fn dropping_the_monitor_gives_the_context_back() {
    let s = setup(Duration::from_secs(3600));
    s.gpu.make_current(0x100);
    s.monitor.enable_integrity(0, IntegrityOptions::default()).unwrap();
    assert_eq!((s.gpu.retains(0), s.gpu.loaded.load(Ordering::SeqCst)), (1, 1));
    let gpu = Arc::clone(&s.gpu);
    drop(s.monitor);
    assert_eq!((gpu.retains(0), gpu.loaded.load(Ordering::SeqCst)), (0, 0));
}

#[test]
fn the_share_cap_paces_background_slices() {
    let s = setup(Duration::from_secs(3600));
    let weights = s.memory.alloc((8 * MIB) as usize, 0, 5);
    s.gpu.make_current(0x100);
    *s.gpu.launch_delay.lock().unwrap() = Duration::from_millis(2);
    // 10% of the time at most: a 2 ms slice is followed by at least 18 ms of nothing.
    let options = IntegrityOptions { slice_bytes: MIB, max_gpu_share_ppm: 100_000, period: Some(Duration::from_millis(1)) };
    s.monitor.enable_integrity(0, options).unwrap();
    s.monitor.register_sealed(weights, 8 * MIB, "w").unwrap();
    let before = s.gpu.launches.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(400));
    let slices = s.gpu.launches.load(Ordering::SeqCst) - before;
    // 400 ms at <= 10% of 2 ms slices: at most 20 (plus one in flight); with no cap it would be ~200.
    assert!((1..=21).contains(&slices), "{slices} slices in 400 ms");
}

#[test]
fn health_and_an_unsealed_unregister_do_not_wait_for_a_verification() {
    let s = Arc::new(setup(Duration::from_secs(3600)));
    let weights = s.memory.alloc((2 * MIB) as usize, 0, 5);
    let plain = s.memory.alloc(MIB as usize, 0, 5);
    s.gpu.make_current(0x100);
    s.monitor.enable_integrity(0, IntegrityOptions::default()).unwrap();
    s.monitor.register_sealed(weights, 2 * MIB, "w").unwrap();
    let other = s.monitor.register(plain, MIB, "not sealed").unwrap();
    *s.gpu.launch_delay.lock().unwrap() = Duration::from_millis(500);
    let verifier = Arc::clone(&s);
    let verifying = std::thread::spawn(move || verifier.monitor.verify_now().unwrap());
    wait_for("the verification's launch", || s.gpu.in_launch.load(Ordering::SeqCst));
    let health = s.monitor.health();
    assert!(s.gpu.in_launch.load(Ordering::SeqCst), "health() waited for the verification");
    assert_eq!(health.sealed, 1);
    s.monitor.unregister(other).unwrap();
    assert!(s.gpu.in_launch.load(Ordering::SeqCst), "unregistering an unsealed registration waited for the verification");
    assert_eq!(verifying.join().unwrap().registrations, 1);
}

#[test]
fn a_long_seal_on_another_thread_does_not_hold_up_the_checks() {
    let s = Arc::new(setup(Duration::from_millis(20)));
    let weights = s.memory.alloc((2 * MIB) as usize, 0, 5);
    s.gpu.make_current(0x100);
    s.monitor.enable_integrity(0, IntegrityOptions::default()).unwrap();
    let id = s.monitor.register(weights, 2 * MIB, "w").unwrap();
    *s.gpu.launch_delay.lock().unwrap() = Duration::from_millis(800);
    let sealer = Arc::clone(&s);
    let sealing = std::thread::spawn(move || {
        sealer.gpu.make_current(0x100);
        sealer.monitor.seal(id)
    });
    wait_for("the seal's launch", || s.gpu.in_launch.load(Ordering::SeqCst));
    let before = s.monitor.health().checks_completed;
    s.monitor.check_now().unwrap();
    wait_for("a periodic check", || s.monitor.health().checks_completed >= before + 2);
    assert!(s.gpu.in_launch.load(Ordering::SeqCst), "the checks waited for the seal");
    sealing.join().unwrap().unwrap();
}

/// The engine's sleep and wake: the allocation at `base` released and a new one mapped at the
/// same address (a new buffer id), filled with `content`.
fn remap(memory: &Memory, base: u64, content: Vec<u8>) {
    let n = memory.next.fetch_add(1, Ordering::SeqCst);
    let mut all = memory.allocations.lock().unwrap();
    let (_, device, _) = all.remove(&base).unwrap();
    all.insert(base, (1000 + n, device, content));
}

#[test]
fn rebind_after_a_remap_keeps_the_seal_and_finds_a_wrong_reload() {
    let s = setup(Duration::from_secs(3600));
    let size = 3 * MIB + 100;
    let good = s.memory.alloc(size as usize, 0, 0x11);
    let bad = s.memory.alloc(size as usize, 0, 0x22);
    s.gpu.make_current(0x100);
    s.monitor.enable_integrity(0, IntegrityOptions::default()).unwrap();
    let good_id = s.monitor.register_sealed(good, size, "layers.0.weight").unwrap();
    let bad_id = s.monitor.register_sealed(bad, size, "layers.1.weight").unwrap();

    // Sleep and wake: both unmapped and remapped; one reloaded right, one with a byte wrong
    // in its third chunk.
    remap(&s.memory, good, vec![0x11; size as usize]);
    let mut wrong = vec![0x22; size as usize];
    wrong[(2 * MIB + 5) as usize] = 0x23;
    remap(&s.memory, bad, wrong);
    // Without rebind the remapped memory is a residency violation: REPLACED wins.
    s.monitor.check_now().unwrap();
    assert_eq!(s.monitor.registration(good_id).unwrap().verdict, Verdict::Replaced);

    let good_new = s.monitor.rebind(good_id).unwrap();
    let bad_new = s.monitor.rebind(bad_id).unwrap();
    assert_ne!(good_new, good_id);
    assert!(s.monitor.registration(good_id).is_none(), "the old id is gone");
    assert_eq!(s.monitor.registration(good_new).unwrap().label, "layers.0.weight");
    assert!(s.monitor.seal_info(good_new).is_some(), "the seal moved with the registration");
    assert!(s.monitor.seal_info(good_id).is_none());
    let summary = s.monitor.verify_now().unwrap();
    assert_eq!((summary.registrations, summary.modified), (2, 1));
    assert_eq!(s.monitor.registration(good_new).unwrap().verdict, Verdict::Resident);
    let info = s.monitor.registration(bad_new).unwrap();
    assert_eq!(info.verdict, Verdict::Modified, "a wrong reload is found against the seal taken before sleep");
    let seal = s.monitor.seal_info(bad_new).unwrap();
    assert_eq!((seal.modified_chunks, seal.first_modified_offset), (1, 2 * MIB));
    wait_for("the MODIFIED event", || s.events.lock().unwrap().iter().any(|e| e.kind == EventKind::Modified && e.registration_id == bad_new));
    s.monitor.check_now().unwrap();
    assert_eq!(s.monitor.health().current_violations, 1, "the REPLACED violations went with the old ids");

    // Memory not there any more is refused and changes nothing; an unknown id likewise.
    s.memory.free(good);
    assert!(matches!(s.monitor.rebind(good_new), Err(vram_monitor::Error::Refused(Verdict::NotMapped))));
    assert!(s.monitor.registration(good_new).is_some());
    assert!(matches!(s.monitor.rebind(good_id), Err(vram_monitor::Error::UnknownRegistration(_))));
}
