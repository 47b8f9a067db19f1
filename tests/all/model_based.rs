//! Model-based tests.
//!
//! 1. `api_sequences_match_the_reference_model` (proptest, in one fake-driver child process):
//!    random sequences of API calls (register, unregister, check_now, health) interleaved with
//!    the fake driver changing memory underneath (freed, reallocated, turned managed or host,
//!    moved to another device, VMM mappings unmapped and remapped, queries failing). A plain
//!    reference model says what every call must return; after every check it says each
//!    registration's verdict, whether its query is failing, and exactly which events the check
//!    must deliver (VIOLATION / RECOVERED with their from and to, CHECK_FAILED once per failure,
//!    HEALTH_CHANGED when health flips), and the health counters. A failure shrinks to a
//!    minimal sequence.
//!
//! 2. Deterministic interleavings of the core synchronisation, with a Rust driver that holds the
//!    monitor thread inside a driver query until the test lets it go: an unregister (and a
//!    register) that lands in the middle of a check. These pin down the races that the stress
//!    test (tests/all/stress.rs) can only hit by chance. Loom is not used: it would need every
//!    lock, atomic and channel of the library (crossbeam-channel included) swapped for loom's
//!    under cfg(loom); the gated driver reaches the interesting interleavings through the
//!    library's own seam (the `Driver` trait) without touching the library.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use crate::support::{fake_driver_test, Fake, FakeDriverVariant, Kind};
use vram_monitor::{
    Driver, DriverError, Error, Event, EventKind, MemoryType, Monitor, MonitorOptions, PointerInfo, Verdict,
};

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const CHUNK: u64 = 2 * MIB;

// ---- 1. the reference model --------------------------------------------------------------------

/// One allocation or VMM mapping, as the model sees it.
#[derive(Clone, Debug)]
struct Region {
    base: u64,
    size: u64,
    kind: Kind,
    /// Freed (allocation) or unmapped (mapping).
    gone: bool,
    generation: u32,
    device: i32,
    failing: i32,
    vmm: bool,
}

#[derive(Clone, Debug)]
struct RegModel {
    id: u64,
    size: u64,
    /// (region, generation and device when registered)
    pieces: Vec<(usize, u32, i32)>,
    verdict: Verdict,
    failing: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { kind: u8, pages: u8, device: u8 },
    VmmPair { device: u8 },
    Register { target: prop::sample::Index, offset_pages: u8, len_pages: u8 },
    Unregister { which: prop::sample::Index, stale: bool },
    SetKind { region: prop::sample::Index, kind: u8 },
    Reallocate { region: prop::sample::Index },
    Free { region: prop::sample::Index },
    Remap { region: prop::sample::Index },
    Move { region: prop::sample::Index, device: u8 },
    Fail { region: prop::sample::Index, code: u8 },
    CheckNow,
    Health,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3, 1u8..16, 0u8..2).prop_map(|(kind, pages, device)| Op::Alloc { kind, pages, device }),
        1 => (0u8..2).prop_map(|device| Op::VmmPair { device }),
        5 => (any::<prop::sample::Index>(), 0u8..4, 0u8..20)
            .prop_map(|(target, offset_pages, len_pages)| Op::Register { target, offset_pages, len_pages }),
        2 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(which, stale)| Op::Unregister { which, stale }),
        2 => (any::<prop::sample::Index>(), 0u8..3).prop_map(|(region, kind)| Op::SetKind { region, kind }),
        1 => any::<prop::sample::Index>().prop_map(|region| Op::Reallocate { region }),
        1 => any::<prop::sample::Index>().prop_map(|region| Op::Free { region }),
        1 => any::<prop::sample::Index>().prop_map(|region| Op::Remap { region }),
        1 => (any::<prop::sample::Index>(), 0u8..2).prop_map(|(region, device)| Op::Move { region, device }),
        1 => (any::<prop::sample::Index>(), 0u8..3).prop_map(|(region, code)| Op::Fail { region, code }),
        4 => Just(Op::CheckNow),
        1 => Just(Op::Health),
    ]
}

fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Resident => 0,
        Verdict::OutOfRange => 1,
        Verdict::WrongDevice => 2,
        Verdict::Replaced => 3,
        Verdict::Managed => 4,
        Verdict::Host => 5,
        Verdict::NotMapped => 6,
        Verdict::CheckFailed => 7,
        // Never a piece's verdict: only a sealed registration's content gives it.
        Verdict::Modified => 0,
    }
}

