//! The C ABI's Rust tests against the fake libcuda: one test binary, one module per topic (as
//! the core's tests/all at the repository root). Each fake-driver test runs its body in a child
//! process of its own, found by its full libtest name (`module::function`) with `--exact`
//! (tests/support at the repository root).
//!
//! Kept as a binary of its own: tests/header.rs, which generates include/vram_monitor.h with
//! cbindgen and compares it with the committed one. It needs no driver and no child process,
//! and is run (and blessed) by its own name:
//! `VRAM_MONITOR_BLESS=1 cargo test -p vram-monitor-capi --test header`.

// The harness; `#[macro_use]` brings `test_name!()` into every module below.
#[macro_use]
#[path = "../../../../tests/support/mod.rs"]
mod support;
// HTTP client, thread counting, scripted device health and a Prometheus parser.
#[path = "../../../../tests/support/observe.rs"]
mod observe;

/// The endpoint, device health, Prometheus and JSON through the C API.
mod c_api_observability;
/// The C host's log callback.
mod log_callback;
