//! The device-health fold: one monitor's source (read on the monitor thread) and the last
//! readings (read by any thread), faults remembered across failed readings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::core::driver::Driver;
use crate::core::events::Event;
use crate::core::sync::lock;


#[derive(Debug, Default)]
struct XidTally {
    supported: Option<SignalStatus>,
    total: u64,
    last: Option<u64>,
    memory: Vec<u64>,
}

/// NVML is read after a check at most this often (its calls cost tens of microseconds per
/// GPU; a check may run every millisecond).
pub const NVML_READ_PERIOD: Duration = Duration::from_secs(1);

/// The device-health state of one monitor: its source (used only on the monitor thread) and
/// the last readings (read by any thread).
pub(crate) struct DeviceHealthTracker {
    source: Mutex<Reader>,
    published: Mutex<Published>,
}

struct Reader {
    source: Box<dyn DeviceHealthSource>,
    /// Read at most this often (zero: after every check).
    period: Duration,
    last_read: Option<Instant>,
    last_faulted: u64,
}

#[derive(Default)]
struct Published {
    devices: BTreeMap<i32, DeviceHealth>,
    xids: HashMap<i32, XidTally>,
    known: HashMap<i32, Known>,
}

/// What the successful readings of one device established. NVML answers with an error now
/// and then (a busy driver, a GPU being reset, a transient permission problem): a failed
/// reading, or one signal NVML could not read, must not clear a fault that was read before,
/// or the health would flip at every failure and the next good reading would report the same
/// fault as new.
#[derive(Debug, Default)]
struct Known {
    index: Option<u32>,
    uuid: Option<String>,
    name: Option<String>,
    /// The last value read of each fault signal (`None`: never read, or unsupported).
    ecc_uncorrected_volatile: Option<u64>,
    retired_pages_pending: Option<bool>,
    remapped_rows: Option<RemappedRows>,
    /// The fault reasons of the last successful reading (`None`: none succeeded yet). New
    /// faults are those missing here.
    reasons: Option<Vec<String>>,
}

impl Known {
    /// The fault reasons that follow from the last values read (memory XIDs not included).
    fn signal_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(count) = self.ecc_uncorrected_volatile.filter(|&c| c > 0) {
            reasons.push(format!("{count} uncorrectable ECC errors since the driver was loaded"));
        }
        if self.retired_pages_pending == Some(true) {
            reasons.push("pages pending retirement (reset the GPU)".to_string());
        }
        if let Some(rows) = self.remapped_rows {
            if rows.pending {
                reasons.push("remapped rows pending (reset the GPU)".to_string());
            }
            if rows.failed {
                reasons.push("row remapping failed (the GPU needs service)".to_string());
            }
        }
        reasons
    }
}

/// Folds one signal of a successful reading into the last known value: a value replaces it,
/// "unsupported" clears it (the GPU answered), "unavailable" keeps it (NVML did not answer).
fn remember<T: Copy>(signal: &Signal<T>, known: &mut Option<T>) {
    match signal {
        Signal::Value(v) => *known = Some(*v),
        Signal::Unsupported => *known = None,
        Signal::Unavailable => {}
    }
}


impl DeviceHealthTracker {
    /// Reads through `source` at most every `period`.
    pub(crate) fn with_source(source: Box<dyn DeviceHealthSource>, period: Duration) -> DeviceHealthTracker {
        DeviceHealthTracker {
            source: Mutex::new(Reader { source, period, last_read: None, last_faulted: 0 }),
            published: Mutex::new(Published::default()),
        }
    }

    /// Replaces the source (read after every check from now on) and forgets what the old one
    /// read.
    pub(crate) fn set_source(&self, source: Box<dyn DeviceHealthSource>) {
        let old = {
            let mut reader = lock(&self.source);
            let old = std::mem::replace(&mut reader.source, source);
            reader.period = Duration::ZERO;
            reader.last_read = None;
            reader.last_faulted = 0;
            *lock(&self.published) = Published::default();
            old
        };
        drop(old);
    }

