//! The report's first section: the CUDA driver, as the library loads it (found or not, where,
//! its version, and whether it is the test suite's fake).

use cuda_engine::Cuda;
use vram_monitor::{CudaDriver, Driver, DriverError};

/// Prints the section; the library's driver, and whether it is the fake.
pub fn section() -> (Result<&'static CudaDriver, DriverError>, bool) {
    println!("CUDA driver");
    let driver = CudaDriver::get();
    let library = loaded_library_path("libcuda");
    let fake = driver.is_ok() && is_fake_driver();
    match &driver {
        Ok(d) => {
            println!("  library:        found: {}", library.as_deref().unwrap_or("(path unknown)"));
            println!("  API version:    {}", d.version().map(api_version).unwrap_or_else(|| "unknown".into()));
            if fake {
                println!("  kind:           THE FAKE DRIVER from tests/fake_cuda (it exports fake_cuda_*): no GPU is");
                println!("                  involved; everything below describes the fake, not real hardware");
            } else {
                println!("  kind:           the NVIDIA driver");
            }
        }
        Err(DriverError::NotFound) => {
            println!("  library:        NOT FOUND: no libcuda.so.1 on the loader path (LD_LIBRARY_PATH,");
            println!("                  ldconfig cache); this machine has no NVIDIA driver usable here");
        }
        Err(error) => {
            println!("  library:        found, but UNUSABLE: {error}");
            if let Some(path) = &library {
                println!("                  ({path})");
            }
            if let DriverError::InitFailed(34) = error {
                println!("                  (34 is the CUDA toolkit's stub libcuda: the real driver is not installed)");
            }
        }
    }
    println!();
    (driver, fake)
}

/// `13.0 (13000)`.
pub fn api_version(v: i32) -> String {
    format!("{}.{} ({v})", v / 1000, (v % 1000) / 10)
}

/// The path of the first mapped file whose name contains `name`, from /proc/self/maps.
pub fn loaded_library_path(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.rsplit('/').next().is_some_and(|file| file.starts_with(name)))
        .map(str::to_owned)
}

/// Whether the loaded libcuda is the test suite's fake (it exports `fake_cuda_alloc`).
fn is_fake_driver() -> bool {
    Cuda::get().is_ok_and(|cuda| cuda.has("fake_cuda_alloc"))
}
