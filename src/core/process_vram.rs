//! How much VRAM this process uses: from NVML where it lists the process, otherwise the
//! device's used memory from `cuMemGetInfo` (through the engine's primary context, never a new
//! one), otherwise unknown. The health snapshot says which.

/// Where a process-VRAM figure came from. The numbers are part of the C ABI.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VramSource {
    /// No figure: no check has run yet, or neither NVML nor the driver could say.
    #[default]
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

/// A reading of process VRAM (the default: [`ProcessVram::UNKNOWN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
