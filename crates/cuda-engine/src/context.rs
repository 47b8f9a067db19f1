//! Contexts: the primary context an engine retains and makes current, one it creates, and the
//! calls that move contexts on and off a thread.

use std::ffi::{c_uint, c_void};

use crate::driver::Cuda;
use crate::error::{Error, Result};
use crate::Device;

/// A context handle (`CUcontext`). The null context means "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context(pub *mut c_void);

// SAFETY: a CUDA context handle may be used from any thread (the driver API is thread-safe).
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Context {
    /// No context: what `cuCtxSetCurrent` takes to leave the thread without one.
    pub const NULL: Context = Context(std::ptr::null_mut());

    /// Whether this is the null context.
    pub fn is_null(self) -> bool {
        self.0.is_null()
    }
}

/// A device's primary context, retained (`cuDevicePrimaryCtxRetain`) and released
/// (`cuDevicePrimaryCtxRelease_v2`) when dropped: what an engine holds while it runs.
pub struct PrimaryContext<'a> {
    cuda: &'a Cuda,
    device: Device,
    context: Context,
}

impl<'a> PrimaryContext<'a> {
    /// Retains `device`'s primary context (creating it if it is not active).
    pub fn retain(cuda: &'a Cuda, device: Device) -> Result<PrimaryContext<'a>> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        cuda.call(cuda.t.primary_ctx_retain, |f| unsafe { f(&mut raw, device) })?;
        Ok(PrimaryContext { cuda, device, context: Context(raw) })
    }

    /// Retains `device`'s primary context and makes it current on this thread: what an engine
    /// does first.
    pub fn retain_current(cuda: &'a Cuda, device: Device) -> Result<PrimaryContext<'a>> {
        let primary = PrimaryContext::retain(cuda, device)?;
        primary.make_current()?;
        Ok(primary)
    }

    /// Makes it current on this thread (`cuCtxSetCurrent`).
    pub fn make_current(&self) -> Result<()> {
        self.cuda.set_current(self.context)
    }

    /// The context handle.
    pub fn context(&self) -> Context {
        self.context
    }

    /// The device it belongs to.
    pub fn device(&self) -> Device {
        self.device
    }
}

impl Drop for PrimaryContext<'_> {
    fn drop(&mut self) {
        // SAFETY: releases the retain made in `retain`.
        let _ = self.cuda.call(self.cuda.t.primary_ctx_release, |f| unsafe { f(self.device) });
    }
}

impl Cuda {
    /// `cuCtxSetCurrent`.
    pub fn set_current(&self, context: Context) -> Result<()> {
        // SAFETY: a context handle from the driver, or null.
        self.call(self.t.ctx_set_current, |f| unsafe { f(context.0) })
    }

    /// `cuCtxGetCurrent`: the context current on this thread ([`Context::NULL`] for none).
    pub fn current(&self) -> Result<Context> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.call(self.t.ctx_get_current, |f| unsafe { f(&mut raw) })?;
        Ok(Context(raw))
    }

    /// `cuCtxPushCurrent_v2`.
    pub fn push(&self, context: Context) -> Result<()> {
        // SAFETY: a context handle from the driver.
        self.call(self.t.ctx_push, |f| unsafe { f(context.0) })
    }

    /// `cuCtxPopCurrent_v2`: the context taken off this thread.
    pub fn pop(&self) -> Result<Context> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.call(self.t.ctx_pop, |f| unsafe { f(&mut raw) })?;
        Ok(Context(raw))
    }

    /// `cuCtxSynchronize`: waits for the current context's work.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: a plain call.
        self.call(self.t.ctx_synchronize, |f| unsafe { f() })
    }

    /// `cuDevicePrimaryCtxRelease_v2`, for a retain not held by a [`PrimaryContext`].
    pub fn primary_context_release(&self, device: Device) -> Result<()> {
        // SAFETY: a plain call.
        self.call(self.t.primary_ctx_release, |f| unsafe { f(device) })
    }

    /// `cuDevicePrimaryCtxGetState`: the primary context's flags and whether it is active.
    /// Retains nothing, so it creates nothing.
    pub fn primary_context_state(&self, device: Device) -> Result<(c_uint, bool)> {
        let (mut flags, mut active) = (0, 0);
        // SAFETY: out-pointers to locals.
        self.call(self.t.primary_ctx_get_state, |f| unsafe { f(device, &mut flags, &mut active) })?;
        Ok((flags, active != 0))
    }

    /// `cuDevicePrimaryCtxReset_v2`: destroys every allocation of the primary context.
    pub fn primary_context_reset(&self, device: Device) -> Result<()> {
        // SAFETY: a plain call.
        self.call(self.t.primary_ctx_reset, |f| unsafe { f(device) })
    }

    /// A context of its own on `device`, current on this thread: `cuCtxCreate_v2`, else
    /// `cuCtxCreate_v4` (CUDA 12.5+, no parameters). Returns the context and the function that
    /// made it; on failure, what each function that exists answered (an empty list: the
    /// driver has neither).
    pub fn create_context(&self, device: Device) -> std::result::Result<(Context, &'static str), Vec<Error>> {
        let mut raw = std::ptr::null_mut();
        let mut said = Vec::new();
        if self.t.ctx_create_v2.get().is_ok() {
            // SAFETY: out-pointer to a local.
            match self.call(self.t.ctx_create_v2, |f| unsafe { f(&mut raw, 0, device) }) {
                Ok(()) => return Ok((Context(raw), self.t.ctx_create_v2.name())),
                Err(e) => said.push(e),
            }
        }
        if self.t.ctx_create_v4.get().is_ok() {
            // SAFETY: out-pointer to a local; NULL parameters.
            match self.call(self.t.ctx_create_v4, |f| unsafe { f(&mut raw, std::ptr::null_mut(), 0, device) }) {
                Ok(()) => return Ok((Context(raw), self.t.ctx_create_v4.name())),
                Err(e) => said.push(e),
            }
        }
        Err(said)
    }

    /// `cuCtxDestroy_v2`.
    pub fn destroy_context(&self, context: Context) -> Result<()> {
        // SAFETY: a context handle from the driver.
        self.call(self.t.ctx_destroy, |f| unsafe { f(context.0) })
    }
}
