//! The C handle of a monitor and the lifetime rules every exported function shares.
//!
//! A host may call `vram_monitor_free` while other threads are still inside calls on the same
//! monitor (a server shutting down rarely stops its request threads first). So the handle
//! counts the calls in progress: free marks it closing, refuses every call that begins after
//! that with `CLOSED`, waits for the calls already inside to return, and only then drops the
//! monitor. The handle itself is never deallocated: after free it stays as a tombstone of about
//! 2 KiB, so a call with a handle that was freed returns `CLOSED` instead of reading
//! freed memory (a host that creates and frees monitors in a loop keeps one tombstone per
//! monitor).
//!
//! The handle also owns the built-in HTTP endpoint when the host started one
//! (`vram_monitor_serve_http`): the monitor knows nothing of its outputs, the endpoint reads
//! the monitor's read view, and free stops it before it drops the monitor.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::panic::guard;
use crate::result::VramMonitorResult;
use vram_monitor::http::{HttpOptions, HttpServer};
use vram_monitor::monitor::Monitor;
use vram_monitor::sync::lock;
use vram_monitor::Error;

/// A residency monitor: registrations and one background thread. Opaque.
pub struct VramMonitor {
    /// Calls in progress, counted in slots of their own cache line, a thread always in the
    /// same one: threads registering at once do not all write one shared counter.
    calls: [CallSlot; CALL_SLOTS],
    /// Free has begun.
    closing: AtomicBool,
    /// The monitor; NULL once free has dropped it.
    monitor: AtomicPtr<Monitor>,
    /// Where free waits for the last call in progress to leave.
    drained: (Mutex<()>, Condvar),
    /// The built-in HTTP endpoint, while it serves (`vram_monitor_serve_http`).
    http: Mutex<Option<HttpServer>>,
}

const CALL_SLOTS: usize = 16;

#[repr(align(128))]
struct CallSlot(AtomicU64);

/// This thread's call slot (threads take slots in turn).
fn call_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % CALL_SLOTS;
    }
    SLOT.try_with(|slot| *slot).unwrap_or(0)
}

/// Tombstones stay reachable from here, so leak checkers see them as in use, not lost.
static TOMBSTONES: Mutex<Vec<usize>> = Mutex::new(Vec::new());

thread_local! {
    /// The handles this thread is inside a call on, innermost last: free from inside one of
    /// them (a user-data finaliser run by `set_callback`) would wait for itself.
    static INSIDE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// A call in progress on a live monitor; leaving it lets a waiting free go on.
pub(crate) struct Call<'a> {
    handle: &'a VramMonitor,
    monitor: &'a Monitor,
    slot: usize,
}

impl std::ops::Deref for Call<'_> {
    type Target = Monitor;
    fn deref(&self) -> &Monitor {
        self.monitor
    }
}

impl Call<'_> {
    /// The body of `vram_monitor_serve_http`: serves this monitor's read view on `address`
    /// (`None`: 127.0.0.1:9464) until `stop_http` or free; returns the address it listens on.
    pub(crate) fn serve_http(&self, address: Option<&str>) -> Result<std::net::SocketAddr, Error> {
        let address = vram_monitor::http::parse_address(address)?;
        let mut http = lock(&self.handle.http);
        if http.is_some() {
            return Err(Error::AlreadyServing);
        }
        let server = HttpServer::start(address, HttpOptions::default(), std::sync::Arc::new(self.monitor.view()))?;
        let bound = server.local_addr();
        *http = Some(server);
        Ok(bound)
    }

    /// The body of `vram_monitor_stop_http`: stops the endpoint and joins its thread; returns
    /// whether one was serving.
    pub(crate) fn stop_http(&self) -> bool {
        let server = lock(&self.handle.http).take();
        server.is_some()
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let me = self.handle as *const VramMonitor as usize;
        let _ = INSIDE.try_with(|inside| {
            let mut inside = inside.borrow_mut();
            if let Some(i) = inside.iter().rposition(|&h| h == me) {
                inside.remove(i);
            }
        });
        self.handle.leave(self.slot);
    }
}

impl VramMonitor {
    /// A new handle owning `monitor`.
    pub(crate) fn create(monitor: Monitor) -> *mut VramMonitor {
        let handle = Box::leak(Box::new(VramMonitor {
            calls: std::array::from_fn(|_| CallSlot(AtomicU64::new(0))),
            closing: AtomicBool::new(false),
            monitor: AtomicPtr::new(Box::into_raw(Box::new(monitor))),
            drained: (Mutex::new(()), Condvar::new()),
            http: Mutex::new(None),
        }));
        let address = handle as *mut VramMonitor;
        lock(&TOMBSTONES).push(address as usize);
        address
    }

    fn leave(&self, slot: usize) {
        self.calls[slot].0.fetch_sub(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            let (mutex, drained) = &self.drained;
            let _guard = lock(mutex);
            drained.notify_all();
        }
    }

    fn calls_in_progress(&self) -> u64 {
        self.calls.iter().map(|slot| slot.0.load(Ordering::SeqCst)).sum()
    }

