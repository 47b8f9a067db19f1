//! The port through which integrity runs its kernel: the few driver calls that need a
//! context. Production uses the CUDA driver ([`CudaGpu`](crate::adapters::cuda::fingerprint::CudaGpu)); tests reach the same
//! adapter through the fake `libcuda`, or implement this trait for a model.

use crate::core::driver::DriverError;

/// A CUDA context, as an opaque address (never dereferenced here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextHandle(pub usize);

/// The fingerprint kernel loaded in one context: the module, the function, a stream of our
/// own and the scratch buffer that receives one value per chunk.
#[derive(Debug)]
pub struct Kernel {
    /// `CUmodule`.
    pub module: usize,
    /// `CUfunction`.
    pub function: usize,
    /// `CUstream`, non-blocking: it never waits for the engine's legacy default stream.
    pub stream: usize,
    /// Device address of the scratch buffer.
    pub scratch: u64,
    /// Values the scratch buffer holds: the most chunks one launch may cover.
    pub scratch_chunks: u64,
}

/// What integrity asks of the driver. Every method but [`Gpu::current_context`] and the
/// primary-context pair runs with the lent context current on the calling thread (pushed by
/// [`Gpu::push`]).
pub trait Gpu: Send + Sync {
    /// The context current on the calling thread and its device, or `None` when none is.
    fn current_context(&self) -> Result<Option<(ContextHandle, i32)>, DriverError>;
    /// If `context` (current on the calling thread, so alive: the engine is inside our
    /// call) is `device`'s primary context, takes a reference to it and returns true. Never
    /// activates an inactive primary context (that would create one).
    fn retain_if_primary(&self, device: i32, context: ContextHandle) -> Result<bool, DriverError>;
    /// Gives back a reference taken by [`Gpu::retain_if_primary`].
    fn release_primary(&self, device: i32);
    /// Makes `context` current on the calling thread, above whatever was.
    fn push(&self, context: ContextHandle) -> Result<(), DriverError>;
    /// Undoes [`Gpu::push`].
    fn pop(&self);
    /// Waits for all work in the current context (every stream of the engine's): a seal
    /// must read the bytes after the writes the engine issued before sealing.
    fn synchronize(&self) -> Result<(), DriverError>;
    /// Loads the kernel and makes its stream and scratch buffer, in the current context.
    fn load(&self) -> Result<Kernel, DriverError>;
    /// Frees what [`Gpu::load`] made (errors ignored: the context may be dead already).
    fn unload(&self, kernel: Kernel);
    /// Fingerprints `[base, base + length)`, whose first word is word `first_word` of its
    /// registration, into `out` (one value per chunk, at most `kernel.scratch_chunks`), and
    /// waits for the answer.
    fn fingerprint(&self, kernel: &Kernel, base: u64, length: u64, first_word: u64, out: &mut [u64]) -> Result<(), DriverError>;
}