    /// Reads the devices that hold registrations (`devices` is asked only when a reading is
    /// due), publishes the readings, pushes a device-fault event for each new fault or
    /// critical XID, and returns how many devices report a memory fault. Devices no longer
    /// holding registrations are forgotten.
    pub(crate) fn refresh(&self, driver: &dyn Driver, devices: impl FnOnce() -> Vec<i32>, events: &mut Vec<Event>) -> u64 {
        let mut reader = lock(&self.source);
        if reader.last_read.is_some_and(|at| at.elapsed() < reader.period) {
            return reader.last_faulted;
        }
        let mut devices = devices();
        devices.sort_unstable();
        devices.dedup();
        reader.last_read = Some(Instant::now());
        // Read outside the published lock: NVML calls take a while, snapshots must not wait.
        let readings: Vec<(i32, Result<DeviceReading, String>)> = {
            let source = &mut reader.source;
            devices
                .iter()
                .map(|&device| {
                    let reading = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.read(driver, device)))
                        .unwrap_or_else(|_| Err("internal error while reading device health".to_string()));
                    (device, reading)
                })
                .collect()
        };
        let now = crate::core::clock::unix_ms();
        let mut published = lock(&self.published);
        published.devices.retain(|device, _| devices.contains(device));
        published.xids.retain(|device, _| devices.contains(device));
        published.known.retain(|device, _| devices.contains(device));
        let mut faulted = 0;
        for (device, reading) in readings {
            let Published { xids, known, .. } = &mut *published;
            let (health, new_xids, new_reasons) =
                assemble(device, reading, xids.entry(device).or_default(), known.entry(device).or_default(), now);
            if !new_reasons.is_empty() {
                let message = format!(
                    "{} reports a memory fault: {}",
                    health.display_name(),
                    new_reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>().join("; ")
                );
                events.push(Event::device_fault(device, message, false));
            }
            let other_xids: Vec<u64> = new_xids.iter().copied().filter(|x| memory_xid_meaning(*x).is_none()).collect();
            if !other_xids.is_empty() {
                let list = other_xids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
                let message = format!(
                    "{} reported critical XID {list} (not a memory fault: the monitor's health is unaffected)",
                    health.display_name()
                );
                events.push(Event::device_fault(device, message, false));
            }
            if health.memory_fault {
                faulted += 1;
            }
            published.devices.insert(device, health);
        }
        reader.last_faulted = faulted;
        faulted
    }

    /// The last readings, by device.
    pub(crate) fn snapshot(&self) -> Vec<DeviceHealth> {
        lock(&self.published).devices.values().cloned().collect()
    }

    /// How many devices report a memory fault now.
    pub(crate) fn faulted(&self) -> u64 {
        lock(&self.published).devices.values().filter(|d| d.memory_fault).count() as u64
    }
}

/// Turns one reading into the published health, folding new XIDs into the tally and the
/// values read into what is known of the device. A failed reading reports every signal
/// unavailable but keeps the faults known from earlier readings; so does a signal NVML could
/// not read. Returns the health, the XIDs that are new in this reading, and the fault
/// reasons that are new: those the last successful reading did not have (a failed reading
/// has none).
fn assemble(
    device: i32,
    reading: Result<DeviceReading, String>,
    tally: &mut XidTally,
    known: &mut Known,
    now: u64,
) -> (DeviceHealth, Vec<u64>, Vec<String>) {
    let reading = match reading {
        Ok(reading) => reading,
        Err(detail) => {
            let kept = known.signal_reasons();
            let detail = if kept.is_empty() {
                detail
            } else {
                format!("{detail} (faults kept from the last successful reading: {})", kept.join("; "))
            };
            let health = DeviceHealth {
                device,
                available: false,
                detail,
                nvml_index: known.index,
                uuid: known.uuid.clone(),
                name: known.name.clone(),
                ecc_uncorrected_volatile: Signal::Unavailable,
                retired_pages_pending: Signal::Unavailable,
                remapped_rows: Signal::Unavailable,
                critical_xid_events: if tally.supported == Some(SignalStatus::Supported) {
                    // Seen before: keep the count, even if this reading failed.
                    Signal::Value(tally.total)
                } else {
                    Signal::Unavailable
                },
                last_critical_xid: tally.last,
                memory_fault: false,
                fault_reasons: kept,
                read_unix_ms: now,
            };
            let mut health = health;
            add_xid_reasons(&mut health, tally);
            return (health, Vec::new(), Vec::new());
        }
    };
    let new_xids = match &reading.new_critical_xids {
        Signal::Value(xids) => {
            tally.supported = Some(SignalStatus::Supported);
            tally.total += xids.len() as u64;
            if let Some(&last) = xids.last() {
                tally.last = Some(last);
            }
            for &xid in xids {
                if memory_xid_meaning(xid).is_some() && !tally.memory.contains(&xid) {
                    tally.memory.push(xid);
                }
            }
            xids.clone()
        }
        other => {
            if tally.supported != Some(SignalStatus::Supported) {
                tally.supported = Some(other.status());
            }
            Vec::new()
        }
    };
    let critical_xid_events = match tally.supported {
        Some(SignalStatus::Supported) => Signal::Value(tally.total),
        Some(SignalStatus::Unsupported) => Signal::Unsupported,
        _ => Signal::Unavailable,
    };
    remember(&reading.ecc_uncorrected_volatile, &mut known.ecc_uncorrected_volatile);
    remember(&reading.retired_pages_pending, &mut known.retired_pages_pending);
    remember(&reading.remapped_rows, &mut known.remapped_rows);
    if reading.uuid.is_some() {
        known.uuid.clone_from(&reading.uuid);
    }
    if reading.index.is_some() {
        known.index = reading.index;
    }
    if reading.name.is_some() {
        known.name.clone_from(&reading.name);
    }
    let mut health = DeviceHealth {
        device,
        available: true,
        detail: String::new(),
        nvml_index: reading.index.or(known.index),
        uuid: reading.uuid,
        name: reading.name,
        ecc_uncorrected_volatile: reading.ecc_uncorrected_volatile,
        retired_pages_pending: reading.retired_pages_pending,
        remapped_rows: reading.remapped_rows,
        critical_xid_events,
        last_critical_xid: tally.last,
        memory_fault: false,
        fault_reasons: Vec::new(),
        read_unix_ms: now,
    };
    health.fault_reasons = known.signal_reasons();
    add_xid_reasons(&mut health, tally);
    let new_reasons = health
        .fault_reasons
        .iter()
        .filter(|r| known.reasons.as_ref().is_none_or(|before| !before.contains(r)))
        .cloned()
        .collect();
    known.reasons = Some(health.fault_reasons.clone());
    (health, new_xids, new_reasons)
}

