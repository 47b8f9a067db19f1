//! The GPU's own memory health, for the devices that hold registrations: volatile
//! uncorrectable ECC errors, pages pending retirement, remapped rows pending or failed, and
//! critical XID events, read from NVML after each full check.
//!
//! DCGM watches these per GPU but knows nothing of the engine's buffers; the residency checks
//! know the buffers but not whether the memory under them is failing. Here both meet: a
//! device that holds registrations and reports a memory fault makes the monitor unhealthy
//! and fires a [`crate::EventKind::DeviceFault`] event.
//!
//! A signal the GPU does not support is [`Signal::Unsupported`], never zero; one that could
//! not be read at all (no NVML, or NVML answered with an error) is [`Signal::Unavailable`].
//! A fault read earlier outlives failed readings: the signal is reported unavailable, but
//! the fault (with the value it was read with) stays in [`DeviceHealth::fault_reasons`] until
//! a successful reading replaces it, and only a fault the last successful reading did not
//! have fires a new event, so transient NVML errors cannot make the health flip.
//! CUDA device ordinals are matched to NVML devices by PCI bus id, so `CUDA_VISIBLE_DEVICES`
//! and CUDA's device order cannot point the figures at the wrong GPU.

use crate::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::driver::Driver;
use crate::events::Event;

/// Whether a device-health signal could be read. The numbers are part of the C ABI.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalStatus {
    /// Not read: NVML is absent, the CUDA device could not be matched to an NVML device, or
    /// NVML answered with an error (for example no permission, or the GPU is lost).
    Unavailable = 0,
    /// The GPU does not support this signal (for example no ECC or ECC turned off, or page
    /// retirement on GPUs that remap rows instead).
    Unsupported = 1,
    /// Read: the value is valid.
    Supported = 2,
}

impl SignalStatus {
    /// The stable lower-case name used in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SignalStatus::Unavailable => "unavailable",
            SignalStatus::Unsupported => "unsupported",
            SignalStatus::Supported => "supported",
        }
    }
}

/// One device-health figure: its value, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal<T> {
    /// Could not be read (see [`SignalStatus::Unavailable`]).
    Unavailable,
    /// The GPU does not support it (see [`SignalStatus::Unsupported`]).
    Unsupported,
    /// The value read.
    Value(T),
}

impl<T> Signal<T> {
    /// Whether it was read, unsupported or unavailable.
    pub fn status(&self) -> SignalStatus {
        match self {
            Signal::Unavailable => SignalStatus::Unavailable,
            Signal::Unsupported => SignalStatus::Unsupported,
            Signal::Value(_) => SignalStatus::Supported,
        }
    }

    /// The value, if it was read.
    pub fn value(&self) -> Option<&T> {
        match self {
            Signal::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The same status with the value mapped.
    pub fn map<U>(&self, f: impl FnOnce(&T) -> U) -> Signal<U> {
        match self {
            Signal::Unavailable => Signal::Unavailable,
            Signal::Unsupported => Signal::Unsupported,
            Signal::Value(v) => Signal::Value(f(v)),
        }
    }
}

/// NVML's row-remapping figures (`nvmlDeviceGetRemappedRows`; Ampere and newer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemappedRows {
    /// Rows remapped because of correctable errors.
    pub correctable: u64,
    /// Rows remapped because of uncorrectable errors.
    pub uncorrectable: u64,
    /// A remapping is pending: it takes effect at the next GPU reset.
    pub pending: bool,
    /// A remapping failed: the GPU is out of spare rows and needs service.
    pub failed: bool,
}

/// What a [`DeviceHealthSource`] read from one device, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReading {
    /// The GPU's NVML index (`nvmlDeviceGetIndex`), if known: how `nvidia-smi` and
    /// dcgm-exporter (its `gpu` label) number GPUs, which is not always the CUDA ordinal.
    pub index: Option<u32>,
    /// The GPU's UUID, if known.
    pub uuid: Option<String>,
    /// The GPU's product name, if known.
    pub name: Option<String>,
    /// Uncorrectable ECC errors since the driver was loaded (`NVML_VOLATILE_ECC`).
    pub ecc_uncorrected_volatile: Signal<u64>,
    /// Whether pages are pending retirement (need a GPU reset); pre-Ampere GPUs.
    pub retired_pages_pending: Signal<bool>,
    /// Row remapping; Ampere and newer.
    pub remapped_rows: Signal<RemappedRows>,
    /// The XID codes of critical XID events that arrived since the previous reading of this
    /// device (NVML reports 999 for an XID it cannot name).
    pub new_critical_xids: Signal<Vec<u64>>,
}

