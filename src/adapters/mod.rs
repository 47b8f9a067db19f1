//! Adapters: the core's ports met by the outside world. The CUDA driver ([`cuda`], which also
//! carries integrity's fingerprint kernel), NVML with one handle for device health and process
//! VRAM ([`nvml`]), fork detection ([`fork`]) and the process-exit hook ([`process_exit`]).
//!
//! Adapters depend on the core only; the monitor picks them.

pub mod cuda;
pub mod fork;
pub mod nvml;
pub mod process_exit;