fn add_xid_reasons(health: &mut DeviceHealth, tally: &XidTally) {
    for &xid in &tally.memory {
        if let Some(meaning) = memory_xid_meaning(xid) {
            health.fault_reasons.push(format!("XID {xid}: {meaning}"));
        }
    }
    health.memory_fault = !health.fault_reasons.is_empty();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> DeviceReading {
        DeviceReading {
            index: Some(3),
            uuid: Some("GPU-test".into()),
            name: Some("Test GPU".into()),
            ecc_uncorrected_volatile: Signal::Value(0),
            retired_pages_pending: Signal::Unsupported,
            remapped_rows: Signal::Value(RemappedRows::default()),
            new_critical_xids: Signal::Value(vec![]),
        }
    }

    #[test]
    fn a_clean_reading_is_no_fault() {
        let (health, new, _) = assemble(0, Ok(reading()), &mut XidTally::default(), &mut Known::default(), 1);
        assert!(!health.memory_fault);
        assert!(health.fault_reasons.is_empty());
        assert!(new.is_empty());
        assert_eq!(health.critical_xid_events, Signal::Value(0));
        assert_eq!(health.retired_pages_pending.status(), SignalStatus::Unsupported);
    }

    #[test]
    fn each_memory_signal_is_a_fault() {
        let mut cases = Vec::new();
        let mut r = reading();
        r.ecc_uncorrected_volatile = Signal::Value(3);
        cases.push((r, "3 uncorrectable ECC errors"));
        let mut r = reading();
        r.retired_pages_pending = Signal::Value(true);
        cases.push((r, "pages pending retirement"));
        let mut r = reading();
        r.remapped_rows = Signal::Value(RemappedRows { pending: true, ..Default::default() });
        cases.push((r, "remapped rows pending"));
        let mut r = reading();
        r.remapped_rows = Signal::Value(RemappedRows { failed: true, ..Default::default() });
        cases.push((r, "row remapping failed"));
        let mut r = reading();
        r.new_critical_xids = Signal::Value(vec![94]);
        cases.push((r, "XID 94"));
        for (r, expected) in cases {
            let (health, _, new_reasons) = assemble(0, Ok(r), &mut XidTally::default(), &mut Known::default(), 1);
            assert!(health.memory_fault, "{expected}");
            assert!(health.fault_reasons.iter().any(|reason| reason.contains(expected)), "{:?} lacks {expected}", health.fault_reasons);
            assert_eq!(new_reasons, health.fault_reasons, "the first reading's faults are all new");
        }
    }

    #[test]
    fn other_xids_are_counted_but_are_no_fault_and_memory_xids_stay() {
        let mut tally = XidTally::default();
        let mut known = Known::default();
        let mut r = reading();
        r.new_critical_xids = Signal::Value(vec![13, 31]);
        let (health, new, _) = assemble(0, Ok(r), &mut tally, &mut known, 1);
        assert_eq!(new, vec![13, 31]);
        assert!(!health.memory_fault);
        assert_eq!(health.critical_xid_events, Signal::Value(2));
        assert_eq!(health.last_critical_xid, Some(31));
        let mut r = reading();
        r.new_critical_xids = Signal::Value(vec![48]);
        let (health, _, _) = assemble(0, Ok(r), &mut tally, &mut known, 2);
        assert!(health.memory_fault);
        // Later readings without new events keep the memory XID as a fault.
        let (health, new, new_reasons) = assemble(0, Ok(reading()), &mut tally, &mut known, 3);
        assert!(new.is_empty());
        assert!(new_reasons.is_empty(), "the XID was reported when it arrived");
        assert!(health.memory_fault);
        assert_eq!(health.critical_xid_events, Signal::Value(3));
    }

    #[test]
    fn an_unreadable_device_is_unavailable_everywhere_and_no_fault() {
        let (health, _, new_reasons) = assemble(1, Err("no NVML".into()), &mut XidTally::default(), &mut Known::default(), 1);
        assert!(!health.available);
        assert_eq!(health.detail, "no NVML");
        assert_eq!(health.ecc_uncorrected_volatile, Signal::Unavailable);
        assert_eq!(health.retired_pages_pending, Signal::Unavailable);
        assert_eq!(health.remapped_rows, Signal::Unavailable);
        assert_eq!(health.critical_xid_events, Signal::Unavailable);
        assert!(!health.memory_fault);
        assert!(new_reasons.is_empty());
    }

    #[test]
    fn a_failed_reading_keeps_the_known_faults_and_only_a_good_reading_replaces_them() {
        let (mut tally, mut known) = (XidTally::default(), Known::default());
        let mut faulty = reading();
        faulty.ecc_uncorrected_volatile = Signal::Value(3);
        faulty.remapped_rows = Signal::Value(RemappedRows { failed: true, ..Default::default() });
        let (first, _, new_reasons) = assemble(0, Ok(faulty.clone()), &mut tally, &mut known, 1);
        assert_eq!(first.fault_reasons.len(), 2, "{:?}", first.fault_reasons);
        assert_eq!(new_reasons, first.fault_reasons);

        let (failed, _, new_reasons) = assemble(0, Err("GPU is lost".into()), &mut tally, &mut known, 2);
        assert!(!failed.available);
        assert!(failed.detail.starts_with("GPU is lost"), "{}", failed.detail);
        assert!(failed.detail.contains("3 uncorrectable ECC errors"), "{}", failed.detail);
        assert_eq!(failed.ecc_uncorrected_volatile, Signal::Unavailable);
        assert_eq!(failed.remapped_rows, Signal::Unavailable);
        assert!(failed.memory_fault);
        assert_eq!(failed.fault_reasons, first.fault_reasons);
        assert_eq!(failed.uuid, first.uuid);
        assert_eq!(failed.nvml_index, Some(3), "the index is kept from the last successful reading");
        assert!(new_reasons.is_empty());

        // Only the signal NVML could not read keeps its old value; the others are replaced.
        let mut partial = reading();
        partial.ecc_uncorrected_volatile = Signal::Unavailable;
        let (health, _, new_reasons) = assemble(0, Ok(partial), &mut tally, &mut known, 3);
        assert_eq!(health.fault_reasons, vec![first.fault_reasons[0].clone()], "the row remapping was read again: no longer failed");
        assert!(new_reasons.is_empty());

        // "Unsupported" is an answer: it replaces the old value.
        let mut unsupported = reading();
        unsupported.ecc_uncorrected_volatile = Signal::Unsupported;
        let (health, _, _) = assemble(0, Ok(unsupported), &mut tally, &mut known, 4);
        assert!(!health.memory_fault, "{:?}", health.fault_reasons);
        let (health, _, _) = assemble(0, Err("GPU is lost".into()), &mut tally, &mut known, 5);
        assert!(!health.memory_fault, "nothing known, nothing kept");
        assert_eq!(health.detail, "GPU is lost");

        // New faults are compared with the last successful reading, not with a failed one.
        let (_, _, new_reasons) = assemble(0, Ok(faulty), &mut tally, &mut known, 6);
        assert_eq!(new_reasons.len(), 2, "{new_reasons:?}");
    }
}