/// Reads devices' memory health. The production source is [`NvmlSource`]; tests and other
/// backends implement their own and hand it to [`crate::Monitor::set_device_health_source`].
pub trait DeviceHealthSource: Send {
    /// Reads CUDA device `device`. `Err` says why the device cannot be read at all (every
    /// signal is then unavailable). Called on the monitor thread after each full check, for
    /// each device that holds registrations.
    fn read(&mut self, driver: &dyn Driver, device: i32) -> Result<DeviceReading, String>;
}

/// XIDs that mean the memory itself failed or the device is gone; one of them marks the
/// device faulted for the rest of the monitor's life. Other critical XIDs (for example 13 or
/// 31, often a fault in some process's kernel) are counted and reported but leave the
/// health alone.
pub const MEMORY_FAULT_XIDS: &[(u64, &str)] = &[
    (48, "double-bit ECC error"),
    (63, "ECC page retirement or row remapping event"),
    (64, "ECC page retirement or row remapping failure"),
    (79, "GPU has fallen off the bus"),
    (92, "high single-bit ECC error rate"),
    (94, "contained ECC error"),
    (95, "uncontained ECC error"),
];

fn memory_xid_meaning(xid: u64) -> Option<&'static str> {
    MEMORY_FAULT_XIDS.iter().find(|(code, _)| *code == xid).map(|(_, meaning)| *meaning)
}

/// The memory health of one device that holds registrations, as of the last full check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHealth {
    /// The CUDA device ordinal.
    pub device: i32,
    /// Whether the device could be read through NVML at all.
    pub available: bool,
    /// Why not, when it could not, followed by the faults kept from the last successful
    /// reading, if any (empty otherwise).
    pub detail: String,
    /// The GPU's NVML index, if known (see [`DeviceReading::index`]).
    pub nvml_index: Option<u32>,
    /// The GPU's UUID, if known.
    pub uuid: Option<String>,
    /// The GPU's product name, if known.
    pub name: Option<String>,
    /// Uncorrectable ECC errors since the driver was loaded.
    pub ecc_uncorrected_volatile: Signal<u64>,
    /// Pages pending retirement.
    pub retired_pages_pending: Signal<bool>,
    /// Row remapping.
    pub remapped_rows: Signal<RemappedRows>,
    /// Critical XID events seen since the monitor started watching this device.
    pub critical_xid_events: Signal<u64>,
    /// The last critical XID seen, if any.
    pub last_critical_xid: Option<u64>,
    /// Whether the device reports a memory fault now (see [`DeviceHealth::fault_reasons`]).
    pub memory_fault: bool,
    /// Sentences naming each fault: uncorrectable ECC errors, pages pending retirement,
    /// remapped rows pending or failed, a memory XID. A signal that could not be read this
    /// time keeps the fault its last successful reading showed.
    pub fault_reasons: Vec<String>,
    /// When it was read, milliseconds since the Unix epoch.
    pub read_unix_ms: u64,
}

impl DeviceHealth {
    /// A short label for messages: "GPU0 (NVIDIA H100 80GB HBM3, GPU-…)".
    pub fn display_name(&self) -> String {
        match (&self.name, &self.uuid) {
            (Some(name), Some(uuid)) => format!("GPU{} ({name}, {uuid})", self.device),
            (Some(name), None) => format!("GPU{} ({name})", self.device),
            (None, Some(uuid)) => format!("GPU{} ({uuid})", self.device),
            (None, None) => format!("GPU{}", self.device),
        }
    }
}

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
pub(crate) struct DeviceHealthMonitor {
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


impl DeviceHealthMonitor {
    /// Reads through NVML.
    pub(crate) fn new() -> DeviceHealthMonitor {
        DeviceHealthMonitor::with_source(Box::new(NvmlSource::new()), NVML_READ_PERIOD)
    }

