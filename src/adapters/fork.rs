//! Telling a forked child from the process that created a monitor, on every call, cheaply.
//!
//! `getpid()` is a system call (glibc no longer caches it): a few hundred nanoseconds on a
//! virtual machine, most of a registration's budget. A `pthread_atfork` child handler counts
//! forks instead, and a check is one relaxed atomic load. Where the handler cannot be
//! installed, the pid comparison is kept.

use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    // Async-signal-safe: an atomic add, nothing else.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

extern "C" {
    fn pthread_atfork(
        prepare: Option<extern "C" fn()>,
        parent: Option<extern "C" fn()>,
        child: Option<extern "C" fn()>,
    ) -> c_int;
}

fn handler_installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    // SAFETY: registers a plain function; pthread_atfork is in every libc that std links.
    *INSTALLED.get_or_init(|| unsafe { pthread_atfork(None, None, Some(count_fork_in_child)) } == 0)
}

/// Remembers the process a monitor was created in.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    forks: u64,
    pid: u32,
    by_handler: bool,
}

impl Origin {
    /// The calling process, now.
    pub fn here() -> Origin {
        let by_handler = handler_installed();
        Origin { forks: FORKS.load(Ordering::Relaxed), pid: std::process::id(), by_handler }
    }

    /// Whether the caller runs in a child forked since [`Origin::here`] (`vfork` children,
    /// which may only call `exec`, are not detected).
    pub fn is_forked_child(&self) -> bool {
        if self.by_handler {
            FORKS.load(Ordering::Relaxed) != self.forks
        } else {
            std::process::id() != self.pid
        }
    }
}
