//! Locking as the whole library does it.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, also when a thread panicked while holding it: every critical section in the
/// library leaves its data consistent, so a poisoned lock is still usable, and a panic must
/// never turn into a second one in the host.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
