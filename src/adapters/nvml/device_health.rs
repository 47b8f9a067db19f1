//! Device health read through NVML: [`NvmlSource`], the production [`DeviceHealthSource`],
//! on the process's one NVML handle ([`super::nvml`]).

use std::collections::HashMap;

use crate::core::device_health::{DeviceHealthSource, DeviceReading, RemappedRows, Signal};
use crate::core::driver::Driver;

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
        let nvml = super::nvml()
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

