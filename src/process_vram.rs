//! How much VRAM this process uses: from NVML where it lists the process, otherwise the
//! device's used memory from `cuMemGetInfo` (through the engine's primary context, never a new
//! one), otherwise unknown. The health snapshot says which.

use once_cell::sync::OnceCell;

use crate::driver::Driver;

/// Where a process-VRAM figure came from. The numbers are part of the C ABI.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VramSource {
    /// No figure: no check has run yet, or neither NVML nor the driver could say.
    Unknown = 0,
    /// NVML's per-process figure for this process, summed over the GPUs.
    NvmlProcess = 1,
    /// The driver's used memory of the devices that hold registrations, all processes
    /// together (NVML did not list this process, e.g. inside a PID namespace).
    DeviceUsed = 2,
}

impl VramSource {
    /// The stable name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            VramSource::Unknown => "unknown",
            VramSource::NvmlProcess => "nvml_process",
            VramSource::DeviceUsed => "device_used",
        }
    }
}

/// A reading of process VRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessVram {
    /// Bytes.
    pub bytes: u64,
    /// Where the figure came from.
    pub source: VramSource,
}

impl ProcessVram {
    /// No figure.
    pub const UNKNOWN: ProcessVram = ProcessVram { bytes: 0, source: VramSource::Unknown };
}

/// The process's NVML session, opened on first use; `None` where NVML is absent.
pub(crate) fn nvml() -> Option<&'static nvml_wrapper::Nvml> {
    static NVML: OnceCell<Option<nvml_wrapper::Nvml>> = OnceCell::new();
    NVML.get_or_init(|| {
        // nvml-wrapper loads libnvidia-ml at run time and reports its absence as an error.
        std::panic::catch_unwind(nvml_wrapper::Nvml::init).ok().and_then(Result::ok)
    })
    .as_ref()
}

/// This process's VRAM use as NVML reports it, if NVML is present and lists this process.
pub fn nvml_process_bytes() -> Option<u64> {
    let nvml = nvml()?;
    let pid = std::process::id();
    let count = nvml.device_count().ok()?;
    let mut total = 0u64;
    let mut listed = false;
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else { continue };
        let Ok(processes) = device.running_compute_processes() else { continue };
        for process in processes.iter().filter(|p| p.pid == pid) {
            listed = true;
            if let nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) = process.used_gpu_memory {
                total += bytes;
            }
        }
    }
    listed.then_some(total)
}

/// Reads process VRAM, preferring NVML; `devices` are those that hold registrations.
pub fn read(driver: &dyn Driver, devices: &[i32]) -> ProcessVram {
    if let Some(bytes) = nvml_process_bytes() {
        return ProcessVram { bytes, source: VramSource::NvmlProcess };
    }
    let used: Vec<u64> = devices.iter().filter_map(|&d| driver.device_used_memory(d)).collect();
    if used.is_empty() {
        ProcessVram::UNKNOWN
    } else {
        ProcessVram { bytes: used.iter().sum(), source: VramSource::DeviceUsed }
    }
}
