//! "Monitoring this process": whether the driver answers a pointer query and a monitor
//! starts. Ends the report (with its exit status) when there is no usable driver.

use std::time::Duration;

use vram_monitor::{CudaDriver, Driver, DriverError, MemoryType, Monitor, MonitorOptions};

use crate::exit;

/// Prints the section; the started monitor, or the exit status to end with.
pub fn section(driver: Result<&'static CudaDriver, DriverError>, fake: bool) -> Result<Monitor, i32> {
    println!("Monitoring this process");
    let driver = match driver {
        Ok(driver) => driver,
        Err(DriverError::NotFound) => {
            println!("  NO: there is no CUDA driver, so there is no GPU memory to watch.");
            println!("  (exit status {}: no driver)", exit::NO_DRIVER);
            return Err(exit::NO_DRIVER);
        }
        Err(error) => {
            println!("  NO: the driver library is unusable: {error}");
            println!("  (exit status {}: driver unusable)", exit::DRIVER_UNUSABLE);
            return Err(exit::DRIVER_UNUSABLE);
        }
    };
    let probe = 0u64;
    let host_address = &probe as *const u64 as u64;
    match driver.pointer_info(host_address) {
        Ok(info) if info.memory_type == MemoryType::Unregistered => {
            println!("  pointer query:  works (cuPointerGetAttributes on a stack address: not CUDA memory, as it should)")
        }
        Ok(info) => println!("  pointer query:  answers, but oddly: a stack address reported as {:?}", info.memory_type),
        Err(error) => {
            println!("  pointer query:  FAILS: {error}");
            println!("  NO: the monitor cannot check anything with this driver.");
            return Err(exit::DRIVER_UNUSABLE);
        }
    }
    let monitor = match Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), ..MonitorOptions::default() }) {
        Ok(monitor) => monitor,
        Err(error) => {
            println!("  monitor:        could NOT start: {error}");
            return Err(exit::MISJUDGED);
        }
    };
    println!("  monitor:        starts (its thread runs; it created no CUDA context)");
    println!("  verdict:        YES, this process can be monitored{}", if fake { " (by the fake driver)" } else { "" });
    println!();
    Ok(monitor)
}