fn piece_verdict(region: &Region, generation: u32, device: i32) -> Verdict {
    if region.gone {
        return Verdict::NotMapped;
    }
    match region.kind {
        Kind::Managed => Verdict::Managed,
        Kind::Host | Kind::VmmHost => Verdict::Host,
        _ if region.device != device => Verdict::WrongDevice,
        _ if region.generation != generation => Verdict::Replaced,
        _ => Verdict::Resident,
    }
}

struct Model {
    regions: Vec<Region>,
    /// Registration targets: one plain region, or two adjacent mappings of one reservation.
    targets: Vec<Vec<usize>>,
    regs: Vec<RegModel>,
    stale: Vec<u64>,
    healthy: bool,
    total_violations: u64,
}

type Events = Arc<Mutex<Vec<Event>>>;

fn kind_of(k: u8) -> Kind {
    [Kind::Device, Kind::Managed, Kind::Host][k as usize % 3]
}

impl Model {
    fn new() -> Model {
        Model { regions: Vec::new(), targets: Vec::new(), regs: Vec::new(), stale: Vec::new(), healthy: true, total_violations: 0 }
    }

    fn apply(&mut self, op: &Op, fake: &Fake, m: &Monitor, events: &Events) -> Result<(), TestCaseError> {
        match op {
            Op::Alloc { kind, pages, device } => {
                let size = u64::from(*pages) * PAGE;
                let kind = kind_of(*kind);
                let base = fake.alloc(kind, size as usize, i32::from(*device));
                self.regions.push(Region { base, size, kind, gone: false, generation: 0, device: i32::from(*device), failing: 0, vmm: false });
                self.targets.push(vec![self.regions.len() - 1]);
            }
            Op::VmmPair { device } => {
                let reservation = fake.reserve(3 * CHUNK as usize);
                let device = i32::from(*device);
                for i in 0..2 {
                    prop_assert!(fake.map(reservation + i * CHUNK, CHUNK as usize, Kind::VmmDevice, device));
                    self.regions.push(Region { base: reservation + i * CHUNK, size: CHUNK, kind: Kind::VmmDevice, gone: false, generation: 0, device, failing: 0, vmm: true });
                }
                let n = self.regions.len();
                // A range from the first mapping may run on into the second (one reservation).
                self.targets.push(vec![n - 2, n - 1]);
            }
            Op::Register { target, offset_pages, len_pages } => {
                if self.targets.is_empty() {
                    return Ok(());
                }
                let target = self.targets[target.index(self.targets.len())].clone();
                let first = self.regions[target[0]].clone();
                let total: u64 = target.iter().map(|&r| self.regions[r].size).sum();
                let offset = (u64::from(*offset_pages) * PAGE).min(first.size - 1);
                // Up to a little past the end: out of range.
                let len = if *len_pages == 0 { 1 } else { (u64::from(*len_pages) * PAGE).min(total - offset + PAGE) };
                let expected = self.expected_register(&target, offset, len);
                let Some(expected) = expected else { return Ok(()) };
                let got = m.register(first.base + offset, len, "model");
                match (got, expected) {
                    (Ok(id), Ok(pieces)) => {
                        self.regs.push(RegModel { id, size: len, pieces, verdict: Verdict::Resident, failing: false });
                    }
                    (Err(e), Err(want)) => prop_assert_eq!(e, want),
                    (got, want) => prop_assert!(false, "register {target:?} +{offset} len {len}: got {got:?}, model {want:?}"),
                }
            }
            Op::Unregister { which, stale } => {
                if *stale && !self.stale.is_empty() {
                    let id = self.stale[which.index(self.stale.len())];
                    prop_assert_eq!(m.unregister(id), Err(Error::UnknownRegistration(id)));
                } else if !self.regs.is_empty() {
                    let reg = self.regs.remove(which.index(self.regs.len()));
                    prop_assert_eq!(m.unregister(reg.id), Ok(()));
                    self.stale.push(reg.id);
                } else {
                    prop_assert_eq!(m.unregister(u64::MAX), Err(Error::UnknownRegistration(u64::MAX)));
                }
            }
            Op::SetKind { region, kind } => {
                if let Some(r) = self.pick(region) {
                    let reg = &mut self.regions[r];
                    if reg.gone {
                        return Ok(());
                    }
                    let kind = if reg.vmm { [Kind::VmmDevice, Kind::VmmHost][*kind as usize % 2] } else { kind_of(*kind) };
                    prop_assert!(fake.set_kind(reg.base, kind));
                    reg.kind = kind;
                }
            }
            Op::Reallocate { region } => {
                if let Some(r) = self.pick(region) {
                    let reg = &mut self.regions[r];
                    if !reg.gone {
                        prop_assert!(fake.reallocate(reg.base));
                        reg.generation += 1;
                        reg.failing = 0;
                    }
                }
            }
            Op::Free { region } => {
                if let Some(r) = self.pick(region) {
                    let reg = &mut self.regions[r];
                    if !reg.gone {
                        let done = if reg.vmm { fake.unmap(reg.base) } else { fake.free(reg.base) };
                        prop_assert!(done, "the fake freed {:#x}", reg.base);
                        reg.gone = true;
                        reg.failing = 0;
                    }
                }
            }
            Op::Remap { region } => {
                if let Some(r) = self.pick(region) {
                    let reg = &mut self.regions[r];
                    if reg.gone && reg.vmm {
                        prop_assert!(fake.map(reg.base, reg.size as usize, Kind::VmmDevice, reg.device));
                        reg.gone = false;
                        reg.kind = Kind::VmmDevice;
                        reg.generation += 1;
                    }
                }
            }
            Op::Move { region, device } => {
                if let Some(r) = self.pick(region) {
                    let reg = &mut self.regions[r];
                    if !reg.gone {
                        prop_assert!(fake.set_device(reg.base, i32::from(*device)));
                        reg.device = i32::from(*device);
                    }
                }
            }
            Op::Fail { region, code } => {
                // Only plain allocations fail (one piece each): a registration's failure is then
                // its one query's.
                if let Some(r) = self.pick(region) {
                    let reg = &mut self.regions[r];
                    if !reg.gone && !reg.vmm {
                        reg.failing = [0, 4, 987_654][*code as usize % 3];
                        fake.fail_query_at(reg.base, reg.failing);
                    }
                }
            }
            Op::CheckNow => self.check(m, events)?,
            Op::Health => self.compare_counts(m)?,
        }
        Ok(())
    }

