"""The library's log records, routed to a Python function or to `logging` (process-wide)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from . import _native

__all__ = ["LogHandler", "detach_log_handler", "log_to_python_logging", "set_log_handler"]

LogHandler = Callable[[int, str, str], Any]

_log_handler: Optional[LogHandler] = None
_attached = False
_lock = threading.Lock()
_LOG_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: 5}


def _log_trampoline(level: int, target: Optional[bytes], message: Optional[bytes], _user_data: Any) -> None:
    handler = _log_handler
    if handler is None:
        return
    try:
        handler(level, (target or b"").decode("utf-8", "replace"), (message or b"").decode("utf-8", "replace"))
    except BaseException:  # noqa: B902 - nothing may unwind into the library
        pass


_LOG_THUNK = _native.LOG_CALLBACK(_log_trampoline)


def set_log_handler(handler: Optional[LogHandler]) -> None:
    """Routes the library's log records (process-wide) to `handler(level, target, message)`,
    where level is 1 error .. 5 trace; `None` sends them back to stderr (filtered by
    $VRAM_MONITOR_LOG, default warnings and above). The handler runs on whichever thread
    logged; what it raises is dropped. It is detached at interpreter exit (see lifecycle)."""
    global _log_handler, _attached
    from . import lifecycle

    lifecycle.install()
    with _lock:
        _log_handler = handler
        # The library's sink is behind a lock that a record being delivered holds: the swap
        # waits for it. ctypes releases the GIL for the call, so a record waiting for the GIL
        # on another thread finishes first.
        _native.library().vram_monitor_set_log_callback(_LOG_THUNK if handler is not None else _native.LOG_CALLBACK(), None)
        _attached = handler is not None


def detach_log_handler() -> None:
    """Removes the handler from the library (records go back to stderr). When it returns, no
    record is being delivered to Python and none will be. Idempotent."""
    global _log_handler, _attached
    with _lock:
        if not _attached:
            return
        _native.library().vram_monitor_set_log_callback(_native.LOG_CALLBACK(), None)
        _attached = False
        _log_handler = None


def log_to_python_logging(logger: Optional[logging.Logger] = None) -> logging.Logger:
    """Sends the library's log records to Python's `logging` (logger "vram_monitor" by
    default), at the matching levels (trace as level 5). Returns the logger."""
    target_logger = logger or logging.getLogger("vram_monitor")

    def handler(level: int, target: str, message: str) -> None:
        target_logger.log(_LOG_LEVELS.get(level, logging.INFO), "%s", message, extra={"vram_monitor_target": target})

    set_log_handler(handler)
    return target_logger
