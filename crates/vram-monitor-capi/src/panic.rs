//! The guard around every exported function's body: a panic becomes a result code and never
//! unwinds into the host.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::result::VramMonitorResult;

/// Runs `body`; a panic becomes [`VramMonitorResult::Panic`].
pub(crate) fn guard(body: impl FnOnce() -> VramMonitorResult) -> VramMonitorResult {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(VramMonitorResult::Panic)
}
