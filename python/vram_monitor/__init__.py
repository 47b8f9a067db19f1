"""vram_monitor: prove that a PyTorch or CuPy process's weights stay in GPU memory.

A thin layer over the C API of libvram_monitor (ctypes; no compiled extension). The library
is found through $VRAM_MONITOR_LIBRARY, next to this package, the loader path (an installed
prefix on LD_LIBRARY_PATH or in the ldconfig cache), or a checkout's target/ folder.

    import torch, vram_monitor

    weights = torch.empty(1 << 28, dtype=torch.float16, device="cuda")
    with vram_monitor.Monitor(interval_ms=60_000) as monitor:
        monitor.set_callback(lambda event: print(event.message))
        monitor.register(weights, "model.embed_tokens")      # a tensor, or (ptr, nbytes)
        print(monitor.check_now())
        print(monitor.health())                              # a dataclass: serve .healthy
        print(monitor.report())

Registering takes no reference to the tensor: the point is to notice when its memory goes.
The monitor guards where memory lives, not which tensor owns it: a block that PyTorch's
caching allocator hands to another tensor without returning it to the driver still looks
resident. Register long-lived weights, not activations.

Callbacks run on the monitor's own thread ("vram-monitor"), one at a time, with the GIL held
for the call. An exception raised by a callback does not reach the library: it goes to the
`on_error` function given with the callback (default: a traceback on stderr).
"""

import dataclasses
import enum
import json
import logging
import sys
import threading
import traceback
import ctypes

from . import _native
from .tensors import buffer_range

__all__ = [
    "CheckSummary",
    "Event",
    "EventKind",
    "Health",
    "Monitor",
    "Registration",
    "Result",
    "Verdict",
    "VramMonitorError",
    "buffer_range",
    "library_path",
    "library_version",
    "log_to_python_logging",
    "set_log_handler",
]

__version__ = "0.1.0"

_lib = None
_lib_lock = threading.Lock()


def _library():
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _native.load()
        return _lib


class Result(enum.IntEnum):
    """The C API's result codes (VRAM_MONITOR_RESULT_*)."""

    OK = 0
    NULL_ARGUMENT = 100
    INVALID_ARGUMENT = 101
    INVALID_LABEL = 102
    BUFFER_TOO_SMALL = 103
    UNKNOWN_REGISTRATION = 104
    UNKNOWN_FORMAT = 105
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
    PANIC = 500
    HTTP_BIND_FAILED = 600
    HTTP_ALREADY_SERVING = 601


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


class EventKind(enum.IntEnum):
    """What an event reports (VRAM_MONITOR_EVENT_KIND_*)."""

    VIOLATION = 1
    RECOVERED = 2
    HEALTH_CHANGED = 3
    CHECK_FAILED = 4
    DEVICE_FAULT = 5


def _enum_or_int(enum_type, value):
    try:
        return enum_type(value)
    except ValueError:
        return value


class VramMonitorError(Exception):
    """A C call failed. `code` is the result code (a `Result` where known, else an int)."""

    def __init__(self, code, what):
        self.code = _enum_or_int(Result, code)
        text = _library().vram_monitor_result_str(int(code)).decode()
        super().__init__("%s: %s (%d)" % (what, text, int(code)))

    @property
    def refused(self):
        """Whether registration was refused because the memory is not resident."""
        return 200 <= int(self.code) < 300

    @property
    def verdict(self):
        """For a refusal, the verdict that caused it (else None)."""
        if self.refused:
            return _enum_or_int(Verdict, int(self.code) - 200)
        return None


def _check(code, what):
    if code != Result.OK:
        raise VramMonitorError(code, what)


@dataclasses.dataclass(frozen=True)
class Health:
    """The health snapshot (vram_monitor_health). Serve `healthy` from your health endpoint."""

    healthy: bool
    last_check_failed: bool
    registrations: int
    tracked_bytes: int
    current_violations: int
    total_violations: int
    checks_completed: int
    checks_failed: int
    last_check_unix_ms: int
    last_check_duration_us: int
    process_vram_bytes: int
    process_vram_source: str
    interval_ms: int
    device_faults: int

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CheckSummary:
    """The result of one full check (vram_monitor_check_now)."""

    checked: int
    resident: int
    violations: int
    check_failures: int
    duration_us: int
    healthy: bool


@dataclasses.dataclass(frozen=True)
class Event:
    """One event, copied out of the C struct (it may be kept)."""

    kind: EventKind
    registration_id: int
    label: str
    ptr: int
    size: int
    device: int
    verdict: Verdict
    previous_verdict: Verdict
    healthy: bool
    message: str
    timestamp_unix_ms: int

    @staticmethod
    def _from_c(e):
        return Event(
            kind=_enum_or_int(EventKind, e.kind),
            registration_id=e.registration_id,
            label=(e.label or b"").decode("utf-8", "replace"),
            ptr=e.ptr or 0,
            size=e.size,
            device=e.device,
            verdict=_enum_or_int(Verdict, e.verdict),
            previous_verdict=_enum_or_int(Verdict, e.previous_verdict),
            healthy=bool(e.healthy),
            message=(e.message or b"").decode("utf-8", "replace"),
            timestamp_unix_ms=e.timestamp_unix_ms,
        )


