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

use crate::core::driver::Driver;

mod tracker;
pub(crate) use tracker::DeviceHealthTracker;
pub use tracker::NVML_READ_PERIOD;

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

/// Reads devices' memory health. The production source is
/// [`NvmlSource`](crate::adapters::nvml::NvmlSource); tests and other
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
