//! This process's VRAM use as NVML reports it, through the one handle ([`super::nvml`]),
//! else the driver's used memory of the devices that hold registrations.

use crate::core::driver::Driver;
use crate::core::process_vram::{ProcessVram, VramSource};


/// This process's VRAM use as NVML reports it, if NVML is present and lists this process.
pub fn nvml_process_bytes() -> Option<u64> {
    let nvml = super::nvml()?;
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
