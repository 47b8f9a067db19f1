"""Events and the ctypes thunks that deliver them.

The library calls a callback's user-data finaliser once the callback can never run again (it
was replaced, or the monitor was freed). Each Python callback's ctypes thunk stays in
`_live_callbacks` until then: dropping it earlier could free the thunk while the monitor
thread is still inside it.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, Callable, Dict, Optional, Type, Union

from . import _native
from .results import EventKind, Verdict, enum_or_int

__all__ = ["Event", "EventHandler", "ErrorHandler"]


@dataclasses.dataclass(frozen=True)
class Event:
    """One event, copied out of the C struct (it may be kept)."""

    kind: Union[EventKind, int]
    registration_id: int
    label: str
    ptr: int
    size: int
    device: int
    verdict: Union[Verdict, int]
    previous_verdict: Union[Verdict, int]
    healthy: bool
    message: str
    timestamp_unix_ms: int
    #: MODIFIED: 1 MiB chunks found different from the seal so far (0 for other kinds).
    modified_chunks: int = 0
    #: MODIFIED: byte offset of the first differing chunk in the registration.
    first_modified_offset: int = 0
    #: What went wrong, as the log records' `error_kind` names it ("residency_violation",
    #: "check_failed", "content_modified", "integrity_failed", "device_memory_fault", or for a
    #: change to unhealthy its cause, also "stalled"); "" for a recovery or health regained.
    error_kind: str = ""

    @staticmethod
    def _from_c(e: _native.VramMonitorEvent) -> "Event":
        return Event(
            kind=enum_or_int(EventKind, e.kind),
            registration_id=e.registration_id,
            label=(e.label or b"").decode("utf-8", "replace"),
            ptr=e.ptr or 0,
            size=e.size,
            device=e.device,
            verdict=enum_or_int(Verdict, e.verdict),
            previous_verdict=enum_or_int(Verdict, e.previous_verdict),
            healthy=bool(e.healthy),
            message=(e.message or b"").decode("utf-8", "replace"),
            timestamp_unix_ms=e.timestamp_unix_ms,
            modified_chunks=e.modified_chunks,
            first_modified_offset=e.first_modified_offset,
            error_kind=(e.error_kind or b"").decode("utf-8", "replace"),
        )


EventHandler = Callable[[Event], Any]
ErrorHandler = Callable[[Type[BaseException], BaseException, Optional[TracebackType]], Any]

_live_callbacks: Dict[int, Any] = {}
_live_lock = threading.Lock()
_next_key = [1]

# Set while the current thread runs one of our thunks (the monitor thread or the watchdog
# thread, whose HEALTH_CHANGED events for stalls may run concurrently with the monitor thread's):
# there, vram_monitor_free refuses (CALLED_FROM_CALLBACK) and closing is handed to another thread.
_in_callback = threading.local()


def in_callback() -> bool:
    """Whether the calling thread is inside an event callback of this package."""
    return getattr(_in_callback, "depth", 0) > 0


def _default_on_error(exc_type: Type[BaseException], exc: BaseException, tb: Optional[TracebackType]) -> None:
    sys.stderr.write("vram_monitor: an event callback raised (ignored):\n")
    traceback.print_exception(exc_type, exc, tb, file=sys.stderr)


def _release_user_data(user_data: Optional[int]) -> None:
    with _live_lock:
        thunk = _live_callbacks.pop(user_data or 0, None)
    # Dropped outside the lock: the thunk's closure may hold the last reference to a Monitor,
    # whose finaliser may run here.
    del thunk


RELEASE_THUNK = _native.USER_DATA_FREE(_release_user_data)


def make_thunk(handler: EventHandler, on_error: Optional[ErrorHandler]) -> Any:
    """The ctypes function for `handler`; nothing it raises unwinds into the library."""

    def call(event_ptr: Any, _user_data: Any) -> None:
        _in_callback.depth = getattr(_in_callback, "depth", 0) + 1
        try:
            handler(Event._from_c(event_ptr.contents))
        except BaseException:  # noqa: B902 - nothing may unwind into the library
            try:
                (on_error or _default_on_error)(*sys.exc_info())
            except BaseException:
                pass
        finally:
            _in_callback.depth -= 1

    return _native.EVENT_CALLBACK(call)


def keep(thunk: Any) -> int:
    """Keeps `thunk` alive until the library releases it; returns its user-data key."""
    with _live_lock:
        key = _next_key[0]
        _next_key[0] += 1
        _live_callbacks[key] = thunk
    return key


def release(key: int) -> None:
    """Drops a thunk the library never took (set_callback failed)."""
    _release_user_data(key)