    fn pick(&self, index: &prop::sample::Index) -> Option<usize> {
        (!self.regions.is_empty()).then(|| index.index(self.regions.len()))
    }

    /// What registering `[base(target[0]) + offset, + len)` must give; None where the model
    /// does not say (ranges over mappings that are not all plain VMM device memory).
    fn expected_register(&self, target: &[usize], offset: u64, len: u64) -> Option<Result<Vec<(usize, u32, i32)>, Error>> {
        let first = &self.regions[target[0]];
        if first.gone {
            return Some(Err(Error::Refused(Verdict::NotMapped)));
        }
        if first.failing != 0 {
            return Some(Err(Error::Driver(DriverError::Call { function: "cuPointerGetAttributes", code: first.failing })));
        }
        match first.kind {
            Kind::Managed => return Some(Err(Error::Refused(Verdict::Managed))),
            Kind::Host | Kind::VmmHost => return Some(Err(Error::Refused(Verdict::Host))),
            _ => {}
        }
        let end = offset + len;
        if end <= first.size {
            return Some(Ok(vec![(target[0], first.generation, first.device)]));
        }
        if target.len() == 1 {
            // Past the allocation: the fake leaves a gap after each one.
            return Some(Err(Error::Refused(Verdict::OutOfRange)));
        }
        let second = &self.regions[target[1]];
        if end > first.size + second.size {
            // Past the second mapping: into the reservation's unmapped third chunk.
            if second.gone || second.kind != Kind::VmmDevice || second.device != first.device {
                return None;
            }
            return Some(Err(Error::Refused(Verdict::OutOfRange)));
        }
        if second.gone {
            return Some(Err(Error::Refused(Verdict::OutOfRange)));
        }
        if second.kind != Kind::VmmDevice || second.device != first.device {
            return None;
        }
        Some(Ok(vec![(target[0], first.generation, first.device), (target[1], second.generation, second.device)]))
    }

