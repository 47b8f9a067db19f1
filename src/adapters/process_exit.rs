//! The host process exiting while monitors still run.
//!
//! `exit()` runs the host's `atexit` handlers and static destructors while every other thread,
//! the monitor's included, keeps running. A callback that fires after the host's statics were
//! destroyed writes into freed memory (a C++ callback filling a static `std::map` crashed 11
//! runs in 20). So the library registers an exit hook of its own; from the moment it runs no
//! callback (event or log) starts, and the hook waits for callbacks already running to
//! return. Checks go on (the driver answers `CUDA_ERROR_DEINITIALIZED` once its own exit
//! handlers ran, which is harmless): what they find reaches the snapshot, the reports and
//! `check_now`'s summary, never the host's code.
//!
//! `atexit` handlers run in the reverse order of registration, so the hook is registered again
//! each time a monitor is created or a callback is set (at most [`MAX_HOOKS`] times): it runs
//! before the destructors of every static object constructed before the latest of those
//! calls. The first registration to run does the work; the others find it done.
//!
//! Python finalises its interpreter before the C `atexit` handlers run, and a thread that
//! enters Python then is ended with a forced unwind that no Rust frame may see; the Python
//! package closes its monitors in its own `atexit` handler, and as a second line the library
//! delivers nothing while the process's Python interpreter (if there is one) reports that it
//! is finalising.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How many times the hook is registered at most (each registration costs the C library a
/// few bytes for the rest of the process).
pub const MAX_HOOKS: usize = 256;

/// How long the hook waits for callbacks in progress before letting the exit go on.
pub const EXIT_WAIT: Duration = Duration::from_secs(2);

static EXITING: AtomicBool = AtomicBool::new(false);
static HOOKS: AtomicUsize = AtomicUsize::new(0);
/// Callbacks running now, on every thread.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Callbacks running on this thread (a callback that logs nests a log callback).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

extern "C" {
    fn atexit(hook: extern "C" fn()) -> c_int;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

extern "C" fn on_exit() {
    if EXITING.swap(true, Ordering::SeqCst) {
        return;
    }
    // exit() called from inside a callback must not wait for itself.
    let own = DEPTH.try_with(Cell::get).unwrap_or(0);
    let deadline = Instant::now() + EXIT_WAIT;
    while RUNNING.load(Ordering::SeqCst) > own && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Registers the exit hook (again): see the module documentation.
pub fn arm() {
    if HOOKS.fetch_add(1, Ordering::Relaxed) < MAX_HOOKS {
        // SAFETY: a plain function with no arguments, as atexit expects. A failed
        // registration (out of memory) leaves the earlier ones.
        unsafe { atexit(on_exit) };
    }
}

/// Whether the process has begun to exit (the hook ran).
pub fn exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

/// Runs `callback` unless the process is exiting or its Python interpreter is finalising;
/// the exit hook waits for it to return.
pub fn deliver<R>(callback: impl FnOnce() -> R) -> Option<R> {
    if exiting() || python_finalizing() {
        return None;
    }
    RUNNING.fetch_add(1, Ordering::SeqCst);
    // Checked again after counting ourselves: either the hook sees us and waits, or we see it.
    if exiting() {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let _ = DEPTH.try_with(|d| d.set(d.get().saturating_sub(1)));
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _ = DEPTH.try_with(|d| d.set(d.get() + 1));
    let _leave = Leave;
    Some(callback())
}

type IsFinalizing = unsafe extern "C" fn() -> c_int;

/// `Py_IsFinalizing` (Python 3.13+) or `_Py_IsFinalizing` (3.x before), looked up once in the
/// process's global symbols; `None` in a process without Python. Both read one atomic field
/// and may be called without the GIL.
fn python_finalizing() -> bool {
    static PROBE: OnceLock<Option<IsFinalizing>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        // RTLD_DEFAULT is the null handle on glibc and musl.
        for name in [c"Py_IsFinalizing", c"_Py_IsFinalizing"] {
            // SAFETY: dlsym with a NUL-terminated name; the symbol, if any, has this type.
            let found = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
            if !found.is_null() {
                return Some(unsafe { std::mem::transmute::<*mut c_void, IsFinalizing>(found) });
            }
        }
        None
    });
    // SAFETY: the interpreter's own function, callable from any thread.
    probe.is_some_and(|f| unsafe { f() } != 0)
}
