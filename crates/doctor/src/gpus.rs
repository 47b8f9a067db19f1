//! The GPU section: NVML's list where NVML is usable, else the driver's (for machines without
//! NVML, and the fake driver).

use std::ffi::c_int;

use cuda_engine::Cuda;

use crate::nvml::NvmlReport;
use crate::GIB;

/// Prints the section. `driver_loaded`: the library loaded the driver (only then is it asked).
pub fn section(driver_loaded: bool, nvml: &Result<NvmlReport, String>, fake: bool) {
    println!("GPUs");
    let cuda = if driver_loaded { Cuda::get().ok().filter(|cuda| cuda.has("cuDeviceGetCount")) } else { None };
    match (nvml, cuda) {
        (Ok(n), _) if !n.gpus.is_empty() => {
            println!("  count:          {} (NVML)", n.gpus.len());
            for gpu in &n.gpus {
                println!("  {gpu}");
            }
        }
        (_, Some(cuda)) => match cuda.device_count() {
            Ok(count) => {
                println!("  count:          {count} (cuDeviceGetCount){}", if fake { " [fake]" } else { "" });
                for ordinal in 0..count {
                    println!("  GPU{ordinal}: {}", describe(cuda, ordinal));
                }
            }
            Err(why) => println!("  count:          unknown: {why}"),
        },
        _ => println!("  none found (no driver, and NVML is not usable)"),
    }
    println!();
}

/// `<name>, <memory> (from the driver; NVML not available)`.
fn describe(cuda: &Cuda, ordinal: c_int) -> String {
    let name = cuda.device_name(ordinal).ok();
    let memory = cuda.device_total_mem(ordinal).ok().map(|bytes| format!("{:.1} GiB", bytes as f64 / GIB));
    format!(
        "{}, {} (from the driver; NVML not available)",
        name.unwrap_or_else(|| "name unknown".into()),
        memory.unwrap_or_else(|| "memory unknown".into())
    )
}
