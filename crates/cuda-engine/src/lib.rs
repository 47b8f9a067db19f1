//! The engine side of CUDA, for the programs that play an inference engine against
//! vram-monitor: the doctor (`crates/doctor`), the GPU scenarios (`tests/gpu`) and the GPU
//! benchmark (`examples/perf_gpu/`).
//!
//! The library itself never creates a context and never allocates; an engine does both, and
//! these programs must do what an engine does to see what the monitor says about it. This crate
//! holds that once: **one driver table** ([`Cuda`]), every function looked up a single time,
//! and typed helpers for contexts ([`PrimaryContext`], [`Cuda::create_context`]), device,
//! managed, pinned, mapped and registered host memory ([`DeviceBuffer`], [`HostBuffer`]),
//! stream-ordered allocation and pools, VMM reservations and mappings ([`Reservation`]),
//! kernels, and the raw pointer attributes ([`PointerAttributes`]).
//!
//! How it loads the driver is how the library does: the library that cudarc's dynamic loader
//! finds (`cudarc::driver::sys::culib`), every function looked up by name with an integer
//! return type (a `CUresult` the bindings do not know is a number, not undefined behaviour).
//! Loading calls nothing in the driver and never panics: a missing library is an
//! [`Error::NoLibrary`], a missing function stays absent in the table and calling it answers
//! [`Error::MissingSymbol`] naming it; [`Cuda::require`] checks the groups of functions a
//! program uses ([`symbols`]) up front.

#![warn(missing_docs)]

mod context;
mod device;
mod driver;
mod error;
mod kernel;
mod memory;
mod pointer;
mod stream;
pub mod symbols;
mod vmm;

pub use context::{Context, PrimaryContext};
pub use driver::Cuda;
pub use error::{Error, Result};
pub use kernel::{Function, Module};
pub use memory::{DeviceBuffer, HostBuffer, CU_MEMHOSTALLOC_DEVICEMAP, CU_MEM_ATTACH_GLOBAL};
pub use pointer::{
    PointerAttributes, ATTR_BUFFER_ID, ATTR_DEVICE_ORDINAL, ATTR_IS_MANAGED, ATTR_MAPPING_BASE_ADDR,
    ATTR_MAPPING_SIZE, ATTR_MEMORY_TYPE, ATTR_RANGE_SIZE, ATTR_RANGE_START_ADDR,
};
pub use stream::{MemPool, Stream, CU_STREAM_NON_BLOCKING};
pub use vmm::{Handle, Location, Reservation};

/// A device handle (`CUdevice`): an `int` in cuda.h.
pub type Device = std::ffi::c_int;

/// A device address (`CUdeviceptr`).
pub type DevicePtr = u64;
