//! The NVML adapter: the process's one NVML handle, shared by the device-health source
//! ([`NvmlSource`]) and the process-VRAM reading ([`process_vram`]).

use once_cell::sync::OnceCell;

pub mod device_health;
pub mod process_vram;

pub use device_health::NvmlSource;

/// The process's NVML session, opened on first use; `None` where NVML is absent.
pub(crate) fn nvml() -> Option<&'static nvml_wrapper::Nvml> {
    static NVML: OnceCell<Option<nvml_wrapper::Nvml>> = OnceCell::new();
    NVML.get_or_init(|| {
        // nvml-wrapper loads libnvidia-ml at run time and reports its absence as an error.
        std::panic::catch_unwind(nvml_wrapper::Nvml::init).ok().and_then(Result::ok)
    })
    .as_ref()
}

