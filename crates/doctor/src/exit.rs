//! Exit statuses (README.md and the usage say the same).

/// 0: the process can be monitored, and every kind of memory got the verdict it should.
pub const OK: i32 = 0;
/// 1: the monitor misjudged a kind of memory, or a monitor could not be started.
pub const MISJUDGED: i32 = 1;
/// 2: no CUDA driver library (libcuda.so.1) was found: this machine cannot be monitored.
pub const NO_DRIVER: i32 = 2;
/// 3: a driver library was found but is unusable (missing symbols, cuInit failed: a stub
/// library, no device, ...).
pub const DRIVER_UNUSABLE: i32 = 3;
/// 64: bad command-line arguments.
pub const USAGE: i32 = 64;