    fn check(&mut self, m: &Monitor, events: &Events) -> Result<(), TestCaseError> {
        events.lock().unwrap().clear();
        let summary = m.check_now().map_err(|e| TestCaseError::fail(format!("check_now: {e:?}")))?;
        let got = std::mem::take(&mut *events.lock().unwrap());

        let mut expected: Vec<(EventKind, u64, Verdict, Verdict)> = Vec::new();
        for reg in &mut self.regs {
            let failing = reg.pieces.iter().any(|&(r, _, _)| self.regions[r].failing != 0 && !self.regions[r].gone);
            if failing {
                if !reg.failing {
                    expected.push((EventKind::CheckFailed, reg.id, reg.verdict, Verdict::CheckFailed));
                }
                reg.failing = true;
                continue;
            }
            reg.failing = false;
            let now = reg
                .pieces
                .iter()
                .map(|&(r, generation, device)| piece_verdict(&self.regions[r], generation, device))
                .max_by_key(|&v| severity(v))
                .unwrap();
            if now != reg.verdict {
                let kind = if now.is_violation() { EventKind::Violation } else { EventKind::Recovered };
                if kind == EventKind::Violation {
                    self.total_violations += 1;
                }
                expected.push((kind, reg.id, reg.verdict, now));
                reg.verdict = now;
            }
        }
        let violating = self.regs.iter().filter(|r| r.verdict.is_violation()).count() as u64;
        let any_failing = self.regs.iter().any(|r| r.failing);
        let healthy = violating == 0 && !any_failing;
        let mut got_pairs: Vec<(EventKind, u64, Verdict, Verdict)> = got
            .iter()
            .filter(|e| e.kind != EventKind::HealthChanged)
            .map(|e| (e.kind, e.registration_id, e.previous_verdict, e.verdict))
            .collect();
        got_pairs.sort_by_key(|e| (e.1, e.0 as i32));
        expected.sort_by_key(|e| (e.1, e.0 as i32));
        prop_assert_eq!(&got_pairs, &expected, "events of this check");
        let health_events: Vec<&Event> = got.iter().filter(|e| e.kind == EventKind::HealthChanged).collect();
        if healthy != self.healthy {
            prop_assert_eq!(health_events.len(), 1, "one HEALTH_CHANGED when health flips");
            prop_assert_eq!(health_events[0].healthy, healthy);
        } else {
            prop_assert!(health_events.is_empty(), "no HEALTH_CHANGED without a flip: {:?}", health_events);
        }
        self.healthy = healthy;
        for e in &got {
            prop_assert_eq!(e.healthy, healthy, "every event carries the health after the check");
        }
        prop_assert_eq!(summary.healthy, healthy);
        prop_assert_eq!(summary.checked, self.regs.len() as u64);

        // Every verdict, from the monitor's own list.
        let listed: HashMap<u64, (Verdict, bool)> =
            m.registrations().iter().map(|r| (r.id, (r.verdict(), r.check_failing))).collect();
        prop_assert_eq!(listed.len(), self.regs.len());
        for reg in &self.regs {
            let Some(&(verdict, failing)) = listed.get(&reg.id) else {
                return Err(TestCaseError::fail(format!("registration {} missing", reg.id)));
            };
            prop_assert_eq!(verdict, reg.verdict, "registration {} verdict", reg.id);
            prop_assert_eq!(failing, reg.failing, "registration {} failing", reg.id);
        }
        let h = m.health();
        prop_assert_eq!(h.healthy, healthy);
        prop_assert_eq!(h.last_check_failed, any_failing);
        prop_assert_eq!(h.total_violations, self.total_violations);
        self.compare_counts(m)
    }

    fn compare_counts(&self, m: &Monitor) -> Result<(), TestCaseError> {
        let h = m.health();
        prop_assert_eq!(h.registrations, self.regs.len() as u64);
        prop_assert_eq!(h.tracked_bytes, self.regs.iter().map(|r| r.size).sum::<u64>());
        prop_assert_eq!(h.current_violations, self.regs.iter().filter(|r| r.verdict.is_violation()).count() as u64);
        let ids: HashSet<u64> = m.registrations().iter().map(|r| r.id).collect();
        let want: HashSet<u64> = self.regs.iter().map(|r| r.id).collect();
        prop_assert_eq!(ids, want);
        Ok(())
    }
}

