"""What keeps the interpreter's exit and the garbage collector from hurting the host.

Exit. Python finalises the interpreter before the C library's own exit hook runs. A ctypes
thunk entered on the monitor thread after finalisation began would call PyGILState_Ensure,
which ends the thread with pthread_exit; that forced unwind would meet the library's
catch_unwind and abort the process. So an `atexit` handler (Python runs those before
finalising, while daemon threads still live) closes every live Monitor and detaches the log
handler: when it returns, no event or log callback is running or can start. Closing waits for
a callback in progress; ctypes releases the GIL during the foreign call, so a callback that
waits for the GIL gets it and finishes.

Collection on the monitor thread. A Monitor whose last reference drops inside one of its own
callbacks (or that the GC collects there) cannot be freed there: the library refuses
(CALLED_FROM_CALLBACK) rather than join its own thread. The handle is then passed to a
short-lived closer thread, which frees it once the callback returns, so the C monitor stops.
"""

from __future__ import annotations

import atexit
import ctypes
import threading
import weakref
from typing import TYPE_CHECKING, List

from . import _native
from .results import Result

if TYPE_CHECKING:  # pragma: no cover
    from .monitor import Monitor

__all__ = ["install", "live_monitors", "close_all", "free_elsewhere"]

_live: "weakref.WeakSet[Monitor]" = weakref.WeakSet()
_installed = False
_exiting = False
_lock = threading.Lock()
_closers: List[threading.Thread] = []


def install() -> None:
    """Registers the exit handler (once)."""
    global _installed
    with _lock:
        if not _installed:
            atexit.register(close_all)
            _installed = True


def track(monitor: "Monitor") -> None:
    """Remembers a live monitor, so that exit closes it."""
    install()
    with _lock:
        _live.add(monitor)


def live_monitors() -> "List[Monitor]":
    """The monitors not closed yet (strong references: a snapshot)."""
    with _lock:
        return [m for m in list(_live) if not m.closed]


def exiting() -> bool:
    """Whether the exit handler has run (the interpreter is shutting down)."""
    return _exiting


def close_all() -> None:
    """Closes every live monitor, waits for handles passed to closer threads, then detaches
    the log handler. Runs at interpreter exit; safe to call at any time."""
    global _exiting
    _exiting = True
    for monitor in live_monitors():
        try:
            monitor.close()
        except Exception:  # noqa: BLE001 - exit must go on; a refusal here leaves the C hook
            pass
    for thread in list(_closers):
        thread.join()
    from .logging_bridge import detach_log_handler

    try:
        detach_log_handler()
    except Exception:  # noqa: BLE001
        pass


def _free(handle: int) -> None:
    try:
        _native.library().vram_monitor_free(ctypes.c_void_p(handle))
    except Exception:  # noqa: BLE001 - nothing to report to on a closer thread
        pass


def free_elsewhere(handle: int) -> bool:
    """Frees `handle` on a new thread (the caller is on the monitor thread, where free is
    refused). Returns False when no thread could be started (the interpreter is finalising:
    the exit handler or the library's exit hook then stops the monitor)."""

    def run() -> None:
        _free(handle)
        with _lock:
            if thread in _closers:
                _closers.remove(thread)

    thread = threading.Thread(target=run, name="vram-monitor-closer", daemon=True)
    with _lock:
        _closers.append(thread)
    try:
        thread.start()
        return True
    except RuntimeError:
        with _lock:
            _closers.remove(thread)
        return False


def free_now_or_elsewhere(handle: int) -> int:
    """vram_monitor_free(handle); when refused on the monitor thread, hands it to a closer
    thread. Returns the library's result (CALLED_FROM_CALLBACK when handed over)."""
    code = _native.library().vram_monitor_free(ctypes.c_void_p(handle))
    if code == Result.CALLED_FROM_CALLBACK:
        free_elsewhere(handle)
    return int(code)

