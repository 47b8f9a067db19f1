"""The C API's codes as Python enums, and the exceptions a failed call raises."""

from __future__ import annotations

import enum
from typing import Optional, Type, TypeVar, Union

from . import _native

__all__ = [
    "EventKind",
    "MonitorClosed",
    "Result",
    "SignalStatus",
    "Verdict",
    "VramMonitorError",
    "check",
    "enum_or_int",
]


class Result(enum.IntEnum):
    """The C API's result codes (VRAM_MONITOR_RESULT_*)."""

    OK = 0
    NULL_ARGUMENT = 100
    INVALID_ARGUMENT = 101
    INVALID_LABEL = 102
    BUFFER_TOO_SMALL = 103
    UNKNOWN_REGISTRATION = 104
    UNKNOWN_FORMAT = 105
    DUPLICATE_RANGE = 106
    ENTRIES_FAILED = 107
    REFUSED_MANAGED = 201
    REFUSED_HOST = 202
    REFUSED_NOT_MAPPED = 203
    REFUSED_REPLACED = 204
    REFUSED_OUT_OF_RANGE = 205
    REFUSED_WRONG_DEVICE = 206
    DRIVER_NOT_FOUND = 300
    DRIVER_SYMBOL_MISSING = 301
    DRIVER_INIT_FAILED = 302
    DRIVER_ERROR = 303
    CALLED_FROM_CALLBACK = 400
    THREAD_SPAWN_FAILED = 401
    STOPPED = 402
    FORKED = 403
    CLOSED = 404
    PANIC = 500
    HTTP_BIND_FAILED = 600
    HTTP_ALREADY_SERVING = 601
    INTEGRITY_NOT_ENABLED = 700
    NO_CURRENT_CONTEXT = 701
    CONTEXT_WRONG_DEVICE = 702
    INTEGRITY_ALREADY_ENABLED = 703
    ALREADY_SEALED = 704
    NOT_SEALED = 705
    NOT_RESIDENT = 706
    KERNEL_UNAVAILABLE = 707
    INTEGRITY_FAILED = 708


class Verdict(enum.IntEnum):
    """Where a registration's memory is (VRAM_MONITOR_VERDICT_*)."""

    RESIDENT = 0
    MANAGED = 1
    HOST = 2
    NOT_MAPPED = 3
    REPLACED = 4
    OUT_OF_RANGE = 5
    WRONG_DEVICE = 6
    CHECK_FAILED = 7
    MODIFIED = 8


class EventKind(enum.IntEnum):
    """What an event reports (VRAM_MONITOR_EVENT_KIND_*)."""

    VIOLATION = 1
    RECOVERED = 2
    HEALTH_CHANGED = 3
    CHECK_FAILED = 4
    DEVICE_FAULT = 5
    MODIFIED = 6
    INTEGRITY_FAILED = 7


class SignalStatus(enum.IntEnum):
    """Whether a device-health signal could be read (VRAM_MONITOR_SIGNAL_STATUS_*)."""

    UNAVAILABLE = 0
    UNSUPPORTED = 1
    SUPPORTED = 2


E = TypeVar("E", bound=enum.IntEnum)


def enum_or_int(enum_type: Type[E], value: int) -> Union[E, int]:
    """`enum_type(value)`, or the plain int for a value this package does not know (a newer
    library)."""
    try:
        return enum_type(value)
    except ValueError:
        return value


def result_str(code: int) -> str:
    """The library's description of a result code (vram_monitor_result_str)."""
    try:
        return str(_native.library().vram_monitor_result_str(int(code)).decode())
    except OSError:
        return "result %d" % int(code)


class VramMonitorError(Exception):
    """A C call failed. `code` is the result code (a `Result` where known, else an int)."""

    def __init__(self, code: int, what: str) -> None:
        self.code: Union[Result, int] = enum_or_int(Result, int(code))
        self.what = what
        super().__init__("%s: %s (%d)" % (what, result_str(code), int(code)))

    @property
    def refused(self) -> bool:
        """Whether registration was refused because the memory is not resident."""
        return 200 <= int(self.code) < 300

    @property
    def verdict(self) -> Optional[Union[Verdict, int]]:
        """For a refusal, the verdict that caused it (else None)."""
        if self.refused:
            return enum_or_int(Verdict, int(self.code) - 200)
        return None


class MonitorClosed(VramMonitorError):
    """The monitor is closed or being closed (VRAM_MONITOR_RESULT_CLOSED, 404): a call that
    began after close() began, on any thread."""

    def __init__(self, what: str) -> None:
        super().__init__(Result.CLOSED, what)


def check(code: int, what: str) -> None:
    """Raises for a result other than OK: MonitorClosed for CLOSED, else VramMonitorError."""
    if code == Result.OK:
        return
    if code == Result.CLOSED:
        raise MonitorClosed(what)
    raise VramMonitorError(code, what)
