//! The core's Rust tests against the fake libcuda (and the model GPU and model drivers): one
//! test binary, one module per topic, as wasmtime's `tests/all`. One binary instead of one per
//! file: the library and the harness are linked once, not ten times.
//!
//! Every fake-driver test still runs its body in a child process of its own: the harness
//! (tests/support/mod.rs) re-executes this binary with the test's full libtest name
//! (`module::function`, computed by `test_name!()`) and `--exact`, so exactly that test runs in
//! the child, with the fake libcuda on `LD_LIBRARY_PATH`. Run one topic with
//! `cargo test -p vram-monitor --test all stall::`, one test with
//! `cargo test -p vram-monitor --test all stall::NAME -- --exact` (`-p`: the C ABI's tests are a
//! binary named `all` too, crates/vram-monitor-capi/tests/all).
//!
//! Kept as binaries of their own (see Cargo.toml): `memory_per_registration` (its counting
//! global allocator would count every test of this binary that runs beside it, and slow them
//! all), and the GPU programs `gpu` and `cudarc_gpu` (harness = false, run on a GPU machine).

// The harness; `#[macro_use]` brings `test_name!()` into every module below.
#[macro_use]
#[path = "../support/mod.rs"]
mod support;
// HTTP client, thread counting, scripted device health and a Prometheus parser (observability).
#[path = "../support/observe.rs"]
mod observe;

/// The fake driver itself answers like the real one, and the harness fails when it should.
mod fake_driver_selftest;
/// Content integrity through the CUDA adapter and the fake libcuda.
mod integrity_fake;
/// Content integrity through the Rust API with a model GPU (no driver, in this process).
mod integrity_model;
/// Random API sequences against a reference model, and held-query interleavings.
mod model_based;
/// The Rust API against the fake libcuda: verdicts, events, driver faults.
mod monitor_with_fake_driver;
/// Prometheus text, the HTTP endpoint, device health, the JSON and metrics schema.
mod observability;
/// The Rust API as an engine uses it: guards and closures.
mod rust_api;
/// Stall detection: held and slow queries, a callback that never returns.
mod stall;
/// Many threads against the fake libcuda, then every invariant (and the ignored soak).
mod stress;
