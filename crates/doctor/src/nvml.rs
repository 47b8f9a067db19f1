//! The NVML section: whether NVML loads, the driver and CUDA versions it reports, and its GPU
//! list (which the GPU section prefers to the driver's).

use crate::driver::{api_version, loaded_library_path};
use crate::GIB;

/// What NVML says about the machine.
pub struct NvmlReport {
    driver_version: String,
    cuda_version: String,
    /// One line a GPU: `GPU0: <name>, <memory>`.
    pub gpus: Vec<String>,
}

/// Prints the section; NVML's report, or why it is not usable.
pub fn section() -> Result<NvmlReport, String> {
    println!("NVML");
    let nvml = nvml_report();
    match &nvml {
        Ok(n) => {
            println!("  library:        found ({})", loaded_library_path("libnvidia-ml").as_deref().unwrap_or("libnvidia-ml.so.1"));
            println!("  driver version: {}", n.driver_version);
            println!("  CUDA version:   {}", n.cuda_version);
        }
        Err(why) => println!("  library:        not usable: {why}"),
    }
    println!();
    nvml
}

fn nvml_report() -> Result<NvmlReport, String> {
    let nvml = std::panic::catch_unwind(nvml_wrapper::Nvml::init)
        .map_err(|_| "NVML panicked while loading".to_string())?
        .map_err(|e| format!("{e} (libnvidia-ml.so.1)"))?;
    let driver_version = nvml.sys_driver_version().unwrap_or_else(|e| format!("unknown ({e})"));
    let cuda_version = nvml
        .sys_cuda_driver_version()
        .map(api_version)
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let count = nvml.device_count().map_err(|e| format!("device count: {e}"))?;
    let mut gpus = Vec::new();
    for i in 0..count {
        let line = match nvml.device_by_index(i) {
            Ok(device) => {
                let name = device.name().unwrap_or_else(|e| format!("(name unknown: {e})"));
                let memory = match device.memory_info() {
                    Ok(m) => format!("{:.1} GiB total, {:.1} GiB used", m.total as f64 / GIB, m.used as f64 / GIB),
                    Err(e) => format!("memory unknown ({e})"),
                };
                format!("GPU{i}: {name}, {memory}")
            }
            Err(e) => format!("GPU{i}: unavailable ({e})"),
        };
        gpus.push(line);
    }
    Ok(NvmlReport { driver_version, cuda_version, gpus })
}