_VRAM_SOURCES = {0: "unknown", 1: "nvml_process", 2: "device_used"}


def library_version():
    """The version of the libvram_monitor actually loaded ("MAJOR.MINOR.PATCH")."""
    return _library().vram_monitor_version().decode()


def library_path():
    """The path or name the library was loaded from."""
    return _library().vram_monitor_loaded_from


# ---- callbacks ---------------------------------------------------------------------------------
#
# The library calls a callback's user-data finaliser once the callback can never run again (it
# was replaced, or the monitor was freed). Each Python callback's ctypes thunk stays in
# _live_callbacks until then: dropping it earlier could free the thunk while the monitor
# thread is still inside it.

_live_callbacks = {}
_live_lock = threading.Lock()
_next_key = [1]


def _default_on_error(exc_type, exc, tb):
    sys.stderr.write("vram_monitor: an event callback raised (ignored):\n")
    traceback.print_exception(exc_type, exc, tb, file=sys.stderr)


def _release_user_data(user_data):
    with _live_lock:
        _live_callbacks.pop(user_data, None)


_RELEASE_THUNK = _native.USER_DATA_FREE(_release_user_data)


def _make_thunk(handler, on_error):
    def call(event_ptr, _user_data):
        try:
            handler(Event._from_c(event_ptr.contents))
        except BaseException:  # noqa: B902 - nothing may unwind into the library
            try:
                (on_error or _default_on_error)(*sys.exc_info())
            except BaseException:
                pass

    return _native.EVENT_CALLBACK(call)


# ---- log records -------------------------------------------------------------------------------

_log_handler = None
_LOG_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: 5}


def _log_trampoline(level, target, message, _user_data):
    handler = _log_handler
    if handler is None:
        return
    try:
        handler(level, (target or b"").decode("utf-8", "replace"), (message or b"").decode("utf-8", "replace"))
    except BaseException:
        pass


_LOG_THUNK = _native.LOG_CALLBACK(_log_trampoline)


def set_log_handler(handler):
    """Routes the library's log records (process-wide) to `handler(level, target, message)`,
    where level is 1 error .. 5 trace; `None` sends them back to stderr (filtered by
    $VRAM_MONITOR_LOG, default warnings and above). The handler runs on whichever thread
    logged; what it raises is dropped."""
    global _log_handler
    _log_handler = handler
    _library().vram_monitor_set_log_callback(_LOG_THUNK if handler is not None else _native.LOG_CALLBACK(), None)


def log_to_python_logging(logger=None):
    """Sends the library's log records to Python's `logging` (logger "vram_monitor" by
    default), at the matching levels (trace as level 5)."""
    logger = logger or logging.getLogger("vram_monitor")

    def handler(level, target, message):
        logger.log(_LOG_LEVELS.get(level, logging.INFO), "%s", message, extra={"vram_monitor_target": target})

    set_log_handler(handler)
    return logger


# ---- the monitor -------------------------------------------------------------------------------