    fn with_source(source: Box<dyn DeviceHealthSource>, period: Duration) -> DeviceHealthMonitor {
        DeviceHealthMonitor {
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
        let now = crate::clock::unix_ms();
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

// ---------------------------------------------------------------------------------------
// NVML

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::event::EventSet;
use nvml_wrapper::Device;

/// Reads device health through NVML (`libnvidia-ml.so.1`, loaded at run time; absent, every
/// device is unavailable).
pub struct NvmlSource {
    devices: HashMap<i32, NvmlDevice>,
}

struct NvmlDevice {
    device: Device<'static>,
    index: Option<u32>,
    uuid: Option<String>,
    name: Option<String>,
    xids: XidWatch,
}

enum XidWatch {
    Watching(EventSet<'static>),
    Unsupported,
    Unavailable,
}

/// Events drained per device per reading, at most (a storm of XIDs must not stall a check).
const MAX_EVENTS_PER_READ: usize = 256;

impl NvmlSource {
    /// A source that opens NVML on first use.
    pub fn new() -> NvmlSource {
        NvmlSource { devices: HashMap::new() }
    }

    fn open(nvml: &'static nvml_wrapper::Nvml, driver: &dyn Driver, ordinal: i32) -> Result<NvmlDevice, String> {
        let bus_id = driver
            .pci_bus_id(ordinal)
            .ok_or_else(|| format!("the CUDA driver gave no PCI bus id for device {ordinal}, so no NVML device can be matched to it"))?;
        let device = nvml
            .device_by_pci_bus_id(bus_id.as_str())
            .map_err(|e| format!("NVML has no device at PCI bus id {bus_id} (CUDA device {ordinal}): {e}"))?;
        let index = device.index().ok();
        let uuid = device.uuid().ok();
        let name = device.name().ok();
        let xids = match device.supported_event_types() {
            Ok(types) if types.contains(EventTypes::CRITICAL_XID_ERROR) => match nvml.create_event_set() {
                Ok(set) => match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(set) => XidWatch::Watching(set),
                    Err(e) if matches!(e.error, NvmlError::NotSupported) => XidWatch::Unsupported,
                    Err(e) => {
                        log::warn!(target: "vram_monitor", "GPU{ordinal}: cannot watch critical XID events: {}", e.error);
                        XidWatch::Unavailable
                    }
                },
                Err(e) => {
                    log::warn!(target: "vram_monitor", "GPU{ordinal}: cannot create an NVML event set: {e}");
                    XidWatch::Unavailable
                }
            },
            Ok(_) | Err(NvmlError::NotSupported) => XidWatch::Unsupported,
            Err(e) => {
                log::warn!(target: "vram_monitor", "GPU{ordinal}: cannot ask NVML for its event types: {e}");
                XidWatch::Unavailable
            }
        };
        Ok(NvmlDevice { device, index, uuid, name, xids })
    }
}

impl Default for NvmlSource {
    fn default() -> Self {
        NvmlSource::new()
    }
}

fn signal<T>(result: Result<T, NvmlError>) -> Signal<T> {
    match result {
        Ok(value) => Signal::Value(value),
        Err(NvmlError::NotSupported) => Signal::Unsupported,
        Err(_) => Signal::Unavailable,
    }
}

fn remapped_rows(device: &Device<'static>) -> Signal<RemappedRows> {
    // nvml-wrapper 0.13 has no wrapper for nvmlDeviceGetRemappedRows: call the loaded symbol.
    let Ok(get) = device.nvml().lib().nvmlDeviceGetRemappedRows.as_ref() else {
        return Signal::Unsupported;
    };
    let (mut correctable, mut uncorrectable, mut pending, mut failed) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: a live device handle of this NVML session and four out-pointers to locals.
    let code = unsafe { get(device.handle(), &mut correctable, &mut uncorrectable, &mut pending, &mut failed) };
    signal(nvml_wrapper::error::nvml_try(code)).map(|()| RemappedRows {
        correctable: u64::from(correctable),
        uncorrectable: u64::from(uncorrectable),
        pending: pending != 0,
        failed: failed != 0,
    })
}

fn drain_xids(set: &EventSet<'static>) -> Signal<Vec<u64>> {
    let mut xids = Vec::new();
    for _ in 0..MAX_EVENTS_PER_READ {
        match set.wait(0) {
            Ok(event) => {
                if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    xids.push(match event.event_data {
                        Some(XidError::Value(xid)) => xid,
                        _ => 999,
                    });
                }
            }
            Err(NvmlError::Timeout) => break,
            Err(e) => {
                log::debug!(target: "vram_monitor", "waiting for NVML events failed: {e}");
                return Signal::Unavailable;
            }
        }
    }
    Signal::Value(xids)
}

impl DeviceHealthSource for NvmlSource {
    fn read(&mut self, driver: &dyn Driver, device: i32) -> Result<DeviceReading, String> {
        let nvml = crate::process_vram::nvml()
            .ok_or_else(|| "NVML is not available (libnvidia-ml.so.1 could not be loaded or initialised)".to_string())?;
        let d = match self.devices.entry(device) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(NvmlSource::open(nvml, driver, device)?),
        };
        Ok(DeviceReading {
            index: d.index,
            uuid: d.uuid.clone(),
            name: d.name.clone(),
            ecc_uncorrected_volatile: signal(d.device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)),
            retired_pages_pending: signal(d.device.are_pages_pending_retired()),
            remapped_rows: remapped_rows(&d.device),
            new_critical_xids: match &d.xids {
                XidWatch::Watching(set) => drain_xids(set),
                XidWatch::Unsupported => Signal::Unsupported,
                XidWatch::Unavailable => Signal::Unavailable,
            },
        })
    }
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