#[test]
fn api_sequences_match_the_reference_model() {
    fake_driver_test(&test_name!(), FakeDriverVariant::Complete, &[], || {
        let fake = Fake::get();
        let cases = std::env::var("VRAM_MONITOR_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let checked = Arc::new(Mutex::new((0u64, 0u64)));
        let counter = Arc::clone(&checked);
        let result = runner.run(&prop::collection::vec(op(), 1..60), move |ops| {
            fake.reset();
            let m = Monitor::new(MonitorOptions::default()).expect("monitor");
            let events: Events = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&events);
            m.set_callback(Some(Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone()))));
            let mut model = Model::new();
            for op in &ops {
                model.apply(op, fake, &m, &events)?;
            }
            model.apply(&Op::CheckNow, fake, &m, &events)?;
            let mut c = counter.lock().unwrap();
            c.0 += 1;
            c.1 += ops.len() as u64;
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let (cases, ops) = *checked.lock().unwrap();
        println!("model: {cases} sequences, {ops} operations, every verdict and event checked against the model");
        assert!(cases > 0);
    });
}

// ---- 2. deterministic interleavings ------------------------------------------------------------

/// A driver of fixed answers whose queries from the monitor thread stop at a gate while it is
/// closed, until the test opens it.
struct GatedDriver {
    answers: Mutex<HashMap<u64, PointerInfo>>,
    gate: Mutex<Gate>,
    changed: Condvar,
}

#[derive(Default)]
struct Gate {
    closed: bool,
    waiting: u32,
}

impl GatedDriver {
    fn new() -> Arc<GatedDriver> {
        Arc::new(GatedDriver { answers: Mutex::new(HashMap::new()), gate: Mutex::new(Gate::default()), changed: Condvar::new() })
    }

    fn set(&self, base: u64, size: u64, memory_type: MemoryType, buffer_id: u64) {
        self.answers.lock().unwrap().insert(
            base,
            PointerInfo {
                memory_type,
                is_managed: false,
                device_ordinal: 0,
                buffer_id,
                range_start: base,
                range_size: size,
                mapping_base: 0,
                mapping_size: 0,
            },
        );
    }

    fn close(&self) {
        self.gate.lock().unwrap().closed = true;
    }

    /// Waits until the monitor thread is held at the gate.
    fn wait_until_held(&self) {
        let mut gate = self.gate.lock().unwrap();
        while gate.waiting == 0 {
            let (g, timeout) = self.changed.wait_timeout(gate, Duration::from_secs(20)).unwrap();
            assert!(!timeout.timed_out(), "the monitor thread never reached the gate");
            gate = g;
        }
    }

    fn open(&self) {
        self.gate.lock().unwrap().closed = false;
        self.changed.notify_all();
    }
}

impl Driver for GatedDriver {
    fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
        if std::thread::current().name() == Some("vram-monitor") {
            let mut gate = self.gate.lock().unwrap();
            if gate.closed {
                gate.waiting += 1;
                self.changed.notify_all();
                while gate.closed {
                    gate = self.changed.wait(gate).unwrap();
                }
                gate.waiting -= 1;
            }
        }
        let answers = self.answers.lock().unwrap();
        Ok(answers
            .iter()
            .find(|(&base, info)| base <= address && address < base + info.range_size)
            .map(|(_, info)| *info)
            .unwrap_or_else(PointerInfo::unregistered))
    }
    fn device_used_memory(&self, _device: i32) -> Option<u64> {
        None
    }
    fn version(&self) -> Option<i32> {
        None
    }
}

fn gated_monitor() -> (Arc<GatedDriver>, Arc<Monitor>, Events) {
    let driver = GatedDriver::new();
    let monitor = Arc::new(Monitor::with_driver(MonitorOptions::default(), driver.clone() as Arc<dyn Driver>).unwrap());
    let events: Events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    monitor.set_callback(Some(Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone()))));
    (driver, monitor, events)
}

#[test]
fn unregister_in_the_middle_of_a_check_leaves_no_event_and_exact_counts() {
    let (driver, m, events) = gated_monitor();
    driver.set(0x10_0000, MIB, MemoryType::Device, 1);
    driver.set(0x40_0000, MIB, MemoryType::Device, 2);
    let a = m.register(0x10_0000, MIB, "a").unwrap();
    let b = m.register(0x40_0000, MIB, "b").unwrap();
    // Both leave VRAM; the check is held inside its first driver query.
    driver.set(0x10_0000, MIB, MemoryType::Host, 1);
    driver.set(0x40_0000, MIB, MemoryType::Host, 2);
    driver.close();
    let checker = {
        let m = Arc::clone(&m);
        std::thread::spawn(move || m.check_now().unwrap())
    };
    driver.wait_until_held();
    // In the middle of the check: unregister a (whichever the check is asking about).
    m.unregister(a).unwrap();
    assert_eq!(m.health().registrations, 1, "unregister does not wait for the check");
    driver.open();
    let summary = checker.join().unwrap();
    let seen = events.lock().unwrap().clone();
    assert!(
        seen.iter().all(|e| e.registration_id != a || e.kind == EventKind::HealthChanged),
        "no event for a registration unregistered before its verdict was recorded: {seen:?}"
    );
    assert!(seen.iter().any(|e| e.kind == EventKind::Violation && e.registration_id == b && e.verdict == Verdict::Host));
    let h = m.health();
    assert_eq!((h.registrations, h.current_violations, h.total_violations), (1, 1, 1), "{h:?}");
    assert_eq!((summary.checked, summary.violations), (1, 1));
    m.unregister(b).unwrap();
    assert_eq!(m.health().current_violations, 0, "unregistering the violating one drops the count at once");
}