class Registration:
    """A registration that is unregistered when the `with` block ends (or on unregister())."""

    def __init__(self, monitor, registration_id):
        self.monitor = monitor
        self.id = registration_id
        self._active = True

    def unregister(self):
        """Unregisters now; raises VramMonitorError if it was already removed."""
        if not self._active:
            raise VramMonitorError(Result.UNKNOWN_REGISTRATION, "Registration.unregister (already unregistered)")
        self._active = False
        self.monitor.unregister(self.id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._active:
            self._active = False
            if not self.monitor.closed:
                try:
                    self.monitor.unregister(self.id)
                except VramMonitorError:
                    pass
        return False

    def __repr__(self):
        return "Registration(id=%d%s)" % (self.id, "" if self._active else ", unregistered")


class Monitor:
    """A monitor and its background thread. A context manager: leaving the block (or close())
    stops and joins the thread; no callback runs afterwards."""

    def __init__(self, interval_ms=60_000):
        lib = _library()
        handle = ctypes.c_void_p()
        _check(lib.vram_monitor_new(int(interval_ms), ctypes.byref(handle)), "vram_monitor_new")
        self._lib = lib
        self._handle = handle

    # -- lifetime --

    @property
    def closed(self):
        return self._handle is None

    def _h(self):
        if self._handle is None:
            raise ValueError("the monitor is closed")
        return self._handle

    def close(self):
        """Stops the monitor thread and frees the monitor (idempotent). Refused (raises) when
        called from one of its callbacks."""
        if self._handle is None:
            return
        _check(self._lib.vram_monitor_free(self._handle), "vram_monitor_free")
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            if getattr(self, "_handle", None) is not None:
                self._lib.vram_monitor_free(self._handle)
                self._handle = None
        except Exception:
            pass

    # -- registrations --

    def register(self, buffer, label, nbytes=None):
        """Checks the memory at once and registers it if it is resident; returns the id.

        `buffer` is a torch tensor, a CuPy array, anything with `__cuda_array_interface__`,
        a `(ptr, nbytes)` pair, or an integer address with `nbytes`. Memory that is not
        resident raises VramMonitorError with `.refused` true and `.verdict` saying why."""
        ptr, size = buffer_range(buffer) if nbytes is None else (int(buffer), int(nbytes))
        out = ctypes.c_uint64()
        _check(
            self._lib.vram_monitor_register(self._h(), ctypes.c_void_p(ptr), size, label.encode("utf-8"), ctypes.byref(out)),
            "vram_monitor_register(%r)" % label,
        )
        return out.value

    def guard(self, buffer, label, nbytes=None):
        """register(), returned as a Registration for a `with` block."""
        return Registration(self, self.register(buffer, label, nbytes))

    def unregister(self, registration_id):
        _check(self._lib.vram_monitor_unregister(self._h(), int(registration_id)), "vram_monitor_unregister")

    # -- callbacks --

    def set_callback(self, handler, on_error=None):
        """Sets `handler(event)` (an Event) to receive events on the monitor thread; None
        removes it. What it raises goes to `on_error(exc_type, exc, tb)`."""
        if handler is None:
            _check(self._lib.vram_monitor_set_callback(self._h(), _native.EVENT_CALLBACK(), None, _RELEASE_THUNK), "vram_monitor_set_callback")
            return
        thunk = _make_thunk(handler, on_error)
        with _live_lock:
            key = _next_key[0]
            _next_key[0] += 1
            _live_callbacks[key] = thunk
        code = self._lib.vram_monitor_set_callback(self._h(), thunk, ctypes.c_void_p(key), _RELEASE_THUNK)
        if code != Result.OK:
            _release_user_data(key)
            raise VramMonitorError(code, "vram_monitor_set_callback")

    def set_interval_ms(self, interval_ms):
        _check(self._lib.vram_monitor_set_interval_ms(self._h(), int(interval_ms)), "vram_monitor_set_interval_ms")

    # -- checks and state --

    def check_now(self):
        """Runs a full check now and waits for it (callbacks run before it returns)."""
        buf, summary = _native.out_struct(_native.VramMonitorCheckSummary)
        _check(self._lib.vram_monitor_check_now(self._h(), ctypes.addressof(buf)), "vram_monitor_check_now")
        return CheckSummary(
            checked=summary.checked,
            resident=summary.resident,
            violations=summary.violations,
            check_failures=summary.check_failures,
            duration_us=summary.duration_us,
            healthy=bool(summary.healthy),
        )

    def health(self):
        buf, h = _native.out_struct(_native.VramMonitorHealth)
        _check(self._lib.vram_monitor_health(self._h(), ctypes.addressof(buf)), "vram_monitor_health")
        return Health(
            healthy=bool(h.healthy),
            last_check_failed=bool(h.last_check_failed),
            registrations=h.registrations,
            tracked_bytes=h.tracked_bytes,
            current_violations=h.current_violations,
            total_violations=h.total_violations,
            checks_completed=h.checks_completed,
            checks_failed=h.checks_failed,
            last_check_unix_ms=h.last_check_unix_ms,
            last_check_duration_us=h.last_check_duration_us,
            process_vram_bytes=h.process_vram_bytes,
            process_vram_source=_VRAM_SOURCES.get(h.process_vram_source, str(h.process_vram_source)),
            interval_ms=h.interval_ms,
            device_faults=h.device_faults,
        )

    def report(self, format="text"):
        """The report as a string: format "text" or "json"."""
        formats = {"text": _native.REPORT_FORMAT_TEXT, "json": _native.REPORT_FORMAT_JSON}
        if format not in formats:
            raise ValueError("format must be 'text' or 'json'")
        needed = ctypes.c_size_t(0)
        code = self._lib.vram_monitor_report(self._h(), formats[format], None, 0, ctypes.byref(needed))
        for _ in range(16):
            if code != Result.BUFFER_TOO_SMALL:
                break
            buf = ctypes.create_string_buffer(needed.value)
            length = ctypes.c_size_t(0)
            code = self._lib.vram_monitor_report(self._h(), formats[format], buf, needed.value, ctypes.byref(length))
            if code == Result.OK:
                return buf.raw[: length.value].decode("utf-8", "replace")
            needed = length
        _check(code, "vram_monitor_report")
        return ""

    def report_json(self):
        """The JSON report, parsed: {"health": {...}, "registrations": [...]}."""
        return json.loads(self.report("json"))

    def verdict(self, registration_id):
        """The last verdict of a registration (from the JSON report), or None if unknown."""
        for r in self.report_json().get("registrations", []):
            if r.get("id") == registration_id:
                name = r.get("verdict")
                return Verdict[name] if name in Verdict.__members__ else name
        return None