    /// Enters a call: `CLOSED` once free has begun, `FORKED` in a forked child.
    pub(crate) fn enter(&self) -> Result<Call<'_>, VramMonitorResult> {
        let slot = call_slot();
        // Counted before looking at `closing`, and free sets `closing` before it counts (all
        // SeqCst): either free sees this call, or this call sees free.
        self.calls[slot].0.fetch_add(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            self.leave(slot);
            return Err(VramMonitorResult::Closed);
        }
        let monitor = self.monitor.load(Ordering::SeqCst);
        if monitor.is_null() {
            // Cannot happen while `closing` is clear; refuse rather than trust it.
            self.leave(slot);
            return Err(VramMonitorResult::Closed);
        }
        let me = self as *const VramMonitor as usize;
        let _ = INSIDE.try_with(|inside| inside.borrow_mut().push(me));
        // SAFETY: not NULL, and free drops it only after every call (this one) has left.
        let call = Call { handle: self, monitor: unsafe { &*monitor }, slot };
        if call.in_forked_child() {
            return Err(VramMonitorResult::Forked);
        }
        Ok(call)
    }

    /// The Rust monitor behind a C handle, for Rust code that holds one (for example to set
    /// a [`vram_monitor::DeviceHealthSource`], which has no C form), or `None` once
    /// `vram_monitor_free` has begun. The monitor stays alive while `body` runs: a free on
    /// another thread waits for it.
    pub fn with_monitor<R>(&self, body: impl FnOnce(&Monitor) -> R) -> Option<R> {
        let call = self.enter().ok()?;
        Some(body(&call))
    }

    /// The Rust monitor behind a C handle without entering a call, or `None` once free has
    /// dropped it.
    ///
    /// # Safety
    /// The caller must not let `vram_monitor_free` run on this handle while the reference
    /// lives (prefer [`VramMonitor::with_monitor`], which makes free wait).
    pub unsafe fn as_monitor(&self) -> Option<&Monitor> {
        // SAFETY: not NULL means not dropped yet; the caller keeps free away.
        unsafe { self.monitor.load(Ordering::SeqCst).as_ref() }
    }

    /// The body of `vram_monitor_free`.
    pub(crate) fn close(&self) -> VramMonitorResult {
        let me = self as *const VramMonitor as usize;
        // From inside a callback, or inside another call on this monitor on this thread (a
        // user-data finaliser run by set_callback): waiting would wait for ourselves.
        let inside = INSIDE.try_with(|inside| inside.borrow().contains(&me)).unwrap_or(false);
        match self.enter() {
            Err(VramMonitorResult::Forked) => return self.close_in_forked_child(),
            Err(other) => return other,
            Ok(call) => {
                if call.is_monitor_thread() || inside {
                    return VramMonitorResult::CalledFromCallback;
                }
            }
        }
        if self.closing.swap(true, Ordering::SeqCst) {
            // Another free won the race (or this is a second free).
            return VramMonitorResult::Closed;
        }
        {
            let (mutex, drained) = &self.drained;
            let mut guard = lock(mutex);
            while self.calls_in_progress() != 0 {
                // A timeout as well as the notification: a wake-up cannot be lost for good.
                guard = drained.wait_timeout(guard, Duration::from_millis(10)).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        // The endpoint first (it joins its thread; it reads only the monitor's read view),
        // then the monitor: its thread, the watchdog, the callback's user data.
        drop(lock(&self.http).take());
        let monitor = self.monitor.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !monitor.is_null() {
            // SAFETY: from Box::into_raw in create; no call is inside and none can enter.
            drop(unsafe { Box::from_raw(monitor) });
        }
        VramMonitorResult::Ok
    }

    /// In a forked child the calls counted in the parent's other threads never leave (those
    /// threads do not exist here): close without waiting, and leak the monitor (dropping it
    /// there neither joins nor runs finalisers: `Monitor::in_forked_child`). The HTTP
    /// endpoint stays in the tombstone, untouched: its lock may be held by a thread that does
    /// not exist here, and its thread is the parent's.
    fn close_in_forked_child(&self) -> VramMonitorResult {
        self.closing.store(true, Ordering::SeqCst);
        let monitor = self.monitor.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !monitor.is_null() {
            // SAFETY: as in close; Monitor's drop in a forked child only forgets its parts.
            drop(unsafe { Box::from_raw(monitor) });
        }
        VramMonitorResult::Forked
    }
}

/// The preamble of every exported function that takes a monitor, in one place (as rustls-ffi's
/// `try_ref_from_ptr!`): inside the panic guard, returns `NULL_ARGUMENT` for a NULL `handle`,
/// `CLOSED` once free has begun, `FORKED` in a forked child; otherwise runs `body` with the
/// [`Call`], which derefs to the monitor and keeps free waiting until `body` returns. `body`
/// checks the other arguments and converts; its `return` (and `try_ffi!`'s) is the function's
/// result.
///
/// # Safety
/// `handle` is NULL or a pointer from `vram_monitor_new` (freed or not: handles are never
/// deallocated, a freed one answers `CLOSED`).
pub(crate) unsafe fn on_monitor(handle: *const VramMonitor, body: impl FnOnce(&Call<'_>) -> VramMonitorResult) -> VramMonitorResult {
    guard(|| {
        if handle.is_null() {
            return VramMonitorResult::NullArgument;
        }
        // SAFETY: per this function's contract.
        match unsafe { &*handle }.enter() {
            Ok(call) => body(&call),
            Err(refused) => refused,
        }
    })
}
