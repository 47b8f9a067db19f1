//! The artefact: `libvram_monitor.so` and `libvram_monitor.a`, the C ABI of
//! crates/vram-monitor-capi with nothing added. Only its `#[no_mangle] extern "C"` functions
//! are exported; `build.rs` gives the shared library its SONAME.
pub use vram_monitor_capi::*;