#[test]
fn register_in_the_middle_of_a_check_does_not_wait_and_is_checked_next_time() {
    let (driver, m, events) = gated_monitor();
    driver.set(0x10_0000, MIB, MemoryType::Device, 1);
    driver.set(0x40_0000, MIB, MemoryType::Device, 2);
    m.register(0x10_0000, MIB, "a").unwrap();
    driver.close();
    let checker = {
        let m = Arc::clone(&m);
        std::thread::spawn(move || m.check_now().unwrap())
    };
    driver.wait_until_held();
    // register asks the driver on this thread: it is not held, and takes no lock the check holds.
    let b = m.register(0x40_0000, MIB, "b").unwrap();
    assert_eq!(m.health().registrations, 2);
    driver.set(0x40_0000, MIB, MemoryType::Device, 99); // b is freed and reallocated meanwhile
    driver.open();
    checker.join().unwrap();
    let summary = m.check_now().unwrap();
    assert_eq!(summary.checked, 2);
    let seen = events.lock().unwrap().clone();
    let b_events: Vec<_> = seen.iter().filter(|e| e.registration_id == b).collect();
    assert_eq!(b_events.len(), 1, "{seen:?}");
    assert_eq!((b_events[0].kind, b_events[0].verdict), (EventKind::Violation, Verdict::Replaced));
}

#[test]
fn a_monitor_dropped_during_a_held_query_returns_once_the_query_does_and_delivers_nothing_more() {
    let (driver, m, events) = gated_monitor();
    driver.set(0x10_0000, MIB, MemoryType::Device, 1);
    m.register(0x10_0000, MIB, "a").unwrap();
    driver.set(0x10_0000, MIB, MemoryType::Host, 1);
    driver.close();
    m.set_interval(Duration::from_millis(1)).unwrap();
    driver.wait_until_held();
    let m = Arc::try_unwrap(m).unwrap_or_else(|_| panic!("one owner"));
    let dropper = std::thread::spawn(move || drop(m));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!dropper.is_finished(), "drop waits for the query in progress");
    driver.open();
    dropper.join().unwrap();
    let delivered = events.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(events.lock().unwrap().len(), delivered, "nothing is delivered after the drop returned");
}

#[test]
fn a_rust_callback_that_panics_is_contained_and_the_monitor_goes_on() {
    let driver = GatedDriver::new();
    let m = Monitor::with_driver(MonitorOptions::default(), driver.clone() as Arc<dyn Driver>).unwrap();
    driver.set(0x10_0000, MIB, MemoryType::Device, 1);
    driver.set(0x40_0000, MIB, MemoryType::Device, 2);
    let a = m.register(0x10_0000, MIB, "a").unwrap();
    let b = m.register(0x40_0000, MIB, "b").unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    m.set_callback(Some(Arc::new(move |e: &Event| {
        seen.lock().unwrap().push(e.registration_id);
        if e.registration_id == a {
            panic!("a hostile callback");
        }
    })));
    driver.set(0x10_0000, MIB, MemoryType::Host, 1);
    driver.set(0x40_0000, MIB, MemoryType::Host, 2);
    let summary = m.check_now().expect("the check survives the panic");
    assert_eq!(summary.violations, 2);
    let ids = calls.lock().unwrap().clone();
    assert!(ids.contains(&a) && ids.contains(&b), "the event after the panicking one is still delivered: {ids:?}");
    driver.set(0x10_0000, MIB, MemoryType::Device, 1);
    assert_eq!(m.check_now().unwrap().violations, 1, "the monitor thread still checks");
    assert!(m.shutdown().is_ok());
}
